# Losses and their gradients with respect to the network's outputs, and the
# output functions of predict. Three losses (LOSS_CODES in lgmstm/_base.py
# names them for the models' outputs):
#   SQUARED_ERROR  ("tanh", "linear"): sum_k (a_k - y_k)^2 over a row of
#                  outputs a, d a_k = 2 (a_k - y_k)
#   SOFTMAX        ("softmax"): a row of logits z, p = softmax(z),
#                  -sum_k y_k log p_k, d z_k = p_k - y_k (y sums to 1)
#   SIGMOID        ("sigmoid"): per output p = 1 / (1 + exp(-z)),
#                  -(y log p + (1 - y) log(1 - p)) = softplus(z) - y z,
#                  d z = p - y
# Gradients are scaled by grad_scale (1 / the weighted count the mean is
# over) times the row's weight. The squared error has a flat, unweighted
# form (squared_error, panel_squared_error: the programs' hot path) and the
# row form of every loss (output_loss, which takes weights; in the panel
# layout panel_output_loss, unweighted); loss_count says what a batch of
# sequences' loss is the mean over (the STM programs, single and deep).
# Sums over blocks of a fixed size are added in block order (see
# _parallel.pxd).
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, fabs, log, log1p

from lgmstm._parallel cimport BLOCK_ELEMS, CHUNK_ROWS, n_tasks, threads_for

cdef enum:
    SQUARED_ERROR = 0
    SOFTMAX = 1
    SIGMOID = 2
    # The most outputs the panel layout takes a cross-entropy over (a
    # sample's column is copied to the stack: panel_output_loss).
    PANEL_LOSS_MAX_OUT = 64


cdef inline double squared_error_rows(
        const floating *prediction, const floating *target,
        floating *d_prediction, Py_ssize_t n_elements,
        double grad_scale) noexcept nogil:
    """Return sum((prediction - target)^2) over n_elements values and set
    d_prediction = grad_scale * 2 (prediction - target)."""
    cdef floating scale = <floating> (2.0 * grad_scale)
    cdef floating diff
    cdef double total = 0
    cdef Py_ssize_t i
    for i in range(n_elements):
        diff = prediction[i] - target[i]
        d_prediction[i] = scale * diff
        total += <double> diff * diff
    return total


cdef inline double squared_error_block(
        Py_ssize_t block, const floating *prediction, const floating *target,
        floating *d_prediction, Py_ssize_t n_elements, double grad_scale) noexcept nogil:
    cdef Py_ssize_t start = block * BLOCK_ELEMS
    return squared_error_rows(prediction + start, target + start, d_prediction + start,
                              min(<Py_ssize_t> BLOCK_ELEMS, n_elements - start), grad_scale)


cdef inline double squared_error(const floating *prediction,  # IN (n_elements,)
                                 const floating *target,      # IN (n_elements,)
                                 floating *d_prediction,      # OUT (n_elements,)
                                 Py_ssize_t n_elements,
                                 double grad_scale,
                                 double *partials,            # scratch: one per block
                                 int n_threads) noexcept nogil:
    """squared_error_rows over n_elements values, in blocks of BLOCK_ELEMS
    summed in block order; partials: n_tasks(n_elements, BLOCK_ELEMS) doubles."""
    cdef Py_ssize_t n_blocks = n_tasks(n_elements, BLOCK_ELEMS)
    cdef int n_used = threads_for(n_threads, n_blocks, 3.0 * n_elements)
    cdef Py_ssize_t block
    cdef double total = 0
    if n_used == 1:
        for block in range(n_blocks):
            partials[block] = squared_error_block(block, prediction, target,
                                                  d_prediction, n_elements, grad_scale)
    else:
        for block in prange(n_blocks, num_threads=n_used, schedule='static'):
            partials[block] = squared_error_block(block, prediction, target,
                                                  d_prediction, n_elements, grad_scale)
    for block in range(n_blocks):
        total += partials[block]
    return total


cdef inline double panel_squared_error(
        const floating *outputs,    # IN (n_units, ld), panel layout
        const floating *targets,    # IN, laid out as outputs
        floating *d_outputs,        # OUT, laid out as outputs
        Py_ssize_t n_units, Py_ssize_t n_blocks, Py_ssize_t block_cols,
        Py_ssize_t n_valid, Py_ssize_t ld, double grad_scale,
        bint apply_tanh) noexcept nogil:
    """Squared error of panel-layout outputs (see _panel.pxd).

    Over n_units rows (ld apart) of n_blocks blocks of block_cols columns,
    the first n_valid of each block samples and the rest padding: returns
    sum((outputs - targets)^2) over the samples, and sets d_outputs =
    grad_scale * 2 (outputs - targets), times (1 - outputs^2) when
    apply_tanh (the output layer's dZ); 0 in padding.
    """
    cdef floating scale = <floating> (2.0 * grad_scale)
    cdef Py_ssize_t unit, block, i, at
    cdef floating diff
    cdef double total = 0
    for unit in range(n_units):
        for block in range(n_blocks):
            at = unit * ld + block * block_cols
            for i in range(n_valid):
                diff = outputs[at + i] - targets[at + i]
                total += <double> diff * diff
                diff = scale * diff
                if apply_tanh:
                    diff = diff * (1 - outputs[at + i] * outputs[at + i])
                d_outputs[at + i] = diff
            for i in range(n_valid, block_cols):
                d_outputs[at + i] = 0
    return total


cdef inline double softmax_cross_entropy_row(
        const floating *logits, const floating *target, floating *d_logits,
        Py_ssize_t n_out, double scale) noexcept nogil:
    """-sum_k y_k log softmax(z)_k of one row, and d_logits = scale (p - y).
    Max-subtracted: log softmax(z)_k = (z_k - max z) - log sum exp(z - max z),
    finite for any finite logits."""
    cdef double top = logits[0], total = 0, log_total, shifted, loss = 0
    cdef Py_ssize_t k
    for k in range(1, n_out):
        if logits[k] > top:
            top = logits[k]
    for k in range(n_out):
        total += exp(logits[k] - top)
    log_total = log(total)
    for k in range(n_out):
        shifted = logits[k] - top
        loss += target[k] * (log_total - shifted)
        d_logits[k] = <floating> (scale * (exp(shifted) / total - target[k]))
    return loss


cdef inline double sigmoid_cross_entropy_row(
        const floating *logits, const floating *target, floating *d_logits,
        Py_ssize_t n_out, double scale) noexcept nogil:
    """sum_k softplus(z_k) - y_k z_k (the binary log-loss of sigmoid(z_k)) of
    one row, and d_logits = scale (sigmoid(z) - y). softplus(z) = max(z, 0)
    + log1p(exp(-|z|)): finite for any finite logit."""
    cdef double z, small, loss = 0
    cdef Py_ssize_t k
    for k in range(n_out):
        z = logits[k]
        small = exp(-fabs(z))   # in (0, 1]
        loss += (z if z > 0 else 0) - target[k] * z + log1p(small)
        d_logits[k] = <floating> (scale * ((1 / (1 + small) if z >= 0 else small / (1 + small))
                                           - target[k]))
    return loss


cdef inline double row_loss(int loss, const floating *outputs, const floating *target,
                            floating *d_outputs, Py_ssize_t n_out,
                            double scale) noexcept nogil:
    """The loss of one row of outputs (logits for SOFTMAX, SIGMOID) and its
    gradient times scale."""
    if loss == SOFTMAX:
        return softmax_cross_entropy_row(outputs, target, d_outputs, n_out, scale)
    if loss == SIGMOID:
        return sigmoid_cross_entropy_row(outputs, target, d_outputs, n_out, scale)
    return squared_error_rows(outputs, target, d_outputs, n_out, scale)


cdef inline double output_loss_block(
        int loss, Py_ssize_t block, const floating *outputs, const floating *targets,
        const double *weights, floating *d_outputs, Py_ssize_t n_rows, Py_ssize_t n_out,
        double grad_scale) noexcept nogil:
    cdef Py_ssize_t start = block * CHUNK_ROWS
    cdef Py_ssize_t stop = min(start + <Py_ssize_t> CHUNK_ROWS, n_rows)
    cdef Py_ssize_t i
    cdef double weight, total = 0
    for i in range(start, stop):
        weight = 1 if weights == NULL else weights[i]
        total += weight * row_loss(loss, outputs + i * n_out, targets + i * n_out,
                                   d_outputs + i * n_out, n_out, grad_scale * weight)
    return total


cdef inline Py_ssize_t output_loss_blocks(Py_ssize_t n_rows) noexcept nogil:
    """The partial sums output_loss needs for n_rows rows."""
    return max(1, n_tasks(n_rows, CHUNK_ROWS))


cdef inline double output_loss(int loss,
                               const floating *outputs,   # IN (n_rows, n_out)
                               const floating *targets,   # IN (n_rows, n_out)
                               const double *weights,     # IN (n_rows,) or NULL (all 1)
                               floating *d_outputs,       # OUT (n_rows, n_out)
                               Py_ssize_t n_rows, Py_ssize_t n_out,
                               double grad_scale,
                               double *partials,          # scratch: output_loss_blocks(n_rows)
                               int n_threads) noexcept nogil:
    """sum_i w_i loss_i over rows i (row_loss), and d_outputs row i =
    grad_scale w_i d loss_i; in blocks of CHUNK_ROWS rows summed in block
    order. A row of weight 0 adds nothing and gets a zero gradient."""
    cdef Py_ssize_t n_blocks = n_tasks(n_rows, CHUNK_ROWS)
    cdef int n_used = threads_for(n_threads, n_blocks,
                                  (3.0 if loss == SQUARED_ERROR else 30.0) * n_rows * n_out)
    cdef Py_ssize_t block
    cdef double total = 0
    if n_used == 1:
        for block in range(n_blocks):
            partials[block] = output_loss_block(loss, block, outputs, targets, weights,
                                                d_outputs, n_rows, n_out, grad_scale)
    else:
        for block in prange(n_blocks, num_threads=n_used, schedule='static'):
            partials[block] = output_loss_block(loss, block, outputs, targets, weights,
                                                d_outputs, n_rows, n_out, grad_scale)
    for block in range(n_blocks):
        total += partials[block]
    return total


cdef inline double weight_sum(const double *weights, Py_ssize_t n_rows) noexcept nogil:
    """sum of the rows' weights, in row order (n_rows when weights is NULL)."""
    cdef double total = 0
    cdef Py_ssize_t i
    if weights == NULL:
        return n_rows
    for i in range(n_rows):
        total += weights[i]
    return total


cdef inline double loss_scale(int loss, double weight_total, Py_ssize_t n_out) noexcept nogil:
    """grad_scale of a batch whose weights sum to weight_total: the squared
    error is a mean over the outputs too, the cross-entropies a sum over
    them. 0 when nothing weighs (the batch adds nothing)."""
    if weight_total <= 0:
        return 0
    return 1.0 / (weight_total * (n_out if loss == SQUARED_ERROR else 1))


cdef inline Py_ssize_t n_valid_outputs(const Py_ssize_t *lengths, Py_ssize_t n_samples,
                                       bint return_sequences) noexcept nogil:
    """Outputs (rows) that take a loss: every valid step, or one per sequence."""
    cdef Py_ssize_t i, total = 0
    if not return_sequences:
        return n_samples
    for i in range(n_samples):
        total += lengths[i]
    return total


cdef inline double loss_count(int loss, const double *weights, const Py_ssize_t *lengths,
                              Py_ssize_t n_samples, Py_ssize_t n_steps, Py_ssize_t n_out,
                              bint return_sequences) noexcept nogil:
    """What the loss of n_samples sequences is the mean over: the valid
    outputs' count, or the rows' weights summed, times n_out for the squared
    error (see loss_scale)."""
    cdef double total
    if weights == NULL:
        total = n_valid_outputs(lengths, n_samples, return_sequences)
    else:
        total = weight_sum(weights, n_samples * (n_steps if return_sequences else 1))
    return total * (n_out if loss == SQUARED_ERROR else 1)


cdef inline void output_function(int loss, floating *outputs, Py_ssize_t n_out) noexcept nogil:
    """One row of logits to probabilities in place: softmax (max-subtracted)
    or the logistic sigmoid; nothing for SQUARED_ERROR."""
    cdef double top, total = 0, small, z
    cdef Py_ssize_t k
    if loss == SOFTMAX:
        top = outputs[0]
        for k in range(1, n_out):
            if outputs[k] > top:
                top = outputs[k]
        for k in range(n_out):
            total += exp(outputs[k] - top)
        for k in range(n_out):
            outputs[k] = <floating> (exp(outputs[k] - top) / total)
    elif loss == SIGMOID:
        for k in range(n_out):
            z = outputs[k]
            small = exp(-fabs(z))
            outputs[k] = <floating> (1 / (1 + small) if z >= 0 else small / (1 + small))


cdef inline void output_rows(int loss, floating *outputs, Py_ssize_t n_rows,
                             Py_ssize_t n_out) noexcept nogil:
    """output_function on n_rows rows of n_out (row-major)."""
    cdef Py_ssize_t i
    if loss != SQUARED_ERROR:
        for i in range(n_rows):
            output_function(loss, outputs + i * n_out, n_out)


cdef inline bint panel_takes(int loss, Py_ssize_t n_out, const double *weights) noexcept nogil:
    """Whether the panel layout trains this loss: unweighted, and for the
    cross-entropies at most PANEL_LOSS_MAX_OUT outputs."""
    return weights == NULL and (loss == SQUARED_ERROR or n_out <= PANEL_LOSS_MAX_OUT)


cdef inline double panel_output_loss(
        int loss, const floating *outputs, const floating *targets, floating *d_outputs,
        Py_ssize_t n_units, Py_ssize_t n_blocks, Py_ssize_t block_cols,
        Py_ssize_t n_valid, Py_ssize_t ld, double grad_scale,
        bint apply_tanh) noexcept nogil:
    """The loss of panel-layout outputs (laid out as panel_squared_error
    takes them): panel_squared_error for SQUARED_ERROR; for the
    cross-entropies (n_units <= PANEL_LOSS_MAX_OUT outputs, logits) row_loss
    of each sample's column, summed in column order, its gradient (times
    grad_scale) written back in the layout; 0 in padding."""
    cdef floating column[PANEL_LOSS_MAX_OUT]
    cdef floating target[PANEL_LOSS_MAX_OUT]
    cdef floating gradient[PANEL_LOSS_MAX_OUT]
    cdef Py_ssize_t block, i, k, at
    cdef double total = 0
    if loss == SQUARED_ERROR:
        return panel_squared_error(outputs, targets, d_outputs, n_units, n_blocks, block_cols,
                                   n_valid, ld, grad_scale, apply_tanh)
    for block in range(n_blocks):
        at = block * block_cols
        for i in range(n_valid):
            for k in range(n_units):
                column[k] = outputs[k * ld + at + i]
                target[k] = targets[k * ld + at + i]
            total += row_loss(loss, column, target, gradient, n_units, grad_scale)
            for k in range(n_units):
                d_outputs[k * ld + at + i] = gradient[k]
        for k in range(n_units):
            for i in range(n_valid, block_cols):
                d_outputs[k * ld + at + i] = 0
    return total


cdef inline int loss_of_output(str output) except -1:
    """The loss code of a model's output ("tanh", "linear", "softmax", "sigmoid")."""
    if output == "softmax":
        return SOFTMAX
    if output == "sigmoid":
        return SIGMOID
    if output == "tanh" or output == "linear":
        return SQUARED_ERROR
    raise ValueError(f"unknown output {output!r}")
