"""Model files (issue 17, item 11): what save and load promise.

- save names the path it was given when it cannot write there, never its
  temporary file;
- load refuses NaN or inf parameters, naming the parameter;
- history_ survives save/load (files without it load with an empty one);
- a file of a newer format version is refused with a sentence that says
  which versions this lgmstm reads;
- the scikit-learn estimators save and load, exactly;
- a small file cannot make load allocate much: a model file whose weight
  is a deflated 16384 x 16384 array of zeros (2 GiB declared, 2 MB on
  disk) is refused from its header, before its data is decompressed.
"""
from __future__ import annotations

import io
import math
import os
import stat
import struct
import tracemalloc
import traceback
import zipfile
import zlib

import numpy as np
import pytest
from numpy.lib import format as npy

import lgmstm

X = np.random.default_rng(0).uniform(-1, 1, (40, 3))
Y = np.tanh(X @ [0.5, -1.0, 0.3])[:, None]
SEQUENCES = np.random.default_rng(1).uniform(-1, 1, (12, 7, 2))
TARGETS = np.tanh(SEQUENCES.sum(axis=2, keepdims=True))


def trained(kind, dtype=np.float64, backend="cython"):
    """A model trained a few epochs with adam: parameters, moments, history_."""
    if kind == "LGM":
        model = lgmstm.LGM([3, 5, 1], seed=0, dtype=dtype, backend=backend)
        model.fit(X, Y, epochs=4, lr=0.01, optimizer="adam", batch_size=8)
    else:
        model = lgmstm.STM(2, 4, 1, seed=0, dtype=dtype, backend=backend)
        model.fit(SEQUENCES, TARGETS, epochs=4, lr=0.01, optimizer="adam", batch_size=4)
    return model


def arrays_of(path):
    with np.load(path, allow_pickle=False) as saved:
        return {name: saved[name] for name in saved.files}


def rewrite(path, arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


# -- save names its target ----------------------------------------------------------------

def _estimator():
    from lgmstm.sklearn import LGMRegressor
    return LGMRegressor(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, Y[:, 0])


SAVERS = {"LGM": lambda: trained("LGM"), "STM": lambda: trained("STM"),
          "LGMRegressor": _estimator}


@pytest.mark.parametrize("kind", SAVERS)
def test_save_to_a_missing_folder_names_the_target(kind, tmp_path):
    if kind == "LGMRegressor":
        pytest.importorskip("sklearn")
    target = tmp_path / "no such folder" / "model.npz"
    with pytest.raises(FileNotFoundError) as raised:
        SAVERS[kind]().save(target)
    message = str(raised.value)
    assert str(target) in message and "does not exist" in message
    assert raised.value.filename == str(target)
    shown = "".join(traceback.format_exception(raised.value))
    assert ".lgmstm-" not in shown and ".tmp" not in shown  # nor in the chained context
    assert list(tmp_path.iterdir()) == []


def test_save_onto_a_folder_names_the_target(tmp_path):
    target = tmp_path / "a folder"
    target.mkdir()
    with pytest.raises(IsADirectoryError) as raised:
        trained("LGM").save(target)
    assert raised.value.filename == str(target) and "folder" in str(raised.value)
    assert ".lgmstm-" not in "".join(traceback.format_exception(raised.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a folder"]


def test_save_through_a_link_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "models").mkdir()
    target = tmp_path / "models" / "v1.npz"
    trained("LGM").save(target)
    link = tmp_path / "current.npz"
    link.symlink_to(target)
    model = trained("STM")
    model.save(link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    np.testing.assert_array_equal(lgmstm.load(target).predict(SEQUENCES),
                                  model.predict(SEQUENCES))


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_save_onto_a_pipe_refuses_and_leaves_it(tmp_path):
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(OSError, match="it exists and is not a regular file") as raised:
        trained("LGM").save(pipe)
    assert raised.value.filename == str(pipe)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]


# -- NaN and inf are refused ------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["LGM", "STM"])
def test_load_refuses_non_finite_parameters(kind, dtype, bad, tmp_path):
    model = trained(kind, dtype)
    model.save(tmp_path / "m.npz")
    arrays = arrays_of(tmp_path / "m.npz")
    name = list(model.params)[-1]  # the last: every other one passed the check first
    arrays[f"param.{name}"].flat[0] = bad
    spoiled = rewrite(tmp_path / "spoiled.npz", arrays)
    with pytest.raises(ValueError) as raised:
        lgmstm.load(spoiled)
    assert str(raised.value).startswith(f"{spoiled}: parameter {name} holds NaN or inf (1 of "
                                        f"its {model.params[name].size} values)")


# -- history_ ------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("kind", ["LGM", "STM"])
def test_history_survives_save_and_load(kind, backend, tmp_path):
    model = trained(kind, backend=backend)
    assert len(model.history_) == 4
    model.save(tmp_path / "m.npz")
    loaded = lgmstm.load(tmp_path / "m.npz", backend=backend)
    np.testing.assert_array_equal(loaded.history_, model.history_, strict=True)


def test_files_without_history_load_with_an_empty_one(tmp_path):
    model = trained("LGM")
    model.save(tmp_path / "m.npz")
    arrays = arrays_of(tmp_path / "m.npz")
    del arrays["history"]  # as files were written before history_ was saved
    loaded = lgmstm.load(rewrite(tmp_path / "old.npz", arrays))
    np.testing.assert_array_equal(loaded.history_, np.empty(0), strict=True)
    np.testing.assert_array_equal(loaded.params["layer0.weight"], model.params["layer0.weight"])
    fresh = lgmstm.LGM([3, 2], seed=0)
    fresh.save(tmp_path / "fresh.npz")
    np.testing.assert_array_equal(lgmstm.load(tmp_path / "fresh.npz").history_, np.empty(0),
                                  strict=True)


@pytest.mark.parametrize("history", [np.zeros((2, 2)), np.zeros(3, np.float32),
                                     np.asarray("[1, 2]")], ids=["2-d", "float32", "text"])
def test_load_refuses_a_malformed_history(history, tmp_path):
    trained("LGM").save(tmp_path / "m.npz")
    arrays = arrays_of(tmp_path / "m.npz")
    arrays["history"] = history
    with pytest.raises(ValueError, match="history must be a 1-d float64 array"):
        lgmstm.load(rewrite(tmp_path / "spoiled.npz", arrays))


# -- format versions ------------------------------------------------------------------------

def test_a_newer_format_version_is_refused_with_a_sentence(tmp_path):
    trained("LGM").save(tmp_path / "m.npz")
    arrays = arrays_of(tmp_path / "m.npz")
    arrays["format_version"] = np.asarray(3, np.int64)
    newer = rewrite(tmp_path / "newer.npz", arrays)
    with pytest.raises(ValueError) as raised:
        lgmstm.load(newer)
    message = str(raised.value)
    assert message == (f"{newer} has format version 3, written by a newer lgmstm; this "
                       f"lgmstm ({lgmstm.__version__}) reads format versions 1 and 2: "
                       "upgrade lgmstm to load it")


@pytest.mark.parametrize("version, found", [
    (np.asarray(0), "format version 0, which no lgmstm wrote"),
    (np.asarray(2.0), "format_version must be a whole number, got 2.0 (float64)"),
    (np.asarray([2]), "format_version must be a whole number, got an array of shape (1,)"),
], ids=["0", "float", "vector"])
def test_other_format_versions_say_which_this_lgmstm_reads(version, found, tmp_path):
    trained("LGM").save(tmp_path / "m.npz")
    arrays = arrays_of(tmp_path / "m.npz")
    arrays["format_version"] = version
    with pytest.raises(ValueError) as raised:
        lgmstm.load(rewrite(tmp_path / "bad.npz", arrays))
    message = str(raised.value)
    assert found in message and message.endswith("reads format versions 1 and 2")
    assert "array(" not in message


# -- the estimators ---------------------------------------------------------------------------

def _estimators():
    sklearn = pytest.importorskip("lgmstm.sklearn")
    labels = np.where(X[:, 0] > 0, "up", "down")
    three = np.digitize(X[:, 1], [-0.3, 0.3])
    return {
        "regressor": (sklearn.LGMRegressor(hidden_layer_sizes=(6, 4), max_iter=3, batch_size=8,
                                           random_state=0), X, Y[:, 0]),
        "regressor-2-outputs-float32": (
            sklearn.LGMRegressor(hidden_layer_sizes=[5], max_iter=3, dtype="float32",
                                 solver="sgd", nesterovs_momentum=False, max_fun=7,
                                 loss="squared_error", random_state=np.random.RandomState(2)),
            X, np.hstack([Y, -Y])),
        "classifier-text-labels": (
            sklearn.LGMClassifier(hidden_layer_sizes=5, max_iter=3, dtype=np.float32,
                                  max_fun=np.int64(9), random_state=np.int64(1)), X,
            labels.astype(object)),
        "classifier-3-classes": (sklearn.LGMClassifier(max_iter=3, random_state=None,
                                                       backend="numpy"), X, three),
    }


ESTIMATOR_CASES = ["regressor", "regressor-2-outputs-float32", "classifier-text-labels",
                   "classifier-3-classes"]


def assert_same_value(value, other, name):
    assert type(value) is type(other), name
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(value, other, err_msg=name, strict=True)
        if value.dtype == object:
            assert [type(v) for v in value] == [type(v) for v in other], name
    elif isinstance(value, np.random.RandomState):
        for mine, theirs in zip(value.get_state(), other.get_state()):
            np.testing.assert_array_equal(mine, theirs, err_msg=name)
    else:
        assert value == other, name


def assert_same_network(network, other):
    assert type(network) is type(other) and network.layer_sizes == other.layer_sizes
    assert network.dtype == other.dtype and network.output == other.output
    assert network.backend == other.backend
    for name, value in network.params.items():
        np.testing.assert_array_equal(value, other.params[name], strict=True)
    np.testing.assert_array_equal(network.history_, other.history_, strict=True)
    assert network._rng.bit_generator.state == other._rng.bit_generator.state
    state, other_state = network._optimizer_state, other._optimizer_state
    assert state.header() == other_state.header()
    for arrays, other_arrays in zip(state.moments, other_state.moments, strict=True):
        for moment, other_moment in zip(arrays, other_arrays, strict=True):
            np.testing.assert_array_equal(moment, other_moment, strict=True)


def assert_same_estimator(estimator, other):
    assert type(estimator) is type(other)
    params, other_params = estimator.get_params(), other.get_params()
    assert list(params) == list(other_params)
    for name, value in params.items():
        assert_same_value(value, other_params[name], name)
    assert set(vars(estimator)) == set(vars(other))
    for name, value in vars(estimator).items():
        if name == "lgm_":
            assert_same_network(value, other.lgm_)
        else:
            assert_same_value(value, getattr(other, name), name)


@pytest.mark.parametrize("case", ESTIMATOR_CASES)
def test_estimators_round_trip_exactly(case, tmp_path):
    estimator, X_train, y_train = _estimators()[case]
    estimator.fit(X_train, y_train)
    estimator.save(tmp_path / "e.npz")
    by_class = type(estimator).load(tmp_path / "e.npz")
    by_function = lgmstm.load(tmp_path / "e.npz", backend=estimator.backend)
    for loaded in (by_class, by_function):
        assert_same_estimator(loaded, estimator)
        np.testing.assert_array_equal(loaded.predict(X_train), estimator.predict(X_train),
                                      strict=True)
    if hasattr(estimator, "predict_proba"):
        np.testing.assert_array_equal(by_class.predict_proba(X_train),
                                      estimator.predict_proba(X_train), strict=True)
    # Training goes on exactly: the optimizer's state, generator and scaling came back.
    for model in (estimator, by_class):
        model.partial_fit(X_train, y_train)
        model.set_params(warm_start=True, max_iter=2).fit(X_train, y_train)
    assert_same_estimator(by_class, estimator)
    # And a new fit draws the same seed from random_state (a RandomState too).
    for model in (estimator, by_class):
        model.set_params(warm_start=False).fit(X_train, y_train)
    if estimator.random_state is not None:
        assert_same_estimator(by_class, estimator)


def test_estimator_load_backend_picks_the_networks(tmp_path):
    estimator, X_train, y_train = _estimators()["classifier-3-classes"]  # backend="numpy"
    estimator.fit(X_train, y_train).save(tmp_path / "e.npz")
    assert type(estimator).load(tmp_path / "e.npz").lgm_.backend == "numpy"
    assert lgmstm.load(tmp_path / "e.npz").lgm_.backend == "cython"
    loaded = type(estimator).load(tmp_path / "e.npz", backend="cython")
    assert loaded.lgm_.backend == "cython" and loaded.backend == "numpy"
    np.testing.assert_allclose(loaded.decision_function(X_train),
                               estimator.decision_function(X_train), rtol=1e-12)


def test_estimator_files_are_refused_where_they_do_not_belong(tmp_path):
    sklearn = pytest.importorskip("lgmstm.sklearn")
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        sklearn.LGMRegressor().save(tmp_path / "unfitted.npz")
    assert not (tmp_path / "unfitted.npz").exists()
    regressor, X_train, y_train = _estimators()["regressor"]
    regressor.fit(X_train, y_train).save(tmp_path / "r.npz")
    with pytest.raises(ValueError, match="holds an LGMRegressor, not an LGMClassifier"):
        sklearn.LGMClassifier.load(tmp_path / "r.npz")
    trained("LGM").save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="holds an LGM, not an LGMRegressor"):
        sklearn.LGMRegressor.load(tmp_path / "m.npz")
    with pytest.raises(TypeError,
                       match="hyper-parameter learning_rate_init = .* cannot be saved without"):
        regressor.set_params(learning_rate_init=[0.1, object()]).save(tmp_path / "junk.npz")


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("estimator.attribute.y_scale_"), "misses the fitted attributes"),
    (lambda a: a.update({"estimator.attribute.y_mean_": np.zeros(3)}),
     r"y_mean_ has shape \(3,\)"),
    (lambda a: a.update({"estimator.attribute.y_scale_": np.array([np.nan])}),
     "y_scale_ holds NaN or inf"),
    (lambda a: a.update({"estimator.attribute.predict": np.zeros(1)}),
     "'predict' cannot be a fitted attribute"),
    (lambda a: a.update({"estimator.header": np.asarray('{"hyper_parameters": 1}')}),
     "estimator.header must hold"),
], ids=["missing", "shape", "nan", "method", "header"])
def test_load_refuses_a_spoiled_estimator(change, message, tmp_path):
    regressor, X_train, y_train = _estimators()["regressor"]
    regressor.fit(X_train, y_train).save(tmp_path / "r.npz")
    arrays = arrays_of(tmp_path / "r.npz")
    change(arrays)
    with pytest.raises(ValueError, match=message):
        lgmstm.load(rewrite(tmp_path / "spoiled.npz", arrays))


# -- what a file can make load allocate -------------------------------------------------------

_CHUNK = 1 << 20


def _npy(array):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _deflated_zeros(shape, descr="<f8"):
    """An .npy entry of zeros deflated, as (deflate stream, crc32, size), made
    without deflating them all: after a full flush the compressor starts
    afresh, so every megabyte of zeros deflates to the same bytes."""
    header = io.BytesIO()
    npy.write_array_header_1_0(header, {"descr": descr, "fortran_order": False,
                                        "shape": shape})
    n_bytes = math.prod(shape) * np.dtype(descr).itemsize
    assert n_bytes % _CHUNK == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(header.getvalue()) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(_CHUNK)) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(bytes(_CHUNK)) + compressor.flush(zlib.Z_FULL_FLUSH) == block
    stream = head + block * (n_bytes // _CHUNK) + compressor.flush()
    crc = zlib.crc32(header.getvalue())
    zeros = bytes(_CHUNK)
    for _ in range(n_bytes // _CHUNK):
        crc = zlib.crc32(zeros, crc)
    return stream, crc, len(header.getvalue()) + n_bytes


def write_zip(path, entries):
    """A zip file of entries {name: bytes (stored) or (stream, crc, size) (deflated)},
    written by hand: zipfile cannot take data deflated beforehand."""
    local, central = bytearray(), bytearray()
    for name, content in entries.items():
        if isinstance(content, bytes):
            method, data, crc, size = 0, content, zlib.crc32(content), len(content)
        else:
            method, (data, crc, size) = 8, content
        encoded = (name + ".npy").encode()
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21,
                               crc, len(data), size, len(encoded), 0, 0, 0, 0, 0, len(local))
        central += encoded
        local += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc,
                             len(data), size, len(encoded), 0)
        local += encoded + data
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central),
                      len(local), 0)
    path.write_bytes(bytes(local + central + end))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A model file whose first weight is a deflated 16384 x 16384 array of zeros."""
    folder = tmp_path_factory.mktemp("bomb")
    trained("LGM").save(folder / "m.npz")
    entries = {name: _npy(value) for name, value in arrays_of(folder / "m.npz").items()}
    entries["param.layer0.weight"] = _deflated_zeros((16384, 16384))
    return write_zip(folder / "bomb.npz", entries), entries


def test_the_bomb_is_a_real_one(bomb):
    path, _ = bomb
    assert path.stat().st_size < 3 * 2**20  # 2 MB on disk ...
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("param.layer0.weight.npy")
        assert info.file_size > 2**31  # ... 2 GiB unpacked
        with archive.open(info) as f:
            assert npy.read_magic(f) == (1, 0)
            assert npy.read_array_header_1_0(f) == ((16384, 16384), False, np.float64)
            assert f.read(_CHUNK) == bytes(_CHUNK)


def _load_measured(path, monkeypatch):
    """(the error load raised, the peak of memory it allocated, the bytes it
    read from the archive's entries, decompressed)."""
    unpacked = []
    read = zipfile.ZipExtFile.read

    def counted(self, n=-1):
        data = read(self, n)
        unpacked.append(len(data))
        return data

    monkeypatch.setattr(zipfile.ZipExtFile, "read", counted)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as raised:
            lgmstm.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return raised.value, peak, sum(unpacked)


def test_load_refuses_the_bomb_from_its_header(bomb, monkeypatch):
    path, _ = bomb
    error, peak, unpacked = _load_measured(path, monkeypatch)
    assert "parameters of shapes" in str(error) and "(16384, 16384)" in str(error)
    assert peak < 4 * 2**20  # a few MB at most (2 GiB if the data were read)
    assert unpacked < 2**20  # headers and the few numbers of the architecture


def test_a_bomb_of_the_architectures_shape_is_refused_too(bomb, monkeypatch, tmp_path):
    # A 2-GiB weight that the architecture asks for is read only because the
    # architecture says so: the same zeros under a moment whose parameter is
    # small are refused from the header.
    _, entries = bomb
    entries = dict(entries)
    entries["memory.optimizer.moment0.layer0.weight"] = entries.pop("param.layer0.weight")
    entries["param.layer0.weight"] = _npy(np.zeros((3, 5)))
    error, peak, unpacked = _load_measured(write_zip(tmp_path / "moment.npz", entries),
                                           monkeypatch)
    assert "memory.optimizer.moment0.layer0.weight has shape (16384, 16384)" in str(error)
    assert peak < 4 * 2**20 and unpacked < 2**20


@pytest.mark.parametrize("name, shape", [
    ("history", (2**24,)),                     # 128 MiB of epochs' losses
    ("memory.state", (2**22, 4)),              # 128 MiB of working memory (an STM's entry)
    ("config.layer_sizes", (2**17,)),          # 1 MiB of architecture
], ids=["history", "working-memory", "config"])
def test_entries_of_open_size_cannot_unpack_far_beyond_the_file(name, shape, monkeypatch,
                                                                tmp_path):
    trained("LGM").save(tmp_path / "m.npz")
    entries = {key: _npy(value) for key, value in arrays_of(tmp_path / "m.npz").items()}
    descr = "<i8" if name.startswith("config.") else "<f8"
    entries[name] = _deflated_zeros(shape, descr)
    error, peak, unpacked = _load_measured(write_zip(tmp_path / "big.npz", entries),
                                           monkeypatch)
    assert "lgmstm reads at most" in str(error) or "a model file holds at most" in str(error)
    assert peak < 4 * 2**20 and unpacked < 2**20


def test_a_large_history_stored_plainly_loads(tmp_path):
    # The bound is on expansion, not on size: a history the file really holds loads.
    model = trained("LGM")
    model.save(tmp_path / "m.npz")
    arrays = arrays_of(tmp_path / "m.npz")
    arrays["history"] = np.random.default_rng(0).uniform(0, 1, 9 * 2**20)  # 72 MiB
    np.testing.assert_array_equal(lgmstm.load(rewrite(tmp_path / "long.npz", arrays)).history_,
                                  arrays["history"], strict=True)


def test_a_long_header_is_refused_before_it_is_read(tmp_path):
    trained("LGM").save(tmp_path / "m.npz")
    entries = {key: _npy(value) for key, value in arrays_of(tmp_path / "m.npz").items()}
    entries["param.layer0.bias"] = (b"\x93NUMPY\x02\x00" + struct.pack("<I", 2**31)
                                    + b" " * 64)
    with pytest.raises(ValueError, match="a header of 2147483648 bytes"):
        lgmstm.load(write_zip(tmp_path / "long-header.npz", entries))


def test_unknown_top_level_entries_are_skipped_unread(bomb, monkeypatch, tmp_path):
    # What a later lgmstm may add: skipped, as a version-2 reader always did, and not read.
    _, entries = bomb
    entries = dict(entries)
    entries["from_the_future"] = entries.pop("param.layer0.weight")
    model = trained("LGM")
    entries["param.layer0.weight"] = _npy(model.params["layer0.weight"])
    path = write_zip(tmp_path / "future.npz", entries)
    tracemalloc.start()
    try:
        loaded = lgmstm.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X), strict=True)


@pytest.mark.parametrize("n_hidden", [10**6, 30000])
def test_an_stm_config_larger_than_its_parameters_is_refused_before_building(n_hidden,
                                                                            tmp_path):
    """config.n_hidden that the stored parameters do not have is refused
    from the shapes, before the model (n_hidden**2 values, an orthogonal
    initialisation) is built."""
    path = tmp_path / "stm.npz"
    lgmstm.STM(3, 4, 2, seed=0).save(path)
    arrays = arrays_of(path)
    arrays["config.n_hidden"] = np.asarray(n_hidden, np.int64)
    rewrite(path, arrays)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="do not fit"):
            lgmstm.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20  # measured: under 0.1 MB
