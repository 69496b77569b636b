"""Type stubs for the compiled module lgmstm._deep_stm
(csrc/lgmstm/_deep_stm.pyx): the deep STM program (stacked, bidirectional
layers and a readout of tanh layers). Unchecked: use lgmstm.STM."""
from typing import Any

import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

from ._train import Program, TrainingRun, UseLock

_Float = NDArray[np.floating[Any]]
_Index = NDArray[np.intp]

@disjoint_base
class DeepNetwork(Program):
    """A deep STM's parameters and architecture, built once per model."""

    def __new__(
        cls, params: list[_Float], n_in: int,
        hidden: _Index,  # each layer's state size
        dense: _Index,  # each readout layer's size, the output layer last
        n_directions: int,
        output: str,  # "tanh", "linear", "softmax" or "sigmoid" (a cross-entropy on the logits)
        return_sequences: bool, lock: UseLock,
    ) -> DeepNetwork: ...
    @property
    def hidden_sizes(self) -> _Index: ...
    @property
    def dense_sizes(self) -> _Index: ...
    @property
    def param_counts(self) -> _Index: ...
    def blas_work(self, n_samples: int, n_steps: int) -> int:
        """Multiply-adds of a pass over the sequences: whether BLAS may thread."""
    def row_quantum(self, n_steps: int) -> int:
        """The samples a piece of predict's batch must be a multiple of for
        the whole batch's bits (lgmstm.dask.predict)."""
    def predict_stacked(
        self, X: NDArray[Any], h0s: list[NDArray[Any]] | None, lengths: _Index,
        n_threads: int,
    ) -> tuple[NDArray[Any], list[NDArray[Any]]]:
        """(outputs before the output function, each layer's final states) of
        predict, for a model of one direction: the compiled passes of
        reference.deep_forward in one call, with their bits."""
    def training_layout(self, n_rows: int, n_steps: int) -> tuple[int, int] | None:
        """(n_groups, group_width) of the panel layout batches of n_rows
        full-length sequences train in, or None (row-major). For the tests."""
    def workspace_sizes(self, n_rows: int, n_steps: int) -> tuple[int, int, int]:
        """(values of the dtype, intp values, float64 values) of the workspace
        of batches of up to n_rows sequences of n_steps."""
    def gradients(self, run: TrainingRun, n_threads: int) -> float:
        """One batch of all run's samples in order: fill run.grads, return
        the mean loss over the valid outputs (weighted by run.weights)."""
    def validation_data(
        self, X_val: _Float, Y_val: _Float, lengths_val: _Index,
        weights_val: NDArray[np.float64] | None = None,
    ) -> tuple[Any, ...]:
        """What a TrainingRun's validation holds: the validation sequences
        (from zero states), their rows' weights (a cross-entropy's mask) or
        None, and the workspace of one forward-only batch of them all."""
    def train(
        self, run: TrainingRun, order: _Index, epoch_losses: NDArray[np.float64],
        n_threads: int,
    ) -> int:
        """Epochs of mini-batch updates (see the module); returns run.step."""
