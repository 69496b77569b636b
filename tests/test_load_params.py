"""load_params(dict): every parameter set at once, or none: names, shapes,
dtypes and finiteness checked first, with errors that name the parameter
and show what was expected against what was given."""
import numpy as np
import pytest

import lgmstm


def models():
    return [lgmstm.LGM([4, 6, 2], seed=0), lgmstm.STM(3, 5, 2, seed=0),
            lgmstm.LGM([4, 6, 2], seed=0, backend="numpy", dtype=np.float32)]


def other_params(model, seed=1):
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(-0.5, 0.5, value.shape).astype(value.dtype)
            for name, value in model.params.items()}


def inputs(model):
    shape = (7, 4) if model.kind == "LGM" else (7, 2, 3)
    return np.random.default_rng(2).uniform(-1, 1, shape)


@pytest.mark.parametrize("model", models(), ids=repr)
def test_params_round_trip(model):
    """Another model's parameters, loaded, predict as that model does; the
    arrays given are copied, not kept."""
    source = type(model).__new__(type(model))
    source.__setstate__(model.__getstate__())
    given = other_params(model)
    source.load_params(given)
    model.load_params(source.params)
    for name, value in given.items():
        np.testing.assert_array_equal(model.params[name], value, strict=True)
    np.testing.assert_array_equal(model.predict(inputs(model)), source.predict(inputs(model)))
    for value in given.values():
        value[...] = 7
    assert not any((value == 7).any() for value in model.params.values())


def test_other_float_dtypes_and_lists_are_converted():
    model = lgmstm.LGM([2, 2], seed=0)
    model.load_params({"layer0.weight": np.eye(2, dtype=np.float32),
                       "layer0.bias": [0.5, -0.25]})
    assert model.params["layer0.weight"].dtype == np.float64
    np.testing.assert_allclose(model.predict(np.array([[1.0, 0.0]])),  # the tanh: 3 ulp
                               np.tanh([[1.5, -0.25]]), rtol=1e-15)


BAD = {
    "missing": (lambda p: {k: v for k, v in p.items() if k != "layer1.bias"}, ValueError,
                r"missing \['layer1.bias'\]"),
    "extra": (lambda p: {**p, "layer2.weight": np.zeros((2, 2))}, ValueError,
              r"unknown \['layer2.weight'\]"),
    "misshapen": (lambda p: {**p, "layer0.weight": p["layer0.weight"].T}, ValueError,
                  r"parameter layer0.weight must have shape \(4, 6\), got \(6, 4\)"),
    "vector-for-matrix": (lambda p: {**p, "layer1.bias": np.zeros((1, 2))}, ValueError,
                          r"parameter layer1.bias must have shape \(2,\), got \(1, 2\)"),
    "nan": (lambda p: {**p, "layer1.weight": np.full((6, 2), np.nan)}, ValueError,
            "parameter layer1.weight must be finite"),
    "inf": (lambda p: {**p, "layer0.bias": np.full(6, -np.inf)}, ValueError,
            "parameter layer0.bias must be finite"),
    "integers": (lambda p: {**p, "layer0.bias": np.zeros(6, int)}, TypeError,
                 "parameter layer0.bias must be an array of float32 or float64 .* got dtype int"),
    "complex": (lambda p: {**p, "layer1.bias": np.zeros(2, complex)}, TypeError,
                "parameter layer1.bias .* got dtype complex128"),
    "strings": (lambda p: {**p, "layer1.bias": ["a", "b"]}, TypeError,
                "parameter layer1.bias .* got dtype <U1"),
    "not-a-mapping": (lambda p: list(p.values()), TypeError, "params must be a mapping"),
    "ragged": (lambda p: {**p, "layer1.bias": [[0.0], [0.0, 1.0]]}, ValueError,
               r"parameter layer1.bias must be an array of shape \(2,\), got list that is "
               "not one"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_params_are_refused_and_nothing_is_written(case):
    make_bad, error, message = BAD[case]
    model = lgmstm.LGM([4, 6, 2], seed=0)
    before = model.params
    with pytest.raises(error, match=message):
        model.load_params(make_bad(other_params(model)))
    for name, value in before.items():
        np.testing.assert_array_equal(model.params[name], value, strict=True)


def test_values_past_float32s_range_are_refused_not_made_inf():
    """1e300 is finite in float64 and inf in a float32 model: refused, the
    model as it was (it would predict wrong values, and save a file that
    load refuses)."""
    model = lgmstm.LGM([4, 6, 2], dtype=np.float32, seed=0)
    before = model.params
    params = {name: value.astype(np.float64) for name, value in before.items()}
    params["layer0.weight"][1, 2] = -1e300
    with pytest.raises(ValueError, match=r"parameter layer0.weight must be finite in the "
                       r"model's dtype float32, got values beyond its range \(largest "
                       r"magnitude 1e\+300\)"):
        model.load_params(params)
    for name, value in before.items():
        np.testing.assert_array_equal(model.params[name], value, strict=True)
    params["layer0.weight"][1, 2] = 3e38   # within float32's range: converted
    model.load_params(params)
    assert model.params["layer0.weight"][1, 2] == np.float32(3e38)


def test_big_endian_arrays_are_read_as_their_values():
    model = lgmstm.LGM([2, 2], seed=0)
    weight = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=">f8")
    model.load_params({"layer0.weight": weight, "layer0.bias": np.zeros(2, ">f4")})
    np.testing.assert_array_equal(model.params["layer0.weight"], [[1.0, 2.0], [3.0, 4.0]],
                                  strict=False)
    assert model.params["layer0.weight"].dtype == np.float64


def test_stm_errors_name_its_parameters():
    model = lgmstm.STM(3, 5, 2, seed=0)
    params = model.params
    params["recurrent_weight"] = np.zeros((5, 4))
    with pytest.raises(ValueError,
                       match=r"parameter recurrent_weight must have shape \(5, 5\), got \(5, 4\)"):
        model.load_params(params)
    del params["recurrent_weight"]
    with pytest.raises(ValueError, match=r"missing \['recurrent_weight'\]"):
        model.load_params(params)


def test_load_params_keeps_the_optimizer_state():
    """As documented: the moments stay until reset_optimizer() or a cold fit."""
    X, Y = np.zeros((5, 4)), np.zeros((5, 2))
    model = lgmstm.LGM([4, 6, 2], seed=0)
    model.partial_fit(X, Y, lr=0.1, optimizer="adam")
    model.load_params(other_params(model))
    assert model.__getstate__()["optimizer"]["step"] == 1
