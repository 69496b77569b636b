# Losses and their gradients with respect to the predictions, for the
# row-major layout and the panel layout. Squared error only, for now:
#     loss = sum (prediction - target)^2,  d loss = grad_scale * 2 (prediction - target)
# grad_scale is 1 / (the count the mean is over). Sums over blocks of a
# fixed size are added in block order (see _parallel.pxd).
from cython cimport floating
from cython.parallel cimport prange

from lgmstm._parallel cimport BLOCK_ELEMS, n_tasks, threads_for


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
