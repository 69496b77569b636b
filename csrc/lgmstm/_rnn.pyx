# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The Elman recurrent layer: its forward pass and backpropagation through
time, and the kernel entry points lgmstm.kernels calls once it has checked
the shapes.

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
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport uintptr_t
from libc.string cimport memcpy, memset

from lgmstm._blas cimport gemm
from lgmstm._dense cimport dense_forward_rows, dense_forward_strided
from lgmstm._panel cimport (LGMSTM_PANEL_BYTES, PACKED_SCRATCH_PER_ROW, pack_panels,
                            packed_product, packed_size, transpose_columns,
                            use_packed_product)
from lgmstm._parallel cimport BLOCK_COLS, BLOCK_ELEMS, n_tasks, threads_for
from lgmstm._tanh cimport tanh_inplace, tanh_rows
from lgmstm._train cimport data_or_null

cdef enum:
    # Fewest samples in a sequence chunk: of the backward pass (see
    # sequence_chunk_rows; its chunks are the weight gradients' sample groups
    # too), and of the forward pass (forward_chunk_rows).
    MIN_CHUNK_ROWS = 32
    MIN_FORWARD_CHUNK_ROWS = 64
    # Most sample groups the weight gradients are split into, and most values
    # their partial sums may take (see weight_groups): 4 Mi values, 32 MiB of
    # float64, about the weights of a 1024-unit network.
    MAX_WEIGHT_GROUPS = 4
    PARTIALS_BUDGET = 4194304


cdef Py_ssize_t sequence_chunk_rows(Py_ssize_t n_samples, Py_ssize_t n_hidden) noexcept nogil:
    """Samples per sequence chunk of the backward pass, from the shapes alone.

    A step's h Wh product costs a call (and, with BLAS, repacking Wh)
    whatever its rows, so chunks are tall: MIN_CHUNK_ROWS rows or more, and
    n_hidden / 8 (BLAS runs wide products well only from about there); and
    up to 4 chunks, for 2-4 threads, from 4 * MIN_CHUNK_ROWS samples on
    (more, of 64 samples, past 256). The batch is split into equal chunks.
    """
    cdef Py_ssize_t min_rows = max(<Py_ssize_t> MIN_CHUNK_ROWS, n_hidden // 8)
    cdef Py_ssize_t n_chunks = min(n_tasks(n_samples, min_rows),
                                   max(4, n_tasks(n_samples, 64)))
    return max(1, n_tasks(n_samples, max(1, n_chunks)))


cdef Py_ssize_t forward_chunk_rows(Py_ssize_t n_hidden) noexcept nogil:
    """Samples per chunk of the forward pass, from n_hidden alone: as
    sequence_chunk_rows, but MIN_FORWARD_CHUNK_ROWS or more (a step of 64
    live streams is one chunk, not two of 32), rounded up to a multiple of
    64 (as the readout's GEMM tasks are, gemm_task_rows), and the last chunk
    takes what is left. A sample's states depend only on the chunk it falls
    in, never on the batch's size: pieces of a batch cut at multiples of it
    give every sample the bits of the whole batch (lgmstm.dask.predict)."""
    return MIN_FORWARD_CHUNK_ROWS * n_tasks(max(<Py_ssize_t> MIN_FORWARD_CHUNK_ROWS,
                                                n_hidden // 8), MIN_FORWARD_CHUNK_ROWS)


cdef Py_ssize_t training_chunk_rows(Py_ssize_t n_samples, Py_ssize_t n_hidden,
                                    Py_ssize_t n_directions) noexcept nogil:
    """Samples per forward chunk of a training batch of n_samples, with
    n_directions passes side by side: forward_chunk_rows, or the backward
    pass's shorter chunks (sequence_chunk_rows) when those leave the threads
    a single task. From the shapes alone, never the thread count. Training
    needs no chunk of predict's (which keeps forward_chunk_rows, see there):
    where the panel kernel runs the time loop, it gives a row the same bits
    in any chunk; only which rows share a BLAS product changes."""
    cdef Py_ssize_t rows = forward_chunk_rows(n_hidden)
    if n_directions * n_tasks(n_samples, rows) < 2:
        rows = sequence_chunk_rows(n_samples, n_hidden)
    return rows


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


cdef Py_ssize_t rnn_scratch_size(Py_ssize_t n_samples, Py_ssize_t n_in,
                                 Py_ssize_t n_hidden, bint backward) noexcept nogil:
    """Values of scratch the forward pass, or also the backward pass, needs
    (see above)."""
    if not backward:
        return weight_offset(n_samples, n_hidden) + weight_size(n_hidden, False)
    return (partials_offset(n_samples, n_hidden)
            + (weight_groups(n_samples, n_in, n_hidden) - 1) * (n_in + n_hidden) * n_hidden)


def scratch_size(Py_ssize_t n_samples, Py_ssize_t n_in, Py_ssize_t n_hidden, bint backward):
    """rnn_scratch_size, for the callers that allocate the scratch."""
    return rnn_scratch_size(n_samples, n_in, n_hidden, backward)


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


def _recurrent_product_kind(Py_ssize_t n_hidden):
    """"packed" or "blas": how the time loops multiply by Wh (a test hook)."""
    return "packed" if use_packed_product(n_hidden) else "blas"


cdef const floating *prepare_recurrent_weight(
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
        Py_ssize_t n_hidden, bint steps_apart) noexcept nogil:
    """States of one chunk of samples; h_last (if not NULL) gets their final states.
    packed: see prepare_recurrent_weight.

    The input projection X Wx + b: by default one product over each run of
    the chunk's valid rows (fewer, larger products: training's); with
    steps_apart (predict's), one product per step over every sample of the
    chunk, so that a row's place in its product, which BLAS's rounding
    depends on, is its sample's place in the chunk, as in a step() of the
    same streams: predict's states are then step's bits. It reads X past
    the lengths there, and the states of those steps are zeroed below."""
    cdef Py_ssize_t start = chunk * chunk_rows
    cdef Py_ssize_t stop = min(start + chunk_rows, n_samples)
    cdef Py_ssize_t nh = n_hidden
    cdef size_t row_bytes = nh * sizeof(floating)
    cdef Py_ssize_t first, last, i, t
    cdef floating *product_rows
    if steps_apart:
        for t in range(n_steps):
            dense_forward_strided(X + (start * n_steps + t) * n_in, n_steps * n_in, Wx, b,
                                  H + (start * n_steps + t) * nh, n_steps * nh, stop - start,
                                  n_in, nh, False)
    else:
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



cdef BackwardPlan backward_plan(Py_ssize_t n_samples, Py_ssize_t n_in,
                                Py_ssize_t n_hidden) noexcept nogil:
    """How rnn_backward_pass cuts its work into tasks, from the shapes alone."""
    cdef BackwardPlan plan
    plan.chunk_rows = sequence_chunk_rows(n_samples, n_hidden)
    plan.n_chunks = n_tasks(n_samples, plan.chunk_rows)
    plan.n_groups = weight_groups(n_samples, n_in, n_hidden)
    plan.block_rows = weight_block_rows(n_in, n_hidden, plan.n_groups)
    plan.n_weight_tasks = (plan.n_groups * (n_tasks(n_in, plan.block_rows)
                                            + n_tasks(n_hidden, plan.block_rows))
                           + n_tasks(n_hidden, BLOCK_COLS))
    return plan


cdef const floating *transposed_recurrent_weight(const floating *scratch,
                                                 Py_ssize_t n_samples,
                                                 Py_ssize_t n_hidden) noexcept nogil:
    """Where prepare_recurrent_weight(transpose=True) leaves Wh^T for BLAS."""
    return scratch + weight_offset(n_samples, n_hidden)


cdef floating *weight_partials(floating *scratch, Py_ssize_t n_samples,
                               Py_ssize_t n_hidden) noexcept nogil:
    """The weight gradients' group partials in a backward scratch."""
    return scratch + partials_offset(n_samples, n_hidden)


# -- whole passes ----------------------------------------------------------------

cdef void rnn_forward_pass(
        const floating *X, const floating *h0, const floating *Wx,
        const floating *Wh, const floating *b, const Py_ssize_t *lengths,
        floating *H, floating *h_last, floating *scratch, Py_ssize_t *order,
        Py_ssize_t n_samples, Py_ssize_t n_steps, Py_ssize_t n_in,
        Py_ssize_t n_hidden, Py_ssize_t chunk_rows, bint steps_apart,
        int n_threads) noexcept nogil:
    """H (and h_last unless NULL) for the whole batch; h0 NULL means zeros.
    steps_apart: see forward_chunk.

    scratch: scratch_size(..., backward=False) values; order: n_samples
    indices; chunk_rows: samples per chunk (forward_chunk_rows, or
    training_chunk_rows in training).
    """
    cdef Py_ssize_t n_chunks = n_tasks(n_samples, chunk_rows)
    cdef int n_used = threads_for(n_threads, n_chunks,
                                  2.0 * n_samples * n_steps * n_hidden * (n_in + n_hidden))
    cdef const floating *packed = prepare_recurrent_weight(Wh, False, scratch, n_samples,
                                                           n_hidden)
    cdef Py_ssize_t chunk
    if n_used == 1:
        for chunk in range(n_chunks):
            forward_chunk(chunk, chunk_rows, X, h0, Wx, Wh, b, lengths, H, h_last,
                          packed, scratch, order, n_samples, n_steps, n_in, n_hidden,
                          steps_apart)
    else:
        for chunk in prange(n_chunks, num_threads=n_used, schedule='static'):
            forward_chunk(chunk, chunk_rows, X, h0, Wx, Wh, b, lengths, H, h_last,
                          packed, scratch, order, n_samples, n_steps, n_in, n_hidden,
                          steps_apart)


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
    cdef BackwardPlan plan = backward_plan(n_samples, n_in, n_hidden)
    cdef Py_ssize_t chunk_rows = plan.chunk_rows, n_chunks = plan.n_chunks
    cdef Py_ssize_t n_groups = plan.n_groups, block_rows = plan.block_rows
    cdef Py_ssize_t n_weight_tasks = plan.n_weight_tasks
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
                         X.shape[0], X.shape[1], X.shape[2], Wx.shape[1],
                         forward_chunk_rows(Wx.shape[1]), False, n_threads)


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
