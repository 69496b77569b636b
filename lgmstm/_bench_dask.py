"""Issue 16's targets for lgmstm.dask (``lgmstm bench --only dask``).

- fit_many: 200 seed-size STMs (10 -> 5 -> 2; 100 sequences of 20 steps;
  100 full-batch SGD epochs each) on 2 worker processes of 1 thread, at
  least 1.7x as fast as the same fits one after another in this process on
  1 thread; the scheduler's overhead per model under 5% of a model's fit
  (and, reported, not judged, the same overhead on one worker process,
  which leaves a core to the client and the scheduler on 2 cores).
- predict: an LGM over a float64 file on disk (2 GB by default), chunks of
  64 MB, at least 80% of the in-memory single-process rate per core, with
  each worker's peak memory growing by less than 4 chunks.
- partial_fit_dask over a file 4x the memory given to each worker
  (``memory_limit``): completes, equals the same partial_fit loop here, no
  worker logs a memory warning (spilling, pausing, high unmanaged memory),
  and no worker is restarted (a nanny restarts a worker past its memory
  budget: :func:`memory_trouble`).

Each target prints one line ending "met" or "MISSED"; :func:`run` returns
them as dicts. Times are medians of ``repeats`` runs. Needs lgmstm[dask].
"""
from __future__ import annotations

import os
import pickle
import resource
import statistics
import tempfile
import time
from typing import Any, Callable

import numpy as np

import lgmstm

MB = 2**20
GB = 2**30
FIT_MANY_SPEEDUP = 1.7
OVERHEAD_SHARE = 0.05
PREDICT_SHARE = 0.80
PREDICT_PEAK_CHUNKS = 4
PARTIAL_FIT_DATA_PER_MEMORY = 4
# Lines of a worker's or a nanny's log that mean the worker ran short of
# memory (the nanny's: "Worker tcp://... (pid=...) exceeded 95% memory budget.
# Restarting...").
MEMORY_WARNINGS = ("spill", "Unmanaged memory use is high", "Pausing worker",
                   "memory usage", "memory budget")


class RowFile:
    """A float array stored raw in a file, that dask.array.from_array reads
    block by block: each block maps only its own rows of the file, and the
    mapping goes when the block does. It pickles as its path: an open
    np.memmap handed to from_array would be pickled whole into the graph."""

    def __init__(self, path: str, shape: tuple[int, ...], dtype: Any = np.float64) -> None:
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        rows = key[0] if key else slice(None)
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("RowFile reads contiguous rows only")
        shape = (max(0, stop - start),) + self.shape[1:]
        if shape[0] == 0:
            return np.empty(shape, self.dtype)[(slice(None),) + key[1:]]
        row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        block = np.memmap(self.path, self.dtype, "r", offset=start * row_bytes, shape=shape)
        return block[(slice(None),) + key[1:]]


def write_regression_file(folder: str, n_rows: int, n_in: int, n_out: int,
                          chunk_rows: int, seed: int = 0) -> tuple[RowFile, RowFile]:
    """Inputs uniform in [-1, 1] and targets tanh(X W), as two raw files."""
    rng = np.random.default_rng(seed)
    weights = rng.uniform(-1, 1, (n_in, n_out)) / np.sqrt(n_in)
    X_path, Y_path = os.path.join(folder, "X.f64"), os.path.join(folder, "Y.f64")
    X = np.memmap(X_path, np.float64, "w+", shape=(n_rows, n_in))
    Y = np.memmap(Y_path, np.float64, "w+", shape=(n_rows, n_out))
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        X[start:stop] = rng.uniform(-1, 1, (stop - start, n_in))
        Y[start:stop] = np.tanh(X[start:stop] @ weights)
    X.flush()
    Y.flush()
    del X, Y
    return RowFile(X_path, (n_rows, n_in)), RowFile(Y_path, (n_rows, n_out))


def _median_seconds(call: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


# The cluster's own periodic work, made rarer (docs/dask.md advises it where
# the workers share the machine's cores with the scheduler and the client, as
# on this 2-core one): each process's event-loop health check every 20 ms
# (tick), each worker's profiler sampling its threads every 10 ms, and the
# system monitor every 500 ms take about 0.1 core at rest, and more while
# tasks run; these settings, about a quarter of that. The memory monitor
# (which enforces memory_limit) keeps its 100 ms.
QUIET_CLUSTER = {
    "distributed.admin.tick.interval": "200ms",
    "distributed.worker.profile.enabled": False,
    "distributed.admin.system-monitor.interval": "2s",
}


def _cluster(n_workers: int = 2, **options: Any) -> Any:
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(QUIET_CLUSTER):   # read as the scheduler and the nannies start
        cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40, **options)
        return cluster, Client(cluster, set_as_default=False)


def cluster_log_lines(client: Any) -> list[str]:
    """Every line the workers and their nannies hold in their logs. A nanny
    logs what it does to its worker (a restart for memory among them); a
    restarted worker's own log goes with its process."""
    return [line for logs in (client.get_worker_logs(), client.get_worker_logs(nanny=True))
            for lines in logs.values() for _, line in lines]


def memory_trouble(pids_before: dict[str, int], pids_after: dict[str, int],
                   log_lines: list[str], restart_events: list[Any]) -> list[str]:
    """What says the workers ran short of memory during a run, one line
    each: a worker process there before (address -> pid, from
    ``client.run(os.getpid)``) that is gone or replaced after (its nanny
    restarts a worker past its memory budget, and the scheduler reruns its
    task elsewhere: a run that completes can hide it); a log line with a
    memory warning (MEMORY_WARNINGS); a restart the scheduler recorded
    (``client.get_events("worker-restart-memory")``)."""
    trouble = [f"worker {address} (pid {pid}) was restarted or lost"
               for address, pid in sorted(pids_before.items())
               if pids_after.get(address) != pid]
    trouble += [line for line in log_lines if any(word in line for word in MEMORY_WARNINGS)]
    trouble += [f"restarted for memory: {event}" for _, event in restart_events]
    return trouble


def _idle_time(tasks: list[dict[str, Any]], began: float, ended: float,
               n_workers: int) -> dict[str, float]:
    """The workers' time in [began, ended] (a call of fit_many) without a
    fit task running, summed over the workers (of one thread each), from a
    task stream: before each one's first task, between its tasks, after its
    last (all of it for a worker that ran none). This is the
    scheduler's overhead per call: what it costs beyond the fits themselves
    (submitting, sending, collecting; the first task's wait, a slot's wait
    for the next task, the slots that finish before the last task does)."""
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for task in tasks:
        if str(task["key"]).startswith("lgmstm-fit"):
            for span in task["startstops"]:
                if span["action"] == "compute":
                    by_worker.setdefault(task["worker"], []).append((span["start"],
                                                                     span["stop"]))
    idle = {"start": 0.0, "between": 0.0, "end": 0.0}
    for spans in by_worker.values():
        spans.sort()
        idle["start"] += max(0.0, spans[0][0] - began)
        idle["between"] += sum(max(0.0, b[0] - a[1]) for a, b in zip(spans, spans[1:]))
        idle["end"] += max(0.0, ended - spans[-1][1])
    idle["start"] += (n_workers - len(by_worker)) * (ended - began)
    return idle


def _process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def background_cpu(client: Any, seconds: float = 1.0) -> float:
    """The CPU seconds per second that the cluster's processes (this one,
    which holds a LocalCluster's scheduler and nannies, and each worker)
    use while no task runs: the event loops' ticks, the workers'
    profilers, the system and memory monitors. On a machine whose cores
    the workers share with them, this is taken from the fits."""
    before, here = client.run(_process_cpu_seconds), _process_cpu_seconds()
    time.sleep(seconds)
    after, here = client.run(_process_cpu_seconds), _process_cpu_seconds() - here
    return (here + sum(after[w] - before[w] for w in after)) / seconds


def _busy_rate(seconds: float) -> float:
    """Rows per second of an LGM's predict over a small array (in cache) on
    1 thread, for about ``seconds``: a fixed piece of work that runs at the
    speed of the core it gets."""
    model = lgmstm.LGM([10, 32, 1], output="linear", seed=0)
    X = np.random.default_rng(0).uniform(-1, 1, (8192, 10))
    threads = lgmstm.get_num_threads()
    lgmstm.set_num_threads(1)
    try:
        model.predict(X)
        rows, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            model.predict(X)
            rows += len(X)
    finally:
        lgmstm.set_num_threads(threads)
    return rows / elapsed


def parallel_capacity(client: Any, seconds: float = 0.5) -> float:
    """The rate of a fixed piece of work (:func:`_busy_rate`) run on every
    worker at once, over its rate on one worker alone: 1.0 when the machine
    gives every core its full speed at once. A virtual machine whose cores
    share the host's (hyper-threads, other guests) gives less, at times
    about 0.5 on this 2-core one: then no per-core target against a
    single process can be met, whatever the cluster does. Reported beside
    the targets, not judged."""
    workers = list(client.scheduler_info()["workers"])
    alone = client.submit(_busy_rate, seconds, workers=workers[:1], pure=False).result()
    together = client.gather([client.submit(_busy_rate, seconds, workers=[worker], pure=False)
                              for worker in workers])
    return statistics.mean(together) / alone


def _interleaved(reference: Callable[[], float], measured: Callable[[], Any], repeats: int,
                 ) -> tuple[list[float], list[Any]]:
    """reference(), measured(), reference(), ..., reference(): repeats
    measured runs, each between two reference runs. Returns each measured
    run's reference (the mean of the two beside it) and its result. The
    host's speed drifts by up to 1.6x within a minute here: a ratio of runs
    taken seconds apart means something, one of runs taken a minute apart
    (all the references first, then all the measured runs) does not."""
    references, results = [reference()], []
    for _ in range(repeats):
        results.append(measured())
        references.append(reference())
    return [(a + b) / 2 for a, b in zip(references, references[1:])], results


def _median_index(values: list[float]) -> int:
    return sorted(range(len(values)), key=values.__getitem__)[len(values) // 2]


def seed_fits(n_models: int) -> tuple[list[Any], tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    """The fits fit_many's figures time: n_models seed-size STMs (10 -> 5
    -> 2, seeds 0, 1, ...), their one dataset (100 sequences of 20 steps)
    and fit's settings (100 full-batch SGD epochs)."""
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, (100, 20, 10))
    Y = np.tanh(X[..., :2] + X[..., 2:4])
    models = [lgmstm.STM(10, 5, 2, seed=i) for i in range(n_models)]
    return models, (X, Y), dict(epochs=100, lr=0.01)


def _idle_shares(alones: list[float], runs: list[tuple[float, dict[str, float]]],
                 ) -> list[float]:
    """Each fit_many call's workers' time without a fit, over the
    one-after-another time beside it (:func:`_fit_many_runs`)."""
    return [sum(idle.values()) / alone for alone, (_, idle) in zip(alones, runs)]


def _fit_many_runs(client: Any, n_models: int, repeats: int,
                   ) -> tuple[list[float], list[tuple[float, dict[str, float]]], float, int]:
    """fit_many of n_models seed STMs on the client's cluster, alternating
    with the same fits one after another here on 1 thread
    (:func:`_interleaved`), all warm. Returns each call's one-after-another
    time (the mean of the runs beside it), each call's wall time and its
    workers' time without a fit (:func:`_idle_time`), the first call's wall
    time (on fresh workers it imports lgmstm there too), and the workers."""
    from distributed import get_task_stream

    from . import dask as lgmstm_dask

    models, data, settings = seed_fits(n_models)
    n_workers = len(client.scheduler_info()["workers"])

    def one_after_another() -> float:
        started = time.perf_counter()
        for model in models:
            pickle.loads(pickle.dumps(model)).fit(*data, **settings)
        return time.perf_counter() - started

    def on_the_cluster() -> tuple[float, dict[str, float]]:
        with get_task_stream(client=client) as stream:
            began = time.time()
            started = time.perf_counter()
            lgmstm_dask.fit_many(models, [data] * n_models, client=client, **settings)
            wall = time.perf_counter() - started
        return wall, _idle_time(stream.data, began, began + wall, n_workers)

    threads = lgmstm.get_num_threads()
    lgmstm.set_num_threads(1)
    try:
        one_after_another()  # warm
        started = time.perf_counter()
        lgmstm_dask.fit_many(models, [data] * n_models, client=client, **settings)
        cold = time.perf_counter() - started
        alones, runs = _interleaved(one_after_another, on_the_cluster, repeats)
    finally:
        lgmstm.set_num_threads(threads)
    return alones, runs, cold, n_workers


def bench_fit_many(client: Any, n_models: int, repeats: int, out: Callable[[str], Any],
                   ) -> list[dict[str, Any]]:
    """fit_many against the same fits one after another here on 1 thread.

    The two alternate (:func:`_fit_many_runs`): each fit_many call is judged
    against the one-after-another runs just before and after it, and the
    figures are the medians over the calls. The first call on fresh
    workers, which import lgmstm then, is reported, not judged (the
    one-after-another figure is taken warm too).

    Two figures of overhead per model, as shares of a model's fit (the
    one-after-another time over the models):

    - judged (the issue's target): the workers' time without a fit task
      running (:func:`_idle_time`): the waits the scheduling causes.
    - reported beside it: everything beyond the ideal,
      ``(wall * slots - one-after-another) / models``, which also counts
      the CPU that the scheduler, the client and the workers' event loops
      take from the fits where they share the workers' cores (as on a
      2-core machine running 2 workers: the idle-time figure does not see
      it, since a fit slowed by them still counts as running), and the
      copying of models into and out of tasks. It equals
      ``slots / speed-up - 1``.
    """
    alones, runs, cold, n_workers = _fit_many_runs(client, n_models, repeats)
    speedups = [alone / wall for alone, (wall, _) in zip(alones, runs)]
    shares = _idle_shares(alones, runs)
    median = _median_index(shares)
    speedup = statistics.median(speedups)
    share = shares[median]
    middle = _median_index(speedups)
    (wall, idle), alone = runs[middle], alones[middle]
    per_model = alones[median] / n_models
    overhead = sum(runs[median][1].values()) / n_models
    beyond_ideal = n_workers / speedup - 1
    background = background_cpu(client)
    capacity = parallel_capacity(client)
    out(f"dask fit_many: {n_models} seed STMs (T=20, B=100, 100 epochs) on {n_workers} "
        f"worker processes x 1 thread {wall:.2f} s (the first call, importing lgmstm in the "
        f"workers, {cold:.2f} s: {alone / cold:.2f}x), one after another on 1 thread "
        f"{alone:.2f} s: {speedup:.2f}x (median of {repeats}, each against the runs one after "
        f"another beside it: {' '.join(f'{x:.2f}' for x in speedups)}) (target >= "
        f"{FIT_MANY_SPEEDUP}x): {_verdict(speedup >= FIT_MANY_SPEEDUP)}")
    idle = runs[median][1]
    out(f"dask fit_many overhead per model: {overhead * 1e3:.2f} ms, "
        f"{share:.1%} of a model's fit ({per_model * 1e3:.2f} ms) "
        f"(target < {OVERHEAD_SHARE:.0%}): {_verdict(share < OVERHEAD_SHARE)}; "
        f"the workers' time without a fit, ms: before the first {idle['start']*1e3:.0f}, "
        f"between tasks {idle['between']*1e3:.0f}, after the last {idle['end']*1e3:.0f} "
        f"(each call: {' '.join(f'{x:.1%}' for x in shares)})")
    out(f"dask fit_many beyond the ideal per model (wall x {n_workers} slots - one after "
        f"another, over the models; reported, not judged): "
        f"{beyond_ideal * per_model * 1e3:.2f} ms, {beyond_ideal:.1%} of a model's fit; the "
        f"idle cluster's own CPU: {background * 1e3:.0f} ms per second ({background / n_workers:.1%} "
        f"of {n_workers} cores); the machine's parallel capacity now (every worker computing "
        f"at once against one alone): {capacity:.0%}")
    return [{"target": "fit_many speed-up", "value": speedup, "met": speedup >= FIT_MANY_SPEEDUP,
             "seconds": wall, "versus_seconds": alone, "each": speedups},
            {"target": "fit_many overhead share", "value": share,
             "met": share < OVERHEAD_SHARE, "seconds": overhead,
             "idle_seconds": idle, "first_call_seconds": cold, "each": shares,
             "beyond_ideal_share": beyond_ideal,
             "background_cpu_per_second": background, "parallel_capacity": capacity}]


def bench_predict(client: Any, folder: str, size: int, chunk_bytes: int, repeats: int,
                  out: Callable[[str], Any]) -> list[dict[str, Any]]:
    """predict over a file on disk on the cluster against model.predict
    over an array in memory here on 1 thread, the two alternating
    (:func:`_interleaved`): each run on the cluster is judged against the
    in-memory runs just before and after it; the figure is the median."""
    import dask.array as da

    from . import dask as lgmstm_dask

    n_in = 10
    model = lgmstm.LGM([n_in, 32, 1], output="linear", seed=0)
    # Blocks of a multiple of the model's row quantum, as the docs advise:
    # others are rechunked (lgmstm.dask.predict), a copy of every block.
    quantum = lgmstm_dask.row_quantum(model)
    chunk_rows = chunk_bytes // (8 * n_in) // quantum * quantum
    n_rows = size // (8 * n_in)
    X_file, _ = write_regression_file(folder, n_rows, n_in, 1, chunk_rows)

    # The in-memory rate: predict over an array in memory larger than the
    # caches (512 MB, at least 8 chunks; the whole file when smaller), as
    # the blocks stream through the workers; one chunk predicted again and
    # again stays in a large L3 cache, and is reported beside it.
    in_memory = np.asarray(X_file[:min(n_rows, max(8 * chunk_rows, 512 * MB // (8 * n_in)))])
    in_memory = in_memory.copy()
    one_chunk = in_memory[:chunk_rows]

    def in_memory_rate() -> float:
        started = time.perf_counter()
        model.predict(in_memory)
        return len(in_memory) / (time.perf_counter() - started)

    X = da.from_array(X_file, chunks=(chunk_rows, n_in))
    total = lgmstm_dask.predict(model, X).sum(axis=0)

    def on_the_cluster() -> float:
        started = time.perf_counter()
        client.compute(total).result()
        return time.perf_counter() - started

    before = client.run(_peak_rss_bytes)     # each worker's peak before any block
    client.compute(lgmstm_dask.predict(model, X[:chunk_rows * 2]).sum()).result()  # warm
    threads = lgmstm.get_num_threads()
    lgmstm.set_num_threads(1)
    try:
        model.predict(one_chunk)
        in_cache = chunk_rows / _median_seconds(lambda: model.predict(one_chunk), repeats)
        one_cores, walls = _interleaved(in_memory_rate, on_the_cluster, repeats)
    finally:
        lgmstm.set_num_threads(threads)
    del in_memory, one_chunk
    after = client.run(_peak_rss_bytes)
    n_workers = len(after)
    shares = [n_rows / wall / n_workers / one_core for one_core, wall in zip(one_cores, walls)]
    median = _median_index(shares)
    share, wall, one_core = shares[median], walls[median], one_cores[median]
    per_core = n_rows / wall / n_workers
    growth = max(after[w] - before.get(w, 0) for w in after)
    peak_chunks = growth / (chunk_rows * n_in * 8)
    capacity = parallel_capacity(client)
    out(f"dask predict: LGM [10, 32, 1] over a {size / GB:.2f} GB float64 file, chunks of "
        f"{chunk_bytes / MB:.0f} MB, {n_workers} workers x 1 thread: "
        f"{per_core / 1e6:.2f} M rows/s per core against {one_core / 1e6:.2f} M in memory "
        f"on 1 thread: {share:.0%} (median of {repeats}, each against the in-memory runs "
        f"beside it: {' '.join(f'{x:.0%}' for x in shares)}) (target >= {PREDICT_SHARE:.0%}): "
        f"{_verdict(share >= PREDICT_SHARE)} (one chunk again and again, in cache: "
        f"{in_cache / 1e6:.2f} M rows/s, {per_core / in_cache:.0%}; the machine's parallel "
        f"capacity now: {capacity:.0%})")
    out(f"dask predict peak memory per worker: grew by {growth / MB:.0f} MB = "
        f"{peak_chunks:.1f} chunks (target < {PREDICT_PEAK_CHUNKS}): "
        f"{_verdict(peak_chunks < PREDICT_PEAK_CHUNKS)}")
    return [{"target": "predict rate share", "value": share, "met": share >= PREDICT_SHARE,
             "seconds": wall, "in_cache_share": per_core / in_cache, "each": shares,
             "parallel_capacity": capacity},
            {"target": "predict peak chunks", "value": peak_chunks,
             "met": peak_chunks < PREDICT_PEAK_CHUNKS}]


def bench_partial_fit(folder: str, memory_limit: int, chunk_bytes: int,
                      out: Callable[[str], Any]) -> list[dict[str, Any]]:
    import dask.array as da

    from . import dask as lgmstm_dask

    if memory_limit < 384 * MB:
        raise ValueError(f"worker_memory must be at least 384 MB (a worker takes about 200 MB "
                         f"before any data), got {memory_limit / MB:.0f} MB")
    size = memory_limit * PARTIAL_FIT_DATA_PER_MEMORY
    n_in = 10
    chunk_rows = chunk_bytes // (8 * n_in)
    n_rows = size // (8 * (n_in + 1))          # X and Y together: 4x the memory
    X_file, Y_file = write_regression_file(folder, n_rows, n_in, 1, chunk_rows, seed=1)
    model = lgmstm.LGM([n_in, 16, 1], output="linear", seed=0)
    settings: dict[str, Any] = dict(lr=0.001, batch_size=1024, optimizer="adam")

    cluster, client = _cluster(memory_limit=memory_limit)
    try:
        pids = client.run(os.getpid)
        started = time.perf_counter()
        trained = lgmstm_dask.partial_fit_dask(
            model, da.from_array(X_file, chunks=(chunk_rows, n_in)),
            da.from_array(Y_file, chunks=(chunk_rows, 1)), epochs=1, client=client,
            **settings)
        wall = time.perf_counter() - started
        warnings = memory_trouble(pids, client.run(os.getpid), cluster_log_lines(client),
                                  client.get_events("worker-restart-memory"))
    finally:
        client.close()
        cluster.close()

    local = pickle.loads(pickle.dumps(model))
    for start in range(0, n_rows, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        local.partial_fit(np.asarray(X_file[start:stop]), np.asarray(Y_file[start:stop]),
                          **settings)
    equal = all(np.array_equal(trained.params[name], local.params[name])
                for name in local.params)
    met = equal and not warnings
    out(f"dask partial_fit_dask: {n_rows * (n_in + 1) * 8 / GB:.2f} GB of float64 data in chunks of "
        f"{chunk_bytes / MB:.0f} MB through 2 workers of memory_limit "
        f"{memory_limit / MB:.0f} MB: completed in {wall:.1f} s, equal to the local loop: "
        f"{'yes' if equal else 'NO'}, memory warnings and worker restarts: {len(warnings)}: "
        f"{_verdict(met)}")
    for line in warnings[:5]:
        out(f"    {line}")
    return [{"target": "partial_fit_dask beyond memory", "met": met, "equal": equal,
             "memory_warnings": len(warnings), "seconds": wall}]


def bench_fit_many_free_core(n_models: int, repeats: int, out: Callable[[str], Any],
                             ) -> list[dict[str, Any]]:
    """fit_many's overhead per model as :func:`bench_fit_many` judges it,
    on a cluster of one worker process of 1 thread: on 2 cores, one core
    then stays free for this process (the client, and the scheduler of a
    LocalCluster), where on 2 workers the three share both. Reported, not
    judged: what sharing the cores costs the scheduling (Dask's task
    latency and the workers' time between tasks grow with it), beside the
    judged figure."""
    cluster, client = _cluster(n_workers=1)
    try:
        alones, runs, _, _ = _fit_many_runs(client, n_models, repeats)
    finally:
        client.close()
        cluster.close()
    shares = _idle_shares(alones, runs)
    median = _median_index(shares)
    idle = runs[median][1]
    out(f"dask fit_many overhead per model on 1 worker process x 1 thread (a core left to "
        f"the client and the scheduler; reported, not judged): {shares[median]:.1%} of a "
        f"model's fit; the worker's time without a fit, ms: before the first "
        f"{idle['start'] * 1e3:.0f}, between tasks {idle['between'] * 1e3:.0f}, after the "
        f"last {idle['end'] * 1e3:.0f} (each call: {' '.join(f'{x:.1%}' for x in shares)})")
    return [{"target": "fit_many overhead share, 1 worker (reported)", "value": shares[median],
             "met": None, "each": shares, "idle_seconds": idle}]


def run(*, n_models: int = 200, predict_bytes: int = 2 * GB, worker_memory: int = 512 * MB,
        predict_chunk_bytes: int = 64 * MB, partial_fit_chunk_bytes: int = 32 * MB,
        repeats: int = 3, folder: str | None = None,
        out: Callable[[str], Any] = print) -> list[dict[str, Any]]:
    """Measure the dask targets and print one met/MISSED line for each.

    Sizes are parameters, so that a small machine (or a quick run) can use
    smaller files: the targets are ratios and hold at any size that is many
    chunks. partial_fit_dask's data is 4x ``worker_memory`` (each worker's
    ``memory_limit``, at least 384 MB). The files go to a temporary folder
    in ``folder`` (default: the system's), removed afterwards.
    """
    results = []
    cluster, client = _cluster()
    try:
        results += bench_fit_many(client, n_models, repeats, out)
        with tempfile.TemporaryDirectory(dir=folder) as files:
            results += bench_predict(client, files, predict_bytes, predict_chunk_bytes,
                                     repeats, out)
    finally:
        client.close()
        cluster.close()
    results += bench_fit_many_free_core(n_models, repeats, out)
    with tempfile.TemporaryDirectory(dir=folder) as files:
        results += bench_partial_fit(files, worker_memory, partial_fit_chunk_bytes, out)
    return results
