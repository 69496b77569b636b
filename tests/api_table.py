"""The public API as data, for the hardening tests.

Every kernel is a row of KERNELS: its arguments with symbolic shapes
("n" samples, "i" inputs, "o" outputs, ...), its results and its bad
keyword values. Every model is a row of MODELS: a factory, the shapes of
X and Y, and its bad constructor and fit arguments. The tests turn the
rows into cases, so a new kernel or model (STM) is one more row here.

A case known to fail because of code these tests may not change carries
`bug`: the test is then a strict xfail that names the change needed.
"""
from __future__ import annotations

import os
import resource
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pytest

import lgmstm
from lgmstm import kernels, reference

BACKENDS = {"kernels": kernels, "reference": reference}
MODEL_BACKENDS = ("cython", "numpy")
DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

# Compiled and NumPy results differ in summation order only; atol is scaled
# by the largest magnitude of the expected array (see assert_close).
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-5, atol=2e-5),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-12),
}

HAS_STM = hasattr(lgmstm, "STM")

# Under AddressSanitizer the address space cannot be limited, so the cases
# that would allocate terabytes if validation let them through are skipped.
UNDER_ASAN = "asan" in os.environ.get("LD_PRELOAD", "")

HUGE = 2**31 - 1  # the largest dimension BLAS can index


@dataclass(frozen=True)
class Kernel:
    name: str
    arrays: dict  # positional array arguments -> symbolic shape
    results: tuple  # symbolic shape of each result (one for a single array)
    keywords: dict = field(default_factory=dict)  # keyword -> a valid value
    choices: dict = field(default_factory=dict)  # keyword -> valid values, or makers (dims, rng, dtype) -> value
    bad_keywords: dict = field(default_factory=dict)  # keyword -> [(id, value or dims -> value, bug)]
    nullable: tuple = ()  # positional arrays that may be None
    out: bool = False  # takes out=, shaped like the (single) result

    def __str__(self):
        return self.name


def shape(symbols, dims):
    return tuple(dims[s] for s in symbols)


def make_arrays(kernel, dims, dtype, rng):
    """Valid positional arrays of the kernel, in call order."""
    return {name: rng.uniform(-1, 1, size=shape(symbols, dims)).astype(dtype)
            for name, symbols in kernel.arrays.items()}


def call(module, kernel, arrays, **keywords):
    return getattr(module, kernel.name)(*arrays.values(), **keywords)


def as_tuple(result):
    return result if isinstance(result, tuple) else (result,)



_activation_junk = [
    ("None", None, None), ("int", 1, None), ("relu", "relu", None), ("TANH", "TANH", None),
    ("list", ["tanh"], None), ("array", np.array(["tanh", "linear"]), None),
]
_flag_junk = [
    ("str", "yes", None), ("None", None, None), ("float", 2.5, None),
    ("array", np.array([True, False]), None),
]

KERNELS = [
    Kernel("dense_forward", {"X": "ni", "W": "io", "b": "o"}, ("no",),
           keywords={"activation": "tanh"}, choices={"activation": ("tanh", "linear")},
           bad_keywords={"activation": _activation_junk}, out=True),
    Kernel("dense_backward", {"X": "ni", "W": "io", "A": "no", "dA": "no"},
           ("ni", "io", "o"),
           keywords={"activation": "tanh", "need_dX": True},
           choices={"activation": ("tanh", "linear"), "need_dX": (True, False)},
           bad_keywords={"activation": _activation_junk, "need_dX": _flag_junk}),
]

if HAS_STM:  # the Elman RNN kernels (see lgmstm/_validation.rnn_*_args)
    _lengths_junk = [
        ("str", "abc", None), ("float", lambda d: np.full(d["n"], 1.5), None),
        ("too-long", lambda d: np.full(d["n"], d["t"] + 1), None),
        ("negative", lambda d: np.full(d["n"], -1), None),
        ("wrong-count", lambda d: np.full(d["n"] + 1, 1), None),
        ("2-d", lambda d: np.ones((d["n"], 1), int), None),
        ("object", lambda d: np.full(d["n"], 1, object), None),
    ]
    _lengths = (None, lambda d, rng, dtype: rng.integers(0, d["t"] + 1, d["n"]))
    KERNELS += [
        Kernel("rnn_forward", {"X": "nti", "h0": "nh", "Wx": "ih", "Wh": "hh", "b": "h"},
               ("nth",), keywords={"lengths": None}, choices={"lengths": _lengths},
               bad_keywords={"lengths": _lengths_junk}, nullable=("h0",), out=True),
        Kernel("rnn_backward", {"X": "nti", "h0": "nh", "Wx": "ih", "Wh": "hh", "H": "nth",
                                "dH": "nth"},
               ("nti", "nh", "ih", "hh", "h"), keywords={"lengths": None, "dh_last": None},
               choices={"lengths": _lengths, "dh_last": (None, lambda d, rng, dtype: rng.uniform(
                   -1, 1, (d["n"], d["h"])).astype(dtype))},
               bad_keywords={"lengths": _lengths_junk}, nullable=("h0",)),
    ]

DIMS = {"n": 5, "i": 3, "o": 4, "t": 3, "h": 4}


@dataclass(frozen=True)
class Model:
    name: str
    make: object  # (**keywords) -> model
    X: str  # symbolic shapes, dims as DIMS
    Y: str
    bad_constructor: list  # (id, args, keywords, name in message, bug)
    bad_fit: list = field(default_factory=list)  # extra (id, keywords, name, bug)

    def __str__(self):
        return self.name



MODELS = [
    Model(
        "LGM", lambda *args, **kw: lgmstm.LGM(*(args or ([3, 4, 4],)), **kw), "ni", "no",
        bad_constructor=[
            ("sizes-None", (None,), {}, "layer_sizes", None),
            ("sizes-str", ("34",), {}, "layer_sizes", None),
            ("sizes-int", (3,), {}, "layer_sizes", None),
            ("sizes-one", ([3],), {}, "layer_sizes", None),
            ("sizes-empty", ([],), {}, "layer_sizes", None),
            ("sizes-zero", ([3, 0],), {}, "layer_sizes", None),
            ("sizes-negative", ([3, -1],), {}, "layer_sizes", None),
            ("sizes-float", ([3, 2.5],), {}, "layer_sizes", None),
            ("sizes-bool", ([3, True],), {}, "layer_sizes", None),
            ("sizes-strs", ([3, "2"],), {}, "layer_sizes", None),
            ("sizes-nested", ([[3], [2]],), {}, "layer_sizes", None),
            ("sizes-2**31", ([2**31, 1],), {}, "layer_sizes", None),
            ("sizes-overflow", ([HUGE, HUGE],), {}, "layer_sizes", None),
            ("output-relu", (), {"output": "relu"}, "output", None),
            ("output-None", (), {"output": None}, "output", None),
            ("output-array", (), {"output": np.array(["tanh", "linear"])}, "output", None),
            ("output-softmax-one-class", ([3, 1],), {"output": "softmax"}, "output", None),
            ("dtype-float16", (), {"dtype": np.float16}, "dtype", None),
            ("dtype-int", (), {"dtype": np.int32}, "dtype", None),
            ("dtype-complex", (), {"dtype": complex}, "dtype", None),
            ("dtype-junk", (), {"dtype": "junk"}, "dtype", None),
            ("dtype-object", (), {"dtype": object()}, "dtype", None),
            ("seed-negative", (), {"seed": -1}, "seed", None),
            ("seed-float", (), {"seed": 1.5}, "seed", None),
            ("seed-str", (), {"seed": "1"}, "seed", None),
            ("seed-RandomState", (), {"seed": np.random.RandomState(0)}, "seed", None),
            ("backend-torch", (), {"backend": "torch"}, "backend", None),
            ("backend-None", (), {"backend": None}, "backend", None),
        ]),
]

if HAS_STM:
    MODELS.append(Model(
        "STM", lambda *args, **kw: lgmstm.STM(*(args or (3, 4, 4)), **kw), "nti", "nto",
        bad_constructor=[
            ("n_in-zero", (0, 4, 4), {}, "n_in", None),
            ("n_hidden-float", (3, 4.5, 4), {}, "n_hidden", None),
            ("n_out-None", (3, 4, None), {}, "n_out", None),
            ("n_hidden-2**31", (3, 2**31, 4), {}, "n_hidden", None),
            ("output-relu", (3, 4, 4), {"output": "relu"}, "output", None),
            ("output-softmax-one-class", (3, 4, 1), {"output": "softmax"}, "output", None),
            ("return_sequences-str", (3, 4, 4), {"return_sequences": "yes"},
             "return_sequences", None),
            ("stateful-None", (3, 4, 4), {"stateful": None}, "stateful", None),
            ("dtype-float16", (3, 4, 4), {"dtype": np.float16}, "dtype", None),
            ("seed-negative", (3, 4, 4), {"seed": -1}, "seed", None),
            ("backend-torch", (3, 4, 4), {"backend": "torch"}, "backend", None),
        ],
        bad_fit=[
            ("clip_norm-zero", {"clip_norm": 0}, "clip_norm", None),
            ("clip_norm-negative", {"clip_norm": -1.0}, "clip_norm", None),
            ("clip_norm-nan", {"clip_norm": float("nan")}, "clip_norm", None),
            ("clip_norm-inf", {"clip_norm": float("inf")}, "clip_norm", None),
            ("clip_norm-str", {"clip_norm": "1"}, "clip_norm", None),
        ]))


def model_data(model, n, dtype=np.float64, seed=0):
    """(X, Y) of n samples for the model's default architecture, Y in (-0.8, 0.8)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=shape(model.X, dict(DIMS, n=n))).astype(dtype)
    Y = rng.uniform(-0.8, 0.8, size=shape(model.Y, dict(DIMS, n=n))).astype(dtype)
    return X, Y


def assert_close(actual, expected, err_msg=""):
    """Same shape and dtype, values within the tolerance of expected's dtype."""
    if expected is None:
        assert actual is None, err_msg
        return
    assert actual.shape == expected.shape, err_msg
    assert actual.dtype == expected.dtype, err_msg
    tol = TOLERANCES[np.dtype(expected.dtype)]
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol["rtol"], atol=tol["atol"] * scale,
                               err_msg=err_msg)


def zero_stride(symbols, dims, dtype=np.bool_):
    """A read-only array of any size that takes one element of memory."""
    return np.lib.stride_tricks.as_strided(np.zeros(1, dtype), shape=shape(symbols, dims),
                                           strides=(0,) * len(symbols), writeable=False)


def _address_space():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


@contextmanager
def limited_address_space(needed=True, headroom=2 * 2**30):
    """Let the process map at most `headroom` more bytes while inside.

    For the cases where a missing check would allocate gigabytes: the
    allocation then fails with MemoryError instead of eating the machine.
    needed=False makes it a no-op, for cases that allocate little anyway.
    """
    if not needed:
        yield
        return
    if UNDER_ASAN:
        pytest.skip("AddressSanitizer needs an unlimited address space")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = _address_space() + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def rss_bytes():
    """Resident memory of this process now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
