"""The package's thread count, and keeping BLAS single-threaded inside it.

lgmstm parallelises with OpenMP over fixed chunks of work; each chunk calls
BLAS. A multithreaded BLAS inside those threads would oversubscribe the
cores, so while a kernel runs, the BLAS libraries are held at one thread.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

from . import _openmp


def get_num_threads() -> int:
    """Threads the kernels use: OpenMP's count for the calling thread.

    It follows OMP_NUM_THREADS (else the number of cores),
    :func:`set_num_threads` and ``threadpoolctl.threadpool_limits(n,
    user_api="openmp")``. 1 when the build has no OpenMP.
    """
    return max(1, int(_openmp.get_max_threads()))


def set_num_threads(n_threads: int) -> None:
    """Set the threads the kernels use (OpenMP's count, for the calling thread).

    Parameters
    ----------
    n_threads : int >= 1
    """
    from ._validation import check_int

    _openmp.set_num_threads(check_int("n_threads", n_threads, 1))


# OpenBLAS threads a GEMM only above about 64**3 multiply-adds; smaller
# calls never need the guard, and skipping it keeps small kernels cheap.
BLAS_THREADING_WORK = 64**3


def _set_blas_threads(library, n_threads):
    """library.set_num_threads(n_threads), from whichever Python thread.

    threadpoolctl >= 3.8 lets a single "controlling" Python thread change
    OpenBLAS's process-wide count, keeps the first thread that sets it in
    control, and silently ignores every other thread. The guard serialises
    its own changes, so it hands control back at once; otherwise the first
    thread to run a kernel would keep it and the guard would do nothing in
    any other thread.
    """
    library.set_num_threads(n_threads)
    release = getattr(type(library), "clear_controlling_thread", None)
    if release is not None:
        release()


class _BlasGuard:
    """Holds every BLAS library at one thread while any kernel call runs.

    Reference-counted, so concurrent calls from several Python threads
    restore the user's setting only when the last one leaves.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = []
        self._libraries = None

    def _blas_libraries(self):
        if self._libraries is None:
            from threadpoolctl import ThreadpoolController

            self._libraries = ThreadpoolController().select(user_api="blas").lib_controllers
        return self._libraries

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                self._saved = []
                for library in self._blas_libraries():
                    threads = library.get_num_threads()
                    if threads is not None and threads != 1:
                        _set_blas_threads(library, 1)
                        self._saved.append((library, threads))
            self._depth += 1

    def __exit__(self, *exc):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for library, threads in self._saved:
                    _set_blas_threads(library, threads)
                self._saved = []


_blas_guard = _BlasGuard()


@contextmanager
def _no_guard():
    yield


def single_threaded_blas(work: float):
    """Context for a kernel call whose largest GEMM does about `work` multiply-adds."""
    return _blas_guard if work >= BLAS_THREADING_WORK else _no_guard()
