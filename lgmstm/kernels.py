"""Compiled dense kernels with the checked API of :mod:`lgmstm.reference`.

Each function validates its arguments once, makes C-contiguous views or
copies, allocates the results and makes one compiled call that runs without
the GIL, with OpenMP over fixed-size chunks of the batch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _dense
from ._threads import get_num_threads, single_threaded_blas
from ._validation import check_activation, dense_backward_args, dense_forward_args

__all__ = ["dense_forward", "dense_backward"]

def dense_forward(X: ArrayLike, W: ArrayLike, b: ArrayLike, *, activation: str = "tanh",
                  out: NDArray[Any] | None = None) -> NDArray[Any]:
    """Dense layer forward pass, ``A = tanh(X @ W + b)``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_in), float32 or float64
    W : array-like of shape (n_in, n_out), same dtype
    b : array-like of shape (n_out,), same dtype
    activation : {"tanh", "linear"}, default "tanh"
        "linear" returns ``X @ W + b``.
    out : ndarray of shape (n_samples, n_out), optional
        Where to write the result: same dtype, writable, C-contiguous.

    Returns
    -------
    A : ndarray of shape (n_samples, n_out), the inputs' dtype
    """
    apply_tanh = check_activation(activation)
    X, W, b, buffer, result = dense_forward_args(X, W, b, out)
    with single_threaded_blas(_dense.TASK_ROWS * W.shape[0] * W.shape[1]):
        _dense.forward(X, W, b, buffer, apply_tanh, get_num_threads())
    if buffer is not result:
        result[...] = buffer
    return result


def dense_backward(X: ArrayLike, W: ArrayLike, A: ArrayLike, dA: ArrayLike, *,
                   activation: str = "tanh", need_dX: bool = True,
                   ) -> tuple[NDArray[Any] | None, NDArray[Any], NDArray[Any]]:
    """Dense layer backward pass.

    With ``dZ = dA * (1 - A**2)`` (``dZ = dA`` for a linear layer)::

        dX = dZ @ W.T,   dW = X.T @ dZ,   db = dZ.sum(axis=0)

    Parameters
    ----------
    X : array-like of shape (n_samples, n_in), float32 or float64
        The layer's input.
    W : array-like of shape (n_in, n_out)
    A : array-like of shape (n_samples, n_out)
        The layer's output, ``dense_forward(X, W, b)``.
    dA : array-like of shape (n_samples, n_out)
        Gradient of the loss with respect to A.
    activation : {"tanh", "linear"}, default "tanh"
    need_dX : bool, default True
        When False, dX is not computed and None is returned in its place.

    Returns
    -------
    dX : ndarray of shape (n_samples, n_in), or None
    dW : ndarray of shape (n_in, n_out)
    db : ndarray of shape (n_out,)
    """
    apply_tanh = check_activation(activation)
    X, W, A, dA = dense_backward_args(X, W, A, dA)
    n_samples, n_in = X.shape
    n_out = W.shape[1]
    dtype = X.dtype
    dZ = np.empty((n_samples, n_out), dtype)
    dX = np.empty((n_samples, n_in) if need_dX else (1, 1), dtype)
    dW = np.empty((n_in, n_out), dtype)
    db = np.empty(n_out, dtype)
    work = _dense.TASK_ROWS * max(n_in * n_out, n_out * n_samples)
    with single_threaded_blas(work):
        _dense.backward(X, W, A, dA, dZ, dX, dW, db, bool(need_dX), apply_tanh,
                        get_num_threads())
    return (dX if need_dX else None), dW, db
