# Small networks without BLAS: the feature-major layout of _panel.h.
#
# A batch is held transposed, one row per unit (feature) and one column per
# sample. Its samples are cut into groups of task_width columns (whole
# panels of LGMSTM_PANEL_BYTES; the last group is padded), and a group has
# n_blocks * task_width columns: block b (a sequence's step b; a dense batch
# has one block) of its sample i at column b * task_width + i % task_width.
# Padding columns hold 0 in inputs and targets, and so do all gradients
# there: sums over every column are sums over the samples.
#
# Every buffer is group-major (group_block): a group's rows, of its own
# columns only, one after another, so that the task that owns a group (and
# gathers it, gather_into_group) reads and writes one run of memory that no
# other task touches. With every row holding all the groups side by side,
# as before issue 13, a core's hardware prefetcher ran on from its group's
# columns into the next group's, which another core was writing, and on 2
# cores two threads took longer than one. (On the 2-core
# Xeon of issue 13: two threads updating half of every row of a 100 x 208
# float64 buffer each took 12.2 us a pass, one thread all of it 8.4 us; two
# group-major halves, 4.0 us.)
from cython cimport floating

from libc.stdint cimport uintptr_t
from libc.stdlib cimport calloc
from libc.string cimport memset

from cython.parallel cimport prange

from lgmstm._parallel cimport BLOCK_ELEMS, MIN_PARALLEL_WORK, n_tasks, threads_for

cdef extern from "_panel.h" nogil:
    enum: LGMSTM_PANEL_BYTES
    void lgmstm_panel_product_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                const double *A, Py_ssize_t a_rs, Py_ssize_t a_cs,
                                const double *B, Py_ssize_t ldb, const double *bias,
                                int accumulate, const double *D,
                                Py_ssize_t ldd, double *C, Py_ssize_t ldc)
    void lgmstm_panel_product_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                const float *A, Py_ssize_t a_rs, Py_ssize_t a_cs,
                                const float *B, Py_ssize_t ldb, const float *bias,
                                int accumulate, const float *D,
                                Py_ssize_t ldd, float *C, Py_ssize_t ldc)
    void lgmstm_row_dots_d(Py_ssize_t m_x, Py_ssize_t m_y, Py_ssize_t n,
                           const double *X, Py_ssize_t ldx, const double *Y,
                           Py_ssize_t ldy, double scale, double beta, double *out,
                           Py_ssize_t ld_out)
    void lgmstm_row_dots_f(Py_ssize_t m_x, Py_ssize_t m_y, Py_ssize_t n,
                           const float *X, Py_ssize_t ldx, const float *Y,
                           Py_ssize_t ldy, float scale, float beta, float *out,
                           Py_ssize_t ld_out)
    void lgmstm_row_sums_d(Py_ssize_t m_y, Py_ssize_t n, const double *Y,
                           Py_ssize_t ldy, double scale, double beta, double *out)
    void lgmstm_row_sums_f(Py_ssize_t m_y, Py_ssize_t n, const float *Y,
                           Py_ssize_t ldy, float scale, float beta, float *out)
    int lgmstm_gather_panel_d(const double *src, Py_ssize_t row_stride,
                               const Py_ssize_t *rows, Py_ssize_t first, Py_ssize_t n_lanes,
                               Py_ssize_t n_values, Py_ssize_t n_features, double *dest,
                               Py_ssize_t ld, Py_ssize_t width)
    int lgmstm_gather_panel_f(const float *src, Py_ssize_t row_stride,
                               const Py_ssize_t *rows, Py_ssize_t first, Py_ssize_t n_lanes,
                               Py_ssize_t n_values, Py_ssize_t n_features, float *dest,
                               Py_ssize_t ld, Py_ssize_t width)
    void lgmstm_scatter_panel_d(const double *src, Py_ssize_t ld, Py_ssize_t n_lanes,
                                Py_ssize_t n_values, double *dest, Py_ssize_t row_stride)
    void lgmstm_scatter_panel_f(const float *src, Py_ssize_t ld, Py_ssize_t n_lanes,
                                Py_ssize_t n_values, float *dest, Py_ssize_t row_stride)
    int lgmstm_panel_level()
    void lgmstm_pack_panels_d(const double *B, Py_ssize_t ldb, int transpose,
                              Py_ssize_t k, Py_ssize_t n, double *packed)
    void lgmstm_pack_panels_f(const float *B, Py_ssize_t ldb, int transpose,
                              Py_ssize_t k, Py_ssize_t n, float *packed)
    void lgmstm_packed_product_d(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                 const double *A, Py_ssize_t lda, const double *packed,
                                 int accumulate, double *C, Py_ssize_t ldc,
                                 double *scratch)
    void lgmstm_packed_product_f(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                 const float *A, Py_ssize_t lda, const float *packed,
                                 int accumulate, float *C, Py_ssize_t ldc,
                                 float *scratch)


cdef inline Py_ssize_t padded_width(Py_ssize_t n_samples, size_t itemsize) noexcept nogil:
    """Columns a block of n_samples samples takes: whole panels (LGMSTM_PANEL_BYTES)."""
    cdef Py_ssize_t panel = LGMSTM_PANEL_BYTES // itemsize
    return max(1, (n_samples + panel - 1) // panel) * panel


cdef inline void panel_product(
        Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating *A, Py_ssize_t a_rs,
        Py_ssize_t a_cs, const floating *B, Py_ssize_t ldb, const floating *bias,
        bint accumulate, const floating *D, Py_ssize_t ldd, floating *C,
        Py_ssize_t ldc) noexcept nogil:
    """C (m, n) = (init + A B), times 1 - D^2 unless D is NULL; init is C when
    accumulate, else bias (NULL: 0). A[i, j] is A[i a_rs + j a_cs]. See _panel.h."""
    if floating is double:
        lgmstm_panel_product_d(m, n, k, A, a_rs, a_cs, B, ldb, bias, accumulate,
                               D, ldd, C, ldc)
    else:
        lgmstm_panel_product_f(m, n, k, A, a_rs, a_cs, B, ldb, bias, accumulate,
                               D, ldd, C, ldc)


cdef inline void row_dots(Py_ssize_t m_x, Py_ssize_t m_y, Py_ssize_t n,
                          const floating *X, Py_ssize_t ldx, const floating *Y,
                          Py_ssize_t ldy, floating scale, floating beta,
                          floating *out, Py_ssize_t ld_out) noexcept nogil:
    """out (m_x, m_y) = scale X Y^T + beta out, summed over n columns."""
    if floating is double:
        lgmstm_row_dots_d(m_x, m_y, n, X, ldx, Y, ldy, scale, beta, out, ld_out)
    else:
        lgmstm_row_dots_f(m_x, m_y, n, X, ldx, Y, ldy, scale, beta, out, ld_out)


cdef inline void row_sums(Py_ssize_t m_y, Py_ssize_t n, const floating *Y,
                          Py_ssize_t ldy, floating scale, floating beta,
                          floating *out) noexcept nogil:
    """out (m_y,) = scale (sum of each row of Y over n columns) + beta out."""
    if floating is double:
        lgmstm_row_sums_d(m_y, n, Y, ldy, scale, beta, out)
    else:
        lgmstm_row_sums_f(m_y, n, Y, ldy, scale, beta, out)


cdef enum:
    # Largest training step, in flops, that runs in the panel layout: past
    # it BLAS's products are big enough to run near its peak.
    PANEL_MAX_WORK = 33554432
    # Most sample groups a batch is cut into (group_panels).
    MAX_PANEL_GROUPS = 4
    # Fewest columns a group may have (group_panels): each group sums its
    # own weight gradients, a pass over every parameter for its columns
    # and one more to add the groups', which fewer columns do not pay for
    # (an LGM 64 -> 256 -> 256 -> 10 on 16 samples in two groups of 8 took
    # 2.5x the time of one group).
    MIN_GROUP_COLUMNS = 32
    # Rows of a weight gradient whose products a group sums at a time (in
    # L1, add_weight_gradient's product and finish_weight_gradient).
    GRADIENT_STRIPE_ROWS = 8


cdef inline void *panel_calloc(size_t n_bytes, void **allocated) noexcept nogil:
    """n_bytes of zeroed memory starting on a panel boundary (NULL when out
    of memory); free(allocated[0]) releases it. Panel rows are whole panels,
    so every row of the layout starts aligned and no vector load straddles
    two cache lines."""
    cdef uintptr_t start
    allocated[0] = calloc(n_bytes + LGMSTM_PANEL_BYTES, 1)
    if allocated[0] == NULL:
        return NULL
    start = <uintptr_t> allocated[0]
    start = (start + LGMSTM_PANEL_BYTES - 1) // LGMSTM_PANEL_BYTES * LGMSTM_PANEL_BYTES
    return <void *> start


cdef inline Py_ssize_t group_panels(Py_ssize_t n_panels, Py_ssize_t panel_columns,
                                    double step_work) noexcept nogil:
    """Panels per sample group (one parallel task each) for a batch of
    n_panels panels (panel_columns columns each: the panel's samples times
    the blocks, a sequence's steps) whose training step costs step_work
    flops.

    One group while the step is too small to share out among threads, or
    while the smaller of two groups would have fewer than MIN_GROUP_COLUMNS
    columns;
    otherwise MAX_PANEL_GROUPS groups of equal width when the panels divide
    evenly and each has that many columns, else 2 (at most one panel of
    padding more). From the shapes alone, never the thread count.
    """
    cdef Py_ssize_t groups = 1
    if (step_work >= MIN_PARALLEL_WORK and n_panels >= 2
            and (n_panels // 2) * panel_columns >= MIN_GROUP_COLUMNS):
        groups = (MAX_PANEL_GROUPS if n_panels % MAX_PANEL_GROUPS == 0
                  and (n_panels // MAX_PANEL_GROUPS) * panel_columns >= MIN_GROUP_COLUMNS
                  else 2)
    return max(1, n_tasks(n_panels, groups))


cdef inline void transpose_columns(const floating *source, Py_ssize_t n_units,
                                   Py_ssize_t n_cols, Py_ssize_t ld_source,
                                   floating *dest, Py_ssize_t ld_dest) noexcept nogil:
    """dest[c, u] = source[u, c] for u < n_units, c < n_cols, element by
    element (transpose_to_panels does it in register tiles, into rows of
    whole panels)."""
    cdef Py_ssize_t u, c
    for c in range(n_cols):
        for u in range(n_units):
            dest[c * ld_dest + u] = source[u * ld_source + c]


cdef inline bint sample_major_gradient(Py_ssize_t n_out, size_t itemsize) noexcept nogil:
    """Whether a weight gradient with n_out columns is a panel_product over
    sample-major deltas (add_weight_gradient) rather than row_dots: once n_out
    fills half a panel, so that at most half its lanes are padding; row_dots
    pays a sum across vector lanes for every weight instead."""
    return 2 * n_out >= padded_width(1, itemsize)


cdef inline void add_weight_gradient(
        Py_ssize_t n_rows, Py_ssize_t n_out, Py_ssize_t n_cols, const floating *inputs,
        Py_ssize_t ld_inputs, const floating *deltas, Py_ssize_t ld_deltas,
        const floating *deltas_t, bint first, floating scale, floating beta,
        floating *product, floating *target) noexcept nogil:
    """One part of target (n_rows, n_out) = scale inputs deltas^T + beta target:
    the sum over n_cols columns of inputs (n_rows, ld_inputs) and deltas
    (n_out, ld_deltas), both in the panel layout; `first` for the first part.

    Sample-major gradients (see sample_major_gradient) accumulate the parts
    in product (n_rows, padded n_out), over deltas_t, the deltas' columns as
    rows of padded n_out values, and finish_weight_gradient applies them;
    the others go to target with row_dots.
    """
    cdef Py_ssize_t padded = padded_width(n_out, sizeof(floating))
    if sample_major_gradient(n_out, sizeof(floating)):
        panel_product(n_rows, padded, n_cols, inputs, ld_inputs, 1, deltas_t, padded, NULL,
                      not first, NULL, 0, product, padded)
    else:
        row_dots(n_rows, n_out, n_cols, inputs, ld_inputs, deltas, ld_deltas, scale,
                 beta if first else 1, target, n_out)


cdef inline void finish_weight_gradient(
        Py_ssize_t n_rows, Py_ssize_t n_out, const floating *product, floating scale,
        floating beta, floating *target) noexcept nogil:
    """target = scale product + beta target after the last add_weight_gradient
    of a sample-major gradient (beta 0: target is not read)."""
    cdef Py_ssize_t padded = padded_width(n_out, sizeof(floating))
    cdef Py_ssize_t i, j
    if not sample_major_gradient(n_out, sizeof(floating)):
        return
    for i in range(n_rows):
        for j in range(n_out):
            target[i * n_out + j] = scale * product[i * padded + j] + (
                beta * target[i * n_out + j] if beta != 0 else 0)


cdef inline bint gather_panel(const floating *src, Py_ssize_t row_stride,
                              const Py_ssize_t *rows, Py_ssize_t first, Py_ssize_t n_lanes,
                              Py_ssize_t n_values, Py_ssize_t n_features, floating *dest,
                              Py_ssize_t ld, Py_ssize_t width) noexcept nogil:
    """lgmstm_gather_panel (_panel.h) in the dtype of floating: lanes l <
    width, sample rows[first + l] (first + l when rows is NULL) for l <
    n_lanes, else 0; value j = b n_features + f of a sample (j < n_values,
    the sample's values row_stride apart) to dest[f ld + b width + l].
    Whether every value it read was finite."""
    if floating is double:
        return lgmstm_gather_panel_d(src, row_stride, rows, first, n_lanes, n_values,
                                     n_features, dest, ld, width)
    return lgmstm_gather_panel_f(src, row_stride, rows, first, n_lanes, n_values, n_features,
                                 dest, ld, width)


cdef inline void scatter_panel(const floating *src, Py_ssize_t ld, Py_ssize_t n_lanes,
                               Py_ssize_t n_values, floating *dest,
                               Py_ssize_t row_stride) noexcept nogil:
    """lgmstm_scatter_panel (_panel.h) in the dtype of floating: value j <
    n_values of lane l < n_lanes, src[j ld + l], to dest[l row_stride + j]
    (src's lanes read to the end of their vector)."""
    if floating is double:
        lgmstm_scatter_panel_d(src, ld, n_lanes, n_values, dest, row_stride)
    else:
        lgmstm_scatter_panel_f(src, ld, n_lanes, n_values, dest, row_stride)


cdef inline void states_into_panel(const floating *h0, Py_ssize_t row_stride,
                                   Py_ssize_t first, Py_ssize_t n_valid,
                                   Py_ssize_t n_hidden, floating *H, Py_ssize_t ld,
                                   Py_ssize_t width) noexcept nogil:
    """A group's initial states into its panel block H (n_hidden rows ld
    apart, lanes [0, width)): samples first .. first + n_valid - 1 of h0
    (n_hidden values each, rows row_stride apart), zeros past them, or all
    zeros when h0 is NULL; scatter_panel takes final states back."""
    cdef Py_ssize_t j
    if h0 != NULL:
        gather_panel(h0, row_stride, NULL, first, n_valid, n_hidden, n_hidden, H, ld, width)
    else:
        for j in range(n_hidden):
            memset(H + j * ld, 0, width * sizeof(floating))


cdef inline floating *group_block(floating *block, Py_ssize_t group, Py_ssize_t n_units,
                                  Py_ssize_t group_cols) noexcept nogil:
    """Where group `group` starts in a group-major block of n_units rows:
    each group's rows (group_cols columns each, consecutive) one run."""
    return block + group * n_units * group_cols


cdef inline bint gather_into_group(
        const floating *source, const Py_ssize_t *rows, Py_ssize_t n_rows,
        Py_ssize_t n_blocks, Py_ssize_t n_features, floating *dest,
        Py_ssize_t task_width, Py_ssize_t group) noexcept nogil:
    """The columns of one group of a batch, padding included, transposed
    into the group's own block dest (n_features rows of n_blocks *
    task_width columns: see group_block).

    source: row-major samples of n_blocks * n_features values each (block b
    holds step b's features); the batch is its rows `rows[i]`, or its first
    n_rows rows when rows is NULL. The group's samples are the batch's
    group * task_width onwards (0 past n_rows). One gather_panel (_panel.h):
    tiles of as many samples as a vector has lanes, by as many consecutive
    values, transposed in registers (a sample by sample copy wrote every
    value to another line of a matrix larger than L1, a feature by feature
    one read every value from another line). Whether every value it read
    was finite."""
    cdef Py_ssize_t sample_values = n_blocks * n_features
    cdef Py_ssize_t first = group * task_width
    cdef Py_ssize_t n_valid = max(0, min(task_width, n_rows - first))
    return gather_panel(source, sample_values, rows, first, n_valid, sample_values,
                        n_features, dest, n_blocks * task_width, task_width)


cdef inline void add_group_gradients(
        Py_ssize_t block, Py_ssize_t n_groups, const floating *group_grads,
        Py_ssize_t n_params, void **targets, const Py_ssize_t *counts, Py_ssize_t n_arrays,
        floating scale, floating beta) noexcept nogil:
    """sum_group_gradients on parameters [block * BLOCK_ELEMS, + BLOCK_ELEMS)
    of the packed order. Element by element, so the same for any split into
    blocks."""
    cdef Py_ssize_t start = block * BLOCK_ELEMS
    cdef Py_ssize_t stop = min(n_params, start + BLOCK_ELEMS)
    cdef Py_ssize_t offset = 0, array, i, group
    cdef floating *target
    cdef floating total
    for array in range(n_arrays):
        if offset < stop and offset + counts[array] > start:
            target = <floating *> targets[array]
            for i in range(max(start, offset), min(stop, offset + counts[array])):
                total = group_grads[i]
                for group in range(1, n_groups):
                    total = total + group_grads[group * n_params + i]
                target[i - offset] = scale * total + (
                    beta * target[i - offset] if beta != 0 else 0)
        offset += counts[array]


cdef inline void sum_group_gradients(
        Py_ssize_t n_groups, const floating *group_grads, void **targets,
        const Py_ssize_t *counts, Py_ssize_t n_arrays, floating scale, floating beta,
        int n_threads) noexcept nogil:
    """targets = scale * (the groups' gradients, added in group order) + beta
    * targets: targets[a] (counts[a] values) for a < n_arrays, packed one
    after another; group_grads holds n_groups such packings, one after
    another: what each group's task summed over its own samples. In blocks
    of BLOCK_ELEMS parameters, on threads past a megaflop of additions."""
    cdef Py_ssize_t n_params = 0, n_blocks, block
    cdef int n_used
    for block in range(n_arrays):
        n_params += counts[block]
    n_blocks = n_tasks(n_params, BLOCK_ELEMS)
    n_used = threads_for(n_threads, n_blocks, <double> n_params * n_groups)
    if n_used == 1:
        for block in range(n_blocks):
            add_group_gradients(block, n_groups, group_grads, n_params, targets, counts,
                                n_arrays, scale, beta)
    else:
        for block in prange(n_blocks, num_threads=n_used, schedule='static'):
            add_group_gradients(block, n_groups, group_grads, n_params, targets, counts,
                                n_arrays, scale, beta)


cdef inline void transpose_to_panels(const floating *source, Py_ssize_t n_units,
                                     Py_ssize_t n_cols, Py_ssize_t ld_source,
                                     floating *dest, Py_ssize_t padded) noexcept nogil:
    """transpose_columns into rows of whole panels: dest[c, u] = source[u, c]
    for u < n_units, 0 for n_units <= u < padded (padded_width(n_units)),
    c < n_cols; in gather_panel's register tiles (a unit its sample, a
    column its value), where the element by element copy read each value
    from another line."""
    gather_panel(source, ld_source, NULL, 0, n_units, n_cols, 1, dest, 0, padded)


# -- packed products (the recurrent weight of the BLAS path) --------------------------

cdef extern from "_panel.h" nogil:
    # Values of packed_product's scratch per row of its product: 2 panels of
    # floats, more than 2 panels of doubles.
    enum: PACKED_SCRATCH_PER_ROW "LGMSTM_PACKED_SCRATCH_PER_ROW"


cdef inline Py_ssize_t packed_size(Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    """Values pack_panels takes for a (k, n) matrix, for either dtype."""
    return k * padded_width(n, 4)


cdef inline bint use_packed_product(Py_ssize_t n_hidden) noexcept nogil:
    """Whether the recurrent product h Wh runs on packed panels, not BLAS.

    BLAS repacks Wh at every call, that is at every time step. Measured on
    one core (AMD Zen 5, OpenBLAS 0.3.30 SkylakeX kernels): the AVX-512
    panel kernel is 5-25% faster than sgemm/dgemm for 8-128 rows of h and
    128 to 512 units; BLAS is faster at 64 units and below (its small-matrix
    kernels copy nothing), past 512 units in float64, and against the
    AVX2 and baseline builds of the panel kernel.
    """
    return 128 <= n_hidden <= 512 and lgmstm_panel_level() == 2


cdef inline void pack_panels(const floating *B, Py_ssize_t ldb, bint transpose,
                             Py_ssize_t k, Py_ssize_t n, floating *packed) noexcept nogil:
    """packed = B (k, n), or B^T when transpose (B stored (n, k)), in column
    panels for packed_product (see _panel.h)."""
    if floating is double:
        lgmstm_pack_panels_d(B, ldb, transpose, k, n, packed)
    else:
        lgmstm_pack_panels_f(B, ldb, transpose, k, n, packed)


cdef inline void packed_product(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                                const floating *A, Py_ssize_t lda, const floating *packed,
                                bint accumulate, floating *C, Py_ssize_t ldc,
                                floating *scratch) noexcept nogil:
    """C (m, n) = A (m, k) B (+ C when accumulate), B packed by pack_panels;
    scratch: m * PACKED_SCRATCH_PER_ROW values."""
    if floating is double:
        lgmstm_packed_product_d(m, n, k, A, lda, packed, accumulate, C, ldc, scratch)
    else:
        lgmstm_packed_product_f(m, n, k, A, lda, packed, accumulate, C, ldc, scratch)
