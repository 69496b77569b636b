"""Bad training arguments (optimizer settings, weight_decay, the LGM's
clip_norm) are refused with an error naming the argument, by fit and
partial_fit of both models, on data the short fit takes (which must then
hand over to the checked path) and on data it does not."""
import numpy as np
import pytest

import lgmstm

BAD = [
    # (arguments, error, message)
    (dict(weight_decay=-0.1), ValueError, r"weight_decay must be finite and >= 0, got -0.1"),
    (dict(weight_decay=float("nan")), ValueError, "weight_decay must be finite"),
    (dict(weight_decay=float("inf")), ValueError, "weight_decay must be finite"),
    (dict(weight_decay="0.1"), TypeError, "weight_decay must be a real number"),
    (dict(optimizer="adam", beta1=1.0), ValueError, r"beta1 must be in \[0, 1\), got 1.0"),
    (dict(optimizer="adam", beta1=-0.1), ValueError, r"beta1 must be in \[0, 1\), got -0.1"),
    (dict(optimizer="adam", beta2=1.5), ValueError, r"beta2 must be in \[0, 1\), got 1.5"),
    (dict(optimizer="adam", beta2=float("nan")), ValueError, r"beta2 must be in \[0, 1\)"),
    (dict(optimizer="adam", beta1=True), TypeError, "beta1 must be a real number"),
    (dict(optimizer="adam", eps=0.0), ValueError, "eps must be finite and > 0, got 0.0"),
    (dict(optimizer="adam", eps=-1e-8), ValueError, "eps must be finite and > 0"),
    (dict(optimizer="momentum", momentum=1.0), ValueError, r"momentum must be in \[0, 1\)"),
    (dict(optimizer="momentum", momentum=-0.5), ValueError, r"momentum must be in \[0, 1\)"),
    (dict(optimizer="momentum", nesterov=1), TypeError, "nesterov must be True or False"),
    (dict(optimizer="sgd", nesterov=True), ValueError, "nesterov=True needs optimizer='momentum'"),
    (dict(optimizer="adam", nesterov=True), ValueError, "nesterov=True needs optimizer='momentum'"),
    (dict(clip_norm=0.0), ValueError, "clip_norm must be finite and > 0"),
    (dict(clip_norm=-1.0), ValueError, "clip_norm must be finite and > 0"),
]


def make(kind):
    if kind == "LGM":
        return lgmstm.LGM([3, 4, 2], seed=0)
    return lgmstm.STM(3, 4, 2, seed=0)


def data(kind, fortran):
    rng = np.random.default_rng(0)
    shape = (6, 3) if kind == "LGM" else (6, 2, 3)
    X = rng.uniform(-1, 1, shape)
    Y = rng.uniform(-0.5, 0.5, shape[:-1] + (2,))
    return (np.asfortranarray(X), np.asfortranarray(Y)) if fortran else (X, Y)


@pytest.mark.parametrize("kind", ["LGM", "STM"])
@pytest.mark.parametrize("fortran", [False, True], ids=["short-fit-data", "checked-data"])
@pytest.mark.parametrize("call", ["fit", "partial_fit", "fit-epochs-3"])
@pytest.mark.parametrize("arguments, error, message", BAD,
                         ids=[f"{k}={v}" for args, _, _ in BAD for k, v in args.items()
                              if k != "optimizer"])
def test_bad_argument_is_named(kind, fortran, call, arguments, error, message):
    model = make(kind)
    before = model.params
    X, Y = data(kind, fortran)
    with pytest.raises(error, match=message):
        if call == "partial_fit":
            model.partial_fit(X, Y, lr=0.1, **arguments)
        else:
            model.fit(X, Y, epochs=3 if call == "fit-epochs-3" else 1, lr=0.1, **arguments)
    for name, value in before.items():
        np.testing.assert_array_equal(model.params[name], value)
    assert model.__getstate__()["optimizer"] is None


@pytest.mark.parametrize("kind", ["LGM", "STM"])
@pytest.mark.parametrize("method", ["loss", "gradients"])
def test_bad_weight_decay_of_loss_and_gradients(kind, method):
    model = make(kind)
    X, Y = data(kind, False)
    with pytest.raises(ValueError, match="weight_decay must be finite and >= 0, got -1.0"):
        getattr(model, method)(X, Y, weight_decay=-1.0)


@pytest.mark.parametrize("kind", ["LGM", "STM"])
def test_settings_of_other_optimizers_are_checked_but_unused(kind):
    """A beta1 given to sgd is checked (a typo'd value is still an error)
    but changes nothing: its optimizer has no such setting."""
    X, Y = data(kind, False)
    plain, given = make(kind), make(kind)
    plain.fit(X, Y, epochs=2, lr=0.1)
    given.fit(X, Y, epochs=2, lr=0.1, beta1=0.5, momentum=0.2, eps=1.0)
    for name, value in plain.params.items():
        np.testing.assert_array_equal(given.params[name], value, strict=True)
