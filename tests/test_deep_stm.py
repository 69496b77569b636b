"""Stacked and bidirectional STMs with a readout of tanh layers (issue 15):
the NumPy composition (lgmstm.reference.deep_*) against finite differences,
the STM's backends against it, states, files, bad input, and torch's nn.RNN."""
import pickle

import numpy as np
import pytest

import lgmstm
from lgmstm import STM, reference

DTYPES = [np.float32, np.float64]


def random_network(rng, n_in, sizes, n_out, bidirectional, readout, dtype):
    """(layers, readout) as reference.deep_forward takes them, small random values."""
    layers = []
    width = n_in
    for n_hidden in sizes:
        directions = [tuple(rng.uniform(-0.6, 0.6, shape).astype(dtype)
                            for shape in ((width, n_hidden), (n_hidden, n_hidden), (n_hidden,)))
                      for _ in range(2 if bidirectional else 1)]
        layers.append(directions)
        width = n_hidden * len(directions)
    dense = []
    for n in [*readout, n_out]:
        dense.append((rng.uniform(-0.6, 0.6, (width, n)).astype(dtype),
                      rng.uniform(-0.3, 0.3, n).astype(dtype)))
        width = n
    return layers, dense


def flat(layers, dense):
    return [p for directions in layers for direction in directions for p in direction] + \
        [p for layer in dense for p in layer]


VARIANTS = [  # (sizes, bidirectional, readout, return_sequences)
    ([3, 4], False, [], True),
    ([3, 4], True, [], True),
    ([3, 2, 4], True, [5], False),
    ([4], True, [3, 2], True),
    ([3], False, [5], False),
    ([2, 3], False, [4], False),
]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("output_tanh", [True, False])
def test_reference_gradients_match_finite_differences(variant, output_tanh):
    sizes, bidirectional, readout, return_sequences = variant
    rng = np.random.default_rng(len(sizes) + 10 * bidirectional + len(readout))
    n_samples, n_steps, n_in, n_out = 4, 5, 3, 2
    layers, dense = random_network(rng, n_in, sizes, n_out, bidirectional, readout, np.float64)
    X = rng.standard_normal((n_samples, n_steps, n_in))
    lengths = np.array([5, 0, 3, 1], np.intp)
    h0s = None if bidirectional else [rng.standard_normal((n_samples, n)) * 0.5 for n in sizes]
    shape = (n_samples, n_steps, n_out) if return_sequences else (n_samples, n_out)
    Y = rng.standard_normal(shape) * 0.5
    if return_sequences:
        Y[np.arange(n_steps) >= lengths[:, None]] = 0

    def loss():
        return reference.deep_loss_gradients(X, Y, layers, dense, h0s, lengths, output_tanh,
                                             return_sequences)[0]

    _, grads, finals = reference.deep_loss_gradients(X, Y, layers, dense, h0s, lengths,
                                                     output_tanh, return_sequences)
    params = flat(layers, dense)
    assert [g.shape for g in grads] == [p.shape for p in params]
    for param, grad in zip(params, grads):
        numeric = np.empty_like(param)
        for index in np.ndindex(param.shape):
            saved = param[index]
            param[index] = saved + 1e-6
            up = loss()
            param[index] = saved - 1e-6
            down = loss()
            param[index] = saved
            numeric[index] = (up - down) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)
    assert [f.shape for f in finals] == [(n_samples, n) for n in sizes]
    if h0s is not None:  # length 0: the final state is the initial one
        for h0, final in zip(h0s, finals):
            np.testing.assert_array_equal(final[1], h0[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_float32_follows_float64(dtype):
    rng = np.random.default_rng(3)
    layers, dense = random_network(rng, 3, [4, 3], 2, True, [3], np.float64)
    X = rng.standard_normal((3, 6, 3))
    Y = rng.standard_normal((3, 6, 2)) * 0.5
    lengths = np.array([6, 2, 0], np.intp)
    Y[np.arange(6) >= lengths[:, None]] = 0
    expected = reference.deep_loss_gradients(X, Y, layers, dense, None, lengths, True, True)
    cast = [[tuple(p.astype(dtype) for p in d) for d in layer] for layer in layers]
    cast_dense = [tuple(p.astype(dtype) for p in layer) for layer in dense]
    loss, grads, finals = reference.deep_loss_gradients(
        X.astype(dtype), Y.astype(dtype), cast, cast_dense, None, lengths, True, True)
    tolerance = 1e-4 if dtype == np.float32 else 1e-12
    assert abs(loss - expected[0]) <= tolerance * max(1.0, expected[0])
    for got, want in zip(grads + finals, expected[1] + expected[2]):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=tolerance * 10, atol=tolerance)


def test_reverse_direction_starts_at_each_last_valid_step():
    """A backward direction alone on a padded sequence is the forward pass on
    the reversed valid steps."""
    rng = np.random.default_rng(5)
    Wx, Wh, b = rng.standard_normal((2, 3)), rng.standard_normal((3, 3)) * 0.4, np.zeros(3)
    X = rng.standard_normal((1, 6, 2))
    lengths = np.array([4], np.intp)
    layers = [[(Wx, Wh, b), (np.zeros((2, 3)), np.zeros((3, 3)), np.zeros(3))]]
    dense = [(np.vstack([np.zeros((3, 3)), np.eye(3)]), np.zeros(3))]
    alone = np.empty((1, 4, 3))
    reference.recurrent_forward(np.ascontiguousarray(X[:, 3::-1]), None, Wx, Wh, b,
                                np.array([4], np.intp), alone)
    layers[0] = layers[0][::-1]  # the reverse direction runs (Wx, Wh, b), the forward none
    outputs, kept = reference.deep_forward(X, layers, dense, None, lengths, False, True)
    np.testing.assert_allclose(outputs[0, :4], alone[0, ::-1], rtol=1e-14)
    np.testing.assert_array_equal(outputs[0, 4:], 0)
    np.testing.assert_allclose(kept.finals[0][1][0], alone[0, -1], rtol=1e-14)
