# The dense tanh layer's passes, shared with the model programs (_lgm,
# _stm); implemented in _dense.pyx. Row-major pointers, shapes trusted.
from cython cimport floating


cdef void dense_forward_rows(
        const floating *X,    # IN (n_rows, n_in)
        const floating *W,    # IN (n_in, n_out)
        const floating *b,    # IN (n_out,)
        floating *A,          # OUT (n_rows, n_out)
        Py_ssize_t n_rows, Py_ssize_t n_in, Py_ssize_t n_out,
        bint apply_tanh) noexcept nogil

# dense_forward_rows on rows ldx (X) and lda (A) values apart.
cdef void dense_forward_strided(
        const floating *X, Py_ssize_t ldx, const floating *W, const floating *b,
        floating *A, Py_ssize_t lda, Py_ssize_t n_rows, Py_ssize_t n_in, Py_ssize_t n_out,
        bint apply_tanh) noexcept nogil

cdef void dense_forward(
        const floating *X, const floating *W, const floating *b,
        floating *A,          # OUT (n_samples, n_out)
        Py_ssize_t n_samples, Py_ssize_t n_in, Py_ssize_t n_out,
        bint apply_tanh, int n_threads) noexcept nogil

cdef void dense_forward_steps(
        const floating *X,    # IN (n_samples, n_steps, n_in)
        const floating *W, const floating *b,
        floating *A,          # OUT (n_samples, n_steps, n_out)
        Py_ssize_t n_samples, Py_ssize_t n_steps, Py_ssize_t n_in, Py_ssize_t n_out,
        bint apply_tanh, int n_threads) noexcept nogil

cdef void dense_backward(
        const floating *X, const floating *W, const floating *A,
        const floating *dA,   # IN (n_samples, n_out)
        floating *dZ,         # OUT (n_samples, n_out), may be dA
        floating *dX,         # OUT (n_samples, n_in), or NULL
        floating *dW,         # INOUT (n_in, n_out)
        floating *db,         # INOUT (n_out,)
        floating grad_scale, floating grad_beta,
        Py_ssize_t n_samples, Py_ssize_t n_in, Py_ssize_t n_out,
        bint apply_tanh,
        bint input_tanh,      # dX also times (1 - X^2): the layer below's dZ
        int n_threads) noexcept nogil

cdef double dense_stack_gradients(
        const floating *X,    # IN (n_samples, sizes[0])
        const floating *Y,    # IN (n_samples, sizes[n_layers]), the targets
        Py_ssize_t n_samples,
        void **params,        # IN W, b of each layer
        void **targets,       # INOUT laid out as params
        const Py_ssize_t *sizes, Py_ssize_t n_layers, bint output_tanh,
        void **activations,   # OUT each layer's (n_samples, sizes[l + 1])
        void **deltas,        # OUT each layer's dZ, shaped as activations
        double *partials,     # scratch: one per 64 samples
        floating grad_scale, floating grad_beta, int n_threads) noexcept nogil
