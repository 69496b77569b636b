# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The training driver both model programs (_lgm, _stm) run, and the typed
objects their entry points take: PointerTable (arrays as pointers the
nogil code can use) and TrainingRun (the data and plan of one fit).

    for each epoch, for each mini-batch (in the epoch's order):
        loss += step(batch)                 the program: forward, loss, backward
        clip the gradients' global norm     when clip_norm > 0
        optimizer.step += 1; update every parameter with its moments
    epoch_losses[epoch] = loss / loss_denominator
"""
cimport numpy as cnp
from cpython.pythread cimport PyThread_get_thread_ident
from libc.math cimport isfinite
from libc.stdlib cimport free, malloc

from lgmstm._omp cimport lgmstm_omp_max_threads
from lgmstm._optim cimport Optimizer, clip_gradients, optimizer_step
from lgmstm._parallel cimport BLAS_THREADING_WORK as _BLAS_THREADING_WORK

import threading

import numpy as np

cnp.import_array()

BLAS_THREADING_WORK = _BLAS_THREADING_WORK

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


def all_finite(arrays):
    """Whether every value of these arrays is finite (no NaN or inf).

    C-contiguous float32/float64 arrays are scanned here, stopping at the
    first non-finite value; any other array goes to np.isfinite.
    """
    cdef cnp.ndarray array
    cdef Py_ssize_t i, n
    cdef const double *doubles
    cdef const float *floats
    cdef bint finite = True
    for item in arrays:
        if (type(item) is not np.ndarray
                or not cnp.PyArray_ISCARRAY_RO(<cnp.ndarray> item)
                or cnp.PyArray_TYPE(<cnp.ndarray> item) not in (cnp.NPY_DOUBLE, cnp.NPY_FLOAT)):
            if not np.isfinite(item).all():
                return False
            continue
        array = <cnp.ndarray> item
        n = cnp.PyArray_SIZE(array)
        with nogil:
            if cnp.PyArray_TYPE(array) == cnp.NPY_DOUBLE:
                doubles = <const double *> cnp.PyArray_DATA(array)
                for i in range(n):
                    if not isfinite(doubles[i]):
                        finite = False
                        break
            else:
                floats = <const float *> cnp.PyArray_DATA(array)
                for i in range(n):
                    if not isfinite(floats[i]):
                        finite = False
                        break
        if not finite:
            return False
    return True


cdef class UseLock:
    """Many concurrent readers of a model's parameters, or one trainer.

    predict/loss/gradients/save read the model; fit has it alone: it waits
    for the current readers to finish, and new readers wait for it. A second
    fit from another thread is refused. The training thread itself may read
    (a callback that calls predict).

    The fast paths of compiled code take and leave a read with try_read and
    end_read, a few nanoseconds: they run with the GIL held, which makes
    each of them atomic with respect to every other Python thread. Waiting
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
            while not lock.try_read():
                lock.condition.wait()

    def __exit__(self, *exc):
        self.lock.end_read()


cdef class _Training(_LockContext):
    def __enter__(self):
        cdef UseLock lock = self.lock
        cdef unsigned long me = PyThread_get_thread_ident()
        with lock.condition:
            if lock.trainer != 0:
                raise RuntimeError("this model is already being trained "
                                   + ("(fit called from its own callback)" if lock.trainer == me
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
    zero states); final_states: OUT, or None. grads: scratch laid out as
    the parameters; first_moments, second_moments: INOUT optimizer
    moments (any valid arrays where the optimizer has none); workspace:
    the program's scratch arrays, in the order the program documents.
    optimizer: the code of lgmstm._training's optimizer table; step: the
    updates done so far, which training advances.
    """

    def __cinit__(self, *, X, Y, grads, first_moments, second_moments, workspace,
                  Py_ssize_t batch_size, int optimizer, double lr, double momentum,
                  double beta1, double beta2, double eps, double clip_norm=0,
                  long long step=0, lengths=None, initial_states=None,
                  final_states=None):
        self.X, self.Y = X, Y
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
        self.optimizer.step = step

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
    if type(array) is not np.ndarray:
        return False
    cdef cnp.ndarray matrix = <cnp.ndarray> array
    if (cnp.PyArray_NDIM(matrix) != 2 or cnp.PyArray_TYPE(matrix) != type_num
            or not cnp.PyArray_ISCARRAY_RO(matrix) or cnp.PyArray_DIMS(matrix)[1] != n_cols):
        return False
    if n_rows < 0:
        return cnp.PyArray_DIMS(matrix)[0] >= 1
    return cnp.PyArray_DIMS(matrix)[0] == n_rows


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
    parameters.n_params = values.count
    parameters.itemsize = itemsize
    return parameters


cdef TrainingPlan plan_of(TrainingRun run, const Py_ssize_t[:, ::1] order,
                          double[::1] epoch_losses, Py_ssize_t n_samples,
                          double loss_denominator, bint step_updates):
    """The plan of a program's train call: order (n_epochs or 0, n_samples),
    epoch_losses (n_epochs,)."""
    cdef TrainingPlan plan
    plan.n_epochs = epoch_losses.shape[0]
    plan.n_samples = n_samples
    plan.batch_size = run.batch_size
    plan.order = &order[0, 0] if order.shape[0] > 0 else NULL
    plan.clip_norm = run.clip_norm
    plan.step_updates = step_updates
    plan.loss_denominator = loss_denominator
    plan.epoch_losses = &epoch_losses[0] if plan.n_epochs > 0 else NULL
    return plan


cdef void update(const Parameters *parameters, const Optimizer *optimizer,
                 int n_threads) noexcept nogil:
    cdef Py_ssize_t param
    for param in range(parameters.n_params):
        if parameters.itemsize == sizeof(double):
            optimizer_step(<double *> parameters.values[param],
                           <double *> parameters.grads[param],
                           <double *> parameters.first_moments[param],
                           <double *> parameters.second_moments[param],
                           parameters.counts[param], optimizer, n_threads)
        else:
            optimizer_step(<float *> parameters.values[param],
                           <float *> parameters.grads[param],
                           <float *> parameters.first_moments[param],
                           <float *> parameters.second_moments[param],
                           parameters.counts[param], optimizer, n_threads)


cdef void run_epochs(BatchStep step, void *program, const Parameters *parameters,
                     const TrainingPlan *plan, Optimizer *optimizer,
                     int n_threads) noexcept nogil:
    """plan.n_epochs epochs of mini-batches; advances optimizer.step."""
    cdef Py_ssize_t n_batches = (plan.n_samples + plan.batch_size - 1) // plan.batch_size
    cdef Py_ssize_t epoch, batch, start, n_rows
    cdef const Py_ssize_t *rows
    cdef double summed_loss
    for epoch in range(plan.n_epochs):
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
            if not plan.step_updates:
                update(parameters, optimizer, n_threads)
        plan.epoch_losses[epoch] = summed_loss / plan.loss_denominator
