# The one chunked-parallel pattern. Work is cut into tasks of a fixed size
# that depends only on the shapes, threads take whole tasks, and anything
# summed over tasks is combined afterwards in task order: the thread count
# decides who computes a task, never what is computed, so results are the
# same bits for any number of threads.

cdef enum:
    CHUNK_ROWS = 64       # samples per task in batch-parallel loops
    BLOCK_COLS = 64       # columns per task of a column sum (bias gradients)
    BLOCK_ELEMS = 16384   # elements per task in element-wise passes
    # A row task of a GEMM does at least about this many multiply-adds
    # where that takes at most 4x CHUNK_ROWS rows (gemm_task_rows).
    TASK_WORK = 2097152
    MIN_PARALLEL_WORK = 1048576  # below ~this many flops (~20 us) threads cost more than they save
    # OpenBLAS threads a GEMM only above about 64**3 multiply-adds: smaller
    # calls need no guard keeping BLAS single-threaded (lgmstm._threads).
    BLAS_THREADING_WORK = 262144
    # The most multiply-adds an epoch of a short fit may take (a few ms): a
    # short fit is one compiled call, which Ctrl-C interrupts only after it.
    SHORT_FIT_WORK = 16777216
    # A fast call (predict, step, the short fit) of fewer multiply-adds
    # than this (a few us) keeps the GIL: releasing it and taking it back
    # costs a tenth of a microsecond or more, Python threads wait no longer.
    GIL_HELD_WORK = 65536


cdef inline Py_ssize_t n_tasks(Py_ssize_t n_items, Py_ssize_t per_task) noexcept nogil:
    return (n_items + per_task - 1) // per_task


cdef inline Py_ssize_t gemm_task_rows(Py_ssize_t n_cols, Py_ssize_t n_inner) noexcept nogil:
    """Rows per task for a row-split GEMM with n_cols outputs and n_inner terms.

    BLAS repacks the shared operand for every task, which costs about 1/rows
    of the arithmetic: big products get taller tasks (about
    sqrt(n_cols n_inner) / 2 rows, at most 256), and so do tasks of fewer
    than TASK_WORK multiply-adds (64-row tasks of a 256 -> 64 layer ran at
    0.7x BLAS's speed on the whole batch); tiny products keep CHUNK_ROWS.
    Depends on shapes only, never on the thread count.
    """
    cdef Py_ssize_t rows = CHUNK_ROWS
    while rows < 256 and (4 * rows * rows < n_cols * n_inner
                          or (rows * n_cols * n_inner < TASK_WORK
                              and 4 * rows * n_cols * n_inner >= TASK_WORK)):
        rows *= 2
    return rows


cdef inline int threads_for(int n_threads, Py_ssize_t n_tasks_, double work) noexcept nogil:
    """How many threads to use on n_tasks_ tasks totalling about `work` flops:
    none past the number of tasks, and one more per MIN_PARALLEL_WORK of
    work, so that each has enough to pay for waking it (on 16 cores, a
    small region on every thread runs slower than on two)."""
    cdef double most = 1 + work / MIN_PARALLEL_WORK
    if work < MIN_PARALLEL_WORK or n_tasks_ <= 1 or n_threads <= 1:
        return 1
    if n_tasks_ < n_threads:
        n_threads = <int> n_tasks_
    return n_threads if n_threads < most else <int> most
