# cython: language_level=3
"""What the build knows about OpenMP, and the package's thread count."""
from _omp cimport (LGMSTM_OPENMP_ENABLED, lgmstm_omp_max_threads,
                   lgmstm_omp_set_threads, lgmstm_omp_version)
from _tanh cimport LGMSTM_HAS_DISPATCH


def openmp_enabled():
    """True when the extension modules were compiled with OpenMP."""
    return bool(LGMSTM_OPENMP_ENABLED)


def openmp_version():
    """The _OPENMP date macro of the build (e.g. 201511), 0 without OpenMP."""
    return lgmstm_omp_version()


def simd_dispatch():
    """True when tanh is built for baseline and AVX2+FMA, chosen at load time."""
    return bool(LGMSTM_HAS_DISPATCH)


def get_max_threads():
    return lgmstm_omp_max_threads()


def set_num_threads(int n):
    lgmstm_omp_set_threads(n)
