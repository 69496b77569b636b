# The Elman recurrent layer's passes, shared with the STM program (_stm);
# implemented in _rnn.pyx. Row-major pointers, shapes trusted; h0, dH,
# dh_last NULL mean zeros, dX and dh0 NULL mean "not wanted".
from cython cimport floating


cdef Py_ssize_t rnn_scratch_size(Py_ssize_t n_samples, Py_ssize_t n_in,
                                 Py_ssize_t n_hidden, bint backward) noexcept nogil

# Samples per chunk of rnn_forward_pass (the last takes what is left).
cdef Py_ssize_t forward_chunk_rows(Py_ssize_t n_hidden) noexcept nogil

cdef void rnn_forward_pass(
        const floating *X,     # IN (n_samples, n_steps, n_in)
        const floating *h0,    # IN (n_samples, n_hidden) or NULL
        const floating *Wx, const floating *Wh, const floating *b,
        const Py_ssize_t *lengths,
        floating *H,           # OUT (n_samples, n_steps, n_hidden)
        floating *h_last,      # OUT (n_samples, n_hidden) or NULL
        floating *scratch,     # rnn_scratch_size(..., backward=False) values
        Py_ssize_t *order,     # scratch (n_samples,)
        Py_ssize_t n_samples, Py_ssize_t n_steps, Py_ssize_t n_in,
        Py_ssize_t n_hidden, int n_threads) noexcept nogil

cdef void rnn_backward_pass(
        const floating *X, const floating *h0, const floating *Wx,
        const floating *Wh, const floating *H,
        const floating *dH,       # IN (n_samples, n_steps, n_hidden) or NULL
        const floating *dh_last,  # IN (n_samples, n_hidden) or NULL
        const Py_ssize_t *lengths,
        floating *dZ,             # scratch (n_samples, n_steps, n_hidden), may be dH
        floating *dz_first,       # scratch (n_samples, n_hidden)
        floating *dX,             # OUT (n_samples, n_steps, n_in) or NULL
        floating *dh0,            # OUT (n_samples, n_hidden) or NULL
        floating *dWx, floating *dWh, floating *db,   # OUT
        floating *scratch,        # rnn_scratch_size(..., backward=True) values
        Py_ssize_t *order,        # scratch (n_samples,)
        Py_ssize_t n_samples, Py_ssize_t n_steps, Py_ssize_t n_in,
        Py_ssize_t n_hidden, int n_threads) noexcept nogil
