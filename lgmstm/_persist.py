"""Saving and loading models as .npz files: plain arrays, no pickle.

A file holds ``format_version``, ``kind`` ("LGM" or "STM"), ``dtype``, the
architecture under ``config.*`` and the parameters under ``param.*``.
Writing goes to a temporary file beside the target, then renames it over the
target, so a crash never leaves a half-written model under that name.
"""
from __future__ import annotations

import os
import secrets
import zipfile
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .models import LGM

FORMAT_VERSION = 1


def save_arrays(path, kind, dtype, config, params):
    path = os.fspath(path)
    arrays: dict[str, Any] = {"format_version": np.asarray(FORMAT_VERSION, np.int64),
              "kind": np.asarray(kind), "dtype": np.asarray(np.dtype(dtype).name)}
    arrays.update({f"config.{k}": v for k, v in config.items()})
    arrays.update({f"param.{k}": v for k, v in params.items()})
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
    """(kind, dtype, config, params) from a file written by save_arrays."""
    path = os.fspath(path)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # an .npy file gives an array
            raise ValueError("not an .npz archive")
        with data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"{path} is not a readable lgmstm model file: {exc}") from None
    for key in ("format_version", "kind", "dtype"):
        if key not in arrays:
            raise ValueError(f"{path} is not an lgmstm model file: no '{key}' entry")
    version = arrays["format_version"]
    if version.shape != () or version.dtype.kind != "i" or int(version) != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format_version {version!r}, "
                         f"this lgmstm reads version {FORMAT_VERSION}")
    kind, dtype = str(arrays["kind"]), str(arrays["dtype"])
    if dtype not in ("float32", "float64"):
        raise ValueError(f"{path}: dtype must be float32 or float64, got {dtype!r}")
    config = {k[len("config."):]: v for k, v in arrays.items() if k.startswith("config.")}
    params = {k[len("param."):]: v for k, v in arrays.items() if k.startswith("param.")}
    return kind, np.dtype(dtype), config, params


def load(path: str | os.PathLike[str], *, backend: str = "cython") -> LGM:
    """Load a model saved with ``LGM.save`` or ``STM.save``.

    Parameters
    ----------
    path : str or os.PathLike
    backend : {"cython", "numpy"}, default "cython"

    Returns
    -------
    LGM or STM

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Anything else: not an .npz, a pickle, an unknown format version or
        kind, or parameters that do not fit the stored architecture.
    """
    from ._validation import check_choice
    from .models import BACKENDS, LGM
    from .stm import STM

    check_choice("backend", backend, BACKENDS)
    kinds: dict[str, type[LGM] | type[STM]] = {"LGM": LGM, "STM": STM}
    kind, dtype, config, params = load_arrays(path)
    if kind not in kinds:
        raise ValueError(f"{os.fspath(path)}: unknown model kind {kind!r}")
    try:
        return kinds[kind]._from_saved(config, dtype, params, os.fspath(path), backend)
    except KeyError as exc:
        raise ValueError(f"{os.fspath(path)}: missing config entry {exc}") from None
    except (TypeError, ValueError) as exc:
        message = str(exc)
        if not message.startswith(os.fspath(path)):
            message = f"{os.fspath(path)}: invalid model: {message}"
        raise ValueError(message) from None
