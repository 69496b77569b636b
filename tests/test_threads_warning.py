"""More kernel threads than cores are set as asked, with a warning that names both."""
import os
import warnings

import pytest

import lgmstm
from lgmstm import _threads
from lgmstm._threads import OversubscriptionWarning, available_cores


@pytest.fixture
def restore_threads():
    saved = lgmstm.get_num_threads()
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OversubscriptionWarning)
        lgmstm.set_num_threads(saved)


def test_is_a_runtime_warning():
    assert issubclass(OversubscriptionWarning, RuntimeWarning)


def test_more_threads_than_cores_warn_and_are_set(restore_threads):
    cores = available_cores()
    with pytest.warns(OversubscriptionWarning) as caught:
        lgmstm.set_num_threads(cores + 1)
    assert lgmstm.get_num_threads() == cores + 1  # warned, not capped
    [warning] = caught
    message = str(warning.message)
    assert f"set_num_threads({cores + 1}): {cores + 1} threads asked for" in message
    assert f"this process has {cores} core" in message
    assert f"Use set_num_threads({cores}) or fewer" in message
    assert warning.filename == __file__  # points at the caller, not inside lgmstm


@pytest.mark.parametrize("n_threads", ["one", "all cores"])
def test_up_to_the_cores_is_silent(restore_threads, n_threads):
    n = 1 if n_threads == "one" else available_cores()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lgmstm.set_num_threads(n)
    assert lgmstm.get_num_threads() == n


def test_a_refused_count_does_not_warn(restore_threads):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="n_threads"):
            lgmstm.set_num_threads(0)


def test_cores_are_the_affinity_mask(monkeypatch, restore_threads):
    """A process pinned to one core (taskset, a cpuset) has one, whatever the machine has."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert available_cores() == 1
    with pytest.warns(OversubscriptionWarning, match="has 1 core available"):
        lgmstm.set_num_threads(2)


def test_cores_without_an_affinity_mask(monkeypatch, restore_threads):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert available_cores() == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lgmstm.set_num_threads(3)
    with pytest.warns(OversubscriptionWarning, match="has 3 cores available"):
        lgmstm.set_num_threads(4)
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # unknown: one
    assert available_cores() == 1


def test_the_benchmarks_count_the_same_cores():
    from lgmstm import benchmarks

    assert benchmarks.default_threads() == available_cores()


def _import_with(run_python, tmp_path, omp_num_threads):
    return run_python(
        ["-W", "always", "-c", "import lgmstm; print(lgmstm.get_num_threads())"],
        cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS=omp_num_threads))


def test_omp_num_threads_over_the_cores_warns_on_import(run_python, tmp_path):
    cores = available_cores()
    result = _import_with(run_python, tmp_path, str(cores + 1))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(cores + 1)
    assert "OversubscriptionWarning" in result.stderr
    assert f"OMP_NUM_THREADS={cores + 1}: {cores + 1} threads asked for" in result.stderr
    assert f"Set OMP_NUM_THREADS to {cores} or fewer" in result.stderr


def test_omp_num_threads_within_the_cores_is_silent(run_python, tmp_path):
    result = _import_with(run_python, tmp_path, "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
    assert "OversubscriptionWarning" not in result.stderr


def test_the_check_reads_the_mask_at_each_call(monkeypatch):
    """taskset -p can change a running process's cores: nothing is cached."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(5)), raising=False)
    assert _threads.available_cores() == 5
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert _threads.available_cores() == 2
