"""Training in pieces (issue 12): the optimizer state a model keeps between
calls, partial_fit, warm starts, and training that resumes exactly after
save/load or pickling; the estimators' partial_fit and warm_start.

Every comparison is of bits: the parameters, the optimizer's moments and
step, the generator and the working memory of two ways of training must be
the same arrays (assert_array_equal with strict=True).
"""
import json
import os
import pickle
import signal
import warnings

import numpy as np
import pytest

import lgmstm

BACKENDS = ("cython", "numpy")
DTYPES = (np.float32, np.float64)
LEARNING_RATES = {"sgd": 0.1, "momentum": 0.05, "adam": 0.01}  # that train these models
N_SAMPLES = 13  # mini-batches of 5: the last one is short


def make(kind, backend="cython", dtype=np.float64, stateful=False, seed=3):
    if kind == "LGM":
        return lgmstm.LGM([3, 6, 2], dtype=dtype, seed=seed, backend=backend)
    return lgmstm.STM(3, 5, 2, stateful=stateful, dtype=dtype, seed=seed, backend=backend)


def data(kind, dtype=np.float64, seed=0):
    """(X, Y, the arguments of fit besides them) for make(kind)."""
    rng = np.random.default_rng(seed)
    if kind == "LGM":
        return (rng.uniform(-1, 1, (N_SAMPLES, 3)).astype(dtype),
                rng.uniform(-0.8, 0.8, (N_SAMPLES, 2)).astype(dtype), {})
    X = rng.uniform(-1, 1, (N_SAMPLES, 4, 3)).astype(dtype)
    Y = rng.uniform(-0.8, 0.8, (N_SAMPLES, 4, 2)).astype(dtype)
    return X, Y, {"lengths": rng.integers(0, 5, N_SAMPLES), "clip_norm": 0.5}


def optimizer_state(model):
    """The model's optimizer state as its pickle holds it (copies), or None."""
    return model.__getstate__()["optimizer"]


def _text(value):
    return json.dumps(value, default=lambda item: item.tolist())


def assert_same_training(actual, expected):
    """The same parameters, optimizer state, generator and working memory."""
    for name, value in expected.params.items():
        np.testing.assert_array_equal(actual.params[name], value, err_msg=name, strict=True)
    got, want = optimizer_state(actual), optimizer_state(expected)
    assert (got is None) == (want is None)
    if want is not None:
        assert {k: got[k] for k in ("name", "settings", "step")} == \
            {k: want[k] for k in ("name", "settings", "step")}
        assert len(got["moments"]) == len(want["moments"])
        for arrays, wanted in zip(got["moments"], want["moments"]):
            for array, value in zip(arrays, wanted):
                np.testing.assert_array_equal(array, value, strict=True)
    assert _text(actual._rng.bit_generator.state) == _text(expected._rng.bit_generator.state)
    if isinstance(expected, lgmstm.STM):
        if expected.state is None:
            assert actual.state is None
        else:
            np.testing.assert_array_equal(actual.state, expected.state, strict=True)


# -- partial_fit is fit one epoch at a time ------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 5], ids=["full", "mini"])
@pytest.mark.parametrize("optimizer", LEARNING_RATES)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["LGM", "STM"])
def test_partial_fit_n_times_is_fit_n_epochs(kind, backend, dtype, optimizer, batch_size):
    X, Y, extra = data(kind, dtype)
    lr = LEARNING_RATES[optimizer]
    whole = make(kind, backend, dtype)
    losses = whole.fit(X, Y, epochs=6, lr=lr, optimizer=optimizer, batch_size=batch_size,
                       shuffle=False, **extra)
    pieces = make(kind, backend, dtype)
    piece_losses = []
    for _ in range(6):
        assert pieces.partial_fit(X, Y, lr=lr, optimizer=optimizer, batch_size=batch_size,
                                  shuffle=False, **extra) is pieces
        assert pieces.history_.shape == (1,)
        piece_losses.append(pieces.history_[0])
    np.testing.assert_array_equal(np.array(piece_losses), losses, strict=True)
    assert_same_training(pieces, whole)
    batches = 1 if batch_size is None else -(-N_SAMPLES // batch_size)
    assert optimizer_state(pieces)["step"] == 6 * batches


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["LGM", "STM"])
def test_shuffled_partial_fits_draw_the_orders_fit_draws(kind, backend):
    # Default shuffle: every call draws its epoch's order from the model's generator.
    X, Y, extra = data(kind)
    whole = make(kind, backend)
    whole.fit(X, Y, epochs=5, lr=0.01, optimizer="adam", batch_size=4, **extra)
    pieces = make(kind, backend)
    for _ in range(5):
        pieces.partial_fit(X, Y, lr=0.01, optimizer="adam", batch_size=4, **extra)
    assert_same_training(pieces, whole)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stateful_stm_partial_fit_carries_the_working_memory(backend):
    # As fit(epochs=1) calls do: each call starts from the states the last one left.
    X, Y, extra = data("STM")
    calls = make("STM", backend, stateful=True)
    pieces = make("STM", backend, stateful=True)
    for _ in range(4):
        calls.fit(X, Y, epochs=1, lr=0.05, optimizer="momentum", batch_size=5,
                  warm_start=True, **extra)
        pieces.partial_fit(X, Y, lr=0.05, optimizer="momentum", batch_size=5, **extra)
        assert_same_training(pieces, calls)
    assert pieces.state.shape == (N_SAMPLES, 5)


# -- when the state goes on and when it starts over --------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_fit_starts_afresh_unless_warm_start(backend):
    X, Y, _ = data("LGM")
    cold = make("LGM", backend)
    cold.fit(X, Y, epochs=3, lr=0.01, optimizer="adam", batch_size=5)
    cold.fit(X, Y, epochs=3, lr=0.01, optimizer="adam", batch_size=5)
    reset = make("LGM", backend)
    reset.fit(X, Y, epochs=3, lr=0.01, optimizer="adam", batch_size=5)
    reset.reset_optimizer()
    assert optimizer_state(reset) is None
    reset.fit(X, Y, epochs=3, lr=0.01, optimizer="adam", batch_size=5, warm_start=True)
    assert_same_training(reset, cold)
    assert optimizer_state(cold)["step"] == 3 * 3

    warm = make("LGM", backend)
    warm.fit(X, Y, epochs=3, lr=0.01, optimizer="adam", batch_size=5)
    warm.fit(X, Y, epochs=3, lr=0.01, optimizer="adam", batch_size=5, warm_start=True)
    straight = make("LGM", backend)
    straight.fit(X, Y, epochs=6, lr=0.01, optimizer="adam", batch_size=5)
    assert_same_training(warm, straight)
    assert not np.array_equal(warm.params["layer0.weight"], cold.params["layer0.weight"])


def test_another_optimizer_starts_afresh():
    X, Y, _ = data("LGM")
    switched = make("LGM")
    reset = make("LGM")
    for model in (switched, reset):
        model.partial_fit(X, Y, lr=0.01, optimizer="adam")
        model.partial_fit(X, Y, lr=0.01, optimizer="adam")
    reset.reset_optimizer()
    switched.partial_fit(X, Y, lr=0.05, optimizer="momentum")
    reset.partial_fit(X, Y, lr=0.05, optimizer="momentum")
    assert_same_training(switched, reset)
    assert optimizer_state(switched)["name"] == "momentum"
    assert optimizer_state(switched)["step"] == 1


def test_other_settings_start_afresh():
    # A state made with another momentum (say, by another version) is not continued.
    X, Y, _ = data("LGM")
    model = make("LGM")
    model.partial_fit(X, Y, lr=0.05, optimizer="momentum")
    pickled = model.__getstate__()
    pickled["optimizer"]["settings"]["momentum"] = 0.5
    other = lgmstm.LGM.__new__(lgmstm.LGM)
    other.__setstate__(pickled)
    assert optimizer_state(other)["settings"] == {"momentum": 0.5}
    other.partial_fit(X, Y, lr=0.05, optimizer="momentum")
    model.reset_optimizer()
    model.partial_fit(X, Y, lr=0.05, optimizer="momentum")
    assert_same_training(other, model)


def test_lr_and_batch_size_do_not_reset():
    X, Y, _ = data("LGM")
    pieces = make("LGM")
    pieces.partial_fit(X, Y, lr=0.05, optimizer="momentum")
    pieces.partial_fit(X, Y, lr=0.02, optimizer="momentum", batch_size=4)
    fits = make("LGM")
    fits.fit(X, Y, epochs=1, lr=0.05, optimizer="momentum")
    fits.fit(X, Y, epochs=1, lr=0.02, optimizer="momentum", batch_size=4, warm_start=True)
    assert_same_training(pieces, fits)
    assert optimizer_state(pieces)["step"] == 1 + 4
    reset = make("LGM")
    reset.partial_fit(X, Y, lr=0.05, optimizer="momentum")
    reset.reset_optimizer()
    reset.partial_fit(X, Y, lr=0.02, optimizer="momentum", batch_size=4)
    assert not np.array_equal(reset.params["layer0.weight"], pieces.params["layer0.weight"])


def test_a_refused_call_leaves_the_state():
    X, Y, extra = data("STM")
    model = make("STM", stateful=True)
    model.partial_fit(X, Y, lr=0.01, optimizer="adam", **extra)
    state, before = model._optimizer_state, optimizer_state(model)
    with pytest.raises(ValueError, match="reset_state"):  # 13 streams held, 4 given
        model.partial_fit(X[:4], Y[:4], lr=0.01, optimizer="sgd")
    assert model._optimizer_state is state
    assert optimizer_state(model)["step"] == before["step"] == 1
    for arrays, wanted in zip(optimizer_state(model)["moments"], before["moments"]):
        for array, value in zip(arrays, wanted):
            np.testing.assert_array_equal(array, value, strict=True)


# -- the state after a divergence or Ctrl-C ----------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence_leaves_the_state_of_the_last_finite_epoch(backend):
    rng = np.random.default_rng(0)
    X, Y = rng.uniform(-1, 1, (40, 3)), rng.uniform(-0.8, 0.8, (40, 1))

    def model():
        return lgmstm.LGM([3, 4, 1], output="linear", seed=0, backend=backend)

    diverged = model()
    with pytest.warns(lgmstm.DivergenceWarning):
        losses = diverged.fit(X, Y, epochs=500, lr=1.0, optimizer="momentum", batch_size=8,
                              shuffle=False)
    assert 5 < len(losses) < 500  # diverged mid-block: the block was replayed
    finite = model()
    finite.fit(X, Y, epochs=len(losses), lr=1.0, optimizer="momentum", batch_size=8,
               shuffle=False)
    assert_same_training(diverged, finite)
    assert optimizer_state(diverged)["step"] == 5 * len(losses)
    # Both go on alike; a diverging partial_fit changes nothing.
    with pytest.warns(lgmstm.DivergenceWarning):
        diverged.partial_fit(X, Y, lr=1e300, optimizer="momentum", batch_size=8,
                             shuffle=False)
    assert len(diverged.history_) == 0
    for trained in (diverged, finite):
        trained.partial_fit(X, Y, lr=0.01, optimizer="momentum", batch_size=8, shuffle=False)
    assert_same_training(diverged, finite)


def test_ctrl_c_leaves_the_state_of_the_last_finished_epoch():
    X, Y, extra = data("STM")

    def interrupt(epoch, loss):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)

    interrupted = make("STM")
    with pytest.raises(lgmstm.TrainingInterrupted):
        interrupted.fit(X, Y, epochs=1000, lr=0.01, optimizer="adam", batch_size=5,
                        callback=interrupt, **extra)
    assert len(interrupted.history_) == 3
    finished = make("STM")
    finished.fit(X, Y, epochs=3, lr=0.01, optimizer="adam", batch_size=5, **extra)
    assert_same_training(interrupted, finished)
    for trained in (interrupted, finished):
        trained.partial_fit(X, Y, lr=0.01, optimizer="adam", batch_size=5, **extra)
    assert_same_training(interrupted, finished)


# -- resuming after save/load and pickling ------------------------------------------------


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["LGM", "STM"])
def test_training_resumes_exactly_after_save_and_load(kind, backend, dtype, optimizer,
                                                      tmp_path):
    X, Y, extra = data(kind, dtype)
    arguments = dict(lr=LEARNING_RATES[optimizer], optimizer=optimizer, batch_size=4, **extra)
    straight = make(kind, backend, dtype)
    straight.fit(X, Y, epochs=100, **arguments)  # shuffled mini-batches

    first = make(kind, backend, dtype)
    first.fit(X, Y, epochs=50, **arguments)
    first.save(tmp_path / "half.npz")
    loaded = lgmstm.load(tmp_path / "half.npz", backend=backend)
    unpickled = pickle.loads(pickle.dumps(first))
    for resumed in (loaded, unpickled, first):
        resumed.fit(X, Y, epochs=50, warm_start=True, **arguments)
        assert_same_training(resumed, straight)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stateful_stm_resumes_with_its_working_memory(backend, tmp_path):
    X, Y, extra = data("STM")
    arguments = dict(lr=0.01, optimizer="adam", batch_size=4, **extra)
    kept = make("STM", backend, stateful=True)
    kept.fit(X, Y, epochs=20, **arguments)
    kept.save(tmp_path / "half.npz")
    loaded = lgmstm.load(tmp_path / "half.npz", backend=backend)
    assert_same_training(loaded, kept)
    for model in (kept, loaded):
        model.fit(X, Y, epochs=20, warm_start=True, **arguments)
    assert_same_training(loaded, kept)


def test_saved_file_holds_the_memory(tmp_path):
    X, Y, extra = data("STM", np.float32)
    model = make("STM", dtype=np.float32, stateful=True)
    model.partial_fit(X, Y, lr=0.01, optimizer="adam", **extra)
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz", allow_pickle=False) as saved:
        assert int(saved["format_version"]) == 2
        memory = sorted(name for name in saved.files if name.startswith("memory."))
        moments = [f"memory.optimizer.moment{k}.{name}" for k in (0, 1)
                   for name in model.params]
        assert memory == sorted(["memory.generator", "memory.optimizer", "memory.state",
                                 *moments])
        assert saved["memory.optimizer"].dtype.kind == "U"  # JSON text, no pickle
        assert saved["memory.optimizer.moment1.bias"].dtype == np.float32
    fresh = make("LGM")
    fresh.save(tmp_path / "fresh.npz")
    with np.load(tmp_path / "fresh.npz", allow_pickle=False) as saved:
        assert [name for name in saved.files if name.startswith("memory.")] == [
            "memory.generator"]
    assert optimizer_state(lgmstm.load(tmp_path / "fresh.npz")) is None


@pytest.mark.parametrize("generator", ["PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"])
def test_every_bit_generator_is_saved(generator, tmp_path):
    X, Y, _ = data("LGM")
    seed = np.random.Generator(getattr(np.random, generator)(7))
    model = lgmstm.LGM([3, 6, 2], seed=seed)
    model.save(tmp_path / "m.npz")
    loaded = lgmstm.load(tmp_path / "m.npz")
    for trained in (model, loaded):
        trained.fit(X, Y, epochs=3, lr=0.1, batch_size=4)
    assert_same_training(loaded, model)


# -- files and pickles from before ---------------------------------------------------------


def _version_1_file(path, model):
    """The file lgmstm at eb780a7 wrote for model (lgmstm/_persist.py, format 1)."""
    arrays = {"format_version": np.asarray(1, np.int64), "kind": np.asarray(model.kind),
              "dtype": np.asarray(model.dtype.name)}
    arrays.update({f"config.{k}": v for k, v in model._config().items()})
    arrays.update({f"param.{k}": v for k, v in model.params.items()})
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("kind", ["LGM", "STM"])
def test_version_1_files_still_load(kind, tmp_path):
    X, Y, extra = data(kind)
    model = make(kind, stateful=True)
    model.fit(X, Y, epochs=2, lr=0.05, optimizer="momentum", **extra)
    _version_1_file(tmp_path / "old.npz", model)
    loaded = lgmstm.load(tmp_path / "old.npz")
    assert optimizer_state(loaded) is None
    if kind == "STM":
        assert loaded.state is None
        model.reset_state()
    model.reset_optimizer()
    for trained in (model, loaded):  # the same from here, but for the generator
        trained.partial_fit(X, Y, lr=0.05, optimizer="momentum", shuffle=False, **extra)
    for name, value in model.params.items():
        np.testing.assert_array_equal(loaded.params[name], value, strict=True)


def test_version_1_file_with_memory_is_refused(tmp_path):
    arrays = _version_1_file(tmp_path / "old.npz", make("LGM"))
    np.savez(tmp_path / "old.npz", **arrays, **{"memory.generator": np.asarray("{}")})
    with pytest.raises(ValueError, match="format_version 1"):
        lgmstm.load(tmp_path / "old.npz")


def test_pickles_without_optimizer_state_load():
    # As pickled before the optimizer state was (tests/test_old_pickles.py has real ones).
    X, Y, _ = data("LGM")
    model = make("LGM")
    model.fit(X, Y, epochs=2, lr=0.01, optimizer="adam")
    pickled = model.__getstate__()
    del pickled["optimizer"]
    old = lgmstm.LGM.__new__(lgmstm.LGM)
    old.__setstate__(pickled)
    assert optimizer_state(old) is None
    old.partial_fit(X, Y, lr=0.01, optimizer="adam")
    assert optimizer_state(old)["step"] == 1


# case: what replaces an entry of a good file (None: removes it); "state-*" files are an STM's.
SPOILED_MEMORY = {
    "generator-not-json": {"memory.generator": np.asarray("{not json")},
    "generator-number": {"memory.generator": np.asarray(3.0)},
    "generator-unknown": {"memory.generator": np.asarray(
        '{"bit_generator": "os.system", "state": {}}')},
    "generator-bad-state": {"memory.generator": np.asarray(
        '{"bit_generator": "PCG64", "state": {"state": "x", "inc": 1}}')},
    "optimizer-unknown": {"memory.optimizer": np.asarray(
        '{"name": "rmsprop", "settings": {}, "step": 1}')},
    "optimizer-negative-step": {"memory.optimizer": np.asarray(
        '{"name": "adam", "settings": {}, "step": -1}')},
    "optimizer-no-step": {"memory.optimizer": np.asarray('{"name": "adam", "settings": {}}')},
    # Past what the kernels count (2**63: a crash in every warm fit, were it loaded).
    "optimizer-huge-step": {"memory.optimizer": np.asarray(
        '{"name": "adam", "settings": {}, "step": 9223372036854775808}')},
    "moment-nan": {"memory.optimizer.moment1.layer0.bias": np.full(6, np.nan)},
    "optimizer-deep-json": {"memory.optimizer": np.asarray("[" * 100000)},
    "moment-missing": {"memory.optimizer.moment1.layer0.bias": None},
    "moment-shape": {"memory.optimizer.moment0.layer0.bias": np.zeros(7)},
    "moment-dtype": {"memory.optimizer.moment0.layer0.bias": np.zeros(6, np.float32)},
    "moment-extra": {"memory.optimizer.moment2.layer0.bias": np.zeros(6)},
    "moments-without-optimizer": {"memory.optimizer": None},
    "unknown-entry": {"memory.notes": np.zeros(3)},
    "state-shape": {"memory.state": np.zeros((13, 4))},
    "state-dtype": {"memory.state": np.zeros((13, 5), np.float32)},
    "state-nan": {"memory.state": np.full((13, 5), np.nan)},
    "state-on-lgm": {"memory.state": np.zeros((13, 5))},
}


@pytest.mark.parametrize("case", SPOILED_MEMORY)
def test_load_refuses_spoiled_memory(case, tmp_path):
    kind = "STM" if case.startswith("state-") and case != "state-on-lgm" else "LGM"
    X, Y, extra = data(kind)
    model = make(kind, stateful=True)
    model.partial_fit(X, Y, lr=0.01, optimizer="adam", **extra)
    model.save(tmp_path / "good.npz")
    with np.load(tmp_path / "good.npz", allow_pickle=False) as saved:
        arrays = {name: saved[name] for name in saved.files}
    arrays.update(SPOILED_MEMORY[case])
    np.savez(tmp_path / "bad.npz", **{k: v for k, v in arrays.items() if v is not None})
    with pytest.raises(ValueError, match="bad.npz"):
        lgmstm.load(tmp_path / "bad.npz")


# -- the scikit-learn estimators ---------------------------------------------------------


sklearn = pytest.importorskip("sklearn", minversion="1.6")
from lgmstm.sklearn import LGMClassifier, LGMRegressor  # noqa: E402


def _assert_same_estimator(actual, expected):
    assert_same_training(actual.lgm_, expected.lgm_)
    np.testing.assert_array_equal(actual.loss_curve_, expected.loss_curve_, strict=True)
    assert actual.n_iter_ == expected.n_iter_


@pytest.fixture
def regression():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 3))
    return X, np.sin(X[:, 0]) + 0.5 * X[:, 1]


def test_regressor_partial_fit_n_times_is_fit(regression):
    X, y = regression
    whole = LGMRegressor(hidden_layer_sizes=5, max_iter=4, batch_size=16, random_state=0)
    whole.fit(X, y)
    pieces = LGMRegressor(hidden_layer_sizes=5, batch_size=16, random_state=0)
    for n in range(1, 5):
        assert pieces.partial_fit(X, y) is pieces
        assert pieces.n_iter_ == n and pieces.loss_curve_.shape == (n,)
    _assert_same_estimator(pieces, whole)
    np.testing.assert_array_equal(pieces.predict(X), whole.predict(X), strict=True)
    np.testing.assert_array_equal(pieces.y_mean_, whole.y_mean_, strict=True)


def test_regressor_keeps_the_first_calls_scaling(regression):
    X, y = regression
    model = LGMRegressor(max_iter=1, random_state=0).partial_fit(X[:20], y[:20])
    mean, scale = model.y_mean_.copy(), model.y_scale_.copy()
    model.partial_fit(X[20:], 10 * y[20:])
    np.testing.assert_array_equal(model.y_mean_, mean, strict=True)
    np.testing.assert_array_equal(model.y_scale_, scale, strict=True)
    assert model.n_iter_ == 2


def test_classifier_partial_fit_n_times_is_fit():
    X, y = sklearn.datasets.load_iris(return_X_y=True)
    labels = np.array(["setosa", "versicolor", "virginica"])[y]
    whole = LGMClassifier(hidden_layer_sizes=4, max_iter=3, random_state=0).fit(X, labels)
    pieces = LGMClassifier(hidden_layer_sizes=4, random_state=0)
    pieces.partial_fit(X, labels, classes=["virginica", "setosa", "versicolor"])
    pieces.partial_fit(X, labels)
    pieces.partial_fit(X, labels, classes=["setosa", "versicolor", "virginica"])
    _assert_same_estimator(pieces, whole)
    np.testing.assert_array_equal(pieces.classes_, whole.classes_, strict=True)


def test_classifier_first_batch_may_lack_classes():
    X, y = sklearn.datasets.load_iris(return_X_y=True)
    model = LGMClassifier(hidden_layer_sizes=4, random_state=0)
    model.partial_fit(X[y < 2], y[y < 2], classes=[0, 1, 2])
    assert model.lgm_.layer_sizes == (4, 4, 3)
    model.partial_fit(X, y)
    assert model.predict_proba(X).shape == (150, 3)


@pytest.mark.parametrize("Estimator", [LGMRegressor, LGMClassifier])
def test_warm_start_fit_goes_on(Estimator, regression):
    X, y = regression
    if Estimator is LGMClassifier:
        y = y > 0
    straight = Estimator(max_iter=5, random_state=0).fit(X, y)
    warm = Estimator(max_iter=3, random_state=0).fit(X, y)
    network = warm.lgm_
    warm.set_params(warm_start=True, max_iter=2).fit(X, y)
    assert warm.lgm_ is network
    _assert_same_estimator(warm, straight)
    warm.partial_fit(X, y)  # partial_fit goes on from a fit
    assert warm.n_iter_ == 6
    cold = Estimator(max_iter=3, random_state=0).fit(X, y)
    cold.fit(X, y)  # warm_start=False: a new network, a fresh optimizer
    assert cold.n_iter_ == 3 and cold.lgm_ is not network
