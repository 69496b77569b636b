"""STM: both backends, padding, working memory, clipping, persistence, bad
input, thread counts, and a real forecast."""
import numpy as np
import pytest

import lgmstm
from lgmstm import STM, kernels
from lgmstm.datasets import load_sunspots

TOLERANCE = {np.float32: 1e-4, np.float64: 1e-11}


def sequences(n_samples=9, n_steps=13, n_in=4, n_out=3, return_sequences=True, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_steps, n_in))
    shape = (n_samples, n_steps, n_out) if return_sequences else (n_samples, n_out)
    Y = rng.uniform(-0.8, 0.8, shape)
    lengths = rng.integers(0, n_steps + 1, n_samples)
    return X, Y, lengths


def twins(*args, **kwargs):
    """The same model on both backends."""
    return (STM(*args, backend="cython", seed=3, **kwargs),
            STM(*args, backend="numpy", seed=3, **kwargs))


def assert_params_close(a, b, tol):
    for name, value in a.params.items():
        np.testing.assert_allclose(value, b.params[name], rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
@pytest.mark.parametrize("output", ["tanh", "linear"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_backends_agree(dtype, return_sequences, output, with_lengths):
    X, Y, lengths = sequences(return_sequences=return_sequences)
    lengths = lengths if with_lengths else None
    tol = TOLERANCE[dtype]
    compiled, numpy = twins(4, 6, 3, output=output, return_sequences=return_sequences,
                            dtype=dtype)
    prediction = compiled.predict(X, lengths=lengths)
    assert prediction.dtype == dtype
    np.testing.assert_allclose(prediction, numpy.predict(X, lengths=lengths), rtol=tol, atol=tol)
    assert compiled.loss(X, Y, lengths=lengths) == pytest.approx(
        numpy.loss(X, Y, lengths=lengths), rel=tol)
    grads = compiled.gradients(X, Y, lengths=lengths)
    for name, grad in numpy.gradients(X, Y, lengths=lengths).items():
        assert grads[name].dtype == dtype
        np.testing.assert_allclose(grads[name], grad, rtol=tol, atol=tol, err_msg=name)
    for optimizer in ("sgd", "momentum", "adam"):
        compiled, numpy = twins(4, 6, 3, output=output, return_sequences=return_sequences,
                                dtype=dtype)
        settings = dict(epochs=4, lr=0.05, batch_size=4, optimizer=optimizer, clip_norm=0.5,
                        lengths=lengths, seed=0)
        np.testing.assert_allclose(compiled.fit(X, Y, **settings), numpy.fit(X, Y, **settings),
                                   rtol=10 * tol)
        assert_params_close(compiled, numpy, 10 * tol)


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
def test_gradients_match_finite_differences(backend, return_sequences):
    X, Y, lengths = sequences(4, 5, 2, 2, return_sequences)
    lengths[:] = [5, 3, 1, 0] if return_sequences else [5, 3, 1, 4]
    model = STM(2, 3, 2, output="tanh", return_sequences=return_sequences, seed=1,
                backend=backend)
    grads = model.gradients(X, Y, lengths=lengths)
    eps = 1e-6
    for name, param in zip(model.params, model._params):
        numeric = np.empty_like(param)
        for index in np.ndindex(param.shape):
            saved = param[index]
            param[index] = saved + eps
            plus = model.loss(X, Y, lengths=lengths)
            param[index] = saved - eps
            minus = model.loss(X, Y, lengths=lengths)
            param[index] = saved
            numeric[index] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-9, err_msg=name)


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
def test_padded_batch_equals_sequences_alone(backend, return_sequences):
    X, Y, lengths = sequences(5, 9, 3, 2, return_sequences, seed=4)
    lengths[:] = [9, 4, 1, 7, 2]
    model = STM(3, 5, 2, output="linear", return_sequences=return_sequences, seed=2,
                backend=backend)
    outputs = model.predict(X, lengths=lengths)
    grads = model.gradients(X, Y, lengths=lengths)
    # The batch loss averages over all valid outputs: each sequence's gradient
    # counts in proportion to its number of valid outputs.
    weights = lengths / lengths.sum() if return_sequences else np.full(5, 1 / 5)
    expected = {name: np.zeros_like(g) for name, g in grads.items()}
    for i, length in enumerate(lengths):
        alone_X = X[i:i + 1, :length]
        alone_Y = Y[i:i + 1, :length] if return_sequences else Y[i:i + 1]
        alone = model.predict(alone_X)
        if return_sequences:
            np.testing.assert_allclose(outputs[i, :length], alone[0], rtol=1e-12, atol=1e-14)
            assert not outputs[i, length:].any()
        else:
            np.testing.assert_allclose(outputs[i], alone[0], rtol=1e-12, atol=1e-14)
        for name, grad in model.gradients(alone_X, alone_Y).items():
            expected[name] += weights[i] * grad
    for name, grad in grads.items():
        np.testing.assert_allclose(grad, expected[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_padded_targets_are_ignored():
    X, Y, lengths = sequences(seed=5)
    model = STM(4, 6, 3, seed=0)
    noisy = Y.copy()
    noisy[np.arange(13) >= lengths[:, None]] = 1e6
    assert model.loss(X, noisy, lengths=lengths) == model.loss(X, Y, lengths=lengths)
    # Measured 0.547; a padded target of 1e6 taken into the loss would add ~1e11.
    assert model.fit(X, noisy, epochs=2, lr=0.1, lengths=lengths)[0] < 10


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
def test_stateful_halves_equal_one_call(backend, return_sequences):
    X, _, _ = sequences(3, 12, 2, 2, seed=6)
    whole = STM(2, 5, 2, return_sequences=return_sequences, seed=0, backend=backend)
    stream = STM(2, 5, 2, return_sequences=return_sequences, stateful=True, seed=0,
                 backend=backend)
    assert stream.state is None
    first = stream.predict(X[:, :5])
    second = stream.predict(X[:, 5:])
    expected = whole.predict(X)
    if return_sequences:
        np.testing.assert_allclose(np.concatenate([first, second], axis=1), expected,
                                   rtol=1e-13, atol=1e-15)
    else:
        np.testing.assert_allclose(second, expected, rtol=1e-13, atol=1e-15)
    # state is the final states, as a copy.
    H = kernels.rnn_forward(X, None, *(whole.params[k] for k in
                                             ("input_weight", "recurrent_weight", "bias")))
    state = stream.state
    np.testing.assert_allclose(state, H[:, -1], rtol=1e-13, atol=1e-15)
    kept = state.copy()
    state[...] = 0
    np.testing.assert_array_equal(stream.state, kept)
    # loss and gradients read the state but leave it.
    Y = np.zeros((3, 4, 2) if return_sequences else (3, 2))
    stream.loss(X[:, :4], Y)
    stream.gradients(X[:, :4], Y)
    np.testing.assert_array_equal(stream.state, kept)
    stream.reset_state()
    assert stream.state is None
    np.testing.assert_allclose(stream.predict(X[:, :5]), first, rtol=1e-13, atol=1e-15)


def test_stateful_fit_continues_the_stream():
    X, Y, _ = sequences(4, 10, 3, 2, seed=7)
    model = STM(3, 5, 2, stateful=True, seed=0)
    before = model.params
    model.fit(X[:, :6], Y[:, :6], epochs=1, lr=0.1)
    # The state is the first chunk's final states, from the forward pass
    # before the update (full batch: one update).
    H = kernels.rnn_forward(X[:, :6], None, before["input_weight"],
                                   before["recurrent_weight"], before["bias"])
    np.testing.assert_allclose(model.state, H[:, -1], rtol=1e-13, atol=1e-15)
    # The next chunk starts from that state: its gradient is not that of a
    # fresh start.
    fresh = STM(3, 5, 2, seed=0)
    fresh._params[:] = [p.copy() for p in model._params]
    streamed = model.gradients(X[:, 6:], Y[:, 6:])
    restarted = fresh.gradients(X[:, 6:], Y[:, 6:])
    assert not np.allclose(streamed["recurrent_weight"], restarted["recurrent_weight"])
    with pytest.raises(ValueError, match="reset_state"):
        model.predict(X[:3])


@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_clip_norm_bounds_the_update(backend):
    X, Y, _ = sequences(seed=8)
    Y *= 50  # a large loss, so that the gradient norm is well above the clip
    lr, clip = 0.1, 0.01
    plain = STM(4, 6, 3, output="linear", seed=0, backend=backend)
    norm = np.sqrt(sum(np.sum(g * g) for g in plain.gradients(X, Y).values()))
    assert norm > 100 * clip
    clipped = STM(4, 6, 3, output="linear", seed=0, backend=backend)
    before = clipped.params
    clipped.fit(X, Y, epochs=1, lr=lr, clip_norm=clip)
    step = {k: before[k] - v for k, v in clipped.params.items()}
    step_norm = np.sqrt(sum(np.sum(s * s) for s in step.values()))
    assert step_norm == pytest.approx(lr * clip, rel=1e-9)
    # Same direction as the unclipped gradient.
    grads = plain.gradients(X, Y)
    for name, s in step.items():
        np.testing.assert_allclose(s, lr * clip / norm * grads[name], rtol=1e-8, atol=1e-15)


def same_bits_on_1_2_3_threads(train):
    """Run train() (-> its history and parameters) on 1, 2 and 3 threads and
    assert the same bits; the last run's model."""
    saved = lgmstm.get_num_threads()
    results = []
    try:
        for n_threads in (1, 2, 3):
            lgmstm.set_num_threads(n_threads)
            model, history = train()
            results.append((history, *model.params.values()))
    finally:
        lgmstm.set_num_threads(saved)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    return model


def test_same_bits_for_any_thread_count():
    X, Y, lengths = sequences(150, 11, 5, 3, seed=9)

    def train():
        model = STM(5, 24, 3, seed=0)
        return model, model.fit(X, Y, epochs=3, lr=0.05, batch_size=100, optimizer="adam",
                                clip_norm=1.0, lengths=lengths, seed=1)
    same_bits_on_1_2_3_threads(train)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_forward_chunks_keep_bits_and_agree_with_numpy(dtype):
    """A batch of 64 sequences of 128 units, whose forward pass predict runs
    as one chunk, trains in the backward pass's two chunks (the packed
    time loop on AVX-512): the same bits on 1, 2 and 3 threads, and the
    NumPy backend's parameters."""
    from lgmstm import _stm

    X, Y, _ = sequences(64, 6, 8, 3, seed=4)
    X, Y = X.astype(dtype), Y.astype(dtype)
    sizes = np.array([8, 128, 3], dtype=np.intp)
    assert _stm._training_layout(64, 6, sizes, np.dtype(dtype).itemsize, True) is None  # row-major

    def train():
        model, _ = twins(8, 128, 3, dtype=dtype)
        return model, model.fit(X, Y, epochs=3, lr=0.05)
    model = same_bits_on_1_2_3_threads(train)
    _, reference = twins(8, 128, 3, dtype=dtype)
    reference.fit(X, Y, epochs=3, lr=0.05)
    assert_params_close(model, reference, 1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("return_sequences", [True, False])
def test_save_and_load(tmp_path, return_sequences):
    X, _, lengths = sequences(return_sequences=return_sequences)
    model = STM(4, 6, 3, output="linear", return_sequences=return_sequences, stateful=True,
                dtype=np.float32, seed=0)
    model.fit(X, model.predict(X) * 0.5, epochs=2, lr=0.1)
    path = tmp_path / "stm.npz"
    model.save(path)
    saved_state = model.state
    for backend in ("cython", "numpy"):
        loaded = lgmstm.load(path, backend=backend)
        assert isinstance(loaded, STM) and repr(loaded) == repr(model).replace(
            "'cython'", repr(backend))
        np.testing.assert_array_equal(loaded.state, saved_state, strict=True)
        for name, value in model.params.items():
            np.testing.assert_array_equal(loaded.params[name], value)
        loaded.reset_state()
        model.reset_state()
        np.testing.assert_allclose(loaded.predict(X, lengths=lengths),
                                   model.predict(X, lengths=lengths), rtol=1e-5, atol=1e-6)
    with np.load(path, allow_pickle=False) as data:
        assert str(data["kind"]) == "STM"
        assert int(data["config.n_hidden"]) == 6


def test_initialisation():
    model = STM(7, 12, 2, seed=0)
    params = model.params
    np.testing.assert_allclose(params["recurrent_weight"].T @ params["recurrent_weight"],
                               np.eye(12), atol=1e-12)
    limit = np.sqrt(6 / (7 + 12))
    assert np.abs(params["input_weight"]).max() <= limit
    assert not params["bias"].any() and not params["readout.bias"].any()
    assert np.array_equal(STM(7, 12, 2, seed=0).params["input_weight"], params["input_weight"])


def test_learns_sunspots_better_than_persistence():
    """One-month-ahead forecast of the monthly sunspot numbers.

    Trained on windows from the first 80% of the record; tested on the last
    20%, later in time and never seen in training. The model reads the whole
    record up to each forecast (its working memory carries the history), and
    must beat the persistence forecast (next month = this month).
    """
    sunspots, _ = load_sunspots()
    x = sunspots / 100.0
    split = int(0.8 * len(x))
    window, stride = 96, 12
    starts = np.arange(0, split - window, stride)
    X = np.stack([x[s:s + window] for s in starts])[..., None]
    Y = np.stack([x[s + 1:s + window + 1] for s in starts])[..., None]
    assert starts[-1] + window + 1 <= split  # every target lies before the test months

    model = STM(1, 8, 1, output="linear", seed=0)
    model.fit(X, Y, epochs=100, lr=0.01, batch_size=16, optimizer="adam", seed=0)

    # Feed the record in two chunks: a stateful model carries the history.
    stream = STM(1, 8, 1, output="linear", stateful=True)
    for name, value in model.params.items():
        stream._params[list(stream.params).index(name)][...] = value
    stream.predict(x[None, :split - 1, None])
    forecast = stream.predict(x[None, split - 1:-1, None])[0, :, 0]  # of x[split:]
    actual = x[split:]
    model_mse = np.mean((forecast - actual) ** 2) * 1e4
    persistence_mse = np.mean((x[split - 1:-1] - actual) ** 2) * 1e4
    print(f"\nsunspots, last 20% ({actual.size} months), one month ahead: "
          f"MSE model {model_mse:.1f}, persistence {persistence_mse:.1f} "
          f"(ratio {model_mse / persistence_mse:.3f})")
    # Measured 0.868 (MSE 334.1 against persistence's 384.8).
    assert model_mse < 0.95 * persistence_mse


BAD_INPUT = [
    (lambda m: m.predict(np.zeros((2, 3, 5))), ValueError, ["X", "n_in = 4", "(2, 3, 5)"]),
    (lambda m: m.predict(np.zeros((2, 4))), ValueError, ["X", "3-dimensional", "(2, 4)"]),
    (lambda m: m.predict(np.zeros((2, 3, 4)), lengths=[1, 4]), ValueError,
     ["lengths", "[0, 3]", "lengths[1] = 4"]),
    (lambda m: m.predict(np.zeros((2, 3, 4)), lengths=[1]), ValueError,
     ["lengths", "(2,)", "(1,)"]),
    (lambda m: m.predict(np.zeros((2, 3, 4)), lengths=[1.5, 2]), TypeError, ["lengths"]),
    (lambda m: m.loss(np.zeros((2, 3, 4)), np.zeros((2, 3, 2))), ValueError,
     ["Y", "(2, 3, 3)", "(2, 3, 2)"]),
    (lambda m: m.fit(np.zeros((2, 3, 4)), np.zeros((2, 3)), epochs=1, lr=0.1), ValueError,
     ["Y", "3-dimensional"]),
    (lambda m: m.fit(np.full((2, 3, 4), np.nan), np.zeros((2, 3, 3)), epochs=1, lr=0.1),
     ValueError, ["finite"]),
    (lambda m: m.fit(np.zeros((2, 3, 4)), np.zeros((2, 3, 3)), epochs=1, lr=0.1,
                     clip_norm=0), ValueError, ["clip_norm"]),
    (lambda m: m.fit(np.zeros((2, 3, 4)), np.zeros((2, 3, 3)), epochs=1, lr=0.1,
                     clip_norm="1"), TypeError, ["clip_norm"]),
    (lambda m: m.fit(np.zeros((0, 3, 4)), np.zeros((0, 3, 3)), epochs=1, lr=0.1),
     ValueError, ["at least one"]),
    (lambda m: m.predict(np.zeros((2, 3, 4), complex)), TypeError, ["X", "complex128"]),
    (lambda m: STM(4, 0, 3), ValueError, ["n_hidden", ">= 1"]),
    (lambda m: STM(4, 5, 3, return_sequences=1), TypeError, ["return_sequences"]),
    (lambda m: STM(4, 5, 3, stateful="yes"), TypeError, ["stateful"]),
    (lambda m: STM(4, 5, 3, output="relu"), ValueError, ["output"]),
]


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("call, error, words", BAD_INPUT, ids=[str(i) for i in range(len(BAD_INPUT))])
def test_bad_input(backend, call, error, words):
    model = STM(4, 5, 3, backend=backend)
    with pytest.raises(error) as info:
        call(model)
    for word in words:
        assert word in str(info.value)


def test_empty_and_zero_length_calls():
    model = STM(2, 3, 1, seed=0)
    assert model.predict(np.zeros((0, 4, 2))).shape == (0, 4, 1)
    assert model.predict(np.zeros((0, 4, 2)), lengths=[]).shape == (0, 4, 1)
    assert model.predict(np.zeros((3, 0, 2))).shape == (3, 0, 1)
    assert model.loss(np.zeros((2, 3, 2)), np.ones((2, 3)), lengths=[0, 0]) == 0.0
    last = STM(2, 3, 1, return_sequences=False, seed=0)
    # At length 0 the output reads the initial state.
    np.testing.assert_array_equal(last.predict(np.ones((2, 3, 2)), lengths=[0, 0]),
                                  np.tanh(np.zeros((2, 1))))


@pytest.mark.parametrize("entry, value", [("n_hidden", np.asarray(6.0)),
                                          ("n_out", np.asarray([3, 3])),
                                          ("stateful", np.asarray(1)),
                                          ("output", np.asarray("relu"))])
def test_load_refuses_a_bad_config(tmp_path, entry, value):
    path = tmp_path / "stm.npz"
    STM(4, 6, 3, seed=0).save(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    arrays[f"config.{entry}"] = value
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=entry):
        lgmstm.load(path)


@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last"])
def test_backends_agree_on_stateful_minibatch_training(return_sequences):
    X, Y, lengths = sequences(return_sequences=return_sequences, seed=10)
    compiled, numpy = twins(4, 6, 3, return_sequences=return_sequences, stateful=True)
    for model in (compiled, numpy):
        model.predict(X[:, :5])  # some history for every stream
        model.fit(X, Y, epochs=3, lr=0.05, batch_size=4, optimizer="momentum",
                  lengths=lengths, seed=2)
    np.testing.assert_allclose(compiled.state, numpy.state, rtol=1e-11, atol=1e-13)
    assert_params_close(compiled, numpy, 1e-11)


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("copier", ["pickle", "deepcopy"])
def test_pickle_and_deepcopy_keep_everything(backend, copier):
    import copy
    import pickle

    rng = np.random.default_rng(5)
    X = rng.standard_normal((6, 7, 3))
    Y = rng.uniform(-0.5, 0.5, (6, 7, 2))
    model = lgmstm.STM(3, 8, 2, stateful=True, dtype=np.float32, seed=2, backend=backend)
    model.fit(X, Y, epochs=3, lr=0.05, seed=1)
    twin = pickle.loads(pickle.dumps(model)) if copier == "pickle" else copy.deepcopy(model)
    assert repr(twin) == repr(model)
    for name, value in model.params.items():
        np.testing.assert_array_equal(twin.params[name], value, err_msg=name)
    np.testing.assert_array_equal(twin.state, model.state)
    np.testing.assert_array_equal(twin.history_, model.history_)
    # Same state, parameters and generator: the two go on identically.
    np.testing.assert_array_equal(twin.predict(X), model.predict(X))
    np.testing.assert_array_equal(twin.fit(X, Y, epochs=2, lr=0.05),
                                  model.fit(X, Y, epochs=2, lr=0.05))
    twin.reset_state()
    assert model.state is not None  # the copy shares nothing


@pytest.mark.parametrize("kind", ["LGM", "STM"])
def test_models_that_share_a_generator_share_it_after_a_pickle(kind):
    """An ensemble made with one generator (each member draws its own
    shuffles from it, in turn) pickled together loads with one generator
    again: the members go on drawing different shuffles, as the originals
    do, not one sequence each."""
    import pickle

    rng = np.random.default_rng(3)
    shared = np.random.default_rng(7)
    if kind == "LGM":
        members = [lgmstm.LGM([3, 4, 2], seed=shared) for _ in range(3)]
        X, Y = rng.standard_normal((9, 3)), rng.uniform(-0.5, 0.5, (9, 2))
    else:
        members = [lgmstm.STM(3, 4, 2, seed=shared) for _ in range(3)]
        X, Y = rng.standard_normal((9, 5, 3)), rng.uniform(-0.5, 0.5, (9, 5, 2))
    copies = pickle.loads(pickle.dumps(members))
    assert all(copy._rng is copies[0]._rng for copy in copies)
    assert copies[0]._rng is not shared
    for original, copy in zip(members, copies):
        np.testing.assert_array_equal(copy.fit(X, Y, epochs=2, lr=0.05, batch_size=4),
                                      original.fit(X, Y, epochs=2, lr=0.05, batch_size=4))
