"""Type stubs for the compiled module lgmstm._dense (csrc/lgmstm/_dense.pyx):
the dense layer's kernel entry points.

Unchecked kernels: every array must be C-contiguous and of the shape the
docstring gives; one floating dtype (float32 or float64) per call, which the
``_Float`` type variable expresses as Cython's fused type ``floating`` does.
Call them through :mod:`lgmstm.kernels`.
"""
from typing import Final, TypeVar

import numpy as np
from numpy.typing import NDArray

_Float = TypeVar("_Float", np.float32, np.float64)

TASK_ROWS: Final[int]
"""Rows of the tallest GEMM a task does (a multiple of the batch chunk)."""

def partials_size(n_samples: int) -> int:
    """Length of the ``partials`` scratch of a loss over n_samples samples."""

def _tanh(x: NDArray[_Float]) -> None:
    """``x = tanh(x)`` in place; x of shape (n,) (a test hook)."""

def forward(
    X: NDArray[_Float],  # IN (n_samples, n_in)
    W: NDArray[_Float],  # IN (n_in, n_out)
    b: NDArray[_Float],  # IN (n_out,)
    out: NDArray[_Float],  # OUT (n_samples, n_out)
    apply_tanh: bool,
    n_threads: int,
) -> None:
    """``out = tanh(X W + b)`` (or ``X W + b``)."""

def forward_steps(
    X: NDArray[_Float],  # IN (n_samples, n_steps, n_in)
    W: NDArray[_Float],  # IN (n_in, n_out)
    b: NDArray[_Float],  # IN (n_out,)
    out: NDArray[_Float],  # OUT (n_samples, n_steps, n_out)
    apply_tanh: bool,
    n_threads: int,
) -> None:
    """``out[:, t] = tanh(X[:, t] W + b)`` for every step t, each step apart: its
    rows' bits are those of a forward over ``X[:, t]`` alone."""

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
