"""lgmstm bench: what --quick runs, the notes it prints, the GEMM peak and its
"% peak" flag. Behaviour only: no assertion on how long anything takes."""
import json
import sys
import threading
from contextlib import contextmanager

import numpy as np
import pytest

from lgmstm import benchmarks


def _bench(run_python, folder, *args, block_torch=False):
    """``python -m lgmstm bench --quick *args --json`` in folder (torch made
    unimportable when block_torch): (the finished process, the JSON report)."""
    report = folder / "bench.json"
    argv = ["bench", "--quick", *args, "--json", str(report)]
    block = "sys.modules['torch'] = None; " if block_torch else ""
    code = f"import sys; {block}from lgmstm.__main__ import main; sys.exit(main({argv!r}))"
    result = run_python(["-c", code], cwd=folder)
    assert result.returncode == 0, result.stderr
    return result, json.loads(report.read_text())


def _printed_notes(result):
    return [line[len("note: "):] for line in result.stdout.splitlines()
            if line.startswith("note: ")]


# -- --quick ------------------------------------------------------------------------------

def test_quick_plans_the_seed_sizes_and_every_door_row():
    items, _ = benchmarks.plan(quick=True, dtypes=("float64",), threads=2)
    planned = {(item.case.name, item.size.name) for item in items}
    expected = {(case.name, "seed") for case in benchmarks.CASES if case is not benchmarks.DOOR}
    expected |= {("door", row.name) for row in benchmarks.DOOR_ROWS if row.missing() is None}
    assert planned == expected


def test_quick_finishes_with_the_selected_rows(run_python, tmp_path):
    """A case named without a size runs, under --quick, at its seed size only."""
    result, report = _bench(run_python, tmp_path, "--dtype", "float64", "--threads", "1",
                            "--only", "dense_forward", "--only", "rnn_forward")
    assert {(row["case"], row["size"], row["dtype"]) for row in report["rows"]} == {
        ("dense_forward", "seed", "float64"), ("rnn_forward", "seed", "float64")}
    assert report["door"] == [] and report["notes"] == []
    table = [line.split() for line in result.stdout.splitlines()]
    assert any(line[:3] == ["dense_forward", "seed", "float64"] for line in table)
    assert any(line[:3] == ["rnn_forward", "seed", "float64"] for line in table)
    assert not any(line.startswith("note: ") for line in result.stdout.splitlines())
    assert "% peak" in result.stdout
    assert report["gemm_peak_gflops"]["float64"] > 0
    assert report["memory"]["ok"] is True


# -- notes: only about what was selected ----------------------------------------------------

@contextmanager
def _without(module):
    """Make importlib.util.find_spec(module) say it is not installed."""
    saved = sys.modules.get(module, ...)
    sys.modules[module] = None
    try:
        yield
    finally:
        if saved is ...:
            del sys.modules[module]
        else:
            sys.modules[module] = saved


@pytest.mark.parametrize("only, expected", [
    ([("lgm_step", "seed")], ["lgm_step torch: skipped, torch is not installed"]),
    ([("stm_step", None)], ["stm_step torch: skipped, torch is not installed"]),
    ([("dense_forward", None)], []),  # no torch peer
    ([("door", "lgm_fit_1")], []),  # a door row without a torch peer
    ([("door", "lgm_predict_1")], ["door torch: skipped, torch is not installed"]),
    ([("lgm_step", "seed"), ("door", "stm_step_1")],
     ["lgm_step torch: skipped, torch is not installed",
      "door torch: skipped, torch is not installed"]),
])
def test_notes_speak_only_of_the_selection(only, expected):
    with _without("torch"):
        items, notes = benchmarks.plan(quick=True, dtypes=("float64",), threads=1, only=only)
    assert notes == expected
    assert items and all(item.implementation.name != "torch" for item in items)


def test_a_dtype_the_selection_does_not_run_is_the_only_note():
    with _without("torch"):
        items, notes = benchmarks.plan(quick=True, dtypes=("float32",), threads=1,
                                       only=[("door", "lgm_predict_1")])
    assert items == [] and notes == ["door: skipped, it runs in float64 only"]


def test_the_bench_prints_only_notes_about_what_ran(run_python, tmp_path):
    """The issue's case: --only lgm_step printed `note: stm_step torch: skipped`."""
    result, report = _bench(run_python, tmp_path, "--dtype", "float64", "--threads", "1",
                            "--only", "lgm_step:seed", block_torch=True)
    assert _printed_notes(result) == ["lgm_step torch: skipped, torch is not installed"]
    assert report["notes"] == ["lgm_step torch: skipped, torch is not installed"]
    assert {m["implementation"] for m in report["measurements"]} == {"lgmstm", "numpy"}


# -- the pause before each timing ---------------------------------------------------------

def _item(case_name, size_name, implementation="lgmstm", dtype="float64", threads=1):
    case = next(case for case in benchmarks.CASES if case.name == case_name)
    size = next(size for size in case.sizes if size.name == size_name)
    chosen = next(i for i in case.implementations if i.name == implementation)
    return benchmarks.Item(case, size, np.dtype(dtype), chosen, threads)


def test_small_items_pause_briefly_and_large_ones_long():
    for case in ("dense_forward", "dense_backward", "lgm_step", "rnn_forward",
                 "rnn_backward", "stm_step"):
        assert benchmarks._settle(_item(case, "seed")) == benchmarks.DOOR_SETTLE_SECONDS
        assert benchmarks._settle(_item(case, "large")) == benchmarks.SETTLE_SECONDS
    assert benchmarks._settle(_item("door", "lgm_predict_1")) == benchmarks.DOOR_SETTLE_SECONDS


def test_a_small_item_after_a_large_one_waits_for_the_large_ones_workers(monkeypatch):
    slept = []
    monkeypatch.setattr(benchmarks.time, "sleep", slept.append)
    benchmarks._pause(_item("lgm_step", "large"), _item("lgm_step", "seed"))
    benchmarks._pause(_item("lgm_step", "seed"), _item("lgm_step", "seed"))
    assert slept == [benchmarks.SETTLE_SECONDS, benchmarks.DOOR_SETTLE_SECONDS]


# -- the GEMM peak ------------------------------------------------------------------------

def test_gemm_peak_warms_up_then_keeps_the_best_of_both_thread_counts(monkeypatch):
    """With a core busy elsewhere the 2-thread GEMM can run slower than one
    thread: the peak is the fastest timing, one thread's included."""
    counts = []

    @contextmanager
    def thread_count(n):
        counts.append(n)
        yield

    timed = []

    def seconds(run, k):
        run(k)
        timed.append(counts[-1])
        return {2: 4.0, 1: 2.0}[counts[-1]]  # the threaded GEMM is the slower here

    monkeypatch.setattr(benchmarks, "thread_count", thread_count)
    monkeypatch.setattr(benchmarks, "_seconds", seconds)
    n = 16
    peak = benchmarks.gemm_peak("float64", 2, n=n, repeats=3, warm_up_seconds=0.0,
                                seconds=0.0)
    assert peak == pytest.approx(2 * n**3 / 2.0 / 1e9)
    assert counts[0] == 2  # the warm-up, on the bench's threads
    assert timed == [2, 1, 2, 1, 2, 1]


def test_gemm_peak_on_one_thread_times_one_thread_only(monkeypatch):
    counts = []

    @contextmanager
    def thread_count(n):
        counts.append(n)
        yield

    monkeypatch.setattr(benchmarks, "thread_count", thread_count)
    assert benchmarks.gemm_peak("float32", 1, n=16, repeats=4, warm_up_seconds=0.0,
                                seconds=0.0) > 0
    assert set(counts) == {1} and len(counts) == 1 + 4


# -- "% peak" above 100 is flagged -------------------------------------------------------

def _rows(peak_over_reached):
    """summarise's rows for a seed LGM step timed at 1 ms on 1 thread, and the
    fake peaks: peak_over_reached times the GFLOP/s that step reached."""
    item = _item("lgm_step", "seed")
    peaks = {"float64": peak_over_reached * item.flops / 1e-3 / 1e9}
    measurement = benchmarks.Measurement(item, 1e-3, [1e-3] * 3, 1)
    return benchmarks.summarise([measurement], peaks, 1), peaks


def test_a_share_above_the_peak_is_marked_and_explained():
    [row], peaks = _rows(1 / 1.5)
    assert row["peak_share"] == pytest.approx(1.5)
    assert benchmarks.format_peak_share(row["peak_share"]) == "150!"
    [note] = benchmarks.peak_notes([row], peaks)
    assert "% peak over 100 (marked !) in float64 (lgm_step seed)" in note
    assert f"{peaks['float64']:.3g} GFLOP/s, was measured too low" in note


def test_a_share_within_the_peak_is_plain():
    [row], peaks = _rows(2.0)
    assert benchmarks.format_peak_share(row["peak_share"]) == "50"
    assert benchmarks.peak_notes([row], peaks) == []


@pytest.mark.parametrize("share, text", [
    (None, "-"), (0.0123, "1.2"), (0.5, "50"), (1.0, "100"), (1.004, "100!"), (12.0, "1200!"),
])
def test_format_peak_share(share, text):
    assert benchmarks.format_peak_share(share) == text


def test_peak_notes_name_each_dtype_over_its_own_peak():
    rows = [{"case": "lgm_step", "size": "seed", "dtype": "float64", "peak_share": 1.2},
            {"case": "stm_step", "size": "seed", "dtype": "float64", "peak_share": 0.3},
            {"case": "lgm_step", "size": "seed", "dtype": "float32", "peak_share": 0.9},
            {"case": "rnn_forward", "size": "seed", "dtype": "float32", "peak_share": None}]
    [note] = benchmarks.peak_notes(rows, {"float64": 10.0, "float32": 20.0})
    assert note.startswith("% peak over 100 (marked !) in float64 (lgm_step seed): ")


def test_the_table_marks_a_share_above_the_peak():
    from lgmstm.__main__ import format_table

    rows, _ = _rows(1 / 1.5)
    line = format_table(rows, 1).splitlines()[1].split()
    assert "150!" in line


def test_only_dask_is_a_selection_that_runs_alone(capsys):
    """--only dask names lgmstm.dask's targets (not a timing case), runs alone,
    and an unknown case's message lists it with the others."""
    import argparse

    from lgmstm.__main__ import _selection, main

    assert _selection("dask") == ("dask", None)
    with pytest.raises(argparse.ArgumentTypeError, match="dask"):
        _selection("nonsense")
    assert main(["bench", "--only", "dask", "--only", "lgm_step"]) == 2
    assert "--only dask runs alone" in capsys.readouterr().err


# -- the quality group (issue 14) ---------------------------------------------------------

def _tiny_quality(monkeypatch):
    """A quality run small enough for a test: wine and diabetes, one seed of
    three epochs."""
    monkeypatch.setattr(benchmarks, "QUALITY_DATA",
                        (("wine", "classification"), ("diabetes", "regression")))
    monkeypatch.setattr(benchmarks, "QUALITY_QUICK_SEEDS", 1)
    monkeypatch.setattr(benchmarks, "QUALITY_QUICK_EPOCHS", 3)


def test_quality_rows_hold_both_libraries_and_the_targets(monkeypatch):
    pytest.importorskip("sklearn", minversion="1.6")
    _tiny_quality(monkeypatch)
    rows = benchmarks.quality(quick=True)
    assert [(row["data"], row["metric"]) for row in rows] == [
        ("wine", "accuracy"), ("wine", "log_loss"), ("wine", "fit_seconds"),
        ("wine", "early_stopping"),
        ("diabetes", "r2"), ("diabetes", "fit_seconds"), ("diabetes", "early_stopping")]
    for row in rows:
        assert row["seeds"] == 1 and row["epochs"] == 3 and row["lgmstm_std"] == 0.0
        if row["metric"] == "early_stopping":
            continue
        ours, theirs = row["lgmstm_mean"], row["sklearn_mean"]
        expected = {"accuracy": ours >= theirs - 0.005, "log_loss": ours <= 1.05 * theirs,
                    "r2": ours >= theirs - 0.01, "fit_seconds": ours * 10 <= theirs}
        assert row["met"] == expected[row["metric"]]
    accuracy = rows[0]
    assert 0 <= accuracy["lgmstm_mean"] <= 1 and 0 <= accuracy["sklearn_mean"] <= 1
    # Early stopping's row: lgmstm's alone, the restored network's validation
    # loss on the split the estimator held out, met on every seed.
    for row in (rows[3], rows[6]):
        assert row["sklearn_mean"] is None and row["sklearn_std"] is None
        assert row["seeds_met"] == 1 and row["met"] is True
        assert np.isfinite(row["lgmstm_mean"]) and row["lgmstm_mean"] > 0


def test_quality_early_stopping_check_sees_a_network_that_is_not_the_best(monkeypatch):
    """The early-stopping row can fail: when the estimator keeps a network
    other than the best epoch's (here: its validation scores shifted, as a
    best epoch restored wrongly would leave them), seeds_met counts 0."""
    pytest.importorskip("sklearn", minversion="1.6")
    from lgmstm import sklearn as estimators

    keep = estimators._Progress.keep

    def misreported(progress):
        keep(progress)
        estimator = progress.estimator
        if estimator.validation_scores_ is not None:
            estimator.best_validation_score_ = np.nextafter(
                estimator.best_validation_score_, 0.0)
            estimator.validation_scores_ = np.append(
                estimator.validation_scores_[:-1], estimator.best_validation_score_)

    _tiny_quality(monkeypatch)
    monkeypatch.setattr(estimators._Progress, "keep", misreported)
    rows = benchmarks.quality(quick=True, data=("wine",))
    early = rows[-1]
    assert early["metric"] == "early_stopping"
    assert early["seeds_met"] == 0 and early["met"] is False


def test_only_quality_prints_the_table(monkeypatch, capsys, tmp_path):
    pytest.importorskip("sklearn", minversion="1.6")
    from lgmstm.__main__ import main

    _tiny_quality(monkeypatch)
    assert main(["bench", "--only", "quality", "--quick", "--json",
                 str(tmp_path / "q.json")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("quality (issue 14): lgmstm.sklearn against scikit-learn's MLP")
    assert "1 seeds, 3 epochs each" in out[0]
    assert out[1].split() == ["data", "metric", "lgmstm", "scikit-learn", "MLP", "target"]
    assert len(out) == 2 + 7 + 1
    assert out[-1] == f"wrote {tmp_path / 'q.json'}"
    for line in out[2:-1]:
        assert " +- " in line and line.split()[-1] in ("met", "MISSED")
    early = [line for line in out[2:-1] if line.split()[1] == "early_stopping"]
    assert len(early) == 2
    for line in early:
        assert "== best_validation_score_ (bits) (1/1 seeds)" in line
        assert line.split()[-1] == "met"
    report = json.loads((tmp_path / "q.json").read_text())
    assert report["quick"] is True and len(report["quality"]) == 7
    assert [row["seeds_met"] for row in report["quality"]
            if row["metric"] == "early_stopping"] == [1, 1]
    assert main(["bench", "--only", "quality", "--only", "lgm_step"]) == 2
    assert "--only quality runs alone" in capsys.readouterr().err


def test_quality_says_when_scikit_learn_is_missing(monkeypatch, capsys):
    import importlib.util

    from lgmstm.__main__ import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "sklearn" else find_spec(name, *args))
    assert main(["bench", "--only", "quality"]) == 1
    assert "scikit-learn is not installed: pip install 'lgmstm[sklearn]'" in \
        capsys.readouterr().err


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals reach the main thread only")
def test_ctrl_c_latency_interrupts_long_fits_and_reports_them():
    """The door's Ctrl-C figure: a SIGINT into an endless fit of each model
    raises TrainingInterrupted, leaves it consistent, and is timed (no
    timing asserted here beyond a bound any machine meets)."""
    result = benchmarks.ctrl_c_latency(("seed",), repeats=1, after=0.05)
    assert [(run["model"], run["size"]) for run in result["runs"]] == [("LGM", "seed"),
                                                                       ("STM", "seed")]
    for run in result["runs"]:
        assert len(run["seconds"]) == 1 and 0 <= run["seconds"][0] < 30
        assert run["consistent"] is True
    assert result["max"] == max(t for run in result["runs"] for t in run["seconds"])
    assert result["met"] == (result["max"] <= result["target"])
    # Off the main thread no signal can reach a fit: nothing is timed.
    found = []
    worker = threading.Thread(target=lambda: found.append(benchmarks.ctrl_c_latency()))
    worker.start()
    worker.join()
    assert found == [None]
