# The one training driver, for either model program: epochs of mini-batches,
# each batch's gradients from the program (a BatchStep), then clipping and
# the optimizer over every parameter. Implemented in _train.pyx.
from lgmstm._optim cimport Optimizer


cdef class PointerTable:
    """Data pointers of a list of C-contiguous arrays, usable without the GIL."""
    cdef void **data
    cdef readonly list arrays
    cdef readonly Py_ssize_t count


cdef class UseLock:
    """Many concurrent readers of a model's parameters, or one trainer (see _train.pyx)."""
    cdef readonly Py_ssize_t readers
    cdef readonly unsigned long trainer   # the training thread's ident, 0: none
    cdef Py_ssize_t trainers_waiting, readers_waiting
    cdef object condition
    cdef object reading_context, training_context
    cdef bint try_read(self) except -1
    cdef int end_read(self) except -1
    cdef bint try_train(self) except -1
    cdef int end_train(self) except -1


cdef struct ThreadChoice:
    # Whether the coming epochs train on all the kernel threads (MANY) or on
    # one (ONE): whichever was faster when last timed (see run_epochs).
    double seconds[2]          # the smoothed time per epoch on [MANY, ONE]; 0: not yet timed
    double latest              # the time per epoch of `current`'s last slice
    double credit              # seconds that probes of the other arm may spend now
    int current                # MANY or ONE
    int last_arm               # the arm of the last slice
    int wins                   # probes in a row that beat the slice of `current` before them
    # What the times are for: MANY's thread count, and the epochs' shape
    int n_threads
    Py_ssize_t n_samples, batch_size
    long long last_use         # when run_epochs last took it (a count; 0: unused)


cdef enum:
    # A program's choices of thread count, one per shape of epoch (run_epochs
    # keeps each shape's times, the least recently used giving way): a
    # partial_fit loop alternates full batches and a last smaller one.
    THREAD_CHOICES_KEPT = 4
    # A program's panel workspaces, one per layout (KeptMemory), for the same
    # loops: a fresh block costs its page faults and zeroing at every call.
    WORKSPACES_KEPT = 4


cdef enum Schedule:
    # The learning-rate schedules (lgmstm._training.SCHEDULES names them).
    CONSTANT = 0
    INVSCALING = 1   # lr / step**power_t, step counted from 1
    ADAPTIVE = 2     # lr / 5 after patience epochs without improvement
    SAMPLE_CLOCK = 3 # after each epoch lr / (samples seen + 1)**power_t (scikit-learn's
                     # invscaling, the estimators' private schedule)


cdef struct EpochControl:
    # What the driver does after each epoch (see end_epoch in _train.pyx):
    # the schedule, the monitored loss (the validation loss when the program
    # gives one, else the training loss), early stopping. Kept in the
    # TrainingRun, so it carries from one block of epochs to the next.
    int schedule
    double base_lr, power_t    # invscaling's lr / step**power_t (SAMPLE_CLOCK's as above)
    long long samples_before   # SAMPLE_CLOCK: samples trained before this fit
    double min_lr              # ADAPTIVE: a plateau at lr <= min_lr stops training
    bint monitoring            # the epoch's end has work: validation, adaptive, early stop
    bint early_stopping
    bint stop_on_plateau       # a plateau stops training at its epoch (early stopping: at the best)
    Py_ssize_t patience
    double tol
    double best_loss           # INOUT the lowest monitored loss so far (inf: none)
    Py_ssize_t best_epoch      # INOUT its epoch, counted over the fit (-1: none)
    Py_ssize_t epochs_done     # INOUT epochs of the fit so far
    Py_ssize_t stale           # INOUT epochs since the loss last fell to best - tol or below
    long long best_step        # the optimizer's step after the best epoch
    bint stopped               # OUT training stopped (early stop, or adaptive's
                               # plateau at lr <= min_lr)
    bint restored              # the kept arrays hold the best epoch's copy
    void **kept                # the arrays early stopping restores (params, moments, ...)
    void **best                # INOUT their copies after the best epoch
    const Py_ssize_t *kept_bytes
    Py_ssize_t n_kept


cdef class TrainingRun:
    """The data, the training arrays and the plan of one fit (see _train.pyx)."""
    cdef readonly object X, Y, lengths, initial_states, final_states
    cdef readonly object weights   # float64 per sample (the program's rows), or None
    cdef public object validation         # the program's validation data and scratch, or None
    cdef public object validation_losses  # OUT float64 (>= a block's epochs,), or None
    cdef EpochControl control
    cdef PointerTable kept_table, best_table
    cdef object kept_sizes
    cdef readonly PointerTable grads, first_moments, second_moments, workspace
    cdef readonly Py_ssize_t batch_size
    cdef readonly double clip_norm
    cdef readonly object decayed   # uint8 (n_params,): 1 for a weight, which decays
    cdef Optimizer optimizer
    cdef bint keep_gil      # train holding the GIL: a short fit of little work (see run_training)
    cdef ThreadChoice *thread_choices  # the program's (kept from fit to fit), or own_choice
    cdef int n_thread_choices          # THREAD_CHOICES_KEPT, or 1
    cdef ThreadChoice own_choice
    cdef object choice_owner


cdef struct Parameters:
    void **values            # INOUT the parameters
    void **grads             # scratch: the batch's gradients, laid out as values
    void **first_moments     # INOUT (momentum, adam), or any valid pointers
    void **second_moments    # INOUT (adam), or any valid pointers
    const Py_ssize_t *counts # values per parameter
    const unsigned char *decayed  # per parameter: 1 for a weight (weight decay), 0 a bias
    Py_ssize_t n_params
    size_t itemsize          # 4 (float32) or 8 (float64)


# The validation loss (its mean, as the epoch's loss is) of the program's
# validation set with the current parameters: forward and loss, no gradients.
ctypedef double (*ValidationStep)(void *program, int n_threads) noexcept nogil


cdef struct TrainingPlan:
    Py_ssize_t n_epochs, n_samples, batch_size
    const Py_ssize_t *order  # IN (n_epochs, n_samples): each epoch's sample order, or NULL
    double clip_norm         # > 0: clip the global gradient norm to it
    bint step_updates        # the BatchStep applies plain SGD itself (grads unused)
    double loss_denominator  # an epoch's loss is its summed loss over this
    double *epoch_losses     # OUT (n_epochs,)
    ThreadChoice *threads    # INOUT the run's choices of thread count (one per shape),
    int n_thread_choices     # this many
    EpochControl *control    # INOUT the run's (schedule, validation, early stopping)
    ValidationStep validate  # the program's validation loss, or NULL
    double *validation_losses  # OUT (n_epochs,) when validate is not NULL


# One batch: samples start .. start + n_rows - 1, or rows[0 .. n_rows - 1]
# when rows is not NULL. Fills the program's gradients (or, step_updates,
# updates the parameters) and returns the batch's summed loss.
ctypedef double (*BatchStep)(void *program, Py_ssize_t start, Py_ssize_t n_rows,
                             const Py_ssize_t *rows, int n_threads) noexcept nogil


cdef void run_epochs(BatchStep step, void *program, const Parameters *parameters,
                     const TrainingPlan *plan, Optimizer *optimizer,
                     int n_threads) noexcept nogil
cdef void run_training(TrainingRun run, BatchStep step, void *program,
                       const Parameters *parameters, const TrainingPlan *plan,
                       Optimizer *optimizer, int n_threads) noexcept

cdef TrainingPlan plan_of(TrainingRun run, const Py_ssize_t *order, double *epoch_losses,
                          Py_ssize_t n_epochs, Py_ssize_t n_samples,
                          double loss_denominator, bint step_updates) noexcept
cdef bint is_ready_matrix(object array, int type_num, Py_ssize_t n_rows,
                          Py_ssize_t n_cols) except -1
cdef object ready_copy(object array, int type_num, Py_ssize_t n_cols)
cdef Py_ssize_t ready_sequences(object X, object Y, int type_num, Py_ssize_t n_in,
                                Py_ssize_t n_out, bint every_step) except -2
cdef void *data_or_null(object array)
cdef int kernel_threads() noexcept nogil
cdef Parameters parameters_of(PointerTable values, TrainingRun run, const Py_ssize_t *counts,
                              size_t itemsize)


cdef struct KeptBlock:
    void *allocated
    void *start                 # NULL: the slot is free
    size_t n_bytes
    Py_ssize_t layout[3]        # (n_steps, task width, n_groups) it was made for
    unsigned long long used     # the KeptMemory's call count when last handed out


cdef class KeptMemory:
    """Zeroed scratch memory a program keeps from one training call to the
    next with the same layout, for up to WORKSPACES_KEPT layouts (see
    _train.pyx)."""
    cdef KeptBlock blocks[WORKSPACES_KEPT]
    cdef unsigned long long calls
    cdef Py_ssize_t allocations   # blocks made so far (for the tests)
    cdef void *get(self, size_t n_bytes, Py_ssize_t n_steps, Py_ssize_t task_width,
                   Py_ssize_t n_groups) except NULL


cdef class Program:
    """What the model programs (_lgm.Network, _stm.Network) share: the
    parameters, the model's lock, and the short fit (see _train.pyx)."""
    cdef readonly PointerTable params
    cdef UseLock lock
    cdef int type_num                  # the parameters' dtype
    cdef readonly str output           # the output's activation and loss (see _loss.pxd)
    cdef readonly bint output_tanh
    cdef readonly int loss             # its loss code (_loss.pxd)
    cdef Py_ssize_t n_out              # outputs per sample (or step)
    cdef KeptMemory panel_memory       # the panel layout's workspace
    cdef ThreadChoice thread_choices[THREAD_CHOICES_KEPT]  # its fits' thread counts, kept
    # The short fit's kept run and what it was made for.
    cdef public object run_factory
    cdef TrainingRun short_run   # the last call's (the model's arrays dropped when it returns)
    cdef Py_ssize_t short_samples, short_steps, short_batch   # its shape
    cdef dict short_runs          # (n_samples, n_steps, batch size) -> its run, on short_state
    cdef object short_state
    cdef object short_optimizer
    cdef double short_momentum, short_beta1, short_beta2, short_eps  # its settings
    cdef bint short_nesterov
    cdef double short_work       # flops of the epoch ready_steps last accepted
    cdef bint short_checks_data  # whether that epoch checks X and Y as it gathers them
    cdef PointerTable trained, saved  # params and moments, and a copy of them

    cdef Py_ssize_t ready_steps(self, object X, object Y, object h0,
                                Py_ssize_t batch_size) except -2
    cdef int train_run(self, TrainingRun run, const Py_ssize_t *order, double *epoch_losses,
                       Py_ssize_t n_epochs, int n_threads) except -1
