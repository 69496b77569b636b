# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The LGM program: a network of dense tanh layers (_dense) with the loss of
its output (_loss: squared error, softmax or sigmoid cross-entropy, each
optionally weighted per sample), trained by the driver of _train.

A network of n_layers layers has layer_sizes [n_in, n_1, ..., n_out] and its
parameters in one list [W_0, b_0, W_1, b_1, ...]; W_l is (sizes[l], sizes[l+1]).

Training takes one of two layouts, chosen from the shapes (panel_plan):
- row-major, with BLAS (network_gradients): batches whose products are big
  enough for BLAS to run near its peak;
- the panel layout of _panel.pxd (panel_network_gradients): small networks,
  whose products BLAS runs at a few GFLOP/s. Groups of samples go through
  the whole step in parallel tasks, each summing its own samples' weight
  gradients, which are then added in group order. The
  panel layout takes unweighted losses only (and the cross-entropies over at
  most PANEL_LOSS_MAX_OUT outputs: _loss.panel_takes); sample weights train
  row-major.

Unchecked: call it through lgmstm.LGM, which validates shapes, dtypes and
layouts once and allocates every buffer.
"""
import math

cimport numpy as cnp
import numpy as np
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport NAN
from libc.stdlib cimport free, malloc

from lgmstm._dense cimport dense_backward, dense_forward, dense_stack_gradients
from lgmstm._optim cimport SGD, Optimizer
from lgmstm._panel cimport (GRADIENT_STRIPE_ROWS, MAX_PANEL_GROUPS, PANEL_MAX_WORK,
                            add_weight_gradient, finish_weight_gradient, gather_into_group,
                            group_block, group_panels, padded_width, panel_product, row_sums,
                            sample_major_gradient, sum_group_gradients, transpose_to_panels)
from lgmstm._parallel cimport (BLAS_THREADING_WORK, BLOCK_ELEMS, CHUNK_ROWS, GIL_HELD_WORK,
                               SHORT_FIT_WORK, gemm_task_rows, n_tasks, threads_for)
from lgmstm._loss cimport (SQUARED_ERROR, loss_of_output, loss_scale, output_loss,
                           output_loss_blocks, output_rows, panel_output_loss, panel_takes,
                           squared_error, weight_sum)
from lgmstm._rows cimport gather_rows
from lgmstm._tanh cimport tanh_rows
from lgmstm._train cimport (INVSCALING, BatchStep, KeptMemory, Parameters, PointerTable, Program,
                            TrainingPlan, TrainingRun, UseLock, data_or_null, is_ready_matrix,
                            kernel_threads, parameters_of, plan_of, run_training)

cnp.import_array()


cdef enum:
    # Layers the fast path of predict keeps its pointers for on the stack.
    MAX_FAST_LAYERS = 16


cdef class Network(Program):
    """A network's parameters and architecture, as the compiled passes take
    them; built once per model.

    params: [W_0, b_0, W_1, b_1, ...], C-contiguous, one dtype; layer_sizes:
    intp array [n_in, n_1, ..., n_out]; output: the last layer's
    activation and loss, "tanh" or "linear" (squared error), "softmax" or
    "sigmoid" (cross-entropy on the logits; predict applies the function);
    hidden layers are tanh; lock: the model's UseLock.
    """
    cdef readonly object layer_sizes
    cdef const Py_ssize_t *sizes
    cdef Py_ssize_t n_layers
    cdef object counts    # values per parameter, intp
    cdef const Py_ssize_t *count_data  # counts' values (the array lives as long)
    cdef Py_ssize_t largest_weight, widest_layer
    cdef Py_ssize_t weights   # multiply-adds per sample of a forward pass

    def __cinit__(self, list params, layer_sizes, str output, UseLock lock):
        cdef const Py_ssize_t[::1] sizes = layer_sizes
        cdef Py_ssize_t layer
        self.params = PointerTable(params)
        self.layer_sizes = layer_sizes
        self.sizes = &sizes[0]
        self.n_layers = sizes.shape[0] - 1
        self.output = output
        self.output_tanh = output == "tanh"
        self.loss = loss_of_output(output)
        self.n_out = sizes[self.n_layers]
        self.lock = lock
        self.panel_memory = KeptMemory()
        self.counts = np.array([p.size for p in params], dtype=np.intp)
        self.count_data = <const Py_ssize_t *> cnp.PyArray_DATA(<cnp.ndarray> self.counts)
        self.type_num = cnp.PyArray_TYPE(<cnp.ndarray> params[0])
        self.largest_weight = self.widest_layer = self.weights = 0
        for layer in range(self.n_layers + 1):
            self.widest_layer = max(self.widest_layer, sizes[layer])
            if layer < self.n_layers:
                self.largest_weight = max(self.largest_weight, sizes[layer] * sizes[layer + 1])
                self.weights += sizes[layer] * sizes[layer + 1]

    cpdef Py_ssize_t blas_work(self, Py_ssize_t n_samples):
        """Multiply-adds of the largest GEMM a task of a pass on n_samples
        samples does: what decides whether BLAS may thread (single_threaded_blas)."""
        return CHUNK_ROWS * max(self.largest_weight, n_samples * self.widest_layer)

    def row_quantum(self):
        """The fewest samples q such that predict over consecutive pieces of
        a batch, each (but the last) of a multiple of q samples, gives every
        sample the bits of one predict over the whole batch: every layer's
        GEMM tasks (dense_forward: gemm_task_rows rows) start at the same
        samples (lgmstm.dask.predict)."""
        cdef Py_ssize_t layer
        quantum = 1
        for layer in range(self.n_layers):
            quantum = math.lcm(quantum, gemm_task_rows(self.sizes[layer + 1], self.sizes[layer]))
        return quantum

    def predict_ready(self, X):
        """The outputs for X, or None when the caller must take its checked path.

        The fast path of LGM.predict: X must already be an ndarray of the
        parameters' dtype, of shape (n_samples >= 1, n_in), C-contiguous and
        aligned; the call small enough that BLAS never threads (then no
        guard is needed); and no other thread training the model. Checked
        here, in a few nanoseconds; anything else returns None.
        """
        cdef cnp.ndarray array
        cdef cnp.npy_intp dims[2]
        cdef void *outputs[MAX_FAST_LAYERS]
        cdef list activations
        cdef Py_ssize_t layer, n_samples
        cdef int n_threads
        if (self.n_layers > MAX_FAST_LAYERS
                or not is_ready_matrix(X, self.type_num, -1, self.sizes[0])):
            return None
        array = <cnp.ndarray> X
        n_samples = cnp.PyArray_DIMS(array)[0]
        if self.blas_work(n_samples) >= BLAS_THREADING_WORK:
            return None
        if not self.lock.try_read():
            return None
        try:
            activations = []
            dims[0] = n_samples
            for layer in range(self.n_layers):
                dims[1] = self.sizes[layer + 1]
                activations.append(cnp.PyArray_EMPTY(2, dims, self.type_num, 0))
                outputs[layer] = cnp.PyArray_DATA(<cnp.ndarray> activations[layer])
            n_threads = kernel_threads()
            if n_samples * self.weights < GIL_HELD_WORK:
                self._predict_into(array, n_samples, outputs, n_threads)
            else:
                with nogil:
                    self._predict_into(array, n_samples, outputs, n_threads)
        finally:
            self.lock.end_read()
        return activations[self.n_layers - 1]

    cdef void _predict_into(self, cnp.ndarray array, Py_ssize_t n_samples, void **outputs,
                            int n_threads) noexcept nogil:
        """predict_ready's forward pass and output function, in the
        parameters' dtype: the prediction to outputs[n_layers - 1]."""
        cdef Py_ssize_t n_out = self.sizes[self.n_layers]
        if self.type_num == cnp.NPY_DOUBLE:
            network_forward(<double *> cnp.PyArray_DATA(array), n_samples, self.params.data,
                            self.sizes, self.n_layers, self.output_tanh, outputs, n_threads)
            output_rows(self.loss, <double *> outputs[self.n_layers - 1], n_samples, n_out)
        else:
            network_forward(<float *> cnp.PyArray_DATA(array), n_samples, self.params.data,
                            self.sizes, self.n_layers, self.output_tanh, outputs, n_threads)
            output_rows(self.loss, <float *> outputs[self.n_layers - 1], n_samples, n_out)

    def predict(self, const floating[:, ::1] X, list activations, int n_threads,
                bint logits=False):
        """Fill activations (OUT: one (n_samples, sizes[l + 1]) array per
        layer); the last one is the prediction (probabilities for softmax
        and sigmoid outputs; their logits with logits=True)."""
        cdef PointerTable outputs = PointerTable(activations)
        with nogil:
            network_forward(&X[0, 0], X.shape[0], self.params.data, self.sizes,
                            self.n_layers, self.output_tanh, outputs.data, n_threads)
            if not logits:
                output_rows(self.loss, <floating *> outputs.data[self.n_layers - 1],
                            X.shape[0], self.sizes[self.n_layers])

    def gradients(self, const floating[:, ::1] X, const floating[:, ::1] Y, list grads,
                  list activations, list deltas, double[::1] partials, int n_threads,
                  const double[::1] weights=None):
        """Fill grads (OUT, laid out as params) with the gradient of the
        loss (the mean over the samples, weighted by weights (n_samples,)
        when given: see _loss.pxd), and return it; activations and deltas
        are scratch shaped as predict's, partials partials_size(n_samples)
        doubles."""
        cdef PointerTable grad_table = PointerTable(grads)
        cdef PointerTable activation_table = PointerTable(activations)
        cdef PointerTable delta_table = PointerTable(deltas)
        cdef const double *weight_data = NULL if weights is None else &weights[0]
        cdef double total, scale
        with nogil:
            scale = loss_scale(self.loss, weight_sum(weight_data, X.shape[0]), Y.shape[1])
            total = network_gradients(
                &X[0, 0], &Y[0, 0], X.shape[0], self.params.data, grad_table.data,
                self.sizes, self.n_layers, self.output_tanh, self.loss, weight_data,
                activation_table.data, delta_table.data, &partials[0], 0, n_threads)
        return total * scale

    def validation_data(self, X_val, Y_val, weights_val=None):
        """What a TrainingRun's validation holds for the validation set
        (X_val, Y_val), C-contiguous in the model's dtype, with the
        samples' weights weights_val (float64 (n_val,), or None: all 1):
        the data, the scratch of its forward pass and loss (one (n_val,
        sizes[l + 1]) array per layer, the loss's gradient (n_val, n_out),
        its partial sums) and the weights."""
        cdef Py_ssize_t n_val = X_val.shape[0], n_out = self.sizes[self.n_layers]
        scratch = [np.empty((n_val, self.sizes[layer + 1]), X_val.dtype)
                   for layer in range(self.n_layers)]
        scratch.append(np.empty((n_val, n_out), X_val.dtype))
        scratch.append(np.empty(max(n_tasks(n_val * n_out, BLOCK_ELEMS),
                                    output_loss_blocks(n_val))))
        return (X_val, Y_val, PointerTable(scratch), weights_val)

    def mean_loss(self, X, Y, weights, int n_threads):
        """The (weighted) mean loss of the network's outputs on (X, Y)
        (C-contiguous, the model's dtype; weights float64 (n_samples,) or
        None): the validation loss of the training driver, the same
        function (network_loss), so that a model restored on its best epoch
        reproduces that epoch's validation loss to the bit."""
        cdef tuple data = self.validation_data(X, Y, weights)
        cdef PointerTable scratch = data[2]
        cdef const void *X_data = cnp.PyArray_DATA(<cnp.ndarray> X)
        cdef const void *Y_data = cnp.PyArray_DATA(<cnp.ndarray> Y)
        cdef const double *weight_data = <const double *> data_or_null(weights)
        cdef Py_ssize_t n_samples = X.shape[0]
        cdef double value
        with nogil:
            if self.type_num == cnp.NPY_DOUBLE:
                value = network_loss(<const double *> X_data, <const double *> Y_data,
                                     weight_data, n_samples, self.params.data, self.sizes,
                                     self.n_layers, self.output_tanh, self.loss,
                                     scratch.data, n_threads)
            else:
                value = network_loss(<const float *> X_data, <const float *> Y_data,
                                     weight_data, n_samples, self.params.data, self.sizes,
                                     self.n_layers, self.output_tanh, self.loss,
                                     scratch.data, n_threads)
        return value

    def train(self, TrainingRun run, const Py_ssize_t[:, ::1] order,
              double[::1] epoch_losses, int n_threads):
        """Train for epoch_losses.shape[0] epochs of mini-batch updates.

        run: the data (X, Y) and the training arrays; its workspace is
        [X_batch (batch_size, n_in), Y_batch (batch_size, n_out), partials
        (partials_size(batch_size),) float64, activations and deltas (one
        (batch_size, sizes[l + 1]) array per layer each)]. order[e] is the
        sample order of epoch e; with no rows, samples are taken in their
        natural order. Sets epoch_losses[e] (OUT) to the mean squared error
        over epoch e, each batch measured before its update; returns the
        updates done so far (run.step).

        Small networks train in the panel layout, in a workspace the
        network keeps from one call to the next (KeptMemory); the others in
        the row-major workspace.
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
        cdef Py_ssize_t n_samples, group_width, n_groups
        if (h0 is not None or not is_ready_matrix(X, self.type_num, -1, self.sizes[0])):
            return -1
        n_samples = cnp.PyArray_DIMS(<cnp.ndarray> X)[0]
        if (not is_ready_matrix(Y, self.type_num, n_samples, self.sizes[self.n_layers])
                or self.blas_work(batch_size) >= BLAS_THREADING_WORK
                or 3.0 * n_samples * self.weights > SHORT_FIT_WORK):
            return -1
        self.short_work = 3.0 * n_samples * self.weights
        self.short_checks_data = trains_in_panels(
            self.loss, NULL, min(batch_size, n_samples), self.sizes, self.n_layers,
            sizeof(double) if self.type_num == cnp.NPY_DOUBLE else sizeof(float),
            &group_width, &n_groups)
        return 0


cdef void network_forward(const floating *X, Py_ssize_t n_samples,
                          void **params, const Py_ssize_t *sizes,
                          Py_ssize_t n_layers, bint output_tanh,
                          void **activations, int n_threads) noexcept nogil:
    """activations[l] = layer l's output; the last one is the prediction."""
    cdef const floating *layer_input = X
    cdef Py_ssize_t layer
    for layer in range(n_layers):
        dense_forward(layer_input, <floating *> params[2 * layer],
                      <floating *> params[2 * layer + 1],
                      <floating *> activations[layer], n_samples,
                      sizes[layer], sizes[layer + 1],
                      output_tanh or layer < n_layers - 1, n_threads)
        layer_input = <floating *> activations[layer]


cdef double network_gradients(const floating *X, const floating *Y,
                              Py_ssize_t n_samples, void **params,
                              void **grads, const Py_ssize_t *sizes,
                              Py_ssize_t n_layers, bint output_tanh, int loss,
                              const double *weights, void **activations, void **deltas,
                              double *partials, double sgd_lr,
                              int n_threads) noexcept nogil:
    """Forward, loss and backward over one batch; returns its summed loss
    (weighted by weights (n_samples,), or NULL: all 1).

    With sgd_lr == 0, fills grads (laid out as params) with the gradient of
    the batch's mean loss (loss_scale). With sgd_lr > 0, grads is ignored and
    each layer takes its SGD step params -= sgd_lr * grad once its W is no
    longer needed: as soon as its gradient is known layer by layer, after
    every sample task in dense_stack_gradients (the unweighted squared error).
    deltas[l] is scratch shaped like activations[l].
    """
    cdef Py_ssize_t n_out = sizes[n_layers]
    cdef Py_ssize_t layer
    cdef double sum_squares
    cdef void **targets = params if sgd_lr > 0 else grads
    cdef floating scale = <floating> -sgd_lr if sgd_lr > 0 else 1
    cdef floating beta = 1 if sgd_lr > 0 else 0
    cdef const floating *last_input
    if loss == SQUARED_ERROR and weights == NULL:
        # The hot path: the whole step in two parallel regions, the last
        # layer and the loss fused per chunk of rows.
        return dense_stack_gradients(X, Y, n_samples, params, targets, sizes, n_layers,
                                     output_tanh, activations, deltas, partials, scale,
                                     beta, n_threads)
    network_forward(X, n_samples, params, sizes, n_layers - 1, True,
                    activations, n_threads)
    last_input = X if n_layers == 1 else <floating *> activations[n_layers - 2]
    dense_forward(last_input, <floating *> params[2 * n_layers - 2],
                  <floating *> params[2 * n_layers - 1],
                  <floating *> activations[n_layers - 1], n_samples,
                  sizes[n_layers - 1], n_out, output_tanh, n_threads)
    sum_squares = output_loss(
        loss, <floating *> activations[n_layers - 1], Y, weights,
        <floating *> deltas[n_layers - 1], n_samples, n_out,
        loss_scale(loss, weight_sum(weights, n_samples), n_out), partials, n_threads)
    # Each layer's dX takes the hidden layer's tanh derivative as it is made
    # (input_tanh): the layer below gets its dZ, and no pass of its own.
    for layer in range(n_layers - 1, -1, -1):
        dense_backward(
            X if layer == 0 else <floating *> activations[layer - 1],
            <floating *> params[2 * layer], <floating *> activations[layer],
            <floating *> deltas[layer], <floating *> deltas[layer],
            NULL if layer == 0 else <floating *> deltas[layer - 1],
            <floating *> targets[2 * layer], <floating *> targets[2 * layer + 1],
            scale, beta, n_samples, sizes[layer], sizes[layer + 1],
            layer == n_layers - 1 and output_tanh, layer > 0, n_threads)
    return sum_squares



cdef inline double step_flops(Py_ssize_t n_rows, const Py_ssize_t *sizes,
                             Py_ssize_t n_layers) noexcept nogil:
    """Flops of a training step on n_rows samples: 2 per weight and sample
    forward, 4 backward."""
    cdef double work = 0
    cdef Py_ssize_t layer
    for layer in range(n_layers):
        work += 6.0 * n_rows * sizes[layer] * sizes[layer + 1]
    return work


cdef inline bint panel_plan(Py_ssize_t n_rows, const Py_ssize_t *sizes,
                            Py_ssize_t n_layers, size_t itemsize,
                            Py_ssize_t *group_width, Py_ssize_t *n_groups) noexcept nogil:
    """Whether batches of up to n_rows samples train in the panel layout,
    and its sample groups (see _panel.pxd); from the shapes alone."""
    cdef double work = step_flops(n_rows, sizes, n_layers)
    cdef Py_ssize_t panel = padded_width(1, itemsize)
    group_width[0] = panel * group_panels(n_tasks(n_rows, panel), panel, work)
    n_groups[0] = max(1, n_tasks(n_rows, group_width[0]))
    return work < PANEL_MAX_WORK


cdef inline bint trains_in_panels(int loss, const double *weights, Py_ssize_t n_rows,
                                  const Py_ssize_t *sizes, Py_ssize_t n_layers,
                                  size_t itemsize, Py_ssize_t *group_width,
                                  Py_ssize_t *n_groups) noexcept nogil:
    """Whether a fit's batches of up to n_rows samples train in the panel
    layout: its loss and weights (panel_takes) and its shapes (panel_plan,
    which sets the groups) allow it. Once for train_network, and for
    ready_steps, which must know whether the short fit's epoch will check
    its data as it gathers it."""
    return (panel_takes(loss, sizes[n_layers], weights)
            and panel_plan(n_rows, sizes, n_layers, itemsize, group_width, n_groups))


def _training_layout(Py_ssize_t n_rows, const Py_ssize_t[::1] layer_sizes,
                    Py_ssize_t itemsize):
    """(n_groups, group_width) of the panel layout batches of n_rows train
    in, or None when they train row-major with BLAS. For the tests."""
    cdef Py_ssize_t group_width, n_groups
    if panel_plan(n_rows, &layer_sizes[0], layer_sizes.shape[0] - 1, itemsize,
                  &group_width, &n_groups):
        return n_groups, group_width
    return None


cdef struct PanelBatch:
    # The batch a panel-layout step gathers (each sample task its own group's
    # columns), or X NULL when Xt and Yt already hold it.
    const void *X
    const void *Y
    const Py_ssize_t *rows   # the batch's rows of X and Y, or NULL: the first n_rows


cdef void panel_sample_task(
        Py_ssize_t group, Py_ssize_t group_width, Py_ssize_t n_rows, const PanelBatch *batch,
        floating *Xt, floating *Yt, void **params, void **targets, const Py_ssize_t *sizes,
        Py_ssize_t n_layers, bint output_tanh, int loss, floating **activations,
        floating **deltas, floating **deltas_t, floating **products, floating *group_grads,
        floating scale, floating beta, double *partials, bint *finite) noexcept nogil:
    """One group of samples through the whole step, in its own block of each
    group-major buffer (group_block), group_width columns a row: gather
    (when batch.X is set), forward, loss, every layer's dZ, and the group's
    share of the gradients: into group_grads (every layer's W then b, packed)
    when it is not NULL, else (the only group) targets = scale * gradient +
    beta * targets."""
    cdef Py_ssize_t first = group * group_width, padded, n_weights, row, n_stripe
    cdef Py_ssize_t n_valid = min(group_width, max(0, n_rows - first))
    cdef Py_ssize_t n_in = sizes[0], n_out = sizes[n_layers]
    cdef floating *X_group = group_block(Xt, group, n_in, group_width)
    cdef floating *Y_group = group_block(Yt, group, n_out, group_width)
    cdef const floating *layer_input = X_group
    cdef floating *layer_output = NULL  # set by the first layer (n_layers >= 1)
    cdef floating *layer_deltas
    cdef floating *weight_target
    cdef floating *bias_target
    cdef floating *product
    # A share of several groups is summed plainly; the only group's is the step.
    cdef floating part_scale = 1 if group_grads != NULL else scale
    cdef floating part_beta = 0 if group_grads != NULL else beta
    cdef Py_ssize_t layer
    if batch.X != NULL:
        finite[group] = (
            gather_into_group(<const floating *> batch.X, batch.rows, n_rows, 1, n_in,
                              X_group, group_width, group)
            & gather_into_group(<const floating *> batch.Y, batch.rows, n_rows, 1, n_out,
                                Y_group, group_width, group))
    for layer in range(n_layers):
        layer_output = group_block(activations[layer], group, sizes[layer + 1], group_width)
        panel_product(sizes[layer + 1], group_width, sizes[layer],
                      <floating *> params[2 * layer], 1, sizes[layer + 1], layer_input,
                      group_width, <floating *> params[2 * layer + 1], False, NULL, 0,
                      layer_output, group_width)
        if output_tanh or layer < n_layers - 1:
            tanh_rows(layer_output, sizes[layer + 1], group_width, group_width)
        layer_input = layer_output
    partials[group] = panel_output_loss(
        loss, layer_output, Y_group,
        group_block(deltas[n_layers - 1], group, n_out, group_width), n_out, 1, group_width,
        n_valid, group_width, loss_scale(loss, n_rows, n_out), output_tanh)
    # dZ below = (W dZ) (1 - A^2): hidden layers are tanh.
    for layer in range(n_layers - 1, 0, -1):
        panel_product(sizes[layer], group_width, sizes[layer + 1],
                      <floating *> params[2 * layer], sizes[layer + 1], 1,
                      group_block(deltas[layer], group, sizes[layer + 1], group_width),
                      group_width, NULL, False,
                      group_block(activations[layer - 1], group, sizes[layer], group_width),
                      group_width,
                      group_block(deltas[layer - 1], group, sizes[layer], group_width),
                      group_width)
    # The gradients, from the data this task made (its core's cache).
    layer_input = X_group
    for layer in range(n_layers):
        padded = padded_width(sizes[layer + 1], sizeof(floating))
        n_weights = sizes[layer] * sizes[layer + 1]
        layer_deltas = group_block(deltas[layer], group, sizes[layer + 1], group_width)
        product = products[layer] + group * GRADIENT_STRIPE_ROWS * padded
        if sample_major_gradient(sizes[layer + 1], sizeof(floating)):
            transpose_to_panels(layer_deltas, sizes[layer + 1], group_width, group_width,
                                deltas_t[layer] + first * padded, padded)
        if group_grads != NULL:
            weight_target, bias_target = group_grads, group_grads + n_weights
            group_grads += n_weights + sizes[layer + 1]
        else:
            weight_target = <floating *> targets[2 * layer]
            bias_target = <floating *> targets[2 * layer + 1]
        row = 0
        while row < sizes[layer]:
            n_stripe = min(<Py_ssize_t> GRADIENT_STRIPE_ROWS, sizes[layer] - row)
            add_weight_gradient(n_stripe, sizes[layer + 1], group_width,
                                layer_input + row * group_width, group_width, layer_deltas,
                                group_width, deltas_t[layer] + first * padded, True,
                                part_scale, part_beta, product,
                                weight_target + row * sizes[layer + 1])
            finish_weight_gradient(n_stripe, sizes[layer + 1], product, part_scale, part_beta,
                                   weight_target + row * sizes[layer + 1])
            row += GRADIENT_STRIPE_ROWS
        row_sums(sizes[layer + 1], group_width, layer_deltas, group_width,
                 part_scale, part_beta, bias_target)
        layer_input = group_block(activations[layer], group, sizes[layer + 1], group_width)


cdef double panel_network_gradients(
        const PanelBatch *batch, floating *Xt, floating *Yt, Py_ssize_t n_rows,
        Py_ssize_t group_width, Py_ssize_t n_groups, void **params, void **targets,
        const Py_ssize_t *sizes, const Py_ssize_t *counts, Py_ssize_t n_layers,
        bint output_tanh, int loss, floating **activations, floating **deltas,
        floating **deltas_t, floating **products, floating *group_grads, floating scale,
        floating beta, int n_threads) noexcept nogil:
    """network_gradients in the panel layout, unweighted; returns the summed
    loss (NaN when the batch it gathered was not finite).

    Xt (n_in, width) and Yt (n_out, width) hold a batch of n_rows samples, or
    the sample tasks gather it there from batch; width = n_groups *
    group_width. Xt, Yt, activations[l] and deltas[l] ((sizes[l + 1],
    width)) are group-major: each group's rows are one run (group_block);
    deltas_t[l] is (width, padded sizes[l + 1]), products[l] n_groups of
    (GRADIENT_STRIPE_ROWS, padded sizes[l + 1]) and group_grads n_groups of every
    parameter, packed (counts: each W's and b's values). Sets targets =
    scale * gradient + beta * targets: (1, 0) with targets = grads gives the
    gradients, (-lr, 1) with targets = params an SGD step.

    A sample task takes a group through the whole step, its gradients too,
    so that each thread works on the data it wrote; then the groups'
    gradients are added in group order (one group: the task sets targets
    itself). Group-major, not a row per unit across every group: with the
    groups side by side in each row, each core's hardware prefetcher ran on
    into the next group's columns, which the other core was writing, and
    two threads took longer than one; so did weight tasks reading every
    group's activations after the sample tasks had written them.
    """
    # The threads from the layout, not this batch's rows: a short last batch
    # on fewer threads would move a group's buffers to another core and back.
    cdef double work = step_flops(n_groups * group_width, sizes, n_layers)
    cdef double partials[MAX_PANEL_GROUPS]
    cdef bint finite[MAX_PANEL_GROUPS]
    cdef double sum_squares = 0
    cdef bint all_finite = True
    cdef Py_ssize_t task, n_params = 0
    cdef int sample_threads = threads_for(n_threads, n_groups, work)
    for task in range(2 * n_layers):
        n_params += counts[task]
    if sample_threads == 1:
        for task in range(n_groups):
            panel_sample_task(task, group_width, n_rows, batch, Xt, Yt, params, targets, sizes,
                              n_layers, output_tanh, loss, activations, deltas, deltas_t,
                              products, group_grads + task * n_params if n_groups > 1 else NULL,
                              scale, beta, partials, finite)
    else:
        for task in prange(n_groups, num_threads=sample_threads, schedule='static'):
            panel_sample_task(task, group_width, n_rows, batch, Xt, Yt, params, targets, sizes,
                              n_layers, output_tanh, loss, activations, deltas, deltas_t,
                              products, group_grads + task * n_params if n_groups > 1 else NULL,
                              scale, beta, partials, finite)
    if n_groups > 1:
        sum_group_gradients(n_groups, group_grads, targets, counts, 2 * n_layers, scale, beta,
                            n_threads)
    for task in range(n_groups):
        sum_squares += partials[task]
        if batch.X != NULL:
            all_finite &= finite[task]
    return sum_squares if all_finite else NAN


cdef struct Batches:
    # What lgm_batch needs: the network, the data and the workspace.
    size_t itemsize         # of the dtype: 4 or 8
    void **params
    void **targets          # where the backward pass writes: grads, or params (fused SGD)
    const Py_ssize_t *sizes
    const Py_ssize_t *counts    # each parameter's values
    Py_ssize_t n_layers, n_in, n_out
    bint output_tanh
    int loss                # the loss code (_loss.pxd)
    const double *weights   # the samples' weights (n_samples,), or NULL: all 1
    double *batch_weights   # scratch (batch_size,): a shuffled batch's weights
    # SGD fused into the backward pass: the optimizer's lr (a schedule changes
    # it only between epochs), else NULL
    const double *sgd_lr
    const void *X
    const void *Y
    void **workspace        # see Network.train
    double *partials
    # The validation set (Network.validation_data), or n_val 0.
    const void *X_val
    const void *Y_val
    Py_ssize_t n_val
    const double *validation_weights   # (n_val,), or NULL: all 1
    void **validation_scratch
    # The panel layout (in_panel_layout), its groups, Xt, Yt and per layer its
    # activations, deltas, sample-major deltas and products (panel_rows[0 ..
    # 4 n_layers - 1]), then the groups' gradient sums (panel_rows[4 n_layers]).
    bint in_panel_layout, gather_each_batch, gathered
    Py_ssize_t group_width, n_groups
    void *Xt
    void *Yt
    void **panel_rows


cdef double lgm_batch(floating *dtype, Batches *batches, Py_ssize_t start, Py_ssize_t n_rows,
                      const Py_ssize_t *rows, int n_threads) noexcept nogil:
    """One batch of the LGM (see BatchStep in _train.pxd); dtype only picks
    the fused specialisation."""
    cdef const floating *X = <const floating *> batches.X
    cdef const floating *Y = <const floating *> batches.Y
    cdef Py_ssize_t n_in = batches.n_in, n_out = batches.n_out, n_layers = batches.n_layers
    cdef floating **panel_rows = <floating **> batches.panel_rows
    cdef const floating *X_rows
    cdef const floating *Y_rows
    cdef const double *weight_rows = NULL
    cdef double sgd_lr = batches.sgd_lr[0] if batches.sgd_lr != NULL else 0
    cdef floating scale = <floating> -sgd_lr if sgd_lr > 0 else 1
    cdef floating beta = 1 if sgd_lr > 0 else 0
    cdef PanelBatch batch
    if batches.in_panel_layout:
        # One unshuffled batch is the same every epoch: transposed once (by
        # the sample tasks, each its own group), and checked (a non-finite
        # value makes the batch's loss NaN: see Program.fit_ready, which may
        # leave the check to this).
        batch.X = batch.Y = batch.rows = NULL
        if batches.gather_each_batch or not batches.gathered:
            batch.X = X if rows != NULL else X + start * n_in
            batch.Y = Y if rows != NULL else Y + start * n_out
            batch.rows = rows
            batches.gathered = True
        return panel_network_gradients(
            &batch, <floating *> batches.Xt, <floating *> batches.Yt, n_rows,
            batches.group_width, batches.n_groups, batches.params, batches.targets,
            batches.sizes, batches.counts, n_layers, batches.output_tanh, batches.loss, panel_rows,
            panel_rows + n_layers, panel_rows + 2 * n_layers, panel_rows + 3 * n_layers,
            panel_rows[4 * n_layers], scale, beta, n_threads)
    if rows != NULL:
        gather_rows(<const char *> X, rows, n_rows, n_in * sizeof(floating),
                    <char *> batches.workspace[0])
        gather_rows(<const char *> Y, rows, n_rows, n_out * sizeof(floating),
                    <char *> batches.workspace[1])
        X_rows = <floating *> batches.workspace[0]
        Y_rows = <floating *> batches.workspace[1]
        if batches.weights != NULL:
            gather_rows(<const char *> batches.weights, rows, n_rows, sizeof(double),
                        <char *> batches.batch_weights)
            weight_rows = batches.batch_weights
    else:
        X_rows = X + start * n_in
        Y_rows = Y + start * n_out
        if batches.weights != NULL:
            weight_rows = batches.weights + start
    return network_gradients(
        X_rows, Y_rows, n_rows, batches.params, batches.targets, batches.sizes, n_layers,
        batches.output_tanh, batches.loss, weight_rows, batches.workspace + 3,
        batches.workspace + 3 + n_layers, batches.partials, sgd_lr, n_threads)


cdef double lgm_batch_step(void *batches, Py_ssize_t start, Py_ssize_t n_rows,
                           const Py_ssize_t *rows, int n_threads) noexcept nogil:
    """The BatchStep: lgm_batch in the batch's dtype."""
    if (<Batches *> batches).itemsize == sizeof(double):
        return lgm_batch(<double *> NULL, <Batches *> batches, start, n_rows, rows, n_threads)
    return lgm_batch(<float *> NULL, <Batches *> batches, start, n_rows, rows, n_threads)


cdef double network_loss(const floating *X, const floating *Y, const double *weights,
                         Py_ssize_t n_samples, void **params, const Py_ssize_t *sizes,
                         Py_ssize_t n_layers, bint output_tanh, int loss, void **scratch,
                         int n_threads) noexcept nogil:
    """The network's (weighted) mean loss on (X, Y): the mean squared error
    per output, or the mean cross-entropy per sample; forward pass and loss,
    no gradients. scratch: Network.validation_data's."""
    cdef Py_ssize_t n_out = sizes[n_layers]
    cdef Py_ssize_t n_values = n_samples * n_out
    cdef double count
    network_forward(X, n_samples, params, sizes, n_layers, output_tanh, scratch, n_threads)
    if loss == SQUARED_ERROR and weights == NULL:
        return squared_error(<floating *> scratch[n_layers - 1], Y,
                             <floating *> scratch[n_layers], n_values, 1.0,
                             <double *> scratch[n_layers + 1], n_threads) / max(1, n_values)
    count = weight_sum(weights, n_samples) * (n_out if loss == SQUARED_ERROR else 1)
    return output_loss(loss, <floating *> scratch[n_layers - 1], Y, weights,
                       <floating *> scratch[n_layers], n_samples, n_out, 1.0,
                       <double *> scratch[n_layers + 1], n_threads) / (
                           count if count > 0 else 1.0)


cdef double lgm_validation(floating *dtype, Batches *batches, int n_threads) noexcept nogil:
    """The model's loss over the validation set (see ValidationStep in
    _train.pxd): network_loss, weighted by the validation weights."""
    return network_loss(<const floating *> batches.X_val, <const floating *> batches.Y_val,
                        batches.validation_weights, batches.n_val, batches.params,
                        batches.sizes, batches.n_layers, batches.output_tanh, batches.loss,
                        batches.validation_scratch, n_threads)


cdef double lgm_validation_step(void *batches, int n_threads) noexcept nogil:
    """The ValidationStep: lgm_validation in the batch's dtype."""
    if (<Batches *> batches).itemsize == sizeof(double):
        return lgm_validation(<double *> NULL, <Batches *> batches, n_threads)
    return lgm_validation(<float *> NULL, <Batches *> batches, n_threads)


cdef void train_network(floating *dtype, Network network, TrainingRun run,
                        const Py_ssize_t *order, double *epoch_losses, Py_ssize_t n_epochs,
                        int n_threads) except *:
    """Network.train_run for one dtype: the plan, the panel workspace, the driver."""
    cdef const Py_ssize_t *sizes = network.sizes
    cdef Py_ssize_t n_layers = network.n_layers
    cdef Py_ssize_t n_samples = cnp.PyArray_DIMS(<cnp.ndarray> run.X)[0]
    cdef Py_ssize_t n_in = sizes[0], n_out = sizes[n_layers]
    cdef Parameters parameters = parameters_of(network.params, run, network.count_data,
                                               sizeof(floating))
    cdef TrainingPlan plan
    cdef Batches batches
    cdef Py_ssize_t width, n_values, layer, padded
    cdef floating **panel_rows = NULL
    cdef floating *next_rows
    cdef Optimizer *optimizer = &run.optimizer
    cdef PointerTable validation_scratch
    cdef bint sgd = (optimizer.kind == SGD and run.clip_norm == 0
                     and optimizer.weight_decay == 0 and run.control.schedule != INVSCALING)
    cdef const double *weights = <const double *> data_or_null(run.weights)
    # Plain SGD at a rate that changes only between epochs is fused into the
    # backward pass; the others (and SGD with clipping, weight decay or
    # invscaling's rate per update) update after it. An
    # epoch's loss is its summed loss over the (weighted) count loss_scale
    # divides by.
    plan = plan_of(run, order, epoch_losses, n_epochs, n_samples,
                   weight_sum(weights, n_samples)
                   * (n_out if network.loss == SQUARED_ERROR else 1), sgd)
    batches.n_val = 0
    if run.validation is not None and plan.validation_losses != NULL:
        batches.X_val = cnp.PyArray_DATA(<cnp.ndarray> run.validation[0])
        batches.Y_val = cnp.PyArray_DATA(<cnp.ndarray> run.validation[1])
        batches.n_val = cnp.PyArray_DIMS(<cnp.ndarray> run.validation[0])[0]
        validation_scratch = run.validation[2]
        batches.validation_scratch = validation_scratch.data
        batches.validation_weights = <const double *> data_or_null(run.validation[3])
        plan.validate = lgm_validation_step
    batches.itemsize = sizeof(floating)
    batches.params = network.params.data
    batches.targets = network.params.data if sgd else run.grads.data
    batches.sizes = sizes
    batches.counts = network.count_data
    batches.n_layers = n_layers
    batches.n_in, batches.n_out = n_in, n_out
    batches.output_tanh = network.output_tanh
    batches.loss = network.loss
    batches.weights = weights
    batches.batch_weights = NULL
    batches.sgd_lr = &optimizer.lr if sgd else NULL
    batches.X = cnp.PyArray_DATA(<cnp.ndarray> run.X)
    batches.Y = cnp.PyArray_DATA(<cnp.ndarray> run.Y)
    batches.workspace = run.workspace.data
    batches.partials = <double *> run.workspace.data[2]
    batches.in_panel_layout = trains_in_panels(
        network.loss, weights, min(run.batch_size, n_samples), sizes, n_layers,
        sizeof(floating), &batches.group_width, &batches.n_groups)
    batches.gather_each_batch = plan.order != NULL or n_tasks(n_samples, run.batch_size) > 1
    batches.gathered = False
    batches.Xt = batches.Yt = NULL
    batches.panel_rows = NULL
    if batches.in_panel_layout:
        # Xt, Yt, then each layer's activations, deltas, sample-major deltas
        # and weight-gradient products (one per group), and the groups'
        # gradients, in one zeroed block.
        width = batches.n_groups * batches.group_width
        n_values = (n_in + n_out) * width
        for layer in range(n_layers):
            padded = padded_width(sizes[layer + 1], sizeof(floating))
            n_values += (2 * sizes[layer + 1] * width
                         + (width + batches.n_groups * GRADIENT_STRIPE_ROWS) * padded
                         + batches.n_groups * (sizes[layer] + 1) * sizes[layer + 1])
        batches.Xt = network.panel_memory.get(n_values * sizeof(floating), 0,
                                              batches.group_width, batches.n_groups)
        panel_rows = <floating **> malloc((4 * n_layers + 1) * sizeof(floating *))
        if panel_rows == NULL:
            raise MemoryError()
        batches.Yt = <floating *> batches.Xt + n_in * width
        next_rows = <floating *> batches.Yt + n_out * width
        for layer in range(n_layers):
            padded = padded_width(sizes[layer + 1], sizeof(floating))
            panel_rows[layer] = next_rows
            panel_rows[n_layers + layer] = panel_rows[layer] + sizes[layer + 1] * width
            panel_rows[2 * n_layers + layer] = (panel_rows[n_layers + layer]
                                                + sizes[layer + 1] * width)
            panel_rows[3 * n_layers + layer] = panel_rows[2 * n_layers + layer] + width * padded
            next_rows = (panel_rows[3 * n_layers + layer]
                         + batches.n_groups * GRADIENT_STRIPE_ROWS * padded)
        panel_rows[4 * n_layers] = next_rows
        batches.panel_rows = <void **> panel_rows
    if weights != NULL:
        batches.batch_weights = <double *> malloc(max(1, run.batch_size) * sizeof(double))
        if batches.batch_weights == NULL:
            free(panel_rows)
            raise MemoryError()
    try:
        run_training(run, lgm_batch_step, &batches, &parameters, &plan, optimizer, n_threads)
    finally:
        free(panel_rows)
        free(batches.batch_weights)


