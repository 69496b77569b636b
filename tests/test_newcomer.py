"""What a newcomer tripped on (issue 17, items 6-10 and 12): the architecture
cannot be put into a false state, targets a tanh output cannot reach are
warned about, STM shape messages point at the fix, a trained STM goes on to
a live stream, divergence warnings read well and point at the user's call,
and help() shows what is converted and the types."""
import inspect
import pickle
import re
import threading
import warnings

import numpy as np
import pytest

import lgmstm
from lgmstm._training import TargetRangeWarning

BACKENDS = ["cython", "numpy"]


def caught(call):
    """(result, the warnings call() issued), every warning recorded."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = call()
    return result, record


def only(record, category):
    found = [w for w in record if issubclass(w.category, category)]
    others = [w for w in record if not issubclass(w.category, category)]
    assert not others, [str(w.message) for w in others]
    return found


# -- item 6: the architecture is read-only, stateful a checked setting ------------------

LGM_FIXED = {"layer_sizes": (3, 4, 1), "output": "linear", "dtype": np.float32,
             "backend": "numpy"}
STM_FIXED = {"n_in": 3, "n_hidden": 2, "n_out": 5, "output": "linear",
             "return_sequences": False, "dtype": np.float32, "backend": "numpy"}


@pytest.mark.parametrize("name, value", [*LGM_FIXED.items(), ("output", "bogus")])
def test_lgm_architecture_is_read_only(name, value):
    model = lgmstm.LGM([2, 3, 1], seed=0)
    X = np.random.default_rng(0).uniform(-1, 1, (5, 2))
    before, text = model.predict(X), repr(model)
    with pytest.raises(AttributeError, match=f"^LGM.{name} is read-only"):
        setattr(model, name, value)
    assert repr(model) == text
    np.testing.assert_array_equal(model.predict(X), before)


@pytest.mark.parametrize("name, value", STM_FIXED.items())
def test_stm_architecture_is_read_only(name, value):
    model = lgmstm.STM(2, 3, 1, seed=0)
    text = repr(model)
    with pytest.raises(AttributeError, match=f"^STM.{name} is read-only"):
        setattr(model, name, value)
    assert repr(model) == text


def test_read_only_message():
    with pytest.raises(AttributeError) as info:
        lgmstm.LGM([2, 3, 1]).output = "linear"
    assert str(info.value) == (
        "LGM.output is read-only: layer_sizes, output, dtype, backend are fixed when the "
        "model is made (they decide what it computes and what save writes); make a new "
        "LGM with output='linear' instead")
    with pytest.raises(AttributeError) as info:
        lgmstm.STM(2, 3, 1).dtype = np.float32
    assert str(info.value) == (
        "STM.dtype is read-only: n_in, n_hidden, n_out, output, return_sequences, dtype, "
        "backend are fixed when the model is made (they decide what it computes and what "
        "save writes); make a new STM with dtype=float32 instead")


def test_attributes_read_as_made():
    model = lgmstm.LGM([2, 3, 1], output="linear", dtype=np.float32, backend="numpy")
    assert (model.layer_sizes, model.output, model.dtype, model.backend) == (
        (2, 3, 1), "linear", np.dtype(np.float32), "numpy")
    stm = lgmstm.STM(2, 3, 4, output="linear", return_sequences=False, stateful=True)
    assert (stm.n_in, stm.n_hidden, stm.n_out, stm.output, stm.return_sequences,
            stm.stateful, stm.dtype, stm.backend) == (
        2, 3, 4, "linear", False, True, np.dtype(np.float64), "cython")


@pytest.mark.parametrize("value", ["yes", 1, None, 0.0])
def test_stateful_refuses_anything_but_a_bool(value):
    model = lgmstm.STM(2, 3, 1)
    with pytest.raises(TypeError, match="stateful must be True or False"):
        model.stateful = value
    assert model.stateful is False


@pytest.mark.parametrize("backend", BACKENDS)
def test_stateful_set_later_is_fully_applied(backend, tmp_path):
    X = np.random.default_rng(0).uniform(-1, 1, (2, 12, 2))
    model = lgmstm.STM(2, 5, 1, seed=0, backend=backend)
    whole = model.predict(X)
    model.stateful = np.bool_(True)
    assert model.stateful is True and "stateful=True" in repr(model)
    chunks = np.concatenate([model.predict(X[:, :5]), model.predict(X[:, 5:])], axis=1)
    np.testing.assert_allclose(chunks, whole, rtol=1e-12, atol=1e-14)
    for copy in (pickle.loads(pickle.dumps(model)), _saved_and_loaded(model, tmp_path)):
        assert copy.stateful is True
        np.testing.assert_array_equal(copy.state, model.state)
    model.stateful = False  # stops carrying; step still has its memory
    np.testing.assert_array_equal(model.predict(X[:, :5]), whole[:, :5])
    assert model.state is not None


def _saved_and_loaded(model, tmp_path):
    path = tmp_path / "model.npz"
    model.save(path)
    return lgmstm.load(path, backend=model.backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pickle_and_files_keep_the_architecture(backend, tmp_path):
    lgm = lgmstm.LGM([2, 3, 2], output="linear", dtype=np.float32, seed=0, backend=backend)
    stm = lgmstm.STM(2, 3, 2, output="linear", return_sequences=False, seed=0,
                     backend=backend)
    for model in (lgm, stm):
        for copy in (pickle.loads(pickle.dumps(model)), _saved_and_loaded(model, tmp_path)):
            assert repr(copy) == repr(model)
            for name, value in model.params.items():
                np.testing.assert_array_equal(copy.params[name], value)


def test_estimators_clone_and_get_params():
    sklearn_base = pytest.importorskip("sklearn.base")
    from lgmstm.sklearn import LGMClassifier, LGMRegressor

    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (30, 3))
    for estimator, y in ((LGMRegressor(hidden_layer_sizes=(4,), max_iter=3, output="tanh"),
                          X.sum(axis=1) * 10),
                         (LGMClassifier(hidden_layer_sizes=(4,), max_iter=3),
                          (X[:, 0] > 0).astype(int))):
        clone = sklearn_base.clone(estimator)
        assert clone.get_params() == estimator.get_params()
        with warnings.catch_warnings():
            warnings.simplefilter("error", TargetRangeWarning)  # standardised y, +-1
            if isinstance(estimator, LGMClassifier):
                clone.fit(X, y)
            else:
                clone.set_params(standardize_y=False, output="linear").fit(X, y)
        assert clone.lgm_.layer_sizes == (3, 4, 1)


# -- item 7: targets a tanh output cannot reach ------------------------------------

def _lgm_data(n=40, scale=1.0):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (n, 3))
    return X, scale * rng.uniform(-1, 1, (n, 1))


RANGE_MESSAGE = re.compile(
    r"^Y holds targets outside \[-1, 1\] \(from (\S+) to (\S+)\), which output='tanh' "
    r"cannot reach: for unbounded targets make the model with output='linear', or scale "
    r"Y into \[-1, 1\]$")


def _range_warning(record, Y):
    found = only(record, TargetRangeWarning)
    assert len(found) == 1, [str(w.message) for w in found]
    match = RANGE_MESSAGE.match(str(found[0].message))
    assert match, str(found[0].message)
    assert float(match.group(1)) == pytest.approx(np.min(Y), rel=1e-3)
    assert float(match.group(2)) == pytest.approx(np.max(Y), rel=1e-3)
    assert found[0].filename == __file__
    return found[0]


LGM_CALLS = {
    "fit": lambda m, X, Y: m.fit(X, Y, epochs=3, lr=0.01),
    "fit-short": lambda m, X, Y: m.fit(X, Y, epochs=1, lr=0.01),
    "fit-list": lambda m, X, Y: m.fit(X.tolist(), Y.tolist(), epochs=1, lr=0.01),
    "partial_fit-short": lambda m, X, Y: m.partial_fit(X, Y, lr=0.01),
    "partial_fit-seed": lambda m, X, Y: m.partial_fit(X, Y, lr=0.01, seed=1, batch_size=8),
    "partial_fit-float32-data": lambda m, X, Y: m.partial_fit(
        X.astype(np.float32), Y.astype(np.float32), lr=0.01),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", LGM_CALLS)
def test_lgm_warns_once_when_targets_are_out_of_reach(backend, call):
    X, Y = _lgm_data(scale=300.0)
    model = lgmstm.LGM([3, 4, 1], seed=0, backend=backend)
    _, record = caught(lambda: LGM_CALLS[call](model, X, Y))
    _range_warning(record, Y)
    assert np.isfinite(model.history_).all()  # trained all the same
    _, record = caught(lambda: LGM_CALLS[call](model, X, Y))  # and again on the next call
    _range_warning(record, Y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", LGM_CALLS)
def test_no_warning_within_reach_or_with_a_linear_output(backend, call):
    X, Y = _lgm_data()
    Y[0], Y[1] = 1.0, -1.0  # the bounds are within reach (a classifier's targets)
    for model in (lgmstm.LGM([3, 4, 1], seed=0, backend=backend),
                  lgmstm.LGM([3, 4, 1], output="linear", seed=0, backend=backend)):
        _, record = caught(lambda: LGM_CALLS[call](model, X, 300 * Y if model.output ==
                                                   "linear" else Y))
        assert record == [], [str(w.message) for w in record]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("stateful", [False, True])
@pytest.mark.parametrize("method", ["fit", "fit-short", "partial_fit"])
def test_stm_warns_once_when_targets_are_out_of_reach(backend, return_sequences, stateful,
                                                      method):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (6, 5, 2))
    Y = rng.uniform(-1, 1, (6, 5, 1) if return_sequences else (6, 1))
    Y.flat[3] = -1.5
    model = lgmstm.STM(2, 3, 1, return_sequences=return_sequences, stateful=stateful,
                       seed=0, backend=backend)
    call = {"fit": lambda: model.fit(X, Y, epochs=2, lr=0.01),
            "fit-short": lambda: model.fit(X, Y, epochs=1, lr=0.01),
            "partial_fit": lambda: model.partial_fit(X, Y, lr=0.01)}[method]
    _, record = caught(call)
    _range_warning(record, Y)
    Y.flat[3] = -1.0
    _, record = caught(call)
    assert record == []


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", LGM_CALLS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_targets_get_the_error_alone(backend, call, bad):
    """NaN or inf in Y: fit's ValueError, without a range warning first
    (whose 'from nan to nan' would only confuse)."""
    X, Y = _lgm_data()
    Y[2] = bad
    model = lgmstm.LGM([3, 4, 1], seed=0, backend=backend)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="must be finite"):
            LGM_CALLS[call](model, X, Y)
    assert only(record, TargetRangeWarning) == []


@pytest.mark.parametrize("method", ["partial_fit", "fit-short"])
def test_range_warning_once_when_the_model_is_busy(method):
    """A call that finds the model held by another thread's predict falls
    back to the checked path and waits: still one warning (the short path
    once warned before it found the model busy, then again)."""
    X, Y = _lgm_data(scale=300.0)
    model = lgmstm.LGM([3, 4, 1], seed=0)
    call = {"partial_fit": lambda: model.partial_fit(X, Y, lr=0.01),
            "fit-short": lambda: model.fit(X, Y, epochs=1, lr=0.01)}[method]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with model._lock.reading():   # as a predict in another thread
            worker = threading.Thread(target=call)
            worker.start()
            worker.join(0.3)          # it waits for the model
        worker.join()
    assert len(only(record, TargetRangeWarning)) == 1


def test_range_warning_is_a_user_warning():
    assert issubclass(TargetRangeWarning, UserWarning)


# -- item 8: STM shape messages --------------------------------------------------

SHAPE_CASES = [
    # (return_sequences, n_out, Y's shape, the message)
    (True, 1, (100,),
     "Y must be 2 or 3-dimensional, of shape (n_samples, n_steps, n_out) = (100, 30, 1) "
     "or (n_samples, n_steps) = (100, 30), got shape (100,). That is one target per "
     "sequence: make the STM with return_sequences=False (this one has "
     "return_sequences=True: a target at every step)"),
    (True, 1, (100, 1),
     "Y must have shape (n_samples, n_steps, n_out) = (100, 30, 1) or (n_samples, "
     "n_steps) = (100, 30), got (100, 1). That is one target per sequence: make the STM "
     "with return_sequences=False (this one has return_sequences=True: a target at every "
     "step)"),
    (True, 2, (100, 2),
     "Y must be 3-dimensional, of shape (n_samples, n_steps, n_out) = (100, 30, 2), got "
     "shape (100, 2). That is one target per sequence: make the STM with "
     "return_sequences=False (this one has return_sequences=True: a target at every "
     "step)"),
    (True, 1, (100, 29),
     "Y must have shape (n_samples, n_steps, n_out) = (100, 30, 1) or (n_samples, "
     "n_steps) = (100, 30), got (100, 29)"),
    (True, 2, (100, 30, 3),
     "Y must have shape (n_samples, n_steps, n_out) = (100, 30, 2), got (100, 30, 3)"),
    (False, 1, (100, 30),
     "Y must have shape (n_samples, n_out) = (100, 1) or (n_samples,) = (100,), got "
     "(100, 30). That is one target per step: make the STM with return_sequences=True "
     "(this one has return_sequences=False: one target per sequence)"),
    (False, 2, (100, 30, 2),
     "Y must be 2-dimensional, of shape (n_samples, n_out) = (100, 2), got shape "
     "(100, 30, 2). That is one target per step: make the STM with return_sequences=True "
     "(this one has return_sequences=False: one target per sequence)"),
    (False, 1, (99,),
     "Y must have shape (n_samples, n_out) = (100, 1) or (n_samples,) = (100,), got "
     "(99,)"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_out, shape, message", [
    (1, (10,), r"Y must have shape \(n_samples, n_out\) = \(50, 1\) or \(n_samples,\) = "
               r"\(50,\), got \(10,\)$"),
    (2, (50, 3), r"Y must have shape \(n_samples, n_out\) = \(50, 2\), got \(50, 3\)$"),
])
def test_lgm_target_shape_messages_name_the_shape_given(backend, n_out, shape, message):
    model = lgmstm.LGM([3, 4, n_out], backend=backend)
    with pytest.raises(ValueError, match=message):
        model.fit(np.zeros((50, 3)), np.zeros(shape), epochs=1, lr=0.1)


@pytest.mark.parametrize("where, message", [
    ("X", r"got X\[7, 2\] = nan$"), ("Y", r"got Y\[3, 0\] = inf$")])
def test_non_finite_data_is_named_with_its_place(where, message):
    X, Y = np.zeros((10, 3)), np.zeros((10, 1))
    if where == "X":
        X[7, 2] = np.nan
    else:
        Y[3, 0] = np.inf
    with pytest.raises(ValueError, match=r"X and Y must be finite \(no NaN or inf\) to fit, "
                       + message):
        lgmstm.LGM([3, 1]).fit(X, Y, epochs=1, lr=0.1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["fit", "partial_fit", "loss", "gradients"])
@pytest.mark.parametrize("return_sequences, n_out, shape, message", SHAPE_CASES)
def test_stm_target_shape_messages(backend, method, return_sequences, n_out, shape,
                                   message):
    model = lgmstm.STM(1, 4, n_out, return_sequences=return_sequences, backend=backend)
    X, Y = np.zeros((100, 30, 1)), np.zeros(shape)
    call = {"fit": lambda: model.fit(X, Y, epochs=1, lr=0.1),
            "partial_fit": lambda: model.partial_fit(X, Y, lr=0.1),
            "loss": lambda: model.loss(X, Y),
            "gradients": lambda: model.gradients(X, Y)}[method]
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value) == message


# -- item 9: from a trained model to a live stream ------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_load_stateful(backend, tmp_path):
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (8, 10, 2))
    model = lgmstm.STM(2, 4, 1, output="linear", seed=0, backend=backend)
    model.fit(X, X[..., :1].cumsum(axis=1) / 5, epochs=5, lr=0.01)
    path = tmp_path / "trained.npz"
    model.save(path)
    live = lgmstm.load(path, stateful=True, backend=backend)
    assert live.stateful is True and lgmstm.load(path).stateful is False
    stream = rng.uniform(-1, 1, (1, 30, 2))
    chunks = [live.predict(stream[:, t:t + 10]) for t in range(0, 30, 10)]
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), model.predict(stream),
                               rtol=1e-12, atol=1e-14)
    model.stateful = True
    live.save(path)
    assert lgmstm.load(path, stateful=False).stateful is False


def test_load_stateful_refuses_what_is_not_an_stm(tmp_path):
    path = tmp_path / "lgm.npz"
    lgmstm.LGM([2, 3, 1]).save(path)
    with pytest.raises(ValueError) as info:
        lgmstm.load(path, stateful=True)
    assert str(info.value) == f"{path} holds an LGM: stateful= applies to an STM only"
    with pytest.raises(TypeError, match="stateful must be True or False"):
        lgmstm.load(path, stateful="yes")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("short", [True, False])
def test_a_stateful_fit_keeps_each_sequence_until_reset(backend, short):
    rng = np.random.default_rng(0)
    X, Y = rng.uniform(-1, 1, (6, 5, 2)), rng.uniform(-0.5, 0.5, (6, 5, 1))
    model = lgmstm.STM(2, 3, 1, stateful=True, seed=0, backend=backend)
    if short:
        model.partial_fit(X, Y, lr=0.01)
    else:
        model.fit(X, Y, epochs=2, lr=0.01, lengths=[5] * 6)
    assert model.state.shape == (6, 3)  # kept for the next chunk's partial_fit
    model.partial_fit(X, Y, lr=0.01)  # the next chunk of the same six streams
    with pytest.raises(ValueError) as info:
        model.predict(X[:1])
    assert str(info.value) == (
        "this STM holds the working memory of 6 streams (a stateful fit leaves that of "
        "each training sequence), but X has 1 sequences: call reset_state() to start new "
        "streams")
    with pytest.raises(ValueError, match="reset_state()"):
        model.step(X[:1, 0])
    model.reset_state()
    assert model.predict(X[:1]).shape == (1, 5, 1)
    assert model.state.shape == (1, 3)


# -- item 10: divergence warnings ------------------------------------------------

FIRST_EPOCH = ("training diverged at epoch 0, the first (non-finite loss or parameters); "
               "stopped, keeping the parameters the model had before this call. Try a "
               "smaller lr.")


def _diverging(kind, backend):
    rng = np.random.default_rng(0)
    if kind == "LGM":
        model = lgmstm.LGM([3, 4, 2], output="linear", seed=0, backend=backend)
        X, Y = rng.uniform(-1, 1, (6, 3)), rng.uniform(-1, 1, (6, 2)) * 1e200
    else:
        model = lgmstm.STM(3, 4, 2, output="linear", seed=0, backend=backend)
        X, Y = rng.uniform(-1, 1, (6, 5, 3)), rng.uniform(-1, 1, (6, 5, 2)) * 1e200
    return model, X, Y


DIVERGING_CALLS = {
    "fit": lambda m, X, Y: m.fit(X, Y, epochs=3, lr=1e200, optimizer="momentum"),
    "fit-short": lambda m, X, Y: m.fit(X, Y, epochs=1, lr=1e200, optimizer="momentum"),
    # the short fit meets the divergence, and falls back to the checked path
    "partial_fit-short": lambda m, X, Y: m.partial_fit(X, Y, lr=1e200,
                                                       optimizer="momentum"),
    "partial_fit-checked": lambda m, X, Y: m.partial_fit(X.tolist(), Y, lr=1e200, seed=0,
                                                         optimizer="momentum"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["LGM", "STM"])
@pytest.mark.parametrize("call", DIVERGING_CALLS)
def test_first_epoch_divergence_reads_well_and_points_here(backend, kind, call):
    model, X, Y = _diverging(kind, backend)
    before = model.params
    _, record = caught(lambda: DIVERGING_CALLS[call](model, X, Y))
    found = only(record, lgmstm.DivergenceWarning)
    assert [str(w.message) for w in found] == [FIRST_EPOCH]
    assert found[0].filename == __file__
    assert model.history_.shape == (0,)
    for name, value in before.items():
        np.testing.assert_array_equal(model.params[name], value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_later_divergence_names_the_epochs(backend):
    rng = np.random.default_rng(0)
    X, Y = 3 * rng.uniform(-1, 1, (40, 3)), 5 * rng.uniform(-1, 1, (40, 1))
    model = lgmstm.LGM([3, 4, 1], output="linear", seed=1, backend=backend)
    losses, record = caught(lambda: model.fit(X, Y, epochs=500, lr=5.0, batch_size=8,
                                              shuffle=False))
    found = only(record, lgmstm.DivergenceWarning)
    done = len(losses)
    assert 0 < done < 500, "the test needs a divergence after a few epochs"
    assert [str(w.message) for w in found] == [
        f"training diverged at epoch {done} (non-finite loss or parameters); stopped, "
        f"keeping the parameters after epoch {done - 1}. Try a smaller lr."]
    assert found[0].filename == __file__


def test_divergence_in_an_estimator_points_at_its_caller():
    pytest.importorskip("sklearn")
    from lgmstm.sklearn import LGMRegressor

    X, y = _lgm_data()
    estimator = LGMRegressor(hidden_layer_sizes=(4,), max_iter=2, learning_rate_init=1e200,
                             solver="sgd", nesterovs_momentum=False, standardize_y=False)
    _, record = caught(lambda: estimator.fit(X, y[:, 0] * 1e200))
    found = only(record, lgmstm.DivergenceWarning)
    assert found and all(w.filename == __file__ for w in found)


# -- item 12: what help() shows ----------------------------------------------------

@pytest.mark.parametrize("cls", [lgmstm.LGM, lgmstm.STM])
def test_docstrings_say_what_is_converted(cls):
    text = inspect.getdoc(cls)
    for words in ("converted", "integers", "float16", "complex", "refused"):
        assert words in text, words
    assert "inputs are converted." not in text


@pytest.mark.parametrize("cls", [lgmstm.LGM, lgmstm.STM])
def test_public_methods_and_attributes_are_annotated(cls):
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") and name not in ("__init__", "__repr__"):
            continue
        if inspect.isfunction(member):
            signature = inspect.signature(member)
            for parameter in list(signature.parameters.values())[1:]:
                assert parameter.annotation is not inspect.Parameter.empty, (name, parameter)
            assert signature.return_annotation is not inspect.Signature.empty, name
        elif isinstance(member, property):
            assert inspect.signature(member.fget).return_annotation \
                is not inspect.Signature.empty, name
    fixed = ("layer_sizes",) if cls is lgmstm.LGM else ("n_in", "n_hidden", "stateful")
    for name in (*fixed, "output", "dtype", "backend"):
        assert isinstance(inspect.getattr_static(cls, name), property), name
