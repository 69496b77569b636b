# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled Elman RNN kernels (forward pass and backpropagation through time)
and the STM's predict, gradients and training loop.

    h_t = tanh(x_t Wx + h_{t-1} Wh + b),   t = 0 .. lengths[i] - 1,   h_{-1} = h0

Arrays are batch-first and row-major: X (n_samples, n_steps, n_in), states
H (n_samples, n_steps, n_hidden). Sample i runs lengths[i] steps; its later
states are 0, take no gradient and cost nothing; X there is never read.

Work is cut into two kinds of task of fixed size (see _parallel.pxd):
- sequence chunks: a few samples that one thread carries through every step,
  with no barrier between steps. The chunk's input projection X Wx + b is
  one GEMM over its valid rows; the time loop then adds h_{t-1} Wh step by
  step. Backward, the reverse time loop gives dz_t = dL/d(pre-activation),
  then one dX GEMM.
- weight-gradient blocks: rows of dWx or dWh summed over the valid
  (sample, step) pairs of one group of samples, the groups then added in
  order; columns of db, each summed over the whole batch in one fixed order.
Neither depends on the thread count, so neither do the results. The time
loops multiply by Wh with BLAS, or with the panel kernel on Wh packed once
per pass (see recurrent_product).

STM training runs small networks' batches of full-length sequences in the
panel layout of _panel.pxd instead (panel_stm_gradients): groups of samples
carried through every step, then blocks of weight-gradient rows, with the
panel kernels in place of BLAS.

Unchecked: call these through lgmstm.kernels / lgmstm.STM, which validate
shapes, dtypes and layouts once and allocate every buffer.
"""
cimport numpy as cnp
import numpy as np
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdint cimport uintptr_t
from libc.string cimport memcpy, memset

from _blas cimport gemm
from _layers cimport (dense_forward_rows, dense_forward, dense_backward,
                      squared_error, optimizer_step, optimizer_config, OptimizerConfig,
                      gather_rows)
from _parallel cimport BLOCK_COLS, BLOCK_ELEMS, n_tasks, threads_for
from _tanh cimport tanh_inplace, tanh_rows
from _panel cimport (panel_product, row_sums, gather_columns, panel_loss, padded_width,
                     group_panels, sample_major_gradient, transpose_columns,
                     add_weight_gradient, finish_weight_gradient, panel_calloc,
                     PANEL_MAX_WORK, MAX_PANEL_GROUPS, PACKED_SCRATCH_PER_ROW,
                     packed_size, use_packed_product, pack_panels, packed_product,
                     lgmstm_panel_level, LGMSTM_PANEL_BYTES)
from libc.stdlib cimport free

cnp.import_array()

cdef enum:
    # Fewest samples in a sequence chunk (see sequence_chunk_rows).
    MIN_CHUNK_ROWS = 32
    # Most sample groups the weight gradients are split into, and most values
    # their partial sums may take (see weight_groups): 4 Mi values, 32 MiB of
    # float64, about the weights of a 1024-unit network.
    MAX_WEIGHT_GROUPS = 4
    PARTIALS_BUDGET = 4194304

# The STM's parameters, in this order (lgmstm/stm.py names them).
cdef enum:
    INPUT_WEIGHT = 0       # Wx (n_in, n_hidden)
    RECURRENT_WEIGHT = 1   # Wh (n_hidden, n_hidden)
    BIAS = 2               # b (n_hidden,)
    READOUT_WEIGHT = 3     # (n_hidden, n_out)
    READOUT_BIAS = 4       # (n_out,)
    N_PARAMS = 5

# The STM's buffers for a batch of n samples, in this order (see buffer_shapes).
cdef enum:
    STATES = 0             # H (n, n_steps, n_hidden)
    FINAL_STATES = 1       # each sequence's last valid state (n, n_hidden)
    OUTPUTS = 2            # (n, n_steps, n_out), or (n, n_out) for the last step only
    OUTPUT_GRADS = 3       # dL/d outputs, then the readout's dZ in place
    STATE_GRADS = 4        # dL/dH from the readout, then dz in place
    FINAL_GRADS = 5        # dL/d final states (last-step readout)
    FIRST_STEP_GRADS = 6   # dz of step 0, kept apart (see weight_grad_rows)
    SCRATCH = 7            # the time loops' scratch (see scratch_size)
    ORDER = 8              # per-chunk sample order, longest first (n,), intp
    PARTIALS = 9           # loss partial sums, float64
    N_BUFFERS = 10


def buffer_shapes(Py_ssize_t n_samples, Py_ssize_t n_steps, Py_ssize_t n_in,
                  Py_ssize_t n_hidden, Py_ssize_t n_out, bint return_sequences,
                  bint backward=True):
    """[(shape, dtype)] of the STM buffers, in buffer order; dtype None is the
    model's. backward=False: enough for predict only."""
    cdef Py_ssize_t n_outputs = n_samples * (n_steps if return_sequences else 1)
    cdef tuple outputs = (n_samples, n_out)
    if return_sequences:
        outputs = (n_samples, n_steps, n_out)
    return [((n_samples, n_steps, n_hidden), None), ((n_samples, n_hidden), None),
            (outputs, None), (outputs, None), ((n_samples, n_steps, n_hidden), None),
            ((n_samples, n_hidden), None), ((n_samples, n_hidden), None),
            ((scratch_size(n_samples, n_in, n_hidden, backward),), None), ((n_samples,), np.intp),
            ((max(1, n_tasks(n_outputs * n_out, BLOCK_ELEMS)),), np.float64)]


cdef inline const void *data_or_null(object array):
    return NULL if array is None else cnp.PyArray_DATA(<cnp.ndarray> array)


cdef int pointers(list arrays, void **data, Py_ssize_t count) except -1:
    """data[i] = arrays[i]'s data; the caller keeps the arrays alive."""
    if len(arrays) != count:
        raise ValueError(f"expected {count} arrays, got {len(arrays)}")
    for i in range(count):
        data[i] = cnp.PyArray_DATA(<cnp.ndarray> arrays[i])
    return 0


# -- tasks ---------------------------------------------------------------------

cdef inline Py_ssize_t sequence_chunk_rows(Py_ssize_t n_samples,
                                           Py_ssize_t n_hidden) noexcept nogil:
    """Samples per sequence chunk, from the shapes alone.

    A step's h Wh product costs a call (and, with BLAS, repacking Wh)
    whatever its rows, so chunks are tall: 32 rows or more, and
    n_hidden / 8 (BLAS runs wide products well only from about there); yet
    from 64 samples on there are up to 4 chunks, for 2-4 threads. The batch
    is split into equal chunks.
    """
    cdef Py_ssize_t min_rows = max(<Py_ssize_t> MIN_CHUNK_ROWS, n_hidden // 8)
    cdef Py_ssize_t n_chunks = min(n_tasks(n_samples, min_rows),
                                   max(4, n_tasks(n_samples, 64)))
    return max(1, n_tasks(n_samples, max(1, n_chunks)))


cdef inline Py_ssize_t weight_groups(Py_ssize_t n_samples, Py_ssize_t n_in,
                                     Py_ssize_t n_hidden) noexcept nogil:
    """Sample groups whose weight gradients are summed apart, then added in
    group order: one per sequence chunk, at most MAX_WEIGHT_GROUPS, and no
    more than keep the partial sums of groups 1.. within PARTIALS_BUDGET
    values (at least 1 group). Splitting the sum over samples keeps each
    task's GEMM square enough for BLAS (tall row blocks, a shorter inner
    dimension) and gives the threads several tasks. From the shapes alone.
    """
    cdef Py_ssize_t n_chunks = n_tasks(n_samples, sequence_chunk_rows(n_samples, n_hidden))
    cdef Py_ssize_t affordable = 1 + PARTIALS_BUDGET // max(1, (n_in + n_hidden) * n_hidden)
    return max(1, min(n_chunks, <Py_ssize_t> MAX_WEIGHT_GROUPS, affordable))


cdef inline Py_ssize_t weight_block_rows(Py_ssize_t n_in, Py_ssize_t n_hidden,
                                         Py_ssize_t n_groups) noexcept nogil:
    """Rows of dWx and dWh per weight-gradient task, from the shapes alone.

    Every task has BLAS repack its group's dZ, so blocks are as tall as they
    can be (256 rows at most) while groups times blocks still make 4 tasks
    (or the blocks are down to 32 rows).
    """
    cdef Py_ssize_t rows = 256
    while rows > 32 and n_groups * (n_tasks(n_in, rows) + n_tasks(n_hidden, rows)) < 4:
        rows //= 2
    return rows


# The time loops' scratch, in values of the dtype, in this order:
# - two state rows per sample (the gathered time loop, the backward carry);
# - PACKED_SCRATCH_PER_ROW per sample, for packed_product's ragged panels;
# - the recurrent weight as recurrent_product takes it: packed panels
#   (packed_size, plus one panel of slack to start them on a 64-byte
#   boundary), or for BLAS's backward pass Wh^T (nothing forward);
# - backward only, the weight-gradient partials of sample groups 1.. .
# Each region is there only when the pass uses it, so that forward-only
# calls and large states pay for no more than they touch.
cdef inline Py_ssize_t product_rows_offset(Py_ssize_t n_samples, Py_ssize_t n_hidden) noexcept nogil:
    return n_samples * 2 * n_hidden


cdef inline Py_ssize_t weight_offset(Py_ssize_t n_samples, Py_ssize_t n_hidden) noexcept nogil:
    return product_rows_offset(n_samples, n_hidden) + n_samples * PACKED_SCRATCH_PER_ROW


cdef inline Py_ssize_t weight_size(Py_ssize_t n_hidden, bint backward) noexcept nogil:
    if use_packed_product(n_hidden):
        return packed_size(n_hidden, n_hidden) + LGMSTM_PANEL_BYTES // 4
    return n_hidden * n_hidden if backward else 0


cdef inline Py_ssize_t partials_offset(Py_ssize_t n_samples, Py_ssize_t n_hidden) noexcept nogil:
    return weight_offset(n_samples, n_hidden) + weight_size(n_hidden, True)


def scratch_size(Py_ssize_t n_samples, Py_ssize_t n_in, Py_ssize_t n_hidden, bint backward):
    """Values of scratch the forward pass, or also the backward pass, needs
    (see above)."""
    if not backward:
        return weight_offset(n_samples, n_hidden) + weight_size(n_hidden, False)
    return (partials_offset(n_samples, n_hidden)
            + (weight_groups(n_samples, n_in, n_hidden) - 1) * (n_in + n_hidden) * n_hidden)


cdef inline Py_ssize_t run_end(const Py_ssize_t *lengths, Py_ssize_t n_steps,
                               Py_ssize_t first, Py_ssize_t stop) noexcept nogil:
    """Last sample of the run of contiguous valid rows that starts at `first`.

    Valid rows are contiguous across samples that run every step, so a run
    is full-length samples followed by one (maybe) shorter; its rows are
    (last - first) * n_steps + lengths[last] from row first * n_steps.
    """
    cdef Py_ssize_t last = first
    while last < stop - 1 and lengths[last] == n_steps:
        last += 1
    return last


cdef inline void sort_by_length(const Py_ssize_t *lengths, Py_ssize_t start,
                                Py_ssize_t stop, Py_ssize_t *order) noexcept nogil:
    """order[:stop - start] = samples start..stop-1, longest first, ties in order.

    Then the samples still running at any step are a prefix of order.
    """
    cdef Py_ssize_t k, m, sample
    for k in range(stop - start):
        sample = start + k
        m = k
        while m > 0 and lengths[order[m - 1]] < lengths[sample]:
            order[m] = order[m - 1]
            m -= 1
        order[m] = sample


cdef inline void recurrent_product(const floating *h, Py_ssize_t ld_h,
                                   const floating *W, const floating *packed,
                                   floating *out, Py_ssize_t ld_out, Py_ssize_t n_rows,
                                   Py_ssize_t n_hidden, bint accumulate,
                                   floating *product_rows) noexcept nogil:
    """out (n_rows, n_hidden) = h W (+ out when accumulate), rows ld_h and
    ld_out apart; W is Wh or Wh^T, row-major.

    With packed (W in panels, see use_packed_product) the panel kernel
    computes it (product_rows: its scratch, n_rows * PACKED_SCRATCH_PER_ROW
    values), else BLAS, for any size: a plain loop measured slower even for
    5-unit states. The backward pass hands BLAS Wh^T, not transpose=True:
    OpenBLAS runs these short products 10-35% slower with a transposed B.
    """
    if packed != NULL:
        packed_product(n_rows, n_hidden, n_hidden, h, ld_h, packed, accumulate, out,
                       ld_out, product_rows)
    else:
        gemm(False, False, <int> n_rows, <int> n_hidden, <int> n_hidden, 1, h, <int> ld_h,
             W, <int> n_hidden, 1 if accumulate else 0, out, <int> ld_out)


def recurrent_product_kind(Py_ssize_t n_hidden):
    """"packed" or "blas": how the time loops multiply by Wh (a test hook)."""
    return "packed" if use_packed_product(n_hidden) else "blas"


def panel_kernel_build():
    """The build of the panel kernels (_panel.h) this CPU runs: "avx512",
    "avx2" or "baseline" (also what builds without run-time dispatch run)."""
    return ("baseline", "avx2", "avx512")[lgmstm_panel_level()]


cdef inline const floating *prepare_recurrent_weight(
        const floating *Wh, bint transpose, floating *scratch, Py_ssize_t n_samples,
        Py_ssize_t n_hidden) noexcept nogil:
    """Write Wh (or Wh^T when transpose) in the form recurrent_product takes
    to scratch; return the packed panels (64-byte aligned), or NULL when
    BLAS will multiply (then Wh^T, when transpose, is at weight_offset)."""
    cdef floating *region = scratch + weight_offset(n_samples, n_hidden)
    cdef floating *packed
    if use_packed_product(n_hidden):
        packed = <floating *> ((<uintptr_t> region + 63) & ~(<uintptr_t> 63))
        pack_panels(Wh, n_hidden, transpose, n_hidden, n_hidden, packed)
        return packed
    if transpose:
        transpose_columns(Wh, n_hidden, n_hidden, n_hidden, region, n_hidden)
    return NULL


cdef inline bint in_order(const Py_ssize_t *order, Py_ssize_t start,
                          Py_ssize_t stop) noexcept nogil:
    """Whether order (from sort_by_length) leaves samples start..stop-1 in place."""
    cdef Py_ssize_t k
    for k in range(stop - start):
        if order[k] != start + k:
            return False
    return True


cdef void forward_chunk(
        Py_ssize_t chunk, Py_ssize_t chunk_rows, const floating *X,
        const floating *h0, const floating *Wx, const floating *Wh,
        const floating *b, const Py_ssize_t *lengths, floating *H,
        floating *h_last, const floating *packed, floating *scratch,
        Py_ssize_t *order, Py_ssize_t n_samples, Py_ssize_t n_steps, Py_ssize_t n_in,
        Py_ssize_t n_hidden) noexcept nogil:
    """States of one chunk of samples; h_last (if not NULL) gets their final states.
    packed: see prepare_recurrent_weight."""
    cdef Py_ssize_t start = chunk * chunk_rows
    cdef Py_ssize_t stop = min(start + chunk_rows, n_samples)
    cdef Py_ssize_t nh = n_hidden
    cdef size_t row_bytes = nh * sizeof(floating)
    cdef Py_ssize_t first, last, i
    cdef floating *product_rows
    first = start
    while first < stop:
        last = run_end(lengths, n_steps, first, stop)
        dense_forward_rows(X + first * n_steps * n_in, Wx, b, H + first * n_steps * nh,
                           (last - first) * n_steps + lengths[last], n_in, nh, False)
        first = last + 1
    order += start
    sort_by_length(lengths, start, stop, order)
    product_rows = scratch + product_rows_offset(n_samples, nh) + start * PACKED_SCRATCH_PER_ROW
    if in_order(order, start, stop):
        forward_steps_in_place(start, stop, h0, Wh, packed, lengths, H, product_rows,
                               n_steps, nh)
    else:
        forward_steps_gathered(start, stop, h0, Wh, packed, lengths, H,
                               scratch + start * 2 * nh, product_rows, order, n_steps, nh)
    for i in range(start, stop):
        memset(H + (i * n_steps + lengths[i]) * nh, 0, (n_steps - lengths[i]) * row_bytes)
        if h_last == NULL:
            continue
        if lengths[i] > 0:
            memcpy(h_last + i * nh, H + (i * n_steps + lengths[i] - 1) * nh, row_bytes)
        elif h0 != NULL:
            memcpy(h_last + i * nh, h0 + i * nh, row_bytes)
        else:
            memset(h_last + i * nh, 0, row_bytes)


cdef void forward_steps_in_place(
        Py_ssize_t start, Py_ssize_t stop, const floating *h0, const floating *Wh,
        const floating *packed, const Py_ssize_t *lengths, floating *H,
        floating *product_rows, Py_ssize_t n_steps, Py_ssize_t nh) noexcept nogil:
    """The time loop of samples start..stop-1, longest first: the samples
    still running at step t are a prefix, rows n_steps * nh apart in H, and
    h_{t-1} Wh is added to H's step-t rows in place (no copies)."""
    cdef Py_ssize_t n_active = stop - start, t
    cdef Py_ssize_t ld = n_steps * nh
    cdef floating *step_rows
    for t in range(n_steps):
        while n_active > 0 and lengths[start + n_active - 1] <= t:
            n_active -= 1
        if n_active == 0:
            return
        step_rows = H + (start * n_steps + t) * nh
        if t > 0:
            recurrent_product(step_rows - nh, ld, Wh, packed, step_rows, ld, n_active, nh,
                              True, product_rows)
        elif h0 != NULL:
            recurrent_product(h0 + start * nh, nh, Wh, packed, step_rows, ld, n_active, nh,
                              True, product_rows)
        tanh_rows(step_rows, n_active, nh, ld)


cdef void forward_steps_gathered(
        Py_ssize_t start, Py_ssize_t stop, const floating *h0, const floating *Wh,
        const floating *packed, const Py_ssize_t *lengths, floating *H,
        floating *scratch, floating *product_rows, const Py_ssize_t *order,
        Py_ssize_t n_steps, Py_ssize_t nh) noexcept nogil:
    """The time loop of samples start..stop-1 in any order: the running states
    of the active samples (a prefix of order) are gathered into scratch
    ((stop - start) rows, and as many for the next states, swapped every step)."""
    cdef size_t row_bytes = nh * sizeof(floating)
    cdef floating *state = scratch
    cdef floating *product = state + (stop - start) * nh
    cdef floating *swap
    cdef Py_ssize_t n_active = stop - start, k, t
    for k in range(stop - start):
        if h0 == NULL:
            memset(state + k * nh, 0, row_bytes)
        else:
            memcpy(state + k * nh, h0 + order[k] * nh, row_bytes)
    for t in range(n_steps):
        while n_active > 0 and lengths[order[n_active - 1]] <= t:
            n_active -= 1
        if n_active == 0:
            return
        for k in range(n_active):
            memcpy(product + k * nh, H + (order[k] * n_steps + t) * nh, row_bytes)
        if t > 0 or h0 != NULL:  # the zero state adds nothing (as in place)
            recurrent_product(state, nh, Wh, packed, product, nh, n_active, nh, True,
                              product_rows)
        tanh_inplace(product, n_active * nh)
        for k in range(n_active):
            memcpy(H + (order[k] * n_steps + t) * nh, product + k * nh, row_bytes)
        swap = state
        state = product
        product = swap


cdef void backward_chunk(
        Py_ssize_t chunk, Py_ssize_t chunk_rows, const floating *Wx,
        const floating *Wh_t, const floating *packed, const floating *H,
        const floating *dH, const floating *dh_last, const Py_ssize_t *lengths, floating *dZ,
        floating *dz_first, floating *dX, floating *dh0, floating *scratch,
        Py_ssize_t *order, Py_ssize_t n_samples, Py_ssize_t n_steps,
        Py_ssize_t n_in, Py_ssize_t n_hidden) noexcept nogil:
    """Reverse time loop of one chunk of samples:

        dz_t = (dH_t + dz_{t+1} Wh^T) (1 - h_t^2),   dh0 = dz_0 Wh^T

    starting at each sequence's last valid step, where dh_last joins (at
    length 0 it passes straight to dh0). Wh_t is Wh^T, row-major, for BLAS,
    unless packed holds it in panels (see prepare_recurrent_weight). dH and
    dh_last may be NULL (zero), dX and dh0 NULL (not wanted). dZ may be dH itself: each element is read
    before it is written. Then dX = dZ Wx^T, and step 0's dz moves from dZ
    to dz_first (see weight_grad_rows).
    """
    cdef Py_ssize_t start = chunk * chunk_rows
    cdef Py_ssize_t stop = min(start + chunk_rows, n_samples)
    cdef Py_ssize_t nh = n_hidden
    cdef size_t row_bytes = nh * sizeof(floating)
    cdef floating *carry = scratch + start * 2 * nh   # dL/dh_t from step t + 1
    cdef floating *dz = carry + (stop - start) * nh
    cdef floating *product_rows = (scratch + product_rows_offset(n_samples, nh)
                                   + start * PACKED_SCRATCH_PER_ROW)
    cdef Py_ssize_t first, last, i, j, k, t, row
    cdef Py_ssize_t n_active = 0
    cdef floating value
    order += start
    sort_by_length(lengths, start, stop, order)
    for t in range(n_steps - 1, -1, -1):
        while n_active < stop - start and lengths[order[n_active]] > t:
            if dh_last == NULL:
                memset(carry + n_active * nh, 0, row_bytes)
            else:
                memcpy(carry + n_active * nh, dh_last + order[n_active] * nh, row_bytes)
            n_active += 1
        if n_active == 0:
            continue
        for k in range(n_active):
            row = (order[k] * n_steps + t) * nh
            for j in range(nh):
                value = carry[k * nh + j]
                if dH != NULL:
                    value = value + dH[row + j]
                value = value * (1 - H[row + j] * H[row + j])
                dz[k * nh + j] = value
                dZ[row + j] = value
        if t > 0 or dh0 != NULL:
            recurrent_product(dz, nh, Wh_t, packed, carry, nh, n_active, nh, False,
                              product_rows)
    if dh0 != NULL:
        for k in range(stop - start):
            i = order[k]
            if k < n_active:
                memcpy(dh0 + i * nh, carry + k * nh, row_bytes)
            elif dh_last != NULL:
                memcpy(dh0 + i * nh, dh_last + i * nh, row_bytes)
            else:
                memset(dh0 + i * nh, 0, row_bytes)
    if dX != NULL:
        first = start
        while first < stop:
            last = run_end(lengths, n_steps, first, stop)
            gemm(False, True, <int> ((last - first) * n_steps + lengths[last]),
                 <int> n_in, <int> nh, 1, dZ + first * n_steps * nh, <int> nh,
                 Wx, <int> nh, 0, dX + first * n_steps * n_in, <int> n_in)
            first = last + 1
        for i in range(start, stop):
            memset(dX + (i * n_steps + lengths[i]) * n_in, 0,
                   (n_steps - lengths[i]) * n_in * sizeof(floating))
    for i in range(start, stop):
        if lengths[i] > 0:
            memcpy(dz_first + i * nh, dZ + i * n_steps * nh, row_bytes)
            memset(dZ + i * n_steps * nh, 0, row_bytes)
        else:
            memset(dz_first + i * nh, 0, row_bytes)


cdef void weight_grad_rows(
        Py_ssize_t start, Py_ssize_t stop, Py_ssize_t sample_start,
        Py_ssize_t sample_stop, const floating *inputs, Py_ssize_t width,
        bint shifted, const floating *first_inputs, Py_ssize_t first_stride,
        const floating *dZ, const floating *dz_first, const Py_ssize_t *lengths,
        floating *dW, Py_ssize_t n_steps, Py_ssize_t n_hidden) noexcept nogil:
    """Rows [start, stop) of dW = sum over valid (i, t) of in_{i,t}^T dz_{i,t},
    for the samples i in [sample_start, sample_stop).

    Step 0: in_{i,0} is row i of first_inputs (rows first_stride apart; NULL
    means zero), paired with dz_first. Steps t >= 1: in_{i,t} is row
    i * n_steps + t of inputs (width columns), or row i * n_steps + t - 1 when
    shifted, i.e. the previous state when inputs is H. Either way, one GEMM
    per run of contiguous valid rows pairs whole blocks of inputs and dZ; the
    pairs a run has at step 0 meet dZ's step-0 rows, which are 0.
    """
    cdef floating *C = dW + start * n_hidden
    cdef Py_ssize_t first, last, row, n_rows, i
    for i in range((stop - start) * n_hidden):
        C[i] = 0
    first = sample_start
    while first_inputs != NULL and first < sample_stop:
        if lengths[first] == 0:
            first += 1
            continue
        last = first
        while last < sample_stop - 1 and lengths[last + 1] > 0:
            last += 1
        gemm(True, False, <int> (stop - start), <int> n_hidden, <int> (last - first + 1),
             1, first_inputs + first * first_stride + start, <int> first_stride,
             dz_first + first * n_hidden, <int> n_hidden, 1, C, <int> n_hidden)
        first = last + 1
    first = sample_start
    while first < sample_stop:
        last = run_end(lengths, n_steps, first, sample_stop)
        row = first * n_steps
        n_rows = (last - first) * n_steps + lengths[last] - shifted
        if n_rows > 0:
            gemm(True, False, <int> (stop - start), <int> n_hidden, <int> n_rows, 1,
                 inputs + row * width + start, <int> width,
                 dZ + (row + shifted) * n_hidden, <int> n_hidden, 1, C, <int> n_hidden)
        first = last + 1


cdef void bias_grad_block(
        Py_ssize_t block, const floating *dZ, const floating *dz_first,
        const Py_ssize_t *lengths, floating *db, Py_ssize_t n_samples,
        Py_ssize_t n_steps, Py_ssize_t n_hidden) noexcept nogil:
    """Columns of db = sum over valid (i, t) of dz_{i,t}, in sample then step order."""
    cdef Py_ssize_t start = block * BLOCK_COLS
    cdef Py_ssize_t width = min(start + BLOCK_COLS, n_hidden) - start
    cdef floating sums[BLOCK_COLS]
    cdef Py_ssize_t i, j, t
    cdef const floating *dz
    for j in range(width):
        sums[j] = 0
    for i in range(n_samples):
        dz = dz_first + i * n_hidden + start
        for j in range(width):
            sums[j] += dz[j]
        for t in range(1, lengths[i]):
            dz = dZ + (i * n_steps + t) * n_hidden + start
            for j in range(width):
                sums[j] += dz[j]
    memcpy(db + start, sums, width * sizeof(floating))


cdef void weight_grad_task(
        Py_ssize_t task, Py_ssize_t n_groups, Py_ssize_t rows, const floating *X,
        const floating *h0, const floating *H, const floating *dZ,
        const floating *dz_first, const Py_ssize_t *lengths, floating *dWx,
        floating *dWh, floating *db, floating *partials, Py_ssize_t n_samples,
        Py_ssize_t n_steps, Py_ssize_t n_in, Py_ssize_t n_hidden) noexcept nogil:
    """Task `task` of the weight gradients:

        dWx = sum x_t^T dz_t,  dWh = sum h_{t-1}^T dz_t,  db = sum dz_t.

    The first n_groups * (row blocks of dWx and dWh) tasks are one block of
    rows of one weight, summed over one sample group: group 0 into dWx and
    dWh, group g > 0 into partials + (g - 1) (n_in + n_hidden) n_hidden
    (its dWx, then its dWh), which add_weight_partials adds on. Blocks of the
    larger weight come first, all groups of a block together. The rest are
    column blocks of db, each summed over every sample.
    """
    cdef Py_ssize_t x_blocks = n_tasks(n_in, rows)
    cdef Py_ssize_t h_blocks = n_tasks(n_hidden, rows)
    cdef Py_ssize_t n_weight_tasks = n_groups * (x_blocks + h_blocks)
    cdef Py_ssize_t group = task % n_groups
    cdef Py_ssize_t block = task // n_groups
    cdef Py_ssize_t sample_start = group * n_samples // n_groups
    cdef Py_ssize_t sample_stop = (group + 1) * n_samples // n_groups
    cdef floating *group_dWx = dWx
    cdef floating *group_dWh = dWh
    cdef bint hidden_block
    cdef Py_ssize_t start
    if task >= n_weight_tasks:
        bias_grad_block(task - n_weight_tasks, dZ, dz_first, lengths, db, n_samples,
                        n_steps, n_hidden)
        return
    if group > 0:
        group_dWx = partials + (group - 1) * (n_in + n_hidden) * n_hidden
        group_dWh = group_dWx + n_in * n_hidden
    if n_hidden >= n_in:
        hidden_block = block < h_blocks
        start = (block if hidden_block else block - h_blocks) * rows
    else:
        hidden_block = block >= x_blocks
        start = (block - x_blocks if hidden_block else block) * rows
    if hidden_block:
        weight_grad_rows(start, min(start + rows, n_hidden), sample_start, sample_stop,
                         H, n_hidden, True, h0, n_hidden, dZ, dz_first, lengths,
                         group_dWh, n_steps, n_hidden)
    else:
        weight_grad_rows(start, min(start + rows, n_in), sample_start, sample_stop,
                         X, n_in, False, X, n_steps * n_in, dZ, dz_first, lengths,
                         group_dWx, n_steps, n_hidden)


cdef void add_weight_partials(floating *dWx, floating *dWh, const floating *partials,
                              Py_ssize_t n_groups, Py_ssize_t n_in, Py_ssize_t n_hidden,
                              int n_threads) noexcept nogil:
    """dW += the partials of groups 1 .. n_groups - 1, in group order, for
    dWx and dWh seen as one run of (n_in + n_hidden) n_hidden values."""
    cdef Py_ssize_t n_values = (n_in + n_hidden) * n_hidden
    cdef Py_ssize_t n_blocks = n_tasks(n_values, BLOCK_ELEMS)
    cdef int n_used = threads_for(n_threads, n_blocks, 1.0 * n_values * (n_groups - 1))
    cdef Py_ssize_t block
    if n_used == 1:
        for block in range(n_blocks):
            add_partials_block(block, dWx, dWh, partials, n_groups, n_in, n_hidden)
    else:
        for block in prange(n_blocks, num_threads=n_used, schedule='static'):
            add_partials_block(block, dWx, dWh, partials, n_groups, n_in, n_hidden)


cdef inline void add_partials_block(Py_ssize_t block, floating *dWx, floating *dWh,
                                    const floating *partials, Py_ssize_t n_groups,
                                    Py_ssize_t n_in, Py_ssize_t n_hidden) noexcept nogil:
    cdef Py_ssize_t n_x = n_in * n_hidden
    cdef Py_ssize_t n_values = n_x + n_hidden * n_hidden
    cdef Py_ssize_t start = block * BLOCK_ELEMS
    cdef Py_ssize_t stop = min(start + BLOCK_ELEMS, n_values)
    cdef Py_ssize_t split = min(max(start, n_x), stop)
    cdef Py_ssize_t group, i
    cdef const floating *partial
    for group in range(1, n_groups):
        partial = partials + (group - 1) * n_values
        for i in range(start, split):
            dWx[i] += partial[i]
        for i in range(split, stop):
            dWh[i - n_x] += partial[i]



# -- whole passes ----------------------------------------------------------------

cdef void rnn_forward_pass(
        const floating *X, const floating *h0, const floating *Wx,
        const floating *Wh, const floating *b, const Py_ssize_t *lengths,
        floating *H, floating *h_last, floating *scratch, Py_ssize_t *order,
        Py_ssize_t n_samples, Py_ssize_t n_steps, Py_ssize_t n_in,
        Py_ssize_t n_hidden, int n_threads) noexcept nogil:
    """H (and h_last unless NULL) for the whole batch; h0 NULL means zeros.

    scratch: scratch_size(..., backward=False) values; order: n_samples indices.
    """
    cdef Py_ssize_t chunk_rows = sequence_chunk_rows(n_samples, n_hidden)
    cdef Py_ssize_t n_chunks = n_tasks(n_samples, chunk_rows)
    cdef int n_used = threads_for(n_threads, n_chunks,
                                  2.0 * n_samples * n_steps * n_hidden * (n_in + n_hidden))
    cdef const floating *packed = prepare_recurrent_weight(Wh, False, scratch, n_samples,
                                                           n_hidden)
    cdef Py_ssize_t chunk
    if n_used == 1:
        for chunk in range(n_chunks):
            forward_chunk(chunk, chunk_rows, X, h0, Wx, Wh, b, lengths, H, h_last,
                          packed, scratch, order, n_samples, n_steps, n_in, n_hidden)
    else:
        for chunk in prange(n_chunks, num_threads=n_used, schedule='static'):
            forward_chunk(chunk, chunk_rows, X, h0, Wx, Wh, b, lengths, H, h_last,
                          packed, scratch, order, n_samples, n_steps, n_in, n_hidden)


cdef void rnn_backward_pass(
        const floating *X, const floating *h0, const floating *Wx,
        const floating *Wh, const floating *H, const floating *dH,
        const floating *dh_last, const Py_ssize_t *lengths, floating *dZ,
        floating *dz_first, floating *dX, floating *dh0, floating *dWx,
        floating *dWh, floating *db, floating *scratch, Py_ssize_t *order,
        Py_ssize_t n_samples, Py_ssize_t n_steps, Py_ssize_t n_in,
        Py_ssize_t n_hidden, int n_threads) noexcept nogil:
    """Every gradient of the batch, given dH = dL/dH and dh_last.

    dZ: (n_samples, n_steps, n_hidden) scratch, may be dH; dz_first:
    (n_samples, n_hidden) scratch; scratch: scratch_size(..., backward=True)
    values. NULL dH /
    dh_last are zeros; NULL dX / dh0 are not computed. The sequence chunks
    all finish before the weight gradients start.
    """
    cdef Py_ssize_t chunk_rows = sequence_chunk_rows(n_samples, n_hidden)
    cdef Py_ssize_t n_chunks = n_tasks(n_samples, chunk_rows)
    cdef Py_ssize_t n_groups = weight_groups(n_samples, n_in, n_hidden)
    cdef Py_ssize_t block_rows = weight_block_rows(n_in, n_hidden, n_groups)
    cdef Py_ssize_t n_weight_tasks = (
        n_groups * (n_tasks(n_in, block_rows) + n_tasks(n_hidden, block_rows))
        + n_tasks(n_hidden, BLOCK_COLS))
    cdef double rows_work = 2.0 * n_samples * n_steps * n_hidden
    cdef int chunk_threads = threads_for(
        n_threads, n_chunks, rows_work * (n_hidden + (n_in if dX != NULL else 0)))
    cdef int weight_threads = threads_for(n_threads, n_weight_tasks,
                                          rows_work * (n_in + n_hidden))
    cdef const floating *Wh_t = scratch + weight_offset(n_samples, n_hidden)
    cdef floating *partials = scratch + partials_offset(n_samples, n_hidden)
    cdef const floating *packed = prepare_recurrent_weight(Wh, True, scratch, n_samples,
                                                           n_hidden)
    cdef Py_ssize_t task
    # Two parallel regions, never two loops in one: Cython makes loops in a
    # parallel block `omp for nowait`, and the weight gradients need every
    # chunk's dz. The join between the regions is the barrier.
    if chunk_threads == 1:
        for task in range(n_chunks):
            backward_chunk(task, chunk_rows, Wx, Wh_t, packed, H, dH, dh_last, lengths, dZ,
                           dz_first, dX, dh0, scratch, order, n_samples, n_steps,
                           n_in, n_hidden)
    else:
        for task in prange(n_chunks, num_threads=chunk_threads, schedule='static'):
            backward_chunk(task, chunk_rows, Wx, Wh_t, packed, H, dH, dh_last, lengths, dZ,
                           dz_first, dX, dh0, scratch, order, n_samples, n_steps,
                           n_in, n_hidden)
    if weight_threads == 1:
        for task in range(n_weight_tasks):
            weight_grad_task(task, n_groups, block_rows, X, h0, H, dZ, dz_first, lengths,
                             dWx, dWh, db, partials, n_samples, n_steps, n_in, n_hidden)
    else:
        for task in prange(n_weight_tasks, num_threads=weight_threads, schedule='dynamic'):
            weight_grad_task(task, n_groups, block_rows, X, h0, H, dZ, dz_first, lengths,
                             dWx, dWh, db, partials, n_samples, n_steps, n_in, n_hidden)
    if n_groups > 1:
        add_weight_partials(dWx, dWh, partials, n_groups, n_in, n_hidden, n_threads)


def forward(const floating[:, :, ::1] X, object h0, const floating[:, ::1] Wx,
            const floating[:, ::1] Wh, const floating[::1] b,
            const Py_ssize_t[::1] lengths, floating[:, :, ::1] H,
            floating[::1] scratch, Py_ssize_t[::1] order, int n_threads):
    """Fill H; h0 is an array shaped like H[:, 0] or None (zeros)."""
    cdef const floating *h0_data = <const floating *> data_or_null(h0)
    with nogil:
        rnn_forward_pass(&X[0, 0, 0], h0_data, &Wx[0, 0], &Wh[0, 0], &b[0],
                         &lengths[0], &H[0, 0, 0], NULL, &scratch[0], &order[0],
                         X.shape[0], X.shape[1], X.shape[2], Wx.shape[1], n_threads)


def backward(const floating[:, :, ::1] X, object h0, const floating[:, ::1] Wx,
             const floating[:, ::1] Wh, const floating[:, :, ::1] H,
             const floating[:, :, ::1] dH, object dh_last,
             const Py_ssize_t[::1] lengths, floating[:, :, ::1] dZ,
             floating[:, ::1] dz_first, floating[:, :, ::1] dX,
             floating[:, ::1] dh0, floating[:, ::1] dWx, floating[:, ::1] dWh,
             floating[::1] db, floating[::1] scratch, Py_ssize_t[::1] order,
             int n_threads):
    """Fill dX, dh0, dWx, dWh, db; dZ and dz_first are scratch."""
    cdef const floating *h0_data = <const floating *> data_or_null(h0)
    cdef const floating *dh_last_data = <const floating *> data_or_null(dh_last)
    with nogil:
        rnn_backward_pass(&X[0, 0, 0], h0_data, &Wx[0, 0], &Wh[0, 0], &H[0, 0, 0],
                          &dH[0, 0, 0], dh_last_data, &lengths[0], &dZ[0, 0, 0],
                          &dz_first[0, 0], &dX[0, 0, 0], &dh0[0, 0], &dWx[0, 0],
                          &dWh[0, 0], &db[0], &scratch[0], &order[0], X.shape[0],
                          X.shape[1], X.shape[2], Wx.shape[1], n_threads)


# -- the STM: readout, loss, training ----------------------------------------------

cdef void stm_forward(const floating *X, const floating *h0,
                      const Py_ssize_t *lengths, Py_ssize_t n_samples,
                      Py_ssize_t n_steps, void **params, const Py_ssize_t *sizes,
                      bint output_tanh, bint return_sequences, void **buffers,
                      int n_threads) noexcept nogil:
    """Fill STATES, FINAL_STATES and OUTPUTS; outputs of padded steps are 0."""
    cdef Py_ssize_t n_hidden = sizes[1], n_out = sizes[2]
    cdef floating *outputs = <floating *> buffers[OUTPUTS]
    cdef Py_ssize_t i
    rnn_forward_pass(X, h0, <floating *> params[INPUT_WEIGHT],
                     <floating *> params[RECURRENT_WEIGHT], <floating *> params[BIAS],
                     lengths, <floating *> buffers[STATES],
                     <floating *> buffers[FINAL_STATES], <floating *> buffers[SCRATCH],
                     <Py_ssize_t *> buffers[ORDER], n_samples, n_steps, sizes[0],
                     n_hidden, n_threads)
    dense_forward(<floating *> buffers[STATES if return_sequences else FINAL_STATES],
                  <floating *> params[READOUT_WEIGHT], <floating *> params[READOUT_BIAS],
                  outputs, n_samples * (n_steps if return_sequences else 1), n_hidden,
                  n_out, output_tanh, n_threads)
    if return_sequences:
        for i in range(n_samples):
            memset(outputs + (i * n_steps + lengths[i]) * n_out, 0,
                   (n_steps - lengths[i]) * n_out * sizeof(floating))


cdef inline Py_ssize_t n_valid_outputs(const Py_ssize_t *lengths, Py_ssize_t n_samples,
                                       bint return_sequences) noexcept nogil:
    """Outputs (rows) that take a loss: every valid step, or one per sequence."""
    cdef Py_ssize_t i, total = 0
    if not return_sequences:
        return n_samples
    for i in range(n_samples):
        total += lengths[i]
    return total


cdef double stm_gradients(const floating *X, const floating *Y, const floating *h0,
                          const Py_ssize_t *lengths, Py_ssize_t n_samples,
                          Py_ssize_t n_steps, void **params, void **grads,
                          const Py_ssize_t *sizes, bint output_tanh,
                          bint return_sequences, void **buffers,
                          int n_threads) noexcept nogil:
    """Forward, loss and backward over one batch; returns its sum of squares.

    Fills grads (laid out as params) with the gradient of the mean squared
    error over the valid outputs. Y's padded steps must be 0, like the
    outputs there, so that they add nothing.
    """
    cdef Py_ssize_t n_in = sizes[0], n_hidden = sizes[1], n_out = sizes[2]
    cdef Py_ssize_t n_rows = n_samples * (n_steps if return_sequences else 1)
    cdef double sum_squares
    stm_forward(X, h0, lengths, n_samples, n_steps, params, sizes, output_tanh,
                return_sequences, buffers, n_threads)
    sum_squares = squared_error(
        <floating *> buffers[OUTPUTS], Y, <floating *> buffers[OUTPUT_GRADS],
        n_rows * n_out,
        1.0 / max(1, n_valid_outputs(lengths, n_samples, return_sequences) * n_out),
        <double *> buffers[PARTIALS], n_threads)
    # The readout's input gradient is dL/dH (all steps) or dL/d final states.
    dense_backward(<floating *> buffers[STATES if return_sequences else FINAL_STATES],
                   <floating *> params[READOUT_WEIGHT], <floating *> buffers[OUTPUTS],
                   <floating *> buffers[OUTPUT_GRADS], <floating *> buffers[OUTPUT_GRADS],
                   <floating *> buffers[STATE_GRADS if return_sequences else FINAL_GRADS],
                   <floating *> grads[READOUT_WEIGHT], <floating *> grads[READOUT_BIAS],
                   1, 0, n_rows, n_hidden, n_out, output_tanh, n_threads)
    rnn_backward_pass(
        X, h0, <floating *> params[INPUT_WEIGHT], <floating *> params[RECURRENT_WEIGHT],
        <floating *> buffers[STATES],
        <floating *> buffers[STATE_GRADS] if return_sequences else NULL,
        NULL if return_sequences else <floating *> buffers[FINAL_GRADS],
        lengths, <floating *> buffers[STATE_GRADS], <floating *> buffers[FIRST_STEP_GRADS],
        NULL, NULL, <floating *> grads[INPUT_WEIGHT],
        <floating *> grads[RECURRENT_WEIGHT], <floating *> grads[BIAS],
        <floating *> buffers[SCRATCH], <Py_ssize_t *> buffers[ORDER], n_samples,
        n_steps, n_in, n_hidden, n_threads)
    return sum_squares


# -- the STM in the panel layout (small networks, see _panel.pxd) -------------------

cdef enum:
    # Rows of a weight gradient per task of the panel path.
    PANEL_WEIGHT_ROWS = 8


cdef struct PanelLayout:
    # Sequences in groups of task_width columns (see _panel.pxd), each
    # group carried through every step by one task.
    Py_ssize_t n_steps, task_width, n_groups
    Py_ssize_t cols           # inputs and dz: n_groups * n_steps * task_width
    Py_ssize_t state_cols     # states, h0 first in each group:
                              #   n_groups * (n_steps + 1) * task_width
    Py_ssize_t read_cols      # outputs: cols, or n_groups * task_width for the last step only
    bint return_sequences


cdef struct PanelBuffers:
    void *inputs          # X (n_in, cols)
    void *targets         # Y (n_out, read_cols)
    void *states          # (n_hidden, state_cols): per group h0, then h_0..h_{T-1}
    void *outputs         # readout (n_out, read_cols)
    void *output_grads    # dL/d readout pre-activation (n_out, read_cols)
    void *state_grads     # dz_t = dL/d state pre-activation (n_hidden, cols)
    # Sample-major copies for the weight gradients (add_weight_gradient), and
    # their products: padded widths hp = padded n_hidden, op = padded n_out.
    void *state_grads_t   # (cols, hp)
    void *output_grads_t  # (read_cols, op)
    void *input_product   # (n_in, hp)
    void *state_product   # (n_hidden, hp)
    void *readout_product # (n_hidden, op)


cdef inline double step_work(Py_ssize_t n_rows, Py_ssize_t n_steps,
                             const Py_ssize_t *sizes) noexcept nogil:
    """About the cost of a training step on a batch, in flops: four forward
    passes (the backward pass does twice the products, and tanh costs more
    than its count of flops)."""
    return 8.0 * n_rows * n_steps * sizes[1] * (sizes[0] + sizes[1] + sizes[2])


cdef inline PanelLayout panel_layout(Py_ssize_t n_rows, Py_ssize_t n_steps,
                                     const Py_ssize_t *sizes, size_t itemsize,
                                     bint return_sequences) noexcept nogil:
    """The layout of batches of up to n_rows sequences, from the shapes alone.

    Groups as group_panels says (_panel.pxd).
    """
    cdef PanelLayout layout
    cdef Py_ssize_t panel = padded_width(1, itemsize)
    cdef Py_ssize_t n_panels = n_tasks(n_rows, panel)
    cdef Py_ssize_t per_group = group_panels(n_panels, step_work(n_rows, n_steps, sizes))
    layout.n_steps = n_steps
    layout.task_width = per_group * panel
    layout.n_groups = max(1, n_tasks(n_panels, per_group))
    layout.cols = layout.n_groups * n_steps * layout.task_width
    layout.state_cols = layout.n_groups * (n_steps + 1) * layout.task_width
    layout.read_cols = layout.cols if return_sequences else layout.n_groups * layout.task_width
    layout.return_sequences = return_sequences
    return layout


cdef inline bint use_panels(Py_ssize_t n_rows, Py_ssize_t n_steps,
                            const Py_ssize_t *sizes) noexcept nogil:
    """Whether batches of n_rows sequences train in the panel layout; from
    the shapes alone (batches of sequences of unequal length never do, nor
    sequences of no steps)."""
    return n_steps > 0 and step_work(n_rows, n_steps, sizes) < PANEL_MAX_WORK


def training_layout(Py_ssize_t n_rows, Py_ssize_t n_steps, const Py_ssize_t[::1] sizes,
                    Py_ssize_t itemsize, bint return_sequences):
    """(n_groups, group_width) of the panel layout batches of n_rows
    full-length sequences train in, or None when they train row-major with
    BLAS. For the tests."""
    cdef PanelLayout layout
    if not use_panels(n_rows, n_steps, &sizes[0]):
        return None
    layout = panel_layout(n_rows, n_steps, &sizes[0], itemsize, return_sequences)
    return layout.n_groups, layout.task_width


cdef inline bint all_full_length(const Py_ssize_t *lengths, Py_ssize_t n_rows,
                                 Py_ssize_t n_steps) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n_rows):
        if lengths[i] != n_steps:
            return False
    return True


cdef void panel_sequence_task(
        Py_ssize_t group, const PanelLayout *layout, Py_ssize_t n_rows,
        void **params, const Py_ssize_t *sizes, bint output_tanh, double grad_scale,
        PanelBuffers *panels, const floating *h0, floating *final_states,
        double *partials) noexcept nogil:
    """Forward, loss and the backward time loop of one group of sequences.

    Sets the group's states, outputs, output gradients and dz, its loss
    partial sum and its samples' final states. h0: (n_rows, n_hidden)
    row-major or NULL (zeros); final_states: (n_rows, n_hidden).
    """
    cdef Py_ssize_t n_in = sizes[0], n_hidden = sizes[1], n_out = sizes[2]
    cdef Py_ssize_t n_steps = layout.n_steps, width = layout.task_width
    cdef Py_ssize_t first = group * width
    cdef Py_ssize_t n_valid = min(width, max(0, n_rows - first))
    cdef Py_ssize_t cols = layout.cols, ld_states = layout.state_cols
    cdef Py_ssize_t ld_read = layout.read_cols
    cdef bint every_step = layout.return_sequences
    cdef Py_ssize_t n_read = n_steps * width if every_step else width
    cdef const floating *Wh = <floating *> params[RECURRENT_WEIGHT]
    cdef const floating *W_out = <floating *> params[READOUT_WEIGHT]
    cdef const floating *X = <floating *> panels.inputs + group * n_steps * width
    cdef floating *H = <floating *> panels.states + group * (n_steps + 1) * width
    cdef floating *dZ = <floating *> panels.state_grads + group * n_steps * width
    cdef Py_ssize_t read_at = group * n_read
    cdef floating *outputs = <floating *> panels.outputs + read_at
    cdef floating *d_outputs = <floating *> panels.output_grads + read_at
    # The states the readout reads: every step's, or the last step's.
    cdef floating *read_states = H + (width if every_step else n_steps * width)
    cdef Py_ssize_t step, i, j, padded
    for j in range(n_hidden):
        for i in range(width):
            H[j * ld_states + i] = (h0[(first + i) * n_hidden + j]
                                    if h0 != NULL and i < n_valid else 0)
    # Forward: every step's input projection in one product, then the time loop.
    panel_product(n_hidden, n_steps * width, n_in, <floating *> params[INPUT_WEIGHT],
                  1, n_hidden, X, cols, <floating *> params[BIAS], False, NULL, 0,
                  H + width, ld_states)
    for step in range(n_steps):
        panel_product(n_hidden, width, n_hidden, Wh, 1, n_hidden, H + step * width,
                      ld_states, NULL, True, NULL, 0, H + (step + 1) * width, ld_states)
        tanh_rows(H + (step + 1) * width, n_hidden, width, ld_states)
    panel_product(n_out, n_read, n_hidden, W_out, 1, n_out, read_states, ld_states,
                  <floating *> params[READOUT_BIAS], False, NULL, 0, outputs, ld_read)
    if output_tanh:
        tanh_rows(outputs, n_out, n_read, ld_read)
    partials[group] = panel_loss(outputs, <floating *> panels.targets + read_at, d_outputs,
                                 n_out, n_read // width, width, n_valid, ld_read,
                                 grad_scale, output_tanh)
    # Backward: dL/dh from the readout, then dz_t = (dL/dh_t + Wh dz_{t+1}) (1 - h_t^2).
    panel_product(n_hidden, n_read, n_out, W_out, n_out, 1, d_outputs, ld_read, NULL,
                  False, NULL, 0, dZ + (0 if every_step else (n_steps - 1) * width), cols)
    for step in range(n_steps - 1, -1, -1):
        # The last step has no dz_{t+1}: k = 0 leaves its dL/dh_t times tanh'.
        panel_product(n_hidden, width, 0 if step == n_steps - 1 else n_hidden, Wh,
                      n_hidden, 1, dZ + (step + 1) * width if step < n_steps - 1 else dZ,
                      cols, NULL, every_step or step == n_steps - 1,
                      H + (step + 1) * width, ld_states, dZ + step * width, cols)
    for i in range(n_valid):
        for j in range(n_hidden):
            final_states[(first + i) * n_hidden + j] = H[j * ld_states + n_steps * width + i]
    if sample_major_gradient(n_hidden, sizeof(floating)):
        padded = padded_width(n_hidden, sizeof(floating))
        transpose_columns(dZ, n_hidden, n_steps * width, cols,
                          <floating *> panels.state_grads_t + group * n_steps * width * padded,
                          padded)
    if sample_major_gradient(n_out, sizeof(floating)):
        padded = padded_width(n_out, sizeof(floating))
        transpose_columns(d_outputs, n_out, n_read, ld_read,
                          <floating *> panels.output_grads_t + read_at * padded, padded)


cdef inline void grouped_weight_gradient(
        const PanelLayout *layout, Py_ssize_t n_rows, Py_ssize_t n_out, Py_ssize_t n_cols,
        const floating *states, const floating *deltas, Py_ssize_t ld_deltas,
        const floating *deltas_t, floating *product, floating *target) noexcept nogil:
    """target (n_rows, n_out) = the sum over groups of a group's states times
    its deltas^T, n_cols columns each: states (rows ld state_cols, a group
    every (n_steps + 1) * task_width columns, as each begins with its h0),
    deltas (rows ld_deltas, a group every n_cols columns) and deltas_t their
    sample-major copy (see add_weight_gradient)."""
    cdef Py_ssize_t padded = padded_width(n_out, sizeof(floating))
    cdef Py_ssize_t group
    for group in range(layout.n_groups):
        add_weight_gradient(n_rows, n_out, n_cols,
                            states + group * (layout.n_steps + 1) * layout.task_width,
                            layout.state_cols, deltas + group * n_cols, ld_deltas,
                            deltas_t + group * n_cols * padded, group == 0, 1, 0, product,
                            target)
    finish_weight_gradient(n_rows, n_out, product, 1, 0, target)


cdef void panel_weight_task(Py_ssize_t task, const PanelLayout *layout, void **grads,
                            const Py_ssize_t *sizes, PanelBuffers *panels,
                            const floating *X) noexcept nogil:
    """One block of PANEL_WEIGHT_ROWS rows of dWx, dWh or dW_out, or (the
    last task) both biases, each summed over the whole batch in one order.
    X is panels.inputs."""
    cdef Py_ssize_t n_in = sizes[0], n_hidden = sizes[1], n_out = sizes[2]
    cdef Py_ssize_t n_steps = layout.n_steps, width = layout.task_width
    cdef Py_ssize_t cols = layout.cols, ld_states = layout.state_cols
    cdef Py_ssize_t ld_read = layout.read_cols
    cdef Py_ssize_t n_read = ld_read // layout.n_groups
    cdef Py_ssize_t x_blocks = n_tasks(n_in, PANEL_WEIGHT_ROWS)
    cdef Py_ssize_t h_blocks = n_tasks(n_hidden, PANEL_WEIGHT_ROWS)
    cdef const floating *H = <floating *> panels.states
    cdef const floating *d_outputs = <floating *> panels.output_grads
    cdef const floating *dZ = <floating *> panels.state_grads
    cdef Py_ssize_t read_offset = width if layout.return_sequences else n_steps * width
    cdef Py_ssize_t row, n_block_rows
    cdef const floating *states
    cdef floating *target
    cdef floating *product
    if task < x_blocks:
        row = task * PANEL_WEIGHT_ROWS
        n_block_rows = min(<Py_ssize_t> PANEL_WEIGHT_ROWS, n_in - row)
        target = <floating *> grads[INPUT_WEIGHT] + row * n_hidden
        product = (<floating *> panels.input_product
                   + row * padded_width(n_hidden, sizeof(floating)))
        add_weight_gradient(n_block_rows, n_hidden, cols, X + row * cols, cols, dZ, cols,
                            <floating *> panels.state_grads_t, True, 1, 0, product, target)
        finish_weight_gradient(n_block_rows, n_hidden, product, 1, 0, target)
    elif task < x_blocks + 2 * h_blocks:
        # dWh pairs h_{t-1} with dz_t, dW_out the states read with the output
        # gradients: per group, as the groups' states have h0 among them.
        row = ((task - x_blocks) % h_blocks) * PANEL_WEIGHT_ROWS
        n_block_rows = min(<Py_ssize_t> PANEL_WEIGHT_ROWS, n_hidden - row)
        states = H + row * ld_states
        if task < x_blocks + h_blocks:
            grouped_weight_gradient(
                layout, n_block_rows, n_hidden, n_steps * width, states, dZ, cols,
                <floating *> panels.state_grads_t,
                <floating *> panels.state_product + row * padded_width(n_hidden, sizeof(floating)),
                <floating *> grads[RECURRENT_WEIGHT] + row * n_hidden)
        else:
            grouped_weight_gradient(
                layout, n_block_rows, n_out, n_read, states + read_offset, d_outputs, ld_read,
                <floating *> panels.output_grads_t,
                <floating *> panels.readout_product + row * padded_width(n_out, sizeof(floating)),
                <floating *> grads[READOUT_WEIGHT] + row * n_out)
    else:
        row_sums(n_hidden, cols, dZ, cols, 1, 0, <floating *> grads[BIAS])
        row_sums(n_out, ld_read, d_outputs, ld_read, 1, 0, <floating *> grads[READOUT_BIAS])


cdef double panel_stm_gradients(
        const floating *h0, Py_ssize_t n_rows, const PanelLayout *layout,
        void **params, void **grads, const Py_ssize_t *sizes, bint output_tanh,
        PanelBuffers *panels, floating *final_states, int n_threads) noexcept nogil:
    """stm_gradients in the panel layout, for full-length sequences.

    panels.inputs and panels.targets hold the batch (gather_columns); h0 is
    (n_rows, n_hidden) row-major or NULL (zeros). Fills grads and
    final_states (n_rows, n_hidden) and returns the sum of squares.

    Sequence tasks (a group of samples through every step) come first, then
    weight tasks (blocks of gradient rows, each summed over the whole batch):
    neither depends on the thread count.
    """
    cdef Py_ssize_t n_in = sizes[0], n_hidden = sizes[1], n_out = sizes[2]
    cdef Py_ssize_t n_steps = layout.n_steps
    cdef double work = step_work(n_rows, n_steps, sizes)
    cdef Py_ssize_t n_weight_tasks = (n_tasks(n_in, PANEL_WEIGHT_ROWS)
                                      + 2 * n_tasks(n_hidden, PANEL_WEIGHT_ROWS) + 1)
    cdef int sequence_threads = threads_for(n_threads, layout.n_groups, work)
    cdef int weight_threads = threads_for(n_threads, n_weight_tasks, work)
    cdef double grad_scale = 1.0 / max(1, n_rows * (n_steps if layout.return_sequences
                                                    else 1) * n_out)
    cdef double partials[MAX_PANEL_GROUPS]
    cdef double sum_squares = 0
    cdef Py_ssize_t task
    if sequence_threads == 1:
        for task in range(layout.n_groups):
            panel_sequence_task(task, layout, n_rows, params, sizes, output_tanh,
                                grad_scale, panels, h0, final_states, partials)
    else:
        for task in prange(layout.n_groups, num_threads=sequence_threads,
                           schedule='static'):
            panel_sequence_task(task, layout, n_rows, params, sizes, output_tanh,
                                grad_scale, panels, h0, final_states, partials)
    if weight_threads == 1:
        for task in range(n_weight_tasks):
            panel_weight_task(task, layout, grads, sizes, panels,
                              <const floating *> panels.inputs)
    else:
        for task in prange(n_weight_tasks, num_threads=weight_threads, schedule='dynamic'):
            panel_weight_task(task, layout, grads, sizes, panels,
                              <const floating *> panels.inputs)
    for task in range(layout.n_groups):
        sum_squares += partials[task]
    return sum_squares


cdef inline void param_counts(const Py_ssize_t *sizes, Py_ssize_t *counts) noexcept nogil:
    counts[INPUT_WEIGHT] = sizes[0] * sizes[1]
    counts[RECURRENT_WEIGHT] = sizes[1] * sizes[1]
    counts[BIAS] = sizes[1]
    counts[READOUT_WEIGHT] = sizes[1] * sizes[2]
    counts[READOUT_BIAS] = sizes[2]


cdef void clip_gradients(floating **grads, const Py_ssize_t *counts,
                         double clip_norm) noexcept nogil:
    """Scale every gradient by clip_norm / norm when their global norm exceeds it.

    The norm adds per-parameter sums of squares, each in element order.
    """
    cdef double total = 0, norm
    cdef floating scale
    cdef floating *grad
    cdef Py_ssize_t param, i
    for param in range(N_PARAMS):
        grad = grads[param]
        for i in range(counts[param]):
            total += <double> grad[i] * grad[i]
    norm = sqrt(total)
    if not norm > clip_norm:
        return
    scale = <floating> (clip_norm / norm)
    for param in range(N_PARAMS):
        grad = grads[param]
        for i in range(counts[param]):
            grad[i] *= scale


cdef void scatter_rows(const char *source, const Py_ssize_t *rows, Py_ssize_t n_rows,
                       size_t row_bytes, char *dest) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n_rows):
        memcpy(dest + rows[i] * row_bytes, source + i * row_bytes, row_bytes)


def predict(const floating[:, :, ::1] X, object h0, const Py_ssize_t[::1] lengths,
            list params, const Py_ssize_t[::1] sizes, bint output_tanh,
            bint return_sequences, list buffers, int n_threads):
    """Return (outputs, final states): two of the buffers, filled."""
    cdef void *param_data[N_PARAMS]
    cdef void *buffer_data[N_BUFFERS]
    cdef const floating *h0_data = <const floating *> data_or_null(h0)
    pointers(params, param_data, N_PARAMS)
    pointers(buffers, buffer_data, N_BUFFERS)
    with nogil:
        stm_forward(&X[0, 0, 0], h0_data, &lengths[0], X.shape[0], X.shape[1],
                    param_data, &sizes[0], output_tanh, return_sequences,
                    buffer_data, n_threads)
    return buffers[OUTPUTS], buffers[FINAL_STATES]


def gradients(const floating[:, :, ::1] X, const floating[::1] Y, object h0,
              const Py_ssize_t[::1] lengths, list params, list grads,
              const Py_ssize_t[::1] sizes, bint output_tanh,
              bint return_sequences, list buffers, int n_threads):
    """Fill grads; return the mean squared error over the valid outputs.

    Y is the targets, flattened, with 0 at padded steps.
    """
    cdef void *param_data[N_PARAMS]
    cdef void *grad_data[N_PARAMS]
    cdef void *buffer_data[N_BUFFERS]
    cdef const floating *h0_data = <const floating *> data_or_null(h0)
    cdef double sum_squares
    cdef Py_ssize_t n_valid
    pointers(params, param_data, N_PARAMS)
    pointers(grads, grad_data, N_PARAMS)
    pointers(buffers, buffer_data, N_BUFFERS)
    with nogil:
        sum_squares = stm_gradients(&X[0, 0, 0], &Y[0], h0_data, &lengths[0],
                                    X.shape[0], X.shape[1], param_data, grad_data,
                                    &sizes[0], output_tanh, return_sequences,
                                    buffer_data, n_threads)
        n_valid = n_valid_outputs(&lengths[0], X.shape[0], return_sequences)
    return sum_squares / max(1, n_valid * sizes[2])


def train(const floating[:, :, ::1] X, const floating[::1] Y,
          const Py_ssize_t[::1] lengths, object initial_states,
          object final_states, list params, list grads, list state1,
          list state2, const Py_ssize_t[::1] sizes, bint output_tanh,
          bint return_sequences, list buffers, floating[:, :, ::1] X_batch,
          floating[::1] Y_batch, Py_ssize_t[::1] lengths_batch,
          floating[:, ::1] h0_batch, const Py_ssize_t[:, ::1] order,
          Py_ssize_t batch_size, int optimizer, double lr, double momentum,
          double beta1, double beta2, double eps, double clip_norm,
          long long step, double[::1] epoch_losses, int n_threads):
    """Train for epoch_losses.shape[0] epochs of mini-batch updates.

    Y holds the targets flattened (0 at padded steps). order[e] is the
    sample order of epoch e; with no rows, samples are taken in their
    natural order. Every batch starts from initial_states' rows (None:
    zeros); when final_states is an array, each batch's final states are
    written to its rows. clip_norm > 0 clips the global gradient norm.
    Sets epoch_losses[e] to the mean squared error over the valid outputs
    of epoch e (each batch measured before its update) and returns the
    number of updates done, counting the `step` done before.

    Small networks train batches of full-length sequences in the panel
    layout, in workspaces allocated here (once per call).
    """
    cdef Py_ssize_t n_samples = X.shape[0], n_steps = X.shape[1]
    cdef Py_ssize_t n_in = sizes[0], n_hidden = sizes[1], n_out = sizes[2]
    cdef const floating *h0_all = <const floating *> data_or_null(initial_states)
    cdef floating *final_all = <floating *> data_or_null(final_states)
    cdef void *param_data[N_PARAMS]
    cdef void *grad_data[N_PARAMS]
    cdef void *state1_data[N_PARAMS]
    cdef void *state2_data[N_PARAMS]
    cdef void *buffer_data[N_BUFFERS]
    cdef Py_ssize_t counts[N_PARAMS]
    cdef OptimizerConfig config
    cdef Py_ssize_t max_rows = min(batch_size, n_samples)
    cdef bint panels = use_panels(max_rows, n_steps, &sizes[0])
    cdef PanelLayout layout = panel_layout(max_rows, n_steps, &sizes[0], sizeof(floating),
                                           return_sequences)
    cdef PanelBuffers panel_buffers
    cdef void *panel_memory = NULL
    cdef floating *panel_start
    cdef Py_ssize_t hidden_padded, out_padded
    pointers(params, param_data, N_PARAMS)
    pointers(grads, grad_data, N_PARAMS)
    pointers(state1, state1_data, N_PARAMS)
    pointers(state2, state2_data, N_PARAMS)
    pointers(buffers, buffer_data, N_BUFFERS)
    param_counts(&sizes[0], counts)
    config = optimizer_config(optimizer, lr, momentum, beta1, beta2, eps, step)
    if panels:
        hidden_padded = padded_width(n_hidden, sizeof(floating))
        out_padded = padded_width(n_out, sizeof(floating))
        panel_start = <floating *> panel_calloc(
            (n_in * layout.cols + 3 * n_out * layout.read_cols
             + n_hidden * (layout.cols + layout.state_cols)
             + layout.cols * hidden_padded + layout.read_cols * out_padded
             + (n_in + n_hidden) * hidden_padded + n_hidden * out_padded)
            * sizeof(floating), &panel_memory)
        if panel_start == NULL:
            raise MemoryError()
        panel_buffers.inputs = panel_start
        panel_buffers.targets = panel_start + n_in * layout.cols
        panel_buffers.outputs = <floating *> panel_buffers.targets + n_out * layout.read_cols
        panel_buffers.output_grads = <floating *> panel_buffers.outputs + n_out * layout.read_cols
        panel_buffers.states = <floating *> panel_buffers.output_grads + n_out * layout.read_cols
        panel_buffers.state_grads = (<floating *> panel_buffers.states
                                     + n_hidden * layout.state_cols)
        panel_buffers.state_grads_t = (<floating *> panel_buffers.state_grads
                                       + n_hidden * layout.cols)
        panel_buffers.output_grads_t = (<floating *> panel_buffers.state_grads_t
                                        + layout.cols * hidden_padded)
        panel_buffers.input_product = (<floating *> panel_buffers.output_grads_t
                                       + layout.read_cols * out_padded)
        panel_buffers.state_product = (<floating *> panel_buffers.input_product
                                       + n_in * hidden_padded)
        panel_buffers.readout_product = (<floating *> panel_buffers.state_product
                                         + n_hidden * hidden_padded)
    try:
        with nogil:
            train_epochs(X, Y, lengths, h0_all, final_all, param_data, grad_data,
                         state1_data, state2_data, counts, &sizes[0], output_tanh,
                         return_sequences, buffer_data, X_batch, Y_batch, lengths_batch,
                         h0_batch, order, batch_size, clip_norm, &config, panels,
                         &layout, &panel_buffers, epoch_losses, n_threads)
    finally:
        free(panel_memory)
    return config.step


cdef void train_epochs(
        const floating[:, :, ::1] X, const floating[::1] Y,
        const Py_ssize_t[::1] lengths, const floating *h0_all, floating *final_all,
        void **param_data, void **grad_data, void **state1_data, void **state2_data,
        const Py_ssize_t *counts, const Py_ssize_t *sizes, bint output_tanh,
        bint return_sequences, void **buffer_data, floating[:, :, ::1] X_batch,
        floating[::1] Y_batch, Py_ssize_t[::1] lengths_batch,
        floating[:, ::1] h0_batch, const Py_ssize_t[:, ::1] order,
        Py_ssize_t batch_size, double clip_norm, OptimizerConfig *config,
        bint panels, const PanelLayout *layout, PanelBuffers *panel_buffers,
        double[::1] epoch_losses, int n_threads) noexcept nogil:
    """train's loop; see train."""
    cdef Py_ssize_t n_samples = X.shape[0], n_steps = X.shape[1]
    cdef Py_ssize_t n_in = sizes[0], n_hidden = sizes[1], n_out = sizes[2]
    cdef Py_ssize_t targets_per_sample = (n_steps if return_sequences else 1) * n_out
    cdef Py_ssize_t n_epochs = epoch_losses.shape[0]
    cdef bint shuffled = order.shape[0] > 0
    cdef size_t state_bytes = n_hidden * sizeof(floating)
    cdef Py_ssize_t epoch, batch, start, n_rows, param, n_valid
    cdef const Py_ssize_t *rows = NULL
    cdef const floating *X_rows
    cdef const floating *Y_rows
    cdef const floating *h0_rows
    cdef const Py_ssize_t *length_rows
    cdef double sum_squares
    # One unshuffled batch is the same every epoch: transpose it once.
    cdef bint gather_each_batch = shuffled or n_tasks(n_samples, batch_size) > 1
    cdef bint gathered = False
    cdef bint panel_batch
    n_valid = n_valid_outputs(&lengths[0], n_samples, return_sequences)
    for epoch in range(n_epochs):
        sum_squares = 0
        for batch in range(n_tasks(n_samples, batch_size)):
            start = batch * batch_size
            n_rows = min(batch_size, n_samples - start)
            X_rows = &X[start, 0, 0]
            Y_rows = &Y[start * targets_per_sample]
            length_rows = &lengths[start]
            h0_rows = h0_all
            if h0_all != NULL:
                h0_rows = h0_all + start * n_hidden
            if shuffled:
                rows = &order[epoch, start]
                gather_rows(<const char *> &lengths[0], rows, n_rows,
                            sizeof(Py_ssize_t), <char *> &lengths_batch[0])
                length_rows = &lengths_batch[0]
                if h0_all != NULL:
                    gather_rows(<const char *> h0_all, rows, n_rows, state_bytes,
                                <char *> &h0_batch[0, 0])
                    h0_rows = &h0_batch[0, 0]
            panel_batch = panels and all_full_length(length_rows, n_rows, n_steps)
            if shuffled and not panel_batch:
                gather_rows(<const char *> &X[0, 0, 0], rows, n_rows,
                            n_steps * n_in * sizeof(floating), <char *> &X_batch[0, 0, 0])
                gather_rows(<const char *> &Y[0], rows, n_rows,
                            targets_per_sample * sizeof(floating), <char *> &Y_batch[0])
                X_rows = &X_batch[0, 0, 0]
                Y_rows = &Y_batch[0]
            if panel_batch:
                # Shuffled rows go straight from X and Y into the panel layout.
                if gather_each_batch or not gathered:
                    gather_columns(&X[0, 0, 0] if shuffled else X_rows,
                                   rows if shuffled else NULL, n_rows, n_steps, n_in,
                                   <floating *> panel_buffers.inputs, layout.task_width,
                                   layout.n_groups)
                    gather_columns(&Y[0] if shuffled else Y_rows,
                                   rows if shuffled else NULL, n_rows,
                                   n_steps if return_sequences else 1, n_out,
                                   <floating *> panel_buffers.targets, layout.task_width,
                                   layout.n_groups)
                    gathered = True
                sum_squares += panel_stm_gradients(
                    h0_rows, n_rows, layout, param_data, grad_data, sizes, output_tanh,
                    panel_buffers, <floating *> buffer_data[FINAL_STATES], n_threads)
            else:
                sum_squares += stm_gradients(
                    X_rows, Y_rows, h0_rows, length_rows, n_rows, n_steps, param_data,
                    grad_data, sizes, output_tanh, return_sequences, buffer_data,
                    n_threads)
            if final_all != NULL:
                if shuffled:
                    scatter_rows(<const char *> buffer_data[FINAL_STATES], rows,
                                 n_rows, state_bytes, <char *> final_all)
                else:
                    memcpy(final_all + start * n_hidden, buffer_data[FINAL_STATES],
                           n_rows * state_bytes)
            if clip_norm > 0:
                clip_gradients(<floating **> grad_data, counts, clip_norm)
            config.step += 1
            for param in range(N_PARAMS):
                optimizer_step(<floating *> param_data[param],
                               <floating *> grad_data[param],
                               <floating *> state1_data[param],
                               <floating *> state2_data[param],
                               counts[param], config, n_threads)
        epoch_losses[epoch] = sum_squares / max(1, n_valid * n_out)
