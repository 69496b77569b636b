"""lgmstm on Dask: many models, predictions over arrays larger than memory,
and training on a stream of blocks, on a laptop or a cluster.

- :func:`predict`: a lazy ``dask.array`` of a model's outputs over a
  ``dask.array`` of inputs chunked along samples.
- :func:`fit_many`: train independent models in parallel on a
  ``distributed`` cluster; each comes back with the bits of a local ``fit``.
- :func:`partial_fit_dask`: stream the blocks of dask arrays through
  ``partial_fit``, in order, one block (and the next one, prefetched) in
  memory at a time.

Inside a Dask worker, lgmstm's tasks take the worker's thread slots, shared
among the tasks running there (see :func:`task_threads`), never all the
machine's cores. Needs ``pip install "lgmstm[dask]"`` (dask[array] and
distributed). See docs/dask.md.
"""
from __future__ import annotations

import inspect
import pickle
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence, Union

import numpy as np
from numpy.typing import NDArray

from ._threads import get_num_threads, set_num_threads
from ._training import check_fit_settings
from ._validation import check_bool, check_int, check_integer_dtype, check_number_dtype
from .lgm import LGM
from .stm import STM

try:
    import dask
    import dask.array as da
    import distributed
    from dask.base import tokenize
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        f"lgmstm.dask needs dask[array] and distributed ({exc}): "
        'install them with `pip install "lgmstm[dask]"`') from exc

__all__ = ["predict", "fit_many", "partial_fit_dask", "task_threads", "row_quantum"]

Model = Union[LGM, STM]


# -- threads inside a task ------------------------------------------------------------
def task_threads(threads: int | None = None) -> int:
    """The OpenMP threads an lgmstm task takes where it runs.

    In a ``distributed`` worker: ``threads`` when given, else the worker's
    thread slots (``distributed.get_worker().state.nthreads``) divided
    among the tasks executing on it at the moment (at least 1): all of them
    for a task running alone, one each when every slot is busy; on the
    recommended shape, processes of one thread each, always 1. Elsewhere:
    ``threads`` when given; else, in a thread other than the main one (the
    local threaded scheduler runs one task per core), 1; else the calling
    thread's :func:`lgmstm.get_num_threads`.

    Results do not depend on it (lgmstm's kernels give the same bits for
    any thread count), only the time.
    """
    if threads is not None:
        return check_int("threads", threads, 1)
    try:
        worker = distributed.get_worker()
    except ValueError:  # not in a worker
        if threading.current_thread() is threading.main_thread():
            return get_num_threads()
        return 1
    slots = int(worker.state.nthreads)
    return max(1, slots // max(1, int(worker.state.executing_count)))


@contextmanager
def _running_on(threads: int | None) -> Iterator[None]:
    """Sets this thread's OpenMP count for a task, and gives back the one it
    found: a worker's threads run other libraries' tasks too."""
    before = get_num_threads()
    wanted = task_threads(threads)
    if wanted != before:
        set_num_threads(wanted)
    try:
        yield
    finally:
        if wanted != before:
            set_num_threads(before)


# -- checks, all before anything is submitted -----------------------------------------
def _describe(value: Any) -> str:
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def _check_model(name: str, model: Any) -> Model:
    if not isinstance(model, (LGM, STM)):
        raise TypeError(f"{name} must be an lgmstm.LGM or lgmstm.STM, got {_describe(model)}")
    return model


def _n_in(model: Model) -> int:
    return model.layer_sizes[0] if isinstance(model, LGM) else model.n_in


def _input_ndim(model: Model) -> tuple[int, str]:
    if isinstance(model, LGM):
        return 2, "(n_samples, n_in)"
    return 3, "(n_samples, n_steps, n_in)"


def _check_dask_array(name: str, value: Any, ndim: int | tuple[int, ...], meaning: str,
                      axes: Callable[[int], tuple[str, ...]] | None = None) -> da.Array:
    """value as a dask array of ndim dimensions, of known size, chunked
    along samples only. axes(ndim): the names of its axes, for the errors
    (default: samples, then steps, then features)."""
    if not isinstance(value, da.Array):
        raise TypeError(
            f"{name} must be a dask.array.Array of shape {meaning}, got {_describe(value)}: "
            f"wrap it with dask.array.from_array({name}, chunks={{0: rows_per_block}})")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if value.ndim not in dims:
        raise ValueError(f"{name} must have shape {meaning}, got a {value.ndim}-D dask array "
                         f"of shape {value.shape}")
    names = (axes or _default_axes)(value.ndim)
    for axis, chunks in enumerate(value.chunks):
        if any(np.isnan(size) for size in chunks):
            raise ValueError(f"{name} has chunks of unknown size along {names[axis]} (axis "
                             f"{axis}): call {name}.compute_chunk_sizes() first")
    for axis in range(1, value.ndim):
        if len(value.chunks[axis]) != 1:
            raise ValueError(
                f"{name} must be chunked along samples (axis 0) only, but it is split along "
                f"{names[axis]} (axis {axis}: chunks {value.chunks[axis]}): rechunk it with "
                f"{name}.rechunk({{{axis}: -1}})")
    return value


def _default_axes(ndim: int) -> tuple[str, ...]:
    return {1: ("samples",), 2: ("samples", "features"),
            3: ("samples", "steps", "features")}[ndim]


def _check_same_rows(name: str, value: da.Array, X: da.Array) -> None:
    if value.chunks[0] != X.chunks[0]:
        raise ValueError(
            f"{name} and X must be chunked alike along samples (axis 0): X has chunks "
            f"{X.chunks[0]}, {name} has {value.chunks[0]}; rechunk {name} with "
            f"{name}.rechunk({{0: X.chunks[0]}})")


def _check_inputs(model: Model, X: Any, lengths: Any) -> tuple[da.Array, da.Array | None]:
    ndim, meaning = _input_ndim(model)
    X = _check_dask_array("X", X, ndim, meaning)
    if X.shape[-1] != _n_in(model):
        raise ValueError(f"X must have shape {meaning} with n_in = {_n_in(model)}, "
                         f"got {X.shape}")
    check_number_dtype("X", X.dtype)
    if lengths is None:
        return X, None
    if isinstance(model, LGM):
        raise TypeError("lengths is for an STM's sequences; this model is an LGM")
    lengths = _check_per_sample("lengths", lengths, X)
    check_integer_dtype("lengths", lengths.dtype, "an array of integers")
    return X, lengths


def _check_per_sample(name: str, value: Any, X: da.Array) -> da.Array:
    """A dask array of one value per sample, chunked as X's samples."""
    if not isinstance(value, da.Array):
        raise TypeError(f"{name} must be a dask.array.Array of shape (n_samples,) chunked "
                        f"as X's samples, got {_describe(value)}: wrap it with "
                        f"dask.array.from_array({name}, chunks=(X.chunks[0],))")
    value = _check_dask_array(name, value, 1, "(n_samples,)")
    _check_same_rows(name, value, X)
    return value


def _target_axes(model: Model) -> Callable[[int], tuple[str, ...]]:
    """The names of the axes of the model's targets Y, by Y's ndim."""
    if isinstance(model, STM) and model.return_sequences:
        return lambda ndim: ("samples", "steps", "outputs")[:ndim]
    return lambda ndim: ("samples", "outputs")[:ndim]


def _target_error(model: Model, Y_shape: tuple[int, ...], n_samples: int,
                  n_steps: int) -> str | None:
    """What is wrong with targets of shape Y_shape for the model's fit on
    n_samples samples (of n_steps steps, for an STM; any for an LGM), or None: the model's
    output shape, whose last axis may be left out for one output."""
    if isinstance(model, LGM):
        n_out = model.layer_sizes[-1]
        shape: tuple[int, ...] = (n_samples, n_out)
    else:
        n_out = model.n_out
        per_step, per_sequence = (n_samples, n_steps, n_out), (n_samples, n_out)
        shape = per_step if model.return_sequences else per_sequence
    if Y_shape == shape or (n_out == 1 and Y_shape == shape[:-1]):
        return None
    error: str = (model._targets_error(Y_shape, n_samples) if isinstance(model, LGM)
                  else model._targets_error(Y_shape, shape, per_step, per_sequence))
    return error


def _check_targets(model: Model, Y: Any, X: da.Array) -> da.Array:
    """Y as the model's fit takes it for X: the model's output shape (the
    last axis may be left out for one output), a dtype it converts."""
    meaning = ("(n_samples, n_steps, n_out)" if isinstance(model, STM) and model.return_sequences
               else "(n_samples, n_out)")
    Y = _check_dask_array("Y", Y, (1, 2, 3) if isinstance(model, STM) else (1, 2), meaning,
                          _target_axes(model))
    check_number_dtype("Y", Y.dtype)
    _check_same_rows("Y", Y, X)
    error = _target_error(model, Y.shape, X.shape[0], X.shape[1] if X.ndim == 3 else 0)
    if error is not None:
        raise ValueError(error)
    return Y


def _check_arguments(kind: type, method: str, where: str, arguments: dict[str, Any],
                     **passed: Any) -> None:
    """arguments bind to the model class's method (fit or partial_fit) after
    X and Y, and their values pass fit's checks that need no data
    (check_fit_settings, which fit runs too): with passed, what partial_fit
    gives fit besides them, and fit's defaults for the rest."""
    try:
        inspect.signature(getattr(kind, method)).bind(None, None, None, **arguments)
    except TypeError as exc:
        raise TypeError(f"{where}: {exc}") from None
    if isinstance(arguments.get("seed"), np.random.Generator):
        # Each task would draw from its own copy of the generator: not the
        # draws of the calls made here one after another, which share it.
        raise TypeError(
            f"{where}: seed must be an int or None here, got a numpy.random.Generator: its "
            f"draws cannot be shared by tasks that run apart; pass an int, or None to use "
            f"each model's own generator (which travels with the model)")
    fit = inspect.signature(LGM.fit if issubclass(kind, LGM) else STM.fit).parameters
    values = {name: parameter.default for name, parameter in fit.items()
              if parameter.default is not inspect.Parameter.empty}
    values.update(arguments, **passed)
    values["validation_data"] = values.get("validation_data") is not None
    taken = inspect.signature(check_fit_settings).parameters
    try:
        check_fit_settings(**{name: values[name] for name in taken if name in values})
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from None


def _client(client: Any, where: str) -> distributed.Client:
    if client is not None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"client must be a distributed.Client or None, got "
                            f"{_describe(client)}")
        return client
    try:
        return distributed.default_client()
    except ValueError:
        raise ValueError(
            f"{where} needs a distributed client and none was found: make one first "
            "(distributed.Client() on this machine, Client('tcp://scheduler:8786') on a "
            "cluster) or pass client=") from None


def _snapshot(model: Model) -> bytes:
    """The model's bits now (parameters, optimizer state, generator): what
    travels to the workers, so that later changes to it do not."""
    return pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)


# -- predict ------------------------------------------------------------------------------
def row_quantum(model: Model, n_steps: int = 1) -> int:
    """The samples each block of :func:`predict`'s X should be a multiple of.

    The kernels cut a batch into tasks of a fixed number of samples, and on
    the BLAS path a sample's bits can depend on the task it falls in.
    Blocks that start at multiples of this number run the tasks one
    ``model.predict`` over the whole array would; :func:`predict`
    rechunks other blocks (a copy of each). 64 or a multiple of it for an
    LGM, for a deep STM and for an STM on the BLAS path; 1 for a
    single-layer STM in the panel layout (up to 64 inputs, 32 hidden units
    and 32 outputs: it predicts each sample alone); 1 for the NumPy
    backend, which promises no whole-array bits. ``n_steps``: an STM's
    steps per sequence (the quantum does not depend on it: the readout runs
    every step apart, in tasks of samples).
    """
    model = _check_model("model", model)
    program = getattr(model._network, "program", None)
    if program is None:
        return 1
    if isinstance(model, LGM):
        return int(program.row_quantum())
    return int(program.row_quantum(check_int("n_steps", n_steps, 0)))


def _whole_array_blocks(X: da.Array, lengths: da.Array | None,
                        quantum: int) -> tuple[da.Array, da.Array | None]:
    """X and lengths as they are when every block starts at a multiple of
    quantum samples; else rechunked along samples to blocks of a multiple of
    quantum (about the largest block's size), so that each block's predict
    runs the kernels' tasks on the samples one predict over the whole array
    would."""
    starts = np.cumsum((0,) + X.chunks[0][:-1])
    if quantum <= 1 or not np.any(starts % quantum):
        return X, lengths
    rows = max(quantum, round(max(X.chunks[0]) / quantum) * quantum)
    return X.rechunk({0: rows}), None if lengths is None else lengths.rechunk({0: rows})


def _predict_block(X: NDArray[Any], *rest: Any, out_shape: tuple[int, ...],
                   threads: int | None) -> NDArray[Any]:
    *lengths, model = rest
    if X.shape[0] == 0:
        return np.empty((0,) + out_shape, model.dtype)
    with _running_on(threads):
        if lengths:
            return model.predict(X, lengths=lengths[0])
        return model.predict(X)


def predict(model: Model, X: da.Array, *, lengths: da.Array | None = None,
            threads: int | None = None) -> da.Array:
    """The model's outputs over a dask array, lazily.

    Parameters
    ----------
    model : LGM or STM
        Not a stateful STM (its working memory would run from block to
        block in no defined order). A copy of the model as it is now goes
        into the graph once; each worker receives it once, whatever the
        number of blocks, and later changes to ``model`` do not reach it.
    X : dask.array.Array
        (n_samples, n_in) for an LGM, (n_samples, n_steps, n_in) for an
        STM, chunked along samples only.
    lengths : dask.array.Array of int, shape (n_samples,), optional
        An STM's sequence lengths, chunked as X's samples.
    threads : int >= 1, optional
        OpenMP threads per block; by default the worker's share
        (:func:`task_threads`).

    Returns
    -------
    dask.array.Array of the model's dtype
        Shaped as ``model.predict`` would return over the whole of X, with
        its bits: ``model.predict(X.compute())``, bit for bit. Chunked along
        samples as X when every block of X starts at a multiple of the
        model's row quantum (64 samples or a multiple of it on the BLAS
        path; 1 for small STMs, which predict each sample alone), else
        rechunked to blocks of such multiples first, since the kernels cut
        a batch into tasks of that many samples and a sample's bits depend
        on the task it is in. Each block is ``model.predict`` of the block.

    Raises
    ------
    TypeError
        model is not an LGM or STM; X or lengths is not a dask array;
        lengths given to an LGM; X of a dtype predict refuses (strings,
        complex...), lengths not of integers.
    ValueError
        A stateful STM; X of the wrong number of dimensions or features;
        X split along steps or features; chunks of unknown size; lengths
        chunked otherwise than X. All before any task is made.
    """
    model = _check_model("model", model)
    if isinstance(model, STM) and model.stateful:
        raise ValueError(
            "predict over a dask array needs a model without working memory: this STM is "
            "stateful, and its state would pass from block to block in no defined order. "
            "Use an STM(..., stateful=False) with the same parameters, or model.predict "
            "on each block in order")
    X, lengths = _check_inputs(model, X, lengths)
    if threads is not None:
        check_int("threads", threads, 1)
    X, lengths = _whole_array_blocks(
        X, lengths, row_quantum(model, X.shape[1] if isinstance(model, STM) else 1))
    blob = _snapshot(model)
    token = tokenize(blob, X.name, None if lengths is None else lengths.name, threads)
    copy = dask.delayed(pickle.loads(blob), name=f"lgmstm-model-{token}", pure=True)
    out_shape: tuple[int, ...]
    if isinstance(model, LGM):
        out_index, out_shape = "ij", (model.layer_sizes[-1],)
        adjust = {"j": model.layer_sizes[-1]}
        X_index = "ij"
    else:
        X_index = "ijk"
        if model.return_sequences:
            out_index, out_shape = "ijk", (X.shape[1], model.n_out)
        else:
            out_index, out_shape = "ik", (model.n_out,)
        adjust = {"k": model.n_out}
    arrays: list[Any] = [X, X_index]
    if lengths is not None:
        arrays += [lengths, "i"]
    return da.blockwise(
        _predict_block, out_index, *arrays, copy, None,
        out_shape=out_shape, threads=threads, adjust_chunks=adjust, dtype=model.dtype,
        concatenate=True, name=f"lgmstm-predict-{token}",
        meta=np.empty((0,) * len(out_index), model.dtype))


# -- fit_many -----------------------------------------------------------------------------
# fit_many's defaults: how its tasks are cut (see _batches) and up to how
# many bytes a dataset's arrays travel inside each task that trains on it.
GUIDED_SHARE = 2
GUIDED_TAIL_TASKS = 16
GUIDED_HEAD = 4
EMBED_BYTES = 16 * 2**20
# How long fit_many copies models before it lets the event-loop thread have
# the GIL (time.sleep(0)). After each model, the switches cost the client
# about 9 ms of CPU per 200 small models, taken from the workers where they
# share its cores; about every 4 such models, the heads start as soon.
GIL_SLICE = 0.2e-3
# How long fit_many leaves the CPU to the client's event loop after it
# sends the heads (see fit_many), before it copies the other models.
HEAD_WAIT = 3e-3


def _dataset(*arrays: Any) -> tuple[Any, ...]:
    return arrays


def _nbytes(data: tuple[Any, ...]) -> int:
    """The bytes of a dataset's arrays (anything else counts as large)."""
    sizes = [getattr(value, "nbytes", None) for value in data]
    if any(not isinstance(size, (int, np.integer)) for size in sizes):
        return EMBED_BYTES + 1
    return int(sum(sizes))  # type: ignore[arg-type]


def _is_dataset(data: Any) -> bool:
    """Whether data has a dataset's form: an (X, Y) pair or an (X, Y,
    sample_weight) triple (a tuple or a list)."""
    return (not isinstance(data, (str, bytes)) and isinstance(data, (tuple, list))
            and len(data) in (2, 3))


def _fit_batch(blobs: list[bytes], datasets: list[Any], arguments: dict[str, Any],
               threads: int | None) -> bytes:
    """One task: fit each model on its data, in order; the fitted models
    pickled together, here in the task: one plain frame for the worker to
    send and the client to take, which unpickles it outside the event loop
    (a list of models would travel as one frame per parameter array, and be
    unpickled on the client's event loop thread, which a LocalCluster's
    scheduler shares)."""
    fitted = []
    aligned: dict[int, Any] = {}   # each array as the kernels take it, once per task
    for blob, data in zip(blobs, datasets):
        model = pickle.loads(blob)
        if not _is_dataset(data):   # from a future: not checked before
            raise TypeError(f"a dataset of fit_many must be an (X, Y) pair or an (X, Y, "
                            f"sample_weight) triple, got {_describe(data)}")
        X, Y, *weights = (_aligned(array, aligned) for array in data)
        with _running_on(threads):
            model.fit(X, Y, **arguments, **({"sample_weight": weights[0]} if weights else {}))
        fitted.append(model)
    return pickle.dumps(fitted, protocol=pickle.HIGHEST_PROTOCOL)


def _aligned(array: Any, done: dict[int, Any]) -> Any:
    """An ndarray that arrived in a message (its bytes anywhere in the
    frame, often not even 8-byte aligned) copied once to aligned memory,
    which the kernels read faster (and fit's fast path takes); anything
    else as it is."""
    if type(array) is not np.ndarray or array.flags.aligned:
        return array
    if id(array) not in done:
        done[id(array)] = np.array(array, order="C")
    return done[id(array)]


def _batches(n_models: int, models_per_task: int | None, n_slots: int) -> list[range]:
    """Consecutive groups of models, one task each.

    models_per_task given: groups of that many. By default, guided sizes:
    each task takes a 1/(2 n_slots) share of the models left (no fewer than
    1/(16 n_slots) of all; a sliver left at the end joins the last task, or
    the last two share the rest), so the first tasks are large (few tasks:
    the scheduler's milliseconds between a worker's tasks are paid by many
    small fits) and the last ones small (the thread slots run out of work
    together: no slot idles while another finishes a large task). Half,
    not all, of an equal share: Dask gives each worker a task ahead of the
    one it runs (worker-saturation), so a slot commits to two tasks at a
    time. Except the first task of each slot, a head of a quarter of its
    share: fit_many copies its models before it sends anything, while the
    slots wait, and sends the large tasks while the heads run.
    """
    if models_per_task is not None:
        return [range(start, min(start + models_per_task, n_models))
                for start in range(0, n_models, models_per_task)]
    slots = max(1, n_slots)
    smallest = max(1, n_models // (GUIDED_TAIL_TASKS * slots))
    batches: list[range] = []
    start = 0
    while start < n_models:
        rest = n_models - start
        size = min(rest, max(smallest, -(-rest // (GUIDED_SHARE * slots))))
        if len(batches) < slots:   # the first task of each slot: a head
            size = -(-size // GUIDED_HEAD)
        if 0 < rest - size < smallest:   # no sliver at the end: the rest in one or two
            size = rest if rest <= smallest else rest - rest // 2
        batches.append(range(start, start + size))
        start += size
    return batches


def _cluster_shape(client: distributed.Client) -> tuple[int, int]:
    """The cluster's workers and thread slots. For a client made from a
    cluster object (``Client(LocalCluster(...))``), the cluster's own copy
    of them (``cluster.scheduler_info``, which the scheduler's events on
    workers joining and leaving keep up to date); else, or while it holds
    no worker, asked of the scheduler: a round trip through the client's
    event loop (0.5-3 ms on a 2-core machine, where that loop also runs a
    LocalCluster's scheduler) before the first task goes, while every slot
    waits."""
    known = getattr(getattr(client, "cluster", None), "scheduler_info", None)
    workers = known.get("workers") if isinstance(known, Mapping) else None
    if not isinstance(workers, Mapping) or not workers:
        workers = client.scheduler_info()["workers"]
    return len(workers), sum(worker["nthreads"] for worker in workers.values())


def _check_dataset(i: int, model: Model, data: Any) -> tuple[Any, ...] | distributed.Future:
    """A dataset of fit_many: a future, or an (X, Y) pair or (X, Y,
    sample_weight) triple whose arrays (those with a shape, and dtype)
    models[i].fit would take: the model's input and output shapes, the
    same samples, numbers. Futures, and values without a shape, are
    checked by fit on the worker."""
    if isinstance(data, distributed.Future):
        return data
    if not _is_dataset(data):
        length = f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""
        raise TypeError(f"datasets[{i}] must be an (X, Y) pair or an (X, Y, sample_weight) "
                        f"triple (arrays or futures), or a future of one, got "
                        f"{_describe(data)}{length}")
    names = ("X", "Y", "sample_weight")[:len(data)]
    for name, value in zip(names, data):
        if isinstance(value, da.Array):
            raise TypeError(
                f"datasets[{i}]: {name} is a dask array; fit_many trains on data in memory: "
                f"pass {name}.compute() or a future of it (client.compute({name})), or "
                "stream it with partial_fit_dask")
        dtype = getattr(value, "dtype", None)
        if isinstance(dtype, np.dtype):
            check_number_dtype(f"datasets[{i}]: {name}", dtype)
    ndim, meaning = _input_ndim(model)
    shapes = [getattr(value, "shape", None) for value in data]
    X_shape = shapes[0]
    if X_shape is None:
        return tuple(data)
    X_shape = tuple(X_shape)
    if len(X_shape) != ndim or X_shape[-1] != _n_in(model):
        raise ValueError(f"datasets[{i}]: X must have shape {meaning} with n_in = "
                         f"{_n_in(model)} for models[{i}], got {X_shape}")
    for name, shape in zip(names[1:], shapes[1:]):
        if shape is not None and len(shape) >= 1 and shape[0] != X_shape[0]:
            raise ValueError(f"datasets[{i}]: X has {X_shape[0]} samples but {name} has "
                             f"{shape[0]}")
    if shapes[1] is not None:
        error = _target_error(model, tuple(shapes[1]), X_shape[0],
                              X_shape[1] if len(X_shape) == 3 else 0)
        if error is not None:
            raise ValueError(f"datasets[{i}]: {error} for models[{i}]")
    if len(data) == 3 and shapes[2] is not None and len(shapes[2]) != 1:
        raise ValueError(f"datasets[{i}]: sample_weight must have shape (n_samples,) = "
                         f"({X_shape[0]},), got {tuple(shapes[2])}")
    return tuple(data)


def fit_many(models: Sequence[Model], datasets: Sequence[Any], *, client: Any = None,
             threads: int | None = None, models_per_task: int | None = None,
             verbose: bool = False,
             progress: Callable[[int, int], Any] | None = None,
             **fit_kwargs: Any) -> list[Model]:
    """Train independent models in parallel on a Dask cluster.

    ``fit_many(models, datasets, epochs=100, lr=0.01)`` runs
    ``models[i].fit(X_i, Y_i, epochs=100, lr=0.01)`` for every i, as tasks
    on the cluster, and returns the fitted models in order. Each is the
    model you passed, as it was at the call (its parameters, optimizer
    state and generator), trained on a worker: the same bits as that
    ``fit`` run here. The models passed in are not changed. Models made
    with one Generator (``seed=rng`` for each) are copied one by one, each
    with a copy of it as it was at the call: they draw the same shuffles,
    where fitted here one after another they would draw in turn from it;
    give each its own seed (``rng.spawn``, or an int each) for different
    ones.

    A worker that dies loses no model: the scheduler runs its tasks again
    elsewhere, from the same copies, to the same bits.

    Parameters
    ----------
    models : sequence of LGM or STM
    datasets : sequence of (X, Y) pairs or (X, Y, sample_weight) triples, or futures of them
        One per model: ``fit(X, Y, sample_weight=sample_weight)``. The
        arrays are in memory or futures of them (or the whole dataset a
        future); not dask arrays (see :func:`partial_fit_dask`). Arrays go
        to the scheduler once per distinct dataset (the same arrays, for
        many models, travel once) and stay there, so that a lost worker's
        data can be sent again;
        for data of more than a few hundred MB per dataset, pass futures of
        tasks that load it (``client.submit(load, path)``), which can run
        again too.
    client : distributed.Client, optional
        Default: the current client (``distributed.default_client()``).
    threads : int >= 1, optional
        OpenMP threads per model; by default the worker's share
        (:func:`task_threads`).
    models_per_task : int >= 1, optional
        Models fitted one after another in one task. By default guided
        sizes, large tasks first and small ones last (about six tasks per
        thread slot of the cluster; see docs/dask.md), which keeps the
        scheduler's cost (a few ms per task) a small part of many small
        fits and the load balanced; 1 for a few long fits, or to see each
        model finish.
    verbose : bool, default False
        Print the count of models fitted to stderr as tasks finish.
    progress : callable(n_done, n_total), optional
        Called here with the count of models fitted as each task finishes
        (e.g. a tqdm bar's update).
    **fit_kwargs
        Passed to every ``fit``: epochs and lr at least.

    Returns
    -------
    list of LGM or STM
        The fitted models, in the order of ``models``.

    Raises
    ------
    TypeError, ValueError
        Before any task is submitted: models not LGMs/STMs, datasets not
        pairs or triples (or a dask array in one), a count mismatch, an
        array whose shape does not fit its model (X's input, Y's outputs,
        their samples, sample_weight's) or whose dtype is not a number's,
        fit_kwargs that fit does not take (or without epochs/lr; or
        sample_weight, which goes in the datasets) or whose values fit
        refuses (those it checks without data: lr, epochs, batch_size,
        optimizer and its settings, callback, ...; a seed that is a
        numpy Generator, whose draws tasks cannot share), no client. Errors of a ``fit`` on a worker
        (e.g. NaN in data that was a future) are raised here when it
        fails, and the other models' tasks are cancelled.
    """
    if isinstance(models, (str, bytes)) or not isinstance(models, Sequence):
        raise TypeError(f"models must be a sequence of LGM/STM models, got {_describe(models)}")
    if isinstance(datasets, (str, bytes)) or not isinstance(datasets, Sequence):
        raise TypeError(f"datasets must be a sequence of (X, Y) pairs or (X, Y, "
                        f"sample_weight) triples, got "
                        f"{_describe(datasets)}")
    models = [_check_model(f"models[{i}]", model) for i, model in enumerate(models)]
    if len(datasets) != len(models):
        raise ValueError(f"datasets must hold one dataset per model: {len(models)} "
                         f"models, {len(datasets)} datasets")
    checked = [_check_dataset(i, model, data)
               for i, (model, data) in enumerate(zip(models, datasets))]
    if "sample_weight" in fit_kwargs:
        raise TypeError("fit_many's fit_kwargs: sample_weight is per model: give each dataset "
                        "as an (X, Y, sample_weight) triple")
    for kind in {type(model) for model in models}:
        _check_arguments(kind, "fit", f"fit_many's fit_kwargs for {kind.__name__}.fit",
                         fit_kwargs)
    if threads is not None:
        check_int("threads", threads, 1)
    if models_per_task is not None:
        check_int("models_per_task", models_per_task, 1)
    verbose = check_bool("verbose", verbose)
    if progress is not None and not callable(progress):
        raise TypeError(f"progress must be callable or None, got {_describe(progress)}")
    client = _client(client, "fit_many")
    if not models:
        return []

    run = uuid.uuid4().hex
    n_workers, n_slots = _cluster_shape(client)
    batches = _batches(len(models), models_per_task, n_slots)
    # A dataset in memory travels inside each task that trains on it when
    # its copies are small together: no task to hold it and no round trip
    # before the fits start (the scheduler keeps it with the tasks, to run
    # them again when a worker is lost). A larger one goes once, to a task
    # that holds it, replicated to every worker when several tasks train on
    # it (held by one worker, it would draw every task there: the scheduler
    # runs a task where its data is, and moves tasks away only slowly).
    # A dataset's identity: the same arrays (or futures), in one tuple or in
    # many ([(X, Y)] * n and [(X, Y) for ...] alike).
    pair_of = [None if isinstance(data, distributed.Future) else tuple(map(id, data))
               for data in checked]
    tasks_using: dict[Any, int] = {}
    for batch in batches:
        for same in {pair_of[i] for i in batch} - {None}:
            tasks_using[same] = tasks_using.get(same, 0) + 1
    per_model: list[Any] = []
    data_futures: dict[Any, distributed.Future] = {}
    for i, (data, same) in enumerate(zip(checked, pair_of)):
        if isinstance(data, distributed.Future):
            per_model.append(data)
        elif _nbytes(data) * tasks_using[same] <= EMBED_BYTES:
            per_model.append(tuple(data))
        else:
            if same not in data_futures:
                data_futures[same] = client.submit(_dataset, *data, key=f"lgmstm-data-{run}-{i}",
                                                   pure=False)
            per_model.append(data_futures[same])
    shared = [future for same, future in data_futures.items() if tasks_using[same] > 1]
    if shared and n_workers > 1:
        client.replicate(shared)

    def submit(tasks: range, yield_gil: bool, **options: Any) -> list[distributed.Future]:
        """The batches of tasks, their models copied now, in one message
        (one update of the scheduler's graph, in this order of priority)."""
        blobs = []
        held_since = time.perf_counter()
        for k in tasks:
            copies = []
            for i in batches[k]:
                copies.append(_snapshot(models[i]))
                if yield_gil and time.perf_counter() - held_since >= GIL_SLICE:
                    time.sleep(0)
                    held_since = time.perf_counter()
            blobs.append(copies)
        return client.map(_fit_batch, blobs, [[per_model[i] for i in batches[k]] for k in tasks],
                          [fit_kwargs] * len(tasks), [threads] * len(tasks),
                          key=[f"lgmstm-fit-{run}-{batches[k].start}" for k in tasks],
                          pure=False, **options)

    # The first task of each thread slot (a small head, see _batches) goes at
    # once, in one message; the others are copied while those run, the next
    # task of each slot in a second message and the rest in a third (each
    # after the one before in priority: fifo_timeout=0 starts a new
    # generation). Copying them holds the GIL that the client's event-loop
    # thread (which sends the messages and, on a LocalCluster, runs the
    # scheduler) needs: the copying lets it go every GIL_SLICE, so that the
    # heads start a few ms after the call, not after every copy (held
    # throughout, the GIL reaches the loop only at Python's 5 ms switch
    # interval, and the heads started some 12 ms later here). Before the
    # copying, fit_many sleeps HEAD_WAIT: the event loop takes a few ms of
    # CPU to send the heads (and, on a LocalCluster, to schedule them), and
    # where the workers share the machine's cores with this process, the
    # copying took that CPU from it: the heads started about 1.2 ms later
    # per slot on 2 cores (medians of 12 calls of the benchmark's, measured
    # in the tasks); a wait that the heads outlast costs nothing.
    heads, seconds = (min(k * max(1, n_slots), len(batches)) for k in (1, 2))
    futures = submit(range(heads), yield_gil=False)
    if heads < len(batches):
        time.sleep(HEAD_WAIT)
    for tasks in (range(heads, seconds), range(seconds, len(batches))):
        if tasks:
            futures += submit(tasks, yield_gil=True, fifo_timeout=0)
    del data_futures, per_model, pair_of
    try:
        started = time.perf_counter()
        n_done = 0
        index_of = {future.key: index for index, future in enumerate(futures)}
        results: dict[int, list[Model]] = {}
        # Each task's models come back as it finishes, while the others run.
        for future, fitted in distributed.as_completed(futures, loop=client.loop,
                                                      with_results=True):
            if isinstance(fitted, BaseException):  # a cancelled task's result is the error
                raise fitted
            index = index_of[future.key]
            results[index] = pickle.loads(fitted)
            n_done += len(batches[index])
            if verbose:
                print(f"\rfit_many: {n_done}/{len(models)} models fitted, "
                      f"{time.perf_counter() - started:.1f} s", end="", file=sys.stderr,
                      flush=True)
            if progress is not None:
                progress(n_done, len(models))
        if verbose:
            print(file=sys.stderr)
        return [model for index in range(len(futures)) for model in results[index]]
    except BaseException:
        client.cancel(futures)
        raise


# -- partial_fit_dask ---------------------------------------------------------------------
def _partial_fit_block(blob: bytes, X: NDArray[Any], Y: NDArray[Any], lengths: Any,
                       weights: Any, arguments: dict[str, Any], threads: int | None,
                       ) -> tuple[bytes, float]:
    model = pickle.loads(blob)
    per_sample = {name: value for name, value in (("lengths", lengths),
                                                  ("sample_weight", weights))
                  if value is not None}
    with _running_on(threads):
        model.partial_fit(X, Y, **arguments, **per_sample)
    loss = float(model.history_[0]) if len(model.history_) else float("nan")
    return _snapshot(model), loss


def partial_fit_dask(model: Model, X: da.Array, Y: da.Array, *, epochs: int,
                     lengths: da.Array | None = None,
                     sample_weight: da.Array | None = None, client: Any = None,
                     threads: int | None = None, verbose: bool = False,
                     **partial_fit_kwargs: Any) -> Model:
    """Stream the blocks of dask arrays through ``partial_fit``, in order.

    For each epoch, for each block i along samples (empty blocks skipped)::

        model.partial_fit(X.blocks[i], Y.blocks[i], **partial_fit_kwargs)

    (with ``lengths=lengths.blocks[i]`` and ``sample_weight=sample_weight.blocks[i]``
    when given)
    so the result has the bits of that loop run here on the blocks in
    memory. With a distributed client, each ``partial_fit`` runs on a
    worker: the block is computed there (the next one meanwhile), the model
    (small) goes there and comes back; at most two blocks of X and Y are in
    the cluster's memory at a time, so the data may be many times larger
    than a worker's memory. A worker that dies mid-block costs that block's
    work only: the scheduler runs it again elsewhere, to the same bits.
    Without a client, the loop runs here, one block computed at a time by
    dask's current scheduler.

    Parameters
    ----------
    model : LGM or STM
        Not changed: the trained copy is returned.
    X, Y : dask.array.Array
        Chunked along samples only, and alike.
    epochs : int >= 0
        Passes over the blocks.
    lengths : dask.array.Array of int, shape (n_samples,), optional
        An STM's sequence lengths, chunked as X's samples.
    sample_weight : dask.array.Array, shape (n_samples,), optional
        Each sample's weight, chunked as X's samples: each block's
        partial_fit weighs its samples by their own weights.
    client : distributed.Client, optional
        Default: the current client if there is one, else none (the loop
        runs here).
    threads : int >= 1, optional
        OpenMP threads for each partial_fit; by default the worker's share
        (:func:`task_threads`).
    verbose : bool, default False
        Print each epoch's mean block loss to stderr.
    **partial_fit_kwargs
        Passed to every ``partial_fit``: lr at least; batch_size,
        optimizer and its settings (momentum, nesterov, beta1, beta2,
        eps), weight_decay, clip_norm, shuffle, seed.

    Returns
    -------
    LGM or STM
        The trained model; ``history_`` holds the last block's loss.

    Raises
    ------
    TypeError, ValueError
        Before any task: model not an LGM/STM; X, Y, lengths or
        sample_weight not dask arrays, of the wrong shape (Y: the model's
        outputs, and X's steps for an STM with return_sequences) or dtype,
        of unknown size, split along steps or features, or chunked
        differently along samples; epochs not an integer >= 0; arguments
        partial_fit does not take, or values it refuses (lr, batch_size,
        optimizer and its settings, ...; a seed that is a numpy Generator,
        whose draws tasks cannot share).

    A block that fails on a worker raises its error here; the blocks
    computed or prefetched for the call are released from the cluster.
    """
    model = _check_model("model", model)
    X, lengths = _check_inputs(model, X, lengths)
    Y = _check_targets(model, Y, X)
    if Y.shape[0] != X.shape[0]:  # pragma: no cover - the chunks were compared
        raise ValueError(f"X has {X.shape[0]} samples but Y has {Y.shape[0]}")
    if sample_weight is not None:
        sample_weight = _check_per_sample("sample_weight", sample_weight, X)
        check_number_dtype("sample_weight", sample_weight.dtype)
    epochs = check_int("epochs", epochs, 0)
    _check_arguments(type(model), "partial_fit", f"partial_fit_dask: arguments of "
                     f"{type(model).__name__}.partial_fit", partial_fit_kwargs,
                     epochs=1, warm_start=True)
    if threads is not None:
        check_int("threads", threads, 1)
    verbose = check_bool("verbose", verbose)
    if client is None:
        try:
            client = distributed.default_client()
        except ValueError:
            client = None
    else:
        client = _client(client, "partial_fit_dask")

    blocks = [i for i, rows in enumerate(X.chunks[0]) if rows > 0]
    steps = [(epoch, i) for epoch in range(epochs) for i in blocks]

    def pieces(i: int) -> list[Any]:
        return [X.blocks[i], Y.blocks[i], *(None if value is None else value.blocks[i]
                                            for value in (lengths, sample_weight))]

    blob = _snapshot(model)
    losses: list[float] = []
    if client is None:
        for epoch, i in steps:
            X_block, Y_block, lengths_block, weights_block = dask.compute(*pieces(i))
            blob, loss = _partial_fit_block(blob, X_block, Y_block, lengths_block,
                                            weights_block, partial_fit_kwargs, threads)
            losses.append(loss)
            _report(verbose, epoch, i, blocks, losses)
        return pickle.loads(blob)

    def compute(step: int) -> list[Any]:
        return [None if piece is None else client.compute(piece)
                for piece in pieces(steps[step][1])]

    upcoming = compute(0) if steps else []
    held: list[Any] = upcoming   # the futures of the call, released on an error
    try:
        for k, (epoch, i) in enumerate(steps):
            current, upcoming = upcoming, (compute(k + 1) if k + 1 < len(steps) else [])
            future = client.submit(_partial_fit_block, blob, *current, partial_fit_kwargs,
                                   threads, pure=False)
            held = [future, *current, *upcoming]
            blob, loss = future.result()
            del future, current
            losses.append(loss)
            _report(verbose, epoch, i, blocks, losses)
    except BaseException:
        # The error's traceback holds this frame, and with it the futures:
        # the blocks would stay in the cluster's memory until it is gone.
        client.cancel([piece for piece in held if piece is not None])
        raise
    return pickle.loads(blob)


def _report(verbose: bool, epoch: int, block: int, blocks: list[int],
            losses: list[float]) -> None:
    if verbose and block == blocks[-1]:
        mean = float(np.mean(losses[-len(blocks):]))
        print(f"partial_fit_dask: epoch {epoch + 1}, mean block loss {mean:.6g}",
              file=sys.stderr, flush=True)
