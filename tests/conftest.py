"""Shared fixtures: a seeded generator, the per-dtype tolerances, a
context manager that runs code under a given OpenMP thread count, a
runner for Python subprocesses that import the lgmstm under test, and a
check that a same-bits test's work really starts a second thread."""
import os
import subprocess
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

import lgmstm

def _strict_array_equal_before_numpy_1_24():
    """numpy.testing.assert_array_equal's strict=True (also the same shape
    and dtype, no broadcasting) came with numpy 1.24; the suite asserts bits
    with it and also runs against the oldest numpy lgmstm supports (1.23.5),
    so there it is added with the same meaning."""
    import inspect

    original = np.testing.assert_array_equal
    if "strict" in inspect.signature(original).parameters:
        return

    def assert_array_equal(x, y, err_msg="", verbose=True, *, strict=False):
        if strict:
            actual, desired = np.asanyarray(x), np.asanyarray(y)
            if actual.shape != desired.shape or actual.dtype != desired.dtype:
                raise AssertionError(
                    f"Arrays are not equal (strict): shapes {actual.shape}, {desired.shape}, "
                    f"dtypes {actual.dtype}, {desired.dtype}\n{err_msg}")
        original(x, y, err_msg=err_msg, verbose=verbose)

    np.testing.assert_array_equal = assert_array_equal


_strict_array_equal_before_numpy_1_24()

# Compiled vs NumPy results differ only in summation order. atol is relative
# to the largest magnitude of the expected array (see `assert_close`), so one
# table serves outputs of size 1 and weight gradients summed over 500 rows.
# Measured worst cases over the kernel tests: float32 1.5e-6, float64 1.6e-15.
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=1e-5, atol=1e-5),
    np.dtype(np.float64): dict(rtol=1e-12, atol=1e-13),
}

@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(20240607)


@pytest.fixture
def assert_close():
    """assert_close(actual, expected): equal shape and dtype, values within
    the tolerance of expected's dtype (atol scaled by max |expected|)."""

    def check(actual, expected, err_msg=""):
        assert actual.shape == expected.shape, err_msg
        assert actual.dtype == expected.dtype, err_msg
        tol = TOLERANCES[np.dtype(expected.dtype)]
        scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
        np.testing.assert_allclose(actual, expected, rtol=tol["rtol"],
                                   atol=tol["atol"] * scale, err_msg=err_msg)

    return check


@contextmanager
def _threads(n):
    saved = lgmstm.get_num_threads()
    with warnings.catch_warnings():
        # More threads than cores on purpose (the same-bits tests): not a mistake here.
        warnings.simplefilter("ignore", lgmstm._threads.OversubscriptionWarning)
        lgmstm.set_num_threads(n)
    try:
        yield
    finally:
        lgmstm.set_num_threads(saved)


# The same-bits tests' thread counts (issue 13): 5 and 16 are more than most
# machines' cores, on purpose (the work is cut by shapes, never by threads).
_threads.counts = (1, 2, 3, 5, 16)


@pytest.fixture
def threads():
    """`with threads(n):` runs the block with n kernel threads, then restores;
    `threads.counts`: the thread counts a same-bits test runs under."""
    return _threads


# Subprocesses run away from any source tree and with the lgmstm under test
# first on their path, so that they import the very package this run did.
PACKAGE_PARENT = str(Path(lgmstm.__file__).resolve().parent.parent)


@pytest.fixture(scope="session")
def run_python():
    """run_python(args, cwd, extra_path=(), env=None, timeout=300) ->
    CompletedProcess of ``python *args`` (text output captured)."""

    def run(args, cwd, extra_path=(), env=None, timeout=300):
        environ = dict(os.environ if env is None else env)
        path = [*map(str, extra_path), PACKAGE_PARENT, environ.get("PYTHONPATH", "")]
        environ["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
        return subprocess.run([sys.executable, *args], cwd=cwd, env=environ,
                              capture_output=True, text=True, timeout=timeout)

    return run


# The OpenMP runtime starts its worker threads at the first parallel region
# that uses them and keeps them: in a fresh process, a count of the
# process's threads that grows when a call runs under 2 kernel threads
# (after the same call under 1, which starts whatever else it starts) shows
# that some region of that call ran on a second thread. The same-bits tests
# use it to show their problems are past MIN_PARALLEL_WORK
# (csrc/lgmstm/_parallel.pxd), where threads_for would otherwise run them
# on one thread whatever the setting.
_THREAD_COUNT_CHILD = """
import importlib, os, sys
import lgmstm
def n_threads():
    return len(os.listdir("/proc/self/task"))
module = importlib.import_module(sys.argv[1])
lgmstm.set_num_threads(1)
eval(sys.argv[2], vars(module))
alone = n_threads()
lgmstm.set_num_threads(2)
eval(sys.argv[2], vars(module))
print(alone, n_threads())
"""


@pytest.fixture(scope="session")
def starts_a_second_thread(run_python):
    """starts_a_second_thread(module, call) -> bool: whether the expression
    call (a call of the test module module's own functions) starts an
    OpenMP worker thread under 2 kernel threads, in a fresh process (see
    above). Skips where the process's threads cannot be counted (Linux's
    /proc/self/task) or the build has no OpenMP."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("counts threads in /proc/self/task (Linux)")
    if not lgmstm._openmp.openmp_enabled():
        pytest.skip("the build has no OpenMP")

    def check(module, call):
        done = run_python(["-c", _THREAD_COUNT_CHILD, module, call], cwd=PACKAGE_PARENT,
                          extra_path=[Path(__file__).parent])
        assert done.returncode == 0, done.stderr
        alone, shared = map(int, done.stdout.split()[-2:])
        return shared > alone

    return check
