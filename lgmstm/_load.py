"""lgmstm.load: a model, or an estimator of lgmstm.sklearn, from a file of
lgmstm._persist's format; and the estimators' side of that format, above
the models (save_estimator, and the ``estimator.*`` entries).

An estimator's file is its network's file (``config.*``, ``param.*``,
``memory.*``, ``history``) under the estimator's kind, with
``estimator.header``, JSON text: the hyper-parameters (get_params), the
fitted attributes that are not arrays, which arrays were object arrays, and
the backend of the network; and each fitted array attribute as
``estimator.attribute.{name}``. Values that JSON cannot hold exactly
(tuples, NumPy dtypes and scalars, a RandomState) are written as
one-key objects, {"$tuple": [...]} and the like, and only those are read.
"""
from __future__ import annotations

import os
from typing import Any, TypeVar

import numpy as np

from ._base import BACKENDS, BIT_GENERATORS
from ._persist import (
    ModelFile,
    checked_path,
    open_model_file,
    read_sized,
    read_text_array,
    save_arrays,
    text_array,
)
from ._validation import check_choice
from .lgm import LGM
from .stm import STM

_KINDS: dict[str, type[LGM] | type[STM]] = {"LGM": LGM, "STM": STM}
ESTIMATOR_KINDS = ("LGMRegressor", "LGMClassifier")  # classes of lgmstm.sklearn
_ESTIMATOR_HEADER = {"hyper_parameters", "attributes", "object_arrays", "network_backend"}
_ATTRIBUTE = "attribute."
_Model = TypeVar("_Model", bound="LGM | STM")


def load(path: str | os.PathLike[str], *, backend: str = "cython") -> Any:
    """Load a model saved with ``LGM.save`` or ``STM.save``, or an estimator
    saved with ``LGMRegressor.save`` or ``LGMClassifier.save``.

    Parameters
    ----------
    path : str or os.PathLike
    backend : {"cython", "numpy"}, default "cython"
        The backend of the model (of an estimator's network; its
        ``backend`` hyper-parameter, for later fits, stays as saved, and
        ``LGMRegressor.load(path)`` keeps the saved network's backend too).

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
    ImportError
        The file holds an estimator and scikit-learn is not installed.
    ValueError
        Anything else: not an .npz, a pickle, a format version this lgmstm
        does not read or an unknown kind, parameters that do not fit the
        stored architecture or hold NaN or inf. The file is checked entry
        by entry before its data is read: it cannot make ``load`` allocate
        much more than the model it describes needs.
    """
    check_choice("backend", backend, BACKENDS)
    return load_file(path, backend, (*_KINDS, *ESTIMATOR_KINDS))


def load_file(path: str | os.PathLike[str], backend: str | None, kinds: tuple[str, ...]
              ) -> Any:
    """load(path, backend=backend), refusing a file of a kind not in kinds;
    backend None: "cython" for a model, the saved network's for an estimator."""
    if backend is not None:
        check_choice("backend", backend, BACKENDS)
    path = checked_path(path)
    with open_model_file(path) as stored:
        if stored.kind not in (*_KINDS, *ESTIMATOR_KINDS):
            raise ValueError(f"{path}: unknown model kind {stored.kind!r}; this lgmstm "
                             f"reads {', '.join((*_KINDS, *ESTIMATOR_KINDS))}")
        if stored.kind not in kinds:
            raise ValueError(f"{path} holds an {stored.kind}, not an {' or '.join(kinds)} "
                             "(lgmstm.load reads any kind)")
        try:
            if stored.kind in _KINDS:
                return _network(_KINDS[stored.kind], stored, backend or "cython")
            return _estimator(stored, backend)
        except KeyError as exc:
            raise ValueError(f"{path}: missing config entry {exc}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            message = str(exc)
            if not message.startswith(path):
                message = f"{path}: invalid model: {message}"
            raise ValueError(message) from None


def _network(model_class: type[_Model], stored: ModelFile, backend: str) -> _Model:
    """The model the file holds, with its memory and history_."""
    model = model_class._from_saved(stored.config, stored.dtype, stored.params, stored.path,
                                    backend)
    model._restore_memory(stored.memory, stored.path)
    model.history_ = stored.history()
    return model


# -- estimators ---------------------------------------------------------------------------
def save_estimator(estimator: Any, path: str | os.PathLike[str]) -> None:
    """Write a fitted estimator of lgmstm.sklearn to path (its ``save``)."""
    kind = next(c.__name__ for c in type(estimator).__mro__ if c.__name__ in ESTIMATOR_KINDS)
    network: LGM = estimator.lgm_
    hyper_parameters = estimator.get_params(deep=False)
    attributes, arrays, object_arrays = {}, {}, []
    for name, value in vars(estimator).items():
        if name in hyper_parameters or name == "lgm_":
            continue
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                value = _without_objects(name, value)
                object_arrays.append(name)
            arrays[_ATTRIBUTE + name] = value
        else:
            attributes[name] = _to_json(value, f"attribute {name}")
    header = {"hyper_parameters": {name: _to_json(value, f"hyper-parameter {name}")
                                   for name, value in hyper_parameters.items()},
              "attributes": attributes, "object_arrays": object_arrays,
              "network_backend": network.backend}
    config = network._config()
    with network._lock.reading():
        save_arrays(path, kind, network.dtype, config, network._named(network._params),
                    network._saved_memory(), history=network.history_,
                    estimator={"header": text_array(header), **arrays})


def _estimator(stored: ModelFile, backend: str | None) -> Any:
    try:
        from . import sklearn as estimators
    except ImportError as exc:
        raise ImportError(f"{stored.path} holds an lgmstm.sklearn.{stored.kind}: loading it "
                          "needs scikit-learn >= 1.6 (pip install 'lgmstm[sklearn]')") from exc
    entries = dict(stored.estimator)
    if "header" not in entries:
        raise ValueError(f"{stored.path}: an {stored.kind} file needs an estimator.header entry")
    header = read_text_array(entries.pop("header"), "estimator.header")
    if not isinstance(header, dict) or set(header) != _ESTIMATOR_HEADER:
        raise ValueError(f"estimator.header must hold {sorted(_ESTIMATOR_HEADER)}, got "
                         f"{header!r}"[:300])
    estimator_class = getattr(estimators, stored.kind)
    known = set(estimator_class._get_param_names())
    hyper_parameters = _mapping(header["hyper_parameters"], "hyper_parameters")
    if set(hyper_parameters) - known:
        raise ValueError(f"{stored.kind} has no hyper-parameters "
                         f"{sorted(set(hyper_parameters) - known)}")
    estimator = estimator_class(**{name: _from_json(value, f"hyper-parameter {name}")
                                   for name, value in hyper_parameters.items()})
    network_backend = check_choice("the network's backend",
                                   backend or header["network_backend"], BACKENDS)
    network = _network(LGM, stored, network_backend)
    n_features, n_outputs = network.layer_sizes[0], network.layer_sizes[-1]
    for name, value in _mapping(header["attributes"], "attributes").items():
        setattr(estimator, _attribute_name(estimator, name), _from_json(value, f"attribute {name}"))
    object_arrays = header["object_arrays"]
    if not isinstance(object_arrays, list) or not all(isinstance(n, str) for n in object_arrays):
        raise ValueError(f"estimator.header's object_arrays must be a list of names, got "
                         f"{object_arrays!r}"[:200])
    for key, entry in entries.items():
        if not key.startswith(_ATTRIBUTE):
            raise ValueError(f"unexpected entry estimator.{key}")
        name = _attribute_name(estimator, key[len(_ATTRIBUTE):])
        array = _attribute_array(name, entry, n_features, n_outputs)
        setattr(estimator, name, array.astype(object) if name in object_arrays else array)
    estimator.lgm_ = network
    _check_fitted(estimator, stored.kind, n_features, n_outputs)
    return estimator


def _attribute_name(estimator: Any, name: str) -> str:
    """name, when it can be a fitted attribute of estimator: not one of its
    hyper-parameters, methods or properties, nor lgm_."""
    if (not name.isidentifier() or name == "lgm_" or hasattr(type(estimator), name)
            or name in estimator.get_params(deep=False)):
        raise ValueError(f"{name!r} cannot be a fitted attribute of an "
                         f"{type(estimator).__name__}"[:200])
    return name


def _attribute_array(name: str, entry: Any, n_features: int, n_outputs: int) -> np.ndarray:
    """A fitted array attribute, its shape checked against the network before
    its data is read where the network fixes it."""
    what = f"estimator.{_ATTRIBUTE}{name}"
    if name in ("y_mean_", "y_scale_"):
        return read_sized(entry, what, (n_outputs,), np.dtype(np.float64), finite=True)
    if entry.dtype.kind not in "biufUS":
        raise ValueError(f"{what} has dtype {entry.dtype}; lgmstm writes numbers or text")
    if name == "feature_names_in_" and entry.shape != (n_features,):
        raise ValueError(f"{what} has shape {entry.shape}; the network has {n_features} "
                         "features")
    if name == "classes_" and (entry.ndim != 1 or not 0 < entry.shape[0] <= max(2, n_outputs)
                               or (n_outputs > 1 and entry.shape[0] != n_outputs)):
        raise ValueError(f"{what} has shape {entry.shape}; the network has {n_outputs} "
                         "outputs (one for up to two classes, else one per class)")
    if name == "loss_curve_" and (entry.ndim != 1 or entry.dtype != np.float64):
        raise ValueError(f"{what} must be a 1-d float64 array, got shape {entry.shape} and "
                         f"dtype {entry.dtype}")
    return np.asarray(entry)


def _check_fitted(estimator: Any, kind: str, n_features: int, n_outputs: int) -> None:
    """The fitted attributes predict reads are there and fit the network."""
    needed = {"n_features_in_", "n_iter_", "loss_curve_",
              *(("classes_",) if kind == "LGMClassifier" else
                ("n_outputs_", "y_mean_", "y_scale_", "_y_1d"))}
    missing = sorted(name for name in needed if not hasattr(estimator, name))
    if missing:
        raise ValueError(f"the {kind} misses the fitted attributes {missing}")
    for name, value in (("n_features_in_", n_features), ("n_outputs_", n_outputs)):
        if name in needed and (type(getattr(estimator, name)) is not int
                               or getattr(estimator, name) != value):
            raise ValueError(f"{name} must be {value}, the network's, got "
                             f"{getattr(estimator, name)!r}")


def _without_objects(name: str, array: np.ndarray) -> np.ndarray:
    """An object array (labels, feature names) as an array of numbers or
    text that gives back the same values, of the same types, via
    astype(object); ValueError when there is none."""
    plain = np.asarray(array.tolist())
    back = plain.astype(object)
    if (plain.dtype.kind not in "biufU" or plain.shape != array.shape
            or not all(type(a) is type(b) and a == b
                       for a, b in zip(back.ravel(), array.ravel()))):
        raise ValueError(f"{name} holds {array.dtype} values that a file cannot hold "
                         "exactly without pickle (one type of number, or text, can be saved)")
    return plain


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"estimator.header's {name} must be an object, got {value!r}"[:200])
    return value


def _to_json(value: Any, name: str) -> Any:
    """value as JSON data that _from_json turns back into the same value."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, (tuple, list)) and type(value) in (tuple, list):
        return {f"${type(value).__name__}": [_to_json(item, name) for item in value]}
    if isinstance(value, np.dtype):
        return {"$dtype": value.str}
    if isinstance(value, type) and issubclass(value, np.generic):
        return {"$scalar_type": np.dtype(value).str}
    if isinstance(value, np.generic) and value.dtype.kind in "biufU":
        return {"$scalar": value.dtype.str, "value": value.item()}
    if type(value) is np.random.RandomState:
        return {"$RandomState": value.get_state(legacy=False)}
    raise TypeError(f"{name} = {value!r} cannot be saved without pickle"[:300])


def _from_json(data: Any, name: str) -> Any:
    """The value _to_json wrote as data; ValueError for anything else."""
    if data is None or type(data) in (bool, int, float, str):
        return data
    if isinstance(data, dict) and len(data) in (1, 2):
        tag = next(iter(data))
        body = data[tag]
        try:
            if tag in ("$tuple", "$list") and isinstance(body, list) and len(data) == 1:
                items = [_from_json(item, name) for item in body]
                return tuple(items) if tag == "$tuple" else items
            if tag == "$dtype" and isinstance(body, str) and len(data) == 1:
                return np.dtype(body)
            if tag == "$scalar_type" and isinstance(body, str) and len(data) == 1:
                return np.dtype(body).type
            if tag == "$scalar" and isinstance(body, str) and set(data) == {tag, "value"}:
                dtype = np.dtype(body)
                if dtype.kind in "biufU" and type(data["value"]) in (bool, int, float, str):
                    return dtype.type(data["value"])
            if tag == "$RandomState" and isinstance(body, dict) and len(data) == 1:
                return _random_state(body)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{name}: {data!r}: {exc}"[:300]) from None
    raise ValueError(f"{name} holds {data!r}, which lgmstm does not write"[:300])


def _random_state(state: dict[str, Any]) -> np.random.RandomState:
    name = state.get("bit_generator")
    if not isinstance(name, str) or name not in BIT_GENERATORS:
        raise ValueError(f"a RandomState's state must name one of {sorted(BIT_GENERATORS)}")
    random_state = np.random.RandomState(BIT_GENERATORS[name]())
    try:
        random_state.set_state(state)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"invalid RandomState state: {exc!r}") from None
    return random_state
