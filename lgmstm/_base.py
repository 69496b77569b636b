"""What LGM and STM share besides training (lgmstm._training): the choices
of their constructors, Glorot initialisation, and the base class that keeps
the parameters by name and the optimizer's state between calls, pickles the
model as plain data and saves it; and the one reader of saved files
(read_model_file), for lgmstm.load and the estimators' load alike.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from os import PathLike
from typing import Any, ClassVar, NoReturn, TypeVar

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _train
from ._persist import (
    ModelFile,
    checked_path,
    open_model_file,
    read_sized,
    read_text_array,
    save_arrays,
    text_array,
)
from ._training import OptimizerState, UseLock
from ._validation import asarray_whole, check_choice, check_float_dtype, check_seed, check_targets

BACKENDS = ("cython", "numpy")
# A model's output: the last layer's function and the loss fit minimises
# ("tanh", "linear": squared error; "softmax", "sigmoid": cross-entropy).
OUTPUTS = ("tanh", "linear", "softmax", "sigmoid")
PROBABILITY_OUTPUTS = ("softmax", "sigmoid")


def check_output(output: str, n_out: int) -> str:
    """The constructor's output, checked: one of OUTPUTS; softmax needs two
    classes or more (over one it is the constant 1)."""
    output = check_choice("output", output, OUTPUTS)
    if output == "softmax" and n_out < 2:
        raise ValueError(f"output='softmax' needs n_out >= 2 classes, got n_out = {n_out} "
                         "(for one binary target use output='sigmoid')")
    return output

# validation_history_ of a model whose last training had no validation set
# (read-only, so one array serves every model; the short fit sets it too).
NO_VALIDATION: NDArray[np.float64] = _train.NO_VALIDATION

# The kinds a saved file may hold (read_model_file): the models', and the
# estimators' of lgmstm.sklearn.
MODEL_KINDS = ("LGM", "STM")
ESTIMATOR_KINDS = ("LGMRegressor", "LGMClassifier")

_Model = TypeVar("_Model", bound="Model")
_Read = TypeVar("_Read")


# The bit generators whose state a saved file may name (numpy.random's).
BIT_GENERATORS: dict[str, type[np.random.BitGenerator]] = {
    generator.__name__: generator
    for generator in (np.random.PCG64, np.random.PCG64DXSM, np.random.MT19937,
                      np.random.Philox, np.random.SFC64)}


def generator_from_state(state: Any) -> np.random.Generator:
    """A Generator in the state ``bit_generator.state`` gave (as JSON
    data); ValueError when it is not the state of a known bit generator."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if not isinstance(name, str) or name not in BIT_GENERATORS:
        raise ValueError(f"the generator's state must name one of {sorted(BIT_GENERATORS)}, "
                         f"got {state!r}"[:200])
    bit_generator = BIT_GENERATORS[name]()
    try:
        bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ValueError(f"invalid {name} state: {exc!r}"[:200]) from None
    return np.random.Generator(bit_generator)


def glorot_uniform(rng, n_in, n_out, dtype):
    """Weights drawn from U(-l, l), l = sqrt(6 / (n_in + n_out))."""
    limit = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, size=(n_in, n_out)).astype(dtype)


class Model:
    """The part of a model that does not depend on its architecture.

    A subclass sets ``kind`` and, in its constructor, calls
    :meth:`_set_up` before making its parameters ``_params`` (a list, in the
    order of :meth:`_param_names`), and defines the hooks below.
    """

    kind: ClassVar[str]  # as written in saved files
    # The constructor's arguments that fix the architecture, read-only
    # afterwards (see _refuse); the subclass's first, as its repr lists them.
    _fixed: ClassVar[tuple[str, ...]]
    _dtype: np.dtype[Any]
    _backend: str
    _output: str
    history_: NDArray[np.float64]
    validation_history_: NDArray[np.float64]
    best_epoch_: int | None
    _params: list[NDArray[Any]]
    _rng: np.random.Generator
    _lock: UseLock
    _optimizer_state: OptimizerState | None  # see reset_optimizer

    def _set_up(self, dtype: DTypeLike, seed: int | np.random.Generator | None,
                backend: str) -> None:
        """Check dtype and backend, seed the generator, make the lock."""
        self._dtype = check_float_dtype(dtype)
        self._backend = check_choice("backend", backend, BACKENDS)
        self._rng = np.random.default_rng(check_seed("seed", seed))
        self._lock = UseLock()
        self.history_ = np.empty(0)
        self.validation_history_, self.best_epoch_ = NO_VALIDATION, None
        self._optimizer_state = None

    # -- the architecture: read-only ----------------------------------------------
    @property
    def dtype(self) -> np.dtype[Any]:
        """Dtype of the parameters and of every result (read-only)."""
        return self._dtype

    @dtype.setter
    def dtype(self, value: DTypeLike) -> None:
        self._refuse("dtype", value)

    @property
    def backend(self) -> str:
        """"cython" or "numpy" (read-only)."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._refuse("backend", value)

    @property
    def output(self) -> str:
        """The last layer's activation: "tanh" or "linear" (squared error),
        "softmax" or "sigmoid" (cross-entropy) (read-only)."""
        return self._output

    @output.setter
    def output(self, value: str) -> None:
        self._refuse("output", value)

    def _refuse(self, name: str, value: Any) -> NoReturn:
        """The AttributeError of setting an attribute of the architecture: the
        compiled network, save and pickling all read the constructor's
        choices, so a model cannot change them in place."""
        shown = value.__name__ if isinstance(value, type) else repr(value)  # np.float32
        raise AttributeError(
            f"{self.kind}.{name} is read-only: {', '.join(self._fixed)} are fixed when the "
            f"model is made (they decide what it computes and what save writes); make a "
            f"new {self.kind} with {name}={shown} instead")

    # -- hooks ---------------------------------------------------------------------
    def _param_names(self) -> Iterable[str]:
        """The parameters' names, in the order of _params."""
        raise NotImplementedError

    def _arguments(self) -> dict[str, Any]:
        """The constructor's arguments besides dtype, seed and backend, as pickled."""
        raise NotImplementedError

    def _construct(self, arguments: dict[str, Any], dtype: str, backend: str,
                   rng: np.random.Generator) -> None:
        """Make the model as this class's constructor (not a subclass's) would
        from _arguments(), with rng as its generator and parameters left
        unset (np.empty), for the caller to fill: no initial weights are
        drawn only to be overwritten."""
        raise NotImplementedError

    def _config(self) -> dict[str, NDArray[Any]]:
        """The architecture as saved files hold it (``config.*``)."""
        raise NotImplementedError

    def _memory(self) -> dict[str, Any]:
        """What the model remembers between calls, as pickled (copies); the
        arrays among them (None: nothing) are saved too, as ``memory.{name}``."""
        return {}

    def _recall(self, memory: dict[str, NDArray[Any]], path: str) -> None:
        """Take back, checked, what a saved file holds of _memory() (popping
        each entry from memory; what is left is refused)."""

    @classmethod
    def _from_saved(cls, config: dict[str, NDArray[Any]], dtype: np.dtype[Any],
                    arrays: dict[str, Any], path: str, backend: str) -> Any:
        """The model a saved file's config and parameters (``param.*``, read
        only once their shapes fit config) describe, of this class."""
        raise NotImplementedError

    def _short_fit_targets(self, Y: Any, n_out: int) -> bool:
        """Whether the short fit may take Y as a softmax or sigmoid output's
        targets: an ndarray of the model's dtype with n_out outputs, its
        targets valid (else the checked path runs, and raises its errors in
        its order)."""
        if type(Y) is not np.ndarray or Y.dtype != self._dtype or Y.ndim < 2 \
                or Y.shape[-1] != n_out:
            return False
        try:
            check_targets(self._output, Y)
        except ValueError:
            return False
        return True

    # -- parameters ---------------------------------------------------------------
    def _named(self, arrays: Iterable[NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """arrays (one per parameter, in the order of _params) by parameter name."""
        return dict(zip(self._param_names(), arrays))

    @property
    def params(self) -> dict[str, NDArray[Any]]:
        """Copies of the parameters, by name."""
        with self._lock.reading():
            return self._named(p.copy() for p in self._params)

    def load_params(self, params: Mapping[str, ArrayLike]) -> None:
        """Set every parameter from ``params``, keyed as :attr:`params`.

        All are checked before any is written: a call that raises leaves
        the model as it was. The values are copied (the model keeps no
        reference to them) and converted to the model's dtype. The
        optimizer's state is kept (see :meth:`reset_optimizer` to start it
        afresh), as is an STM's working memory.

        Parameters
        ----------
        params : mapping of str to array-like
            One entry per parameter, with exactly the names of
            :attr:`params`; each of that parameter's shape, of a float32 or
            float64 dtype (nested lists of floats are read as float64), and
            finite.

        Raises
        ------
        TypeError
            params is not a mapping, or a value is not an array of float32
            or float64 (the message names the parameter).
        ValueError
            A name is missing or unknown, or a value has the wrong shape or
            holds NaN or inf (the message names the parameter, with the
            expected and actual shape).
        RuntimeError
            Another thread is training this model.
        """
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a mapping of parameter names to arrays, got "
                            f"{type(params).__name__}")
        current = self._named(self._params)
        missing = [name for name in current if name not in params]
        unknown = [name for name in params if name not in current]
        if missing or unknown:
            found = "; ".join(part for part in (
                f"missing {missing}" if missing else "",
                f"unknown {[str(n) for n in unknown]}" if unknown else "") if part)
            raise ValueError(f"load_params needs exactly the parameters {list(current)}: {found}")
        values = {}
        for name, param in current.items():
            value = params[name]
            try:
                array = value if isinstance(value, np.ndarray) else asarray_whole(value)
            except (TypeError, ValueError) as exc:   # a ragged sequence
                raise ValueError(f"parameter {name} must be an array of shape {param.shape}, "
                                 f"got {type(value).__name__} that is not one: {exc}"[:300]
                                 ) from None
            # float32 or float64, in either byte order.
            if array.dtype.kind != "f" or array.dtype.itemsize not in (4, 8):
                raise TypeError(f"parameter {name} must be an array of float32 or float64 "
                                f"(converted to the model's {self.dtype}), got dtype "
                                f"{array.dtype}")
            if array.shape != param.shape:
                raise ValueError(f"parameter {name} must have shape {param.shape}, got "
                                 f"{array.shape}")
            if not np.isfinite(array).all():
                raise ValueError(f"parameter {name} must be finite, got NaN or inf")
            with np.errstate(over="ignore"):
                converted = array.astype(self.dtype)
            if not np.isfinite(converted).all():   # float64 values past float32's range
                raise ValueError(f"parameter {name} must be finite in the model's dtype "
                                 f"{self.dtype}, got values beyond its range (largest "
                                 f"magnitude {np.abs(array).max():g})")
            values[name] = converted
        with self._lock.training():
            for name, param in current.items():
                param[...] = values[name]

    def _restore(self, arrays: dict[str, Any], path: str) -> None:
        """Copy a saved file's arrays (ndarrays, or lgmstm._persist.StoredArray
        entries, read only once their header fits) into the parameters,
        refusing any name, shape or dtype that does not match the
        architecture, and NaN or inf."""
        params = self._named(self._params)
        if set(arrays) != set(params):
            raise ValueError(f"{path}: parameters {sorted(arrays)} do not match the "
                             f"architecture, which needs {sorted(params)}")
        for name, param in params.items():
            param[...] = read_sized(arrays[name], f"{path}: parameter {name}", param.shape,
                                    param.dtype, finite=True)

    # -- the optimizer's state ----------------------------------------------------
    def reset_optimizer(self) -> None:
        """Forget the optimizer's state: the next warm call starts it afresh.

        The model keeps, between calls, the state that its latest training
        left in the optimizer: the moments (momentum's velocity, Adam's
        means of the gradient and of its square; one array per parameter)
        and the count of updates done (Adam's bias correction). A call
        goes on from it (``partial_fit``, ``fit(warm_start=True)``) when it
        was made by the optimizer the call names with the same settings
        (its ``momentum`` and ``nesterov``; Adam's ``beta1``, ``beta2`` and
        ``eps``; by default 0.9, off; 0.9, 0.999, 1e-8). It starts over, from zero
        moments and step 0, when:

        - ``fit`` is called without ``warm_start=True``;
        - the call names another optimizer, or the same with other
          settings (or a state saved with other settings is loaded);
        - ``reset_optimizer()`` was called;
        - the model is new, or was loaded from a file or pickle that holds
          none (format_version 1 files and older pickles have none).

        Anything else carries on with it: a new lr (a schedule), batch size,
        weight_decay, clip_norm, shuffle or seed, other data, and new
        parameters from :meth:`load_params`. The state a call leaves is
        kept, also after Ctrl-C or a divergence (then, that of the last
        finished or finite epoch). ``save`` and pickling keep it, with the
        model's generator (the default shuffling), so that training resumes
        exactly after :func:`lgmstm.load`.

        Waits for a fit in another thread to finish; called from a fit's
        callback, the fit goes on with its moments and the model holds none
        afterwards.
        """
        with self._lock.reading():
            self._optimizer_state = None

    # -- pickling: plain data only (the lock and compiled networks are rebuilt) -----
    def __copy__(self) -> Any:
        """copy.copy: a model of its own, as copy.deepcopy gives (a shallow
        copy would share the random generator, so that training one moved
        the other's shuffling)."""
        return copy.deepcopy(self)

    def __getstate__(self) -> dict[str, Any]:
        with self._lock.reading():
            state = self._optimizer_state
            optimizer = None if state is None else {
                **state.header(), "moments": [[a.copy() for a in arrays]
                                              for arrays in state.moments]}
            return {**self._arguments(), "dtype": self.dtype.name, "backend": self.backend,
                    "params": [p.copy() for p in self._params], **self._memory(),
                    "history_": self.history_, "rng": self._rng, "optimizer": optimizer,
                    "validation_history_": self.validation_history_,
                    "best_epoch_": self.best_epoch_}

    def __setstate__(self, pickled: dict[str, Any]) -> None:
        self._construct(pickled, pickled["dtype"], pickled["backend"], pickled["rng"])
        for param, value in zip(self._params, pickled["params"]):
            param[...] = value
        self.history_ = pickled["history_"]
        # Pickles before validation have neither.
        self.validation_history_ = pickled.get("validation_history_", NO_VALIDATION)
        self.best_epoch_ = pickled.get("best_epoch_")
        optimizer = pickled.get("optimizer")  # pickles before it have none
        if optimizer is not None:
            header = {key: optimizer[key] for key in ("name", "settings", "step")}
            self._optimizer_state = OptimizerState.restored(header, optimizer["moments"],
                                                            self._params)

    # -- persistence -------------------------------------------------------------
    def save(self, path: str | PathLike[str]) -> None:
        """Write the model to ``path`` as an .npz file (no pickle), atomically.

        The file holds the format version, kind, dtype, architecture and
        parameters as plain arrays, and what training needs to go on
        exactly where it stopped: the optimizer's state (see
        :meth:`reset_optimizer`), the state of the model's random generator
        (the default shuffling of ``fit``) and an STM's working memory, and
        ``history_`` (with ``validation_history_`` and ``best_epoch_`` when
        the last fit validated). It is written to a temporary file beside ``path`` and
        renamed over it, so ``path`` never holds half a model. Read it back
        with :func:`lgmstm.load`.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write, exactly as named (no suffix is added).

        Raises
        ------
        TypeError
            path is not a str, bytes or os.PathLike.
        OSError
            The file cannot be written (the error names ``path``); an
            existing file at ``path`` is left as it was.
        """
        config = self._config()
        with self._lock.reading():
            validation = None
            if self.best_epoch_ is not None or len(self.validation_history_):
                validation = (self.validation_history_, self.best_epoch_)
            save_arrays(path, self.kind, self.dtype, config, self._named(self._params),
                        self._saved_memory(), history=self.history_, validation=validation)

    @classmethod
    def _from_file(cls: type[_Model], stored: ModelFile, backend: str) -> _Model:
        """The model an open file of this kind holds (read_model_file), with
        its memory and history_."""
        model: _Model = cls._from_saved(stored.config, stored.dtype, stored.params,
                                        stored.path, backend)
        model._restore_memory(stored.memory, stored.path)
        model.history_ = stored.history()
        model.validation_history_, model.best_epoch_ = stored.validation()
        if not len(model.validation_history_):
            model.validation_history_ = NO_VALIDATION
        return model

    def _saved_memory(self) -> dict[str, NDArray[Any]]:
        """The ``memory.*`` entries of a saved file (lgmstm._persist): the
        generator's state and the optimizer's header as JSON text, the
        moments as ``optimizer.moment{k}.{parameter}``, and _memory()'s arrays."""
        memory = {"generator": text_array(self._rng.bit_generator.state)}
        state = self._optimizer_state
        if state is not None:
            memory["optimizer"] = text_array(state.header())
            for k, arrays in enumerate(state.moments):
                memory.update({f"optimizer.moment{k}.{name}": array
                               for name, array in self._named(arrays).items()})
        memory.update({name: value for name, value in self._memory().items()
                       if value is not None})
        return memory

    def _restore_memory(self, memory: dict[str, Any], path: str) -> None:
        """Take back what _saved_memory() wrote, refusing anything else.

        memory: ndarrays, or lgmstm._persist.StoredArray entries, none of
        which is read before its name is known and, for the moments, its
        shape and dtype are those of its parameter."""
        from ._training import OPTIMIZERS

        memory = dict(memory)
        params = self._named(self._params)
        expected = {"generator", "optimizer", *self._memory()}
        if "optimizer" in memory:
            expected.update(f"optimizer.moment{k}.{name}" for name in params
                            for k in range(max(o.n_moments for o in OPTIMIZERS.values())))
        if set(memory) - expected:
            raise ValueError(f"{path}: unexpected entries "
                             f"{sorted('memory.' + key for key in set(memory) - expected)}")
        if "generator" in memory:
            self._rng = generator_from_state(read_text_array(memory.pop("generator"),
                                                             "memory.generator"))
        if "optimizer" in memory:
            header = read_text_array(memory.pop("optimizer"), "memory.optimizer")
            moments: list[list[Any]] = []  # None where an entry is missing
            while any(key.startswith(f"optimizer.moment{len(moments)}.") for key in memory):
                prefix = f"optimizer.moment{len(moments)}."
                moments.append([
                    None if prefix + name not in memory else
                    read_sized(memory.pop(prefix + name), f"{path}: memory.{prefix}{name}",
                               param.shape, param.dtype)
                    for name, param in params.items()])
            self._optimizer_state = OptimizerState.restored(header, moments, self._params)
        # What is left is the subclass's _memory(), of sizes lgmstm._persist bounds.
        memory = {key: np.asarray(value) for key, value in memory.items()}
        self._recall(memory, path)
        if memory:
            raise ValueError(f"{path}: unexpected entries "
                             f"{sorted('memory.' + key for key in memory)}")


def read_model_file(path: str | PathLike[str], kinds: tuple[str, ...],
                    read: Callable[[ModelFile], _Read]) -> _Read:
    """read(the file at path, open), refusing a file of a kind not in kinds
    (lgmstm.load takes any kind, LGMRegressor.load its own), with its errors
    as ValueErrors that name path: the one reader of lgmstm.load and the
    estimators' load."""
    path = checked_path(path)
    with open_model_file(path) as stored:
        if stored.kind not in (*MODEL_KINDS, *ESTIMATOR_KINDS):
            raise ValueError(f"{path}: unknown model kind {stored.kind!r}; this lgmstm "
                             f"reads {', '.join((*MODEL_KINDS, *ESTIMATOR_KINDS))}")
        if stored.kind not in kinds:
            raise ValueError(f"{path} holds an {stored.kind}, not an {' or '.join(kinds)} "
                             "(lgmstm.load reads any kind)")
        try:
            return read(stored)
        except KeyError as exc:
            raise ValueError(f"{path}: missing config entry {exc}") from None
        except (TypeError, ValueError, OverflowError) as exc:
            message = str(exc)
            if not message.startswith(path):
                message = f"{path}: invalid model: {message}"
            raise ValueError(message) from None
