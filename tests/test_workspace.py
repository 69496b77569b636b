"""A compiled model keeps its latest fit's scratch arrays for the next fit
(_training.TrainingWorkspace): reusing them must never change a result."""
import numpy as np
import pytest

import lgmstm


def lgm_problem(dtype, n_samples=70):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_samples, 6)).astype(dtype)
    Y = rng.uniform(-0.8, 0.8, (n_samples, 3)).astype(dtype)
    return lambda: lgmstm.LGM([6, 9, 3], dtype=dtype, seed=1), X, Y, {}


def stm_problem(dtype, n_samples=70):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n_samples, 5, 4)).astype(dtype)
    Y = rng.uniform(-0.8, 0.8, (n_samples, 5, 2)).astype(dtype)
    lengths = rng.integers(0, 6, n_samples)
    return (lambda: lgmstm.STM(4, 40, 2, dtype=dtype, seed=1), X, Y,
            {"lengths": lengths})


PROBLEMS = {"LGM": lgm_problem, "STM": stm_problem}
# Each fit of a sequence differs from the last in batch size, optimizer or
# data, or repeats it, so the workspace is both reused and replaced.
FITS = [dict(epochs=3, lr=0.05), dict(epochs=2, lr=0.05),
        dict(epochs=2, lr=0.01, batch_size=16, optimizer="adam"),
        dict(epochs=2, lr=0.01, batch_size=16, optimizer="adam"),
        dict(epochs=2, lr=0.01, batch_size=16, optimizer="momentum"),
        dict(epochs=1, lr=0.05)]


def params_of(model):
    return {name: value.copy() for name, value in model.params.items()}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", PROBLEMS)
def test_reused_workspace_gives_the_bits_of_a_fresh_one(kind, dtype):
    make, X, Y, extra = PROBLEMS[kind](dtype)
    reused, fresh = make(), make()
    for fit in FITS:
        reused_losses = reused.fit(X, Y, seed=3, **fit, **extra)
        fresh._network.workspace.release()
        fresh_losses = fresh.fit(X, Y, seed=3, **fit, **extra)
        np.testing.assert_array_equal(reused_losses, fresh_losses)
        for name, value in params_of(reused).items():
            np.testing.assert_array_equal(value, params_of(fresh)[name], err_msg=name)
    # And another data set of the same shape, through the same workspace.
    X2, Y2 = X[::-1].copy(), Y[::-1].copy()
    extra2 = {key: value[::-1].copy() for key, value in extra.items()}
    fresh._network.workspace.release()
    np.testing.assert_array_equal(reused.fit(X2, Y2, epochs=2, lr=0.05, **extra2),
                                  fresh.fit(X2, Y2, epochs=2, lr=0.05, **extra2))


@pytest.mark.parametrize("kind", PROBLEMS)
def test_workspace_is_kept_for_the_same_shapes_only(kind):
    make, X, Y, extra = PROBLEMS[kind](np.float64)
    model = make()
    workspace = model._network.workspace
    model.fit(X, Y, epochs=1, lr=0.01, **extra)
    kept = workspace.get(workspace._key, lambda: pytest.fail("workspace not kept"))
    model.fit(X, Y, epochs=1, lr=0.01, **extra)
    assert workspace.get(workspace._key, lambda: None) is kept
    model.fit(X, Y, epochs=1, lr=0.01, batch_size=8, **extra)
    assert workspace.get(workspace._key, lambda: None) is not kept
    workspace.release()
    assert workspace._arrays is None
