"""One and two optimizer steps of a fit against numbers computed by hand.

The models are as small as a model gets (one weight and one bias; an STM
of one unit), so their gradients are written out below in plain Python
floats, and so are the optimizers, with their hyper-parameters written
here, not imported from lgmstm: a changed constant (momentum 0.8, Adam's
beta1 0.8), a step count that does not carry, a clip that scales the wrong
way fails these tests on both backends, where comparing the backends with
each other cannot see it. The data are chosen so that the gradient of the
second step differs from the first (a momentum or a beta1 only shows
there: the first step of each is the same for any value).
"""
import math

import numpy as np
import pytest

import lgmstm

# The documented hyper-parameters (LGM.fit's docstring), written out.
MOMENTUM = 0.9
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8

BACKENDS = ["cython", "numpy"]
OPTIMIZERS = ["sgd", "momentum", "adam"]
LR = 0.3

# Relative to max(1, |expected|): the models compute in their dtype, these
# numbers in float64, so float32 sees its rounding (a few 1e-7 here).
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}

# LGM data: one input, one output; four samples, cut into two mini-batches
# of two below. The targets pull the weight one way and the bias the other.
LGM_X = [1.0, 2.0, -1.5, 0.5]
LGM_Y = [0.5, -1.0, 2.0, 0.25]

# STM data: three sequences of two steps, one input and one output per step.
STM_X = [[0.5, -1.0], [1.5, 0.25], [-0.75, 1.0]]
STM_Y = [[0.2, -0.4], [0.6, 0.1], [-0.3, 0.5]]


class HandOptimizer:
    """The optimizers of lgmstm.LGM.fit, on lists of floats.

    sgd:      p -= lr g
    momentum: v = 0.9 v + g;  p -= lr v
    adam:     m = 0.9 m + 0.1 g;  s = 0.999 s + 0.001 g^2;
              p -= lr (m / (1 - 0.9^t)) / (sqrt(s / (1 - 0.999^t)) + 1e-8)
    """

    def __init__(self, name, n_params):
        self.name = name
        self.step = 0
        self.velocity = [0.0] * n_params
        self.mean = [0.0] * n_params
        self.square = [0.0] * n_params

    def update(self, params, grads, lr=LR):
        self.step += 1
        t = self.step
        new = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.name == "sgd":
                p = p - lr * g
            elif self.name == "momentum":
                self.velocity[i] = MOMENTUM * self.velocity[i] + g
                p = p - lr * self.velocity[i]
            else:
                self.mean[i] = BETA1 * self.mean[i] + (1 - BETA1) * g
                self.square[i] = BETA2 * self.square[i] + (1 - BETA2) * g * g
                mean = self.mean[i] / (1 - BETA1**t)
                square = self.square[i] / (1 - BETA2**t)
                p = p - lr * mean / (math.sqrt(square) + EPS)
            new.append(p)
        return new


def clipped(grads, clip_norm):
    """The gradients scaled to norm clip_norm when their global norm is above it."""
    norm = math.sqrt(sum(g * g for g in grads))
    if clip_norm is None or norm <= clip_norm:
        return grads
    return [g * clip_norm / norm for g in grads]


def lgm_loss_and_grads(params, rows, output):
    """Mean squared error of y = f(w x + b) over rows, and (d/dw, d/db);
    f is tanh or the identity."""
    w, b = params
    loss = grad_w = grad_b = 0.0
    for i in rows:
        z = w * LGM_X[i] + b
        y = math.tanh(z) if output == "tanh" else z
        residual = y - LGM_Y[i]
        loss += residual * residual / len(rows)
        dz = 2 * residual / len(rows) * ((1 - y * y) if output == "tanh" else 1.0)
        grad_w += dz * LGM_X[i]
        grad_b += dz
    return loss, [grad_w, grad_b]


def stm_loss_and_grads(params, return_sequences):
    """Mean squared error of the one-unit STM on STM_X/STM_Y (linear readout)
    and its gradient, by backpropagation through the two steps:

    h1 = tanh(x1 wx + b),  h2 = tanh(x2 wx + h1 wh + b),  y_t = h_t wo + bo.
    Parameters in the model's order: wx, wh, b, wo, bo.
    """
    wx, wh, b, wo, bo = params
    n_targets = len(STM_X) * (2 if return_sequences else 1)
    loss = 0.0
    grads = [0.0] * 5
    for (x1, x2), (y1, y2) in zip(STM_X, STM_Y):
        h1 = math.tanh(x1 * wx + b)
        h2 = math.tanh(x2 * wx + h1 * wh + b)
        residuals = [h1 * wo + bo - y1, h2 * wo + bo - y2]
        if not return_sequences:
            residuals[0] = 0.0  # only the last step has a target (y2 is it)
        d1, d2 = (2 * r / n_targets for r in residuals)
        loss += sum(r * r for r in residuals) / n_targets
        dz2 = d2 * wo * (1 - h2 * h2)
        dz1 = (d1 * wo + dz2 * wh) * (1 - h1 * h1)
        step_grads = [dz1 * x1 + dz2 * x2, dz2 * h1, dz1 + dz2, d1 * h1 + d2 * h2, d1 + d2]
        grads = [g + s for g, s in zip(grads, step_grads)]
    return loss, grads


def scalars(model):
    """The model's parameters as floats, in its order (each holds one number)."""
    return [float(value.reshape(-1)[0]) for value in model.params.values()]


def assert_near(actual, expected, dtype, what):
    tol = TOLERANCE[np.dtype(dtype)]
    for a, e in zip(actual, expected, strict=True):
        assert abs(a - e) <= tol * max(1.0, abs(e)), f"{what}: got {actual}, expected {expected}"


def test_the_data_make_the_second_step_differ():
    """What the tests below stand on: each model's second gradient is far
    from its first, so a momentum or beta1 changes the second step by more
    than any tolerance here, and Adam's steps are not all +-lr."""
    for output in ("linear", "tanh"):
        for name in OPTIMIZERS:
            params = scalars(lgmstm.LGM([1, 1], output=output, seed=0))
            _, first = lgm_loss_and_grads(params, range(4), output)
            params = HandOptimizer(name, 2).update(params, first)
            _, second = lgm_loss_and_grads(params, range(4), output)
            assert max(abs(a - b) for a, b in zip(first, second)) > 0.05
    for return_sequences in (True, False):
        for name in OPTIMIZERS:
            params = scalars(lgmstm.STM(1, 1, 1, output="linear", seed=0))
            _, first = stm_loss_and_grads(params, return_sequences)
            params = HandOptimizer(name, 5).update(params, first)
            _, second = stm_loss_and_grads(params, return_sequences)
            assert max(abs(a - b) for a, b in zip(first, second)) > 0.05


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("output", ["linear", "tanh"])
def test_lgm_two_full_batch_steps(dtype, backend, optimizer, output):
    model = lgmstm.LGM([1, 1], output=output, dtype=dtype, seed=0, backend=backend)
    params = scalars(model)
    X = np.array(LGM_X)[:, None]
    hand = HandOptimizer(optimizer, 2)
    expected_losses = []
    for epochs in (1, 2):
        loss, grads = lgm_loss_and_grads(params, range(4), output)
        expected_losses.append(loss)
        params = hand.update(params, grads)
        fresh = lgmstm.LGM([1, 1], output=output, dtype=dtype, seed=0, backend=backend)
        history = fresh.fit(X, LGM_Y, epochs=epochs, lr=LR, optimizer=optimizer)
        assert_near(scalars(fresh), params, dtype, f"parameters after {epochs} step(s)")
        assert_near(history, expected_losses, dtype, "losses")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_lgm_two_mini_batch_steps_in_one_epoch(dtype, backend, optimizer):
    """Two batches in order: the step count and the moments go on within the
    epoch; the epoch's loss is the mean of every sample's squared error, each
    measured before its batch's update."""
    model = lgmstm.LGM([1, 1], output="linear", dtype=dtype, seed=0, backend=backend)
    params = scalars(model)
    hand = HandOptimizer(optimizer, 2)
    sum_squares = 0.0
    for rows in ([0, 1], [2, 3]):
        loss, grads = lgm_loss_and_grads(params, rows, "linear")
        sum_squares += loss * len(rows)
        params = hand.update(params, grads)
    history = model.fit(np.array(LGM_X)[:, None], LGM_Y, epochs=1, lr=LR, batch_size=2,
                        shuffle=False, optimizer=optimizer)
    assert_near(scalars(model), params, dtype, "parameters")
    assert_near(history, [sum_squares / 4], dtype, "loss")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_lgm_partial_fit_twice_is_two_steps(dtype, backend, optimizer):
    """The velocity, the means and Adam's step count carry from one call to
    the next; a plain fit afterwards starts them afresh."""
    model = lgmstm.LGM([1, 1], output="linear", dtype=dtype, seed=0, backend=backend)
    params = scalars(model)
    hand = HandOptimizer(optimizer, 2)
    X = np.array(LGM_X)[:, None]
    for _ in range(2):
        _, grads = lgm_loss_and_grads(params, range(4), "linear")
        params = hand.update(params, grads)
        model.partial_fit(X, LGM_Y, lr=LR, optimizer=optimizer)
        assert_near(scalars(model), params, dtype, f"after step {hand.step}")
    _, grads = lgm_loss_and_grads(params, range(4), "linear")
    params = HandOptimizer(optimizer, 2).update(params, grads)
    model.fit(X, LGM_Y, epochs=1, lr=LR, optimizer=optimizer)
    assert_near(scalars(model), params, dtype, "a fresh fit's first step")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last-step"])
@pytest.mark.parametrize("clip_norm", [None, 0.05], ids=["unclipped", "clipped"])
def test_stm_two_steps(dtype, backend, optimizer, return_sequences, clip_norm):
    """Through time: the recurrent weight's gradient comes from the second
    step alone (h0 is zero). With clip_norm 0.05 (below every gradient's
    norm here) both steps are scaled to that norm first."""
    X = np.array(STM_X)[:, :, None]
    Y = np.array(STM_Y)[:, :, None] if return_sequences else np.array(STM_Y)[:, 1:]

    def make():
        return lgmstm.STM(1, 1, 1, output="linear", return_sequences=return_sequences,
                          dtype=dtype, seed=0, backend=backend)

    params = scalars(make())
    hand = HandOptimizer(optimizer, 5)
    expected_losses = []
    for epochs in (1, 2):
        loss, grads = stm_loss_and_grads(params, return_sequences)
        if clip_norm is not None:
            assert math.sqrt(sum(g * g for g in grads)) > 2 * clip_norm  # clipping acts
        expected_losses.append(loss)
        params = hand.update(params, clipped(grads, clip_norm))
        model = make()
        history = model.fit(X, Y, epochs=epochs, lr=LR, optimizer=optimizer,
                            clip_norm=clip_norm)
        assert_near(scalars(model), params, dtype, f"parameters after {epochs} step(s)")
        assert_near(history, expected_losses, dtype, "losses")


@pytest.mark.parametrize("backend", BACKENDS)
def test_stm_gradients_by_hand(dtype, backend):
    """The hand-written gradient the fits above are checked with is the model's."""
    model = lgmstm.STM(1, 1, 1, output="linear", dtype=dtype, seed=0, backend=backend)
    X, Y = np.array(STM_X)[:, :, None], np.array(STM_Y)[:, :, None]
    loss, grads = stm_loss_and_grads(scalars(model), True)
    got = [float(g.reshape(-1)[0]) for g in model.gradients(X, Y).values()]
    assert_near(got, grads, dtype, "gradients")
    assert_near([model.loss(X, Y)], [loss], dtype, "loss")
