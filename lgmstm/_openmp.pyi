"""Type stubs for the compiled module lgmstm._openmp (csrc/_openmp.pyx)."""

def openmp_enabled() -> bool:
    """True when the extension modules were compiled with OpenMP."""

def openmp_version() -> int:
    """The _OPENMP date macro of the build (e.g. 201511), 0 without OpenMP."""

def simd_dispatch() -> bool:
    """True when tanh is built for baseline and AVX2+FMA, chosen at load time."""

def get_max_threads() -> int:
    """OpenMP's thread count for the calling thread."""

def set_num_threads(n: int) -> None:
    """Set OpenMP's thread count for the calling thread; n >= 1."""
