# Row gather and scatter: a mini-batch taken out of, or put back into, the
# rows of a row-major array.
from libc.string cimport memcpy, memset


cdef inline void gather_rows(const char *source, const Py_ssize_t *rows,
                             Py_ssize_t n_rows, size_t row_bytes,
                             char *dest) noexcept nogil:
    """dest[i] = source[rows[i]] for rows of row_bytes bytes."""
    cdef Py_ssize_t i
    for i in range(n_rows):
        memcpy(dest + i * row_bytes, source + rows[i] * row_bytes, row_bytes)


cdef inline void scatter_rows(const char *source, const Py_ssize_t *rows,
                              Py_ssize_t n_rows, size_t row_bytes,
                              char *dest) noexcept nogil:
    """dest[rows[i]] = source[i] for rows of row_bytes bytes."""
    cdef Py_ssize_t i
    for i in range(n_rows):
        memcpy(dest + rows[i] * row_bytes, source + i * row_bytes, row_bytes)


cdef inline void zero_past_lengths(char *rows, const Py_ssize_t *lengths, Py_ssize_t n_rows,
                                   Py_ssize_t n_steps, size_t step_bytes) noexcept nogil:
    """Zero each row's steps from lengths[i] on: n_rows rows of n_steps steps
    of step_bytes bytes (a sequence's outputs past its end)."""
    cdef Py_ssize_t i
    for i in range(n_rows):
        if lengths[i] < n_steps:
            memset(rows + (i * n_steps + lengths[i]) * step_bytes, 0,
                   (n_steps - lengths[i]) * step_bytes)
