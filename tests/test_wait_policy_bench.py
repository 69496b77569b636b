"""lgmstm bench --passive (issue 13): the training steps timed in a worker
process with OMP_WAIT_POLICY=passive and in one with lgmstm's default, in
turns. Behaviour only (which policy each worker got, how the rows are made
from the rounds): no assertion on how long anything takes."""
import io
import json
import statistics

import pytest

from lgmstm import benchmarks
from lgmstm.__main__ import main


def test_each_worker_starts_with_its_policy_and_none_of_the_callers(monkeypatch):
    """The caller's own wait policy must not reach either worker: the
    comparison is lgmstm's default against passive, whatever the caller set."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    monkeypatch.setenv("GOMP_SPINCOUNT", "5")
    default = benchmarks._policy_environment("default")
    passive = benchmarks._policy_environment("passive")
    assert "OMP_WAIT_POLICY" not in default and "GOMP_SPINCOUNT" not in default
    assert passive["OMP_WAIT_POLICY"] == "passive" and "GOMP_SPINCOUNT" not in passive
    assert default["PATH"] == passive["PATH"]  # the rest of the environment is kept


def test_plan_runs_the_training_steps_on_n_threads_only():
    items, notes = benchmarks.plan_policies(quick=True, dtypes=("float64",), threads=2,
                                            only=[("lgm_step", None), ("dense_forward", None)])
    assert [(item.case.name, item.size.name, item.threads, item.implementation.name)
            for item in items] == [("lgm_step", "seed", 2, "lgmstm")]
    assert notes == ["dense_forward: skipped, --passive runs the training steps only "
                     "(lgm_step, stm_step)"]
    items, notes = benchmarks.plan_policies(quick=True, dtypes=("float64",), threads=1)
    assert items == [] and "on 1 thread there are none" in notes[-1]


def test_worker_answers_each_request_with_a_timing():
    requests = [json.dumps({"case": "stm_step", "size": "seed", "dtype": dtype, "threads": 1,
                            "target_seconds": 0.002, "repeats": 2})
                for dtype in ("float64", "float32")]
    out = io.StringIO()
    benchmarks.policy_worker(lines=requests, out=out)
    hello, *answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert set(hello) == {"wait_policy", "pid"}
    assert len(answers) == 2
    for answer in answers:
        assert answer["seconds"] > 0 and len(answer["samples"]) == 2
        assert answer["seconds"] == statistics.median(answer["samples"])


def test_worker_times_an_empty_region_on_the_threads_asked():
    out = io.StringIO()
    benchmarks.policy_worker(lines=[json.dumps({"region_threads": 2, "repeats": 5})], out=out)
    hello, answer = [json.loads(line) for line in out.getvalue().splitlines()]
    assert set(answer) == {"region_seconds"} and answer["region_seconds"] >= 0


def test_bench_passive_reports_both_workers_and_the_median_ratio(monkeypatch, tmp_path,
                                                                capsys):
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")  # dropped for both workers
    report = tmp_path / "passive.json"
    assert main(["bench", "--passive", "--quick", "--only", "lgm_step:seed",
                 "--dtype", "float64", "--threads", "2", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    data = json.loads(report.read_text())
    workers = data["workers"]
    assert workers["default"]["wait_policy"].startswith("GOMP_SPINCOUNT=")
    assert "lgmstm's default" in workers["default"]["wait_policy"]
    assert workers["passive"]["wait_policy"] == "OMP_WAIT_POLICY=passive (the user's)"
    assert workers["default"]["pid"] != workers["passive"]["pid"]
    for policy in ("default", "passive"):  # one empty region's time per worker, reported
        assert workers[policy]["region_seconds"] >= 0
        assert f"{policy} worker (pid {workers[policy]['pid']}): " in printed
    assert printed.count("an empty parallel region on 2 threads") == 2
    [row] = data["rows"]
    assert (row["case"], row["size"], row["dtype"], row["threads"]) == (
        "lgm_step", "seed", "float64", 2)
    rounds = row["rounds"]
    assert len(rounds["default"]) == len(rounds["passive"]) == data["rounds"] == 2
    assert row["ratio"] == pytest.approx(statistics.median(
        p / d for p, d in zip(rounds["passive"], rounds["default"])), rel=1e-12)
    for policy in ("default", "passive"):
        assert row["seconds"][policy] == statistics.median(rounds[policy])
    assert row["met"] == (row["ratio"] <= benchmarks.PASSIVE_TARGET)
    line = next(line.split() for line in printed.splitlines()
                if line.startswith("lgm_step"))
    assert line[:4] == ["lgm_step", "seed", "float64", "2"]
    assert line[-1] == ("met" if row["met"] else "MISSED")


def test_loaded_and_passive_do_not_combine(capsys):
    assert main(["bench", "--loaded", "--passive", "--quick"]) == 2
    assert "--loaded and --passive" in capsys.readouterr().err
