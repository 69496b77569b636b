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
from _parallel cimport CHUNK_ROWS as _CHUNK_ROWS, n_tasks
from _tanh cimport tanh_inplace

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
    """
    cdef Py_ssize_t n_samples = X.shape[0]
    cdef Py_ssize_t n_in = X.shape[1], n_out = Y.shape[1]
    cdef Py_ssize_t n_layers = layer_sizes.shape[0] - 1
    cdef Py_ssize_t n_epochs = epoch_losses.shape[0]
    cdef bint shuffled = order.shape[0] > 0
    cdef Py_ssize_t epoch, batch, start, n_rows, param, n_elements
    cdef const floating *X_rows
    cdef const floating *Y_rows
    cdef double sum_squares
    cdef OptimizerConfig config = optimizer_config(optimizer, lr, momentum, beta1, beta2, eps, step)
    with nogil:
        for epoch in range(n_epochs):
            sum_squares = 0
            for batch in range((n_samples + batch_size - 1) // batch_size):
                start = batch * batch_size
                n_rows = min(batch_size, n_samples - start)
                if shuffled:
                    gather_rows(<const char *> &X[0, 0], &order[epoch, start], n_rows,
                                n_in * sizeof(floating), <char *> &X_batch[0, 0])
                    gather_rows(<const char *> &Y[0, 0], &order[epoch, start], n_rows,
                                n_out * sizeof(floating), <char *> &Y_batch[0, 0])
                    X_rows = &X_batch[0, 0]
                    Y_rows = &Y_batch[0, 0]
                else:
                    X_rows = &X[start, 0]
                    Y_rows = &Y[start, 0]
                # SGD is fused into the backward pass; the others update after it.
                sum_squares += network_gradients(
                    X_rows, Y_rows, n_rows, params.data, grads.data,
                    &layer_sizes[0], n_layers, output_tanh, activations.data,
                    deltas.data, &partials[0], lr if optimizer == SGD else 0,
                    n_threads)
                config.step += 1
                for param in range(2 * n_layers if optimizer != SGD else 0):
                    n_elements = layer_sizes[param // 2 + 1]
                    if param % 2 == 0:
                        n_elements *= layer_sizes[param // 2]
                    optimizer_step(<floating *> params.data[param],
                                   <floating *> grads.data[param],
                                   <floating *> state1.data[param],
                                   <floating *> state2.data[param],
                                   n_elements, &config, n_threads)
            epoch_losses[epoch] = sum_squares / (n_samples * n_out)
    return config.step
