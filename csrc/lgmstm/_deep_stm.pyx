# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The deep STM program: stacked Elman layers (_rnn), each with an optional
reverse direction, and a readout of dense tanh layers (_dense), trained on
the output's loss (_loss: the squared error, or softmax or sigmoid
cross-entropy on the logits; each output row weighted) by the driver of
_train, which validates through deep_validation_step.

The composition of lgmstm.reference.deep_forward / deep_backward (its
oracle). Row-major, the recurrent passes are _rnn's tasks (sequence chunks,
each chunk's input projection one GEMM over all its steps; weight-gradient
blocks), scheduled one parallel region per layer: forward, both
directions' chunks side by side; backward, both directions' chunks of
layer k beside the weight gradients of layer k + 1, then layer 0's; per
readout layer one dense pass. A reverse direction runs the forward pass on
its input with each sequence's valid steps reversed (padding 0; kept for
the backward pass), and its states are put back in the input's order
beside the forward ones, which they follow.

Small one-direction networks train batches of full-length sequences in the
panel layout of _panel.pxd instead (deep_panel_batch): groups of samples
carried through every layer, step and readout layer and back by one task,
which also sums its own samples' gradients (then added in group order),
with the panel kernels in place of BLAS.

Predict of one direction composes the same compiled passes in one call
(DeepNetwork.predict_stacked), every step's readout apart (a step's bits);
the short fit of partial_fit is _train.Program.fit_ready on ready_steps.

Unchecked: call it through lgmstm.STM, which validates shapes, dtypes and
layouts once and allocates every buffer (workspace_sizes).
"""
cimport numpy as cnp
import math

import numpy as np
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport NAN
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from lgmstm._dense cimport dense_backward, dense_forward, dense_forward_steps
from lgmstm._loss cimport (SQUARED_ERROR, loss_count, loss_of_output, loss_scale,
                           output_loss, output_loss_blocks, panel_output_loss, panel_takes,
                           squared_error)
from lgmstm._optim cimport Optimizer
from lgmstm._panel cimport (MAX_PANEL_GROUPS, PANEL_MAX_WORK, gather_into_group, group_block,
                            group_panels, padded_width, panel_product, row_dots, row_sums,
                            scatter_panel, states_into_panel, sum_group_gradients)
from lgmstm._parallel cimport (BLAS_THREADING_WORK, BLOCK_ELEMS, SHORT_FIT_WORK, gemm_task_rows,
                               n_tasks, threads_for)
from lgmstm._rnn cimport (BackwardPlan, add_weight_partials, all_full_length, backward_chunk,
                          backward_plan, forward_chunk, forward_chunk_rows,
                          panel_recurrent_backward, panel_recurrent_forward,
                          prepare_recurrent_weight,
                          rnn_forward_pass, rnn_scratch_size, training_chunk_rows,
                          transposed_recurrent_weight,
                          weight_grad_task, weight_partials)
from lgmstm._rows cimport gather_rows, scatter_rows, zero_past_lengths
from lgmstm._tanh cimport tanh_rows
from lgmstm._train cimport (KeptMemory, Parameters, PointerTable, Program, TrainingPlan,
                            TrainingRun, UseLock, data_or_null, parameters_of, plan_of,
                            ready_sequences, run_training)

cnp.import_array()


cdef struct Shape:
    # The architecture, as the passes take it.
    Py_ssize_t n_in, n_out, n_layers, n_directions, n_dense
    const Py_ssize_t *hidden      # (n_layers,) each layer's state size
    const Py_ssize_t *dense       # (n_dense,) each readout layer's size, the output last
    Py_ssize_t total_hidden       # the sum of hidden: a row of the packed states
    bint output_tanh, return_sequences
    int loss                      # the output's loss code (_loss.pxd)


cdef inline Py_ssize_t layer_width(const Shape *shape, Py_ssize_t k) noexcept nogil:
    """The width of layer k's input (k = n_layers: the top layer's output)."""
    return shape.n_in if k == 0 else shape.n_directions * shape.hidden[k - 1]


cdef inline Py_ssize_t widest(const Shape *shape) noexcept nogil:
    cdef Py_ssize_t k, width = 1
    for k in range(shape.n_layers + 1):
        width = max(width, layer_width(shape, k))
    for k in range(shape.n_dense):
        width = max(width, shape.dense[k])
    return width


cdef struct Layout:
    # Offsets (in values of the dtype) of each buffer in the workspace, for
    # batches of up to n_rows sequences of n_steps; see workspace_sizes.
    # (k, d): layer k's direction d; "parity" p = k % 2: what the passes of
    # layer k use while layer k + 1's weight gradients still read theirs.
    Py_ssize_t x_batch, y_batch, h0_batch, final_batch
    Py_ssize_t inputs          # layer k's input at inputs + k * sequence_values (k >= 1)
    Py_ssize_t reversed_inputs # layer k's input, valid steps reversed (+ k seq; bidirectional)
    Py_ssize_t states          # (k, d) at states + (k D + d) * sequence_values
                               # (bidirectional only; see states_of)
    Py_ssize_t finals          # (n_rows, widest) each, (k D + d)
    Py_ssize_t readout_input   # the final states read out (return_sequences=False)
    Py_ssize_t activations     # readout layer j at activations + j * rows_values
    Py_ssize_t grad_a, grad_b  # two ping-pong gradients
    Py_ssize_t state_grads     # (k, d)'s dL/dH, turned into its dz in place (+ (k D + d) seq)
    Py_ssize_t first_grads     # dz of step 0, (p D + d) * state_values
    Py_ssize_t layer_h0        # layer k's initial states (n_rows, its size), + k state_values
    Py_ssize_t reverse_grads   # dL/d a layer's input from its reverse direction (bidirectional)
    Py_ssize_t last_grads      # dL/d direction d's final states, + d state_values
    Py_ssize_t scratch         # the time loops' scratch, (p D + d) * scratch_values
    Py_ssize_t n_values
    Py_ssize_t sequence_values, rows_values, state_values, scratch_values


cdef Layout layout_of(const Shape *shape, Py_ssize_t n_rows, Py_ssize_t n_steps) noexcept nogil:
    cdef Layout layout
    cdef Py_ssize_t width = widest(shape), k, scratch = 0
    cdef Py_ssize_t D = shape.n_directions, n_layers = shape.n_layers
    cdef Py_ssize_t n_sequences = n_layers * D
    cdef Py_ssize_t readout_rows = n_rows * (n_steps if shape.return_sequences else 1)
    for k in range(n_layers):
        scratch = max(scratch, rnn_scratch_size(n_rows, layer_width(shape, k),
                                                shape.hidden[k], True))
    layout.scratch_values = scratch
    layout.sequence_values = n_rows * n_steps * width
    layout.rows_values = readout_rows * width
    layout.state_values = n_rows * width
    layout.x_batch = 0
    layout.y_batch = layout.x_batch + n_rows * n_steps * shape.n_in
    layout.h0_batch = layout.y_batch + readout_rows * shape.n_out
    layout.final_batch = layout.h0_batch + n_rows * shape.total_hidden
    layout.inputs = layout.final_batch + n_rows * shape.total_hidden
    layout.reversed_inputs = layout.inputs + (n_layers + 1) * layout.sequence_values
    layout.states = layout.reversed_inputs + (n_layers * layout.sequence_values
                                              if D > 1 else 0)
    # (one direction keeps its states in the next layer's input: see states_of)
    layout.finals = layout.states + (n_sequences * layout.sequence_values if D > 1 else 0)
    layout.readout_input = layout.finals + n_sequences * layout.state_values
    layout.activations = layout.readout_input + layout.state_values
    layout.grad_a = layout.activations + shape.n_dense * layout.rows_values
    # a gradient holds a layer's output sequence or the readout's rows
    # (more than the sequences' when there are no steps)
    layout.grad_b = layout.grad_a + max(layout.sequence_values, layout.rows_values)
    layout.state_grads = layout.grad_b + max(layout.sequence_values, layout.rows_values)
    layout.first_grads = layout.state_grads + n_sequences * max(layout.sequence_values,
                                                                layout.rows_values)
    layout.layer_h0 = layout.first_grads + 2 * D * layout.state_values
    layout.reverse_grads = layout.layer_h0 + n_layers * layout.state_values
    layout.last_grads = layout.reverse_grads + (layout.sequence_values if D > 1 else 0)
    layout.scratch = layout.last_grads + D * layout.state_values
    layout.n_values = layout.scratch + 2 * D * scratch
    return layout


cdef struct DeepPanels:
    # The panel layout of a batch (_panel.pxd; deep_panels_of): sequences in
    # n_groups groups of task_width columns, each carried through every
    # layer and step by one task; offsets in the panel workspace. Every
    # buffer below is group-major (_panel.group_block): a group's rows, of
    # its own columns, one run.
    Py_ssize_t n_steps, task_width, n_groups
    Py_ssize_t cols         # a group's inputs and dz: n_steps * task_width
    Py_ssize_t state_cols   # a group's states, its h0 first: (n_steps + 1) * task_width
    Py_ssize_t read_cols    # a group's readout: cols, or task_width (final states)
    Py_ssize_t inputs       # X (n_in, cols) per group
    Py_ssize_t targets      # Y (n_out, read_cols) per group
    Py_ssize_t states       # layer k's (hidden[k], state_cols) per group, one layer after another
    Py_ssize_t state_grads  # layer k's dz (hidden[k], cols) per group, likewise
    Py_ssize_t activations  # readout layer j's (dense[j], read_cols) per group, likewise
    Py_ssize_t dense_grads  # their dz, likewise
    Py_ssize_t group_grads  # every parameter (packed, in their order) per group
    Py_ssize_t n_params     # the parameters' values
    Py_ssize_t n_values


cdef struct Batches:
    # What deep_batch needs: the network, the data and the workspace.
    size_t itemsize
    const Shape *shape
    void **params
    void **grads
    const Py_ssize_t *counts    # each parameter's values
    Py_ssize_t n_steps
    const void *X
    const void *Y
    const Py_ssize_t *lengths
    const void *h0_all      # (n_samples, total_hidden) or NULL (zeros)
    void *final_all         # (n_samples, total_hidden) OUT, or NULL
    void *values            # the workspace (Layout)
    Py_ssize_t *indices     # lengths of the batch, then the time loops' order
    double *partials        # the loss's partial sums (n_partials), then batch_weights
    Py_ssize_t n_partials
    const double *weights   # each output row's weight (n_samples * rows per sample), or NULL
    double *batch_weights   # scratch: a shuffled batch's weights (after the partials)
    bint forward_only       # the batch's loss only (validation): no backward pass
    Batches *validation     # the validation sequences' (DeepNetwork.validation_data), or NULL
    Py_ssize_t n_samples    # of X (the validation batch: all of them)
    Layout layout
    # The panel layout: whether batches of full-length sequences take it,
    # its layout and workspace, and whether the batch must be gathered anew.
    bint in_panel_layout, gather_each_batch, gathered
    DeepPanels panels
    void *panel_values


cdef void stacked_forward(floating *dtype, const Shape *shape, PointerTable params, object X,
                          object h0s, object lengths, list states, list finals,
                          list activations, object scratch, object order, int n_threads):
    """DeepNetwork.predict_stacked's passes (one direction): each layer's
    states and final states, then the readout's activations."""
    cdef Py_ssize_t n_samples = cnp.PyArray_DIMS(<cnp.ndarray> X)[0]
    cdef Py_ssize_t n_steps = cnp.PyArray_DIMS(<cnp.ndarray> X)[1]
    cdef Py_ssize_t n_layers = shape.n_layers, k, j, n_inputs, n_hidden
    cdef const Py_ssize_t *length_of = <const Py_ssize_t *> cnp.PyArray_DATA(
        <cnp.ndarray> lengths)
    cdef floating *work = <floating *> cnp.PyArray_DATA(<cnp.ndarray> scratch)
    cdef Py_ssize_t *rows = <Py_ssize_t *> cnp.PyArray_DATA(<cnp.ndarray> order)
    cdef const floating *inputs = <const floating *> cnp.PyArray_DATA(<cnp.ndarray> X)
    cdef const floating *h0
    cdef floating *H
    cdef floating *last
    cdef floating *A = NULL
    for k in range(n_layers):
        n_inputs, n_hidden = layer_width(shape, k), shape.hidden[k]
        h0 = NULL if h0s is None else <const floating *> cnp.PyArray_DATA(
            <cnp.ndarray> h0s[k])
        H = <floating *> cnp.PyArray_DATA(<cnp.ndarray> states[k])
        last = <floating *> cnp.PyArray_DATA(<cnp.ndarray> finals[k])
        with nogil:
            rnn_forward_pass(inputs, h0, <floating *> params.data[3 * k],
                             <floating *> params.data[3 * k + 1],
                             <floating *> params.data[3 * k + 2], length_of, H, last, work,
                             rows, n_samples, n_steps, n_inputs, n_hidden,
                             forward_chunk_rows(n_hidden), False, n_threads)
        inputs = H
    n_inputs = shape.hidden[n_layers - 1]
    if not shape.return_sequences:
        inputs = <const floating *> cnp.PyArray_DATA(<cnp.ndarray> finals[n_layers - 1])
    for j in range(shape.n_dense):  # on every step apart, or on the final states
        A = <floating *> cnp.PyArray_DATA(<cnp.ndarray> activations[j])
        with nogil:
            dense_forward_steps(inputs, <floating *> params.data[3 * n_layers + 2 * j],
                                <floating *> params.data[3 * n_layers + 2 * j + 1], A,
                                n_samples, n_steps if shape.return_sequences else 1, n_inputs,
                                shape.dense[j], shape.output_tanh or j < shape.n_dense - 1,
                                n_threads)
        inputs, n_inputs = A, shape.dense[j]
    if shape.return_sequences:  # A: the output layer's
        zero_past_lengths(<char *> A, length_of, n_samples, n_steps,
                          shape.n_out * sizeof(floating))


cdef class DeepNetwork(Program):
    """A deep STM's parameters and architecture, as the passes take them;
    built once per model.

    params: per layer, the forward direction's Wx, Wh, b, then the reverse
    direction's; then each readout layer's W, b (lgmstm/stm.py names them);
    hidden: intp array of the layers' sizes; dense: intp array of the
    readout layers' sizes, the output layer last; output: the STM's
    ("tanh", "linear", "softmax", "sigmoid"; the last two train their
    cross-entropy on the logits); lock: the model's UseLock.
    """
    cdef readonly object hidden_sizes, dense_sizes, param_counts
    cdef Shape shape
    cdef const Py_ssize_t *counts

    def __cinit__(self, list params, Py_ssize_t n_in, hidden, dense,
                  Py_ssize_t n_directions, str output, bint return_sequences,
                  UseLock lock):
        cdef const Py_ssize_t[::1] hidden_view = hidden
        cdef const Py_ssize_t[::1] dense_view = dense
        cdef const Py_ssize_t[::1] count_view
        cdef Py_ssize_t n_layers = hidden_view.shape[0], n_dense = dense_view.shape[0]
        if len(params) != 3 * n_directions * n_layers + 2 * n_dense:
            raise ValueError(f"expected {3 * n_directions * n_layers + 2 * n_dense} "
                             f"parameters, got {len(params)}")
        self.params = PointerTable(params)
        self.hidden_sizes, self.dense_sizes = hidden, dense
        self.param_counts = np.array([p.size for p in params], np.intp)
        count_view = self.param_counts
        self.counts = &count_view[0]
        self.shape.n_in, self.shape.n_out = n_in, dense_view[n_dense - 1]
        self.shape.n_layers, self.shape.n_directions = n_layers, n_directions
        self.shape.n_dense = n_dense
        self.shape.hidden, self.shape.dense = &hidden_view[0], &dense_view[0]
        self.shape.total_hidden = int(np.sum(hidden))
        self.output, self.output_tanh, self.loss = output, output == "tanh", loss_of_output(output)
        # The passes' copy of them (a struct they take without the GIL).
        self.shape.output_tanh, self.shape.loss = self.output_tanh, self.loss
        self.shape.return_sequences = return_sequences
        self.n_out = self.shape.n_out
        self.lock = lock
        self.panel_memory = KeptMemory()
        self.type_num = cnp.PyArray_TYPE(<cnp.ndarray> params[0])

    cpdef Py_ssize_t blas_work(self, Py_ssize_t n_samples, Py_ssize_t n_steps):
        """Multiply-adds that decide whether BLAS may thread in a pass over
        n_samples sequences of n_steps (single_threaded_blas)."""
        cdef Py_ssize_t width = widest(&self.shape)
        return n_samples * max(n_steps, 1) * width * width

    def row_quantum(self, Py_ssize_t n_steps):
        """The fewest samples q such that predict over consecutive pieces of
        a batch, each (but the last) of a multiple of q samples, gives every
        sample the bits of one predict over the whole batch (lgmstm.dask):
        every layer's forward chunks (forward_chunk_rows) and every readout
        layer's GEMM tasks (gemm_task_rows samples, at each step apart:
        _dense.forward_steps) must start at the same samples; whatever
        n_steps."""
        cdef Py_ssize_t k, j, n_inputs, quantum = 1
        for k in range(self.shape.n_layers):
            quantum = math.lcm(quantum, forward_chunk_rows(self.shape.hidden[k]))
        n_inputs = layer_width(&self.shape, self.shape.n_layers)
        for j in range(self.shape.n_dense):
            quantum = math.lcm(quantum, gemm_task_rows(self.shape.dense[j], n_inputs))
            n_inputs = self.shape.dense[j]
        return quantum

    def training_layout(self, Py_ssize_t n_rows, Py_ssize_t n_steps):
        """(n_groups, group_width) of the panel layout batches of n_rows
        full-length sequences train in, or None when they train row-major.
        For the tests."""
        cdef DeepPanels panels
        if not uses_panels(&self.shape, n_rows, n_steps):
            return None
        panels = deep_panels_of(&self.shape, self.counts, n_rows, n_steps,
                                8 if self.type_num == cnp.NPY_DOUBLE else 4)
        return panels.n_groups, panels.task_width

    cdef Py_ssize_t ready_steps(self, object X, object Y, object h0,
                                Py_ssize_t batch_size) except -2:
        """The short fit's check (Program.ready_steps): X and Y as
        _train.ready_sequences takes them, no initial states (the short fit
        of a stateful deep STM is not taken: its states travel per layer),
        batches that never thread BLAS and an epoch of at most
        SHORT_FIT_WORK. The epoch gathers X and Y without checking them:
        fit_ready checks them."""
        cdef const Shape *shape = &self.shape
        cdef double work
        cdef Py_ssize_t n_steps = ready_sequences(X, Y, self.type_num, shape.n_in, shape.n_out,
                                                  shape.return_sequences)
        if n_steps < 1 or h0 is not None:
            return -1
        work = (3.0 * cnp.PyArray_DIMS(<cnp.ndarray> X)[0] * n_steps
                * step_multiply_adds(shape))
        if self.blas_work(batch_size, n_steps) >= BLAS_THREADING_WORK or work > SHORT_FIT_WORK:
            return -1
        self.short_work = work
        self.short_checks_data = False
        return n_steps

    def predict_stacked(self, X, h0s, lengths, int n_threads):
        """(outputs, final states) of predict over X (n_samples, n_steps,
        n_in) from h0s (None, or each layer's initial states (n_samples,
        hidden[k])) with lengths (intp (n_samples,)), for a model of one
        direction: reference.deep_forward's composition of the compiled
        passes (_rnn.forward, _dense.forward and forward_steps: their
        bits) in one call. Outputs before the output function (the logits
        of softmax and sigmoid), 0 at padded steps; final states: each
        layer's, at each sequence's last valid step. Arrays C-contiguous,
        of the parameters' dtype (the STM checked them)."""
        cdef const Shape *shape = &self.shape
        cdef Py_ssize_t n_samples = cnp.PyArray_DIMS(<cnp.ndarray> X)[0]
        cdef Py_ssize_t n_steps = cnp.PyArray_DIMS(<cnp.ndarray> X)[1]
        cdef Py_ssize_t k, j, width, scratch_values = 1
        cdef int type_num = self.type_num
        cdef cnp.npy_intp dims[3]
        cdef cnp.npy_intp rows_dims[2]
        cdef list states = [], finals = [], activations = []
        cdef object scratch, order
        if shape.n_directions != 1 or n_samples < 1 or n_steps < 1:
            raise ValueError("predict_stacked takes models of one direction, and at least "
                             "one sequence of one step")
        dims[0], dims[1] = n_samples, n_steps
        rows_dims[0] = n_samples
        for k in range(shape.n_layers):
            dims[2] = rows_dims[1] = shape.hidden[k]
            states.append(cnp.PyArray_EMPTY(3, dims, type_num, 0))
            finals.append(cnp.PyArray_EMPTY(2, rows_dims, type_num, 0))
            scratch_values = max(scratch_values, rnn_scratch_size(
                n_samples, layer_width(shape, k), shape.hidden[k], False))
        for j in range(shape.n_dense):
            dims[2] = rows_dims[1] = shape.dense[j]
            activations.append(cnp.PyArray_EMPTY(3, dims, type_num, 0)
                               if shape.return_sequences
                               else cnp.PyArray_EMPTY(2, rows_dims, type_num, 0))
        rows_dims[0] = scratch_values
        scratch = cnp.PyArray_EMPTY(1, rows_dims, type_num, 0)
        rows_dims[0] = n_samples
        order = cnp.PyArray_EMPTY(1, rows_dims, cnp.NPY_INTP, 0)
        if type_num == cnp.NPY_DOUBLE:
            stacked_forward(<double *> NULL, shape, self.params, X, h0s, lengths, states,
                            finals, activations, scratch, order, n_threads)
        else:
            stacked_forward(<float *> NULL, shape, self.params, X, h0s, lengths, states,
                            finals, activations, scratch, order, n_threads)
        return activations[shape.n_dense - 1], finals

    def workspace_sizes(self, Py_ssize_t n_rows, Py_ssize_t n_steps):
        """(values of the dtype, intp values, float64 values) of the
        workspace of batches of up to n_rows sequences of n_steps."""
        cdef Layout layout = layout_of(&self.shape, n_rows, n_steps)
        cdef Py_ssize_t n_outputs = n_rows * (n_steps if self.shape.return_sequences else 1)
        return (layout.n_values, (1 + self.shape.n_directions) * n_rows,
                partial_count(&self.shape, n_outputs) + n_outputs)

    def gradients(self, TrainingRun run, int n_threads):
        """One batch on all of run's samples, in order: fill run.grads and
        return the mean loss over the valid outputs (loss_count: weighted
        by run.weights; see train for run). Callers may run beside each
        other (the model's readers): a panel workspace of its own."""
        cdef Batches batches
        cdef double total, count
        cdef Py_ssize_t n_samples = cnp.PyArray_DIMS(<cnp.ndarray> run.X)[0]
        cdef KeptMemory own = KeptMemory()
        self._batches(run, &batches, own)
        with nogil:
            total = deep_batch_step(&batches, 0, n_samples, NULL, n_threads)
            count = loss_count(self.shape.loss, batches.weights, batches.lengths, n_samples,
                               batches.n_steps, self.shape.n_out, self.shape.return_sequences)
        return total / count if count > 0 else 0.0

    def validation_data(self, X_val, Y_val, lengths_val, weights_val=None):
        """What a TrainingRun's validation holds for the validation
        sequences X_val (n_val, n_steps_val, n_in), Y_val (flattened, 0 at
        padded steps) and lengths_val (intp), C-contiguous in the model's
        dtype, each from zero states: the data, weights_val (each output
        row's weight, float64: 1 valid, 0 padded, a cross-entropy's mask;
        or None) and the workspace of one batch of them all."""
        n_values, n_indices, n_partials = self.workspace_sizes(X_val.shape[0], X_val.shape[1])
        return (X_val, Y_val, lengths_val, weights_val, np.empty(n_values, X_val.dtype),
                np.empty(n_indices, np.intp), np.empty(n_partials, np.float64))

    def train(self, TrainingRun run, const Py_ssize_t[:, ::1] order,
              double[::1] epoch_losses, int n_threads):
        """Train for epoch_losses.shape[0] epochs of mini-batch updates.

        run: X (n_samples, n_steps, n_in), Y the targets flattened (0 at
        padded steps), lengths, initial_states (n_samples, sum(hidden)):
        each sample's layers' states side by side, or None (zeros),
        final_states (OUT) the same or None; workspace: the three arrays of
        workspace_sizes for run.batch_size. order[e]: the sample order of
        epoch e (no rows: in order). Sets epoch_losses[e] (OUT) to the mean
        squared error over the valid outputs of epoch e, each batch
        measured before its update; returns run.step.
        """
        if epoch_losses.shape[0] > 0:
            self.train_run(run, &order[0, 0] if order.shape[0] > 0 else NULL,
                           &epoch_losses[0], epoch_losses.shape[0], n_threads)
        return run.step

    cdef int _batches(self, TrainingRun run, Batches *batches,
                      KeptMemory panel_memory) except -1:
        if run.workspace.count != 3:
            raise ValueError(f"expected 3 workspace arrays, got {run.workspace.count}")
        self._data_batches(batches, run.X, run.Y, run.lengths, run.weights,
                           run.workspace.arrays, run.batch_size, panel_memory)
        batches.grads = run.grads.data
        batches.h0_all = data_or_null(run.initial_states)
        batches.final_all = data_or_null(run.final_states)
        return 0

    cdef int _data_batches(self, Batches *batches, object X, object Y, object lengths,
                           object weights, list workspace, Py_ssize_t batch_size,
                           KeptMemory panel_memory) except -1:
        """batches for X, Y, lengths, weights (or None) and workspace (the
        three arrays of workspace_sizes(batch_size, n_steps)), without
        gradients, initial or final states (NULL); the panel layout's
        workspace from panel_memory (None: batches train row-major)."""
        cdef Py_ssize_t n_samples = cnp.PyArray_DIMS(<cnp.ndarray> X)[0]
        cdef Py_ssize_t n_steps = cnp.PyArray_DIMS(<cnp.ndarray> X)[1]
        cdef Py_ssize_t max_rows = min(batch_size, n_samples)
        batches.itemsize = 8 if self.type_num == cnp.NPY_DOUBLE else 4
        batches.shape = &self.shape
        batches.params = self.params.data
        batches.grads = NULL
        batches.counts = self.counts
        batches.n_steps = n_steps
        batches.n_samples = n_samples
        batches.X = cnp.PyArray_DATA(<cnp.ndarray> X)
        batches.Y = cnp.PyArray_DATA(<cnp.ndarray> Y)
        batches.lengths = <const Py_ssize_t *> cnp.PyArray_DATA(<cnp.ndarray> lengths)
        batches.h0_all = NULL
        batches.final_all = NULL
        batches.values = cnp.PyArray_DATA(<cnp.ndarray> workspace[0])
        batches.indices = <Py_ssize_t *> cnp.PyArray_DATA(<cnp.ndarray> workspace[1])
        batches.partials = <double *> cnp.PyArray_DATA(<cnp.ndarray> workspace[2])
        batches.n_partials = partial_count(
            &self.shape, max_rows * (n_steps if self.shape.return_sequences else 1))
        batches.weights = <const double *> data_or_null(weights)
        batches.batch_weights = batches.partials + batches.n_partials
        batches.forward_only = False
        batches.validation = NULL
        batches.layout = layout_of(&self.shape, max_rows, n_steps)
        batches.in_panel_layout = (panel_memory is not None
                                   and uses_panels(&self.shape, max_rows, n_steps)
                                   and panel_takes(self.shape.loss, self.shape.n_out,
                                                   batches.weights))
        batches.panels = deep_panels_of(&self.shape, self.counts, max_rows, n_steps,
                                        batches.itemsize)
        batches.gather_each_batch, batches.gathered = True, False
        batches.panel_values = NULL
        if batches.in_panel_layout:
            batches.panel_values = panel_memory.get(
                batches.panels.n_values * batches.itemsize, n_steps,
                batches.panels.task_width, batches.panels.n_groups)
        return 0

    cdef int train_run(self, TrainingRun run, const Py_ssize_t *order, double *epoch_losses,
                       Py_ssize_t n_epochs, int n_threads) except -1:
        cdef Batches batches, validation
        cdef Parameters parameters = parameters_of(self.params, run, self.counts,
                                                   8 if self.type_num == cnp.NPY_DOUBLE else 4)
        cdef Optimizer *optimizer = &run.optimizer
        cdef TrainingPlan plan
        cdef Py_ssize_t n_samples = cnp.PyArray_DIMS(<cnp.ndarray> run.X)[0]
        cdef double count
        self._batches(run, &batches, self.panel_memory)
        batches.gather_each_batch = order != NULL or n_tasks(n_samples, run.batch_size) > 1
        count = loss_count(self.shape.loss, batches.weights, batches.lengths, n_samples,
                           batches.n_steps, self.shape.n_out, self.shape.return_sequences)
        plan = plan_of(run, order, epoch_losses, n_epochs, n_samples,
                       count if batches.weights != NULL else max(1.0, count), False)
        if run.validation is not None and plan.validation_losses != NULL:
            # One batch of every validation sequence, from zero states, its loss only.
            self._data_batches(&validation, run.validation[0], run.validation[1],
                               run.validation[2], run.validation[3], list(run.validation[4:]),
                               cnp.PyArray_DIMS(<cnp.ndarray> run.validation[0])[0], None)
            validation.forward_only = True
            batches.validation = &validation
            plan.validate = deep_validation_step
        run_training(run, deep_batch_step, &batches, &parameters, &plan, optimizer, n_threads)
        return 0


cdef double deep_batch_step(void *batches, Py_ssize_t start, Py_ssize_t n_rows,
                            const Py_ssize_t *rows, int n_threads) noexcept nogil:
    """The BatchStep: deep_batch in the batch's dtype."""
    if (<Batches *> batches).itemsize == sizeof(double):
        return deep_batch(<double *> NULL, <Batches *> batches, start, n_rows, rows,
                          n_threads)
    return deep_batch(<float *> NULL, <Batches *> batches, start, n_rows, rows, n_threads)


cdef double deep_validation_step(void *batches, int n_threads) noexcept nogil:
    """The ValidationStep (_train.pxd): the mean loss over the valid outputs
    of the validation sequences (loss_count), one forward-only batch."""
    cdef Batches *validation = (<Batches *> batches).validation
    cdef const Shape *shape = validation.shape
    cdef double total = deep_batch_step(validation, 0, validation.n_samples, NULL, n_threads)
    return total / max(1.0, loss_count(shape.loss, validation.weights, validation.lengths,
                                       validation.n_samples, validation.n_steps, shape.n_out,
                                       shape.return_sequences))


cdef inline Py_ssize_t partial_count(const Shape *shape, Py_ssize_t n_outputs) noexcept nogil:
    """The partial sums the loss of n_outputs output rows needs (squared_error's
    blocks of values or output_loss's of rows)."""
    return max(1, max(n_tasks(n_outputs * shape.n_out, BLOCK_ELEMS),
                      output_loss_blocks(n_outputs)))


cdef void reverse_steps(const floating *source, floating *dest, const Py_ssize_t *lengths,
                        Py_ssize_t n_rows, Py_ssize_t n_steps, Py_ssize_t width,
                        Py_ssize_t ld_source, Py_ssize_t ld_dest, bint add) noexcept nogil:
    """dest[i, t] = source[i, lengths[i] - 1 - t] (or +=, add) for t <
    lengths[i], width values of rows ld_source / ld_dest apart; dest's
    padded steps 0 (untouched when add). reference.reverse_steps."""
    cdef Py_ssize_t i, t, j, length
    cdef const floating *from_row
    cdef floating *to_row
    for i in range(n_rows):
        length = lengths[i]
        for t in range(n_steps):
            to_row = dest + (i * n_steps + t) * ld_dest
            if t < length:
                from_row = source + (i * n_steps + length - 1 - t) * ld_source
                if add:
                    for j in range(width):
                        to_row[j] += from_row[j]
                else:
                    memcpy(to_row, from_row, width * sizeof(floating))
            elif not add:
                memset(to_row, 0, width * sizeof(floating))


cdef inline floating *states_of(floating *values, const Layout *layout, Py_ssize_t D,
                               Py_ssize_t k, Py_ssize_t d) noexcept nogil:
    """Where direction d of layer k keeps its states: with one direction,
    the next layer's input itself (the same rows), else its own buffer."""
    if D == 1:
        return values + layout.inputs + (k + 1) * layout.sequence_values
    return values + layout.states + (k * D + d) * layout.sequence_values


cdef void copy_columns(const floating *source, Py_ssize_t ld_source, floating *dest,
                       Py_ssize_t ld_dest, Py_ssize_t n_rows, Py_ssize_t width) noexcept nogil:
    """dest[r, :width] = source[r, :width] for n_rows rows."""
    cdef Py_ssize_t r
    for r in range(n_rows):
        memcpy(dest + r * ld_dest, source + r * ld_source, width * sizeof(floating))


cdef inline const floating *input_of(floating *values, const Layout *layout,
                                    const floating *X_rows, Py_ssize_t k,
                                    Py_ssize_t d) noexcept nogil:
    """Direction d of layer k's input: the batch, the layer below's output,
    or (the reverse direction) that with each sequence's valid steps reversed."""
    if d == 1:
        return values + layout.reversed_inputs + k * layout.sequence_values
    return X_rows if k == 0 else values + layout.inputs + k * layout.sequence_values


cdef inline floating *scratch_of(floating *values, const Layout *layout, Py_ssize_t D,
                                 Py_ssize_t k, Py_ssize_t d) noexcept nogil:
    return values + layout.scratch + ((k % 2) * D + d) * layout.scratch_values


cdef inline floating *first_grads_of(floating *values, const Layout *layout, Py_ssize_t D,
                                     Py_ssize_t k, Py_ssize_t d) noexcept nogil:
    return values + layout.first_grads + ((k % 2) * D + d) * layout.state_values


cdef inline floating *state_grads_of(floating *values, const Layout *layout, Py_ssize_t D,
                                     Py_ssize_t k, Py_ssize_t d) noexcept nogil:
    return values + layout.state_grads + (k * D + d) * max(layout.sequence_values,
                                                           layout.rows_values)


cdef struct Step:
    # One batch as the tasks see it (deep_batch).
    const Shape *shape
    const Layout *layout
    void *values
    void **params
    void **grads
    const void *X_rows
    const void *h0_rows          # (n_rows, total_hidden) or NULL
    const void *packed[2]        # each direction's prepared Wh (or Wh^T)
    const void *gradient_in      # bidirectional: dL/d the layer's output (n_rows, n_steps, 2 h)
    void *gradient_out           # dL/d the layer's input, forward direction's part
    Py_ssize_t *lengths
    Py_ssize_t *orders           # (D, n_rows)
    Py_ssize_t n_rows, n_steps, offset


cdef void forward_task(floating *dtype, Step *step, Py_ssize_t k, Py_ssize_t task,
                       Py_ssize_t chunk_rows) noexcept nogil:
    """Chunk task // D of layer k's direction task % D through every step,
    with its states put where the next layer (or the readout) reads them."""
    cdef const Shape *shape = step.shape
    cdef const Layout *layout = step.layout
    cdef floating *values = <floating *> step.values
    cdef Py_ssize_t D = shape.n_directions, d = task % D, chunk = task // D
    cdef Py_ssize_t n_rows = step.n_rows, n_steps = step.n_steps
    cdef Py_ssize_t width = layer_width(shape, k), n_hidden = shape.hidden[k]
    cdef Py_ssize_t total = shape.total_hidden
    cdef Py_ssize_t start = chunk * chunk_rows, n_chunk = min(chunk_rows, n_rows - start)
    cdef Py_ssize_t param = 3 * (k * D + d)
    cdef const floating *layer_input = input_of(values, layout, <const floating *> step.X_rows,
                                                k, 0)
    cdef floating *H = states_of(values, layout, D, k, d)
    cdef floating *final = values + layout.finals + (k * D + d) * layout.state_values
    cdef floating *layer_h0 = values + layout.layer_h0 + k * layout.state_values
    cdef floating *outputs = values + layout.inputs + (k + 1) * layout.sequence_values
    cdef const floating *h0_rows = <const floating *> step.h0_rows
    if d == 1:
        reverse_steps(layer_input + start * n_steps * width,
                      <floating *> input_of(values, layout, NULL, k, 1) + start * n_steps * width,
                      step.lengths + start, n_chunk, n_steps, width, width, width, False)
    if d == 0 and h0_rows != NULL:
        copy_columns(h0_rows + start * total + step.offset, total, layer_h0 + start * n_hidden,
                     n_hidden, n_chunk, n_hidden)
    forward_chunk(chunk, chunk_rows, input_of(values, layout, <const floating *> step.X_rows,
                                              k, d),
                  layer_h0 if d == 0 and h0_rows != NULL else NULL,
                  <floating *> step.params[param], <floating *> step.params[param + 1],
                  <floating *> step.params[param + 2], step.lengths, H, final,
                  <const floating *> step.packed[d], scratch_of(values, layout, D, k, d),
                  step.orders + d * n_rows, n_rows, n_steps, width, n_hidden, False)
    # The next layer's input: forward states, then reverse ones in step order.
    if d == 0:
        if D > 1:
            copy_columns(H + start * n_steps * n_hidden, n_hidden,
                         outputs + start * n_steps * D * n_hidden, D * n_hidden,
                         n_chunk * n_steps, n_hidden)
        copy_columns(final + start * n_hidden, n_hidden,
                     values + layout.final_batch + start * total + step.offset, total,
                     n_chunk, n_hidden)
    else:
        reverse_steps(H + start * n_steps * n_hidden,
                      outputs + start * n_steps * D * n_hidden + n_hidden,
                      step.lengths + start, n_chunk, n_steps, n_hidden, n_hidden,
                      D * n_hidden, False)
    if not shape.return_sequences and k == shape.n_layers - 1:
        copy_columns(final + start * n_hidden, n_hidden,
                     values + layout.readout_input + start * D * n_hidden + d * n_hidden,
                     D * n_hidden, n_chunk, n_hidden)


cdef void backward_task(floating *dtype, Step *step, Py_ssize_t k, Py_ssize_t task,
                        const BackwardPlan *plan) noexcept nogil:
    """Chunk task // D of layer k's direction task % D, backward through every
    step: its dz (from dL/d its states, which a bidirectional layer's task
    takes from step.gradient_in), and its part of dL/d the layer's input."""
    cdef const Shape *shape = step.shape
    cdef const Layout *layout = step.layout
    cdef floating *values = <floating *> step.values
    cdef Py_ssize_t D = shape.n_directions, d = task % D, chunk = task // D
    cdef Py_ssize_t n_rows = step.n_rows, n_steps = step.n_steps
    cdef Py_ssize_t width = layer_width(shape, k), n_hidden = shape.hidden[k]
    cdef Py_ssize_t start = chunk * plan.chunk_rows
    cdef Py_ssize_t n_chunk = min(plan.chunk_rows, n_rows - start)
    cdef Py_ssize_t param = 3 * (k * D + d)
    cdef bint sequence_grads = shape.return_sequences or k < shape.n_layers - 1
    cdef floating *dZ = state_grads_of(values, layout, D, k, d)
    cdef const floating *source = <const floating *> step.gradient_in
    cdef floating *last = NULL
    cdef floating *dX = NULL
    cdef floating *scratch = scratch_of(values, layout, D, k, d)
    if D > 1 and sequence_grads:
        if d == 0:
            copy_columns(source + start * n_steps * D * n_hidden, D * n_hidden,
                         dZ + start * n_steps * n_hidden, n_hidden, n_chunk * n_steps,
                         n_hidden)
        else:
            reverse_steps(source + start * n_steps * D * n_hidden + n_hidden,
                          dZ + start * n_steps * n_hidden, step.lengths + start, n_chunk,
                          n_steps, n_hidden, D * n_hidden, n_hidden, False)
    elif not sequence_grads:
        if D == 1:
            last = <floating *> source
        else:
            last = values + layout.last_grads + d * layout.state_values
            copy_columns(source + start * D * n_hidden + d * n_hidden, D * n_hidden,
                         last + start * n_hidden, n_hidden, n_chunk, n_hidden)
    if k > 0:
        if D == 1:
            dX = state_grads_of(values, layout, D, k - 1, 0)
        elif d == 0:
            dX = <floating *> step.gradient_out
        else:
            dX = values + layout.reverse_grads
    backward_chunk(chunk, plan.chunk_rows, <floating *> step.params[param],
                   transposed_recurrent_weight(scratch, n_rows, n_hidden),
                   <const floating *> step.packed[d], states_of(values, layout, D, k, d),
                   dZ if sequence_grads else NULL, last, step.lengths, dZ,
                   first_grads_of(values, layout, D, k, d), dX, NULL, scratch,
                   step.orders + d * n_rows, n_rows, n_steps, width, n_hidden)


cdef void weight_task(floating *dtype, Step *step, Py_ssize_t k, Py_ssize_t task,
                      const BackwardPlan *plan) noexcept nogil:
    """Weight task task // D of layer k's direction task % D (weight_grad_task)."""
    cdef const Shape *shape = step.shape
    cdef const Layout *layout = step.layout
    cdef floating *values = <floating *> step.values
    cdef Py_ssize_t D = shape.n_directions, d = task % D
    cdef Py_ssize_t param = 3 * (k * D + d)
    cdef Py_ssize_t n_hidden = shape.hidden[k]
    weight_grad_task(task // D, plan.n_groups, plan.block_rows,
                     input_of(values, layout, <const floating *> step.X_rows, k, d),
                     values + layout.layer_h0 + k * layout.state_values
                     if d == 0 and step.h0_rows != NULL else NULL,
                     states_of(values, layout, D, k, d), state_grads_of(values, layout, D, k, d),
                     first_grads_of(values, layout, D, k, d), step.lengths,
                     <floating *> step.grads[param], <floating *> step.grads[param + 1],
                     <floating *> step.grads[param + 2],
                     weight_partials(scratch_of(values, layout, D, k, d), step.n_rows, n_hidden),
                     step.n_rows, step.n_steps, layer_width(shape, k), n_hidden)


cdef void backward_region_task(floating *dtype, Step *step, Py_ssize_t k, Py_ssize_t task,
                               Py_ssize_t n_chunk_tasks, const BackwardPlan *plans) noexcept nogil:
    """Task `task` of layer k's backward region: layer k's chunk tasks, then
    layer k + 1's weight tasks (k + 1 = n_layers: none)."""
    if task < n_chunk_tasks:
        backward_task(dtype, step, k, task, &plans[k])
    else:
        weight_task(dtype, step, k + 1, task - n_chunk_tasks, &plans[k + 1])


cdef double deep_batch(floating *dtype, Batches *batches, Py_ssize_t start, Py_ssize_t n_rows,
                       const Py_ssize_t *rows, int n_threads) noexcept nogil:
    """Forward, loss and backward of one batch (see BatchStep in _train.pxd):
    fills the gradients, returns the batch's summed loss (weighted: the
    rows' weights, gathered with the batch); dtype only picks the fused
    specialisation. forward_only: the summed loss alone.

    Every recurrent pass is its tasks (_rnn.pxd), one parallel region per
    layer: forward, both directions' chunks together; backward, both
    directions' chunks of layer k beside layer k + 1's weight gradients;
    then layer 0's. The tasks depend on the shapes only, so the bits never
    depend on the threads.
    """
    cdef const Shape *shape = batches.shape
    cdef const Layout *layout = &batches.layout
    cdef Py_ssize_t n_steps = batches.n_steps, n_in = shape.n_in, n_out = shape.n_out
    cdef Py_ssize_t D = shape.n_directions, total = shape.total_hidden
    cdef Py_ssize_t n_layers = shape.n_layers
    cdef bint every_step = shape.return_sequences
    cdef Py_ssize_t readout_rows = n_rows * (n_steps if every_step else 1)
    cdef Py_ssize_t targets_per_sample = (n_steps if every_step else 1) * n_out
    cdef floating *values = <floating *> batches.values
    cdef Py_ssize_t *length_rows = batches.indices
    cdef const floating *X = <const floating *> batches.X
    cdef const floating *Y = <const floating *> batches.Y
    cdef const floating *h0_all = <const floating *> batches.h0_all
    cdef floating *final_all = <floating *> batches.final_all
    cdef const floating *X_rows = X + start * n_steps * n_in
    cdef const floating *Y_rows = Y + start * targets_per_sample
    cdef const floating *h0_rows = NULL
    cdef floating *A = NULL
    cdef floating *dA
    cdef floating *d_next
    cdef floating *outputs
    cdef floating *other
    cdef const floating *readout_in
    cdef Step step
    cdef BackwardPlan few_plans[8]
    cdef BackwardPlan *plans = few_plans
    cdef Py_ssize_t k, d, j, width, n_hidden, param, n_dense_in, task, chunk_rows
    cdef Py_ssize_t n_chunk_tasks, n_region_tasks
    cdef Py_ssize_t weights_per_sample = n_steps if every_step else 1
    cdef const double *weight_rows = NULL
    cdef double sum_squares, work, count
    cdef int n_used
    # Gather the batch.
    if rows != NULL:
        gather_rows(<const char *> batches.lengths, rows, n_rows, sizeof(Py_ssize_t),
                    <char *> length_rows)
        if h0_all != NULL:
            gather_rows(<const char *> h0_all, rows, n_rows, total * sizeof(floating),
                        <char *> (values + layout.h0_batch))
            h0_rows = values + layout.h0_batch
    else:
        memcpy(length_rows, batches.lengths + start, n_rows * sizeof(Py_ssize_t))
        if h0_all != NULL:
            h0_rows = h0_all + start * total
    if batches.weights != NULL:
        if rows != NULL:
            gather_rows(<const char *> batches.weights, rows, n_rows,
                        weights_per_sample * sizeof(double), <char *> batches.batch_weights)
            weight_rows = batches.batch_weights
        else:
            weight_rows = batches.weights + start * weights_per_sample
    if batches.in_panel_layout and all_full_length(length_rows, n_rows, n_steps):
        sum_squares = deep_panel_batch(dtype, batches, start, n_rows, rows, h0_rows, n_threads)
        put_final_states(dtype, batches, start, n_rows, rows)
        return sum_squares
    if rows != NULL:
        gather_rows(<const char *> X, rows, n_rows, n_steps * n_in * sizeof(floating),
                    <char *> (values + layout.x_batch))
        gather_rows(<const char *> Y, rows, n_rows, targets_per_sample * sizeof(floating),
                    <char *> (values + layout.y_batch))
        X_rows = values + layout.x_batch
        Y_rows = values + layout.y_batch
    step.shape, step.layout, step.values = shape, layout, values
    step.params, step.grads = batches.params, batches.grads
    step.X_rows, step.h0_rows = X_rows, h0_rows
    step.lengths, step.orders = length_rows, batches.indices + n_rows
    step.n_rows, step.n_steps = n_rows, n_steps
    # Forward: a region per layer, both directions' chunks in it.
    step.offset = 0  # of layer k's state in a packed row
    for k in range(n_layers):
        width = layer_width(shape, k)
        n_hidden = shape.hidden[k]
        for d in range(D):
            step.packed[d] = prepare_recurrent_weight(
                <floating *> batches.params[3 * (k * D + d) + 1], False,
                scratch_of(values, layout, D, k, d), n_rows, n_hidden)
        chunk_rows = training_chunk_rows(n_rows, n_hidden, D)
        n_chunk_tasks = D * n_tasks(n_rows, chunk_rows)
        n_used = threads_for(n_threads, n_chunk_tasks,
                             2.0 * D * n_rows * n_steps * n_hidden * (width + n_hidden))
        if n_used == 1:
            for task in range(n_chunk_tasks):
                forward_task(dtype, &step, k, task, chunk_rows)
        else:
            for task in prange(n_chunk_tasks, num_threads=n_used, schedule='static'):
                forward_task(dtype, &step, k, task, chunk_rows)
        step.offset += n_hidden
    # The readout, on every step's top states or on the final ones.
    width = layer_width(shape, n_layers)
    readout_in = (values + layout.inputs + n_layers * layout.sequence_values
                  if every_step else values + layout.readout_input)
    n_dense_in = width
    for j in range(shape.n_dense):
        A = values + layout.activations + j * layout.rows_values
        param = 3 * D * n_layers + 2 * j
        dense_forward(readout_in if j == 0 else A - layout.rows_values,
                      <floating *> batches.params[param],
                      <floating *> batches.params[param + 1], A, readout_rows, n_dense_in,
                      shape.dense[j], shape.output_tanh or j < shape.n_dense - 1, n_threads)
        n_dense_in = shape.dense[j]
    outputs = values + layout.activations + (shape.n_dense - 1) * layout.rows_values
    if every_step:
        zero_past_lengths(<char *> outputs, length_rows, n_rows, n_steps,
                          n_out * sizeof(floating))
    dA = values + layout.grad_a
    count = loss_count(shape.loss, weight_rows, length_rows, n_rows, n_steps, n_out,
                       every_step)
    if shape.loss == SQUARED_ERROR and weight_rows == NULL:
        sum_squares = squared_error(outputs, Y_rows, dA, readout_rows * n_out,
                                    1.0 / max(1.0, count), batches.partials, n_threads)
    else:
        sum_squares = output_loss(shape.loss, outputs, Y_rows, weight_rows, dA, readout_rows,
                                  n_out, 1.0 / count if count > 0 else 0.0, batches.partials,
                                  n_threads)
    if batches.forward_only:
        return sum_squares
    # Backward through the readout: dA ping-pongs between grad_a and grad_b;
    # one direction's top states take their gradient as their dz's place.
    for j in range(shape.n_dense - 1, -1, -1):
        param = 3 * D * n_layers + 2 * j
        n_dense_in = width if j == 0 else shape.dense[j - 1]
        d_next = values + (layout.grad_b if dA == values + layout.grad_a else layout.grad_a)
        if j == 0 and D == 1 and every_step:
            d_next = state_grads_of(values, layout, D, n_layers - 1, 0)
        dense_backward(readout_in if j == 0 else values + layout.activations
                       + (j - 1) * layout.rows_values,
                       <floating *> batches.params[param],
                       values + layout.activations + j * layout.rows_values, dA, dA, d_next,
                       <floating *> batches.grads[param], <floating *> batches.grads[param + 1],
                       1, 0, readout_rows, n_dense_in, shape.dense[j],
                       shape.output_tanh or j < shape.n_dense - 1, False, n_threads)
        dA = d_next
    # dA: dL/d the top layer's output sequence (every_step) or final states.
    # Backward through the layers, top first, a region per layer: its
    # chunks (both directions), beside the weight gradients of the layer
    # above; a bidirectional layer's input gradient is its forward part
    # (in the grad buffer dA is not in) plus its reverse part reversed.
    if n_layers > 8:
        plans = <BackwardPlan *> malloc(n_layers * sizeof(BackwardPlan))
        if plans == NULL:
            return NAN  # the driver takes it for a divergence
    for k in range(n_layers):
        plans[k] = backward_plan(n_rows, layer_width(shape, k), shape.hidden[k])
    step.gradient_in = dA
    for k in range(n_layers - 1, -1, -1):
        width = layer_width(shape, k)
        n_hidden = shape.hidden[k]
        other = values + (layout.grad_b if step.gradient_in == values + layout.grad_a
                          else layout.grad_a)
        step.gradient_out = other
        for d in range(D):
            step.packed[d] = prepare_recurrent_weight(
                <floating *> batches.params[3 * (k * D + d) + 1], True,
                scratch_of(values, layout, D, k, d), n_rows, n_hidden)
        n_chunk_tasks = D * plans[k].n_chunks
        n_region_tasks = n_chunk_tasks
        work = 2.0 * D * n_rows * n_steps * n_hidden * (n_hidden + (width if k > 0 else 0))
        if k + 1 < n_layers:
            n_region_tasks += D * plans[k + 1].n_weight_tasks
            work += 2.0 * D * n_rows * n_steps * shape.hidden[k + 1] * (
                layer_width(shape, k + 1) + shape.hidden[k + 1])
        n_used = threads_for(n_threads, n_region_tasks, work)
        if n_used == 1:
            for task in range(n_region_tasks):
                backward_region_task(dtype, &step, k, task, n_chunk_tasks, plans)
        else:
            for task in prange(n_region_tasks, num_threads=n_used, schedule='dynamic'):
                backward_region_task(dtype, &step, k, task, n_chunk_tasks, plans)
        if k + 1 < n_layers:
            add_layer_partials(dtype, &step, k + 1, &plans[k + 1], n_threads)
        if k > 0 and D > 1:
            reverse_steps(values + layout.reverse_grads, other, length_rows, n_rows, n_steps,
                          width, width, width, True)
        step.gradient_in = other
    n_region_tasks = D * plans[0].n_weight_tasks
    n_used = threads_for(n_threads, n_region_tasks, 2.0 * D * n_rows * n_steps
                         * shape.hidden[0] * (n_in + shape.hidden[0]))
    if n_used == 1:
        for task in range(n_region_tasks):
            weight_task(dtype, &step, 0, task, &plans[0])
    else:
        for task in prange(n_region_tasks, num_threads=n_used, schedule='dynamic'):
            weight_task(dtype, &step, 0, task, &plans[0])
    add_layer_partials(dtype, &step, 0, &plans[0], n_threads)
    if plans != few_plans:
        free(plans)
    put_final_states(dtype, batches, start, n_rows, rows)
    return sum_squares


cdef void put_final_states(floating *dtype, Batches *batches, Py_ssize_t start,
                           Py_ssize_t n_rows, const Py_ssize_t *rows) noexcept nogil:
    """Each sequence's final states, packed (final_batch), to their rows."""
    cdef Py_ssize_t total = batches.shape.total_hidden
    cdef floating *final_all = <floating *> batches.final_all
    cdef const floating *final_rows = (<floating *> batches.values
                                       + batches.layout.final_batch)
    if final_all == NULL:
        return
    if rows != NULL:
        scatter_rows(<const char *> final_rows, rows, n_rows, total * sizeof(floating),
                     <char *> final_all)
    else:
        memcpy(final_all + start * total, final_rows, n_rows * total * sizeof(floating))


cdef void add_layer_partials(floating *dtype, Step *step, Py_ssize_t k,
                             const BackwardPlan *plan, int n_threads) noexcept nogil:
    """Add the sample groups' weight gradients of layer k (add_weight_partials)."""
    cdef Py_ssize_t D = step.shape.n_directions, d, param
    cdef Py_ssize_t n_hidden = step.shape.hidden[k]
    if plan.n_groups <= 1:
        return
    for d in range(D):
        param = 3 * (k * D + d)
        add_weight_partials(<floating *> step.grads[param], <floating *> step.grads[param + 1],
                            weight_partials(scratch_of(<floating *> step.values, step.layout,
                                                       D, k, d), step.n_rows, n_hidden),
                            plan.n_groups, layer_width(step.shape, k), n_hidden, n_threads)


# -- the panel layout (small networks, see _panel.pxd) ---------------------------------

cdef inline double step_multiply_adds(const Shape *shape) noexcept nogil:
    """Multiply-adds of one step of one sequence through every layer and
    direction and the readout (forward)."""
    cdef double per_step = 0
    cdef Py_ssize_t k, j, n_inputs
    for k in range(shape.n_layers):
        per_step += (shape.n_directions * shape.hidden[k]
                     * (layer_width(shape, k) + shape.hidden[k]))
    n_inputs = layer_width(shape, shape.n_layers)
    for j in range(shape.n_dense):
        per_step += shape.dense[j] * n_inputs
        n_inputs = shape.dense[j]
    return per_step


cdef inline double panel_step_cost(const Shape *shape, Py_ssize_t n_rows,
                                   Py_ssize_t n_steps) noexcept nogil:
    """About the flops of a training step on a batch (as _stm.step_cost:
    four forward passes)."""
    return 8.0 * n_rows * n_steps * step_multiply_adds(shape)


cdef inline bint uses_panels(const Shape *shape, Py_ssize_t n_rows,
                             Py_ssize_t n_steps) noexcept nogil:
    """Whether batches of n_rows full-length sequences train in the panel
    layout: one direction, some steps, a small step; from the shapes alone."""
    return (shape.n_directions == 1 and n_steps > 0
            and panel_step_cost(shape, n_rows, n_steps) < PANEL_MAX_WORK)


cdef inline DeepPanels deep_panels_of(const Shape *shape, const Py_ssize_t *counts,
                                      Py_ssize_t n_rows, Py_ssize_t n_steps,
                                      size_t itemsize) noexcept nogil:
    """The layout of batches of up to n_rows sequences (groups as
    _panel.group_panels says); buffer offsets in values of the dtype.
    counts: each parameter's values (DeepNetwork.counts)."""
    cdef DeepPanels panels
    cdef Py_ssize_t panel = padded_width(1, itemsize)
    cdef Py_ssize_t n_panels = n_tasks(n_rows, panel)
    cdef Py_ssize_t per_group = group_panels(n_panels, n_steps * panel,
                                             panel_step_cost(shape, n_rows, n_steps))
    cdef Py_ssize_t j, groups, total_dense = 0
    for j in range(shape.n_dense):
        total_dense += shape.dense[j]
    panels.n_steps = n_steps
    panels.task_width = per_group * panel
    panels.n_groups = max(1, n_tasks(n_panels, per_group))
    panels.cols = n_steps * panels.task_width
    panels.state_cols = (n_steps + 1) * panels.task_width
    panels.read_cols = panels.cols if shape.return_sequences else panels.task_width
    groups = panels.n_groups
    panels.inputs = 0
    panels.targets = panels.inputs + groups * shape.n_in * panels.cols
    panels.states = panels.targets + groups * shape.n_out * panels.read_cols
    panels.state_grads = panels.states + groups * shape.total_hidden * panels.state_cols
    panels.activations = panels.state_grads + groups * shape.total_hidden * panels.cols
    panels.dense_grads = panels.activations + groups * total_dense * panels.read_cols
    panels.group_grads = panels.dense_grads + groups * total_dense * panels.read_cols
    panels.n_params = 0
    for j in range(3 * shape.n_layers + 2 * shape.n_dense):
        panels.n_params += counts[j]
    panels.n_values = panels.group_grads + groups * panels.n_params
    return panels


cdef struct PanelStep:
    # One batch in the panel layout, as its tasks see it.
    const Shape *shape
    const DeepPanels *panels
    void *values          # the panel workspace (DeepPanels' offsets)
    void **params
    void **grads
    const Py_ssize_t *counts  # each parameter's values
    const void *h0_rows   # (n_rows, total_hidden) row-major, or NULL
    void *final_rows      # (n_rows, total_hidden) OUT
    # The batch that each group's task gathers (X NULL: the buffers hold it).
    const void *X
    const void *Y
    const Py_ssize_t *rows
    Py_ssize_t n_rows
    double grad_scale
    double partials[MAX_PANEL_GROUPS]


cdef inline Py_ssize_t units_below(const PanelStep *step, Py_ssize_t k) noexcept nogil:
    """The recurrent units of the layers below layer k."""
    cdef Py_ssize_t i, before = 0
    for i in range(k):
        before += step.shape.hidden[i]
    return before


cdef inline floating *panel_states(floating *values, const PanelStep *step,
                                   Py_ssize_t k, Py_ssize_t group) noexcept nogil:
    """A group's states of layer k (hidden[k], state_cols): h0, then every step's."""
    return group_block(values + step.panels.states
                       + units_below(step, k) * step.panels.n_groups * step.panels.state_cols,
                       group, step.shape.hidden[k], step.panels.state_cols)


cdef inline floating *panel_state_grads(floating *values, const PanelStep *step,
                                        Py_ssize_t k, Py_ssize_t group) noexcept nogil:
    """A group's dL/dH of layer k, then its dz in place (hidden[k], cols)."""
    return group_block(values + step.panels.state_grads
                       + units_below(step, k) * step.panels.n_groups * step.panels.cols,
                       group, step.shape.hidden[k], step.panels.cols)


cdef inline floating *panel_dense(floating *values, const PanelStep *step, Py_ssize_t j,
                                  bint grads, Py_ssize_t group) noexcept nogil:
    """A group's activations (or their gradients) of readout layer j (dense[j],
    read_cols)."""
    cdef Py_ssize_t i, before = 0
    for i in range(j):
        before += step.shape.dense[i]
    return group_block(values + (step.panels.dense_grads if grads else step.panels.activations)
                       + before * step.panels.n_groups * step.panels.read_cols,
                       group, step.shape.dense[j], step.panels.read_cols)


cdef void panel_sequence_task(floating *dtype, PanelStep *step, Py_ssize_t group) noexcept nogil:
    """One group of sequences through the whole step, in its own block of
    each buffer: gather (when step.X is set), forward, loss and every
    backward time loop, layer by layer (each input projection one product
    over all steps), the readout's layers on the states read, then back
    down; and the group's share of every gradient: into its part of
    group_grads (packed, in the parameters' order) when there are several
    groups, else into step.grads."""
    cdef const Shape *shape = step.shape
    cdef const DeepPanels *panels = step.panels
    cdef floating *values = <floating *> step.values
    cdef Py_ssize_t n_steps = panels.n_steps, width = panels.task_width
    cdef Py_ssize_t first = group * width
    cdef Py_ssize_t n_valid = min(width, max(0, step.n_rows - first))
    cdef Py_ssize_t cols = panels.cols, ld_states = panels.state_cols
    cdef Py_ssize_t n_read = panels.read_cols, total = shape.total_hidden
    cdef bint every_step = shape.return_sequences
    cdef Py_ssize_t n_layers = shape.n_layers, n_dense = shape.n_dense
    cdef const floating *h0 = <const floating *> step.h0_rows
    cdef floating *finals = <floating *> step.final_rows
    cdef floating *X = group_block(values + panels.inputs, group, shape.n_in, cols)
    cdef floating *Y = group_block(values + panels.targets, group, shape.n_out, n_read)
    cdef floating *H = NULL
    cdef floating *dZ
    cdef floating *A = NULL
    cdef floating *target
    cdef const floating *layer_input
    cdef Py_ssize_t k, j, n_hidden, n_inputs, ld_input, offset = 0, param
    cdef Py_ssize_t n_top = shape.hidden[n_layers - 1]
    if step.X != NULL:  # (fit checked the data: the finiteness it reports is not needed)
        gather_into_group(<const floating *> step.X, step.rows, step.n_rows, n_steps,
                          shape.n_in, X, width, group)
        gather_into_group(<const floating *> step.Y, step.rows, step.n_rows,
                          n_steps if every_step else 1, shape.n_out, Y, width, group)
    for k in range(n_layers):
        n_hidden = shape.hidden[k]
        H = panel_states(values, step, k, group)
        # The layer's initial states: its columns offset .. of h0's rows.
        states_into_panel(h0 + offset if h0 != NULL else NULL, total, first, n_valid,
                          n_hidden, H, ld_states, width)
        if k == 0:
            layer_input, ld_input = X, cols
        else:
            layer_input, ld_input = panel_states(values, step, k - 1, group) + width, ld_states
        panel_recurrent_forward(layer_input, ld_input, <floating *> step.params[3 * k],
                                <floating *> step.params[3 * k + 1],
                                <floating *> step.params[3 * k + 2], H, ld_states,
                                layer_width(shape, k), n_hidden, n_steps, width)
        scatter_panel(H + n_steps * width, ld_states, n_valid, n_hidden,
                      finals + first * total + offset, total)
        offset += n_hidden
    # The readout's layers on every step's top states, or the last step's.
    layer_input = H + (width if every_step else n_steps * width)
    ld_input = ld_states
    n_inputs = n_top
    for j in range(n_dense):
        A = panel_dense(values, step, j, False, group)
        panel_product(shape.dense[j], n_read, n_inputs,
                      <floating *> step.params[3 * n_layers + 2 * j], 1, shape.dense[j],
                      layer_input, ld_input, <floating *> step.params[3 * n_layers + 2 * j + 1],
                      False, NULL, 0, A, n_read)
        if shape.output_tanh or j < n_dense - 1:
            tanh_rows(A, shape.dense[j], n_read, n_read)
        layer_input, ld_input, n_inputs = A, n_read, shape.dense[j]
    step.partials[group] = panel_output_loss(
        shape.loss, A, Y, panel_dense(values, step, n_dense - 1, True, group), shape.n_out,
        n_read // width, width, n_valid, n_read, step.grad_scale, shape.output_tanh)
    # Backward: the readout's layers (dz_j = W_{j+1} dz_{j+1} tanh'), dL/dh of the top layer.
    for j in range(n_dense - 2, -1, -1):
        panel_product(shape.dense[j], n_read, shape.dense[j + 1],
                      <floating *> step.params[3 * n_layers + 2 * (j + 1)], shape.dense[j + 1],
                      1, panel_dense(values, step, j + 1, True, group), n_read,
                      NULL, False, panel_dense(values, step, j, False, group),
                      n_read, panel_dense(values, step, j, True, group), n_read)
    dZ = panel_state_grads(values, step, n_layers - 1, group)
    panel_product(n_top, n_read, shape.dense[0], <floating *> step.params[3 * n_layers],
                  shape.dense[0], 1, panel_dense(values, step, 0, True, group),
                  n_read, NULL, False, NULL, 0,
                  dZ + (0 if every_step else (n_steps - 1) * width), cols)
    # Each layer's time loop, top first: dz_t = (dL/dh_t + Wh dz_{t+1}) (1 - h_t^2);
    # the layer below's dL/dH = Wx dZ over all steps.
    for k in range(n_layers - 1, -1, -1):
        n_hidden = shape.hidden[k]
        H = panel_states(values, step, k, group)
        dZ = panel_state_grads(values, step, k, group)
        panel_recurrent_backward(<floating *> step.params[3 * k + 1], H, ld_states, dZ, cols,
                                 n_hidden, n_steps, width, every_step or k < n_layers - 1)
        if k > 0:
            panel_product(shape.hidden[k - 1], n_steps * width, n_hidden,
                          <floating *> step.params[3 * k], n_hidden, 1, dZ, cols, NULL,
                          False, NULL, 0, panel_state_grads(values, step, k - 1, group), cols)
    # The gradients, from the data this task made (its core's cache): per
    # layer Wx (its input with dz_t), Wh (h_{t-1}, the group's h0 first, with
    # dz_t), b; per readout layer W, b.
    target = values + panels.group_grads + group * panels.n_params
    for param in range(3 * n_layers + 2 * n_dense):
        if panels.n_groups == 1:
            target = <floating *> step.grads[param]
        if param < 3 * n_layers:
            k = param // 3
            n_hidden = shape.hidden[k]
            dZ = panel_state_grads(values, step, k, group)
            if param % 3 == 0:
                if k == 0:
                    layer_input, ld_input = X, cols
                else:
                    layer_input = panel_states(values, step, k - 1, group) + width
                    ld_input = ld_states
                row_dots(layer_width(shape, k), n_hidden, cols, layer_input, ld_input, dZ, cols,
                         1, 0, target, n_hidden)
            elif param % 3 == 1:
                row_dots(n_hidden, n_hidden, cols, panel_states(values, step, k, group),
                         ld_states, dZ, cols, 1, 0, target, n_hidden)
            else:
                row_sums(n_hidden, cols, dZ, cols, 1, 0, target)
        else:
            j = (param - 3 * n_layers) // 2
            dZ = panel_dense(values, step, j, True, group)
            if (param - 3 * n_layers) % 2 == 1:
                row_sums(shape.dense[j], n_read, dZ, n_read, 1, 0, target)
            elif j == 0:
                row_dots(n_top, shape.dense[0], n_read,
                         panel_states(values, step, n_layers - 1, group)
                         + (width if every_step else n_steps * width), ld_states,
                         dZ, n_read, 1, 0, target, shape.dense[0])
            else:
                row_dots(shape.dense[j - 1], shape.dense[j], n_read,
                         panel_dense(values, step, j - 1, False, group), n_read, dZ, n_read,
                         1, 0, target, shape.dense[j])
        target += step.counts[param]


cdef double deep_panel_batch(floating *dtype, Batches *batches, Py_ssize_t start,
                             Py_ssize_t n_rows, const Py_ssize_t *rows,
                             const floating *h0_rows, int n_threads) noexcept nogil:
    """deep_batch in the panel layout, for a batch of full-length sequences:
    group tasks (a group of samples gathered, through every layer and step,
    back, and its share of every gradient), then the groups' gradients
    added in group order. Neither depends on the thread count. Fills the
    gradients and the batch's final states (final_batch)."""
    cdef const Shape *shape = batches.shape
    cdef const DeepPanels *panels = &batches.panels
    cdef Py_ssize_t n_steps = batches.n_steps
    cdef bint shuffled = rows != NULL
    cdef PanelStep step
    # The threads from the layout, not this batch's rows (see _lgm.pyx).
    cdef double work = panel_step_cost(shape, panels.n_groups * panels.task_width, n_steps)
    cdef double sum_squares = 0
    cdef int group_threads = threads_for(n_threads, panels.n_groups, work)
    cdef Py_ssize_t task
    cdef floating *values = <floating *> batches.panel_values
    step.X = step.Y = step.rows = NULL
    if batches.gather_each_batch or not batches.gathered:
        # Shuffled rows go straight from X and Y into the layout, each
        # group's by its task; one unshuffled batch is the same every
        # epoch: transposed once.
        step.X = <const floating *> batches.X + (0 if shuffled else start * n_steps * shape.n_in)
        step.Y = <const floating *> batches.Y + (
            0 if shuffled else start * (n_steps if shape.return_sequences else 1) * shape.n_out)
        step.rows = rows
        batches.gathered = True
    step.shape, step.panels, step.values = shape, panels, values
    step.params, step.grads, step.counts = batches.params, batches.grads, batches.counts
    step.h0_rows = h0_rows
    step.final_rows = <floating *> batches.values + batches.layout.final_batch
    step.n_rows = n_rows
    step.grad_scale = loss_scale(shape.loss,
                                 n_rows * (n_steps if shape.return_sequences else 1),
                                 shape.n_out)
    if group_threads == 1:
        for task in range(panels.n_groups):
            panel_sequence_task(dtype, &step, task)
    else:
        for task in prange(panels.n_groups, num_threads=group_threads, schedule='static'):
            panel_sequence_task(dtype, &step, task)
    if panels.n_groups > 1:
        sum_group_gradients(panels.n_groups, values + panels.group_grads, batches.grads,
                            batches.counts, 3 * shape.n_layers + 2 * shape.n_dense,
                            <floating> 1, <floating> 0, n_threads)
    for task in range(panels.n_groups):
        sum_squares += step.partials[task]
    return sum_squares
