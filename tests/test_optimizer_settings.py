"""The optimizers' settings as fit's arguments (momentum, nesterov, beta1,
beta2, eps) and weight decay, one and two steps against numbers computed
by hand in plain Python floats (as tests/test_optimizer_steps.py does for
the defaults): not against lgmstm.reference, which the NumPy backend runs,
so both backends are held to the formulas written here.

Weight decay adds weight_decay * W to every weight's gradient (never a
bias's) after clipping; nesterov updates with grad + momentum * v, v the
new velocity.
"""
import math

import numpy as np
import pytest

import lgmstm
from test_optimizer_steps import (
    LGM_X,
    LGM_Y,
    LR,
    STM_X,
    STM_Y,
    assert_near,
    clipped,
    lgm_loss_and_grads,
    scalars,
    stm_loss_and_grads,
)

BACKENDS = ["cython", "numpy"]

# Settings far from the defaults, so that each shows in the second step.
SETTINGS = {
    "momentum-0.5": ("momentum", dict(momentum=0.5)),
    "nesterov": ("momentum", dict(momentum=0.7, nesterov=True)),
    "nesterov-no-momentum": ("momentum", dict(momentum=0.0, nesterov=True)),
    "adam-betas": ("adam", dict(beta1=0.5, beta2=0.9)),
    "adam-eps": ("adam", dict(eps=0.5)),
    "adam-beta1-0": ("adam", dict(beta1=0.0, beta2=0.0, eps=1e-3)),
    "sgd-decay": ("sgd", dict(weight_decay=0.2)),
    "momentum-decay": ("momentum", dict(momentum=0.6, weight_decay=0.2)),
    "nesterov-decay": ("momentum", dict(nesterov=True, weight_decay=0.2)),
    "adam-decay": ("adam", dict(beta1=0.8, weight_decay=0.2)),
}


class HandOptimizer:
    """The optimizers with settings, on lists of floats; weights[i] says
    whether parameter i is a weight (weight decay) or a bias."""

    def __init__(self, name, weights, momentum=0.9, nesterov=False, beta1=0.9, beta2=0.999,
                 eps=1e-8, weight_decay=0.0):
        self.name, self.weights = name, weights
        self.momentum, self.nesterov = momentum, nesterov
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.weight_decay = weight_decay
        self.step = 0
        n = len(weights)
        self.velocity, self.mean, self.square = [0.0] * n, [0.0] * n, [0.0] * n

    def update(self, params, grads, lr=LR):
        self.step += 1
        t = self.step
        new = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if self.weights[i]:
                g = g + self.weight_decay * p
            if self.name == "sgd":
                p = p - lr * g
            elif self.name == "momentum":
                self.velocity[i] = self.momentum * self.velocity[i] + g
                if self.nesterov:
                    p = p - lr * (g + self.momentum * self.velocity[i])
                else:
                    p = p - lr * self.velocity[i]
            else:
                self.mean[i] = self.beta1 * self.mean[i] + (1 - self.beta1) * g
                self.square[i] = self.beta2 * self.square[i] + (1 - self.beta2) * g * g
                mean = self.mean[i] / (1 - self.beta1**t)
                square = self.square[i] / (1 - self.beta2**t)
                p = p - lr * mean / (math.sqrt(square) + self.eps)
            new.append(p)
        return new


LGM_WEIGHTS = [True, False]  # w, b
STM_WEIGHTS = [True, True, False, True, False]  # wx, wh, b, wo, bo


@pytest.mark.filterwarnings("ignore::lgmstm.TargetRangeWarning")  # the tanh output's
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SETTINGS)
@pytest.mark.parametrize("output", ["linear", "tanh"])
def test_lgm_two_full_batch_steps(dtype, backend, case, output):
    optimizer, settings = SETTINGS[case]
    params = scalars(lgmstm.LGM([1, 1], output=output, dtype=dtype, seed=0))
    X = np.array(LGM_X)[:, None]
    hand = HandOptimizer(optimizer, LGM_WEIGHTS, **settings)
    expected_losses = []
    for epochs in (1, 2):
        loss, grads = lgm_loss_and_grads(params, range(4), output)
        expected_losses.append(loss)
        params = hand.update(params, grads)
        model = lgmstm.LGM([1, 1], output=output, dtype=dtype, seed=0, backend=backend)
        history = model.fit(X, LGM_Y, epochs=epochs, lr=LR, optimizer=optimizer, **settings)
        assert_near(scalars(model), params, dtype, f"parameters after {epochs} step(s)")
        assert_near(history, expected_losses, dtype, "losses (the data's, without the penalty)")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["sgd-decay", "momentum-decay", "adam-decay", "adam-betas"])
def test_lgm_clip_norm_then_weight_decay(dtype, backend, case):
    """The LGM clips too (0.05 is below every gradient's norm here); the
    decay is added to the clipped gradient."""
    optimizer, settings = SETTINGS[case]
    params = scalars(lgmstm.LGM([1, 1], output="linear", dtype=dtype, seed=0))
    X = np.array(LGM_X)[:, None]
    hand = HandOptimizer(optimizer, LGM_WEIGHTS, **settings)
    for epochs in (1, 2):
        _, grads = lgm_loss_and_grads(params, range(4), "linear")
        assert math.sqrt(sum(g * g for g in grads)) > 2 * 0.05  # clipping acts
        params = hand.update(params, clipped(grads, 0.05))
        model = lgmstm.LGM([1, 1], output="linear", dtype=dtype, seed=0, backend=backend)
        model.fit(X, LGM_Y, epochs=epochs, lr=LR, optimizer=optimizer, clip_norm=0.05,
                  **settings)
        assert_near(scalars(model), params, dtype, f"parameters after {epochs} step(s)")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["nesterov", "adam-betas", "momentum-decay", "adam-decay"])
def test_lgm_partial_fit_goes_on_with_the_settings(dtype, backend, case):
    """Two partial_fits with the same settings are two steps of one
    optimizer; the short fit (C-ordered arrays, a compiled model) and the
    checked path alike."""
    optimizer, settings = SETTINGS[case]
    model = lgmstm.LGM([1, 1], output="linear", dtype=dtype, seed=0, backend=backend)
    params = scalars(model)
    hand = HandOptimizer(optimizer, LGM_WEIGHTS, **settings)
    X = np.array(LGM_X, dtype)[:, None]
    Y = np.array(LGM_Y, dtype)[:, None]
    for _ in range(2):
        _, grads = lgm_loss_and_grads(params, range(4), "linear")
        params = hand.update(params, grads)
        model.partial_fit(X, Y, lr=LR, optimizer=optimizer, **settings)
        assert_near(scalars(model), params, dtype, f"after step {hand.step}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("changed", [dict(momentum=0.5), dict(nesterov=True)])
def test_other_momentum_settings_start_afresh(backend, changed):
    """A partial_fit with other settings than the state was made with starts
    the optimizer afresh, as another optimizer does."""
    X = np.array(LGM_X)[:, None]
    Y = np.array(LGM_Y)[:, None]
    model = lgmstm.LGM([1, 1], output="linear", seed=0, backend=backend)
    model.partial_fit(X, Y, lr=LR, optimizer="momentum")
    params = scalars(model)
    _, grads = lgm_loss_and_grads(params, range(4), "linear")
    expected = HandOptimizer("momentum", LGM_WEIGHTS, **changed).update(params, grads)
    model.partial_fit(X, Y, lr=LR, optimizer="momentum", **changed)
    assert_near(scalars(model), expected, np.float64, "a fresh velocity")
    state = model.__getstate__()["optimizer"]
    assert state["step"] == 1
    assert state["settings"] == {"momentum": changed.get("momentum", 0.9),
                                 **({"nesterov": 1.0} if "nesterov" in changed else {})}


@pytest.mark.parametrize("backend", BACKENDS)
def test_weight_decay_does_not_restart_the_optimizer(backend):
    """weight_decay is not a setting of the moments (as lr is not): a new
    one goes on with the state."""
    X = np.array(LGM_X)[:, None]
    Y = np.array(LGM_Y)[:, None]
    model = lgmstm.LGM([1, 1], output="linear", seed=0, backend=backend)
    params = scalars(model)
    hand = HandOptimizer("adam", LGM_WEIGHTS)
    for decay in (0.0, 0.3):
        _, grads = lgm_loss_and_grads(params, range(4), "linear")
        hand.weight_decay = decay
        params = hand.update(params, grads)
        model.partial_fit(X, Y, lr=LR, optimizer="adam", weight_decay=decay)
    assert_near(scalars(model), params, np.float64, "two steps of one Adam")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["nesterov", "adam-betas", "momentum-decay", "adam-decay",
                                  "sgd-decay"])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last-step"])
@pytest.mark.parametrize("clip_norm", [None, 0.05], ids=["unclipped", "clipped"])
def test_stm_two_steps(dtype, backend, case, return_sequences, clip_norm):
    """Wx, Wh and W_out decay; b and b_out do not."""
    optimizer, settings = SETTINGS[case]
    X = np.array(STM_X)[:, :, None]
    Y = np.array(STM_Y)[:, :, None] if return_sequences else np.array(STM_Y)[:, 1:]

    def make():
        return lgmstm.STM(1, 1, 1, output="linear", return_sequences=return_sequences,
                          dtype=dtype, seed=0, backend=backend)

    params = scalars(make())
    hand = HandOptimizer(optimizer, STM_WEIGHTS, **settings)
    expected_losses = []
    for epochs in (1, 2):
        loss, grads = stm_loss_and_grads(params, return_sequences)
        expected_losses.append(loss)
        params = hand.update(params, clipped(grads, clip_norm))
        model = make()
        history = model.fit(X, Y, epochs=epochs, lr=LR, optimizer=optimizer,
                            clip_norm=clip_norm, **settings)
        assert_near(scalars(model), params, dtype, f"parameters after {epochs} step(s)")
        assert_near(history, expected_losses, dtype, "losses")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_size", [None, 1, 3])
def test_the_decay_per_step_does_not_depend_on_the_batch_size(backend, batch_size):
    """Where the data pull nowhere (X = 0, Y = 0, biases 0: every loss
    gradient is 0), each SGD step multiplies the weights by 1 - lr
    weight_decay, whatever the batch size (scikit-learn's alpha / n_batch
    would decay small batches faster)."""
    model = lgmstm.LGM([3, 2], output="linear", seed=0, backend=backend)
    weights = model.params["layer0.weight"]
    X, Y = np.zeros((6, 3)), np.zeros((6, 2))
    model.fit(X, Y, epochs=2, lr=0.1, weight_decay=0.5, batch_size=batch_size)
    n_steps = 2 * (1 if batch_size is None else -(-6 // batch_size))
    np.testing.assert_allclose(model.params["layer0.weight"], weights * 0.95**n_steps,
                               rtol=1e-13)
    np.testing.assert_array_equal(model.params["layer0.bias"], 0.0)


def test_default_settings_are_saved_as_before(tmp_path):
    """The defaults write the optimizer header of the versions before these
    settings; nesterov and other settings are saved and restored."""
    X = np.array(LGM_X)[:, None]
    for settings, expected in ((dict(), {"momentum": 0.9}),
                               (dict(momentum=0.5, nesterov=True),
                                {"momentum": 0.5, "nesterov": 1.0})):
        model = lgmstm.LGM([1, 1], output="linear", seed=0)
        model.partial_fit(X, LGM_Y, lr=LR, optimizer="momentum", **settings)
        model.save(tmp_path / "model.npz")
        loaded = lgmstm.load(tmp_path / "model.npz")
        assert loaded.__getstate__()["optimizer"]["settings"] == expected
        loaded.partial_fit(X, LGM_Y, lr=LR, optimizer="momentum", **settings)
        model.partial_fit(X, LGM_Y, lr=LR, optimizer="momentum", **settings)
        for name, value in model.params.items():
            np.testing.assert_array_equal(loaded.params[name], value, strict=True)
    model = lgmstm.LGM([1, 1], output="linear", seed=0)
    model.partial_fit(X, LGM_Y, lr=LR, optimizer="adam", beta2=0.99)
    assert model.__getstate__()["optimizer"]["settings"] == {
        "beta1": 0.9, "beta2": 0.99, "eps": 1e-8}
