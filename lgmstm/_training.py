"""Training, the same for LGM and STM: fit's checked plan, the loop over
blocks of epochs (progress, callback, Ctrl-C, divergence), the lock that
gives fit a model to itself, the optimizers, the compiled trainers' common
part and the NumPy backends' training loop.

A trainer (:class:`Trainer`) is what a model's backend makes for one fit:
``run(order, n_epochs)`` trains a block of epochs and returns their losses.
"""
from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal without its enum wrappers
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

from . import _train, reference
from ._threads import get_num_threads, single_threaded_blas
from ._validation import (
    MAX_DIM,
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_open_fraction,
    check_positive_float,
    check_seed,
)


class Optimizer(NamedTuple):
    """An optimizer as the compiled training functions take it."""

    code: int  # their `optimizer` argument
    n_moments: int  # arrays it keeps per parameter between steps
    settings: dict[str, float]  # the hyper-parameters its moments depend on


# The optimizers' hyper-parameters (lr aside): fit's defaults.
MOMENTUM = 0.9
ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8

# The optimizers fit offers (see lgmstm.reference.optimizer_step for the maths).
OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": Optimizer(code=_train.OPTIMIZER_CODES["sgd"], n_moments=0, settings={}),
    "momentum": Optimizer(code=_train.OPTIMIZER_CODES["momentum"], n_moments=1,  # the velocity
                          settings={"momentum": MOMENTUM}),
    "adam": Optimizer(code=_train.OPTIMIZER_CODES["adam"],
                      n_moments=2,  # the means of the gradient and of its square
                      settings={"beta1": ADAM_BETA1, "beta2": ADAM_BETA2, "eps": ADAM_EPS}),
}


def optimizer_settings(name: str, momentum: float = MOMENTUM, nesterov: bool = False,
                       beta1: float = ADAM_BETA1, beta2: float = ADAM_BETA2,
                       eps: float = ADAM_EPS) -> dict[str, float]:
    """The settings of the optimizer `name` that its moments depend on, from
    fit's (checked) arguments: none for sgd; momentum's {"momentum"}, with
    "nesterov": 1.0 only when on (so the default settings, and the files
    that hold them, are those of the versions before nesterov); Adam's
    {"beta1", "beta2", "eps"}. A state goes on only under equal settings."""
    if name == "momentum":
        return {"momentum": momentum, **({"nesterov": 1.0} if nesterov else {})}
    if name == "adam":
        return {"beta1": beta1, "beta2": beta2, "eps": eps}
    return {}


def decayed(params: Sequence[NDArray[Any]]) -> list[bool]:
    """Which parameters weight decay applies to: the weights (2-D), never
    the biases (1-D)."""
    return [param.ndim >= 2 for param in params]


def weight_penalty(params: Sequence[NDArray[Any]], weight_decay: float) -> float:
    """What weight decay adds to the loss: weight_decay / 2 times the sum of
    the squared weights (see decayed)."""
    if not weight_decay:
        return 0.0
    return 0.5 * weight_decay * sum(float(np.vdot(param, param))
                                    for param, weight in zip(params, decayed(params)) if weight)


def add_weight_decay(grads: Sequence[NDArray[Any]], params: Sequence[NDArray[Any]],
                     weight_decay: float) -> None:
    """grad += weight_decay * param for every weight, in place: the gradient
    of weight_penalty, in the dtype as the optimizers add it."""
    if not weight_decay:
        return
    for grad, param, weight in zip(grads, params, decayed(params)):
        if weight:
            grad += param.dtype.type(weight_decay) * param


# fit() hands the compiled code blocks of epochs lasting about this long, so
# progress, callbacks and Ctrl-C are seen between blocks.
BLOCK_SECONDS = 0.1


def zero_moments(optimizer: str, params: Sequence[NDArray[Any]]) -> list[list[NDArray[Any]]]:
    """The optimizer's moments at the start of a fit: for each moment it keeps
    (none for sgd), one array of zeros per parameter."""
    return [[np.zeros_like(p) for p in params] for _ in range(OPTIMIZERS[optimizer].n_moments)]


class OptimizerState:
    """What an optimizer carries from one update to the next: for each moment
    it keeps (none for sgd), one array per parameter, in the order of the
    model's parameters; the updates done so far, ``step`` (Adam's bias
    correction counts them); and the name and settings (OPTIMIZERS) they
    were made with. A model keeps the state of its latest training between
    calls (``Model._optimizer_state``, None before any); a trainer updates
    its arrays in place and train_model writes its step back.
    """

    def __init__(self, name: str, moments: list[list[NDArray[Any]]], step: int = 0,
                 settings: dict[str, float] | None = None) -> None:
        self.name = name
        self.moments = moments
        self.step = step
        self.settings = dict(OPTIMIZERS[name].settings if settings is None else settings)

    @classmethod
    def fresh(cls, name: str, params: Sequence[NDArray[Any]],
              settings: dict[str, float] | None = None) -> OptimizerState:
        """Zero moments and no step done: the state at the start of a fit,
        with the settings given (optimizer_settings; None: the defaults)."""
        return cls(name, zero_moments(name, params), settings=settings)

    def continued_by(self, name: str, settings: dict[str, float] | None = None) -> bool:
        """Whether the optimizer `name` with these settings (optimizer_settings;
        None: the defaults) may go on from this state: the same name, the
        same settings."""
        return self.name == name and self.settings == (
            OPTIMIZERS[name].settings if settings is None else settings)

    def training_settings(self) -> dict[str, Any]:
        """The settings as _train.TrainingRun takes them (the defaults for
        those this optimizer has none of)."""
        settings = self.settings
        return {"momentum": settings.get("momentum", MOMENTUM),
                "nesterov": bool(settings.get("nesterov", 0.0)),
                "beta1": settings.get("beta1", ADAM_BETA1),
                "beta2": settings.get("beta2", ADAM_BETA2),
                "eps": settings.get("eps", ADAM_EPS)}

    def header(self) -> dict[str, Any]:
        """Everything but the moments, as plain JSON-able data."""
        return {"name": self.name, "settings": dict(self.settings), "step": self.step}

    @classmethod
    def restored(cls, header: Any, moments: Any, params: Sequence[NDArray[Any]],
                 ) -> OptimizerState:
        """A state from a saved header and moments (one sequence of arrays
        per moment, one array per parameter), copied into fresh arrays laid
        out like params; ValueError (TypeError for a wrong type) on anything
        that does not fit."""
        if not isinstance(header, dict) or set(header) != {"name", "settings", "step"}:
            raise ValueError(f"the optimizer state must hold name, settings and step, "
                             f"got {header!r}"[:200])
        name, settings, step = header["name"], header["settings"], header["step"]
        if not isinstance(name, str) or name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r} in the optimizer state")
        if not isinstance(settings, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                for k, v in settings.items()):
            raise ValueError(f"the optimizer's settings must map names to numbers, "
                             f"got {settings!r}"[:200])
        # At most 2**53: the step's powers of beta1 and beta2 (Adam's bias
        # corrections) are taken in float64, and the kernels count it in 64 bits.
        step = check_int("the optimizer state's step", step, 0, maximum=2**53)
        state = cls.fresh(name, params)
        if len(moments) != len(state.moments):
            raise ValueError(f"{name} keeps {len(state.moments)} moments, the optimizer "
                             f"state holds {len(moments)}")
        for k, (target, values) in enumerate(zip(state.moments, moments)):
            if len(values) != len(target):
                raise ValueError(f"moment {k} of the optimizer state holds {len(values)} "
                                 f"arrays, the model has {len(target)} parameters")
            for i, (array, value) in enumerate(zip(target, values)):
                if not isinstance(value, np.ndarray) or value.shape != array.shape \
                        or value.dtype != array.dtype:
                    raise ValueError(
                        f"moment {k} of parameter {i} must be an array of shape "
                        f"{array.shape} and dtype {array.dtype}, got {value!r}"[:200])
                if not np.isfinite(value).all():   # what training leaves is finite
                    raise ValueError(f"moment {k} of parameter {i} of the optimizer state "
                                     f"must be finite, got NaN or inf")
                array[...] = value
        state.step, state.settings = step, {k: float(v) for k, v in settings.items()}
        return state


def short_fit_state(state: OptimizerState | None, name: str, settings: tuple,
                    params: Sequence[NDArray[Any]]) -> OptimizerState:
    """The optimizer state a short fit's run is made for (the programs'
    run_factory, see _train.Program.fit_ready): state, when the optimizer
    `name` with settings (momentum, nesterov, beta1, beta2, eps) goes on
    from it, else a fresh one with those settings."""
    wanted = optimizer_settings(name, *settings)
    if state is None or not state.continued_by(name, wanted):
        state = OptimizerState.fresh(name, params, wanted)
    return state


class DivergenceWarning(RuntimeWarning):
    """Training met a non-finite loss or parameter and stopped."""


class TargetRangeWarning(UserWarning):
    """fit's targets lie outside what the model's output can reach: outside
    [-1, 1] for ``output="tanh"``."""


# The folder of lgmstm's modules: a warning points at the first frame outside it.
_PACKAGE_FOLDER = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The stacklevel that makes a warning, issued by the caller of this
    function, point at the user's call: the first frame outside lgmstm
    (through partial_fit, fit, an estimator's fit and so on). Only paid
    when warning."""
    level, frame = 1, sys._getframe(1)
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE_FOLDER):
        frame = frame.f_back
        level += 1
    return level


def beyond_tanh(Y: Any) -> bool:
    """Whether Y, the checked path's ndarray of targets, holds one outside
    [-1, 1], which a tanh output cannot reach: one compiled scan
    (_train.beyond_unit; the short fit, Program.fit_ready, makes the same
    scan itself)."""
    return bool(_train.beyond_unit(Y))


def warn_beyond_tanh(Y: Any) -> None:
    """The TargetRangeWarning of fit and partial_fit, pointing at the user's
    call; none for targets with NaN or inf (the scan counts them beyond [-1,
    1]), which fit refuses next."""
    if not np.isfinite(Y).all():
        return
    warnings.warn(
        f"Y holds targets outside [-1, 1] (from {float(Y.min()):.4g} to "
        f"{float(Y.max()):.4g}), which output='tanh' cannot reach: for unbounded "
        "targets make the model with output='linear', or scale Y into [-1, 1]",
        TargetRangeWarning, stacklevel=user_stacklevel())


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped fit(); the model holds its last finished epoch.

    Parameters
    ----------
    history : ndarray of shape (n_epochs_done,)
        The losses of the finished epochs, also stored as the attribute
        ``history`` (and as the model's ``history_``).
    """

    def __init__(self, history):
        super().__init__(f"training interrupted after {len(history)} epochs")
        self.history = history


# -- the plan ------------------------------------------------------------------


# The learning-rate schedules by name, with the compiled code's numbers: fit
# offers SCHEDULES; "sample_clock" is the estimators' (see SampleClock).
SCHEDULE_CODES: dict[str, int] = dict(_train.SCHEDULE_CODES)
SCHEDULES: dict[str, int] = {name: code for name, code in SCHEDULE_CODES.items()
                             if name != "sample_clock"}
# The adaptive schedule's divisor, and the lr at or below which a plateau
# stops training instead.
ADAPTIVE_DIVISOR: float = _train.ADAPTIVE_DIVISOR
MIN_ADAPTIVE_LR: float = _train.MIN_ADAPTIVE_LR
PATIENCE, TOL, POWER_T = _train.PATIENCE, _train.TOL, _train.POWER_T


class SampleClock(NamedTuple):
    """scikit-learn's "invscaling" on its clock of samples seen (its MLP's
    t_): the estimators' schedule, which they give fit as lr_schedule
    (private: fit documents the names of SCHEDULES only). The first
    epoch's rate is ``lr / (samples_before + 1)**power_t``, and after
    epoch e of the fit (from 0) it becomes ``lr / (samples_before + (e + 1)
    * n_samples + 1)**power_t``, n_samples the samples trained on."""

    samples_before: int  # samples trained before this fit, >= 0

    def rate(self, lr: float, power_t: float, samples: int = 0) -> float:
        """The rate after samples_before + samples samples (the compiled
        driver's sample_clock_lr)."""
        return lr / float(self.samples_before + samples + 1) ** power_t


class AdaptiveFloor(NamedTuple):
    """The "adaptive" schedule with another floor: a plateau at lr <=
    min_lr stops training (else lr / 5). The estimators' (private: fit
    documents the names of SCHEDULES only), which give it scikit-learn's
    1e-6 on learning_rate_init's scale, over the factor between that and
    fit's lr (the loss scale, for SGD)."""

    min_lr: float  # > 0


class TrainingControl(NamedTuple):
    """What happens at the end of each epoch of a fit (the compiled
    driver's end_epoch, ReferenceTrainer's _end_epoch): the learning-rate
    schedule, and early stopping on the monitored loss (the validation
    loss when there is a validation set, else the training loss)."""

    schedule: str = "constant"  # a key of SCHEDULE_CODES
    power_t: float = POWER_T  # invscaling: lr / step**power_t; sample_clock: see SampleClock
    early_stopping: bool = False
    patience: int = PATIENCE  # stale epochs before adaptive's lr / 5 or a stop
    tol: float = TOL  # an epoch improves when its loss <= best - tol (scikit-learn's rule)
    validating: bool = False  # the fit has a validation set
    # A plateau of patience stale epochs stops training at its last epoch
    # (early stopping instead puts back the best; adaptive divides lr instead).
    stop_on_plateau: bool = False
    samples_before: int = 0  # sample_clock: SampleClock.samples_before
    min_lr: float = MIN_ADAPTIVE_LR  # adaptive: a plateau at lr <= min_lr stops training

    @property
    def monitoring(self) -> bool:
        """Whether the end of an epoch has work to do."""
        return (self.validating or self.early_stopping or self.stop_on_plateau
                or self.schedule in ("adaptive", "sample_clock"))


def recurrent_validation(program, validation, blas_work):
    """(validation, blas_work) of a compiled STM fit (single-layer or deep):
    the program's validation_data of validation = (X_val, Y_val, lengths_val,
    weights_val) or None, and the fit's BLAS work raised to that of a pass
    over the validation set."""
    if validation is None:
        return None, blas_work
    X_val, Y_val, lengths_val, weights_val = validation
    blas_work = max(blas_work, program.blas_work(*X_val.shape[:2]))
    return program.validation_data(
        X_val, Y_val.reshape(-1), lengths_val,
        None if weights_val is None else weights_val.reshape(-1)), blas_work


def check_validation_set(X_val, Y_val, sample: str, *more):
    """fit's validation set, converted by the model: non-empty and finite
    (ValueError naming validation_data); (X_val, Y_val, *more)."""
    if X_val.shape[0] == 0:
        raise ValueError(f"validation_data: X_val must hold at least one {sample}, "
                         f"got shape {X_val.shape}")
    if not _train.all_finite((X_val, Y_val)):
        raise ValueError("validation_data: X_val and Y_val must be finite (no NaN or inf)")
    return (X_val, Y_val, *more)


def held_out_count(n_samples: int, fraction: float) -> int:
    """The samples validation_fraction holds out: ceil(fraction *
    n_samples), at least one; ValueError when no training sample is left."""
    n_held = int(np.ceil(fraction * n_samples))
    if n_held >= n_samples:
        raise ValueError(
            f"validation_fraction={fraction} of {n_samples} samples holds out {n_held}, "
            "leaving no training sample: it must leave at least one")
    return n_held


def held_out_rows(rng, n_samples: int, n_held: int,
                  ) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """(training rows, validation rows), each sorted: the last n_held
    samples of a permutation drawn from rng are held out."""
    permutation = rng.permutation(n_samples)
    return np.sort(permutation[: n_samples - n_held]), np.sort(permutation[n_samples - n_held:])


class FitPlan(NamedTuple):
    """fit's checked hyper-parameters."""

    epochs: int
    lr: float
    batch_size: int
    optimizer: str
    settings: dict[str, float]  # the optimizer's (optimizer_settings)
    weight_decay: float
    clip_norm: float | None
    verbose: bool
    warm_start: bool
    order_for: Callable[[int], np.ndarray | None]
    control: TrainingControl = TrainingControl()
    # (training rows, validation rows) of validation_fraction, or None: the
    # model trains on X[rows[0]] and validates on X[rows[1]].
    held_out: tuple[NDArray[np.intp], NDArray[np.intp]] | None = None


class FitSettings(NamedTuple):
    """fit's hyper-parameters, checked without its data (check_fit_settings)."""

    epochs: int
    lr: float
    batch_size: int | None  # as given: plan_fit caps it at the samples
    optimizer: str
    settings: dict[str, float]  # the optimizer's (optimizer_settings)
    weight_decay: float
    clip_norm: float | None
    seed: int | np.random.Generator | None
    shuffle: bool
    verbose: bool
    warm_start: bool
    control: TrainingControl
    validation_fraction: float | None


def check_fit_settings(*, epochs, lr, batch_size, optimizer, clip_norm, shuffle, seed,
                       callback, verbose, warm_start, momentum=MOMENTUM, nesterov=False,
                       beta1=ADAM_BETA1, beta2=ADAM_BETA2, eps=ADAM_EPS, weight_decay=0.0,
                       validation_data=False, validation_fraction=None, early_stopping=False,
                       patience=PATIENCE, tol=TOL, lr_schedule="constant",
                       power_t=POWER_T, stop_on_plateau=False) -> FitSettings:
    """Check fit's hyper-parameters, those that need no data: plan_fit's
    checks before it looks at the samples, which lgmstm.dask also makes
    before it sends a fit anywhere. The arguments are plan_fit's (see
    there); validation_data: whether the model was given a validation set."""
    if clip_norm is not None:
        clip_norm = check_positive_float("clip_norm", clip_norm)
    epochs = check_int("epochs", epochs, 0, maximum=MAX_DIM)
    lr = check_positive_float("lr", lr)
    batch_size = check_int("batch_size", batch_size, 1, allow_none=True)
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    momentum = check_fraction("momentum", momentum)
    nesterov = check_bool("nesterov", nesterov)
    if nesterov and optimizer != "momentum":
        raise ValueError(f"nesterov=True needs optimizer='momentum', got {optimizer!r}")
    settings = optimizer_settings(optimizer, momentum, nesterov, check_fraction("beta1", beta1),
                                  check_fraction("beta2", beta2),
                                  check_positive_float("eps", eps))
    weight_decay = check_positive_float("weight_decay", weight_decay, allow_zero=True)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {callback!r}")
    seed = check_seed("seed", seed)
    early_stopping = check_bool("early_stopping", early_stopping)
    samples_before, min_lr = 0, MIN_ADAPTIVE_LR
    if isinstance(lr_schedule, SampleClock):
        samples_before = check_int("samples_before", lr_schedule.samples_before, 0)
        lr_schedule = "sample_clock"
    elif isinstance(lr_schedule, AdaptiveFloor):
        min_lr = check_positive_float("min_lr", lr_schedule.min_lr)
        lr_schedule = "adaptive"
    else:
        lr_schedule = check_choice("lr_schedule", lr_schedule, SCHEDULES)
    control = TrainingControl(
        lr_schedule,
        check_positive_float("power_t", power_t, allow_zero=True), early_stopping,
        check_int("patience", patience, 1), check_positive_float("tol", tol, allow_zero=True),
        bool(validation_data) or validation_fraction is not None,
        check_bool("stop_on_plateau", stop_on_plateau), samples_before, min_lr)
    if validation_fraction is not None:
        if validation_data:
            raise ValueError("give validation_data or validation_fraction, not both")
        validation_fraction = check_open_fraction("validation_fraction", validation_fraction)
    if early_stopping and not control.validating:
        raise ValueError("early_stopping=True needs a validation set: give validation_data "
                         "or validation_fraction")
    return FitSettings(epochs, lr, batch_size, optimizer, settings, weight_decay, clip_norm,
                       seed, check_bool("shuffle", shuffle), check_bool("verbose", verbose),
                       check_bool("warm_start", warm_start), control, validation_fraction)


def plan_fit(rng, X, Y, *, sample, **arguments) -> FitPlan:
    """Check fit's data and hyper-parameters, the same way for LGM and STM.

    X and Y are the model's checked arrays, samples along the first axis;
    `sample` names one ("sample", "sequence") in the message for an empty X.
    rng is the model's generator, used for shuffling unless seed is given.
    The other arguments, fit's hyper-parameters (checked by
    check_fit_settings): epochs, lr, batch_size (None, or above n_samples,
    means full batch), optimizer, clip_norm (None: no clipping), shuffle,
    seed, callback, verbose, warm_start (go on from the model's optimizer
    state, see train_model); momentum and nesterov (the "momentum"
    optimizer's), beta1, beta2 and eps (Adam's) are checked whatever the
    optimizer, and nesterov=True needs optimizer="momentum"; weight_decay >= 0.

    validation_data: whether the model was given a validation set (checked
    by the model); validation_fraction (None, or in (0, 1)) holds out rows
    instead (plan.held_out, drawn from the shuffling's generator before any
    epoch's order; the batch size is then the training rows'); not both.
    early_stopping needs one of them. lr_schedule (a name of SCHEDULES,
    or the estimators' SampleClock or AdaptiveFloor), power_t, patience, tol and
    stop_on_plateau: see TrainingControl.
    """
    n_samples = X.shape[0]
    if n_samples == 0:
        raise ValueError(f"X must hold at least one {sample} to fit, got shape {X.shape}")
    if not _train.all_finite((X, Y)):
        # Which one, and where: found only now, once the fast scan failed.
        for name, values in (("X", X), ("Y", Y)):
            bad = np.flatnonzero(~np.isfinite(np.asarray(values).reshape(-1)))
            if bad.size:
                where = np.unravel_index(bad[0], np.shape(values))
                raise ValueError(f"X and Y must be finite (no NaN or inf) to fit, got "
                                 f"{name}[{', '.join(map(str, where))}] = "
                                 f"{np.asarray(values)[where]}")
        raise ValueError("X and Y must be finite (no NaN or inf) to fit")
    checked = check_fit_settings(**arguments)
    if checked.seed is not None:
        rng = np.random.default_rng(checked.seed)
    batch_size = n_samples if checked.batch_size is None else min(checked.batch_size, n_samples)
    n_held = 0
    if checked.validation_fraction is not None:
        n_held = held_out_count(n_samples, checked.validation_fraction)
        batch_size = min(batch_size, n_samples - n_held)
    shuffled = checked.shuffle and batch_size < n_samples - n_held
    # Every argument checked: only now draw from the generator.
    held_out = held_out_rows(rng, n_samples, n_held) if n_held else None
    n_samples -= n_held

    def order_for(count):
        return _train.epoch_orders(rng, count, n_samples) if shuffled else None

    return FitPlan(checked.epochs, checked.lr, batch_size, checked.optimizer, checked.settings,
                   checked.weight_decay, checked.clip_norm, checked.verbose, checked.warm_start,
                   order_for, checked.control, held_out)


# -- the loop ------------------------------------------------------------------


class Trainer(Protocol):
    """What a model's backend makes for one fit."""

    params: list[NDArray[Any]]  # the model's parameters, trained in place
    trained_arrays: list[NDArray[Any]]  # every array training changes, params included
    step: int  # updates done
    # Where the end-of-epoch control stands (schedule, best loss, stale
    # epochs...): a replay of a block puts it back with the arrays.
    control_state: tuple
    validation_losses: NDArray[np.float64]  # the latest run's, one per epoch run (or empty)
    stopped: bool  # early stopping, or the adaptive schedule's plateau at lr <= its min_lr
    best_epoch: int | None  # the epoch (of the fit) of the lowest monitored loss
    diverged: bool  # set by run_epochs when a non-finite loss or parameter stopped it

    def run(self, order: NDArray[np.intp] | None, n_epochs: int) -> NDArray[np.float64]:
        """Train n_epochs epochs (in the sample orders given, one row an epoch,
        or in sample order for None); the losses of the epochs run (fewer
        when training stopped)."""
        ...

    def restore_best(self) -> bool:
        """Early stopping: put back the arrays and step of the best epoch;
        False when there is nothing to restore."""
        ...


def train_model(model, plan: FitPlan, make_trainer: Callable[[OptimizerState], Trainer],
                callback, finish: Callable[[Any], None] | None = None) -> NDArray[np.float64]:
    """fit's loop, with the model held for training (see UseLock).

    make_trainer(state) makes the trainer that continues the optimizer state
    given. That is the model's own (``model._optimizer_state``) when
    plan.warm_start and it was made by plan.optimizer with plan.settings;
    otherwise a fresh one (zero moments, step 0), which becomes
    the model's once make_trainer succeeds (a call refused there leaves the
    model as it was). The trainer updates the state's moments in place and
    its step is written back at the end, so the model holds the state of
    its last finished epoch also after Ctrl-C or a divergence.

    Sets model.history_, validation_history_ and best_epoch_, also when
    Ctrl-C stops training (then re-raises TrainingInterrupted);
    finish(trainer), when given, runs at the end either way. With early
    stopping, a fit that runs all its epochs (or stops early) ends holding
    its best epoch's parameters, moments and step (not after Ctrl-C or a
    divergence: those keep the last finished epoch).
    """
    with model._lock.training():
        state = model._optimizer_state
        if not (plan.warm_start and state is not None
                and state.continued_by(plan.optimizer, plan.settings)):
            state = OptimizerState.fresh(plan.optimizer, model._params, plan.settings)
        trainer = make_trainer(state)
        model._optimizer_state = state
        validation: list[NDArray[np.float64]] = []
        blocks: list[NDArray[np.float64]] = []
        finished = False
        try:
            model.history_ = run_epochs(trainer, plan.epochs, callback=callback,
                                        progress=_Progress(model.kind, plan.epochs, plan.verbose),
                                        order_for=plan.order_for, validation=validation,
                                        blocks=blocks)
            finished = True
        except TrainingInterrupted as exc:
            model.history_ = exc.history
            raise
        except BaseException:
            # An error in the callback (or the progress report): the model
            # holds the epochs that ran, and history_ their losses.
            model.history_ = np.concatenate(blocks) if blocks else np.empty(0)
            raise
        finally:
            if finished and plan.control.early_stopping and not trainer.diverged:
                trainer.restore_best()
            model.validation_history_ = (np.concatenate(validation) if validation
                                         else np.empty(0))
            model.best_epoch_ = trainer.best_epoch if plan.control.validating else None
            state.step = trainer.step
            if finish is not None:
                finish(trainer)
    return model.history_


def run_epochs(trainer: Trainer, n_epochs, *, callback, progress, order_for, validation=None,
               blocks=None):
    """Drive trainer.run over blocks of epochs; return the per-epoch losses.

    blocks: a list that receives each block's losses as it finishes (what
    the caller keeps when something raises in the middle).

    order_for(n) gives the sample orders of the next n epochs (or None).
    With a callback each block is one epoch, so returning False stops at once.
    validation: a list that receives each block's validation losses
    (trainer.validation_losses). Training stops when the trainer says so
    (trainer.stopped: early stopping or the adaptive schedule's end); its
    control state (best loss, stale epochs) carries from block to block in
    the trainer.

    Ctrl-C stops training after the current block and raises
    KeyboardInterrupt, the model holding the parameters of the last
    finished epoch; while the callback runs, it interrupts the callback at
    once (the epoch is finished). A non-finite loss or parameter stops training with a
    DivergenceWarning, the model holding the last finite parameters: the
    block is replayed from a snapshot one epoch at a time up to the last
    finite epoch (the replay takes the same steps, so it is exact).
    """
    if blocks is None:
        blocks = []  # per-block losses: nothing is allocated for epochs not run
    done, block = 0, 1
    with _deferred_interrupt() as interrupt:
        while done < n_epochs and not interrupt.requested:
            count = min(block, n_epochs - done)
            order = order_for(count)
            snapshot = ([a.copy() for a in trainer.trained_arrays], trainer.step,
                        trainer.control_state)
            started = time.perf_counter()
            block_losses = trainer.run(order, count)  # divergence is checked next
            elapsed = time.perf_counter() - started
            if not _finite(trainer, block_losses):
                trainer.diverged = True
                good, good_validation = _replay_finite_epochs(trainer, snapshot, order, count)
                blocks.append(good)
                if validation is not None:
                    validation.append(good_validation)
                done += len(good)
                kept = (f"the parameters after epoch {done - 1}" if done else
                        "the parameters the model had before this call")
                warnings.warn(
                    f"training diverged at epoch {done}{'' if done else ', the first'} "
                    f"(non-finite loss or parameters); stopped, keeping {kept}. "
                    "Try a smaller lr.", DivergenceWarning, stacklevel=user_stacklevel())
                break
            blocks.append(block_losses)
            if validation is not None:
                validation.append(trainer.validation_losses)
            done += len(block_losses)
            last = float(block_losses[-1])
            progress.update(done, last, final=done == n_epochs or trainer.stopped)
            if callback is not None:
                # Ctrl-C in the callback (the user's code, which may wait
                # on anything) interrupts it at once, the epoch done.
                interrupt.in_callback = True
                try:
                    stop = callback(done - 1, last) is False
                except KeyboardInterrupt as exc:
                    losses = np.concatenate(blocks)
                    raise TrainingInterrupted(losses) from (
                        None if isinstance(exc, TrainingInterrupted) else exc)
                finally:
                    interrupt.in_callback = False
                if stop:
                    break
            else:
                block = int(min(max(1, count * BLOCK_SECONDS / max(elapsed, 1e-6)), 2 * count + 1))
            if trainer.stopped:
                break
    losses = np.concatenate(blocks) if blocks else np.empty(0)
    if interrupt.requested:
        raise TrainingInterrupted(losses)
    return losses


def _finite(trainer, losses):
    return _train.all_finite((losses, *trainer.params))


def _replay_finite_epochs(trainer, snapshot, order, count):
    """Restore the snapshot and redo the block epoch by epoch, stopping before
    the first epoch whose loss or resulting parameters are not finite; the
    good epochs' losses and validation losses."""
    def restore(saved):
        arrays, trainer.step, trainer.control_state = saved
        for target, value in zip(trainer.trained_arrays, arrays):
            np.copyto(target, value)

    restore(snapshot)
    good, good_validation = [], []
    for epoch in range(count):
        before = [a.copy() for a in trainer.trained_arrays], trainer.step, trainer.control_state
        loss = trainer.run(None if order is None else order[epoch : epoch + 1], 1)
        if not _finite(trainer, loss):
            restore(before)
            break
        good.append(loss[0])
        good_validation.extend(trainer.validation_losses)
        if trainer.stopped:
            break
    return np.asarray(good, dtype=np.float64), np.asarray(good_validation, dtype=np.float64)


class _Progress:
    """Prints epoch, loss and rate to stderr at most every `interval` seconds."""

    def __init__(self, name, n_epochs, enabled, interval=1.0):
        self.name, self.n_epochs, self.enabled, self.interval = name, n_epochs, enabled, interval
        self.start = self.last = time.perf_counter()

    def update(self, epochs_done, loss, final=False):
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.last < self.interval):
            return
        self.last = now
        rate = epochs_done / max(now - self.start, 1e-9)
        print(
            f"{self.name}: epoch {epochs_done}/{self.n_epochs}  loss {loss:.6g}  "
            f"{rate:.4g} epochs/s",
            file=sys.stderr,
            flush=True,
        )


class _deferred_interrupt:
    """Turn Ctrl-C during training into a flag that is checked between
    blocks of epochs, so that training stops between whole epochs.

    Only in the main thread, and only when SIGINT has Python's default
    handler (a handler of the user's is left alone). Through _signal, the C
    module under signal: the enum conversions of signal.signal cost more
    than a short fit.
    """

    def __init__(self) -> None:
        self.requested = False
        self.in_callback = False   # then Ctrl-C raises, as Python's own handler does
        self.previous: Any = None

    def _request_stop(self, signum, frame):
        if self.in_callback:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _deferred_interrupt:
        if (threading.get_ident() == _MAIN_THREAD.ident
                and _signal.getsignal(_SIGINT) is _signal.default_int_handler):
            self.previous = _signal.signal(_SIGINT, self._request_stop)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            _signal.signal(_SIGINT, self.previous)


_MAIN_THREAD = threading.main_thread()
_SIGINT = int(signal.SIGINT)


# -- the model's lock --------------------------------------------------------


# The model lock: readers in parallel, one trainer (compiled, so that the
# fast paths of predict take it in nanoseconds).
UseLock = _train.UseLock


# -- the trainers ----------------------------------------------------------------


class TrainingWorkspace:
    """The scratch arrays of a compiled network's latest fit, kept for its next.

    A fresh workspace is paid for again at every fit: the kernel zeroes each
    page on first touch, about 5% of an epoch of the large benchmark STM
    (tens of MB), and so of every fit(epochs=1) in a loop (partial_fit).
    Only fit uses it, and a model runs one fit at a time (its lock), so one
    workspace per network is safe; it holds the arrays until the next fit
    with other shapes or dtype, or release().
    """

    def __init__(self):
        self._key = None
        self._arrays = None

    def get(self, key, make):
        """The arrays made for key, from make() when the last fit's key differs."""
        if self._key != key:
            self.release()
            self._arrays = make()
            self._key = key
        return self._arrays

    def release(self):
        self._key = self._arrays = None


class CompiledTrainer:
    """One fit of a compiled network: every array it needs, allocated once
    (the scratch ones are the network's TrainingWorkspace, kept for its
    next fit), in a TrainingRun that the network's program
    (``network.program.train``, lgmstm._lgm or lgmstm._stm) trains a block
    of epochs of in one call (small networks' panel workspace is allocated
    by that call, once a block).

    grads and workspace: the program's scratch (workspace in the order its
    train documents); blas_work: the flops that decide BLAS's threads (see
    single_threaded_blas); lengths, initial_states, final_states: the
    STM's. final_states, when given, holds each sequence's final state
    from the latest epoch. weights: the loss's weight of each sample (the
    LGM) or output row (the STM), float64, or None. The optimizer's
    settings are the state's; the weights (see decayed) take weight_decay.
    validation: the program's validation set (its ``validation_data``), or
    None; control: the schedule and early stopping (TrainingControl), run by
    the compiled driver at each epoch's end, carried from block to block in
    the run.
    """

    def __init__(self, network, X, Y, batch_size: int, optimizer: OptimizerState, lr: float,
                 *, grads: list[NDArray[Any]], workspace: list[NDArray[Any]], blas_work: int,
                 clip_norm: float | None = None, weight_decay: float = 0.0,
                 lengths: NDArray[np.intp] | None = None,
                 initial_states: NDArray[Any] | None = None,
                 final_states: NDArray[Any] | None = None,
                 weights: NDArray[np.float64] | None = None, validation: Any = None,
                 control: TrainingControl = TrainingControl()) -> None:
        self.network = network
        self.params: list[NDArray[Any]] = network.params
        moments = optimizer.moments  # trained in place
        self.trained_arrays = network.params + [a for arrays in moments for a in arrays]
        if final_states is not None:
            self.trained_arrays.append(final_states)
        self.final_states = final_states
        # The moments the optimizer does not keep: any valid arrays (unread).
        first_moments, second_moments = moments + [grads] * (2 - len(moments))
        self.blas_work = blas_work
        self.no_order = np.empty((0, X.shape[0]), np.intp)
        self.run_data = _train.TrainingRun(
            X=X, Y=Y, grads=grads, first_moments=first_moments,
            second_moments=second_moments, workspace=workspace, batch_size=batch_size,
            optimizer=OPTIMIZERS[optimizer.name].code, lr=lr, **optimizer.training_settings(),
            weight_decay=weight_decay, decayed=decayed(self.params), clip_norm=clip_norm or 0.0,
            step=optimizer.step, lengths=lengths, initial_states=initial_states,
            final_states=final_states, weights=weights, program=network.program)
        self.run_data.validation = validation
        self.run_data.set_control(
            schedule=SCHEDULE_CODES[control.schedule], power_t=control.power_t,
            samples_before=control.samples_before, min_lr=control.min_lr,
            early_stopping=control.early_stopping, stop_on_plateau=control.stop_on_plateau,
            patience=control.patience, tol=control.tol, monitoring=control.monitoring,
            kept=self.trained_arrays)
        self.validating = validation is not None
        self.validation_losses = np.empty(0)
        self.diverged = False

    @property
    def stopped(self) -> bool:
        return self.run_data.stopped

    @property
    def best_epoch(self) -> int | None:
        return self.run_data.best_epoch

    @property
    def control_state(self) -> tuple:
        return self.run_data.control_state

    @control_state.setter
    def control_state(self, value: tuple) -> None:
        self.run_data.control_state = value

    def restore_best(self) -> bool:
        return self.run_data.restore_best()

    @property
    def step(self) -> int:
        """Updates done so far (adam's bias correction counts them)."""
        return self.run_data.step

    @step.setter
    def step(self, value: int) -> None:
        self.run_data.step = value

    def run(self, order: NDArray[np.intp] | None, n_epochs: int) -> NDArray[np.float64]:
        losses = np.empty(n_epochs)
        validation_losses = np.empty(n_epochs if self.validating else 0)
        self.run_data.validation_losses = validation_losses if self.validating else None
        epochs_before = self.run_data.control_state[3]
        with single_threaded_blas(self.blas_work):
            self.network.program.train(self.run_data, self.no_order if order is None else order,
                                       losses, get_num_threads())
        if self.run_data.stopped:  # stopped early: the epochs it ran
            n_epochs = self.run_data.control_state[3] - epochs_before
        self.validation_losses = validation_losses[:n_epochs]
        return losses[:n_epochs]


class CheckedPathOnly:
    """The fast-path hooks (predict_ready, step_ready, fit_ready) of a network
    that has none (the NumPy backends; the deep STM's step and predict, and
    its fit_ready on the NumPy backend): each returns None, and
    the model takes its checked path."""

    @staticmethod
    def predict_ready(*arguments: Any) -> None:
        return None

    step_ready = fit_ready = predict_ready


class ReferenceTrainer:
    """The NumPy backends' training loop (lgmstm.reference): epochs of
    mini-batch steps, optional gradient clipping, then the optimizer.

    The model's backend gives ``batch(rows)``: rows (a slice or an index
    array) selects the samples of one step; it returns the batch's loss
    times the number of targets it averages over, and the gradients (one
    array per parameter, which the loop may scale in place). An epoch's loss
    is the sum of these over the epoch divided by n_targets, the targets of
    all the samples. ``optimizer``: the state it continues, its moments
    updated in place, with its settings. ``weight_decay``: added to the
    gradient of every weight (see decayed), after clipping. ``carried``:
    arrays the batches update besides the parameters and moments (the
    snapshots of run_epochs restore them). ``validate``: the validation
    loss with the current parameters, or None; ``control``: the schedule
    and early stopping, as the compiled driver's end_epoch runs them.
    """

    def __init__(self, params, batch: Callable[[Any], tuple[float, list[NDArray[Any]]]],
                 n_samples, n_targets, batch_size, optimizer: OptimizerState, lr,
                 clip_norm=None, carried=(), weight_decay=0.0,
                 validate: Callable[[], float] | None = None,
                 control: TrainingControl = TrainingControl()):
        self.params, self.batch = params, batch
        self.n_samples, self.n_targets = n_samples, n_targets
        self.batch_size, self.optimizer, self.lr, self.clip_norm = (
            batch_size, optimizer.name, lr, clip_norm)
        self.settings = optimizer.training_settings()
        self.decays = [weight_decay if weight else 0.0 for weight in decayed(params)]
        moments = optimizer.moments
        self.moments = [[arrays[i] for arrays in moments] for i in range(len(params))]
        self.step = optimizer.step
        self.trained_arrays = params + [a for arrays in moments for a in arrays] + list(carried)
        self.validate, self.control, self.base_lr = validate, control, lr
        self.clock = SampleClock(control.samples_before)
        if control.schedule == "sample_clock":
            self.lr = self.clock.rate(lr, control.power_t)
        self.validation_losses = np.empty(0)
        self.best_epoch: int | None = None
        self.stopped = self.restored = self.diverged = False
        self.best_loss, self.epochs_done, self.stale = np.inf, 0, 0
        self.best: tuple[list[NDArray[Any]], int] | None = None

    @property
    def control_state(self) -> tuple:
        return (self.lr, self.best_loss, self.best_epoch, self.epochs_done, self.stale,
                self.best, self.stopped, self.restored)

    @control_state.setter
    def control_state(self, value: tuple) -> None:
        (self.lr, self.best_loss, self.best_epoch, self.epochs_done, self.stale,
         self.best, self.stopped, self.restored) = value

    def restore_best(self) -> bool:
        if not self.control.early_stopping or self.best is None:
            return False
        if not self.restored:
            arrays, self.step = self.best
            for target, value in zip(self.trained_arrays, arrays):
                np.copyto(target, value)
            self.restored = True
        return True

    def _end_epoch(self, training_loss: float) -> float:
        """As the compiled driver's end_epoch (lgmstm/_train.pyx): the
        validation loss (NaN without one), the best and stale epochs, the
        adaptive schedule, early stopping, stop_on_plateau and the sample
        clock's next rate."""
        control = self.control
        validation_loss = np.nan
        monitored = training_loss
        if self.validate is not None:
            validation_loss = monitored = self.validate()
        self.stale = 0 if monitored <= self.best_loss - control.tol else self.stale + 1
        if monitored < self.best_loss:
            self.best_loss, self.best_epoch = monitored, self.epochs_done
            if control.early_stopping:
                self.best = [a.copy() for a in self.trained_arrays], self.step
        self.epochs_done += 1
        if control.schedule == "sample_clock":
            self.lr = self.clock.rate(self.base_lr, control.power_t,
                                      self.epochs_done * self.n_samples)
        if self.stale >= control.patience:
            if control.schedule == "adaptive":
                self.stale = 0
                self.stopped = self.lr <= control.min_lr
                if not self.stopped:
                    self.lr = self.lr / ADAPTIVE_DIVISOR
            else:
                self.stopped = control.early_stopping or control.stop_on_plateau
            if self.stopped:
                self.restore_best()
        return validation_loss

    def run(self, order, n_epochs):
        # Overflow warnings would repeat what run_epochs' divergence check says.
        with np.errstate(over="ignore", invalid="ignore"):
            return self._run(order, n_epochs)

    def _run(self, order, n_epochs):
        losses = np.empty(n_epochs)
        validation_losses = np.empty(n_epochs)
        n_run = 0
        for epoch in range(n_epochs):
            if self.stopped:
                break
            sum_squares = 0.0
            for start in range(0, self.n_samples, self.batch_size):
                if order is None:
                    rows = slice(start, start + self.batch_size)
                else:
                    rows = order[epoch, start : start + self.batch_size]
                squares, grads = self.batch(rows)
                sum_squares += squares
                if self.clip_norm is not None:
                    norm = np.sqrt(sum(float(np.vdot(g, g)) for g in grads))
                    if norm > self.clip_norm:
                        for grad in grads:
                            grad *= grad.dtype.type(self.clip_norm / norm)
                self.step += 1
                if self.control.schedule == "invscaling":
                    self.lr = self.base_lr / float(self.step) ** self.control.power_t
                for param, grad, moments, decay in zip(self.params, grads, self.moments,
                                                       self.decays):
                    reference.optimizer_step(
                        param, grad, moments, optimizer=self.optimizer, lr=self.lr,
                        **self.settings, weight_decay=decay, step=self.step)
            losses[epoch] = sum_squares / max(1, self.n_targets)
            n_run += 1
            if self.control.monitoring:
                validation_losses[epoch] = self._end_epoch(losses[epoch])
        self.validation_losses = validation_losses[:n_run if self.validate is not None else 0]
        return losses[:n_run]
