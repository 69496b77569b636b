"""The kernels' vectorised tanh (lgmstm._dense._tanh, in place) against
np.tanh and against a wider-precision tanh, with its exact special values."""
import numpy as np
import pytest

from lgmstm import _dense

MAX_ULP = 4
N_MAGNITUDES = 1_000_000


def compiled_tanh(x):
    y = np.array(x, copy=True)
    assert _dense._tanh(y) is None
    return y


def sweep(dtype):
    """Log-spaced magnitudes from the smallest normal (1e-300 for float64)
    to 30, the subnormals, then all of that negated."""
    info = np.finfo(dtype)
    start = max(np.log10(info.smallest_normal), -300)
    magnitudes = np.logspace(start, np.log10(30), N_MAGNITUDES).astype(dtype)
    subnormals = np.concatenate([
        np.linspace(0, info.smallest_normal, 10_001, dtype=dtype)[1:-1],
        info.smallest_subnormal * np.arange(1, 101, dtype=dtype),
    ])
    positive = np.concatenate([magnitudes, subnormals])
    return np.concatenate([positive, -positive])


def ulp_error(actual, exact, dtype):
    """|actual - exact| in units of dtype's spacing at exact."""
    exact = np.asarray(exact)
    spacing = np.spacing(np.abs(exact.astype(dtype))).astype(exact.dtype)
    return np.abs(actual.astype(exact.dtype) - exact) / spacing


def wide_tanh(x):
    """tanh in a wider type than x's, or None when there is none."""
    wider = {np.dtype(np.float32): np.float64, np.dtype(np.float64): np.longdouble}[x.dtype]
    if np.finfo(wider).nmant <= np.finfo(x.dtype).nmant:
        return None
    return np.tanh(x.astype(wider))


def test_sweep_is_within_a_few_ulp(dtype, record_property):
    x = sweep(dtype)
    ours = compiled_tanh(x)
    vs_numpy = float(ulp_error(ours, np.tanh(x).astype(np.float64), dtype).max())
    record_property(f"max_ulp_vs_np_tanh_{dtype.name}", vs_numpy)
    print(f"\ntanh {dtype.name}: max {vs_numpy:.3g} ulp vs np.tanh", end="")
    assert vs_numpy <= MAX_ULP
    exact = wide_tanh(x)
    if exact is not None:
        vs_exact = float(ulp_error(ours, exact, dtype).max())
        record_property(f"max_ulp_vs_wide_tanh_{dtype.name}", vs_exact)
        print(f", {vs_exact:.3g} ulp vs tanh in {exact.dtype}", end="")
        assert vs_exact <= MAX_ULP


def test_odd_symmetry_is_exact(dtype):
    x = sweep(dtype)
    positive, negative = np.split(compiled_tanh(x), 2)
    np.testing.assert_array_equal(negative.view(f"u{dtype.itemsize}"),
                                  (-positive).view(f"u{dtype.itemsize}"))


@pytest.mark.parametrize("sign", [1, -1])
def test_saturates_to_exactly_one(dtype, sign):
    info = np.finfo(dtype)
    # np.tanh rounds to 1 from about 9.01 (float32) and 19.06 (float64).
    start = 10 if dtype == np.float32 else 20
    x = sign * np.array([start, start + 0.5, 40, 88, 1e3, 1e30, info.max, np.inf], dtype)
    np.testing.assert_array_equal(compiled_tanh(x), np.full(x.shape, sign, dtype))
    np.testing.assert_array_equal(np.tanh(x), np.full(x.shape, sign, dtype))


def test_zero_keeps_its_sign(dtype):
    result = compiled_tanh(np.array([0.0, -0.0], dtype))
    np.testing.assert_array_equal(result, [0, 0])
    np.testing.assert_array_equal(np.signbit(result), [False, True])


def test_nan_propagates(dtype):
    x = np.array([np.nan, -np.nan, 1.0, np.nan], dtype)
    result = compiled_tanh(x)
    np.testing.assert_array_equal(np.isnan(result), [True, True, False, True])
    assert result[2] == compiled_tanh(x[2:3])[0]  # neighbours are untouched by NaN


def test_subnormals_are_unchanged(dtype):
    info = np.finfo(dtype)
    x = info.smallest_subnormal * np.array([1, 2, 3, 1000, -1, -7], dtype)
    np.testing.assert_array_equal(compiled_tanh(x), x)


def test_empty_array(dtype):
    assert compiled_tanh(np.empty(0, dtype)).shape == (0,)


@pytest.mark.parametrize("bad", [
    np.ones((3, 2)),
    np.ones(6)[::2],
    np.ones(3, np.int64),
    np.ones(3, np.float16),
], ids=["2-D", "strided", "int64", "float16"])
def test_refuses_what_it_cannot_do_in_place(bad):
    # Cython's fused-type dispatch decides TypeError or ValueError.
    with pytest.raises((TypeError, ValueError)):
        _dense._tanh(bad)
    np.testing.assert_array_equal(bad, 1)
