"""lgmstm.dask on a real cluster: a scheduler and two worker processes of one
thread each (distributed.LocalCluster), against the same calls run here.

Skipped only when dask[array] or distributed is not installed
(``pip install "lgmstm[dask]"``).
"""
import os
import pickle
import re
import signal
import sys

import threading
import time

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

import lgmstm  # noqa: E402
import lgmstm.dask as lgmstm_dask  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    # Not the default client: each test says which client (or none) it uses.
    with distributed.Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2)
        yield client


def copy(model):
    return pickle.loads(pickle.dumps(model))


def assert_same_model(a, b):
    assert a.params.keys() == b.params.keys()
    for name in a.params:
        np.testing.assert_array_equal(a.params[name], b.params[name], strict=True)
    np.testing.assert_array_equal(a.history_, b.history_, strict=True)


def regression(rng, shape, n_out):
    X = rng.uniform(-1, 1, shape)
    weights = rng.uniform(-1, 1, (shape[-1], n_out))
    return X, np.tanh(X @ weights)


# -- predict ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_predict_lgm_equals_predict_on_the_whole_array(client, dtype):
    rng = np.random.default_rng(0)
    model = lgmstm.LGM([10, 5, 2], dtype=dtype, seed=0)
    X = rng.standard_normal((1000, 10))
    # Blocks starting at multiples of 64 samples (the model's row quantum) are kept.
    lazy = lgmstm_dask.predict(model, da.from_array(X, chunks=((320, 128, 384, 168), 10)))
    assert lazy.shape == (1000, 2) and lazy.dtype == dtype
    assert lazy.chunks == ((320, 128, 384, 168), (2,))
    np.testing.assert_array_equal(client.compute(lazy).result(), model.predict(X),
                                  strict=True)


@pytest.mark.parametrize("return_sequences", [True, False])
def test_predict_stm_with_lengths_equals_predict_on_the_whole_array(client,
                                                                    return_sequences):
    rng = np.random.default_rng(1)
    model = lgmstm.STM(10, 5, 2, return_sequences=return_sequences, seed=0)
    X = rng.standard_normal((300, 20, 10))
    lengths = rng.integers(0, 21, 300)
    chunks = (100, 64, 136)
    lazy = lgmstm_dask.predict(model, da.from_array(X, chunks=(chunks, 20, 10)),
                               lengths=da.from_array(lengths, chunks=(chunks,)))
    expected = model.predict(X, lengths=lengths)
    assert lazy.shape == expected.shape
    np.testing.assert_array_equal(client.compute(lazy).result(), expected, strict=True)
    plain = lgmstm_dask.predict(model, da.from_array(X, chunks=(chunks, 20, 10)))
    np.testing.assert_array_equal(client.compute(plain).result(), model.predict(X),
                                  strict=True)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_odd_blocks_on_the_blas_path_give_the_whole_arrays_bits(client, dtype):
    # Networks on the BLAS path, whose bits for a sample depend on the
    # kernels' task it falls in, and blocks that do not start at multiples
    # of the row quantum: predict cuts them so, and the result is still
    # model.predict over the whole array, bit for bit.
    rng = np.random.default_rng(2)
    lgm = lgmstm.LGM([10, 64, 64, 1], dtype=dtype, seed=0)
    X = rng.standard_normal((1001, 10))
    lazy = lgmstm_dask.predict(lgm, da.from_array(X, chunks=((7, 333, 1, 660), 10)))
    assert all(rows % 64 == 0 for rows in lazy.chunks[0][:-1])
    np.testing.assert_array_equal(client.compute(lazy).result(), lgm.predict(X), strict=True)
    stm = lgmstm.STM(6, 48, 3, dtype=dtype, seed=0)
    X = rng.standard_normal((301, 9, 6))
    lengths = rng.integers(0, 10, 301)
    chunks = (50, 37, 100, 114)
    lazy = lgmstm_dask.predict(stm, da.from_array(X, chunks=(chunks, 9, 6)),
                               lengths=da.from_array(lengths, chunks=(chunks,)))
    np.testing.assert_array_equal(client.compute(lazy).result(),
                                  stm.predict(X, lengths=lengths), strict=True)


def test_predict_embeds_one_copy_of_the_model_taken_at_the_call():
    rng = np.random.default_rng(3)
    model = lgmstm.LGM([4, 3, 1], seed=0)
    X = rng.standard_normal((100, 4))
    before = model.predict(X)
    lazy = lgmstm_dask.predict(model, da.from_array(X, chunks=10))
    graph = dict(lazy.__dask_graph__())
    held = [task.value for task in graph.values()
            if isinstance(getattr(task, "value", None), lgmstm.LGM)]
    assert len(held) == 1 and held[0] is not model     # one copy for ten blocks
    model.fit(X, np.tanh(X[:, :1]), epochs=5, lr=0.1)   # changes the model, not the copy
    # The local threaded scheduler (no client here): the same bits.
    np.testing.assert_array_equal(lazy.compute(scheduler="threads"), before, strict=True)


def test_predict_on_an_empty_block():
    model = lgmstm.LGM([3, 2], seed=0)
    X = np.random.default_rng(4).standard_normal((10, 3))
    lazy = lgmstm_dask.predict(model, da.from_array(X, chunks=((0, 4, 0, 6), 3)))
    np.testing.assert_array_equal(lazy.compute(scheduler="sync"), model.predict(X),
                                  strict=True)


# -- fit_many ---------------------------------------------------------------------------
# fit_many sends a pair of arrays inside each task that trains on it while
# its copies total at most EMBED_BYTES, else once, to a task that holds it
# (replicated to every worker when several tasks train on it): both ways.
DATA_WAYS = pytest.mark.parametrize("embed_bytes", [lgmstm_dask.EMBED_BYTES, 0],
                                    ids=["inside-tasks", "held-by-a-task"])


@DATA_WAYS
def test_fit_many_equals_fitting_each_model_here(client, embed_bytes, monkeypatch):
    monkeypatch.setattr(lgmstm_dask, "EMBED_BYTES", embed_bytes)
    rng = np.random.default_rng(5)
    shared = regression(rng, (100, 20, 10), 2)                 # one pair for three STMs
    lgm_data = regression(rng, (200, 6), 1)
    pair = regression(rng, (80, 20, 10), 2)
    # Keys of their own (hash=False): not those of the data another run of
    # this test scattered, which that run's futures release at their end.
    [future_pair] = client.scatter([pair], hash=False)                  # a future of a pair
    pair_of_futures = tuple(client.scatter(list(pair), hash=False))     # a pair of futures
    models = [lgmstm.STM(10, 5, 2, seed=i) for i in range(3)] + \
             [lgmstm.LGM([6, 8, 1], seed=3), lgmstm.STM(10, 5, 2, seed=4),
              lgmstm.STM(10, 5, 2, seed=5)]
    datasets = [shared, shared, shared, lgm_data, future_pair, pair_of_futures]
    originals = [copy(model) for model in models]
    calls = []
    fitted = lgmstm_dask.fit_many(models, datasets, client=client, epochs=15, lr=0.01,
                                  batch_size=32, optimizer="adam",
                                  progress=lambda done, total: calls.append((done, total)))
    # One call per task, as its models come back (tasks of guided sizes).
    batches = lgmstm_dask._batches(6, None, 2)
    assert len(calls) == len(batches) and calls[-1] == (6, 6)
    assert all(total == 6 for _, total in calls)
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    local_data = datasets[:4] + [pair, pair]
    for model, original, data, result in zip(models, originals, local_data, fitted):
        assert type(result) is type(model)
        assert_same_model(model, original)                      # not changed
        expected = copy(original)
        expected.fit(*data, epochs=15, lr=0.01, batch_size=32, optimizer="adam")
        assert_same_model(result, expected)
        np.testing.assert_array_equal(result.predict(data[0]), expected.predict(data[0]),
                                      strict=True)


def test_fit_many_gives_models_that_share_a_generator_a_copy_each(client):
    """As documented: models made with one Generator each take a copy of it
    as it was at the call, and so draw the same shuffles (here, fitted one
    after another, they draw in turn from the one generator)."""
    rng = np.random.default_rng(8)
    X, Y = regression(rng, (40, 4), 1)
    shared = np.random.default_rng(9)
    models = [lgmstm.LGM([4, 6, 1], seed=shared) for _ in range(2)]
    settings = dict(epochs=3, lr=0.05, batch_size=8)
    originals = [copy(model) for model in models]
    fitted = lgmstm_dask.fit_many(models, [(X, Y)] * 2, client=client, **settings)
    for original, result in zip(originals, fitted):
        expected = copy(original)               # a copy of its own of the generator
        expected.fit(X, Y, **settings)
        assert_same_model(result, expected)
    np.testing.assert_equal(fitted[0]._rng.bit_generator.state,
                            fitted[1]._rng.bit_generator.state)
    in_turn = pickle.loads(pickle.dumps(models))   # unchanged, still sharing one generator
    for model in in_turn:
        model.fit(X, Y, **settings)
    assert in_turn[0]._rng is in_turn[1]._rng
    assert not np.array_equal(in_turn[1].params["layer0.weight"],
                              fitted[1].params["layer0.weight"])


@pytest.mark.parametrize("embed_bytes", [0, 3 * 200 * 7 * 8], ids=["held", "too-many-copies"])
def test_fit_many_sends_the_same_two_arrays_once(client, embed_bytes, monkeypatch):
    # Pairs made apart around the same two arrays are one pair: held by one
    # task (not embedded six times, not six tasks), whether every pair is
    # held (EMBED_BYTES 0) or one copy would fit inside a task and the six
    # tasks' copies do not (3 copies' worth); copies of X are pairs of their own.
    monkeypatch.setattr(lgmstm_dask, "EMBED_BYTES", embed_bytes)
    X, Y = regression(np.random.default_rng(12), (200, 6), 1)
    models = [lgmstm.LGM([6, 4, 1], seed=i) for i in range(6)]

    def data_tasks(datasets):
        with distributed.get_task_stream(client=client) as stream:
            fitted = lgmstm_dask.fit_many(models, datasets, client=client, models_per_task=1,
                                          epochs=3, lr=0.1)
        for model, (X_i, Y_i), result in zip(models, datasets, fitted):
            expected = copy(model)
            expected.fit(X_i, Y_i, epochs=3, lr=0.1)
            assert_same_model(result, expected)
        return len({task["key"] for task in stream.data
                    if str(task["key"]).startswith("lgmstm-data-")})

    assert data_tasks([(X, Y) for _ in models]) == 1
    assert data_tasks([(X.copy(), Y) for _ in models]) == (6 if embed_bytes == 0 else 0)


@pytest.mark.parametrize("n_models, n_slots", [(1, 2), (6, 2), (200, 2), (1000, 16), (7, 1),
                                               (1000, 8), (40, 2)])
def test_fit_many_cuts_guided_batches(n_models, n_slots):
    batches = lgmstm_dask._batches(n_models, None, n_slots)
    # Consecutive, every model once, and after the heads never growing: each
    # task takes a 1/(share n_slots) share of the models left, no fewer than
    # 1/(tail n_slots) of all; what would leave a smaller sliver at the end
    # takes the rest, in one task or in two halves; the first task of each
    # slot (a head) a 1/head part of its share.
    share, tail = lgmstm_dask.GUIDED_SHARE, lgmstm_dask.GUIDED_TAIL_TASKS
    head = lgmstm_dask.GUIDED_HEAD
    assert [i for batch in batches for i in batch] == list(range(n_models))
    sizes = [len(batch) for batch in batches]
    after_heads = sizes[n_slots:]
    assert all(a >= b for a, b in zip(after_heads, after_heads[1:]))
    smallest = max(1, n_models // (tail * n_slots))
    left = n_models
    for k, size in enumerate(sizes):
        guided = min(left, max(smallest, -(-left // (share * n_slots))))
        if k < n_slots:
            guided = -(-guided // head)
        if 0 < left - guided < smallest:
            assert size == (left if left <= smallest else left - left // 2)
        else:
            assert size == guided
        left -= size
    assert left == 0
    if n_models == 200 and n_slots == 2:   # the sizes docs/dask.md gives
        assert sizes == [13, 12, 44, 33, 25, 19, 14, 10, 8, 6, 6, 5, 5]


def test_fit_many_reads_the_clusters_shape_from_its_cluster_object(client):
    """The workers and thread slots that cut fit_many's tasks: a cluster
    object's own copy (kept up to date by the scheduler's events), without
    a round trip; asked of the scheduler for a client without a cluster
    object, or while the copy holds no worker."""
    workers = client.scheduler_info()["workers"]
    actual = (len(workers), sum(worker["nthreads"] for worker in workers.values()))
    assert actual == (2, 2)
    asked = []

    class Cluster:
        def __init__(self, info):
            self.scheduler_info = info

    class Asking:
        def __init__(self, cluster):
            self.cluster = cluster

        def scheduler_info(self):
            asked.append(True)
            return client.scheduler_info()

    assert lgmstm_dask._cluster_shape(client) == actual
    three = {"workers": {"a": {"nthreads": 4}, "b": {"nthreads": 2}, "c": {"nthreads": 1}}}
    assert lgmstm_dask._cluster_shape(Asking(Cluster(three))) == (3, 7)
    assert not asked
    for cluster in (None, Cluster({"workers": {}}), Cluster({}), Cluster(None)):
        assert lgmstm_dask._cluster_shape(Asking(cluster)) == actual
    assert len(asked) == 4


def test_fit_many_uses_the_workers_a_cluster_was_scaled_to(monkeypatch):
    """Scaled from 1 worker to 2 just before the call: fit_many cuts its
    tasks for 2 slots and copies a held dataset to both workers, which
    both train (the client's own periodic copy of the totals lags: it said
    1 worker here)."""
    monkeypatch.setattr(lgmstm_dask, "EMBED_BYTES", 0)      # held by a task
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster, set_as_default=False) as scaled:
        cluster.scale(2)
        scaled.wait_for_workers(2)
        assert lgmstm_dask._cluster_shape(scaled) == (2, 2)
        X, Y = regression(np.random.default_rng(10), (200, 6), 1)
        models = [lgmstm.LGM([6, 8, 1], seed=i) for i in range(8)]
        with distributed.get_task_stream(client=scaled) as stream:
            fitted = lgmstm_dask.fit_many(models, [(X, Y)] * 8, client=scaled, epochs=30,
                                          lr=0.01)
    workers = {task["worker"] for task in stream.data if "lgmstm-fit" in str(task["key"])}
    assert len(workers) == 2
    assert sum(1 for task in stream.data
               if "lgmstm-fit" in str(task["key"])) == len(lgmstm_dask._batches(8, None, 2))
    expected = copy(models[5])
    expected.fit(X, Y, epochs=30, lr=0.01)
    assert_same_model(fitted[5], expected)


def test_fit_many_cuts_fixed_batches_when_told():
    assert [list(b) for b in lgmstm_dask._batches(7, 3, 2)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_fit_many_with_the_default_client_and_no_models(client):
    with client.as_current():
        assert lgmstm_dask.fit_many([], [], epochs=1, lr=0.1) == []
        model = lgmstm.LGM([2, 1], seed=0)
        X, Y = regression(np.random.default_rng(6), (20, 2), 1)
        [result] = lgmstm_dask.fit_many([model], [(X, Y)], epochs=3, lr=0.1)
    model.fit(X, Y, epochs=3, lr=0.1)
    assert_same_model(result, model)


@DATA_WAYS
def test_a_killed_worker_loses_no_model(client, embed_bytes, monkeypatch):
    monkeypatch.setattr(lgmstm_dask, "EMBED_BYTES", embed_bytes)
    rng = np.random.default_rng(7)
    data = regression(rng, (2000, 10), 1)
    models = [lgmstm.LGM([10, 64, 64, 1], seed=i) for i in range(8)]
    settings = dict(epochs=60, lr=0.01, batch_size=64, optimizer="adam")
    pids = client.run(os.getpid)
    killed = []

    def kill_a_busy_worker(done, total):
        if killed:
            return
        busy = [address for address, keys in client.processing().items() if keys]
        assert busy, "no worker was running a model when one finished"
        os.kill(pids[busy[0]], signal.SIGKILL)
        killed.append((done, busy[0]))

    fitted = lgmstm_dask.fit_many(models, [data] * 8, client=client,
                                  progress=kill_a_busy_worker, **settings)
    assert killed and killed[0][0] < 8
    assert killed[0][1] not in client.scheduler_info()["workers"]    # it is gone
    for model, result in zip(models, fitted):
        model.fit(*data, **settings)
        assert_same_model(result, model)
    client.wait_for_workers(2, timeout=180)     # the nanny's new worker (slow on a busy machine)


# -- threads ----------------------------------------------------------------------------
class ThreadCountingLGM(lgmstm.LGM):
    """An LGM that notes the OpenMP threads (lgmstm.get_num_threads()) its
    fit and partial_fit start on, and predicts that count: what the thread
    test reads back from inside the workers' tasks. At module level, so
    that the workers import it (a model travels as a plain pickle)."""

    threads_seen = None

    def fit(self, X, Y, **settings):
        self.threads_seen = lgmstm.get_num_threads()
        return super().fit(X, Y, **settings)

    def partial_fit(self, X, Y, **settings):
        self.threads_seen = lgmstm.get_num_threads()
        return super().partial_fit(X, Y, **settings)

    def predict(self, X):
        return np.full((len(X), self.layer_sizes[-1]), lgmstm.get_num_threads(), self.dtype)

    def __getstate__(self):
        return {**super().__getstate__(), "threads_seen": self.threads_seen}

    def __setstate__(self, state):
        super().__setstate__(state)
        self.threads_seen = state["threads_seen"]


def _set_task_threads(n_threads):
    """Set the OpenMP count of the worker's task thread (one slot: every
    task runs on that thread) and read it back."""
    if n_threads is not None:
        lgmstm.set_num_threads(n_threads)
    return lgmstm.get_num_threads()


def test_lgmstm_uses_the_workers_thread_slots(client):
    def slots_and_threads():
        slots = distributed.get_worker().state.nthreads
        return slots, lgmstm_dask.task_threads()

    assert client.submit(slots_and_threads, pure=False).result() == (1, 1)

    # The nanny starts its workers with OMP_NUM_THREADS=1, which is already
    # the slot count: put each worker's task thread on 2 first, so that an
    # entry point that did not set the count for its task would run on 2.
    workers = sorted(client.scheduler_info()["workers"])

    def task_thread_counts(n_threads=None):
        return client.gather([client.submit(_set_task_threads, n_threads, workers=[worker],
                                            allow_other_workers=False, pure=False)
                              for worker in workers])

    assert task_thread_counts(2) == [2, 2]
    rng = np.random.default_rng(8)
    X, Y = regression(rng, (100, 3), 1)
    model = ThreadCountingLGM([3, 1], seed=0)
    for threads, expected in ((None, 1), (2, 2)):   # the worker's slots, or as told
        fitted = lgmstm_dask.fit_many([model] * 4, [(X, Y)] * 4, client=client,
                                      threads=threads, models_per_task=1, epochs=2, lr=0.1)
        assert [result.threads_seen for result in fitted] == [expected] * 4
        lazy = lgmstm_dask.predict(model, da.from_array(X, chunks=64), threads=threads)
        assert np.unique(client.compute(lazy).result()).tolist() == [expected]
        trained = lgmstm_dask.partial_fit_dask(
            model, da.from_array(X, chunks=50), da.from_array(Y, chunks=50), epochs=1,
            client=client, threads=threads, lr=0.1)
        assert trained.threads_seen == expected
    assert task_thread_counts() == [2, 2]       # each task gave back the count it found
    task_thread_counts(1)


# The pair's tasks in test_tasks_share_a_workers_thread_slots both read their
# share before either leaves (its worker runs in this process: a module-level
# barrier reaches both, and the function is pickled by reference).
_BOTH_COUNTED = threading.Barrier(2, timeout=30)


def _threads_when(n_running):
    worker = distributed.get_worker()
    deadline = time.monotonic() + 30
    while worker.state.executing_count < n_running and time.monotonic() < deadline:
        time.sleep(0.005)
    threads = lgmstm_dask.task_threads()
    if n_running == 2:
        _BOTH_COUNTED.wait()
    return threads


def test_tasks_share_a_workers_thread_slots():
    # A worker of 2 slots in this process: a task alone takes both, two at
    # once one each; never more threads than slots.
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        assert client.submit(_threads_when, 1, pure=False).result() == 2
        pair = [client.submit(_threads_when, 2, pure=False) for _ in range(2)]
        assert client.gather(pair) == [1, 1]


def test_a_task_gives_back_the_thread_count_it_found():
    before = lgmstm.get_num_threads()
    with lgmstm_dask._running_on(1):
        assert lgmstm.get_num_threads() == 1
    assert lgmstm.get_num_threads() == before
    assert lgmstm_dask.task_threads(3) == 3


# -- partial_fit_dask -------------------------------------------------------------------
def local_partial_fits(model, blocks, epochs, **settings):
    model = copy(model)
    for _ in range(epochs):
        for block in blocks:
            model.partial_fit(*block, **settings)
    return model


def test_partial_fit_dask_lgm_equals_partial_fit_over_the_blocks(client):
    rng = np.random.default_rng(9)
    X, Y = regression(rng, (1000, 6), 2)
    chunks = (300, 0, 250, 450)
    model = lgmstm.LGM([6, 8, 2], seed=0)
    settings = dict(lr=0.01, batch_size=50, optimizer="adam")
    result = lgmstm_dask.partial_fit_dask(
        model, da.from_array(X, chunks=(chunks, 6)), da.from_array(Y, chunks=(chunks, 2)),
        epochs=3, client=client, **settings)
    blocks = [(X[:300], Y[:300]), (X[300:550], Y[300:550]), (X[550:], Y[550:])]
    assert_same_model(result, local_partial_fits(model, blocks, 3, **settings))
    assert_same_model(model, lgmstm.LGM([6, 8, 2], seed=0))    # not changed


def test_partial_fit_dask_stm_with_lengths_and_no_client():
    rng = np.random.default_rng(10)
    X, Y = regression(rng, (200, 12, 3), 2)
    lengths = rng.integers(1, 13, 200)
    model = lgmstm.STM(3, 6, 2, seed=0)
    settings = dict(lr=0.01, batch_size=16, optimizer="momentum", clip_norm=1.0)
    result = lgmstm_dask.partial_fit_dask(
        model, da.from_array(X, chunks=(80, 12, 3)), da.from_array(Y, chunks=(80, 12, 2)),
        lengths=da.from_array(lengths, chunks=80), epochs=2, **settings)
    blocks = [(X[a:a + 80], Y[a:a + 80]) for a in (0, 80, 160)]
    expected = copy(model)
    for _ in range(2):
        for (Xb, Yb), a in zip(blocks, (0, 80, 160)):
            expected.partial_fit(Xb, Yb, lengths=lengths[a:a + 80], **settings)
    assert_same_model(result, expected)


def test_fit_many_takes_each_models_sample_weight(client):
    """(X, Y, sample_weight) triples: each model's fit with its own weights,
    to the bits, beside a pair without."""
    rng = np.random.default_rng(13)
    X, Y = regression(rng, (120, 5), 1)
    weights = [rng.uniform(0, 2, 120), np.r_[np.zeros(60), np.ones(60)]]
    models = [lgmstm.LGM([5, 4, 1], seed=i) for i in range(3)]
    datasets = [(X, Y, weights[0]), (X, Y, weights[1]), (X, Y)]
    fitted = lgmstm_dask.fit_many(models, datasets, client=client, epochs=5, lr=0.05)
    for model, data, result in zip(models, datasets, fitted):
        expected = copy(model)
        expected.fit(X, Y, epochs=5, lr=0.05,
                     sample_weight=data[2] if len(data) == 3 else None)
        assert_same_model(result, expected)
    assert not np.array_equal(fitted[0].predict(X), fitted[2].predict(X))


@pytest.mark.parametrize("with_client", [True, False], ids=["client", "no-client"])
def test_partial_fit_dask_weighs_each_block_by_its_own_weights(client, with_client):
    rng = np.random.default_rng(14)
    X, Y = regression(rng, (300, 4), 2)
    weights = rng.uniform(0, 3, 300)
    model = lgmstm.LGM([4, 6, 2], seed=2)
    result = lgmstm_dask.partial_fit_dask(
        model, da.from_array(X, chunks=(120, 4)), da.from_array(Y, chunks=(120, 2)),
        sample_weight=da.from_array(weights, chunks=120), epochs=2, lr=0.05,
        client=client if with_client else None)
    expected = copy(model)
    for _ in range(2):
        for a in (0, 120, 240):
            expected.partial_fit(X[a:a + 120], Y[a:a + 120], lr=0.05,
                                 sample_weight=weights[a:a + 120])
    assert_same_model(result, expected)


def test_partial_fit_dask_releases_its_blocks_when_a_block_fails(client, cluster):
    """A block that fails on a worker (NaN in X, which partial_fit refuses)
    raises here, and the blocks the call computed or prefetched do not stay
    in the cluster's memory."""
    X = np.zeros((40, 4))
    X[25] = np.nan
    before = scheduler_tasks(cluster)
    with pytest.raises(ValueError, match=r"X and Y must be finite \(no NaN or inf\)"):
        lgmstm_dask.partial_fit_dask(lgmstm.LGM([4, 2]), da.from_array(X, chunks=10),
                                     da.zeros((40, 2), chunks=10), epochs=1, lr=0.1,
                                     client=client)
    deadline = time.monotonic() + 10
    while scheduler_tasks(cluster) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_nothing_submitted(cluster, before)


def test_partial_fit_dask_on_the_default_client(client, capsys):
    rng = np.random.default_rng(11)
    X, Y = regression(rng, (120, 4), 1)
    model = lgmstm.LGM([4, 3, 1], seed=1)
    with client.as_current():
        result = lgmstm_dask.partial_fit_dask(model, da.from_array(X, chunks=50),
                                              da.from_array(Y, chunks=50), epochs=2, lr=0.05,
                                              verbose=True)
    blocks = [(X[a:a + 50], Y[a:a + 50]) for a in (0, 50, 100)]
    assert_same_model(result, local_partial_fits(model, blocks, 2, lr=0.05))
    # verbose: each epoch's mean of the blocks' losses, on stderr.
    here, losses = copy(model), []
    for _ in range(2):
        for block in blocks:
            losses.append(here.partial_fit(*block, lr=0.05).history_[0])
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        f"partial_fit_dask: epoch {epoch + 1}, mean block loss "
        f"{np.mean(losses[3 * epoch:3 * epoch + 3]):.6g}" for epoch in range(2)]


def test_fit_many_verbose_counts_the_models_fitted_on_stderr(client, capsys):
    X, Y = regression(np.random.default_rng(13), (40, 3), 1)
    models = [lgmstm.LGM([3, 2, 1], seed=i) for i in range(5)]
    calls = []
    lgmstm_dask.fit_many(models, [(X, Y)] * 5, client=client, models_per_task=2, epochs=2,
                         lr=0.1, verbose=True,
                         progress=lambda done, total: calls.append(done))
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("\r") and err.endswith("\n")
    counts = err[1:-1].split("\r")     # one line, rewritten as each task's models come back
    assert len(counts) == 3 and calls[-1] == 5
    for line, done in zip(counts, calls):
        # The elapsed time is printed, not judged: only its format is checked.
        assert re.fullmatch(rf"fit_many: {done}/5 models fitted, \d+\.\d s", line), line


# -- the search under joblib's dask backend ------------------------------------------------
def assert_same_search_on_the_cluster(client, search, X, y):
    """search(n_jobs) fitted here and under joblib's dask backend: the same
    parameters drawn, scores, best parameters and best model's outputs."""
    import joblib

    local = search(1).fit(X, y)
    with client.as_current(), joblib.parallel_backend("dask"), \
            distributed.get_task_stream(client=client) as tasks:
        remote = search(-1).fit(X, y)
    assert tasks.data                   # the fits ran on the cluster
    assert remote.best_params_ == local.best_params_
    assert remote.cv_results_["params"] == local.cv_results_["params"]
    for key in ("mean_test_score", "split0_test_score", "split2_test_score"):
        np.testing.assert_array_equal(remote.cv_results_[key], local.cv_results_[key])
    np.testing.assert_array_equal(remote.predict(X), local.predict(X), strict=True)
    return local, remote


def test_grid_search_under_joblibs_dask_backend_equals_a_local_search(client):
    pytest.importorskip("sklearn")
    from sklearn.model_selection import GridSearchCV, KFold

    from lgmstm.datasets import load_diabetes
    from lgmstm.sklearn import LGMRegressor

    X, y, _ = load_diabetes()
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    grid = {"hidden_layer_sizes": [(2,), (8,)], "learning_rate_init": [0.003, 0.01]}

    def search(n_jobs):
        return GridSearchCV(LGMRegressor(max_iter=20, random_state=0), grid,
                            cv=KFold(3, shuffle=True, random_state=0), n_jobs=n_jobs)

    assert_same_search_on_the_cluster(client, search, X, y)


def test_randomized_search_of_a_classifier_under_joblibs_dask_backend(client):
    pytest.importorskip("sklearn")
    from scipy.stats import loguniform
    from sklearn.datasets import load_iris
    from sklearn.model_selection import RandomizedSearchCV, StratifiedKFold

    from lgmstm.sklearn import LGMClassifier

    X, y = load_iris(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    space = {"hidden_layer_sizes": [(3,), (8,), (16,)],
             "learning_rate_init": loguniform(1e-3, 1e-1), "alpha": [1e-4, 1e-2]}

    def search(n_jobs):
        return RandomizedSearchCV(LGMClassifier(max_iter=15, random_state=0), space, n_iter=4,
                                  cv=StratifiedKFold(3, shuffle=True, random_state=0),
                                  random_state=0, n_jobs=n_jobs)

    local, remote = assert_same_search_on_the_cluster(client, search, X, y)
    assert len({params["learning_rate_init"] for params in local.cv_results_["params"]}) == 4
    np.testing.assert_array_equal(remote.predict_proba(X), local.predict_proba(X), strict=True)


# -- bad input: a clear error before any task ----------------------------------------------
def scheduler_tasks(cluster):
    return set(cluster.scheduler.tasks)


def assert_nothing_submitted(cluster, before):
    """No task the scheduler did not hold before (earlier tests' tasks may
    have been released since: the set may only shrink)."""
    new = scheduler_tasks(cluster) - before
    assert not new, f"tasks submitted: {sorted(new)}"


BAD_PREDICTS = [
    (lambda: (lgmstm.LGM([4, 1]), np.zeros((10, 4)), None), TypeError,
     r"X must be a dask.array.Array of shape \(n_samples, n_in\), got numpy.ndarray"),
    (lambda: (lgmstm.LGM([4, 1]), da.zeros((10, 4), chunks=(5, 2)), None), ValueError,
     r"X must be chunked along samples \(axis 0\) only, but it is split along features "
     r"\(axis 1: chunks \(2, 2\)\)"),
    (lambda: (lgmstm.STM(4, 3, 1), da.zeros((10, 6, 4), chunks=(5, 3, 4)), None),
     ValueError, r"split along steps \(axis 1: chunks \(3, 3\)\)"),
    (lambda: (lgmstm.STM(4, 3, 1, stateful=True), da.zeros((10, 6, 4), chunks=5), None),
     ValueError, "this STM is stateful"),
    (lambda: (lgmstm.LGM([4, 1]), da.zeros((10, 3), chunks=5), None), ValueError,
     r"X must have shape \(n_samples, n_in\) with n_in = 4, got \(10, 3\)"),
    (lambda: (lgmstm.LGM([4, 1]), da.zeros((10, 6, 4), chunks=5), None), ValueError,
     r"X must have shape \(n_samples, n_in\), got a 3-D dask array"),
    (lambda: (lgmstm.STM(4, 3, 1), da.zeros((10, 6, 4), chunks=(5, 6, 4)),
              da.zeros(10, dtype=int, chunks=4)), ValueError,
     r"lengths and X must be chunked alike along samples \(axis 0\): X has chunks "
     r"\(5, 5\), lengths has \(4, 4, 2\)"),
    (lambda: (lgmstm.STM(4, 3, 1), da.zeros((10, 6, 4), chunks=(5, 6, 4)), np.full(10, 6)),
     TypeError, "lengths must be a dask.array.Array"),
    (lambda: ("model", da.zeros((10, 4), chunks=5), None), TypeError,
     "model must be an lgmstm.LGM or lgmstm.STM, got builtins.str"),
    (lambda: (lgmstm.LGM([4, 1]), da.from_array(np.full((10, 4), "1.5"), chunks=5), None),
     TypeError, "X must have dtype float32 or float64 .* got dtype <U3"),
    (lambda: (lgmstm.STM(4, 3, 1), da.zeros((10, 6, 4), chunks=(5, 6, 4)),
              da.full(10, 6.0, chunks=5)), TypeError,
     "lengths must be an array of integers, got dtype float64"),
]


@pytest.mark.parametrize("case, error, message", BAD_PREDICTS)
def test_bad_predict_input(case, error, message):
    model, X, lengths = case()
    with pytest.raises(error, match=message):
        lgmstm_dask.predict(model, X, lengths=lengths)


def test_bad_partial_fit_dask_input_submits_nothing(client, cluster):
    model = lgmstm.LGM([4, 2])
    X = da.zeros((10, 4), chunks=5)
    before = scheduler_tasks(cluster)
    cases = [
        ((model, X, np.zeros((10, 2))), {}, TypeError,
         r"Y must be a dask.array.Array of shape \(n_samples, n_out\), got numpy.ndarray"),
        ((model, X, da.zeros((10, 2), chunks=4)), {}, ValueError,
         r"Y and X must be chunked alike along samples \(axis 0\): X has chunks \(5, 5\), "
         r"Y has \(4, 4, 2\)"),
        ((model, X, da.zeros((10, 2), chunks=(5, 1))), {}, ValueError,
         r"Y must be chunked along samples \(axis 0\) only, but it is split along outputs"),
        # One output per step of an STM with return_sequences: Y's axis 1 is its steps.
        ((lgmstm.STM(4, 3, 1, return_sequences=True), da.zeros((10, 6, 4), chunks=(5, 6, 4)),
          da.zeros((10, 6), chunks=(5, 3))), {}, ValueError,
         r"Y must be chunked along samples \(axis 0\) only, but it is split along steps "
         r"\(axis 1: chunks \(3, 3\)\)"),
        # Unknown sizes: computing them is the way out, not rechunking.
        ((lgmstm.STM(4, 3, 2), da.zeros((10, 6, 4), chunks=(5, 6, 4)),
          da.zeros((10, 2), chunks=5)),
         {"lengths": da.from_array(np.full(10, 6), chunks=5)[da.arange(10, chunks=5) >= 0]},
         ValueError, r"lengths has chunks of unknown size along samples \(axis 0\): call "
         r"lengths.compute_chunk_sizes\(\) first"),
        ((lgmstm.STM(4, 3, 2), da.zeros((10, 6, 4), chunks=(5, 6, 4))[:, da.arange(6) >= 0],
          da.zeros((10, 2), chunks=5)), {}, ValueError,
         r"X has chunks of unknown size along steps \(axis 1\)"),
        # sample_weight: a dask array chunked as X, of numbers.
        ((model, X, da.zeros((10, 2), chunks=5)), {"sample_weight": np.ones(10)}, TypeError,
         r"sample_weight must be a dask.array.Array of shape \(n_samples,\) chunked as X's "
         r"samples, got numpy.ndarray"),
        ((model, X, da.zeros((10, 2), chunks=5)), {"sample_weight": da.ones(10, chunks=4)},
         ValueError, r"sample_weight and X must be chunked alike along samples"),
        ((model, X, da.zeros((10, 2), chunks=5)), {"sample_weight": da.ones((10, 1), chunks=5)},
         ValueError, r"sample_weight must have shape \(n_samples,\), got a 2-D dask array"),
        ((model, X, da.zeros((10, 2), chunks=5)),
         {"sample_weight": da.from_array(np.full(10, "a"), chunks=5)}, TypeError,
         "sample_weight must have dtype float32 or float64"),
        # A generator's draws cannot be shared by tasks apart.
        ((model, X, da.zeros((10, 2), chunks=5)), {"seed": np.random.default_rng(0)}, TypeError,
         "partial_fit_dask: arguments of LGM.partial_fit: seed must be an int or None here, "
         "got a numpy.random.Generator"),
        ((model, X, da.zeros((10, 2), chunks=5)), {"epochs": -1}, ValueError,
         "epochs must be >= 0, got -1"),
        ((model, X, da.zeros((10, 2), chunks=5)), {"epochs": 1, "learning_rate": 0.1},
         TypeError, "partial_fit_dask: arguments of LGM.partial_fit: .*learning_rate"),
        ((model, X, da.zeros((10, 2), chunks=5)), {"lr": None}, TypeError,
         "missing a required argument: 'lr'"),
        # The model's outputs, the data's dtypes, the arguments' values.
        ((model, X, da.zeros((10, 3), chunks=5)), {}, ValueError,
         r"Y must have shape \(n_samples, n_out\) = \(10, 2\), got \(10, 3\)"),
        ((model, X, da.zeros(10, chunks=5)), {}, ValueError,
         r"Y must have shape \(n_samples, n_out\) = \(10, 2\), got \(10,\)"),
        ((lgmstm.STM(4, 3, 2, return_sequences=True), da.zeros((10, 6, 4), chunks=(5, 6, 4)),
          da.zeros((10, 5, 2), chunks=(5, 5, 2))), {}, ValueError,
         r"Y must have shape \(n_samples, n_steps, n_out\) = \(10, 6, 2\), got \(10, 5, 2\)"),
        ((lgmstm.STM(4, 3, 2, return_sequences=False), da.zeros((10, 6, 4), chunks=(5, 6, 4)),
          da.zeros((10, 6, 2), chunks=(5, 6, 2))), {}, ValueError,
         r"Y must be 2-dimensional, of shape \(n_samples, n_out\) = \(10, 2\), got shape "
         r"\(10, 6, 2\)\. That is one target per step"),
        ((model, X, da.from_array(np.full((10, 2), "a"), chunks=5)), {}, TypeError,
         "Y must have dtype float32 or float64 .* got dtype <U1"),
        ((model, da.from_array(np.full((10, 4), 1 + 1j), chunks=5), da.zeros((10, 2), chunks=5)),
         {}, TypeError, "X must have dtype float32 or float64 .* got dtype complex128"),
        ((lgmstm.STM(4, 3, 2, return_sequences=False), da.zeros((10, 6, 4), chunks=(5, 6, 4)),
          da.zeros((10, 2), chunks=5)), {"lengths": da.full(10, 6.0, chunks=5)}, TypeError,
         "lengths must be an array of integers, got dtype float64"),
        ((model, X, da.zeros((10, 2), chunks=5)), {"lr": -1}, ValueError,
         "partial_fit_dask: arguments of LGM.partial_fit: lr must be finite and > 0, got -1"),
        ((model, X, da.zeros((10, 2), chunks=5)), {"optimizer": "rmsprop"}, ValueError,
         "partial_fit_dask: arguments of LGM.partial_fit: optimizer must be one of"),
        ((model, X, da.zeros((10, 2), chunks=5)), {"momentum": 1.5}, ValueError,
         "LGM.partial_fit: momentum must be"),
        ((model, X, da.zeros((10, 2), chunks=5)), {"batch_size": 0}, ValueError,
         "LGM.partial_fit: batch_size must be >= 1, got 0"),
        ((model, X, da.zeros((10, 2), chunks=5)), {"shuffle": "yes"}, TypeError,
         "LGM.partial_fit: shuffle must be True or False"),
    ]
    for args, extra, error, message in cases:
        settings = {"epochs": 1, "lr": 0.1, **extra}
        if settings["lr"] is None:
            del settings["lr"]
        with pytest.raises(error, match=message):
            lgmstm_dask.partial_fit_dask(*args, client=client, **settings)
    assert_nothing_submitted(cluster, before)


def test_bad_fit_many_input_submits_nothing(client, cluster):
    X, Y = np.zeros((10, 4)), np.zeros((10, 1))
    model = lgmstm.LGM([4, 1])
    before = scheduler_tasks(cluster)
    cases = [
        (([model, model], [(X, Y)]), {}, ValueError,
         "one dataset per model: 2 models, 1 datasets"),
        ((["model"], [(X, Y)]), {}, TypeError, r"models\[0\] must be an lgmstm.LGM"),
        (([model], [X]), {}, TypeError, r"datasets\[0\] must be an \(X, Y\) pair"),
        (([model], [(da.from_array(X), Y)]), {}, TypeError,
         r"datasets\[0\]: X is a dask array"),
        (([model], [(np.zeros((10, 3)), Y)]), {}, ValueError,
         r"datasets\[0\]: X must have shape \(n_samples, n_in\) with n_in = 4"),
        (([model], [(X, Y[:9])]), {}, ValueError, "X has 10 samples but Y has 9"),
        # Y's outputs, the dtypes and the weights, before any task, as X's inputs.
        (([model], [(X, np.zeros((10, 3)))]), {}, ValueError,
         r"datasets\[0\]: Y must have shape \(n_samples, n_out\) = \(10, 1\) or "
         r"\(n_samples,\) = \(10,\), got \(10, 3\) for models\[0\]"),
        (([lgmstm.STM(4, 3, 2, return_sequences=True)], [(np.zeros((10, 5, 4)), np.zeros((10, 2)))]),
         {}, ValueError, r"datasets\[0\]: Y must be 3-dimensional, of shape \(n_samples, "
         r"n_steps, n_out\) = \(10, 5, 2\)"),
        (([model], [(np.full((10, 4), "a"), Y)]), {}, TypeError,
         r"datasets\[0\]: X must have dtype float32 or float64 .* got dtype <U1"),
        (([model], [(X, Y, np.ones(9))]), {}, ValueError,
         "X has 10 samples but sample_weight has 9"),
        (([model], [(X, Y, np.ones((10, 1)))]), {}, ValueError,
         r"datasets\[0\]: sample_weight must have shape \(n_samples,\) = \(10,\), "
         r"got \(10, 1\)"),
        (([model], [(X, Y, np.ones(10), np.ones(10))]), {}, TypeError,
         r"datasets\[0\] must be an \(X, Y\) pair or an \(X, Y, sample_weight\) triple .* "
         r"of length 4"),
        (([model], [(X, Y)]), {"epochs": 1, "lr": 0.1, "sample_weight": np.ones(10)},
         TypeError, r"sample_weight is per model: give each dataset as an \(X, Y, "
         r"sample_weight\) triple"),
        (([model], [(X, Y)]), {"epochs": 1, "lr": 0.1, "seed": np.random.default_rng(0)},
         TypeError, "fit_many's fit_kwargs for LGM.fit: seed must be an int or None here"),
        (([model], [(X, Y)]), {"epochs": 1, "lr": 0.1, "lengths": None}, TypeError,
         "fit_many's fit_kwargs for LGM.fit: .*lengths"),
        (([model], [(X, Y)]), {"lr": 0.1}, TypeError, "missing a required argument: 'epochs'"),
        (([model], [(X, Y)]), {"epochs": 1, "lr": 0.1, "client": "tcp://x"}, TypeError,
         "client must be a distributed.Client or None, got builtins.str"),
        # Values fit would refuse on the workers.
        (([model], [(X, Y)]), {"epochs": 1, "lr": -1}, ValueError,
         "fit_many's fit_kwargs for LGM.fit: lr must be finite and > 0, got -1"),
        (([model], [(X, Y)]), {"epochs": -1, "lr": 0.1}, ValueError,
         "fit_many's fit_kwargs for LGM.fit: epochs must be >= 0, got -1"),
        (([model], [(X, Y)]), {"epochs": 1, "lr": 0.1, "optimizer": "adam", "nesterov": True},
         ValueError, "nesterov=True needs optimizer='momentum', got 'adam'"),
        (([model], [(X, Y)]), {"epochs": 1, "lr": 0.1, "callback": "print"}, TypeError,
         "fit_many's fit_kwargs for LGM.fit: callback must be callable"),
        (([model], [(X, Y)]), {"epochs": 1, "lr": 0.1, "early_stopping": True}, ValueError,
         "early_stopping=True needs a validation set"),
        (([lgmstm.STM(4, 3, 1)], [(np.zeros((10, 5, 4)), np.zeros((10, 5, 1)))]),
         {"epochs": 1, "lr": 0.1, "validation_fraction": 1.5}, ValueError,
         "fit_many's fit_kwargs for STM.fit: validation_fraction must be"),
    ]
    for args, settings, error, message in cases:
        settings = settings or {"epochs": 1, "lr": 0.1}
        settings.setdefault("client", client)
        with pytest.raises(error, match=message):
            lgmstm_dask.fit_many(*args, **settings)
    assert_nothing_submitted(cluster, before)


def test_fit_many_without_a_client_says_how_to_make_one():
    with pytest.raises(ValueError, match=r"fit_many needs a distributed client.*"
                                         r"Client\('tcp://scheduler:8786'\)"):
        lgmstm_dask.fit_many([lgmstm.LGM([2, 1])], [(np.zeros((3, 2)), np.zeros(3))],
                             epochs=1, lr=0.1)


def test_a_clear_import_error_without_dask(monkeypatch):
    monkeypatch.delitem(sys.modules, "lgmstm.dask")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r'pip install "lgmstm\[dask\]"'):
        import lgmstm.dask  # noqa: F401


def test_row_quantum_says_which_blocks_predict_keeps():
    lgm = lgmstm.LGM([10, 64, 64, 1], seed=0)
    assert lgmstm_dask.row_quantum(lgm) == 64
    assert lgmstm_dask.row_quantum(lgmstm.STM(4, 8, 2, seed=0), 20) == 1   # panel layout
    assert lgmstm_dask.row_quantum(lgmstm.STM(4, 48, 2, seed=0), 20) % 64 == 0
    assert lgmstm_dask.row_quantum(lgmstm.LGM([3, 2], backend="numpy", seed=0)) == 1
    X = da.from_array(np.zeros((300, 10)), chunks=((128, 64, 108), 10))
    assert lgmstm_dask.predict(lgm, X).chunks[0] == (128, 64, 108)
    with pytest.raises(TypeError, match="model must be an lgmstm.LGM or lgmstm.STM"):
        lgmstm_dask.row_quantum(object())
    with pytest.raises(ValueError, match="n_steps"):
        lgmstm_dask.row_quantum(lgmstm.STM(4, 48, 2, seed=0), -1)


def test_the_benchs_idle_time_counts_the_workers_time_without_a_fit():
    from lgmstm._bench_dask import _idle_time

    def task(key, worker, start, stop):
        return {"key": key, "worker": worker,
                "startstops": [{"action": "compute", "start": start, "stop": stop}]}

    stream = [task("lgmstm-fit-a-0", "w1", 10.5, 12.0), task("lgmstm-fit-a-5", "w1", 12.25, 13.0),
              task("lgmstm-fit-a-9", "w2", 11.0, 13.5), task("other-key", "w2", 10.0, 11.0)]
    idle = _idle_time(stream, began=10.0, ended=14.0, n_workers=3)
    # w1: 0.5 before, 0.25 between, 1.0 after; w2: 1.0 before, 0.5 after; w3: all 4.0.
    assert idle == pytest.approx({"start": 0.5 + 1.0 + 4.0, "between": 0.25, "end": 1.5})


def test_the_benchs_free_core_figure_is_the_idle_time_of_one_worker(monkeypatch):
    """The reported figure on one worker process: the worker's time without
    a fit over the one-after-another time, for the median call, each part
    printed. A small run (4 models, 2 calls) on a real one-worker cluster."""
    import lgmstm._bench_dask as bench

    measured = {}
    runs_of = bench._fit_many_runs

    def kept(client, n_models, repeats):
        measured["workers"] = len(client.scheduler_info()["workers"])
        measured["runs"] = runs_of(client, n_models, repeats)
        return measured["runs"]

    monkeypatch.setattr(bench, "_fit_many_runs", kept)
    lines = []
    [result] = bench.bench_fit_many_free_core(4, 2, lines.append)
    alones, runs, _, n_workers = measured["runs"]
    assert measured["workers"] == n_workers == 1 and len(alones) == len(runs) == 2
    shares = [sum(idle.values()) / alone for alone, (_, idle) in zip(alones, runs)]
    assert result["each"] == shares and result["met"] is None
    assert result["value"] == shares[bench._median_index(shares)] > 0
    [line] = lines
    idle = {part: f"{seconds * 1e3:.0f}" for part, seconds in result["idle_seconds"].items()}
    assert (f"{result['value']:.1%} of a model's fit; the worker's time without a fit, ms: "
            f"before the first {idle['start']}, between tasks {idle['between']}, after the "
            f"last {idle['end']} (each call: {shares[0]:.1%} {shares[1]:.1%})") in line


def test_the_benchs_memory_check_names_each_sign_of_trouble():
    from lgmstm._bench_dask import memory_trouble

    before = {"tcp://a:1": 10, "tcp://b:2": 20, "tcp://c:3": 30}
    after = {"tcp://a:1": 10, "tcp://b:2": 21, "tcp://d:4": 40}   # b replaced, c gone
    lines = ["2026 - distributed.worker - INFO - Starting Worker",
             "2026 - distributed.nanny.memory - WARNING - Worker tcp://c:3 (pid=30) exceeded "
             "95% memory budget. Restarting...",
             "2026 - distributed.worker.memory - WARNING - Worker is at 81% memory usage. "
             "Pausing worker."]
    events = [(1.0, {"worker": "tcp://c:3", "pid": 30, "rss": 5})]
    trouble = memory_trouble(before, after, lines, events)
    assert trouble[:2] == ["worker tcp://b:2 (pid 20) was restarted or lost",
                           "worker tcp://c:3 (pid 30) was restarted or lost"]
    assert trouble[2:4] == lines[1:]
    assert trouble[4:] == ["restarted for memory: {'worker': 'tcp://c:3', 'pid': 30, 'rss': 5}"]
    assert memory_trouble(before, before, lines[:1], []) == []


def _hold_memory(n_bytes):
    held = np.ones(n_bytes // 8)
    time.sleep(30)
    return float(held[0])


def test_the_benchs_memory_check_sees_a_worker_its_nanny_restarts():
    # The nanny, not the worker, logs a restart for memory; the run's task
    # would run again elsewhere and could complete: the check must see it.
    from lgmstm._bench_dask import cluster_log_lines, memory_trouble

    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  memory_limit=400 * 2**20, dashboard_address=None,
                                  silence_logs=40) as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        pids = client.run(os.getpid)
        assert memory_trouble(pids, client.run(os.getpid), cluster_log_lines(client),
                              client.get_events("worker-restart-memory")) == []
        future = client.submit(_hold_memory, 600 * 2**20, pure=False)
        deadline = time.monotonic() + 60
        while not client.get_events("worker-restart-memory") and time.monotonic() < deadline:
            time.sleep(0.1)
        future.cancel()
        client.wait_for_workers(1, timeout=60)
        trouble = memory_trouble(pids, client.run(os.getpid), cluster_log_lines(client),
                                 client.get_events("worker-restart-memory"))
    [(address, pid)] = pids.items()
    assert trouble[0] == f"worker {address} (pid {pid}) was restarted or lost"
    assert any("exceeded 95% memory budget" in line for line in trouble[1:])
    assert trouble[-1].startswith(f"restarted for memory: {{'worker': '{address}'")
