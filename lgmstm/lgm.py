"""LGM, the long-term generalization memory: a feed-forward network of tanh
layers trained by gradient descent.

Parameters live in NumPy arrays; ``backend="cython"`` runs every
predict/gradients/fit in compiled code (fit in a few calls, each covering
many epochs), ``backend="numpy"`` runs the same maths with
:mod:`lgmstm.reference`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _dense, _lgm, reference
from ._base import PROBABILITY_OUTPUTS, Model, check_output, glorot_uniform
from ._threads import get_num_threads, single_threaded_blas
from ._train import short_fit_takes
from ._training import (
    ADAM_BETA1,
    ADAM_BETA2,
    ADAM_EPS,
    MOMENTUM,
    PATIENCE,
    POWER_T,
    TOL,
    CheckedPathOnly,
    CompiledTrainer,
    ReferenceTrainer,
    TrainingControl,
    TrainingWorkspace,
    add_weight_decay,
    check_validation_set,
    beyond_tanh,
    plan_fit,
    short_fit_state,
    train_model,
    warn_beyond_tanh,
    weight_penalty,
)
from ._validation import (
    MAX_DIM,
    as_array,
    check_validation_data,
    naming_validation_data,
    check_int,
    check_positive_float,
    check_product,
    check_sample_weight,
    check_targets,
)

__all__ = ["LGM"]

# predict runs a large batch in slabs whose activations take about this much
# per thread (they stay in a core's L2 cache between the layers).
PREDICT_SLAB_BYTES = 2**20


class _CompiledNetwork:
    """Forward/gradients/training of a dense network with lgmstm._lgm."""

    def __init__(self, params, layer_sizes, output, lock):
        self.params = params
        self.sizes = np.asarray(layer_sizes, dtype=np.intp)
        self.program = _lgm.Network(params, self.sizes, output, lock)
        # The fast paths of predict and of short fits: a result, or None for
        # the checked path.
        self.predict_ready = self.program.predict_ready
        self.fit_ready = self.program.fit_ready
        self.program.run_factory = self._short_run
        self.workspace = TrainingWorkspace()

    def _buffers(self, n_samples, dtype):
        return [np.empty((n_samples, n), dtype) for n in self.sizes[1:]]

    def predict(self, X, logits=False):
        n_samples, n_threads = X.shape[0], get_num_threads()
        slab = self._slab_rows(X.dtype, n_threads)
        with single_threaded_blas(self.program.blas_work(n_samples)):
            if n_samples <= slab:
                activations = self._buffers(n_samples, X.dtype)
                self.program.predict(X, activations, n_threads, logits)
                return activations[-1]
            # A slab of rows at a time through every layer, its hidden
            # activations in cache; each slab a multiple of the row quantum,
            # so that every GEMM task is the one of the whole batch (the same
            # bits), into the rows of one output.
            outputs = np.empty((n_samples, self.sizes[-1]), X.dtype)
            hidden = self._buffers(slab, X.dtype)[:-1]
            for start in range(0, n_samples, slab):
                stop = min(start + slab, n_samples)
                self.program.predict(X[start:stop],
                                     [h[:stop - start] for h in hidden] + [outputs[start:stop]],
                                     n_threads, logits)
            return outputs

    def _slab_rows(self, dtype, n_threads):
        """Rows of predict's slabs: hidden activations of about
        PREDICT_SLAB_BYTES per thread, a multiple of the row quantum."""
        row_bytes = int(self.sizes[1:].sum()) * np.dtype(dtype).itemsize
        quantum = self.program.row_quantum()
        return quantum * max(1, PREDICT_SLAB_BYTES * n_threads // (row_bytes * quantum))

    def loss(self, X, Y, weights=None):
        with single_threaded_blas(self.program.blas_work(X.shape[0])):
            return self.program.mean_loss(X, Y, weights, get_num_threads())

    def gradients(self, X, Y, weights=None):
        grads = [np.empty_like(p) for p in self.params]
        partials = np.empty(_dense.partials_size(Y.shape[0]))
        with single_threaded_blas(self.program.blas_work(X.shape[0])):
            loss = self.program.gradients(
                X, Y, grads, self._buffers(X.shape[0], X.dtype),
                self._buffers(X.shape[0], X.dtype), partials, get_num_threads(), weights)
        return loss, grads

    def trainer(self, X, Y, batch_size, optimizer, lr, clip_norm=None, weight_decay=0.0,
                weights=None, validation=None, control=TrainingControl()):
        """A CompiledTrainer continuing the OptimizerState `optimizer`;
        weights: the samples' loss weights or None; validation: (X_val,
        Y_val) or None."""
        dtype = X.dtype

        def make_workspace():
            return ([np.empty_like(p) for p in self.params],
                    [np.empty((batch_size, X.shape[1]), dtype),
                     np.empty((batch_size, Y.shape[1]), dtype),
                     np.empty(_dense.partials_size(batch_size)),
                     *self._buffers(batch_size, dtype), *self._buffers(batch_size, dtype)])

        # The model fixes X's and Y's widths: batch size and dtype are the key.
        grads, workspace = self.workspace.get((batch_size, dtype), make_workspace)
        blas_work = self.program.blas_work(batch_size)
        if validation is not None:
            blas_work = max(blas_work, self.program.blas_work(validation[0].shape[0]))
            validation = self.program.validation_data(*validation)
        return CompiledTrainer(self, X, Y, batch_size, optimizer, lr, grads=grads,
                               workspace=workspace, blas_work=blas_work,
                               clip_norm=clip_norm, weight_decay=weight_decay,
                               weights=weights, validation=validation, control=control)

    def _short_run(self, X, Y, h0, batch_size, state, optimizer, settings):
        """The TrainingRun the short fit keeps (see _train.Program.fit_ready),
        and the state it continues (see short_fit_state)."""
        state = short_fit_state(state, optimizer, settings, self.params)
        return self.trainer(X, Y, batch_size, state, 1.0).run_data, state


class _ReferenceNetwork(CheckedPathOnly):
    """The same network in plain NumPy (lgmstm.reference)."""

    def __init__(self, params, layer_sizes, output, lock):
        self.params = params
        self.n_layers = len(layer_sizes) - 1
        self.output = output
        self.output_tanh = output == "tanh"

    def _tanh(self, layer):
        return self.output_tanh or layer < self.n_layers - 1

    def _forward(self, X):
        activations = []
        for layer in range(self.n_layers):
            W, b = self.params[2 * layer], self.params[2 * layer + 1]
            X = reference.layer_forward(X, W, b, self._tanh(layer))
            activations.append(X)
        return activations

    def predict(self, X, logits=False):
        outputs = self._forward(X)[-1]
        return outputs if logits else reference.output_function(self.output, outputs)

    def loss(self, X, Y, weights=None):
        value, _ = reference.output_loss(self.output, self.predict(X, logits=True), Y, weights)
        return value

    def gradients(self, X, Y, weights=None):
        activations = self._forward(X)
        loss, delta = reference.output_loss(self.output, activations[-1], Y, weights)
        grads = [None] * len(self.params)
        for layer in range(self.n_layers - 1, -1, -1):
            layer_input = X if layer == 0 else activations[layer - 1]
            delta, grads[2 * layer], grads[2 * layer + 1] = reference.layer_backward(
                layer_input, self.params[2 * layer], activations[layer], delta,
                self._tanh(layer), need_dX=layer > 0)
        return loss, grads

    def trainer(self, X, Y, batch_size, optimizer, lr, clip_norm=None, weight_decay=0.0,
                weights=None, validation=None, control=TrainingControl()):
        n_out = Y.shape[1]

        def batch(rows):
            batch_weights = None if weights is None else weights[rows]
            loss, grads = self.gradients(X[rows], Y[rows], batch_weights)
            n_rows = len(range(X.shape[0])[rows]) if isinstance(rows, slice) else len(rows)
            return loss * reference.loss_count(self.output, batch_weights, n_rows, n_out), grads

        def validate():
            return self.loss(*validation)

        return ReferenceTrainer(
            self.params, batch, X.shape[0],
            reference.loss_count(self.output, weights, X.shape[0], n_out), batch_size,
            optimizer, lr, clip_norm, weight_decay=weight_decay,
            validate=None if validation is None else validate, control=control)


_NETWORKS: dict[str, type[_CompiledNetwork] | type[_ReferenceNetwork]] = {
    "cython": _CompiledNetwork, "numpy": _ReferenceNetwork}


class LGM(Model):
    """Long-term generalization memory: a feed-forward tanh network.

    ``Y = f_L(... tanh(tanh(X W_0 + b_0) W_1 + b_1) ...)``, trained to minimise
    the loss of its output (see :meth:`loss`): the mean squared error
    ``mean((Y - target)**2)`` over all samples and outputs for "tanh" and
    "linear", the cross-entropy for "softmax" and "sigmoid".

    Parameters
    ----------
    layer_sizes : sequence of int, length >= 2
        ``[n_in, n_hidden_1, ..., n_out]``, each >= 1.
    output : {"tanh", "linear", "softmax", "sigmoid"}, default "tanh"
        Activation of the last layer, and the loss: "tanh" keeps outputs
        in (-1, 1), "linear" suits unbounded regression targets (both
        squared error; fit warns, with a TargetRangeWarning, when a tanh
        output is given targets outside [-1, 1]). "softmax" (n_out >= 2
        classes): class probabilities, trained on the cross-entropy with
        targets one-hot or class probabilities (rows summing to 1).
        "sigmoid": a probability per output (binary or multi-label),
        trained on the binary log-loss with targets in [0, 1]. Both fuse
        the function with its loss (the gradient is ``p - y``, computed
        from the logits without overflow); :meth:`predict_log_proba` gives
        the log-probabilities. Hidden layers are tanh.
    dtype : float32 or float64, default float64
        Dtype of the parameters and of every result. The data (X, Y) are
        converted to it: arrays of either float dtype, of integers or bools,
        and nested lists of numbers; float16, longdouble, complex, object
        and string data are refused with a TypeError.
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
        The constructor's arguments, as checked; read-only (setting one
        raises AttributeError): they fix the compiled network and what
        :meth:`save` writes, so another architecture is another model.
    kind : str
        "LGM", as written in saved files.
    params : dict of str to ndarray
        Copies of ``layer{l}.weight`` (n_l, n_{l+1}) and ``layer{l}.bias`` (n_{l+1},).
    history_ : ndarray of shape (n_epochs,)
        Per-epoch losses of the last :meth:`fit` (one for :meth:`partial_fit`).
    validation_history_ : ndarray of shape (n_epochs,) or (0,), float64
        Per-epoch validation losses of the last :meth:`fit` (empty without
        a validation set).
    best_epoch_ : int or None
        Index into ``history_`` of the epoch with the lowest validation
        loss (the one early stopping restored); None without validation.

    Raises
    ------
    TypeError
        layer_sizes is not a sequence of ints, dtype not float32/float64, or
        seed not an int, Generator or None.
    ValueError
        Fewer than two layer sizes, a size < 1, an unknown output or backend,
        or output="softmax" with n_out < 2.
    """

    kind = "LGM"
    _fixed = ("layer_sizes", "output", "dtype", "backend")

    def __init__(self, layer_sizes: Sequence[int], *, output: str = "tanh",
                 dtype: DTypeLike = np.float64,
                 seed: int | np.random.Generator | None = None,
                 backend: str = "cython") -> None:
        shapes = self._define(layer_sizes, output, dtype, seed, backend)
        # Glorot-uniform weights, zero biases.
        self._connect([glorot_uniform(self._rng, *shape, self._dtype) if len(shape) == 2
                       else np.zeros(shape, self._dtype) for shape in shapes.values()])

    def _define(self, layer_sizes: Sequence[int], output: str, dtype: DTypeLike,
                seed: int | np.random.Generator | None, backend: str,
                ) -> dict[str, tuple[int, ...]]:
        """The constructor's checks and choices, all but the parameters;
        returns their shapes, by name."""
        if isinstance(layer_sizes, (str, bytes)) or not hasattr(layer_sizes, "__len__"):
            raise TypeError(f"layer_sizes must be a sequence of ints, got {layer_sizes!r}")
        sizes = [check_int(f"layer_sizes[{i}]", n, 1, maximum=MAX_DIM)
                 for i, n in enumerate(layer_sizes)]
        if len(sizes) < 2:
            raise ValueError(f"layer_sizes needs at least two sizes [n_in, n_out], got {sizes}")
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            check_product("layer_sizes: a weight", n_in, n_out)
        self._layer_sizes: tuple[int, ...] = tuple(sizes)
        self._output = check_output(output, sizes[-1])
        self._set_up(dtype, seed, backend)
        shapes: dict[str, tuple[int, ...]] = {}
        for layer, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            shapes[f"layer{layer}.weight"], shapes[f"layer{layer}.bias"] = (n_in, n_out), (n_out,)
        return shapes

    def _connect(self, params: list[NDArray[Any]]) -> None:
        """params (in the order of _param_names) as the model's, and the network over them."""
        self._params = params
        self._network = _NETWORKS[self._backend](self._params, self._layer_sizes, self._output,
                                                 self._lock)

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """``(n_in, n_hidden_1, ..., n_out)`` (read-only)."""
        return self._layer_sizes

    @layer_sizes.setter
    def layer_sizes(self, value: Sequence[int]) -> None:
        self._refuse("layer_sizes", value)

    # -- what Model needs ---------------------------------------------------------
    def _param_names(self) -> Iterator[str]:
        for layer in range(len(self._layer_sizes) - 1):
            yield f"layer{layer}.weight"
            yield f"layer{layer}.bias"

    def _arguments(self) -> dict[str, Any]:
        return {"layer_sizes": self._layer_sizes, "output": self._output}

    def _construct(self, arguments: dict[str, Any], dtype: str, backend: str,
                   rng: np.random.Generator) -> None:
        shapes = LGM._define(self, arguments["layer_sizes"], arguments["output"], dtype, rng,
                             backend)
        LGM._connect(self, [np.empty(shape, self._dtype) for shape in shapes.values()])

    def _config(self) -> dict[str, NDArray[Any]]:
        return {"layer_sizes": np.asarray(self._layer_sizes, np.int64),
                "output": np.asarray(self._output)}

    def __repr__(self) -> str:
        return (f"LGM({list(self._layer_sizes)}, output={self._output!r}, "
                f"dtype={self._dtype.name}, backend={self._backend!r})")

    # -- checks ---------------------------------------------------------------
    def _inputs(self, X: ArrayLike) -> NDArray[Any]:
        X = as_array("X", X, 2)
        if X.shape[1] != self._layer_sizes[0]:
            raise ValueError(
                f"X must have shape (n_samples, {self._layer_sizes[0]}), got {X.shape}")
        return np.ascontiguousarray(X, dtype=self._dtype)

    def _targets(self, Y: ArrayLike, n_samples: int) -> NDArray[Any]:
        n_out = self._layer_sizes[-1]
        Y = as_array("Y", Y, (1, 2) if n_out == 1 else 2)
        given = Y.shape
        if Y.ndim == 1:
            Y = Y.reshape(-1, 1)
        if Y.shape != (n_samples, n_out):
            raise ValueError(self._targets_error(given, n_samples))
        Y = np.ascontiguousarray(Y, dtype=self._dtype)
        check_targets(self._output, Y)
        return Y

    def _targets_error(self, given: tuple[int, ...], n_samples: int) -> str:
        """The message for targets of shape `given` where n_samples rows of
        the model's outputs are needed (one output may leave its axis out)."""
        n_out = self._layer_sizes[-1]
        alone = f" or (n_samples,) = ({n_samples},)" if n_out == 1 else ""
        return f"Y must have shape (n_samples, n_out) = {(n_samples, n_out)}{alone}, got {given}"

    @staticmethod
    def _sample_weight(sample_weight: ArrayLike | None,
                       n_samples: int) -> NDArray[np.float64] | None:
        return check_sample_weight(sample_weight, ((n_samples,),), "(n_samples,)")

    # -- use --------------------------------------------------------------------
    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """Outputs of the network.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_in)
            Real numbers, converted to the model's dtype: float32, float64,
            integer and bool arrays and nested lists of numbers; float16,
            longdouble, complex, object and string data are refused.

        Returns
        -------
        Y : ndarray of shape (n_samples, n_out), the model's dtype
            The last layer's outputs, in (-1, 1) for ``output="tanh"``; for
            ``"softmax"`` the class probabilities (rows summing to 1), for
            ``"sigmoid"`` each output's probability.

        Raises
        ------
        TypeError
            X is not an array of real numbers.
        ValueError
            X has the wrong number of dimensions or a shape that does not
            fit the architecture (the message shows expected vs actual).
        """
        outputs = self._network.predict_ready(X)  # X as the kernels take it: no checks
        if outputs is not None:
            return outputs
        X = self._inputs(X)
        with self._lock.reading():
            return self._network.predict(X)

    def predict_log_proba(self, X: ArrayLike) -> NDArray[Any]:
        """Log-probabilities of a ``"softmax"`` or ``"sigmoid"`` model.

        Computed from the logits, stably: ``log_softmax`` (max-subtracted)
        or ``log sigmoid(z) = -softplus(-z)``; finite wherever the logits
        are, never ``log(0)``. ``exp`` of it is :meth:`predict`'s result.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_in)
            As for :meth:`predict`.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_out), the model's dtype

        Raises
        ------
        ValueError
            The model's output is not "softmax" or "sigmoid", or X has a
            wrong shape (as for :meth:`predict`).
        TypeError
            X is not an array of real numbers.
        """
        if self._output not in PROBABILITY_OUTPUTS:
            raise ValueError("predict_log_proba needs a model made with output='softmax' or "
                             f"output='sigmoid', this one has output={self._output!r}")
        return reference.log_probabilities(self._output, self._logits(X))

    def _logits(self, X: ArrayLike) -> NDArray[Any]:
        """The output layer's values before its activation (softmax or
        sigmoid) on X, checked as by :meth:`predict`."""
        X = self._inputs(X)
        with self._lock.reading():
            logits: NDArray[Any] = self._network.predict(X, logits=True)
        return logits

    def loss(self, X: ArrayLike, Y: ArrayLike, *, weight_decay: float = 0.0,
             sample_weight: ArrayLike | None = None) -> float:
        """The loss fit minimises, plus ``weight_decay / 2 * sum(W**2)`` over
        the weights (not the biases).

        By the model's output: "tanh" and "linear", the mean squared error
        ``mean((predict(X) - Y)**2)`` over all elements; "softmax", the mean
        over samples of the cross-entropy ``-sum_k Y_k log p_k``; "sigmoid",
        the mean over samples of the binary log-loss summed over the
        outputs, ``-sum_k (Y_k log p_k + (1 - Y_k) log(1 - p_k))``. With
        sample_weight w, the weighted mean ``sum_i w_i l_i / sum_i w_i`` of
        the samples' losses l_i (for the squared error l_i is the mean over
        the sample's outputs).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_in)
            Real numbers, converted to the model's dtype: float32, float64,
            integer and bool arrays and nested lists of numbers; float16,
            longdouble, complex, object and string data are refused.
        Y : array-like of shape (n_samples, n_out), or (n_samples,) when n_out == 1
            Targets, converted like X.
        weight_decay : float >= 0, default 0.0
            The L2 penalty's coefficient, as :meth:`fit` takes it.
        sample_weight : array-like of shape (n_samples,), optional
            Finite weights >= 0, not all zero; None weighs every sample 1.

        Returns
        -------
        loss : float
            The (weighted) mean (plus the penalty).

        Raises
        ------
        TypeError
            X, Y or sample_weight is not an array of real numbers.
        ValueError
            X or Y has the wrong number of dimensions or a shape that does not
            fit the architecture (the message shows expected vs actual);
            "softmax" targets not in [0, 1] or a row not summing to 1,
            "sigmoid" targets outside [0, 1]; sample_weight of another
            shape, negative, not finite or all zero.
        """
        X = self._inputs(X)
        Y = self._targets(Y, X.shape[0])
        weight_decay = check_positive_float("weight_decay", weight_decay, allow_zero=True)
        weights = self._sample_weight(sample_weight, X.shape[0])
        with self._lock.reading():
            value = self._network.loss(X, Y, weights)
            penalty = weight_penalty(self._params, weight_decay)
        return value + penalty

    def gradients(self, X: ArrayLike, Y: ArrayLike, *, weight_decay: float = 0.0,
                  sample_weight: ArrayLike | None = None) -> dict[str, NDArray[Any]]:
        """Gradient of :meth:`loss` with respect to every parameter: with
        weight_decay, each weight's gains ``weight_decay * W``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_in)
            Real numbers, converted to the model's dtype: float32, float64,
            integer and bool arrays and nested lists of numbers; float16,
            longdouble, complex, object and string data are refused.
        Y : array-like of shape (n_samples, n_out), or (n_samples,) when n_out == 1
            Targets, converted like X.
        weight_decay : float >= 0, default 0.0
            As for :meth:`loss`.
        sample_weight : array-like of shape (n_samples,), optional
            As for :meth:`loss`.

        Returns
        -------
        grads : dict of str to ndarray
            ``d loss / d param``, keyed and shaped like :attr:`params`, the
            model's dtype.

        Raises
        ------
        As :meth:`loss`.
        """
        X = self._inputs(X)
        Y = self._targets(Y, X.shape[0])
        weight_decay = check_positive_float("weight_decay", weight_decay, allow_zero=True)
        weights = self._sample_weight(sample_weight, X.shape[0])
        with self._lock.reading():
            _, grads = self._network.gradients(X, Y, weights)
            add_weight_decay(grads, self._params, weight_decay)
        return self._named(grads)

    def fit(self, X: ArrayLike, Y: ArrayLike, *, epochs: int, lr: float,
            batch_size: int | None = None, optimizer: str = "sgd",
            momentum: float = MOMENTUM, nesterov: bool = False, beta1: float = ADAM_BETA1,
            beta2: float = ADAM_BETA2, eps: float = ADAM_EPS, weight_decay: float = 0.0,
            clip_norm: float | None = None, shuffle: bool = True,
            seed: int | np.random.Generator | None = None,
            callback: Callable[[int, float], bool | None] | None = None,
            verbose: bool = False, warm_start: bool = False,
            sample_weight: ArrayLike | None = None,
            validation_data: tuple[ArrayLike, ArrayLike] | tuple[ArrayLike, ArrayLike, ArrayLike]
                             | None = None,
            validation_fraction: float | None = None, early_stopping: bool = False,
            patience: int = PATIENCE, tol: float = TOL, lr_schedule: str = "constant",
            power_t: float = POWER_T, stop_on_plateau: bool = False) -> NDArray[np.float64]:
        """Train by gradient descent on the loss of the model's output (see
        :meth:`loss`: squared error, or cross-entropy for "softmax" and
        "sigmoid"; plus, with weight_decay, ``weight_decay / 2 * sum(W**2)``
        over the weights).

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
            "sgd": ``W -= lr dW``; "momentum": heavy ball,
            ``v = momentum v + dW; W -= lr v``; "adam": Adam with beta1,
            beta2 and eps (see :func:`lgmstm.reference.optimizer_step`). The
            parameters carry on from where they are; the optimizer's moments
            (velocity, Adam's means) and its step count start from zero
            unless ``warm_start``.
        momentum : float in [0, 1), default 0.9
            The "momentum" optimizer's decay of its velocity.
        nesterov : bool, default False
            Nesterov's momentum, ``W -= lr (dW + momentum v)`` with the new
            v (as torch.optim.SGD's); needs ``optimizer="momentum"``.
        beta1, beta2 : float in [0, 1), default 0.9 and 0.999
            Adam's decay of its means of the gradient and of its square.
        eps : float > 0, default 1e-8
            Added to Adam's denominator.
        weight_decay : float >= 0, default 0.0
            L2 regularisation of the weights (not the biases): the loss
            gains ``weight_decay / 2 * sum(W**2)``, so every update adds
            ``weight_decay * W`` to each weight's gradient (after clipping,
            as torch.optim's ``weight_decay`` does), whatever the batch size.
            scikit-learn's ``alpha`` on batches of n samples is
            ``weight_decay = 2 * alpha / n`` (its loss is half the mean
            squared error, its penalty ``alpha / (2 n) * sum(W**2)``).
        clip_norm : float > 0 or None, default None
            When the global norm of a batch's gradient (all parameters
            together, before weight decay) exceeds clip_norm, scale it down
            to that norm before the update.
        shuffle : bool, default True
            Visit the samples in a new random order each epoch (only matters
            with mini-batches).
        seed : int, Generator or None
            Seeds the shuffling; None draws from the model's own generator.
        callback : callable(epoch, loss) -> bool or None, optional
            Called after every epoch (0-based) with that epoch's loss;
            returning False stops training. It may use the model in its own
            thread (predict, save, ...); another thread's call waits for the
            fit, so a callback must not wait for one. Ctrl-C interrupts it.
        verbose : bool, default False
            Print epoch, loss and epochs/s to stderr about once a second.
        warm_start : bool, default False
            Go on with the optimizer state the model kept from its last
            training (moments and step count), as :meth:`partial_fit`
            does, when it was made by the same optimizer with the same
            settings (momentum and nesterov; beta1, beta2 and eps); else, and by default, start it afresh. Either way
            the model keeps the state this call leaves, for the next warm
            call (see :meth:`reset_optimizer` for the rules).
        sample_weight : array-like of shape (n_samples,), optional
            Each sample's weight in the loss: finite, >= 0, not all zero.
            Each batch minimises its weighted mean ``sum_i w_i l_i / sum_i
            w_i`` (so in a full batch a weight of 2 is the sample twice); a
            batch whose weights are all zero has a zero gradient (it still
            counts as an optimizer step).
        validation_data : (X_val, Y_val), (X_val, Y_val, sample_weight_val) or None, default None
            A validation set, shaped and converted as X and Y. After every
            epoch its loss (``loss(X_val, Y_val)``, to the bit; with
            sample_weight_val, checked as sample_weight is, their weighted
            mean ``loss(X_val, Y_val, sample_weight=sample_weight_val)``;
            never weighted by sample_weight) is computed in the compiled
            loop (no Python call per epoch) into ``validation_history_``.
        validation_fraction : float in (0, 1) or None, default None
            Instead of validation_data: hold out the last
            ``ceil(validation_fraction * n_samples)`` samples of a
            permutation drawn from the shuffling's generator (the seed's,
            or the model's) and train on the others (each part keeps the
            samples' order). Both parts must be non-empty.
        early_stopping : bool, default False
            Needs a validation set. After ``patience`` epochs in a row
            without the validation loss falling to ``best - tol`` or
            below, stop; at the end of the fit (stopped or not) the model holds
            exactly the parameters, optimizer moments and step count it
            had after its best epoch (``best_epoch_``), the state a fit of
            ``best_epoch_ + 1`` epochs would leave (Ctrl-C or a divergence
            keep their last epoch instead). ``history_`` keeps every epoch run.
        patience : int >= 1, default 10
            Epochs without improvement before early stopping stops or the
            "adaptive" schedule divides lr by 5 (scikit-learn's n_iter_no_change).
        tol : float >= 0, default 1e-4
            An epoch improves when its monitored loss falls to the best so
            far minus tol or below (scikit-learn's rule).
        lr_schedule : {"constant", "invscaling", "adaptive"}, default "constant"
            "invscaling": update t (counted from 1 over the optimizer's
            steps, warm starts included) uses ``lr / t**power_t``;
            "adaptive": lr is divided by 5 after ``patience`` epochs without
            the monitored loss (the validation loss, else the training loss)
            falling to ``best - tol`` or below while lr > 1e-6, and such a
            plateau at lr <= 1e-6 stops training (scikit-learn's MLP schedules,
            except that its "invscaling" counts samples seen and sets the
            rate once per epoch, as lgmstm.sklearn's estimators do). Either
            applies to every optimizer.
        power_t : float >= 0, default 0.5
            The exponent of "invscaling".
        stop_on_plateau : bool, default False
            Stop after ``patience`` epochs in a row without the monitored
            loss (the validation loss, else the training loss) falling
            to ``best - tol`` or below, keeping that last epoch's parameters
            (scikit-learn's MLP rule without early stopping). With
            early_stopping the best epoch is put back as usual; with
            "adaptive" the plateau divides lr instead.

        Returns
        -------
        losses : ndarray of shape (n_epochs_run,), float64
            The loss of each epoch (see :meth:`loss`, weighted as the
            batches are), each batch measured before its update. Also kept
            as ``history_`` (fewer than ``epochs`` when early stopping,
            stop_on_plateau or the adaptive schedule stopped training).

        Raises
        ------
        TypeError
            epochs or batch_size is not an integer, lr, momentum, beta1,
            beta2, eps, weight_decay or clip_norm not a real number,
            callback not callable, shuffle, nesterov, verbose or warm_start
            not a bool, or X/Y not arrays of real numbers.
        ValueError
            X or Y empty, non-finite or of the wrong shape; targets a
            "softmax" or "sigmoid" output cannot take (see :meth:`loss`);
            sample_weight of another shape, negative, non-finite or all
            zero; epochs < 0;
            lr, eps or clip_norm not finite and > 0; momentum, beta1 or
            beta2 outside [0, 1); weight_decay negative or not finite;
            nesterov=True with another optimizer than "momentum";
            batch_size < 1; an unknown optimizer.
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
        TargetRangeWarning (a UserWarning)
            Once per call, when ``output="tanh"`` and Y holds a target outside
            [-1, 1], which the model cannot reach: make it with
            ``output="linear"``, or scale Y. Both warnings point at the line
            that called fit (or partial_fit).
        """
        if short_fit_takes(epochs, callback, verbose, seed, sample_weight, None,
                           validation_data, validation_fraction, early_stopping, patience,
                           tol, lr_schedule, power_t, stop_on_plateau):
            losses = self._network.fit_ready(
                self, X, Y, None, None, lr, batch_size, optimizer, clip_norm, shuffle,
                warm_start, momentum, nesterov, beta1, beta2, eps, weight_decay)
            if losses is not None:
                return losses
        X = self._inputs(X)
        Y = self._targets(Y, X.shape[0])
        weights = self._sample_weight(sample_weight, X.shape[0])
        validation = None
        if validation_data is not None:
            X_val, Y_val, *weights_val = check_validation_data(validation_data, (2, 3),
                                                               "sample_weight_val")
            X_val = naming_validation_data(self._inputs, X_val)
            Y_val = naming_validation_data(self._targets, Y_val, X_val.shape[0])
            if weights_val:
                weights_val = [naming_validation_data(self._sample_weight, weights_val[0],
                                                      X_val.shape[0])]
            validation = check_validation_set(X_val, Y_val, "sample", *weights_val)
        plan = plan_fit(self._rng, X, Y, sample="sample", epochs=epochs, lr=lr,
                        batch_size=batch_size, optimizer=optimizer, clip_norm=clip_norm,
                        shuffle=shuffle, seed=seed, callback=callback, verbose=verbose,
                        warm_start=warm_start, momentum=momentum, nesterov=nesterov,
                        beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                        validation_data=validation is not None,
                        validation_fraction=validation_fraction,
                        early_stopping=early_stopping, patience=patience, tol=tol,
                        lr_schedule=lr_schedule, power_t=power_t,
                        stop_on_plateau=stop_on_plateau)
        if self._output == "tanh" and beyond_tanh(Y):
            warn_beyond_tanh(Y)
        if plan.held_out is not None:
            rows, held = plan.held_out
            validation = X[held], Y[held]
            X, Y = X[rows], Y[rows]
            weights = None if weights is None else weights[rows]
        return train_model(self, plan, self._trainer_maker(X, Y, weights, validation, plan),
                           callback)

    def _trainer_maker(self, X, Y, weights, validation, plan):
        """make_trainer(state) for train_model. A method, not a lambda in
        fit: a closure there would make fit allocate cells for the
        variables it captures on every call, the short fit's too."""
        return lambda state: self._network.trainer(
            X, Y, plan.batch_size, state, plan.lr, plan.clip_norm, plan.weight_decay,
            weights, validation, plan.control)


    def partial_fit(self, X: ArrayLike, Y: ArrayLike, *, lr: float,
                    batch_size: int | None = None, optimizer: str = "sgd",
                    momentum: float = MOMENTUM, nesterov: bool = False,
                    beta1: float = ADAM_BETA1, beta2: float = ADAM_BETA2, eps: float = ADAM_EPS,
                    weight_decay: float = 0.0, clip_norm: float | None = None,
                    shuffle: bool = True, seed: int | np.random.Generator | None = None,
                    sample_weight: ArrayLike | None = None) -> LGM:
        """Train one epoch on (X, Y), going on with the optimizer state.

        ``fit(X, Y, epochs=1, warm_start=True, ...)``: one pass over the
        data; the optimizer's moments and step count go on from those the
        model kept from its last training (when made by the same optimizer
        with the same settings; see :meth:`reset_optimizer`). From a new model (or after
        ``reset_optimizer()``), N calls on the same data give exactly the
        bits of one ``fit(epochs=N)`` with the same arguments (with
        ``shuffle`` the orders come from the model's generator either way).
        For data that arrives in pieces, or a loop that does something
        between epochs.

        Parameters
        ----------
        X, Y, lr, batch_size, optimizer, momentum, nesterov, beta1, beta2, eps
            As for :meth:`fit`.
        weight_decay, clip_norm, shuffle, seed, sample_weight
            As for :meth:`fit`. A seed seeds this call's shuffling only:
            the same seed at every call visits the samples in the same order.

        Returns
        -------
        self : LGM
            As scikit-learn's ``partial_fit`` does; the epoch's loss is
            ``history_[0]`` (``history_`` is empty when the epoch diverged).

        Raises
        ------
        As :meth:`fit`.

        Warns
        -----
        DivergenceWarning
            As :meth:`fit`: the model keeps the parameters it had and the
            optimizer state the epoch started from.
        TargetRangeWarning
            As :meth:`fit`.
        """
        if seed is None and sample_weight is None and self._network.fit_ready(
                self, X, Y, None, None, lr, batch_size, optimizer, clip_norm, shuffle, True,
                momentum, nesterov, beta1, beta2, eps, weight_decay) is not None:
            return self
        self.fit(X, Y, epochs=1, lr=lr, batch_size=batch_size, optimizer=optimizer,
                 momentum=momentum, nesterov=nesterov, beta1=beta1, beta2=beta2, eps=eps,
                 weight_decay=weight_decay, clip_norm=clip_norm, shuffle=shuffle, seed=seed,
                 warm_start=True, sample_weight=sample_weight)
        return self

    # -- persistence -------------------------------------------------------------
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
