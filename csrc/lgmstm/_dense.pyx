# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The dense tanh layer: A = tanh(X W + b) and its gradients, and the
kernel entry points lgmstm.kernels calls once it has checked the shapes.

The passes (declared in _dense.pxd, shared with the model programs) work on
raw row-major pointers, trust their caller (shapes were checked in Python)
and run without the GIL, in fixed tasks as _parallel.pxd describes.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy

from lgmstm._blas cimport gemm
from lgmstm._loss cimport squared_error_rows
from lgmstm._parallel cimport (BLOCK_COLS, CHUNK_ROWS, gemm_task_rows, n_tasks,
                               threads_for)
from lgmstm._tanh cimport tanh_grad, tanh_inplace, tanh_rows

cdef enum:
    # A stripe of a weight gradient does at least about this many
    # multiply-adds when the gradient allows two (weight_stripe_rows).
    STRIPE_WORK = 8388608

# The largest GEMM a task does is this many rows high (see _parallel.pxd).
TASK_ROWS = CHUNK_ROWS


def partials_size(Py_ssize_t n_samples):
    """Length of the `partials` scratch of a loss over n_samples samples."""
    return max(1, n_tasks(n_samples, CHUNK_ROWS))


def _tanh(floating[::1] x):
    """x = tanh(x) in place, with the kernels' vectorised tanh (a test hook)."""
    with nogil:
        tanh_inplace(&x[0], x.shape[0])


def forward(const floating[:, ::1] X, const floating[:, ::1] W,
            const floating[::1] b, floating[:, ::1] out,
            bint apply_tanh, int n_threads):
    """out = tanh(X W + b) (or X W + b)."""
    with nogil:
        dense_forward(&X[0, 0], &W[0, 0], &b[0], &out[0, 0], X.shape[0],
                      X.shape[1], W.shape[1], apply_tanh, n_threads)


def forward_steps(const floating[:, :, ::1] X, const floating[:, ::1] W,
                  const floating[::1] b, floating[:, :, ::1] out,
                  bint apply_tanh, int n_threads):
    """out[:, t] = tanh(X[:, t] W + b) (or without tanh) for every step t,
    each step apart (dense_forward_steps): its rows' bits are those of a
    forward over X[:, t] alone."""
    with nogil:
        dense_forward_steps(&X[0, 0, 0], &W[0, 0], &b[0], &out[0, 0, 0], X.shape[0],
                            X.shape[1], X.shape[2], W.shape[1], apply_tanh, n_threads)


def backward(const floating[:, ::1] X, const floating[:, ::1] W,
             const floating[:, ::1] A, const floating[:, ::1] dA,
             floating[:, ::1] dZ, floating[:, ::1] dX, floating[:, ::1] dW,
             floating[::1] db, bint need_dX, bint apply_tanh, int n_threads):
    """Gradients of a dense layer; dZ is scratch, dX is left alone unless need_dX."""
    with nogil:
        dense_backward(&X[0, 0], &W[0, 0], &A[0, 0], &dA[0, 0], &dZ[0, 0],
                       &dX[0, 0] if need_dX else NULL, &dW[0, 0], &db[0], 1, 0,
                       X.shape[0], X.shape[1], W.shape[1], apply_tanh, False,
                       n_threads)


cdef void dense_forward_rows(
        const floating *X, const floating *W, const floating *b, floating *A,
        Py_ssize_t n_rows, Py_ssize_t n_in, Py_ssize_t n_out,
        bint apply_tanh) noexcept nogil:
    """A = tanh(X W + b) for n_rows rows: bias first, GEMM accumulates onto it."""
    dense_forward_strided(X, n_in, W, b, A, n_out, n_rows, n_in, n_out, apply_tanh)


cdef void dense_forward_strided(
        const floating *X, Py_ssize_t ldx, const floating *W, const floating *b,
        floating *A, Py_ssize_t lda, Py_ssize_t n_rows, Py_ssize_t n_in, Py_ssize_t n_out,
        bint apply_tanh) noexcept nogil:
    """dense_forward_rows on rows ldx (X) and lda (A) values apart."""
    cdef Py_ssize_t i, j
    for i in range(n_rows):
        for j in range(n_out):
            A[i * lda + j] = b[j]
    gemm(False, False, <int> n_rows, <int> n_out, <int> n_in, 1, X, <int> ldx,
         W, <int> n_out, 1, A, <int> lda)
    if apply_tanh:
        tanh_rows(A, n_rows, n_out, lda)


cdef void dense_forward(
        const floating *X, const floating *W, const floating *b, floating *A,
        Py_ssize_t n_samples, Py_ssize_t n_in, Py_ssize_t n_out,
        bint apply_tanh, int n_threads) noexcept nogil:
    """A (n_samples, n_out) = tanh(X W + b), in chunks of samples: the
    sequences of one step of dense_forward_steps."""
    dense_forward_steps(X, W, b, A, n_samples, 1, n_in, n_out, apply_tanh, n_threads)


cdef void dense_forward_steps(
        const floating *X, const floating *W, const floating *b, floating *A,
        Py_ssize_t n_samples, Py_ssize_t n_steps, Py_ssize_t n_in, Py_ssize_t n_out,
        bint apply_tanh, int n_threads) noexcept nogil:
    """A = tanh(X W + b) on each step of n_samples sequences apart: for every
    step, the samples' rows in chunks of gemm_task_rows samples (n_steps 1:
    dense_forward). A BLAS product may round a row differently by the
    product's row count, so that a row's bits depend on n_samples alone,
    never on n_steps: outputs of one step, of a run of steps and of the
    whole sequence agree."""
    cdef Py_ssize_t rows = gemm_task_rows(n_out, n_in)
    cdef Py_ssize_t n_chunks = n_tasks(n_samples, rows)
    cdef int n_used = threads_for(n_threads, n_chunks * n_steps,
                                  2.0 * n_samples * n_steps * n_in * n_out)
    cdef Py_ssize_t task
    if n_used == 1:
        for task in range(n_chunks * n_steps):
            dense_forward_step_chunk(task, n_steps, rows, X, W, b, A, n_samples, n_in,
                                     n_out, apply_tanh)
    else:
        for task in prange(n_chunks * n_steps, num_threads=n_used, schedule='static'):
            dense_forward_step_chunk(task, n_steps, rows, X, W, b, A, n_samples, n_in,
                                     n_out, apply_tanh)


cdef inline void dense_forward_step_chunk(
        Py_ssize_t task, Py_ssize_t n_steps, Py_ssize_t rows, const floating *X,
        const floating *W, const floating *b, floating *A, Py_ssize_t n_samples,
        Py_ssize_t n_in, Py_ssize_t n_out, bint apply_tanh) noexcept nogil:
    """Task chunk * n_steps + step of dense_forward_steps (a thread's tasks
    are consecutive: the steps of its samples, side by side in memory)."""
    cdef Py_ssize_t start = (task // n_steps) * rows
    cdef Py_ssize_t first = start * n_steps + task % n_steps   # the chunk's first row
    dense_forward_strided(X + first * n_in, n_steps * n_in, W, b, A + first * n_out,
                          n_steps * n_out, min(rows, n_samples - start), n_in, n_out,
                          apply_tanh)


cdef inline double dense_forward_loss_chunk(
        Py_ssize_t chunk, Py_ssize_t rows, const floating *X, const floating *W,
        const floating *b, floating *A, const floating *Y, floating *dA,
        Py_ssize_t n_samples, Py_ssize_t n_in, Py_ssize_t n_out,
        bint apply_tanh, double grad_scale) noexcept nogil:
    cdef Py_ssize_t start = chunk * rows
    cdef Py_ssize_t n_rows = min(rows, n_samples - start)
    dense_forward_rows(X + start * n_in, W, b, A + start * n_out, n_rows, n_in, n_out,
                       apply_tanh)
    return squared_error_rows(A + start * n_out, Y + start * n_out,
                              dA + start * n_out, n_rows * n_out, grad_scale)


cdef void dense_backward(
        const floating *X, const floating *W, const floating *A,
        const floating *dA, floating *dZ, floating *dX, floating *dW,
        floating *db, floating grad_scale, floating grad_beta,
        Py_ssize_t n_samples, Py_ssize_t n_in, Py_ssize_t n_out,
        bint apply_tanh, bint input_tanh, int n_threads) noexcept nogil:
    """Gradients of A = tanh(X W + b) given dA = dL/dA.

    dZ = dA (1 - A^2)          (dZ may be dA itself)
    dX = dZ W^T                (skipped when dX is NULL), times (1 - X^2)
                               with input_tanh: X = tanh(Z_below), and dX
                               is the layer below's dZ, made while in cache
    dW = s X^T dZ + beta dW,   db = s sum_samples(dZ) + beta db
    with s = grad_scale, beta = grad_beta: (1, 0) gives the gradients;
    (-lr, 1) with dW = W, db = b is a fused SGD step, done after every use
    of W (dX is finished before dW starts).

    Sample chunks give dZ and dX (no chunk pass when dZ is dA already:
    apply_tanh false, no dX); dW is split into stripes of whole rows
    and db into blocks of columns, each summing over the whole batch in
    sample order.
    """
    cdef Py_ssize_t chunk_rows = gemm_task_rows(n_in, n_out)
    cdef Py_ssize_t stripe = weight_stripe_rows(n_in, n_out, n_samples)
    cdef Py_ssize_t n_chunks = n_tasks(n_samples, chunk_rows)
    cdef Py_ssize_t n_stripes = n_tasks(n_in, stripe)
    cdef Py_ssize_t n_col_blocks = n_tasks(n_out, BLOCK_COLS)
    cdef int n_used = threads_for(n_threads, max(n_chunks, n_stripes),
                                  4.0 * n_samples * n_in * n_out)
    cdef Py_ssize_t task
    if not apply_tanh and dZ == dA and dX == NULL:
        n_chunks = 0
    if n_used == 1:
        for task in range(n_chunks):
            delta_chunk(task, chunk_rows, X, W, A, dA, dZ, dX, n_samples, n_in,
                        n_out, apply_tanh, input_tanh)
        for task in range(n_stripes + n_col_blocks):
            parameter_grad_task(task, n_stripes, stripe, X, dZ, dW, db,
                                grad_scale, grad_beta, n_samples, n_in, n_out)
    else:
        # Two parallel regions, not two loops in one: Cython emits loops in a
        # parallel block as `omp for nowait`, and the parameter gradients
        # need every chunk's dZ first. The join between regions is the barrier.
        if n_chunks > 0:
            for task in prange(n_chunks, num_threads=n_used, schedule='static'):
                delta_chunk(task, chunk_rows, X, W, A, dA, dZ, dX, n_samples, n_in,
                            n_out, apply_tanh, input_tanh)
        # Stripes and bias blocks differ in size: hand them out as threads
        # free up (stripes first). Who runs a task never changes its result.
        for task in prange(n_stripes + n_col_blocks, num_threads=n_used,
                           schedule='dynamic'):
            parameter_grad_task(task, n_stripes, stripe, X, dZ, dW, db,
                                grad_scale, grad_beta, n_samples, n_in, n_out)


cdef double dense_stack_gradients(
        const floating *X, const floating *Y, Py_ssize_t n_samples, void **params,
        void **targets, const Py_ssize_t *sizes, Py_ssize_t n_layers, bint output_tanh,
        void **activations, void **deltas, double *partials, floating grad_scale,
        floating grad_beta, int n_threads) noexcept nogil:
    """A training step's forward pass, squared-error loss and backward pass
    through a stack of dense layers (tanh below the last), in two parallel
    regions for the whole stack: the sample tasks, then the weight tasks.

    The same products as dense_forward and dense_backward layer by
    layer (the output layer's fused with the loss, per chunk of rows), on
    the same rows, so the same bits: a sample task takes `span` samples
    (the tallest of the layers' row chunks, gemm_task_rows, all 64 times
    a power of two) through every
    layer's forward chunks, the loss and every layer's delta chunks; a
    weight task is one stripe of a layer's dW or one block of its db
    (parameter_grad_task), each summed over the whole batch. Layer by
    layer, a step of L layers takes 2 to 3 regions a layer, and each
    region start and end wakes a thread: under OMP_WAIT_POLICY=passive on
    a virtual machine, tens of microseconds each (issue 13).

    params, targets, activations and deltas as in _lgm.network_gradients
    (targets = grad_scale * gradient + grad_beta * targets); partials: one
    double per 64 samples. Returns the summed squared error.
    """
    cdef Py_ssize_t n_out = sizes[n_layers]
    cdef Py_ssize_t span = CHUNK_ROWS, layer, task, n_sample_tasks
    cdef Py_ssize_t n_weight_tasks = 0, last_rows
    cdef double forward_work = 0, total = 0
    cdef int sample_threads, weight_threads
    for layer in range(n_layers):
        span = max(span, gemm_task_rows(sizes[layer + 1], sizes[layer]))
        n_weight_tasks += (n_tasks(sizes[layer], weight_stripe_rows(sizes[layer],
                                                                     sizes[layer + 1],
                                                                     n_samples))
                           + n_tasks(sizes[layer + 1], BLOCK_COLS))
        forward_work += 2.0 * n_samples * sizes[layer] * sizes[layer + 1]
    n_sample_tasks = n_tasks(n_samples, span)
    # The sample tasks do the forward pass and dX (all but the first layer's).
    sample_threads = threads_for(n_threads, n_sample_tasks, 2 * forward_work)
    weight_threads = threads_for(n_threads, n_weight_tasks, forward_work)
    if sample_threads == 1:
        for task in range(n_sample_tasks):
            stack_sample_task(task, span, X, Y, n_samples, params, sizes, n_layers,
                              output_tanh, activations, deltas, partials)
    else:
        for task in prange(n_sample_tasks, num_threads=sample_threads, schedule='dynamic'):
            stack_sample_task(task, span, X, Y, n_samples, params, sizes, n_layers,
                              output_tanh, activations, deltas, partials)
    if weight_threads == 1:
        for task in range(n_weight_tasks):
            stack_weight_task(task, X, n_samples, targets, sizes, n_layers, activations,
                              deltas, grad_scale, grad_beta)
    else:
        for task in prange(n_weight_tasks, num_threads=weight_threads, schedule='dynamic'):
            stack_weight_task(task, X, n_samples, targets, sizes, n_layers, activations,
                              deltas, grad_scale, grad_beta)
    last_rows = gemm_task_rows(n_out, sizes[n_layers - 1])
    for task in range(n_tasks(n_samples, last_rows)):
        total += partials[task]
    return total


cdef void stack_sample_task(
        Py_ssize_t task, Py_ssize_t span, const floating *X, const floating *Y,
        Py_ssize_t n_samples, void **params, const Py_ssize_t *sizes, Py_ssize_t n_layers,
        bint output_tanh, void **activations, void **deltas,
        double *partials) noexcept nogil:
    """Samples [task * span, + span) of dense_stack_gradients through every
    layer's forward chunks, the loss (its chunks' partials) and every
    layer's delta chunks (dZ, and dX times the tanh derivative below)."""
    cdef Py_ssize_t first = task * span, stop = min(first + span, n_samples)
    cdef Py_ssize_t n_out = sizes[n_layers], layer, rows, chunk
    cdef const floating *layer_input
    cdef floating *dX
    for layer in range(n_layers):
        rows = gemm_task_rows(sizes[layer + 1], sizes[layer])
        layer_input = X if layer == 0 else <floating *> activations[layer - 1]
        for chunk in range(first // rows, n_tasks(stop, rows)):
            if layer < n_layers - 1:
                dense_forward_step_chunk(chunk, 1, rows, layer_input,
                                         <floating *> params[2 * layer],
                                         <floating *> params[2 * layer + 1],
                                         <floating *> activations[layer], n_samples,
                                         sizes[layer], sizes[layer + 1], True)
            else:
                partials[chunk] = dense_forward_loss_chunk(
                    chunk, rows, layer_input, <floating *> params[2 * layer],
                    <floating *> params[2 * layer + 1], <floating *> activations[layer], Y,
                    <floating *> deltas[layer], n_samples, sizes[layer], n_out,
                    output_tanh, 1.0 / max(1, n_samples * n_out))
    for layer in range(n_layers - 1, -1, -1):
        dX = NULL if layer == 0 else <floating *> deltas[layer - 1]
        if dX == NULL and not (layer == n_layers - 1 and output_tanh):
            continue   # dZ is dA already (dense_backward's n_chunks = 0)
        rows = gemm_task_rows(sizes[layer + 1], sizes[layer])
        for chunk in range(first // rows, n_tasks(stop, rows)):
            delta_chunk(chunk, rows, X if layer == 0 else <floating *> activations[layer - 1],
                        <floating *> params[2 * layer], <floating *> activations[layer],
                        <floating *> deltas[layer], <floating *> deltas[layer], dX, n_samples,
                        sizes[layer], sizes[layer + 1], layer == n_layers - 1 and output_tanh,
                        layer > 0)


cdef void stack_weight_task(
        Py_ssize_t task, const floating *X, Py_ssize_t n_samples, void **targets,
        const Py_ssize_t *sizes, Py_ssize_t n_layers, void **activations, void **deltas,
        floating grad_scale, floating grad_beta) noexcept nogil:
    """Weight task `task` of dense_stack_gradients: the layers' dW stripes
    and db blocks, the last layer's first (the largest tasks come first
    within a layer, parameter_grad_task's order)."""
    cdef Py_ssize_t layer, stripe, n_stripes, n_layer_tasks
    for layer in range(n_layers - 1, -1, -1):
        stripe = weight_stripe_rows(sizes[layer], sizes[layer + 1], n_samples)
        n_stripes = n_tasks(sizes[layer], stripe)
        n_layer_tasks = n_stripes + n_tasks(sizes[layer + 1], BLOCK_COLS)
        if task < n_layer_tasks:
            parameter_grad_task(task, n_stripes, stripe,
                                X if layer == 0 else <floating *> activations[layer - 1],
                                <floating *> deltas[layer], <floating *> targets[2 * layer],
                                <floating *> targets[2 * layer + 1], grad_scale, grad_beta,
                                n_samples, sizes[layer], sizes[layer + 1])
            return
        task -= n_layer_tasks


cdef inline void parameter_grad_task(
        Py_ssize_t task, Py_ssize_t n_stripes, Py_ssize_t stripe,
        const floating *X, const floating *dZ, floating *dW, floating *db,
        floating scale, floating beta, Py_ssize_t n_samples, Py_ssize_t n_in,
        Py_ssize_t n_out) noexcept nogil:
    """Tasks [0, n_stripes) are stripes of dW, the rest column blocks of db."""
    if task < n_stripes:
        weight_grad_stripe(task, stripe, X, dZ, dW, scale, beta, n_samples, n_in, n_out)
    else:
        bias_grad_block(task - n_stripes, dZ, db, scale, beta, n_samples, n_out)


cdef inline void delta_chunk(
        Py_ssize_t chunk, Py_ssize_t rows, const floating *X, const floating *W,
        const floating *A, const floating *dA, floating *dZ, floating *dX,
        Py_ssize_t n_samples, Py_ssize_t n_in, Py_ssize_t n_out, bint apply_tanh,
        bint input_tanh) noexcept nogil:
    """dZ and dX for one chunk of samples."""
    cdef Py_ssize_t start = chunk * rows
    cdef Py_ssize_t stop = min(start + rows, n_samples)
    if apply_tanh:
        tanh_grad(dZ + start * n_out, dA + start * n_out, A + start * n_out,
                  (stop - start) * n_out)
    elif dZ != dA:
        memcpy(dZ + start * n_out, dA + start * n_out,
               (stop - start) * n_out * sizeof(floating))
    if dX != NULL:
        gemm(False, True, <int> (stop - start), <int> n_in, <int> n_out, 1,
             dZ + start * n_out, <int> n_out, W, <int> n_out,
             0, dX + start * n_in, <int> n_in)
        if input_tanh:
            tanh_grad(dX + start * n_in, dX + start * n_in, X + start * n_in,
                      (stop - start) * n_in)


cdef inline Py_ssize_t weight_stripe_rows(Py_ssize_t n_in, Py_ssize_t n_out,
                                          Py_ssize_t n_samples) noexcept nogil:
    """Rows of the stripes dW is cut into, from the shapes alone: 64,
    doubled while that leaves at least two stripes and the stripes are more
    than four or do fewer than STRIPE_WORK multiply-adds each.

    A stripe's GEMM repacks all of dZ (n_samples, n_out), so taller stripes
    repack less: square 64-row tiles ran the 256 x 256 gradient of a
    256-sample batch at half BLAS's speed on one whole call, 128-row
    stripes of whole rows within a tenth of it."""
    cdef Py_ssize_t rows = 64
    while (n_tasks(n_in, 2 * rows) >= 2
           and (n_tasks(n_in, rows) > 4 or rows * n_out * n_samples < STRIPE_WORK)):
        rows *= 2
    return rows


cdef inline void weight_grad_stripe(
        Py_ssize_t stripe, Py_ssize_t rows, const floating *X, const floating *dZ,
        floating *dW, floating scale, floating beta, Py_ssize_t n_samples,
        Py_ssize_t n_in, Py_ssize_t n_out) noexcept nogil:
    """One stripe of whole rows of dW = scale X^T dZ + beta dW, summed over
    the whole batch."""
    cdef Py_ssize_t row = stripe * rows
    gemm(True, False, <int> min(rows, n_in - row), <int> n_out, <int> n_samples, scale,
         X + row, <int> n_in, dZ, <int> n_out, beta, dW + row * n_out, <int> n_out)


cdef inline void bias_grad_block(
        Py_ssize_t block, const floating *dZ, floating *db, floating scale,
        floating beta, Py_ssize_t n_samples, Py_ssize_t n_out) noexcept nogil:
    """db = scale sum_samples(dZ) + beta db on one block of columns.

    Rows are added in sample order, a whole row of the block at a time.
    """
    cdef Py_ssize_t start = block * BLOCK_COLS
    cdef Py_ssize_t width = min(start + BLOCK_COLS, n_out) - start
    cdef floating sums[BLOCK_COLS]
    cdef Py_ssize_t i, j
    for j in range(width):
        sums[j] = 0
    for i in range(n_samples):
        for j in range(width):
            sums[j] += dZ[i * n_out + start + j]
    for j in range(width):
        db[start + j] = scale * sums[j] + (beta * db[start + j] if beta != 0 else 0)


