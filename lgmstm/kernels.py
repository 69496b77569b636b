"""Compiled dense and recurrent kernels with the checked API of :mod:`lgmstm.reference`.

Each function validates its arguments once, makes C-contiguous views or
copies, allocates the results and makes one compiled call that runs without
the GIL, with OpenMP over fixed-size chunks of the batch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _dense, _rnn
from ._threads import get_num_threads, single_threaded_blas
from ._validation import (
    dense_backward_args,
    dense_forward_args,
    filled_out,
    rnn_backward_args,
    rnn_forward_args,
)

__all__ = ["dense_forward", "dense_backward", "rnn_forward", "rnn_backward"]


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
        The layer's output (``out`` itself when given).

    Raises
    ------
    TypeError
        An argument is not a real array, float32 and float64 are mixed, or
        out is not an ndarray of the inputs' dtype.
    ValueError
        Wrong number of dimensions, shapes that do not fit (the message shows
        expected vs actual), an unknown activation, or an out that has the
        wrong shape, is read-only or not C-contiguous.
    """
    apply_tanh, X, W, b, buffer, result = dense_forward_args(X, W, b, activation, out)
    with single_threaded_blas(_dense.TASK_ROWS * W.shape[0] * W.shape[1]):
        _dense.forward(X, W, b, buffer, apply_tanh, get_num_threads())
    return filled_out(buffer, result)


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
    W : array-like of shape (n_in, n_out), same dtype
    A : array-like of shape (n_samples, n_out), same dtype
        The layer's output, ``dense_forward(X, W, b)``.
    dA : array-like of shape (n_samples, n_out), same dtype
        Gradient of the loss with respect to A.
    activation : {"tanh", "linear"}, default "tanh"
    need_dX : bool, default True
        When False, dX is not computed and None is returned in its place.

    Returns
    -------
    dX : ndarray of shape (n_samples, n_in), or None
        Gradient with respect to X (None when need_dX is False).
    dW : ndarray of shape (n_in, n_out)
        Gradient with respect to W, summed over the samples.
    db : ndarray of shape (n_out,)
        Gradient with respect to b, summed over the samples.

    Raises
    ------
    TypeError
        An argument is not a real array, or float32 and float64 are mixed.
    ValueError
        Wrong number of dimensions, shapes that do not fit (the message shows
        expected vs actual) or an unknown activation.
    """
    apply_tanh, need_dX, X, W, A, dA = dense_backward_args(X, W, A, dA, activation, need_dX)
    n_samples, n_in = X.shape
    n_out = W.shape[1]
    dtype = X.dtype
    dZ = np.empty((n_samples, n_out), dtype)
    dX = np.empty((n_samples, n_in) if need_dX else (1, 1), dtype)
    dW = np.empty((n_in, n_out), dtype)
    db = np.empty(n_out, dtype)
    work = _dense.TASK_ROWS * max(n_in * n_out, n_out * n_samples)
    with single_threaded_blas(work):
        _dense.backward(X, W, A, dA, dZ, dX, dW, db, need_dX, apply_tanh,
                        get_num_threads())
    return (dX if need_dX else None), dW, db


# -- recurrent layer -------------------------------------------------------------


def _rnn_work(n_samples, n_steps, n_in, n_hidden):
    """Multiply-adds of the largest GEMM a task does (a weight-gradient block)."""
    return n_samples * n_steps * max(n_in, n_hidden) * n_hidden


def _chunk_scratch(n_samples, n_in, n_hidden, dtype, backward):
    return (np.empty(_rnn.scratch_size(n_samples, n_in, n_hidden, backward), dtype),
            np.empty(n_samples, np.intp))


def rnn_forward(X, h0, Wx, Wh, b, *, lengths=None, out=None):
    """Elman tanh RNN forward pass over whole sequences.

    ``h_t = tanh(x_t @ Wx + h_{t-1} @ Wh + b)`` for ``t = 0 .. lengths[i] - 1``,
    with ``h_{-1} = h0``.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_steps, n_in), float32 or float64
        Input sequences, batch-first. Steps past a sequence's length are not read.
    h0 : array-like of shape (n_samples, n_hidden), same dtype, or None
        Initial states; None means zeros.
    Wx : array-like of shape (n_in, n_hidden)
    Wh : array-like of shape (n_hidden, n_hidden)
    b : array-like of shape (n_hidden,)
    lengths : array-like of int, shape (n_samples,), optional
        Steps each sequence runs, each in [0, n_steps]; None means n_steps for
        all. States past a sequence's length are 0 and cost nothing; its
        final state is ``H[i, lengths[i] - 1]`` (h0 when its length is 0).
    out : ndarray of shape (n_samples, n_steps, n_hidden), optional
        Where to write the result: same dtype, writable, C-contiguous.

    Returns
    -------
    H : ndarray of shape (n_samples, n_steps, n_hidden), the inputs' dtype
        Every state.
    """
    X, h0, Wx, Wh, b, lengths, buffer, result = rnn_forward_args(X, h0, Wx, Wh, b, lengths, out)
    n_samples, n_steps, n_in = X.shape
    n_hidden = Wx.shape[1]
    scratch, order = _chunk_scratch(n_samples, n_in, n_hidden, X.dtype, False)
    with single_threaded_blas(_rnn_work(n_samples, n_steps, n_in, n_hidden)):
        _rnn.forward(X, h0, Wx, Wh, b, lengths, buffer, scratch, order,
                           get_num_threads())
    return filled_out(buffer, result)


def rnn_backward(X, h0, Wx, Wh, H, dH, *, dh_last=None, lengths=None):
    """Backpropagation through time for :func:`rnn_forward`.

    With ``dz_t = (dH_t + dz_{t+1} @ Wh.T) * (1 - h_t**2)``, run from each
    sequence's last valid step (where ``dh_last`` joins) down to step 0::

        dX_t = dz_t @ Wx.T,  dh0 = dz_0 @ Wh.T,
        dWx = sum_t x_t.T @ dz_t,  dWh = sum_t h_{t-1}.T @ dz_t,  db = sum_t dz_t

    Parameters
    ----------
    X, h0, Wx, Wh, lengths : as given to :func:`rnn_forward`
    H : array-like of shape (n_samples, n_steps, n_hidden)
        The states, ``rnn_forward(X, h0, Wx, Wh, b, lengths=lengths)``.
    dH : array-like of shape (n_samples, n_steps, n_hidden)
        Gradient of the loss with respect to H; ignored past each length.
    dh_last : array-like of shape (n_samples, n_hidden), optional
        Extra gradient on each sequence's final state (from a later chunk of
        the stream, in truncated BPTT); None means zeros.

    Returns
    -------
    dX : ndarray of shape (n_samples, n_steps, n_in), 0 past each length
    dh0 : ndarray of shape (n_samples, n_hidden)
    dWx : ndarray of shape (n_in, n_hidden)
    dWh : ndarray of shape (n_hidden, n_hidden)
    db : ndarray of shape (n_hidden,)
    """
    X, h0, Wx, Wh, H, dH, dh_last, lengths = rnn_backward_args(
        X, h0, Wx, Wh, H, dH, dh_last, lengths)
    n_samples, n_steps, n_in = X.shape
    n_hidden = Wx.shape[1]
    dtype = X.dtype
    dX = np.empty_like(X)
    dh0 = np.empty((n_samples, n_hidden), dtype)
    dWx = np.empty_like(Wx)
    dWh = np.empty_like(Wh)
    db = np.empty(n_hidden, dtype)
    dZ = np.empty_like(H)
    dz_first = np.empty((n_samples, n_hidden), dtype)
    scratch, order = _chunk_scratch(n_samples, n_in, n_hidden, dtype, True)
    with single_threaded_blas(_rnn_work(n_samples, n_steps, n_in, n_hidden)):
        _rnn.backward(X, h0, Wx, Wh, H, dH, dh_last, lengths, dZ, dz_first, dX,
                            dh0, dWx, dWh, db, scratch, order, get_num_threads())
    return dX, dh0, dWx, dWh, db
