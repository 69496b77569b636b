# cython: language_level=3
"""What the build knows (OpenMP, the SIMD builds of the tanh and panel
kernels), and the package's OpenMP thread count."""
from cython.parallel cimport prange

from lgmstm._omp cimport (LGMSTM_OPENMP_ENABLED, lgmstm_omp_max_threads,
                   lgmstm_omp_set_threads, lgmstm_omp_version, lgmstm_omp_wtime)
from lgmstm._panel cimport lgmstm_panel_level
from lgmstm._tanh cimport LGMSTM_HAS_DISPATCH


def openmp_enabled():
    """True when the extension modules were compiled with OpenMP."""
    return bool(LGMSTM_OPENMP_ENABLED)


def openmp_version():
    """The _OPENMP date macro of the build (e.g. 201511), 0 without OpenMP."""
    return lgmstm_omp_version()


def simd_dispatch():
    """True when the tanh loops are built for several ISAs (baseline,
    x86-64-v3, and x86-64-v4 with GCC 11+), one chosen at load time."""
    return bool(LGMSTM_HAS_DISPATCH)


def panel_kernel_build():
    """The build of the panel kernels (_panel.h) this CPU runs: "avx512",
    "avx2" or "baseline" (also what builds without run-time dispatch run)."""
    return ("baseline", "avx2", "avx512")[lgmstm_panel_level()]


def get_max_threads():
    return lgmstm_omp_max_threads()


def set_num_threads(int n):
    lgmstm_omp_set_threads(n)


def region_seconds(int n_threads, int repeats):
    """Seconds per parallel region of n_threads threads that do nothing,
    over `repeats` regions one after another: what starting and joining the
    threads costs, which every parallel region of a kernel pays (under
    OMP_WAIT_POLICY=passive, waking the threads that slept since the last
    one). ``bench --passive`` reports it for each policy."""
    if n_threads < 1 or repeats < 1:
        raise ValueError(f"n_threads and repeats must be >= 1, got {n_threads} and {repeats}")
    cdef int region, thread
    cdef int visits = 0
    cdef double started, elapsed
    with nogil:
        started = lgmstm_omp_wtime()
        for region in range(repeats):
            for thread in prange(n_threads, num_threads=n_threads, schedule='static', chunksize=1):
                visits += 1
        elapsed = lgmstm_omp_wtime() - started
    if visits != n_threads * repeats:
        raise RuntimeError(f"region_seconds: {visits} visits of {n_threads * repeats}")
    return elapsed / repeats
