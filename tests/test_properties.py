"""Property-based tests (hypothesis).

1. Every kernel on random shapes (0 and 1 included), dtypes, memory layouts
   (C, Fortran, strided, negative strides, misaligned, broadcast, byte-
   swapped), thread counts and out= buffers equals the NumPy reference.
2. Random junk for any argument of any public function raises ValueError
   or TypeError, or the call works; never another exception, never a crash.
"""
from __future__ import annotations

import inspect
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lgmstm
from api_table import (BACKENDS, DTYPES, KERNELS, MODEL_BACKENDS, MODELS, as_tuple,
                       assert_close, call, model_data, shape)

REFUSED = (ValueError, TypeError)

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                       HealthCheck.data_too_large])

LAYOUTS = ("C", "F", "strided", "reversed", "misaligned", "broadcast", "byteswapped")


def with_layout(values, layout):
    """An array holding `values` (or, for "broadcast", its first row
    repeated) laid out in memory as `layout` says."""
    every = tuple(slice(None, None, 2) for _ in values.shape)
    backwards = tuple(slice(None, None, -1) for _ in values.shape)
    if layout == "C":
        return values.copy()
    if layout == "F":
        return np.asfortranarray(values)
    if layout == "strided":
        view = np.full(tuple(2 * d for d in values.shape), np.nan, values.dtype)[every]
        view[...] = values
        return view
    if layout == "reversed":
        return values[backwards].copy()[backwards]
    if layout == "misaligned":
        raw = np.zeros(values.nbytes + 1, np.uint8)
        view = raw[1:].view(values.dtype).reshape(values.shape)
        view[...] = values
        return view
    if layout == "broadcast":
        return np.broadcast_to(values[:1], values.shape)
    return values.astype(values.dtype.newbyteorder())


SIZES = st.one_of(st.integers(0, 3), st.integers(4, 20), st.sampled_from([63, 64, 65, 130]))


@st.composite
def kernel_inputs(draw, kernel):
    dims = {s: draw(SIZES) for s in sorted({c for v in kernel.arrays.values() for c in v})}
    # now and then a batch large enough to run on several threads
    if draw(st.integers(0, 4)) == 0:
        dims.update({s: draw(st.integers(40, 90)) for s in dims})
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # A recurrent weight (n_hidden, n_hidden) is scaled to a contraction: with
    # entries in (-1, 1) a long sequence turns chaotic, and float32 rounding
    # then decides which way each state saturates.
    values = {name: (rng.uniform(-1, 1, shape(symbols, dims))
                     / (max(1, dims["h"]) if symbols == "hh" else 1)).astype(dtype)
              for name, symbols in kernel.arrays.items()}
    layouts = {name: draw(st.sampled_from(LAYOUTS)) for name in values}
    arrays = {name: None if name in kernel.nullable and draw(st.booleans())
              else with_layout(v, layouts[name]) for name, v in values.items()}
    keywords = {}
    for keyword, options in kernel.choices.items():
        value = draw(st.sampled_from(options))
        keywords[keyword] = value(dims, rng, dtype) if callable(value) else value
    if kernel.out and draw(st.booleans()):
        out_shape = shape(kernel.results[0], dims)
        # stale NaNs must all be overwritten
        keywords["out"] = with_layout(np.full(out_shape, np.nan, dtype),
                                      draw(st.sampled_from(["C", "misaligned"])))
    return dims, arrays, keywords, draw(st.integers(1, 3))


def _kernel_equals_reference(kernel, case):
    dims, arrays, keywords, n_threads = case
    plain = {name: None if a is None else np.array(a, dtype=a.dtype.newbyteorder("="))
             for name, a in arrays.items()}
    expected = as_tuple(call(BACKENDS["reference"], kernel, plain,
                             **{k: v for k, v in keywords.items() if k != "out"}))
    saved = lgmstm.get_num_threads()
    lgmstm.set_num_threads(n_threads)
    try:
        for name, module in BACKENDS.items():
            if "out" in keywords:
                keywords["out"][...] = np.nan
            got = as_tuple(call(module, kernel, arrays, **keywords))
            if "out" in keywords:
                assert got[0] is keywords["out"]
            assert len(got) == len(expected)
            for result, want, symbols in zip(got, expected, kernel.results):
                if want is not None:
                    assert result.shape == shape(symbols, dims)
                assert_close(result, want, f"{name}.{kernel.name}")
    finally:
        lgmstm.set_num_threads(saved)
    for name, a in arrays.items():  # inputs are read only
        if a is not None:
            np.testing.assert_array_equal(a, plain[name], err_msg=name)


@pytest.mark.parametrize("kernel", KERNELS, ids=str)
def test_kernel_equals_reference_on_any_layout(kernel):
    @settings(max_examples=60, **SETTINGS)
    @given(kernel_inputs(kernel))
    def check(case):
        _kernel_equals_reference(kernel, case)
    check()


# -- junk ------------------------------------------------------------------------

_JUNK_DTYPES = st.one_of(hnp.scalar_dtypes(), hnp.byte_string_dtypes(max_len=3),
                         hnp.unicode_string_dtypes(max_len=3),
                         st.sampled_from([np.dtype(np.float16), np.dtype(np.longdouble),
                                          np.dtype(">f8"), np.dtype("<f4")]))
_SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)

JUNK_ARRAYS = st.one_of(
    hnp.arrays(_JUNK_DTYPES, _SHAPES),
    hnp.arrays(np.dtype(object), _SHAPES,
               elements=st.one_of(st.none(), st.floats(), st.text(max_size=2), st.just([]))),
    hnp.arrays(st.sampled_from(DTYPES), _SHAPES,
               elements=st.floats(width=32)),
)
JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
    st.complex_numbers(), st.text(max_size=5), st.binary(max_size=5),
    st.lists(st.floats(), max_size=4),
    st.lists(st.lists(st.floats(), max_size=3), max_size=3),  # often ragged
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
    st.builds(object), st.just(Ellipsis), st.just(slice(None)), JUNK_ARRAYS,
)


def _expect_refusal_or_success(run):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run()
    except REFUSED:
        pass


@st.composite
def junk_kernel_call(draw, kernel):
    dims = {s: draw(st.integers(0, 4)) for s in "nitho"}
    dtype = draw(st.sampled_from(DTYPES))
    valid = {name: np.ones(shape(symbols, dims), dtype) for name, symbols in kernel.arrays.items()}
    arrays = {name: draw(st.one_of(st.just(value), JUNK,
                                   hnp.arrays(dtype, hnp.array_shapes(min_dims=1, max_dims=3,
                                                                      min_side=0, max_side=4))))
              for name, value in valid.items()}
    keywords = {}
    for keyword, value in dict(kernel.keywords, **({"out": None} if kernel.out else {})).items():
        if draw(st.booleans()):
            keywords[keyword] = draw(JUNK)
    return arrays, keywords


@pytest.mark.parametrize("module", BACKENDS)
@pytest.mark.parametrize("kernel", KERNELS, ids=str)
def test_kernel_junk_is_refused(kernel, module):
    @settings(max_examples=150, **SETTINGS)
    @given(junk_kernel_call(kernel))
    def check(case):
        arrays, keywords = case
        _expect_refusal_or_success(lambda: call(BACKENDS[module], kernel, arrays, **keywords))
    check()


def test_reference_has_the_kernels_api():
    """The oracle is the kernels' API, name for name and signature for signature;
    the unchecked helpers of the NumPy backend are not part of it."""
    def parameters(function):  # names, kinds and defaults; annotations aside
        return [(p.name, p.kind, p.default)
                for p in inspect.signature(function).parameters.values()]

    assert lgmstm.reference.__all__ == lgmstm.kernels.__all__
    for name in lgmstm.kernels.__all__:
        assert (parameters(getattr(lgmstm.reference, name))
                == parameters(getattr(lgmstm.kernels, name))), name


SMALL_INTS = st.integers(-3, 6)
def _no_huge_sizes(value):
    """Whether value, taken as layer sizes, asks for no model too large to
    allocate (a numpy int array of 10**5-sized layers is valid, and a
    MemoryError)."""
    try:
        return bool(np.all(np.abs(np.asarray(value, dtype=float)) < 100))
    except (TypeError, ValueError, OverflowError):
        return True


MODEL_ARGS = {  # positional constructor arguments: junk or small sizes (no huge ones)
    "LGM": st.tuples(st.one_of(st.lists(SMALL_INTS, max_size=4),
                               JUNK.filter(_no_huge_sizes))),
    "STM": st.tuples(*[st.one_of(SMALL_INTS, st.none(), st.floats(), st.text(max_size=2))] * 3),
}


@pytest.mark.parametrize("model", MODELS, ids=str)
def test_constructor_junk_is_refused(model):
    @settings(max_examples=100, **SETTINGS)
    @given(MODEL_ARGS[model.name],
           st.dictionaries(st.sampled_from(["output", "dtype", "seed", "backend"]), JUNK,
                           max_size=2))
    def check(args, keywords):
        _expect_refusal_or_success(lambda: model.make(*args, **keywords))
    check()


def _data(draw, valid):
    return draw(st.one_of(st.just(valid), JUNK, hnp.arrays(
        st.sampled_from(DTYPES), hnp.array_shapes(min_dims=0, max_dims=4, max_side=5),
        elements=st.floats(-2, 2, width=32))))


@st.composite
def junk_method_call(draw, model):
    X, Y = model_data(model, draw(st.integers(0, 6)))
    X, Y = _data(draw, X), _data(draw, Y)
    method = draw(st.sampled_from(["predict", "loss", "gradients", "fit"]))
    if method == "predict":
        return method, (X,), {}
    if method != "fit":
        return method, (X, Y), {}
    fit = {"epochs": st.one_of(st.integers(-3, 3), JUNK.filter(lambda v: type(v) is not int)),
           "lr": st.one_of(st.floats(-1, 1), JUNK),
           "batch_size": st.one_of(st.integers(-3, 10), st.none(), JUNK),
           "optimizer": st.one_of(st.sampled_from(["sgd", "momentum", "adam"]), JUNK),
           "shuffle": st.one_of(st.booleans(), JUNK.filter(lambda v: not hasattr(v, "__len__"))),
           "seed": st.one_of(st.integers(-3, 2**70), JUNK),
           "callback": st.one_of(st.none(), JUNK)}
    keywords = {"epochs": 2, "lr": 0.05}
    keywords.update(draw(st.fixed_dictionaries({}, optional=fit)))
    return method, (X, Y), keywords


@pytest.mark.parametrize("model", MODELS, ids=str)
@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_method_junk_is_refused(model, backend):
    instance = model.make(seed=0, backend=backend)

    @settings(max_examples=150, **SETTINGS)
    @given(junk_method_call(model))
    def check(case):
        method, args, keywords = case
        _expect_refusal_or_success(lambda: getattr(instance, method)(*args, **keywords))
        for name, value in instance.params.items():
            assert value.dtype == instance.dtype, name
    check()


@settings(max_examples=60, **SETTINGS)
@given(st.one_of(st.integers(-10, 4), JUNK.filter(lambda v: type(v) is not int)))
def test_set_num_threads_junk_is_refused(value):
    saved = lgmstm.get_num_threads()
    try:
        _expect_refusal_or_success(lambda: lgmstm.set_num_threads(value))
    finally:
        lgmstm.set_num_threads(saved)


@pytest.mark.parametrize("model", MODELS, ids=str)
def test_load_junk_is_refused(model, tmp_path_factory):
    directory = tmp_path_factory.mktemp("junk")
    path = directory / "model.npz"
    model.make(seed=1).save(path)
    good = path.read_bytes()

    @settings(max_examples=150, **SETTINGS)
    @given(st.one_of(
        st.binary(max_size=3000),
        st.tuples(st.integers(0, len(good) - 1), st.integers(1, 255)).map(
            lambda flip: good[:flip[0]] + bytes([good[flip[0]] ^ flip[1]]) + good[flip[0] + 1:]),
        st.integers(0, len(good) - 1).map(lambda cut: good[:cut]),
    ))
    def check(content):
        bad = directory / "bad.npz"
        bad.write_bytes(content)
        try:
            lgmstm.load(bad)
        except ValueError:
            pass
        finally:
            os.unlink(bad)
    check()


@pytest.mark.parametrize("model", MODELS, ids=str)
def test_save_junk_path_is_refused(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    instance = model.make(seed=1)

    @settings(max_examples=60, **SETTINGS)
    @given(JUNK.filter(lambda v: not isinstance(v, (str, bytes))))
    def check(path):
        with pytest.raises(TypeError, match="path"):
            instance.save(path)
    check()
    assert os.listdir(tmp_path) == []
