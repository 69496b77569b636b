# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The training driver both model programs (_lgm, _stm) run, and the typed
objects their entry points take: PointerTable (arrays as pointers the
nogil code can use) and TrainingRun (the data and plan of one fit).

    for each epoch, for each mini-batch (in the epoch's order):
        loss += step(batch)                 the program: forward, loss, backward
        clip the gradients' global norm     when clip_norm > 0
        optimizer.step += 1                 (invscaling: lr = base lr / step**power_t)
        update every parameter with its moments
                                            (a weight's decay added to its gradient)
    epoch_losses[epoch] = loss / loss_denominator
    end_epoch: the validation loss, the adaptive schedule, early stopping,
               the sample clock's lr for the next epoch
"""
cimport cython
cimport numpy as cnp
from cpython.pythread cimport PyThread_get_thread_ident
from libc.math cimport INFINITY, isfinite, pow
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from lgmstm._omp cimport lgmstm_omp_max_threads, lgmstm_omp_wtime
from lgmstm._loss cimport SQUARED_ERROR
from lgmstm._optim cimport ADAM, MOMENTUM, SGD, Optimizer, clip_gradients, optimizer_step
from lgmstm._panel cimport panel_calloc
from lgmstm._parallel cimport BLAS_THREADING_WORK as _BLAS_THREADING_WORK, GIL_HELD_WORK
from lgmstm._parallel cimport SHORT_FIT_WORK as _SHORT_FIT_WORK

import threading

import numpy as np

cnp.import_array()

BLAS_THREADING_WORK = _BLAS_THREADING_WORK

# The optimizers by name, as the compiled code numbers them (lgmstm._training
# describes them).
OPTIMIZER_CODES = {"sgd": SGD, "momentum": MOMENTUM, "adam": ADAM}

# The learning-rate schedules by name, as the compiled code numbers them
# ("sample_clock" is the estimators' private one: lgmstm._training.SampleClock).
SCHEDULE_CODES = {"constant": CONSTANT, "invscaling": INVSCALING, "adaptive": ADAPTIVE,
                  "sample_clock": SAMPLE_CLOCK}

# The adaptive schedule divides lr by this at a plateau, and a plateau at
# an lr of MIN_ADAPTIVE_LR or less stops training (scikit-learn's MLP values).
cdef double LR_DIVISOR = 5.0
cdef double MIN_LR = 1e-6
ADAPTIVE_DIVISOR = LR_DIVISOR
MIN_ADAPTIVE_LR = MIN_LR

SHORT_FIT_WORK = _SHORT_FIT_WORK

# libgomp's thread pool does not survive fork(): in a forked child the
# kernels run on one thread (lgmstm._threads marks the child).
cdef bint forked_child = False


def _mark_forked_child():
    global forked_child
    forked_child = True


cdef int kernel_threads() noexcept nogil:
    """Threads the kernels use: OpenMP's count for the calling thread, 1 in
    a forked child (see lgmstm._threads.get_num_threads)."""
    if forked_child:
        return 1
    return max(1, lgmstm_omp_max_threads())


def epoch_orders(rng, Py_ssize_t n_epochs, Py_ssize_t n_samples):
    """(n_epochs, n_samples) intp array, C-ordered: a fresh random order of
    the samples per epoch, drawn from the Generator rng."""
    order = np.broadcast_to(np.arange(n_samples, dtype=np.intp), (n_epochs, n_samples))
    return np.ascontiguousarray(rng.permuted(order, axis=1))


# A scan of fewer values than this (about ten microseconds) holds the GIL:
# releasing and taking it back costs a tenth of a microsecond or more,
# which the short fit's scans of X, Y and each parameter would pay in turn.
cdef Py_ssize_t RELEASED_SCAN = 1 << 16


cdef extern from "_finite.h" nogil:
    int lgmstm_all_finite_d(const double *x, Py_ssize_t n)
    int lgmstm_all_finite_f(const float *x, Py_ssize_t n)
    int lgmstm_beyond_unit_d(const double *x, Py_ssize_t n)
    int lgmstm_beyond_unit_f(const float *x, Py_ssize_t n)


cdef inline bint scannable(object item) noexcept:
    """Whether item is what the scans of _finite.h read as it is: an ndarray
    (not a subclass), C-contiguous, of float32 or float64."""
    return (type(item) is cnp.ndarray and cnp.PyArray_ISCARRAY_RO(<cnp.ndarray> item)
            and cnp.PyArray_TYPE(<cnp.ndarray> item) in (cnp.NPY_DOUBLE, cnp.NPY_FLOAT))


# fit's control arguments' defaults (lgmstm._training takes them from here):
# the short fit is taken only with these (short_fit_takes).
cdef long DEFAULT_PATIENCE = 10
cdef double DEFAULT_TOL = 1e-4, DEFAULT_POWER_T = 0.5
PATIENCE, TOL, POWER_T = DEFAULT_PATIENCE, DEFAULT_TOL, DEFAULT_POWER_T

# The short fit keeps a run for each of up to this many shapes of batch on
# one optimizer state (a loop of partial_fit over mini-batches has two: the
# full ones and the last), then starts again.
cdef Py_ssize_t SHORT_RUNS_KEPT = 4

# validation_history_ of a model whose last training had no validation set
# (read-only, so one array serves every model).
NO_VALIDATION = np.empty(0)
NO_VALIDATION.flags.writeable = False


def short_fit_takes(epochs, callback, verbose, seed, sample_weight, lengths,
                    validation_data, validation_fraction, early_stopping, patience, tol,
                    lr_schedule, power_t, stop_on_plateau):
    """Whether fit's arguments other than the data's and the optimizer's let
    it try the short fit (Program.fit_ready): one epoch, and no callback,
    progress, seed, sample weights or lengths, and every validation and
    control argument its default, as given (a value of another type, which
    the checked path refuses or converts, is left to it)."""
    return (type(epochs) is int and epochs == 1 and callback is None and verbose is False
            and seed is None and sample_weight is None and lengths is None
            and validation_data is None and validation_fraction is None
            and early_stopping is False and stop_on_plateau is False
            and type(patience) is int and patience == DEFAULT_PATIENCE
            and type(tol) is float and tol == DEFAULT_TOL
            and type(lr_schedule) is str and lr_schedule == "constant"
            and type(power_t) is float and power_t == DEFAULT_POWER_T)


def beyond_unit(array):
    """Whether the ndarray holds a value outside [-1, 1] (NaN counts as
    outside). C-contiguous float32/float64 arrays are scanned here (see
    _finite.h), in about a tenth of a microsecond for a few hundred values;
    others go to NumPy."""
    cdef cnp.ndarray values
    cdef Py_ssize_t n
    cdef bint beyond
    if not scannable(array):
        return bool(np.any(~(np.abs(array) <= 1)))
    values = <cnp.ndarray> array
    n = cnp.PyArray_SIZE(values)
    if n < RELEASED_SCAN:
        return scan_beyond_unit(values, n)
    with nogil:
        beyond = scan_beyond_unit(values, n)
    return beyond


cdef inline bint scan_beyond_unit(cnp.ndarray values, Py_ssize_t n) noexcept nogil:
    if cnp.PyArray_TYPE(values) == cnp.NPY_DOUBLE:
        return lgmstm_beyond_unit_d(<const double *> cnp.PyArray_DATA(values), n)
    return lgmstm_beyond_unit_f(<const float *> cnp.PyArray_DATA(values), n)


cdef bint array_finite(cnp.ndarray array) noexcept:
    """Whether every value of a C-contiguous float32/float64 array is finite
    (see _finite.h)."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(array)
    cdef bint finite
    if n < RELEASED_SCAN:
        return scan_finite(array, n)
    with nogil:
        finite = scan_finite(array, n)
    return finite


cdef inline bint scan_finite(cnp.ndarray array, Py_ssize_t n) noexcept nogil:
    if cnp.PyArray_TYPE(array) == cnp.NPY_DOUBLE:
        return lgmstm_all_finite_d(<const double *> cnp.PyArray_DATA(array), n)
    return lgmstm_all_finite_f(<const float *> cnp.PyArray_DATA(array), n)


def all_finite(arrays):
    """Whether every value of these arrays is finite (no NaN or inf).

    C-contiguous float32/float64 arrays are scanned here (see _finite.h),
    stopping at the first array that holds a non-finite value; any other
    array goes to np.isfinite.
    """
    for item in arrays:
        if not scannable(item):
            if not np.isfinite(item).all():
                return False
        elif not array_finite(<cnp.ndarray> item):
            return False
    return True


cdef class UseLock:
    """Many concurrent readers of a model's parameters, or one trainer.

    predict/loss/gradients/save read the model; fit has it alone: it waits
    for the current readers to finish, and new readers wait for it. A second
    fit from another thread is refused. The training thread itself may read
    (a callback that calls predict).

    The fast paths of compiled code take and leave a read with try_read and
    end_read, and the short fit trains with try_train and end_train, a few
    nanoseconds: they run with the GIL held, which makes each of them
    atomic with respect to every other Python thread. Waiting
    (for a trainer to finish, or a trainer for the readers) goes through a
    threading.Condition; a reader leaving wakes a waiting trainer through it.
    """

    def __cinit__(self):
        self.condition = threading.Condition()
        self.reading_context = _Reading(self)
        self.training_context = _Training(self)

    cdef bint try_read(self) except -1:
        """Start a read unless another thread is training (then False)."""
        if self.trainer == 0 or self.trainer == PyThread_get_thread_ident():
            self.readers += 1
            return True
        return False

    cdef int end_read(self) except -1:
        self.readers -= 1
        if self.readers == 0 and self.trainers_waiting:
            with self.condition:
                self.condition.notify_all()
        return 0

    cdef bint try_train(self) except -1:
        """Start training unless the model is in use (then False): the short
        fit's way in, which never waits (the checked path waits or refuses)."""
        if self.trainer == 0 and self.readers == 0:
            self.trainer = PyThread_get_thread_ident()
            return True
        return False

    cdef int end_train(self) except -1:
        self.trainer = 0
        if self.readers_waiting or self.trainers_waiting:
            with self.condition:
                self.condition.notify_all()
        return 0

    def reading(self):
        """Context manager: read the model (waits while another thread trains)."""
        return self.reading_context

    def training(self):
        """Context manager: train the model alone (RuntimeError if it is
        already being trained)."""
        return self.training_context


cdef class _LockContext:
    """A context manager over one UseLock (the lock's reading() or training())."""
    cdef UseLock lock

    def __cinit__(self, UseLock lock):
        self.lock = lock


cdef class _Reading(_LockContext):
    def __enter__(self):
        cdef UseLock lock = self.lock
        if lock.try_read():
            return
        with lock.condition:
            lock.readers_waiting += 1
            try:
                while not lock.try_read():
                    lock.condition.wait()
            finally:
                lock.readers_waiting -= 1

    def __exit__(self, *exc):
        self.lock.end_read()


cdef class _Training(_LockContext):
    def __enter__(self):
        cdef UseLock lock = self.lock
        cdef unsigned long me = PyThread_get_thread_ident()
        with lock.condition:
            if lock.trainer != 0:
                raise RuntimeError("this model is already being trained "
                                   + ("(called from its own callback, inside the fit)"
                                      if lock.trainer == me
                                      else "by another thread"))
            lock.trainer = me
            lock.trainers_waiting += 1
            try:
                while lock.readers:
                    lock.condition.wait()
            except BaseException:  # e.g. Ctrl-C while waiting: no trainer after all
                lock.trainer = 0
                lock.condition.notify_all()
                raise
            finally:
                lock.trainers_waiting -= 1

    def __exit__(self, *exc):
        cdef UseLock lock = self.lock
        with lock.condition:
            lock.trainer = 0
            lock.condition.notify_all()


cdef class PointerTable:
    """Data pointers of a list of C-contiguous arrays, usable without the GIL.

    Holds a reference to every array, so the pointers stay valid.
    """

    def __cinit__(self, arrays):
        self.arrays = list(arrays)
        self.count = len(self.arrays)
        self.data = <void **> malloc(max(1, self.count) * sizeof(void *))
        if self.data == NULL:
            raise MemoryError()
        for i, array in enumerate(self.arrays):
            self.data[i] = cnp.PyArray_DATA(<cnp.ndarray> array)

    def __dealloc__(self):
        free(self.data)


cdef class TrainingRun:
    """The data, training arrays and plan of one fit, built once per fit.

    X, Y: IN, the training set, C-contiguous in the model's dtype (Y as the
    program takes it). lengths, initial_states: IN, or None (all steps,
    zero states); final_states: OUT, or None. weights: IN, float64,
    C-contiguous, a weight per sample (the LGM) or per output row of a
    sample (the STM: its steps, or one), or None (all 1). grads: scratch laid out as
    the parameters; first_moments, second_moments: INOUT optimizer
    moments (any valid arrays where the optimizer has none); workspace:
    the program's scratch arrays, in the order the program documents.
    optimizer: the code of lgmstm._training's optimizer table, with its
    settings (lr, momentum, nesterov, beta1, beta2, eps) and weight_decay,
    applied to the parameters flagged in decayed (one flag per parameter,
    True for a weight; None: none); step: the updates done so far, which
    training advances. program: the model's Program, whose choice of thread
    count (see run_epochs) the run uses and keeps for the model's next fits;
    None: the run's own.
    """

    def __cinit__(self, *, X, Y, grads, first_moments, second_moments, workspace,
                  Py_ssize_t batch_size, int optimizer, double lr, double momentum,
                  double beta1, double beta2, double eps, bint nesterov=False,
                  double weight_decay=0, decayed=None, double clip_norm=0,
                  long long step=0, lengths=None, initial_states=None,
                  final_states=None, weights=None, program=None):
        self.X, self.Y = X, Y
        self.weights = weights
        if isinstance(program, Program):
            self.choice_owner = program
            self.thread_choices = (<Program> program).thread_choices
            self.n_thread_choices = THREAD_CHOICES_KEPT
        else:
            self.thread_choices, self.n_thread_choices = &self.own_choice, 1
        self.lengths, self.initial_states, self.final_states = (
            lengths, initial_states, final_states)
        self.grads = PointerTable(grads)
        self.first_moments = PointerTable(first_moments)
        self.second_moments = PointerTable(second_moments)
        self.workspace = PointerTable(workspace)
        self.batch_size = batch_size
        self.clip_norm = clip_norm
        self.optimizer.kind = optimizer
        self.optimizer.lr = lr
        self.optimizer.momentum = momentum
        self.optimizer.beta1 = beta1
        self.optimizer.beta2 = beta2
        self.optimizer.eps = eps
        self.optimizer.nesterov = nesterov
        self.optimizer.weight_decay = weight_decay
        self.optimizer.step = step
        self.validation = self.validation_losses = None
        memset(&self.control, 0, sizeof(EpochControl))
        self.control.schedule = CONSTANT
        self.control.min_lr = MIN_LR
        self.control.best_loss = INFINITY
        self.control.best_epoch = -1
        self.decayed = np.zeros(self.grads.count, np.uint8)
        if decayed is not None:
            if len(decayed) != self.grads.count:
                raise ValueError(f"decayed needs one flag per parameter ({self.grads.count}), "
                                 f"got {len(decayed)}")
            self.decayed[...] = np.asarray(decayed, dtype=bool)

    def set_control(self, *, int schedule=CONSTANT, double power_t=DEFAULT_POWER_T,
                    long long samples_before=0, double min_lr=MIN_LR,
                    bint early_stopping=False,
                    bint stop_on_plateau=False, Py_ssize_t patience=DEFAULT_PATIENCE,
                    double tol=DEFAULT_TOL, bint monitoring=False, kept=()):
        """What the driver does after each epoch (see end_epoch): the
        learning-rate schedule (SCHEDULE_CODES; invscaling's power_t, from
        the lr the run was made with; the sample clock's samples_before,
        the samples trained before this fit, which sets the first epoch's
        rate here; the adaptive schedule's min_lr, the lr at or below which
        a plateau stops training), patience and tol of the adaptive
        schedule, of early stopping and of stop_on_plateau (stop after
        patience epochs without improvement, keeping the last epoch);
        monitoring: the epochs' ends have work (validation, adaptive, early
        stopping, stop_on_plateau). kept: the arrays
        (C-contiguous) early stopping puts back as they were after the best
        epoch, with the optimizer's step; copied here."""
        self.control.schedule = schedule
        self.control.base_lr = self.optimizer.lr
        self.control.power_t = power_t
        self.control.samples_before = samples_before
        self.control.min_lr = min_lr
        if schedule == SAMPLE_CLOCK:
            self.optimizer.lr = sample_clock_lr(&self.control, samples_before)
        self.control.early_stopping = early_stopping
        self.control.stop_on_plateau = stop_on_plateau
        self.control.patience = patience
        self.control.tol = tol
        self.control.monitoring = (monitoring or early_stopping or stop_on_plateau
                                   or schedule == ADAPTIVE or schedule == SAMPLE_CLOCK)
        kept = list(kept) if early_stopping else []
        self.kept_table = PointerTable(kept)
        self.best_table = PointerTable([np.array(a, copy=True) for a in kept])
        self.kept_sizes = np.array([array_bytes(a) for a in kept], dtype=np.intp)
        self.control.kept = self.kept_table.data
        self.control.best = self.best_table.data
        self.control.n_kept = len(kept)
        self.control.kept_bytes = <const Py_ssize_t *> cnp.PyArray_DATA(
            <cnp.ndarray> self.kept_sizes)

    @property
    def lr(self):
        """The learning rate of the latest update (the schedule's)."""
        return self.optimizer.lr

    @property
    def stopped(self):
        """Whether training stopped: early stopping, or the adaptive
        schedule's plateau at lr <= its min_lr (MIN_ADAPTIVE_LR unless set)."""
        return bool(self.control.stopped)

    @property
    def best_epoch(self):
        """The epoch (counted over the fit) of the lowest monitored loss, or None."""
        return None if self.control.best_epoch < 0 else self.control.best_epoch

    @property
    def control_state(self):
        """Where the epochs' control stands (lr, best loss and epoch, epochs
        done, stale epochs, best step, stopped, restored): what a replay of
        a block puts back with the arrays."""
        cdef EpochControl *c = &self.control
        return (self.optimizer.lr, c.best_loss, c.best_epoch, c.epochs_done, c.stale,
                c.best_step, c.stopped, c.restored)

    @control_state.setter
    def control_state(self, value):
        cdef EpochControl *c = &self.control
        (self.optimizer.lr, c.best_loss, c.best_epoch, c.epochs_done, c.stale,
         c.best_step, c.stopped, c.restored) = value

    def restore_best(self):
        """Put back the kept arrays and the step of the best epoch (early
        stopping at the end of a fit that ran all its epochs); False when
        there is nothing to restore."""
        if not self.control.early_stopping or self.control.best_epoch < 0:
            return False
        restore_best(&self.control, &self.optimizer)
        return True

    @property
    def weight_decay(self):
        return self.optimizer.weight_decay

    @property
    def step(self):
        """Updates done so far (adam's bias correction counts them)."""
        return self.optimizer.step

    @step.setter
    def step(self, long long value):
        self.optimizer.step = value


cdef bint is_ready_matrix(object array, int type_num, Py_ssize_t n_rows,
                          Py_ssize_t n_cols) except -1:
    """Whether array is what the kernels take as it is: an ndarray (not a
    subclass) of type_num, 2-D with n_cols columns and n_rows rows (any
    number >= 1 for n_rows < 0), C-contiguous and aligned. The fast paths'
    one check; anything else takes the caller's checked path."""
    if type(array) is not cnp.ndarray:
        return False
    cdef cnp.ndarray matrix = <cnp.ndarray> array
    if (cnp.PyArray_NDIM(matrix) != 2 or cnp.PyArray_TYPE(matrix) != type_num
            or not cnp.PyArray_ISCARRAY_RO(matrix) or cnp.PyArray_DIMS(matrix)[1] != n_cols):
        return False
    if n_rows < 0:
        return cnp.PyArray_DIMS(matrix)[0] >= 1
    return cnp.PyArray_DIMS(matrix)[0] == n_rows


cdef Py_ssize_t ready_sequences(object X, object Y, int type_num, Py_ssize_t n_in,
                                Py_ssize_t n_out, bint every_step) except -2:
    """The short fit's check of an STM's data (its ready_steps): n_steps when
    X (n_samples, n_steps, n_in) and Y ((n_samples, n_steps, n_out) with
    every_step, else (n_samples, n_out)) are ndarrays (not subclasses) of
    type_num, C-contiguous and aligned; else -1."""
    if type(X) is not cnp.ndarray or type(Y) is not cnp.ndarray:
        return -1
    cdef cnp.ndarray inputs = <cnp.ndarray> X, targets = <cnp.ndarray> Y
    if (cnp.PyArray_NDIM(inputs) != 3 or cnp.PyArray_TYPE(inputs) != type_num
            or not cnp.PyArray_ISCARRAY_RO(inputs) or cnp.PyArray_DIMS(inputs)[2] != n_in
            or cnp.PyArray_TYPE(targets) != type_num
            or not cnp.PyArray_ISCARRAY_RO(targets)):
        return -1
    cdef Py_ssize_t n_samples = cnp.PyArray_DIMS(inputs)[0]
    cdef Py_ssize_t n_steps = cnp.PyArray_DIMS(inputs)[1]
    if every_step:
        if (cnp.PyArray_NDIM(targets) != 3 or cnp.PyArray_DIMS(targets)[0] != n_samples
                or cnp.PyArray_DIMS(targets)[1] != n_steps
                or cnp.PyArray_DIMS(targets)[2] != n_out):
            return -1
    elif (cnp.PyArray_NDIM(targets) != 2 or cnp.PyArray_DIMS(targets)[0] != n_samples
            or cnp.PyArray_DIMS(targets)[1] != n_out):
        return -1
    return n_steps


cdef object ready_copy(object array, int type_num, Py_ssize_t n_cols):
    """A C-contiguous copy of array when it holds what is_ready_matrix wants
    (n_rows >= 1) in another layout, e.g. a step of a batch of sequences
    (X[:, t]): an ndarray of type_num in native byte order; else None. The
    same values, so the same bits, for a copy cheaper than the checked path."""
    if type(array) is not cnp.ndarray:
        return None
    cdef cnp.ndarray matrix = <cnp.ndarray> array
    if (cnp.PyArray_NDIM(matrix) != 2 or cnp.PyArray_TYPE(matrix) != type_num
            or not cnp.PyArray_ISNOTSWAPPED(matrix) or cnp.PyArray_DIMS(matrix)[1] != n_cols
            or cnp.PyArray_DIMS(matrix)[0] < 1):
        return None
    return cnp.PyArray_NewCopy(matrix, cnp.NPY_CORDER)


cdef void *data_or_null(object array):
    return NULL if array is None else cnp.PyArray_DATA(<cnp.ndarray> array)


cdef Parameters parameters_of(PointerTable values, TrainingRun run, const Py_ssize_t *counts,
                              size_t itemsize):
    """The Parameters of a network's values and a run's training arrays."""
    cdef Parameters parameters
    parameters.values = values.data
    parameters.grads = run.grads.data
    parameters.first_moments = run.first_moments.data
    parameters.second_moments = run.second_moments.data
    parameters.counts = counts
    parameters.decayed = <const unsigned char *> cnp.PyArray_DATA(<cnp.ndarray> run.decayed)
    parameters.n_params = values.count
    parameters.itemsize = itemsize
    return parameters


cdef TrainingPlan plan_of(TrainingRun run, const Py_ssize_t *order, double *epoch_losses,
                          Py_ssize_t n_epochs, Py_ssize_t n_samples,
                          double loss_denominator, bint step_updates) noexcept:
    """The plan of a program's train call: order (n_epochs, n_samples) or
    NULL, epoch_losses (n_epochs,)."""
    cdef TrainingPlan plan
    plan.n_epochs = n_epochs
    plan.n_samples = n_samples
    plan.batch_size = run.batch_size
    plan.order = order
    plan.clip_norm = run.clip_norm
    plan.step_updates = step_updates
    plan.loss_denominator = loss_denominator
    plan.epoch_losses = epoch_losses
    plan.threads, plan.n_thread_choices = run.thread_choices, run.n_thread_choices
    plan.control = &run.control
    plan.validate = NULL  # the program's, when run.validation is set
    plan.validation_losses = NULL
    if run.validation_losses is not None:
        plan.validation_losses = <double *> cnp.PyArray_DATA(
            <cnp.ndarray> run.validation_losses)
    return plan


cdef void restore_best(EpochControl *control, Optimizer *optimizer) noexcept nogil:
    """The kept arrays and the optimizer's step as they were after the best epoch."""
    cdef Py_ssize_t i
    if control.restored:
        return
    for i in range(control.n_kept):
        memcpy(control.kept[i], control.best[i], control.kept_bytes[i])
    optimizer.step = control.best_step
    control.restored = True


cdef inline double sample_clock_lr(const EpochControl *control, long long samples) noexcept nogil:
    """The sample clock's rate after samples samples (scikit-learn's
    invscaling, its t_): base_lr / (samples + 1)**power_t."""
    return control.base_lr / pow(<double> (samples + 1), control.power_t)


cdef bint end_epoch(const TrainingPlan *plan, void *program, Optimizer *optimizer,
                    Py_ssize_t epoch, int n_threads) noexcept nogil:
    """After epoch (of the plan's block): the validation loss, then the
    monitored loss (the validation loss, or without one the training loss)
    against the best so far. The stale count restarts when the loss falls
    to best - tol or below (scikit-learn's rule: a NaN is stale); the best
    (and, early stopping, a copy of the kept arrays and the step) follows
    any loss below it. After patience stale epochs the adaptive schedule
    divides lr by ADAPTIVE_DIVISOR while lr > the control's min_lr
    (MIN_ADAPTIVE_LR unless set), else stops training (scikit-learn's rule); early
    stopping and stop_on_plateau stop; stopping early puts back the best
    epoch (stop_on_plateau alone keeps the last). The sample clock sets
    the next epoch's lr from the samples trained so far (the plan's
    n_samples an epoch). Returns whether training stops."""
    cdef EpochControl *control = plan.control
    cdef double monitored = plan.epoch_losses[epoch]
    cdef Py_ssize_t i
    if plan.validate != NULL:
        monitored = plan.validate(program, n_threads)
        plan.validation_losses[epoch] = monitored
    if monitored <= control.best_loss - control.tol:
        control.stale = 0
    else:
        control.stale += 1
    if monitored < control.best_loss:
        control.best_loss = monitored
        control.best_epoch = control.epochs_done
        if control.early_stopping:
            for i in range(control.n_kept):
                memcpy(control.best[i], control.kept[i], control.kept_bytes[i])
            control.best_step = optimizer.step
    control.epochs_done += 1
    if control.schedule == SAMPLE_CLOCK:
        optimizer.lr = sample_clock_lr(
            control, control.samples_before + control.epochs_done * <long long> plan.n_samples)
    if control.stale >= control.patience:
        if control.schedule == ADAPTIVE:
            control.stale = 0
            control.stopped = optimizer.lr <= control.min_lr
            if not control.stopped:
                optimizer.lr = optimizer.lr / LR_DIVISOR
        else:
            control.stopped = control.early_stopping or control.stop_on_plateau
        if control.stopped and control.early_stopping:
            restore_best(control, optimizer)
    return control.stopped


cdef void update(const Parameters *parameters, const Optimizer *optimizer,
                 int n_threads) noexcept nogil:
    cdef Py_ssize_t param
    for param in range(parameters.n_params):
        if parameters.itemsize == sizeof(double):
            optimizer_step(<double *> parameters.values[param],
                           <double *> parameters.grads[param],
                           <double *> parameters.first_moments[param],
                           <double *> parameters.second_moments[param],
                           parameters.counts[param], optimizer, parameters.decayed[param],
                           n_threads)
        else:
            optimizer_step(<float *> parameters.values[param],
                           <float *> parameters.grads[param],
                           <float *> parameters.first_moments[param],
                           <float *> parameters.second_moments[param],
                           parameters.counts[param], optimizer, parameters.decayed[param],
                           n_threads)


cdef double train_epochs(BatchStep step, void *program, const Parameters *parameters,
                         const TrainingPlan *plan, Optimizer *optimizer, Py_ssize_t first,
                         Py_ssize_t stop, int n_threads, bint timed) noexcept nogil:
    """Epochs first .. stop - 1 of the plan on n_threads; returns their
    seconds when timed (else 0)."""
    cdef Py_ssize_t n_batches = (plan.n_samples + plan.batch_size - 1) // plan.batch_size
    cdef Py_ssize_t epoch, batch, start, n_rows
    cdef const Py_ssize_t *rows
    cdef double summed_loss
    cdef double started = lgmstm_omp_wtime() if timed else 0
    cdef EpochControl *control = plan.control
    for epoch in range(first, stop):
        summed_loss = 0
        for batch in range(n_batches):
            start = batch * plan.batch_size
            n_rows = min(plan.batch_size, plan.n_samples - start)
            rows = NULL
            if plan.order != NULL:
                rows = plan.order + epoch * plan.n_samples + start
            summed_loss += step(program, start, n_rows, rows, n_threads)
            if plan.clip_norm > 0:
                if parameters.itemsize == sizeof(double):
                    clip_gradients(<double **> parameters.grads, parameters.counts,
                                   parameters.n_params, plan.clip_norm)
                else:
                    clip_gradients(<float **> parameters.grads, parameters.counts,
                                   parameters.n_params, plan.clip_norm)
            optimizer.step += 1
            if control != NULL and control.schedule == INVSCALING:
                optimizer.lr = control.base_lr / pow(<double> optimizer.step, control.power_t)
            if not plan.step_updates:
                update(parameters, optimizer, n_threads)
        plan.epoch_losses[epoch] = summed_loss / plan.loss_denominator
        if control != NULL and control.monitoring and end_epoch(plan, program, optimizer,
                                                                epoch, n_threads):
            break
    return lgmstm_omp_wtime() - started if timed else 0


cdef enum:
    MANY = 0  # ThreadChoice's arms: all the kernel threads,
    ONE = 1   # or one

# A slice of epochs lasts about this long (at least an epoch): long enough
# to time, short enough that timing the slower arm costs little.
cdef double SLICE_SECONDS = 2e-4
# Probes of the arm not in use spend a credit that grows by this share of
# the time trained on the arm in use: they cost at most about that share.
cdef double PROBE_SHARE = 0.05
# The arm in use keeps its place unless the other was this much faster than
# it, in SWITCH_WINS probes in a row, each against the slice of the arm in
# use just before it (side by side, so that a slow stretch of the arm in
# use, its warm-up or a busy moment, that has ended does not count).
cdef double SWITCH_MARGIN = 0.05
cdef int SWITCH_WINS = 2


cdef inline Py_ssize_t slice_epochs(const ThreadChoice *choice, int arm) noexcept nogil:
    if choice.seconds[arm] == 0:
        return 1
    return max(1, min(<Py_ssize_t> (SLICE_SECONDS / choice.seconds[arm]), 1 << 20))


cdef inline double smoothed(double previous, double latest) noexcept nogil:
    # Halfway towards the latest time: one slow or lucky slice does not decide.
    return latest if previous == 0 else 0.5 * (previous + latest)


cdef int next_arm(const ThreadChoice *choice) noexcept nogil:
    """The arm of the next slice: the one in use, or a probe of the other."""
    cdef int other = ONE - choice.current
    cdef double probe_cost = choice.seconds[other] * slice_epochs(choice, other)
    if choice.seconds[choice.current] == 0:
        return choice.current
    if choice.last_arm == other:
        # Probes alternate with the arm in use: each is compared with the
        # slice of the arm in use just before it.
        return choice.current
    if choice.seconds[other] == 0 or choice.wins > 0:
        return other  # never timed, or faster once: time it (again)
    if choice.seconds[choice.current] > choice.seconds[other]:
        # Slower than the other was: the machine got busier, or quieter.
        return other if choice.credit >= 0 else choice.current
    return other if choice.credit >= probe_cost else choice.current


cdef void record_slice(ThreadChoice *choice, int arm, double per_epoch,
                       double seconds) noexcept nogil:
    """Take a slice's time per epoch on arm (and its seconds)."""
    cdef int other = ONE - choice.current
    cdef bint faster
    choice.last_arm = arm
    if arm == choice.current:
        choice.seconds[arm] = smoothed(choice.seconds[arm], per_epoch)
        choice.latest = per_epoch
        # Enough credit for one probe at a time.
        choice.credit = min(choice.credit + PROBE_SHARE * seconds,
                            max(0.0, choice.seconds[other] * slice_epochs(choice, other)))
        return
    choice.credit -= seconds
    # A probe follows a slice of the arm in use (next_arm): side by side.
    faster = per_epoch < (1 - SWITCH_MARGIN) * choice.latest
    # The other's time errs fast: one slow probe (a stall) must not put off
    # the next for long; the credit bounds what probes cost anyway.
    choice.seconds[arm] = min(per_epoch, smoothed(choice.seconds[arm], per_epoch))
    if not faster:
        choice.wins = 0
    elif choice.wins + 1 < SWITCH_WINS:
        choice.wins += 1
    else:
        choice.wins = 0
        choice.current = arm
        choice.latest = per_epoch
        choice.credit = 0


cdef ThreadChoice *choice_for(ThreadChoice *choices, int n_choices, int n_threads,
                              Py_ssize_t n_samples, Py_ssize_t batch_size,
                              bint *fresh) noexcept nogil:
    """The choice kept for epochs of this shape on n_threads, or (fresh) the
    least recently used one, emptied for them: another shape's times (or
    none) say nothing of these epochs'."""
    cdef ThreadChoice *choice = NULL
    cdef long long last_use = 0
    cdef int i
    for i in range(n_choices):
        last_use = max(last_use, choices[i].last_use)
    for i in range(n_choices):
        if (choices[i].last_use > 0 and choices[i].n_threads == n_threads
                and choices[i].n_samples == n_samples and choices[i].batch_size == batch_size):
            choice = &choices[i]
    fresh[0] = choice == NULL
    if choice == NULL:
        choice = &choices[0]
        for i in range(1, n_choices):
            if choices[i].last_use < choice.last_use:
                choice = &choices[i]
        memset(choice, 0, sizeof(ThreadChoice))
        # MANY is timed first, then ONE.
        choice.n_threads, choice.current, choice.last_arm = n_threads, MANY, MANY
        choice.n_samples, choice.batch_size = n_samples, batch_size
    choice.last_use = last_use + 1
    return choice


cdef inline bint warms_up(const ThreadChoice *choice, int arm, Py_ssize_t epoch,
                          Py_ssize_t stop) noexcept nogil:
    """Whether the slice epoch .. stop - 1 on arm first runs one epoch timed
    apart (for the credit only): it changes arm, which wakes the threads that
    slept and moves the data into other cores' caches, and has an epoch
    more to time."""
    return arm != choice.last_arm and stop - epoch > 1


cdef inline Py_ssize_t next_slice(const ThreadChoice *choice, Py_ssize_t epoch,
                                  Py_ssize_t end, int *arm) noexcept nogil:
    """The end of the slice from epoch (at most end), and its arm (OUT)."""
    arm[0] = next_arm(choice)
    return min(end, epoch + slice_epochs(choice, arm[0]))


cdef void run_epochs(BatchStep step, void *program, const Parameters *parameters,
                     const TrainingPlan *plan, Optimizer *optimizer,
                     int n_threads) noexcept nogil:
    """plan.n_epochs epochs of mini-batches; advances optimizer.step.

    On several threads the epochs go in slices of about SLICE_SECONDS,
    each on all n_threads (MANY) or on one (ONE), whichever plan.threads
    last found faster for epochs of this shape (n_samples, batch_size),
    and now and then a slice times the other. A thread
    that the machine does not run when a parallel region needs it (other
    processes have the cores) makes the region wait for it, and a
    multithreaded epoch can then take many times a one-thread epoch: the
    fit goes on one thread while that lasts, and back on n_threads once
    they pay again. The first epoch of a slice on the other arm than the
    slice before is timed apart: it pays the threads' wake and the caches'
    warm-up, and counts against the probes' credit, not in the arm's time
    per epoch. The results are the same: the thread count never changes
    what is computed (see _parallel.pxd).
    """
    cdef ThreadChoice *choice
    cdef Py_ssize_t epoch = 0, stop
    cdef double seconds, warm_up
    cdef int arm
    cdef bint fresh
    if plan.control != NULL and plan.control.stopped:
        return
    if n_threads <= 1 or plan.threads == NULL:
        train_epochs(step, program, parameters, plan, optimizer, 0, plan.n_epochs, n_threads,
                     False)
        return
    choice = choice_for(plan.threads, plan.n_thread_choices, n_threads, plan.n_samples,
                        plan.batch_size, &fresh)
    if fresh:
        # The first epoch of a shape pays for its workspace's first touch (a
        # deep STM's took twice a steady one): untimed, so that it does not
        # make MANY look slower than ONE and put the fit on one thread.
        train_epochs(step, program, parameters, plan, optimizer, 0, 1, n_threads, False)
        epoch = 1
        if plan.control != NULL and plan.control.stopped:
            return
    while epoch < plan.n_epochs:
        stop = next_slice(choice, epoch, plan.n_epochs, &arm)
        warm_up = 0
        if warms_up(choice, arm, epoch, stop):
            # Timed for the probes' cost, not for the arm's time per epoch: a
            # 5-epoch probe of 2 threads paid a wake of tens of microseconds
            # in its per-epoch time and lost to 1 thread it was 1.4x faster
            # than.
            warm_up = train_epochs(step, program, parameters, plan, optimizer, epoch,
                                   epoch + 1, n_threads if arm == MANY else 1, True)
            epoch += 1
            if plan.control != NULL and plan.control.stopped:
                break
        seconds = train_epochs(step, program, parameters, plan, optimizer, epoch, stop,
                               n_threads if arm == MANY else 1, True)
        record_slice(choice, arm, seconds / (stop - epoch), seconds + warm_up)
        epoch = stop
        if plan.control != NULL and plan.control.stopped:
            break


def _simulate_thread_choice(many, one, Py_ssize_t call_epochs=0):
    """Test hook: the arms that run_epochs' choice (choice_for, next_slice,
    record_slice) gives epochs whose times are made up.

    many, one: sequences of float, the seconds epoch i takes on all the
    threads (MANY) and on one (ONE), as many of each; call_epochs: the
    epochs of each call of run_epochs (a slice ends with its call), 0: one
    call of them all. The choice is a fresh one, as run_epochs makes for a
    shape it has not seen, whose first epoch runs on MANY untimed; as
    there, the first epoch of a slice on the other arm than the slice
    before counts for the credit only. Returns
    two int8 arrays, per epoch 0 (MANY) or 1 (ONE): the arm the epoch ran
    on, and the arm in use then (where they differ, the epoch was a probe).
    """
    cdef const double[::1] times_many = np.ascontiguousarray(many, np.float64)
    cdef const double[::1] times_one = np.ascontiguousarray(one, np.float64)
    cdef Py_ssize_t n_epochs = times_many.shape[0], epoch = 0, call_end, stop, i
    cdef ThreadChoice choice
    cdef double seconds, warm_up
    cdef int arm
    cdef bint fresh
    if times_one.shape[0] != n_epochs:
        raise ValueError(f"many and one: expected as many times, got {n_epochs} "
                         f"and {times_one.shape[0]}")
    arms, in_use = np.zeros(n_epochs, np.int8), np.zeros(n_epochs, np.int8)
    cdef signed char[::1] chosen = arms, current = in_use
    memset(&choice, 0, sizeof(ThreadChoice))
    while epoch < n_epochs:
        call_end = n_epochs if call_epochs <= 0 else min(n_epochs, epoch + call_epochs)
        choice_for(&choice, 1, 2, n_epochs, n_epochs, &fresh)
        if fresh:
            epoch += 1
        while epoch < call_end:
            stop = next_slice(&choice, epoch, call_end, &arm)
            warm_up = 0
            if warms_up(&choice, arm, epoch, stop):
                warm_up = times_many[epoch] if arm == MANY else times_one[epoch]
                chosen[epoch], current[epoch] = arm, choice.current
                epoch += 1
            seconds = 0
            for i in range(epoch, stop):
                seconds += times_many[i] if arm == MANY else times_one[i]
                chosen[i], current[i] = arm, choice.current
            record_slice(&choice, arm, seconds / (stop - epoch), seconds + warm_up)
            epoch = stop
    return arms, in_use


# What run_epochs' choice of thread count is tuned by (see above), for the tests.
THREAD_CHOICE_SETTINGS = {"slice_seconds": SLICE_SECONDS, "probe_share": PROBE_SHARE,
                          "switch_margin": SWITCH_MARGIN, "switch_wins": SWITCH_WINS,
                          "shapes_kept": THREAD_CHOICES_KEPT}
# How many panel workspaces a program keeps (KeptMemory), for the tests.
WORKSPACES = WORKSPACES_KEPT


cdef void run_training(TrainingRun run, BatchStep step, void *program,
                       const Parameters *parameters, const TrainingPlan *plan,
                       Optimizer *optimizer, int n_threads) noexcept:
    """run_epochs, called holding the GIL: released for the epochs unless
    run.keep_gil (a short fit of a few microseconds' work, which the
    release and the taking back would slow by a tenth)."""
    if run.keep_gil:
        run_epochs(step, program, parameters, plan, optimizer, n_threads)
        return
    with nogil:
        run_epochs(step, program, parameters, plan, optimizer, n_threads)


@cython.auto_pickle(False)
cdef class KeptMemory:
    """Zeroed scratch memory that a program keeps from one training call to
    the next: a block per layout, for up to WORKSPACES_KEPT layouts, the
    least recently used giving way.

    A fresh block costs its page faults and zeroing at every call (the
    STM's panel workspace is hundreds of KB, more than a short epoch's
    arithmetic), and a partial_fit loop over mini-batches alternates two
    layouts (the full batches and a last smaller one). A block kept is as
    the last call of its layout left it, as it is from one epoch to the
    next within a call.
    """

    def __dealloc__(self):
        cdef Py_ssize_t slot
        for slot in range(WORKSPACES_KEPT):
            free(self.blocks[slot].allocated)

    cdef void *get(self, size_t n_bytes, Py_ssize_t n_steps, Py_ssize_t task_width,
                   Py_ssize_t n_groups) except NULL:
        """n_bytes starting on a panel boundary (see panel_calloc): the
        block kept for this layout (the steps, task width and groups that
        fix where everything lies; 0 steps for the LGM), else a zeroed one
        in place of the least recently used (or a free slot)."""
        cdef Py_ssize_t slot, oldest = 0
        cdef KeptBlock *block
        self.calls += 1
        for slot in range(WORKSPACES_KEPT):
            block = &self.blocks[slot]
            if (block.start != NULL and block.n_bytes == n_bytes and block.layout[0] == n_steps
                    and block.layout[1] == task_width and block.layout[2] == n_groups):
                block.used = self.calls
                return block.start
            if block.used < self.blocks[oldest].used:
                oldest = slot   # a free slot was never used: 0, the oldest of all
        block = &self.blocks[oldest]
        free(block.allocated)
        block.allocated = block.start = NULL
        block.used = 0
        block.start = panel_calloc(n_bytes, &block.allocated)
        if block.start == NULL:
            raise MemoryError()
        block.n_bytes = n_bytes
        block.layout[0], block.layout[1], block.layout[2] = n_steps, task_width, n_groups
        block.used = self.calls
        self.allocations += 1
        return block.start

    def _kept(self):
        """{"layouts": (n_bytes, n_steps, task width, n_groups) of each kept
        block, the most recently used first; "allocations": the blocks made
        so far}. For the tests."""
        cdef Py_ssize_t slot
        kept = [(self.blocks[slot].used, (self.blocks[slot].n_bytes,
                 self.blocks[slot].layout[0], self.blocks[slot].layout[1],
                 self.blocks[slot].layout[2]))
                for slot in range(WORKSPACES_KEPT) if self.blocks[slot].start != NULL]
        return {"layouts": [layout for _, layout in sorted(kept, reverse=True)],
                "allocations": self.allocations}


cdef size_t array_bytes(object array) noexcept:
    return <size_t> cnp.PyArray_NBYTES(<cnp.ndarray> array)


@cython.auto_pickle(False)
cdef class Program:
    """What the model programs (_lgm.Network, _stm.Network) share: their
    parameters and the model's lock (set by the subclass), the kept panel
    workspace, and the short fit.

    A subclass implements ready_steps (whether data can take the short
    fit) and train_run (epochs of training on a TrainingRun).
    """

    cdef Py_ssize_t ready_steps(self, object X, object Y, object h0,
                                Py_ssize_t batch_size) except -2:
        """n_steps of X (0 for the LGM) when X, Y and h0 are what the
        kernels take as they are, batches of up to batch_size samples never
        thread BLAS and an epoch is short (SHORT_FIT_WORK); else -1. Sets
        short_work to the epoch's multiply-adds, and short_checks_data when
        the epoch gathers X and Y into the panel layout (which checks them:
        see fit_ready)."""
        return -1

    cdef int train_run(self, TrainingRun run, const Py_ssize_t *order, double *epoch_losses,
                       Py_ssize_t n_epochs, int n_threads) except -1:
        """n_epochs epochs on run (order: (n_epochs, n_samples) or NULL, in
        sample order); the losses to epoch_losses (OUT)."""
        raise NotImplementedError

    def kept_workspaces(self):
        """The panel workspaces kept for this program's fits (see
        KeptMemory): {"layouts": (n_bytes, n_steps, task width, n_groups)
        of each, most recently used first; "allocations": how many were
        made}."""
        if self.panel_memory is None:
            return {"layouts": [], "allocations": 0}
        return self.panel_memory._kept()

    def kept_thread_choices(self):
        """The choices of thread count kept for this program's fits (see
        run_epochs), most recently used first: per shape of epoch, a dict of
        n_threads, n_samples, batch_size, "current" ("many" or "one") and
        "seconds" (per epoch on many and on one, 0.0 where not timed yet)."""
        cdef const ThreadChoice *choice
        cdef int i
        kept = []
        for i in range(THREAD_CHOICES_KEPT):
            choice = &self.thread_choices[i]
            if choice.last_use > 0:
                kept.append((-choice.last_use, {
                    "n_threads": choice.n_threads, "n_samples": choice.n_samples,
                    "batch_size": choice.batch_size,
                    "current": "many" if choice.current == MANY else "one",
                    "seconds": (choice.seconds[MANY], choice.seconds[ONE])}))
        return [entry for _, entry in sorted(kept, key=lambda pair: pair[0])]

    def fit_ready(self, model, X, Y, h0, final_states, lr, batch_size, optimizer,
                  clip_norm, shuffle, warm_start, momentum, nesterov, beta1, beta2, eps,
                  weight_decay):
        """The losses (shape (1,)) of one epoch of training on (X, Y), or
        None when the caller must take its checked path: the short fit of
        partial_fit and fit(epochs=1).

        Taken when the data are what the kernels take as they are (see
        ready_steps; h0: the initial states, or None), a softmax or sigmoid
        output's targets are valid (``model._short_fit_targets``), every
        hyper-parameter is of a type the checked path takes unchanged, and
        the model is not in use. As the checked path, it warns before
        training when a tanh output's Y holds a target outside [-1, 1]
        (lgmstm._training.warn_beyond_tanh), and sets the model's
        ``history_`` (the losses), ``validation_history_`` and
        ``best_epoch_`` (none).
        Shuffled mini-batches take their order from ``model._rng`` as the
        checked path does. The optimizer state is the model's
        (``model._optimizer_state``), with the rules of
        lgmstm._training.train_model; the TrainingRun for it is made once
        by ``run_factory(X, Y, h0, batch_size, state to continue or None,
        optimizer, settings)`` -> (run, state), settings being (momentum,
        nesterov, beta1, beta2, eps) and state a fresh one unless the one
        given continues with them; runs are kept for the next calls with
        the same settings and state, one per shape of batch (up to
        SHORT_RUNS_KEPT; weight_decay and clip_norm are set per call). A
        non-finite loss or parameter restores the parameters and optimizer
        state and returns None: the checked
        path then trains the epoch again and warns. final_states: None, or
        an array (n_samples, n_hidden) of the model's dtype, C-contiguous,
        that the STM's epoch writes each sequence's final state to (OUT), and
        that becomes the model's ``_state`` (its working memory) when the
        epoch trained.
        """
        cdef cnp.ndarray array
        cdef cnp.npy_intp dims[2]
        cdef Py_ssize_t n_samples, n_steps, batch, limit, i
        cdef double rate, clip = 0, decay, mu, b1, b2, epsilon
        cdef double loss = 0
        cdef TrainingRun run
        cdef PointerTable trained_arrays, saved_arrays
        cdef object state, losses, order = None
        cdef const Py_ssize_t *rows = NULL
        cdef bint trained = False, keep_gil
        if (type(X) is not cnp.ndarray or cnp.PyArray_NDIM(<cnp.ndarray> X) < 1
                or not isinstance(lr, float) or type(optimizer) is not str
                or (shuffle is not True and shuffle is not False)
                or (warm_start is not True and warm_start is not False)):
            return None
        rate = lr
        if not (rate > 0 and isfinite(rate)):
            return None
        if not (isinstance(momentum, float) and isinstance(beta1, float)
                and isinstance(beta2, float) and isinstance(eps, float)
                and isinstance(weight_decay, float)
                and (nesterov is False or (nesterov is True and optimizer == "momentum"))):
            return None
        mu, b1, b2, epsilon, decay = momentum, beta1, beta2, eps, weight_decay
        if not (0 <= mu < 1 and 0 <= b1 < 1 and 0 <= b2 < 1 and epsilon > 0
                and isfinite(epsilon) and decay >= 0 and isfinite(decay)):
            return None
        if clip_norm is not None:
            if not isinstance(clip_norm, float):
                return None
            clip = clip_norm
            if not (clip > 0 and isfinite(clip)):
                return None
        n_samples = cnp.PyArray_DIMS(<cnp.ndarray> X)[0]
        if batch_size is None or (type(batch_size) is int and batch_size >= n_samples):
            batch = n_samples
        elif type(batch_size) is int and batch_size >= 1:
            batch = batch_size
        else:
            return None
        if n_samples < 1 or optimizer not in OPTIMIZER_CODES:
            return None
        if self.loss != SQUARED_ERROR and not model._short_fit_targets(Y, self.n_out):
            return None
        self.short_work = GIL_HELD_WORK  # unless ready_steps says less
        self.short_checks_data = False   # unless ready_steps says the epoch checks
        n_steps = self.ready_steps(X, Y, h0, batch)
        if n_steps < 0:
            return None
        # Read at once: another thread's call may set them again before this
        # one holds the model (below, a warning runs Python code).
        keep_gil = self.short_work < GIL_HELD_WORK
        # An epoch that gathers X and Y into the panel layout checks them as it
        # reads them (gather_panel): a non-finite value makes its loss NaN, and
        # the parameters are put back below. Shuffled batches are checked
        # first, so that bad data draws no order from the model's generator.
        if ((not self.short_checks_data or (shuffle and batch < n_samples))
                and (not array_finite(<cnp.ndarray> X) or not array_finite(<cnp.ndarray> Y))):
            return None
        if h0 is not None and not array_finite(<cnp.ndarray> h0):
            return None
        if not self.lock.try_train():
            return None   # the checked path waits, and warns as below
        try:
            if self.output_tanh and scan_beyond_unit(<cnp.ndarray> Y, cnp.PyArray_SIZE(
                    <cnp.ndarray> Y)):
                # Before training, as the checked path warns: raised as an
                # error, it leaves the model as it was. Only once the model
                # is held: a call that falls back to the checked path for
                # want of it would warn twice.
                from lgmstm._training import warn_beyond_tanh
                warn_beyond_tanh(Y)
            state = model._optimizer_state
            same = (state is not None and state is self.short_state
                    and optimizer == self.short_optimizer
                    and mu == self.short_momentum and b1 == self.short_beta1
                    and b2 == self.short_beta2 and epsilon == self.short_eps
                    and (nesterov is True) == self.short_nesterov)
            if same and not warm_start:
                # A fresh state, made in place: zero moments, no step done.
                for i in range(self.params.count, self.trained.count):
                    memset(self.trained.data[i], 0, array_bytes(self.trained.arrays[i]))
                state.step = 0
            if (same and n_samples == self.short_samples and n_steps == self.short_steps
                    and batch == self.short_batch):
                run = self.short_run  # the last call's shape: no look-up
            else:
                shape = (n_samples, n_steps, batch)
                run = self.short_runs.get(shape) if same else None
            if same and run is None:
                # Another shape of batch (a last, smaller one): a run of its
                # own, on the same state.
                run, made = self.run_factory(X, Y, h0, batch, state, optimizer,
                                             (mu, nesterov, b1, b2, epsilon))
                same = made is state
                if same:
                    if len(self.short_runs) >= SHORT_RUNS_KEPT:
                        self.short_runs.clear()
                    self.short_runs[shape] = run
            if not same:
                # Nothing kept is valid until all is made (should making it
                # raise, the next call must not take the last call's run).
                self.short_state, self.short_runs, self.short_samples = None, {}, -1
                run, state = self.run_factory(X, Y, h0, batch, state if warm_start else None,
                                              optimizer, (mu, nesterov, b1, b2, epsilon))
                trained_arrays = PointerTable(
                    self.params.arrays + [a for arrays in state.moments for a in arrays])
                saved_arrays = PointerTable([a.copy() for a in trained_arrays.arrays])
                self.trained, self.saved = trained_arrays, saved_arrays
                self.short_runs = {shape: run}
                self.short_state, self.short_optimizer = state, optimizer
                self.short_momentum, self.short_beta1, self.short_beta2 = mu, b1, b2
                self.short_eps, self.short_nesterov = epsilon, nesterov is True
                model._optimizer_state = state
            self.short_run = run
            self.short_samples, self.short_steps, self.short_batch = n_samples, n_steps, batch
            run.X, run.Y, run.initial_states, run.final_states = X, Y, h0, final_states
            run.clip_norm = clip
            run.keep_gil = keep_gil
            run.optimizer.lr = rate
            run.optimizer.weight_decay = decay
            run.optimizer.step = state.step
            for i in range(self.trained.count):
                memcpy(self.saved.data[i], self.trained.data[i],
                       array_bytes(self.trained.arrays[i]))
            if shuffle and batch < n_samples:
                # Drawn from the model's generator as the checked path draws it.
                order = epoch_orders(model._rng, 1, n_samples)
                rows = <const Py_ssize_t *> cnp.PyArray_DATA(<cnp.ndarray> order)
            self.train_run(run, rows, &loss, 1, kernel_threads())
            trained = isfinite(loss)
            for i in range(self.params.count):
                if not trained:
                    break
                trained = array_finite(<cnp.ndarray> self.params.arrays[i])
            if not trained:
                for i in range(self.trained.count):
                    memcpy(self.trained.data[i], self.saved.data[i],
                           array_bytes(self.trained.arrays[i]))
                return None
            state.step = run.optimizer.step
            # Set while the model is still held: a partial_fit waiting for it
            # must not see the history of the one before.
            dims[0] = 1
            losses = cnp.PyArray_EMPTY(1, dims, cnp.NPY_DOUBLE, 0)
            (<double *> cnp.PyArray_DATA(<cnp.ndarray> losses))[0] = loss
            model.history_ = losses
            model.validation_history_ = NO_VALIDATION
            model.best_epoch_ = None
            if final_states is not None:
                # here, not in the caller: a Ctrl-C between the two would
                # leave a trained model with the memory it had before
                model._state = final_states
        finally:
            run = self.short_run
            if run is not None:  # the caller's arrays are not kept
                run.X = run.Y = run.initial_states = run.final_states = None
                run.keep_gil = False
            self.lock.end_train()
        return losses
