"""Every public function refuses bad input at the boundary.

Bad types, dimensions, shapes, dtypes, hyper-parameters and out= arrays
raise ValueError or TypeError whose message names the argument; the
compiled kernels and the NumPy reference raise the same type for the same
input; sizes past what BLAS can index are refused before anything is
allocated; refused calls leave models untouched. Empty batches work.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pytest

import lgmstm
from api_table import (BACKENDS, DIMS, DTYPES, HUGE, KERNELS, MODEL_BACKENDS, MODELS,
                       assert_close, as_tuple, call, limited_address_space, make_arrays,
                       model_data, shape, zero_stride)

REFUSED = (ValueError, TypeError)


@dataclass(frozen=True)
class Case:
    id: str
    build: object  # (valid arrays by name, dtype) -> (arrays by name, keywords)
    expected: tuple  # exception types allowed
    names: tuple  # the message must name one of these
    bug: str | None = None
    huge: bool = False  # would allocate gigabytes if let through


def _replace(name, value):
    def build(arrays, dtype):
        return dict(arrays, **{name: value(arrays[name], dtype) if callable(value) else value}), {}
    return build


def _ragged(array):
    return [[1.0, 2.0], [1.0]] if array.ndim > 1 else [1.0, [2.0, 3.0]]


TYPE_JUNK = {
    "None": lambda a, dtype: None,
    "str": "abc",
    "bytes": b"abc",
    "dict": {"a": 1},
    "object": lambda a, dtype: a.astype(object),
    "complex": lambda a, dtype: a.astype(np.complex128),
    "strings": lambda a, dtype: a.astype(str),
    "datetime": lambda a, dtype: np.zeros(a.shape, "M8[s]"),
    "timedelta": lambda a, dtype: np.zeros(a.shape, "m8[s]"),
    "float16": lambda a, dtype: a.astype(np.float16),
    "longdouble": lambda a, dtype: a.astype(np.longdouble),
    "structured": lambda a, dtype: np.zeros(a.shape, [("x", dtype)]),
    "ragged": lambda a, dtype: _ragged(a),
}
NDIM_JUNK = {
    "0-d": lambda a, dtype: dtype.type(1),
    "extra-dim": lambda a, dtype: a[..., None],
    "missing-dim": lambda a, dtype: a[0],
}


def _other(dtype):
    return np.dtype(np.float32 if dtype == np.float64 else np.float64)


def kernel_array_cases(kernel):
    arrays = kernel.arrays
    for name, symbols in arrays.items():
        for label, value in TYPE_JUNK.items():
            if label == "None" and name in kernel.nullable:
                continue
            yield Case(f"{name}-{label}", _replace(name, value), (TypeError,), (name,))
        for label, value in NDIM_JUNK.items():
            if label == "missing-dim" and len(symbols) == 1:
                continue  # the same as 0-d
            yield Case(f"{name}-{label}", _replace(name, value), (ValueError,), (name,))
        for axis, symbol in enumerate(symbols):
            sharing = tuple(other for other, s in arrays.items() if symbol in s)
            if len(sharing) == 1 and symbols.count(symbol) == 1:
                continue  # a free dimension: any size is right

            def grow(a, dtype, axis=axis):
                bigger = list(a.shape)
                bigger[axis] += 1
                return np.zeros(bigger, dtype)
            yield Case(f"{name}-axis{axis}-mismatch", _replace(name, grow), (ValueError,),
                       sharing)
        yield Case(f"{name}-mixed-dtype", _replace(name, lambda a, dtype: a.astype(_other(dtype))),
                   (TypeError,), (name,))

        def too_long(a, dtype):
            return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), (2**31,) + a.shape[1:],
                                                   (0,) * a.ndim, writeable=False)
        yield Case(f"{name}-dim-2**31", _replace(name, too_long), (ValueError,), (name,),
                   huge=True)
    # Dimensions that BLAS can index but whose products overflow: every
    # array is one zero-stride element, only the checks stand between the
    # call and a multi-exabyte allocation.
    pairs = {tuple(s[:2]) for s in list(arrays.values()) + list(kernel.results) if len(s) >= 2}
    for pair in sorted(pairs):
        dims = {s: (HUGE if s in pair else 1) for s in DIMS}

        def build(valid, dtype, dims=dims):
            return {name: zero_stride(s, dims) for name, s in arrays.items()}, {}
        yield Case(f"overflow-{''.join(pair)}", build, (ValueError,),
                   tuple(arrays) + ("out", "output", "states"), huge=True)  # or the result


def kernel_keyword_cases(kernel):
    for keyword, junk in kernel.bad_keywords.items():
        for label, value, bug in junk:
            def build(arrays, dtype, keyword=keyword, value=value):
                return arrays, {keyword: value(DIMS) if callable(value) else value}
            yield Case(f"{keyword}-{label}", build, REFUSED, (keyword,), bug=bug)
    if not kernel.out:
        return
    result = shape(kernel.results[0], DIMS)
    bigger = (result[0] + 1,) + result[1:]
    outs = {
        "list": (lambda dtype: np.zeros(result).tolist(), TypeError),
        "shape": (lambda dtype: np.empty(bigger, dtype), ValueError),
        "dtype": (lambda dtype: np.empty(result, _other(dtype)), TypeError),
        "int": (lambda dtype: np.empty(result, np.int64), TypeError),
        "bigendian": (lambda dtype: np.empty(result, dtype.newbyteorder()), TypeError),
        "readonly": (lambda dtype: np.lib.stride_tricks.as_strided(
            np.empty(result, dtype), writeable=False), ValueError),
        "fortran": (lambda dtype: np.empty(result, dtype, order="F"), ValueError),
        "strided": (lambda dtype: np.empty(result[:-1] + (2 * result[-1],), dtype)[..., ::2],
                    ValueError),
    }
    for label, (make, error) in outs.items():
        def build(arrays, dtype, make=make):
            return arrays, {"out": make(dtype)}
        yield Case(f"out-{label}", build, (error,), ("out",))


def _params(kernel, cases):
    for case in cases:
        marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
        yield pytest.param(kernel, case, id=f"{kernel}-{case.id}", marks=marks)


KERNEL_CASES = [p for k in KERNELS for p in _params(k, kernel_array_cases(k))]
KEYWORD_CASES = [p for k in KERNELS for p in _params(k, kernel_keyword_cases(k))]


def _outcome(module, kernel, case, dtype):
    valid = make_arrays(kernel, DIMS, dtype, np.random.default_rng(1))
    arrays, keywords = case.build(valid, dtype)
    try:
        call(module, kernel, arrays, **keywords)
    except Exception as exc:  # noqa: BLE001 - the type is what is tested
        return exc
    return None


def check_refused(kernel, case, dtype):
    outcomes = {name: _outcome(module, kernel, case, dtype) for name, module in BACKENDS.items()}
    for backend, exc in outcomes.items():
        assert exc is not None, f"{backend}.{kernel.name} accepted {case.id}"
        assert isinstance(exc, case.expected), f"{backend}: {type(exc).__name__}: {exc}"
        assert any(name in str(exc) for name in case.names), \
            f"{backend}: message does not name {case.names}: {exc}"
    kinds = {type(exc) for exc in outcomes.values()}
    assert len(kinds) == 1, f"kernels and reference disagree: {outcomes}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel, case", KERNEL_CASES)
def test_kernel_refuses_bad_array(kernel, case, dtype):
    with limited_address_space(case.huge):
        check_refused(kernel, case, dtype)


@pytest.mark.parametrize("kernel, case", KEYWORD_CASES)
def test_kernel_refuses_bad_keyword(kernel, case):
    check_refused(kernel, case, np.dtype(np.float64))


# -- unusual but valid input: both backends accept it and agree ----------------

def _fortran(arrays, dtype):
    return {k: np.asfortranarray(a) for k, a in arrays.items()}, {}


def _bigendian(arrays, dtype):
    return {k: a.astype(a.dtype.newbyteorder()) for k, a in arrays.items()}, {}


def _one_bigendian(arrays, dtype):
    first = next(iter(arrays))
    return dict(arrays, **{first: arrays[first].astype(dtype.newbyteorder())}), {}


def _misaligned(arrays, dtype):
    def shift(a):
        raw = np.zeros(a.nbytes + 1, np.uint8)
        view = raw[1:].view(a.dtype).reshape(a.shape)
        view[...] = a
        assert not view.flags.aligned
        return view
    return {k: shift(a) for k, a in arrays.items()}, {}


def _readonly(arrays, dtype):
    for a in arrays.values():
        a.flags.writeable = False
    return arrays, {}


def _broadcast(arrays, dtype):
    return {k: np.broadcast_to(a[(slice(0, 1),) * a.ndim], a.shape) for k, a in arrays.items()}, {}


def _lists(arrays, dtype):
    return {k: a.tolist() for k, a in arrays.items()}, {}


VALID_VARIANTS = {"fortran": _fortran, "bigendian": _bigendian, "one-bigendian": _one_bigendian,
                  "misaligned": _misaligned, "readonly": _readonly, "broadcast": _broadcast,
                  "lists": _lists}


@pytest.mark.parametrize("variant", VALID_VARIANTS)
@pytest.mark.parametrize("kernel", KERNELS, ids=str)
def test_kernel_accepts_unusual_layouts(kernel, variant):
    dtype = np.dtype(np.float64)
    for module in BACKENDS.values():
        arrays, keywords = VALID_VARIANTS[variant](
            make_arrays(kernel, DIMS, dtype, np.random.default_rng(2)), dtype)
        plain = {k: np.array(a, dtype) for k, a in arrays.items()}
        expected = as_tuple(call(BACKENDS["reference"], kernel, plain))
        for got, want in zip(as_tuple(call(module, kernel, arrays, **keywords)), expected):
            assert_close(got, want, module.__name__)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kernel", KERNELS, ids=str)
def test_kernel_converts_int_and_bool_arrays(kernel, dtype):
    valid = make_arrays(kernel, DIMS, dtype, np.random.default_rng(3))
    first = next(iter(valid))
    for converted in (np.round(valid[first] * 3).astype(np.int32), valid[first] > 0):
        arrays = dict(valid, **{first: converted})
        expected = as_tuple(call(BACKENDS["reference"], kernel,
                                 dict(valid, **{first: converted.astype(dtype)})))
        for module in BACKENDS.values():
            for got, want in zip(as_tuple(call(module, kernel, arrays)), expected):
                assert_close(got, want)


@pytest.mark.parametrize("kernel", [k for k in KERNELS if k.out], ids=str)
def test_out_may_alias_an_input(kernel):
    dims = dict(DIMS)
    out_symbols = kernel.results[0]
    for module in BACKENDS.values():
        valid = make_arrays(kernel, dims, np.dtype(np.float64), np.random.default_rng(4))
        expected = call(module, kernel, valid)
        for name, symbols in kernel.arrays.items():
            if shape(symbols, dims) == shape(out_symbols, dims):
                arrays = {k: a.copy() for k, a in valid.items()}
                result = call(module, kernel, arrays, out=arrays[name])
                assert result is arrays[name]
                assert_close(result, expected)


@pytest.mark.parametrize("kernel", [k for k in KERNELS if k.out], ids=str)
def test_out_misaligned_gets_the_result(kernel):
    dtype = np.dtype(np.float64)
    valid = make_arrays(kernel, DIMS, dtype, np.random.default_rng(5))
    expected = call(BACKENDS["reference"], kernel, valid)
    for module in BACKENDS.values():
        raw = np.zeros(expected.nbytes + 1, np.uint8)
        out = raw[1:].view(dtype).reshape(expected.shape)
        assert call(module, kernel, valid, out=out) is out
        assert_close(out, expected)


@pytest.mark.parametrize("kernel, empty", [
    pytest.param(k, s, id=f"{k}-{s}=0")
    for k in KERNELS for s in sorted({s for v in k.arrays.values() for s in v})])
def test_kernel_empty_dimensions(kernel, empty):
    """0 samples (or 0 features) give correctly shaped, matching results."""
    dims = dict(DIMS, **{empty: 0})
    for dtype in DTYPES:
        arrays = make_arrays(kernel, dims, dtype, np.random.default_rng(6))
        expected = as_tuple(call(BACKENDS["reference"], kernel, arrays))
        got = as_tuple(call(BACKENDS["kernels"], kernel, arrays))
        assert [r.shape for r in got] == [shape(s, dims) for s in kernel.results]
        for g, e in zip(got, expected):
            assert_close(g, e)


# -- models --------------------------------------------------------------------

def _snapshot(model):
    return {k: v.copy() for k, v in model.params.items()}, model.history_.copy()


def _assert_unchanged(model, snapshot):
    params, history = snapshot
    for name, value in model.params.items():
        np.testing.assert_array_equal(value, params[name], err_msg=name)
    np.testing.assert_array_equal(model.history_, history)


def _refused_everywhere(run, names, expected=REFUSED):
    """run(backend) must raise the same refused type on every backend."""
    kinds = set()
    for backend in MODEL_BACKENDS:
        with pytest.raises(expected) as info:
            run(backend)
        assert any(name in str(info.value) for name in names), \
            f"{backend}: message does not name {names}: {info.value}"
        kinds.add(info.type)
    assert len(kinds) == 1, f"the backends disagree: {kinds}"


def _bug(bug):
    return [pytest.mark.xfail(strict=True, reason=bug)] if bug else []


CONSTRUCTOR_CASES = [
    pytest.param(model, args, keywords, name, id=f"{model}-{label}", marks=_bug(bug))
    for model in MODELS for label, args, keywords, name, bug in model.bad_constructor
]


@pytest.mark.parametrize("model, args, keywords, name", CONSTRUCTOR_CASES)
def test_constructor_refuses(model, args, keywords, name):
    huge = any(isinstance(a, int) and a >= HUGE for a in np.ravel(np.array(args, dtype=object)))
    with limited_address_space(huge):
        _refused_everywhere(lambda backend: model.make(*args, backend=backend, **keywords)
                            if "backend" not in keywords else model.make(*args, **keywords),
                            (name,))



# (id, value maker(X or Y, model), expected type, bug)
DATA_JUNK = [
    ("None", lambda a: None, TypeError, None),
    ("str", lambda a: "abc", TypeError, None),
    ("object", lambda a: a.astype(object), TypeError, None),
    ("complex", lambda a: a.astype(complex), TypeError, None),
    ("strings", lambda a: a.astype(str), TypeError, None),
    ("datetime", lambda a: np.zeros(a.shape, "M8[s]"), TypeError, None),
    ("float16", lambda a: a.astype(np.float16), TypeError, None),
    ("0-d", lambda a: 1.0, ValueError, None),
    ("extra-dim", lambda a: a[..., None], ValueError, None),
    ("missing-dim", lambda a: a[..., 0], ValueError, None),
    ("features", lambda a: np.zeros(a.shape[:-1] + (a.shape[-1] + 1,)), ValueError, None),
    ("samples", lambda a: a[1:], ValueError, None),
]
RAGGED = ("ragged", lambda a: [[1.0, 2.0], [1.0]], TypeError, None)

METHODS = {  # method -> how it is called on (model, X, Y)
    "predict": lambda m, X, Y: m.predict(X),
    "loss": lambda m, X, Y: m.loss(X, Y),
    "gradients": lambda m, X, Y: m.gradients(X, Y),
    "fit": lambda m, X, Y: m.fit(X, Y, epochs=1, lr=0.1),
    "partial_fit": lambda m, X, Y: m.partial_fit(X, Y, lr=0.1),
}


def _data_cases():
    for model in MODELS:
        for method in METHODS:
            for label, make, error, bug in DATA_JUNK + [RAGGED]:
                if label == "samples":
                    continue  # X sets n_samples
                yield pytest.param(model, method, "X", make, error,
                                   id=f"{model}-{method}-X-{label}", marks=_bug(bug))
            if method == "predict":
                continue
            for label, make, error, bug in DATA_JUNK + [RAGGED]:
                yield pytest.param(model, method, "Y", make, error,
                                   id=f"{model}-{method}-Y-{label}", marks=_bug(bug))


@pytest.mark.parametrize("model, method, argument, make, error", list(_data_cases()))
def test_methods_refuse_bad_data(model, method, argument, make, error):
    X, Y = model_data(model, DIMS["n"])
    data = {"X": X, "Y": Y}
    data[argument] = make(data[argument])
    kinds = set()
    for backend in MODEL_BACKENDS:
        instance = model.make(seed=0, backend=backend)
        before = _snapshot(instance)
        with pytest.raises(error) as info:
            METHODS[method](instance, data["X"], data["Y"])
        assert argument in str(info.value), f"{backend}: {info.value}"
        _assert_unchanged(instance, before)
        kinds.add(info.type)
    assert len(kinds) == 1


NONFINITE = {
    "X-nan": ("X", np.nan), "X-inf": ("X", np.inf), "Y-nan": ("Y", np.nan), "Y--inf": ("Y", -np.inf),
}


@pytest.mark.parametrize("case", NONFINITE)
@pytest.mark.parametrize("model", MODELS, ids=str)
def test_fit_refuses_nonfinite_data(model, case):
    argument, value = NONFINITE[case]

    def run(backend):
        X, Y = model_data(model, DIMS["n"])
        {"X": X, "Y": Y}[argument].flat[3] = value
        instance = model.make(seed=0, backend=backend)
        before = _snapshot(instance)
        try:
            instance.fit(X, Y, epochs=2, lr=0.1)
        finally:
            _assert_unchanged(instance, before)
    _refused_everywhere(run, (argument,), ValueError)


@pytest.mark.parametrize("model", MODELS, ids=str)
def test_fit_refuses_zero_samples(model):
    X, Y = model_data(model, 0)
    _refused_everywhere(lambda backend: model.make(backend=backend).fit(X, Y, epochs=1, lr=0.1),
                        ("X",), ValueError)



FIT_HYPER = [
    ("epochs", -1, None), ("epochs", 1.5, None), ("epochs", True, None), ("epochs", None, None),
    ("epochs", "3", None), ("epochs", 2**70, None),
    ("lr", 0, None), ("lr", -0.1, None), ("lr", float("nan"), None), ("lr", float("inf"), None),
    ("lr", "0.1", None), ("lr", None, None), ("lr", True, None), ("lr", 1j, None),
    ("lr", 10**400, None), ("lr", np.array([0.1, 0.2]), None),
    ("batch_size", 0, None), ("batch_size", -1, None), ("batch_size", 1.5, None),
    ("batch_size", True, None), ("batch_size", "2", None),
    ("optimizer", "adagrad", None), ("optimizer", None, None), ("optimizer", 1, None),
    ("optimizer", "SGD", None), ("optimizer", ["sgd"], None),
    ("seed", -1, None), ("seed", "1", None), ("seed", 1.5, None),
    ("callback", 1, None), ("callback", "print", None),
    ("shuffle", np.array([1, 2]), None), ("verbose", np.array([1, 2]), None),
    ("warm_start", "yes", None), ("warm_start", None, None), ("warm_start", 1, None),
    ("warm_start", np.array([True]), None),
    ("validation_fraction", 0, None), ("validation_fraction", 1, None),
    ("validation_fraction", 1.5, None), ("validation_fraction", -0.1, None),
    ("validation_fraction", float("nan"), None), ("validation_fraction", "0.2", None),
    ("validation_fraction", True, None),
    ("validation_fraction", 0.99, None),
    ("validation_data", "abc", None), ("validation_data", (1, 2, 3, 4), None),
    ("validation_data", np.zeros((5, 3)), None),
    ("early_stopping", True, None), ("early_stopping", "yes", None),
    ("early_stopping", None, None),
    ("stop_on_plateau", "yes", None), ("stop_on_plateau", None, None),
    ("stop_on_plateau", 1, None),
    ("patience", 0, None), ("patience", 1.5, None), ("patience", None, None),
    ("tol", -1e-4, None), ("tol", float("nan"), None), ("tol", "0", None),
    ("lr_schedule", "optimal", None), ("lr_schedule", None, None),
    ("lr_schedule", "Adaptive", None),
    ("power_t", -0.5, None), ("power_t", float("inf"), None), ("power_t", "0.5", None),
    # DIMS["n"] = 5 samples: one weight each, finite, >= 0, not all zero
    ("sample_weight", np.array([1.0, 1.0, -1.0, 1.0, 1.0]), None),
    ("sample_weight", np.array([1.0, np.nan, 1.0, 1.0, 1.0]), None),
    ("sample_weight", np.array([1.0, 1.0, 1.0, np.inf, 1.0]), None),
    ("sample_weight", np.zeros(5), None), ("sample_weight", np.ones(4), None),
    ("sample_weight", np.ones((5, 2)), None), ("sample_weight", np.ones(6), None),
    ("sample_weight", "heavy", None), ("sample_weight", np.ones(5, complex), None),
    ("sample_weight", 2.0, None),
]


def _fit_cases():
    for model in MODELS:
        extra = [(label.split("-")[0], keywords, name, bug)
                 for label, keywords, name, bug in model.bad_fit]
        cases = [(name, {name: value}, name, bug) for name, value, bug in FIT_HYPER] + extra
        for name, keywords, named, bug in cases:
            value = next(iter(keywords.values()))
            yield pytest.param(model, keywords, named,
                               id=f"{model}-{name}-{value!r}"[:60], marks=_bug(bug))


@pytest.mark.parametrize("model, keywords, name", list(_fit_cases()))
def test_fit_refuses_bad_hyperparameters(model, keywords, name):
    X, Y = model_data(model, DIMS["n"])
    arguments = dict({"epochs": 2, "lr": 0.1, "batch_size": 2}, **keywords)

    def run(backend):
        instance = model.make(seed=0, backend=backend)
        before = _snapshot(instance)
        try:
            instance.fit(X, Y, **arguments)
        finally:
            _assert_unchanged(instance, before)
    _refused_everywhere(run, (name,))


@pytest.mark.parametrize("model", MODELS, ids=str)
def test_model_empty_batch(model):
    X, Y = model_data(model, 0)
    results = []
    for backend in MODEL_BACKENDS:
        instance = model.make(seed=0, backend=backend)
        prediction = instance.predict(X)
        assert prediction.shape == shape(model.Y, dict(DIMS, n=0))
        loss = instance.loss(X, Y)
        grads = instance.gradients(X, Y)
        assert {k: g.shape for k, g in grads.items()} == \
            {k: p.shape for k, p in instance.params.items()}
        results.append((loss, grads))
    (loss_c, grads_c), (loss_n, grads_n) = results
    assert loss_c == loss_n
    for name in grads_c:
        assert_close(grads_c[name], grads_n[name])


# -- the STM's working memory: step, initial_state, return_state, reset_state -------

def _streaming_stm(backend, dtype=np.float64):
    """A stateful STM of the table's sizes holding the memory of n streams."""
    model = lgmstm.STM(DIMS["i"], DIMS["h"], DIMS["o"], stateful=True, dtype=dtype, seed=0,
                       backend=backend)
    model.step(np.ones((DIMS["n"], DIMS["i"])))
    return model


def _refused_keeping_state(call, names, expected, dtype=np.float64):
    """call(model) is refused alike on both backends and leaves the memory."""
    def run(backend):
        model = _streaming_stm(backend, dtype)
        held = model.state
        try:
            call(model)
        finally:
            np.testing.assert_array_equal(model.state, held, strict=True)
    _refused_everywhere(run, names, expected)


@pytest.mark.parametrize("make, error", [pytest.param(make, error, id=label)
                                         for label, make, error, _ in DATA_JUNK + [RAGGED]])
def test_step_refuses_bad_x(make, error):
    x = np.zeros((DIMS["n"], DIMS["i"]))
    # "samples": another number of streams than the memory holds.
    _refused_keeping_state(lambda model: model.step(make(x)), ("x must", "x has"), error)


def _other_float(a):
    return a.astype(np.float32 if a.dtype == np.float64 else np.float64)


INITIAL_STATE_JUNK = {
    "str": ("abc", TypeError),
    "object": (lambda a: a.astype(object), TypeError),
    "complex": (lambda a: a.astype(complex), TypeError),
    "strings": (lambda a: a.astype(str), TypeError),
    "float16": (lambda a: a.astype(np.float16), TypeError),
    "other-float": (_other_float, TypeError),
    "ragged": (lambda a: [[1.0, 2.0], [1.0]], TypeError),
    "0-d": (1.0, ValueError),
    "1-d": (lambda a: a[0], ValueError),
    "3-d": (lambda a: a[None], ValueError),
    "samples": (lambda a: a[1:], ValueError),
    "hidden": (lambda a: np.zeros((a.shape[0], a.shape[1] + 1), a.dtype), ValueError),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("label", INITIAL_STATE_JUNK)
def test_predict_refuses_bad_initial_state(label, dtype):
    make, error = INITIAL_STATE_JUNK[label]
    X = np.zeros((DIMS["n"], DIMS["t"], DIMS["i"]))
    state = np.zeros((DIMS["n"], DIMS["h"]), dtype)
    value = make(state) if callable(make) else make
    _refused_keeping_state(lambda model: model.predict(X, initial_state=value),
                           ("initial_state",), error, dtype)


@pytest.mark.parametrize("value", ["yes", 1, None, np.array([True, False])], ids=repr)
def test_predict_refuses_bad_return_state(value):
    X = np.zeros((DIMS["n"], DIMS["t"], DIMS["i"]))
    _refused_keeping_state(lambda model: model.predict(X, return_state=value),
                           ("return_state",), TypeError)


STREAMS_JUNK = {  # for a memory of DIMS["n"] = 5 streams
    "past-the-end": ([0, 5], ValueError),
    "negative": ([-1], ValueError),
    "huge-uint": (np.array([2**64 - 1], np.uint64), ValueError),
    "mask-short": (np.ones(4, bool), ValueError),
    "mask-2-d": (np.ones((5, 1), bool), ValueError),
    "scalar": (1, ValueError),
    "2-d": ([[1]], ValueError),
    "floats": ([1.5], TypeError),
    "whole-floats": (np.array([1.0, 2.0]), TypeError),
    "strings": (["1"], TypeError),
    "str": ("1", TypeError),
    "objects": (np.array([1, None], dtype=object), TypeError),
    "complex": ([1j], TypeError),
    "ragged": ([1, [2, 3]], TypeError),
    "bools-and-ints": ([True, 2], TypeError),   # not indices [1, 2]
}


@pytest.mark.parametrize("label", STREAMS_JUNK)
def test_reset_state_refuses_bad_streams(label):
    streams, error = STREAMS_JUNK[label]
    _refused_keeping_state(lambda model: model.reset_state(streams=streams), ("streams",), error)
    if label not in ("past-the-end", "huge-uint", "mask-short"):
        # With nothing held, the range's end cannot be checked, the rest can
        # (an index below 0 is never one).
        for backend in MODEL_BACKENDS:
            model = lgmstm.STM(DIMS["i"], DIMS["h"], DIMS["o"], backend=backend)
            with pytest.raises(error, match="streams"):
                model.reset_state(streams=streams)
            assert model.state is None


# -- save, load and the thread count ----------------------------------------------

PATH_JUNK = {"None": None, "int": 1, "float": 1.5, "object": object(), "list": ["a.npz"]}


@pytest.mark.parametrize("value", PATH_JUNK)
@pytest.mark.parametrize("model", MODELS, ids=str)
def test_save_refuses_bad_path(model, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match="path"):
        model.make().save(PATH_JUNK[value])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("model", MODELS, ids=str)
def test_save_filesystem_errors_leave_nothing(model, tmp_path):
    instance = model.make()
    (tmp_path / "directory").mkdir()
    with pytest.raises(IsADirectoryError):
        instance.save(tmp_path / "directory")
    with pytest.raises(FileNotFoundError):
        instance.save(tmp_path / "missing" / "model.npz")
    assert sorted(os.listdir(tmp_path)) == ["directory"]
    assert os.listdir(tmp_path / "directory") == []


@pytest.mark.parametrize("model", MODELS, ids=str)
def test_save_accepts_bytes_and_pathlike(model, tmp_path):
    instance = model.make(seed=3)
    for path in (tmp_path / "a.npz", os.fsencode(tmp_path / "b.npz"), str(tmp_path / "c")):
        instance.save(path)
        loaded = lgmstm.load(path)
        for name, value in instance.params.items():
            np.testing.assert_array_equal(loaded.params[name], value)


@pytest.mark.parametrize("value", PATH_JUNK)
def test_load_refuses_bad_path(value):
    with pytest.raises(TypeError, match="path"):
        lgmstm.load(PATH_JUNK[value])


@pytest.mark.parametrize("backend", ["torch", None, 1])
def test_load_refuses_bad_backend(backend, tmp_path):
    MODELS[0].make().save(tmp_path / "m.npz")
    with pytest.raises(REFUSED, match="backend"):
        lgmstm.load(tmp_path / "m.npz", backend=backend)




@pytest.mark.parametrize("value, error", [
    (0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError), (None, TypeError),
    (True, TypeError), (np.float64(2), TypeError),
    pytest.param(2**31, ValueError),
    pytest.param(2**70, ValueError),
], ids=lambda v: v.__name__ if isinstance(v, type) else repr(v))
def test_set_num_threads_refuses(value, error):
    saved = lgmstm.get_num_threads()
    try:
        with pytest.raises(error, match="n_threads"):
            lgmstm.set_num_threads(value)
        assert lgmstm.get_num_threads() == saved
    finally:
        lgmstm.set_num_threads(saved)


# -- partial_fit, warm_start and the estimators' partial_fit ---------------------------

PARTIAL_FIT_ARGUMENTS = ("lr", "batch_size", "optimizer", "shuffle", "seed", "clip_norm",
                         "sample_weight")


def _partial_fit_cases():
    for case in _fit_cases():
        model, keywords, name = case.values
        if set(keywords) <= set(PARTIAL_FIT_ARGUMENTS):
            yield pytest.param(model, keywords, name, id=case.id, marks=case.marks)


def _refusal(call):
    with pytest.raises(REFUSED) as info:
        call()
    return info.type, str(info.value)


@pytest.mark.parametrize("model, keywords, name", list(_partial_fit_cases()))
def test_partial_fit_refuses_what_fit_refuses(model, keywords, name):
    # The same error, message and all, and nothing changes: not the optimizer state either.
    X, Y = model_data(model, DIMS["n"])
    arguments = dict({"lr": 0.1, "batch_size": 2}, **keywords)
    for backend in MODEL_BACKENDS:
        instance = model.make(seed=0, backend=backend)
        instance.partial_fit(X, Y, lr=0.1, optimizer="momentum")
        before, state = _snapshot(instance), instance.__getstate__()["optimizer"]
        expected = _refusal(lambda: instance.fit(X, Y, epochs=1, **arguments))
        assert _refusal(lambda: instance.partial_fit(X, Y, **arguments)) == expected
        assert name in expected[1]
        _assert_unchanged(instance, before)
        after = instance.__getstate__()["optimizer"]
        assert after["step"] == state["step"] == 1
        np.testing.assert_array_equal(after["moments"][0][0], state["moments"][0][0])


def _estimator_data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((20, 3)), np.arange(20) % 3


def test_classifier_partial_fit_needs_classes_first():
    sklearn_module = pytest.importorskip("lgmstm.sklearn")
    X, y = _estimator_data()
    model = sklearn_module.LGMClassifier()
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        model.partial_fit(X, y)
    with pytest.raises(ValueError, match="y has classes not in classes_"):
        model.partial_fit(X, y, classes=[0, 1])
    model.partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="is not the same as on the last call"):
        model.partial_fit(X, y, classes=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="y has classes not in classes_"):
        model.partial_fit(X, y + 1)
    with pytest.raises(ValueError, match="3 features"):
        model.partial_fit(X[:, :2], y)
    assert model.n_iter_ == 1


def test_warm_start_must_be_a_bool():
    sklearn_module = pytest.importorskip("lgmstm.sklearn")
    X, y = _estimator_data()
    for Estimator in (sklearn_module.LGMRegressor, sklearn_module.LGMClassifier):
        model = Estimator(max_iter=1).fit(X, y)
        for value in ("yes", 1, None):
            with pytest.raises(TypeError, match="warm_start must be True or False"):
                model.set_params(warm_start=value).fit(X, y)


def test_warm_start_needs_the_same_classes_and_outputs():
    sklearn_module = pytest.importorskip("lgmstm.sklearn")
    X, y = _estimator_data()
    classifier = sklearn_module.LGMClassifier(max_iter=1, warm_start=True).fit(X, y)
    with pytest.raises(ValueError, match="same classes"):
        classifier.fit(X, y % 2)
    regressor = sklearn_module.LGMRegressor(max_iter=1, warm_start=True).fit(X, y)
    for call in (regressor.fit, regressor.partial_fit):
        with pytest.raises(ValueError, match="1 outputs"):
            call(X, np.column_stack([y, y]))
        with pytest.raises(ValueError, match="3 features"):
            call(X[:, :2], y)
    assert classifier.n_iter_ == regressor.n_iter_ == 1


def _validation_cases():
    """(id, make(X, Y) -> validation_data or fit keywords): validation sets
    that do not fit the model, each refused with a message naming
    validation_data (or the argument at fault)."""
    def shrunk(a):
        return a[..., :-1]

    return [
        ("X-features", lambda X, Y: {"validation_data": (shrunk(X), Y)}),
        ("Y-width", lambda X, Y: {"validation_data": (X, shrunk(Y))}),
        ("Y-samples", lambda X, Y: {"validation_data": (X, Y[1:])}),
        ("X-extra-dim", lambda X, Y: {"validation_data": (X[..., None], Y)}),
        ("X-strings", lambda X, Y: {"validation_data": (X.astype(str), Y)}),
        ("X-complex", lambda X, Y: {"validation_data": (X.astype(complex), Y)}),
        ("Y-None", lambda X, Y: {"validation_data": (X, None)}),
        ("empty", lambda X, Y: {"validation_data": (X[:0], Y[:0])}),
        ("X-nan", lambda X, Y: {"validation_data": (np.where(X == X.flat[0], np.nan, X), Y)}),
        ("Y-inf", lambda X, Y: {"validation_data": (X, np.full_like(Y, np.inf))}),
        ("one-array", lambda X, Y: {"validation_data": (X,)}),
        ("list-of-rows", lambda X, Y: {"validation_data": [X]}),
    ]


@pytest.mark.parametrize("case", [c[0] for c in _validation_cases()])
@pytest.mark.parametrize("model", MODELS, ids=str)
def test_fit_refuses_bad_validation_data(model, case):
    make = dict(_validation_cases())[case]
    X, Y = model_data(model, DIMS["n"])

    def run(backend):
        instance = model.make(seed=0, backend=backend)
        before = _snapshot(instance)
        try:
            instance.fit(X, Y, epochs=2, lr=0.1, **make(X.copy(), Y.copy()))
        finally:
            _assert_unchanged(instance, before)
    _refused_everywhere(run, ("validation_data",))


@pytest.mark.parametrize("model", MODELS, ids=str)
def test_fit_refuses_validation_data_and_fraction_together(model):
    X, Y = model_data(model, DIMS["n"])
    _refused_everywhere(
        lambda backend: model.make(seed=0, backend=backend).fit(
            X, Y, epochs=1, lr=0.1, validation_data=(X, Y), validation_fraction=0.2),
        ("validation_fraction",), ValueError)


@pytest.mark.parametrize("model", MODELS, ids=str)
def test_validation_fraction_must_leave_a_training_sample(model):
    X, Y = model_data(model, 2)
    # ceil(0.9 * 2) = 2 held out: nothing to train on; 0.5 holds out one.
    _refused_everywhere(
        lambda backend: model.make(seed=0, backend=backend).fit(
            X, Y, epochs=1, lr=0.1, validation_fraction=0.9),
        ("validation_fraction",), ValueError)
    model.make(seed=0).fit(X, Y, epochs=1, lr=0.1, validation_fraction=0.5)
# -- the targets of softmax and sigmoid outputs, and sample_weight elsewhere ----------------

def _class_data(model, output):
    """(make, X, Y) for a model of `model`'s kind with `output`: one-hot Y."""
    X, Y = model_data(model, DIMS["n"])
    labels = np.arange(Y.size // Y.shape[-1]) % Y.shape[-1]
    one_hot = np.eye(Y.shape[-1])[labels].reshape(Y.shape)
    return (lambda backend: model.make(output=output, seed=0, backend=backend)), X, one_hot


BAD_TARGETS = {  # output -> (label, spoil one-hot Y, message fragment)
    "softmax": [
        ("two-labels", lambda Y: Y + np.roll(Y, 1, axis=-1), "summing to 1"),
        ("sum-0.5", lambda Y: np.where(Y > 0, 0.5, 0.0), "summing to 1"),
        ("probabilities-off", lambda Y: 0.99 * Y + 0.02 / Y.shape[-1], "summing to 1"),
        # rows summing to 1 with a negative entry: 1.5 and -0.5
        ("negative", lambda Y: 1.5 * Y - 0.5 * np.roll(Y, 1, axis=-1), "[0, 1]"),
        ("labels", lambda Y: Y.argmax(axis=-1)[..., None] * np.ones_like(Y), "[0, 1]"),
    ],
    "sigmoid": [
        ("above-1", lambda Y: Y * 1.5, "[0, 1]"),
        ("negative", lambda Y: Y - 0.25, "[0, 1]"),
        ("pm1", lambda Y: 2 * Y - 1, "[0, 1]"),
    ],
}


def _target_cases():
    for model in MODELS:
        for output, cases in BAD_TARGETS.items():
            for label, spoil, fragment in cases:
                for method in ("fit", "partial_fit", "loss", "gradients"):
                    yield pytest.param(model, output, spoil, fragment, method,
                                       id=f"{model}-{output}-{label}-{method}")


@pytest.mark.parametrize("model, output, spoil, fragment, method", list(_target_cases()))
def test_probability_outputs_refuse_bad_targets(model, output, spoil, fragment, method):
    make, X, Y = _class_data(model, output)
    bad = spoil(Y)

    def run(backend):
        instance = make(backend)
        before = _snapshot(instance)
        try:
            with pytest.raises(ValueError, match=r"Y") as info:
                METHODS[method](instance, X, bad)
            assert fragment in str(info.value) and output in str(info.value), info.value
            raise ValueError(str(info.value))
        finally:
            _assert_unchanged(instance, before)
    _refused_everywhere(run, ("Y",))


def test_probability_outputs_take_good_targets():
    # one-hot rows, class probabilities and (sigmoid) anything in [0, 1]; padded
    # STM steps may hold anything
    for model in MODELS:
        for output in BAD_TARGETS:
            make, X, Y = _class_data(model, output)
            soft = 0.8 * Y + 0.2 / Y.shape[-1]
            for backend in MODEL_BACKENDS:
                make(backend).fit(X, Y, epochs=1, lr=0.1)
                make(backend).loss(X, soft)
    X = np.zeros((2, 3, 2))
    Y = np.zeros((2, 3, 3))
    Y[:, :2, 0] = 1  # the last step of each sequence is padding: zeros there
    lgmstm.STM(2, 3, 3, output="softmax").fit(X, Y, lengths=[2, 2], epochs=1, lr=0.1)


SAMPLE_WEIGHT_CALLS = {
    "loss": lambda m, X, Y, w: m.loss(X, Y, sample_weight=w),
    "gradients": lambda m, X, Y, w: m.gradients(X, Y, sample_weight=w),
    "fit": lambda m, X, Y, w: m.fit(X, Y, epochs=1, lr=0.1, sample_weight=w),
    "partial_fit": lambda m, X, Y, w: m.partial_fit(X, Y, lr=0.1, sample_weight=w),
}
BAD_WEIGHTS = {
    "negative": (np.array([1.0, 2.0, -0.5, 1.0, 1.0]), ValueError, ">= 0"),
    "nan": (np.array([1.0, np.nan, 1.0, 1.0, 1.0]), ValueError, "finite"),
    "inf": (np.array([np.inf, 1.0, 1.0, 1.0, 1.0]), ValueError, "finite"),
    "zeros": (np.zeros(5), ValueError, "all zero"),
    "short": (np.ones(4), ValueError, "shape"),
    "2d": (np.ones((5, 7)), ValueError, "shape"),
    "scalar": (1.0, ValueError, "shape"),
    "strings": (np.array(["a"] * 5), TypeError, "sample_weight"),
}


@pytest.mark.parametrize("method", SAMPLE_WEIGHT_CALLS)
@pytest.mark.parametrize("case", BAD_WEIGHTS)
@pytest.mark.parametrize("model", MODELS, ids=str)
def test_bad_sample_weight_is_refused_by_every_method(model, case, method):
    weights, error, fragment = BAD_WEIGHTS[case]
    X, Y = model_data(model, DIMS["n"])
    for backend in MODEL_BACKENDS:
        instance = model.make(seed=0, backend=backend)
        before = _snapshot(instance)
        with pytest.raises(error, match="sample_weight") as info:
            SAMPLE_WEIGHT_CALLS[method](instance, X, Y, weights)
        assert fragment in str(info.value), info.value
        _assert_unchanged(instance, before)


def test_stm_sample_weight_shapes():
    X, Y = np.zeros((4, 3, 2)), np.zeros((4, 3, 2))
    per_step = lgmstm.STM(2, 3, 2)
    per_step.loss(X, Y, sample_weight=np.ones(4))
    per_step.loss(X, Y, sample_weight=np.ones((4, 3)))
    with pytest.raises(ValueError, match=r"sample_weight must have shape .*\(4, 3\).*\(3, 4\)"):
        per_step.loss(X, Y, sample_weight=np.ones((3, 4)))
    per_sequence = lgmstm.STM(2, 3, 2, return_sequences=False)
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(n_samples,\)"):
        per_sequence.loss(X, Y[:, 0], sample_weight=np.ones((4, 3)))
    # weight only on padded steps weighs nothing
    with pytest.raises(ValueError, match="sample_weight must weigh some valid step"):
        per_step.loss(X, Y, lengths=[1, 1, 1, 1], sample_weight=np.array([[0, 1, 1]] * 4))
