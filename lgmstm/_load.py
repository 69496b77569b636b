"""lgmstm.load: a model from a file of lgmstm._persist's format."""
from __future__ import annotations

import os

from ._base import BACKENDS
from ._persist import checked_path, load_arrays
from ._validation import check_choice
from .lgm import LGM
from .stm import STM

_KINDS: dict[str, type[LGM] | type[STM]] = {"LGM": LGM, "STM": STM}


def load(path: str | os.PathLike[str], *, backend: str = "cython") -> LGM | STM:
    """Load a model saved with ``LGM.save`` or ``STM.save``.

    Parameters
    ----------
    path : str or os.PathLike
    backend : {"cython", "numpy"}, default "cython"

    Returns
    -------
    LGM or STM
        With what the file holds of the model's memory (format_version 2):
        its optimizer state, generator and (STM) working memory, so that
        training goes on as if it had not stopped. A format_version 1 file
        holds none: the model starts with a fresh optimizer state and an
        unseeded generator.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Anything else: not an .npz, a pickle, an unknown format version or
        kind, or parameters that do not fit the stored architecture.
    """
    check_choice("backend", backend, BACKENDS)
    path = checked_path(path)
    kind, dtype, config, params, memory = load_arrays(path)
    if kind not in _KINDS:
        raise ValueError(f"{path}: unknown model kind {kind!r}")
    try:
        model = _KINDS[kind]._from_saved(config, dtype, params, path, backend)
        model._restore_memory(memory, path)
        return model
    except KeyError as exc:
        raise ValueError(f"{path}: missing config entry {exc}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        message = str(exc)
        if not message.startswith(path):
            message = f"{path}: invalid model: {message}"
        raise ValueError(message) from None
