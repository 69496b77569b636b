"""Where a fit_many call's workers wait, timed inside the workers.

    python bench/fit_many_timeline.py [--calls C] [--models N]

The benchmark's overhead figure (lgmstm bench --only dask) takes the
workers' time without a fit from Dask's task stream, whose times each worker
shifts by its own estimate of its clock's offset from the scheduler's: the
sum over the parts is right, each part is off by that estimate. Here each
worker records, with its own clock (the machine's: the workers run on this
one), when each fit task's function starts and ends, so that the parts can
be compared: per worker, from the call to its first task, between its
tasks, and from its last task to the call's return. The cluster is the
benchmark's: 2 worker processes of 1 thread, with its quiet settings; the
fits are its seed STMs. Prints each call's parts and the medians (ms per
worker).
"""
import argparse
import statistics
import time

import lgmstm
import lgmstm.dask as lgmstm_dask
from lgmstm._bench_dask import _cluster, seed_fits


def record_fit_tasks():
    """In a worker: wrap lgmstm.dask's task function (fit_many names it by
    module and name, so the worker calls the wrapper) to log its start and
    end."""
    import lgmstm.dask as module

    if getattr(module._fit_batch, "spans", None) is not None:
        return
    fit_batch = module._fit_batch

    def timed(*args):
        started = time.time()
        try:
            return fit_batch(*args)
        finally:
            timed.spans.append((started, time.time()))

    timed.spans = []
    module._fit_batch = timed


def take_spans():
    import lgmstm.dask as module

    spans = list(module._fit_batch.spans)
    module._fit_batch.spans.clear()
    return spans


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=12)
    parser.add_argument("--models", type=int, default=200)
    args = parser.parse_args()
    for name, value in (("--calls", args.calls), ("--models", args.models)):
        if value < 1:
            parser.error(f"{name}: expected an integer of at least 1, got {value}")
    cluster, client = _cluster()
    try:
        models, data, settings = seed_fits(args.models)
        lgmstm.set_num_threads(1)
        lgmstm_dask.fit_many(models, [data] * args.models, client=client, **settings)
        client.run(record_fit_tasks)
        parts = {"first": [], "between": [], "last": []}
        for call in range(args.calls):
            time.sleep(0.3)   # the cluster at rest, as after the benchmark's runs here
            began = time.time()
            lgmstm_dask.fit_many(models, [data] * args.models, client=client, **settings)
            ended = time.time()
            line = []
            for spans in client.run(take_spans).values():
                if not spans:   # fewer tasks than workers
                    line.append("0 tasks")
                    continue
                spans.sort()
                first, last = spans[0][0] - began, ended - spans[-1][1]
                between = sum(b[0] - a[1] for a, b in zip(spans, spans[1:]))
                for name, value in zip(parts, (first, between, last)):
                    parts[name].append(value)
                line.append(f"{len(spans)} tasks: first {first * 1e3:.1f}, between "
                            f"{between * 1e3:.1f}, last {last * 1e3:.1f}")
            print(f"call {call}: {(ended - began) * 1e3:.0f} ms; " + "; ".join(line))
        print("medians per worker, ms: " + ", ".join(
            f"{name} {statistics.median(values) * 1e3:.1f}" for name, values in parts.items()))
    finally:
        client.close()
        cluster.close()


if __name__ == "__main__":
    main()
