"""python -m lgmstm [demo|bench|info]: a demo on real data, the benchmarks, the build.

Run ``python -m lgmstm --help`` (or ``python -m lgmstm COMMAND --help``); the
``lgmstm`` command that pip installs is the same program.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import lgmstm

from . import benchmarks
from ._config import show_config
from .datasets import load_diabetes, load_sunspots


def _say(message):
    print(message, flush=True)


def _rmse(prediction, target):
    return float(np.sqrt(np.mean((np.asarray(prediction) - target) ** 2)))


def _time_per_epoch(model, X, Y, **fit_args):
    started = time.perf_counter()
    model.fit(X, Y, verbose=True, **fit_args)
    return (time.perf_counter() - started) / fit_args["epochs"]


def _compare_backends(make_model, X, Y, held_out_error, **fit_args):
    """Train the same model with each backend; (error, seconds per epoch) by backend."""
    results = {}
    for backend in ("cython", "numpy"):
        _say(f"  training with backend={backend!r} ({fit_args['epochs']} epochs)...")
        model = make_model(backend)
        seconds = _time_per_epoch(model, X, Y, **fit_args)
        results[backend] = (held_out_error(model), seconds)
    return results


def _report(results, baseline, baseline_name):
    (error, compiled), (reference_error, reference) = results["cython"], results["numpy"]
    _say(f"  held-out RMSE    model {error:.4g} (NumPy backend: {reference_error:.4g})"
         f"   baseline {baseline:.4g} ({baseline_name})")
    _say(f"  time per epoch   compiled {compiled * 1e3:.3g} ms   NumPy {reference * 1e3:.3g} ms"
         f"   speed-up {reference / compiled:.3g}x")


def demo_lgm(quick):
    """The LGM on the diabetes data: disease progression from ten baseline variables."""
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


WINDOW, STRIDE = 96, 12  # training windows: 8 years, one every year


def demo_stm(quick):
    """The STM on monthly sunspots: next month's number from the whole record so far."""
    series, _ = load_sunspots()
    split = len(series) - len(series) // 5  # the last 20% of the record is held out
    x = series / 100.0
    starts = np.arange(0, split - WINDOW, STRIDE)
    X = np.stack([x[s : s + WINDOW] for s in starts])[..., None]
    Y = np.stack([x[s + 1 : s + WINDOW + 1] for s in starts])[..., None]
    _say(f"STM: next month's sunspot number, one month ahead ({len(starts)} windows of "
         f"{WINDOW} months to train, the last {len(series) - split} months held out)")

    def make_model(backend):
        return lgmstm.STM(1, 8, 1, output="linear", seed=0, backend=backend)

    def held_out_error(model):
        # The working memory reads the whole record up to each forecast.
        forecast = model.predict(x[None, :-1, None])[0, split - 1 :, 0] * 100.0
        return _rmse(forecast, series[split:])

    results = _compare_backends(make_model, X, Y, held_out_error,
                                epochs=15 if quick else 100, lr=0.01, batch_size=16,
                                optimizer="adam", seed=0)
    _report(results, _rmse(series[split - 1 : -1], series[split:]),
            "persistence: next month = this month")


def command_demo(args):
    started = time.perf_counter()
    _say(f"lgmstm {lgmstm.__version__} demo: each model trained with the compiled "
         f"backend ({lgmstm.get_num_threads()} threads) and with the NumPy reference")
    demo_lgm(args.quick)
    demo_stm(args.quick)
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
            _format_number(row["peak_share"] and 100 * row["peak_share"], "{:.2g}"),
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
        if ax.has_data():
            ax.legend(fontsize="small")
    axes[0].set_ylabel("speed-up (time of peer / time of lgmstm)")
    figure.savefig(path, dpi=120)


def _selection(text):
    try:
        return benchmarks.parse_selection(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def command_bench(args):
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("lgmstm bench: --plot needs matplotlib; install it with "
                  "pip install 'lgmstm[plot]'", file=sys.stderr)
            return 1
    threads = args.threads or benchmarks.default_threads()
    dtypes = ("float64", "float32") if args.dtype == "both" else (args.dtype,)
    items, notes = benchmarks.plan(quick=args.quick, dtypes=dtypes, threads=threads,
                                   only=args.only or ())

    def progress(done, total, label):
        print(f"[{done}/{total}] {label}", file=sys.stderr, flush=True)

    print("measuring this machine's GEMM peak...", file=sys.stderr, flush=True)
    peaks = {dtype: benchmarks.gemm_peak(dtype, threads, n=512 if args.quick else 2048)
             for dtype in dtypes}
    measurements = benchmarks.measure(items, target_seconds=0.02 if args.quick else 0.15,
                                      repeats=3 if args.quick else 5, progress=progress)
    rows = benchmarks.summarise(measurements, peaks, threads)
    door = benchmarks.door_summary(measurements, only=args.only or (), dtypes=dtypes)
    print("checking memory: a fit of 20 and of 500 epochs...", file=sys.stderr, flush=True)
    memory = benchmarks.memory_check("seed" if args.quick else "medium")

    print(f"lgmstm {lgmstm.__version__} benchmarks, median time per iteration on {threads} "
          f"thread(s); x peer = peer time / lgmstm time")
    print("GEMM peak (scipy BLAS): " + ", ".join(f"{d} {p:.3g} GFLOP/s" for d, p in peaks.items()))
    if rows or not door:
        print(format_table(rows, threads))
    if door:
        print("door (issue 12): median time of one call from Python (steady: of one epoch "
              "inside a long fit); lgmstm/peer = lgmstm's time / that peer's; target: "
              "the issue's, met or MISSED on each thread count")
        print(format_door_table(door))
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
    return value


def _writable_path(text):
    folder = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"folder {folder} does not exist")
    return text


def build_parser(prog="python -m lgmstm"):
    parser = argparse.ArgumentParser(
        prog=prog,
        description="lgmstm: a feed-forward tanh network (LGM) and an Elman RNN (STM) "
                    "with compiled OpenMP kernels. Without a command, runs the demo.")
    parser.add_argument("--version", action="version", version=f"lgmstm {lgmstm.__version__}")
    parser.add_argument("--quick", action="store_true",
                        help="for the demo: a few epochs only, done in seconds")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train on the bundled real data with both backends (the default)",
        description="Train the models on bundled real data (diabetes; monthly sunspots for "
                    "the STM) with the compiled backend and the NumPy reference, and report "
                    "held-out errors against a baseline, and the time per epoch of each.")
    # SUPPRESS: a --quick given before the command is not reset by the command's default.
    demo.add_argument("--quick", action="store_true", default=argparse.SUPPRESS,
                      help="a few epochs only: done in seconds")
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
                            "measurements: done in about a minute")
    bench.add_argument("--dtype", choices=("float32", "float64", "both"), default="both",
                       help="dtype(s) to run (default: both)")
    bench.add_argument("--threads", type=_positive_int, metavar="N",
                       help="threads to run on, and to scale to from 1 "
                            "(default: the cores available)")
    bench.add_argument("--only", type=_selection, action="append", metavar="CASE[:SIZE]",
                       help="run only this case (e.g. stm_step, door) or case and size "
                            "(e.g. stm_step:odd, door:stm_step_1); may be repeated")
    bench.add_argument("--json", type=_writable_path, metavar="PATH",
                       help="also write the results as JSON to PATH")
    bench.add_argument("--plot", type=_writable_path, metavar="PATH",
                       help="also plot the speed-ups to a PNG at PATH (needs lgmstm[plot])")
    commands.add_parser("info", help="print lgmstm.show_config()",
                        description="Print the version, OpenMP, SIMD, compiler and BLAS "
                                    "of this lgmstm (lgmstm.show_config()).")
    return parser


COMMANDS = {None: command_demo, "demo": command_demo, "bench": command_bench,
            "info": command_info}


def main(argv=None):
    """Entry point of ``python -m lgmstm`` and of the ``lgmstm`` command; returns the exit code."""
    script = os.path.basename(sys.argv[0])
    args = build_parser("python -m lgmstm" if script == "__main__.py" else script).parse_args(argv)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
