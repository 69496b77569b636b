# The one BLAS shim: row-major GEMM over scipy's BLAS for both dtypes.
# Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T, so the
# operands are swapped on the way in instead of transposing anything.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating *A, int lda,
                      const floating *B, int ldb,
                      floating beta, floating *C, int ldc) noexcept nogil:
    """C (m, n) = alpha op(A) op(B) + beta C, all row-major.

    op(A) is (m, k): A is stored (m, k) with leading dimension lda, or (k, m)
    when trans_a. Likewise B is (k, n), or (n, k) when trans_b.
    """
    cdef char ta = b't' if trans_a else b'n'
    cdef char tb = b't' if trans_b else b'n'
    cdef Py_ssize_t i, j
    if m <= 0 or n <= 0:
        return
    if k <= 0:
        # Nothing to multiply: C = beta C (BLAS would reject the zero leading dims).
        for i in range(m):
            for j in range(n):
                C[i * ldc + j] = 0 if beta == 0 else beta * C[i * ldc + j]
        return
    if floating is double:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double *> B, &ldb,
              <double *> A, &lda, &beta, C, &ldc)
    else:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float *> B, &ldb,
              <float *> A, &lda, &beta, C, &ldc)
