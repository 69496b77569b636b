"""The build has OpenMP, and the package's thread count behaves."""
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import lgmstm
from lgmstm import _openmp, kernels


def test_build_has_openmp():
    assert _openmp.openmp_enabled() is True
    assert _openmp.openmp_version() >= 200805  # OpenMP 3.0 or later


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_region_seconds_times_regions_of_that_many_threads(n_threads):
    """bench --passive's probe: every region visits each of its n_threads
    iterations once (it raises otherwise) and takes some time; the package's
    thread count is left alone."""
    before = lgmstm.get_num_threads()
    seconds = _openmp.region_seconds(n_threads, 20)
    assert isinstance(seconds, float) and seconds > 0
    assert lgmstm.get_num_threads() == before


@pytest.mark.parametrize("n_threads, repeats", [(0, 5), (2, 0), (-1, -1)])
def test_region_seconds_refuses_counts_below_one(n_threads, repeats):
    with pytest.raises(ValueError, match="n_threads and repeats must be >= 1"):
        _openmp.region_seconds(n_threads, repeats)


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_set_then_get(threads, n):
    with threads(n):
        assert lgmstm.get_num_threads() == n


def test_threads_fixture_restores_the_count(threads):
    before = lgmstm.get_num_threads()
    with threads(before + 2):
        pass
    assert lgmstm.get_num_threads() == before


def test_follows_threadpoolctl(threads):
    with threads(3):
        with threadpool_limits(1, user_api="openmp"):
            assert lgmstm.get_num_threads() == 1
        assert lgmstm.get_num_threads() == 3


def test_follows_omp_num_threads(run_python, tmp_path):
    result = run_python(["-c", "import lgmstm; print(lgmstm.get_num_threads())"],
                        cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="5"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"


@pytest.mark.parametrize("bad, error", [
    (0, ValueError),
    (-1, ValueError),
    (1.0, TypeError),
    (2.5, TypeError),
    ("2", TypeError),
    (True, TypeError),
    (None, TypeError),
])
def test_set_num_threads_refuses(bad, error):
    before = lgmstm.get_num_threads()
    with pytest.raises(error, match="n_threads"):
        lgmstm.set_num_threads(bad)
    assert lgmstm.get_num_threads() == before


def blas_threads():
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_blas_thread_count_is_restored_after_a_kernel(rng):
    """Kernels hold BLAS at one thread while they run, then give it back."""
    X = rng.standard_normal((300, 200))
    W = rng.standard_normal((200, 100))
    with threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        kernels.dense_backward(X, W, *[kernels.dense_forward(X, W, np.zeros(100))] * 2)
        assert blas_threads() == before


def test_kernels_leave_blas_control_to_other_threads(rng):
    """After a kernel has run here, another Python thread can still limit BLAS
    (threadpoolctl >= 3.8 lets only one thread at a time control OpenBLAS)."""
    X = rng.standard_normal((300, 200))
    kernels.dense_forward(X, rng.standard_normal((200, 100)), np.zeros(100))
    seen = []

    def limit_in_another_thread():
        with threadpool_limits(1, user_api="blas"):
            seen.extend(blas_threads())

    worker = threading.Thread(target=limit_in_another_thread)
    worker.start()
    worker.join()
    assert seen and set(seen) == {1}


def test_blas_is_single_threaded_while_openmp_runs(rng, threads):
    """No oversubscription: while a fit runs on 2 OpenMP threads, the BLAS its
    chunks call (scipy's) is held at one thread, so 2 OpenMP threads never
    start 2 x n BLAS threads; afterwards the user's setting is back."""
    X = rng.standard_normal((512, 256))
    Y = rng.uniform(-0.5, 0.5, (512, 64))
    model = lgmstm.LGM([256, 256, 64], seed=0)

    def kernels_blas():
        # scipy's own OpenBLAS: in scipy.libs (Linux wheels) or scipy/.dylibs
        def scipys(path):
            return "scipy.libs" in path.parts or "scipy" in path.parts

        return [lib["num_threads"] for lib in threadpool_info()
                if lib["user_api"] == "blas" and scipys(Path(lib["filepath"]))]

    if not kernels_blas():
        pytest.skip("scipy's BLAS is not a separate library threadpoolctl can see here")
    # This thread samples BLAS's count while the fit runs; the fit goes on
    # until a sample has seen it held at 1 (however long the sampler waits for
    # a core on a busy machine) or MAX_EPOCHS have passed without one (with a
    # callback, each epoch is one call of the compiled code, BLAS held during it).
    MAX_EPOCHS = 100
    seen = set()
    with threads(2), threadpool_limits(2, user_api="blas"):
        fit = threading.Thread(target=model.fit, args=(X, Y), kwargs=dict(
            epochs=MAX_EPOCHS, lr=1e-3, callback=lambda epoch, loss: 1 not in seen))
        fit.start()
        while fit.is_alive():
            seen.update(kernels_blas())
            time.sleep(0.001)  # the GIL to the fit between its epochs
        fit.join()
        assert kernels_blas() == [2]
    assert 1 in seen, f"BLAS never seen at one thread during {MAX_EPOCHS} epochs: {seen}"
    assert seen <= {1, 2}
