"""The softmax and sigmoid outputs and their cross-entropy losses.

The compiled models against three oracles: scipy.special's log_softmax and
log_expit (the loss's value), central differences of the loss (its
gradients), and the NumPy reference (backend="numpy", the same maths).
Logits of +-1000 stay finite (LGM and STM); predict gives probabilities and
predict_log_proba their logs; the results are the same bits for any thread
count and on the fast paths; a softmax model learns a toy classification.
"""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
from scipy.special import log_expit, log_softmax

import lgmstm
from lgmstm import LGM, STM

from finite_differences import numerical_gradient

PROBABILITY_OUTPUTS = ["softmax", "sigmoid"]
BACKENDS = ["cython", "numpy"]
TOLERANCE = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


def class_targets(rng, shape, n_classes, output, probabilities=False):
    """Targets of `shape` + (n_classes,): one-hot rows (softmax; or, with
    probabilities, random class probabilities), or values in [0, 1] (sigmoid)."""
    if output == "sigmoid":
        return rng.uniform(0, 1, shape + (n_classes,)).round(1)
    if probabilities:
        raw = rng.uniform(0.05, 1, shape + (n_classes,))
        return raw / raw.sum(axis=-1, keepdims=True)
    return np.eye(n_classes)[rng.integers(0, n_classes, shape)]


def scipy_loss(output, logits, Y, weights=None):
    """The loss from scipy.special, per row then (weighted) mean over rows."""
    logits = logits.astype(np.float64).reshape(-1, logits.shape[-1])
    Y = Y.astype(np.float64).reshape(logits.shape)
    if output == "softmax":
        rows = -(Y * log_softmax(logits, axis=1)).sum(axis=1)
    else:
        rows = -(Y * log_expit(logits) + (1 - Y) * log_expit(-logits)).sum(axis=1)
    weights = np.ones(len(rows)) if weights is None else np.asarray(weights, float).reshape(-1)
    return float((weights * rows).sum() / weights.sum())


def lgm_logits(params, X):
    """The LGM's logits in NumPy: tanh hidden layers, a linear last one."""
    n_layers = len(params) // 2
    A = X
    for layer in range(n_layers):
        A = A @ params[f"layer{layer}.weight"] + params[f"layer{layer}.bias"]
        if layer < n_layers - 1:
            A = np.tanh(A)
    return A


def assert_grads_close(actual, expected, dtype, scale=1.0):
    tol = TOLERANCE[np.dtype(dtype)]
    for name in expected:
        assert actual[name].dtype == np.dtype(dtype), name
        np.testing.assert_allclose(actual[name], expected[name], rtol=tol * 10,
                                   atol=tol * scale, err_msg=name)


# -- the value: scipy as the oracle ------------------------------------------------

@pytest.mark.parametrize("output", PROBABILITY_OUTPUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lgm_loss_is_the_cross_entropy(rng, dtype, output, backend):
    model = LGM([4, 7, 3], output=output, dtype=dtype, seed=1, backend=backend)
    X = rng.standard_normal((40, 4)).astype(dtype)
    Y = class_targets(rng, (40,), 3, output, probabilities=True)
    logits = lgm_logits({k: v.astype(np.float64) for k, v in model.params.items()},
                        X.astype(np.float64))
    expected = scipy_loss(output, logits, Y)
    assert model.loss(X, Y) == pytest.approx(expected, rel=TOLERANCE[dtype] * 10)
    # fit's first epoch (full batch) measures the same loss before its update
    history = model.fit(X, Y, epochs=1, lr=1e-9)
    assert history[0] == pytest.approx(expected, rel=TOLERANCE[dtype] * 10)


@pytest.mark.parametrize("output", PROBABILITY_OUTPUTS)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_stm_loss_is_the_cross_entropy_over_valid_outputs(rng, output, return_sequences):
    model = STM(3, 5, 4, output=output, return_sequences=return_sequences, seed=2)
    X = rng.standard_normal((9, 6, 3))
    lengths = np.array([6, 0, 3, 1, 6, 2, 5, 4, 6])
    Y = class_targets(rng, (9, 6) if return_sequences else (9,), 4, output)
    Z = model.predict_log_proba(X, lengths=lengths)  # to check the logits' route too
    p = model.params
    # the logits in NumPy, from the recurrence
    h = np.zeros((9, 5))
    logits, finals = [], h.copy()
    for t in range(6):
        h = np.tanh(X[:, t] @ p["input_weight"] + h @ p["recurrent_weight"] + p["bias"])
        logits.append(h @ p["readout.weight"] + p["readout.bias"])
        finals[lengths == t + 1] = h[lengths == t + 1]
    if return_sequences:
        valid = np.arange(6) < lengths[:, None]
        expected = scipy_loss(output, np.stack(logits, 1)[valid], Y[valid])
        np.testing.assert_allclose(
            Z[valid], (log_softmax(np.stack(logits, 1), axis=-1) if output == "softmax"
                       else log_expit(np.stack(logits, 1)))[valid], rtol=1e-12, atol=1e-12)
        assert not Z[~valid].any()
    else:
        final_logits = finals @ p["readout.weight"] + p["readout.bias"]
        expected = scipy_loss(output, final_logits, Y)
    assert model.loss(X, Y, lengths=lengths) == pytest.approx(expected, rel=1e-12)


# -- the gradients: finite differences and the reference --------------------------

@pytest.mark.parametrize("output", PROBABILITY_OUTPUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lgm_gradients_match_finite_differences(rng, output, backend):
    model = LGM([3, 5, 4], output=output, seed=3, backend=backend)
    X = rng.standard_normal((11, 3))
    Y = class_targets(rng, (11,), 4, output, probabilities=True)

    def loss(p):
        return scipy_loss(output, lgm_logits(p, X), Y)

    for name, grad in model.gradients(X, Y).items():
        np.testing.assert_allclose(grad, numerical_gradient(loss, model.params, name),
                                   rtol=1e-6, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("output", PROBABILITY_OUTPUTS)
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_stm_gradients_match_finite_differences(rng, output, return_sequences, backend):
    model = STM(2, 4, 3, output=output, return_sequences=return_sequences, seed=4,
                backend=backend)
    X = rng.standard_normal((5, 4, 2))
    lengths = np.array([4, 2, 0, 3, 1])
    Y = class_targets(rng, (5, 4) if return_sequences else (5,), 3, output)
    probe = STM(2, 4, 3, output=output, return_sequences=return_sequences, backend="numpy")

    def loss(p):
        probe.load_params(p)
        return probe.loss(X, Y, lengths=lengths)

    for name, grad in model.gradients(X, Y, lengths=lengths).items():
        np.testing.assert_allclose(grad, numerical_gradient(loss, model.params, name),
                                   rtol=1e-6, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("output", PROBABILITY_OUTPUTS)
def test_lgm_compiled_gradients_match_the_reference(rng, dtype, output):
    for sizes, n in (([6, 9, 4], 30), ([30, 80, 12], 300)):  # panel-sized and BLAS-sized
        X = rng.standard_normal((n, sizes[0])).astype(dtype)
        Y = class_targets(rng, (n,), sizes[-1], output, probabilities=True)
        compiled = LGM(sizes, output=output, dtype=dtype, seed=5)
        oracle = LGM(sizes, output=output, dtype=dtype, seed=5, backend="numpy")
        assert compiled.loss(X, Y) == pytest.approx(oracle.loss(X, Y), rel=TOLERANCE[dtype])
        assert_grads_close(compiled.gradients(X, Y), oracle.gradients(X, Y), dtype)
        np.testing.assert_allclose(compiled.predict(X), oracle.predict(X),
                                   atol=TOLERANCE[dtype] * 10)


@pytest.mark.parametrize("output", PROBABILITY_OUTPUTS)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_stm_compiled_gradients_match_the_reference(rng, dtype, output, return_sequences):
    X = rng.standard_normal((13, 7, 3)).astype(dtype)
    lengths = rng.integers(0, 8, 13)
    Y = class_targets(rng, (13, 7) if return_sequences else (13,), 4, output)
    compiled = STM(3, 6, 4, output=output, return_sequences=return_sequences, dtype=dtype,
                   seed=6)
    oracle = STM(3, 6, 4, output=output, return_sequences=return_sequences, dtype=dtype,
                 seed=6, backend="numpy")
    assert compiled.loss(X, Y, lengths=lengths) == pytest.approx(
        oracle.loss(X, Y, lengths=lengths), rel=TOLERANCE[dtype])
    assert_grads_close(compiled.gradients(X, Y, lengths=lengths),
                       oracle.gradients(X, Y, lengths=lengths), dtype)
    np.testing.assert_allclose(compiled.predict(X, lengths=lengths),
                               oracle.predict(X, lengths=lengths), atol=TOLERANCE[dtype] * 10)
    history = compiled.fit(X, Y, lengths=lengths, epochs=3, lr=0.1, batch_size=5, seed=0)
    expected = oracle.fit(X, Y, lengths=lengths, epochs=3, lr=0.1, batch_size=5, seed=0)
    np.testing.assert_allclose(history, expected, rtol=TOLERANCE[dtype] * 10)


# -- stability ---------------------------------------------------------------------

def huge_logits_model(cls_output, dtype, backend):
    """A one-layer LGM whose logits are +-1000 (its inputs are 1 and -1)."""
    model = LGM([1, 3], output=cls_output, dtype=dtype, backend=backend)
    model.load_params({"layer0.weight": np.array([[1000.0, -1000.0, 0.0]], dtype),
                       "layer0.bias": np.zeros(3, dtype)})
    return model


@pytest.mark.parametrize("output", PROBABILITY_OUTPUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_of_a_thousand_stay_finite(dtype, output, backend):
    model = huge_logits_model(output, dtype, backend)
    X = np.array([[1.0], [-1.0]], dtype)
    # the classes the logits put least weight on: every loss is about 2000
    Y = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype)
    loss = model.loss(X, Y)
    assert np.isfinite(loss)
    if output == "softmax":  # -log softmax = 2000 for both rows
        assert loss == pytest.approx(2000.0, rel=1e-6)
    else:  # softplus(1000) + softplus(-(-1000)) + log 2, per row
        assert loss == pytest.approx(2000.0 + np.log(2), rel=1e-6)
    grads = model.gradients(X, Y)
    assert all(np.isfinite(g).all() for g in grads.values())
    # d loss / d W = mean over rows of x (p - y): known exactly here
    p = model.predict(X)
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    np.testing.assert_allclose(grads["layer0.weight"], (X.T @ (p - Y)) / 2, atol=1e-6)
    log_p = model.predict_log_proba(X)
    assert np.isfinite(log_p).all()
    # log softmax of the logit 1000 below another, log sigmoid(-1000)
    assert log_p.min() == pytest.approx(-2000.0 if output == "softmax" else -1000.0, rel=1e-6)
    history = model.fit(X, Y, epochs=2, lr=1e-3)
    assert np.isfinite(history).all()


@pytest.mark.parametrize("output", PROBABILITY_OUTPUTS)
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_stm_logits_of_a_thousand_stay_finite(dtype, output, return_sequences, backend):
    """The STM's outputs, per step and per sequence: a one-unit STM whose
    state is +-1 at every step (tanh(30) rounds to 1 in both dtypes, with
    no recurrence) and whose readout makes the logits +-1000 and 0; the
    targets are the classes the logits put least weight on, as above."""
    model = STM(1, 1, 3, output=output, return_sequences=return_sequences, dtype=dtype,
                backend=backend)
    model.load_params({"input_weight": np.array([[30.0]], dtype),
                       "recurrent_weight": np.zeros((1, 1), dtype), "bias": np.zeros(1, dtype),
                       "readout.weight": np.array([[1000.0, -1000.0, 0.0]], dtype),
                       "readout.bias": np.zeros(3, dtype)})
    n_steps = 4
    X = np.repeat(np.array([1.0, -1.0], dtype)[:, None, None], n_steps, axis=1)
    rows = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype)
    Y = np.repeat(rows[:, None], n_steps, axis=1) if return_sequences else rows
    states = X[..., 0] if return_sequences else X[:, -1, 0]  # +-1: the readout's input
    loss = model.loss(X, Y)
    assert np.isfinite(loss)
    # -log softmax = 2000; softplus(1000) twice and log 2 (every step alike)
    assert loss == pytest.approx(2000.0 + (np.log(2) if output == "sigmoid" else 0.0), rel=1e-6)
    grads = model.gradients(X, Y)
    assert all(np.isfinite(g).all() for g in grads.values())
    p = model.predict(X)
    assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    # d loss / d readout.weight = mean over rows (steps too) of h (p - y)
    np.testing.assert_allclose(grads["readout.weight"][0],
                               np.mean(states[..., None] * (p - Y), axis=tuple(
                                   range(Y.ndim - 1))), atol=1e-6)
    # The state saturates: tanh' is 0, nothing reaches the recurrent layer.
    assert not grads["input_weight"].any() and not grads["bias"].any()
    log_p = model.predict_log_proba(X)
    assert np.isfinite(log_p).all()
    assert log_p.min() == pytest.approx(-2000.0 if output == "softmax" else -1000.0, rel=1e-6)
    history = model.fit(X, Y, epochs=2, lr=1e-3)
    assert np.isfinite(history).all()


# -- predict, predict_log_proba, fast paths ------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_gives_probabilities_and_their_logs(rng, dtype, backend):
    X = rng.standard_normal((25, 4)).astype(dtype)
    softmax = LGM([4, 6, 5], output="softmax", dtype=dtype, seed=7, backend=backend)
    p = softmax.predict(X)
    assert p.dtype == dtype and p.shape == (25, 5)
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=TOLERANCE[dtype] * 10)
    np.testing.assert_allclose(np.exp(softmax.predict_log_proba(X)), p,
                               rtol=TOLERANCE[dtype] * 10)
    sigmoid = LGM([4, 6, 5], output="sigmoid", dtype=dtype, seed=7, backend=backend)
    q = sigmoid.predict(X)
    assert ((q > 0) & (q < 1)).all()
    logits = lgm_logits({k: v.astype(np.float64) for k, v in sigmoid.params.items()},
                        X.astype(np.float64))
    np.testing.assert_allclose(q, 1 / (1 + np.exp(-logits)), atol=TOLERANCE[dtype] * 10)
    np.testing.assert_allclose(sigmoid.predict_log_proba(X), log_expit(logits),
                               rtol=TOLERANCE[dtype] * 10, atol=TOLERANCE[dtype] * 10)


@pytest.mark.parametrize("output", ["tanh", "linear"])
def test_predict_log_proba_needs_a_probability_output(output):
    for model in (LGM([2, 3], output=output), STM(2, 3, 3, output=output)):
        with pytest.raises(ValueError, match="predict_log_proba.*softmax.*sigmoid"):
            model.predict_log_proba(np.zeros((1, 2) if isinstance(model, LGM) else (1, 1, 2)))


@pytest.mark.parametrize("output", PROBABILITY_OUTPUTS)
def test_fast_and_checked_paths_give_the_same_bits(rng, dtype, output):
    X = rng.standard_normal((6, 4)).astype(dtype)
    lgm = LGM([4, 5, 3], output=output, dtype=dtype, seed=8)
    fast = lgm.predict(X)                 # predict_ready
    checked = lgm.predict(X.tolist())     # a list takes the checked path
    np.testing.assert_array_equal(fast, checked, strict=True)
    stm = STM(4, 5, 3, output=output, dtype=dtype, seed=8)
    sequences = rng.standard_normal((6, 3, 4)).astype(dtype)
    whole = stm.predict(sequences)
    np.testing.assert_array_equal(whole, stm.predict(sequences.tolist()), strict=True)
    steps = [stm.step(sequences[:, t]) for t in range(3)]   # step_ready
    np.testing.assert_array_equal(np.stack(steps, axis=1), whole, strict=True)
    stm.reset_state()
    np.testing.assert_array_equal(stm.step(sequences[:, 0].tolist()), steps[0], strict=True)


@pytest.mark.parametrize("output", PROBABILITY_OUTPUTS)
def test_same_bits_for_any_thread_count(rng, threads, output):
    X = rng.standard_normal((3000, 20))
    Y = class_targets(rng, (3000,), 12, output)
    weights = rng.uniform(0, 2, 3000)
    sequences = rng.standard_normal((300, 12, 6))
    lengths = rng.integers(1, 13, 300)
    targets = class_targets(rng, (300, 12), 12, output)
    results = []
    for n_threads in (1, 2, 3):
        with threads(n_threads):
            lgm = LGM([20, 64, 12], output=output, seed=0)
            history = lgm.fit(X, Y, epochs=2, lr=0.05, batch_size=1000, optimizer="adam",
                              sample_weight=weights, seed=1)
            stm = STM(6, 32, 12, output=output, seed=0)
            stm_history = stm.fit(sequences, targets, lengths=lengths, epochs=2, lr=0.05,
                                  batch_size=150, sample_weight=weights[:300], seed=1)
            results.append([history, lgm.predict(X), lgm.loss(X, Y), stm_history,
                            stm.predict(sequences, lengths=lengths),
                            *lgm.gradients(X, Y, sample_weight=weights).values(),
                            *stm.gradients(sequences, targets, lengths=lengths).values()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


# -- training -------------------------------------------------------------------------

def blobs(rng, n, n_classes=3, n_features=4):
    centres = rng.standard_normal((n_classes, n_features)) * 2.5
    labels = rng.integers(0, n_classes, n)
    return centres[labels] + rng.standard_normal((n, n_features)), labels


def test_softmax_learns_a_toy_classification(rng, dtype):
    X, labels = blobs(rng, 300)
    X = X.astype(dtype)
    Y = np.eye(3)[labels]
    histories, models = [], []
    for backend in BACKENDS:
        model = LGM([4, 16, 3], output="softmax", dtype=dtype, seed=0, backend=backend)
        histories.append(model.fit(X, Y, epochs=60, lr=0.01, batch_size=32, optimizer="adam",
                                   seed=3))
        models.append(model)
    compiled, oracle = histories
    assert compiled[-1] < 0.25 * compiled[0]
    accuracy = (models[0].predict(X).argmax(axis=1) == labels).mean()
    assert accuracy > 0.9
    # the reference backend trains the same way
    np.testing.assert_allclose(compiled, oracle, rtol=1e-3 if dtype == np.float32 else 1e-9)
    assert (models[1].predict(X).argmax(axis=1) == labels).mean() == pytest.approx(accuracy,
                                                                                   abs=0.02)


def test_sigmoid_learns_multi_label_targets(rng):
    X, labels = blobs(rng, 300, n_classes=4)
    Y = np.stack([labels % 2, labels // 2], axis=1).astype(float)  # two binary labels
    model = LGM([4, 16, 2], output="sigmoid", seed=0)
    history = model.fit(X, Y, epochs=60, lr=0.01, batch_size=32, optimizer="adam")
    assert history[-1] < 0.25 * history[0]
    assert ((model.predict(X) > 0.5) == Y).mean() > 0.9


def test_stm_softmax_learns_to_classify_sequences(rng):
    # the class of a sequence: which of three input channels is on most
    labels = rng.integers(0, 3, 120)
    X = rng.uniform(0, 0.3, (120, 5, 3))
    X[np.arange(120), :, labels] += 1
    model = STM(3, 8, 3, output="softmax", return_sequences=False, seed=0)
    history = model.fit(X, np.eye(3)[labels], epochs=40, lr=0.02, batch_size=20,
                        optimizer="adam")
    assert history[-1] < 0.25 * history[0]
    assert (model.predict(X).argmax(axis=1) == labels).mean() > 0.9


@pytest.mark.parametrize("output", PROBABILITY_OUTPUTS)
def test_no_target_range_warning(rng, output):
    X = rng.standard_normal((20, 3))
    Y = class_targets(rng, (20,), 3, output)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LGM([3, 3], output=output).fit(X, Y, epochs=2, lr=0.1)
        LGM([3, 3], output=output).partial_fit(X, Y, lr=0.1)


def test_softmax_needs_two_classes():
    with pytest.raises(ValueError, match="softmax.*n_out >= 2"):
        LGM([3, 1], output="softmax")
    with pytest.raises(ValueError, match="softmax.*n_out >= 2"):
        STM(3, 4, 1, output="softmax")


# -- persistence ----------------------------------------------------------------------

@pytest.mark.parametrize("output", PROBABILITY_OUTPUTS)
def test_save_load_and_pickle_keep_the_output(rng, tmp_path, output):
    X = rng.standard_normal((10, 3))
    sequences = rng.standard_normal((10, 4, 3))
    for model, data in ((LGM([3, 4, 3], output=output, seed=0), X),
                        (STM(3, 4, 3, output=output, seed=0), sequences)):
        model.fit(data, class_targets(rng, data.shape[:-1], 3, output), epochs=2, lr=0.1)
        path = tmp_path / f"{model.kind}.npz"
        model.save(path)
        for copy in (lgmstm.load(path), pickle.loads(pickle.dumps(model))):
            assert copy.output == output
            np.testing.assert_array_equal(copy.predict(data), model.predict(data), strict=True)
            np.testing.assert_array_equal(copy.predict_log_proba(data),
                                          model.predict_log_proba(data), strict=True)


@pytest.mark.parametrize("output", PROBABILITY_OUTPUTS)
def test_the_panel_layout_trains_as_the_reference(rng, dtype, output):
    # Small networks train unweighted cross-entropies in the panel layout;
    # unit sample weights take the row-major layout: both as the reference.
    from lgmstm import _lgm, _stm

    sizes = [5, 8, 4]
    assert _lgm._training_layout(16, np.array(sizes, np.intp), dtype.itemsize) is not None
    X = rng.standard_normal((40, 5)).astype(dtype)
    Y = class_targets(rng, (40,), 4, output, probabilities=True)
    runs = {}
    for label, backend, weights in (("panel", "cython", None), ("rows", "cython", np.ones(40)),
                                    ("reference", "numpy", None)):
        model = LGM(sizes, output=output, dtype=dtype, seed=0, backend=backend)
        runs[label] = model.fit(X, Y, epochs=5, lr=0.05, batch_size=16, optimizer="adam",
                                seed=2, sample_weight=weights), model.params
    stm_sizes = np.array([3, 6, 4], np.intp)
    assert _stm._training_layout(8, 5, stm_sizes, dtype.itemsize, True) is not None
    sequences = rng.standard_normal((20, 5, 3)).astype(dtype)
    targets = class_targets(rng, (20, 5), 4, output)
    for label, backend, weights in (("stm-panel", "cython", None),
                                    ("stm-rows", "cython", np.ones(20)),
                                    ("stm-reference", "numpy", None)):
        model = STM(3, 6, 4, output=output, dtype=dtype, seed=0, backend=backend)
        runs[label] = model.fit(sequences, targets, epochs=5, lr=0.05, batch_size=8,
                                optimizer="adam", seed=2, sample_weight=weights), model.params
    for prefix in ("", "stm-"):
        expected, expected_params = runs[prefix + "reference"]
        for label in ("panel", "rows"):
            history, params = runs[prefix + label]
            np.testing.assert_allclose(history, expected, rtol=TOLERANCE[dtype] * 10,
                                       err_msg=prefix + label)
            assert_grads_close(params, expected_params, dtype, scale=10)
