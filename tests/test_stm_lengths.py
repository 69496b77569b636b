"""An STM on a padded batch of sequences of different lengths, against each
sequence run alone, unpadded, by an independent computation.

The oracle below is the Elman network written out for one sequence in
float64 NumPy, with no lengths and no masks: a step past a sequence's end
does not exist for it. The model gets the same sequences padded to one
length, with garbage in the padded inputs and targets, and must give each
sequence's outputs and final state, the loss and gradient that count only
valid targets, and the sgd steps of a fit with them, on both backends and
in both dtypes. An off-by-one in a padding mask (a padded step run, or a
sequence's last step dropped) shows here, where lengths 0, 1, n_steps - 1
and n_steps sit side by side.
"""
import numpy as np
import pytest

import lgmstm

N_IN, N_HIDDEN, N_OUT, N_STEPS = 3, 5, 2, 7
LENGTHS = [7, 6, 1, 0, 3, 7]  # rows 0-2 and 3-5 are the two mini-batches below
NAMES = ["input_weight", "recurrent_weight", "bias", "readout.weight", "readout.bias"]
LR = 0.1
GARBAGE = 1e3  # in padded inputs and targets: a padded step that counts shows

# The model computes in its dtype, the oracle in float64; rtol and atol (scaled
# by the largest expected magnitude), as conftest's table for kernels.
TOLERANCES = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def alone(params, x, y, output, return_sequences):
    """One sequence x (length, n_in), unpadded; y its targets ((length,
    n_out), or (1, n_out) for the last step). Returns (outputs, final
    state, sum of squared errors, gradient of that sum by parameter name).

    h_t = tanh(x_t Wx + h_{t-1} Wh + b) from h_0 = 0; y = f(h Wo + bo) at
    every step, or at the last (h_0 itself for an empty sequence).
    """
    Wx, Wh, b, Wo, bo = (params[name].astype(np.float64) for name in NAMES)
    states = [np.zeros(N_HIDDEN)]
    for x_t in x:
        states.append(np.tanh(x_t @ Wx + states[-1] @ Wh + b))
    readout_in = np.array(states[1:]).reshape(-1, N_HIDDEN) if return_sequences \
        else states[-1][None]
    z = readout_in @ Wo + bo
    out = np.tanh(z) if output == "tanh" else z
    residual = out - y
    dz = 2 * residual * ((1 - out * out) if output == "tanh" else 1)
    grads = {"readout.weight": readout_in.T @ dz, "readout.bias": dz.sum(axis=0),
             "input_weight": np.zeros_like(Wx), "recurrent_weight": np.zeros_like(Wh),
             "bias": np.zeros_like(b)}
    d_states = np.zeros((len(x), N_HIDDEN))
    if return_sequences:
        d_states += dz @ Wo.T
    elif len(x):
        d_states[-1] += (dz @ Wo.T)[0]
    carry = np.zeros(N_HIDDEN)
    for t in range(len(x) - 1, -1, -1):  # states[t + 1] is h_t's, states[t] the one before
        d_pre = (d_states[t] + carry) * (1 - states[t + 1] ** 2)
        grads["input_weight"] += np.outer(x[t], d_pre)
        grads["recurrent_weight"] += np.outer(states[t], d_pre)
        grads["bias"] += d_pre
        carry = d_pre @ Wh.T
    return out, states[-1], float(np.sum(residual**2)), grads


def batch(params, X, Y, rows, output, return_sequences):
    """The loss (mean over the valid targets of rows) and its gradient,
    from each sequence alone."""
    total, grads, n_targets = 0.0, {name: 0.0 for name in NAMES}, 0
    for i in rows:
        length = LENGTHS[i]
        y = Y[i, :length] if return_sequences else Y[i][None]
        _, _, squares, g = alone(params, X[i, :length], y, output, return_sequences)
        total += squares
        n_targets += y.size
        grads = {name: grads[name] + g[name] for name in NAMES}
    return total / n_targets, {name: g / n_targets for name, g in grads.items()}


def data(dtype, return_sequences):
    rng = np.random.default_rng(11)
    X = rng.standard_normal((len(LENGTHS), N_STEPS, N_IN))
    Y = rng.uniform(-0.8, 0.8, (len(LENGTHS), N_STEPS, N_OUT))
    last = rng.uniform(-0.8, 0.8, (len(LENGTHS), N_OUT))  # one target per sequence
    padded = np.arange(N_STEPS) >= np.array(LENGTHS)[:, None]
    X[padded] = GARBAGE
    Y[padded] = GARBAGE
    return X.astype(dtype), (Y if return_sequences else last).astype(dtype)


def assert_near(actual, expected, dtype, what):
    tol = TOLERANCES[np.dtype(dtype)]
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=tol,
                               atol=tol * scale, err_msg=what)


CASES = [pytest.param(backend, output, return_sequences,
                      id=f"{backend}-{output}-{'sequences' if return_sequences else 'last'}")
         for backend in ("cython", "numpy") for output in ("tanh", "linear")
         for return_sequences in (True, False)]


def make(dtype, backend, output, return_sequences):
    return lgmstm.STM(N_IN, N_HIDDEN, N_OUT, output=output, return_sequences=return_sequences,
                      dtype=dtype, seed=7, backend=backend)


@pytest.mark.parametrize("backend, output, return_sequences", CASES)
def test_predict_is_each_sequence_alone(dtype, backend, output, return_sequences):
    X, _ = data(dtype, return_sequences)
    model = make(dtype, backend, output, return_sequences)
    params = model.params
    outputs, final = model.predict(X, lengths=LENGTHS, return_state=True)
    assert outputs.dtype == final.dtype == dtype
    for i, length in enumerate(LENGTHS):
        dummy = np.zeros((length, N_OUT) if return_sequences else (1, N_OUT))
        expected, state, _, _ = alone(params, X[i, :length], dummy, output, return_sequences)
        if return_sequences:
            assert_near(outputs[i, :length], expected, dtype, f"outputs of sequence {i}")
            assert not outputs[i, length:].any(), f"padded outputs of sequence {i}"
        else:
            assert_near(outputs[i], expected[0], dtype, f"output of sequence {i}")
        assert_near(final[i], state, dtype, f"final state of sequence {i}")


@pytest.mark.parametrize("backend, output, return_sequences", CASES)
def test_loss_and_gradients_count_valid_targets_only(dtype, backend, output,
                                                     return_sequences):
    X, Y = data(dtype, return_sequences)
    model = make(dtype, backend, output, return_sequences)
    loss, grads = batch(model.params, X, Y, range(len(LENGTHS)), output, return_sequences)
    assert_near(model.loss(X, Y, lengths=LENGTHS), loss, dtype, "loss")
    got = model.gradients(X, Y, lengths=LENGTHS)
    assert list(got) == NAMES
    for name in NAMES:
        assert got[name].dtype == dtype
        assert_near(got[name], grads[name], dtype, name)


@pytest.mark.parametrize("backend, output, return_sequences", CASES)
@pytest.mark.parametrize("batch_size", [None, 3], ids=["one-step", "two-batches"])
def test_fit_takes_the_steps_of_sequences_alone(dtype, backend, output, return_sequences,
                                                batch_size):
    """sgd, in order: one step on the whole batch, or one on rows 0-2 and
    one on rows 3-5 from where the first left the parameters; the epoch's
    loss is every valid target's squared error before its batch's step."""
    X, Y = data(dtype, return_sequences)
    model = make(dtype, backend, output, return_sequences)
    params = model.params
    batches = [range(6)] if batch_size is None else [range(3), range(3, 6)]
    sum_squares, n_targets = 0.0, 0
    for rows in batches:
        loss, grads = batch(params, X, Y, rows, output, return_sequences)
        targets = sum(LENGTHS[i] if return_sequences else 1 for i in rows) * N_OUT
        sum_squares += loss * targets
        n_targets += targets
        params = {name: params[name] - LR * grads[name] for name in NAMES}
    history = model.fit(X, Y, epochs=1, lr=LR, batch_size=batch_size, shuffle=False,
                        lengths=LENGTHS)
    assert_near(history, [sum_squares / n_targets], dtype, "the epoch's loss")
    for name, value in model.params.items():
        assert value.dtype == dtype
        assert_near(value, params[name], dtype, name)
