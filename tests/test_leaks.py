"""Repeated calls leave resident memory flat.

20,000 calls of every kernel (small shapes), of the model methods, and of
calls that are refused (in Python or inside the compiled module) must not
grow the resident set by more than 2 MiB after a warm-up. A leak of one
small result array per call would add over 20 MiB.

Run with -s to see the figures.
"""
from __future__ import annotations

import gc

import numpy as np
import pytest

from api_table import (BACKENDS, DIMS, KERNELS, MODELS, UNDER_ASAN, call, make_arrays,
                       model_data, rss_bytes)

pytestmark = pytest.mark.skipif(UNDER_ASAN, reason="AddressSanitizer's allocator holds memory")

CALLS = 20_000
ALLOWED_GROWTH = 2 * 2**20


def assert_flat(label, run, calls=CALLS, warm_up=None, over=None):
    """run() `calls` times after warm_up() (run() calls // 10 times):
    the resident set grows by less than ALLOWED_GROWTH."""
    if warm_up is None:
        for _ in range(calls // 10):  # warm-up: caches, pools, arenas
            run()
    else:
        warm_up()
    gc.collect()
    before = rss_bytes()
    for _ in range(calls):
        run()
    gc.collect()
    after = rss_bytes()
    print(f"\n{label}: RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB "
          f"({(after - before) / 2**10:+.0f} KiB over {over or f'{calls} calls'})")
    assert after - before < ALLOWED_GROWTH, f"{label} grew by {(after - before) / 2**20:.1f} MiB"


def _refused(run):
    def wrapped():
        try:
            run()
        except (ValueError, TypeError):
            return
        raise AssertionError("the call was not refused")
    return wrapped


SMALL = dict(DIMS, n=8, i=6, o=5, t=3, h=4)


@pytest.mark.parametrize("module", BACKENDS)
@pytest.mark.parametrize("kernel", KERNELS, ids=str)
def test_kernel_calls_do_not_leak(kernel, module):
    arrays = make_arrays(kernel, SMALL, np.dtype(np.float64), np.random.default_rng(0))
    assert_flat(f"{module}.{kernel}", lambda: call(BACKENDS[module], kernel, arrays))


@pytest.mark.parametrize("kernel", [k for k in KERNELS if k.out], ids=str)
def test_kernel_calls_with_out_do_not_leak(kernel):
    arrays = make_arrays(kernel, SMALL, np.dtype(np.float32), np.random.default_rng(0))
    out = call(BACKENDS["kernels"], kernel, arrays)
    assert_flat(f"kernels.{kernel}(out=)", lambda: call(BACKENDS["kernels"], kernel, arrays,
                                                          out=out))


def _error_cases(kernel):
    arrays = make_arrays(kernel, SMALL, np.dtype(np.float64), np.random.default_rng(0))
    first, second = list(arrays)[:2]
    yield "shape", dict(arrays, **{second: arrays[second][:-1]}), {}
    yield "dtype", dict(arrays, **{first: arrays[first].astype(np.float32)}), {}
    yield "type", dict(arrays, **{first: None}), {}
    if kernel.out:
        out = call(BACKENDS["kernels"], kernel, arrays)
        out.flags.writeable = False
        yield "out", arrays, {"out": out}


@pytest.mark.parametrize("kernel", KERNELS, ids=str)
def test_refused_kernel_calls_do_not_leak(kernel):
    for label, arrays, keywords in _error_cases(kernel):
        assert_flat(f"kernels.{kernel} refused ({label})", _refused(
            lambda: call(BACKENDS["kernels"], kernel, arrays, **keywords)))


def test_refused_compiled_calls_do_not_leak():
    """Errors raised inside the compiled module (buffer checks of its typed
    memoryviews), past the Python validation."""
    from lgmstm import _dense
    X = np.asfortranarray(np.ones((8, 6)))
    W, b, out = np.ones((6, 5)), np.ones(5), np.empty((8, 5))
    assert_flat("_dense.forward refused (Fortran X)",
                _refused(lambda: _dense.forward(X, W, b, out, True, 1)))


@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("model", MODELS, ids=str)
def test_model_calls_do_not_leak(model, backend):
    X, Y = model_data(model, 8)
    instance = model.make(seed=0, backend=backend)
    assert_flat(f"{model}({backend}).predict", lambda: instance.predict(X))
    assert_flat(f"{model}({backend}).gradients", lambda: instance.gradients(X, Y))
    assert_flat(f"{model}({backend}).fit(epochs=1)",
                lambda: instance.fit(X, Y, epochs=1, lr=1e-3), CALLS // 10)
    assert_flat(f"{model}({backend}).predict refused",
                _refused(lambda: instance.predict(X[..., :-1])))


# The deep STM's two training paths (issue 15): a bidirectional network with
# a readout trains row-major; a small one-direction stack, on full-length
# sequences, in the panel layout.
DEEP_STMS = {
    "bidirectional-readout-row-major": ({"n_hidden": [12, 10], "bidirectional": True,
                                         "readout": [8]}, False),
    "stacked-panels": ({"n_hidden": [12, 10]}, True),
}


@pytest.mark.parametrize("name", DEEP_STMS)
def test_deep_stm_fits_keep_memory_flat_over_epochs(name, dtype):
    """A fit of 500 epochs (4 mini-batches each) leaves the resident set
    where one of 20 epochs left it: nothing kept per epoch or batch (a leak
    of one batch's states, 16 x 20 x 12 values, would be over 2 MiB)."""
    import lgmstm

    keywords, full_length = DEEP_STMS[name]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 20, 6)).astype(dtype)
    Y = rng.uniform(-0.8, 0.8, (64, 20, 3)).astype(dtype)
    lengths = None if full_length else rng.integers(0, 21, 64)
    model = lgmstm.STM(6, n_out=3, dtype=dtype, seed=0, **keywords)
    in_panels = model._network.program.training_layout(16, 20) is not None
    assert in_panels == full_length

    def fit(epochs):
        model.fit(X, Y, epochs=epochs, lr=1e-3, batch_size=16, lengths=lengths, seed=1)

    assert_flat(f"STM({name}, {dtype}).fit", lambda: fit(500), calls=1,
                warm_up=lambda: fit(20), over="500 epochs after 20")
