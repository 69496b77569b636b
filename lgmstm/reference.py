"""The maths of lgmstm in plain, vectorised NumPy.

Same names, signatures and checks as :mod:`lgmstm.kernels`: this module is
the oracle the compiled kernels are tested against, the ``backend="numpy"``
of the models, and the baseline of the benchmarks. It is written as a good
NumPy programmer would write it, with in-place operations where they are
natural, and no attempt to imitate the compiled code's chunking.
"""
from __future__ import annotations

import numpy as np

from ._validation import (
    dense_backward_args,
    dense_forward_args,
    filled_out,
    rnn_backward_args,
    rnn_forward_args,
)

# The oracle's API, name for name the kernels' (lgmstm.kernels.__all__). The
# unchecked helpers below serve the models' NumPy backend and are not part of it.
__all__ = ["dense_forward", "dense_backward", "rnn_forward", "rnn_backward"]


def dense_forward(X, W, b, *, activation="tanh", out=None):
    """``A = tanh(X @ W + b)`` in NumPy.

    Same parameters, results, checks and errors as
    :func:`lgmstm.kernels.dense_forward`: X (n_samples, n_in), W (n_in,
    n_out), b (n_out,), float32 or float64; returns A (n_samples, n_out).
    """
    apply_tanh, X, W, b, buffer, result = dense_forward_args(X, W, b, activation, out)
    layer_forward(X, W, b, apply_tanh, out=buffer)
    return filled_out(buffer, result)


def dense_backward(X, W, A, dA, *, activation="tanh", need_dX=True):
    """``(dZ @ W.T, X.T @ dZ, dZ.sum(0))`` with ``dZ = dA * (1 - A**2)``, in NumPy.

    Same parameters, results, checks and errors as
    :func:`lgmstm.kernels.dense_backward`; returns (dX or None, dW, db).
    """
    apply_tanh, need_dX, X, W, A, dA = dense_backward_args(X, W, A, dA, activation, need_dX)
    return layer_backward(X, W, A, dA, apply_tanh, need_dX)


# Unchecked forms of the two above, for the NumPy training loops: a NumPy
# programmer validates once, not at every step.
def layer_forward(X, W, b, apply_tanh, out=None):
    """:func:`dense_forward` without checks: C-contiguous arrays of one dtype,
    shapes that fit, apply_tanh a bool."""
    Z = np.matmul(X, W, out=out)
    Z += b
    return np.tanh(Z, out=Z) if apply_tanh else Z


def layer_backward(X, W, A, dA, apply_tanh, need_dX=True):
    """:func:`dense_backward` without checks (see :func:`layer_forward`)."""
    dZ = dA * (1 - A * A) if apply_tanh else dA
    dX = dZ @ W.T if need_dX else None
    return dX, X.T @ dZ, dZ.sum(axis=0)


def squared_error(prediction, target):
    """Mean squared error over all elements and its gradient.

    Returns ``(loss, d_prediction)`` with ``loss = mean((prediction - target)**2)``
    and ``d_prediction = 2 (prediction - target) / prediction.size``.
    """
    diff = prediction - target
    loss = float(np.vdot(diff, diff)) / max(1, diff.size)
    diff *= 2 / max(1, diff.size)
    return loss, diff


# -- outputs and their losses -----------------------------------------------------
# A model's output names its last activation and its loss: "tanh" and
# "linear" the squared error of the activations, "softmax" and "sigmoid" the
# cross-entropy of the probabilities, computed from the logits Z.


def softmax(Z):
    """Row-wise softmax of the logits Z (..., n_out), max-subtracted."""
    shifted = Z - Z.max(axis=-1, keepdims=True)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=-1, keepdims=True)
    return shifted


def log_softmax(Z):
    """log softmax(Z), stably: (Z - max) - log(sum exp(Z - max)); finite for finite Z."""
    shifted = Z - Z.max(axis=-1, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


def sigmoid(Z):
    """The logistic function 1 / (1 + exp(-Z)), without overflow."""
    small = np.exp(-np.abs(Z))
    return np.where(Z >= 0, 1 / (1 + small), small / (1 + small)).astype(Z.dtype, copy=False)


def log_sigmoid(Z):
    """log sigmoid(Z) = -softplus(-Z) = min(Z, 0) - log1p(exp(-|Z|)); never log(0)."""
    return np.minimum(Z, 0) - np.log1p(np.exp(-np.abs(Z)))


def output_function(output, Z):
    """What predict returns from the last layer's Z (its activation for
    "tanh", which the layer applies itself, and "linear")."""
    if output == "softmax":
        return softmax(Z)
    if output == "sigmoid":
        return sigmoid(Z)
    return Z


def log_probabilities(output, Z):
    """log of output_function for "softmax" and "sigmoid", computed stably."""
    return log_softmax(Z) if output == "softmax" else log_sigmoid(Z)


def row_losses(output, outputs, target):
    """(loss of each row, d loss / d outputs) of a (n_rows, n_out) batch.

    squared error ("tanh", "linear"): sum_k (a - y)^2, gradient 2 (a - y);
    "softmax" (outputs are logits z): -sum_k y_k log softmax(z)_k, gradient
    softmax(z) - y (y sums to 1); "sigmoid": sum_k softplus(z) - y z (the
    binary log-loss of sigmoid(z)), gradient sigmoid(z) - y.
    """
    if output == "softmax":
        return -(target * log_softmax(outputs)).sum(axis=1), softmax(outputs) - target
    if output == "sigmoid":
        softplus = np.maximum(outputs, 0) + np.log1p(np.exp(-np.abs(outputs)))
        return (softplus - target * outputs).sum(axis=1), sigmoid(outputs) - target
    diff = outputs - target
    return (diff * diff).sum(axis=1), 2 * diff


def loss_count(output, weights, n_rows, n_out):
    """What a batch's loss is the mean over: the rows' weights summed (n_rows
    without weights), times n_out for the squared error (a mean over the
    outputs too; the cross-entropies sum over them)."""
    total = float(n_rows if weights is None else weights.sum())
    return total * (1 if output in ("softmax", "sigmoid") else n_out)


def output_loss(output, outputs, target, weights=None):
    """The mean loss of a (n_rows, n_out) batch and its gradient.

    Returns ``(loss, d_outputs)``: loss = sum_i w_i loss_i / loss_count (see
    row_losses; w_i = 1 without weights), d_outputs = w_i d loss_i /
    loss_count. Rows of weight 0 add nothing; 0 and zero gradients when
    nothing weighs. The unweighted squared error is :func:`squared_error`.
    """
    if weights is None and output not in ("softmax", "sigmoid"):
        return squared_error(outputs, target)
    n_rows, n_out = outputs.shape
    losses, d_outputs = row_losses(output, outputs, target)
    count = loss_count(output, weights, n_rows, n_out)
    scale = 1 / count if count > 0 else 0.0
    if weights is None:
        d_outputs *= outputs.dtype.type(scale)
        return float(losses.sum(dtype=np.float64)) * scale, d_outputs
    d_outputs *= (weights * scale).astype(outputs.dtype)[:, None]
    return float(np.dot(weights, losses)) * scale, d_outputs


def optimizer_step(param, grad, moments, *, optimizer, lr, momentum, beta1, beta2, eps, step,
                   nesterov=False, weight_decay=0.0):
    """Update ``param`` in place from ``grad``.

    First grad = grad + weight_decay param (the models pass 0 for a bias), then:

    sgd:      param -= lr grad
    momentum: v = momentum v + grad;  param -= lr v
              (nesterov: param -= lr (grad + momentum v), with the new v)
    adam:     m = b1 m + (1 - b1) grad;  v = b2 v + (1 - b2) grad**2;
              param -= lr (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)

    ``moments`` is the list of the optimizer's arrays for this parameter
    ([] for sgd, [v] for momentum, [m, v] for adam), updated in place; t = step.
    The models' defaults of the hyper-parameters are lgmstm._training's.
    """
    dtype = param.dtype.type
    if weight_decay:
        grad = grad + dtype(weight_decay) * param
    if optimizer == "sgd":
        param -= dtype(lr) * grad
    elif optimizer == "momentum":
        (velocity,) = moments
        velocity *= dtype(momentum)
        velocity += grad
        if nesterov:
            param -= dtype(lr) * (grad + dtype(momentum) * velocity)
        else:
            param -= dtype(lr) * velocity
    elif optimizer == "adam":
        mean, square = moments
        mean *= dtype(beta1)
        mean += dtype(1 - beta1) * grad
        square *= dtype(beta2)
        square += dtype(1 - beta2) * grad * grad
        correction1 = dtype(1 - beta1**step)
        correction2 = dtype(1 - beta2**step)
        param -= dtype(lr) * (mean / correction1) / (np.sqrt(square / correction2) + dtype(eps))
    else:
        raise ValueError(f"optimizer must be 'sgd', 'momentum' or 'adam', got {optimizer!r}")


# -- recurrent layer -------------------------------------------------------------


def rnn_forward(X, h0, Wx, Wh, b, *, lengths=None, out=None):
    """``h_t = tanh(x_t @ Wx + h_{t-1} @ Wh + b)``; see :func:`lgmstm.kernels.rnn_forward`."""
    X, h0, Wx, Wh, b, lengths, buffer, result = rnn_forward_args(X, h0, Wx, Wh, b, lengths, out)
    recurrent_forward(X, h0, Wx, Wh, b, lengths, buffer)
    return filled_out(buffer, result)


def rnn_backward(X, h0, Wx, Wh, H, dH, *, dh_last=None, lengths=None):
    """Backpropagation through time; see :func:`lgmstm.kernels.rnn_backward`."""
    X, h0, Wx, Wh, H, dH, dh_last, lengths = rnn_backward_args(
        X, h0, Wx, Wh, H, dH, dh_last, lengths)
    return recurrent_backward(X, h0, Wx, Wh, H, dH, dh_last, lengths)


# Unchecked forms of the two above, for the STM's NumPy training loop.
def recurrent_forward(X, h0, Wx, Wh, b, lengths, H):
    """Fill H (n_samples, n_steps, n_hidden); lengths is an intp array.

    Step by step on contiguous (n_samples, .) rows: BLAS's bits depend on a
    product's shape and strides, so a step computed here is the same bits
    whatever n_steps and t are (one call per step, as STM.step makes, gives
    the bits of one call on the whole sequence).
    """
    n_steps = X.shape[1]
    h = h0  # None: the zero state, which adds nothing (0 @ Wh, even with inf in Wh)
    for t in range(n_steps):
        z = np.ascontiguousarray(X[:, t]) @ Wx
        z += b
        if h is not None:
            z += h @ Wh
        h = np.tanh(z, out=z)
        H[:, t] = h
    # Steps past a sequence's end only feed later padded steps: compute, then zero.
    H[np.arange(n_steps) >= lengths[:, None]] = 0
    return H


def final_states(H, h0, lengths):
    """(n_samples, n_hidden): each sequence's state at its last valid step (h0 at length 0)."""
    n_samples, _, n_hidden = H.shape
    last = H[np.arange(n_samples), np.maximum(lengths - 1, 0)] if H.shape[1] else \
        np.zeros((n_samples, n_hidden), H.dtype)
    start = np.zeros_like(last) if h0 is None else h0
    return np.where((lengths > 0)[:, None], last, start)


def recurrent_backward(X, h0, Wx, Wh, H, dH, dh_last, lengths, need_dX=True):
    """(dX, dh0, dWx, dWh, db); dH may be None (no loss on the states themselves)."""
    n_samples, n_steps, n_in = X.shape
    n_hidden = Wh.shape[0]
    dtype = H.dtype
    valid = np.arange(n_steps) < lengths[:, None]
    dZ = np.zeros((n_samples, n_steps, n_hidden), dtype)
    carry = np.zeros((n_samples, n_hidden), dtype)
    for t in range(n_steps - 1, -1, -1):
        grad = carry if dH is None else dH[:, t] + carry
        if dh_last is not None:
            grad = grad + dh_last * (lengths == t + 1)[:, None]
        dz = dZ[:, t]
        np.multiply(grad, 1 - H[:, t] * H[:, t], out=dz)
        dz *= valid[:, t, None]
        carry = dz @ Wh.T
    dh0 = carry
    if dh_last is not None:
        dh0 = dh0 + dh_last * (lengths == 0)[:, None]
    # the state each step started from: h0, then the states before it
    previous = np.concatenate(
        [np.zeros((n_samples, 1, n_hidden), dtype) if h0 is None else h0[:, None], H[:, :-1]],
        axis=1)[:, :n_steps]
    n_rows = n_samples * n_steps  # explicit: -1 cannot be inferred when a size is 0
    dZ_rows = dZ.reshape(n_rows, n_hidden)
    dWx = X.reshape(n_rows, n_in).T @ dZ_rows
    dWh = previous.reshape(n_rows, n_hidden).T @ dZ_rows
    db = dZ_rows.sum(axis=0)
    dX = dZ @ Wx.T if need_dX else None
    return dX, dh0, dWx, dWh, db
