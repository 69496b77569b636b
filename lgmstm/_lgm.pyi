"""Type stubs for the compiled module lgmstm._lgm (csrc/lgmstm/_lgm.pyx): the
LGM program. Unchecked: use lgmstm.LGM."""
from typing import Any

import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

from ._train import Program, TrainingRun, UseLock

_Float = NDArray[np.floating[Any]]

@disjoint_base
class Network(Program):
    """A network's parameters and architecture, built once per model."""

    def __new__(
        cls, params: list[_Float], layer_sizes: NDArray[np.intp], output: str,
        lock: UseLock,
    ) -> Network: ...
    def blas_work(self, n_samples: int) -> int:
        """Multiply-adds of a pass's largest GEMM task: whether BLAS may thread."""
    def row_quantum(self) -> int:
        """Samples a piece of a batch must be a multiple of for predict over the
        pieces to give the whole batch's bits (the GEMM tasks' rows)."""
    def predict_ready(self, X: object) -> _Float | None:
        """The outputs for X when it is an ndarray of the parameters' dtype and
        shape, C-contiguous, the call is small and no other thread trains;
        else None (the caller takes its checked path)."""
    @property
    def layer_sizes(self) -> NDArray[np.intp]: ...
    def predict(
        self,
        X: _Float,  # IN (n_samples, n_in)
        activations: list[_Float],  # OUT one (n_samples, sizes[l + 1]) per layer
        n_threads: int,
        logits: bool = ...,  # softmax/sigmoid outputs: the logits, not probabilities
    ) -> None: ...
    def gradients(
        self,
        X: _Float,  # IN (n_samples, n_in)
        Y: _Float,  # IN (n_samples, n_out)
        grads: list[_Float],  # OUT, laid out as params
        activations: list[_Float],  # scratch
        deltas: list[_Float],  # scratch
        partials: NDArray[np.float64],  # scratch (partials_size(n_samples),)
        n_threads: int,
        weights: NDArray[np.float64] | None = ...,  # IN (n_samples,)
    ) -> float:
        """Fill grads; return the (weighted) mean loss."""
    def validation_data(self, X_val: NDArray[np.floating[Any]],
                        Y_val: NDArray[np.floating[Any]],
                        weights_val: NDArray[np.float64] | None = ...) -> tuple[Any, ...]:
        """A TrainingRun's validation: the set, its forward pass's scratch, its weights."""
    def mean_loss(
        self,
        X: _Float,  # IN (n_samples, n_in)
        Y: _Float,  # IN (n_samples, n_out)
        weights: NDArray[np.float64] | None,  # IN (n_samples,)
        n_threads: int,
    ) -> float:
        """The (weighted) mean loss: the training driver's validation loss."""
    def train(
        self,
        run: TrainingRun,
        order: NDArray[np.intp],  # IN (n_epochs, n_samples), or (0, n_samples) in order
        epoch_losses: NDArray[np.float64],  # OUT (n_epochs,)
        n_threads: int,
    ) -> int:
        """Train for ``epoch_losses.shape[0]`` epochs; return the updates done so far."""

def _training_layout(
    n_rows: int, layer_sizes: NDArray[np.intp], itemsize: int
) -> tuple[int, int] | None:
    """(n_groups, group_width) of the panel layout, or None (row-major BLAS)."""
