"""The package's thread count, and keeping BLAS single-threaded inside it.

lgmstm parallelises with OpenMP over fixed chunks of work; each chunk calls
BLAS. A multithreaded BLAS inside those threads would oversubscribe the
cores, so while a kernel runs, the BLAS libraries are held at one thread.
"""
from __future__ import annotations

import ctypes
import os
import threading
import warnings
from contextlib import nullcontext

from . import _openmp, _train


# libgomp's thread pool does not survive fork(): a child that enters an
# OpenMP region its parent had used can hang. In a forked child the kernels
# therefore run on one thread, on a code path that never enters OpenMP.
_forked_child = False


def _mark_forked_child():
    global _forked_child
    _forked_child = True
    _train._mark_forked_child()  # the compiled fast paths' own flag


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_mark_forked_child)


class OversubscriptionWarning(RuntimeWarning):
    """More kernel threads were asked for than this process has cores.

    The threads would take turns on the cores, each waiting at every
    barrier for one that is not running: the kernels run slower than on
    one thread per core. A RuntimeWarning.
    """


def available_cores() -> int:
    """The cores this process may run on: the size of its CPU affinity mask
    where the system has one (``os.sched_getaffinity``: Linux), else
    ``os.cpu_count()``. A CPU quota (a container's ``--cpus``) is not seen."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _warn_if_oversubscribed(n_threads, asked_by, fix, stacklevel):
    cores = available_cores()
    if n_threads > cores:
        warnings.warn(
            f"{asked_by}: {n_threads} threads asked for, but this process has {cores} "
            f"core{'s' if cores != 1 else ''} available; more threads than cores take turns "
            f"on them and make the kernels slower. {fix.format(cores=cores)}",
            OversubscriptionWarning, stacklevel=stacklevel + 1)


def get_num_threads() -> int:
    """Threads the kernels use: OpenMP's count for the calling thread.

    It follows OMP_NUM_THREADS (else the number of cores),
    :func:`set_num_threads` and ``threadpoolctl.threadpool_limits(n,
    user_api="openmp")``. 1 when the build has no OpenMP, and in a process
    made by ``fork()`` (e.g. a multiprocessing pool with the "fork" start
    method), where OpenMP cannot be used safely: use the "spawn" or
    "forkserver" start method for multithreaded workers.

    Returns
    -------
    n_threads : int >= 1
    """
    if _forked_child:
        return 1
    return max(1, int(_openmp.get_max_threads()))


def set_num_threads(n_threads: int) -> None:
    """Set the threads the kernels use (OpenMP's count, for the calling thread).

    Results do not depend on it: only who computes each fixed-size chunk.
    More threads than the cores available to the process
    (:func:`available_cores`) are set as asked, with an
    :class:`OversubscriptionWarning`: they would share the cores and make
    the kernels slower. ``OMP_NUM_THREADS`` above the cores gets the same
    warning once, when lgmstm is imported; ``threadpoolctl.threadpool_limits(n,
    user_api="openmp")`` sets OpenMP's count directly and is not checked.

    Parameters
    ----------
    n_threads : int >= 1
        OpenMP threads for the kernels called from this Python thread; at
        most the cores available, for speed.

    Raises
    ------
    TypeError
        n_threads is not an integer.
    ValueError
        n_threads < 1.

    Warns
    -----
    OversubscriptionWarning
        n_threads is more than the cores available to this process.
    """
    from ._validation import MAX_DIM, check_int

    n_threads = check_int("n_threads", n_threads, 1, maximum=MAX_DIM)
    _warn_if_oversubscribed(n_threads, f"set_num_threads({n_threads})",
                            "Use set_num_threads({cores}) or fewer.", stacklevel=2)
    _openmp.set_num_threads(n_threads)


if "OMP_NUM_THREADS" in os.environ and not _forked_child:
    # OpenMP read it when the kernels were loaded; the count it gave is checked once.
    _warn_if_oversubscribed(get_num_threads(), f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}",
                            "Set OMP_NUM_THREADS to {cores} or fewer.", stacklevel=1)


# OpenBLAS threads a GEMM only above about 64**3 multiply-adds; smaller
# calls never need the guard, and skipping it keeps small kernels cheap.
BLAS_THREADING_WORK = _train.BLAS_THREADING_WORK


def _thread_switch(controller):
    """(get, set) callables for one BLAS library's thread count.

    For a pthreads OpenBLAS these are its own C entry points, called through
    ctypes (a fraction of a microsecond); otherwise threadpoolctl's methods.
    """
    if controller.internal_api == "openblas" and controller.threading_layer != "openmp":
        library = ctypes.CDLL(controller.filepath)
        for prefix in ("scipy_", ""):
            for suffix in ("", "64_", "_64"):
                get = getattr(library, f"{prefix}openblas_get_num_threads{suffix}", None)
                set_ = getattr(library, f"{prefix}openblas_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                    return get, set_
    return controller.get_num_threads, controller.set_num_threads


class _BlasGuard:
    """Holds the BLAS that the kernels call at one thread while any kernel runs.

    The kernels call scipy's BLAS (scipy.linalg.cython_blas); where scipy
    ships its own library only that one is held, else every BLAS loaded.
    Reference-counted, so concurrent calls from several Python threads
    restore the user's setting only when the last one leaves.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = []
        self._switches = None

    def _blas_switches(self):
        if self._switches is None:
            from threadpoolctl import ThreadpoolController

            controllers = ThreadpoolController().select(user_api="blas").lib_controllers
            scipys = [c for c in controllers
                      if any(part.startswith("scipy") for part in
                             os.path.normpath(os.path.dirname(c.filepath)).split(os.sep)[-2:])]
            self._switches = [_thread_switch(c) for c in (scipys or controllers)]
        return self._switches

    def __enter__(self):
        with self._lock:
            if self._depth == 0:
                self._saved = []
                for get, set_ in self._blas_switches():
                    threads = get()
                    if threads is not None and threads != 1:
                        set_(1)
                        self._saved.append((set_, threads))
            self._depth += 1

    def __exit__(self, *exc):
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for set_, threads in self._saved:
                    set_(threads)
                self._saved = []


_blas_guard = _BlasGuard()


_no_guard = nullcontext()


def single_threaded_blas(work: float):
    """Context for a kernel call whose largest GEMM does about `work` multiply-adds."""
    return _blas_guard if work >= BLAS_THREADING_WORK else _no_guard
