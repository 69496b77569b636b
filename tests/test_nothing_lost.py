"""Nothing a trained model holds is lost or corrupted.

- Divergence stops fit with a DivergenceWarning and keeps the parameters
  of the last finite epoch.
- Ctrl-C (SIGINT) stops a fit of hours promptly with TrainingInterrupted,
  the model holding exactly the finished epochs.
- save is atomic: a crash mid-save leaves the old file and no temporary.
- load refuses every malformed file with ValueError and never unpickles.
"""
from __future__ import annotations

import io
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import zipfile

import numpy as np
import pytest

import lgmstm
from lgmstm import benchmarks
from api_table import DIMS, MODEL_BACKENDS, MODELS, limited_address_space, model_data

CASES = [pytest.param(m, b, id=f"{m}-{b}") for m in MODELS for b in MODEL_BACKENDS]


def assert_same_params(model, other):
    for name, value in model.params.items():
        np.testing.assert_array_equal(value, other.params[name], err_msg=name)


# -- divergence --------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
@pytest.mark.parametrize("model, backend", CASES)
def test_divergence_keeps_last_finite_epoch(model, backend, optimizer):
    X, Y = model_data(model, 40)
    X *= 3
    Y *= 5
    instance = model.make(seed=1, backend=backend, output="linear")
    with pytest.warns(lgmstm.DivergenceWarning):
        losses = instance.fit(X, Y, epochs=500, lr=5.0, batch_size=8, shuffle=False,
                              optimizer=optimizer)
    finished = len(losses)
    assert 0 < finished < 500, "the test needs a divergence after a few epochs"
    assert np.isfinite(losses).all()
    np.testing.assert_array_equal(instance.history_, losses)
    for name, value in instance.params.items():
        assert np.isfinite(value).all(), name
    fresh = model.make(seed=1, backend=backend, output="linear")
    with warnings.catch_warnings():
        warnings.simplefilter("error", lgmstm.DivergenceWarning)
        again = fresh.fit(X, Y, epochs=finished, lr=5.0, batch_size=8, shuffle=False,
                          optimizer=optimizer)
    np.testing.assert_array_equal(again, losses)
    assert_same_params(instance, fresh)
    assert np.isfinite(instance.predict(X)).all()


# -- Ctrl-C ---------------------------------------------------------------------

def _interrupted_fit(instance, X, Y, after):
    """fit for hours, SIGINT after `after` s; (exception, seconds from signal
    to raise). The bench's helper, which catches any KeyboardInterrupt (a
    plain one would end the whole test session)."""
    exc, latency = benchmarks.interrupted_fit(instance, X, Y, after, lr=0.01)
    if exc is None:
        pytest.fail("fit ran to the end: make it longer")
    return exc, latency


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals reach the main thread only")
@pytest.mark.parametrize("model, backend", CASES)
def test_ctrl_c_stops_fit_consistently(model, backend):
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    X, Y = model_data(model, 200)
    instance = model.make(seed=2, backend=backend)
    exc, latency = _interrupted_fit(instance, X, Y, after=0.4)
    assert isinstance(exc, lgmstm.TrainingInterrupted), repr(exc)
    # fit promises about 0.1 s; the bound only tells stopping from running on for
    # hours, with room for a busy machine: this is no speed test
    assert latency < 30, f"fit took {latency:.2f} s to stop"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finished = len(instance.history_)
    assert finished > 0
    np.testing.assert_array_equal(exc.history, instance.history_)
    fresh = model.make(seed=2, backend=backend)
    np.testing.assert_array_equal(fresh.fit(X, Y, epochs=finished, lr=0.01), instance.history_)
    assert_same_params(instance, fresh)
    # the model is usable: training goes on from where it stopped
    instance.fit(X, Y, epochs=2, lr=0.01)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals reach the main thread only")
@pytest.mark.parametrize("model, backend", CASES)
def test_ctrl_c_stops_fit_after_the_epoch_it_arrives_in(model, backend):
    """The same promise without a clock: with a callback every epoch is one
    call of the compiled code, so a SIGINT raised in epoch 3's callback ends
    the fit there, 4 epochs kept, however fast or busy the machine."""
    X, Y = model_data(model, 200)
    instance = model.make(seed=2, backend=backend)

    def callback(epoch, loss):
        if epoch == 3:
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(lgmstm.TrainingInterrupted) as interrupted:
        instance.fit(X, Y, epochs=1000, lr=0.01, callback=callback)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert len(instance.history_) == 4
    np.testing.assert_array_equal(interrupted.value.history, instance.history_)
    fresh = model.make(seed=2, backend=backend)
    np.testing.assert_array_equal(fresh.fit(X, Y, epochs=4, lr=0.01), instance.history_)
    assert_same_params(instance, fresh)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals reach the main thread only")
def test_ctrl_c_interrupts_a_callback_that_waits():
    """Ctrl-C while the callback waits (on a lock, a queue, input) stops the
    wait at once, and the fit with the epochs done: the callback never
    returns (it once ran on to its end, Ctrl-C deferred like an epoch's)."""
    X, Y = model_data(MODELS[0], 200)
    instance = MODELS[0].make(seed=2)
    never, returned = threading.Event(), []

    def callback(epoch, loss):
        if epoch == 1:
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            never.wait(30)
            returned.append(epoch)

    with pytest.raises(lgmstm.TrainingInterrupted) as interrupted:
        instance.fit(X, Y, epochs=5, lr=0.01, callback=callback)
    assert returned == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert len(instance.history_) == 2
    np.testing.assert_array_equal(interrupted.value.history, instance.history_)
    fresh = MODELS[0].make(seed=2)
    np.testing.assert_array_equal(fresh.fit(X, Y, epochs=2, lr=0.01), instance.history_)
    assert_same_params(instance, fresh)


# -- atomic save ----------------------------------------------------------------

def _garbage_then(error):
    def fake(file, real, **arrays):
        file.write(b"PK\x03\x04 half a model")
        raise error("simulated crash")
    return fake


def _half_then_disk_full(file, real, **arrays):
    buffer = io.BytesIO()
    real(buffer, **arrays)
    file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    raise OSError("disk full")


CRASHES = {"garbage-OSError": (_garbage_then(OSError), OSError),
           "garbage-KeyboardInterrupt": (_garbage_then(KeyboardInterrupt), KeyboardInterrupt),
           "half-OSError": (_half_then_disk_full, OSError)}


@pytest.mark.parametrize("crash", CRASHES)
@pytest.mark.parametrize("model", MODELS, ids=str)
def test_crash_mid_save_keeps_old_file(model, crash, tmp_path, monkeypatch):
    target = tmp_path / "model.npz"
    old = model.make(seed=3)
    old.save(target)
    before = target.read_bytes()
    fake, error = CRASHES[crash]
    real_savez = np.savez
    monkeypatch.setattr(np, "savez", lambda file, **arrays: fake(file, real=real_savez,
                                                                  **arrays))
    with pytest.raises(error):
        model.make(seed=4).save(target)
    with pytest.raises(error):
        model.make(seed=4).save(tmp_path / "new.npz")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["model.npz"]
    assert target.read_bytes() == before
    assert_same_params(lgmstm.load(target), old)


@pytest.mark.parametrize("model", MODELS, ids=str)
def test_killed_mid_save_keeps_old_file(model, tmp_path):
    """A process killed (SIGKILL) in the middle of save: nothing can clean up,
    but the target still holds the old model; only a hidden temporary is left."""
    target = tmp_path / "model.npz"
    old = model.make(seed=3)
    old.save(target)
    before = target.read_bytes()
    started = tmp_path / "started"
    script = textwrap.dedent(f"""
        import time, numpy as np, lgmstm, api_table
        def stuck(file, **arrays):
            file.write(b"PK\\x03\\x04 half a model")
            file.flush()
            open({str(started)!r}, "w").close()
            time.sleep(60)
        np.savez = stuck
        model = [m for m in api_table.MODELS if m.name == {model.name!r}][0]
        model.make(seed=4).save({str(target)!r})
    """)
    # The lgmstm under test first, and api_table beside this file.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(__file__), os.path.dirname(os.path.dirname(lgmstm.__file__))]
        + sys.path))
    # cwd away from any source tree: `python -c` puts the cwd first on its path
    child = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert child.poll() is None, "the saving process died early"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    assert target.read_bytes() == before
    assert_same_params(lgmstm.load(target), old)
    leftovers = sorted(set(os.listdir(tmp_path)) - {"model.npz", "started"})
    assert len(leftovers) == 1 and leftovers[0].startswith(".lgmstm-")


# -- load --------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
    """(path, the archive's arrays) of a saved LGM."""
    path = tmp_path / "model.npz"
    lgmstm.LGM([3, 4, 2], seed=5).save(path)
    with np.load(path) as data:
        return path, {k: data[k] for k in data.files}


def write_npz(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


class WritesMarker:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        lgmstm.load(tmp_path / "missing.npz")


def _bytes_cases(raw):
    rng = np.random.default_rng(0)
    return {
        "empty": b"",
        "half": raw[: len(raw) // 2],
        "all-but-10": raw[:-10],
        "first-100": raw[:100],
        "garbage": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "garbage-after-zip-magic": b"PK\x03\x04" + rng.integers(0, 256, 4096,
                                                                  dtype=np.uint8).tobytes(),
        "text": b"layer_sizes = [3, 4, 2]\nthis is not a model\n",
        "flipped-byte": raw[:200] + bytes([raw[200] ^ 0xFF]) + raw[201:],
    }


@pytest.mark.parametrize("case", list(_bytes_cases(b"x" * 300)))
def test_load_refuses_corrupt_bytes(case, saved, tmp_path):
    path, _ = saved
    bad = tmp_path / "bad.npz"
    bad.write_bytes(_bytes_cases(path.read_bytes())[case])
    with pytest.raises(ValueError, match="bad.npz"):
        lgmstm.load(bad)


def test_load_refuses_plain_npy_and_directory(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros(3))
    for path in (tmp_path / "plain.npy", tmp_path):
        with pytest.raises(ValueError):
            lgmstm.load(path)


def test_load_never_unpickles(saved, tmp_path):
    path, arrays = saved
    marker = tmp_path / "code-ran"
    evil = np.array([WritesMarker(marker)], dtype=object)
    assert not marker.exists()
    pickled_npz = tmp_path / "pickled.npz"
    with open(pickled_npz, "wb") as f:
        np.savez(f, **dict(arrays, **{"param.layer0.weight": evil}))
    plain_pickle = tmp_path / "pickled.pkl"
    plain_pickle.write_bytes(pickle.dumps(WritesMarker(marker)))
    for bad in (pickled_npz, plain_pickle):
        with pytest.raises(ValueError):
            lgmstm.load(bad)
    assert not marker.exists()
    # the trap is real: unpickling does run it
    pickle.loads(plain_pickle.read_bytes())
    assert marker.exists()


def _lgm_arrays(**changes):
    def build(arrays):
        arrays = dict(arrays)
        for key, value in changes.items():
            if value is None:
                del arrays[key]
            else:
                arrays[key] = value
        return arrays
    return build


CRAFTED = {
    "format_version-3": _lgm_arrays(format_version=np.asarray(3)),
    "format_version-0": _lgm_arrays(format_version=np.asarray(0)),
    "format_version-float": _lgm_arrays(format_version=np.asarray(1.0)),
    "format_version-str": _lgm_arrays(format_version=np.asarray("1")),
    "format_version-vector": _lgm_arrays(format_version=np.asarray([1])),
    "no-format_version": _lgm_arrays(format_version=None),
    "kind-unknown": _lgm_arrays(kind=np.asarray("XYZ")),
    "kind-int": _lgm_arrays(kind=np.asarray(3)),
    "no-kind": _lgm_arrays(kind=None),
    "dtype-float16": _lgm_arrays(dtype=np.asarray("float16")),
    "dtype-object": _lgm_arrays(dtype=np.asarray("object")),
    "no-dtype": _lgm_arrays(dtype=None),
    "no-layer_sizes": _lgm_arrays(**{"config.layer_sizes": None}),
    "layer_sizes-scalar": _lgm_arrays(**{"config.layer_sizes": np.asarray(3)}),
    "layer_sizes-zero": _lgm_arrays(**{"config.layer_sizes": np.asarray([3, 0, 2])}),
    "layer_sizes-negative": _lgm_arrays(**{"config.layer_sizes": np.asarray([3, -4, 2])}),
    "layer_sizes-inf": _lgm_arrays(**{"config.layer_sizes": np.asarray([np.inf, 4, 2])}),
    "layer_sizes-nan": _lgm_arrays(**{"config.layer_sizes": np.asarray([np.nan, 4, 2])}),
    "layer_sizes-other": _lgm_arrays(**{"config.layer_sizes": np.asarray([3, 5, 2])}),
    "layer_sizes-float": _lgm_arrays(**{"config.layer_sizes": np.asarray([3.7, 4.2, 2.9])}),
    "layer_sizes-2**31": _lgm_arrays(**{"config.layer_sizes": np.asarray([2**31, 4, 2])}),
    "output-unknown": _lgm_arrays(**{"config.output": np.asarray("relu")}),
    "param-shape": _lgm_arrays(**{"param.layer0.weight": np.zeros((4, 3))}),
    "param-ndim": _lgm_arrays(**{"param.layer0.bias": np.zeros((1, 4))}),
    "param-dtype": _lgm_arrays(**{"param.layer0.weight": np.zeros((3, 4), np.float32)}),
    "param-int": _lgm_arrays(**{"param.layer0.weight": np.zeros((3, 4), np.int64)}),
    "param-complex": _lgm_arrays(**{"param.layer0.weight": np.zeros((3, 4), complex)}),
    "param-str": _lgm_arrays(**{"param.layer0.weight": np.zeros((3, 4), "U3")}),
    "param-missing": _lgm_arrays(**{"param.layer1.bias": None}),
    "param-extra": _lgm_arrays(**{"param.layer2.weight": np.zeros((2, 2))}),
    "dtype-disagrees": _lgm_arrays(dtype=np.asarray("float32")),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_load_refuses_crafted_archive(case, saved, tmp_path):
    path, arrays = saved
    bad = write_npz(tmp_path / "bad.npz", CRAFTED[case](arrays))
    with limited_address_space("2**31" in case):
        with pytest.raises(ValueError):
            lgmstm.load(bad)


def _zip_with(path, arrays, extra_name, extra_bytes):
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, value)
            archive.writestr(key + ".npy", buffer.getvalue())
        archive.writestr(extra_name, extra_bytes)
    return path


def _npy_header(shape, descr="<f8"):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False,
                                                  "shape": shape})
    return buffer.getvalue()


RAW_ENTRIES = {
    # a header announcing 8 TiB over 64 bytes of data: must not allocate first
    "header-lies-2**40": ("param.layer0.weight.npy", _npy_header((2**40,)) + b"\0" * 64),
    "header-lies-2**31": ("param.layer0.weight.npy", _npy_header((2**31,)) + b"\0" * 64),
    "header-short-data": ("param.layer0.weight.npy", _npy_header((3, 4)) + b"\0" * 8),
    "header-object": ("param.layer0.weight.npy", _npy_header((3, 4), "|O") + b"\0" * 96),
    "not-npy": ("format_version.npy", b"hello, not an array"),
    "not-npy-name": ("readme.txt", b"hello"),
}


@pytest.mark.parametrize("case", RAW_ENTRIES)
def test_load_refuses_malformed_entries(case, saved, tmp_path):
    path, arrays = saved
    name, content = RAW_ENTRIES[case]
    arrays = {k: v for k, v in arrays.items() if k + ".npy" != name}
    bad = _zip_with(tmp_path / "bad.npz", arrays, name, content)
    with limited_address_space("lies" in case):
        with pytest.raises(ValueError):
            lgmstm.load(bad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("model, backend", CASES)
def test_save_load_round_trip(model, backend, dtype, tmp_path):
    instance = model.make(seed=6, dtype=dtype, backend=backend)
    X, Y = model_data(model, DIMS["n"], dtype)
    instance.fit(X, Y, epochs=3, lr=0.1)
    instance.save(tmp_path / "m.npz")
    for load_backend in MODEL_BACKENDS:
        loaded = lgmstm.load(tmp_path / "m.npz", backend=load_backend)
        assert type(loaded) is type(instance) and loaded.dtype == instance.dtype
        assert_same_params(loaded, instance)
    loaded = lgmstm.load(tmp_path / "m.npz", backend=backend)
    np.testing.assert_array_equal(loaded.predict(X), instance.predict(X))


def test_load_accepts_compressed_copy(saved, tmp_path):
    path, arrays = saved
    np.savez_compressed(tmp_path / "compressed.npz", **arrays)
    assert_same_params(lgmstm.load(tmp_path / "compressed.npz"), lgmstm.load(path))
