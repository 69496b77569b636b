# The Elman recurrent layer's passes, shared with the STM program (_stm);
# implemented in _rnn.pyx. Row-major pointers, shapes trusted; h0, dH,
# dh_last NULL mean zeros, dX and dh0 NULL mean "not wanted".
from cython cimport floating


cdef Py_ssize_t rnn_scratch_size(Py_ssize_t n_samples, Py_ssize_t n_in,
                                 Py_ssize_t n_hidden, bint backward) noexcept nogil

# Samples per chunk of rnn_forward_pass (the last takes what is left).
cdef Py_ssize_t forward_chunk_rows(Py_ssize_t n_hidden) noexcept nogil
# ... or, in training, where no chunk need match predict's: shorter chunks
# when forward_chunk_rows would leave the threads one task.
cdef Py_ssize_t training_chunk_rows(Py_ssize_t n_samples, Py_ssize_t n_hidden,
                                    Py_ssize_t n_directions) noexcept nogil

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
        Py_ssize_t n_hidden,
        Py_ssize_t chunk_rows,  # samples per chunk: forward_chunk_rows or training_chunk_rows
        int n_threads) noexcept nogil

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


# -- the passes' tasks, for programs that schedule several passes at once
# (the deep STM: directions side by side, a layer's weight gradients beside
# the next layer's time loops). A pass is its tasks, in any order on any
# thread, with the barriers rnn_forward_pass / rnn_backward_pass keep: the
# same tasks, so the same bits.

# Samples per sequence chunk of the backward pass.
cdef Py_ssize_t sequence_chunk_rows(Py_ssize_t n_samples, Py_ssize_t n_hidden) noexcept nogil

cdef struct BackwardPlan:
    # How rnn_backward_pass cuts a batch (backward_plan): sequence chunks of
    # chunk_rows samples, then n_weight_tasks weight tasks (n_groups sample
    # groups, blocks of block_rows rows, then the bias's column blocks).
    Py_ssize_t chunk_rows, n_chunks, n_groups, block_rows, n_weight_tasks

cdef BackwardPlan backward_plan(Py_ssize_t n_samples, Py_ssize_t n_in,
                                Py_ssize_t n_hidden) noexcept nogil

# Pack Wh (or Wh^T, transpose) into scratch for the time loops; returns the
# packed panels, or NULL when BLAS multiplies (then Wh^T, when transpose, is
# at transposed_recurrent_weight). Once per pass, before its chunks.
cdef const floating *prepare_recurrent_weight(
        const floating *Wh, bint transpose, floating *scratch, Py_ssize_t n_samples,
        Py_ssize_t n_hidden) noexcept nogil
cdef const floating *transposed_recurrent_weight(const floating *scratch,
                                                 Py_ssize_t n_samples,
                                                 Py_ssize_t n_hidden) noexcept nogil
cdef floating *weight_partials(floating *scratch, Py_ssize_t n_samples,
                               Py_ssize_t n_hidden) noexcept nogil

# One chunk of samples through every step, forward (any chunk_rows: a
# sample's states depend on the chunk it falls in) or backward (chunk_rows
# of backward_plan).
cdef void forward_chunk(
        Py_ssize_t chunk, Py_ssize_t chunk_rows, const floating *X,
        const floating *h0, const floating *Wx, const floating *Wh,
        const floating *b, const Py_ssize_t *lengths, floating *H,
        floating *h_last, const floating *packed, floating *scratch,
        Py_ssize_t *order, Py_ssize_t n_samples, Py_ssize_t n_steps, Py_ssize_t n_in,
        Py_ssize_t n_hidden) noexcept nogil
cdef void backward_chunk(
        Py_ssize_t chunk, Py_ssize_t chunk_rows, const floating *Wx,
        const floating *Wh_t, const floating *packed, const floating *H,
        const floating *dH, const floating *dh_last, const Py_ssize_t *lengths, floating *dZ,
        floating *dz_first, floating *dX, floating *dh0, floating *scratch,
        Py_ssize_t *order, Py_ssize_t n_samples, Py_ssize_t n_steps,
        Py_ssize_t n_in, Py_ssize_t n_hidden) noexcept nogil
# Weight task `task` (< plan.n_weight_tasks), once every chunk is done; then
# add_weight_partials when plan.n_groups > 1.
cdef void weight_grad_task(
        Py_ssize_t task, Py_ssize_t n_groups, Py_ssize_t rows, const floating *X,
        const floating *h0, const floating *H, const floating *dZ,
        const floating *dz_first, const Py_ssize_t *lengths, floating *dWx,
        floating *dWh, floating *db, floating *partials, Py_ssize_t n_samples,
        Py_ssize_t n_steps, Py_ssize_t n_in, Py_ssize_t n_hidden) noexcept nogil
cdef void add_weight_partials(floating *dWx, floating *dWh, const floating *partials,
                              Py_ssize_t n_groups, Py_ssize_t n_in, Py_ssize_t n_hidden,
                              int n_threads) noexcept nogil


cdef inline bint all_full_length(const Py_ssize_t *lengths, Py_ssize_t n_rows,
                                 Py_ssize_t n_steps) noexcept nogil:
    """Whether each of the n_rows sequences runs all n_steps steps."""
    cdef Py_ssize_t i
    for i in range(n_rows):
        if lengths[i] != n_steps:
            return False
    return True
