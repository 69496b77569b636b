"""Training in the panel layout (small networks: csrc/lgmstm/_panel.h) against the
NumPy backend, and the same bits for any thread count.

The shapes are picked to land on every path the compiled fit can take:
panels in one group (serial), panels in 2 or 4 groups (parallel sample
tasks), and row-major BLAS; `_training_layout` says which, and the first
tests check that the grid really covers them all.
"""
import numpy as np
import pytest

import lgmstm
from lgmstm import _lgm, _stm

OPTIMIZERS = {"sgd": 0.05, "momentum": 0.02, "adam": 0.01}


# Adam's first steps are about +-lr whatever a gradient's size, so a
# gradient that is 0 up to rounding can step either way, and the rounding of
# the compiled sums (another order than NumPy's) grows into the parameters:
# in float64 to ~1e-10, in float32 to ~1e-5 (as the kernels' own tolerance).
ADAM_TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5),
    np.dtype(np.float64): dict(rtol=1e-8, atol=1e-10),
}
# On the row-major BLAS path in float32 ("blas" cases) sgemm sums a weight
# gradient over hundreds of products in its own blocked order, so a few
# gradients that are 0 up to rounding step differently: measured here, 6 of
# 20480 LGM weights off by up to 1.3e-4 and 2 of 16384 STM weights by up to
# 5.7e-5 after 6 and 4 steps of lr 0.01. A tenth of one step still tells a
# wrong update from rounding.
ADAM_BLAS_FLOAT32_TOLERANCE = dict(rtol=1e-5, atol=1e-3)


def adam_tolerance(dtype, case):
    if dtype == np.float32 and str(case).startswith("blas"):
        return ADAM_BLAS_FLOAT32_TOLERANCE
    return ADAM_TOLERANCES[np.dtype(dtype)]


def assert_histories_agree(history, numpy_history, dtype):
    """Losses agree to rounding; the small atol is for a loss near 0, whose
    rounding is that of the residuals it squares, not a fraction of itself."""
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(history, numpy_history, rtol=200 * eps, atol=20 * eps)


# (n_samples, layer sizes); batch sizes below cut some into ragged mini-batches.
DENSE_CASES = {
    "seed": (100, [10, 5, 2]),
    "one-sample": (1, [3, 4, 2]),
    "deep": (37, [7, 5, 6, 3]),
    "two-groups": (333, [77, 99, 11]),
    "four-groups": (512, [20, 16, 4]),
    "blas": (300, [128, 160, 16]),
    # Row chunks of 128 and 64 samples by layer, and a last chunk of 3.
    "blas-deep": (515, [96, 200, 150, 40]),
    # No hidden layer: the loss reads X, and no delta has a dX.
    "blas-one-layer": (1000, [100, 60]),
}
# (n_samples, n_steps, n_in, n_hidden, n_out)
RECURRENT_CASES = {
    "seed": (100, 20, 10, 5, 2),
    "one-sample": (1, 3, 2, 3, 1),
    "small": (16, 50, 8, 32, 4),
    "odd": (37, 33, 13, 29, 7),
    "blas": (64, 40, 64, 128, 16),
}


def dense_layout(n_rows, sizes, dtype):
    return _lgm._training_layout(n_rows, np.array(sizes, np.intp), np.dtype(dtype).itemsize)


def recurrent_layout(n_rows, n_steps, sizes, dtype, return_sequences=True):
    return _stm._training_layout(n_rows, n_steps, np.array(sizes, np.intp),
                                      np.dtype(dtype).itemsize, return_sequences)


def test_dense_cases_cover_every_layout(dtype):
    layouts = {name: dense_layout(n, sizes, dtype) for name, (n, sizes) in DENSE_CASES.items()}
    assert layouts["seed"][0] == 1 and layouts["deep"][0] == 1
    assert layouts["two-groups"][0] == 2
    assert layouts["four-groups"][0] == 4
    assert all(layouts[name] is None for name in ("blas", "blas-deep", "blas-one-layer"))
    panel = 64 // np.dtype(dtype).itemsize
    for name, layout in layouts.items():
        if layout is not None:
            n_groups, group_width = layout
            assert group_width % panel == 0
            assert n_groups * group_width >= DENSE_CASES[name][0]


def test_recurrent_cases_cover_every_layout(dtype):
    layouts = {name: recurrent_layout(n, steps, sizes, dtype)
               for name, (n, steps, *sizes) in RECURRENT_CASES.items()}
    assert layouts["one-sample"][0] == 1
    assert layouts["odd"][0] == 2
    assert layouts["small"][0] == (2 if dtype == np.float64 else 1)
    assert layouts["blas"] is None


def test_no_group_narrower_than_32_columns(dtype):
    # Each group sums its own weight gradients: a pass over every parameter
    # for its columns, which too few columns do not pay for (_panel.pxd,
    # MIN_GROUP_COLUMNS = 32).
    panel = 64 // np.dtype(dtype).itemsize
    big = [64, 256, 256, 10]
    # Two panels of samples: two groups would have one panel each.
    assert dense_layout(2 * panel, big, dtype) == (1, 2 * panel)
    # Eight panels: four groups of two panels only where that is 32 columns.
    assert dense_layout(8 * panel, [32, 96, 10], dtype)[0] == (4 if 2 * panel >= 32 else 2)
    # A sequence's steps are columns too: two panels of 50 steps, two groups.
    assert recurrent_layout(2 * panel, 50, [8, 32, 4], dtype)[0] == 2


def make_dense_data(rng, n_samples, sizes, dtype):
    X = rng.standard_normal((n_samples, sizes[0]))
    Y = np.tanh(X[:, : sizes[-1]] - 0.5 * X[:, -1:])
    return X.astype(dtype), Y.astype(dtype)


def make_recurrent_data(rng, n_samples, n_steps, n_in, n_out, dtype):
    X = rng.standard_normal((n_samples, n_steps, n_in))
    Y = np.tanh(np.cumsum(X[:, :, :n_out], axis=1) / np.sqrt(np.arange(1, n_steps + 1))[:, None])
    return X.astype(dtype), Y.astype(dtype)


def fit_both(make_model, X, Y, **fit_args):
    """History and parameters of the same fit on each backend."""
    results = []
    for backend in ("cython", "numpy"):
        model = make_model(backend)
        history = model.fit(X, Y, **fit_args)
        results.append((history, model.params))
    return results


def assert_fits_agree(results, dtype, assert_close, optimizer="sgd", case=None):
    (history, params), (numpy_history, numpy_params) = results
    assert history.dtype == np.float64 and np.all(np.isfinite(history))
    assert_histories_agree(history, numpy_history, dtype)
    for name, value in params.items():
        assert value.dtype == dtype
        if optimizer == "adam":
            np.testing.assert_allclose(value, numpy_params[name],
                                       **adam_tolerance(dtype, case), err_msg=name)
        else:
            assert_close(value, numpy_params[name], err_msg=name)


@pytest.mark.parametrize("case", DENSE_CASES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("batch_size", [None, 48], ids=["full-batch", "mini-batch"])
@pytest.mark.parametrize("output", ["tanh", "linear"])
def test_lgm_fit_matches_numpy(rng, dtype, case, optimizer, batch_size, output, assert_close):
    n_samples, sizes = DENSE_CASES[case]
    X, Y = make_dense_data(rng, n_samples, sizes, dtype)
    results = fit_both(
        lambda backend: lgmstm.LGM(sizes, dtype=dtype, output=output, seed=4, backend=backend),
        X, Y, epochs=6, lr=OPTIMIZERS[optimizer], optimizer=optimizer,
        batch_size=batch_size, seed=2)
    assert_fits_agree(results, dtype, assert_close, optimizer, case)


@pytest.mark.parametrize("case", RECURRENT_CASES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("batch_size", [None, 12], ids=["full-batch", "mini-batch"])
@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last-step"])
def test_stm_fit_matches_numpy(rng, dtype, case, optimizer, batch_size, return_sequences,
                               assert_close):
    n_samples, n_steps, n_in, n_hidden, n_out = RECURRENT_CASES[case]
    X, Y = make_recurrent_data(rng, n_samples, n_steps, n_in, n_out, dtype)
    if not return_sequences:
        Y = Y[:, -1]
    results = fit_both(
        lambda backend: lgmstm.STM(n_in, n_hidden, n_out, return_sequences=return_sequences,
                                   dtype=dtype, seed=4, backend=backend),
        X, Y, epochs=4, lr=OPTIMIZERS[optimizer], optimizer=optimizer,
        batch_size=batch_size, seed=2, clip_norm=5.0)
    assert_fits_agree(results, dtype, assert_close, optimizer, case)


@pytest.mark.parametrize("case", ["seed", "odd"])
def test_stateful_stm_fit_matches_numpy(rng, dtype, case, assert_close):
    """Each chunk starts from the last one's final states (h0 in the panels)."""
    n_samples, n_steps, n_in, n_hidden, n_out = RECURRENT_CASES[case]
    X, Y = make_recurrent_data(rng, n_samples, 2 * n_steps, n_in, n_out, dtype)
    models = [lgmstm.STM(n_in, n_hidden, n_out, stateful=True, dtype=dtype, seed=4,
                         backend=backend) for backend in ("cython", "numpy")]
    for half in (slice(0, n_steps), slice(n_steps, None)):
        histories = [model.fit(X[:, half], Y[:, half], epochs=2, lr=0.05, shuffle=False)
                     for model in models]
        assert_histories_agree(histories[0], histories[1], dtype)
    assert_close(models[0].state, models[1].state)
    for name, value in models[0].params.items():
        assert_close(value, models[1].params[name], err_msg=name)


def test_stm_fit_with_unequal_lengths_matches_numpy(rng, dtype, assert_close):
    """Batches with shorter sequences leave the panel layout (full-length
    batches of the same fit stay in it)."""
    n_samples, n_steps, n_in, n_hidden, n_out = RECURRENT_CASES["odd"]
    X, Y = make_recurrent_data(rng, n_samples, n_steps, n_in, n_out, dtype)
    lengths = np.full(n_samples, n_steps)
    lengths[20:] = rng.integers(1, n_steps, n_samples - 20)
    results = fit_both(
        lambda backend: lgmstm.STM(n_in, n_hidden, n_out, dtype=dtype, seed=4, backend=backend),
        X, Y, epochs=3, lr=0.05, batch_size=10, shuffle=False, lengths=lengths)
    assert_fits_agree(results, dtype, assert_close)


@pytest.mark.parametrize("return_sequences", [True, False], ids=["sequences", "last-step"])
def test_stm_fit_with_zero_steps_matches_numpy(rng, dtype, return_sequences, assert_close):
    """No steps: the readout sees h0 (zeros) alone; no panel layout."""
    assert recurrent_layout(5, 0, [3, 4, 2], dtype, return_sequences) is None
    X = rng.standard_normal((5, 0, 3)).astype(dtype)
    Y = np.zeros((5, 0, 2), dtype) if return_sequences else np.full((5, 2), 0.5, dtype)
    results = fit_both(
        lambda backend: lgmstm.STM(3, 4, 2, return_sequences=return_sequences, dtype=dtype,
                                   seed=4, backend=backend),
        X, Y, epochs=3, lr=0.1)
    assert_fits_agree(results, dtype, assert_close)


@pytest.mark.parametrize("case, batch_size", [
    ("seed", None), ("two-groups", None), ("four-groups", None), ("blas", None),
    ("blas-deep", None), ("blas-one-layer", None),
    # Shuffled batches of 200 in two groups, and a last one of 133: the
    # groups' threads come from the layout, not the batch.
    ("two-groups", 200)])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_lgm_fit_same_bits_for_any_thread_count(threads, rng, dtype, case, batch_size,
                                                 optimizer):
    # sgd takes the fused step (the gradients go into the parameters: the one
    # group's task writes them, or the sum over the groups does).
    n_samples, sizes = DENSE_CASES[case]
    X, Y = make_dense_data(rng, n_samples, sizes, dtype)
    if batch_size is not None:
        assert dense_layout(batch_size, sizes, dtype)[0] == 2
    results = []
    for n in threads.counts:
        with threads(n):
            model = lgmstm.LGM(sizes, dtype=dtype, seed=4)
            history = model.fit(X, Y, epochs=3, lr=0.05, optimizer=optimizer,
                                batch_size=batch_size)
            results.append([history, *model.params.values()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("case, batch_size", [
    ("seed", None), ("small", None), ("odd", None),
    # Shuffled batches of 80 sequences in two groups, and a last one of 20.
    ("seed", 80)])
def test_stm_panel_fit_same_bits_for_any_thread_count(threads, rng, dtype, case, batch_size):
    n_samples, n_steps, n_in, n_hidden, n_out = RECURRENT_CASES[case]
    X, Y = make_recurrent_data(rng, n_samples, n_steps, n_in, n_out, dtype)
    if batch_size is not None:
        assert recurrent_layout(batch_size, n_steps, [n_in, n_hidden, n_out], dtype)[0] == 2
    results = []
    for n in threads.counts:
        with threads(n):
            model = lgmstm.STM(n_in, n_hidden, n_out, stateful=True, dtype=dtype, seed=4)
            history = model.fit(X, Y, epochs=3, lr=0.05, batch_size=batch_size)
            results.append([history, model.state, *model.params.values()])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert np.array_equal(a, b)
