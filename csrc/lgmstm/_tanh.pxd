from cython cimport floating

cdef extern from "_tanh.h" nogil:
    int LGMSTM_HAS_DISPATCH
    void lgmstm_tanh_inplace_d(double *x, Py_ssize_t n)
    void lgmstm_tanh_inplace_f(float *x, Py_ssize_t n)
    void lgmstm_tanh_rows_d(double *x, Py_ssize_t n_rows, Py_ssize_t n_cols, Py_ssize_t ld)
    void lgmstm_tanh_rows_f(float *x, Py_ssize_t n_rows, Py_ssize_t n_cols, Py_ssize_t ld)
    void lgmstm_tanh_grad_d(double *dz, const double *da, const double *a, Py_ssize_t n)
    void lgmstm_tanh_grad_f(float *dz, const float *da, const float *a, Py_ssize_t n)


cdef inline void tanh_inplace(floating *x, Py_ssize_t n) noexcept nogil:
    """x[:n] = tanh(x[:n]), vectorised, a few ulp from the correctly rounded value."""
    if floating is double:
        lgmstm_tanh_inplace_d(x, n)
    else:
        lgmstm_tanh_inplace_f(x, n)


cdef inline void tanh_rows(floating *x, Py_ssize_t n_rows, Py_ssize_t n_cols,
                           Py_ssize_t ld) noexcept nogil:
    """tanh_inplace on n_rows rows of n_cols values, rows ld apart."""
    if floating is double:
        lgmstm_tanh_rows_d(x, n_rows, n_cols, ld)
    else:
        lgmstm_tanh_rows_f(x, n_rows, n_cols, ld)


cdef inline void tanh_grad(floating *dZ, const floating *dA, const floating *A,
                           Py_ssize_t n) noexcept nogil:
    """dZ[:n] = dA[:n] (1 - A[:n]^2), vectorised (dZ may be dA): the
    gradient through A = tanh(Z)."""
    if floating is double:
        lgmstm_tanh_grad_d(dZ, dA, A, n)
    else:
        lgmstm_tanh_grad_f(dZ, dA, A, n)
