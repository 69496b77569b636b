from cython cimport floating

cdef extern from "_tanh.h" nogil:
    int LGMSTM_HAS_DISPATCH
    void lgmstm_tanh_inplace_d(double *x, Py_ssize_t n)
    void lgmstm_tanh_inplace_f(float *x, Py_ssize_t n)


cdef inline void tanh_inplace(floating *x, Py_ssize_t n) noexcept nogil:
    """x[:n] = tanh(x[:n]), vectorised, a few ulp from the correctly rounded value."""
    if floating is double:
        lgmstm_tanh_inplace_d(x, n)
    else:
        lgmstm_tanh_inplace_f(x, n)
