"""lgmstm.kernels.dense_forward/dense_backward against the NumPy reference,
central finite differences, and the checks both modules share."""
from contextlib import contextmanager

import numpy as np
import pytest

from lgmstm import kernels, reference

# (n_samples, n_in, n_out): trivial, odd, around the 64-row chunks and
# 64-row weight-gradient stripes, stripes of several heights with a short
# last one, an empty batch and an empty input.
SHAPES = [
    (1, 1, 1),
    (37, 13, 29),
    (333, 77, 99),
    (63, 65, 9),
    (64, 130, 5),
    (65, 65, 17),
    (129, 130, 70),
    (300, 700, 40),
    (0, 5, 3),
    (5, 0, 3),
]
ACTIVATIONS = ["tanh", "linear"]
LAYOUTS = ["fortran", "strided", "negative"]
MODULES = [kernels, reference]


def layer_inputs(rng, dtype, n_samples, n_in, n_out):
    """X, W, b, dA of a layer whose pre-activations are O(1)."""
    X = rng.standard_normal((n_samples, n_in))
    W = rng.standard_normal((n_in, n_out)) / np.sqrt(max(n_in, 1))
    b = 0.5 * rng.standard_normal(n_out)
    dA = rng.standard_normal((n_samples, n_out))
    return tuple(a.astype(dtype) for a in (X, W, b, dA))


def in_layout(array, layout):
    """The same values as array, laid out in memory as named."""
    if layout == "fortran":
        return np.asfortranarray(array)
    every_other = tuple(slice(None, None, 2) for _ in array.shape)
    if layout == "strided":
        holder = np.full(tuple(2 * n for n in array.shape), np.nan, array.dtype)
        holder[every_other] = array
        return holder[every_other]
    if layout == "negative":
        reversed_ = tuple(slice(None, None, -1) for _ in array.shape)
        return array[reversed_].copy()[reversed_]
    raise ValueError(layout)


@contextmanager
def unchanged(*arrays):
    """Fail if the block modifies any of arrays."""
    copies = [a.copy() for a in arrays]
    yield
    for array, copy in zip(arrays, copies):
        np.testing.assert_array_equal(array, copy, err_msg="an input was modified")


def assert_same_bits(actual, expected):
    for a, e in zip(actual, expected):
        assert a.dtype == e.dtype and a.shape == e.shape
        assert np.array_equal(a, e), "results differ"


# -- against the reference --------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_matches_reference(rng, dtype, shape, activation, assert_close):
    X, W, b, _ = layer_inputs(rng, dtype, *shape)
    with unchanged(X, W, b):
        A = kernels.dense_forward(X, W, b, activation=activation)
    assert A.flags.c_contiguous
    assert_close(A, reference.dense_forward(X, W, b, activation=activation))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_backward_matches_reference(rng, dtype, shape, activation, assert_close):
    X, W, b, dA = layer_inputs(rng, dtype, *shape)
    A = reference.dense_forward(X, W, b, activation=activation)
    with unchanged(X, W, A, dA):
        got = kernels.dense_backward(X, W, A, dA, activation=activation)
    expected = reference.dense_backward(X, W, A, dA, activation=activation)
    for name, g, e in zip(("dX", "dW", "db"), got, expected):
        assert_close(g, e, err_msg=name)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_without_dX(rng, dtype, activation):
    X, W, b, dA = layer_inputs(rng, dtype, 129, 65, 17)
    A = kernels.dense_forward(X, W, b, activation=activation)
    dX, dW, db = kernels.dense_backward(X, W, A, dA, activation=activation, need_dX=False)
    assert dX is None
    assert_same_bits((dW, db), kernels.dense_backward(X, W, A, dA, activation=activation)[1:])


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_empty_batch(rng, dtype, module, activation):
    X, W, b, dA = layer_inputs(rng, dtype, 0, 5, 3)
    A = module.dense_forward(X, W, b, activation=activation)
    assert A.shape == (0, 3) and A.dtype == dtype
    dX, dW, db = module.dense_backward(X, W, A, dA, activation=activation)
    assert dX.shape == (0, 5) and dX.dtype == dtype
    np.testing.assert_array_equal(dW, np.zeros((5, 3), dtype))
    np.testing.assert_array_equal(db, np.zeros(3, dtype))
    assert dW.dtype == db.dtype == dtype


# -- layouts ----------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", [(37, 13, 29), (129, 130, 70)], ids=str)
def test_layouts_give_the_contiguous_result(rng, dtype, shape, layout):
    X, W, b, dA = layer_inputs(rng, dtype, *shape)
    A = kernels.dense_forward(X, W, b)
    views = [in_layout(a, layout) for a in (X, W, b, A, dA)]
    X_, W_, b_, A_, dA_ = views
    assert not X_.flags.c_contiguous
    with unchanged(*views):
        forward = kernels.dense_forward(X_, W_, b_)
        backward = kernels.dense_backward(X_, W_, A_, dA_)
    assert_same_bits([forward], [A])
    assert_same_bits(backward, kernels.dense_backward(X, W, A, dA))


# -- out= -------------------------------------------------------------------

@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_out_is_written_and_returned(rng, dtype, module):
    X, W, b, _ = layer_inputs(rng, dtype, 65, 13, 29)
    out = np.full((65, 29), np.nan, dtype)
    result = module.dense_forward(X, W, b, out=out)
    assert result is out
    assert_same_bits([out], [module.dense_forward(X, W, b)])


def _read_only(shape, dtype):
    array = np.zeros(shape, dtype)
    array.flags.writeable = False
    return array


BAD_OUTS = {
    "wrong shape": (lambda d: np.empty((29, 65), d), ValueError, "shape"),
    "too few rows": (lambda d: np.empty((64, 29), d), ValueError, "shape"),
    "wrong dtype": (lambda d: np.empty((65, 29), np.float32 if d == np.float64 else np.float64),
                    TypeError, "dtype"),
    "read-only": (lambda d: _read_only((65, 29), d), ValueError, "writable"),
    "fortran": (lambda d: np.empty((65, 29), d, order="F"), ValueError, "contiguous"),
    "strided": (lambda d: np.empty((65, 58), d)[:, ::2], ValueError, "contiguous"),
    "a list": (lambda d: [[0.0] * 29] * 65, TypeError, "ndarray"),
}


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("case", BAD_OUTS)
def test_bad_out_is_refused(rng, dtype, module, case):
    make_out, error, message = BAD_OUTS[case]
    X, W, b, _ = layer_inputs(rng, dtype, 65, 13, 29)
    out = make_out(dtype)
    before = np.array(out, copy=True)
    with pytest.raises(error, match=message):
        module.dense_forward(X, W, b, out=out)
    np.testing.assert_array_equal(np.asarray(out), before)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("aliased", ["X", "W"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_out_aliasing_an_input(rng, dtype, module, aliased, activation, assert_close):
    X, W, b, _ = layer_inputs(rng, dtype, 40, 40, 40)
    expected = reference.dense_forward(X, W, b, activation=activation)
    inputs = {"X": X.copy(), "W": W.copy()}
    out = inputs[aliased]
    result = module.dense_forward(inputs["X"], inputs["W"], b, activation=activation, out=out)
    assert result is out
    assert_close(result, expected)


# -- dtypes -----------------------------------------------------------------

FORWARD_ARGS = ("X", "W", "b")
BACKWARD_ARGS = ("X", "W", "A", "dA")


def named_inputs(rng, dtype, shape=(9, 4, 3)):
    X, W, b, dA = layer_inputs(rng, dtype, *shape)
    return dict(X=X, W=W, b=b, A=np.tanh(X @ W + b), dA=dA)


def call(module, function, arrays):
    """The results of dense_forward or dense_backward, as a tuple."""
    if function == "forward":
        return (module.dense_forward(*(arrays[n] for n in FORWARD_ARGS)),)
    return module.dense_backward(*(arrays[n] for n in BACKWARD_ARGS))


FUNCTION_ARGS = [("forward", n) for n in FORWARD_ARGS] + [("backward", n) for n in BACKWARD_ARGS]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("function, name", FUNCTION_ARGS)
def test_mixed_float_dtypes_are_refused(rng, module, function, name):
    arrays = named_inputs(rng, np.float64)
    arrays[name] = arrays[name].astype(np.float32)
    with pytest.raises(TypeError, match=rf"\b{name} is float32\b") as info:
        call(module, function, arrays)
    assert "float64" in str(info.value)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("function", ["forward", "backward"])
def test_integer_inputs_are_converted(rng, module, function):
    arrays = {k: np.round(4 * v).astype(np.int32) for k, v in named_inputs(rng, np.float64).items()}
    as_float = {k: v.astype(np.float64) for k, v in arrays.items()}
    assert_same_bits(call(module, function, arrays), call(module, function, as_float))
    # Integer arrays follow the floating dtype of the other arguments.
    arrays["W"] = arrays["W"].astype(np.float32)
    assert {r.dtype for r in call(module, function, arrays)} == {np.dtype(np.float32)}


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("bad", [np.float16, np.complex128, object])
def test_unsupported_dtypes_are_refused(rng, module, bad):
    arrays = named_inputs(rng, np.float64)
    arrays["X"] = arrays["X"].astype(bad)
    with pytest.raises(TypeError, match=r"\bX\b"):
        call(module, "forward", arrays)


# -- shapes -----------------------------------------------------------------

BAD_SHAPES = [
    ("forward", "X", (9,)),
    ("forward", "X", (1, 9, 4)),
    ("forward", "W", (4,)),
    ("forward", "W", (3, 3)),
    ("forward", "b", (4,)),
    ("forward", "b", (1, 3)),
    ("backward", "W", (5, 3)),
    ("backward", "A", (9, 4)),
    ("backward", "A", (8, 3)),
    ("backward", "dA", (9, 2)),
    ("backward", "dA", (3,)),
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("function, name, shape", BAD_SHAPES)
def test_bad_shapes_name_the_argument(rng, module, function, name, shape):
    arrays = named_inputs(rng, np.float64)
    arrays[name] = np.zeros(shape)
    with pytest.raises(ValueError, match=rf"^{name} "):
        call(module, function, arrays)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("function", ["forward", "backward"])
def test_unknown_activation_is_refused(rng, module, function):
    arrays = named_inputs(rng, np.float64)
    args = [arrays[n] for n in (FORWARD_ARGS if function == "forward" else BACKWARD_ARGS)]
    with pytest.raises(ValueError, match="activation"):
        getattr(module, f"dense_{function}")(*args, activation="relu")


# -- against finite differences ---------------------------------------------

def numerical_gradient(loss, array, h=1e-6):
    """Central differences of loss() with respect to every element of array."""
    grad = np.empty_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + h
        up = loss()
        array[index] = saved - h
        down = loss()
        array[index] = saved
        grad[index] = (up - down) / (2 * h)
    return grad


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(7, 4, 3), (70, 5, 3)], ids=str)
def test_backward_matches_finite_differences(rng, shape, activation):
    X, W, b, R = layer_inputs(rng, np.float64, *shape)

    def loss():  # sum(A * R), A computed independently of lgmstm
        Z = X @ W + b
        return float(np.sum((np.tanh(Z) if activation == "tanh" else Z) * R))

    A = kernels.dense_forward(X, W, b, activation=activation)
    dX, dW, db = kernels.dense_backward(X, W, A, R, activation=activation)
    for name, got, array in (("dX", dX, X), ("dW", dW, W), ("db", db, b)):
        np.testing.assert_allclose(got, numerical_gradient(loss, array),
                                   rtol=1e-6, atol=1e-8, err_msg=name)
