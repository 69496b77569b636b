"""python -m lgmstm [demo|bench|info]: a demo on real data, the benchmarks, the build.

Run ``python -m lgmstm --help`` (or ``python -m lgmstm COMMAND --help``); the
``lgmstm`` command that pip installs is the same program.
"""
from __future__ import annotations

import argparse
import importlib.util
import contextlib
import json
import os
import sys
import tempfile
import time
from typing import NamedTuple

import numpy as np

import lgmstm

from . import benchmarks
from ._config import describe_cpu, show_config
from .datasets import load_diabetes, load_sunspots


def _say(message):
    print(message, flush=True)


class _Indented:
    """A text stream that writes every line to `stream` behind `indent`: the
    models' progress lines (printed to stderr by fit) lined up under the demo's."""

    def __init__(self, stream, indent):
        self.stream, self.indent, self.at_line_start = stream, indent, True

    def write(self, text):
        for line in text.splitlines(keepends=True):
            if self.at_line_start:
                self.stream.write(self.indent)
            self.stream.write(line)
            self.at_line_start = line.endswith("\n")
        return len(text)

    def flush(self):
        self.stream.flush()


def _rmse(prediction, target):
    return float(np.sqrt(np.mean((np.asarray(prediction) - target) ** 2)))


def _time_per_epoch(model, X, Y, **fit_args):
    started = time.perf_counter()
    with contextlib.redirect_stderr(_Indented(sys.stderr, "    ")):
        model.fit(X, Y, verbose=True, **fit_args)
    return (time.perf_counter() - started) / fit_args["epochs"]


def _compare_backends(make_model, X, Y, held_out_error, **fit_args):
    """Train the same model with each backend: (model, error, seconds per epoch)
    by backend."""
    results = {}
    for backend in ("cython", "numpy"):
        _say(f"  training with backend={backend!r} ({fit_args['epochs']} epochs)...")
        model = make_model(backend)
        seconds = _time_per_epoch(model, X, Y, **fit_args)
        results[backend] = (model, held_out_error(model), seconds)
    return results


def _report(results, baseline, baseline_name):
    (_, error, compiled), (_, reference_error, reference) = results["cython"], results["numpy"]
    _say(f"  held-out RMSE    model {error:.4g} (NumPy backend: {reference_error:.4g})"
         f"   baseline {baseline:.4g} ({baseline_name})")
    _say(f"  time per epoch   compiled {compiled * 1e3:.3g} ms   NumPy {reference * 1e3:.3g} ms"
         f"   speed-up {reference / compiled:.3g}x")


def demo_lgm(quick):
    """The LGM on the diabetes data: disease progression from ten baseline
    variables. Returns the model trained with the compiled backend."""
    X, y, _ = load_diabetes()
    order = np.random.default_rng(0).permutation(len(y))
    n_test = len(y) // 5
    test, train = order[:n_test], order[n_test:]
    mean, std = X[train].mean(axis=0), X[train].std(axis=0)
    X = (X - mean) / std
    y_mean, y_std = y[train].mean(), y[train].std()
    _say(f"LGM: diabetes progression one year on, from 10 baseline variables "
         f"({len(train)} patients to train, {n_test} held out)")

    def make_model(backend):
        return lgmstm.LGM([10, 8, 1], output="linear", seed=0, backend=backend)

    def held_out_error(model):
        return _rmse(model.predict(X[test])[:, 0] * y_std + y_mean, y[test])

    results = _compare_backends(make_model, X[train], (y[train] - y_mean) / y_std, held_out_error,
                                epochs=30 if quick else 150, lr=0.01, batch_size=32, seed=1)
    _report(results, _rmse(y_mean, y[test]), "the training mean")
    return results["cython"][0]


class HeldOut(NamedTuple):
    """The demo STM's held-out months, for the plot."""

    years: np.ndarray  # the middle of each month, in years
    record: np.ndarray
    forecast: np.ndarray
    persistence: np.ndarray


WINDOW, STRIDE = 96, 12  # training windows: 8 years, one every year


def demo_stm(quick):
    """The STM on monthly sunspots: next month's number from the whole record
    so far. Returns the model trained with the compiled backend and the
    held-out months: their dates (in years), the record, the model's forecast
    and the persistence forecast."""
    series, dates = load_sunspots()
    split = len(series) - len(series) // 5  # the last 20% of the record is held out
    x = series / 100.0
    starts = np.arange(0, split - WINDOW, STRIDE)
    X = np.stack([x[s : s + WINDOW] for s in starts])[..., None]
    Y = np.stack([x[s + 1 : s + WINDOW + 1] for s in starts])[..., None]
    _say(f"STM: next month's sunspot number, one month ahead ({len(starts)} windows of "
         f"{WINDOW} months to train, the last {len(series) - split} months held out)")

    def make_model(backend):
        return lgmstm.STM(1, 8, 1, output="linear", seed=0, backend=backend)

    def forecast(model):
        # The working memory reads the whole record up to each forecast.
        return model.predict(x[None, :-1, None])[0, split - 1 :, 0] * 100.0

    def held_out_error(model):
        return _rmse(forecast(model), series[split:])

    results = _compare_backends(make_model, X, Y, held_out_error,
                                epochs=15 if quick else 100, lr=0.01, batch_size=16,
                                optimizer="adam", seed=0)
    persistence = series[split - 1 : -1]
    _report(results, _rmse(persistence, series[split:]), "persistence: next month = this month")
    model = results["cython"][0]
    years = dates[split:, 0] + (dates[split:, 1] - 0.5) / 12
    return model, HeldOut(years, series[split:], forecast(model), persistence)


def plot_demo(lgm, stm, held_out, path, zoom_years=6):
    """The demo's picture at `path` (PNG): the STM's held-out sunspot forecast
    against the record and the persistence forecast (all held-out months, and
    the last `zoom_years` closer), and both models' training loss per epoch
    (their history_)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 3.4), layout="constrained")
    whole, zoom, loss = figure.subplots(1, 3, width_ratios=(2, 1.2, 1))
    recent = held_out.years >= held_out.years[-1] - zoom_years
    lines = [(held_out.record, "record", dict(color="0.6", linewidth=2.4)),
             (held_out.persistence, "persistence", dict(color="C2", linewidth=0.9,
                                                        linestyle="--")),
             (held_out.forecast, "STM", dict(color="C1", linewidth=1.1))]
    for values, name, style in lines:
        label = name if name == "record" else \
            f"{name} (RMSE {_rmse(values, held_out.record):.3g})"
        whole.plot(held_out.years, values, label=label, **style)
        zoom.plot(held_out.years[recent], values[recent], **style)
    whole.set(title="held-out sunspots, one month ahead", xlabel="year",
              ylabel="monthly mean sunspot number")
    whole.legend(fontsize="small")
    zoom.set(title=f"the last {zoom_years} years", xlabel="year")
    for model, name in ((lgm, "LGM, diabetes"), (stm, "STM, sunspots")):
        loss.plot(np.arange(1, len(model.history_) + 1), model.history_, label=name)
    loss.set(title="training loss (history_)", xlabel="epoch", ylabel="mean squared error",
             yscale="log")
    loss.legend(fontsize="small")
    figure.savefig(path, dpi=80)


def _matplotlib_missing(command):
    """True (after saying so on stderr) when --plot cannot work here."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"lgmstm {command}: --plot needs matplotlib; install it with "
              "pip install 'lgmstm[plot]'", file=sys.stderr)
        return True
    return False


def command_demo(args):
    path = getattr(args, "plot", None)
    if path and _matplotlib_missing("demo"):
        return 1
    started = time.perf_counter()
    _say(f"lgmstm {lgmstm.__version__} demo: each model trained with the compiled "
         f"backend ({lgmstm.get_num_threads()} threads) and with the NumPy reference")
    lgm = demo_lgm(args.quick)
    stm, held_out = demo_stm(args.quick)
    if path:
        plot_demo(lgm, stm, held_out, path)
        _say(f"wrote {path}")
    _say(f"done in {time.perf_counter() - started:.1f} s")
    return 0


# -- bench -----------------------------------------------------------------------------

def _format_seconds(seconds):
    if seconds is None:
        return "-"
    for unit, scale in (("s", 1), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _format_number(value, pattern):
    return "-" if value is None else pattern.format(value)


def format_table(rows, threads):
    columns = ["case", "size", "dtype", "lgmstm", "numpy", "torch", "x numpy", "x torch",
               "GFLOP/s", "% peak", f"1->{threads}t", "note"]
    lines = []
    for row in rows:
        seconds = row["seconds"]
        scaling = row["scaling"].get("lgmstm")
        floor = row["step_over_floor"]
        lines.append([
            row["case"], row["size"], row["dtype"],
            _format_seconds(seconds.get("lgmstm")), _format_seconds(seconds.get("numpy")),
            _format_seconds(seconds.get("torch")),
            _format_number(row["speedup_vs_numpy"], "{:.2f}"),
            _format_number(row["speedup_vs_torch"], "{:.2f}"),
            _format_number(row["gflops"], "{:.3g}"),
            benchmarks.format_peak_share(row["peak_share"]),
            _format_number(scaling, "{:.2f}"),
            "" if floor is None else f"step = {floor:.2f}x its GEMMs "
                                     f"({_format_seconds(seconds['gemm_floor'])})",
        ])
    return _aligned(columns, lines)


def _aligned(columns, lines):
    """The header and the lines (lists of strings) as left-aligned columns."""
    widths = [max(len(c), *(len(line[i]) for line in lines)) if lines else len(c)
              for i, c in enumerate(columns)]
    text = [" ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    text += [" ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in lines]
    return "\n".join(text)


def format_door_table(rows):
    """The door rows (benchmarks.door_summary): a line per row and thread count."""
    columns = ["row", "threads", *benchmarks.DOOR_PEERS, "lgmstm/peer", "target", "met",
               "call"]
    lines = []
    for row in rows:
        seconds = row["seconds"]
        if row["skipped"]:
            verdict = f"skipped: {row['skipped']}"
        else:
            verdict = {True: "met", False: "MISSED", None: "-"}[row["met"]]
        lines.append([
            row["row"], "-" if row["threads"] is None else str(row["threads"]),
            *(_format_seconds(seconds.get(peer)) for peer in benchmarks.DOOR_PEERS),
            "-" if row["ratio"] is None else f"{row['ratio']:.3g} {row['versus']}",
            "-" if row["target"] is None else row["target"]["text"], verdict, row["call"],
        ])
    return _aligned(columns, lines)


def plot(rows, path):
    """Speed-up against problem size, a line per case and dtype."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    figure = Figure(figsize=(11, 4.5), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    cases = list(dict.fromkeys(row["case"] for row in rows))
    colours = {case: f"C{i}" for i, case in enumerate(cases)}
    for ax, peer in zip(axes, ("numpy", "torch")):
        for case in cases:
            for dtype, style, marker in (("float64", "-", "o"), ("float32", "--", "s")):
                points = sorted((row["flops"], row[f"speedup_vs_{peer}"]) for row in rows
                                if row["case"] == case and row["dtype"] == dtype
                                and row[f"speedup_vs_{peer}"])
                if points:
                    x, y = zip(*points)
                    ax.plot(x, y, style, marker=marker, color=colours[case],
                            label=f"{case} {dtype}")
        ax.axhline(1, color="grey", linewidth=0.8)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set(xscale="log", yscale="log", xlabel="GEMM flops per iteration (problem size)",
               title=f"lgmstm vs {'the NumPy reference' if peer == 'numpy' else 'PyTorch'}")
        if ax.get_legend_handles_labels()[0]:   # not for the line at 1 alone
            ax.legend(fontsize="small")
    axes[0].set_ylabel("speed-up (time of peer / time of lgmstm)")
    figure.savefig(path, dpi=120)


# The dask case (issue 16) is not a timing table: lgmstm._bench_dask measures
# its targets on a local cluster of worker processes. Nor is the quality case
# (issue 14): the estimators' held-out scores and fit times against
# scikit-learn's MLP (benchmarks.quality).
DASK_CASE = "dask"
QUALITY_CASE = "quality"
GROUPS = (DASK_CASE, QUALITY_CASE)


def _selection(text):
    if text in GROUPS:
        return text, None
    case, _, size = text.partition(":")
    if case in GROUPS:
        raise argparse.ArgumentTypeError(f"{case} runs as a whole: it has no sizes, got "
                                         f"{size!r}")
    if text.endswith(":"):
        raise argparse.ArgumentTypeError(f"no size after {case}: (give CASE or CASE:SIZE)")
    try:
        return benchmarks.parse_selection(text)
    except ValueError as error:
        # The groups are cases of --only too, not sizes of one.
        also = f", {', '.join(GROUPS)}" if case not in {c.name for c in benchmarks.CASES} else ""
        raise argparse.ArgumentTypeError(f"{error}{also}") from None


def command_bench_dask(args):
    """lgmstm bench --only dask: the dask targets (needs lgmstm[dask]); with
    --quick, small sizes (the targets are ratios)."""
    try:
        from . import _bench_dask
    except ImportError as error:
        print(f"lgmstm bench: {error}", file=sys.stderr)
        return 1
    if args.quick:
        results = _bench_dask.run(n_models=40, predict_bytes=256 * _bench_dask.MB,
                                  predict_chunk_bytes=16 * _bench_dask.MB,
                                  worker_memory=384 * _bench_dask.MB,
                                  partial_fit_chunk_bytes=16 * _bench_dask.MB, repeats=1)
    else:
        results = _bench_dask.run()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dask": results}, f, indent=1, default=str)
        print(f"wrote {args.json}")
    return 0


def format_quality_table(rows):
    """The quality rows (benchmarks.quality): a line per data set and metric,
    each library's mean +- std over the seeds ("-" where a row is lgmstm's
    alone: early_stopping, with the seeds that met its target), and the
    target met or MISSED."""
    lines = []
    for row in rows:
        pattern = "{:.4f}"
        ours = f"{pattern.format(row['lgmstm_mean'])} +- {pattern.format(row['lgmstm_std'])}"
        theirs = ("-" if row["sklearn_mean"] is None else
                  f"{pattern.format(row['sklearn_mean'])} +- "
                  f"{pattern.format(row['sklearn_std'])}")
        target = row["target"]
        if row["metric"] == "fit_seconds":
            target += f" ({row['sklearn_mean'] / row['lgmstm_mean']:.1f}x)"
        elif row["metric"] == "early_stopping":
            target += f" ({row['seeds_met']}/{row['seeds']} seeds)"
        lines.append((row["data"], row["metric"], ours, theirs, target,
                      "met" if row["met"] else "MISSED"))
    header = ("data", "metric", "lgmstm", "scikit-learn MLP", "target", "")
    return _aligned(header, lines)


def command_bench_quality(args):
    """lgmstm bench --only quality: the estimators against scikit-learn's MLP
    (needs lgmstm[sklearn]); with --quick, fewer seeds and epochs."""
    if importlib.util.find_spec("sklearn") is None:
        print("lgmstm bench: the quality group compares lgmstm.sklearn with scikit-learn's "
              "MLP, and scikit-learn is not installed: pip install 'lgmstm[sklearn]'",
              file=sys.stderr)
        return 1
    seeds = benchmarks.QUALITY_QUICK_SEEDS if args.quick else benchmarks.QUALITY_SEEDS
    epochs = benchmarks.QUALITY_QUICK_EPOCHS if args.quick else benchmarks.QUALITY_EPOCHS
    print(f"quality (issue 14): lgmstm.sklearn against scikit-learn's MLP "
          f"(activation='tanh'), {benchmarks.QUALITY_TEST_SIZE:.0%} held out, {seeds} seeds, "
          f"{epochs} epochs each, hidden layers "
          f"{benchmarks.QUALITY_SETTINGS['hidden_layer_sizes']}, solver "
          f"{benchmarks.QUALITY_SETTINGS['solver']!r}, batches of min(200, n_samples); "
          f"mean +- std over the seeds", flush=True)
    rows = benchmarks.quality(quick=args.quick,
                              progress=lambda label: print(f"[quality] {label}", file=sys.stderr,
                                                           flush=True))
    print(format_quality_table(rows))
    if args.json:
        from ._config import config_info

        with open(args.json, "w") as f:
            json.dump({"config": config_info(), "quick": args.quick, "quality": rows}, f,
                      indent=1)
        print(f"wrote {args.json}")
    return 0


def _print_progress(done, total, label):
    """A benchmark's progress line, to stderr."""
    print(f"[{done}/{total}] {label}", file=sys.stderr, flush=True)


def format_loaded_table(rows, threads):
    """bench --loaded's rows (benchmarks.loaded_summary): a line per case, size and dtype."""
    columns = ["case", "size", "dtype", "1t", f"{threads}t", f"{threads}t/1t", "target", "met"]
    lines = [[row["case"], row["size"], row["dtype"], _format_seconds(row["seconds"]["1"]),
              _format_seconds(row["seconds"][str(threads)]), f"{row['ratio']:.2f}",
              f"<= {row['target']:g}", "met" if row["met"] else "MISSED"] for row in rows]
    return _aligned(columns, lines)


def command_bench_loaded(args, threads, dtypes):
    """bench --loaded: the training steps on 1 and `threads` threads next to
    a CPU-bound process of the benchmark's own (issue 13)."""
    from ._config import config_info

    items, notes = benchmarks.plan_loaded(quick=args.quick, dtypes=dtypes, threads=threads,
                                          only=args.only or ())

    with benchmarks.cpu_load() as busy:
        measurements = benchmarks.measure(items, target_seconds=0.02 if args.quick else 0.15,
                                          repeats=3 if args.quick else 5, progress=_print_progress,
                                          across_threads=True)
    rows = benchmarks.loaded_summary(measurements, threads)
    config = config_info()
    print(f"lgmstm {lgmstm.__version__} training steps under load: median time per step on 1 "
          f"and {threads} thread(s) next to a CPU-bound process (a Python busy loop, pid "
          f"{busy}); {threads}t/1t = the {threads}-thread time / the 1-thread time")
    print(f"CPU: {describe_cpu(config['cpu'])}")
    print(f"OpenMP waiting: {config['wait_policy']}")
    if rows:
        print(format_loaded_table(rows, threads))
    for note in notes:
        print(f"note: {note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": config, "threads": threads, "quick": args.quick,
                       "loaded": True, "rows": rows,
                       "measurements": [m.to_dict() for m in measurements],
                       "notes": notes}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def format_policy_table(rows):
    """bench --passive's rows (benchmarks.compare_wait_policies): a line per
    case, size and dtype."""
    columns = ["case", "size", "dtype", "threads", "default", "passive", "passive/default",
               "target", "met"]
    lines = [[row["case"], row["size"], row["dtype"], str(row["threads"]),
              _format_seconds(row["seconds"]["default"]),
              _format_seconds(row["seconds"]["passive"]), f"{row['ratio']:.2f}",
              f"<= {row['target']:g}", "met" if row["met"] else "MISSED"] for row in rows]
    return _aligned(columns, lines)


def command_bench_passive(args, threads, dtypes):
    """bench --passive: the training steps on `threads` threads in a worker
    process with OMP_WAIT_POLICY=passive and one with lgmstm's default, in
    turns (issue 13)."""
    from ._config import config_info

    items, notes = benchmarks.plan_policies(quick=args.quick, dtypes=dtypes, threads=threads,
                                            only=args.only or ())

    rounds = 2 if args.quick else 5
    rows, workers = benchmarks.compare_wait_policies(
        items, rounds=rounds, target_seconds=0.02 if args.quick else 0.1,
        repeats=3, progress=_print_progress)
    config = config_info()
    print(f"lgmstm {lgmstm.__version__} training steps under each OpenMP wait policy, idle: "
          f"median time per step on {threads} thread(s) in two worker processes, timed in "
          f"turns ({rounds} rounds); passive/default = the median over the rounds of the "
          f"passive worker's time / the default worker's")
    print(f"CPU: {describe_cpu(config['cpu'])}")
    for policy, hello in workers.items():
        region = (f"; an empty parallel region on {threads} threads "
                  f"{_format_seconds(hello['region_seconds'])}" if "region_seconds" in hello
                  else "")
        print(f"{policy} worker (pid {hello['pid']}): {hello['wait_policy']}{region}")
    if rows:
        print(format_policy_table(rows))
    for note in notes:
        print(f"note: {note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": config, "threads": threads, "quick": args.quick,
                       "passive": True, "rounds": rounds, "workers": workers, "rows": rows,
                       "notes": notes}, f, indent=1)
        print(f"wrote {args.json}")
    return 0


def command_bench(args):
    group = next((case for case, _ in args.only or () if case in GROUPS), None)
    modes = [name for name, on in (("--loaded", args.loaded), ("--passive", args.passive),
                                   (f"--only {group}", group is not None)) if on]
    if args.plot and modes:
        print(f"lgmstm bench: --plot plots the timing table's speed-ups; {modes[0]} has no "
              "such table (its figures are in its output and --json)", file=sys.stderr)
        return 2
    if args.plot and _matplotlib_missing("bench"):
        return 1
    if group is not None:
        if len(args.only) > 1:
            print(f"lgmstm bench: --only {group} runs alone", file=sys.stderr)
            return 2
        return command_bench_dask(args) if group == DASK_CASE else command_bench_quality(args)
    threads = args.threads or benchmarks.default_threads()
    dtypes = ("float64", "float32") if args.dtype == "both" else (args.dtype,)
    if args.loaded and args.passive:
        print("lgmstm bench: --loaded and --passive run apart", file=sys.stderr)
        return 2
    if args.loaded:
        return command_bench_loaded(args, threads, dtypes)
    if args.passive:
        return command_bench_passive(args, threads, dtypes)
    items, notes = benchmarks.plan(quick=args.quick, dtypes=dtypes, threads=threads,
                                   only=args.only or ())

    print("measuring this machine's GEMM peak...", file=sys.stderr, flush=True)
    peaks = {dtype: benchmarks.gemm_peak(dtype, threads, n=512 if args.quick else 2048)
             for dtype in dtypes}
    measurements = benchmarks.measure(items, target_seconds=0.02 if args.quick else 0.15,
                                      repeats=3 if args.quick else 5, progress=_print_progress)
    rows = benchmarks.summarise(measurements, peaks, threads)
    door = benchmarks.door_summary(measurements, only=args.only or (), dtypes=dtypes)
    ctrl_c = None
    if door:
        print("timing Ctrl-C in long fits...", file=sys.stderr, flush=True)
        ctrl_c = benchmarks.ctrl_c_latency(("seed",) if args.quick else ("medium",),
                                           repeats=2 if args.quick else 3)
    print("checking memory: a fit of 20 and of 500 epochs...", file=sys.stderr, flush=True)
    memory = benchmarks.memory_check("seed" if args.quick else "medium")

    print(f"lgmstm {lgmstm.__version__} benchmarks, median time per iteration on {threads} "
          f"thread(s); x peer = peer time / lgmstm time")
    print("GEMM peak (scipy BLAS): " + ", ".join(f"{d} {p:.3g} GFLOP/s" for d, p in peaks.items()))
    print(f"CPU: {describe_cpu()}")
    if rows or not door:
        print(format_table(rows, threads))
    if door:
        print("door (issue 12): median time of one call from Python (steady: of one epoch "
              "inside a long fit; probe: of a fixed pure-Python loop); lgmstm/peer = "
              "lgmstm's time / that peer's; target: the issue's, met or MISSED on each "
              "thread count")
        print(format_door_table(door))
        probes = [row["seconds"]["probe"] for row in door if "probe" in row["seconds"]]
        if probes:
            print(f"probe (a fixed pure-Python loop, timed in turns with each row's calls): "
                  f"{_format_seconds(min(probes))} to {_format_seconds(max(probes))} over "
                  f"the rows: the machine ran {max(probes) / min(probes):.2f}x slower at its "
                  "slowest than at its fastest, and a row's absolute times with it")
        if ctrl_c is None:
            print("ctrl-c: not timed (SIGINT reaches only a main thread that has Python's "
                  "handler; this process ignores it)")
        else:
            runs = "; ".join(f"{run['model']} {run['size']} "
                             + ", ".join(f"{t * 1e3:.0f}" for t in run["seconds"]) + " ms"
                             + ("" if run["consistent"] else " (model NOT consistent)")
                             for run in ctrl_c["runs"])
            times = ("no fit was interrupted" if ctrl_c["median"] is None else
                     f"median {ctrl_c['median'] * 1e3:.0f} ms, largest "
                     f"{ctrl_c['max'] * 1e3:.0f} ms")
            print(f"ctrl-c: from SIGINT to TrainingInterrupted in a long fit: {runs}; "
                  f"{times} (target: the README's 'within about 0.1 s', the largest within "
                  f"{ctrl_c['target']:g} s, and the model consistent): "
                  f"{'met' if ctrl_c['met'] else 'MISSED'}")
    notes += benchmarks.peak_notes(rows, peaks)
    for note in notes:
        print(f"note: {note}")
    fits = ", ".join(
        f"{fit['epochs']} epochs: tracemalloc peak {fit['traced_peak_bytes'] / 1024:.0f} KiB, "
        + ("peak RSS growth not measured here" if fit["peak_rss_growth_bytes"] is None else
           f"peak RSS growth {fit['peak_rss_growth_bytes'] / 1024:.0f} KiB")
        for fit in memory["fits"])
    print(f"memory ({memory['size']} LGM fit) {fits}: "
          f"{'ok' if memory['ok'] else 'FAILED, the longer fit takes more memory'}")

    if args.json:
        from ._config import config_info

        with open(args.json, "w") as f:
            json.dump({"config": config_info(), "threads": threads, "quick": args.quick,
                       "gemm_peak_gflops": peaks, "rows": rows, "door": door,
                       "ctrl_c": ctrl_c,
                       "measurements": [m.to_dict() for m in measurements],
                       "memory": memory, "notes": notes}, f, indent=1)
        print(f"wrote {args.json}")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0 if memory["ok"] else 1


def command_info(args):
    show_config()
    return 0


# -- command line -----------------------------------------------------------------------

def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}, got {value}")
    return value


# The most threads --threads takes (a team of more only waits on its own cores).
MAX_THREADS = 1024


def _writable_path(text):
    """A file this run can write at the end: checked now, before the work
    (not a folder; its folder exists and takes a new file)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a file name, got ''")
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"folder {folder} does not exist")
    if os.path.isdir(text) or text.endswith(os.sep):
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    try:   # the one sure test of a folder's permissions (and of /proc's)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".lgmstm-check-"):
            pass
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot write in {folder}: "
                                         f"{error.strerror or error}") from None
    return text


# The formats --plot writes, from PATH's suffix (matplotlib's own, always there).
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _plot_path(text):
    path = _writable_path(text)
    if os.path.splitext(path)[1].lower() not in PLOT_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"{text}: a plot is written as {', '.join(PLOT_SUFFIXES)} from the file's "
            f"suffix; name one")
    return path


class _CommandParser(argparse.ArgumentParser):
    """A command's parser. It names itself in the parsed arguments, so that an
    argument the command does not know is reported with this command's usage
    (argparse leaves unknown arguments of a command to the top-level parser)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_defaults(command_parser=self)


def build_parser(prog="python -m lgmstm"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="lgmstm: a feed-forward tanh network (LGM) and an Elman RNN (STM) "
                    "with compiled OpenMP kernels. Without a command, runs the demo.")
    parser.add_argument("--version", action="version", version=f"lgmstm {lgmstm.__version__}")
    parser.add_argument("--quick", action="store_true",
                        help="the command's quick form (the demo: a few epochs only, done in "
                             "seconds; bench: see bench --help)")
    parser.set_defaults(command_parser=parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND",
                                     parser_class=_CommandParser)
    demo = commands.add_parser(
        "demo",
        help="train on the bundled real data with both backends (the default)",
        description="Train the models on bundled real data (diabetes; monthly sunspots for "
                    "the STM) with the compiled backend and the NumPy reference, and report "
                    "held-out errors against a baseline, and the time per epoch of each.")
    # SUPPRESS: a --quick given before the command is not reset by the command's default.
    demo.add_argument("--quick", action="store_true", default=argparse.SUPPRESS,
                      help="a few epochs only: done in seconds")
    demo.add_argument("--plot", type=_plot_path, metavar="PATH",
                      help="also draw the held-out sunspot forecasts and both models' "
                           "training loss to PATH, a .png, .pdf or .svg (needs lgmstm[plot])")
    bench = commands.add_parser(
        "bench", help="time the kernels and models against NumPy and PyTorch",
        description="Time every benchmark case (dense and RNN kernels, training steps) of "
                    "lgmstm, the NumPy reference and PyTorch when it is installed; report "
                    "speed-ups, GFLOP/s against this machine's GEMM peak, thread scaling "
                    "and a memory check. The door case times one call from Python "
                    "(predict of one sample, STM.step, fit(epochs=1), partial_fit, the "
                    "scikit-learn estimators) against hand NumPy, PyTorch and "
                    "scikit-learn, and says whether each meets its target (issue 12).")
    bench.add_argument("--quick", action="store_true", default=argparse.SUPPRESS,
                       help="smallest sizes (and every door row) and short "
                            "measurements: about half a minute on 2 cores")
    bench.add_argument("--dtype", choices=("float32", "float64", "both"), default="both",
                       help="dtype(s) to run (default: both)")
    bench.add_argument("--threads", type=_positive_int, metavar="N",
                       help="threads to run on, and to scale to from 1 "
                            "(default: the cores available)")
    bench.add_argument("--only", type=_selection, action="append", metavar="CASE[:SIZE]",
                       help="run only this case (e.g. stm_step, door) or case and size "
                            "(e.g. stm_step:odd, door:stm_step_1); may be repeated; "
                            "'dask' (alone) measures lgmstm.dask's targets on a local "
                            "cluster (needs lgmstm[dask]); 'quality' (alone) compares "
                            "lgmstm.sklearn's held-out scores and fit times with "
                            "scikit-learn's MLP on its bundled data sets (needs "
                            "lgmstm[sklearn])")
    bench.add_argument("--json", type=_writable_path, metavar="PATH",
                       help="also write the results as JSON to PATH")
    bench.add_argument("--plot", type=_plot_path, metavar="PATH",
                       help="also plot the speed-ups of the timing table to PATH, a .png, "
                            ".pdf or .svg (needs lgmstm[plot]; not with --loaded, --passive "
                            "or the dask and quality groups, which have no such table)")
    bench.add_argument("--loaded", action="store_true",
                       help="instead: time the training steps (lgm_step, stm_step) on 1 and N "
                            "threads next to a CPU-bound process of the benchmark's own, and "
                            f"report N-thread / 1-thread time (target <= "
                            f"{benchmarks.LOADED_TARGET:g})")
    bench.add_argument("--passive", action="store_true",
                       help="instead: time the training steps (lgm_step, stm_step) on N "
                            "threads in a worker process with OMP_WAIT_POLICY=passive and one "
                            "with lgmstm's default wait policy, in turns, and report passive / "
                            f"default time (target <= {benchmarks.PASSIVE_TARGET:g})")
    commands.add_parser("info", help="print lgmstm.show_config()",
                        description="Print the version, OpenMP, SIMD, compiler and BLAS "
                                    "of this lgmstm (lgmstm.show_config()).")
    return parser


COMMANDS = {None: command_demo, "demo": command_demo, "bench": command_bench,
            "info": command_info}


def main(argv=None):
    """Entry point of ``python -m lgmstm`` and of the ``lgmstm`` command; returns the exit code."""
    script = os.path.basename(sys.argv[0])
    parser = build_parser("python -m lgmstm" if script == "__main__.py" else script)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep Python from
        # complaining again as it flushes stdout on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:   # output that cannot be written: a full disk, /dev/full
        print(f"lgmstm {args.command or 'demo'}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
