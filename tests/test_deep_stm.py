"""Stacked and bidirectional STMs with a readout of tanh layers (issue 15):
the NumPy composition (lgmstm.reference.deep_*) against finite differences,
the STM's backends against it, states, files, bad input, and torch's nn.RNN."""
import pickle

import numpy as np
import pytest

import lgmstm
from lgmstm import STM, reference
from lgmstm._training import SampleClock

DTYPES = [np.float32, np.float64]


def random_network(rng, n_in, sizes, n_out, bidirectional, readout, dtype):
    """(layers, readout) as reference.deep_forward takes them, small random values."""
    layers = []
    width = n_in
    for n_hidden in sizes:
        directions = [tuple(rng.uniform(-0.6, 0.6, shape).astype(dtype)
                            for shape in ((width, n_hidden), (n_hidden, n_hidden), (n_hidden,)))
                      for _ in range(2 if bidirectional else 1)]
        layers.append(directions)
        width = n_hidden * len(directions)
    dense = []
    for n in [*readout, n_out]:
        dense.append((rng.uniform(-0.6, 0.6, (width, n)).astype(dtype),
                      rng.uniform(-0.3, 0.3, n).astype(dtype)))
        width = n
    return layers, dense


def flat(layers, dense):
    return [p for directions in layers for direction in directions for p in direction] + \
        [p for layer in dense for p in layer]


VARIANTS = [  # (sizes, bidirectional, readout, return_sequences)
    ([3, 4], False, [], True),
    ([3, 4], True, [], True),
    ([3, 2, 4], True, [5], False),
    ([4], True, [3, 2], True),
    ([3], False, [5], False),
    ([2, 3], False, [4], False),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("output", ["tanh", "linear"])
def test_reference_gradients_match_finite_differences(variant, output):
    sizes, bidirectional, readout, return_sequences = variant
    rng = np.random.default_rng(len(sizes) + 10 * bidirectional + len(readout))
    n_samples, n_steps, n_in, n_out = 4, 5, 3, 2
    layers, dense = random_network(rng, n_in, sizes, n_out, bidirectional, readout, np.float64)
    X = rng.standard_normal((n_samples, n_steps, n_in))
    lengths = np.array([5, 0, 3, 1], np.intp)
    h0s = None if bidirectional else [rng.standard_normal((n_samples, n)) * 0.5 for n in sizes]
    shape = (n_samples, n_steps, n_out) if return_sequences else (n_samples, n_out)
    Y = rng.standard_normal(shape) * 0.5
    if return_sequences:
        Y[np.arange(n_steps) >= lengths[:, None]] = 0

    def loss():
        return reference.deep_loss_gradients(X, Y, layers, dense, h0s, lengths, output,
                                             return_sequences)[0]

    _, grads, finals = reference.deep_loss_gradients(X, Y, layers, dense, h0s, lengths,
                                                     output, return_sequences)
    params = flat(layers, dense)
    assert [g.shape for g in grads] == [p.shape for p in params]
    for param, grad in zip(params, grads):
        numeric = np.empty_like(param)
        for index in np.ndindex(param.shape):
            saved = param[index]
            param[index] = saved + 1e-6
            up = loss()
            param[index] = saved - 1e-6
            down = loss()
            param[index] = saved
            numeric[index] = (up - down) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)
    assert [f.shape for f in finals] == [(n_samples, n) for n in sizes]
    if h0s is not None:  # length 0: the final state is the initial one
        for h0, final in zip(h0s, finals):
            np.testing.assert_array_equal(final[1], h0[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_float32_follows_float64(dtype):
    rng = np.random.default_rng(3)
    layers, dense = random_network(rng, 3, [4, 3], 2, True, [3], np.float64)
    X = rng.standard_normal((3, 6, 3))
    Y = rng.standard_normal((3, 6, 2)) * 0.5
    lengths = np.array([6, 2, 0], np.intp)
    Y[np.arange(6) >= lengths[:, None]] = 0
    expected = reference.deep_loss_gradients(X, Y, layers, dense, None, lengths, "tanh", True)
    cast = [[tuple(p.astype(dtype) for p in d) for d in layer] for layer in layers]
    cast_dense = [tuple(p.astype(dtype) for p in layer) for layer in dense]
    loss, grads, finals = reference.deep_loss_gradients(
        X.astype(dtype), Y.astype(dtype), cast, cast_dense, None, lengths, "tanh", True)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    assert abs(loss - expected[0]) <= tolerance * max(1.0, expected[0])
    for got, want in zip(grads + finals, expected[1] + expected[2]):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tolerance * 10, atol=tolerance)


def test_reverse_direction_starts_at_each_last_valid_step():
    """A backward direction alone on a padded sequence is the forward pass on
    the reversed valid steps."""
    rng = np.random.default_rng(5)
    Wx, Wh, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 3)) * 0.4, np.zeros(3)
    X = rng.standard_normal((1, 6, 2))
    lengths = np.array([4], np.intp)
    layers = [[(Wx, Wh, b), (np.zeros((2, 3)), np.zeros((3, 3)), np.zeros(3))]]
    dense = [(np.vstack([np.zeros((3, 3)), np.eye(3)]), np.zeros(3))]
    alone = np.empty((1, 4, 3))
    reference.recurrent_forward(np.ascontiguousarray(X[:, 3::-1]), None, Wx, Wh, b,
                                np.array([4], np.intp), alone)
    layers[0] = layers[0][::-1]  # the reverse direction runs (Wx, Wh, b), the forward none
    outputs, kept = reference.deep_forward(X, layers, dense, None, lengths, False, True)
    np.testing.assert_allclose(outputs[0, :4], alone[0, ::-1], rtol=1e-14)
    np.testing.assert_array_equal(outputs[0, 4:], 0)
    np.testing.assert_allclose(kept.finals[0][1][0], alone[0, -1], rtol=1e-14)


# -- the STM's deep variants ----------------------------------------------------------

N_SAMPLES, N_STEPS, N_IN, N_OUT = 5, 7, 3, 2
LENGTHS = np.array([7, 0, 4, 7, 1], np.intp)  # full, empty, partial
ARCHITECTURES = {  # name: (n_hidden, keywords)
    "stacked": ([4, 3], {}),
    "stacked3-readout": ([3, 4, 2], {"readout": [5]}),
    "bidirectional": (4, {"bidirectional": True}),
    "stacked-bidirectional": ([4, 3], {"bidirectional": True}),
    "one-layer-list": ([4], {}),
    "readout": (4, {"readout": [6, 3]}),
    "all": ([3, 2], {"bidirectional": True, "readout": [4]}),
}


def make(name, dtype=np.float64, backend="cython", **keywords):
    n_hidden, extra = ARCHITECTURES[name]
    return STM(N_IN, n_hidden, N_OUT, dtype=dtype, seed=11, backend=backend,
               **{**extra, **keywords})


def data(dtype, return_sequences=True, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N_SAMPLES, N_STEPS, N_IN)).astype(dtype)
    shape = (N_SAMPLES, N_STEPS, N_OUT) if return_sequences else (N_SAMPLES, N_OUT)
    Y = rng.uniform(-0.8, 0.8, shape).astype(dtype)
    return X, Y


def network_of(model):
    """The model's parameters as reference.deep_forward takes them."""
    params = list(model.params.values())
    n_directions = 2 if model.bidirectional else 1
    n_layers = len(model.n_hidden) if isinstance(model.n_hidden, tuple) else 1
    layers = [[tuple(params.pop(0) for _ in range(3)) for _ in range(n_directions)]
              for _ in range(n_layers)]
    return layers, [(params[j], params[j + 1]) for j in range(0, len(params), 2)]


def tolerance(dtype):
    return {"rtol": 2e-4, "atol": 2e-5} if dtype == np.float32 else {"rtol": 1e-10,
                                                                      "atol": 1e-12}


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_predict_loss_and_gradients_follow_the_reference(name, return_sequences, backend,
                                                          dtype):
    model = make(name, dtype, backend, return_sequences=return_sequences, output="linear")
    X, Y = data(dtype, return_sequences)
    if return_sequences:
        Y[np.arange(N_STEPS) >= LENGTHS[:, None]] = 0
    layers, dense = network_of(model)
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    cast = [[tuple(p.astype(np.float64) for p in d) for d in layer] for layer in layers]
    cast_dense = [tuple(p.astype(np.float64) for p in layer) for layer in dense]
    outputs, _ = reference.deep_forward(X64, cast, cast_dense, None, LENGTHS, False,
                                        return_sequences)
    loss, grads, _ = reference.deep_loss_gradients(X64, Y64, cast, cast_dense, None, LENGTHS,
                                                   "linear", return_sequences)
    got = model.predict(X, lengths=LENGTHS)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, outputs, **tolerance(dtype))
    assert abs(model.loss(X, Y, lengths=LENGTHS) - loss) <= tolerance(dtype)["rtol"] * loss
    named = model.gradients(X, Y, lengths=LENGTHS)
    assert list(named) == list(model.params)
    for (key, grad), want in zip(named.items(), grads):
        assert grad.dtype == dtype, key
        np.testing.assert_allclose(grad, want, err_msg=key, **tolerance(dtype))


@pytest.mark.parametrize("name", ["stacked-bidirectional", "all", "stacked3-readout"])
def test_compiled_gradients_match_finite_differences_of_the_loss(name):
    model = make(name, output="tanh")
    X, Y = data(np.float64)
    grads = model.gradients(X, Y, lengths=LENGTHS)
    params = model.params
    for key in ("layer0.input_weight", "layer1.recurrent_weight", "readout.weight",
                "reverse0.bias", "readout0.weight"):
        if key not in params:
            continue
        numeric = np.empty_like(params[key])
        for index in np.ndindex(numeric.shape):
            values = []
            for delta in (1e-6, -1e-6):
                moved = dict(params)
                moved[key] = params[key].copy()
                moved[key][index] += delta
                model.load_params(moved)
                values.append(model.loss(X, Y, lengths=LENGTHS))
            numeric[index] = (values[0] - values[1]) / 2e-6
        model.load_params(params)
        np.testing.assert_allclose(grads[key], numeric, rtol=1e-5, atol=1e-9, err_msg=key)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_fit_on_both_backends_agrees(name, dtype):
    X, Y = data(dtype)
    results = []
    for backend in ("cython", "numpy"):
        model = make(name, dtype, backend)
        history = model.fit(X, Y, epochs=4, lr=0.05, batch_size=2, optimizer="adam",
                            lengths=LENGTHS, seed=3)
        results.append((history, model.params))
    (history, params), (ref_history, ref_params) = results
    np.testing.assert_allclose(history, ref_history, **tolerance(dtype))
    assert history[-1] < history[0]
    for key in params:
        np.testing.assert_allclose(params[key], ref_params[key], err_msg=key,
                                   **tolerance(dtype))


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("kind", [dict(n_hidden=[3, 2]), dict(n_hidden=3, bidirectional=True),
                                  dict(n_hidden=3, readout=[4]), dict(n_hidden=3)])
def test_nan_past_the_lengths_is_never_read(backend, kind):
    """predict, loss and gradients with NaN in the padded steps: those of
    zero padding, for either backend (the reference's backward pass once
    carried the NaN through a product with 0)."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((3, 4, 2)), rng.uniform(-0.5, 0.5, (3, 4, 2))
    lengths = np.array([4, 1, 2])
    padded = np.arange(4) >= lengths[:, None]
    X[padded] = 0.0
    model = lgmstm.STM(2, kind["n_hidden"], 2, seed=0, backend=backend,
                       **{k: v for k, v in kind.items() if k != "n_hidden"})
    clean = model.gradients(X, Y, lengths=lengths)
    X_nan = X.copy()
    X_nan[padded] = np.nan
    np.testing.assert_array_equal(model.predict(X_nan, lengths=lengths),
                                  model.predict(X, lengths=lengths))
    assert model.loss(X_nan, Y, lengths=lengths) == model.loss(X, Y, lengths=lengths)
    for name, value in model.gradients(X_nan, Y, lengths=lengths).items():
        np.testing.assert_array_equal(value, clean[name], err_msg=name)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_padded_sequences_equal_each_alone(name, dtype):
    model = make(name, dtype)
    X, _ = data(dtype)
    outputs = model.predict(X, lengths=LENGTHS)
    for i, length in enumerate(LENGTHS):
        if length == 0:
            continue
        alone = model.predict(X[i:i + 1, :length])
        np.testing.assert_allclose(outputs[i, :length], alone[0], **tolerance(dtype))
        assert not outputs[i, length:].any()


@pytest.mark.parametrize("name", ["stacked", "stacked3-readout", "one-layer-list", "readout"])
def test_stateful_halves_equal_the_whole(name, dtype):
    X, _ = data(dtype)
    whole, final = make(name, dtype).predict(X, return_state=True)
    model = make(name, dtype, stateful=True)
    first = model.predict(X[:, :3])
    second = model.predict(X[:, 3:])
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole,
                               **tolerance(dtype))
    held = model.state
    assert type(held) is type(final)
    for got, want in zip(*((h if isinstance(h, list) else [h]) for h in (held, final))):
        np.testing.assert_allclose(got, want, **tolerance(dtype))


@pytest.mark.parametrize("name", ["stacked", "stacked3-readout"])
def test_step_continues_predict_and_initial_state_per_layer(name):
    X, _ = data(np.float64)
    model = make(name)
    whole, final = model.predict(X, return_state=True)
    assert isinstance(final, list)
    assert [f.shape for f in final] == [(N_SAMPLES, n) for n in model.n_hidden]
    steps = np.stack([model.step(X[:, t]) for t in range(N_STEPS)], axis=1)
    np.testing.assert_allclose(steps, whole, rtol=1e-12, atol=1e-14)
    for got, want in zip(model.state, final):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    # continue from the final states given back
    head, middle = model.predict(X[:, :4], return_state=True)
    tail = model.predict(X[:, 4:], initial_state=middle)
    np.testing.assert_allclose(np.concatenate([head, tail], axis=1), whole, rtol=1e-12,
                               atol=1e-14)
    model.reset_state([1])
    assert all(not layer[1].any() and layer[0].any() for layer in model.state)
    model.reset_state()
    assert model.state is None


@pytest.mark.parametrize("name", ["stacked", "readout"])
def test_stateful_fit_is_truncated_bptt_per_layer(name):
    """A stateful deep fit starts every epoch from the held states and keeps
    the final states of the last epoch, per layer, as the NumPy backend does;
    one epoch on the whole batch holds predict's final states from the same
    start and the parameters before the update."""
    X, Y = data(np.float64)
    models = [make(name, backend=backend, stateful=True) for backend in ("cython", "numpy")]
    for model in models:
        start = model.predict(X, return_state=True)[1]  # some working memory
        model.fit(X, Y, epochs=3, lr=0.1, batch_size=2, seed=1)
    states = [m.state if isinstance(m.state, list) else [m.state] for m in models]
    for got, want in zip(*states):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    for key, value in models[0].params.items():
        np.testing.assert_allclose(value, models[1].params[key], rtol=1e-10, atol=1e-12)
    model = make(name, stateful=True)
    _, start = model.predict(X, return_state=True)  # held by the model
    _, expected = make(name).predict(X, initial_state=start, return_state=True)
    model.fit(X, Y, epochs=1, lr=0.1)
    held = model.state if isinstance(model.state, list) else [model.state]
    for got, want in zip(held, expected if isinstance(expected, list) else [expected]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("readout", [[], [24]])
def test_same_bits_for_any_thread_count(readout, bidirectional, dtype, threads):
    """Large enough that the passes fork (several 64-row chunks, megaflops);
    uneven lengths: one direction trains row-major too, not in panels."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((200, 12, 16)).astype(dtype)
    Y = rng.uniform(-0.8, 0.8, (200, 12, 3)).astype(dtype)
    lengths = rng.integers(0, 13, 200)
    results = []
    for n in threads.counts:
        with threads(n):
            model = STM(16, [48, 40], 3, bidirectional=bidirectional, readout=readout,
                        dtype=dtype, seed=2)
            history = model.fit(X, Y, epochs=2, lr=0.05, batch_size=150, lengths=lengths,
                                seed=2)
            results.append([history, model.predict(X, lengths=lengths),
                            *model.gradients(X, Y, lengths=lengths).values(),
                            *model.params.values()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_save_load_pickle_and_load_params_keep_every_variant(name, tmp_path):
    X, Y = data(np.float64)
    model = make(name, stateful=not ARCHITECTURES[name][1].get("bidirectional", False))
    model.fit(X, Y, epochs=2, lr=0.1, optimizer="momentum", batch_size=2)
    path = tmp_path / "deep.npz"
    model.save(path)
    pickled = pickle.dumps(model)
    for copy in (lgmstm.load(path), pickle.loads(pickled)):
        assert repr(copy) == repr(model)
        assert list(copy.params) == list(model.params)
        for key, value in model.params.items():
            assert np.array_equal(copy.params[key], value)
        held, kept = model.state, copy.state
        assert type(held) is type(kept)
        if held is not None:
            for a, b in zip(*((h if isinstance(h, list) else [h]) for h in (held, kept))):
                assert np.array_equal(a, b)
        original = pickle.loads(pickled)
        np.testing.assert_array_equal(copy.predict(X), original.predict(X))
        # training goes on the same from the copy (the optimizer's state kept)
        expected = original.fit(X, Y, epochs=1, lr=0.1, optimizer="momentum", batch_size=2,
                                warm_start=True)
        assert np.array_equal(copy.fit(X, Y, epochs=1, lr=0.1, optimizer="momentum",
                                       batch_size=2, warm_start=True), expected)
    other = make(name)
    other.load_params(model.params)
    model.stateful = False
    np.testing.assert_array_equal(other.predict(X), model.predict(X))


def test_load_checks_a_deep_file_against_its_architecture(tmp_path):
    model = make("all")
    path = tmp_path / "deep.npz"
    model.save(path)
    with np.load(path) as stored:
        arrays = dict(stored)
    arrays["config.readout"] = np.asarray([5], np.int64)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match="do not fit"):
        lgmstm.load(bad)
    arrays["config.readout"] = np.asarray([4], np.int64)
    arrays["config.bidirectional"] = np.asarray(False)
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match="do not fit"):
        lgmstm.load(bad)
    # a stateful stacked STM: other layer sizes, or one layer's state missing
    stacked = make("stacked", stateful=True)
    stacked.predict(data(np.float64)[0])  # holds a state per layer
    stacked.save(path)
    with np.load(path) as stored:
        arrays = dict(stored)
    assert {"memory.state0", "memory.state1"} <= set(arrays)
    for n_hidden in ([3, 4], [4, 3, 3], [4], 4):
        np.savez(bad, **dict(arrays, **{"config.n_hidden": np.asarray(n_hidden, np.int64)}))
        with pytest.raises(ValueError, match=r"do not fit n_in=3, n_hidden=.* n_out=2"):
            lgmstm.load(bad)
    del arrays["memory.state1"]
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match=r"missing memory\.state1 \(a stacked STM saves one "
                                         r"state per layer\)"):
        lgmstm.load(bad)


def test_a_single_layer_file_has_no_deep_entries(tmp_path):
    model = STM(N_IN, 4, N_OUT, seed=1)
    model.save(tmp_path / "one.npz")
    with np.load(tmp_path / "one.npz") as stored:
        assert not any("readout" in key or "bidirectional" in key
                       for key in stored if key.startswith("config."))
    assert list(model.params) == ["input_weight", "recurrent_weight", "bias",
                                  "readout.weight", "readout.bias"]


def test_parameter_names_and_shapes_in_order():
    """layer{k}.* then reverse{k}.* per layer, the readout's hidden layers
    readout{j}.*, the output layer readout.*; reverse.* beside an int
    n_hidden's unprefixed names."""
    model = STM(3, [4, 2], 2, bidirectional=True, readout=[5, 6])
    assert [(key, value.shape) for key, value in model.params.items()] == [
        ("layer0.input_weight", (3, 4)), ("layer0.recurrent_weight", (4, 4)),
        ("layer0.bias", (4,)),
        ("reverse0.input_weight", (3, 4)), ("reverse0.recurrent_weight", (4, 4)),
        ("reverse0.bias", (4,)),
        ("layer1.input_weight", (8, 2)), ("layer1.recurrent_weight", (2, 2)),
        ("layer1.bias", (2,)),
        ("reverse1.input_weight", (8, 2)), ("reverse1.recurrent_weight", (2, 2)),
        ("reverse1.bias", (2,)),
        ("readout0.weight", (4, 5)), ("readout0.bias", (5,)),
        ("readout1.weight", (5, 6)), ("readout1.bias", (6,)),
        ("readout.weight", (6, 2)), ("readout.bias", (2,)),
    ]
    model = STM(3, 4, 2, bidirectional=True)
    assert [(key, value.shape) for key, value in model.params.items()] == [
        ("input_weight", (3, 4)), ("recurrent_weight", (4, 4)), ("bias", (4,)),
        ("reverse.input_weight", (3, 4)), ("reverse.recurrent_weight", (4, 4)),
        ("reverse.bias", (4,)),
        ("readout.weight", (8, 2)), ("readout.bias", (2,)),
    ]


@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_an_empty_readout_is_the_single_layer_stm(lengths, dtype):
    """readout=[] is the one dense readout: the same parameters from the same
    seed, the same predictions and the same training, bit for bit."""
    X, Y = data(dtype)
    models = [STM(N_IN, 4, N_OUT, dtype=dtype, seed=7, **keywords)
              for keywords in ({}, {"readout": []})]
    assert repr(models[1]) == repr(models[0]) and models[1].readout == ()
    results = []
    for model in models:
        before = [model.predict(X, lengths=lengths), *model.params.values()]
        history = model.fit(X, Y, epochs=3, lr=0.05, batch_size=2, optimizer="adam",
                            lengths=lengths, seed=4)
        results.append([*before, history, model.predict(X, lengths=lengths),
                        *model.params.values()])
    assert list(models[1].params) == list(models[0].params)
    for got, want in zip(*results):
        np.testing.assert_array_equal(got, want, strict=True)


def test_recurrent_weights_are_orthogonal_per_layer_and_direction():
    model = make("all")
    for key, value in model.params.items():
        if key.endswith("recurrent_weight"):
            np.testing.assert_allclose(value @ value.T, np.eye(len(value)), atol=1e-12)


# -- bad input --------------------------------------------------------------------


@pytest.mark.parametrize("n_hidden, error, words", [
    ([], ValueError, "n_hidden must hold at least one"),
    ([4, 0], ValueError, r"n_hidden\[1\] must be >= 1"),
    ([4, 2.5], TypeError, r"n_hidden\[1\] must be an integer"),
    (np.zeros(2), TypeError, "n_hidden must be a list of integers"),
])
def test_bad_layer_sizes(n_hidden, error, words):
    with pytest.raises(error, match=words):
        STM(N_IN, n_hidden, N_OUT)


@pytest.mark.parametrize("readout, error, words", [
    ([0], ValueError, r"readout\[0\] must be >= 1"),
    (3, TypeError, "readout must be a list of integers"),
    (["3"], TypeError, r"readout\[0\] must be an integer"),
])
def test_bad_readout(readout, error, words):
    with pytest.raises(error, match=words):
        STM(N_IN, 4, N_OUT, readout=readout)


def test_bidirectional_refuses_what_needs_a_future():
    with pytest.raises(ValueError, match="stateful=True cannot be used with bidirectional"):
        STM(N_IN, [4], N_OUT, bidirectional=True, stateful=True)
    model = make("bidirectional")
    with pytest.raises(ValueError, match="stateful=True cannot be used with bidirectional"):
        model.stateful = True
    assert not model.stateful
    with pytest.raises(ValueError, match="step cannot be used with bidirectional"):
        model.step(np.zeros((2, N_IN)))
    X, _ = data(np.float64)
    with pytest.raises(ValueError, match="initial_state cannot be used with bidirectional"):
        model.predict(X, initial_state=np.zeros((N_SAMPLES, 4)))
    with pytest.raises(ValueError, match="return_state=True cannot be used with"):
        model.predict(X, return_state=True)
    with pytest.raises(TypeError, match="bidirectional must be True or False"):
        STM(N_IN, 4, N_OUT, bidirectional=1)


def test_a_state_of_the_wrong_number_of_layers_is_refused():
    model = make("stacked")
    X, _ = data(np.float64)
    with pytest.raises(ValueError, match="one state per layer: 2 arrays"):
        model.predict(X, initial_state=[np.zeros((N_SAMPLES, 4))])
    with pytest.raises(TypeError, match="must be a list of one array per layer"):
        model.predict(X, initial_state=np.zeros((N_SAMPLES, 4)))
    with pytest.raises(ValueError, match=r"initial_state\[1\] must have shape"):
        model.predict(X, initial_state=[np.zeros((N_SAMPLES, 4)), np.zeros((N_SAMPLES, 4))])


def test_new_attributes_are_read_only():
    model = make("all")
    assert model.bidirectional is True and model.readout == (4,) and model.n_hidden == (3, 2)
    for name, value in (("bidirectional", False), ("readout", ()), ("n_hidden", 3)):
        with pytest.raises(AttributeError, match="read-only"):
            setattr(model, name, value)


# -- interop: torch.nn.RNN(num_layers, bidirectional) + Linear ------------------------


def torch_copy(model):
    """torch.nn.RNN + Linear holding a stacked (equal sizes), bidirectional
    STM's weights, float64; the hidden-to-hidden biases are 0 and frozen
    (the STM has one bias per direction)."""
    torch = pytest.importorskip("torch")
    params = model.params
    sizes = model.n_hidden
    rnn = torch.nn.RNN(model.n_in, sizes[0], num_layers=len(sizes), nonlinearity="tanh",
                       batch_first=True, bidirectional=model.bidirectional, dtype=torch.float64)
    with torch.no_grad():
        for k in range(len(sizes)):
            for prefix, suffix in (("layer", ""), ("reverse", "_reverse"))[
                    :2 if model.bidirectional else 1]:
                getattr(rnn, f"weight_ih_l{k}{suffix}").copy_(
                    torch.from_numpy(params[f"{prefix}{k}.input_weight"].T.copy()))
                getattr(rnn, f"weight_hh_l{k}{suffix}").copy_(
                    torch.from_numpy(params[f"{prefix}{k}.recurrent_weight"].T.copy()))
                getattr(rnn, f"bias_ih_l{k}{suffix}").copy_(
                    torch.from_numpy(params[f"{prefix}{k}.bias"]))
                bias_hh = getattr(rnn, f"bias_hh_l{k}{suffix}")
                bias_hh.zero_()
                bias_hh.requires_grad_(False)
    linear = torch.nn.Linear(params["readout.weight"].shape[0], model.n_out,
                             dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(params["readout.weight"].T.copy()))
        linear.bias.copy_(torch.from_numpy(params["readout.bias"]))
    return rnn, linear


def torch_outputs(model, rnn, linear, X, lengths):
    torch = pytest.importorskip("torch")
    inputs = torch.from_numpy(X)
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        inputs, torch.from_numpy(lengths.astype(np.int64)), batch_first=True,
        enforce_sorted=False)
    states, last = rnn(packed)
    if model.return_sequences:
        states, _ = torch.nn.utils.rnn.pad_packed_sequence(states, batch_first=True,
                                                           total_length=X.shape[1])
        valid = torch.from_numpy((np.arange(X.shape[1]) < lengths[:, None])[..., None])
        outputs = linear(states) * valid
    else:  # the top layer's final states, forward then reverse
        top = last[-2:] if model.bidirectional else last[-1:]
        outputs = linear(torch.cat(list(top), dim=1))
    return torch.tanh(outputs) if model.output == "tanh" else outputs


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("output", ["tanh", "linear"])
def test_torch_rnn_with_the_same_weights_computes_and_trains_the_same(return_sequences,
                                                                      output):
    torch = pytest.importorskip("torch")
    X, Y = data(np.float64, return_sequences)
    lengths = np.array([7, 3, 4, 7, 1], np.intp)  # torch packs no empty sequence
    if return_sequences:
        Y[np.arange(N_STEPS) >= lengths[:, None]] = 0
    model = STM(N_IN, [4, 4, 4], N_OUT, bidirectional=True, output=output,
                return_sequences=return_sequences, seed=5)
    rnn, linear = torch_copy(model)
    got = torch_outputs(model, rnn, linear, X, lengths).detach().numpy()
    np.testing.assert_allclose(model.predict(X, lengths=lengths), got, rtol=0, atol=1e-11)
    trained = [p for p in (*rnn.parameters(), *linear.parameters()) if p.requires_grad]
    sgd = torch.optim.SGD(trained, lr=0.2)
    n_valid = int(lengths.sum()) if return_sequences else N_SAMPLES
    target = torch.from_numpy(Y)
    for _ in range(3):
        sgd.zero_grad()
        outputs = torch_outputs(model, rnn, linear, X, lengths)
        loss = ((outputs - target) ** 2).sum() / (n_valid * N_OUT)
        loss.backward()
        sgd.step()
    history = model.fit(X, Y, epochs=3, lr=0.2, lengths=lengths)
    assert history[0] > history[-1]
    for copied, trained_module in zip(torch_copy(model), (rnn, linear)):
        for name, value in trained_module.state_dict().items():
            np.testing.assert_allclose(copied.state_dict()[name].numpy(), value.numpy(),
                                       rtol=0, atol=1e-11, err_msg=name)
    got = torch_outputs(model, rnn, linear, X, lengths).detach().numpy()
    np.testing.assert_allclose(model.predict(X, lengths=lengths), got, rtol=0, atol=1e-11)


def random_architectures(count, seed):
    """(constructor arguments, X, Y, lengths, batch_size) of small random deep
    STMs and data, no steps and empty sequences among them."""
    rng = np.random.default_rng(seed)
    for trial in range(count):
        n_in, n_out = int(rng.integers(1, 7)), int(rng.integers(1, 4))
        sizes = [int(n) for n in rng.integers(1, 9, int(rng.integers(1, 4)))]
        bidirectional, return_sequences = bool(rng.integers(2)), bool(rng.integers(2))
        readout = [int(n) for n in rng.integers(1, 6, int(rng.integers(0, 3)))]
        n_samples, n_steps = int(rng.integers(1, 12)), int(rng.integers(0, 9))
        X = rng.standard_normal((n_samples, n_steps, n_in))
        Y = rng.uniform(-0.5, 0.5, (n_samples, n_steps, n_out) if return_sequences
                        else (n_samples, n_out))
        lengths = rng.integers(0, n_steps + 1, n_samples)
        arguments = dict(n_in=n_in, n_hidden=sizes, n_out=n_out, bidirectional=bidirectional,
                         readout=readout, return_sequences=return_sequences, seed=trial,
                         stateful=not bidirectional and bool(rng.integers(2)))
        yield arguments, X, Y, lengths, int(rng.integers(1, n_samples + 1))


@pytest.mark.parametrize("case", list(random_architectures(40, 1)),
                         ids=lambda case: f"{case[0]['n_hidden']}-{case[1].shape[1]}steps")
def test_random_architectures_train_in_compiled_code_as_in_numpy(case, dtype):
    arguments, X, Y, lengths, batch_size = case
    models = [STM(**arguments, output="linear", dtype=dtype, backend=backend)
              for backend in ("cython", "numpy")]
    results = []
    for model in models:
        if model.stateful:
            model.predict(X)  # a working memory to start from
        gradients = model.gradients(X, Y, lengths=lengths)
        history = model.fit(X, Y, epochs=3, lr=0.05, batch_size=batch_size, lengths=lengths,
                            seed=1, optimizer="adam")
        results.append([history, *gradients.values(), *model.params.values()])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, **tolerance(dtype))


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("name", ["stacked-bidirectional", "all"])
def test_pieces_at_multiples_of_the_row_quantum_have_the_whole_batchs_bits(
        name, return_sequences, threads):
    """lgmstm.dask.predict cuts blocks at multiples of row_quantum: the
    pieces' predictions are the whole batch's, bit for bit (wide layers:
    the passes' BLAS path)."""
    pytest.importorskip("dask")
    from lgmstm import dask as lgmstm_dask
    n_hidden, extra = ARCHITECTURES[name]
    n_hidden = [48] * len(n_hidden) if isinstance(n_hidden, list) else 48
    model = STM(6, n_hidden, 3, return_sequences=return_sequences, seed=0, **extra)
    quantum = lgmstm_dask.row_quantum(model, 9)
    assert quantum % 64 == 0
    rng = np.random.default_rng(1)
    n_samples = 2 * quantum + 29
    X = rng.standard_normal((n_samples, 9, 6))
    lengths = rng.integers(0, 10, n_samples)
    bounds = [0, quantum, 2 * quantum, n_samples]
    with threads(2):
        whole = model.predict(X, lengths=lengths)
        joined = np.concatenate([model.predict(X[a:b], lengths=lengths[a:b])
                                 for a, b in zip(bounds, bounds[1:])])
    np.testing.assert_array_equal(joined, whole)


def test_a_deep_stm_takes_the_drivers_learning_rate_schedules():
    # The schedule is the training driver's: the compiled deep program
    # follows it as the NumPy composition does, and it changes the training.
    rng = np.random.default_rng(5)
    X = rng.normal(size=(20, 6, 3))
    Y = np.tanh(X[..., :2])
    histories = {}
    # SampleClock: the estimators' private schedule (scikit-learn's invscaling).
    schedules = ("constant", "invscaling", "adaptive", SampleClock(30))
    for backend in ("cython", "numpy"):
        for schedule in schedules:
            model = lgmstm.STM(3, [5, 4], 2, readout=[3], seed=0, backend=backend)
            histories[backend, schedule] = model.fit(X, Y, epochs=6, lr=0.05,
                                                     lr_schedule=schedule, patience=1)
    for schedule in schedules:
        np.testing.assert_allclose(histories["cython", schedule], histories["numpy", schedule],
                                   rtol=1e-10)
    for schedule in ("invscaling", SampleClock(30)):
        assert not np.allclose(histories["cython", "constant"], histories["cython", schedule])


# -- the panel layout (small one-direction networks, full-length batches) -------------

PANEL_NAMES = ["stacked", "stacked3-readout", "one-layer-list", "readout"]


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("name", PANEL_NAMES)
def test_panel_layout_gradients_and_states_follow_the_reference(name, return_sequences,
                                                                 dtype):
    """Full-length batches of a small one-direction network train in the
    panel layout: its loss, gradients and final states (from initial states)
    are the NumPy reference's."""
    model = make(name, dtype, return_sequences=return_sequences, output="tanh")
    assert model._network.program.training_layout(N_SAMPLES, N_STEPS) is not None
    X, Y = data(dtype, return_sequences)
    lengths = np.full(N_SAMPLES, N_STEPS, np.intp)
    _, h0 = model.predict(X[:, ::-1].copy(), return_state=True)  # some working memory
    layers, dense = network_of(model)
    h0_list = h0 if isinstance(h0, list) else [h0]
    cast = [[tuple(p.astype(np.float64) for p in d) for d in layer] for layer in layers]
    cast_dense = [tuple(p.astype(np.float64) for p in layer) for layer in dense]
    loss, grads, finals = reference.deep_loss_gradients(
        X.astype(np.float64), Y.astype(np.float64), cast, cast_dense,
        [h.astype(np.float64) for h in h0_list], lengths, "tanh", return_sequences)
    got_loss, got_grads = model._network.gradients(X, Y, h0, lengths)
    assert abs(got_loss - loss) <= tolerance(dtype)["rtol"] * loss
    for key, grad, want in zip(model.params, got_grads, grads):
        assert grad.dtype == dtype, key
        np.testing.assert_allclose(grad, want, err_msg=key, **tolerance(dtype))
    # one epoch on the whole batch, held states from h0, keeps predict's final states
    stateful = make(name, dtype, return_sequences=return_sequences, output="tanh",
                    stateful=True)
    stateful.predict(X[:, ::-1].copy())  # holds h0
    stateful.fit(X, Y, epochs=1, lr=0.1)
    for got, want in zip(*((s if isinstance(s, list) else [s])
                           for s in (stateful.state, finals))):
        np.testing.assert_allclose(got, want, **tolerance(dtype))


@pytest.mark.parametrize("name", PANEL_NAMES)
def test_panel_layout_fit_agrees_with_numpy_and_keeps_bits_over_threads(name, dtype,
                                                                         threads):
    """Shuffled mini-batches of full-length sequences (the panel layout, in
    several sample groups; a shorter last batch) train as the NumPy backend
    does, with the same bits on any number of threads."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((150, 40, N_IN)).astype(dtype)
    Y = rng.uniform(-0.8, 0.8, (150, 40, N_OUT)).astype(dtype)
    runs = []
    for n in threads.counts:
        with threads(n):
            model = make(name, dtype)
            n_groups, _ = model._network.program.training_layout(128, 40)
            assert n_groups > 1
            history = model.fit(X, Y, epochs=3, lr=0.05, batch_size=128, seed=2,
                                optimizer="adam")
            runs.append([history, *model.params.values()])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)
    reference_model = make(name, dtype, backend="numpy")
    history = reference_model.fit(X, Y, epochs=3, lr=0.05, batch_size=128, seed=2,
                                  optimizer="adam")
    np.testing.assert_allclose(runs[0][0], history, **tolerance(dtype))
    for got, want in zip(runs[0][1:], reference_model.params.values()):
        np.testing.assert_allclose(got, want, **tolerance(dtype))


def test_gradients_beside_each_other_in_the_panel_layout_keep_their_bits():
    """Callers of gradients may run side by side (the model's readers): each
    call has a panel workspace of its own."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(6)
    model = make("stacked3-readout")
    batches = [rng.standard_normal((400, 30, N_IN)) for _ in range(4)]
    targets = [rng.uniform(-0.8, 0.8, (400, 30, N_OUT)) for _ in range(4)]
    assert model._network.program.training_layout(400, 30) is not None
    alone = [model.gradients(X, Y) for X, Y in zip(batches, targets)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: model.gradients(batches[i % 4], targets[i % 4]),
                                 range(16)))
    for i, grads in enumerate(together):
        for key, value in grads.items():
            assert np.array_equal(value, alone[i % 4][key]), key


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("lengths", [None, LENGTHS])
def test_ten_layers_follow_the_reference(bidirectional, lengths):
    """More layers than the program plans on its stack (it allocates), in
    both layouts (full-length sequences of one direction: the panels)."""
    X, Y = data(np.float64)
    if lengths is not None:
        Y[np.arange(N_STEPS) >= lengths[:, None]] = 0
    models = [STM(N_IN, [3] * 10, N_OUT, bidirectional=bidirectional, seed=1, backend=backend)
              for backend in ("cython", "numpy")]
    got, want = (m.gradients(X, Y, lengths=lengths) for m in models)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-13, err_msg=key)


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("hidden", [[5, 4], [48, 40, 3]], ids=["panel-size", "blas-size"])
@pytest.mark.parametrize("output", ["tanh", "softmax"])
def test_compiled_stacked_predict_is_the_composed_passes(dtype, return_sequences, hidden,
                                                         output):
    """DeepNetwork.predict_stacked composes the compiled passes in one call:
    the bits of reference.deep_forward over the same passes, padded and
    empty sequences, initial states and a readout of two layers included."""
    from lgmstm import _deep

    model = STM(3, hidden, 4, readout=[6], output=output, return_sequences=return_sequences,
                dtype=dtype, seed=2)
    network = model._network
    rng = np.random.default_rng(8)
    X = rng.standard_normal((9, 7, 3)).astype(dtype)
    lengths = np.array([7, 3, 0, 7, 1, 6, 7, 2, 7], np.intp)
    X[np.arange(7) >= lengths[:, None]] = 0
    h0 = [rng.uniform(-0.5, 0.5, (9, size)).astype(dtype) for size in hidden]
    for initial in (None, h0):
        outputs, finals = network.predict(X, initial, lengths)
        layers, readout = network._network()
        expected, kept = reference.deep_forward(X, layers, readout, initial, lengths,
                                                output == "tanh", return_sequences,
                                                _deep.COMPILED_PASSES, steps_apart=True)
        if output == "softmax":
            expected = reference.output_function(output, expected)
            if return_sequences:
                expected[np.arange(7) >= lengths[:, None]] = 0
        np.testing.assert_array_equal(outputs, expected, strict=True)
        for got, want in zip(finals, kept.finals):
            np.testing.assert_array_equal(got, want[0], strict=True)
