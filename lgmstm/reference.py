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


def layer_forward_steps(X, W, b, apply_tanh):
    """:func:`layer_forward` of each step of X (n_samples, n_steps, n_in)
    apart: outputs (n_samples, n_steps, n_out) whose step t is
    ``layer_forward(X[:, t], ...)``, the bits of that step alone (a BLAS
    product may round a row by its row count)."""
    out = np.empty(X.shape[:2] + (W.shape[1],), X.dtype)
    for t in range(X.shape[1]):
        out[:, t] = layer_forward(np.ascontiguousarray(X[:, t]), W, b, apply_tanh)
    return out


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
        # Selected, not multiplied by 0: past a sequence's end dH, H (and X
        # below) are not read, and NaN or inf there would survive a product.
        dz = dZ[:, t]
        dz[...] = np.where(valid[:, t, None], grad * (1 - H[:, t] * H[:, t]), 0)
        carry = dz @ Wh.T
    dh0 = carry
    if dh_last is not None:
        dh0 = dh0 + dh_last * (lengths == 0)[:, None]
    # the state each step started from: h0, then the states before it
    previous = np.concatenate(
        [np.zeros((n_samples, 1, n_hidden), dtype) if h0 is None else h0[:, None], H[:, :-1]],
        axis=1)[:, :n_steps]
    previous = np.where(valid[:, :, None], previous, 0)
    n_rows = n_samples * n_steps  # explicit: -1 cannot be inferred when a size is 0
    dZ_rows = dZ.reshape(n_rows, n_hidden)
    dWx = np.where(valid[:, :, None], X, 0).reshape(n_rows, n_in).T @ dZ_rows
    dWh = previous.reshape(n_rows, n_hidden).T @ dZ_rows
    db = dZ_rows.sum(axis=0)
    dX = dZ @ Wx.T if need_dX else None
    return dX, dh0, dWx, dWh, db


# -- the deep STM: stacked, bidirectional layers and a readout of tanh layers --------
#
# The composition below is written once, over four passes: the layer and
# recurrent passes above. The STM's NumPy backend runs it with this module's
# passes (REFERENCE_PASSES), its compiled backend with the compiled kernels'
# (lgmstm._deep), so that the two differ only in the kernels.


class Passes:
    """The passes a deep STM is composed of, with the signatures of
    layer_forward, layer_backward, recurrent_forward, recurrent_backward and
    layer_forward_steps."""

    def __init__(self, layer_forward, layer_backward, recurrent_forward, recurrent_backward,
                 layer_forward_steps):
        self.layer_forward, self.layer_backward = layer_forward, layer_backward
        self.recurrent_forward, self.recurrent_backward = recurrent_forward, recurrent_backward
        self.layer_forward_steps = layer_forward_steps


REFERENCE_PASSES = Passes(layer_forward, layer_backward, recurrent_forward, recurrent_backward,
                          layer_forward_steps)


def reverse_steps(X, lengths):
    """Each sequence's valid steps in reverse order, padded steps 0.

    ``R[i, t] = X[i, lengths[i] - 1 - t]`` for ``t < lengths[i]``, else 0: the
    input of a backward direction, which starts at each sequence's last
    valid step. Its own inverse on arrays that are 0 past each length.
    """
    n_samples, n_steps = X.shape[:2]
    steps = np.arange(n_steps)
    source = lengths[:, None] - 1 - steps
    valid = source >= 0
    R = X[np.arange(n_samples)[:, None], np.where(valid, source, 0)]
    R[~valid] = 0
    return np.ascontiguousarray(R)


class DeepForward:
    """What a deep STM's forward pass keeps for its backward pass.

    inputs[k]: layer k's input sequence (X for layer 0), (n_samples, n_steps, .);
    states[k][d]: direction d's states in its own step order (d = 1, the
    reverse direction, runs over reverse_steps of the input); finals[k][d]:
    each direction's state after its last step (h0 at length 0); readout:
    the readout's input and the activation of each of its layers.
    """

    def __init__(self):
        self.inputs, self.states, self.finals, self.readout = [], [], [], []


def deep_forward(X, layers, readout, h0s, lengths, output_tanh, return_sequences,
                 passes=REFERENCE_PASSES, steps_apart=False):
    """Outputs of a deep STM, and its DeepForward.

    layers[k]: one (Wx, Wh, b) per direction of layer k (forward, then
    reverse when bidirectional); readout: (W, b) per dense layer, the hidden
    tanh layers then the output layer (tanh when output_tanh); h0s: None or
    one forward initial state (or None) per layer (a reverse direction starts
    from zeros). Each layer's input is the state sequence of the layer
    below, both directions concatenated per step (forward first, reverse
    states back in the input's order); the readout reads the top layer's
    states on every valid step (return_sequences; outputs 0 past each length)
    or each sequence's final states (forward direction's at the last valid
    step, reverse direction's at step 0). steps_apart (predict's): the
    readout of every step apart (layer_forward_steps), so that each output
    has the bits of a forward over that step alone; else one product over
    all the rows (training's).
    """
    kept = DeepForward()
    n_samples, n_steps, _ = X.shape
    for k, directions in enumerate(layers):
        kept.inputs.append(X)
        states, finals = [], []
        for d, (Wx, Wh, b) in enumerate(directions):
            h0 = h0s[k] if d == 0 and h0s is not None else None
            X_d = X if d == 0 else reverse_steps(X, lengths)
            H = np.empty((n_samples, n_steps, Wh.shape[0]), X.dtype)
            passes.recurrent_forward(X_d, h0, Wx, Wh, b, lengths, H)
            states.append(H)
            finals.append(final_states(H, h0, lengths))
        kept.states.append(states)
        kept.finals.append(finals)
        X = states[0] if len(states) == 1 else np.concatenate(
            [states[0], reverse_steps(states[1], lengths)], axis=2)
    if return_sequences:
        A = X.reshape(n_samples * n_steps, X.shape[2])
    else:
        A = np.ascontiguousarray(np.concatenate(kept.finals[-1], axis=1))
    kept.readout.append(A)
    for j, (W, b) in enumerate(readout):
        apply_tanh = output_tanh or j < len(readout) - 1
        if return_sequences and steps_apart:
            A = passes.layer_forward_steps(A.reshape(n_samples, n_steps, A.shape[1]), W, b,
                                           apply_tanh).reshape(n_samples * n_steps, W.shape[1])
        else:
            A = passes.layer_forward(A, W, b, apply_tanh)
        kept.readout.append(A)
    if not return_sequences:
        return A, kept
    outputs = A.reshape(n_samples, n_steps, A.shape[1])
    outputs[np.arange(n_steps) >= lengths[:, None]] = 0
    return outputs, kept


def deep_backward(layers, readout, h0s, lengths, output_tanh, return_sequences, kept,
                  d_outputs, passes=REFERENCE_PASSES):
    """Gradients of a deep STM from d_outputs (shaped as deep_forward's
    outputs, 0 past each length), in deep_forward's parameter order: per
    layer, per direction (dWx, dWh, db); then per readout layer (dW, db).
    Nothing flows into h0s (truncated BPTT)."""
    dA = d_outputs.reshape(-1, d_outputs.shape[-1])
    readout_grads: list = []
    for j in range(len(readout) - 1, -1, -1):
        W = readout[j][0]
        dA, dW, db = passes.layer_backward(kept.readout[j], W, kept.readout[j + 1], dA,
                                           output_tanh or j < len(readout) - 1)
        readout_grads[:0] = [dW, db]
    n_samples, n_steps = kept.inputs[0].shape[:2]
    d_sequence, d_finals = None, None
    if return_sequences:
        d_sequence = dA.reshape(n_samples, n_steps, dA.shape[1])
    else:
        d_finals = dA
    layer_grads: list = []
    for k in range(len(layers) - 1, -1, -1):
        directions = layers[k]
        X = kept.inputs[k]
        d_input = None
        grads = []
        offset = 0
        for d, (Wx, Wh, _) in enumerate(directions):
            n_hidden = Wh.shape[0]
            h0 = h0s[k] if d == 0 and h0s is not None else None
            dH = dh_last = None
            if d_sequence is not None:
                dH = np.ascontiguousarray(d_sequence[:, :, offset:offset + n_hidden])
                if d == 1:
                    dH = reverse_steps(dH, lengths)
            if d_finals is not None:
                dh_last = np.ascontiguousarray(d_finals[:, offset:offset + n_hidden])
            offset += n_hidden
            X_d = X if d == 0 else reverse_steps(X, lengths)
            dX, _, dWx, dWh, db = passes.recurrent_backward(
                X_d, h0, Wx, Wh, kept.states[k][d], dH, dh_last, lengths, need_dX=k > 0)
            grads += [dWx, dWh, db]
            if k > 0:
                dX = dX if d == 0 else reverse_steps(dX, lengths)
                d_input = dX if d_input is None else d_input + dX
        layer_grads[:0] = grads
        d_sequence, d_finals = d_input, None
    return layer_grads + readout_grads


def sequence_loss(output, outputs, Y, lengths, return_sequences, weights=None):
    """(mean loss, d outputs) of an STM's outputs (n_samples, n_out), or
    (n_samples, n_steps, n_out) with return_sequences, 0 past each length.

    Unweighted squared error ("tanh", "linear"): the mean over the valid
    outputs (Y 0 past each length, as the outputs, so padded ones add
    nothing); else output_loss over the output rows, weights (None, or
    each row's weight shaped as Y without its last axis, 0 at padded
    steps: a cross-entropy's padded rows need them).
    """
    n_out = outputs.shape[-1]
    if weights is None and output not in ("softmax", "sigmoid"):
        n_valid = int(lengths.sum()) if return_sequences else outputs.shape[0]
        # squared_error averages over every output; padded ones are 0 - 0.
        loss, d_outputs = squared_error(outputs, Y)
        rescale = outputs.size / max(1, n_valid * n_out)
        d_outputs *= d_outputs.dtype.type(rescale)
        return loss * rescale, d_outputs
    loss, d_outputs = output_loss(output, outputs.reshape(-1, n_out), Y.reshape(-1, n_out),
                                  None if weights is None else weights.reshape(-1))
    return loss, d_outputs.reshape(outputs.shape)


def deep_loss_gradients(X, Y, layers, readout, h0s, lengths, output, return_sequences,
                        passes=REFERENCE_PASSES, weights=None):
    """(loss, grads, finals) of a deep STM on one batch: the output's mean
    loss over the valid outputs (sequence_loss; output "tanh", "linear",
    "softmax" or "sigmoid", the last two on the logits), deep_backward's
    gradients, and the forward finals of each layer."""
    outputs, kept = deep_forward(X, layers, readout, h0s, lengths, output == "tanh",
                                 return_sequences, passes)
    loss, d_outputs = sequence_loss(output, outputs, Y, lengths, return_sequences, weights)
    grads = deep_backward(layers, readout, h0s, lengths, output == "tanh", return_sequences,
                          kept, d_outputs, passes)
    return loss, grads, [finals[0] for finals in kept.finals]
