"""Issue 13, robust under load: the training driver's choice between all the
kernel threads and one (_train.run_epochs, ThreadChoice), lgmstm's default
wait policy for libgomp (_waiting.py), and ``lgmstm bench --loaded``.

Behaviour only: the choice is made from timings, so these tests assert
what must hold whatever it chose (the same bits as one thread), never a
time.
"""
import json
import os
import pickle

import numpy as np
import pytest

import lgmstm
from lgmstm import _openmp, _train, benchmarks


def _lgm_problem(dtype):
    """The benchmark's odd LGM: 12 Mflop an epoch, enough to fork every region."""
    size = next(s for s in benchmarks.DENSE_SIZES if s.name == "odd")
    X, Y, _ = benchmarks._dense_problem(size, dtype)
    return lambda: lgmstm.LGM([size.n_in, size.n_hidden, size.n_out], dtype=dtype, seed=0), X, Y


def _stm_problem(dtype):
    size = next(s for s in benchmarks.RECURRENT_SIZES if s.name == "odd")
    X, Y, _ = benchmarks._recurrent_problem(size, dtype)
    return (lambda: lgmstm.STM(size.n_in, size.n_hidden, size.n_out, dtype=dtype, seed=0),
            X, Y)


def _trained(make, X, Y, fits, **options):
    """The parameters and history of a model after `fits` fits of 7 epochs each
    (its choice of threads kept from fit to fit), then 3 partial_fits."""
    model = make()
    histories = []
    for fit in range(fits):
        model.fit(X, Y, epochs=7, lr=0.01, seed=1, warm_start=fit > 0, **options)
        histories.append(np.array(model.history_))
    for _ in range(3):
        model.partial_fit(X, Y, lr=0.01)
        histories.append(np.array(model.history_))
    return histories + [p.copy() for p in model.params.values()]


def _assert_same_bits(results):
    (first_name, first), *others = results.items()
    for name, arrays in others:
        for index, (a, b) in enumerate(zip(arrays, first)):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert np.array_equal(a, b), f"array {index}: {name} differs from {first_name}"


@pytest.mark.parametrize("problem", [_lgm_problem, _stm_problem], ids=["LGM", "STM"])
@pytest.mark.parametrize("options", [{}, {"batch_size": 128, "optimizer": "adam"}],
                         ids=["full-batch sgd", "mini-batch adam"])
def test_fits_switching_threads_give_the_bits_of_one_thread(threads, dtype, problem, options):
    """Every multithreaded fit of 3 epochs or more trains its first slice of
    epochs on all the threads and its second on one (then whichever was
    faster): the results are those of one thread, fit after fit."""
    make, X, Y = problem(dtype)
    results = {}
    for n in threads.counts:
        with threads(n):
            results[f"{n} threads"] = _trained(make, X, Y, fits=3, **options)
    _assert_same_bits(results)


def test_the_same_bits_next_to_a_busy_process(threads):
    """With a CPU-bound process beside it the choice moves between the arms
    (at least it may, unlike on an idle machine): the bits stay."""
    make, X, Y = _stm_problem(np.dtype(np.float64))
    with threads(1):
        expected = _trained(make, X, Y, fits=2)
    with benchmarks.cpu_load(), threads(2):
        loaded = _trained(make, X, Y, fits=2)
    _assert_same_bits({"1 thread": expected, "2 threads, loaded": loaded})


# -- the choice itself (_train.run_epochs: next_arm, record_slice) -------------------------
#
# Made-up times per epoch through the compiled choice (_train._simulate_thread_choice):
# arm 0 is all the threads (MANY), arm 1 one thread (ONE).

MANY, ONE = 0, 1
SETTINGS = _train.THREAD_CHOICE_SETTINGS
EPOCHS = 4000
EPOCH = 1e-5  # seconds: a slice (SETTINGS["slice_seconds"]) is 20 such epochs
CALLS = pytest.mark.parametrize("call_epochs", [0, 1], ids=["one fit", "a partial_fit loop"])


def _choose(many, one, call_epochs=0):
    """Per epoch: the arm it ran on, the arm in use then, and its seconds."""
    many, one = np.broadcast_to(many, EPOCHS), np.broadcast_to(one, EPOCHS)
    arms, in_use = _train._simulate_thread_choice(many, one, call_epochs=call_epochs)
    return arms, in_use, np.where(arms == MANY, many, one)


@CALLS
def test_the_choice_moves_to_one_thread_faster_by_more_than_the_margin(call_epochs):
    faster = (1 - 2 * SETTINGS["switch_margin"]) * EPOCH
    _, in_use, _ = _choose(EPOCH, faster, call_epochs)
    assert in_use[0] == MANY
    assert (in_use[EPOCHS // 10:] == ONE).all()
    # Within the margin (noise, a thread's start-up): the threads stay.
    barely = (1 - SETTINGS["switch_margin"] / 2) * EPOCH
    _, in_use, _ = _choose(EPOCH, barely, call_epochs)
    assert (in_use == MANY).all()


@CALLS
def test_the_choice_comes_back_when_the_threads_pay_again(call_epochs):
    half = EPOCHS // 2
    many = np.r_[np.full(half, 3 * EPOCH), np.full(EPOCHS - half, EPOCH)]  # a load that ends
    _, in_use, _ = _choose(many, 2 * EPOCH, call_epochs)
    assert (in_use[half // 5:half] == ONE).all()
    assert (in_use[half + half // 5:] == MANY).all()


@pytest.mark.parametrize("stalled", [500, 1001, 1717])
@pytest.mark.parametrize("slower", [MANY, ONE], ids=["in use: many", "in use: one"])
def test_one_slow_slice_does_not_move_the_choice(stalled, slower):
    """A stall of one epoch (100 times as long) on the arm in use makes its
    slice slower than the other arm: one probe wins, the next does not."""
    fast, slow = np.full(EPOCHS, EPOCH), np.full(EPOCHS, 2 * EPOCH)
    fast[stalled] = 100 * EPOCH
    many, one = (fast, slow) if slower == MANY else (slow, fast)
    arms, in_use, _ = _choose(many, one)
    settled = EPOCHS // 10  # on ONE from here when it is the faster
    assert (in_use[settled:] == slower).all()
    assert arms[stalled] == slower


@CALLS
@pytest.mark.parametrize("ratio", [1.2, 2, 10])
@pytest.mark.parametrize("slower", [MANY, ONE], ids=["probed: many", "probed: one"])
def test_probes_cost_about_their_share(call_epochs, ratio, slower):
    """Slices of the arm not in use cost at most about PROBE_SHARE of the
    time on the arm in use, and they do run: else a choice could never
    come back."""
    many, one = (ratio * EPOCH, EPOCH) if slower == MANY else (EPOCH, ratio * EPOCH)
    arms, in_use, seconds = _choose(many, one, call_epochs)
    settled = EPOCHS // 10
    arms, in_use, seconds = arms[settled:], in_use[settled:], seconds[settled:]
    assert (in_use == 1 - slower).all()
    probes = arms != in_use
    share = seconds[probes].sum() / seconds[~probes].sum()
    assert 0.3 * SETTINGS["probe_share"] < share < 1.1 * SETTINGS["probe_share"]


def test_simulate_thread_choice_checks_its_times():
    with pytest.raises(ValueError, match="as many times, got 3 and 2"):
        _train._simulate_thread_choice([EPOCH] * 3, [EPOCH] * 2)


@pytest.mark.skipif(not _openmp.openmp_enabled(), reason="a build without OpenMP: one thread")
@pytest.mark.parametrize("problem", [_lgm_problem, _stm_problem], ids=["LGM", "STM"])
@pytest.mark.parametrize("checked", [False, True], ids=["short fit", "checked path"])
def test_each_shape_of_epoch_keeps_its_choice(threads, problem, checked):
    """A partial_fit loop over full batches and a last smaller one: each
    shape keeps its own times (else each call would start the choice
    again, with an untimed epoch, and it would never time ONE)."""
    make, X, Y = problem(np.dtype(np.float64))
    model = make()
    program = model._network.program
    # sample_weight: a keyword the short fit leaves to the checked path
    options = {"sample_weight": np.ones(len(X))} if checked else {}
    full = 2 * len(X) // 3  # the full batches' size; the last batch's, len(X) - full
    with threads(2):
        for _ in range(3):
            for part in (slice(0, full), slice(full, None)):
                weights = {k: v[part] for k, v in options.items()}
                model.partial_fit(X[part], Y[part], lr=0.01, **weights)
        kept = program.kept_thread_choices()
    assert [(c["n_threads"], c["n_samples"], c["batch_size"]) for c in kept] == [
        (2, len(X) - full, len(X) - full), (2, full, full)]  # most recently used first
    for choice in kept:
        # The first call untimed, the second timed MANY, the third ONE.
        assert all(seconds > 0 for seconds in choice["seconds"]), choice
    with threads(2):
        for n_samples in range(full + 1, full + 1 + SETTINGS["shapes_kept"]):
            model.partial_fit(X[:n_samples], Y[:n_samples], lr=0.01, **{
                k: v[:n_samples] for k, v in options.items()})
    assert [c["n_samples"] for c in program.kept_thread_choices()] == list(
        range(full + SETTINGS["shapes_kept"], full, -1))  # the least recently used gave way


@pytest.mark.parametrize("problem", [_lgm_problem, _stm_problem], ids=["LGM", "STM"])
def test_each_layout_keeps_its_workspace(problem):
    """A partial_fit loop over full batches and a last smaller one keeps a
    panel workspace per batch shape: after the first of each, no call makes
    another (each used to free the other's and make its own, page faults
    and zeroing included). The results are the bits of a model unpickled
    afresh before every call (the same parameters and optimizer state,
    fresh memory); a new shape takes the least recently used one's place."""
    make, X, Y = problem(np.dtype(np.float64))
    model, fresh = make(), make()
    program = model._network.program
    full = 2 * len(X) // 3
    for _ in range(3):
        for part in (slice(0, full), slice(full, None)):
            model.partial_fit(X[part], Y[part], lr=0.01)
            fresh = pickle.loads(pickle.dumps(fresh))
            fresh.partial_fit(X[part], Y[part], lr=0.01)
    kept = program.kept_workspaces()
    assert kept["layouts"], "the problem trains in the panel layout"
    assert len(kept["layouts"]) == 2 and kept["allocations"] == 2, kept
    for name, value in model.params.items():
        np.testing.assert_array_equal(value, fresh.params[name], err_msg=name)
    # Batches of every size (several sizes share a layout: the padded width
    # and the groups), against a least-recently-used list kept here.
    recency, allocations = list(kept["layouts"]), 2
    for n_samples in range(1, len(X) + 1):
        model.partial_fit(X[:n_samples], Y[:n_samples], lr=0.01)
        latest = program.kept_workspaces()["layouts"][0]
        allocations += latest not in recency[:_train.WORKSPACES]
        if latest in recency:
            recency.remove(latest)
        recency.insert(0, latest)
        assert program.kept_workspaces() == {"layouts": recency[:_train.WORKSPACES],
                                             "allocations": allocations}, n_samples
    assert len(recency) > _train.WORKSPACES  # some gave way


# -- the wait policy ------------------------------------------------------------------------

_POLICY = ("import os, lgmstm; from lgmstm import _waiting; "
           "print(_waiting.policy); print(os.environ.get('GOMP_SPINCOUNT'))")


def _environment(**names):
    environ = {k: v for k, v in os.environ.items()
               if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environ.update(names)
    return environ


def test_lgmstm_gives_libgomp_a_short_spin_and_leaves_no_trace(run_python, tmp_path):
    result = run_python(["-c", _POLICY], tmp_path, env=_environment())
    assert result.returncode == 0, result.stderr
    policy, inherited = result.stdout.splitlines()
    assert policy.startswith(f"GOMP_SPINCOUNT={lgmstm._waiting.SPIN_COUNT} (lgmstm's default")
    assert inherited == "None"  # set only while the compiled modules loaded


@pytest.mark.parametrize("names", [{"OMP_WAIT_POLICY": "passive"}, {"GOMP_SPINCOUNT": "0"},
                                   {"OMP_WAIT_POLICY": "active", "GOMP_SPINCOUNT": "5"}])
def test_the_users_wait_policy_stands(run_python, tmp_path, names):
    result = run_python(["-c", _POLICY], tmp_path, env=_environment(**names))
    assert result.returncode == 0, result.stderr
    policy, spins = result.stdout.splitlines()
    assert policy.endswith("(the user's)")
    assert all(f"{name}={value}" in policy for name, value in names.items())
    assert spins == names.get("GOMP_SPINCOUNT", "None")


# What libgomp itself took: the libgomp the compiled modules loaded (found in
# /proc/self/maps) prints its settings with omp_display_env (OpenMP 5.1), to stderr.
_LIBGOMP_SETTINGS = """
import ctypes, sys
import lgmstm
from lgmstm import _waiting
lgmstm.get_num_threads()  # OpenMP initialised
with open("/proc/self/maps") as maps:
    paths = sorted({line.split()[-1] for line in maps if "libgomp" in line})
if len(paths) != 1:
    sys.exit(f"skip: libgomp mapped {len(paths)} times: {paths}")
if "loaded before lgmstm" in _waiting.policy:
    sys.exit("skip: " + _waiting.policy)
library = ctypes.CDLL(paths[0])
if not hasattr(library, "omp_display_env"):
    sys.exit(f"skip: {paths[0]} has no omp_display_env")
library.omp_display_env(1)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="no /proc/self/maps")
@pytest.mark.skipif(not _openmp.openmp_enabled(), reason="a build without OpenMP")
@pytest.mark.parametrize("names, spins", [
    ({}, str(lgmstm._waiting.SPIN_COUNT)),  # lgmstm's default
    ({"OMP_WAIT_POLICY": "passive"}, "0"),   # libgomp's passive: no spin
    ({"GOMP_SPINCOUNT": "0"}, "0"),
    ({"GOMP_SPINCOUNT": "250000"}, "250000"),
    ({"OMP_WAIT_POLICY": "active", "GOMP_SPINCOUNT": "5"}, "5"),
], ids=["unset", "passive", "spin 0", "spin 250000", "active, spin 5"])
def test_libgomp_spins_as_lgmstm_or_the_user_said(run_python, tmp_path, names, spins):
    result = run_python(["-c", _LIBGOMP_SETTINGS], tmp_path, env=_environment(**names))
    if result.returncode != 0 and result.stderr.startswith("skip: "):
        pytest.skip(result.stderr.strip()[len("skip: "):])
    assert result.returncode == 0, result.stderr
    settings = result.stderr.splitlines()
    assert f"  GOMP_SPINCOUNT = '{spins}'" in settings, result.stderr
    if "OMP_WAIT_POLICY" in names:
        assert f"  OMP_WAIT_POLICY = '{names['OMP_WAIT_POLICY'].upper()}'" in settings


def test_show_config_names_the_wait_policy_and_the_cpu(capsys):
    lgmstm.show_config()
    out = capsys.readouterr().out
    assert f"waiting   idle threads: {lgmstm._waiting.policy}" in out
    cpu = lgmstm._config.cpu_info()
    assert f"CPU       {cpu['vendor']} {cpu['model']}" in out
    assert cpu["cores"] == lgmstm._threads.available_cores()


def test_config_marks_the_blas_scipy_calls_as_the_kernels(monkeypatch):
    """One BLAS library is marked as the kernels': in a wheel, the one in
    scipy's folders (scipy.libs), also when numpy's has the same version
    (where marking by version would mark both)."""
    import scipy
    from threadpoolctl import threadpool_info

    blas = [entry for entry in lgmstm._config.config_info()["libraries"]
            if entry["user_api"] == "blas"]
    marked = [entry["filepath"] for entry in blas if entry["used_by_kernels"]]
    assert len(marked) == 1, blas
    homes = [os.path.dirname(scipy.__file__) + suffix for suffix in ("", ".libs")]
    in_scipy = [entry["filepath"] for entry in blas
                if any(entry["filepath"].startswith(home + os.sep) for home in homes)]
    if in_scipy:   # a wheel: scipy's copy, even were numpy's the same version
        assert marked == in_scipy
        # numpy's library given the same version: still only scipy's is marked.
        versions = {entry["filepath"]: entry["version"] for entry in threadpool_info()}
        same = [{**entry, "version": versions[marked[0]]} for entry in threadpool_info()]
        monkeypatch.setattr("threadpoolctl.threadpool_info", lambda: same)
        blas = [entry for entry in lgmstm._config.config_info()["libraries"]
                if entry["user_api"] == "blas"]
        assert [entry["filepath"] for entry in blas if entry["used_by_kernels"]] == marked


# -- bench --loaded ---------------------------------------------------------------------------

def test_loaded_plans_the_compiled_training_steps_on_1_and_n_threads():
    items, notes = benchmarks.plan_loaded(dtypes=("float64",), threads=3)
    assert notes == []
    assert {item.case.name for item in items} == set(benchmarks.LOADED_CASES)
    assert {item.implementation.name for item in items} == {"lgmstm"}
    sizes = {(item.case.name, item.size.name) for item in items}
    assert sizes == {(case, size.name) for case, sizes_ in
                     (("lgm_step", benchmarks.DENSE_SIZES),
                      ("stm_step", benchmarks.RECURRENT_SIZES)) for size in sizes_}
    for case, size in sizes:
        assert sorted(item.threads for item in items
                      if (item.case.name, item.size.name) == (case, size)) == [1, 3]


def test_loaded_quick_and_a_selection():
    items, notes = benchmarks.plan_loaded(quick=True, dtypes=("float32",), threads=2)
    assert {(item.case.name, item.size.name, item.dtype.name) for item in items} == {
        ("lgm_step", "seed", "float32"), ("stm_step", "seed", "float32")}
    items, notes = benchmarks.plan_loaded(dtypes=("float64",), threads=2,
                                          only=[("stm_step", "odd"), ("door", None)])
    assert {(item.case.name, item.size.name) for item in items} == {("stm_step", "odd")}
    assert notes == ["door: skipped, --loaded runs the training steps only "
                     "(lgm_step, stm_step)"]
    items, notes = benchmarks.plan_loaded(dtypes=("float64",), threads=2,
                                          only=[("dense_forward", None)])
    assert items == [] and len(notes) == 1


def test_loaded_on_one_thread_says_there_is_nothing_to_compare():
    items, notes = benchmarks.plan_loaded(quick=True, dtypes=("float64",), threads=1)
    assert {item.threads for item in items} == {1}
    assert any("nothing to compare" in note for note in notes)
    assert benchmarks.loaded_summary([], 1) == []


def test_the_load_runs_for_the_block_only():
    with benchmarks.cpu_load() as pid:
        os.kill(pid, 0)  # running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_loaded_summary_is_the_ratio_of_the_medians():
    items, _ = benchmarks.plan_loaded(quick=True, dtypes=("float64",), threads=2,
                                      only=[("lgm_step", "seed")])
    by_threads = {item.threads: item for item in items}
    measured = [benchmarks.Measurement(by_threads[2], 3e-6, [3e-6], 1),
                benchmarks.Measurement(by_threads[1], 2e-6, [2e-6], 1)]
    (row,) = benchmarks.loaded_summary(measured, 2)
    assert (row["case"], row["size"], row["dtype"]) == ("lgm_step", "seed", "float64")
    assert row["seconds"] == {"1": 2e-6, "2": 3e-6}
    assert row["ratio"] == pytest.approx(1.5)
    assert row["target"] == benchmarks.LOADED_TARGET and row["met"] is False


def test_bench_loaded_end_to_end(run_python, tmp_path):
    report = tmp_path / "loaded.json"
    result = run_python(["-m", "lgmstm", "bench", "--loaded", "--quick", "--dtype", "float64",
                         "--threads", "2", "--only", "lgm_step:seed", "--json", str(report)],
                        tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["loaded"] is True and data["threads"] == 2 and data["notes"] == []
    (row,) = data["rows"]
    assert (row["case"], row["size"], row["dtype"]) == ("lgm_step", "seed", "float64")
    assert row["ratio"] == pytest.approx(row["seconds"]["2"] / row["seconds"]["1"])
    assert row["met"] == (row["ratio"] <= benchmarks.LOADED_TARGET)
    assert {(m["implementation"], m["threads"]) for m in data["measurements"]} == {
        ("lgmstm", 1), ("lgmstm", 2)}
    assert data["config"]["cpu"]["model"]
    lines = result.stdout.splitlines()
    assert lines[1].startswith("CPU: ") and data["config"]["cpu"]["model"] in lines[1]
    assert lines[3].split() == ["case", "size", "dtype", "1t", "2t", "2t/1t", "target", "met"]
    assert lines[4].split()[:3] == ["lgm_step", "seed", "float64"]
    assert lines[4].split()[-1] in ("met", "MISSED")
