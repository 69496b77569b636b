# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled dense tanh layers, whole-network passes and the LGM training loop.

Unchecked: call these through lgmstm.kernels / lgmstm.LGM, which validate
shapes, dtypes and layouts once and allocate every buffer.

A network of n_layers layers has layer_sizes [n_in, n_1, ..., n_out] and its
parameters in one list [W_0, b_0, W_1, b_1, ...]; W_l is (sizes[l], sizes[l+1]).
"""
cimport numpy as cnp
from cython cimport floating
from libc.stdlib cimport malloc, free

from _layers cimport (dense_forward, dense_forward_loss, dense_backward,
                      optimizer_step, optimizer_config, OptimizerConfig, SGD,
                      gather_rows)
from _parallel cimport CHUNK_ROWS as _CHUNK_ROWS, MIN_PARALLEL_WORK, n_tasks
from _tanh cimport tanh_inplace
from _panel cimport (panel_product, row_dots, row_sums, gather_columns, panel_loss,
                     padded_width)

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


cdef inline bint use_panels(Py_ssize_t n_rows, const Py_ssize_t *sizes,
                            Py_ssize_t n_layers) noexcept nogil:
    """Whether batches of n_rows train in the panel layout (see _panel.pxd).

    Yes while a batch is too small to share out among threads: there BLAS
    runs tiny products at a few GFLOP/s, the panel kernels at 15-60.
    Depends on the shapes only.
    """
    cdef double work = 0
    cdef Py_ssize_t layer
    for layer in range(n_layers):
        work += 2.0 * n_rows * sizes[layer] * sizes[layer + 1]
    return work < MIN_PARALLEL_WORK


cdef double panel_network_gradients(
        const floating *Xt, const floating *Yt, Py_ssize_t n_rows,
        Py_ssize_t width, void **params, void **targets, const Py_ssize_t *sizes,
        Py_ssize_t n_layers, bint output_tanh, floating **activations,
        floating **deltas, floating scale, floating beta) noexcept nogil:
    """network_gradients in the panel layout, serial; returns the sum of squares.

    Xt (n_in, width) and Yt (n_out, width) hold a batch of n_rows samples;
    activations[l] and deltas[l] are (sizes[l + 1], width). Each layer sets
    targets = scale * gradient + beta * targets: (1, 0) with targets =
    grads gives the gradients, (-lr, 1) with targets = params an SGD step,
    taken once the layer's W has given the gradient below it.
    """
    cdef const floating *layer_input = Xt
    cdef const floating *W
    cdef Py_ssize_t layer, n_in, n_out = sizes[n_layers]
    cdef double sum_squares
    for layer in range(n_layers):
        panel_product(sizes[layer + 1], width, sizes[layer], <floating *> params[2 * layer],
                      1, sizes[layer + 1], layer_input, width,
                      <floating *> params[2 * layer + 1], False, NULL, 0,
                      activations[layer], width)
        if output_tanh or layer < n_layers - 1:
            tanh_inplace(activations[layer], sizes[layer + 1] * width)
        layer_input = activations[layer]
    sum_squares = panel_loss(activations[n_layers - 1], Yt, deltas[n_layers - 1], n_out,
                             1, width, n_rows, width, 1.0 / max(1, n_rows * n_out),
                             output_tanh)
    for layer in range(n_layers - 1, -1, -1):
        n_in = sizes[layer]
        n_out = sizes[layer + 1]
        W = <floating *> params[2 * layer]
        layer_input = Xt if layer == 0 else activations[layer - 1]
        if layer > 0:
            # dZ below = (W dZ) (1 - A^2): hidden layers are tanh.
            panel_product(n_in, width, n_out, W, n_out, 1, deltas[layer], width, NULL,
                          False, layer_input, width, deltas[layer - 1], width)
        row_dots(n_in, n_out, width, layer_input, width, deltas[layer], width, scale,
                 beta, <floating *> targets[2 * layer], n_out)
        row_sums(n_out, width, deltas[layer], width, scale, beta,
                 <floating *> targets[2 * layer + 1])
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
    cdef bint panels = use_panels(min(batch_size, n_samples), &layer_sizes[0], n_layers)
    cdef Py_ssize_t width = padded_width(min(batch_size, n_samples), sizeof(floating))
    cdef floating **panel_rows = NULL
    cdef floating *Xt = NULL
    cdef floating *Yt = NULL
    cdef Py_ssize_t n_values, layer
    cdef OptimizerConfig config = optimizer_config(optimizer, lr, momentum, beta1, beta2, eps, step)
    if panels:
        # Xt, Yt, then each layer's activations and deltas, in one block.
        n_values = n_in + n_out
        for layer in range(n_layers):
            n_values += 2 * layer_sizes[layer + 1]
        panel_rows = <floating **> malloc(2 * n_layers * sizeof(floating *))
        Xt = <floating *> malloc(n_values * width * sizeof(floating))
        if panel_rows == NULL or Xt == NULL:
            free(panel_rows)
            free(Xt)
            raise MemoryError()
        Yt = Xt + n_in * width
        panel_rows[0] = Yt + n_out * width
        for layer in range(1, 2 * n_layers):
            panel_rows[layer] = panel_rows[layer - 1] + layer_sizes[(layer - 1) % n_layers + 1] * width
    try:
        with nogil:
            train_epochs(X, Y, params.data, grads.data, state1.data, state2.data,
                         &layer_sizes[0], n_layers, output_tanh, activations.data,
                         deltas.data, &X_batch[0, 0], &Y_batch[0, 0], &partials[0],
                         order, batch_size, n_batches, shuffled, &config, panels,
                         width, Xt, Yt, panel_rows, panel_rows + n_layers,
                         epoch_losses, n_threads)
    finally:
        free(panel_rows)
        free(Xt)
    return config.step


cdef void train_epochs(
        const floating[:, ::1] X, const floating[:, ::1] Y, void **params,
        void **grads, void **state1, void **state2, const Py_ssize_t *sizes,
        Py_ssize_t n_layers, bint output_tanh, void **activations, void **deltas,
        floating *X_batch, floating *Y_batch, double *partials,
        const Py_ssize_t[:, ::1] order, Py_ssize_t batch_size, Py_ssize_t n_batches,
        bint shuffled, OptimizerConfig *config, bint panels, Py_ssize_t width,
        floating *Xt, floating *Yt, floating **panel_activations,
        floating **panel_deltas, double[::1] epoch_losses,
        int n_threads) noexcept nogil:
    """train's loop; see train."""
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
        gather_columns(&X[0, 0], NULL, n_samples, 1, n_in, Xt, width, 1)
        gather_columns(&Y[0, 0], NULL, n_samples, 1, n_out, Yt, width, 1)
    for epoch in range(epoch_losses.shape[0]):
        sum_squares = 0
        for batch in range(n_batches):
            start = batch * batch_size
            n_rows = min(batch_size, n_samples - start)
            rows = &order[epoch, start] if shuffled else NULL
            if panels:
                if gather_each_batch:
                    gather_columns(&X[0, 0] if shuffled else &X[start, 0], rows,
                                   n_rows, 1, n_in, Xt, width, 1)
                    gather_columns(&Y[0, 0] if shuffled else &Y[start, 0], rows,
                                   n_rows, 1, n_out, Yt, width, 1)
                sum_squares += panel_network_gradients(
                    Xt, Yt, n_rows, width, params, targets, sizes, n_layers,
                    output_tanh, panel_activations, panel_deltas, scale, beta)
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
