"""The benchmark cases of lgmstm, defined once.

``python -m lgmstm bench`` (table, JSON, plot) and the pytest-benchmark suite
in ``bench/`` both run the items of :func:`plan`; no other file holds a size
grid. An item is one implementation of one case, at one size, dtype and
thread count; ``item.prepare()`` builds its data and returns ``run(k)``,
which does k iterations of the case (k kernel calls, or k training steps).

A training step is one full-batch epoch. The compiled and NumPy models are
timed as ``fit(X, Y, epochs=k)`` over k, so the time per step includes
nothing that a long fit does not also pay per step.

The ``door`` case is of another kind: the cost of one call from Python
(issue 12). Its "sizes" are rows, one call each (``LGM.predict`` of one
sample, ``STM.step``, ``fit(epochs=1)``, the scikit-learn estimators...),
timed against its peers (a hand NumPy call, PyTorch, scikit-learn, the same
epoch inside a long fit) and held to the issue's target; :func:`door_summary`
says which targets are met. Rows whose API this lgmstm lacks are skipped.

``bench/scaling.py`` times the compiled training steps on 1, 2, 4, ... threads
at :data:`SCALING_SIZES`: the grid's medium sizes and the same networks on
batches big enough to give every thread several chunks.

``lgmstm bench --loaded`` (issue 13) times the compiled training steps on 1
and N threads next to a CPU-bound process of its own (:func:`cpu_load`),
and reports the N-thread time over the 1-thread time
(:func:`loaded_summary`), held to :data:`LOADED_TARGET`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

import lgmstm

from . import kernels, reference
from ._threads import available_cores, get_num_threads, set_num_threads
from ._base import glorot_uniform

__all__ = ["DENSE_SIZES", "RECURRENT_SIZES", "SCALING_SIZES", "DOOR_ROWS", "CASES",
           "parse_selection", "plan", "measure", "gemm_peak", "memory_check", "summarise",
           "format_peak_share", "peak_notes", "door_summary", "thread_count",
           "default_threads", "LOADED_CASES", "LOADED_TARGET", "plan_loaded", "cpu_load",
           "loaded_summary", "QUALITY_DATA", "QUALITY_TARGETS", "quality"]

# Learning rate of every timed fit: small enough that no size diverges.
LR = 0.01


class _Size:
    def missing(self):
        """Why this size cannot run here (None: it can)."""
        return None


@dataclass(frozen=True)
class DenseSize(_Size):
    """A network n_in -> n_hidden -> n_out on a batch of n_samples."""

    name: str
    n_samples: int
    n_in: int
    n_hidden: int
    n_out: int

    def describe(self):
        return f"n={self.n_samples}, {self.n_in}->{self.n_hidden}->{self.n_out}"


@dataclass(frozen=True)
class RecurrentSize(_Size):
    """An RNN n_in -> n_hidden -> n_out over n_steps on a batch of n_samples."""

    name: str
    n_steps: int
    n_samples: int
    n_in: int
    n_hidden: int
    n_out: int

    def describe(self):
        return (f"T={self.n_steps}, n={self.n_samples}, "
                f"{self.n_in}->{self.n_hidden}->{self.n_out}")


DENSE_SIZES = (
    DenseSize("seed", 100, 10, 5, 2),
    DenseSize("odd", 333, 77, 99, 11),
    DenseSize("medium", 256, 256, 256, 64),
    DenseSize("large", 512, 1024, 1024, 256),
)
RECURRENT_SIZES = (
    RecurrentSize("seed", 20, 100, 10, 5, 2),
    RecurrentSize("small", 50, 16, 8, 32, 4),
    RecurrentSize("odd", 33, 37, 13, 29, 7),
    RecurrentSize("medium", 100, 64, 64, 128, 16),
    RecurrentSize("large", 50, 128, 256, 512, 64),
)

@dataclass(frozen=True)
class DeepSize(_Size):
    """A deep STM (issue 15): stacked layers n_hidden, a reverse direction
    when bidirectional, a readout of tanh layers, over n_steps on n_samples."""

    name: str
    n_steps: int
    n_samples: int
    n_in: int
    n_hidden: tuple
    n_out: int
    bidirectional: bool = False
    readout: tuple = ()

    def describe(self):
        extra = (", bidirectional" if self.bidirectional else "") + (
            f", readout={list(self.readout)}" if self.readout else "")
        return (f"T={self.n_steps}, n={self.n_samples}, "
                f"{self.n_in}->{list(self.n_hidden)}->{self.n_out}{extra}")


DEEP_SIZES = (
    DeepSize("seed", 20, 100, 10, (5,), 2, readout=(8,)),
    DeepSize("stacked", 100, 64, 64, (128, 128), 16),
    DeepSize("bidirectional", 100, 64, 64, (128,), 16, bidirectional=True),
)
# --quick runs only these sizes.
QUICK_SIZES = ("seed",)


def _size_named(sizes, name):
    """The size of that name in DENSE_SIZES or RECURRENT_SIZES."""
    return next(size for size in sizes if size.name == name)


# bench/scaling.py's sizes: the medium steps, then the same networks on batches
# big enough to give every thread several chunks
SCALING_SIZES = (
    _size_named(DENSE_SIZES, "medium"),
    _size_named(RECURRENT_SIZES, "medium"),
    replace(_size_named(DENSE_SIZES, "medium"), name="batch", n_samples=4096),
    replace(_size_named(RECURRENT_SIZES, "medium"), name="batch", n_steps=50, n_samples=1024),
)


# -- data -------------------------------------------------------------------------

def _dense_problem(size, dtype):
    """X, Y and the parameters [W0, b0, W1, b1] of a dense size, seeded."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((size.n_samples, size.n_in)).astype(dtype)
    Y = rng.uniform(-0.9, 0.9, (size.n_samples, size.n_out)).astype(dtype)
    params = []
    for n_in, n_out in ((size.n_in, size.n_hidden), (size.n_hidden, size.n_out)):
        params += [glorot_uniform(rng, n_in, n_out, dtype), np.zeros(n_out, dtype)]
    return X, Y, params


def _recurrent_problem(size, dtype):
    """X (n_samples, n_steps, n_in), Y (n_samples, n_steps, n_out) and the RNN's
    [W_in, W_rec, b] of a recurrent size, seeded."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((size.n_samples, size.n_steps, size.n_in)).astype(dtype)
    Y = rng.uniform(-0.9, 0.9, (size.n_samples, size.n_steps, size.n_out)).astype(dtype)
    params = [glorot_uniform(rng, size.n_in, size.n_hidden, dtype),
              glorot_uniform(rng, size.n_hidden, size.n_hidden, dtype),
              np.zeros(size.n_hidden, dtype)]
    return X, Y, params


def _deep_problem(size, dtype):
    """X (n_samples, n_steps, n_in) and Y (n_samples, n_steps, n_out) of a
    DeepSize, seeded (the models make their own parameters)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((size.n_samples, size.n_steps, size.n_in)).astype(dtype)
    Y = rng.uniform(-0.9, 0.9, (size.n_samples, size.n_steps, size.n_out)).astype(dtype)
    return X, Y, []


# -- LGM and dense kernels -------------------------------------------------------------

def _dense_forward(module):
    """One iteration: the forward pass of the size's network, a call per layer."""
    def make(size, dtype):
        X, _, (W0, b0, W1, b1) = _dense_problem(size, dtype)
        A0 = np.empty((size.n_samples, size.n_hidden), dtype)
        A1 = np.empty((size.n_samples, size.n_out), dtype)

        def run(k):
            for _ in range(k):
                module.dense_forward(X, W0, b0, out=A0)
                module.dense_forward(A0, W1, b1, out=A1)
        return run
    return make


def _dense_backward(module):
    """One iteration: the backward pass of the size's network, a call per layer."""
    def make(size, dtype):
        X, Y, (W0, b0, W1, b1) = _dense_problem(size, dtype)
        A0 = reference.dense_forward(X, W0, b0)
        A1 = reference.dense_forward(A0, W1, b1)
        _, dA1 = reference.squared_error(A1, Y)

        def run(k):
            for _ in range(k):
                dA0, _, _ = module.dense_backward(A0, W1, A1, dA1)
                module.dense_backward(X, W0, A0, dA0, need_dX=False)
        return run
    return make


def _model(size, dtype, backend="cython", **options):
    """A seeded LGM (a DenseSize) or STM (a RecurrentSize) of that size."""
    if isinstance(size, DenseSize):
        return lgmstm.LGM([size.n_in, size.n_hidden, size.n_out], dtype=dtype, seed=0,
                          backend=backend, **options)
    if isinstance(size, DeepSize):
        return lgmstm.STM(size.n_in, list(size.n_hidden), size.n_out, dtype=dtype, seed=0,
                          backend=backend, bidirectional=size.bidirectional,
                          readout=list(size.readout), **options)
    return lgmstm.STM(size.n_in, size.n_hidden, size.n_out, dtype=dtype, seed=0,
                      backend=backend, **options)


def _model_step(backend, problem):
    """One iteration: a full-batch training step, timed as fit(epochs=k)."""
    def make(size, dtype):
        X, Y, _ = problem(size, dtype)
        model = _model(size, dtype, backend)

        def run(k):
            model.fit(X, Y, epochs=k, lr=LR)
        return run
    return make


def _gemm_floor(size, dtype):
    """One iteration: exactly the GEMMs of one LGM training step, with the BLAS
    our kernels call (scipy's): forward X W0, A0 W1; backward dZ1 W1^T,
    A0^T dZ1, X^T dZ0."""
    from scipy.linalg import blas

    gemm = blas.dgemm if dtype == np.float64 else blas.sgemm
    rng = np.random.default_rng(0)

    def matrix(rows, cols):
        return rng.standard_normal((rows, cols)).astype(dtype)

    n, n_in, n_hidden, n_out = size.n_samples, size.n_in, size.n_hidden, size.n_out
    X, W0, W1 = matrix(n, n_in), matrix(n_in, n_hidden), matrix(n_hidden, n_out)
    A0, A1, dZ1, dZ0 = matrix(n, n_hidden), matrix(n, n_out), matrix(n, n_out), matrix(n, n_hidden)
    dA0, dW1, dW0 = matrix(n, n_hidden), matrix(n_hidden, n_out), matrix(n_in, n_hidden)

    def gemm_into(out, a, b, trans_a=False, trans_b=False):
        # Row-major out = op(a) op(b) is column-major out^T = op(b)^T op(a)^T:
        # the .T views are Fortran-ordered, so f2py copies nothing.
        gemm(1.0, b.T, a.T, trans_a=trans_b, trans_b=trans_a, c=out.T, overwrite_c=True)

    def run(k):
        for _ in range(k):
            gemm_into(A0, X, W0)
            gemm_into(A1, A0, W1)
            gemm_into(dA0, dZ1, W1, trans_b=True)
            gemm_into(dW1, A0, dZ1, trans_a=True)
            gemm_into(dW0, X, dZ0, trans_a=True)
    return run


def _torch_step(build, problem):
    """One iteration: a full-batch SGD step of the same network in PyTorch."""
    def make(size, dtype):
        import torch

        X, Y, _ = problem(size, dtype)
        network = build(torch, size).to(_torch_dtype(torch, dtype))
        optimizer = torch.optim.SGD(network.parameters(), lr=LR)
        inputs, targets = torch.from_numpy(X), torch.from_numpy(Y)

        def run(k):
            for _ in range(k):
                optimizer.zero_grad()
                torch.nn.functional.mse_loss(network(inputs), targets).backward()
                optimizer.step()
        return run
    return make


def _torch_dtype(torch, dtype):
    return torch.float64 if dtype == np.float64 else torch.float32


def _torch_lgm(torch, size):
    nn = torch.nn
    return nn.Sequential(nn.Linear(size.n_in, size.n_hidden), nn.Tanh(),
                         nn.Linear(size.n_hidden, size.n_out), nn.Tanh())


# -- STM and RNN kernels ----------------------------------------------------------------

def _rnn_forward(module):
    """One iteration: the RNN layer's forward pass over all steps, one call."""
    def make(size, dtype):
        X, _, (W_in, W_rec, b) = _recurrent_problem(size, dtype)

        def run(k):
            for _ in range(k):
                module.rnn_forward(X, None, W_in, W_rec, b)
        return run
    return make


def _rnn_backward(module):
    """One iteration: the RNN layer's backward pass over all steps, one call."""
    def make(size, dtype):
        X, _, (W_in, W_rec, b) = _recurrent_problem(size, dtype)
        H = reference.rnn_forward(X, None, W_in, W_rec, b)
        dH = np.random.default_rng(1).standard_normal(H.shape).astype(dtype)

        def run(k):
            for _ in range(k):
                module.rnn_backward(X, None, W_in, W_rec, H, dH)
        return run
    return make


def _torch_stm(torch, size):
    """nn.RNN (tanh) followed by a tanh output layer at every step."""
    nn = torch.nn

    class Network(nn.Module):  # type: ignore[name-defined]
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(size.n_in, size.n_hidden, nonlinearity="tanh", batch_first=True)
            self.output = nn.Linear(size.n_hidden, size.n_out)

        def forward(self, X):
            return torch.tanh(self.output(self.rnn(X)[0]))

    return Network()


def _torch_deep_stm(torch, size):
    """nn.RNN(num_layers, bidirectional) (tanh), then Linear + Tanh layers at every step."""
    nn = torch.nn
    n_directions = 2 if size.bidirectional else 1

    class Network(nn.Module):  # type: ignore[name-defined]
        def __init__(self):
            super().__init__()
            self.rnn = nn.RNN(size.n_in, size.n_hidden[0], num_layers=len(size.n_hidden),
                              nonlinearity="tanh", batch_first=True,
                              bidirectional=size.bidirectional)
            widths = [size.n_hidden[-1] * n_directions, *size.readout, size.n_out]
            self.readout = nn.Sequential(*(module for n_in, n_out in zip(widths, widths[1:])
                                           for module in (nn.Linear(n_in, n_out), nn.Tanh())))

        def forward(self, X):
            return self.readout(self.rnn(X)[0])

    return Network()


# -- the door: the cost of one call from Python (issue 12) -------------------------------

@dataclass(frozen=True)
class Target:
    """Issue 12's bound on one lgmstm call: at most `seconds`, and at most
    `factor` times the time of the row's `versus` peer plus `slack` seconds
    (each where given)."""

    seconds: float | None = None
    factor: float | None = None
    slack: float = 0.0

    def met(self, ours, versus):
        """Whether lgmstm's time `ours` meets it, the peer taking `versus`."""
        return ((self.seconds is None or ours <= self.seconds)
                and (self.factor is None or ours <= self.factor * versus + self.slack))

    def describe(self, versus):
        parts = [] if self.seconds is None else [f"<= {self.seconds * 1e6:g} us"]
        if self.factor is not None:
            slack = f" + {self.slack * 1e6:g} us" if self.slack else ""
            parts.append(f"<= {self.factor:g}x {versus}{slack}")
        return " and ".join(parts)


@dataclass(frozen=True)
class DoorRow:
    """One call from Python, timed against its peers and held to its target.

    peers: (name, make) pairs, make(dtype) -> run(k) doing k calls (for
    "steady", k epochs of one fit); versus: the peer that the ratio (lgmstm's
    time over the peer's) and the target compare with; needs: the lgmstm
    APIs the row calls, as "STM.step" or "sklearn.LGMRegressor.partial_fit"
    (under lgmstm), checked with hasattr when the benchmark is planned; module:
    a package it needs; steady_epochs: the epochs of the issue's long fit,
    which the pytest-benchmark suite times as one call of the steady peer.
    """

    name: str
    call: str
    peers: tuple
    versus: str | None = None
    target: Target | None = None
    needs: tuple = ()
    module: str = ""
    steady_epochs: int = 0

    def describe(self):
        return self.call

    def missing(self):
        if self.module and importlib.util.find_spec(self.module) is None:
            return f"{self.module} is not installed"
        for api in self.needs:
            owner_path, _, attribute = api.rpartition(".")
            owner = lgmstm
            for part in owner_path.split("."):
                owner = (getattr(owner, part) if hasattr(owner, part)
                         else importlib.import_module(f"{owner.__name__}.{part}"))
            if not hasattr(owner, attribute):
                return f"{owner_path} has no {attribute}"
        return None


_LGM_SEED = _size_named(DENSE_SIZES, "seed")  # 100 samples, 10 -> 5 -> 2
_STM_SEED = _size_named(RECURRENT_SIZES, "seed")  # 100 sequences of 20 steps, 10 -> 5 -> 2


def _calls(call):
    """run(k): k calls of call()."""
    def run(k):
        for _ in range(k):
            call()
    return run


def _sample(size, n_samples, dtype):
    """The first n_samples inputs of a seed problem, C-contiguous (for an STM
    one step of each sequence, (n_samples, n_in))."""
    if isinstance(size, DenseSize):
        return np.ascontiguousarray(_dense_problem(size, dtype)[0][:n_samples])
    return np.ascontiguousarray(_recurrent_problem(size, dtype)[0][:n_samples, 0])


def _seed_call(size, method, n_samples=0, **options):
    """make(dtype): calls of model.method on a seed LGM or STM (made with
    options): on n_samples inputs (predict, step), or on the whole seed
    problem (fit(epochs=1), partial_fit)."""
    def make(dtype):
        model = _model(size, dtype, **options)
        function = getattr(model, method)
        if n_samples:
            x = _sample(size, n_samples, dtype)
            # predict of a stateful STM: one step of each stream, (n, 1, n_in)
            x = x[:, None] if method == "predict" and isinstance(size, RecurrentSize) else x
            return _calls(lambda: function(x))
        X, Y, _ = (_dense_problem if isinstance(size, DenseSize) else _recurrent_problem)(
            size, dtype)
        epochs = {"epochs": 1} if method == "fit" else {}
        return _calls(lambda: function(X, Y, lr=LR, **epochs))
    return make


def _steady(size, problem):
    """make(dtype): the same epoch inside one long fit (k epochs; the timer picks
    k, thousands for the LGM, hundreds for the STM)."""
    return lambda dtype: _model_step("cython", problem)(size, dtype)


def _numpy_lgm_predict(n_samples):
    """make(dtype): the seed LGM's forward pass by hand, np.tanh(np.tanh(x@W1+b1)@W2+b2)."""
    def make(dtype):
        _, _, (W0, b0, W1, b1) = _dense_problem(_LGM_SEED, dtype)
        x = _sample(_LGM_SEED, n_samples, dtype)
        return _calls(lambda: np.tanh(np.tanh(x @ W0 + b0) @ W1 + b1))
    return make


def _numpy_lgm_step(dtype):
    """run(k): k full-batch SGD steps of the seed LGM by hand (forward, the mean
    squared error's gradient, backward, update), in place."""
    X, Y, params = _dense_problem(_LGM_SEED, dtype)
    W0, b0, W1, b1 = params
    scale = 2 / Y.size

    def step():
        A0 = np.tanh(X @ W0 + b0)
        A1 = np.tanh(A0 @ W1 + b1)
        dZ1 = (A1 - Y) * scale * (1 - A1 * A1)
        dZ0 = (dZ1 @ W1.T) * (1 - A0 * A0)
        gradients = (X.T @ dZ0, dZ0.sum(axis=0), A0.T @ dZ1, dZ1.sum(axis=0))
        for param, gradient in zip(params, gradients):
            param -= LR * gradient
    return _calls(step)


def _numpy_stm_step(n_streams):
    """make(dtype): one step of the seed STM by hand on n_streams streams,
    h = np.tanh(x@Wx + h@Wh + b), then the readout np.tanh(h@W_out + b_out)."""
    def make(dtype):
        x = _sample(_STM_SEED, n_streams, dtype)
        _, _, (Wx, Wh, b) = _recurrent_problem(_STM_SEED, dtype)
        rng = np.random.default_rng(1)
        W_out = glorot_uniform(rng, _STM_SEED.n_hidden, _STM_SEED.n_out, dtype)
        b_out = np.zeros(_STM_SEED.n_out, dtype)
        h = np.zeros((n_streams, _STM_SEED.n_hidden), dtype)

        def step():
            nonlocal h
            h = np.tanh(x @ Wx + h @ Wh + b)
            return np.tanh(h @ W_out + b_out)
        return _calls(step)
    return make


def _torch_call(size, n_samples, recurrent=""):
    """make(dtype): a call of the same network in PyTorch, NumPy in and out,
    under torch.no_grad(): the seed LGM as nn.Sequential, or one step of the
    seed STM as nn.RNN ("sequence": x of shape (n, 1, n_in)) or nn.RNNCell
    ("cell") followed by Linear and tanh, the hidden state carried."""
    def make(dtype):
        import torch

        nn, torch_dtype = torch.nn, _torch_dtype(torch, dtype)
        x = _sample(size, n_samples, dtype)
        if not recurrent:
            network = _torch_lgm(torch, size).to(torch_dtype)

            def call():
                with torch.no_grad():
                    return network(torch.from_numpy(x)).numpy()
            return _calls(call)
        cell = (nn.RNN(size.n_in, size.n_hidden, batch_first=True) if recurrent == "sequence"
                else nn.RNNCell(size.n_in, size.n_hidden)).to(torch_dtype)
        readout = nn.Linear(size.n_hidden, size.n_out).to(torch_dtype)
        x = x[:, None] if recurrent == "sequence" else x
        h = torch.zeros((1, n_samples, size.n_hidden) if recurrent == "sequence"
                        else (n_samples, size.n_hidden), dtype=torch_dtype)

        def step():
            nonlocal h
            with torch.no_grad():
                outputs = cell(torch.from_numpy(x), h)
                outputs, h = outputs if recurrent == "sequence" else (outputs, outputs)
                return torch.tanh(readout(outputs)).numpy()
        return _calls(step)
    return make


def _regressor(kind, dtype):
    """The seed-size regressor (10 features -> 5 tanh units -> 1 linear output),
    plain SGD at LR on whole batches of 100: lgmstm's LGMRegressor or
    scikit-learn's MLPRegressor (momentum and L2 penalty off, as the LGM's
    "sgd" has neither)."""
    if kind == "lgmstm":
        from .sklearn import LGMRegressor

        return LGMRegressor(hidden_layer_sizes=(5,), solver="sgd", momentum=0.0, alpha=0.0,
                            learning_rate_init=LR, batch_size=None, max_iter=1, dtype=dtype,
                            random_state=0)
    from sklearn.neural_network import MLPRegressor

    return MLPRegressor(hidden_layer_sizes=(5,), activation="tanh", solver="sgd",
                        learning_rate_init=LR, momentum=0.0, alpha=0.0, batch_size=100,
                        max_iter=1, random_state=0)


def _regressor_call(kind, method):
    """make(dtype): calls of the regressor's partial_fit on the 100-sample seed
    problem (its first output), or of predict on 1 sample after one fit."""
    def make(dtype):
        import warnings

        X, Y, _ = _dense_problem(_LGM_SEED, dtype)
        y = np.ascontiguousarray(Y[:, 0])
        model = _regressor(kind, dtype)
        if method == "partial_fit":
            return _calls(lambda: model.partial_fit(X, y))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLPRegressor: not converged in 1 epoch
            model.fit(X, y)
        x = np.ascontiguousarray(X[:1])
        return _calls(lambda: model.predict(x))
    return make


_ONE_STEP = Target(seconds=8e-6)  # LGM fit(epochs=1) / partial_fit, 100 samples
_STEADY_PLUS = Target(factor=1.25, slack=5e-6)  # STM: 1.25x its steady epoch + 5 us

# One row per line of issue 12's table, then the new calls; peers in the
# order lgmstm, numpy, torch, sklearn, steady.
DOOR_ROWS = (
    DoorRow("lgm_predict_1", "LGM([10,5,2]).predict(x), 1 sample",
            (("lgmstm", _seed_call(_LGM_SEED, "predict", 1)), ("numpy", _numpy_lgm_predict(1)),
             ("torch", _torch_call(_LGM_SEED, 1))),
            versus="numpy", target=Target(seconds=2e-6, factor=0.6)),
    DoorRow("lgm_predict_100", "LGM([10,5,2]).predict(X), 100 samples",
            (("lgmstm", _seed_call(_LGM_SEED, "predict", 100)),
             ("numpy", _numpy_lgm_predict(100))),
            versus="numpy"),
    DoorRow("lgm_fit_1", "LGM.fit(X, Y, epochs=1), 100 samples (numpy: one hand step)",
            (("lgmstm", _seed_call(_LGM_SEED, "fit")), ("numpy", _numpy_lgm_step),
             ("steady", _steady(_LGM_SEED, _dense_problem))),
            versus="steady", target=_ONE_STEP, steady_epochs=2000),
    DoorRow("lgm_fit_steady", "the same epoch inside one long LGM.fit (issue: epochs=2000)",
            (("lgmstm", _steady(_LGM_SEED, _dense_problem)), ("numpy", _numpy_lgm_step)),
            versus="numpy", steady_epochs=2000),
    DoorRow("stm_predict_1", "stateful STM(10,5,2).predict(X), X of shape (1, 1, 10)",
            (("lgmstm", _seed_call(_STM_SEED, "predict", 1, stateful=True)),
             ("numpy", _numpy_stm_step(1)), ("torch", _torch_call(_STM_SEED, 1, "sequence"))),
            versus="torch"),
    DoorRow("stm_fit_1", "STM.fit(X, Y, epochs=1), T=20, B=100",
            (("lgmstm", _seed_call(_STM_SEED, "fit")),
             ("steady", _steady(_STM_SEED, _recurrent_problem))),
            versus="steady", target=_STEADY_PLUS, steady_epochs=300),
    DoorRow("stm_fit_steady", "the same epoch inside one long STM.fit (issue: epochs=300)",
            (("lgmstm", _steady(_STM_SEED, _recurrent_problem)),),
            steady_epochs=300),
    DoorRow("stm_step_1", "STM(10,5,2).step(x), 1 stream",
            (("lgmstm", _seed_call(_STM_SEED, "step", 1)), ("numpy", _numpy_stm_step(1)),
             ("torch", _torch_call(_STM_SEED, 1, "cell"))),
            versus="numpy", target=Target(seconds=2e-6), needs=("STM.step",)),
    DoorRow("stm_step_64", "STM(10,5,2).step(x), 64 streams",
            (("lgmstm", _seed_call(_STM_SEED, "step", 64)), ("numpy", _numpy_stm_step(64)),
             ("torch", _torch_call(_STM_SEED, 64, "cell"))),
            versus="numpy", target=Target(seconds=4e-6), needs=("STM.step",)),
    DoorRow("lgm_partial_fit", "LGM.partial_fit(X, Y), one batch of 100 samples",
            (("lgmstm", _seed_call(_LGM_SEED, "partial_fit")), ("numpy", _numpy_lgm_step),
             ("steady", _steady(_LGM_SEED, _dense_problem))),
            versus="steady", target=_ONE_STEP, needs=("LGM.partial_fit",), steady_epochs=2000),
    DoorRow("stm_partial_fit", "STM.partial_fit(X, Y), one batch, T=20, B=100",
            (("lgmstm", _seed_call(_STM_SEED, "partial_fit")),
             ("steady", _steady(_STM_SEED, _recurrent_problem))),
            versus="steady", target=_STEADY_PLUS, needs=("STM.partial_fit",), steady_epochs=300),
    DoorRow("sk_partial_fit", "LGMRegressor.partial_fit vs MLPRegressor.partial_fit, "
                              "100 samples, 10->5->1, sgd",
            (("lgmstm", _regressor_call("lgmstm", "partial_fit")),
             ("sklearn", _regressor_call("sklearn", "partial_fit"))),
            versus="sklearn", target=Target(factor=1 / 8),
            needs=("sklearn.LGMRegressor.partial_fit",), module="sklearn"),
    DoorRow("sk_predict_1", "LGMRegressor.predict vs MLPRegressor.predict, 1 sample",
            (("lgmstm", _regressor_call("lgmstm", "predict")),
             ("sklearn", _regressor_call("sklearn", "predict"))),
            versus="sklearn", target=Target(factor=1 / 4), module="sklearn"),
)


def _probe(dtype):
    """run(k): k runs of a fixed piece of pure-Python work (100 integer
    additions in a loop), the same in every row: the door's "probe" peer.
    Timed in turns with each row's calls, it shows how fast the machine
    ran while that row was timed. A door call is an absolute time, and a
    shared machine's speed changes under it: on this project's 2-core KVM
    Xeon the probe has taken from 2.3 to 5.4 us (the host's other work,
    for seconds at a time), every call of a row slowing alike."""
    def run(k):
        for _ in range(k):
            total = 0
            for i in range(100):
                total += i
    return run


# The peers of the door table, in its column order; "probe" runs in every row.
DOOR_PEERS = ("lgmstm", "numpy", "torch", "sklearn", "steady", "probe")
# The pause before each timing of a door item (SETTLE_SECONDS elsewhere): a
# door call is too small to wake any worker thread (lgmstm does not fork
# under about a megaflop, BLAS threads no product this small, torch no op
# under its grain size), so there is nothing to wait out but OpenMP's short spin.
DOOR_SETTLE_SECONDS = 0.02


# -- the cases ------------------------------------------------------------------------

@dataclass(frozen=True)
class Implementation:
    name: str
    make: Callable  # (size, dtype) -> run(k)
    only_sizes: tuple = ()  # empty: every size of the case
    needs: str = ""  # an optional module it imports

    def runs_at(self, size):
        return not self.only_sizes or size.name in self.only_sizes

    def missing(self):
        if self.needs and importlib.util.find_spec(self.needs) is None:
            return f"{self.needs} is not installed"
        return None


# A pytest-benchmark call of a case with flops does about this many flops of
# iterations, so that a fit's set-up stays small beside its steps; the same
# for every implementation of a group, so that it compares like with like.
FLOPS_PER_CALL = 1e7


@dataclass(frozen=True)
class Case:
    name: str
    sizes: tuple
    # Floating-point operations of one iteration's GEMMs (2 per multiply-add);
    # None: the case times calls, not flops (the door).
    flops: Callable | None
    implementations: tuple
    training: bool  # also timed on one thread, for the 1 -> N scaling
    quick_sizes: tuple | None = QUICK_SIZES  # the sizes --quick runs; None: all
    dtypes: tuple = ()  # the dtypes it runs in; empty: any
    settle: float | None = None  # the pause before each timing; None: SETTLE_SECONDS
    # (size, implementation name) -> iterations of one pytest-benchmark call;
    # None: about FLOPS_PER_CALL flops
    iterations: Callable | None = None
    size_word: str = "size"  # what its sizes are called, for messages

    def iterations_per_call(self, size, implementation):
        if self.iterations is not None:
            return self.iterations(size, implementation)
        assert self.flops is not None
        return max(1, round(FLOPS_PER_CALL / self.flops(size)))


def _dense_step_flops(s):
    # forward X W0, A0 W1; backward dZ1 W1^T, A0^T dZ1, X^T dZ0
    return 2 * s.n_samples * (2 * s.n_in * s.n_hidden + 3 * s.n_hidden * s.n_out)


def _stm_step_flops(s):
    # forward X W_in, H W_rec, H W_out; backward dY W_out^T, H^T dY, X^T dZ,
    # H^T dZ, dZ W_rec^T, per step
    h = s.n_hidden
    return 2 * s.n_steps * s.n_samples * (2 * s.n_in * h + 3 * h * h + 3 * h * s.n_out)


def _deep_stm_step_flops(s):
    # per layer and direction as _stm_step_flops (the input projection from
    # the layer below), then the readout's layers, forward and backward
    flops, width = 0, s.n_in
    n_directions = 2 if s.bidirectional else 1
    for h in s.n_hidden:
        flops += n_directions * 2 * s.n_steps * s.n_samples * (2 * width * h + 3 * h * h)
        width = n_directions * h
    for n_out in (*s.readout, s.n_out):
        flops += 2 * s.n_steps * s.n_samples * 3 * width * n_out
        width = n_out
    return flops


def _door_peer(name):
    """The door's implementation `name`: that peer of each row that has it
    (the probe: of every row)."""
    if name == "probe":
        return Implementation(name, lambda row, dtype: _probe(dtype))

    def make(row, dtype):
        return dict(row.peers)[name](dtype)
    return Implementation(name, make, needs="torch" if name == "torch" else "",
                          only_sizes=tuple(row.name for row in DOOR_ROWS
                                           if name in dict(row.peers)))


DOOR = Case("door", DOOR_ROWS, None, tuple(map(_door_peer, DOOR_PEERS)), training=True,
            quick_sizes=None, dtypes=("float64",), settle=DOOR_SETTLE_SECONDS,
            iterations=lambda row, peer: row.steady_epochs if peer == "steady" else 1,
            size_word="row")


CASES = (
    Case("dense_forward", DENSE_SIZES,
         lambda s: 2 * s.n_samples * (s.n_in * s.n_hidden + s.n_hidden * s.n_out),
         (Implementation("lgmstm", _dense_forward(kernels)),
          Implementation("numpy", _dense_forward(reference))),
         training=False),
    Case("dense_backward", DENSE_SIZES,
         lambda s: 2 * s.n_samples * (s.n_in * s.n_hidden + 2 * s.n_hidden * s.n_out),
         (Implementation("lgmstm", _dense_backward(kernels)),
          Implementation("numpy", _dense_backward(reference))),
         training=False),
    Case("lgm_step", DENSE_SIZES, _dense_step_flops,
         (Implementation("lgmstm", _model_step("cython", _dense_problem)),
          Implementation("numpy", _model_step("numpy", _dense_problem)),
          Implementation("torch", _torch_step(_torch_lgm, _dense_problem), needs="torch"),
          Implementation("gemm_floor", _gemm_floor, only_sizes=("large",))),
         training=True),
    Case("rnn_forward", RECURRENT_SIZES,
         lambda s: 2 * s.n_steps * s.n_samples * (s.n_in + s.n_hidden) * s.n_hidden,
         (Implementation("lgmstm", _rnn_forward(kernels)),
          Implementation("numpy", _rnn_forward(reference))),
         training=False),
    Case("rnn_backward", RECURRENT_SIZES,
         lambda s: 4 * s.n_steps * s.n_samples * (s.n_in + s.n_hidden) * s.n_hidden,
         (Implementation("lgmstm", _rnn_backward(kernels)),
          Implementation("numpy", _rnn_backward(reference))),
         training=False),
    Case("stm_step", RECURRENT_SIZES, _stm_step_flops,
         (Implementation("lgmstm", _model_step("cython", _recurrent_problem)),
          Implementation("numpy", _model_step("numpy", _recurrent_problem)),
          Implementation("torch", _torch_step(_torch_stm, _recurrent_problem), needs="torch")),
         training=True),
    # issue 15: the deep STM (its compiled program)
    # vs its NumPy composition and torch's nn.RNN(num_layers, bidirectional)
    Case("deep_stm_step", DEEP_SIZES, _deep_stm_step_flops,
         (Implementation("lgmstm", _model_step("cython", _deep_problem)),
          Implementation("numpy", _model_step("numpy", _deep_problem)),
          Implementation("torch", _torch_step(_torch_deep_stm, _deep_problem),
                         needs="torch")),
         training=True),
    DOOR,
)



@dataclass(frozen=True)
class Item:
    """One implementation of one case at one size, dtype and thread count."""

    case: Case
    size: DenseSize | RecurrentSize | DoorRow
    dtype: np.dtype
    implementation: Implementation
    threads: int

    @property
    def group(self):
        """Items of one group are the same work, to be compared side by side."""
        return f"{self.case.name} {self.size.name} {self.dtype.name}"

    @property
    def name(self):
        return f"{self.implementation.name} {self.threads}t"

    @property
    def flops(self):
        """Flops of one iteration; None for the door."""
        return None if self.case.flops is None else self.case.flops(self.size)

    @property
    def iterations_per_call(self):
        """Iterations of one pytest-benchmark call."""
        return self.case.iterations_per_call(self.size, self.implementation.name)

    def prepare(self):
        """Build the data and return run(k), which does k iterations."""
        return self.implementation.make(self.size, self.dtype)


def default_threads():
    """The cores this process may run on (lgmstm._threads.available_cores)."""
    return available_cores()


def parse_selection(text):
    """"CASE" or "CASE:SIZE" (e.g. "stm_step:odd", "door:stm_step_1") as
    (case, size or None).

    Raises ValueError naming the known cases or sizes when there is no such one.
    """
    case_name, _, size_name = text.partition(":")
    cases = {case.name: case for case in CASES}
    if case_name not in cases:
        raise ValueError(f"no benchmark case {case_name!r}; the cases are "
                         f"{', '.join(cases)}")
    sizes = [size.name for size in cases[case_name].sizes]
    if size_name and size_name not in sizes:
        word = cases[case_name].size_word
        raise ValueError(f"{case_name} has no {word} {size_name!r}; its {word}s are "
                         f"{', '.join(sizes)}")
    return case_name, size_name or None


def _selected(case, size, only):
    """Whether `only` (see plan) selects that size of that case."""
    return not only or any(case.name == name and size_name in (None, size.name)
                           for name, size_name in only)


def plan(*, quick=False, dtypes=("float64", "float32"), threads=None, only=()):
    """The items to run, and notes on what is skipped and why.

    Every item runs at `threads` (default: all cores); the training steps
    and the door also at one thread, for the scaling. `only`: (case, size or
    None) pairs from parse_selection; when given, just those. A door row whose
    lgmstm API is missing is skipped with a note, and so is the door when no
    dtype of `dtypes` is one it runs in (float64). The notes speak only of
    what was selected: an implementation that cannot run (torch not
    installed) is noted for the cases and sizes where it would have run.

    Returns
    -------
    items : list of Item
    notes : list of str
    """
    threads = default_threads() if threads is None else threads
    thread_counts = sorted({1, threads}, reverse=True)
    items, notes = [], []
    for case in CASES:
        sizes = [size for size in case.sizes
                 if (not quick or case.quick_sizes is None or size.name in case.quick_sizes)
                 and _selected(case, size, only)]
        if not sizes:
            continue  # not selected: nothing to say about it
        case_dtypes = [dtype for dtype in map(np.dtype, dtypes)
                       if not case.dtypes or dtype.name in case.dtypes]
        if not case_dtypes:
            notes.append(f"{case.name}: skipped, it runs in {', '.join(case.dtypes)} only")
            continue
        available = []
        for implementation in case.implementations:
            if not any(implementation.runs_at(size) for size in sizes):
                continue
            reason = implementation.missing()
            if reason:
                notes.append(f"{case.name} {implementation.name}: skipped, {reason}")
            else:
                available.append(implementation)
        for size in sizes:
            if reason := size.missing():
                notes.append(f"{case.name} {size.name}: skipped, {reason}")
                continue
            for dtype in case_dtypes:
                for n_threads in thread_counts if case.training else [threads]:
                    items += [Item(case, size, dtype, implementation, n_threads)
                              for implementation in available
                              if implementation.runs_at(size)]
    return items, notes


# -- under load (issue 13) ----------------------------------------------------------------

# The cases --loaded runs (their compiled implementation only), and the most
# an N-thread step may take next to one CPU-bound process, over a 1-thread
# step under the same load.
LOADED_CASES = ("lgm_step", "stm_step")
LOADED_TARGET = 1.3


def plan_loaded(*, quick=False, dtypes=("float64", "float32"), threads=None, only=(),
                flag="--loaded"):
    """The items of ``bench --loaded``: the compiled training steps
    (LOADED_CASES, implementation "lgmstm") on 1 and `threads` threads
    (default: all cores), as :func:`plan` selects them, and notes. A
    selection of other cases is noted and left out; with no selection,
    every size of LOADED_CASES runs (--quick: the seed sizes). flag: the
    option the notes name (``bench --passive`` plans with it too).

    Returns
    -------
    items : list of Item
    notes : list of str
    """
    threads = default_threads() if threads is None else threads
    others = sorted({name for name, _ in only if name not in LOADED_CASES})
    notes = [f"{name}: skipped, {flag} runs the training steps only "
             f"({', '.join(LOADED_CASES)})" for name in others]
    only = [(name, size) for name, size in only if name in LOADED_CASES]
    if others and not only:
        return [], notes
    if not only:
        only = [(name, None) for name in LOADED_CASES]
    items, _ = plan(quick=quick, dtypes=dtypes, threads=threads, only=only)
    items = [item for item in items if item.implementation.name == "lgmstm"]
    if threads == 1 and flag == "--loaded":
        notes.append("--loaded compares N threads with 1: on 1 thread there is nothing to "
                     "compare (use --threads N, N > 1)")
    return items, notes


@contextmanager
def cpu_load():
    """A CPU-bound process of this benchmark's own (a Python busy loop)
    running for the time of the block; killed at its end. Yields its pid."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.2)  # started and spinning before the first timing
        yield busy.pid
    finally:
        busy.kill()
        busy.wait()


def loaded_summary(measurements, threads):
    """One row per (case, size, dtype) measured on 1 and `threads` threads:
    "case", "size", "dims", "dtype", "seconds" ({"1": s, "N": s}: median
    seconds per step), "ratio" (the N-thread time over the 1-thread time,
    under the load), "target" (LOADED_TARGET) and "met" (ratio <= target)."""
    groups: dict[str, dict[int, Measurement]] = {}
    for m in measurements:
        groups.setdefault(m.item.group, {})[m.item.threads] = m
    rows = []
    for timings in groups.values():
        if 1 not in timings or threads not in timings or threads == 1:
            continue
        item = timings[1].item
        ratio = timings[threads].seconds / timings[1].seconds
        rows.append({"case": item.case.name, "size": item.size.name,
                     "dims": item.size.describe(), "dtype": item.dtype.name,
                     "seconds": {"1": timings[1].seconds, str(threads): timings[threads].seconds},
                     "ratio": ratio, "target": LOADED_TARGET, "met": ratio <= LOADED_TARGET})
    return rows


# -- the wait policy (issue 13) ----------------------------------------------------------

# The most a training step may take with OMP_WAIT_POLICY=passive over the
# same step with lgmstm's default policy (see lgmstm._waiting), idle.
PASSIVE_TARGET = 1.3
# The policies bench --passive compares: the environment each worker starts in.
WAIT_POLICIES = {"default": {}, "passive": {"OMP_WAIT_POLICY": "passive"}}


def plan_policies(*, quick=False, dtypes=("float64", "float32"), threads=None, only=()):
    """The items of ``bench --passive``: those of :func:`plan_loaded` on
    `threads` threads only (the policy is how idle threads wait: on one
    thread there are none), and notes."""
    threads = default_threads() if threads is None else threads
    items, notes = plan_loaded(quick=quick, dtypes=dtypes, threads=threads, only=only,
                               flag="--passive")
    if threads == 1:
        notes.append("--passive compares how idle threads wait: on 1 thread there are none "
                     "(use --threads N, N > 1)")
    return [item for item in items if item.threads == threads and threads > 1], notes


def _policy_environment(policy):
    """The environment of a worker of `policy`: this one without the
    variables of libgomp's wait policy, then the policy's own. The default
    worker's lgmstm then sets its SPIN_COUNT as it loads (lgmstm._waiting)."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    environment.update(WAIT_POLICIES[policy])
    return environment


def policy_worker(lines=None, out=None):
    """A worker process of ``bench --passive`` (``python -c "from
    lgmstm.benchmarks import policy_worker; policy_worker()"``): prints a
    JSON line with the wait policy its kernels' threads got, then for each
    JSON line {"case", "size", "dtype", "threads", "target_seconds",
    "repeats"} read from stdin measures that compiled training step
    (:func:`measure`) and prints {"seconds", "samples"}; for a line
    {"region_threads", "repeats"}, prints {"region_seconds"}: the time of
    one empty parallel region on that many threads (after as many to warm
    up), what every region of a kernel pays to start and join its threads."""
    from ._openmp import region_seconds
    from ._waiting import policy

    lines = sys.stdin if lines is None else lines
    out = sys.stdout if out is None else out

    def say(message):
        out.write(json.dumps(message) + "\n")
        out.flush()

    say({"wait_policy": policy, "pid": os.getpid()})
    for line in lines:
        request = json.loads(line)
        if "region_threads" in request:
            region_seconds(request["region_threads"], request["repeats"])
            say({"region_seconds": region_seconds(request["region_threads"],
                                                  request["repeats"])})
            continue
        items, _ = plan_loaded(dtypes=(request["dtype"],), threads=request["threads"],
                               only=[(request["case"], request["size"])])
        item = next(item for item in items if item.threads == request["threads"])
        [measurement] = measure([item], target_seconds=request["target_seconds"],
                                repeats=request["repeats"])
        say({"seconds": measurement.seconds, "samples": measurement.samples})


def _package_parent():
    """The folder that holds this lgmstm: a child process started there
    (``python -c``, whose path starts with its working folder) imports the
    same lgmstm, not a source tree it happens to start in."""
    return os.path.dirname(os.path.dirname(os.path.abspath(lgmstm.__file__)))


class _PolicyWorker:
    """A policy_worker process, started in the environment of a policy."""

    def __init__(self, policy):
        self.policy = policy
        self.process = subprocess.Popen(
            [sys.executable, "-c",
             "from lgmstm.benchmarks import policy_worker; policy_worker()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env=_policy_environment(policy), cwd=_package_parent())
        assert self.process.stdin is not None and self.process.stdout is not None
        self.requests, self.replies = self.process.stdin, self.process.stdout
        self.hello = self._reply()

    def _reply(self):
        line = self.replies.readline()
        if not line:
            raise RuntimeError(f"the {self.policy} wait-policy worker ended "
                               f"(exit status {self.process.wait()})")
        return json.loads(line)

    def time(self, item, target_seconds, repeats):
        request = {"case": item.case.name, "size": item.size.name, "dtype": item.dtype.name,
                   "threads": item.threads, "target_seconds": target_seconds,
                   "repeats": repeats}
        self.requests.write(json.dumps(request) + "\n")
        self.requests.flush()
        return self._reply()

    def region(self, n_threads, repeats):
        self.requests.write(json.dumps({"region_threads": n_threads, "repeats": repeats}) + "\n")
        self.requests.flush()
        return self._reply()["region_seconds"]

    def close(self):
        self.requests.close()
        self.process.wait()


# Empty parallel regions bench --passive times in each worker per round.
REGION_REPEATS = 500


def _in_turn(workers, round_):
    """The policies' order in a round: as listed, then reversed, in turns."""
    return list(workers) if round_ % 2 == 0 else list(workers)[::-1]


def compare_wait_policies(items, *, rounds=5, target_seconds=0.15, repeats=3, progress=None):
    """Each item timed in a worker process of each policy (WAIT_POLICIES),
    in turns: per round one timing in each, the order alternating, so that
    the two timings of a round are seconds apart (libgomp reads the policy
    once, when it loads: one process cannot time both, and runs minutes
    apart compare the host's drift more than the policies).

    Returns (rows, workers): a row per item, {"case", "size", "dims",
    "dtype", "threads", "seconds": {policy: median over rounds}, "rounds":
    {policy: [seconds of each round]}, "ratio": median over rounds of
    passive / default, "target": PASSIVE_TARGET, "met"}; workers: each
    policy's wait policy as its lgmstm reported it, its pid, and (with any
    items) "region_seconds": the median over rounds of the time of an empty
    parallel region on the items' threads (REGION_REPEATS a round), which
    under the passive policy is the cost of waking the sleeping threads.
    """
    workers = {}
    rows = []
    try:
        for policy in WAIT_POLICIES:  # each closed below, should the next fail to start
            workers[policy] = _PolicyWorker(policy)
        # Timed first, while nothing has run in the workers yet: after a
        # kernel that called BLAS, OpenBLAS's threads spin on, and a core
        # that is spinning wakes sooner than an idle one.
        if items:
            regions: dict[str, list[float]] = {policy: [] for policy in workers}
            for round_ in range(rounds):
                for policy in _in_turn(workers, round_):
                    regions[policy].append(workers[policy].region(items[0].threads,
                                                                  REGION_REPEATS))
            for policy, times in regions.items():
                workers[policy].hello["region_seconds"] = statistics.median(times)
        for done, item in enumerate(items):
            if progress:
                progress(done, len(items), f"{item.group}: {item.threads}t")
            per_round: dict[str, list[float]] = {policy: [] for policy in workers}
            for round_ in range(rounds):
                for policy in _in_turn(workers, round_):
                    per_round[policy].append(
                        workers[policy].time(item, target_seconds, repeats)["seconds"])
            ratios = [passive / default for passive, default
                      in zip(per_round["passive"], per_round["default"])]
            ratio = statistics.median(ratios)
            rows.append({"case": item.case.name, "size": item.size.name,
                         "dims": item.size.describe(), "dtype": item.dtype.name,
                         "threads": item.threads,
                         "seconds": {policy: statistics.median(times)
                                     for policy, times in per_round.items()},
                         "rounds": per_round, "ratio": ratio, "target": PASSIVE_TARGET,
                         "met": ratio <= PASSIVE_TARGET})
    finally:
        for worker in workers.values():
            worker.close()
    return rows, {policy: worker.hello for policy, worker in workers.items()}


# -- measuring --------------------------------------------------------------------------

@contextmanager
def thread_count(n_threads):
    """Run lgmstm's OpenMP, the BLAS libraries and torch (when loaded) on n_threads.

    lgmstm's kernels still hold BLAS at one thread inside their own
    parallel regions; the limit here is what the NumPy reference, the GEMM
    floor and torch get.
    """
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    saved, saved_torch = get_num_threads(), torch.get_num_threads() if torch else None
    set_num_threads(n_threads)
    if torch:
        torch.set_num_threads(n_threads)
    try:
        with threadpool_limits(n_threads, user_api="blas"):
            yield
    finally:
        if torch:
            torch.set_num_threads(saved_torch)
        set_num_threads(saved)


def _seconds(run, k):
    started = time.perf_counter()
    run(k)
    return time.perf_counter() - started


def _iterations_for(run, target_seconds):
    """Iterations that make one measurement of run last about target_seconds.

    Also the warm-up: the first call's allocations and lazy initialisation,
    and whatever settles over the next few calls, are over when it returns.
    """
    run(1)
    k = 1
    while (elapsed := _seconds(run, k)) < target_seconds / 4 and k < 1_000_000:
        k *= 4
    # Once more at about the target, now that the run is warm.
    k = max(1, round(k * target_seconds / max(elapsed, 1e-9)))
    return max(1, round(k * target_seconds / max(_seconds(run, k), 1e-9)))


@dataclass
class Measurement:
    item: Item
    seconds: float  # median per iteration
    samples: list  # per-iteration seconds of each repeat
    iterations: int  # per repeat

    def to_dict(self):
        item = self.item
        return {
            "case": item.case.name, "size": item.size.name, "dims": item.size.describe(),
            "dtype": item.dtype.name, "implementation": item.implementation.name,
            "threads": item.threads, "seconds": self.seconds, "samples": self.samples,
            "iterations_per_sample": self.iterations, "flops": item.flops,
            "gflops": None if item.flops is None else item.flops / self.seconds / 1e9,
        }


# Long enough for the previous item's idle OpenMP and BLAS workers to sleep.
SETTLE_SECONDS = 0.3
# An iteration of fewer flops than this wakes no worker that spins long, as a
# door call does not (DOOR_SETTLE_SECONDS): OpenBLAS threads no GEMM under
# 64**3 multiply-adds, torch no op under 32768 elements, and the OpenMP
# workers that a seed STM step wakes spin for about 4 ms here (process CPU
# time during a sleep after the step). The seed sizes, all that --quick runs
# outside the door, are below it.
SMALL_WORK_FLOPS = 2**20


def _settle(item):
    """The pause before each timing of item (see measure)."""
    if item.case.settle is not None:
        return item.case.settle
    return DOOR_SETTLE_SECONDS if item.flops < SMALL_WORK_FLOPS else SETTLE_SECONDS


def _pause(previous, item):
    """Sleep before timing item: the longer of its settle and that of
    previous, the item timed last (None: none)."""
    time.sleep(max(_settle(one) for one in (previous or item, item)))


def _rivals(items, across_threads=False):
    """Runs of consecutive items that are the same work on the same threads
    (one case, size, dtype and thread count; across_threads: any thread
    count), in order."""
    runs: list[list[Item]] = []
    for item in items:
        if runs and (runs[-1][0].group == item.group
                     and (across_threads or runs[-1][0].threads == item.threads)):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def measure(items, *, target_seconds=0.15, repeats=5, progress=None, across_threads=False):
    """Median time per iteration of every item, in the items' order.

    Rivals (the implementations of one case, size, dtype and thread count)
    take turns: each is warmed up, then repeat by repeat each is timed once,
    so that a slow spell of a shared machine (here the second core is now
    and then busy elsewhere for seconds) falls on all of them alike, not on
    whichever happened to run through it. Every timing starts after a pause,
    so that none pays for the threads another left spinning: OpenMP and
    OpenBLAS workers spin a while before they sleep (OpenBLAS's 2^28 clock
    ticks, OPENBLAS_THREAD_TIMEOUT's default: about 0.13 s at 2.1 GHz),
    and on 2 cores a spinning worker takes half the machine (the door's calls
    and iterations under SMALL_WORK_FLOPS wake no worker: a short pause,
    DOOR_SETTLE_SECONDS, between them).
    progress(done, total, label), when given, is called before each item's
    warm-up. across_threads: the same work on other thread counts are
    rivals too (bench --loaded: 1 and N threads under the same load).
    """
    measurements = []
    done = 0
    previous = None
    for rivals in _rivals(items, across_threads):
        prepared = []
        for item in rivals:
            if progress:
                progress(done, len(items), f"{item.group}: {item.name}")
            done += 1
            _pause(previous, item)
            previous = item
            run = item.prepare()
            with thread_count(item.threads):
                prepared.append((item, run, _iterations_for(run, target_seconds)))
        samples: list[list[float]] = [[] for _ in prepared]
        for _ in range(repeats):
            for (item, run, k), taken in zip(prepared, samples):
                _pause(item, item)
                with thread_count(item.threads):
                    taken.append(_seconds(run, k) / k)
        measurements += [Measurement(item, statistics.median(taken), taken, k)
                         for (item, _, k), taken in zip(prepared, samples)]
    return measurements


def gemm_peak(dtype, threads, n=2048, repeats=5, warm_up_seconds=0.2, seconds=0.3):
    """This machine's GEMM peak in GFLOP/s: an n x n x n GEMM with scipy's BLAS,
    the best of many timings.

    The GEMM first runs for warm_up_seconds (at least once) on `threads`
    threads, so that BLAS's threads are awake, the pages touched and the
    clock up. Then it is timed once on `threads` threads and (threads > 1)
    once on one thread, repeats times and for at least `seconds` in all.
    The fastest timing counts: a machine busy elsewhere only makes a timing
    slower, and the more timings, the likelier a quiet one. One thread's
    timings count too, since the peak on several threads is at least that
    on one, and a threaded GEMM with a core busy elsewhere can run far
    slower than one thread (on this project's 2-core machine under load,
    n=256: 1 GFLOP/s on 2 threads, 35 on one). A figure still too low shows
    as a "% peak" over 100 (see format_peak_share, peak_notes).
    """
    from scipy.linalg import blas

    dtype = np.dtype(dtype)
    gemm = blas.dgemm if dtype == np.float64 else blas.sgemm
    rng = np.random.default_rng(0)
    a = np.asfortranarray(rng.standard_normal((n, n)), dtype)
    c = np.zeros((n, n), dtype, order="F")

    def run(_):
        gemm(1.0, a, a, c=c, overwrite_c=True)

    with thread_count(threads):
        started = time.perf_counter()
        run(1)
        while time.perf_counter() - started < warm_up_seconds:
            run(1)
    best = float("inf")
    started, done = time.perf_counter(), 0
    while done < repeats or time.perf_counter() - started < seconds:
        for n_threads in sorted({threads, 1}, reverse=True):
            with thread_count(n_threads):
                best = min(best, _seconds(run, 1))
        done += 1
    return 2 * n**3 / best / 1e9


def format_peak_share(share):
    """A row's "% peak" column: the percentage of the GEMM peak, marked "!"
    above 100, where the peak was measured too low (see peak_notes); "-"
    for None."""
    if share is None:
        return "-"
    percent = 100 * share
    text = f"{percent:.2g}" if percent < 99.5 else f"{percent:.0f}"
    return text + ("!" if share > 1 else "")


def peak_notes(rows, peaks):
    """Notes on the rows (of summarise) above 100% of their dtype's GEMM peak:
    no case outruns the GEMM, so the peak was measured while the machine was
    busy, and that dtype's "% peak" figures mean nothing."""
    notes = []
    for dtype, peak in peaks.items():
        over = [f"{row['case']} {row['size']}" for row in rows
                if row["dtype"] == dtype and row["peak_share"] is not None
                and row["peak_share"] > 1]
        if over:
            notes.append(f"% peak over 100 (marked !) in {dtype} ({', '.join(over)}): the "
                         f"GEMM peak, {peak:.3g} GFLOP/s, was measured too low (the machine "
                         f"was busy?), so the {dtype} % peak figures are not meaningful; "
                         f"rerun on an idle machine")
    return notes


def summarise(measurements, peaks, threads):
    """One row per group: times at `threads`, speed-ups, GFLOP/s, scaling.

    peaks maps a dtype name to the GEMM peak in GFLOP/s (see gemm_peak).
    Speed-ups are other / lgmstm (above 1: lgmstm is faster); scaling is the
    time on one thread over the time on `threads`; step_over_floor is the
    compiled step's time over that of its GEMMs alone. The door's
    measurements are left to door_summary.
    """
    groups: dict[str, dict[tuple[str, int], Measurement]] = {}
    for m in measurements:
        if m.item.case is DOOR:
            continue
        groups.setdefault(m.item.group, {})[(m.item.implementation.name, m.item.threads)] = m
    rows = []
    for timings in groups.values():
        item = next(iter(timings.values())).item
        seconds = {name: m.seconds for (name, n), m in timings.items() if n == threads}
        ours = seconds.get("lgmstm")
        row = {"case": item.case.name, "size": item.size.name, "dims": item.size.describe(),
               "dtype": item.dtype.name, "flops": item.flops, "seconds": seconds,
               "speedup_vs_numpy": None, "speedup_vs_torch": None, "gflops": None,
               "peak_share": None, "scaling": {}, "step_over_floor": None}
        if ours:
            for peer in ("numpy", "torch"):
                if peer in seconds:
                    row[f"speedup_vs_{peer}"] = seconds[peer] / ours
            row["gflops"] = item.flops / ours / 1e9
            row["peak_share"] = row["gflops"] / peaks[item.dtype.name]
            if "gemm_floor" in seconds:
                row["step_over_floor"] = ours / seconds["gemm_floor"]
        if threads > 1:
            row["scaling"] = {name: timings[(name, 1)].seconds / t for name, t in seconds.items()
                              if (name, 1) in timings}
        rows.append(row)
    return rows


def door_summary(measurements, *, only=(), dtypes=("float64",)):
    """One row per door row and thread count (fewer threads first), in the
    rows' order, each with its target and whether lgmstm meets it.

    A row: "row", "call", "threads", "seconds" (peer name -> median seconds
    of one call; "steady": of one epoch of a long fit), "versus" (the peer
    compared with), "ratio" (lgmstm's time over that peer's; None without
    one), "target" (None, or its "text" and bounds: "seconds", "factor",
    "slack"), "met" (a bool; None without a target) and "skipped" (None, or
    why the row did not run). Rows selected by `only` (see plan) whose
    lgmstm API is missing come as skipped rows, when the door ran in one
    of `dtypes`.
    """
    timings: dict[str, dict[int, dict[str, float]]] = {}
    for m in measurements:
        if m.item.case is DOOR:
            by_threads = timings.setdefault(m.item.size.name, {})
            by_threads.setdefault(m.item.threads, {})[m.item.implementation.name] = m.seconds
    runs = not DOOR.dtypes or any(np.dtype(dtype).name in DOOR.dtypes for dtype in dtypes)
    rows = []
    for row in DOOR_ROWS:
        if not (runs and _selected(DOOR, row, only)):
            continue
        target = row.target and {"text": row.target.describe(row.versus),
                                 "seconds": row.target.seconds, "factor": row.target.factor,
                                 "slack": row.target.slack}
        common = {"row": row.name, "call": row.call, "versus": row.versus, "target": target}
        reason = row.missing()
        if reason:
            rows.append({**common, "threads": None, "seconds": {}, "ratio": None, "met": None,
                         "skipped": reason})
            continue
        for n_threads, seconds in sorted(timings.get(row.name, {}).items()):
            ours, versus = seconds.get("lgmstm"), seconds.get(row.versus or "")
            rows.append({
                **common, "threads": n_threads, "seconds": seconds,
                "ratio": ours / versus if ours and versus else None,
                "met": (None if row.target is None or ours is None
                        or (row.target.factor is not None and versus is None)
                        else bool(row.target.met(ours, versus))),
                "skipped": None})
    return rows


# -- memory --------------------------------------------------------------------------------

def _status_bytes(field):
    """A memory figure of this process from /proc/self/status (Linux), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(field)


def _memory_child(size_name, epochs):
    """Run in a fresh process: print the memory one fit of `epochs` epochs takes."""
    import tracemalloc

    size = _size_named(DENSE_SIZES, size_name)
    X, Y, _ = _dense_problem(size, np.float64)
    model = lgmstm.LGM([size.n_in, size.n_hidden, size.n_out], seed=0)
    try:
        # Reset the peak resident set to the current one (Linux >= 4.0).
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        rss_before = _status_bytes("VmRSS")
    except OSError:
        rss_before = None
    tracemalloc.start()
    model.fit(X, Y, epochs=epochs, lr=LR)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(json.dumps({
        "epochs": epochs, "traced_peak_bytes": traced_peak,
        "peak_rss_growth_bytes": None if rss_before is None else
        _status_bytes("VmHWM") - rss_before,
    }))


# -- Ctrl-C: how soon a long fit stops (issue 12; the README's "about 0.1 s") ----------

# The README: "within about 0.1 s" (fit runs blocks of epochs of about
# BLOCK_SECONDS = 0.1 s and sees the signal between them): the largest trial
# within 0.15 s is "about".
CTRL_C_SECONDS = 0.15


def interrupted_fit(model, X, Y, after, lr=LR):
    """fit(X, Y) without end, a SIGINT sent `after` s into it from a timer
    thread (the caller: the main thread, with Python's handler): (the
    KeyboardInterrupt it raised, seconds from the signal to it), or (None,
    None) when the fit ended first."""
    import signal
    import threading

    sent = {}

    def interrupt():
        sent["time"] = time.perf_counter()
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(after, interrupt)
    timer.start()
    try:
        model.fit(X, Y, epochs=10**9, lr=lr)
    except KeyboardInterrupt as exc:
        return exc, time.perf_counter() - sent["time"]
    finally:
        timer.cancel()
    return None, None


def ctrl_c_latency(size_names=("medium",), repeats=3, after=0.3):
    """Seconds from a SIGINT to the TrainingInterrupted of a long fit of the
    LGM and the STM of each size (full-batch SGD, epochs without end), the
    signal sent `after` s into the fit from a timer thread, `repeats` times
    each. Returns a dict: "runs" (one per model and size: "model", "size",
    "seconds" (each trial), "consistent" (the model predicts finite values
    and its history_ holds finite losses)), "median" and "max" over every
    trial, "target" (CTRL_C_SECONDS) and "met" (the largest within it, and
    every model consistent).
    Signals reach the main thread only: None elsewhere, or where SIGINT is
    ignored (a process started in the background by a shell)."""
    import signal
    import threading

    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        return None
    runs = []
    for size_name in size_names:
        for sizes, problem in ((DENSE_SIZES, _dense_problem),
                               (RECURRENT_SIZES, _recurrent_problem)):
            size = _size_named(sizes, size_name)
            X, Y, _ = problem(size, np.float64)
            model = _model(size, np.float64)
            seconds = []
            for _ in range(repeats):
                stopped, latency = interrupted_fit(model, X, Y, after)
                if isinstance(stopped, lgmstm.TrainingInterrupted):
                    seconds.append(latency)
            consistent = bool(np.isfinite(model.predict(X)).all()
                              and np.isfinite(model.history_).all())
            runs.append({"model": type(model).__name__, "size": size_name,
                         "seconds": seconds, "consistent": consistent})
    trials = [t for run in runs for t in run["seconds"]]
    # No trial interrupted: no times (None, not inf: the JSON stays standard).
    worst = max(trials) if trials else None
    return {"runs": runs, "median": statistics.median(trials) if trials else None,
            "max": worst, "target": CTRL_C_SECONDS,
            "met": worst is not None and worst <= CTRL_C_SECONDS
            and all(run["consistent"] for run in runs) and len(trials) == repeats * len(runs)}


# Allowed extra memory of the longer fit: its loss history (8 bytes an epoch)
# fits well inside these; a buffer kept per epoch would not.
TRACED_TOLERANCE = 64 * 1024
RSS_TOLERANCE = 2 * 1024 * 1024


def memory_check(size_name="medium", epochs=(20, 500)):
    """Peak memory of an LGM fit of a few and of many epochs, each in a fresh
    process (the processes run at the same time: each measures only itself).

    Returns a dict with one entry per fit (tracemalloc's peak of the NumPy
    allocations, and the peak resident set's growth over the fit, which also
    sees the compiled code's malloc; None where the system does not tell)
    and "ok": the longer fit took no more than the shorter one, within
    TRACED_TOLERANCE and RSS_TOLERANCE.
    """
    children = []
    for n_epochs in epochs:
        code = (f"from lgmstm.benchmarks import _memory_child; "
                f"_memory_child({size_name!r}, {int(n_epochs)})")
        children.append(subprocess.Popen([sys.executable, "-c", code], cwd=_package_parent(),
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True))
    runs = []
    for child, (output, errors) in zip(children, [child.communicate() for child in children]):
        if child.returncode:
            raise subprocess.CalledProcessError(child.returncode, child.args, output, errors)
        runs.append(json.loads(output.strip().splitlines()[-1]))
    short, long = runs[0], runs[-1]
    ok = long["traced_peak_bytes"] <= short["traced_peak_bytes"] + TRACED_TOLERANCE
    if short["peak_rss_growth_bytes"] is not None:
        ok = ok and (long["peak_rss_growth_bytes"]
                     <= short["peak_rss_growth_bytes"] + RSS_TOLERANCE)
    return {"size": size_name, "fits": runs, "ok": ok}


# -- quality: the estimators against scikit-learn's MLP (issue 14) ----------------------
# Not a timing table: on the data bundled with scikit-learn, lgmstm.sklearn's
# estimators and scikit-learn's MLP (activation="tanh") are fitted with the
# same settings on the same splits, and their held-out scores and fit times
# are held to the targets. Needs scikit-learn (lgmstm[sklearn]).

QUALITY_DATA = (("digits", "classification"), ("breast_cancer", "classification"),
                ("wine", "classification"), ("diabetes", "regression"))
QUALITY_TEST_SIZE = 0.25
QUALITY_SEEDS, QUALITY_QUICK_SEEDS = 5, 2
QUALITY_EPOCHS, QUALITY_QUICK_EPOCHS = 200, 20
# Both estimators: scikit-learn's defaults (one hidden layer of 100, Adam at
# 0.001, alpha 1e-4, batches of min(200, n_samples)), and exactly `epochs`
# epochs each (a plateau never stops them), so that the times compare the
# same work.
QUALITY_SETTINGS = {"hidden_layer_sizes": (100,), "solver": "adam", "batch_size": "auto",
                    "learning_rate_init": 0.001, "alpha": 1e-4}
# The targets: lgmstm's mean against scikit-learn's.
QUALITY_TARGETS = {
    "accuracy": ("accuracy >= MLP - 0.005", lambda ours, theirs: ours >= theirs - 0.005),
    "log_loss": ("log-loss <= 1.05 x MLP", lambda ours, theirs: ours <= 1.05 * theirs),
    "r2": ("R^2 >= MLP - 0.01", lambda ours, theirs: ours >= theirs - 0.01),
    "fit_seconds": ("fit >= 10 x faster", lambda ours, theirs: 10 * ours <= theirs),
}
# The early-stopping criterion, checked on lgmstm alone (scikit-learn's
# MLP keeps no validation loss): a fit with early_stopping=True (its own
# n_iter_no_change, not QUALITY_SETTINGS' epochs) must hold the network whose
# validation loss, measured anew on the held-out part, is the best of
# validation_scores_, to the bit.
QUALITY_EARLY_STOPPING_TARGET = "restored validation loss == best_validation_score_ (bits)"


def _quality_split(name, seed):
    """Standardised train and test parts of the data set `name` (features
    scaled on the training part; diabetes' target too, which changes no R^2)."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    classification = dict(QUALITY_DATA)[name] == "classification"
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=QUALITY_TEST_SIZE, random_state=seed,
        stratify=y if classification else None)
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    std[std == 0] = 1.0
    X_train, X_test = (X_train - mean) / std, (X_test - mean) / std
    if not classification:
        y_mean, y_std = y_train.mean(), y_train.std()
        y_train, y_test = (y_train - y_mean) / y_std, (y_test - y_mean) / y_std
    return X_train, X_test, y_train, y_test


def _quality_estimator(library, kind, seed, epochs):
    settings = dict(QUALITY_SETTINGS, max_iter=epochs, n_iter_no_change=epochs,
                    random_state=seed)
    if library == "lgmstm":
        from . import sklearn as estimators

        return (estimators.LGMClassifier if kind == "classification"
                else estimators.LGMRegressor)(**settings)
    from sklearn import neural_network

    return (neural_network.MLPClassifier if kind == "classification"
            else neural_network.MLPRegressor)(activation="tanh", **settings)


def _early_stopping_restored(kind, seed, epochs, X_train, y_train):
    """Fit lgmstm's estimator with early_stopping=True on one split and
    rebuild its validation part as the estimator draws it (scikit-learn's
    train_test_split, random_state the seed's RandomState, stratified by
    class for a classifier; targets as the network trains on them: a
    sigmoid's 0/1 column for two classes, else one-hot, or the regressor's
    standardised y). Returns the restored network's validation loss there
    (in the estimator's scale: half the network's squared error for the
    regressor) and whether it equals -best_validation_score_ and the best
    of validation_scores_ to the bit."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split

    estimator = _quality_estimator("lgmstm", kind, seed, epochs)
    estimator.set_params(early_stopping=True, n_iter_no_change=10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(X_train, y_train)
    split = np.random.RandomState(seed)
    if kind == "classification":
        labels = np.searchsorted(estimator.classes_, y_train)
        _, X_val, _, labels_val = train_test_split(
            X_train, labels, test_size=estimator.validation_fraction, random_state=split,
            stratify=labels)
        n_classes = len(estimator.classes_)
        if n_classes <= 2:
            Y_val = (labels_val == n_classes - 1).astype(np.float64)[:, None]
        else:
            Y_val = (np.arange(n_classes) == labels_val[:, None]).astype(np.float64)
        scale = 1.0
    else:
        Y = (np.asarray(y_train, np.float64)[:, None] - estimator.y_mean_) / estimator.y_scale_
        _, X_val, _, Y_val = train_test_split(
            X_train, Y, test_size=estimator.validation_fraction, random_state=split)
        scale = 0.5
    restored = scale * estimator.lgm_.loss(X_val, Y_val)
    best = estimator.best_validation_score_
    equal = bool(-restored == best == np.max(estimator.validation_scores_))
    return float(restored), equal


def quality(*, quick=False, seeds=None, epochs=None, data=None, progress=None):
    """Fit lgmstm's estimators and scikit-learn's MLP on each data set of
    QUALITY_DATA (or those named in `data`), on the same splits (25% held
    out, one per seed), and summarise: a row per data set and metric
    (accuracy and log-loss, or R^2, and fit seconds), with each library's
    mean and standard deviation over the seeds and whether lgmstm meets the
    issue's target; and a row "early_stopping", lgmstm's alone (the
    scikit-learn columns None): the restored network's validation loss of
    a fit with early_stopping=True per seed (mean and standard deviation),
    "seeds_met" the seeds where it equals the best validation score to the
    bit, met when all do (_early_stopping_restored). quick:
    QUALITY_QUICK_SEEDS seeds of QUALITY_QUICK_EPOCHS epochs. ImportError
    without scikit-learn."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, log_loss, r2_score

    seeds = seeds or (QUALITY_QUICK_SEEDS if quick else QUALITY_SEEDS)
    epochs = epochs or (QUALITY_QUICK_EPOCHS if quick else QUALITY_EPOCHS)
    rows = []
    for name, kind in QUALITY_DATA:
        if data is not None and name not in data:
            continue
        scores: dict[str, dict[str, list[float]]] = {"lgmstm": {}, "sklearn": {}}
        restored: list[tuple[float, bool]] = []
        for seed in range(seeds):
            X_train, X_test, y_train, y_test = _quality_split(name, seed)
            if progress is not None:
                progress(f"{name} seed {seed} lgmstm early_stopping")
            restored.append(_early_stopping_restored(kind, seed, epochs, X_train, y_train))
            for library in scores:
                if progress is not None:
                    progress(f"{name} seed {seed} {library}")
                estimator = _quality_estimator(library, kind, seed, epochs)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    started = time.perf_counter()
                    estimator.fit(X_train, y_train)
                    seconds = time.perf_counter() - started
                measured = {"fit_seconds": seconds}
                if kind == "classification":
                    measured["accuracy"] = accuracy_score(y_test, estimator.predict(X_test))
                    measured["log_loss"] = log_loss(y_test, estimator.predict_proba(X_test),
                                                    labels=estimator.classes_)
                else:
                    measured["r2"] = r2_score(y_test, estimator.predict(X_test))
                for metric, value in measured.items():
                    scores[library].setdefault(metric, []).append(float(value))
        for metric in ("accuracy", "log_loss", "r2", "fit_seconds"):
            if metric not in scores["lgmstm"]:
                continue
            ours, theirs = scores["lgmstm"][metric], scores["sklearn"][metric]
            target, met = QUALITY_TARGETS[metric]
            rows.append({"data": name, "metric": metric, "seeds": seeds, "epochs": epochs,
                         "lgmstm_mean": float(np.mean(ours)), "lgmstm_std": float(np.std(ours)),
                         "sklearn_mean": float(np.mean(theirs)),
                         "sklearn_std": float(np.std(theirs)),
                         "target": target, "met": bool(met(np.mean(ours), np.mean(theirs)))})
        losses = [loss for loss, _ in restored]
        seeds_met = sum(equal for _, equal in restored)
        rows.append({"data": name, "metric": "early_stopping", "seeds": seeds, "epochs": epochs,
                     "lgmstm_mean": float(np.mean(losses)), "lgmstm_std": float(np.std(losses)),
                     "sklearn_mean": None, "sklearn_std": None,
                     "target": QUALITY_EARLY_STOPPING_TARGET, "seeds_met": seeds_met,
                     "met": seeds_met == seeds})
    return rows
