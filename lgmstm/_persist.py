"""The model file format: .npz files of plain arrays, no pickle (the models
are made from them by lgmstm._base.read_model_file and the classes'
_from_file; lgmstm.load dispatches by kind).

A file holds ``format_version``, ``kind`` ("LGM" or "STM"; "LGMRegressor"
or "LGMClassifier" for an estimator of lgmstm.sklearn), ``dtype``, the
architecture under ``config.*`` and the parameters under ``param.*``.
Version 2 adds what the model remembers for training to go on exactly, under
``memory.*`` (lgmstm._base.Model._saved_memory: the generator's state and
the optimizer's header as JSON text in string arrays, the optimizer's
moments, an STM's working memory), the losses of its latest fit as
``history`` (with a validation set also ``validation_history`` and
``best_epoch``, -1 for none) and, for an estimator, ``estimator.*`` (lgmstm.sklearn); version 1
files, which have none, are read as before. A reader skips the top-level
entries it does not know, so files with ``history`` or ``estimator.*`` still
load (without them) in a version-2 lgmstm that predates them. Writing goes
to a temporary file beside the target, then renames it over the target, so
a crash never leaves a half-written model under that name.

Reading never makes a file allocate much more than its architecture
implies: open_model_file reads the header of every entry (shape, dtype,
order) and nothing else; the few numbers of ``format_version``, ``kind``,
``dtype`` and ``config.*`` are read only while they hold at most
SMALL_ENTRY_BYTES together; the parameters and the optimizer's moments are
read only once the model has checked their shapes against the architecture
(read_sized); the entries whose size the architecture leaves open (the
history, the working memory, the estimator's labels and losses) may declare
UNSIZED_ENTRY_BYTES together, or more only where they are stored with at
most MAX_EXPANSION-fold compression, so a small file cannot unpack into a
large one.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import secrets
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib import format as npy

from ._validation import check_float_dtype
from ._version import __version__

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)

# What reading a file may allocate before the architecture is known (see above).
SMALL_ENTRY_BYTES = 1 << 20
UNSIZED_ENTRY_BYTES = 64 << 20
MAX_EXPANSION = 16
_MAX_HEADER_BYTES = 10_000  # numpy's own limit on an .npy header (numpy >= 1.24)

_HEADER_READERS = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
# zipfile, zlib and numpy's reader signal a damaged entry in all these ways
# (NotImplementedError and RuntimeError: zip features such as encryption).
_READ_ERRORS = (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
                NotImplementedError, RuntimeError)
_META = ("format_version", "kind", "dtype")


def checked_path(path) -> str:
    """path (str, bytes or os.PathLike) as a str."""
    try:
        return os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError("path must be a str, bytes or os.PathLike object, got "
                        f"{type(path).__name__}") from None


def text_array(value: Any) -> np.ndarray:
    """value (JSON-able; NumPy arrays in it become lists) as JSON text in a
    0-d string array: how a file holds structured data without pickle."""
    return np.asarray(json.dumps(value, default=lambda item: item.tolist()))


def read_text_array(array: Any, name: str) -> Any:
    """The value text_array(value) holds (array: an ndarray or a
    StoredArray, read only once it is known to be short JSON text);
    ValueError naming the entry otherwise."""
    if array.shape != () or array.dtype.kind != "U":
        raise ValueError(f"{name} must be JSON text, got an array of shape {array.shape} "
                         f"and dtype {array.dtype}")
    if array.dtype.itemsize > SMALL_ENTRY_BYTES:
        raise ValueError(f"{name} holds {array.dtype.itemsize} bytes of text; lgmstm "
                         f"writes at most {SMALL_ENTRY_BYTES} there")
    try:
        return json.loads(str(np.asarray(array)))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{name} is not valid JSON text: {exc}") from None


def read_sized(entry: Any, what: str, shape: tuple[int, ...], dtype: np.dtype[Any], *,
               finite: bool = False) -> np.ndarray:
    """The data of entry (a StoredArray or an ndarray) once its header says
    the shape and dtype the architecture needs: ValueError naming ``what``
    before anything is read when it does not, and after when finite and it
    holds NaN or inf."""
    if entry.shape != tuple(shape) or entry.dtype != dtype:
        raise ValueError(f"{what} has shape {entry.shape} and dtype {entry.dtype}; the "
                         f"architecture needs shape {tuple(shape)} and dtype {np.dtype(dtype)}")
    array = np.asarray(entry)
    if finite:
        bad = np.count_nonzero(~np.isfinite(array))
        if bad:
            raise ValueError(f"{what} holds NaN or inf ({bad} of its {array.size} values), "
                             "where lgmstm saves only finite numbers")
    return array


def save_arrays(path, kind, dtype, config, params, memory, history=None, estimator=None,
                validation=None):
    """Write the file; memory and estimator: the ``memory.*`` and
    ``estimator.*`` entries, by name after the dot; history: the losses
    of the latest fit (1-d float64); validation: None, or its validation
    losses and best epoch (an int or None)."""
    path = checked_path(path)
    arrays: dict[str, Any] = {"format_version": np.asarray(FORMAT_VERSION, np.int64),
                              "kind": np.asarray(kind),
                              "dtype": np.asarray(np.dtype(dtype).name)}
    arrays.update({f"config.{k}": v for k, v in config.items()})
    arrays.update({f"param.{k}": v for k, v in params.items()})
    arrays.update({f"memory.{k}": v for k, v in memory.items()})
    if history is not None:
        arrays["history"] = np.asarray(history, np.float64)
    if validation is not None:
        validation_history, best_epoch = validation
        arrays["validation_history"] = np.asarray(validation_history, np.float64)
        arrays["best_epoch"] = np.asarray(-1 if best_epoch is None else best_epoch, np.int64)
    arrays.update({f"estimator.{k}": v for k, v in (estimator or {}).items()})
    # A link is followed: its target is replaced, the link stays. A device,
    # a pipe or a socket is refused, not replaced by a file (a folder fails
    # below, named).
    path = os.path.realpath(path) if os.path.islink(path) else path
    if os.path.exists(path) and not (os.path.isfile(path) or os.path.isdir(path)):
        raise OSError(errno.EEXIST, f"cannot save to {path}: it exists and is not a regular "
                                    f"file (a device, a pipe or a socket)", path)
    directory = os.path.dirname(os.path.abspath(path))
    # Not mkstemp: its files are 0600; this one gets the umask's mode, as a
    # plain np.savez(path) would.
    tmp = os.path.join(directory, f".lgmstm-{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666)
    except OSError as exc:
        raise _naming(exc, path, directory) from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _naming(exc, path, directory) from None
        raise


def _naming(exc: OSError, path: str, directory: str) -> OSError:
    """exc, of the same type, naming the file the caller asked for rather
    than the temporary file that save_arrays writes first."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, FileNotFoundError) and not os.path.isdir(directory):
        reason = f"cannot save there, the folder {directory!r} does not exist"
    elif isinstance(exc, IsADirectoryError) and os.path.isdir(path):
        reason = "cannot save there, it is a folder"
    if exc.errno is None:
        return type(exc)(f"{reason}: {path!r}")
    return type(exc)(exc.errno, reason, path)


class StoredArray:
    """One .npy entry of an open model file whose header has been read:
    ``shape``, ``dtype``, ``fortran_order`` and the sizes are known, the
    data is read (all of it, checked) only by ``np.asarray(entry)``."""

    def __init__(self, path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                 header: tuple[tuple[int, ...], bool, np.dtype[Any]]) -> None:
        self._path, self._archive, self._info = path, archive, info
        self.name = info.filename[:-len(".npy")]
        self.shape, self.fortran_order, self.dtype = header
        self.ndim = len(self.shape)
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        self.compressed_size = info.compress_size

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        try:
            with self._archive.open(self._info) as f:
                array = npy.read_array(f, allow_pickle=False)
                if f.read(1):  # also makes zipfile check the CRC
                    raise ValueError("more data than its header declares")
        except _READ_ERRORS as exc:
            raise ValueError(f"{self._path}: {self.name} cannot be read: {exc}") from None
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"<{self.name}: shape {self.shape}, dtype {self.dtype}, not read>"


@dataclass
class ModelFile:
    """An open model file: the few small entries read and checked, the others
    as StoredArray, by name after their prefix's dot."""

    path: str
    version: int
    kind: str
    dtype: np.dtype[Any]
    config: dict[str, np.ndarray]
    params: dict[str, StoredArray]
    memory: dict[str, StoredArray]
    estimator: dict[str, StoredArray]
    history_entry: StoredArray | None
    validation_entries: tuple[StoredArray, StoredArray] | None = None

    def validation(self) -> tuple[np.ndarray, int | None]:
        """The validation losses and best epoch of the model's latest fit;
        (empty, None) when the file holds none."""
        if self.validation_entries is None:
            return np.empty(0), None
        history_entry, best_entry = self.validation_entries
        if history_entry.ndim != 1 or history_entry.dtype != np.float64:
            raise ValueError(f"{self.path}: validation_history must be a 1-d float64 array, "
                             f"got shape {history_entry.shape} and dtype {history_entry.dtype}")
        history = np.asarray(history_entry)
        best = np.asarray(best_entry) if best_entry.ndim == 0 else None
        if best is None or best.dtype.kind not in "iu" or not -1 <= int(best) < len(history):
            raise ValueError(f"{self.path}: best_epoch must be a whole number in "
                             f"[-1, {len(history)}), got {best_entry!r}")
        return history, None if int(best) < 0 else int(best)

    def history(self) -> np.ndarray:
        """The losses of the model's latest fit; empty when the file holds none."""
        entry = self.history_entry
        if entry is None:
            return np.empty(0)
        if entry.ndim != 1 or entry.dtype != np.float64:
            raise ValueError(f"{self.path}: history must be a 1-d float64 array, got shape "
                             f"{entry.shape} and dtype {entry.dtype}")
        return np.asarray(entry)


@contextlib.contextmanager
def open_model_file(path) -> Iterator[ModelFile]:
    """The model file at path, open while the block runs (a StoredArray reads
    from it); FileNotFoundError when there is none, ValueError for anything
    that is not a readable model file of a version this lgmstm reads."""
    path = checked_path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise
    except _READ_ERRORS as exc:
        raise ValueError(f"{path} is not a readable lgmstm model file: {exc}") from None
    with archive:
        yield _model_file(path, archive)


def _model_file(path: str, archive: zipfile.ZipFile) -> ModelFile:
    entries: dict[str, StoredArray] = {}
    try:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"unexpected entry {info.filename!r}")
            entry = StoredArray(path, archive, info, _read_header(archive, info))
            if entry.name in entries:
                raise ValueError(f"two entries named {info.filename!r}")
            entries[entry.name] = entry
    except _READ_ERRORS as exc:
        raise ValueError(f"{path} is not a readable lgmstm model file: {exc}") from None
    for key in _META:
        if key not in entries:
            raise ValueError(f"{path} is not an lgmstm model file: no '{key}' entry")
    _check_sizes(path, entries)
    small = {name: np.asarray(entry) for name, entry in entries.items()
             if name in _META or name.startswith("config.")}
    version = _version(path, small["format_version"])
    kind = str(small["kind"])
    dtype = check_float_dtype(str(small["dtype"]), error=ValueError, where=f"{path}: ")

    def under(prefix: str, source: dict[str, Any]) -> dict[str, Any]:
        return {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}

    model_file = ModelFile(path, version, kind, dtype, under("config.", small),
                           under("param.", entries), under("memory.", entries),
                           under("estimator.", entries), entries.get("history"))
    if "validation_history" in entries or "best_epoch" in entries:
        if "validation_history" not in entries or "best_epoch" not in entries:
            raise ValueError(f"{path}: validation_history and best_epoch come together")
        model_file.validation_entries = (entries["validation_history"], entries["best_epoch"])
    if version == 1 and (model_file.memory or model_file.estimator
                         or model_file.history_entry is not None
                         or model_file.validation_entries is not None):
        raise ValueError(f"{path}: a format_version 1 file holds no memory.*, history or "
                         "estimator.* entries")
    return model_file


def _read_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo,
                 ) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """(shape, fortran_order, dtype) of an .npy entry, reading its header and
    nothing more; ValueError when the header is malformed, declares Python
    objects (which would be unpickled) or another size than the entry's."""
    with archive.open(info) as f:
        start = f.read(8)  # the magic string and the version
        version = npy.read_magic(io.BytesIO(start))
        if version not in _HEADER_READERS:
            raise ValueError(f"{info.filename}: unsupported .npy version {version}")
        length_field = f.read(2 if version == (1, 0) else 4)
        length = int.from_bytes(length_field, "little")
        if length > _MAX_HEADER_BYTES:
            raise ValueError(f"{info.filename}: a header of {length} bytes (at most "
                             f"{_MAX_HEADER_BYTES})")
        header = f.read(length)
    shape, fortran_order, dtype = _HEADER_READERS[version](io.BytesIO(length_field + header))
    if dtype.hasobject:
        raise ValueError(f"{info.filename} holds Python objects (pickled data), "
                         "which lgmstm never loads")
    data_size = info.file_size - len(start) - len(length_field) - length
    if math.prod(shape) * dtype.itemsize != data_size:
        raise ValueError(f"{info.filename}: the header does not match the data")
    return shape, fortran_order, dtype


def _check_sizes(path: str, entries: dict[str, StoredArray]) -> None:
    """Refuse a file whose small entries are not small, or whose entries of
    open size declare much more than they occupy (see the module's docstring)."""
    small = [entry for name, entry in entries.items()
             if name in _META or name.startswith("config.")]
    total = sum(entry.nbytes for entry in small)
    if total > SMALL_ENTRY_BYTES:
        raise ValueError(f"{path}: format_version, kind, dtype and config.* declare {total} "
                         f"bytes; a model file holds at most {SMALL_ENTRY_BYTES} there")
    unsized = [entry for name, entry in entries.items()
               if (name in ("history", "validation_history", "best_epoch")
                   or name.startswith(("memory.", "estimator.")))
               and not name.startswith("memory.optimizer.moment")]
    declared = sum(entry.nbytes for entry in unsized)
    stored = sum(entry.compressed_size for entry in unsized)
    if declared > max(UNSIZED_ENTRY_BYTES, MAX_EXPANSION * stored):
        raise ValueError(
            f"{path}: {', '.join(sorted(entry.name for entry in unsized))} declare "
            f"{declared} bytes compressed into {stored}; lgmstm reads at most "
            f"{UNSIZED_ENTRY_BYTES} bytes there, or {MAX_EXPANSION} times their size "
            "in the file")


def _version(path: str, stored: np.ndarray) -> int:
    """format_version as an int this lgmstm reads; ValueError saying which it reads."""
    readable = " and ".join(map(str, READABLE_VERSIONS))
    if stored.shape != () or stored.dtype.kind not in "iu":
        found = (f"{stored.item()!r} ({stored.dtype})" if stored.shape == ()
                 else f"an array of shape {stored.shape}")
        raise ValueError(f"{path}: format_version must be a whole number, got {found}; "
                         f"this lgmstm reads format versions {readable}")
    version = int(stored)
    if version > max(READABLE_VERSIONS):
        raise ValueError(f"{path} has format version {version}, written by a newer lgmstm; "
                         f"this lgmstm ({__version__}) reads format versions {readable}: "
                         "upgrade lgmstm to load it")
    if version not in READABLE_VERSIONS:
        raise ValueError(f"{path} has format version {version}, which no lgmstm wrote; "
                         f"this lgmstm reads format versions {readable}")
    return version
