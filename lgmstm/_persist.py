"""The model file format: .npz files of plain arrays, no pickle (the models
are made from them by lgmstm._load).

A file holds ``format_version``, ``kind`` ("LGM" or "STM"), ``dtype``, the
architecture under ``config.*`` and the parameters under ``param.*``.
Version 2 adds what the model remembers for training to go on exactly, under
``memory.*`` (lgmstm._base.Model._saved_memory: the generator's state and
the optimizer's header as JSON text in string arrays, the optimizer's
moments, an STM's working memory); version 1 files, which have none, are
read as before. Writing goes to a temporary file beside the target, then
renames it over the target, so a crash never leaves a half-written model
under that name.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import zipfile
import zlib
from typing import Any

import numpy as np
from numpy.lib import format as npy

from ._validation import check_float_dtype

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)


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


def read_text_array(array: np.ndarray, name: str) -> Any:
    """The value text_array(value) holds; ValueError naming the entry when
    the array holds no JSON text."""
    if array.shape != () or array.dtype.kind != "U":
        raise ValueError(f"{name} must be JSON text, got an array of shape {array.shape} "
                         f"and dtype {array.dtype}")
    try:
        return json.loads(str(array))
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{name} is not valid JSON text: {exc}") from None


def save_arrays(path, kind, dtype, config, params, memory):
    """Write the file; memory: the ``memory.*`` entries, by name after the dot."""
    path = checked_path(path)
    arrays: dict[str, Any] = {"format_version": np.asarray(FORMAT_VERSION, np.int64),
                              "kind": np.asarray(kind),
                              "dtype": np.asarray(np.dtype(dtype).name)}
    arrays.update({f"config.{k}": v for k, v in config.items()})
    arrays.update({f"param.{k}": v for k, v in params.items()})
    arrays.update({f"memory.{k}": v for k, v in memory.items()})
    directory = os.path.dirname(os.path.abspath(path))
    # Not mkstemp: its files are 0600; this one gets the umask's mode, as a
    # plain np.savez(path) would.
    tmp = os.path.join(directory, f".lgmstm-{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load_arrays(path):
    """(kind, dtype, config, params, memory) from a file written by
    save_arrays (memory is empty for a version 1 file)."""
    path = checked_path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            arrays = {info.filename[:-len(".npy")]: _read_member(archive, info)
                      for info in archive.infolist()}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
            NotImplementedError, RuntimeError) as exc:  # the last two: zip features
        raise ValueError(f"{path} is not a readable lgmstm model file: {exc}") from None
    for key in ("format_version", "kind", "dtype"):
        if key not in arrays:
            raise ValueError(f"{path} is not an lgmstm model file: no '{key}' entry")
    version = arrays["format_version"]
    if version.shape != () or version.dtype.kind != "i" or int(version) not in READABLE_VERSIONS:
        raise ValueError(f"{path}: unsupported format_version {version!r}, this lgmstm "
                         f"reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    kind = str(arrays["kind"])
    dtype = check_float_dtype(str(arrays["dtype"]), error=ValueError, where=f"{path}: ")
    config = {k[len("config."):]: v for k, v in arrays.items() if k.startswith("config.")}
    params = {k[len("param."):]: v for k, v in arrays.items() if k.startswith("param.")}
    memory = {k[len("memory."):]: v for k, v in arrays.items() if k.startswith("memory.")}
    if memory and int(version) == 1:
        raise ValueError(f"{path}: a format_version 1 file holds no memory.* entries")
    return kind, dtype, config, params, memory


_HEADER_READERS = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}


def _read_member(archive, info):
    """One .npy entry of the archive, its header checked before any data is
    read: object arrays would be unpickled, and a header declaring more data
    than the entry holds would allocate that much before failing."""
    if not info.filename.endswith(".npy"):
        raise ValueError(f"unexpected entry {info.filename!r}")
    with archive.open(info) as f:
        version = npy.read_magic(f)
        if version not in _HEADER_READERS:
            raise ValueError(f"{info.filename}: unsupported .npy version {version}")
        shape, _, dtype = _HEADER_READERS[version](f)
        if dtype.hasobject:
            raise ValueError(f"{info.filename} holds Python objects (pickled data), "
                             "which lgmstm never loads")
        if math.prod(shape) * dtype.itemsize != info.file_size - f.tell():
            raise ValueError(f"{info.filename}: the header does not match the data")
    with archive.open(info) as f:
        return npy.read_array(f, allow_pickle=False)
