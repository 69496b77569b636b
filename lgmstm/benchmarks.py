"""The benchmark cases of lgmstm, defined once.

``python -m lgmstm bench`` (table, JSON, plot) and the pytest-benchmark suite
in ``bench/`` both run the items of :func:`plan`; no other file holds a size
grid. An item is one implementation of one case, at one size, dtype and
thread count; ``item.prepare()`` builds its data and returns ``run(k)``,
which does k iterations of the case (k kernel calls, or k training steps).

A training step is one full-batch epoch. The compiled and NumPy models are
timed as ``fit(X, Y, epochs=k)`` over k, so the time per step includes
nothing that a long fit does not also pay per step.

``bench/scaling.py`` times the compiled training steps on 1, 2, 4, ... threads
at :data:`SCALING_SIZES`: the grid's medium sizes and the same networks on
batches big enough to give every thread several chunks.
"""
from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

import lgmstm

from . import kernels, reference
from ._threads import get_num_threads, set_num_threads
from ._base import glorot_uniform

__all__ = ["DENSE_SIZES", "RECURRENT_SIZES", "SCALING_SIZES", "CASES", "parse_selection",
           "plan", "measure", "gemm_peak", "memory_check", "summarise", "thread_count",
           "default_threads"]

# Learning rate of every timed fit: small enough that no size diverges.
LR = 0.01


@dataclass(frozen=True)
class DenseSize:
    """A network n_in -> n_hidden -> n_out on a batch of n_samples."""

    name: str
    n_samples: int
    n_in: int
    n_hidden: int
    n_out: int

    def describe(self):
        return f"n={self.n_samples}, {self.n_in}->{self.n_hidden}->{self.n_out}"


@dataclass(frozen=True)
class RecurrentSize:
    """An RNN n_in -> n_hidden -> n_out over n_steps on a batch of n_samples."""

    name: str
    n_steps: int
    n_samples: int
    n_in: int
    n_hidden: int
    n_out: int

    def describe(self):
        return (f"T={self.n_steps}, n={self.n_samples}, "
                f"{self.n_in}->{self.n_hidden}->{self.n_out}")


DENSE_SIZES = (
    DenseSize("seed", 100, 10, 5, 2),
    DenseSize("odd", 333, 77, 99, 11),
    DenseSize("medium", 256, 256, 256, 64),
    DenseSize("large", 512, 1024, 1024, 256),
)
RECURRENT_SIZES = (
    RecurrentSize("seed", 20, 100, 10, 5, 2),
    RecurrentSize("small", 50, 16, 8, 32, 4),
    RecurrentSize("odd", 33, 37, 13, 29, 7),
    RecurrentSize("medium", 100, 64, 64, 128, 16),
    RecurrentSize("large", 50, 128, 256, 512, 64),
)
# --quick runs only these sizes.
QUICK_SIZES = ("seed",)


def _size_named(sizes, name):
    """The size of that name in DENSE_SIZES or RECURRENT_SIZES."""
    return next(size for size in sizes if size.name == name)


# bench/scaling.py's sizes: the medium steps, then the same networks on batches
# big enough to give every thread several chunks
SCALING_SIZES = (
    _size_named(DENSE_SIZES, "medium"),
    _size_named(RECURRENT_SIZES, "medium"),
    replace(_size_named(DENSE_SIZES, "medium"), name="batch", n_samples=4096),
    replace(_size_named(RECURRENT_SIZES, "medium"), name="batch", n_steps=50, n_samples=1024),
)


# -- data -------------------------------------------------------------------------

def _dense_problem(size, dtype):
    """X, Y and the parameters [W0, b0, W1, b1] of a dense size, seeded."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((size.n_samples, size.n_in)).astype(dtype)
    Y = rng.uniform(-0.9, 0.9, (size.n_samples, size.n_out)).astype(dtype)
    params = []
    for n_in, n_out in ((size.n_in, size.n_hidden), (size.n_hidden, size.n_out)):
        params += [glorot_uniform(rng, n_in, n_out, dtype), np.zeros(n_out, dtype)]
    return X, Y, params


def _recurrent_problem(size, dtype):
    """X (n_samples, n_steps, n_in), Y (n_samples, n_steps, n_out) and the RNN's
    [W_in, W_rec, b] of a recurrent size, seeded."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((size.n_samples, size.n_steps, size.n_in)).astype(dtype)
    Y = rng.uniform(-0.9, 0.9, (size.n_samples, size.n_steps, size.n_out)).astype(dtype)
    params = [glorot_uniform(rng, size.n_in, size.n_hidden, dtype),
              glorot_uniform(rng, size.n_hidden, size.n_hidden, dtype),
              np.zeros(size.n_hidden, dtype)]
    return X, Y, params


# -- LGM and dense kernels -------------------------------------------------------------

def _dense_forward(module):
    """One iteration: the forward pass of the size's network, a call per layer."""
    def make(size, dtype):
        X, _, (W0, b0, W1, b1) = _dense_problem(size, dtype)
        A0 = np.empty((size.n_samples, size.n_hidden), dtype)
        A1 = np.empty((size.n_samples, size.n_out), dtype)

        def run(k):
            for _ in range(k):
                module.dense_forward(X, W0, b0, out=A0)
                module.dense_forward(A0, W1, b1, out=A1)
        return run
    return make


def _dense_backward(module):
    """One iteration: the backward pass of the size's network, a call per layer."""
    def make(size, dtype):
        X, Y, (W0, b0, W1, b1) = _dense_problem(size, dtype)
        A0 = reference.dense_forward(X, W0, b0)
        A1 = reference.dense_forward(A0, W1, b1)
        _, dA1 = reference.squared_error(A1, Y)

        def run(k):
            for _ in range(k):
                dA0, _, _ = module.dense_backward(A0, W1, A1, dA1)
                module.dense_backward(X, W0, A0, dA0, need_dX=False)
        return run
    return make


def _model_step(model_name, backend, problem):
    """One iteration: a full-batch training step, timed as fit(epochs=k)."""
    def make(size, dtype):
        X, Y, _ = problem(size, dtype)
        model: lgmstm.LGM | lgmstm.STM
        if model_name == "LGM":
            model = lgmstm.LGM([size.n_in, size.n_hidden, size.n_out], dtype=dtype, seed=0,
                               backend=backend)
        else:
            model = lgmstm.STM(size.n_in, size.n_hidden, size.n_out, dtype=dtype, seed=0,
                               backend=backend)

        def run(k):
            model.fit(X, Y, epochs=k, lr=LR)
        return run
    return make


def _gemm_floor(size, dtype):
    """One iteration: exactly the GEMMs of one LGM training step, with the BLAS
    our kernels call (scipy's): forward X W0, A0 W1; backward dZ1 W1^T,
    A0^T dZ1, X^T dZ0."""
    from scipy.linalg import blas

    gemm = blas.dgemm if dtype == np.float64 else blas.sgemm
    rng = np.random.default_rng(0)

    def matrix(rows, cols):
        return rng.standard_normal((rows, cols)).astype(dtype)

    n, n_in, n_hidden, n_out = size.n_samples, size.n_in, size.n_hidden, size.n_out
    X, W0, W1 = matrix(n, n_in), matrix(n_in, n_hidden), matrix(n_hidden, n_out)
    A0, A1, dZ1, dZ0 = matrix(n, n_hidden), matrix(n, n_out), matrix(n, n_out), matrix(n, n_hidden)
    dA0, dW1, dW0 = matrix(n, n_hidden), matrix(n_hidden, n_out), matrix(n_in, n_hidden)

    def gemm_into(out, a, b, trans_a=False, trans_b=False):
        # Row-major out = op(a) op(b) is column-major out^T = op(b)^T op(a)^T:
        # the .T views are Fortran-ordered, so f2py copies nothing.
        gemm(1.0, b.T, a.T, trans_a=trans_b, trans_b=trans_a, c=out.T, overwrite_c=True)

    def run(k):
        for _ in range(k):
            gemm_into(A0, X, W0)
            gemm_into(A1, A0, W1)
            gemm_into(dA0, dZ1, W1, trans_b=True)
            gemm_into(dW1, A0, dZ1, trans_a=True)
            gemm_into(dW0, X, dZ0, trans_a=True)
    return run


def _torch_step(build, problem):
    """One iteration: a full-batch SGD step of the same network in PyTorch."""
    def make(size, dtype):
        import torch

        X, Y, _ = problem(size, dtype)
        torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
        network = build(torch, size).to(torch_dtype)
        optimizer = torch.optim.SGD(network.parameters(), lr=LR)
        inputs, targets = torch.from_numpy(X), torch.from_numpy(Y)

        def run(k):
            for _ in range(k):
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(network(inputs), targets).backward()
                optimizer.step()
        return run
    return make


def _torch_lgm(torch, size):
    nn = torch.nn
    return nn.Sequential(nn.Linear(size.n_in, size.n_hidden), nn.Tanh(),
                         nn.Linear(size.n_hidden, size.n_out), nn.Tanh())


# -- STM and RNN kernels ----------------------------------------------------------------

def _rnn_forward(module):
    """One iteration: the RNN layer's forward pass over all steps, one call."""
    def make(size, dtype):
        X, _, (W_in, W_rec, b) = _recurrent_problem(size, dtype)

        def run(k):
            for _ in range(k):
                module.rnn_forward(X, None, W_in, W_rec, b)
        return run
    return make


def _rnn_backward(module):
    """One iteration: the RNN layer's backward pass over all steps, one call."""
    def make(size, dtype):
        X, _, (W_in, W_rec, b) = _recurrent_problem(size, dtype)
        H = reference.rnn_forward(X, None, W_in, W_rec, b)
        dH = np.random.default_rng(1).standard_normal(H.shape).astype(dtype)

        def run(k):
            for _ in range(k):
                module.rnn_backward(X, None, W_in, W_rec, H, dH)
        return run
    return make


def _torch_stm(torch, size):
    """nn.RNN (tanh) followed by a tanh output layer at every step."""
    nn = torch.nn

    class Network(nn.Module):  # type: ignore[name-defined]
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(size.n_in, size.n_hidden, nonlinearity="tanh", batch_first=True)
            self.output = nn.Linear(size.n_hidden, size.n_out)

        def forward(self, X):
            return torch.tanh(self.output(self.rnn(X)[0]))

    return Network()


# -- the cases ------------------------------------------------------------------------

@dataclass(frozen=True)
class Implementation:
    name: str
    make: Callable  # (size, dtype) -> run(k)
    only_sizes: tuple = ()  # empty: every size of the case
    needs: str = ""  # an optional module it imports

    def runs_at(self, size):
        return not self.only_sizes or size.name in self.only_sizes

    def missing(self):
        if self.needs and importlib.util.find_spec(self.needs) is None:
            return f"{self.needs} is not installed"
        return None


@dataclass(frozen=True)
class Case:
    name: str
    sizes: tuple
    # Floating-point operations of one iteration's GEMMs (2 per multiply-add).
    flops: Callable
    implementations: tuple
    training: bool  # also timed on one thread, for the 1 -> N scaling


def _dense_step_flops(s):
    # forward X W0, A0 W1; backward dZ1 W1^T, A0^T dZ1, X^T dZ0
    return 2 * s.n_samples * (2 * s.n_in * s.n_hidden + 3 * s.n_hidden * s.n_out)


def _stm_step_flops(s):
    # forward X W_in, H W_rec, H W_out; backward dY W_out^T, H^T dY, X^T dZ,
    # H^T dZ, dZ W_rec^T, per step
    h = s.n_hidden
    return 2 * s.n_steps * s.n_samples * (2 * s.n_in * h + 3 * h * h + 3 * h * s.n_out)


CASES = (
    Case("dense_forward", DENSE_SIZES,
         lambda s: 2 * s.n_samples * (s.n_in * s.n_hidden + s.n_hidden * s.n_out),
         (Implementation("lgmstm", _dense_forward(kernels)),
          Implementation("numpy", _dense_forward(reference))),
         training=False),
    Case("dense_backward", DENSE_SIZES,
         lambda s: 2 * s.n_samples * (s.n_in * s.n_hidden + 2 * s.n_hidden * s.n_out),
         (Implementation("lgmstm", _dense_backward(kernels)),
          Implementation("numpy", _dense_backward(reference))),
         training=False),
    Case("lgm_step", DENSE_SIZES, _dense_step_flops,
         (Implementation("lgmstm", _model_step("LGM", "cython", _dense_problem)),
          Implementation("numpy", _model_step("LGM", "numpy", _dense_problem)),
          Implementation("torch", _torch_step(_torch_lgm, _dense_problem), needs="torch"),
          Implementation("gemm_floor", _gemm_floor, only_sizes=("large",))),
         training=True),
    Case("rnn_forward", RECURRENT_SIZES,
         lambda s: 2 * s.n_steps * s.n_samples * (s.n_in + s.n_hidden) * s.n_hidden,
         (Implementation("lgmstm", _rnn_forward(kernels)),
          Implementation("numpy", _rnn_forward(reference))),
         training=False),
    Case("rnn_backward", RECURRENT_SIZES,
         lambda s: 4 * s.n_steps * s.n_samples * (s.n_in + s.n_hidden) * s.n_hidden,
         (Implementation("lgmstm", _rnn_backward(kernels)),
          Implementation("numpy", _rnn_backward(reference))),
         training=False),
    Case("stm_step", RECURRENT_SIZES, _stm_step_flops,
         (Implementation("lgmstm", _model_step("STM", "cython", _recurrent_problem)),
          Implementation("numpy", _model_step("STM", "numpy", _recurrent_problem)),
          Implementation("torch", _torch_step(_torch_stm, _recurrent_problem), needs="torch")),
         training=True),
)


@dataclass(frozen=True)
class Item:
    """One implementation of one case at one size, dtype and thread count."""

    case: Case
    size: DenseSize | RecurrentSize
    dtype: np.dtype
    implementation: Implementation
    threads: int

    @property
    def group(self):
        """Items of one group are the same work, to be compared side by side."""
        return f"{self.case.name} {self.size.name} {self.dtype.name}"

    @property
    def name(self):
        return f"{self.implementation.name} {self.threads}t"

    @property
    def flops(self):
        return self.case.flops(self.size)

    def prepare(self):
        """Build the data and return run(k), which does k iterations."""
        return self.implementation.make(self.size, self.dtype)


def default_threads():
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def parse_selection(text):
    """"CASE" or "CASE:SIZE" (e.g. "stm_step:odd") as (case, size or None).

    Raises ValueError naming the known cases or sizes when there is no such one.
    """
    case_name, _, size_name = text.partition(":")
    cases = {case.name: case for case in CASES}
    if case_name not in cases:
        raise ValueError(f"no benchmark case {case_name!r}; the cases are "
                         f"{', '.join(cases)}")
    sizes = [size.name for size in cases[case_name].sizes]
    if size_name and size_name not in sizes:
        raise ValueError(f"{case_name} has no size {size_name!r}; its sizes are "
                         f"{', '.join(sizes)}")
    return case_name, size_name or None


def plan(*, quick=False, dtypes=("float64", "float32"), threads=None, only=()):
    """The items to run, and notes on what is skipped and why.

    Every item runs at `threads` (default: all cores); the training steps
    also at one thread, for the scaling. `only`: (case, size or None) pairs
    from parse_selection; when given, just those.

    Returns
    -------
    items : list of Item
    notes : list of str
    """
    threads = default_threads() if threads is None else threads
    thread_counts = sorted({1, threads}, reverse=True)
    items, notes = [], []
    for case in CASES:
        available = []
        for implementation in case.implementations:
            reason = implementation.missing()
            if reason:
                notes.append(f"{case.name} {implementation.name}: skipped, {reason}")
            else:
                available.append(implementation)
        for size in case.sizes:
            if quick and size.name not in QUICK_SIZES:
                continue
            if only and not any(case.name == name and size_name in (None, size.name)
                                for name, size_name in only):
                continue
            for dtype in map(np.dtype, dtypes):
                for n_threads in thread_counts if case.training else [threads]:
                    items += [Item(case, size, dtype, implementation, n_threads)
                              for implementation in available
                              if implementation.runs_at(size)]
    return items, notes


# -- measuring --------------------------------------------------------------------------

@contextmanager
def thread_count(n_threads):
    """Run lgmstm's OpenMP, the BLAS libraries and torch (when loaded) on n_threads.

    lgmstm's kernels still hold BLAS at one thread inside their own
    parallel regions; the limit here is what the NumPy reference, the GEMM
    floor and torch get.
    """
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    saved, saved_torch = get_num_threads(), torch.get_num_threads() if torch else None
    set_num_threads(n_threads)
    if torch:
        torch.set_num_threads(n_threads)
    try:
        with threadpool_limits(n_threads, user_api="blas"):
            yield
    finally:
        if torch:
            torch.set_num_threads(saved_torch)
        set_num_threads(saved)


def _seconds(run, k):
    started = time.perf_counter()
    run(k)
    return time.perf_counter() - started


def _iterations_for(run, target_seconds):
    """Iterations that make one measurement of run last about target_seconds.

    Also the warm-up: the first call's allocations and lazy initialisation,
    and whatever settles over the next few calls, are over when it returns.
    """
    run(1)
    k = 1
    while (elapsed := _seconds(run, k)) < target_seconds / 4 and k < 1_000_000:
        k *= 4
    # Once more at about the target, now that the run is warm.
    k = max(1, round(k * target_seconds / max(elapsed, 1e-9)))
    return max(1, round(k * target_seconds / max(_seconds(run, k), 1e-9)))


@dataclass
class Measurement:
    item: Item
    seconds: float  # median per iteration
    samples: list  # per-iteration seconds of each repeat
    iterations: int  # per repeat

    def to_dict(self):
        item = self.item
        return {
            "case": item.case.name, "size": item.size.name, "dims": item.size.describe(),
            "dtype": item.dtype.name, "implementation": item.implementation.name,
            "threads": item.threads, "seconds": self.seconds, "samples": self.samples,
            "iterations_per_sample": self.iterations, "flops": item.flops,
            "gflops": item.flops / self.seconds / 1e9,
        }


# Long enough for the previous item's idle OpenMP and BLAS workers to sleep.
SETTLE_SECONDS = 0.3


def _rivals(items):
    """Runs of consecutive items that are the same work on the same threads
    (one case, size, dtype and thread count), in order."""
    runs: list[list[Item]] = []
    for item in items:
        if runs and (runs[-1][0].group, runs[-1][0].threads) == (item.group, item.threads):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def measure(items, *, target_seconds=0.15, repeats=5, progress=None):
    """Median time per iteration of every item, in the items' order.

    Rivals (the implementations of one case, size, dtype and thread count)
    take turns: each is warmed up, then repeat by repeat each is timed once,
    so that a slow spell of a shared machine (here the second core is now
    and then busy elsewhere for seconds) falls on all of them alike, not on
    whichever happened to run through it. Every timing starts after a pause,
    so that none pays for the threads another left spinning: OpenMP and
    OpenBLAS workers spin a while (OpenBLAS about 0.1 s) before they sleep,
    and on 2 cores a spinning worker takes half the machine.
    progress(done, total, label), when given, is called before each item's
    warm-up.
    """
    measurements = []
    done = 0
    for rivals in _rivals(items):
        prepared = []
        for item in rivals:
            if progress:
                progress(done, len(items), f"{item.group}: {item.name}")
            done += 1
            time.sleep(SETTLE_SECONDS)
            run = item.prepare()
            with thread_count(item.threads):
                prepared.append((item, run, _iterations_for(run, target_seconds)))
        samples: list[list[float]] = [[] for _ in prepared]
        for _ in range(repeats):
            for (item, run, k), taken in zip(prepared, samples):
                time.sleep(SETTLE_SECONDS)
                with thread_count(item.threads):
                    taken.append(_seconds(run, k) / k)
        measurements += [Measurement(item, statistics.median(taken), taken, k)
                         for (item, _, k), taken in zip(prepared, samples)]
    return measurements


def gemm_peak(dtype, threads, n=2048, repeats=3):
    """GFLOP/s of an n x n x n GEMM with scipy's BLAS on `threads` threads (best of repeats)."""
    from scipy.linalg import blas

    dtype = np.dtype(dtype)
    gemm = blas.dgemm if dtype == np.float64 else blas.sgemm
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((n, n)), dtype)
    c = np.zeros((n, n), dtype, order="F")
    with thread_count(threads):
        gemm(1.0, a, a, c=c, overwrite_c=True)
        best = min(_seconds(lambda _: gemm(1.0, a, a, c=c, overwrite_c=True), 1)
                   for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def summarise(measurements, peaks, threads):
    """One row per group: times at `threads`, speed-ups, GFLOP/s, scaling.

    peaks maps a dtype name to the GEMM peak in GFLOP/s (see gemm_peak).
    Speed-ups are other / lgmstm (above 1: lgmstm is faster); scaling is the
    time on one thread over the time on `threads`; step_over_floor is the
    compiled step's time over that of its GEMMs alone.
    """
    groups: dict[str, dict[tuple[str, int], Measurement]] = {}
    for m in measurements:
        groups.setdefault(m.item.group, {})[(m.item.implementation.name, m.item.threads)] = m
    rows = []
    for timings in groups.values():
        item = next(iter(timings.values())).item
        seconds = {name: m.seconds for (name, n), m in timings.items() if n == threads}
        ours = seconds.get("lgmstm")
        row = {"case": item.case.name, "size": item.size.name, "dims": item.size.describe(),
               "dtype": item.dtype.name, "flops": item.flops, "seconds": seconds,
               "speedup_vs_numpy": None, "speedup_vs_torch": None, "gflops": None,
               "peak_share": None, "scaling": {}, "step_over_floor": None}
        if ours:
            for peer in ("numpy", "torch"):
                if peer in seconds:
                    row[f"speedup_vs_{peer}"] = seconds[peer] / ours
            row["gflops"] = item.flops / ours / 1e9
            row["peak_share"] = row["gflops"] / peaks[item.dtype.name]
            if "gemm_floor" in seconds:
                row["step_over_floor"] = ours / seconds["gemm_floor"]
        if threads > 1:
            row["scaling"] = {name: timings[(name, 1)].seconds / t for name, t in seconds.items()
                              if (name, 1) in timings}
        rows.append(row)
    return rows


# -- memory --------------------------------------------------------------------------------

def _status_bytes(field):
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(field)


def _memory_child(size_name, epochs):
    """Run in a fresh process: print the memory one fit of `epochs` epochs takes."""
    import tracemalloc

    size = _size_named(DENSE_SIZES, size_name)
    X, Y, _ = _dense_problem(size, np.float64)
    model = lgmstm.LGM([size.n_in, size.n_hidden, size.n_out], seed=0)
    try:
        # Reset the peak resident set to the current one (Linux >= 4.0).
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss_before = _status_bytes("VmRSS")
    except OSError:
        rss_before = None
    tracemalloc.start()
    model.fit(X, Y, epochs=epochs, lr=LR)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({
        "epochs": epochs, "traced_peak_bytes": traced_peak,
        "peak_rss_growth_bytes": None if rss_before is None else
        _status_bytes("VmHWM") - rss_before,
    }))


# Allowed extra memory of the longer fit: its loss history (8 bytes an epoch)
# fits well inside these; a buffer kept per epoch would not.
TRACED_TOLERANCE = 64 * 1024
RSS_TOLERANCE = 2 * 1024 * 1024


def memory_check(size_name="medium", epochs=(20, 500)):
    """Peak memory of an LGM fit of a few and of many epochs, each in a fresh process.

    Returns a dict with one entry per fit (tracemalloc's peak of the NumPy
    allocations, and the peak resident set's growth over the fit, which also
    sees the compiled code's malloc; None where the system does not tell)
    and "ok": the longer fit took no more than the shorter one, within
    TRACED_TOLERANCE and RSS_TOLERANCE.
    """
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(lgmstm.__file__)))
    runs = []
    for n_epochs in epochs:
        code = (f"from lgmstm.benchmarks import _memory_child; "
                f"_memory_child({size_name!r}, {int(n_epochs)})")
        # cwd is the folder that holds this lgmstm, so the child imports the same one.
        output = subprocess.run([sys.executable, "-c", code], cwd=package_parent,
                                capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
    short, long = runs[0], runs[-1]
    ok = long["traced_peak_bytes"] <= short["traced_peak_bytes"] + TRACED_TOLERANCE
    if short["peak_rss_growth_bytes"] is not None:
        ok = ok and (long["peak_rss_growth_bytes"]
                     <= short["peak_rss_growth_bytes"] + RSS_TOLERANCE)
    return {"size": size_name, "fits": runs, "ok": ok}
