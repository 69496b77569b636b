"""Type stubs for the compiled module lgmstm._train (csrc/lgmstm/_train.pyx):
the typed objects the model programs' entry points take."""
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

BLAS_THREADING_WORK: Final[int]
"""Multiply-adds from which OpenBLAS may thread a GEMM."""

OPTIMIZER_CODES: Final[dict[str, int]]
"""The optimizers by name, as the compiled code numbers them."""

SCHEDULE_CODES: Final[dict[str, int]]
"""The learning-rate schedules by name, as the compiled code numbers them
("sample_clock": the estimators' private one, lgmstm._training.SampleClock)."""

ADAPTIVE_DIVISOR: Final[float]
"""The adaptive schedule divides lr by this after patience stale epochs."""

MIN_ADAPTIVE_LR: Final[float]
"""A plateau at an lr of at most this stops the adaptive schedule's training."""

SHORT_FIT_WORK: Final[int]
"""The most multiply-adds an epoch of a short fit (one compiled call) may take."""

PATIENCE: Final[int]
TOL: Final[float]
POWER_T: Final[float]
"""fit's defaults of patience, tol and power_t (the short fit takes only those)."""

NO_VALIDATION: Final[NDArray[np.float64]]
"""validation_history_ of a model whose last training had no validation set (read-only)."""

def short_fit_takes(epochs: object, callback: object, verbose: object, seed: object,
                    sample_weight: object, lengths: object, validation_data: object,
                    validation_fraction: object, early_stopping: object, patience: object,
                    tol: object, lr_schedule: object, power_t: object,
                    stop_on_plateau: object) -> bool:
    """Whether fit's other arguments let it try the short fit: one epoch, and
    every other argument its default, as given."""

def epoch_orders(rng: np.random.Generator, n_epochs: int, n_samples: int,
                 ) -> NDArray[np.intp]:
    """(n_epochs, n_samples): a fresh random order of the samples per epoch."""

def beyond_unit(array: NDArray[Any]) -> bool:
    """Whether the array holds a value outside [-1, 1] (NaN counts as outside)."""

def all_finite(arrays: Iterable[NDArray[Any]]) -> bool:
    """Whether every value of these arrays is finite (no NaN or inf)."""

THREAD_CHOICE_SETTINGS: Final[dict[str, float]]
"""What run_epochs' choice of thread count is tuned by: slice_seconds,
probe_share, switch_margin, switch_wins, shapes_kept."""
WORKSPACES: Final[int]
"""Panel workspaces a program keeps, one per layout (KeptMemory)."""

def _simulate_thread_choice(
    many: Sequence[float] | NDArray[np.float64],
    one: Sequence[float] | NDArray[np.float64],
    call_epochs: int = 0,
) -> tuple[NDArray[np.int8], NDArray[np.int8]]:
    """Test hook: per epoch of made-up times (seconds on all threads, on
    one), the arm it ran on and the arm in use then (0 many, 1 one)."""

def _mark_forked_child() -> None:
    """The kernels run on one thread from now on (called in a forked child)."""

@disjoint_base
class UseLock:
    """Many concurrent readers of a model's parameters, or one trainer."""

    def __new__(cls) -> UseLock: ...
    @property
    def readers(self) -> int: ...
    @property
    def trainer(self) -> int:
        """The training thread's ident, 0 when none."""
    def reading(self) -> AbstractContextManager[None]:
        """Read the model (waits while another thread trains)."""
    def training(self) -> AbstractContextManager[None]:
        """Train the model alone (RuntimeError if it is already being trained)."""

@disjoint_base
class _LockContext:
    def __new__(cls, lock: UseLock) -> _LockContext: ...

class _Reading(_LockContext):
    def __enter__(self) -> None: ...
    def __exit__(self, *exc: object) -> None: ...

class _Training(_LockContext):
    def __enter__(self) -> None: ...
    def __exit__(self, *exc: object) -> None: ...

@disjoint_base
class PointerTable:
    """Data pointers of a list of C-contiguous arrays, usable without the GIL."""

    def __new__(cls, arrays: Iterable[NDArray[Any]]) -> PointerTable: ...
    @property
    def arrays(self) -> list[NDArray[Any]]:
        """The arrays, held so that their pointers stay valid."""
    @property
    def count(self) -> int: ...

@disjoint_base
class TrainingRun:
    """The data, training arrays and plan of one fit, built once per fit."""

    def __new__(
        cls,
        *,
        X: NDArray[np.floating[Any]],  # IN
        Y: NDArray[np.floating[Any]],  # IN
        grads: list[NDArray[Any]],  # scratch, laid out as the parameters
        first_moments: list[NDArray[Any]],  # IN/OUT (momentum, adam)
        second_moments: list[NDArray[Any]],  # IN/OUT (adam)
        workspace: list[NDArray[Any]],  # scratch, as the program documents
        batch_size: int,
        optimizer: int,  # the code in lgmstm._training's optimizer table
        lr: float,
        momentum: float,
        beta1: float,
        beta2: float,
        eps: float,
        nesterov: bool = ...,
        weight_decay: float = ...,
        decayed: Sequence[bool] | None = ...,  # per parameter: True for a weight
        clip_norm: float = ...,
        step: int = ...,
        lengths: NDArray[np.intp] | None = ...,  # IN (STM)
        initial_states: NDArray[np.floating[Any]] | None = ...,  # IN (STM)
        final_states: NDArray[np.floating[Any]] | None = ...,  # OUT (STM)
        weights: NDArray[np.float64] | None = ...,  # IN per sample (LGM) or output row (STM)
        program: Program | None = ...,  # whose choice of thread count the run keeps
    ) -> TrainingRun: ...
    X: Any
    Y: Any
    lengths: Any
    initial_states: Any
    final_states: Any
    weights: Any
    @property
    def grads(self) -> PointerTable: ...
    @property
    def first_moments(self) -> PointerTable: ...
    @property
    def second_moments(self) -> PointerTable: ...
    @property
    def workspace(self) -> PointerTable: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def clip_norm(self) -> float: ...
    @property
    def decayed(self) -> NDArray[np.uint8]:
        """Per parameter: 1 for a weight, which takes weight_decay."""
    @property
    def weight_decay(self) -> float: ...
    @property
    def step(self) -> int:
        """Updates done so far."""
    @step.setter
    def step(self, value: int) -> None: ...
    validation: Any
    """The program's validation set (its validation_data), or None."""
    validation_losses: NDArray[np.float64] | None
    """OUT: a block's validation losses, one per epoch (or None)."""
    def set_control(self, *, schedule: int = ..., power_t: float = ...,
                    samples_before: int = ..., min_lr: float = ..., early_stopping: bool = ...,
                    stop_on_plateau: bool = ..., patience: int = ..., tol: float = ...,
                    monitoring: bool = ..., kept: Iterable[NDArray[Any]] = ...) -> None:
        """The end-of-epoch control: schedule (the sample clock's
        samples_before: samples trained before this fit; adaptive's min_lr:
        a plateau at lr <= min_lr stops training), validation,
        early stopping, stopping on a plateau."""
    @property
    def lr(self) -> float:
        """The learning rate of the latest update."""
    @property
    def stopped(self) -> bool:
        """Whether early stopping or the adaptive schedule stopped training."""
    @property
    def best_epoch(self) -> int | None:
        """The epoch of the lowest monitored loss, or None."""
    @property
    def control_state(self) -> tuple[Any, ...]:
        """Where the end-of-epoch control stands."""
    @control_state.setter
    def control_state(self, value: tuple[Any, ...]) -> None: ...
    def restore_best(self) -> bool:
        """Put back the best epoch's kept arrays and step (early stopping)."""

@disjoint_base
class KeptMemory:
    """Zeroed scratch memory a program keeps from one training call to the
    next with the same layout."""

@disjoint_base
class Program:
    """What the model programs share: parameters, lock, kept panel
    workspace, and the short fit of partial_fit and fit(epochs=1)."""

    run_factory: Callable[..., tuple[TrainingRun, Any]]
    """(X, Y, h0, batch_size, state to continue or None, optimizer, settings)
    -> (run, state); settings: (momentum, nesterov, beta1, beta2, eps)."""
    @property
    def params(self) -> PointerTable: ...
    @property
    def output(self) -> str: ...
    @property
    def output_tanh(self) -> bool: ...
    @property
    def loss(self) -> int:
        """The loss code of _loss.pxd: 0 squared error, 1 softmax, 2 sigmoid."""
    def kept_workspaces(self) -> dict[str, Any]:
        """The panel workspaces kept for the program's fits: "layouts",
        (n_bytes, n_steps, task width, n_groups) of each, most recently used
        first; "allocations", how many were made."""
    def kept_thread_choices(self) -> list[dict[str, Any]]:
        """The choices of thread count kept for the program's fits, most
        recently used first: n_threads, n_samples, batch_size, current
        ("many" or "one"), seconds (per epoch on each, 0.0: not timed)."""
    def fit_ready(
        self,
        model: Any,  # its _optimizer_state is read and set, history_ etc. set
        X: object,
        Y: object,
        h0: NDArray[np.floating[Any]] | None,  # IN (STM)
        final_states: NDArray[np.floating[Any]] | None,  # OUT (STM)
        lr: object,
        batch_size: object,
        optimizer: object,
        clip_norm: object,
        shuffle: object,
        warm_start: object,
        momentum: object,
        nesterov: object,
        beta1: object,
        beta2: object,
        eps: object,
        weight_decay: object,
    ) -> NDArray[np.float64] | None:
        """The losses of one epoch of training, or None when the caller must
        take its checked path."""
