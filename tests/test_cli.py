"""python -m lgmstm end to end, in a subprocess, as a user would run it."""
import json
import re
from pathlib import Path

import pytest

import lgmstm

BENCH_SUITE = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="session")
def lgmstm_cli(run_python):
    """lgmstm_cli(*args, cwd, ...) runs ``python -m lgmstm *args``."""

    def cli(*args, cwd, **kwargs):
        return run_python(["-m", "lgmstm", *args], cwd, **kwargs)

    return cli


def test_demo_quick(lgmstm_cli, tmp_path):
    result = lgmstm_cli("--quick", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "LGM: diabetes" in out
    errors = re.search(r"held-out RMSE\s+model ([\d.]+) \(NumPy backend: ([\d.]+)\)"
                       r"\s+baseline ([\d.]+)", out)
    assert errors, out
    model, reference, baseline = map(float, errors.groups())
    assert model < 0.9 * baseline
    assert model == pytest.approx(reference, rel=1e-3)  # the same maths on both backends
    assert re.search(r"time per epoch\s+compiled [\d.]+ ms\s+NumPy [\d.]+ ms\s+speed-up", out)
    assert "LGM: epoch 30/30" in result.stderr  # progress while it trains


@pytest.fixture(scope="module")
def quick_bench(lgmstm_cli, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    report = folder / "bench.json"
    result = lgmstm_cli("bench", "--quick", "--dtype", "float64", "--threads", "2",
                        "--json", str(report), cwd=folder)
    assert result.returncode == 0, result.stderr
    return result, json.loads(report.read_text())


def test_bench_quick_json(quick_bench):
    _, report = quick_bench
    assert report["quick"] and report["threads"] == 2
    assert report["gemm_peak_gflops"]["float64"] > 0
    rows = {(row["case"], row["size"], row["dtype"]): row for row in report["rows"]}
    assert {("dense_forward", "seed", "float64"), ("dense_backward", "seed", "float64"),
            ("lgm_step", "seed", "float64")} <= set(rows)
    for row in rows.values():
        assert row["seconds"]["lgmstm"] > 0 and row["seconds"]["numpy"] > 0
        assert row["speedup_vs_numpy"] == pytest.approx(
            row["seconds"]["numpy"] / row["seconds"]["lgmstm"])
        assert 0 < row["gflops"] and 0 < row["peak_share"]
    assert set(rows["lgm_step", "seed", "float64"]["scaling"]) >= {"lgmstm", "numpy"}
    threads = {(m["case"], m["implementation"], m["threads"]) for m in report["measurements"]}
    assert {("lgm_step", "lgmstm", 1), ("lgm_step", "lgmstm", 2)} <= threads
    assert all(m["seconds"] > 0 and len(m["samples"]) == 3 for m in report["measurements"])
    assert [fit["epochs"] for fit in report["memory"]["fits"]] == [20, 500]
    assert report["memory"]["ok"] is True
    assert report["config"]["lgmstm"] == lgmstm.__version__


def test_bench_quick_table(quick_bench):
    result, _ = quick_bench
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("case"))
    assert header.split()[:6] == ["case", "size", "dtype", "lgmstm", "numpy", "torch"]
    assert any(line.split()[:3] == ["lgm_step", "seed", "float64"] for line in lines)
    assert re.search(r"memory \(seed LGM fit\) 20 epochs: .* 500 epochs: .*: ok", result.stdout)
    assert "[0/" in result.stderr  # progress


def test_bench_only_runs_the_selection(lgmstm_cli, tmp_path):
    report = tmp_path / "only.json"
    result = lgmstm_cli("bench", "--quick", "--dtype", "float32", "--threads", "1",
                        "--only", "stm_step:seed", "--only", "dense_forward",
                        "--json", str(report), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(report.read_text())["rows"]
    assert {(row["case"], row["size"], row["dtype"]) for row in rows} == {
        ("stm_step", "seed", "float32"), ("dense_forward", "seed", "float32")}


@pytest.mark.parametrize("selection, message", [
    ("no_such_case", "the cases are dense_forward"),
    ("stm_step:huge", "its sizes are seed, small, odd, medium, large"),
])
def test_bench_only_refuses_unknown_names(lgmstm_cli, tmp_path, selection, message):
    result = lgmstm_cli("bench", "--only", selection, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and selection.split(":")[-1] in result.stderr


def test_bench_plot(quick_bench, tmp_path):
    pytest.importorskip("matplotlib")
    from lgmstm.__main__ import plot

    plot(quick_bench[1]["rows"], tmp_path / "speedups.png")
    assert (tmp_path / "speedups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_plot_without_matplotlib(lgmstm_cli, tmp_path):
    hidden = tmp_path / "hide" / "matplotlib"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    result = lgmstm_cli("bench", "--quick", "--plot", str(tmp_path / "x.png"), cwd=tmp_path,
                        extra_path=[hidden.parent])
    assert result.returncode != 0
    assert "lgmstm[plot]" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_info(lgmstm_cli, tmp_path):
    result = lgmstm_cli("info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"lgmstm {lgmstm.__version__}")
    for label in ("OpenMP", "SIMD", "compiler", "BLAS", "scipy.linalg.cython_blas"):
        assert label in result.stdout
    assert ("OpenMP    yes" in result.stdout) == lgmstm._openmp.openmp_enabled()


@pytest.mark.parametrize("args", [
    ["bench", "--threads", "0"],
    ["bench", "--threads", "many"],
    ["bench", "--dtype", "float16"],
    ["bench", "--json", "/no/such/folder/bench.json"],
    ["bench", "--frobnicate"],
    ["frobnicate"],
])
def test_bad_arguments(lgmstm_cli, args, tmp_path):
    result = lgmstm_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert "usage: python -m lgmstm" in result.stderr and "error:" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args", [[], ["demo"], ["bench"], ["info"]])
def test_help(lgmstm_cli, args, tmp_path):
    result = lgmstm_cli(*args, "--help", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m lgmstm")


@pytest.mark.skipif(not BENCH_SUITE.is_dir(), reason="no bench/ beside tests/")
def test_bench_suite_runs(run_python, tmp_path):
    """The pytest-benchmark suite still collects and runs the shared cases."""
    result = run_python(["-m", "pytest", str(BENCH_SUITE), "--lgmstm-quick", "--benchmark-disable",
                  "-q", "-p", "no:cacheprovider", "--rootdir", str(BENCH_SUITE)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\d+ passed", result.stdout)
