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
from libc.math cimport sqrt

from lgmstm._parallel cimport BLOCK_ELEMS, n_tasks, threads_for

cdef extern from "_optim.h" nogil:
    # The codes lgmstm/_training.py's optimizer table gives (defined there).
    enum:
        SGD "LGMSTM_SGD"
        MOMENTUM "LGMSTM_MOMENTUM"
        ADAM "LGMSTM_ADAM"


cdef struct Optimizer:
    int kind
    double lr
    double momentum
    bint nesterov
    double beta1, beta2, eps
    double weight_decay   # L2 on the weights: the loss gains weight_decay / 2 sum(W^2)
    long long step        # updates done so far (adam's bias correction)


cdef extern from "_optim.h" nogil:
    # The element-wise update, built per ISA (see there).
    void lgmstm_optimizer_update_d(int kind, int nesterov, double *param, double *grad,
                                   double *m, double *v, Py_ssize_t start, Py_ssize_t stop,
                                   double lr, double mu, double b1, double b2,
                                   double one_minus_b1, double one_minus_b2,
                                   double correction1, double correction2, double eps,
                                   int decayed, double decay)
    void lgmstm_optimizer_update_f(int kind, int nesterov, float *param, float *grad,
                                   float *m, float *v, Py_ssize_t start, Py_ssize_t stop,
                                   float lr, float mu, float b1, float b2,
                                   float one_minus_b1, float one_minus_b2,
                                   float correction1, float correction2, float eps,
                                   int decayed, float decay)


cdef inline void optimizer_block(
        Py_ssize_t block, floating *param, floating *grad, floating *first_moment,
        floating *second_moment, Py_ssize_t n, const Optimizer *optimizer,
        bint decayed) noexcept nogil:
    """One block of BLOCK_ELEMS parameters of optimizer_step: the hyper-
    parameters in the parameters' dtype, then the update (_optim.h)."""
    cdef Py_ssize_t start = block * BLOCK_ELEMS
    cdef Py_ssize_t stop = min(start + BLOCK_ELEMS, n)
    cdef bint apply_decay = decayed and optimizer.weight_decay != 0
    if floating is double:
        lgmstm_optimizer_update_d(
            optimizer.kind, optimizer.nesterov, param, grad, first_moment, second_moment,
            start, stop, optimizer.lr, optimizer.momentum, optimizer.beta1, optimizer.beta2,
            1.0 - optimizer.beta1, 1.0 - optimizer.beta2,
            1.0 - optimizer.beta1 ** optimizer.step, 1.0 - optimizer.beta2 ** optimizer.step,
            optimizer.eps, apply_decay, optimizer.weight_decay)
    else:
        lgmstm_optimizer_update_f(
            optimizer.kind, optimizer.nesterov, param, grad, first_moment, second_moment,
            start, stop, <float> optimizer.lr, <float> optimizer.momentum,
            <float> optimizer.beta1, <float> optimizer.beta2,
            <float> (1.0 - optimizer.beta1), <float> (1.0 - optimizer.beta2),
            <float> (1.0 - optimizer.beta1 ** optimizer.step),
            <float> (1.0 - optimizer.beta2 ** optimizer.step),
            <float> optimizer.eps, apply_decay, <float> optimizer.weight_decay)


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
