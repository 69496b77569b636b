"""The short fit (issue 12): partial_fit and fit(epochs=1) on data the
kernels take as they are go through one compiled call
(lgmstm._train.Program.fit_ready) instead of the checked path. It must be
invisible but for its speed: the same bits, the same optimizer state, the
same errors, warnings and lock as the checked path.

The checked path is reached by giving the same values in another form (a
Fortran-ordered copy), which the short fit does not take; that the short
fit ran is shown by making the checked path's plan (plan_fit) fail.
"""
import threading
import warnings

import numpy as np
import pytest

import lgmstm
from lgmstm import lgm as lgm_module
from lgmstm import stm as stm_module

DTYPES = (np.float32, np.float64)
OPTIMIZERS = {"sgd": 0.1, "momentum": 0.05, "adam": 0.01}  # lr that trains these models


def make(kind, dtype=np.float64, stateful=False, seed=1, **kwargs):
    if kind == "LGM":
        return lgmstm.LGM([4, 7, 3], dtype=dtype, seed=seed, **kwargs)
    hidden = [6, 5] if kind == "deep" else 6  # "deep": two stacked layers
    return lgmstm.STM(4, hidden, 3, dtype=dtype, seed=seed, stateful=stateful, **kwargs)


def batches(kind, dtype, n_batches=4, n_samples=21, seed=0):
    """n_batches (X, Y) of C-ordered arrays of dtype: what the short fit takes."""
    rng = np.random.default_rng(seed)
    shape = (n_samples, 4) if kind == "LGM" else (n_samples, 5, 4)
    out_shape = shape[:-1] + (3,)
    return [(rng.uniform(-1, 1, shape).astype(dtype),
             rng.uniform(-0.8, 0.8, out_shape).astype(dtype)) for _ in range(n_batches)]


def checked(array):
    """The same values in a form only the checked path takes."""
    return np.asfortranarray(array)


def refuse_checked_path(monkeypatch):
    """Fail any fit that takes the checked path from now on."""
    def refuse(*args, **kwargs):
        raise AssertionError("the checked path ran")

    monkeypatch.setattr(lgm_module, "plan_fit", refuse)
    monkeypatch.setattr(stm_module, "plan_fit", refuse)


@pytest.fixture
def no_checked_path(monkeypatch):
    refuse_checked_path(monkeypatch)


def assert_same_model(actual, expected):
    for name, value in expected.params.items():
        np.testing.assert_array_equal(actual.params[name], value, err_msg=name, strict=True)
    np.testing.assert_array_equal(actual.history_, expected.history_, strict=True)
    got, want = actual.__getstate__()["optimizer"], expected.__getstate__()["optimizer"]
    assert (got is None) == (want is None)
    if want is not None:
        assert got["name"] == want["name"] and got["step"] == want["step"]
        for got_arrays, want_arrays in zip(got["moments"], want["moments"]):
            for g, w in zip(got_arrays, want_arrays):
                np.testing.assert_array_equal(g, w, strict=True)
    if expected.kind == "STM":
        if expected.state is None:
            assert actual.state is None
        else:
            np.testing.assert_array_equal(actual.state, expected.state, strict=True)


@pytest.mark.parametrize("kind", ["LGM", "STM", "deep"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("batch_size", [None, 8])
def test_short_and_checked_partial_fit_agree(kind, dtype, optimizer, batch_size):
    data = batches(kind, dtype)
    short, slow = make(kind, dtype), make(kind, dtype)
    extra = {"clip_norm": 0.5} if kind == "STM" else {}
    for X, Y in data:
        arguments = dict(lr=OPTIMIZERS[optimizer], optimizer=optimizer, batch_size=batch_size,
                         shuffle=False, **extra)
        short.partial_fit(X, Y, **arguments)
        slow.partial_fit(checked(X), checked(Y), **arguments)
        assert_same_model(short, slow)
    assert short.__getstate__()["optimizer"]["step"] == len(data) * (1 if batch_size is None
                                                                     else 3)


@pytest.mark.parametrize("kind", ["LGM", "STM", "deep"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_short_fits_are_one_long_fit(kind, optimizer):
    X, Y = batches(kind, np.float64, n_batches=1)[0]
    short, long = make(kind), make(kind)
    with pytest.MonkeyPatch.context() as monkeypatch:
        refuse_checked_path(monkeypatch)
        for _ in range(5):
            short.partial_fit(X, Y, lr=OPTIMIZERS[optimizer], optimizer=optimizer)
        with pytest.raises(AssertionError, match="checked path"):
            long.fit(X, Y, epochs=5, lr=OPTIMIZERS[optimizer], optimizer=optimizer)
    long.fit(X, Y, epochs=5, lr=OPTIMIZERS[optimizer], optimizer=optimizer)
    for name, value in long.params.items():
        np.testing.assert_array_equal(short.params[name], value, err_msg=name, strict=True)


@pytest.mark.parametrize("kind", ["LGM", "STM", "deep"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fit_of_one_epoch_starts_the_optimizer_afresh(kind, dtype):
    data = batches(kind, dtype, n_batches=3)
    short, slow = make(kind, dtype), make(kind, dtype)
    for X, Y in data:
        short.fit(X, Y, epochs=1, lr=0.01, optimizer="adam")
        slow.fit(checked(X), checked(Y), epochs=1, lr=0.01, optimizer="adam")
        assert_same_model(short, slow)
        assert short.__getstate__()["optimizer"]["step"] == 1
    # warm_start goes on instead.
    for X, Y in data:
        short.fit(X, Y, epochs=1, lr=0.01, optimizer="adam", warm_start=True)
        slow.fit(checked(X), checked(Y), epochs=1, lr=0.01, optimizer="adam",
                 warm_start=True)
        assert_same_model(short, slow)
    assert short.__getstate__()["optimizer"]["step"] == 4


@pytest.mark.parametrize("kind", ["LGM", "STM", "deep"])
def test_short_and_checked_calls_interleave(kind):
    """The short fit goes on from the state a checked fit left, and back;
    a change of optimizer, reset_optimizer and other shapes start afresh,
    as on the checked path."""
    data = batches(kind, np.float64, n_batches=2) + batches(kind, np.float64, n_batches=1,
                                                            n_samples=9, seed=5)
    calls = [("partial_fit", 0, "adam"), ("fit_warm", 1, "adam"), ("partial_fit", 0, "adam"),
             ("partial_fit", 2, "adam"), ("partial_fit", 1, "momentum"), ("reset", 0, None),
             ("partial_fit", 1, "momentum"), ("fit", 0, "adam"), ("partial_fit", 2, "adam")]
    short, slow = make(kind), make(kind)
    for call, index, optimizer in calls:
        X, Y = data[index]
        for model, convert in ((short, lambda a: a), (slow, checked)):
            if call == "reset":
                model.reset_optimizer()
            elif call == "partial_fit":
                model.partial_fit(convert(X), convert(Y), lr=0.01, optimizer=optimizer)
            elif call == "fit":
                model.fit(convert(X), convert(Y), epochs=1, lr=0.01, optimizer=optimizer)
            else:  # a checked fit for both: a callback never takes the short fit
                model.fit(X, Y, epochs=2, lr=0.01, optimizer=optimizer, warm_start=True,
                          callback=lambda epoch, loss: None)
        assert_same_model(short, slow)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["LGM", "STM", "deep"])
def test_batches_of_two_shapes_keep_a_run_each(kind, dtype, monkeypatch):
    """A partial_fit loop whose batches alternate between two shapes (full
    mini-batches and a smaller last one) makes one run per shape, not one
    per call, and trains as the checked path does (bits)."""
    data = batches(kind, dtype, n_batches=3, n_samples=16)
    data = [(X if i % 2 == 0 else X[:5], Y if i % 2 == 0 else Y[:5])
            for i, (X, Y) in enumerate(data * 2)]
    short, slow = make(kind, dtype), make(kind, dtype)
    program = short._network.program
    made = []

    def counting_factory(*arguments):
        made.append(arguments[0].shape)
        return run_factory(*arguments)
    run_factory = program.run_factory
    monkeypatch.setattr(program, "run_factory", counting_factory)
    for X, Y in data:
        short.partial_fit(X, Y, lr=0.01, optimizer="adam")
        slow.partial_fit(checked(X), checked(Y), lr=0.01, optimizer="adam")
        assert_same_model(short, slow)
    assert len(made) == 2


@pytest.mark.parametrize("options", [dict(bidirectional=True), dict(readout=[5]),
                                     dict(return_sequences=False, output="softmax")],
                         ids=["bidirectional", "readout", "softmax-last"])
def test_other_deep_stms_take_the_short_fit(options, monkeypatch):
    """Deep STMs of both directions, with readout layers, or a softmax on
    the final states take the short fit too, with the checked path's bits."""
    data = batches("deep", np.float64, n_batches=3)
    if options.get("output") == "softmax":
        data = [(X, np.eye(3)[np.argmax(Y[:, -1], axis=1)]) for X, Y in data]
    short, slow = make("deep", **options), make("deep", **options)
    for X, Y in data:
        with monkeypatch.context() as patch:
            refuse_checked_path(patch)
            short.partial_fit(X, Y, lr=0.05, optimizer="adam")
        slow.partial_fit(checked(X), checked(Y), lr=0.05, optimizer="adam")
        assert_same_model(short, slow)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stateful_stm_short_fit_keeps_the_working_memory(dtype):
    data = batches("STM", dtype, n_batches=3)
    short, slow = make("STM", dtype, stateful=True), make("STM", dtype, stateful=True)
    for X, Y in data:
        short.partial_fit(X, Y, lr=0.05, optimizer="momentum")
        slow.partial_fit(checked(X), checked(Y), lr=0.05, optimizer="momentum")
        assert_same_model(short, slow)
        assert short.state is not None
    # Another number of sequences than the held state's is refused, as it is
    # on the checked path.
    X, Y = batches("STM", dtype, n_batches=1, n_samples=5)[0]
    with pytest.raises(ValueError, match="reset_state"):
        short.partial_fit(X, Y, lr=0.05)


@pytest.mark.parametrize("kind", ["LGM", "STM", "deep"])
@pytest.mark.parametrize("path", ["short", "checked"])
def test_target_range_warning_as_an_error_leaves_the_model_as_it_was(kind, path):
    """Y beyond a tanh output's [-1, 1], with the warning made an error: the
    fit raises before training, on either path, so the parameters, optimizer
    state, history and (stateful STM) working memory are those before."""
    import copy

    model = make(kind, stateful=True) if kind == "STM" else make(kind)
    (X, Y), (X2, Y2) = batches(kind, np.float64, n_batches=2)
    model.partial_fit(X, Y, lr=0.05, optimizer="adam")
    before = copy.deepcopy(model)
    Y2 = Y2 * 2  # targets up to 1.6
    if path == "checked":
        X2, Y2 = checked(X2), checked(Y2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lgmstm.TargetRangeWarning)
        with pytest.raises(lgmstm.TargetRangeWarning):
            model.partial_fit(X2, Y2, lr=0.05, optimizer="adam")
    assert_same_model(model, before)


@pytest.mark.parametrize("kind", ["LGM", "STM", "deep"])
def test_stm_last_step_targets_and_lgm_take_the_short_fit(kind, no_checked_path):
    if kind == "STM":
        model = lgmstm.STM(4, 6, 3, return_sequences=False, seed=0)
        X, Y = np.ones((6, 5, 4)), np.zeros((6, 3))
    else:
        model = make("LGM")
        X, Y = np.ones((6, 4)), np.zeros((6, 3))
    model.partial_fit(X, Y, lr=0.1)
    assert model.history_.shape == (1,) and np.isfinite(model.history_[0])


@pytest.mark.parametrize("kind", ["LGM", "STM", "deep"])
def test_divergence_on_the_short_fit_is_that_of_the_checked_path(kind):
    X, Y = batches(kind, np.float64, n_batches=1)[0]
    Y = Y * 1e200
    short, slow = make(kind, output="linear"), make(kind, output="linear")
    before = short.params
    with pytest.warns(lgmstm.DivergenceWarning):
        short.partial_fit(X, Y, lr=1e200, optimizer="momentum")
    with pytest.warns(lgmstm.DivergenceWarning):
        slow.partial_fit(checked(X), checked(Y), lr=1e200, optimizer="momentum")
    assert_same_model(short, slow)
    assert short.history_.shape == (0,)
    for name, value in before.items():
        np.testing.assert_array_equal(short.params[name], value, strict=True)


BAD_ARGUMENTS = [
    ({"lr": -1.0}, ValueError), ({"lr": float("nan")}, ValueError),
    ({"lr": "0.1"}, TypeError), ({"batch_size": 0}, ValueError),
    ({"batch_size": 2.5}, TypeError), ({"optimizer": "bogus"}, ValueError),
    ({"shuffle": "yes"}, TypeError),
]


@pytest.mark.parametrize("kind", ["LGM", "STM", "deep"])
@pytest.mark.parametrize("arguments, error", BAD_ARGUMENTS)
def test_bad_arguments_get_the_checked_paths_error(kind, arguments, error):
    X, Y = batches(kind, np.float64, n_batches=1)[0]
    messages = []
    for convert in (lambda a: a, checked):
        model = make(kind)
        with pytest.raises(error) as caught:
            model.partial_fit(convert(X), convert(Y), **{"lr": 0.1, **arguments})
        messages.append(str(caught.value))
        assert model.__getstate__()["optimizer"] is None  # nothing trained
    assert messages[0] == messages[1]


@pytest.mark.parametrize("kind", ["LGM", "STM", "deep"])
@pytest.mark.parametrize("spoil", ["nan_X", "inf_Y", "Y_shape"])
def test_bad_data_gets_the_checked_paths_error(kind, spoil):
    X, Y = batches(kind, np.float64, n_batches=1)[0]
    X, Y = X.copy(), Y.copy()
    if spoil == "nan_X":
        X[3, 0] = np.nan
    elif spoil == "inf_Y":
        Y[-1, -1] = np.inf
    else:
        Y = np.ascontiguousarray(Y[..., :2])
    messages = []
    for convert in (lambda a: a, checked):
        model = make(kind)
        before = model.params
        with pytest.raises(ValueError) as caught:
            model.partial_fit(convert(X), convert(Y), lr=0.1)
        messages.append(str(caught.value))
        for name, value in before.items():
            np.testing.assert_array_equal(model.params[name], value, strict=True)
    assert messages[0] == messages[1]


@pytest.mark.parametrize("kind", ["LGM", "STM", "deep"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_size", [None, 8])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_bad_value_anywhere_leaves_a_trained_model_as_it_was(kind, dtype, batch_size, bad):
    """The full-batch short fit checks X and Y as it gathers them into the
    panel layout (a non-finite value makes the epoch's loss NaN, and the
    model is put back), mini-batches before their order is drawn: either
    way a bad value in any place, the last value of a row and of the
    array included, gets the checked path's error and leaves the
    parameters, the optimizer state and the shuffling generator as they
    were; the next good call trains as if the bad one had not been made."""
    (X, Y), (X2, Y2) = batches(kind, dtype, n_batches=2)
    n_samples = X.shape[0]
    places = [("X", (0,) * X.ndim), ("X", (n_samples // 2,) + (1,) * (X.ndim - 1)),
              ("X", tuple(n - 1 for n in X.shape)), ("X", (n_samples - 1,) + (0,) * (X.ndim - 1)),
              ("Y", (0,) * Y.ndim), ("Y", tuple(n - 1 for n in Y.shape)),
              ("Y", (n_samples - 2,) + (1,) * (Y.ndim - 1))]
    for array, place in places:
        model, clean = make(kind, dtype), make(kind, dtype)
        for trained in (model, clean):
            trained.partial_fit(X, Y, lr=0.01, optimizer="adam", batch_size=batch_size)
        spoiled_X, spoiled_Y = X2.copy(), Y2.copy()
        (spoiled_X if array == "X" else spoiled_Y)[place] = bad
        with pytest.raises(ValueError) as fast:
            model.partial_fit(spoiled_X, spoiled_Y, lr=0.01, optimizer="adam",
                              batch_size=batch_size)
        with pytest.raises(ValueError) as slow:
            make(kind, dtype).partial_fit(checked(spoiled_X), checked(spoiled_Y), lr=0.01,
                                          optimizer="adam", batch_size=batch_size)
        assert str(fast.value) == str(slow.value)
        assert model._rng.bit_generator.state == clean._rng.bit_generator.state
        model.history_ = clean.history_  # the failed call's history is not compared
        assert_same_model(model, clean)
        for trained in (model, clean):
            trained.partial_fit(X2, Y2, lr=0.01, optimizer="adam", batch_size=batch_size)
        assert_same_model(model, clean)


@pytest.mark.parametrize("kind", ["LGM", "STM", "deep"])
def test_a_fit_in_progress_refuses_the_short_fit(kind):
    """partial_fit from a fit's own callback is refused, as a second fit is."""
    X, Y = batches(kind, np.float64, n_batches=1)[0]
    model = make(kind)
    errors = []

    def callback(epoch, loss):
        try:
            model.partial_fit(X, Y, lr=0.1)
        except RuntimeError as exc:
            errors.append(str(exc))

    model.fit(X, Y, epochs=2, lr=0.1, callback=callback)
    assert len(errors) == 2 and all("already being trained" in e for e in errors)


@pytest.mark.parametrize("kind", ["LGM", "STM", "deep"])
def test_readers_and_short_fits_in_threads(kind):
    """Readers in other threads during short fits all finish (a reader that
    waits for a short fit is woken) and see whole updates."""
    X, Y = batches(kind, np.float64, n_batches=1)[0]
    model = make(kind)
    stop = threading.Event()
    outputs = []

    def read():
        while not stop.is_set():
            outputs.append(model.predict(checked(X)))  # the checked path waits

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        for _ in range(300):
            model.partial_fit(X, Y, lr=0.01)
    finally:
        stop.set()
        for reader in readers:
            reader.join(timeout=60)
    assert not any(reader.is_alive() for reader in readers)
    assert outputs and all(np.isfinite(out).all() for out in outputs)
    assert model.__getstate__()["optimizer"]["step"] == 300


def test_numpy_backend_has_no_short_fit():
    X, Y = batches("LGM", np.float64, n_batches=1)[0]
    compiled, reference = make("LGM"), make("LGM", backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compiled.partial_fit(X, Y, lr=0.1)
        reference.partial_fit(X, Y, lr=0.1)
    for name, value in reference.params.items():
        np.testing.assert_allclose(compiled.params[name], value, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("y_shape", ["1d", "2d"])
def test_regressor_partial_fit_skips_no_check_it_needs(y_shape):
    """LGMRegressor.partial_fit on data scikit-learn's checks would take
    unchanged skips them, with the same bits as on lists (which take them);
    a NaN, other widths and other outputs still meet their errors."""
    sklearn = pytest.importorskip("lgmstm.sklearn")
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 4))
    y = rng.standard_normal(30) if y_shape == "1d" else rng.standard_normal((30, 2))
    fast = sklearn.LGMRegressor(hidden_layer_sizes=(5,), batch_size=None, solver="sgd",
                                momentum=0.0, learning_rate_init=0.05, random_state=0)
    slow = sklearn.LGMRegressor(hidden_layer_sizes=(5,), batch_size=None, solver="sgd",
                                momentum=0.0, learning_rate_init=0.05, random_state=0)
    for _ in range(3):
        fast.partial_fit(X, y)
        slow.partial_fit(X.tolist(), y.tolist())
    for name, value in slow.lgm_.params.items():
        np.testing.assert_array_equal(fast.lgm_.params[name], value, strict=True)
    np.testing.assert_array_equal(fast.loss_curve_, slow.loss_curve_, strict=True)
    assert fast.n_iter_ == slow.n_iter_ == 3
    spoiled = X.copy()
    spoiled[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fast.partial_fit(spoiled, y)
    with pytest.raises(ValueError, match="features"):
        fast.partial_fit(X[:, :3].copy(), y)
    with pytest.raises(ValueError, match="outputs"):
        fast.partial_fit(X, np.ones((30, 3)))
    assert fast.n_iter_ == 3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 33, 1000])
def test_all_finite_finds_every_kind_of_non_finite_value(dtype, n):
    """The short fit's scan of X, Y and the parameters (_finite.h: exponent
    bits, vectorised) against np.isfinite, at every position of a vector."""
    from lgmstm._train import all_finite

    info = np.finfo(dtype)
    values = [np.inf, -np.inf, np.nan, -np.nan, info.max, -info.max, info.tiny,
              info.smallest_subnormal, 0.0, -0.0]
    for value in values:
        for position in {0, n // 2, n - 1}:
            array = np.ones(n, dtype)
            array[position] = value
            assert all_finite([array]) == bool(np.isfinite(array).all()), (value, position)


@pytest.mark.parametrize("dtype", DTYPES)
def test_beyond_unit_finds_every_value_outside_the_tanh_range(dtype):
    """The scan behind the TargetRangeWarning (_finite.h) against NumPy:
    the nearest values past +-1, infinities and NaN count; +-1 does not."""
    from lgmstm._train import beyond_unit

    above = np.nextafter(dtype(1), dtype(2))
    for value in [1.0, -1.0, above, -above, np.inf, -np.inf, np.nan, 0.5, -0.0, 1e30]:
        for n in (1, 5, 33):
            array = np.zeros(n, dtype)
            array[n // 2] = value
            assert beyond_unit(array) == bool(np.any(~(np.abs(array) <= 1))), (value, n)
    assert beyond_unit(np.full((3, 4), 2, dtype)[:, ::2])  # a view goes to NumPy
