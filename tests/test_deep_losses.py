"""The deep STM's losses and training control (issues 14 and 15): softmax and
sigmoid outputs, sample_weight, validation and early stopping, for stacked,
bidirectional and readout-layer STMs.

Oracles: the NumPy backend (lgmstm.reference's deep_forward/deep_backward
with reference.sequence_loss) for the compiled program, finite differences
for the gradients, the data itself for the weights (a weight of 2 is the
sequence twice), a fit of the best epoch's length for early stopping, and
the single-layer STM for the error messages.
"""
import numpy as np
import pytest

from finite_differences import numerical_gradient
from lgmstm import STM, reference

N_SAMPLES, N_STEPS, N_IN, N_OUT = 6, 5, 3, 3
LENGTHS = np.array([5, 0, 3, 5, 1, 4], np.intp)  # full, empty and partial
ARCHITECTURES = {  # name: (n_hidden, keywords)
    "stacked": ([4, 3], {}),
    "bidirectional-readout": (4, {"bidirectional": True, "readout": [5]}),
    "all": ([3, 4], {"bidirectional": True, "readout": [4, 3]}),
    "readout": ([4], {"readout": [6]}),
}
OUTPUTS = ["softmax", "sigmoid"]
BACKENDS = ["cython", "numpy"]


def tolerance(dtype, trained=False):
    """Compiled against NumPy: summation orders differ. Training (adam
    divides each step by the gradient's size, lr 0.1) lets float32's
    differences grow to a small share of a step: up to 2.4e-4 with numpy
    1.23 and scipy 1.10 (CI's oldest-dependencies job), 5e-5 with numpy 2."""
    if np.dtype(dtype) == np.float32:
        return {"rtol": 1e-3, "atol": 5e-4} if trained else {"rtol": 1e-5, "atol": 1e-5}
    return {"rtol": 1e-10, "atol": 1e-12} if trained else {"rtol": 1e-11, "atol": 1e-12}


def make(name, output, dtype=np.float64, backend="cython", **keywords):
    n_hidden, extra = ARCHITECTURES[name]
    return STM(N_IN, n_hidden, N_OUT, output=output, dtype=dtype, seed=7, backend=backend,
               **{**extra, **keywords})


def targets(rng, shape, output):
    if output == "softmax":
        return np.eye(N_OUT)[rng.integers(0, N_OUT, shape)]
    if output == "sigmoid":
        return rng.uniform(0, 1, shape + (N_OUT,))
    return rng.uniform(-0.8, 0.8, shape + (N_OUT,))


def data(output, return_sequences=True, dtype=np.float64, seed=0, n_samples=N_SAMPLES):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, N_STEPS, N_IN)).astype(dtype)
    Y = targets(rng, (n_samples, N_STEPS) if return_sequences else (n_samples,), output)
    return X, Y


def assert_close(actual, expected, dtype, err_msg="", trained=False):
    np.testing.assert_allclose(actual, expected, err_msg=err_msg, **tolerance(dtype, trained))


def assert_dicts_close(actual, expected, dtype, trained=False):
    assert list(actual) == list(expected)
    for name in expected:
        assert actual[name].dtype == dtype, name
        assert_close(actual[name], expected[name], dtype, name, trained)


# -- softmax and sigmoid outputs ------------------------------------------------------

@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_compiled_follows_the_reference(name, output, return_sequences, dtype):
    """predict (probabilities, 0 at padded steps), predict_log_proba, loss,
    gradients and a few shuffled mini-batch epochs: the compiled program as
    the NumPy composition, with lengths 0, partial and full."""
    X, Y = data(output, return_sequences, dtype)
    models = {backend: make(name, output, dtype, backend, return_sequences=return_sequences)
              for backend in BACKENDS}
    compiled, numpy_model = models["cython"], models["numpy"]
    proba = compiled.predict(X, lengths=LENGTHS)
    assert proba.dtype == dtype
    assert_close(proba, numpy_model.predict(X, lengths=LENGTHS), dtype)
    log_proba = compiled.predict_log_proba(X, lengths=LENGTHS)
    assert np.isfinite(log_proba).all()
    valid = (np.arange(N_STEPS) < LENGTHS[:, None]) if return_sequences else slice(None)
    assert_close(np.exp(log_proba[valid]), proba[valid], dtype)
    if return_sequences:
        assert not proba[~valid].any() and not log_proba[~valid].any()
    if output == "softmax":
        assert_close(proba[valid].sum(axis=-1), np.ones(proba[valid].shape[:-1]), dtype)
    assert compiled.loss(X, Y, lengths=LENGTHS) == pytest.approx(
        numpy_model.loss(X, Y, lengths=LENGTHS), **{"rel": tolerance(dtype)["rtol"]})
    assert_dicts_close(compiled.gradients(X, Y, lengths=LENGTHS),
                       numpy_model.gradients(X, Y, lengths=LENGTHS), dtype)
    histories = [model.fit(X, Y, lengths=LENGTHS, epochs=3, lr=0.1, batch_size=4,
                           optimizer="adam", seed=3) for model in (compiled, numpy_model)]
    assert_close(histories[0], histories[1], dtype, trained=True)
    assert_dicts_close(compiled.params, numpy_model.params, dtype, trained=True)


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("output", OUTPUTS)
def test_the_reference_composes_the_output_function(output, return_sequences):
    """The NumPy backend's predict is the output function of deep_forward's
    logits, and its loss the cross-entropy of reference.output_loss on the
    valid rows: an oracle independent of the deep STM's code."""
    model = make("all", output, backend="numpy", return_sequences=return_sequences)
    X, Y = data(output, return_sequences)
    params = list(model.params.values())
    layers = [[tuple(params[i:i + 3]) for i in (6 * k, 6 * k + 3)] for k in range(2)]
    dense = [tuple(params[j:j + 2]) for j in range(12, len(params), 2)]
    logits, _ = reference.deep_forward(X, layers, dense, None, LENGTHS, False,
                                       return_sequences)
    valid = (np.arange(N_STEPS) < LENGTHS[:, None]) if return_sequences else \
        np.ones(N_SAMPLES, bool)
    expected = reference.output_function(output, logits)
    expected[~valid] = 0
    np.testing.assert_allclose(model.predict(X, lengths=LENGTHS), expected, rtol=1e-14)
    losses, _ = reference.row_losses(output, logits[valid], Y[valid])
    assert model.loss(X, Y, lengths=LENGTHS) == pytest.approx(losses.mean(), rel=1e-13)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("output", OUTPUTS + ["tanh"])
@pytest.mark.parametrize("name", ["all", "stacked"])
def test_compiled_gradients_match_finite_differences(name, output, weighted):
    model = make(name, output, return_sequences=name == "all")
    X, Y = data(output, name == "all")
    rng = np.random.default_rng(4)
    weights = rng.uniform(0.2, 3, (N_SAMPLES, N_STEPS) if name == "all" else N_SAMPLES) \
        if weighted else None
    grads = model.gradients(X, Y, lengths=LENGTHS, sample_weight=weights)
    saved = model.params

    def loss(params):
        model.load_params(params)
        return model.loss(X, Y, lengths=LENGTHS, sample_weight=weights)

    for key in ("layer0.input_weight", "layer1.recurrent_weight", "reverse0.bias",
                "readout0.weight", "readout.weight", "readout.bias"):
        if key in saved:
            np.testing.assert_allclose(grads[key], numerical_gradient(loss, saved, key),
                                       rtol=1e-5, atol=1e-9, err_msg=key)
    model.load_params(saved)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_panel_layout_trains_the_cross_entropies_as_the_reference(output, return_sequences,
                                                                  dtype):
    """Small one-direction networks train full-length batches in the panel
    layout (panel_output_loss): gradients and training as the NumPy backend."""
    X, Y = data(output, return_sequences, dtype)
    models = [make("stacked", output, dtype, backend, return_sequences=return_sequences)
              for backend in BACKENDS]
    assert models[0]._network.program.training_layout(N_SAMPLES, N_STEPS) is not None
    assert_dicts_close(models[0].gradients(X, Y), models[1].gradients(X, Y), dtype)
    histories = [model.fit(X, Y, epochs=3, lr=0.1, batch_size=N_SAMPLES, shuffle=False)
                 for model in models]
    assert_close(histories[0], histories[1], dtype, trained=True)
    assert_dicts_close(models[0].params, models[1].params, dtype, trained=True)


def test_extreme_logits_give_finite_losses_and_gradients():
    model = make("all", "softmax", return_sequences=False)
    params = model.params
    params["readout.weight"] = params["readout.weight"] * 1e4
    model.load_params(params)
    X, Y = data("softmax", False)
    assert np.abs(model.predict_log_proba(X, lengths=LENGTHS)).max() > 100
    assert np.isfinite(model.loss(X, Y, lengths=LENGTHS))
    for grad in model.gradients(X, Y, lengths=LENGTHS).values():
        assert np.isfinite(grad).all()


# -- sample_weight -----------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("output", OUTPUTS + ["linear"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_a_weight_of_2_is_the_sequence_twice(output, return_sequences, backend, dtype):
    X, Y = data(output, return_sequences, dtype)
    weights = np.array([2, 1, 1, 0, 3, 1])
    rows = np.repeat(np.arange(N_SAMPLES), weights)
    X_rep, Y_rep, lengths_rep = X[rows], Y[rows], LENGTHS[rows]
    model = make("all", output, dtype, backend, return_sequences=return_sequences)
    rtol = 2e-4 if np.dtype(dtype) == np.float32 else 1e-10
    assert model.loss(X, Y, lengths=LENGTHS, sample_weight=weights) == pytest.approx(
        model.loss(X_rep, Y_rep, lengths=lengths_rep), rel=rtol)
    expected = model.gradients(X_rep, Y_rep, lengths=lengths_rep)
    for key, grad in model.gradients(X, Y, lengths=LENGTHS, sample_weight=weights).items():
        np.testing.assert_allclose(grad, expected[key], rtol=rtol * 10, atol=rtol, err_msg=key)
    # full-batch training: the same updates
    weighted = make("all", output, dtype, backend, return_sequences=return_sequences)
    duplicated = make("all", output, dtype, backend, return_sequences=return_sequences)
    history = weighted.fit(X, Y, lengths=LENGTHS, epochs=4, lr=0.1, optimizer="adam",
                           sample_weight=weights)
    np.testing.assert_allclose(history, duplicated.fit(X_rep, Y_rep, lengths=lengths_rep,
                                                       epochs=4, lr=0.1, optimizer="adam"),
                               rtol=rtol * 10)
    for key, value in weighted.params.items():
        np.testing.assert_allclose(value, duplicated.params[key], rtol=rtol * 10, atol=rtol,
                                   err_msg=key)


@pytest.mark.parametrize("output", OUTPUTS + ["tanh"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_weighted_mini_batches_compiled_as_the_reference(name, output, dtype):
    """Shuffled mini-batches with per-step weights (gathered with each
    batch), and per-sequence ones without return_sequences."""
    rng = np.random.default_rng(9)
    for return_sequences in (True, False):
        X, Y = data(output, return_sequences, dtype, seed=5)
        weights = rng.uniform(0.5, 2.5, (N_SAMPLES, N_STEPS) if return_sequences
                              else N_SAMPLES)
        models = [make(name, output, dtype, backend, return_sequences=return_sequences)
                  for backend in BACKENDS]
        assert models[0].loss(X, Y, lengths=LENGTHS, sample_weight=weights) == pytest.approx(
            models[1].loss(X, Y, lengths=LENGTHS, sample_weight=weights),
            rel=tolerance(dtype)["rtol"])
        histories = [model.fit(X, Y, lengths=LENGTHS, epochs=3, lr=0.1, batch_size=4,
                               sample_weight=weights, seed=2, optimizer="adam")
                     for model in models]
        assert_close(histories[0], histories[1], dtype, trained=True)
        assert_dicts_close(models[0].params, models[1].params, dtype, trained=True)


def test_step_weights_equal_along_a_sequence_are_its_weight():
    X, Y = data("softmax")
    model = make("all", "softmax")
    per_sequence = np.random.default_rng(1).uniform(0.5, 2, N_SAMPLES)
    broadcast = np.repeat(per_sequence[:, None], N_STEPS, axis=1)
    assert model.loss(X, Y, lengths=LENGTHS, sample_weight=broadcast) == \
        model.loss(X, Y, lengths=LENGTHS, sample_weight=per_sequence)
    expected = model.gradients(X, Y, lengths=LENGTHS, sample_weight=per_sequence)
    for key, grad in model.gradients(X, Y, lengths=LENGTHS, sample_weight=broadcast).items():
        np.testing.assert_array_equal(grad, expected[key])


def test_partial_fit_takes_weights_as_fit(dtype):
    X, Y = data("sigmoid", dtype=dtype)
    weights = np.array([2.0, 1, 0.5, 1, 3, 1])
    fitted, partial = make("all", "sigmoid", dtype), make("all", "sigmoid", dtype)
    fitted.fit(X, Y, lengths=LENGTHS, epochs=1, lr=0.1, shuffle=False, sample_weight=weights)
    partial.partial_fit(X, Y, lengths=LENGTHS, lr=0.1, shuffle=False, sample_weight=weights)
    for key, value in fitted.params.items():
        np.testing.assert_array_equal(partial.params[key], value)
    assert not np.array_equal(make("all", "sigmoid", dtype).params["readout.weight"],
                              fitted.params["readout.weight"])


# -- validation and early stopping --------------------------------------------------

def validation_problem(output, dtype=np.float64):
    X, Y = data(output, True, dtype, seed=1, n_samples=16)
    lengths = np.random.default_rng(2).integers(0, N_STEPS + 1, 16)
    X_val, Y_val = data(output, True, dtype, seed=3)
    return X, Y, lengths, (X_val, Y_val, LENGTHS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("output", OUTPUTS + ["linear"])
def test_validation_loss_per_epoch_is_the_loss_after_that_epoch(output, backend, dtype):
    X, Y, lengths, validation_data = validation_problem(output, dtype)
    model = make("all", output, dtype, backend)
    history = model.fit(X, Y, lengths=lengths, epochs=3, lr=0.05, batch_size=5, seed=1,
                        validation_data=validation_data)
    assert model.validation_history_.shape == history.shape
    assert model.best_epoch_ == int(np.argmin(model.validation_history_))
    for epoch in range(3):
        again = make("all", output, dtype, backend)
        again.fit(X, Y, lengths=lengths, epochs=epoch + 1, lr=0.05, batch_size=5, seed=1)
        X_val, Y_val, lengths_val = validation_data
        assert model.validation_history_[epoch] == pytest.approx(
            again.loss(X_val, Y_val, lengths=lengths_val),
            rel=2e-5 if np.dtype(dtype) == np.float32 else 1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("output", OUTPUTS + ["tanh"])
def test_early_stopping_restores_the_best_epoch(output, backend, dtype):
    X, Y, lengths, validation_data = validation_problem(output, dtype)
    arguments = dict(lengths=lengths, lr=0.05 if output == "tanh" else 0.3, batch_size=4,
                     optimizer="adam", shuffle=False)
    model = make("all", output, dtype, backend)
    history = model.fit(X, Y, epochs=300, validation_data=validation_data,
                        early_stopping=True, patience=3, tol=0.0, **arguments)
    best = model.best_epoch_
    assert 0 < best and len(history) == best + 4 < 300
    assert best == int(np.argmin(model.validation_history_))
    X_val, Y_val, lengths_val = validation_data
    assert model.loss(X_val, Y_val, lengths=lengths_val) == pytest.approx(
        model.validation_history_.min(), rel=2e-5 if np.dtype(dtype) == np.float32 else 1e-12)
    shorter = make("all", output, dtype, backend)
    np.testing.assert_array_equal(shorter.fit(X, Y, epochs=best + 1, **arguments),
                                  history[:best + 1])
    for key, value in shorter.params.items():
        np.testing.assert_array_equal(model.params[key], value, err_msg=key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_validation_loss_ignores_sample_weight(backend):
    X, Y, lengths, validation_data = validation_problem("sigmoid")
    weights = np.random.default_rng(6).uniform(0, 3, len(X))
    model = make("all", "sigmoid", backend=backend)
    model.fit(X, Y, lengths=lengths, epochs=2, lr=0.1, sample_weight=weights,
              validation_data=validation_data)
    X_val, Y_val, lengths_val = validation_data
    assert model.validation_history_[-1] == pytest.approx(
        model.loss(X_val, Y_val, lengths=lengths_val), rel=1e-12)


@pytest.mark.parametrize("output", OUTPUTS + ["linear"])
def test_validation_compiled_as_the_reference(output, dtype):
    """validation_fraction holds out sequences and their weights (the
    validation loss is unweighted); shuffled weighted mini-batches."""
    X, Y, lengths, _ = validation_problem(output, dtype)
    weights = np.random.default_rng(3).uniform(0.5, 2, (len(X), N_STEPS))
    results = []
    for backend in BACKENDS:
        model = make("bidirectional-readout", output, dtype, backend)
        history = model.fit(X, Y, lengths=lengths, epochs=6, lr=0.2, batch_size=5, seed=4,
                            sample_weight=weights, validation_fraction=0.25,
                            early_stopping=True, patience=2)
        results.append((history, model.validation_history_, model.best_epoch_,
                        model.params))
    (history, validation, best, params), (ref_history, ref_validation, ref_best,
                                          ref_params) = results
    assert_close(history, ref_history, dtype, trained=True)
    assert_close(validation, ref_validation, dtype, trained=True)
    assert best == ref_best
    assert_dicts_close(params, ref_params, dtype, trained=True)


def test_a_stateful_stacked_stm_validates_from_zero_states(dtype):
    """Streams train on from their held states; the validation set starts
    from zeros (as for one layer), compiled as in NumPy."""
    X, Y = data("softmax", dtype=dtype)
    X_val, Y_val = data("softmax", dtype=dtype, seed=8)
    results = []
    for backend in BACKENDS:
        model = make("readout", "softmax", dtype, backend, stateful=True)
        history = model.fit(X, Y, epochs=4, lr=0.1, shuffle=False,
                            validation_data=(X_val, Y_val))
        results.append((history, model.validation_history_, model.state))
        fresh = make("readout", "softmax", dtype, backend)
        fresh.load_params(model.params)
        assert model.validation_history_[-1] == pytest.approx(
            fresh.loss(X_val, Y_val), rel=2e-5 if np.dtype(dtype) == np.float32 else 1e-12)
    (history, validation, state), (ref_history, ref_validation, ref_state) = results
    assert_close(history, ref_history, dtype, trained=True)
    assert_close(validation, ref_validation, dtype, trained=True)
    for got, want in zip(state, ref_state):
        assert_close(got, want, dtype, trained=True)


@pytest.mark.parametrize("output", ["softmax", "linear"])
def test_same_bits_for_1_2_3_threads(output, dtype, threads):
    """Large enough that the passes fork: weighted, validated training."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((200, 12, 16)).astype(dtype)
    Y = targets(rng, (200, 12), output)
    lengths = rng.integers(0, 13, 200)
    weights = rng.uniform(0.5, 2, (200, 12))
    results = []
    for n in (1, 2, 3):
        with threads(n):
            model = STM(16, [48, 40], 3, bidirectional=True, readout=[24], output=output,
                        dtype=dtype, seed=2)
            history = model.fit(X, Y, epochs=2, lr=0.05, batch_size=64, lengths=lengths,
                                sample_weight=weights, seed=2, validation_fraction=0.2)
            results.append([history, model.validation_history_,
                            model.predict(X, lengths=lengths),
                            *model.gradients(X, Y, lengths=lengths,
                                             sample_weight=weights).values(),
                            *model.params.values()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


# -- bad input: the single-layer STM's errors --------------------------------------------

def error_of(call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    return info.type, str(info.value)


BAD_WEIGHTS = {
    "negative": np.array([1.0, 1, -1, 1, 1, 1]),
    "nan": np.array([1.0, np.nan, 1, 1, 1, 1]),
    "infinite": np.array([1.0, 1, 1, np.inf, 1, 1]),
    "all zero": np.zeros(N_SAMPLES),
    "too short": np.ones(N_SAMPLES - 1),
    "wrong steps": np.ones((N_SAMPLES, N_STEPS + 1)),
    "strings": np.array(["a"] * N_SAMPLES),
    "zero on valid steps": np.where(np.arange(N_STEPS) < LENGTHS[:, None], 0.0, 1.0),
}


@pytest.mark.parametrize("method", ["loss", "gradients", "fit", "partial_fit"])
@pytest.mark.parametrize("case", BAD_WEIGHTS)
def test_bad_sample_weight_gets_the_single_layer_error(case, method):
    X, Y = data("softmax")
    calls = {
        "loss": lambda m: m.loss(X, Y, lengths=LENGTHS, sample_weight=BAD_WEIGHTS[case]),
        "gradients": lambda m: m.gradients(X, Y, lengths=LENGTHS,
                                           sample_weight=BAD_WEIGHTS[case]),
        "fit": lambda m: m.fit(X, Y, lengths=LENGTHS, epochs=1, lr=0.1,
                               sample_weight=BAD_WEIGHTS[case]),
        "partial_fit": lambda m: m.partial_fit(X, Y, lengths=LENGTHS, lr=0.1,
                                               sample_weight=BAD_WEIGHTS[case]),
    }
    single = STM(N_IN, 4, N_OUT, output="softmax", seed=7)
    deep = make("all", "softmax")
    before = deep.params
    expected = error_of(lambda: calls[method](single))
    assert error_of(lambda: calls[method](deep)) == expected
    assert "sample_weight" in expected[1]
    for key, value in deep.params.items():
        np.testing.assert_array_equal(value, before[key])


BAD_CONTROL = {
    "targets off the simplex": lambda X, Y: dict(Y=Y * 0.5),
    "validation of the wrong width": lambda X, Y: dict(
        validation_data=(X[:2, :, :2], Y[:2])),
    "validation targets misshapen": lambda X, Y: dict(validation_data=(X[:2], Y[:3])),
    "validation_fraction 1": lambda X, Y: dict(validation_fraction=1.0),
    "early stopping without validation": lambda X, Y: dict(early_stopping=True),
    "both validations": lambda X, Y: dict(validation_data=(X, Y), validation_fraction=0.5),
}


@pytest.mark.parametrize("case", BAD_CONTROL)
def test_bad_targets_and_validation_get_the_single_layer_error(case):
    X, Y = data("softmax")
    arguments = {"X": X, "Y": Y, "epochs": 2, "lr": 0.1, **BAD_CONTROL[case](X, Y)}
    single = STM(N_IN, 4, N_OUT, output="softmax", seed=7)
    expected = error_of(lambda: single.fit(**arguments))
    assert error_of(lambda: make("all", "softmax").fit(**arguments)) == expected


def test_what_needs_a_future_is_still_refused():
    with pytest.raises(ValueError, match="bidirectional=True"):
        make("all", "softmax", stateful=True)
