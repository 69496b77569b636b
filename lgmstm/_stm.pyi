"""Type stubs for the compiled module lgmstm._stm (csrc/lgmstm/_stm.pyx): the
STM program. Unchecked: use lgmstm.STM."""
from typing import Any

import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

from ._train import Program, TrainingRun, UseLock

_Float = NDArray[np.floating[Any]]
_Index = NDArray[np.intp]

@disjoint_base
class Network(Program):
    """The STM's parameters and architecture, built once per model."""

    def __new__(
        cls, params: list[_Float], sizes: _Index, output: str, return_sequences: bool,
        lock: UseLock,
    ) -> Network: ...
    def blas_work(self, n_samples: int, n_steps: int) -> int:
        """Multiply-adds of a pass over the sequences: whether BLAS may thread."""
    def row_quantum(self, n_steps: int) -> int:
        """Sequences a piece of a batch must be a multiple of for predict over
        the pieces to give the whole batch's bits (1 in the panel layout)."""
    def step_ready(self, x: object, state: object) -> tuple[_Float, _Float] | None:
        """(outputs, new state) of one step when x and state are ndarrays of the
        parameters' dtype and shape, C-contiguous, the call is small and no
        other thread trains; else None (the caller takes its checked path)."""
    def predict_ready(self, X: object, initial_state: object,
                      ) -> tuple[_Float, _Float] | None:
        """(outputs, final states) of predict without lengths when X and
        initial_state are ndarrays of the parameters' dtype and shape,
        C-contiguous, the call is small and no other thread trains; else
        None (the caller takes its checked path)."""
    @property
    def layer_sizes(self) -> _Index: ...
    @property
    def return_sequences(self) -> bool: ...
    def predict(
        self, X: _Float, h0: _Float | None, lengths: _Index, buffers: list[NDArray[Any]],
        n_threads: int,
        logits: bool = ...,  # softmax/sigmoid outputs: the logits, not probabilities
    ) -> tuple[_Float, _Float]:
        """(outputs, final states): two of the buffers, filled."""
    def gradients(
        self, X: _Float, Y: _Float, h0: _Float | None, lengths: _Index,
        grads: list[_Float],  # OUT
        buffers: list[NDArray[Any]],  # scratch
        n_threads: int,
        weights: NDArray[np.float64] | None = ...,  # IN per output row, 0 at padded steps
    ) -> float:
        """Fill grads; return the (weighted) mean loss over the valid outputs."""
    def validation_data(self, X_val: NDArray[np.floating[Any]],
                        Y_val: NDArray[np.floating[Any]],
                        lengths_val: NDArray[np.intp],
                        weights_val: NDArray[np.float64] | None = None) -> tuple[Any, ...]:
        """A TrainingRun's validation: the sequences, their forward pass's
        buffers and the output rows' mask (a cross-entropy's), or None."""
    def mean_loss(
        self,
        X: _Float,  # IN (n_samples, n_steps, n_in)
        Y: _Float,  # IN flattened, 0 at padded steps
        h0: _Float | None,  # IN (n_samples, n_hidden), or None: zeros
        lengths: NDArray[np.intp],  # IN (n_samples,)
        weights: NDArray[np.float64] | None,  # IN the output rows', 0 at padded steps
        n_threads: int,
    ) -> float:
        """The mean loss over the valid outputs: the training driver's validation loss."""
    def train(
        self,
        run: TrainingRun,
        order: _Index,  # IN (n_epochs, n_samples), or (0, n_samples) in order
        epoch_losses: NDArray[np.float64],  # OUT (n_epochs,)
        n_threads: int,
    ) -> int:
        """Train for ``epoch_losses.shape[0]`` epochs; return the updates done so far."""

def buffer_shapes(
    n_samples: int, n_steps: int, n_in: int, n_hidden: int, n_out: int,
    return_sequences: bool, backward: bool = ...,
) -> list[tuple[tuple[int, ...], type | None]]: ...
def _training_layout(
    n_rows: int, n_steps: int, sizes: _Index, itemsize: int, return_sequences: bool
) -> tuple[int, int] | None: ...

def _predict_layout(n_in: int, n_hidden: int, n_out: int) -> str:
    """"panel" when predict and step of such a model run in the panel layout,
    else "blas"."""
