"""lgmstm.load: a model, or an estimator of lgmstm.sklearn, from a file of
lgmstm._persist's format, read by lgmstm._base.read_model_file: a model
through its class's _from_file (lgmstm._base.Model), an estimator through
its class's (lgmstm.sklearn owns the estimators' side of the format, the
``estimator.*`` entries, and imports nothing from here).
"""
from __future__ import annotations

import os
from typing import Any

from ._base import BACKENDS, ESTIMATOR_KINDS, MODEL_KINDS, read_model_file
from ._persist import ModelFile
from ._validation import check_bool, check_choice
from .lgm import LGM
from .stm import STM

_KINDS: dict[str, type[LGM] | type[STM]] = {model.kind: model for model in (LGM, STM)}


def load(path: str | os.PathLike[str], *, backend: str = "cython",
         stateful: bool | None = None) -> Any:
    """Load a model saved with ``LGM.save`` or ``STM.save``, or an estimator
    saved with ``LGMRegressor.save`` or ``LGMClassifier.save``.

    Parameters
    ----------
    path : str or os.PathLike
    backend : {"cython", "numpy"}, default "cython"
        The backend of the model (of an estimator's network; its
        ``backend`` hyper-parameter, for later fits, stays as saved, and
        ``LGMRegressor.load(path)`` keeps the saved network's backend too).
    stateful : bool or None, default None
        For an STM: None keeps the saved setting; True or False sets
        ``stateful`` (as ``model.stateful = ...`` would), e.g. to feed live
        streams in chunks to a model trained stateless (see
        :class:`lgmstm.STM`; :meth:`~lgmstm.STM.step` needs no stateful
        model). A ValueError for a file that holds no STM.

    Returns
    -------
    LGM, STM, lgmstm.sklearn.LGMRegressor or lgmstm.sklearn.LGMClassifier
        With what the file holds of the model's memory (format_version 2):
        its optimizer state, generator, ``history_`` and (STM) working
        memory, so that training goes on as if it had not stopped. A
        format_version 1 file holds none: the model starts with a fresh
        optimizer state, an unseeded generator and an empty ``history_``.
        An estimator comes back with its hyper-parameters and fitted
        attributes as they were saved.

    Raises
    ------
    FileNotFoundError
        No such file.
    TypeError
        stateful is not True, False or None.
    ImportError
        The file holds an estimator and scikit-learn is not installed.
    ValueError
        Anything else: not an .npz, a pickle, a format version this lgmstm
        does not read or an unknown kind, parameters that do not fit the
        stored architecture or hold NaN or inf. The file is checked entry
        by entry before its data is read: it cannot make ``load`` allocate
        much more than the model it describes needs. Also ``stateful``
        given for a file that holds no STM.
    """
    check_choice("backend", backend, BACKENDS)
    if stateful is not None:
        stateful = check_bool("stateful", stateful)
    loaded = read_model_file(path, (*MODEL_KINDS, *ESTIMATOR_KINDS),
                             lambda stored: _read(stored, backend))
    if stateful is not None:
        if not isinstance(loaded, STM):
            raise ValueError(f"{os.fspath(path)!s} holds an {type(loaded).__name__}: "
                             "stateful= applies to an STM only")
        loaded.stateful = stateful
    return loaded


def _read(stored: ModelFile, backend: str) -> Any:
    """The model or estimator the open file holds."""
    if stored.kind in _KINDS:
        return _KINDS[stored.kind]._from_file(stored, backend)
    try:
        from . import sklearn as estimators
    except ImportError as exc:
        raise ImportError(f"{stored.path} holds an lgmstm.sklearn.{stored.kind}: loading it "
                          "needs scikit-learn >= 1.6 (pip install 'lgmstm[sklearn]')") from exc
    return getattr(estimators, stored.kind)._from_file(stored, backend)
