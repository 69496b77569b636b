"""Weight decay: the loss gains weight_decay / 2 * sum(W**2) over the
weights (not the biases), its gradient weight_decay * W; against the
NumPy reference and finite differences. And the new training arguments
(optimizer settings, weight_decay, the LGM's clip_norm) through the
compiled paths: the same bits for 1, 2 and 3 threads, and the same bits
from the short fit (lgmstm._train.Program.fit_ready) as from the checked
path.
"""
import numpy as np
import pytest

import lgmstm
from test_short_fit import assert_same_model, checked, refuse_checked_path

DECAY = 0.3


def lgm(backend="cython", dtype=np.float64, sizes=(5, 7, 3), seed=2):
    return lgmstm.LGM(list(sizes), output="linear", dtype=dtype, seed=seed, backend=backend)


def stm(backend="cython", dtype=np.float64, sizes=(3, 6, 2), seed=2, **kwargs):
    return lgmstm.STM(*sizes, output="linear", dtype=dtype, seed=seed, backend=backend,
                      **kwargs)


def data(kind, dtype=np.float64, n_samples=13, seed=0, sizes=None, n_steps=4):
    rng = np.random.default_rng(seed)
    if kind == "LGM":
        n_in, n_out = (5, 3) if sizes is None else (sizes[0], sizes[-1])
        return (rng.uniform(-1, 1, (n_samples, n_in)).astype(dtype),
                rng.uniform(-0.8, 0.8, (n_samples, n_out)).astype(dtype))
    n_in, n_out = (3, 2) if sizes is None else (sizes[0], sizes[-1])
    return (rng.uniform(-1, 1, (n_samples, n_steps, n_in)).astype(dtype),
            rng.uniform(-0.8, 0.8, (n_samples, n_steps, n_out)).astype(dtype))


MAKE = {"LGM": lgm, "STM": stm}


def is_weight(name):
    return name.endswith("weight")  # layer0.weight, input_weight, readout.weight, ...


@pytest.mark.parametrize("kind", ["LGM", "STM"])
@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_gradient_is_the_references_plus_decay_times_weight(kind, backend, dtype, assert_close):
    model = MAKE[kind](backend, dtype)
    reference = MAKE[kind]("numpy", dtype)
    X, Y = data(kind, dtype)
    plain = reference.gradients(X, Y)
    decayed = model.gradients(X, Y, weight_decay=DECAY)
    params = model.params
    assert sum(map(is_weight, params)) == (2 if kind == "LGM" else 3)
    for name, grad in decayed.items():
        expected = plain[name] + dtype.type(DECAY) * params[name] if is_weight(name) \
            else plain[name]
        assert_close(grad, expected, err_msg=name)
    penalty = DECAY / 2 * sum(float(np.vdot(p, p)) for n, p in params.items() if is_weight(n))
    assert model.loss(X, Y, weight_decay=DECAY) == pytest.approx(
        reference.loss(X, Y) + penalty, rel=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("kind", ["LGM", "STM"])
@pytest.mark.parametrize("backend", ["cython", "numpy"])
def test_gradient_with_decay_against_finite_differences(kind, backend):
    model = MAKE[kind](backend)
    X, Y = data(kind)
    grads = model.gradients(X, Y, weight_decay=DECAY)
    params = model.params
    h = 1e-6
    for name, value in params.items():
        for index in list(np.ndindex(value.shape))[:6]:
            moved = {}
            for sign in (1, -1):
                shifted = dict(params)
                shifted[name] = value.copy()
                shifted[name][index] += sign * h
                model.load_params(shifted)
                moved[sign] = model.loss(X, Y, weight_decay=DECAY)
            model.load_params(params)
            numeric = (moved[1] - moved[-1]) / (2 * h)
            assert grads[name][index] == pytest.approx(numeric, rel=1e-6, abs=1e-8), \
                (name, index)


@pytest.mark.parametrize("kind", ["LGM", "STM"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_compiled_training_with_decay_matches_the_reference(kind, optimizer, dtype,
                                                            assert_close):
    """Mini-batches in a fixed order, every new argument at once; the
    backends differ in summation order only."""
    settings = dict(momentum=0.6, nesterov=optimizer == "momentum", beta1=0.7, beta2=0.95,
                    eps=1e-6, weight_decay=0.05, clip_norm=0.5)
    X, Y = data(kind, dtype, n_samples=20)
    models = [MAKE[kind](backend, dtype) for backend in ("cython", "numpy")]
    for model in models:
        model.fit(X, Y, epochs=3, lr=0.05, batch_size=8, shuffle=False, optimizer=optimizer,
                  **settings)
    compiled, reference = models
    for name, value in reference.params.items():
        assert_close(compiled.params[name], value, err_msg=name)


# -- the same bits for any number of threads ----------------------------------------

# (kind, sizes, n_samples): problems whose batches (half the samples) are
# past MIN_PARALLEL_WORK flops per region (csrc/lgmstm/_parallel.pxd), below
# which every setting runs one thread; the STM's sequences have 10 steps.
THREADED_CASES = {
    "lgm-blas": ("LGM", (128, 160, 16), 600),  # row-major with BLAS
    "lgm-panel": ("LGM", (16, 64, 10), 4000),  # the panel layout, two sample groups
    "lgm-deep": ("LGM", (130, 70, 40, 3), 517),  # three layers, panels, two groups
    "stm-panel": ("STM", (6, 32, 10), 256),    # the panel layout, two sequence groups
}


def threaded_fit(case, optimizer="adam", dtype=np.float64):
    """Two epochs of fit and one of partial_fit on the case's problem in
    batches of half its samples, with every optimizer setting, weight
    decay and clipping on."""
    kind, sizes, n_samples = THREADED_CASES[case]
    settings = dict(momentum=0.6, nesterov=optimizer == "momentum", beta1=0.7, beta2=0.95,
                    eps=1e-6, weight_decay=0.01, clip_norm=1.0)
    X, Y = data(kind, dtype, n_samples=n_samples, sizes=sizes, n_steps=10)
    model = MAKE[kind](dtype=dtype, sizes=sizes)
    model.fit(X, Y, epochs=2, lr=0.01, batch_size=n_samples // 2 + 1, optimizer=optimizer,
              seed=3, **settings)
    model.partial_fit(X, Y, lr=0.01, optimizer=optimizer, **settings)
    return model


def test_threaded_cases_take_each_layout():
    from lgmstm import _lgm, _stm

    def layout(case, itemsize):
        kind, sizes, n_samples = THREADED_CASES[case]
        if kind == "LGM":
            return _lgm._training_layout(n_samples // 2 + 1, np.array(sizes, np.intp), itemsize)
        return _stm._training_layout(n_samples // 2 + 1, 10, np.array(sizes, np.intp),
                                     itemsize, True)

    for itemsize in (4, 8):
        assert layout("lgm-blas", itemsize) is None
        assert layout("lgm-panel", itemsize)[0] == 2
        assert layout("lgm-deep", itemsize)[0] == 2
        assert layout("stm-panel", itemsize)[0] == 2


@pytest.mark.parametrize("case", THREADED_CASES)
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
def test_same_bits_for_1_2_3_threads(threads, case, optimizer, dtype):
    results = {}
    for n in (1, 2, 3):
        with threads(n):
            results[n] = threaded_fit(case, optimizer, dtype)
    for n in (2, 3):
        assert_same_model(results[n], results[1])


@pytest.mark.parametrize("case", THREADED_CASES)
def test_threaded_cases_start_a_second_thread(case, starts_a_second_thread):
    assert starts_a_second_thread("test_weight_decay", f"threaded_fit({case!r})")


# -- the short fit and the checked path -------------------------------------------

SHORT_SETTINGS = {
    "sgd-decay": ("sgd", dict(weight_decay=0.1)),
    "sgd-clip": ("sgd", dict(clip_norm=0.1)),
    "nesterov": ("momentum", dict(momentum=0.5, nesterov=True, weight_decay=0.05)),
    "adam": ("adam", dict(beta1=0.7, beta2=0.9, eps=1e-4, weight_decay=0.05, clip_norm=0.5)),
}


@pytest.mark.parametrize("kind", ["LGM", "STM"])
@pytest.mark.parametrize("case", SHORT_SETTINGS)
@pytest.mark.parametrize("batch_size", [None, 5])
def test_short_fit_gives_the_checked_paths_bits(monkeypatch, kind, case, batch_size, dtype):
    """partial_fit and fit(epochs=1) on C-ordered ndarrays (the short fit,
    which must then run: the checked path is made to fail) against the
    same calls on Fortran-ordered copies (the checked path)."""
    optimizer, settings = SHORT_SETTINGS[case]
    batches = [data(kind, dtype, seed=seed) for seed in range(3)]
    arguments = dict(lr=0.05, batch_size=batch_size, optimizer=optimizer, **settings)
    slow = MAKE[kind](dtype=dtype)
    slow.fit(*map(checked, batches[0]), epochs=1, **arguments)
    for X, Y in batches[1:]:
        slow.partial_fit(checked(X), checked(Y), **arguments)
    fast = MAKE[kind](dtype=dtype)
    with monkeypatch.context() as patch:
        refuse_checked_path(patch)
        fast.fit(*batches[0], epochs=1, **arguments)
        for X, Y in batches[1:]:
            fast.partial_fit(X, Y, **arguments)
    assert_same_model(fast, slow)
    assert fast.__getstate__()["optimizer"]["settings"] == \
        slow.__getstate__()["optimizer"]["settings"]


@pytest.mark.parametrize("kind", ["LGM", "STM"])
def test_short_fit_follows_changed_settings(monkeypatch, kind):
    """The short fit keeps its run between calls: a call with other
    settings, or another weight_decay, must not reuse the last ones."""
    batches = [data(kind, seed=seed) for seed in range(4)]
    calls = [dict(optimizer="momentum"), dict(optimizer="momentum", nesterov=True),
             dict(optimizer="momentum", nesterov=True, weight_decay=0.2),
             dict(optimizer="momentum", momentum=0.3, weight_decay=0.2)]
    slow, fast = MAKE[kind](), MAKE[kind]()
    for (X, Y), call in zip(batches, calls):
        slow.partial_fit(checked(X), checked(Y), lr=0.05, **call)
        with monkeypatch.context() as patch:
            refuse_checked_path(patch)
            fast.partial_fit(X, Y, lr=0.05, **call)
        assert_same_model(fast, slow)


@pytest.mark.parametrize("kind", ["LGM", "STM"])
def test_short_fit_declines_what_the_checked_path_refuses(kind):
    """Bad settings on data the short fit takes reach the checked path's errors."""
    X, Y = data(kind)
    model = MAKE[kind]()
    with pytest.raises(ValueError, match="beta1"):
        model.partial_fit(X, Y, lr=0.1, optimizer="adam", beta1=1.0)
    with pytest.raises(ValueError, match="nesterov"):
        model.fit(X, Y, epochs=1, lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="weight_decay"):
        model.partial_fit(X, Y, lr=0.1, weight_decay="0.1")
    assert model.__getstate__()["optimizer"] is None
