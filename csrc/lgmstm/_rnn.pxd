# The Elman recurrent layer's passes, shared with the STM program (_stm);
# implemented in _rnn.pyx. Row-major pointers, shapes trusted; h0, dH,
# dh_last NULL mean zeros, dX and dh0 NULL mean "not wanted". Also the
# layer's time loops in the panel layout of _panel.pxd (inline), one group
# of samples by one task, for the STM's and the deep STM's panel training.
from cython cimport floating

from lgmstm._panel cimport panel_product
from lgmstm._tanh cimport tanh_rows


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
        bint steps_apart,       # predict's: each step's inputs projected apart (forward_chunk)
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
        Py_ssize_t n_hidden, bint steps_apart) noexcept nogil
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


# -- the layer in the panel layout (_panel.pxd): one group of `width` lanes,
# states H (n_hidden rows ld_states apart) in blocks of width columns, block
# 0 the initial states (states_into_panel), block t + 1 h_t; deltas dZ
# (n_hidden rows ld_dz apart), block t dz_t.

cdef inline void panel_recurrent_forward(
        const floating *X, Py_ssize_t ld_x, const floating *Wx, const floating *Wh,
        const floating *b, floating *H, Py_ssize_t ld_states, Py_ssize_t n_in,
        Py_ssize_t n_hidden, Py_ssize_t n_steps, Py_ssize_t width) noexcept nogil:
    """h_t = tanh(x_t Wx + h_{t-1} Wh + b) for t < n_steps, into H's blocks
    1 .. n_steps from block 0: every step's input projection in one product
    (X: n_in rows ld_x apart, the group's n_steps blocks), then the time
    loop."""
    cdef Py_ssize_t t
    panel_product(n_hidden, n_steps * width, n_in, Wx, 1, n_hidden, X, ld_x, b, False,
                  NULL, 0, H + width, ld_states)
    for t in range(n_steps):
        panel_product(n_hidden, width, n_hidden, Wh, 1, n_hidden, H + t * width, ld_states,
                      NULL, True, NULL, 0, H + (t + 1) * width, ld_states)
        tanh_rows(H + (t + 1) * width, n_hidden, width, ld_states)


cdef inline void panel_recurrent_backward(
        const floating *Wh, const floating *H, Py_ssize_t ld_states, floating *dZ,
        Py_ssize_t ld_dz, Py_ssize_t n_hidden, Py_ssize_t n_steps, Py_ssize_t width,
        bint every_step) noexcept nogil:
    """The backward time loop over panel_recurrent_forward's states, in place:
    dZ holds dL/dh_t (every step's when every_step, else the last step's
    only: the other blocks are written, not read) and becomes
    dz_t = (dL/dh_t + Wh dz_{t+1}) (1 - h_t^2)."""
    cdef Py_ssize_t t
    for t in range(n_steps - 1, -1, -1):
        # The last step has no dz_{t+1}: k = 0 leaves its dL/dh_t times tanh'.
        panel_product(n_hidden, width, 0 if t == n_steps - 1 else n_hidden, Wh, n_hidden, 1,
                      dZ + (t + 1) * width if t < n_steps - 1 else dZ, ld_dz, NULL,
                      every_step or t == n_steps - 1, H + (t + 1) * width, ld_states,
                      dZ + t * width, ld_dz)
