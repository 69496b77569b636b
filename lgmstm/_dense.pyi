"""Type stubs for the compiled module lgmstm._dense (csrc/_dense.pyx).

Unchecked kernels: every array must be C-contiguous and of the shape the
docstring gives; one floating dtype (float32 or float64) per call, which the
``_Float`` type variable expresses as Cython's fused type ``floating`` does.
Call them through :mod:`lgmstm.kernels` or :class:`lgmstm.LGM`.
"""
from collections.abc import Iterable
from typing import Any, Final, TypeVar

import numpy as np
from numpy.typing import NDArray
from typing_extensions import disjoint_base

_Float = TypeVar("_Float", np.float32, np.float64)

TASK_ROWS: Final[int]
"""Rows of the tallest GEMM a task does (a multiple of the batch chunk)."""

def partials_size(n_samples: int) -> int:
    """Length of the ``partials`` scratch of a loss over n_samples samples."""

@disjoint_base
class PointerList:
    """Data pointers of a list of C-contiguous arrays, usable without the GIL."""

    def __new__(cls, arrays: Iterable[NDArray[Any]]) -> PointerList: ...
    @property
    def arrays(self) -> list[NDArray[Any]]:
        """The arrays, held so that their pointers stay valid."""

def tanh(x: NDArray[_Float]) -> None:
    """``x = tanh(x)`` in place; x of shape (n,)."""

def forward(
    X: NDArray[_Float],  # IN (n_samples, n_in)
    W: NDArray[_Float],  # IN (n_in, n_out)
    b: NDArray[_Float],  # IN (n_out,)
    out: NDArray[_Float],  # OUT (n_samples, n_out)
    apply_tanh: bool,
    n_threads: int,
) -> None:
    """``out = tanh(X W + b)`` (or ``X W + b``)."""

def backward(
    X: NDArray[_Float],  # IN (n_samples, n_in)
    W: NDArray[_Float],  # IN (n_in, n_out)
    A: NDArray[_Float],  # IN (n_samples, n_out)
    dA: NDArray[_Float],  # IN (n_samples, n_out)
    dZ: NDArray[_Float],  # scratch (n_samples, n_out)
    dX: NDArray[_Float],  # OUT (n_samples, n_in), untouched unless need_dX
    dW: NDArray[_Float],  # OUT (n_in, n_out)
    db: NDArray[_Float],  # OUT (n_out,)
    need_dX: bool,
    apply_tanh: bool,
    n_threads: int,
) -> None:
    """Gradients of a dense layer."""

def training_layout(
    n_rows: int, layer_sizes: NDArray[np.intp], itemsize: int
) -> tuple[int, int] | None:
    """(n_groups, group_width) of the panel layout, or None (row-major BLAS)."""

def predict(
    X: NDArray[_Float],  # IN (n_samples, sizes[0])
    params: PointerList,  # IN [W_0, b_0, W_1, b_1, ...]
    layer_sizes: NDArray[np.intp],  # IN (n_layers + 1,)
    output_tanh: bool,
    activations: PointerList,  # OUT one (n_samples, sizes[l + 1]) array per layer
    n_threads: int,
) -> None:
    """Fill activations; the last one is the prediction."""

def gradients(
    X: NDArray[_Float],  # IN (n_samples, sizes[0])
    Y: NDArray[_Float],  # IN (n_samples, sizes[-1])
    params: PointerList,  # IN
    grads: PointerList,  # OUT, laid out as params
    layer_sizes: NDArray[np.intp],
    output_tanh: bool,
    activations: PointerList,  # scratch
    deltas: PointerList,  # scratch
    partials: NDArray[np.float64],  # scratch (partials_size(n_samples),)
    n_threads: int,
) -> float:
    """Fill grads with the loss gradient; return the mean squared error."""

def train(
    X: NDArray[_Float],  # IN (n_samples, sizes[0])
    Y: NDArray[_Float],  # IN (n_samples, sizes[-1])
    params: PointerList,  # IN/OUT
    grads: PointerList,  # scratch
    state1: PointerList,  # IN/OUT the optimizer's first moments (any valid pointers for sgd)
    state2: PointerList,  # IN/OUT its second moments (adam)
    layer_sizes: NDArray[np.intp],
    output_tanh: bool,
    activations: PointerList,  # scratch, batch_size rows
    deltas: PointerList,  # scratch, batch_size rows
    X_batch: NDArray[_Float],  # scratch (batch_size, sizes[0])
    Y_batch: NDArray[_Float],  # scratch (batch_size, sizes[-1])
    partials: NDArray[np.float64],  # scratch (partials_size(batch_size),)
    order: NDArray[np.intp],  # IN (n_epochs, n_samples), or (0, n_samples) unshuffled
    batch_size: int,
    optimizer: int,  # lgmstm._training.OPTIMIZERS[name].code
    lr: float,
    momentum: float,
    beta1: float,
    beta2: float,
    eps: float,
    step: int,
    epoch_losses: NDArray[np.float64],  # OUT (n_epochs,)
    n_threads: int,
) -> int:
    """Train for ``epoch_losses.shape[0]`` epochs; return the updates done so far."""
