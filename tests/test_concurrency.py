"""Threads and processes.

- One model (or kernel) used from 8 Python threads at once gives the bits
  it gives alone.
- fit is refused on a model another thread is fitting; predict, loss,
  gradients, params and save wait for a fit and never see a half-trained
  model.
- The kernels, fit and predict release the GIL while the compiled code runs,
  so two Python threads can really run in parallel.
- After the parent ran the OpenMP kernels on 2 threads, a "fork"
  multiprocessing pool uses lgmstm without hanging and gets the same bits.
"""
from __future__ import annotations

import builtins
import functools
import importlib.machinery
import inspect
import itertools
import linecache
import multiprocessing
import os
import re
import sys
import threading
import time
import warnings

import numpy as np
import pytest

import lgmstm
from api_table import (BACKENDS, DIMS, HAS_STM, KERNELS, MODEL_BACKENDS, MODELS, as_tuple,
                       call, make_arrays, model_data)

CASES = [pytest.param(m, b, id=f"{m}-{b}") for m in MODELS for b in MODEL_BACKENDS]
N_THREADS = 8


def run_in_threads(n, work):
    """work(i) in n threads started together; their results, or the first error."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def body(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a thread hung"
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("module", BACKENDS)
@pytest.mark.parametrize("kernel", KERNELS, ids=str)
def test_kernel_from_many_threads_is_bit_identical(kernel, module):
    dims = dict(DIMS, n=300, i=40, o=50, t=5, h=30)
    arrays = make_arrays(kernel, dims, np.dtype(np.float64), np.random.default_rng(0))
    alone = as_tuple(call(BACKENDS[module], kernel, arrays))

    def work(i):
        return [as_tuple(call(BACKENDS[module], kernel, arrays)) for _ in range(3)]
    for results in run_in_threads(N_THREADS, work):
        for result in results:
            for got, want in zip(result, alone):
                np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("model, backend", CASES)
def test_predict_from_many_threads_is_bit_identical(model, backend):
    X, Y = model_data(model, 500)
    instance = model.make(seed=0, backend=backend)
    instance.fit(X, Y, epochs=3, lr=0.1)
    alone = instance.predict(X), instance.loss(X, Y), instance.gradients(X, Y)

    def work(i):
        return [(instance.predict(X), instance.loss(X, Y), instance.gradients(X, Y))
                for _ in range(5)]
    for results in run_in_threads(N_THREADS, work):
        for prediction, loss, grads in results:
            np.testing.assert_array_equal(prediction, alone[0])
            assert loss == alone[1]
            for name, grad in grads.items():
                np.testing.assert_array_equal(grad, alone[2][name])


def _start_fit(instance, X, Y, watch=(), **keywords):
    """fit in a thread; (thread, stop event, outcome dict).

    The callback ends training once `stop` is set; after each epoch, while
    fit still holds the model, it notes len(watch) in outcome["watched"]
    and notifies outcome["epoch_done"] (a Condition).
    """
    started, stop = threading.Event(), threading.Event()
    outcome = {"watched": [], "epoch_done": threading.Condition()}

    def callback(epoch, loss):
        with outcome["epoch_done"]:
            outcome["watched"].append(len(watch))
            outcome["epoch_done"].notify_all()
        started.set()
        time.sleep(0.002)
        return not stop.is_set()

    def body():
        try:
            outcome["losses"] = instance.fit(X, Y, callback=callback, **keywords)
        except BaseException as exc:  # noqa: BLE001
            outcome["error"] = exc
    thread = threading.Thread(target=body)
    thread.start()
    assert started.wait(30), "fit did not start"
    return thread, stop, outcome


@pytest.mark.parametrize("model, backend", CASES)
def test_second_fit_is_refused(model, backend):
    X, Y = model_data(model, 50)
    instance = model.make(seed=0, backend=backend)
    thread, stop, outcome = _start_fit(instance, X, Y, epochs=10**5, lr=0.01)
    try:
        with pytest.raises(RuntimeError, match="being trained"):
            instance.fit(X, Y, epochs=1, lr=0.01)
    finally:
        stop.set()
        thread.join(30)
    assert "error" not in outcome, outcome.get("error")
    other = model.make(seed=0, backend=backend)
    other.fit(X, Y, epochs=1, lr=0.01)  # other models are not locked


@pytest.mark.parametrize("model, backend", CASES)
def test_fit_from_its_own_callback_is_refused(model, backend):
    X, Y = model_data(model, 20)
    instance = model.make(seed=0, backend=backend)
    seen = []

    def callback(epoch, loss):
        with pytest.raises(RuntimeError, match="own callback"):
            instance.fit(X, Y, epochs=1, lr=0.01)
        seen.append(instance.predict(X))  # reading from the training thread is fine
    instance.fit(X, Y, epochs=2, lr=0.01, callback=callback)
    assert len(seen) == 2


@pytest.mark.parametrize("model, backend", CASES)
def test_readers_wait_for_fit_and_see_whole_models(model, backend, tmp_path):
    X, Y = model_data(model, 200)
    instance = model.make(seed=0, backend=backend)
    before = instance.predict(X), instance.params
    seen = []
    thread, stop, outcome = _start_fit(instance, X, Y, watch=seen, epochs=10**5, lr=0.05)

    all_calling = threading.Barrier(9)  # the 8 readers and this thread

    def read(i):
        all_calling.wait(30)
        kind = i % 4
        if kind == 0:
            result = instance.predict(X)
        elif kind == 1:
            result = instance.params
        elif kind == 2:
            result = instance.loss(X, Y)
        else:
            instance.save(tmp_path / f"m{i}.npz")
            result = lgmstm.load(tmp_path / f"m{i}.npz").params
        seen.append((kind, result))
    readers = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for reader in readers:
        reader.start()
    # Every reader is at its call and fit has finished 3 more epochs since:
    # none may have returned (however long each took to start on a busy machine).
    all_calling.wait(30)
    with outcome["epoch_done"]:
        epochs = len(outcome["watched"])
        assert outcome["epoch_done"].wait_for(
            lambda: len(outcome["watched"]) >= epochs + 3, 30), "fit stopped training"
    assert not seen, "a reader ran during fit"
    stop.set()
    thread.join(30)
    for reader in readers:
        reader.join(30)
    assert "error" not in outcome, outcome.get("error")
    assert len(outcome["losses"]) > 1
    after = instance.predict(X), instance.params, instance.loss(X, Y)
    assert not np.array_equal(after[0], before[0])
    assert len(seen) == 8
    # no reader had returned at any epoch's end, the last one included
    assert set(outcome["watched"]) == {0}
    for kind, result in seen:
        if kind == 0:
            np.testing.assert_array_equal(result, after[0])
        elif kind == 2:
            assert result == after[2]
        else:
            for name, value in result.items():
                np.testing.assert_array_equal(value, after[1][name])


@pytest.mark.parametrize("model, backend", CASES)
def test_hammering_readers_see_only_whole_models(model, backend):
    """Readers in a loop through a fit: every prediction is that of the
    model before or after the fit, never of a model in between."""
    X, Y = model_data(model, 200)
    instance = model.make(seed=0, backend=backend)
    before = instance.predict(X)
    done = threading.Event()
    seen = []
    reading = threading.Barrier(5)  # the 4 readers, each after its first read, and fit

    def read(i):
        seen.append(instance.predict(X))
        reading.wait(30)
        while not done.is_set():
            seen.append(instance.predict(X))
            time.sleep(0.001)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(4)]
    for reader in readers:
        reader.start()
    reading.wait(30)
    try:
        instance.fit(X, Y, epochs=100, lr=0.05, batch_size=20)
    finally:
        done.set()
        for reader in readers:
            reader.join(30)
    after = instance.predict(X)
    assert not np.array_equal(after, before)
    for prediction in seen:
        assert np.array_equal(prediction, before) or np.array_equal(prediction, after)


# -- the GIL -------------------------------------------------------------------------
#
# A worker thread makes long calls of the compiled code; this thread samples the
# worker's innermost Python frame (sys._current_frames), sleeping between samples.
# The compiled code makes no Python frame, so during a call the worker's
# innermost frame is the lgmstm line calling it, parked on that one instruction.
#
# With the GIL released, this thread takes sample after sample while the worker
# stays parked there and computes: tens in a row over a call of 0.2 s. With the
# GIL held, this thread gets the GIL only once the call has returned and the
# worker stops at a switch point; then the worker, parked at the same instruction,
# only waits (for the GIL, or for a core on a busy machine) until it moves on. So
# a sample counts only if the worker's CPU clock moved since the previous one:
# held, the GIL allows one counted sample per call, however slow or busy the
# machine. The tests count samples; they time nothing.

PACKAGE = os.path.dirname(os.path.abspath(lgmstm.__file__)) + os.sep
PARKED_SAMPLES = 10  # counted in a row at one call: the GIL was free while it ran
SAMPLE_PAUSE = 0.001  # s between samples (sleeping hands the GIL to a waiting worker)
# CPU seconds a worker may use between samples without computing: a thread
# waiting for the GIL wakes every 5 ms (sys.getswitchinterval()) for microseconds
WAITING_CPU = 50e-6
DOTTED_CALL = re.compile(r"([A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)\s*\(")


@functools.lru_cache(maxsize=None)
def _callee_at(code, instruction):
    """The dotted name an lgmstm function calls at an instruction (an f_lasti):
    "_dense.forward", "self.network.program.train"; None if there is none."""
    if instruction < 0 or not os.path.abspath(code.co_filename).startswith(PACKAGE):
        return None
    if hasattr(code, "co_positions"):  # 3.11+: the very expression at the instruction
        line, end_line, column, end_column = next(
            itertools.islice(code.co_positions(), instruction // 2, None))
        if None in (line, end_line, column, end_column):
            return None
        lines = [linecache.getline(code.co_filename, n) for n in range(line, end_line + 1)]
        lines[-1] = lines[-1][:end_column]
        lines[0] = lines[0][column:]
        match = DOTTED_CALL.match("".join(lines))
    else:  # 3.10: the first call on the line, where a call in progress is reported
        line = next((line for start, end, line in code.co_lines()
                     if start <= instruction < end), None)
        match = line and DOTTED_CALL.search(linecache.getline(code.co_filename, line))
    return re.sub(r"\s", "", match.group(1)) if match else None


def _compiled(function):
    """'module.name' if the function is one of an lgmstm extension module (or
    a method of one of its classes), else None."""
    name = getattr(function, "__module__", None)
    if not isinstance(name, str) or not name.startswith(f"{lgmstm.__name__}."):
        return None
    path = getattr(sys.modules.get(name), "__file__", None) or ""
    if not path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
        return None
    return f"{name}.{getattr(function, '__qualname__', '?')}"


def _compiled_call(frame, instruction):
    """The compiled lgmstm function the frame calls at the instruction
    ('lgmstm._lgm.Network.train'), or None. Looks the callee's dotted name up
    in the frame without running any code of the worker's (getattr_static)."""
    dotted = _callee_at(frame.f_code, instruction)
    if dotted is None:
        return None
    head, *attributes = dotted.split(".")
    namespaces = (frame.f_locals, frame.f_globals, builtins.__dict__)
    obj = next((namespace[head] for namespace in namespaces if head in namespace), None)
    try:
        for attribute in attributes:
            obj = inspect.getattr_static(obj, attribute)
    except AttributeError:
        return None
    return _compiled(obj)


def _cpu_clock():
    """A reader of the calling thread's CPU time that works from any thread,
    or None where there is none (then every sample counts)."""
    try:
        clock = time.pthread_getcpuclockid(threading.get_ident())
        time.clock_gettime(clock)
    except (AttributeError, OSError):
        return None
    return lambda: time.clock_gettime(clock)


def _longest_stay_in_compiled_code(work):
    """Run work() in a thread (its kernels on one OpenMP thread); sample it.

    Returns (most samples counted in a row at one call of the compiled code,
    the function it called, samples of the worker at any such call).
    A stay is a run of consecutive samples showing the same frame object at
    the same instruction; a new call of the compiled code comes from a new
    frame (lgmstm calls it once per function call), so two calls are never
    one stay. A stay's first sample counts, and each next one during which
    the worker used CPU time.
    """
    outcome, started = {}, threading.Event()

    def body():
        try:
            outcome["cpu"] = _cpu_clock()
            started.set()
            lgmstm.set_num_threads(1)  # a core left for the sampler, one long call
            work()
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc
        finally:
            started.set()

    def cpu_time():
        try:
            return outcome["cpu"]() if outcome.get("cpu") else None
        except OSError:  # the worker has ended
            return None

    worker = threading.Thread(target=body)
    worker.start()
    started.wait()
    longest, where, at_calls = 0, "", 0
    held, count, cpu = None, 0, None  # the (frame, instruction) of the stay, its count
    try:
        while worker.is_alive():
            frame = sys._current_frames().get(worker.ident)
            # f_lasti read once: the worker may move on while this thread reads
            instruction = frame.f_lasti if frame is not None else -1
            last_cpu, cpu = cpu, cpu_time()
            if held is not None and held[0] is frame and held[1] == instruction:
                if cpu is None or last_cpu is None or cpu - last_cpu > WAITING_CPU:
                    count += 1
            else:
                called = frame is not None and _compiled_call(frame, instruction)
                # holding the frame keeps it unique
                held, count = ((frame, instruction, called), 1) if called else (None, 0)
            if held is not None:
                at_calls += 1
                if count > longest:
                    longest, where = count, held[2]
            frame = None
            time.sleep(SAMPLE_PAUSE)
    finally:
        worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return longest, where, at_calls


def _assert_gil_released(work, what):
    longest, where, at_calls = _longest_stay_in_compiled_code(work)
    assert at_calls, f"{what}: never caught calling a compiled module of lgmstm"
    print(f"\n{what}: parked at {where} for {longest} counted samples in a row")
    assert longest >= PARKED_SAMPLES, \
        f"{what}: at most {longest} counted samples in a row found the worker computing in " \
        f"{where}: the compiled code held the GIL while it ran"


# calls of about 0.2 s here (on one thread): tens of samples even where a
# sleep lasts 15 ms (Windows on Python < 3.11)
KERNEL_DIMS = {"dense_forward": dict(n=10000, i=512, o=512),
               "dense_backward": dict(n=6000, i=384, o=384),
               "rnn_forward": dict(n=3000, t=20, i=64, h=128),
               "rnn_backward": dict(n=2000, t=20, i=64, h=128)}


@pytest.mark.parametrize("kernel", KERNELS, ids=str)
def test_kernel_calls_release_the_gil(kernel):
    dims = dict(DIMS, **KERNEL_DIMS.get(kernel.name, dict(n=2000, i=128, o=128, t=20, h=128)))
    arrays = make_arrays(kernel, dims, np.dtype(np.float64), np.random.default_rng(0))
    _assert_gil_released(lambda: call(BACKENDS["kernels"], kernel, arrays), kernel.name)


# fit: epochs of about 0.2 s, so that each call of the compiled code (a block of
# epochs, at least one) lasts that long

def _lgm(n):
    rng = np.random.default_rng(0)
    X, Y = rng.uniform(-1, 1, (n, 64)), rng.uniform(-0.8, 0.8, (n, 4))
    return lgmstm.LGM([64, 256, 256, 4], seed=0), X, Y


def _stm(n):
    rng = np.random.default_rng(0)
    X, Y = rng.uniform(-1, 1, (n, 20, 16)), rng.uniform(-0.8, 0.8, (n, 20, 4))
    return lgmstm.STM(16, 64, 4, seed=0), X, Y


def _fit(make, n):
    model, X, Y = make(n)
    return lambda: model.fit(X, Y, epochs=2, lr=0.01)


def _predict(make, n):
    model, X, _ = make(n)
    return lambda: model.predict(X)


MODEL_WORK = {"LGM.fit": lambda: _fit(_lgm, 6000), "LGM.predict": lambda: _predict(_lgm, 20000)}
if HAS_STM:
    MODEL_WORK.update({"STM.fit": lambda: _fit(_stm, 3000),
                       "STM.predict": lambda: _predict(_stm, 12000)})


@pytest.mark.parametrize("what", MODEL_WORK)
def test_training_and_prediction_release_the_gil(what):
    """So two Python threads can train or predict in parallel."""
    _assert_gil_released(MODEL_WORK[what](), what)


def test_reset_state_waits_for_a_stateful_fit_in_another_thread():
    """reset_state while another thread fits a stateful STM: it waits for the
    fit, then forgets (one serial order: fit, then reset), where it once
    reset the memory under the fit, whose final states then replaced it."""
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((8, 20, 4)), rng.uniform(-0.5, 0.5, (8, 20, 2))
    model = lgmstm.STM(4, 16, 2, stateful=True, seed=0)
    model.predict(X)   # a working memory to forget
    started, resetting = threading.Event(), threading.Event()

    def callback(epoch, loss):
        if epoch == 0:
            started.set()
            resetting.wait(10)
            time.sleep(0.1)   # reset_state is under way in the other thread

    worker = threading.Thread(target=lambda: model.fit(X, Y, epochs=3, lr=0.01,
                                                       callback=callback))
    worker.start()
    assert started.wait(30)
    resetting.set()
    model.reset_state()   # waits for the fit
    worker.join()
    assert model.state is None


# -- fork ------------------------------------------------------------------------------

def _child_work(seed):
    rng = np.random.default_rng(seed)
    X, W, b = rng.standard_normal((3000, 64)), rng.standard_normal((64, 64)), np.zeros(64)
    A = lgmstm.kernels.dense_forward(X, W, b)
    model = lgmstm.LGM([64, 32, 4], seed=seed)
    losses = model.fit(X, np.tanh(X[:, :4]), epochs=3, lr=0.05)
    return lgmstm.get_num_threads(), A, losses, model.predict(X)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_fork_pool_after_threaded_kernels():
    saved = lgmstm.get_num_threads()
    lgmstm.set_num_threads(2)
    try:
        parent = [_child_work(seed) for seed in range(4)]  # runs OpenMP teams of 2
    finally:
        lgmstm.set_num_threads(saved)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pool = multiprocessing.get_context("fork").Pool(2)
    try:
        children = pool.map_async(_child_work, range(4)).get(timeout=120)
    except multiprocessing.TimeoutError:
        pytest.fail("the forked workers hung")
    finally:
        pool.terminate()
        pool.join()
    for (threads, *results), (_, *expected) in zip(children, parent):
        assert threads == 1
        for got, want in zip(results, expected):
            np.testing.assert_array_equal(got, want)
