"""Type stubs for the compiled module lgmstm._train (csrc/lgmstm/_train.pyx):
the typed objects the model programs' entry points take."""
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

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
        clip_norm: float = ...,
        step: int = ...,
        lengths: NDArray[np.intp] | None = ...,  # IN (STM)
        initial_states: NDArray[np.floating[Any]] | None = ...,  # IN (STM)
        final_states: NDArray[np.floating[Any]] | None = ...,  # OUT (STM)
    ) -> TrainingRun: ...
    X: Any
    Y: Any
    lengths: Any
    initial_states: Any
    final_states: Any
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
    def step(self) -> int:
        """Updates done so far."""
    @step.setter
    def step(self, value: int) -> None: ...
