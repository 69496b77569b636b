# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled dense tanh layers, whole-network passes and the LGM training loop.

Unchecked: call these through lgmstm.kernels / lgmstm.LGM, which validate
shapes, dtypes and layouts once and allocate every buffer.

A network of n_layers layers has layer_sizes [n_in, n_1, ..., n_out] and its
parameters in one list [W_0, b_0, W_1, b_1, ...]; W_l is (sizes[l], sizes[l+1]).

Training takes one of two layouts, chosen from the shapes (panel_plan):
- row-major, with BLAS (network_gradients): batches whose products are big
  enough for BLAS to run near its peak;
- the panel layout of _panel.pxd (panel_network_gradients): small networks,
  whose products BLAS runs at a few GFLOP/s. Groups of samples go through
  every layer in parallel tasks, then blocks of weight-gradient rows.
"""
cimport numpy as cnp
from cython cimport floating
from libc.stdlib cimport malloc, free

from _layers cimport (dense_forward, dense_forward_loss, dense_backward,
                      optimizer_step, optimizer_config, OptimizerConfig, SGD,
                      gather_rows)
from cython.parallel cimport prange
from _parallel cimport CHUNK_ROWS as _CHUNK_ROWS, n_tasks, threads_for
from _tanh cimport tanh_inplace, tanh_rows
from _panel cimport (panel_product, row_sums, gather_columns, panel_loss, padded_width,
                     group_panels, sample_major_gradient, transpose_columns,
                     add_weight_gradient, finish_weight_gradient, panel_calloc,
                     PANEL_MAX_WORK, MAX_PANEL_GROUPS)

# The largest GEMM a task does is this many rows high (see _parallel.pxd).
TASK_ROWS = _CHUNK_ROWS


def partials_size(Py_ssize_t n_samples):
    """Length of the `partials` scratch of a loss over n_samples samples."""
    return max(1, n_tasks(n_samples, _CHUNK_ROWS))

cnp.import_array()


cdef class PointerList:
    """Data pointers of a list of C-contiguous arrays, usable without the GIL.

    Holds a reference to every array, so the pointers stay valid.
    """
    cdef void **data
    cdef readonly list arrays

    def __cinit__(self, arrays):
        self.arrays = list(arrays)
        self.data = <void **> malloc(max(1, len(self.arrays)) * sizeof(void *))
        if self.data == NULL:
            raise MemoryError()
        for i, array in enumerate(self.arrays):
            self.data[i] = cnp.PyArray_DATA(<cnp.ndarray> array)

    def __dealloc__(self):
        free(self.data)


def tanh(floating[::1] x):
    """x = tanh(x) in place, with the kernels' vectorised tanh."""
    with nogil:
        tanh_inplace(&x[0], x.shape[0])


def forward(const floating[:, ::1] X, const floating[:, ::1] W,
            const floating[::1] b, floating[:, ::1] out,
            bint apply_tanh, int n_threads):
    """out = tanh(X W + b) (or X W + b)."""
    with nogil:
        dense_forward(&X[0, 0], &W[0, 0], &b[0], &out[0, 0], X.shape[0],
                      X.shape[1], W.shape[1], apply_tanh, n_threads)


def backward(const floating[:, ::1] X, const floating[:, ::1] W,
             const floating[:, ::1] A, const floating[:, ::1] dA,
             floating[:, ::1] dZ, floating[:, ::1] dX, floating[:, ::1] dW,
             floating[::1] db, bint need_dX, bint apply_tanh, int n_threads):
    """Gradients of a dense layer; dZ is scratch, dX is left alone unless need_dX."""
    with nogil:
        dense_backward(&X[0, 0], &W[0, 0], &A[0, 0], &dA[0, 0], &dZ[0, 0],
                       &dX[0, 0] if need_dX else NULL, &dW[0, 0], &db[0], 1, 0,
                       X.shape[0], X.shape[1], W.shape[1], apply_tanh,
                       n_threads)


cdef void network_forward(const floating *X, Py_ssize_t n_samples,
                          void **params, const Py_ssize_t *sizes,
                          Py_ssize_t n_layers, bint output_tanh,
                          void **activations, int n_threads) noexcept nogil:
    """activations[l] = layer l's output; the last one is the prediction."""
    cdef const floating *layer_input = X
    cdef Py_ssize_t layer
    for layer in range(n_layers):
        dense_forward(layer_input, <floating *> params[2 * layer],
                      <floating *> params[2 * layer + 1],
                      <floating *> activations[layer], n_samples,
                      sizes[layer], sizes[layer + 1],
                      output_tanh or layer < n_layers - 1, n_threads)
        layer_input = <floating *> activations[layer]


cdef double network_gradients(const floating *X, const floating *Y,
                              Py_ssize_t n_samples, void **params,
                              void **grads, const Py_ssize_t *sizes,
                              Py_ssize_t n_layers, bint output_tanh,
                              void **activations, void **deltas,
                              double *partials, double sgd_lr,
                              int n_threads) noexcept nogil:
    """Forward, loss and backward over one batch; returns its sum of squares.

    With sgd_lr == 0, fills grads (laid out as params) with the gradient of
    the batch's mean squared error. With sgd_lr > 0, grads is ignored and
    each layer takes its SGD step params -= sgd_lr * grad as soon as its
    gradient is known (its W is no longer needed by then).
    deltas[l] is scratch shaped like activations[l].
    """
    cdef Py_ssize_t n_out = sizes[n_layers]
    cdef Py_ssize_t layer
    cdef double sum_squares
    cdef void **targets = params if sgd_lr > 0 else grads
    cdef floating scale = <floating> -sgd_lr if sgd_lr > 0 else 1
    cdef floating beta = 1 if sgd_lr > 0 else 0
    network_forward(X, n_samples, params, sizes, n_layers - 1, True,
                    activations, n_threads)
    sum_squares = dense_forward_loss(
        X if n_layers == 1 else <floating *> activations[n_layers - 2],
        <floating *> params[2 * n_layers - 2], <floating *> params[2 * n_layers - 1],
        <floating *> activations[n_layers - 1], Y, <floating *> deltas[n_layers - 1],
        n_samples, sizes[n_layers - 1], n_out, output_tanh,
        1.0 / max(1, n_samples * n_out), partials, n_threads)
    for layer in range(n_layers - 1, -1, -1):
        dense_backward(
            X if layer == 0 else <floating *> activations[layer - 1],
            <floating *> params[2 * layer], <floating *> activations[layer],
            <floating *> deltas[layer], <floating *> deltas[layer],
            NULL if layer == 0 else <floating *> deltas[layer - 1],
            <floating *> targets[2 * layer], <floating *> targets[2 * layer + 1],
            scale, beta, n_samples, sizes[layer], sizes[layer + 1],
            output_tanh or layer < n_layers - 1, n_threads)
    return sum_squares


cdef enum:
    # Rows of a weight gradient per task of the panel path.
    PANEL_WEIGHT_ROWS = 8


cdef inline double step_work(Py_ssize_t n_rows, const Py_ssize_t *sizes,
                             Py_ssize_t n_layers) noexcept nogil:
    """Flops of a training step on n_rows samples: 2 per weight and sample
    forward, 4 backward."""
    cdef double work = 0
    cdef Py_ssize_t layer
    for layer in range(n_layers):
        work += 6.0 * n_rows * sizes[layer] * sizes[layer + 1]
    return work


cdef inline bint panel_plan(Py_ssize_t n_rows, const Py_ssize_t *sizes,
                            Py_ssize_t n_layers, size_t itemsize,
                            Py_ssize_t *group_width, Py_ssize_t *n_groups) noexcept nogil:
    """Whether batches of up to n_rows samples train in the panel layout,
    and its sample groups (see _panel.pxd); from the shapes alone."""
    cdef double work = step_work(n_rows, sizes, n_layers)
    cdef Py_ssize_t panel = padded_width(1, itemsize)
    group_width[0] = panel * group_panels(n_tasks(n_rows, panel), work)
    n_groups[0] = max(1, n_tasks(n_rows, group_width[0]))
    return work < PANEL_MAX_WORK


def training_layout(Py_ssize_t n_rows, const Py_ssize_t[::1] layer_sizes,
                    Py_ssize_t itemsize):
    """(n_groups, group_width) of the panel layout batches of n_rows train
    in, or None when they train row-major with BLAS. For the tests."""
    cdef Py_ssize_t group_width, n_groups
    if panel_plan(n_rows, &layer_sizes[0], layer_sizes.shape[0] - 1, itemsize,
                  &group_width, &n_groups):
        return n_groups, group_width
    return None


cdef void panel_sample_task(
        Py_ssize_t group, Py_ssize_t group_width, Py_ssize_t width, Py_ssize_t n_rows,
        const floating *Xt, const floating *Yt, void **params, const Py_ssize_t *sizes,
        Py_ssize_t n_layers, bint output_tanh, floating **activations,
        floating **deltas, floating **deltas_t, double *partials) noexcept nogil:
    """Forward, loss and every layer's dZ (and its sample-major copy) for one
    group of samples (columns [group * group_width, + group_width))."""
    cdef Py_ssize_t first = group * group_width, padded
    cdef Py_ssize_t n_valid = min(group_width, max(0, n_rows - first))
    cdef Py_ssize_t n_out = sizes[n_layers]
    cdef const floating *layer_input = Xt + first
    cdef Py_ssize_t layer
    for layer in range(n_layers):
        panel_product(sizes[layer + 1], group_width, sizes[layer],
                      <floating *> params[2 * layer], 1, sizes[layer + 1], layer_input,
                      width, <floating *> params[2 * layer + 1], False, NULL, 0,
                      activations[layer] + first, width)
        if output_tanh or layer < n_layers - 1:
            tanh_rows(activations[layer] + first, sizes[layer + 1], group_width, width)
        layer_input = activations[layer] + first
    partials[group] = panel_loss(activations[n_layers - 1] + first, Yt + first,
                                 deltas[n_layers - 1] + first, n_out, 1, group_width,
                                 n_valid, width, 1.0 / max(1, n_rows * n_out), output_tanh)
    # dZ below = (W dZ) (1 - A^2): hidden layers are tanh.
    for layer in range(n_layers - 1, 0, -1):
        panel_product(sizes[layer], group_width, sizes[layer + 1],
                      <floating *> params[2 * layer], sizes[layer + 1], 1,
                      deltas[layer] + first, width, NULL, False,
                      activations[layer - 1] + first, width, deltas[layer - 1] + first,
                      width)
    for layer in range(n_layers):
        if sample_major_gradient(sizes[layer + 1], sizeof(floating)):
            padded = padded_width(sizes[layer + 1], sizeof(floating))
            transpose_columns(deltas[layer] + first, sizes[layer + 1], group_width,
                              width, deltas_t[layer] + first * padded, padded)


cdef void panel_weight_task(
        Py_ssize_t task, Py_ssize_t width, const floating *Xt, void **targets,
        const Py_ssize_t *sizes, Py_ssize_t n_layers, floating **activations,
        floating **deltas, floating **deltas_t, floating **products, floating scale,
        floating beta) noexcept nogil:
    """targets = scale * gradient + beta * targets on one block of
    PANEL_WEIGHT_ROWS rows of a layer's W, or (the last task) every bias;
    each summed over the whole batch in column order. products[l] is
    scratch (sizes[l], padded sizes[l + 1])."""
    cdef Py_ssize_t layer, blocks, row, n_rows, padded
    cdef const floating *layer_input
    cdef floating *target
    for layer in range(n_layers):
        blocks = n_tasks(sizes[layer], PANEL_WEIGHT_ROWS)
        if task < blocks:
            row = task * PANEL_WEIGHT_ROWS
            n_rows = min(<Py_ssize_t> PANEL_WEIGHT_ROWS, sizes[layer] - row)
            padded = padded_width(sizes[layer + 1], sizeof(floating))
            layer_input = Xt if layer == 0 else activations[layer - 1]
            target = <floating *> targets[2 * layer] + row * sizes[layer + 1]
            add_weight_gradient(n_rows, sizes[layer + 1], width, layer_input + row * width,
                                width, deltas[layer], width, deltas_t[layer], True, scale,
                                beta, products[layer] + row * padded, target)
            finish_weight_gradient(n_rows, sizes[layer + 1], products[layer] + row * padded,
                                   scale, beta, target)
            return
        task -= blocks
    for layer in range(n_layers):
        row_sums(sizes[layer + 1], width, deltas[layer], width, scale, beta,
                 <floating *> targets[2 * layer + 1])


cdef double panel_network_gradients(
        const floating *Xt, const floating *Yt, Py_ssize_t n_rows,
        Py_ssize_t group_width, Py_ssize_t n_groups, void **params, void **targets,
        const Py_ssize_t *sizes, Py_ssize_t n_layers, bint output_tanh,
        floating **activations, floating **deltas, floating **deltas_t,
        floating **products, floating scale, floating beta, int n_threads) noexcept nogil:
    """network_gradients in the panel layout; returns the sum of squares.

    Xt (n_in, width) and Yt (n_out, width) hold a batch of n_rows samples,
    width = n_groups * group_width; activations[l] and deltas[l] are
    (sizes[l + 1], width), deltas_t[l] (width, padded sizes[l + 1]) and
    products[l] (sizes[l], padded sizes[l + 1]). Sample tasks (a group through every layer) come
    first, then weight tasks, which set targets = scale * gradient + beta *
    targets: (1, 0) with targets = grads gives the gradients, (-lr, 1) with
    targets = params an SGD step (every W has been used by then).
    """
    cdef Py_ssize_t width = n_groups * group_width
    cdef double work = step_work(n_rows, sizes, n_layers)
    cdef Py_ssize_t n_weight_tasks = 1
    cdef double partials[MAX_PANEL_GROUPS]
    cdef double sum_squares = 0
    cdef Py_ssize_t task
    cdef int sample_threads = threads_for(n_threads, n_groups, work)
    cdef int weight_threads
    for task in range(n_layers):
        n_weight_tasks += n_tasks(sizes[task], PANEL_WEIGHT_ROWS)
    # The weight gradients are a third of the step's work.
    weight_threads = threads_for(n_threads, n_weight_tasks, work / 3)
    if sample_threads == 1:
        for task in range(n_groups):
            panel_sample_task(task, group_width, width, n_rows, Xt, Yt, params, sizes,
                              n_layers, output_tanh, activations, deltas, deltas_t,
                              partials)
    else:
        for task in prange(n_groups, num_threads=sample_threads, schedule='static'):
            panel_sample_task(task, group_width, width, n_rows, Xt, Yt, params, sizes,
                              n_layers, output_tanh, activations, deltas, deltas_t,
                              partials)
    if weight_threads == 1:
        for task in range(n_weight_tasks):
            panel_weight_task(task, width, Xt, targets, sizes, n_layers, activations,
                              deltas, deltas_t, products, scale, beta)
    else:
        for task in prange(n_weight_tasks, num_threads=weight_threads, schedule='dynamic'):
            panel_weight_task(task, width, Xt, targets, sizes, n_layers, activations,
                              deltas, deltas_t, products, scale, beta)
    for task in range(n_groups):
        sum_squares += partials[task]
    return sum_squares


def predict(const floating[:, ::1] X, PointerList params,
            const Py_ssize_t[::1] layer_sizes, bint output_tanh,
            PointerList activations, int n_threads):
    """Fill activations (one (n_samples, sizes[l+1]) array per layer)."""
    with nogil:
        network_forward(&X[0, 0], X.shape[0], params.data, &layer_sizes[0],
                        layer_sizes.shape[0] - 1, output_tanh,
                        activations.data, n_threads)


def gradients(const floating[:, ::1] X, const floating[:, ::1] Y,
              PointerList params, PointerList grads,
              const Py_ssize_t[::1] layer_sizes, bint output_tanh,
              PointerList activations, PointerList deltas,
              double[::1] partials, int n_threads):
    """Fill grads with the loss gradient; return the mean squared error."""
    cdef double sum_squares
    with nogil:
        sum_squares = network_gradients(
            &X[0, 0], &Y[0, 0], X.shape[0], params.data, grads.data,
            &layer_sizes[0], layer_sizes.shape[0] - 1, output_tanh,
            activations.data, deltas.data, &partials[0], 0, n_threads)
    return sum_squares / max(1, Y.shape[0] * Y.shape[1])


def train(const floating[:, ::1] X, const floating[:, ::1] Y,
          PointerList params, PointerList grads, PointerList state1,
          PointerList state2, const Py_ssize_t[::1] layer_sizes,
          bint output_tanh, PointerList activations, PointerList deltas,
          floating[:, ::1] X_batch, floating[:, ::1] Y_batch,
          double[::1] partials, const Py_ssize_t[:, ::1] order,
          Py_ssize_t batch_size, int optimizer, double lr, double momentum,
          double beta1, double beta2, double eps, long long step,
          double[::1] epoch_losses, int n_threads):
    """Train for epoch_losses.shape[0] epochs of mini-batch updates.

    order[e] is the sample order of epoch e; with no rows, samples are taken
    in their natural order. Sets epoch_losses[e] to the mean squared error
    over epoch e (each batch measured before its update) and returns the
    number of updates done, counting the `step` done before.

    Small networks train in the panel layout, in workspaces allocated here
    (once per call); the others in the row-major buffers passed in.
    """
    cdef Py_ssize_t n_samples = X.shape[0]
    cdef Py_ssize_t n_in = X.shape[1], n_out = Y.shape[1]
    cdef Py_ssize_t n_layers = layer_sizes.shape[0] - 1
    cdef Py_ssize_t n_epochs = epoch_losses.shape[0]
    cdef Py_ssize_t n_batches = n_tasks(n_samples, batch_size)
    cdef bint shuffled = order.shape[0] > 0
    cdef Py_ssize_t group_width, n_groups
    cdef bint panels = panel_plan(min(batch_size, n_samples), &layer_sizes[0], n_layers,
                                  sizeof(floating), &group_width, &n_groups)
    cdef Py_ssize_t width = n_groups * group_width
    cdef floating **panel_rows = NULL
    cdef floating *Xt = NULL
    cdef floating *Yt = NULL
    cdef Py_ssize_t n_values, layer, padded
    cdef void *panel_memory = NULL
    cdef floating *next_rows
    cdef OptimizerConfig config = optimizer_config(optimizer, lr, momentum, beta1, beta2, eps, step)
    if panels:
        # Xt, Yt, then each layer's activations, deltas, sample-major deltas
        # and weight-gradient products, in one zeroed block.
        n_values = (n_in + n_out) * width
        for layer in range(n_layers):
            padded = padded_width(layer_sizes[layer + 1], sizeof(floating))
            n_values += 2 * layer_sizes[layer + 1] * width + (width + layer_sizes[layer]) * padded
        panel_rows = <floating **> malloc(4 * n_layers * sizeof(floating *))
        Xt = <floating *> panel_calloc(n_values * sizeof(floating), &panel_memory)
        if panel_rows == NULL or Xt == NULL:
            free(panel_rows)
            free(panel_memory)
            raise MemoryError()
        Yt = Xt + n_in * width
        next_rows = Yt + n_out * width
        for layer in range(n_layers):
            padded = padded_width(layer_sizes[layer + 1], sizeof(floating))
            panel_rows[layer] = next_rows
            panel_rows[n_layers + layer] = panel_rows[layer] + layer_sizes[layer + 1] * width
            panel_rows[2 * n_layers + layer] = (panel_rows[n_layers + layer]
                                                + layer_sizes[layer + 1] * width)
            panel_rows[3 * n_layers + layer] = panel_rows[2 * n_layers + layer] + width * padded
            next_rows = panel_rows[3 * n_layers + layer] + layer_sizes[layer] * padded
    try:
        with nogil:
            train_epochs(X, Y, params.data, grads.data, state1.data, state2.data,
                         &layer_sizes[0], n_layers, output_tanh, activations.data,
                         deltas.data, &X_batch[0, 0], &Y_batch[0, 0], &partials[0],
                         order, batch_size, n_batches, shuffled, &config, panels,
                         group_width, n_groups, Xt, Yt, panel_rows, epoch_losses,
                         n_threads)
    finally:
        free(panel_rows)
        free(panel_memory)
    return config.step


cdef void train_epochs(
        const floating[:, ::1] X, const floating[:, ::1] Y, void **params,
        void **grads, void **state1, void **state2, const Py_ssize_t *sizes,
        Py_ssize_t n_layers, bint output_tanh, void **activations, void **deltas,
        floating *X_batch, floating *Y_batch, double *partials,
        const Py_ssize_t[:, ::1] order, Py_ssize_t batch_size, Py_ssize_t n_batches,
        bint shuffled, OptimizerConfig *config, bint panels, Py_ssize_t group_width,
        Py_ssize_t n_groups, floating *Xt, floating *Yt, floating **panel_rows,
        double[::1] epoch_losses, int n_threads) noexcept nogil:
    """train's loop; see train. panel_rows: the panel path's activations,
    deltas, sample-major deltas and products, n_layers of each."""
    cdef Py_ssize_t n_samples = X.shape[0], n_in = X.shape[1], n_out = Y.shape[1]
    cdef Py_ssize_t epoch, batch, start, n_rows, param, n_elements
    cdef const Py_ssize_t *rows = NULL
    cdef const floating *X_rows
    cdef const floating *Y_rows
    cdef double sum_squares
    cdef bint sgd = config.kind == SGD
    # SGD is fused into the backward pass; the others update after it.
    cdef void **targets = params if sgd else grads
    cdef floating scale = <floating> -config.lr if sgd else 1
    cdef floating beta = 1 if sgd else 0
    # One unshuffled batch is the same every epoch: transpose it once.
    cdef bint gather_each_batch = shuffled or n_batches > 1
    if panels and not gather_each_batch:
        gather_columns(&X[0, 0], NULL, n_samples, 1, n_in, Xt, group_width, n_groups)
        gather_columns(&Y[0, 0], NULL, n_samples, 1, n_out, Yt, group_width, n_groups)
    for epoch in range(epoch_losses.shape[0]):
        sum_squares = 0
        for batch in range(n_batches):
            start = batch * batch_size
            n_rows = min(batch_size, n_samples - start)
            rows = &order[epoch, start] if shuffled else NULL
            if panels:
                if gather_each_batch:
                    gather_columns(&X[0, 0] if shuffled else &X[start, 0], rows,
                                   n_rows, 1, n_in, Xt, group_width, n_groups)
                    gather_columns(&Y[0, 0] if shuffled else &Y[start, 0], rows,
                                   n_rows, 1, n_out, Yt, group_width, n_groups)
                sum_squares += panel_network_gradients(
                    Xt, Yt, n_rows, group_width, n_groups, params, targets, sizes,
                    n_layers, output_tanh, panel_rows, panel_rows + n_layers,
                    panel_rows + 2 * n_layers, panel_rows + 3 * n_layers, scale, beta,
                    n_threads)
            else:
                if shuffled:
                    gather_rows(<const char *> &X[0, 0], rows, n_rows,
                                n_in * sizeof(floating), <char *> X_batch)
                    gather_rows(<const char *> &Y[0, 0], rows, n_rows,
                                n_out * sizeof(floating), <char *> Y_batch)
                    X_rows = X_batch
                    Y_rows = Y_batch
                else:
                    X_rows = &X[start, 0]
                    Y_rows = &Y[start, 0]
                sum_squares += network_gradients(
                    X_rows, Y_rows, n_rows, params, grads, sizes, n_layers, output_tanh,
                    activations, deltas, partials, config.lr if sgd else 0, n_threads)
            config.step += 1
            for param in range(2 * n_layers if not sgd else 0):
                n_elements = sizes[param // 2 + 1]
                if param % 2 == 0:
                    n_elements *= sizes[param // 2]
                optimizer_step(<floating *> params[param], <floating *> grads[param],
                               <floating *> state1[param], <floating *> state2[param],
                               n_elements, config, n_threads)
        epoch_losses[epoch] = sum_squares / (n_samples * n_out)
