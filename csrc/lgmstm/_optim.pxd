# Optimizers with their moments, and gradient clipping. Element-wise, in
# fixed blocks (see _parallel.pxd); the clipping norm is summed in one order.
#
# A weight first takes its decay into the gradient: grad += weight_decay param
# (biases never; after clipping, as torch.optim's weight_decay). Then:
# sgd:      param -= lr grad
# momentum: m = momentum m + grad;  param -= lr m
#           (nesterov: param -= lr (grad + momentum m), with the new m)
# adam:     m = b1 m + (1 - b1) grad;  v = b2 v + (1 - b2) grad^2
#           param -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
# m and v are the first and second moments; t counts updates from 1.
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, sqrtf

from lgmstm._parallel cimport BLOCK_ELEMS, n_tasks, threads_for

cdef enum OptimizerKind:
    # The codes lgmstm/_training.py's optimizer table gives.
    SGD = 0
    MOMENTUM = 1
    ADAM = 2


cdef struct Optimizer:
    int kind
    double lr
    double momentum
    bint nesterov
    double beta1, beta2, eps
    double weight_decay   # L2 on the weights: the loss gains weight_decay / 2 sum(W^2)
    long long step        # updates done so far (adam's bias correction)


cdef inline floating root(floating x) noexcept nogil:
    if floating is double:
        return sqrt(x)
    else:
        return sqrtf(x)


cdef inline void optimizer_block(
        Py_ssize_t block, floating *param, floating *grad, floating *first_moment,
        floating *second_moment, Py_ssize_t n, const Optimizer *optimizer,
        bint decayed) noexcept nogil:
    cdef Py_ssize_t i
    cdef Py_ssize_t start = block * BLOCK_ELEMS
    cdef Py_ssize_t stop = min(start + BLOCK_ELEMS, n)
    cdef floating lr = <floating> optimizer.lr
    cdef floating mu = <floating> optimizer.momentum
    cdef floating b1 = <floating> optimizer.beta1
    cdef floating b2 = <floating> optimizer.beta2
    cdef floating one_minus_b1 = <floating> (1.0 - optimizer.beta1)
    cdef floating one_minus_b2 = <floating> (1.0 - optimizer.beta2)
    cdef floating correction1 = <floating> (1.0 - optimizer.beta1 ** optimizer.step)
    cdef floating correction2 = <floating> (1.0 - optimizer.beta2 ** optimizer.step)
    cdef floating eps = <floating> optimizer.eps
    cdef floating decay = <floating> optimizer.weight_decay
    if decayed and optimizer.weight_decay != 0:
        for i in range(start, stop):
            grad[i] = grad[i] + decay * param[i]
    if optimizer.kind == SGD:
        for i in range(start, stop):
            param[i] = param[i] - lr * grad[i]
    elif optimizer.kind == MOMENTUM and optimizer.nesterov:
        for i in range(start, stop):
            first_moment[i] = mu * first_moment[i] + grad[i]
            param[i] = param[i] - lr * (grad[i] + mu * first_moment[i])
    elif optimizer.kind == MOMENTUM:
        for i in range(start, stop):
            first_moment[i] = mu * first_moment[i] + grad[i]
            param[i] = param[i] - lr * first_moment[i]
    else:
        for i in range(start, stop):
            first_moment[i] = b1 * first_moment[i] + one_minus_b1 * grad[i]
            second_moment[i] = b2 * second_moment[i] + one_minus_b2 * grad[i] * grad[i]
            param[i] = param[i] - lr * (first_moment[i] / correction1) / (
                root(second_moment[i] / correction2) + eps)


cdef inline void optimizer_step(floating *param,           # INOUT (n,)
                                floating *grad,            # IN (n,); scratch when decayed
                                floating *first_moment,    # INOUT (n,), momentum and adam
                                floating *second_moment,   # INOUT (n,), adam
                                Py_ssize_t n, const Optimizer *optimizer,
                                bint decayed, int n_threads) noexcept nogil:
    """One update of n parameters (see above), optimizer.step already counted;
    decayed: a weight, which takes optimizer.weight_decay (a bias does not)."""
    cdef Py_ssize_t n_blocks = n_tasks(n, BLOCK_ELEMS)
    cdef int n_used = threads_for(n_threads, n_blocks, 8.0 * n)
    cdef Py_ssize_t block
    if n_used == 1:
        for block in range(n_blocks):
            optimizer_block(block, param, grad, first_moment, second_moment, n, optimizer,
                            decayed)
    else:
        for block in prange(n_blocks, num_threads=n_used, schedule='static'):
            optimizer_block(block, param, grad, first_moment, second_moment, n, optimizer,
                            decayed)


cdef inline void clip_gradients(floating **grads,            # INOUT
                                const Py_ssize_t *counts, Py_ssize_t n_params,
                                double clip_norm) noexcept nogil:
    """Scale every gradient by clip_norm / norm when their global norm exceeds it.

    The norm adds per-parameter sums of squares, each in element order.
    """
    cdef double total = 0, norm
    cdef floating scale
    cdef floating *grad
    cdef Py_ssize_t param, i
    for param in range(n_params):
        grad = grads[param]
        for i in range(counts[param]):
            total += <double> grad[i] * grad[i]
    norm = sqrt(total)
    if not norm > clip_norm:
        return
    scale = <floating> (clip_norm / norm)
    for param in range(n_params):
        grad = grads[param]
        for i in range(counts[param]):
            grad[i] *= scale
