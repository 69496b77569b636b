# cython: language_level=3
"""What the build knows (OpenMP, the SIMD builds of the tanh and panel
kernels), and the package's OpenMP thread count."""
from lgmstm._omp cimport (LGMSTM_OPENMP_ENABLED, lgmstm_omp_max_threads,
                   lgmstm_omp_set_threads, lgmstm_omp_version)
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
