"""What LGM and STM share besides training (lgmstm._training): the choices
of their constructors, Glorot initialisation, and the base class that keeps
the parameters by name, pickles the model as plain data and saves it.
"""
from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from typing import Any, ClassVar

import numpy as np
from numpy.typing import DTypeLike, NDArray

from ._persist import save_arrays
from ._training import UseLock
from ._validation import check_choice, check_float_dtype, check_seed

BACKENDS = ("cython", "numpy")
OUTPUTS = ("tanh", "linear")


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
    dtype: np.dtype[Any]
    backend: str
    history_: NDArray[np.float64]
    _params: list[NDArray[Any]]
    _rng: np.random.Generator
    _lock: UseLock

    def _set_up(self, dtype: DTypeLike, seed: int | np.random.Generator | None,
                backend: str) -> None:
        """Check dtype and backend, seed the generator, make the lock."""
        self.dtype = check_float_dtype(dtype)
        self.backend = check_choice("backend", backend, BACKENDS)
        self._rng = np.random.default_rng(check_seed("seed", seed))
        self._lock = UseLock()
        self.history_ = np.empty(0)

    # -- hooks ---------------------------------------------------------------------
    def _param_names(self) -> Iterable[str]:
        """The parameters' names, in the order of _params."""
        raise NotImplementedError

    def _arguments(self) -> dict[str, Any]:
        """The constructor's arguments besides dtype, seed and backend, as pickled."""
        raise NotImplementedError

    def _construct(self, arguments: dict[str, Any], dtype: str, backend: str) -> None:
        """Run this class's constructor (not a subclass's) on _arguments()."""
        raise NotImplementedError

    def _config(self) -> dict[str, NDArray[Any]]:
        """The architecture as saved files hold it (``config.*``)."""
        raise NotImplementedError

    def _memory(self) -> dict[str, Any]:
        """What the model remembers between calls, as pickled (copies)."""
        return {}

    # -- parameters ---------------------------------------------------------------
    def _named(self, arrays: Iterable[NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """arrays (one per parameter, in the order of _params) by parameter name."""
        return dict(zip(self._param_names(), arrays))

    @property
    def params(self) -> dict[str, NDArray[Any]]:
        """Copies of the parameters, by name."""
        with self._lock.reading():
            return self._named(p.copy() for p in self._params)

    def _restore(self, arrays: dict[str, NDArray[Any]], path: str) -> None:
        """Copy a saved file's arrays into the parameters, refusing any name,
        shape or dtype that does not match the architecture."""
        params = self._named(self._params)
        if set(arrays) != set(params):
            raise ValueError(f"{path}: parameters {sorted(arrays)} do not match the "
                             f"architecture, which needs {sorted(params)}")
        for name, param in params.items():
            value = arrays[name]
            if value.shape != param.shape or value.dtype != param.dtype:
                raise ValueError(f"{path}: {name} has shape {value.shape} and dtype "
                                 f"{value.dtype}; the architecture needs {param.shape} "
                                 f"{param.dtype}")
            param[...] = value

    # -- pickling: plain data only (the lock and compiled networks are rebuilt) -----
    def __getstate__(self) -> dict[str, Any]:
        with self._lock.reading():
            return {**self._arguments(), "dtype": self.dtype.name, "backend": self.backend,
                    "params": [p.copy() for p in self._params], **self._memory(),
                    "history_": self.history_, "rng": self._rng}

    def __setstate__(self, pickled: dict[str, Any]) -> None:
        self._construct(pickled, pickled["dtype"], pickled["backend"])
        for param, value in zip(self._params, pickled["params"]):
            param[...] = value
        self.history_, self._rng = pickled["history_"], pickled["rng"]

    # -- persistence -------------------------------------------------------------
    def save(self, path: str | PathLike[str]) -> None:
        """Write the model to ``path`` as an .npz file (no pickle), atomically.

        The file holds the format version, kind, dtype, architecture and
        parameters as plain arrays; it is written to a temporary file beside
        ``path`` and renamed over it, so ``path`` never holds half a model.
        An STM's working memory is not saved (a loaded model starts from
        zero states). Read it back with :func:`lgmstm.load`.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write, exactly as named (no suffix is added).

        Raises
        ------
        TypeError
            path is not a str, bytes or os.PathLike.
        OSError
            The file cannot be written; an existing file at ``path`` is
            left as it was.
        """
        config = self._config()
        with self._lock.reading():
            save_arrays(path, self.kind, self.dtype, config, self._named(self._params))
