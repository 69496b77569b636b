# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The deep STM program: stacked Elman layers (_rnn), each with an optional
reverse direction, and a readout of dense tanh layers (_dense), trained on
the squared error (_loss) by the driver of _train.

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

from lgmstm._dense cimport dense_backward, dense_forward
from lgmstm._loss cimport squared_error
from lgmstm._optim cimport Optimizer
from lgmstm._parallel cimport BLOCK_ELEMS, gemm_task_rows, n_tasks, threads_for
from lgmstm._rnn cimport (BackwardPlan, add_weight_partials, backward_chunk, backward_plan,
                          forward_chunk, forward_chunk_rows, prepare_recurrent_weight,
                          rnn_scratch_size, sequence_chunk_rows, transposed_recurrent_weight,
                          weight_grad_task, weight_partials)
from lgmstm._rows cimport gather_rows, scatter_rows
from lgmstm._train cimport (Parameters, PointerTable, Program, TrainingPlan, TrainingRun,
                            UseLock, data_or_null, parameters_of, plan_of, run_epochs)

cnp.import_array()


cdef struct Shape:
    # The architecture, as the passes take it.
    Py_ssize_t n_in, n_out, n_layers, n_directions, n_dense
    const Py_ssize_t *hidden      # (n_layers,) each layer's state size
    const Py_ssize_t *dense       # (n_dense,) each readout layer's size, the output last
    Py_ssize_t total_hidden       # the sum of hidden: a row of the packed states
    bint output_tanh, return_sequences


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


cdef struct Batches:
    # What deep_batch needs: the network, the data and the workspace.
    size_t itemsize
    const Shape *shape
    void **params
    void **grads
    Py_ssize_t n_steps
    const void *X
    const void *Y
    const Py_ssize_t *lengths
    const void *h0_all      # (n_samples, total_hidden) or NULL (zeros)
    void *final_all         # (n_samples, total_hidden) OUT, or NULL
    void *values            # the workspace (Layout)
    Py_ssize_t *indices     # lengths of the batch, then the time loops' order
    double *partials
    Layout layout


cdef class DeepNetwork(Program):
    """A deep STM's parameters and architecture, as the passes take them;
    built once per model.

    params: per layer, the forward direction's Wx, Wh, b, then the reverse
    direction's; then each readout layer's W, b (lgmstm/stm.py names them);
    hidden: intp array of the layers' sizes; dense: intp array of the
    readout layers' sizes, the output layer last; lock: the model's UseLock.
    """
    cdef readonly object hidden_sizes, dense_sizes, param_counts
    cdef Shape shape
    cdef const Py_ssize_t *counts

    def __cinit__(self, list params, Py_ssize_t n_in, hidden, dense,
                  Py_ssize_t n_directions, bint output_tanh, bint return_sequences,
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
        self.shape.output_tanh, self.shape.return_sequences = output_tanh, return_sequences
        self.lock = lock
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
        layer's GEMM tasks (gemm_task_rows rows, n_steps of them per sample
        with return_sequences) must start at the same samples."""
        cdef Py_ssize_t k, j, rows, n_inputs, quantum = 1
        cdef Py_ssize_t per_sample = max(1, n_steps) if self.shape.return_sequences else 1
        for k in range(self.shape.n_layers):
            quantum = math.lcm(quantum, forward_chunk_rows(self.shape.hidden[k]))
        n_inputs = layer_width(&self.shape, self.shape.n_layers)
        for j in range(self.shape.n_dense):
            rows = gemm_task_rows(self.shape.dense[j], n_inputs)
            quantum = math.lcm(quantum, rows // math.gcd(rows, per_sample))
            n_inputs = self.shape.dense[j]
        return quantum

    def workspace_sizes(self, Py_ssize_t n_rows, Py_ssize_t n_steps):
        """(values of the dtype, intp values, float64 values) of the
        workspace of batches of up to n_rows sequences of n_steps."""
        cdef Layout layout = layout_of(&self.shape, n_rows, n_steps)
        cdef Py_ssize_t n_outputs = n_rows * (n_steps if self.shape.return_sequences else 1)
        return (layout.n_values, (1 + self.shape.n_directions) * n_rows,
                max(1, n_tasks(n_outputs * self.shape.n_out, BLOCK_ELEMS)))

    def gradients(self, TrainingRun run, int n_threads):
        """One batch on all of run's samples, in order: fill run.grads and
        return the sum of squares (see train for run)."""
        cdef Batches batches
        cdef double sum_squares
        cdef Py_ssize_t n_samples = cnp.PyArray_DIMS(<cnp.ndarray> run.X)[0]
        self._batches(run, &batches)
        with nogil:
            sum_squares = deep_batch_step(&batches, 0, n_samples, NULL, n_threads)
        return sum_squares

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

    cdef int _batches(self, TrainingRun run, Batches *batches) except -1:
        cdef Py_ssize_t n_samples = cnp.PyArray_DIMS(<cnp.ndarray> run.X)[0]
        cdef Py_ssize_t n_steps = cnp.PyArray_DIMS(<cnp.ndarray> run.X)[1]
        if run.workspace.count != 3:
            raise ValueError(f"expected 3 workspace arrays, got {run.workspace.count}")
        batches.itemsize = 8 if self.type_num == cnp.NPY_DOUBLE else 4
        batches.shape = &self.shape
        batches.params = self.params.data
        batches.grads = run.grads.data
        batches.n_steps = n_steps
        batches.X = cnp.PyArray_DATA(<cnp.ndarray> run.X)
        batches.Y = cnp.PyArray_DATA(<cnp.ndarray> run.Y)
        batches.lengths = <const Py_ssize_t *> cnp.PyArray_DATA(<cnp.ndarray> run.lengths)
        batches.h0_all = data_or_null(run.initial_states)
        batches.final_all = data_or_null(run.final_states)
        batches.values = run.workspace.data[0]
        batches.indices = <Py_ssize_t *> run.workspace.data[1]
        batches.partials = <double *> run.workspace.data[2]
        batches.layout = layout_of(&self.shape, min(run.batch_size, n_samples), n_steps)
        return 0

    cdef int train_run(self, TrainingRun run, const Py_ssize_t *order, double *epoch_losses,
                       Py_ssize_t n_epochs, int n_threads) except -1:
        cdef Batches batches
        cdef Parameters parameters = parameters_of(self.params, run, self.counts,
                                                   8 if self.type_num == cnp.NPY_DOUBLE else 4)
        cdef Optimizer *optimizer = &run.optimizer
        cdef TrainingPlan plan
        cdef Py_ssize_t n_samples = cnp.PyArray_DIMS(<cnp.ndarray> run.X)[0]
        cdef Py_ssize_t n_steps = cnp.PyArray_DIMS(<cnp.ndarray> run.X)[1]
        cdef const Py_ssize_t *lengths = <const Py_ssize_t *> cnp.PyArray_DATA(
            <cnp.ndarray> run.lengths)
        cdef Py_ssize_t i, n_valid = n_samples
        self._batches(run, &batches)
        if self.shape.return_sequences:
            n_valid = 0
            for i in range(n_samples):
                n_valid += lengths[i]
        plan = plan_of(run, order, epoch_losses, n_epochs, n_samples,
                       max(1, n_valid * self.shape.n_out), False)
        with nogil:
            run_epochs(deep_batch_step, &batches, &parameters, &plan, optimizer, n_threads)
        return 0


cdef double deep_batch_step(void *batches, Py_ssize_t start, Py_ssize_t n_rows,
                            const Py_ssize_t *rows, int n_threads) noexcept nogil:
    """The BatchStep: deep_batch in the batch's dtype."""
    if (<Batches *> batches).itemsize == sizeof(double):
        return deep_batch(<double *> NULL, <Batches *> batches, start, n_rows, rows,
                          n_threads)
    return deep_batch(<float *> NULL, <Batches *> batches, start, n_rows, rows, n_threads)


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


cdef inline Py_ssize_t forward_rows(const Shape *shape, Py_ssize_t n_rows,
                                    Py_ssize_t k) noexcept nogil:
    """Samples per forward chunk of layer k in training: the forward pass's
    (forward_chunk_rows), or the backward pass's shorter chunks when those
    leave the threads a single task. From the shapes alone."""
    cdef Py_ssize_t rows = forward_chunk_rows(shape.hidden[k])
    if shape.n_directions * n_tasks(n_rows, rows) < 2:
        rows = sequence_chunk_rows(n_rows, shape.hidden[k])
    return rows


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
                  step.orders + d * n_rows, n_rows, n_steps, width, n_hidden)
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
    fills the gradients, returns the batch's sum of squares; dtype only
    picks the fused specialisation.

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
    cdef Py_ssize_t k, d, j, i, width, n_hidden, param, n_dense_in, task, chunk_rows
    cdef Py_ssize_t n_chunk_tasks, n_region_tasks
    cdef double sum_squares, work
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
        chunk_rows = forward_rows(shape, n_rows, k)
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
        for i in range(n_rows):
            memset(outputs + (i * n_steps + length_rows[i]) * n_out, 0,
                   (n_steps - length_rows[i]) * n_out * sizeof(floating))
    n_dense_in = 0
    if every_step:
        for i in range(n_rows):
            n_dense_in += length_rows[i]
    else:
        n_dense_in = n_rows
    dA = values + layout.grad_a
    sum_squares = squared_error(outputs, Y_rows, dA, readout_rows * n_out,
                                1.0 / max(1, n_dense_in * n_out), batches.partials, n_threads)
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
                       shape.output_tanh or j < shape.n_dense - 1, n_threads)
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
