"""LGM, the long-term generalization memory: a feed-forward network of tanh
layers trained by gradient descent; and the training machinery it shares
with lgmstm.stm.STM (plan_fit, train_model, run_epochs, UseLock).

Parameters live in NumPy arrays; ``backend="cython"`` runs every
predict/gradients/fit in compiled code (fit in a few calls, each covering
many epochs), ``backend="numpy"`` runs the same maths with
:mod:`lgmstm.reference`.
"""
from __future__ import annotations

import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from os import PathLike
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _dense, _lgm, _train, reference
from ._persist import save_arrays
from ._threads import get_num_threads, single_threaded_blas
from ._validation import (
    FLOAT_DTYPES,
    MAX_DIM,
    as_array,
    check_bool,
    check_choice,
    check_int,
    check_positive_float,
    check_product,
)

__all__ = ["LGM"]

OPTIMIZERS = ("sgd", "momentum", "adam")
BACKENDS = ("cython", "numpy")
OUTPUTS = ("tanh", "linear")

# Hyper-parameters of the optimizers (see lgmstm.reference.optimizer_step).
MOMENTUM = 0.9
ADAM_BETA1, ADAM_BETA2, ADAM_EPS = 0.9, 0.999, 1e-8

# fit() hands the compiled code blocks of epochs lasting about this long, so
# progress, callbacks and Ctrl-C are seen between blocks.
BLOCK_SECONDS = 0.1


def _check_dtype(dtype) -> np.dtype:
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _check_seed(name, seed):
    if seed is None or isinstance(seed, np.random.Generator):
        return seed
    return check_int(name, seed, 0)


def glorot_uniform(rng, n_in, n_out, dtype):
    """Weights drawn from U(-l, l), l = sqrt(6 / (n_in + n_out))."""
    limit = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, size=(n_in, n_out)).astype(dtype)


def epoch_orders(rng, n_epochs, n_samples):
    """(n_epochs, n_samples) array: a fresh random order of the samples per epoch."""
    order = np.broadcast_to(np.arange(n_samples, dtype=np.intp), (n_epochs, n_samples))
    return np.ascontiguousarray(rng.permuted(order, axis=1))


class _Progress:
    """Prints epoch, loss and rate to stderr at most every `interval` seconds."""

    def __init__(self, name, n_epochs, enabled, interval=1.0):
        self.name, self.n_epochs, self.enabled, self.interval = name, n_epochs, enabled, interval
        self.start = self.last = time.perf_counter()

    def update(self, epochs_done, loss, final=False):
        now = time.perf_counter()
        if not self.enabled or (not final and now - self.last < self.interval):
            return
        self.last = now
        rate = epochs_done / max(now - self.start, 1e-9)
        print(
            f"{self.name}: epoch {epochs_done}/{self.n_epochs}  loss {loss:.6g}  "
            f"{rate:.4g} epochs/s",
            file=sys.stderr,
            flush=True,
        )


class DivergenceWarning(RuntimeWarning):
    """Training met a non-finite loss or parameter and stopped."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped fit(); the model holds its last finished epoch.

    Parameters
    ----------
    history : ndarray of shape (n_epochs_done,)
        The losses of the finished epochs, also stored as the attribute
        ``history`` (and as the model's ``history_``).
    """

    def __init__(self, history):
        super().__init__(f"training interrupted after {len(history)} epochs")
        self.history = history


@contextmanager
def _deferred_interrupt():
    """Turn Ctrl-C during training into a flag that is checked between
    blocks of epochs, so training stops in a consistent state.

    Only in the main thread, and only when SIGINT has Python's default
    handler (a handler of the user's is left alone).
    """
    interrupt = {"requested": False}
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield interrupt
        return

    def request_stop(signum, frame):
        interrupt["requested"] = True

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield interrupt
    finally:
        signal.signal(signal.SIGINT, previous)


def _finite(trainer, losses):
    return bool(np.isfinite(losses).all()) and all(np.isfinite(p).all() for p in trainer.params)


def run_epochs(trainer, n_epochs, *, callback, progress, order_for):
    """Drive trainer.run over blocks of epochs; return the per-epoch losses.

    trainer: ``run(order, n_epochs) -> losses``, ``params`` (list of arrays),
    ``state`` (list of every array training changes, params included) and
    ``step`` (updates done). order_for(n) gives the sample orders of the
    next n epochs (or None). With a callback each block is one epoch, so
    returning False stops at once.

    Ctrl-C stops training after the current block and raises
    KeyboardInterrupt, the model holding the parameters of the last
    finished epoch. A non-finite loss or parameter stops training with a
    DivergenceWarning, the model holding the last finite parameters: the
    block is replayed from a snapshot one epoch at a time up to the last
    finite epoch (the replay takes the same steps, so it is exact).
    """
    blocks = []  # per-block losses: nothing is allocated for epochs not run
    done, block = 0, 1
    with _deferred_interrupt() as interrupt:
        while done < n_epochs and not interrupt["requested"]:
            count = min(block, n_epochs - done)
            order = order_for(count)
            snapshot = [a.copy() for a in trainer.state], trainer.step
            started = time.perf_counter()
            with np.errstate(over="ignore", invalid="ignore"):  # divergence is checked next
                block_losses = trainer.run(order, count)
            elapsed = time.perf_counter() - started
            if not _finite(trainer, block_losses):
                good = _replay_finite_epochs(trainer, snapshot, order, count)
                blocks.append(good)
                done += len(good)
                warnings.warn(
                    f"training diverged at epoch {done} (non-finite loss or parameters); "
                    f"stopped, keeping the parameters after epoch {done - 1}. "
                    "Try a smaller lr.", DivergenceWarning, stacklevel=3)
                break
            blocks.append(block_losses)
            done += count
            last = float(block_losses[-1])
            progress.update(done, last, final=done == n_epochs)
            if callback is not None:
                if callback(done - 1, last) is False:
                    break
            else:
                block = int(min(max(1, count * BLOCK_SECONDS / max(elapsed, 1e-6)), 2 * count + 1))
    losses = np.concatenate(blocks) if blocks else np.empty(0)
    if interrupt["requested"]:
        raise TrainingInterrupted(losses)
    return losses


def _replay_finite_epochs(trainer, snapshot, order, count):
    """Restore the snapshot and redo the block epoch by epoch, stopping before
    the first epoch whose loss or resulting parameters are not finite."""
    def restore(saved):
        arrays, trainer.step = saved
        for target, value in zip(trainer.state, arrays):
            np.copyto(target, value)

    restore(snapshot)
    good = []
    for epoch in range(count):
        before = [a.copy() for a in trainer.state], trainer.step
        with np.errstate(over="ignore", invalid="ignore"):
            loss = trainer.run(None if order is None else order[epoch : epoch + 1], 1)
        if not _finite(trainer, loss):
            restore(before)
            break
        good.append(loss[0])
    return np.asarray(good)


def restore_params(params, arrays, path):
    """Copy saved arrays into a model's parameters (dicts by name), refusing
    any name, shape or dtype that does not match the architecture."""
    if set(arrays) != set(params):
        raise ValueError(f"{path}: parameters {sorted(arrays)} do not match the "
                         f"architecture, which needs {sorted(params)}")
    for name, param in params.items():
        value = arrays[name]
        if value.shape != param.shape or value.dtype != param.dtype:
            raise ValueError(f"{path}: {name} has shape {value.shape} and dtype "
                             f"{value.dtype}; the architecture needs {param.shape} "
                             f"{param.dtype}")
        param[...] = value


class FitPlan(NamedTuple):
    """fit's checked hyper-parameters."""

    epochs: int
    lr: float
    batch_size: int
    optimizer: str
    verbose: bool
    order_for: Callable[[int], np.ndarray | None]


def plan_fit(rng, n_samples, *, epochs, lr, batch_size, optimizer, shuffle, seed,
             callback, verbose) -> FitPlan:
    """Check fit's hyper-parameters, the same way for LGM and STM.

    rng is the model's generator, used for shuffling unless seed is given;
    batch_size None (or above n_samples) means full batch.
    """
    epochs = check_int("epochs", epochs, 0, maximum=MAX_DIM)
    lr = check_positive_float("lr", lr)
    batch_size = check_int("batch_size", batch_size, 1, allow_none=True)
    batch_size = n_samples if batch_size is None else min(batch_size, n_samples)
    optimizer = check_choice("optimizer", optimizer, OPTIMIZERS)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {callback!r}")
    if seed is not None:
        rng = np.random.default_rng(_check_seed("seed", seed))
    shuffled = check_bool("shuffle", shuffle) and batch_size < n_samples
    verbose = check_bool("verbose", verbose)

    def order_for(count):
        return epoch_orders(rng, count, n_samples) if shuffled else None

    return FitPlan(epochs, lr, batch_size, optimizer, verbose, order_for)


def train_model(model, plan, make_trainer, callback, finish=None):
    """fit's loop, with the model held for training (see UseLock).

    Sets model.history_, also when Ctrl-C stops training (then re-raises
    TrainingInterrupted); finish(trainer), when given, runs at the end either way.
    """
    with model._lock.training():
        trainer = make_trainer()
        try:
            model.history_ = run_epochs(trainer, plan.epochs, callback=callback,
                                        progress=_Progress(model.kind, plan.epochs, plan.verbose),
                                        order_for=plan.order_for)
        except TrainingInterrupted as exc:
            model.history_ = exc.history
            raise
        finally:
            if finish is not None:
                finish(trainer)
    return model.history_


class UseLock:
    """Many concurrent users of a model's parameters, or one trainer.

    predict/loss/gradients/save share the model; fit has it alone: it waits
    for current users to finish, and others wait for it. A second fit from
    another thread is refused. The training thread itself may read (e.g. a
    callback that calls predict).
    """

    def __init__(self):
        self._condition = threading.Condition()
        self._readers = 0
        self._trainer = None

    @contextmanager
    def reading(self):
        me = threading.get_ident()
        with self._condition:
            while self._trainer is not None and self._trainer != me:
                self._condition.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                self._condition.notify_all()

    @contextmanager
    def training(self):
        me = threading.get_ident()
        with self._condition:
            if self._trainer is not None:
                raise RuntimeError("this model is already being trained "
                                   + ("(fit called from its own callback)" if self._trainer == me
                                      else "by another thread"))
            self._trainer = me
            while self._readers:
                self._condition.wait()
        try:
            yield
        finally:
            with self._condition:
                self._trainer = None
                self._condition.notify_all()


class TrainingWorkspace:
    """The scratch arrays of a compiled network's latest fit, kept for its next.

    A fresh workspace is paid for again at every fit: the kernel zeroes each
    page on first touch, about 5% of an epoch of the large benchmark STM
    (tens of MB), and so of every fit(epochs=1) in a loop (partial_fit).
    Only fit uses it, and a model runs one fit at a time (its lock), so one
    workspace per network is safe; it holds the arrays until the next fit
    with other shapes or dtype, or release().
    """

    def __init__(self):
        self._key = None
        self._arrays = None

    def get(self, key, make):
        """The arrays made for key, from make() when the last fit's key differs."""
        if self._key != key:
            self.release()
            self._arrays = make()
            self._key = key
        return self._arrays

    def release(self):
        self._key = self._arrays = None


class _CompiledNetwork:
    """Forward/gradients/training of a dense network with lgmstm._dense."""

    def __init__(self, params, layer_sizes, output_tanh):
        self.params = params
        self.sizes = np.asarray(layer_sizes, dtype=np.intp)
        self.output_tanh = output_tanh
        self.program = _lgm.Network(params, self.sizes, output_tanh)
        self.workspace = TrainingWorkspace()

    def _work(self, n_samples):
        return _dense.TASK_ROWS * max(max(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:])),
                        n_samples * int(self.sizes.max()))

    def _buffers(self, n_samples, dtype):
        return [np.empty((n_samples, n), dtype) for n in self.sizes[1:]]

    def predict(self, X):
        activations = self._buffers(X.shape[0], X.dtype)
        with single_threaded_blas(self._work(X.shape[0])):
            self.program.predict(X, activations, get_num_threads())
        return activations[-1]

    def gradients(self, X, Y):
        grads = [np.empty_like(p) for p in self.params]
        partials = np.empty(_dense.partials_size(Y.shape[0]))
        with single_threaded_blas(self._work(X.shape[0])):
            loss = self.program.gradients(
                X, Y, grads, self._buffers(X.shape[0], X.dtype),
                self._buffers(X.shape[0], X.dtype), partials, get_num_threads())
        return loss, grads

    def trainer(self, X, Y, batch_size, optimizer, lr):
        return _CompiledTrainer(self, X, Y, batch_size, optimizer, lr)


class _CompiledTrainer:
    """Every buffer one fit needs, allocated once (the scratch ones are the
    network's TrainingWorkspace, kept for its next fit); run() trains a block
    of epochs (small networks' panel workspace is allocated by the compiled
    call, once a block)."""

    def __init__(self, network, X, Y, batch_size, optimizer, lr):
        self.network, self.X, self.Y = network, X, Y
        self.batch_size, self.lr = batch_size, lr
        self.optimizer = OPTIMIZERS.index(optimizer)
        dtype = X.dtype

        def make_workspace():
            return ([np.empty_like(p) for p in network.params],
                    network._buffers(batch_size, dtype), network._buffers(batch_size, dtype),
                    np.empty((batch_size, X.shape[1]), dtype),
                    np.empty((batch_size, Y.shape[1]), dtype),
                    np.empty(_dense.partials_size(batch_size)))

        # The model fixes X's and Y's widths: batch size and dtype are the key.
        grads, activations, deltas, self.X_batch, self.Y_batch, self.partials = (
            network.workspace.get((batch_size, dtype), make_workspace))
        n_states = {"sgd": 0, "momentum": 1, "adam": 2}[optimizer]
        states = [[np.zeros_like(p) for p in network.params] for _ in range(n_states)]
        self.params = network.params
        self.state = network.params + [a for arrays in states for a in arrays]
        states += [grads] * (2 - n_states)  # unused by the optimizer: any valid pointers
        self.run_data = _train.TrainingRun(
            X=X, Y=Y, grads=grads, first_moments=states[0], second_moments=states[1],
            workspace=[self.X_batch, self.Y_batch, self.partials, *activations, *deltas],
            batch_size=batch_size, optimizer=self.optimizer, lr=lr, momentum=MOMENTUM,
            beta1=ADAM_BETA1, beta2=ADAM_BETA2, eps=ADAM_EPS)
        self.no_order = np.empty((0, X.shape[0]), np.intp)

    @property
    def step(self):
        return self.run_data.step

    @step.setter
    def step(self, value):
        self.run_data.step = value

    def run(self, order, n_epochs):
        losses = np.empty(n_epochs)
        network = self.network
        with single_threaded_blas(network._work(self.batch_size)):
            network.program.train(self.run_data, self.no_order if order is None else order,
                                  losses, get_num_threads())
        return losses


class _ReferenceNetwork:
    """The same network in plain NumPy (lgmstm.reference)."""

    def __init__(self, params, layer_sizes, output_tanh):
        self.params = params
        self.n_layers = len(layer_sizes) - 1
        self.output_tanh = output_tanh

    def _tanh(self, layer):
        return self.output_tanh or layer < self.n_layers - 1

    def _forward(self, X):
        activations = []
        for layer in range(self.n_layers):
            W, b = self.params[2 * layer], self.params[2 * layer + 1]
            X = reference.layer_forward(X, W, b, self._tanh(layer))
            activations.append(X)
        return activations

    def predict(self, X):
        return self._forward(X)[-1]

    def gradients(self, X, Y):
        activations = self._forward(X)
        loss, delta = reference.squared_error(activations[-1], Y)
        grads = [None] * len(self.params)
        for layer in range(self.n_layers - 1, -1, -1):
            layer_input = X if layer == 0 else activations[layer - 1]
            delta, grads[2 * layer], grads[2 * layer + 1] = reference.layer_backward(
                layer_input, self.params[2 * layer], activations[layer], delta,
                self._tanh(layer), need_dX=layer > 0)
        return loss, grads

    def trainer(self, X, Y, batch_size, optimizer, lr):
        return _ReferenceTrainer(self, X, Y, batch_size, optimizer, lr)


class _ReferenceTrainer:
    def __init__(self, network, X, Y, batch_size, optimizer, lr):
        self.network, self.X, self.Y = network, X, Y
        self.batch_size, self.optimizer, self.lr = batch_size, optimizer, lr
        n_states = {"sgd": 0, "momentum": 1, "adam": 2}[optimizer]
        self.states = [[np.zeros_like(p) for _ in range(n_states)] for p in network.params]
        self.step = 0
        self.params = network.params
        self.state = network.params + [a for arrays in self.states for a in arrays]

    def run(self, order, n_epochs):
        losses = np.empty(n_epochs)
        n_samples = self.X.shape[0]
        for epoch in range(n_epochs):
            sum_squares = 0.0
            for start in range(0, n_samples, self.batch_size):
                if order is None:
                    X, Y = self.X[start : start + self.batch_size], self.Y[start : start + self.batch_size]
                else:
                    rows = order[epoch, start : start + self.batch_size]
                    X, Y = self.X[rows], self.Y[rows]
                loss, grads = self.network.gradients(X, Y)
                sum_squares += loss * Y.size
                self.step += 1
                for param, grad, state in zip(self.network.params, grads, self.states):
                    reference.optimizer_step(
                        param, grad, state, optimizer=self.optimizer, lr=self.lr,
                        momentum=MOMENTUM, beta1=ADAM_BETA1, beta2=ADAM_BETA2,
                        eps=ADAM_EPS, step=self.step)
            losses[epoch] = sum_squares / self.Y.size
        return losses


_NETWORKS: dict[str, type[_CompiledNetwork] | type[_ReferenceNetwork]] = {
    "cython": _CompiledNetwork, "numpy": _ReferenceNetwork}


class LGM:
    """Long-term generalization memory: a feed-forward tanh network.

    ``Y = f_L(... tanh(tanh(X W_0 + b_0) W_1 + b_1) ...)``, trained to minimise
    the mean squared error ``mean((Y - target)**2)`` over all samples and
    outputs.

    Parameters
    ----------
    layer_sizes : sequence of int, length >= 2
        ``[n_in, n_hidden_1, ..., n_out]``, each >= 1.
    output : {"tanh", "linear"}, default "tanh"
        Activation of the last layer: "tanh" keeps outputs in (-1, 1),
        "linear" suits unbounded regression targets. Hidden layers are tanh.
    dtype : float32 or float64, default float64
        Dtype of the parameters and of every result; inputs are converted.
    seed : int, numpy.random.Generator or None
        Seeds the Glorot-uniform weights (biases start at zero) and the
        default shuffling of :meth:`fit`.
    backend : {"cython", "numpy"}, default "cython"
        "cython" runs compiled OpenMP kernels; "numpy" runs the same maths in
        :mod:`lgmstm.reference`.

    Attributes
    ----------
    layer_sizes : tuple of int
    output : str
    dtype : numpy.dtype
    backend : str
        The constructor's arguments, as checked.
    kind : str
        "LGM", as written in saved files.
    params : dict of str to ndarray
        Copies of ``layer{l}.weight`` (n_l, n_{l+1}) and ``layer{l}.bias`` (n_{l+1},).
    history_ : ndarray of shape (n_epochs,)
        Per-epoch losses of the last :meth:`fit`.

    Raises
    ------
    TypeError
        layer_sizes is not a sequence of ints, dtype not float32/float64, or
        seed not an int, Generator or None.
    ValueError
        Fewer than two layer sizes, a size < 1, or an unknown output or backend.
    """

    kind = "LGM"

    def __init__(self, layer_sizes: Sequence[int], *, output: str = "tanh",
                 dtype: DTypeLike = np.float64,
                 seed: int | np.random.Generator | None = None,
                 backend: str = "cython") -> None:
        if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__len__"):
            raise TypeError(f"layer_sizes must be a sequence of ints, got {layer_sizes!r}")
        sizes = [check_int(f"layer_sizes[{i}]", n, 1, maximum=MAX_DIM)
                 for i, n in enumerate(layer_sizes)]
        if len(sizes) < 2:
            raise ValueError(f"layer_sizes needs at least two sizes [n_in, n_out], got {sizes}")
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            check_product("layer_sizes: a weight", n_in, n_out)
        self.layer_sizes = tuple(sizes)
        self.output = check_choice("output", output, OUTPUTS)
        self.dtype = _check_dtype(dtype)
        self.backend = check_choice("backend", backend, BACKENDS)
        self._rng = np.random.default_rng(_check_seed("seed", seed))
        self._params = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            self._params += [glorot_uniform(self._rng, n_in, n_out, self.dtype),
                             np.zeros(n_out, self.dtype)]
        self._lock = UseLock()
        self.history_: NDArray[np.float64] = np.empty(0)
        self._network = _NETWORKS[self.backend](self._params, sizes, self.output == "tanh")

    # -- parameters ---------------------------------------------------------
    def _param_names(self):
        for layer in range(len(self.layer_sizes) - 1):
            yield f"layer{layer}.weight"
            yield f"layer{layer}.bias"

    @property
    def params(self) -> dict[str, NDArray[Any]]:
        """Copies of the parameters, by name."""
        with self._lock.reading():
            return {name: p.copy() for name, p in zip(self._param_names(), self._params)}

    def __getstate__(self):
        # Plain data only: locks and compiled pointer tables are rebuilt.
        with self._lock.reading():
            return {"layer_sizes": self.layer_sizes, "output": self.output,
                    "dtype": self.dtype.name, "backend": self.backend,
                    "params": [p.copy() for p in self._params],
                    "history_": self.history_, "rng": self._rng}

    def __setstate__(self, state):
        LGM.__init__(self, state["layer_sizes"], output=state["output"], dtype=state["dtype"],
                     backend=state["backend"])
        for param, value in zip(self._params, state["params"]):
            param[...] = value
        self.history_, self._rng = state["history_"], state["rng"]

    def __repr__(self):
        return (f"LGM({list(self.layer_sizes)}, output={self.output!r}, "
                f"dtype={self.dtype.name}, backend={self.backend!r})")

    # -- checks ---------------------------------------------------------------
    def _inputs(self, X: ArrayLike) -> NDArray[Any]:
        X = as_array("X", X, 2)
        if X.shape[1] != self.layer_sizes[0]:
            raise ValueError(
                f"X must have shape (n_samples, {self.layer_sizes[0]}), got {X.shape}")
        return np.ascontiguousarray(X, dtype=self.dtype)

    def _targets(self, Y: ArrayLike, n_samples: int) -> NDArray[Any]:
        n_out = self.layer_sizes[-1]
        Y = as_array("Y", Y, (1, 2) if n_out == 1 else 2)
        if Y.ndim == 1:
            Y = Y.reshape(-1, 1)
        if Y.shape != (n_samples, n_out):
            raise ValueError(f"Y must have shape (n_samples, n_out) = {(n_samples, n_out)}, "
                             f"got {Y.shape}")
        return np.ascontiguousarray(Y, dtype=self.dtype)

    # -- use --------------------------------------------------------------------
    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """Outputs of the network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_in)
            Real numbers; integers and bools are converted, and every input
            takes the model's dtype. Other dtypes are refused.

        Returns
        -------
        Y : ndarray of shape (n_samples, n_out), the model's dtype
            The last layer's outputs, in (-1, 1) for ``output="tanh"``.

        Raises
        ------
        TypeError
            X is not an array of real numbers.
        ValueError
            X has the wrong number of dimensions or a shape that does not
            fit the architecture (the message shows expected vs actual).
        """
        X = self._inputs(X)
        with self._lock.reading():
            return self._network.predict(X)

    def loss(self, X: ArrayLike, Y: ArrayLike) -> float:
        """Mean squared error ``mean((predict(X) - Y)**2)`` over all elements.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_in)
            Real numbers; integers and bools are converted, and every input
            takes the model's dtype. Other dtypes are refused.
        Y : array-like of shape (n_samples, n_out), or (n_samples,) when n_out == 1
            Targets, converted like X.

        Returns
        -------
        loss : float
            The mean over samples and outputs.

        Raises
        ------
        TypeError
            X or Y is not an array of real numbers.
        ValueError
            X or Y has the wrong number of dimensions or a shape that does not
            fit the architecture (the message shows expected vs actual).
        """
        X = self._inputs(X)
        Y = self._targets(Y, X.shape[0])
        with self._lock.reading():
            diff = self._network.predict(X) - Y
        return float(np.vdot(diff, diff)) / max(1, diff.size)

    def gradients(self, X: ArrayLike, Y: ArrayLike) -> dict[str, NDArray[Any]]:
        """Gradient of :meth:`loss` with respect to every parameter.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_in)
            Real numbers; integers and bools are converted, and every input
            takes the model's dtype. Other dtypes are refused.
        Y : array-like of shape (n_samples, n_out), or (n_samples,) when n_out == 1
            Targets, converted like X.

        Returns
        -------
        grads : dict of str to ndarray
            ``d loss / d param``, keyed and shaped like :attr:`params`, the
            model's dtype.

        Raises
        ------
        TypeError
            X or Y is not an array of real numbers.
        ValueError
            X or Y has the wrong number of dimensions or a shape that does not
            fit the architecture (the message shows expected vs actual).
        """
        X = self._inputs(X)
        Y = self._targets(Y, X.shape[0])
        with self._lock.reading():
            _, grads = self._network.gradients(X, Y)
        return dict(zip(self._param_names(), grads))

    def fit(self, X: ArrayLike, Y: ArrayLike, *, epochs: int, lr: float,
            batch_size: int | None = None, optimizer: str = "sgd", shuffle: bool = True,
            seed: int | np.random.Generator | None = None,
            callback: Callable[[int, float], bool | None] | None = None,
            verbose: bool = False) -> NDArray[np.float64]:
        """Train by gradient descent on the mean squared error.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_in), finite, n_samples >= 1
        Y : array-like of shape (n_samples, n_out) (or (n_samples,) when n_out == 1)
        epochs : int >= 0
            Passes over the data.
        lr : float > 0
            Learning rate.
        batch_size : int >= 1 or None, default None
            Samples per update; None (or anything >= n_samples) is full-batch
            gradient descent, one update per epoch.
        optimizer : {"sgd", "momentum", "adam"}, default "sgd"
            "sgd": ``W -= lr dW``; "momentum": heavy ball with 0.9;
            "adam": Adam with (0.9, 0.999, 1e-8). Optimizer state starts fresh
            at each call; the parameters carry on from where they are.
        shuffle : bool, default True
            Visit the samples in a new random order each epoch (only matters
            with mini-batches).
        seed : int, Generator or None
            Seeds the shuffling; None draws from the model's own generator.
        callback : callable(epoch, loss) -> bool or None, optional
            Called after every epoch (0-based) with that epoch's loss;
            returning False stops training.
        verbose : bool, default False
            Print epoch, loss and epochs/s to stderr about once a second.

        Returns
        -------
        losses : ndarray of shape (n_epochs_run,), float64
            Mean squared error of each epoch, each batch measured before its
            update. Also kept as ``history_``.

        Raises
        ------
        TypeError
            epochs or batch_size is not an integer, lr not a real number,
            callback not callable, or X/Y not arrays of real numbers.
        ValueError
            X or Y empty, non-finite or of the wrong shape; epochs < 0;
            lr not finite and > 0; batch_size < 1; an unknown optimizer.
        RuntimeError
            Another thread is training this model (or fit was called from
            its own callback).
        TrainingInterrupted (a KeyboardInterrupt)
            On Ctrl-C, within about 0.1 s: the model keeps the parameters of
            the last finished epoch and ``history_`` their losses.

        Warns
        -----
        DivergenceWarning
            When a loss or parameter becomes non-finite: training stops and
            the model keeps the last finite parameters.
        """
        X = self._inputs(X)
        Y = self._targets(Y, X.shape[0])
        n_samples = X.shape[0]
        if n_samples == 0:
            raise ValueError("X must hold at least one sample to fit, got shape "
                             f"{X.shape}")
        if not (np.isfinite(X).all() and np.isfinite(Y).all()):
            raise ValueError("X and Y must be finite (no NaN or inf) to fit")
        plan = plan_fit(self._rng, n_samples, epochs=epochs, lr=lr, batch_size=batch_size,
                        optimizer=optimizer, shuffle=shuffle, seed=seed, callback=callback,
                        verbose=verbose)
        return train_model(
            self, plan, lambda: self._network.trainer(X, Y, plan.batch_size, plan.optimizer,
                                                      plan.lr), callback)

    # -- persistence -------------------------------------------------------------
    def save(self, path: str | PathLike[str]) -> None:
        """Write the model to ``path`` as an .npz file (no pickle), atomically.

        The file holds the format version, kind, dtype, architecture and
        parameters as plain arrays; it is written to a temporary file beside
        ``path`` and renamed over it, so ``path`` never holds half a model.
        Read it back with :func:`lgmstm.load`.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write, exactly as named (no suffix is added).

        Raises
        ------
        TypeError
            path is not a str, bytes or os.PathLike.
        OSError
            The file cannot be written; an existing file at ``path`` is
            left as it was.
        """
        config = {"layer_sizes": np.asarray(self.layer_sizes, np.int64),
                  "output": np.asarray(self.output)}
        with self._lock.reading():
            save_arrays(path, self.kind, self.dtype, config,
                        dict(zip(self._param_names(), self._params)))

    @classmethod
    def _from_saved(cls, config, dtype, arrays, path, backend):
        stored = config["layer_sizes"]
        if stored.ndim != 1 or stored.dtype.kind not in "iu":
            raise ValueError(f"{path}: layer_sizes must be a 1-d integer array, got "
                             f"shape {stored.shape} dtype {stored.dtype}")
        layer_sizes = [int(n) for n in stored]
        # Shapes first: a file must not make us build a model larger than it holds.
        expected: dict[str, tuple[int, ...]] = {}
        for layer, (n_in, n_out) in enumerate(zip(layer_sizes[:-1], layer_sizes[1:])):
            expected[f"layer{layer}.weight"] = (n_in, n_out)
            expected[f"layer{layer}.bias"] = (n_out,)
        found = {name: value.shape for name, value in arrays.items()}
        if found != expected:
            raise ValueError(f"{path}: parameters of shapes {found} do not fit "
                             f"layer_sizes {layer_sizes}")
        model = cls(layer_sizes, output=str(config["output"]), dtype=dtype, backend=backend)
        model._restore(arrays, path)
        return model

    def _restore(self, arrays, path):
        restore_params(dict(zip(self._param_names(), self._params)), arrays, path)
