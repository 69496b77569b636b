# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The STM program: an Elman recurrent layer (_rnn) with a dense readout
(_dense) and the loss of its output (_loss: squared error, softmax or
sigmoid cross-entropy, optionally weighted per output row), trained by the
driver of _train.

    h_t = tanh(x_t Wx + h_{t-1} Wh + b),   y_t = f(h_t W_out + b_out)

with a readout on every step or on each sequence's final state only.
Sample i runs lengths[i] steps; its outputs past them are 0 and take no loss.

Training runs small networks' batches of full-length sequences in the panel
layout of _panel.pxd (panel_stm_gradients): groups of samples carried
through every step, each summing its own samples' weight gradients, which
are then added in group order, with the panel kernels in place of BLAS.
Other batches take the row-major passes, and so do weighted losses and
cross-entropies over more than PANEL_LOSS_MAX_OUT outputs
(_loss.panel_takes).

Unchecked: call it through lgmstm.STM, which validates shapes, dtypes and
layouts once and allocates every buffer.
"""
import math

cimport numpy as cnp
import numpy as np
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport NAN
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from lgmstm._dense cimport dense_backward, dense_forward, dense_forward_steps
from lgmstm._loss cimport (SQUARED_ERROR, loss_count, loss_of_output, loss_scale,
                           n_valid_outputs, output_loss, output_loss_blocks, output_rows,
                           panel_output_loss, panel_takes, squared_error)
from lgmstm._optim cimport Optimizer
from lgmstm._panel cimport (LGMSTM_PANEL_BYTES, MAX_PANEL_GROUPS, PANEL_MAX_WORK,
                            add_weight_gradient, finish_weight_gradient, gather_into_group,
                            gather_panel, group_block, group_panels, padded_width,
                            panel_calloc, panel_product, row_sums, sample_major_gradient,
                            scatter_panel, states_into_panel, sum_group_gradients,
                            transpose_to_panels)
from lgmstm._parallel cimport (BLAS_THREADING_WORK, BLOCK_ELEMS, GIL_HELD_WORK, SHORT_FIT_WORK,
                               gemm_task_rows, n_tasks, threads_for)
from lgmstm._rnn cimport (all_full_length, forward_chunk_rows, panel_recurrent_backward,
                          panel_recurrent_forward, rnn_backward_pass, rnn_forward_pass,
                          rnn_scratch_size, training_chunk_rows)
from lgmstm._rows cimport gather_rows, scatter_rows, zero_past_lengths
from lgmstm._tanh cimport tanh_rows
from lgmstm._train cimport (BatchStep, KeptMemory, Parameters, PointerTable, Program,
                            TrainingPlan, TrainingRun, UseLock, data_or_null,
                            is_ready_matrix, kernel_threads, parameters_of, plan_of, ready_copy,
                            ready_sequences,
                            run_training)

cnp.import_array()

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


cdef class Network(Program):
    """The STM's parameters and architecture, as the compiled passes take
    them; built once per model.

    params: [Wx, Wh, b, W_out, b_out] (see the enum above), C-contiguous,
    one dtype; sizes: intp array [n_in, n_hidden, n_out]; output: the
    readout's activation and loss ("tanh", "linear", "softmax",
    "sigmoid", as lgmstm._lgm.Network's); lock: the model's UseLock.
    """
    cdef readonly object layer_sizes
    cdef readonly bint return_sequences
    cdef const Py_ssize_t *sizes
    cdef Py_ssize_t counts[N_PARAMS]
    # The fast paths' scratch for their latest shape (states, the time
    # loop's scratch, the sample order, the lengths: all n_steps), and
    # whether a call is using it (a second thread's call allocates its own).
    cdef list ready_scratch
    cdef Py_ssize_t ready_samples, ready_steps_
    cdef bint in_use

    def __cinit__(self, list params, sizes, str output, bint return_sequences,
                  UseLock lock):
        cdef const Py_ssize_t[::1] size_view = sizes
        if len(params) != N_PARAMS:
            raise ValueError(f"expected {N_PARAMS} parameters, got {len(params)}")
        self.params = PointerTable(params)
        self.layer_sizes = sizes
        self.sizes = &size_view[0]
        self.output = output
        self.output_tanh, self.return_sequences = output == "tanh", return_sequences
        self.loss = loss_of_output(output)
        self.n_out = size_view[2]
        self.lock = lock
        self.panel_memory = KeptMemory()
        self.type_num = cnp.PyArray_TYPE(<cnp.ndarray> params[0])
        param_counts(self.sizes, self.counts)
        self.ready_samples = -1

    cdef list _ready_scratch(self, Py_ssize_t n_samples, Py_ssize_t n_steps):
        """Scratch for a fast call on n_samples sequences of n_steps: the kept
        one, marked in use (the caller hands it back with in_use = False),
        or, while another call uses it, a fresh one."""
        cdef cnp.npy_intp dims[3]
        cdef list scratch
        if self.in_use or n_samples != self.ready_samples or n_steps != self.ready_steps_:
            dims[0], dims[1], dims[2] = n_samples, n_steps, self.sizes[1]
            scratch = [cnp.PyArray_EMPTY(3, dims, self.type_num, 0)]
            dims[0] = rnn_scratch_size(n_samples, self.sizes[0], self.sizes[1], False)
            scratch.append(cnp.PyArray_EMPTY(1, dims, self.type_num, 0))
            dims[0] = n_samples
            scratch.append(cnp.PyArray_EMPTY(1, dims, cnp.NPY_INTP, 0))
            scratch.append(np.full(n_samples, n_steps, np.intp))
            if self.in_use:
                return scratch
            self.ready_scratch = scratch
            self.ready_samples, self.ready_steps_ = n_samples, n_steps
        self.in_use = True
        return self.ready_scratch

    cpdef Py_ssize_t blas_work(self, Py_ssize_t n_samples, Py_ssize_t n_steps):
        """Multiply-adds that decide whether BLAS may thread in a pass over
        n_samples sequences of n_steps (single_threaded_blas)."""
        return (n_samples * max(n_steps, 1) * self.sizes[1]
                * max(self.sizes[0], self.sizes[1], self.sizes[2]))

    def row_quantum(self, Py_ssize_t n_steps):
        """The fewest samples q such that predict over consecutive pieces of
        a batch, each (but the last) of a multiple of q samples, gives every
        sample the bits of one predict over the whole batch: 1 in the panel
        layout (each sample alone), else the forward pass's chunks
        (forward_chunk_rows) and the readout's GEMM tasks (gemm_task_rows
        samples, at each step apart: dense_forward_steps) must start at the
        same samples (lgmstm.dask.predict); whatever n_steps."""
        cdef Py_ssize_t n_hidden = self.sizes[1]
        if predicts_in_panels(self.sizes):
            return 1
        return math.lcm(forward_chunk_rows(n_hidden), gemm_task_rows(self.sizes[2], n_hidden))

    def step_ready(self, x, state):
        """(outputs, new state) of one step, or None when the caller must take
        its checked path.

        The fast path of STM.step: x must already be an ndarray of the
        parameters' dtype in native byte order, of shape (n_streams >= 1,
        n_in) (C-contiguous and aligned, or copied so: a step of a batch of
        sequences, X[:, t], is a strided view), and state None (zeros) or
        the held state (n_streams, n_hidden) of that dtype; the call small
        enough that BLAS never threads; and no other thread training the
        model. The same passes as predict over one step, so the same bits.
        """
        if not is_ready_matrix(x, self.type_num, -1, self.sizes[0]):
            # A step of a batch of sequences (X[:, t]) is a strided view.
            x = ready_copy(x, self.type_num, self.sizes[0])
            if x is None:
                return None
        return self._forward_ready(<cnp.ndarray> x, cnp.PyArray_DIMS(<cnp.ndarray> x)[0], 1,
                                   state, True)

    def predict_ready(self, X, initial_state):
        """(outputs, final states) of predict on X from initial_state, or None
        when the caller must take its checked path.

        The fast path of STM.predict without lengths: X must already be an
        ndarray of the parameters' dtype, of shape (n_samples >= 1, n_steps
        >= 1, n_in), C-contiguous and aligned, initial_state None (zeros) or
        (n_samples, n_hidden) of that dtype; the call small enough that
        BLAS never threads; and no other thread training the model.
        """
        cdef cnp.ndarray array
        if type(X) is not cnp.ndarray:
            return None
        array = <cnp.ndarray> X
        if (cnp.PyArray_NDIM(array) != 3 or cnp.PyArray_TYPE(array) != self.type_num
                or not cnp.PyArray_ISCARRAY_RO(array)
                or cnp.PyArray_DIMS(array)[2] != self.sizes[0]
                or cnp.PyArray_DIMS(array)[0] < 1 or cnp.PyArray_DIMS(array)[1] < 1):
            return None
        return self._forward_ready(array, cnp.PyArray_DIMS(array)[0],
                                   cnp.PyArray_DIMS(array)[1], initial_state, False)

    cdef object _forward_ready(self, cnp.ndarray array, Py_ssize_t n_samples,
                               Py_ssize_t n_steps, object state, bint one_step):
        """step_ready and predict_ready past the check of X (array): the
        outputs ((n_samples, n_out) for one_step) and final states, or None."""
        cdef cnp.npy_intp dims[3]
        cdef void *buffers[N_BUFFERS]
        cdef Py_ssize_t n_hidden = self.sizes[1], n_out = self.sizes[2]
        cdef const void *h0 = NULL
        cdef const Py_ssize_t *lengths
        cdef object outputs, final_states
        cdef list scratch = None
        cdef int n_threads, buffer, status
        cdef Py_ssize_t work = self.blas_work(n_samples, n_steps)
        if work >= BLAS_THREADING_WORK:
            return None
        if state is not None:
            if not is_ready_matrix(state, self.type_num, n_samples, n_hidden):
                return None
            h0 = cnp.PyArray_DATA(<cnp.ndarray> state)
        if not self.lock.try_read():
            return None
        try:
            scratch = self._ready_scratch(n_samples, n_steps)
            # One step's outputs are (n_samples, n_out) either way.
            if self.return_sequences and not one_step:
                dims[0], dims[1], dims[2] = n_samples, n_steps, n_out
                outputs = cnp.PyArray_EMPTY(3, dims, self.type_num, 0)
            else:
                dims[0], dims[1] = n_samples, n_out
                outputs = cnp.PyArray_EMPTY(2, dims, self.type_num, 0)
            dims[0], dims[1] = n_samples, n_hidden
            final_states = cnp.PyArray_EMPTY(2, dims, self.type_num, 0)
            for buffer in range(N_BUFFERS):
                buffers[buffer] = NULL   # predict reads only the ones set below
            buffers[STATES] = cnp.PyArray_DATA(<cnp.ndarray> scratch[0])
            buffers[SCRATCH] = cnp.PyArray_DATA(<cnp.ndarray> scratch[1])
            buffers[ORDER] = cnp.PyArray_DATA(<cnp.ndarray> scratch[2])
            buffers[FINAL_STATES] = cnp.PyArray_DATA(<cnp.ndarray> final_states)
            buffers[OUTPUTS] = cnp.PyArray_DATA(<cnp.ndarray> outputs)
            lengths = <const Py_ssize_t *> cnp.PyArray_DATA(<cnp.ndarray> scratch[3])
            n_threads = kernel_threads()
            if work < GIL_HELD_WORK:
                status = self._predict_into(array, h0, lengths, n_samples, n_steps, buffers,
                                            n_threads)
            else:
                with nogil:
                    status = self._predict_into(array, h0, lengths, n_samples, n_steps,
                                                buffers, n_threads)
            if status < 0:
                raise MemoryError()
        finally:
            if scratch is not None and scratch is self.ready_scratch:
                self.in_use = False  # only the call that took the kept scratch holds it
            self.lock.end_read()
        return outputs, final_states

    cdef int _predict_into(self, cnp.ndarray array, const void *h0, const Py_ssize_t *lengths,
                           Py_ssize_t n_samples, Py_ssize_t n_steps, void **buffers,
                           int n_threads) noexcept nogil:
        """stm_predict in the parameters' dtype, for _forward_ready."""
        if self.type_num == cnp.NPY_DOUBLE:
            return stm_predict(<double *> cnp.PyArray_DATA(array), <const double *> h0,
                               lengths, n_samples, n_steps, self.params.data, self.sizes,
                               self.output_tanh, self.loss, self.return_sequences, buffers,
                               n_threads)
        return stm_predict(<float *> cnp.PyArray_DATA(array), <const float *> h0, lengths,
                           n_samples, n_steps, self.params.data, self.sizes,
                           self.output_tanh, self.loss, self.return_sequences, buffers,
                           n_threads)

    def predict(self, const floating[:, :, ::1] X, object h0,
                const Py_ssize_t[::1] lengths, list buffers, int n_threads,
                bint logits=False):
        """Return (outputs, final states): two of the buffers (see
        buffer_shapes, backward=False), filled. h0: (n_samples, n_hidden)
        or None (zeros). Softmax and sigmoid outputs are probabilities, or
        with logits=True their logits."""
        cdef PointerTable buffer_table = _buffer_table(buffers)
        cdef const floating *h0_data = <const floating *> data_or_null(h0)
        cdef int status
        with nogil:
            status = stm_predict(&X[0, 0, 0], h0_data, &lengths[0], X.shape[0], X.shape[1],
                                 self.params.data, self.sizes, self.output_tanh,
                                 SQUARED_ERROR if logits else self.loss,
                                 self.return_sequences, buffer_table.data, n_threads)
        if status < 0:
            raise MemoryError()
        return buffers[OUTPUTS], buffers[FINAL_STATES]

    def gradients(self, const floating[:, :, ::1] X, const floating[::1] Y, object h0,
                  const Py_ssize_t[::1] lengths, list grads, list buffers, int n_threads,
                  const double[::1] weights=None):
        """Fill grads (OUT, laid out as params); return the mean loss over
        the valid outputs. Y: the targets, flattened, 0 at padded steps.
        weights: each output row's weight (n_samples * n_steps, or
        n_samples without return_sequences), 0 at padded steps; needed by
        the cross-entropies whenever a sequence is padded."""
        cdef PointerTable grad_table = PointerTable(grads)
        cdef PointerTable buffer_table = _buffer_table(buffers)
        cdef const floating *h0_data = <const floating *> data_or_null(h0)
        cdef const double *weight_data = NULL if weights is None else &weights[0]
        cdef double total, count
        with nogil:
            total = stm_gradients(&X[0, 0, 0], &Y[0], h0_data, &lengths[0],
                                  X.shape[0], X.shape[1], self.params.data,
                                  grad_table.data, self.sizes, self.output_tanh, self.loss,
                                  weight_data, self.return_sequences, buffer_table.data,
                                  n_threads)
            count = loss_count(self.loss, weight_data, &lengths[0], X.shape[0], X.shape[1],
                               self.sizes[2], self.return_sequences)
        return total / count if count > 0 else 0.0

    def validation_data(self, X_val, Y_val, lengths_val, weights_val=None):
        """What a TrainingRun's validation holds for the validation
        sequences X_val (n_val, n_steps_val, n_in), Y_val (flattened, 0 at
        padded steps) and lengths_val (intp), C-contiguous in the model's
        dtype, each starting from a zero state: the data, the buffers of
        the forward pass (buffer_shapes, backward=False) and weights_val,
        the output rows' weights (float64, 1 valid, 0 padded: a
        cross-entropy's mask) or None."""
        cdef Py_ssize_t n_val = X_val.shape[0], n_steps = X_val.shape[1]
        shapes = buffer_shapes(n_val, n_steps, self.sizes[0], self.sizes[1], self.sizes[2],
                               self.return_sequences, False)
        buffers = [np.empty(shape, X_val.dtype if kind is None else kind)
                   for shape, kind in shapes]
        return (X_val, Y_val, lengths_val, _buffer_table(buffers), weights_val)

    def mean_loss(self, X, Y, h0, lengths, weights, int n_threads):
        """The mean loss over the valid outputs of the sequences X from the
        states h0 (None: zeros), Y flattened (0 at padded steps), weights
        the output rows' (float64, 0 at padded steps) or None: the
        validation loss of the training driver, the same function
        (sequence_loss), so that a model restored on its best epoch
        reproduces that epoch's validation loss to the bit."""
        cdef tuple data = self.validation_data(X, Y, lengths, weights)
        cdef PointerTable buffers = data[3]
        cdef const void *X_data = cnp.PyArray_DATA(<cnp.ndarray> X)
        cdef const void *Y_data = cnp.PyArray_DATA(<cnp.ndarray> Y)
        cdef const void *h0_data = data_or_null(h0)
        cdef const Py_ssize_t *length_data = <const Py_ssize_t *> cnp.PyArray_DATA(
            <cnp.ndarray> lengths)
        cdef const double *weight_data = <const double *> data_or_null(weights)
        cdef Py_ssize_t n_samples = X.shape[0], n_steps = X.shape[1]
        cdef double value
        with nogil:
            if self.type_num == cnp.NPY_DOUBLE:
                value = sequence_loss(
                    <const double *> X_data, <const double *> Y_data, <const double *> h0_data,
                    length_data, weight_data, n_samples, n_steps, self.params.data,
                    self.sizes, self.output_tanh, self.loss, self.return_sequences,
                    buffers.data, n_threads)
            else:
                value = sequence_loss(
                    <const float *> X_data, <const float *> Y_data, <const float *> h0_data,
                    length_data, weight_data, n_samples, n_steps, self.params.data,
                    self.sizes, self.output_tanh, self.loss, self.return_sequences,
                    buffers.data, n_threads)
        return value

    def train(self, TrainingRun run, const Py_ssize_t[:, ::1] order,
              double[::1] epoch_losses, int n_threads):
        """Train for epoch_losses.shape[0] epochs of mini-batch updates.

        run: X (n_samples, n_steps, n_in), Y the targets flattened (0 at
        padded steps), lengths, initial_states (every batch starts from its
        rows; None: zeros), final_states (OUT: each batch's final states
        written to its rows; or None), clip_norm (> 0 clips the global
        gradient norm); its workspace is the buffers of buffer_shapes for
        batch_size samples, then X_batch (batch_size, n_steps, n_in),
        Y_batch (batch_size * targets per sample,), lengths_batch
        (batch_size,) intp and h0_batch (batch_size, n_hidden). order[e] is
        the sample order of epoch e; with no rows, samples are taken in
        their natural order. Sets epoch_losses[e] (OUT) to the mean squared
        error over the valid outputs of epoch e, each batch measured before
        its update; returns the updates done so far (run.step).

        Small networks train batches of full-length sequences in the panel
        layout, in a workspace the network keeps from one call to the next
        (KeptMemory).
        """
        if epoch_losses.shape[0] > 0:
            self.train_run(run, &order[0, 0] if order.shape[0] > 0 else NULL,
                           &epoch_losses[0], epoch_losses.shape[0], n_threads)
        return run.step

    cdef int train_run(self, TrainingRun run, const Py_ssize_t *order, double *epoch_losses,
                       Py_ssize_t n_epochs, int n_threads) except -1:
        if self.type_num == cnp.NPY_DOUBLE:
            train_network(<double *> NULL, self, run, order, epoch_losses, n_epochs, n_threads)
        else:
            train_network(<float *> NULL, self, run, order, epoch_losses, n_epochs, n_threads)
        return 0

    cdef Py_ssize_t ready_steps(self, object X, object Y, object h0,
                                Py_ssize_t batch_size) except -2:
        cdef Py_ssize_t n_in = self.sizes[0], n_hidden = self.sizes[1], n_out = self.sizes[2]
        cdef Py_ssize_t n_samples
        cdef Py_ssize_t n_steps = ready_sequences(X, Y, self.type_num, n_in, n_out,
                                                  self.return_sequences)
        if n_steps < 0:
            return -1
        n_samples = cnp.PyArray_DIMS(<cnp.ndarray> X)[0]
        if h0 is not None and not is_ready_matrix(h0, self.type_num, n_samples, n_hidden):
            return -1
        if (n_steps < 1 or self.blas_work(batch_size, n_steps) >= BLAS_THREADING_WORK
                or 3.0 * n_samples * n_steps * n_hidden * (n_in + n_hidden + n_out)
                > SHORT_FIT_WORK):
            return -1
        self.short_work = 3.0 * n_samples * n_steps * n_hidden * (n_in + n_hidden + n_out)
        self.short_checks_data = trains_in_panels(self.loss, NULL, min(batch_size, n_samples),
                                                  n_steps, self.sizes)
        return n_steps


cdef PointerTable _buffer_table(list buffers):
    if len(buffers) != N_BUFFERS:
        raise ValueError(f"expected {N_BUFFERS} buffers, got {len(buffers)}")
    return PointerTable(buffers)


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
            ((rnn_scratch_size(n_samples, n_in, n_hidden, backward),), None), ((n_samples,), np.intp),
            ((max(n_tasks(n_outputs * n_out, BLOCK_ELEMS), output_loss_blocks(n_outputs)),),
             np.float64)]


cdef void stm_forward(const floating *X, const floating *h0,
                      const Py_ssize_t *lengths, Py_ssize_t n_samples,
                      Py_ssize_t n_steps, void **params, const Py_ssize_t *sizes,
                      bint output_tanh, bint return_sequences, void **buffers,
                      Py_ssize_t chunk_rows, bint steps_apart, int n_threads) noexcept nogil:
    """Fill STATES, FINAL_STATES and OUTPUTS; outputs of padded steps are 0.
    chunk_rows: the time loop's samples per chunk (see rnn_forward_pass).
    steps_apart (predict's): every step's input projection and readout
    apart (forward_chunk, dense_forward_steps), so that each state's and
    output's bits are those of a step() over the same samples; else one
    product over all the rows (training's: fewer, larger products)."""
    cdef Py_ssize_t n_hidden = sizes[1], n_out = sizes[2]
    cdef floating *outputs = <floating *> buffers[OUTPUTS]
    rnn_forward_pass(X, h0, <floating *> params[INPUT_WEIGHT],
                     <floating *> params[RECURRENT_WEIGHT], <floating *> params[BIAS],
                     lengths, <floating *> buffers[STATES],
                     <floating *> buffers[FINAL_STATES], <floating *> buffers[SCRATCH],
                     <Py_ssize_t *> buffers[ORDER], n_samples, n_steps, sizes[0],
                     n_hidden, chunk_rows, steps_apart, n_threads)
    if return_sequences and steps_apart:
        dense_forward_steps(<floating *> buffers[STATES], <floating *> params[READOUT_WEIGHT],
                            <floating *> params[READOUT_BIAS], outputs, n_samples, n_steps,
                            n_hidden, n_out, output_tanh, n_threads)
    else:
        dense_forward(<floating *> buffers[STATES if return_sequences else FINAL_STATES],
                      <floating *> params[READOUT_WEIGHT], <floating *> params[READOUT_BIAS],
                      outputs, n_samples * (n_steps if return_sequences else 1), n_hidden,
                      n_out, output_tanh, n_threads)
    if return_sequences:
        zero_past_lengths(<char *> outputs, lengths, n_samples, n_steps,
                          n_out * sizeof(floating))


# -- predict: small models in the panel layout ----------------------------------------

cdef enum:
    # predict's panel path: samples per group (in panels) and steps per chunk.
    PREDICT_GROUP_PANELS = 8
    PREDICT_CHUNK_STEPS = 32
    # A single-threaded predict's scratch up to this size lives on the stack.
    STACK_SCRATCH_BYTES = 16384


cdef inline bint predicts_in_panels(const Py_ssize_t *sizes) noexcept nogil:
    """Whether predict (and step) run in the panel layout: small models, from
    their sizes alone, never the batch or the number of steps, so that a
    step, a chunk and a whole sequence round alike."""
    return sizes[1] <= 32 and sizes[0] <= 64 and sizes[2] <= 32


def _predict_layout(Py_ssize_t n_in, Py_ssize_t n_hidden, Py_ssize_t n_out):
    """"panel" when predict and step of such a model run in the panel
    layout (panel_predict), else "blas" (stm_forward). For the tests."""
    cdef Py_ssize_t sizes[3]
    sizes[0], sizes[1], sizes[2] = n_in, n_hidden, n_out
    return "panel" if predicts_in_panels(sizes) else "blas"


cdef int stm_predict(const floating *X, const floating *h0, const Py_ssize_t *lengths,
                     Py_ssize_t n_samples, Py_ssize_t n_steps, void **params,
                     const Py_ssize_t *sizes, bint output_tanh, int loss,
                     bint return_sequences, void **buffers, int n_threads) noexcept nogil:
    """predict's forward pass: OUTPUTS and FINAL_STATES (outputs of padded
    steps 0); in the panel layout for small models (predicts_in_panels),
    else stm_forward (which also fills STATES). Then the output function
    of loss (softmax, sigmoid) on every valid output. -1 when out of memory."""
    cdef floating *outputs = <floating *> buffers[OUTPUTS]
    cdef Py_ssize_t i
    if n_steps > 0 and n_samples > 0 and predicts_in_panels(sizes):
        if panel_predict(X, h0, lengths, n_samples, n_steps, params, sizes, output_tanh,
                         return_sequences, outputs, <floating *> buffers[FINAL_STATES],
                         n_threads) < 0:
            return -1
    else:
        stm_forward(X, h0, lengths, n_samples, n_steps, params, sizes, output_tanh,
                    return_sequences, buffers, forward_chunk_rows(sizes[1]), True, n_threads)
    if loss != SQUARED_ERROR:
        if return_sequences:
            for i in range(n_samples):
                output_rows(loss, outputs + i * n_steps * sizes[2], lengths[i], sizes[2])
        else:
            output_rows(loss, outputs, n_samples, sizes[2])
    return 0


cdef int panel_predict(const floating *X, const floating *h0, const Py_ssize_t *lengths,
                       Py_ssize_t n_samples, Py_ssize_t n_steps, void **params,
                       const Py_ssize_t *sizes, bint output_tanh, bint return_sequences,
                       floating *outputs, floating *final_states,
                       int n_threads) noexcept nogil:
    """stm_forward's outputs and final states in the panel layout: groups of
    samples along the vector lanes, chunks of steps (predict_group). Every
    value is summed along k in one order whatever the group, chunk or batch
    (panel_product), so results are the same bits for any batch, any split
    of a sequence into calls and any thread count. -1 when out of memory."""
    cdef Py_ssize_t n_in = sizes[0], n_hidden = sizes[1], n_out = sizes[2]
    cdef Py_ssize_t panel = padded_width(1, sizeof(floating))
    cdef Py_ssize_t width = panel * min(<Py_ssize_t> PREDICT_GROUP_PANELS,
                                        n_tasks(n_samples, panel))
    cdef Py_ssize_t n_groups = n_tasks(n_samples, width)
    cdef Py_ssize_t chunk = min(n_steps, <Py_ssize_t> PREDICT_CHUNK_STEPS)
    cdef size_t scratch_bytes = ((n_in + n_out) * chunk + n_hidden * (chunk + 1)) * width \
        * sizeof(floating)
    cdef int n_used = threads_for(n_threads, n_groups,
                                  2.0 * n_samples * n_steps * n_hidden * (n_in + n_hidden + n_out))
    cdef void *allocated = NULL
    cdef floating *scratch
    cdef Py_ssize_t group
    cdef int failed = 0
    # A step of a few streams fits on the stack: no calloc and free per call,
    # and no zeroing either: predict_group writes every value it reads (the
    # gathers write the padding lanes' zeros, the products their columns).
    cdef char stack_scratch[STACK_SCRATCH_BYTES + LGMSTM_PANEL_BYTES]
    if n_used == 1:
        if scratch_bytes <= STACK_SCRATCH_BYTES:
            scratch = <floating *> (
                (<uintptr_t> stack_scratch + LGMSTM_PANEL_BYTES - 1)
                // LGMSTM_PANEL_BYTES * LGMSTM_PANEL_BYTES)
        else:
            scratch = <floating *> panel_calloc(scratch_bytes, &allocated)
            if scratch == NULL:
                return -1
        for group in range(n_groups):
            predict_group(group, width, chunk, X, h0, lengths, n_samples, n_steps, params,
                          sizes, output_tanh, return_sequences, outputs, final_states, scratch)
        free(allocated)
        return 0
    with parallel(num_threads=n_used):
        allocated = NULL
        scratch = <floating *> panel_calloc(scratch_bytes, &allocated)
        for group in prange(n_groups, schedule='static'):
            if scratch == NULL:
                failed = 1
            else:
                predict_group(group, width, chunk, X, h0, lengths, n_samples, n_steps,
                              params, sizes, output_tanh, return_sequences, outputs,
                              final_states, scratch)
        free(allocated)
    return -1 if failed else 0


cdef void predict_group(Py_ssize_t group, Py_ssize_t width, Py_ssize_t chunk,
                        const floating *X, const floating *h0, const Py_ssize_t *lengths,
                        Py_ssize_t n_samples, Py_ssize_t n_steps, void **params,
                        const Py_ssize_t *sizes, bint output_tanh, bint return_sequences,
                        floating *outputs, floating *final_states,
                        floating *scratch) noexcept nogil:
    """One group of `width` samples (lanes), `chunk` steps at a time.

    scratch: the chunk's inputs Xt (n_in, chunk * width), states H (n_hidden,
    (chunk + 1) * width: block 0 the state the chunk starts from) and
    readouts (n_out, chunk * width). A lane whose sequence has ended keeps
    its state; its outputs there are 0.
    """
    cdef Py_ssize_t n_in = sizes[0], n_hidden = sizes[1], n_out = sizes[2]
    cdef Py_ssize_t first = group * width
    cdef Py_ssize_t n_valid = min(width, n_samples - first)
    cdef Py_ssize_t ld_x = chunk * width, ld_h = (chunk + 1) * width
    cdef floating *Xt = scratch
    cdef floating *H = Xt + n_in * ld_x
    cdef floating *readouts = H + n_hidden * ld_h
    cdef const floating *Wx = <floating *> params[INPUT_WEIGHT]
    cdef const floating *Wh = <floating *> params[RECURRENT_WEIGHT]
    cdef const floating *W_out = <floating *> params[READOUT_WEIGHT]
    cdef Py_ssize_t start, steps, t, j, o, lane, column, last = 0
    cdef Py_ssize_t shortest = n_steps  # the group's shortest sequence
    for lane in range(n_valid):
        shortest = min(shortest, lengths[first + lane])
    states_into_panel(h0, n_hidden, first, n_valid, n_hidden, H, ld_h, width)
    start = 0
    while start < n_steps:
        steps = min(chunk, n_steps - start)
        gather_panel(X + start * n_in, n_steps * n_in, NULL, first, n_valid, steps * n_in, n_in,
                     Xt, ld_x, width)
        # Every step's input projection in one product, then the time loop.
        panel_product(n_hidden, steps * width, n_in, Wx, 1, n_hidden, Xt, ld_x,
                      <floating *> params[BIAS], False, NULL, 0, H + width, ld_h)
        for t in range(steps):
            panel_product(n_hidden, width, n_hidden, Wh, 1, n_hidden, H + t * width, ld_h,
                          NULL, True, NULL, 0, H + (t + 1) * width, ld_h)
            tanh_rows(H + (t + 1) * width, n_hidden, width, ld_h)
            for lane in range(n_valid if start + t >= shortest else 0):
                if lengths[first + lane] <= start + t:
                    for j in range(n_hidden):
                        H[j * ld_h + (t + 1) * width + lane] = H[j * ld_h + t * width + lane]
        if return_sequences:
            panel_product(n_out, steps * width, n_hidden, W_out, 1, n_out, H + width, ld_h,
                          <floating *> params[READOUT_BIAS], False, NULL, 0, readouts, ld_x)
            if output_tanh:
                tanh_rows(readouts, n_out, steps * width, ld_x)
            for lane in range(n_valid):
                for t in range(steps):
                    column = t * width + lane
                    for o in range(n_out):
                        outputs[((first + lane) * n_steps + start + t) * n_out + o] = (
                            readouts[o * ld_x + column]
                            if start + t < lengths[first + lane] else 0)
        start += steps
        if start < n_steps:
            for j in range(n_hidden):  # the chunk's last states start the next
                memcpy(H + j * ld_h, H + j * ld_h + steps * width, width * sizeof(floating))
        else:
            last = steps * width  # the last states' column block
    scatter_panel(H + last, ld_h, n_valid, n_hidden, final_states + first * n_hidden, n_hidden)
    if not return_sequences:
        panel_product(n_out, width, n_hidden, W_out, 1, n_out, H + last, ld_h,
                      <floating *> params[READOUT_BIAS], False, NULL, 0, readouts, ld_x)
        if output_tanh:
            tanh_rows(readouts, n_out, width, ld_x)
        scatter_panel(readouts, ld_x, n_valid, n_out, outputs + first * n_out, n_out)


cdef double stm_gradients(const floating *X, const floating *Y, const floating *h0,
                          const Py_ssize_t *lengths, Py_ssize_t n_samples,
                          Py_ssize_t n_steps, void **params, void **grads,
                          const Py_ssize_t *sizes, bint output_tanh, int loss,
                          const double *weights, bint return_sequences, void **buffers,
                          int n_threads) noexcept nogil:
    """Forward, loss and backward over one batch; returns its summed loss.

    Fills grads (laid out as params) with the gradient of the mean loss
    over the valid outputs (loss_count). Unweighted (weights NULL), Y's
    padded steps must be 0, like the outputs there, so that their squared
    error adds nothing; weights (one per output row) must be 0 there.
    """
    cdef Py_ssize_t n_in = sizes[0], n_hidden = sizes[1], n_out = sizes[2]
    cdef Py_ssize_t n_rows = n_samples * (n_steps if return_sequences else 1)
    cdef double sum_squares, count
    stm_forward(X, h0, lengths, n_samples, n_steps, params, sizes, output_tanh,
                return_sequences, buffers, training_chunk_rows(n_samples, n_hidden, 1),
                False, n_threads)
    if loss == SQUARED_ERROR and weights == NULL:
        sum_squares = squared_error(
            <floating *> buffers[OUTPUTS], Y, <floating *> buffers[OUTPUT_GRADS],
            n_rows * n_out,
            1.0 / max(1, n_valid_outputs(lengths, n_samples, return_sequences) * n_out),
            <double *> buffers[PARTIALS], n_threads)
    else:
        count = loss_count(loss, weights, lengths, n_samples, n_steps, n_out,
                           return_sequences)
        sum_squares = output_loss(
            loss, <floating *> buffers[OUTPUTS], Y, weights,
            <floating *> buffers[OUTPUT_GRADS], n_rows, n_out,
            1.0 / count if count > 0 else 0.0, <double *> buffers[PARTIALS], n_threads)
    # The readout's input gradient is dL/dH (all steps) or dL/d final states.
    dense_backward(<floating *> buffers[STATES if return_sequences else FINAL_STATES],
                   <floating *> params[READOUT_WEIGHT], <floating *> buffers[OUTPUTS],
                   <floating *> buffers[OUTPUT_GRADS], <floating *> buffers[OUTPUT_GRADS],
                   <floating *> buffers[STATE_GRADS if return_sequences else FINAL_GRADS],
                   <floating *> grads[READOUT_WEIGHT], <floating *> grads[READOUT_BIAS],
                   1, 0, n_rows, n_hidden, n_out, output_tanh, False, n_threads)
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

cdef struct PanelLayout:
    # Sequences in groups of task_width columns (see _panel.pxd), each
    # group carried through every step by one task. Every buffer is
    # group-major (group_block): a group's rows are one run, of its
    # columns only.
    Py_ssize_t n_steps, task_width, n_groups
    Py_ssize_t cols           # a group's inputs and dz: n_steps * task_width
    Py_ssize_t state_cols     # a group's states, its h0 first: (n_steps + 1) * task_width
    Py_ssize_t read_cols      # a group's outputs: cols, or task_width for the last step only
    bint return_sequences


cdef struct PanelBuffers:
    void *inputs          # X (n_in, cols) per group
    void *targets         # Y (n_out, read_cols) per group
    void *states          # (n_hidden, state_cols) per group: h0, then h_0..h_{T-1}
    void *outputs         # readout (n_out, read_cols) per group
    void *output_grads    # dL/d readout pre-activation (n_out, read_cols) per group
    void *state_grads     # dz_t = dL/d state pre-activation (n_hidden, cols) per group
    # Sample-major copies for the weight gradients (add_weight_gradient), and
    # their products: padded widths hp = padded n_hidden, op = padded n_out.
    void *state_grads_t   # (cols, hp) per group
    void *output_grads_t  # (read_cols, op) per group
    void *input_product   # (n_in, hp) per group
    void *state_product   # (n_hidden, hp) per group
    void *readout_product # (n_hidden, op) per group
    void *group_grads     # every parameter (packed, in their order) per group
    const Py_ssize_t *counts  # each parameter's values (Network.counts)
    # The batch's rows that the sequence tasks gather into inputs and targets,
    # each its group's columns (see gather_into_group), or batch_X NULL when
    # inputs and targets hold them already.
    const void *batch_X
    const void *batch_Y
    const Py_ssize_t *batch_rows


cdef inline double step_cost(Py_ssize_t n_rows, Py_ssize_t n_steps,
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
    cdef Py_ssize_t per_group = group_panels(n_panels, n_steps * panel,
                                             step_cost(n_rows, n_steps, sizes))
    layout.n_steps = n_steps
    layout.task_width = per_group * panel
    layout.n_groups = max(1, n_tasks(n_panels, per_group))
    layout.cols = n_steps * layout.task_width
    layout.state_cols = (n_steps + 1) * layout.task_width
    layout.read_cols = layout.cols if return_sequences else layout.task_width
    layout.return_sequences = return_sequences
    return layout


cdef inline bint use_panels(Py_ssize_t n_rows, Py_ssize_t n_steps,
                            const Py_ssize_t *sizes) noexcept nogil:
    """Whether batches of n_rows sequences train in the panel layout; from
    the shapes alone (batches of sequences of unequal length never do, nor
    sequences of no steps)."""
    return n_steps > 0 and step_cost(n_rows, n_steps, sizes) < PANEL_MAX_WORK


cdef inline bint trains_in_panels(int loss, const double *weights, Py_ssize_t n_rows,
                                  Py_ssize_t n_steps, const Py_ssize_t *sizes) noexcept nogil:
    """Whether a fit's batches of up to n_rows full-length sequences train
    in the panel layout: its loss and weights (panel_takes) and its shapes
    (use_panels) allow it. Once for train_network, and for ready_steps, which
    must know whether the short fit's epoch will check its data as it
    gathers it."""
    return panel_takes(loss, sizes[2], weights) and use_panels(n_rows, n_steps, sizes)


def _training_layout(Py_ssize_t n_rows, Py_ssize_t n_steps, const Py_ssize_t[::1] sizes,
                    Py_ssize_t itemsize, bint return_sequences):
    """(n_groups, group_width) of the panel layout batches of n_rows
    full-length sequences train in, or None when they train row-major with
    BLAS. For the tests."""
    cdef PanelLayout layout
    if not use_panels(n_rows, n_steps, &sizes[0]):
        return None
    layout = panel_layout(n_rows, n_steps, &sizes[0], itemsize, return_sequences)
    return layout.n_groups, layout.task_width


cdef void panel_sequence_task(
        Py_ssize_t group, const PanelLayout *layout, Py_ssize_t n_rows,
        void **params, void **grads, const Py_ssize_t *sizes, bint output_tanh, int loss,
        double grad_scale, PanelBuffers *panel_buffers, const floating *h0,
        floating *final_states, double *partials) noexcept nogil:
    """One group of sequences through the whole step, in its own block of
    each buffer: forward, loss, the backward time loop and the group's
    share of the gradients.

    Sets the group's states, outputs, output gradients and dz, its loss
    partial sum, its samples' final states, and its gradients: into its
    part of panel_buffers.group_grads (the parameters packed in their
    order) when there are several groups, else into grads. h0: (n_rows,
    n_hidden) row-major or NULL (zeros); final_states: (n_rows, n_hidden).
    """
    cdef Py_ssize_t n_in = sizes[0], n_hidden = sizes[1], n_out = sizes[2]
    cdef Py_ssize_t n_steps = layout.n_steps, width = layout.task_width
    cdef Py_ssize_t first = group * width
    cdef Py_ssize_t n_valid = min(width, max(0, n_rows - first))
    cdef Py_ssize_t cols = layout.cols, ld_states = layout.state_cols
    cdef Py_ssize_t n_read = layout.read_cols
    cdef bint every_step = layout.return_sequences
    cdef Py_ssize_t hp = padded_width(n_hidden, sizeof(floating))
    cdef Py_ssize_t op = padded_width(n_out, sizeof(floating))
    cdef const floating *Wh = <floating *> params[RECURRENT_WEIGHT]
    cdef const floating *W_out = <floating *> params[READOUT_WEIGHT]
    cdef floating *X = group_block(<floating *> panel_buffers.inputs, group, n_in, cols)
    cdef floating *Y = group_block(<floating *> panel_buffers.targets, group, n_out, n_read)
    cdef floating *H = group_block(<floating *> panel_buffers.states, group, n_hidden,
                                   ld_states)
    cdef floating *dZ = group_block(<floating *> panel_buffers.state_grads, group, n_hidden,
                                    cols)
    cdef floating *outputs = group_block(<floating *> panel_buffers.outputs, group, n_out,
                                         n_read)
    cdef floating *d_outputs = group_block(<floating *> panel_buffers.output_grads, group,
                                           n_out, n_read)
    cdef floating *dZ_t = <floating *> panel_buffers.state_grads_t + group * cols * hp
    cdef floating *d_outputs_t = <floating *> panel_buffers.output_grads_t + group * n_read * op
    # The states the readout reads: every step's, or the last step's.
    cdef floating *read_states = H + (width if every_step else n_steps * width)
    cdef floating *grad_targets[N_PARAMS]
    cdef const Py_ssize_t *counts = panel_buffers.counts
    cdef Py_ssize_t index, n_params = 0
    cdef bint finite = True
    if panel_buffers.batch_X != NULL:
        finite = gather_into_group(<const floating *> panel_buffers.batch_X,
                                   panel_buffers.batch_rows, n_rows, n_steps, n_in, X, width,
                                   group)
        finite &= gather_into_group(<const floating *> panel_buffers.batch_Y,
                                    panel_buffers.batch_rows, n_rows,
                                    n_steps if every_step else 1, n_out, Y, width, group)
    states_into_panel(h0, n_hidden, first, n_valid, n_hidden, H, ld_states, width)
    panel_recurrent_forward(X, cols, <floating *> params[INPUT_WEIGHT], Wh,
                            <floating *> params[BIAS], H, ld_states, n_in, n_hidden, n_steps,
                            width)
    scatter_panel(H + n_steps * width, ld_states, n_valid, n_hidden,
                  final_states + first * n_hidden, n_hidden)
    panel_product(n_out, n_read, n_hidden, W_out, 1, n_out, read_states, ld_states,
                  <floating *> params[READOUT_BIAS], False, NULL, 0, outputs, n_read)
    if output_tanh:
        tanh_rows(outputs, n_out, n_read, n_read)
    partials[group] = panel_output_loss(loss, outputs, Y, d_outputs, n_out, n_read // width,
                                        width, n_valid, n_read, grad_scale, output_tanh)
    if not finite:  # the batch held a non-finite value: its loss is NaN (see fit_ready)
        partials[group] = NAN
    # Backward: dL/dh from the readout, then dz_t = (dL/dh_t + Wh dz_{t+1}) (1 - h_t^2).
    panel_product(n_hidden, n_read, n_out, W_out, n_out, 1, d_outputs, n_read, NULL,
                  False, NULL, 0, dZ + (0 if every_step else (n_steps - 1) * width), cols)
    panel_recurrent_backward(Wh, H, ld_states, dZ, cols, n_hidden, n_steps, width, every_step)
    if sample_major_gradient(n_hidden, sizeof(floating)):
        transpose_to_panels(dZ, n_hidden, cols, cols, dZ_t, hp)
    if sample_major_gradient(n_out, sizeof(floating)):
        transpose_to_panels(d_outputs, n_out, n_read, n_read, d_outputs_t, op)
    # The gradients, from the data this task made (its core's cache).
    if layout.n_groups > 1:
        for index in range(N_PARAMS):
            n_params += counts[index]
        grad_targets[0] = <floating *> panel_buffers.group_grads + group * n_params
        for index in range(1, N_PARAMS):
            grad_targets[index] = grad_targets[index - 1] + counts[index - 1]
    else:
        for index in range(N_PARAMS):
            grad_targets[index] = <floating *> grads[index]
    # dWx pairs x_t with dz_t, dWh h_{t-1} (the group's h0 first) with dz_t,
    # dW_out the states read with the output gradients.
    add_weight_gradient(n_in, n_hidden, cols, X, cols, dZ, cols, dZ_t, True, 1, 0,
                        group_block(<floating *> panel_buffers.input_product, group, n_in, hp),
                        grad_targets[INPUT_WEIGHT])
    finish_weight_gradient(n_in, n_hidden,
                           group_block(<floating *> panel_buffers.input_product, group, n_in,
                                       hp), 1, 0, grad_targets[INPUT_WEIGHT])
    add_weight_gradient(n_hidden, n_hidden, cols, H, ld_states, dZ, cols, dZ_t, True, 1, 0,
                        group_block(<floating *> panel_buffers.state_product, group, n_hidden,
                                    hp), grad_targets[RECURRENT_WEIGHT])
    finish_weight_gradient(n_hidden, n_hidden,
                           group_block(<floating *> panel_buffers.state_product, group,
                                       n_hidden, hp), 1, 0, grad_targets[RECURRENT_WEIGHT])
    add_weight_gradient(n_hidden, n_out, n_read, read_states, ld_states, d_outputs, n_read,
                        d_outputs_t, True, 1, 0,
                        group_block(<floating *> panel_buffers.readout_product, group,
                                    n_hidden, op), grad_targets[READOUT_WEIGHT])
    finish_weight_gradient(n_hidden, n_out,
                           group_block(<floating *> panel_buffers.readout_product, group,
                                       n_hidden, op), 1, 0, grad_targets[READOUT_WEIGHT])
    row_sums(n_hidden, cols, dZ, cols, 1, 0, grad_targets[BIAS])
    row_sums(n_out, n_read, d_outputs, n_read, 1, 0, grad_targets[READOUT_BIAS])


cdef double panel_stm_gradients(
        const floating *h0, Py_ssize_t n_rows, const PanelLayout *layout,
        void **params, void **grads, const Py_ssize_t *sizes, bint output_tanh, int loss,
        PanelBuffers *panel_buffers, floating *final_states, int n_threads) noexcept nogil:
    """stm_gradients in the panel layout, for full-length sequences, unweighted.

    panel_buffers.inputs and panel_buffers.targets hold the batch (gathered
    before), or the sequence tasks gather it there (panel_buffers.batch_X);
    h0 is (n_rows, n_hidden) row-major or NULL (zeros). Fills grads and
    final_states (n_rows, n_hidden) and returns the summed loss.

    A sequence task takes a group of samples through every step and its
    share of the gradients, so that each thread works on the data it wrote
    (see panel_network_gradients in _lgm.pyx); then the groups' gradients
    are added in group order. Neither depends on the thread count.
    """
    cdef Py_ssize_t n_out = sizes[2]
    cdef Py_ssize_t n_steps = layout.n_steps
    # The threads from the layout, not this batch's rows (see _lgm.pyx).
    cdef double work = step_cost(layout.n_groups * layout.task_width, n_steps, sizes)
    cdef int sequence_threads = threads_for(n_threads, layout.n_groups, work)
    cdef double grad_scale = loss_scale(
        loss, n_rows * (n_steps if layout.return_sequences else 1), n_out)
    cdef double partials[MAX_PANEL_GROUPS]
    cdef double sum_squares = 0
    cdef Py_ssize_t task
    if sequence_threads == 1:
        for task in range(layout.n_groups):
            panel_sequence_task(task, layout, n_rows, params, grads, sizes, output_tanh, loss,
                                grad_scale, panel_buffers, h0, final_states, partials)
    else:
        for task in prange(layout.n_groups, num_threads=sequence_threads,
                           schedule='static'):
            panel_sequence_task(task, layout, n_rows, params, grads, sizes, output_tanh, loss,
                                grad_scale, panel_buffers, h0, final_states, partials)
    if layout.n_groups > 1:
        sum_group_gradients(layout.n_groups, <const floating *> panel_buffers.group_grads,
                            grads, panel_buffers.counts, N_PARAMS, <floating> 1, <floating> 0,
                            n_threads)
    for task in range(layout.n_groups):
        sum_squares += partials[task]
    return sum_squares


cdef inline void param_counts(const Py_ssize_t *sizes, Py_ssize_t *counts) noexcept nogil:
    counts[INPUT_WEIGHT] = sizes[0] * sizes[1]
    counts[RECURRENT_WEIGHT] = sizes[1] * sizes[1]
    counts[BIAS] = sizes[1]
    counts[READOUT_WEIGHT] = sizes[1] * sizes[2]
    counts[READOUT_BIAS] = sizes[2]


cdef enum:
    # Where the training batch's arrays follow the buffers in run.workspace.
    X_BATCH = N_BUFFERS
    Y_BATCH = N_BUFFERS + 1
    LENGTHS_BATCH = N_BUFFERS + 2
    H0_BATCH = N_BUFFERS + 3


cdef struct Batches:
    # What stm_batch needs: the network, the data and the workspace.
    size_t itemsize         # of the dtype: 4 or 8
    void **params
    void **grads
    const Py_ssize_t *sizes
    bint output_tanh, return_sequences
    int loss                # the loss code (_loss.pxd)
    const double *weights   # each output row's weight (n_samples * rows per sample), or NULL
    double *batch_weights   # scratch: a shuffled batch's weights
    Py_ssize_t n_steps
    const void *X
    const void *Y
    const Py_ssize_t *lengths
    const void *h0_all      # every sequence's initial state, or NULL (zeros)
    void *final_all         # every sequence's final state (OUT), or NULL
    void **workspace        # see Network.train
    # The validation sequences (Network.validation_data), or n_val 0.
    const void *X_val
    const void *Y_val
    const Py_ssize_t *lengths_val
    const double *weights_val   # the validation rows' mask (cross-entropy), or NULL
    Py_ssize_t n_val, n_steps_val
    void **validation_buffers
    # The panel layout: whether batches of full-length sequences take it,
    # its layout and buffers, and whether the batch must be gathered anew.
    bint in_panel_layout, gather_each_batch, gathered
    PanelLayout layout
    PanelBuffers panel_buffers


cdef double stm_batch(floating *dtype, Batches *batches, Py_ssize_t start, Py_ssize_t n_rows,
                      const Py_ssize_t *rows, int n_threads) noexcept nogil:
    """One batch of the STM (see BatchStep in _train.pxd); dtype only picks
    the fused specialisation."""
    cdef Py_ssize_t n_in = batches.sizes[0], n_hidden = batches.sizes[1]
    cdef Py_ssize_t n_out = batches.sizes[2], n_steps = batches.n_steps
    cdef Py_ssize_t targets_per_sample = (n_steps if batches.return_sequences else 1) * n_out
    cdef size_t state_bytes = n_hidden * sizeof(floating)
    cdef void **workspace = batches.workspace
    cdef const floating *X = <const floating *> batches.X
    cdef const floating *Y = <const floating *> batches.Y
    cdef const floating *h0_all = <const floating *> batches.h0_all
    cdef floating *final_all = <floating *> batches.final_all
    cdef const floating *X_rows = X + start * n_steps * n_in
    cdef const floating *Y_rows = Y + start * targets_per_sample
    cdef const Py_ssize_t *length_rows = batches.lengths + start
    cdef const floating *h0_rows = h0_all
    cdef Py_ssize_t weights_per_sample = n_steps if batches.return_sequences else 1
    cdef const double *weight_rows = NULL
    cdef bint shuffled = rows != NULL
    cdef bint panel_batch
    cdef double sum_squares
    if h0_all != NULL:
        h0_rows = h0_all + start * n_hidden
    if shuffled:
        gather_rows(<const char *> batches.lengths, rows, n_rows, sizeof(Py_ssize_t),
                    <char *> workspace[LENGTHS_BATCH])
        length_rows = <Py_ssize_t *> workspace[LENGTHS_BATCH]
        if h0_all != NULL:
            gather_rows(<const char *> h0_all, rows, n_rows, state_bytes,
                        <char *> workspace[H0_BATCH])
            h0_rows = <floating *> workspace[H0_BATCH]
    panel_batch = batches.in_panel_layout and all_full_length(length_rows, n_rows, n_steps)
    if shuffled and not panel_batch:
        gather_rows(<const char *> X, rows, n_rows, n_steps * n_in * sizeof(floating),
                    <char *> workspace[X_BATCH])
        gather_rows(<const char *> Y, rows, n_rows, targets_per_sample * sizeof(floating),
                    <char *> workspace[Y_BATCH])
        X_rows = <floating *> workspace[X_BATCH]
        Y_rows = <floating *> workspace[Y_BATCH]
    if batches.weights != NULL:
        if shuffled:
            gather_rows(<const char *> batches.weights, rows, n_rows,
                        weights_per_sample * sizeof(double), <char *> batches.batch_weights)
            weight_rows = batches.batch_weights
        else:
            weight_rows = batches.weights + start * weights_per_sample
    if panel_batch:
        # Shuffled rows go straight from X and Y into the panel layout, each
        # group's by its sequence task; one unshuffled batch is the same
        # every epoch: transposed once.
        batches.panel_buffers.batch_X = batches.panel_buffers.batch_Y = NULL
        if batches.gather_each_batch or not batches.gathered:
            batches.panel_buffers.batch_X = X if shuffled else X_rows
            batches.panel_buffers.batch_Y = Y if shuffled else Y_rows
            batches.panel_buffers.batch_rows = rows
            batches.gathered = True
        sum_squares = panel_stm_gradients(
            h0_rows, n_rows, &batches.layout, batches.params, batches.grads, batches.sizes,
            batches.output_tanh, batches.loss, &batches.panel_buffers,
            <floating *> workspace[FINAL_STATES], n_threads)
    else:
        sum_squares = stm_gradients(
            X_rows, Y_rows, h0_rows, length_rows, n_rows, n_steps, batches.params,
            batches.grads, batches.sizes, batches.output_tanh, batches.loss, weight_rows,
            batches.return_sequences, workspace, n_threads)
    if final_all != NULL:
        if shuffled:
            scatter_rows(<const char *> workspace[FINAL_STATES], rows, n_rows, state_bytes,
                         <char *> final_all)
        else:
            memcpy(final_all + start * n_hidden, workspace[FINAL_STATES],
                   n_rows * state_bytes)
    return sum_squares


cdef double stm_batch_step(void *batches, Py_ssize_t start, Py_ssize_t n_rows,
                           const Py_ssize_t *rows, int n_threads) noexcept nogil:
    """The BatchStep: stm_batch in the batch's dtype."""
    if (<Batches *> batches).itemsize == sizeof(double):
        return stm_batch(<double *> NULL, <Batches *> batches, start, n_rows, rows, n_threads)
    return stm_batch(<float *> NULL, <Batches *> batches, start, n_rows, rows, n_threads)


cdef double sequence_loss(const floating *X, const floating *Y, const floating *h0,
                          const Py_ssize_t *lengths, const double *weights,
                          Py_ssize_t n_samples, Py_ssize_t n_steps, void **params,
                          const Py_ssize_t *sizes, bint output_tanh, int loss,
                          bint return_sequences, void **buffers, int n_threads) noexcept nogil:
    """The model's mean loss over the valid outputs of n_samples sequences
    from the states h0 (or NULL: zeros): the mean squared error, or the
    mean cross-entropy; with weights (one per output row, 0 at padded
    steps), their weighted mean (loss_count). Forward pass and loss, no
    gradients; Y's padded steps are 0; buffers: Network.validation_data's."""
    cdef Py_ssize_t n_out = sizes[2]
    cdef Py_ssize_t n_rows = n_samples * (n_steps if return_sequences else 1)
    cdef double count
    stm_forward(X, h0, lengths, n_samples, n_steps, params, sizes, output_tanh,
                return_sequences, buffers, forward_chunk_rows(sizes[1]), False, n_threads)
    if loss == SQUARED_ERROR and weights == NULL:
        return squared_error(
            <floating *> buffers[OUTPUTS], Y, <floating *> buffers[OUTPUT_GRADS],
            n_rows * n_out, 1.0, <double *> buffers[PARTIALS], n_threads) / max(
                1, n_valid_outputs(lengths, n_samples, return_sequences) * n_out)
    count = loss_count(loss, weights, lengths, n_samples, n_steps, n_out, return_sequences)
    return output_loss(loss, <floating *> buffers[OUTPUTS], Y, weights,
                       <floating *> buffers[OUTPUT_GRADS], n_rows, n_out, 1.0,
                       <double *> buffers[PARTIALS], n_threads) / (
                           count if count > 0 else 1.0)


cdef double stm_validation(floating *dtype, Batches *batches, int n_threads) noexcept nogil:
    """The model's loss over the valid outputs of the validation sequences,
    from zero states (see ValidationStep in _train.pxd): sequence_loss."""
    return sequence_loss(<const floating *> batches.X_val, <const floating *> batches.Y_val,
                         NULL, batches.lengths_val, batches.weights_val, batches.n_val,
                         batches.n_steps_val, batches.params, batches.sizes,
                         batches.output_tanh, batches.loss, batches.return_sequences,
                         batches.validation_buffers, n_threads)


cdef double stm_validation_step(void *batches, int n_threads) noexcept nogil:
    """The ValidationStep: stm_validation in the batch's dtype."""
    if (<Batches *> batches).itemsize == sizeof(double):
        return stm_validation(<double *> NULL, <Batches *> batches, n_threads)
    return stm_validation(<float *> NULL, <Batches *> batches, n_threads)


cdef void train_network(floating *dtype, Network network, TrainingRun run,
                        const Py_ssize_t *order, double *epoch_losses, Py_ssize_t n_epochs,
                        int n_threads) except *:
    """Network.train_run for one dtype: the plan, the panel workspace, the driver."""
    cdef const Py_ssize_t *lengths = <const Py_ssize_t *> cnp.PyArray_DATA(
        <cnp.ndarray> run.lengths)
    cdef const Py_ssize_t *sizes = network.sizes
    cdef Py_ssize_t n_samples = cnp.PyArray_DIMS(<cnp.ndarray> run.X)[0]
    cdef Py_ssize_t n_steps = cnp.PyArray_DIMS(<cnp.ndarray> run.X)[1]
    cdef Py_ssize_t n_in = sizes[0], n_hidden = sizes[1], n_out = sizes[2]
    cdef Py_ssize_t max_rows = min(run.batch_size, n_samples)
    cdef Parameters parameters = parameters_of(network.params, run, network.counts,
                                               sizeof(floating))
    cdef Optimizer *optimizer = &run.optimizer
    cdef TrainingPlan plan
    cdef Batches batches
    cdef PanelLayout *layout = &batches.layout
    cdef PanelBuffers *panel_buffers = &batches.panel_buffers
    cdef floating *panel_start
    cdef Py_ssize_t hidden_padded, out_padded, n_groups
    cdef Py_ssize_t n_params = 0, param
    cdef PointerTable validation_buffers
    if run.workspace.count != N_BUFFERS + 4:
        raise ValueError(f"expected {N_BUFFERS + 4} workspace arrays, got {run.workspace.count}")
    cdef const double *weights = <const double *> data_or_null(run.weights)
    cdef double count = loss_count(network.loss, weights, lengths, n_samples, n_steps, n_out,
                                   network.return_sequences)
    plan = plan_of(run, order, epoch_losses, n_epochs, n_samples,
                   count if weights != NULL else max(1.0, count), False)
    batches.n_val = 0
    if run.validation is not None and plan.validation_losses != NULL:
        batches.X_val = cnp.PyArray_DATA(<cnp.ndarray> run.validation[0])
        batches.Y_val = cnp.PyArray_DATA(<cnp.ndarray> run.validation[1])
        batches.lengths_val = <const Py_ssize_t *> cnp.PyArray_DATA(
            <cnp.ndarray> run.validation[2])
        batches.n_val = cnp.PyArray_DIMS(<cnp.ndarray> run.validation[0])[0]
        batches.n_steps_val = cnp.PyArray_DIMS(<cnp.ndarray> run.validation[0])[1]
        validation_buffers = run.validation[3]
        batches.validation_buffers = validation_buffers.data
        batches.weights_val = <const double *> data_or_null(run.validation[4])
        plan.validate = stm_validation_step
    batches.itemsize = sizeof(floating)
    batches.params = network.params.data
    batches.grads = run.grads.data
    batches.sizes = sizes
    batches.output_tanh, batches.return_sequences = (network.output_tanh,
                                                     network.return_sequences)
    batches.loss = network.loss
    batches.weights = weights
    batches.batch_weights = NULL
    batches.n_steps = n_steps
    batches.X = cnp.PyArray_DATA(<cnp.ndarray> run.X)
    batches.Y = cnp.PyArray_DATA(<cnp.ndarray> run.Y)
    batches.lengths = lengths
    batches.h0_all = data_or_null(run.initial_states)
    batches.final_all = data_or_null(run.final_states)
    batches.workspace = run.workspace.data
    batches.in_panel_layout = trains_in_panels(network.loss, weights, max_rows, n_steps, sizes)
    batches.layout = panel_layout(max_rows, n_steps, sizes, sizeof(floating),
                                  network.return_sequences)
    batches.gather_each_batch = plan.order != NULL or n_tasks(n_samples, run.batch_size) > 1
    batches.gathered = False
    if batches.in_panel_layout:
        for param in range(N_PARAMS):
            n_params += network.counts[param]
        hidden_padded = padded_width(n_hidden, sizeof(floating))
        out_padded = padded_width(n_out, sizeof(floating))
        # Every buffer holds each group's own block (PanelBuffers).
        panel_start = <floating *> network.panel_memory.get(
            layout.n_groups * (n_in * layout.cols + 3 * n_out * layout.read_cols
                               + n_hidden * (layout.cols + layout.state_cols)
                               + layout.cols * hidden_padded + layout.read_cols * out_padded
                               + (n_in + n_hidden) * hidden_padded + n_hidden * out_padded
                               + n_params)
            * sizeof(floating), n_steps, layout.task_width, layout.n_groups)
        n_groups = layout.n_groups
        panel_buffers.inputs = panel_start
        panel_buffers.batch_X = panel_buffers.batch_Y = NULL
        panel_buffers.targets = panel_start + n_groups * n_in * layout.cols
        panel_buffers.outputs = (<floating *> panel_buffers.targets
                                 + n_groups * n_out * layout.read_cols)
        panel_buffers.output_grads = (<floating *> panel_buffers.outputs
                                      + n_groups * n_out * layout.read_cols)
        panel_buffers.states = (<floating *> panel_buffers.output_grads
                                + n_groups * n_out * layout.read_cols)
        panel_buffers.state_grads = (<floating *> panel_buffers.states
                                     + n_groups * n_hidden * layout.state_cols)
        panel_buffers.state_grads_t = (<floating *> panel_buffers.state_grads
                                       + n_groups * n_hidden * layout.cols)
        panel_buffers.output_grads_t = (<floating *> panel_buffers.state_grads_t
                                        + n_groups * layout.cols * hidden_padded)
        panel_buffers.input_product = (<floating *> panel_buffers.output_grads_t
                                       + n_groups * layout.read_cols * out_padded)
        panel_buffers.state_product = (<floating *> panel_buffers.input_product
                                       + n_groups * n_in * hidden_padded)
        panel_buffers.readout_product = (<floating *> panel_buffers.state_product
                                         + n_groups * n_hidden * hidden_padded)
        panel_buffers.group_grads = (<floating *> panel_buffers.readout_product
                                     + n_groups * n_hidden * out_padded)
        panel_buffers.counts = &network.counts[0]
    if weights != NULL:
        batches.batch_weights = <double *> malloc(
            max(1, max_rows * (n_steps if network.return_sequences else 1)) * sizeof(double))
        if batches.batch_weights == NULL:
            raise MemoryError()
    try:
        run_training(run, stm_batch_step, &batches, &parameters, &plan, optimizer, n_threads)
    finally:
        free(batches.batch_weights)
