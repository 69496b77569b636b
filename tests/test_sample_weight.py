"""sample_weight in fit, partial_fit, loss and gradients of LGM and STM.

The oracle is the data itself: a weight of 2 is the sample twice, an
integer weight k the sample k times, a weight of 0 the sample left out
(full batches, where the batch is the whole data set). The compiled code is
also checked against the NumPy reference on shuffled mini-batches, and for
the same bits whatever the thread count.
"""
from __future__ import annotations

import numpy as np
import pytest

from lgmstm import LGM, STM

OUTPUTS = ["linear", "tanh", "softmax", "sigmoid"]
BACKENDS = ["cython", "numpy"]
RTOL = {np.dtype(np.float32): 2e-4, np.dtype(np.float64): 1e-10}


def targets(rng, shape, n_out, output):
    if output == "softmax":
        return np.eye(n_out)[rng.integers(0, n_out, shape)]
    if output == "sigmoid":
        return rng.uniform(0, 1, shape + (n_out,))
    return rng.uniform(-0.8, 0.8, shape + (n_out,))


def repeated(weights, *arrays):
    """Each array with row i repeated weights[i] times (integer weights)."""
    rows = np.repeat(np.arange(len(weights)), weights)
    return [None if a is None else a[rows] for a in arrays]


def assert_dicts_close(actual, expected, dtype):
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=RTOL[dtype] * 10,
                                   atol=RTOL[dtype], err_msg=name)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_lgm_integer_weights_repeat_samples(rng, dtype, output, backend):
    X = rng.standard_normal((12, 3)).astype(dtype)
    Y = targets(rng, (12,), 4, output)
    weights = np.array([2, 1, 0, 3, 1, 1, 2, 0, 1, 1, 1, 4])
    X_rep, Y_rep = repeated(weights, X, Y)
    make = lambda: LGM([3, 6, 4], output=output, dtype=dtype, seed=0, backend=backend)  # noqa: E731
    model = make()
    assert model.loss(X, Y, sample_weight=weights) == pytest.approx(
        model.loss(X_rep, Y_rep), rel=RTOL[dtype])
    assert_dicts_close(model.gradients(X, Y, sample_weight=weights),
                       model.gradients(X_rep, Y_rep), dtype)
    # full-batch training: the same updates
    weighted, duplicated = make(), make()
    history = weighted.fit(X, Y, epochs=5, lr=0.1, optimizer="adam", sample_weight=weights)
    expected = duplicated.fit(X_rep, Y_rep, epochs=5, lr=0.1, optimizer="adam")
    np.testing.assert_allclose(history, expected, rtol=RTOL[dtype] * 10)
    assert_dicts_close(weighted.params, duplicated.params, dtype)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("backend", BACKENDS)
def test_stm_sequence_weights_repeat_sequences(rng, dtype, output, return_sequences, backend):
    X = rng.standard_normal((7, 5, 2)).astype(dtype)
    lengths = np.array([5, 3, 0, 5, 1, 4, 2])
    Y = targets(rng, (7, 5) if return_sequences else (7,), 3, output)
    weights = np.array([2, 1, 1, 0, 3, 1, 2])
    X_rep, Y_rep, lengths_rep = repeated(weights, X, Y, lengths)

    def make():
        return STM(2, 4, 3, output=output, return_sequences=return_sequences, dtype=dtype,
                   seed=1, backend=backend)

    model = make()
    assert model.loss(X, Y, lengths=lengths, sample_weight=weights) == pytest.approx(
        model.loss(X_rep, Y_rep, lengths=lengths_rep), rel=RTOL[dtype])
    assert_dicts_close(model.gradients(X, Y, lengths=lengths, sample_weight=weights),
                       model.gradients(X_rep, Y_rep, lengths=lengths_rep), dtype)
    weighted, duplicated = make(), make()
    history = weighted.fit(X, Y, lengths=lengths, epochs=4, lr=0.1, sample_weight=weights)
    expected = duplicated.fit(X_rep, Y_rep, lengths=lengths_rep, epochs=4, lr=0.1)
    np.testing.assert_allclose(history, expected, rtol=RTOL[dtype] * 10)
    assert_dicts_close(weighted.params, duplicated.params, dtype)


@pytest.mark.parametrize("output", OUTPUTS)
def test_stm_step_weights(rng, output):
    X = rng.standard_normal((6, 4, 2))
    lengths = np.array([4, 2, 3, 0, 4, 1])
    Y = targets(rng, (6, 4), 3, output)
    model = STM(2, 5, 3, output=output, seed=2)
    per_sequence = rng.uniform(0.5, 2, 6)
    # a weight per step equal along each sequence is the weight per sequence
    broadcast = np.repeat(per_sequence[:, None], 4, axis=1)
    np.testing.assert_array_equal(
        model.loss(X, Y, lengths=lengths, sample_weight=broadcast),
        model.loss(X, Y, lengths=lengths, sample_weight=per_sequence))
    for name, grad in model.gradients(X, Y, lengths=lengths, sample_weight=broadcast).items():
        np.testing.assert_array_equal(
            grad, model.gradients(X, Y, lengths=lengths, sample_weight=per_sequence)[name])
    # zero weight on a step is that step cut off, when it is a sequence's last
    cut = np.ones((6, 4))
    cut[0, 3] = cut[2, 2] = 0
    shorter = lengths.copy()
    shorter[0], shorter[2] = 3, 2
    assert model.loss(X, Y, lengths=lengths, sample_weight=cut) == pytest.approx(
        model.loss(X, Y, lengths=shorter), rel=1e-12)
    expected = model.gradients(X, Y, lengths=shorter)
    for name, grad in model.gradients(X, Y, lengths=lengths, sample_weight=cut).items():
        np.testing.assert_allclose(grad, expected[name], rtol=1e-10, atol=1e-14)
    # and against the reference, step weights of any size
    steps = rng.uniform(0, 3, (6, 4))
    oracle = STM(2, 5, 3, output=output, seed=2, backend="numpy")
    assert model.loss(X, Y, lengths=lengths, sample_weight=steps) == pytest.approx(
        oracle.loss(X, Y, lengths=lengths, sample_weight=steps), rel=1e-12)
    assert_dicts_close(model.gradients(X, Y, lengths=lengths, sample_weight=steps),
                       oracle.gradients(X, Y, lengths=lengths, sample_weight=steps),
                       np.dtype(np.float64))


@pytest.mark.parametrize("output", OUTPUTS)
def test_unit_weights_change_nothing_but_rounding(rng, dtype, output):
    X = rng.standard_normal((30, 3)).astype(dtype)
    Y = targets(rng, (30,), 2, output)
    model = LGM([3, 5, 2], output=output, dtype=dtype, seed=3)
    ones = np.ones(30)
    assert model.loss(X, Y, sample_weight=ones) == pytest.approx(model.loss(X, Y),
                                                                 rel=RTOL[dtype])
    assert_dicts_close(model.gradients(X, Y, sample_weight=ones), model.gradients(X, Y), dtype)
    # a common factor cancels: 3 everywhere is 1 everywhere
    assert_dicts_close(model.gradients(X, Y, sample_weight=3 * ones),
                       model.gradients(X, Y, sample_weight=ones), dtype)


@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_compiled_mini_batches_match_the_reference(rng, dtype, output, optimizer):
    X = rng.standard_normal((50, 4)).astype(dtype)
    Y = targets(rng, (50,), 3, output)
    weights = rng.uniform(0, 2, 50)
    weights[:6] = 0  # a batch may weigh little, or nothing
    histories = []
    for backend in BACKENDS:
        model = LGM([4, 7, 3], output=output, dtype=dtype, seed=4, backend=backend)
        histories.append((model.fit(X, Y, epochs=4, lr=0.05, batch_size=6, optimizer=optimizer,
                                    sample_weight=weights, seed=5), model.params))
    (history, params), (expected, expected_params) = histories
    np.testing.assert_allclose(history, expected, rtol=RTOL[dtype] * 10)
    assert_dicts_close(params, expected_params, dtype)


def test_a_batch_of_zero_weight_changes_nothing(rng):
    X = rng.standard_normal((8, 3))
    Y = rng.uniform(-0.5, 0.5, (8, 2))
    weights = np.array([0, 0, 0, 0, 1, 1, 1, 1.0])
    for backend in BACKENDS:
        model = LGM([3, 4, 2], seed=0, backend=backend)
        alone = LGM([3, 4, 2], seed=0, backend=backend)
        # unshuffled batches of 4: the first weighs nothing, the second is X[4:]
        model.fit(X, Y, epochs=1, lr=0.1, batch_size=4, shuffle=False, sample_weight=weights)
        alone.fit(X[4:], Y[4:], epochs=1, lr=0.1)
        for name, value in alone.params.items():
            np.testing.assert_allclose(model.params[name], value, rtol=1e-12, err_msg=name)


def test_partial_fit_takes_weights_like_fit(rng, dtype):
    X = rng.standard_normal((20, 3)).astype(dtype)
    Y = np.eye(3)[rng.integers(0, 3, 20)]
    weights = rng.uniform(0, 2, 20)
    a = LGM([3, 5, 3], output="softmax", dtype=dtype, seed=0)
    b = LGM([3, 5, 3], output="softmax", dtype=dtype, seed=0)
    for _ in range(3):
        a.partial_fit(X, Y, lr=0.1, batch_size=8, sample_weight=weights, optimizer="adam")
    b.fit(X, Y, epochs=3, lr=0.1, batch_size=8, sample_weight=weights, optimizer="adam")
    for name, value in b.params.items():
        np.testing.assert_array_equal(a.params[name], value, err_msg=name)
    s = STM(3, 4, 3, output="softmax", return_sequences=False, dtype=dtype, seed=0)
    t = STM(3, 4, 3, output="softmax", return_sequences=False, dtype=dtype, seed=0)
    sequences = rng.standard_normal((20, 4, 3)).astype(dtype)
    for _ in range(2):
        s.partial_fit(sequences, Y, lr=0.1, batch_size=8, sample_weight=weights)
    t.fit(sequences, Y, epochs=2, lr=0.1, batch_size=8, sample_weight=weights)
    for name, value in t.params.items():
        np.testing.assert_array_equal(s.params[name], value, err_msg=name)


def test_same_bits_for_any_thread_count(rng, threads):
    X = rng.standard_normal((4000, 16))
    Y = rng.uniform(-0.8, 0.8, (4000, 10))
    weights = rng.uniform(0, 3, 4000)
    sequences = rng.standard_normal((256, 10, 6))
    step_weights = rng.uniform(0, 3, (256, 10))
    step_targets = rng.uniform(-0.8, 0.8, (256, 10, 10))
    results = []
    for n_threads in (1, 2, 3):
        with threads(n_threads):
            lgm = LGM([16, 64, 10], output="linear", seed=0)
            history = lgm.fit(X, Y, epochs=2, lr=0.05, batch_size=2000, sample_weight=weights,
                              seed=1)
            stm = STM(6, 32, 10, output="linear", seed=0)
            stm_history = stm.fit(sequences, step_targets, epochs=2, lr=0.05, batch_size=128,
                                  sample_weight=step_weights, seed=1)
            results.append([history, stm_history, *lgm.params.values(), *stm.params.values(),
                            *lgm.gradients(X, Y, sample_weight=weights).values()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
