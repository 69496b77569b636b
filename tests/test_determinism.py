"""Results are the same bits for any number of OpenMP threads.

The sizes are large enough that the kernels really run in parallel: they
fall back to one thread below ~65k flops or with a single 64-row task.
"""
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

import lgmstm
from lgmstm import kernels

N_SAMPLES, N_IN, N_OUT = 517, 130, 70


def under_each_setting(threads, compute):
    """compute() under each of threads.counts threads, and under threadpoolctl's limit of 1."""
    results = {}
    for n in threads.counts:
        with threads(n):
            assert lgmstm.get_num_threads() == n
            results[f"{n} threads"] = compute()
    with threads(2), threadpool_limits(1, user_api="openmp"):
        assert lgmstm.get_num_threads() == 1
        results["threadpool_limits(1)"] = compute()
    return results


def assert_all_identical(results):
    (first_name, first), *others = results.items()
    for name, arrays in others:
        assert len(arrays) == len(first)
        for index, (a, b) in enumerate(zip(arrays, first)):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b), f"result {index}: {name} differs from {first_name}"


@pytest.fixture
def layer(rng, dtype):
    X = rng.standard_normal((N_SAMPLES, N_IN)).astype(dtype)
    W = (rng.standard_normal((N_IN, N_OUT)) / np.sqrt(N_IN)).astype(dtype)
    b = rng.standard_normal(N_OUT).astype(dtype)
    dA = rng.standard_normal((N_SAMPLES, N_OUT)).astype(dtype)
    return X, W, b, dA


@pytest.mark.parametrize("activation", ["tanh", "linear"])
def test_dense_forward(threads, layer, activation):
    X, W, b, _ = layer
    assert_all_identical(under_each_setting(
        threads, lambda: [kernels.dense_forward(X, W, b, activation=activation)]))


@pytest.mark.parametrize("activation", ["tanh", "linear"])
def test_dense_backward(threads, layer, activation):
    X, W, b, dA = layer
    A = kernels.dense_forward(X, W, b, activation=activation)
    assert_all_identical(under_each_setting(
        threads, lambda: list(kernels.dense_backward(X, W, A, dA, activation=activation))))


@pytest.mark.parametrize("shape", [(300, 700, 40), (260, 1100, 130)], ids=str)
def test_dense_backward_in_weight_stripes(threads, rng, dtype, shape):
    """Wide inputs: the weight gradient in several stripes of whole rows
    (two and three of 512 rows, the last short), threads taking them."""
    n_samples, n_in, n_out = shape
    X = rng.standard_normal((n_samples, n_in)).astype(dtype)
    W = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    dA = rng.standard_normal((n_samples, n_out)).astype(dtype)
    A = kernels.dense_forward(X, W, b)
    assert_all_identical(under_each_setting(
        threads, lambda: list(kernels.dense_backward(X, W, A, dA))))


def test_deep_lgm_gradients(threads, rng, dtype):
    """Four tanh layers, each hidden layer's dZ made in the layer above's
    dX chunks."""
    X = rng.standard_normal((300, 200)).astype(dtype)
    Y = np.tanh(X[:, :5]).astype(dtype)
    model = lgmstm.LGM([200, 300, 150, 90, 5], dtype=dtype, seed=3)
    assert_all_identical(under_each_setting(
        threads, lambda: list(model.gradients(X, Y).values())))


@pytest.fixture
def regression(rng, dtype):
    X = rng.standard_normal((N_SAMPLES, N_IN)).astype(dtype)
    Y = np.tanh(X[:, :3] - X[:, 3:6]).astype(dtype)
    return X, Y


def make_model(dtype):
    return lgmstm.LGM([N_IN, N_OUT, 40, 3], dtype=dtype, seed=5)


def test_lgm_predict_loss_gradients(threads, regression, dtype):
    X, Y = regression
    model = make_model(dtype)

    def compute():
        loss = np.array([model.loss(X, Y)])
        return [model.predict(X), loss, *model.gradients(X, Y).values()]

    assert_all_identical(under_each_setting(threads, compute))


def test_lgm_fit(threads, regression, dtype):
    X, Y = regression

    def compute():
        model = make_model(dtype)
        history = model.fit(X, Y, epochs=3, lr=1e-3, batch_size=200, optimizer="adam", seed=11)
        assert len(history) == 3
        return [history, *model.params.values()]

    assert_all_identical(under_each_setting(threads, compute))


@pytest.mark.parametrize("shape", [(517, 130, 70), (517, 60, 60), (2000, 40, 8)], ids=str)
def test_blas_thread_count_does_not_matter(rng, dtype, shape):
    """OpenBLAS rounds differently with several threads; the kernels hold it
    at one thread where it would use more, so the user's setting is moot."""
    n_samples, n_in, n_out = shape
    X = rng.standard_normal((n_samples, n_in)).astype(dtype)
    W = rng.standard_normal((n_in, n_out)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype)
    dA = rng.standard_normal((n_samples, n_out)).astype(dtype)
    results = {}
    for n in (1, 2, 4):
        with threadpool_limits(n, user_api="blas"):
            A = kernels.dense_forward(X, W, b)
            results[f"{n} BLAS threads"] = [A, *kernels.dense_backward(X, W, A, dA)]
    assert_all_identical(results)


def test_concurrent_python_threads(rng, dtype):
    """Kernels and fits running at once in several Python threads (the GIL is
    released) give the results they give alone."""
    from concurrent.futures import ThreadPoolExecutor

    def work(seed):
        local = np.random.default_rng(seed)
        X = local.standard_normal((N_SAMPLES, N_IN)).astype(dtype)
        W = (local.standard_normal((N_IN, N_OUT)) / np.sqrt(N_IN)).astype(dtype)
        b = local.standard_normal(N_OUT).astype(dtype)
        A = kernels.dense_forward(X, W, b)
        model = lgmstm.LGM([N_IN, 20, 3], dtype=dtype, seed=seed)
        history = model.fit(X, np.tanh(X[:, :3]), epochs=2, lr=1e-3, batch_size=128, seed=seed)
        return [A, *kernels.dense_backward(X, W, A, A), history, *model.params.values()]

    seeds = list(range(6))
    alone = [work(seed) for seed in seeds]
    with ThreadPoolExecutor(max_workers=3) as pool:
        together = list(pool.map(work, seeds))
    for seed in seeds:
        assert_all_identical({"alone": alone[seed], "concurrently": together[seed]})
