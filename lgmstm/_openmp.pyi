"""Type stubs for the compiled module lgmstm._openmp (csrc/lgmstm/_openmp.pyx)."""

def openmp_enabled() -> bool:
    """True when the extension modules were compiled with OpenMP."""

def openmp_version() -> int:
    """The _OPENMP date macro of the build (e.g. 201511), 0 without OpenMP."""

def simd_dispatch() -> bool:
    """True when the tanh loops are built for several ISAs, one chosen at load time."""

def panel_kernel_build() -> str:
    """The panel kernels' build this CPU runs: "avx512", "avx2" or "baseline"."""

def get_max_threads() -> int:
    """OpenMP's thread count for the calling thread."""

def set_num_threads(n: int) -> None:
    """Set OpenMP's thread count for the calling thread; n >= 1."""

def region_seconds(n_threads: int, repeats: int) -> float:
    """Seconds per parallel region of n_threads threads that do nothing."""
