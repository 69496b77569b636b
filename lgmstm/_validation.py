"""Checks at the Python boundary, shared by the compiled kernels, the NumPy
reference and the models, so that both backends accept and refuse exactly
the same input.

Array arguments: float32 and float64 are kept; integer and bool arrays are
converted to the floating dtype of the call (float64 when nothing else fixes
it); every other dtype (complex, float16, longdouble, object, strings, ...)
is refused with a TypeError. For the kernels, arrays of different floating
dtypes in one call are refused: lgmstm never down- or up-casts a float array
behind your back. The models are the exception, by design: their data (X, Y)
take the model's dtype, whichever float dtype they come in (an STM's
initial_state, another model's memory, must have it already).
"""
from __future__ import annotations

import math
import numbers
import warnings

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# BLAS takes 32-bit sizes; refuse anything it could not index.
MAX_DIM = 2**31 - 1


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    return f"{type(value).__name__} {value!r}"[:120]


# What NumPy < 1.24 warns of, where later ones raise ValueError, as it makes
# an object array of a ragged sequence.
_RAGGED_WARNING = getattr(np, "exceptions", np).VisibleDeprecationWarning


def asarray_whole(value) -> np.ndarray:
    """np.asarray(value), a ragged sequence a ValueError on every NumPy."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", _RAGGED_WARNING)
        try:
            return np.asarray(value)
        except _RAGGED_WARNING as exc:
            raise ValueError(str(exc)) from None


def _as_ndarray(name: str, value, elements: str) -> np.ndarray:
    """np.asarray(value), refusing strings and what NumPy cannot make an array
    of with a TypeError that says the array should hold `elements`."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be an array of {elements}, got {_describe(value)}")
    try:
        return asarray_whole(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be an array of {elements}: {exc}") from None


def check_float_dtype(dtype, *, error: type[Exception] = TypeError, where: str = "") -> np.dtype:
    """dtype as numpy's float32 or float64 dtype.

    Anything else, or anything NumPy cannot read as a dtype, raises `error`
    ("{where}dtype must be float32 or float64, got ..."): the models raise a
    TypeError, the scikit-learn estimators a ValueError (their convention for
    a bad hyper-parameter), the file reader a ValueError that names the file.
    """
    try:
        checked = np.dtype(dtype)
    except (TypeError, ValueError):
        raise error(f"{where}dtype must be float32 or float64, got {dtype!r}") from None
    if checked not in FLOAT_DTYPES:
        raise error(f"{where}dtype must be float32 or float64, got {checked}")
    return checked


def check_number_dtype(name: str, dtype: np.dtype) -> None:
    """The dtypes as_array takes (float32, float64, integers, bools); a
    TypeError for the others. Also for arrays not yet in memory (a dask
    array's dtype), checked before their data is read."""
    if not (dtype in FLOAT_DTYPES or dtype.kind in "iub"):
        raise TypeError(f"{name} must have dtype float32 or float64 (integers and bools are "
                        f"converted), got dtype {dtype}")


def as_array(name: str, value, ndim: int | tuple[int, ...] | None) -> np.ndarray:
    """value as an ndarray of ndim dimensions (one of them, for a tuple; any
    for None, when the caller's shape message says more) and a real numeric
    dtype: float32 and float64 arrays as they are, integers and bools (and
    lists of them) as numpy makes them, anything else (float16, longdouble,
    complex, object, strings) refused with a TypeError."""
    if type(value) is np.ndarray and value.dtype.char in "fd":
        array = value  # the common case, checked cheaply
    else:
        if value is None:
            raise TypeError(f"{name} must be an array, got None")
        array = _as_ndarray(name, value, "numbers")
        check_number_dtype(name, array.dtype)
    if ndim is not None and array.ndim not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        dims = " or ".join(map(str, ndim)) if isinstance(ndim, tuple) else ndim
        raise ValueError(f"{name} must be {dims}-dimensional, got shape {array.shape}")
    if array.ndim and array.size and max(array.shape) > MAX_DIM:
        raise ValueError(f"{name} has shape {array.shape}: each dimension must be below 2**31")
    return array


def common_dtype(names, arrays, default=None) -> np.dtype:
    """The one floating dtype of the arrays (int/bool ones follow it)."""
    first = arrays[0].dtype
    if first in FLOAT_DTYPES and all(a.dtype == first for a in arrays[1:]):
        return first
    # Byte order is storage, not type: a big-endian float64 array is float64.
    floats = [(name, a.dtype.newbyteorder("="))
              for name, a in zip(names, arrays) if a.dtype.kind == "f"]
    dtypes = {dtype for _, dtype in floats}
    if len(dtypes) > 1:
        listing = ", ".join(f"{name} is {dtype}" for name, dtype in floats)
        raise TypeError(f"mixed floating dtypes ({listing}); convert them to one dtype first")
    if dtypes:
        return dtypes.pop()
    return np.dtype(default if default is not None else np.float64)


def as_c_array(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """An aligned C-contiguous array of dtype: array itself when it already is one.

    Compiled code reads `double *`: a view at an odd byte offset (from a
    buffer or a structured array) would be undefined behaviour there.
    """
    array = np.ascontiguousarray(array, dtype=dtype)
    return array if array.flags.aligned else array.copy()


def check_dim(name: str, array: np.ndarray, axis: int, expected: int, meaning: str) -> None:
    if array.shape[axis] != expected:
        raise ValueError(
            f"{name} must have {expected} {meaning} along axis {axis}, got shape {array.shape}"
        )


_MAX_ELEMENTS = np.iinfo(np.intp).max // 8


def check_product(name: str, *dims: int) -> None:
    if math.prod(dims) > _MAX_ELEMENTS:
        raise ValueError(f"{name} would have {' x '.join(map(str, dims))} elements: too large")


def check_out(out, shape: tuple, dtype: np.dtype, inputs=()) -> tuple[np.ndarray, np.ndarray]:
    """(buffer to compute into, array to return) for an out= argument.

    None gives one new array, both buffer and result. Otherwise out must be an
    ndarray of exactly `shape` and `dtype`, writable and C-contiguous. When it
    overlaps an input or is not aligned, the result is computed in a
    temporary and copied in (see :func:`filled_out`), as NumPy does.
    """
    if out is None:
        buffer = np.empty(shape, dtype)
        return buffer, buffer
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {_describe(out)}")
    if out.shape != tuple(shape):
        raise ValueError(f"out must have shape {tuple(shape)}, got {out.shape}")
    if out.dtype != dtype:
        raise TypeError(f"out must have dtype {dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out must be writable, got a read-only array")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous")
    if not out.flags.aligned or any(np.may_share_memory(out, a) for a in inputs):
        return np.empty(shape, dtype), out
    return out, out


def filled_out(buffer: np.ndarray, result: np.ndarray) -> np.ndarray:
    """result, holding what was computed into buffer (check_out's pair)."""
    if buffer is not result:
        result[...] = buffer
    return result


def check_activation(activation: str) -> bool:
    """True for "tanh", False for "linear"."""
    if not isinstance(activation, str) or activation not in ("tanh", "linear"):
        raise ValueError(f"activation must be 'tanh' or 'linear', got {activation!r}")
    return activation == "tanh"


def check_int(name: str, value, minimum: int, allow_none: bool = False,
              maximum: int | None = None):
    if value is None and allow_none:
        return None
    if type(value) is int:   # the common case, without the ABC check below
        pass
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {_describe(value)}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_layer_sizes(name: str, value, allow_empty: bool) -> tuple[int, ...]:
    """value, a list, tuple or 1-D integer array of layer sizes, each in
    [1, MAX_DIM], as a tuple of ints (empty only when allow_empty)."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype.kind not in "iu":
            raise TypeError(f"{name} must be a list of integers >= 1, got an array of shape "
                            f"{value.shape} and dtype {value.dtype}")
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list of integers >= 1, got {_describe(value)}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must hold at least one layer size, got {list(value)}")
    return tuple(check_int(f"{name}[{k}]", size, 1, maximum=MAX_DIM)
                 for k, size in enumerate(value))


def check_seed(name: str, seed):
    """seed for numpy.random.default_rng: None, a Generator, or an int >= 0."""
    if seed is None or isinstance(seed, np.random.Generator):
        return seed
    return check_int(name, seed, 0)


def check_positive_float(name: str, value, allow_zero: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int or Fraction past the float range
        value = math.inf if value > 0 else -math.inf
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")
    return value


def check_fraction(name: str, value) -> float:
    """A real number in [0, 1): a momentum, or one of Adam's betas."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1), got {_describe(value)}")
    try:
        value = float(value)
    except OverflowError:  # an int or Fraction past the float range
        value = math.inf if value > 0 else -math.inf
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def check_open_fraction(name: str, value) -> float:
    """A real number in (0, 1): the share of the samples held out for validation."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in (0, 1), got {_describe(value)}")
    value = float(value)
    if not 0 < value < 1:
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return value


def check_validation_data(value, n_items: tuple[int, ...], third: str = "lengths_val") -> tuple:
    """fit's validation_data: a tuple or list of n_items entries (one of
    them; a third entry is named third), returned as a tuple; the entries
    are checked by the model."""
    if not isinstance(value, (tuple, list)) or len(value) not in n_items:
        counts = " or ".join(str(n) for n in n_items)
        forms = "(X_val, Y_val)" + ("" if n_items == (2,) else f" or (X_val, Y_val, {third})")
        raise TypeError(f"validation_data must be a tuple of {counts} arrays, {forms}, "
                        f"got {_describe(value)}")
    return tuple(value)


def naming_validation_data(check, *arguments):
    """check(*arguments), its TypeError or ValueError prefixed with
    'validation_data: ' so that the message names fit's argument."""
    try:
        return check(*arguments)
    except (TypeError, ValueError) as error:
        raise type(error)(f"validation_data: {error}") from None


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def dense_forward_args(X: ArrayLike, W: ArrayLike, b: ArrayLike, activation: str,
                       out: NDArray[Any] | None,
                       ) -> tuple[bool, NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any],
                                  NDArray[Any]]:
    """Checked (apply_tanh, X, W, b, buffer, result) for dense_forward
    (buffer and result: see check_out)."""
    apply_tanh = check_activation(activation)
    X = as_array("X", X, 2)
    W = as_array("W", W, 2)
    b = as_array("b", b, 1)
    dtype = common_dtype(("X", "W", "b"), (X, W, b))
    check_dim("W", W, 0, X.shape[1], "rows (X's n_in)")
    check_dim("b", b, 0, W.shape[1], "entries (W's n_out)")
    check_product("X", *X.shape)
    check_product("W", *W.shape)
    check_product("the output", X.shape[0], W.shape[1])
    buffer, result = check_out(out, (X.shape[0], W.shape[1]), dtype, (X, W, b))
    return (apply_tanh, as_c_array(X, dtype), as_c_array(W, dtype), as_c_array(b, dtype),
            buffer, result)


def dense_backward_args(X: ArrayLike, W: ArrayLike, A: ArrayLike, dA: ArrayLike,
                        activation: str, need_dX: bool,
                        ) -> tuple[bool, bool, NDArray[Any], NDArray[Any], NDArray[Any],
                                   NDArray[Any]]:
    """Checked (apply_tanh, need_dX, X, W, A, dA) for dense_backward, the
    arrays C-contiguous."""
    apply_tanh = check_activation(activation)
    need_dX = check_bool("need_dX", need_dX)
    X = as_array("X", X, 2)
    W = as_array("W", W, 2)
    A = as_array("A", A, 2)
    dA = as_array("dA", dA, 2)
    dtype = common_dtype(("X", "W", "A", "dA"), (X, W, A, dA))
    check_dim("W", W, 0, X.shape[1], "rows (X's n_in)")
    expected = (X.shape[0], W.shape[1])
    for name, array in (("A", A), ("dA", dA)):
        if array.shape != expected:
            raise ValueError(
                f"{name} must have shape (n_samples, n_out) = {expected}, got {array.shape}"
            )
    check_product("X", *X.shape)
    check_product("W", *W.shape)
    check_product("A", *A.shape)
    X, W, A, dA = (as_c_array(a, dtype) for a in (X, W, A, dA))
    return apply_tanh, need_dX, X, W, A, dA


# -- recurrent layer (rnn_forward / rnn_backward) ------------------------------

def check_shape(name: str, array: np.ndarray, expected: tuple, meaning: str) -> None:
    if array.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {meaning} = {tuple(expected)}, got {array.shape}")


def check_lengths(lengths, n_samples: int, n_steps: int) -> np.ndarray:
    """lengths as a C-contiguous intp array of n_samples values in [0, n_steps].

    None means every sequence runs all n_steps steps.
    """
    if lengths is None:
        return np.full(n_samples, n_steps, np.intp)
    array = _as_ndarray("lengths", lengths, "integers")
    _check_integers("lengths", array, "an array of integers")
    if array.shape != (n_samples,):
        raise ValueError(f"lengths must have shape (n_samples,) = ({n_samples},), "
                         f"got {array.shape}")
    _check_within("lengths", array, (array < 0) | (array > n_steps),
                  f"[0, n_steps] = [0, {n_steps}]")
    # A copy, always: the kernels read the lengths while they write their
    # results, and the caller's array might share memory with out=.
    return np.array(array, dtype=np.intp, order="C", copy=True)


def _check_integers(name: str, array: np.ndarray, meaning: str) -> None:
    """A TypeError unless array holds integers (an empty list makes an empty
    float array: that one is fine)."""
    if not (array.size == 0 and array.dtype.kind == "f"):
        check_integer_dtype(name, array.dtype, meaning)


def check_integer_dtype(name: str, dtype: np.dtype, meaning: str) -> None:
    """A TypeError unless dtype is an integer one ("{name} must be {meaning},
    got dtype ..."): lengths, indices; also for a dask array's dtype."""
    if dtype.kind not in "iu":
        raise TypeError(f"{name} must be {meaning}, got dtype {dtype}")


def _check_within(name: str, array: np.ndarray, outside: np.ndarray, interval: str) -> None:
    """A ValueError naming the first entry of the 1-d array that is outside."""
    bad = np.flatnonzero(outside)
    if bad.size:
        raise ValueError(f"{name} must be in {interval}, got {name}[{bad[0]}] = {array[bad[0]]}")


def check_streams(streams, n_streams: int | None) -> np.ndarray:
    """streams, stream indices or a boolean mask, as a sorted intp array of
    indices in [0, n_streams) (repeats are fine).

    n_streams None (no working memory held): the type and shape are checked,
    the range cannot be.
    """
    if isinstance(streams, (list, tuple)):
        flags = [isinstance(item, (bool, np.bool_)) for item in streams]
        if any(flags) and not all(flags):   # [True, 2] would read as indices [1, 2]
            raise TypeError("streams mixes booleans and integers: give stream indices or a "
                            "boolean mask")
    array = _as_ndarray("streams", streams, "stream indices or booleans")
    if array.ndim != 1:
        raise ValueError(f"streams must be a 1-dimensional sequence of stream indices or a "
                         f"boolean mask (one stream: streams=[i]), got shape {array.shape}")
    if array.dtype.kind == "b":
        if n_streams is not None and array.shape != (n_streams,):
            raise ValueError(f"streams, a boolean mask, must have one entry per stream, shape "
                             f"(n_streams,) = ({n_streams},), got {array.shape}")
        return np.flatnonzero(array)
    _check_integers("streams", array, "stream indices (integers) or a boolean mask")
    if n_streams is not None:
        _check_within("streams", array, (array < 0) | (array >= n_streams),
                      f"[0, n_streams) = [0, {n_streams})")
    else:   # no memory held: no upper bound to check, but an index is never negative
        _check_within("streams", array, array < 0, "[0, n_streams)")
    return np.unique(array.astype(np.intp))


def check_state(name: str, state, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """state, a working memory of `shape` (n_samples, n_hidden), as an aligned
    C-contiguous array of the model's dtype.

    Integers, bools and nested lists are converted; a float ndarray of the
    other float dtype is refused (it holds another model's memory, and
    float64 to float32 would round it behind your back).
    """
    array = as_array(name, state, 2)
    if isinstance(state, np.ndarray) and array.dtype.kind == "f" \
            and array.dtype.newbyteorder("=") != dtype:
        raise TypeError(f"{name} must have the model's dtype {dtype}, got {array.dtype}: "
                        f"convert it with .astype(np.{dtype})")
    check_shape(name, array, shape, "(n_samples, n_hidden)")
    return as_c_array(array, dtype)


def check_sequence_rows(X: np.ndarray, n_hidden: int) -> None:
    """The kernels multiply all (sample, step) rows at once: BLAS must index them."""
    n_samples, n_steps, n_in = X.shape
    if n_samples * n_steps > MAX_DIM or n_steps * max(n_in, n_hidden) > MAX_DIM:
        raise ValueError(f"X has shape {X.shape}: n_samples * n_steps and n_steps * "
                         f"max(n_in, n_hidden) must be below 2**31")
    check_product("the states", n_samples, n_steps, max(n_in, n_hidden))


def _recurrent_shapes(X, Wx, Wh):
    """(n_samples, n_steps, n_in, n_hidden) after checking Wx and Wh against X."""
    n_samples, n_steps, n_in = X.shape
    check_dim("Wx", Wx, 0, n_in, "rows (X's n_in)")
    n_hidden = Wx.shape[1]
    check_shape("Wh", Wh, (n_hidden, n_hidden), "(n_hidden, n_hidden)")
    check_product("Wx", *Wx.shape)
    check_product("Wh", *Wh.shape)
    check_sequence_rows(X, n_hidden)
    return n_samples, n_steps, n_in, n_hidden


def _optional(name, value, ndim):
    return None if value is None else as_array(name, value, ndim)


def rnn_forward_args(X, h0, Wx, Wh, b, lengths, out):
    """Checked (X, h0, Wx, Wh, b, lengths, buffer, result) for rnn_forward.

    Arrays come back C-contiguous in their common dtype; h0 stays None when
    None; lengths is an intp array (all n_steps when None).
    """
    X = as_array("X", X, 3)
    h0 = _optional("h0", h0, 2)
    Wx = as_array("Wx", Wx, 2)
    Wh = as_array("Wh", Wh, 2)
    b = as_array("b", b, 1)
    arrays = {"X": X, "Wx": Wx, "Wh": Wh, "b": b}
    if h0 is not None:
        arrays["h0"] = h0
    dtype = common_dtype(tuple(arrays), tuple(arrays.values()))
    n_samples, n_steps, _, n_hidden = _recurrent_shapes(X, Wx, Wh)
    check_shape("b", b, (n_hidden,), "(n_hidden,)")
    if h0 is not None:
        check_shape("h0", h0, (n_samples, n_hidden), "(n_samples, n_hidden)")
        h0 = as_c_array(h0, dtype)
    lengths = check_lengths(lengths, n_samples, n_steps)
    buffer, result = check_out(out, (n_samples, n_steps, n_hidden), dtype,
                               tuple(arrays.values()))
    X, Wx, Wh, b = (as_c_array(a, dtype) for a in (X, Wx, Wh, b))
    return X, h0, Wx, Wh, b, lengths, buffer, result


def rnn_backward_args(X, h0, Wx, Wh, H, dH, dh_last, lengths):
    """Checked, C-contiguous (X, h0, Wx, Wh, H, dH, dh_last, lengths) for
    rnn_backward; h0 and dh_last stay None when None."""
    X = as_array("X", X, 3)
    h0 = _optional("h0", h0, 2)
    Wx = as_array("Wx", Wx, 2)
    Wh = as_array("Wh", Wh, 2)
    H = as_array("H", H, 3)
    dH = as_array("dH", dH, 3)
    dh_last = _optional("dh_last", dh_last, 2)
    arrays = {"X": X, "h0": h0, "Wx": Wx, "Wh": Wh, "H": H, "dH": dH, "dh_last": dh_last}
    arrays = {name: a for name, a in arrays.items() if a is not None}
    dtype = common_dtype(tuple(arrays), tuple(arrays.values()))
    n_samples, n_steps, _, n_hidden = _recurrent_shapes(X, Wx, Wh)
    for name in ("H", "dH"):
        check_shape(name, arrays[name], (n_samples, n_steps, n_hidden),
                    "(n_samples, n_steps, n_hidden)")
    for name in ("h0", "dh_last"):
        if name in arrays:
            check_shape(name, arrays[name], (n_samples, n_hidden), "(n_samples, n_hidden)")
    lengths = check_lengths(lengths, n_samples, n_steps)
    X, h0, Wx, Wh, H, dH, dh_last = (
        None if a is None else as_c_array(a, dtype) for a in (X, h0, Wx, Wh, H, dH, dh_last))
    return X, h0, Wx, Wh, H, dH, dh_last, lengths


def check_bool(name: str, value) -> bool:
    if value is True or value is False:
        return value
    if not isinstance(value, np.bool_):
        raise TypeError(f"{name} must be True or False, got {_describe(value)}")
    return bool(value)


# How far a softmax target's row may sum from 1 (class probabilities
# computed in the dtype round a little).
PROBABILITY_SUM_TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-6}


def check_targets(output: str, Y: np.ndarray, name: str = "Y") -> None:
    """The targets a model's loss can take, Y already of the model's dtype
    and shape (the last axis the outputs): for output="softmax" class
    probabilities in [0, 1] whose rows sum to 1 (one-hot rows among them),
    for "sigmoid" values in [0, 1] (both within the dtype's
    PROBABILITY_SUM_TOLERANCE, for rounding); anything for the squared error.
    A ValueError names the first row or value that is not."""
    if output not in ("softmax", "sigmoid") or Y.size == 0:
        return
    flat = Y.reshape(-1, Y.shape[-1])
    tolerance = PROBABILITY_SUM_TOLERANCE[Y.dtype]
    outside = ~((flat >= -tolerance) & (flat <= 1 + tolerance))  # NaN is outside too
    if outside.any():
        row, column = np.argwhere(outside)[0]
        raise ValueError(
            f"{name} must hold {'class probabilities' if output == 'softmax' else 'targets'} "
            f"in [0, 1] for output={output!r}, got {name}{_index(Y, row, column)} = "
            f"{flat[row, column]}")
    if output == "softmax":
        sums = flat.sum(axis=1, dtype=np.float64)
        bad = np.flatnonzero(np.abs(sums - 1) > tolerance)
        if bad.size:
            raise ValueError(
                f"{name} must be one-hot rows or class probabilities summing to 1 (within "
                f"{tolerance:g}) for output='softmax', got a row {name}{_index(Y, bad[0])} "
                f"summing to {sums[bad[0]]:.6g}")


def _index(Y: np.ndarray, row: int, column: int | None = None) -> str:
    """Y's index (as the user wrote it) of row `row` of Y.reshape(-1, n_out)."""
    index = [int(i) for i in np.unravel_index(row, Y.shape[:-1])] if Y.ndim > 1 else [row]
    if column is not None and Y.ndim > 1:
        index.append(int(column))
    return "[" + ", ".join(str(int(i)) for i in index) + "]"


def check_sample_weight(sample_weight, shapes: tuple[tuple[int, ...], ...],
                        meaning: str) -> NDArray[np.float64] | None:
    """sample_weight as a C-contiguous float64 array of one of `shapes`
    (meaning describes them), finite, >= 0 and not all zero; None stays None."""
    if sample_weight is None:
        return None
    array = as_array("sample_weight", sample_weight, None)
    if array.shape not in shapes:
        raise ValueError(f"sample_weight must have shape {meaning} = "
                         f"{' or '.join(map(str, shapes))}, got {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float64)
    flat = array.reshape(-1)
    for bad, expected in ((~np.isfinite(flat), "finite"), (flat < 0, ">= 0")):
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            index = ", ".join(str(int(i)) for i in np.unravel_index(first, array.shape))
            raise ValueError(f"sample_weight must be {expected}, got "
                             f"sample_weight[{index}] = {flat[first]}")
    if flat.size and not flat.any():
        raise ValueError("sample_weight must not be all zero: nothing would be weighed")
    return array
