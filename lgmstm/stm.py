"""STM, the short-term working memory: an Elman tanh RNN with a dense
readout, trained by backpropagation through time.

Parameters live in NumPy arrays; ``backend="cython"`` runs every
predict/gradients/fit in compiled code (:mod:`lgmstm._stm`, fit in a
few calls, each covering many epochs), ``backend="numpy"`` runs the same
maths with :mod:`lgmstm.reference`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _stm, reference
from ._base import PROBABILITY_OUTPUTS, Model, check_output, glorot_uniform
from ._deep import DeepRecurrent
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
    recurrent_validation,
    short_fit_state,
    train_model,
    warn_beyond_tanh,
    weight_penalty,
)
from ._validation import (
    MAX_DIM,
    as_array,
    check_bool,
    check_int,
    check_layer_sizes,
    check_lengths,
    check_positive_float,
    check_product,
    check_sample_weight,
    check_sequence_rows,
    check_state,
    check_streams,
    check_targets,
    check_validation_data,
    naming_validation_data,
)

__all__ = ["STM"]

# The parameters, in the order the compiled code takes them.
PARAM_NAMES = ("input_weight", "recurrent_weight", "bias", "readout.weight", "readout.bias")


def parameter_shapes(n_in, n_hidden, n_out, bidirectional=False, readout=()):
    """{name: shape} of every parameter, in the order the backends take them.

    n_hidden an int: one recurrent layer, named as PARAM_NAMES (its reverse
    direction ``reverse.*``); a sequence: layer k's are ``layer{k}.*`` (its
    reverse direction ``reverse{k}.*``). Then the readout's hidden layers
    ``readout{j}.weight``/``.bias`` and the output layer ``readout.*``.
    """
    stacked = not isinstance(n_hidden, int)
    sizes = list(n_hidden) if stacked else [n_hidden]
    shapes = {}
    width = n_in
    for k, size in enumerate(sizes):
        for prefix in ("layer", "reverse")[:2 if bidirectional else 1]:
            name = (f"{prefix}{k}." if stacked else
                    "" if prefix == "layer" else "reverse.")
            shapes.update({f"{name}input_weight": (width, size),
                           f"{name}recurrent_weight": (size, size), f"{name}bias": (size,)})
        width = size * (2 if bidirectional else 1)
    for j, size in enumerate([*readout, n_out]):
        name = "readout." if j == len(readout) else f"readout{j}."
        shapes.update({f"{name}weight": (width, size), f"{name}bias": (size,)})
        width = size
    return shapes


def orthogonal(rng, n, dtype):
    """A random orthogonal (n, n) matrix, uniformly distributed (Haar).

    Q of the QR factorisation of a Gaussian matrix, each column's sign set by
    R's diagonal so that the distribution does not depend on QR's sign choices.
    """
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.where(np.diag(r) < 0, -1.0, 1.0)).astype(dtype)


def _valid_steps(lengths, n_steps):
    """(n_samples, n_steps) bool: which steps each sequence runs."""
    return np.arange(n_steps) < lengths[:, None]


class _CompiledRecurrent:
    """Forward/gradients/training of the STM with lgmstm._stm."""

    def __init__(self, params, sizes, output, return_sequences, lock):
        self.params = params
        self.sizes = np.asarray(sizes, dtype=np.intp)
        self.return_sequences = return_sequences
        self.program = _stm.Network(params, self.sizes, output, return_sequences, lock)
        # The fast paths of step, predict and short fits: a result, or None
        # for the checked path.
        self.step_ready = self.program.step_ready
        self.predict_ready = self.program.predict_ready
        self.fit_ready = self.program.fit_ready
        self.program.run_factory = self._short_run
        self.workspace = TrainingWorkspace()

    def _buffers(self, n_samples, n_steps, dtype, backward=True):
        n_in, n_hidden, n_out = (int(n) for n in self.sizes)
        shapes = _stm.buffer_shapes(n_samples, n_steps, n_in, n_hidden, n_out,
                                    self.return_sequences, backward)
        return [np.empty(shape, dtype if kind is None else kind) for shape, kind in shapes]

    def predict(self, X, h0, lengths, logits=False):
        buffers = self._buffers(X.shape[0], X.shape[1], X.dtype, backward=False)
        with single_threaded_blas(self.program.blas_work(X.shape[0], X.shape[1])):
            return self.program.predict(X, h0, lengths, buffers, get_num_threads(), logits)

    def loss(self, X, Y, h0, lengths, weights=None):
        """The mean loss over the valid outputs (weights: the output rows',
        or None), by the training driver's validation loss."""
        with single_threaded_blas(self.program.blas_work(X.shape[0], X.shape[1])):
            return self.program.mean_loss(
                X, Y.reshape(-1), h0, lengths, None if weights is None else weights.reshape(-1),
                get_num_threads())

    def gradients(self, X, Y, h0, lengths, weights=None):
        grads = [np.empty_like(p) for p in self.params]
        with single_threaded_blas(self.program.blas_work(X.shape[0], X.shape[1])):
            loss = self.program.gradients(
                X, Y.reshape(-1), h0, lengths, grads,
                self._buffers(X.shape[0], X.shape[1], X.dtype), get_num_threads(),
                None if weights is None else weights.reshape(-1))
        return loss, grads

    def trainer(self, X, Y, lengths, h0, batch_size, optimizer, lr, clip_norm, weight_decay=0.0,
                weights=None, validation=None, control=TrainingControl()):
        """A CompiledTrainer continuing the OptimizerState `optimizer`;
        weights: the output rows' loss weights or None; validation: (X_val,
        Y_val, lengths_val, weights_val) or None (weights_val: the rows'
        mask for a cross-entropy, or None)."""
        n_samples, n_steps, n_in = X.shape
        n_hidden = int(self.sizes[1])
        Y = Y.reshape(-1)
        dtype = X.dtype
        targets_per_sample = Y.size // max(1, n_samples)

        def make_workspace():
            return ([np.empty_like(p) for p in self.params],
                    [*self._buffers(batch_size, n_steps, dtype),
                     np.empty((batch_size, n_steps, n_in), dtype),
                     np.empty(batch_size * targets_per_sample, dtype),
                     np.empty(batch_size, np.intp), np.empty((batch_size, n_hidden), dtype)])

        # The model fixes everything else (targets_per_sample follows from n_steps).
        grads, workspace = self.workspace.get((batch_size, n_steps, dtype), make_workspace)
        validation, blas_work = recurrent_validation(
            self.program, validation, self.program.blas_work(batch_size, n_steps))
        return CompiledTrainer(
            self, X, Y, batch_size, optimizer, lr, grads=grads, workspace=workspace,
            blas_work=blas_work, clip_norm=clip_norm,
            weight_decay=weight_decay, lengths=lengths, initial_states=h0,
            final_states=np.zeros((n_samples, n_hidden), dtype),
            weights=None if weights is None else weights.reshape(-1), validation=validation,
            control=control)

    def _short_run(self, X, Y, h0, batch_size, state, optimizer, settings):
        """The TrainingRun the short fit keeps (see _train.Program.fit_ready),
        for sequences of X's full length, and the state it continues (see
        short_fit_state)."""
        state = short_fit_state(state, optimizer, settings, self.params)
        lengths = np.full(X.shape[0], X.shape[1], np.intp)
        return self.trainer(X, Y, lengths, h0, batch_size, state, 1.0, None).run_data, state


class _ReferenceRecurrent(CheckedPathOnly):
    """The same model in plain NumPy (lgmstm.reference)."""

    def __init__(self, params, sizes, output, return_sequences, lock):
        self.params = params
        self.n_hidden, self.n_out = sizes[1], sizes[2]
        self.output = output
        self.output_tanh = output == "tanh"
        self.return_sequences = return_sequences

    def _forward(self, X, h0, lengths):
        input_weight, recurrent_weight, bias, readout_weight, readout_bias = self.params
        n_samples, n_steps, _ = X.shape
        H = np.empty((n_samples, n_steps, self.n_hidden), X.dtype)
        reference.recurrent_forward(X, h0, input_weight, recurrent_weight, bias, lengths, H)
        final = reference.final_states(H, h0, lengths)
        if not self.return_sequences:
            return H, final, final, reference.layer_forward(
                final, readout_weight, readout_bias, self.output_tanh)
        # Step by step, as the recurrence (see reference.recurrent_forward).
        outputs = reference.layer_forward_steps(H, readout_weight, readout_bias,
                                                self.output_tanh)
        outputs[~_valid_steps(lengths, n_steps)] = 0
        return H, final, H.reshape(-1, self.n_hidden), outputs

    def predict(self, X, h0, lengths, logits=False):
        _, final, _, outputs = self._forward(X, h0, lengths)
        if not logits and self.output in PROBABILITY_OUTPUTS:
            outputs = reference.output_function(self.output, outputs)
            if self.return_sequences:
                outputs[~_valid_steps(lengths, X.shape[1])] = 0
        return outputs, final

    def gradients(self, X, Y, h0, lengths, weights=None):
        loss, grads, _ = self.step_gradients(X, Y, h0, lengths, weights)
        return loss, grads

    def step_gradients(self, X, Y, h0, lengths, weights=None):
        """(loss, grads, final states) of one batch.

        Unchecked, like the lgmstm.reference helpers it calls: X and Y are
        C-contiguous arrays of the model's dtype and shapes, h0 None or
        (n_samples, n_hidden), lengths an intp array in [0, n_steps] (the
        STM's methods check them, once); weights None or each output row's
        weight, float64 shaped as Y without its last axis, 0 at padded steps
        (as STM._row_weights makes them).
        """
        input_weight, recurrent_weight, _, readout_weight, _ = self.params
        H, final, readout_input, outputs = self._forward(X, h0, lengths)
        loss, d_outputs = reference.sequence_loss(self.output, outputs, Y, lengths,
                                                  self.return_sequences, weights)
        d_readout_input, d_readout_weight, d_readout_bias = reference.layer_backward(
            readout_input, readout_weight, outputs.reshape(-1, self.n_out),
            d_outputs.reshape(-1, self.n_out), self.output_tanh)
        if self.return_sequences:
            dH, dh_last = d_readout_input.reshape(H.shape), None
        else:
            dH, dh_last = None, d_readout_input
        _, _, d_input_weight, d_recurrent_weight, d_bias = reference.recurrent_backward(
            X, h0, input_weight, recurrent_weight, H, dH, dh_last, lengths, need_dX=False)
        grads = [d_input_weight, d_recurrent_weight, d_bias, d_readout_weight, d_readout_bias]
        return loss, grads, final

    def loss(self, X, Y, h0, lengths, weights=None):
        """The mean loss over the valid outputs (weights: the output rows',
        or None) from the states h0 (None: zeros)."""
        return self.step_gradients(X, Y, h0, lengths, weights)[0]

    def validation_loss(self, X, Y, lengths, weights):
        """loss from zero states: the validation loss."""
        return self.loss(X, Y, None, lengths, weights)

    def trainer(self, X, Y, lengths, h0, batch_size, optimizer, lr, clip_norm, weight_decay=0.0,
                weights=None, validation=None, control=TrainingControl()):
        return _ReferenceTrainer(self, X, Y, lengths, h0, batch_size, optimizer, lr, clip_norm,
                                 weight_decay, weights, validation, control)


class _ReferenceTrainer(ReferenceTrainer):
    """ReferenceTrainer on the STM's batches; final_states: each sequence's
    final state, from the latest epoch."""

    def __init__(self, network, X, Y, lengths, h0, batch_size, optimizer, lr, clip_norm,
                 weight_decay, weights=None, validation=None, control=TrainingControl()):
        final_states = np.zeros((X.shape[0], network.n_hidden), X.dtype)
        n_out = network.n_out

        def count(batch_lengths, batch_weights):
            """What a batch's loss is the mean over (STM._row_weights)."""
            if batch_weights is None:
                n_valid = (int(batch_lengths.sum()) if network.return_sequences
                           else len(batch_lengths))
                return reference.loss_count(network.output, None, n_valid, n_out)
            return reference.loss_count(network.output, batch_weights, 0, n_out)

        def batch(rows):
            batch_lengths = lengths[rows]
            batch_weights = None if weights is None else weights[rows]
            loss, grads, final_states[rows] = network.step_gradients(
                X[rows], Y[rows], None if h0 is None else h0[rows], batch_lengths,
                batch_weights)
            return loss * count(batch_lengths, batch_weights), grads

        def validate():
            return network.validation_loss(*validation)

        super().__init__(network.params, batch, X.shape[0], count(lengths, weights), batch_size,
                         optimizer, lr, clip_norm, carried=[final_states],
                         weight_decay=weight_decay,
                         validate=None if validation is None else validate, control=control)
        self.final_states = final_states


_NETWORKS: dict[str, type[_CompiledRecurrent] | type[_ReferenceRecurrent]] = {
    "cython": _CompiledRecurrent, "numpy": _ReferenceRecurrent}


class STM(Model):
    """Short-term working memory: an Elman tanh RNN with a dense readout.

    For each sequence, from the initial state ``h_{-1}``::

        h_t = tanh(x_t Wx + h_{t-1} Wh + b)        (the working memory)
        y_t = f(h_t W_out + b_out)                  (the readout, f tanh or identity)

    with a readout on every step (``return_sequences=True``) or only on each
    sequence's final state (``False``). Trained by backpropagation through
    time to minimise the mean squared error over the valid outputs (see
    :meth:`loss`).

    Sequences of different lengths share a batch padded to ``n_steps`` with
    ``lengths``: sequence i stops after ``lengths[i]`` steps; its outputs past
    that are 0, its padded targets are ignored and its final state is the one
    at its last valid step (the initial state at length 0).

    Working memory: by default every call starts from a zero state, or from
    the ``initial_state`` given to :meth:`predict` (which also hands back the
    final states with ``return_state=True``). With ``stateful=True``, the
    final states of one :meth:`predict` or :meth:`fit` call are the initial
    states of the next, sequence i continuing stream i, so that one long
    stream can be fed in chunks and trained by truncated BPTT (gradients stop
    at chunk boundaries). :meth:`step` feeds live streams one step at a time,
    on any STM: it always starts from the held state and keeps the next one.
    :meth:`reset_state` clears it, for every stream or for some; :attr:`state`
    shows it.

    From a trained model to live streams: :meth:`step` needs no stateful
    model, nor does ``predict(X, initial_state=h, return_state=True)`` on
    chunks of a stream. For :meth:`predict` to carry the state itself,
    switch ``stateful`` on, at any time: ``model.stateful = True``, or
    ``lgmstm.load(path, stateful=True)``; the next call starts from the held
    state (zeros when empty). A stateful fit leaves the final state of each
    training sequence (stream i of the next call is sequence i, as the next
    chunk's :meth:`partial_fit` needs): call :meth:`reset_state` before
    predicting or stepping other streams.

    Initialisation, chosen to keep the recurrence stable at the start:
    ``Wh`` is a random orthogonal matrix (QR of a Gaussian): all its singular
    values are 1, so the linearised recurrence neither blows up nor shrinks
    a state, and gradients through many steps neither explode nor vanish
    before ``tanh' <= 1`` damps them. ``Wx`` and the readout weights are
    Glorot-uniform, ``U(-l, l)`` with ``l = sqrt(6 / (fan_in + fan_out))``,
    which keeps activations and gradients of similar size across the
    layer. Biases start at zero.

    Parameters
    ----------
    n_in, n_hidden, n_out : int >= 1
        Input features, state size and outputs per step. n_hidden may be a
        non-empty list of sizes: stacked layers, layer k's state sequence
        being layer k+1's input (the working memory is then a list of one
        state per layer; see :attr:`state`).
    output : {"tanh", "linear", "softmax", "sigmoid"}, default "tanh"
        The readout's activation and the loss: "tanh" keeps outputs in
        (-1, 1), "linear" suits unbounded regression targets (both squared
        error; fit warns, with a TargetRangeWarning, when a tanh output is
        given targets outside [-1, 1]). "softmax" (n_out >= 2 classes)
        and "sigmoid" (binary or multi-label) output probabilities and
        train on the cross-entropy, as :class:`lgmstm.LGM`'s do (targets
        one-hot or class probabilities, or in [0, 1]); see
        :meth:`predict_log_proba`. The same for a deep STM (stacked,
        bidirectional or with a readout's layers).
    return_sequences : bool, default True
        True: an output on every step, Y of shape (n_samples, n_steps, n_out).
        False: one output per sequence, from its final state, Y of shape
        (n_samples, n_out).
    stateful : bool, default False
        Carry the final states from call to call (see above); the one
        attribute that may be set later.
    bidirectional : bool, default False
        Each recurrent layer also runs over each sequence backwards, from
        its last valid step, with its own ``reverse*`` parameters; both
        states are concatenated (forward first) for the next layer or the
        readout, which with ``return_sequences=False`` reads the forward
        state at the last valid step and the backward state at step 0. A
        stream has no future: refused with ``stateful=True``, and
        :meth:`step`, ``initial_state`` and ``return_state`` refuse it.
    readout : list of int >= 1, default []
        Sizes of tanh hidden layers between the last recurrent state and
        the output layer (on every step, or on each final state); [] is
        the dense readout.
    dtype : float32 or float64, default float64
        Dtype of the parameters, the state and every result. The data (X,
        Y, x) are converted to it: arrays of either float dtype, of integers
        or bools, and nested lists of numbers; float16, longdouble, complex,
        object and string data are refused with a TypeError. An
        ``initial_state`` of the other float dtype is refused too (it holds
        another model's memory).
    seed : int, numpy.random.Generator or None
        Seeds the initial weights and the default shuffling of :meth:`fit`.
    backend : {"cython", "numpy"}, default "cython"
        "cython" runs compiled OpenMP kernels; "numpy" runs the same maths in
        :mod:`lgmstm.reference`.

    Attributes
    ----------
    n_in, n_hidden, n_out : int
    output : str
    return_sequences : bool
    dtype : numpy.dtype
    backend : str
        The constructor's arguments, as checked; read-only (setting one
        raises AttributeError): they fix the compiled network and what
        :meth:`save` writes, so another architecture is another model.
    stateful : bool
        Whether calls carry the working memory; may be set to True or False
        at any time (anything else raises TypeError), takes effect from the
        next call, and is saved and pickled with the model. Switching it
        off keeps :attr:`state` (for :meth:`step`) until :meth:`reset_state`.
    params : dict of str to ndarray
        Copies of ``input_weight`` (n_in, n_hidden), ``recurrent_weight``
        (n_hidden, n_hidden), ``bias`` (n_hidden,), ``readout.weight``
        (n_hidden, n_out) and ``readout.bias`` (n_out,). Stacked layers are
        ``layer{k}.input_weight`` etc., a backward direction's
        ``reverse{k}.*`` (``reverse.*`` with an int n_hidden), the
        readout's hidden layers ``readout{j}.weight`` and ``.bias``.
    state : ndarray of shape (n_streams, n_hidden), a list of them, or None
        A copy of the working memory (kept by :meth:`step`, and by stateful
        models); None when empty. A stacked STM's: one array per layer.
    bidirectional : bool
    readout : tuple of int
        The constructor's arguments, read-only.
    history_ : ndarray of shape (n_epochs,)
        Per-epoch losses of the last :meth:`fit` (one for :meth:`partial_fit`).
    validation_history_ : ndarray of shape (n_epochs,) or (0,), float64
        Per-epoch validation losses of the last :meth:`fit` (empty without
        a validation set).
    best_epoch_ : int or None
        Index into ``history_`` of the epoch with the lowest validation
        loss (the one early stopping restored); None without validation.
    """

    kind = "STM"
    _fixed = ("n_in", "n_hidden", "n_out", "output", "return_sequences", "dtype", "backend")

    def __init__(self, n_in: int, n_hidden: int | Sequence[int], n_out: int, *,
                 output: str = "tanh", return_sequences: bool = True, stateful: bool = False,
                 bidirectional: bool = False, readout: Sequence[int] = (),
                 dtype: DTypeLike = np.float64,
                 seed: int | np.random.Generator | None = None,
                 backend: str = "cython") -> None:
        shapes = self._define(n_in, n_hidden, n_out, output, return_sequences, stateful,
                              bidirectional, readout, dtype, seed, backend)
        # Wx and readout weights Glorot-uniform, each Wh orthogonal, biases 0.
        self._connect([
            orthogonal(self._rng, shape[0], self._dtype) if name.endswith("recurrent_weight")
            else glorot_uniform(self._rng, shape[0], shape[-1], self._dtype) if len(shape) == 2
            else np.zeros(shape, self._dtype)
            for name, shape in shapes.items()])

    def _define(self, n_in: int, n_hidden: int | Sequence[int], n_out: int, output: str,
                return_sequences: bool, stateful: bool, bidirectional: bool,
                readout: Sequence[int], dtype: DTypeLike,
                seed: int | np.random.Generator | None, backend: str,
                ) -> dict[str, tuple[int, ...]]:
        """The constructor's checks and choices, all but the parameters;
        returns their shapes, by name."""
        self._n_in = check_int("n_in", n_in, 1, maximum=MAX_DIM)
        if isinstance(n_hidden, (list, tuple, np.ndarray)):
            self._n_hidden: int | tuple[int, ...] = check_layer_sizes(
                "n_hidden", n_hidden, allow_empty=False)
        else:
            self._n_hidden = check_int("n_hidden", n_hidden, 1, maximum=MAX_DIM)
        self._n_out = check_int("n_out", n_out, 1, maximum=MAX_DIM)
        self._bidirectional = check_bool("bidirectional", bidirectional)
        self._readout = check_layer_sizes("readout", readout, allow_empty=True)
        # The deep STM (lgmstm._deep): stacked layers (n_hidden a
        # sequence, even of one), a reverse direction, or a readout's layers.
        self._stacked = isinstance(self._n_hidden, tuple)
        self._deep = self._stacked or self._bidirectional or bool(self._readout)
        self._sizes = list(self._n_hidden) if isinstance(self._n_hidden, tuple) \
            else [self._n_hidden]
        shapes = parameter_shapes(self._n_in, self._n_hidden, self._n_out,
                                  self._bidirectional, self._readout)
        if not self._deep:
            n_hidden = self._sizes[0]
            for name, rows, cols in (("n_in x n_hidden", self._n_in, n_hidden),
                                     ("n_hidden x n_hidden", n_hidden, n_hidden),
                                     ("n_hidden x n_out", n_hidden, self._n_out)):
                check_product(f"a weight of {name}", rows, cols)
        for name, shape in shapes.items():
            check_product(f"the weight {name}", *shape)
        self._output = check_output(output, self._n_out)
        self._return_sequences = check_bool("return_sequences", return_sequences)
        self._stateful = check_bool("stateful", stateful)
        if self._stateful and self._bidirectional:
            raise ValueError(self._no_future("stateful=True"))
        self._set_up(dtype, seed, backend)
        self._state: Any = None  # an array, a list of one per layer (stacked), or None
        return shapes

    def _connect(self, params: list[NDArray[Any]]) -> None:
        """params (in the order of _param_names) as the model's, and the network over them."""
        self._params = params
        if self._deep:
            self._network: Any = DeepRecurrent(
                self._params, self._n_in, self._sizes, 2 if self._bidirectional else 1,
                self._output, self._return_sequences, self._stacked,
                self._backend, self._lock)
        else:
            self._network = _NETWORKS[self._backend](
                self._params, (self._n_in, self._n_hidden, self._n_out), self._output,
                self._return_sequences, self._lock)

    @staticmethod
    def _no_future(what: str) -> str:
        return (f"{what} cannot be used with bidirectional=True: a bidirectional STM reads "
                f"each sequence from its end too, and a stream has no future to read; make "
                f"the STM with bidirectional=False")

    # -- the architecture: read-only, but for stateful --------------------------
    @property
    def n_in(self) -> int:
        """Input features per step (read-only)."""
        return self._n_in

    @n_in.setter
    def n_in(self, value: int) -> None:
        self._refuse("n_in", value)

    @property
    def n_hidden(self) -> int | tuple[int, ...]:
        """The working memory's size, or each stacked layer's as a tuple (read-only)."""
        return self._n_hidden

    @n_hidden.setter
    def n_hidden(self, value: int) -> None:
        self._refuse("n_hidden", value)

    @property
    def n_out(self) -> int:
        """Outputs per step, or per sequence (read-only)."""
        return self._n_out

    @n_out.setter
    def n_out(self, value: int) -> None:
        self._refuse("n_out", value)

    @property
    def bidirectional(self) -> bool:
        """Whether each recurrent layer also runs over each sequence backwards (read-only)."""
        return self._bidirectional

    @bidirectional.setter
    def bidirectional(self, value: bool) -> None:
        self._refuse("bidirectional", value)

    @property
    def readout(self) -> tuple[int, ...]:
        """The sizes of the readout's tanh hidden layers; () for a dense readout (read-only)."""
        return self._readout

    @readout.setter
    def readout(self, value: Sequence[int]) -> None:
        self._refuse("readout", value)

    @property
    def return_sequences(self) -> bool:
        """An output at every step (True) or one per sequence (False); read-only."""
        return self._return_sequences

    @return_sequences.setter
    def return_sequences(self, value: bool) -> None:
        self._refuse("return_sequences", value)

    @property
    def stateful(self) -> bool:
        """Whether predict and fit carry the working memory from call to call.

        May be set, to True or False (a TypeError otherwise), from the next
        call on: a trained stateless model becomes one that continues its
        streams from :attr:`state`. Waits for a fit in another thread.
        """
        return self._stateful

    @stateful.setter
    def stateful(self, value: bool) -> None:
        value = check_bool("stateful", value)
        if value and self._bidirectional:
            raise ValueError(self._no_future("stateful=True"))
        with self._lock.reading():
            self._stateful = value

    # -- what Model needs ---------------------------------------------------------
    def _param_names(self) -> Iterator[str]:
        return iter(parameter_shapes(self._n_in, self._n_hidden, self._n_out,
                                     self._bidirectional, self._readout))

    def _arguments(self) -> dict[str, Any]:
        arguments = {"sizes": (self._n_in, self._n_hidden, self._n_out),
                     "output": self._output, "return_sequences": self._return_sequences,
                     "stateful": self._stateful}
        if self._deep:
            arguments.update(bidirectional=self._bidirectional, readout=self._readout)
        return arguments

    def _construct(self, arguments: dict[str, Any], dtype: str, backend: str,
                   rng: np.random.Generator) -> None:
        n_in, n_hidden, n_out = arguments["sizes"]
        shapes = STM._define(self, n_in, n_hidden, n_out, arguments["output"],
                             arguments["return_sequences"], arguments["stateful"],
                             arguments.get("bidirectional", False), arguments.get("readout", ()),
                             dtype, rng, backend)
        STM._connect(self, [np.empty(shape, self._dtype) for shape in shapes.values()])

    def _config(self) -> dict[str, NDArray[Any]]:
        config = {"n_in": np.asarray(self._n_in, np.int64),
                  "n_hidden": np.asarray(self._n_hidden, np.int64),
                  "n_out": np.asarray(self._n_out, np.int64),
                  "output": np.asarray(self._output),
                  "return_sequences": np.asarray(self._return_sequences),
                  "stateful": np.asarray(self._stateful)}
        if self._deep:  # a single-layer STM's files stay as they were
            config.update(bidirectional=np.asarray(self._bidirectional),
                          readout=np.asarray(self._readout, np.int64).reshape(-1))
        return config

    def _state_names(self) -> list[str]:
        """The names of the working memory's arrays in _memory(): "state", or
        "state{k}" per layer of a stacked STM."""
        return [f"state{k}" for k in range(len(self._sizes))] if self._stacked else ["state"]

    def _memory(self) -> dict[str, Any]:
        held = self._layer_states(self._state)
        return dict(zip(self._state_names(),
                        [None] * len(self._sizes) if held is None else [h.copy() for h in held]))

    def _recall(self, memory: dict[str, NDArray[Any]], path: str) -> None:
        names = self._state_names()
        if not any(name in memory for name in names):
            return
        missing = [name for name in names if name not in memory]
        if missing:
            raise ValueError(f"{path}: missing {', '.join('memory.' + n for n in missing)} "
                             f"(a stacked STM saves one state per layer)")
        held: list[NDArray[Any]] = []
        for name, n_hidden in zip(names, self._sizes):
            state = memory.pop(name)
            n_streams = held[0].shape[0] if held else state.shape[0] if state.ndim == 2 else -1
            if state.shape != (n_streams, n_hidden) or state.dtype != self._dtype:
                raise ValueError(f"{path}: memory.{name} must have shape (n_streams, "
                                 f"{n_hidden}) and dtype {self._dtype}, got shape "
                                 f"{state.shape} and dtype {state.dtype}")
            if not np.isfinite(state).all():
                raise ValueError(f"{path}: memory.{name} must be finite")
            held.append(np.ascontiguousarray(state))
        self._state = held if self._stacked else held[0]

    def __setstate__(self, pickled: dict[str, Any]) -> None:
        super().__setstate__(pickled)
        held = [pickled[name] for name in self._state_names()]
        self._state = None if held[0] is None else held if self._stacked else held[0]

    # -- the working memory -------------------------------------------------------
    def _layer_states(self, state: Any) -> list[NDArray[Any]] | None:
        """A state of this STM's form (see :attr:`state`) as one array per layer."""
        return None if state is None else list(state) if self._stacked else [state]

    def _copied(self, state: Any) -> Any:
        return None if state is None else [h.copy() for h in state] if self._stacked \
            else state.copy()

    @property
    def state(self) -> Any:
        """A copy of the working memory; None when empty. (n_streams, n_hidden)
        with n_hidden an int; a stacked STM's (n_hidden a sequence): a list
        of one array per layer, layer k's (n_streams, n_hidden[k])."""
        return self._copied(self._state)

    def reset_state(self, streams: ArrayLike | None = None) -> None:
        """Forget the working memory of every stream, or of some.

        Parameters
        ----------
        streams : array-like of int, or of bool with shape (n_streams,), optional
            None (default): every stream; the state becomes empty, and the next
            call starts from zero states with any number of streams.
            Otherwise the streams to start afresh (when attention moves on in
            them), as indices in [0, n_streams) (repeats are fine) or as a
            boolean mask: their rows of :attr:`state` become zero, the other
            streams keep their memory. When the state is already empty every
            stream is fresh and this does nothing (the type of ``streams`` is
            still checked, and that no index is negative; the end of the
            range cannot be).

        Waits for a fit in another thread to finish (a stateful fit ends by
        keeping its final states); called from a fit's callback, it resets
        the memory the fit started from, and the fit's final states then
        replace it.

        Raises
        ------
        TypeError
            streams holds neither integers nor booleans, or a list mixes both.
        ValueError
            streams is not 1-dimensional, an index is outside [0, n_streams),
            or a mask's length is not n_streams.
        """
        # As a reader: a stateful fit in another thread ends first (it would
        # write its final states over the reset), as step waits for it.
        with self._lock.reading():
            if streams is None:
                self._state = None
                return
            held = self._layer_states(self._state)
            rows = check_streams(streams, None if held is None else held[0].shape[0])
            if held is not None and rows.size:
                # Copy, then swap: a step in another thread may be reading the old one.
                fresh = [h.copy() for h in held]
                for h in fresh:
                    h[rows] = 0
                self._state = fresh if self._stacked else fresh[0]

    def __repr__(self) -> str:
        n_hidden = self._sizes if self._stacked else self._n_hidden
        deep = (f"bidirectional={self._bidirectional}, readout={list(self._readout)}, "
                if self._deep else "")
        return (f"STM({self._n_in}, {n_hidden}, {self._n_out}, output={self._output!r}, "
                f"return_sequences={self._return_sequences}, stateful={self._stateful}, {deep}"
                f"dtype={self._dtype.name}, backend={self._backend!r})")

    # -- checks ---------------------------------------------------------------
    def _features(self, name: str, value: ArrayLike, ndim: int, meaning: str,
                  ) -> NDArray[Any]:
        """value as an ndim array whose shape is meaning, "(..., n_in)"; unconverted."""
        array = as_array(name, value, ndim)
        if array.shape[-1] != self._n_in:
            raise ValueError(
                f"{name} must have shape {meaning} with n_in = {self._n_in}, got {array.shape}")
        return array

    def _inputs(self, X: ArrayLike, lengths: ArrayLike | None,
                ) -> tuple[NDArray[Any], NDArray[np.intp]]:
        X = self._features("X", X, 3, "(n_samples, n_steps, n_in)")
        check_sequence_rows(X, self._widest())
        lengths = check_lengths(lengths, X.shape[0], X.shape[1])
        return np.ascontiguousarray(X, dtype=self._dtype), lengths

    def _targets(self, Y: ArrayLike, X: NDArray[Any], lengths: NDArray[np.intp],
                 ) -> NDArray[Any]:
        n_samples, n_steps, _ = X.shape
        per_step, per_sequence = (n_samples, n_steps, self._n_out), (n_samples, self._n_out)
        shape = per_step if self._return_sequences else per_sequence
        Y = as_array("Y", Y, None)
        given = Y.shape
        if self._n_out == 1 and Y.ndim == len(shape) - 1:
            Y = Y[..., None]
        if Y.shape != shape:
            raise ValueError(self._targets_error(given, shape, per_step, per_sequence))
        Y = np.ascontiguousarray(Y, dtype=self._dtype)
        padded = self._return_sequences and (lengths < n_steps).any()
        if padded:
            # Padded targets take no loss: set them to the padded outputs, 0.
            Y = np.where(_valid_steps(lengths, n_steps)[..., None], Y, 0).astype(self._dtype)
        if self._output in PROBABILITY_OUTPUTS:
            # The valid targets only (a padded row of zeros is no distribution).
            check_targets(self._output, np.where(
                _valid_steps(lengths, n_steps)[..., None], Y, Y.dtype.type(1 / self._n_out))
                if padded else Y)
        return Y

    def _row_weights(self, sample_weight: ArrayLike | None, lengths: NDArray[np.intp],
                     n_steps: int) -> NDArray[np.float64] | None:
        """The loss's weight of every output row, float64 shaped as Y without
        its last axis: sample_weight (per sequence, or per step with
        return_sequences) times 1 on valid steps and 0 on padded ones. None
        where every valid row weighs 1 and nothing needs masking (the
        squared error's padded outputs and targets are both 0)."""
        n_samples = len(lengths)
        shapes: tuple[tuple[int, ...], ...] = ((n_samples,),)
        meaning = "(n_samples,)"
        if self._return_sequences:
            shapes, meaning = shapes + ((n_samples, n_steps),), meaning + " or (n_samples, n_steps)"
        weights = check_sample_weight(sample_weight, shapes, meaning)
        if not self._return_sequences:
            return weights
        padded = bool((lengths < n_steps).any())
        if weights is None and not (padded and self._output in PROBABILITY_OUTPUTS):
            return None
        valid = _valid_steps(lengths, n_steps).astype(np.float64)
        if weights is not None:
            valid *= weights[:, None] if weights.ndim == 1 else weights
            if padded and valid.size and not valid.any():
                raise ValueError("sample_weight must weigh some valid step: it is 0 on "
                                 "every step t < lengths[i]")
        return valid

    def _targets_error(self, given: tuple[int, ...], shape: tuple[int, ...],
                       per_step: tuple[int, ...], per_sequence: tuple[int, ...]) -> str:
        """The message for targets of shape `given` where `shape` is needed,
        naming return_sequences when Y looks made for the other setting."""
        names, short = (("(n_samples, n_steps, n_out)", "(n_samples, n_steps)")
                        if self._return_sequences else ("(n_samples, n_out)", "(n_samples,)"))
        wanted = f"{names} = {shape}"
        ndims = [len(shape)]
        if self._n_out == 1:  # the last axis may be left out
            wanted += f" or {short} = {shape[:-1]}"
            ndims.insert(0, len(shape) - 1)
        if len(given) in ndims:
            message = f"Y must have shape {wanted}, got {given}"
        else:
            message = (f"Y must be {' or '.join(map(str, ndims))}-dimensional, of shape "
                       f"{wanted}, got shape {given}")

        def fits(target: tuple[int, ...]) -> bool:
            return given == target or (self._n_out == 1 and given == target[:-1])

        if self._return_sequences and fits(per_sequence):
            message += (". That is one target per sequence: make the STM with "
                        "return_sequences=False (this one has return_sequences=True: a "
                        "target at every step)")
        elif not self._return_sequences and fits(per_step):
            message += (". That is one target per step: make the STM with "
                        "return_sequences=True (this one has return_sequences=False: one "
                        "target per sequence)")
        return message

    def _widest(self) -> int:
        """The widest row of a layer's states or outputs (see check_sequence_rows)."""
        return max(*self._sizes, *self._readout, self._n_out) * (2 if self._bidirectional
                                                                  else 1)

    def _held_state(self, n_streams: int, given: str) -> Any:
        """The working memory for a call on n_streams streams (None when
        empty); given says what the call holds, for the error."""
        held = self._layer_states(self._state)
        if held is not None and held[0].shape[0] != n_streams:
            raise ValueError(
                f"this STM holds the working memory of {held[0].shape[0]} streams (a "
                f"stateful fit leaves that of each training sequence), but {given}: call "
                f"reset_state() to start new streams")
        return self._state

    def _initial_state(self, n_samples: int) -> NDArray[Any] | None:
        if not self._stateful:
            return None
        return self._held_state(n_samples, f"X has {n_samples} sequences")

    # -- use --------------------------------------------------------------------
    @overload
    def predict(self, X: ArrayLike, *, lengths: ArrayLike | None = ...,
                initial_state: ArrayLike | None = ...,
                return_state: Literal[False] = ...) -> NDArray[Any]: ...
    @overload
    def predict(self, X: ArrayLike, *, lengths: ArrayLike | None = ...,
                initial_state: ArrayLike | None = ...,
                return_state: Literal[True]) -> tuple[NDArray[Any], NDArray[Any]]: ...
    @overload
    def predict(self, X: ArrayLike, *, lengths: ArrayLike | None = ...,
                initial_state: ArrayLike | None = ..., return_state: bool = ...,
                ) -> NDArray[Any] | tuple[NDArray[Any], NDArray[Any]]: ...

    def predict(self, X: ArrayLike, *, lengths: ArrayLike | None = None,
                initial_state: ArrayLike | None = None, return_state: bool = False,
                ) -> NDArray[Any] | tuple[NDArray[Any], NDArray[Any]]:
        """Outputs of the model (and, on request, each sequence's final state).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_steps, n_in)
            Real numbers, converted to the model's dtype: float32, float64,
            integer and bool arrays and nested lists of numbers; float16,
            longdouble, complex, object and string data are refused.
        lengths : array-like of int, shape (n_samples,), optional
            Steps each sequence runs, in [0, n_steps]; None means all n_steps.
        initial_state : array-like of shape (n_samples, n_hidden), optional
            The working memory each sequence starts from, e.g. a
            ``final_state`` of an earlier call; None: zeros (a stateful
            model: :attr:`state`). The model's dtype; integers and nested
            lists are converted, a float array of the other dtype is refused.
            On a stateful model it replaces :attr:`state` for this call, for
            any n_samples, and the final states are kept as usual.
        return_state : bool, default False
            Also return the final states.

        Returns
        -------
        Y : ndarray of the model's dtype
            (n_samples, n_steps, n_out) with ``return_sequences`` (0 past
            each length), else (n_samples, n_out).
        final_state : ndarray of shape (n_samples, n_hidden), the model's dtype
            Only with ``return_state``: each sequence's state after its last
            valid step (its initial state at length 0); the initial state
            that continues it.

        A stateful model starts from :attr:`state` (unless initial_state is
        given) and keeps the final states.

        Raises
        ------
        TypeError
            X or initial_state is not an array of real numbers (initial_state
            of the other float dtype), lengths not integers, or return_state
            not a bool.
        ValueError
            X, lengths or initial_state has the wrong shape or range, or
            (stateful, no initial_state) X holds a different number of
            sequences than the state has streams.
        """
        if lengths is None and (return_state is False or return_state is True):
            # X and initial_state as the kernels take them: no checks.
            ready = self._network.predict_ready(
                X, self._state if initial_state is None and self._stateful else initial_state)
            if ready is not None:
                outputs, final = ready
                if self._stateful:
                    self._state = final
                if return_state:
                    return outputs, final.copy() if self._stateful else final
                return outputs
        X, lengths = self._inputs(X, lengths)
        return_state = check_bool("return_state", return_state)
        if self._bidirectional and return_state:
            raise ValueError(self._no_future("return_state=True"))
        if initial_state is not None:
            initial_state = self._checked_state(initial_state, X.shape[0])
        with self._lock.reading():
            h0 = self._initial_state(X.shape[0]) if initial_state is None else initial_state
            outputs, final = self._network.predict(X, h0, lengths)
        if self._stateful and X.shape[0]:  # no sequence: the memory stays (as step's)
            self._state = final
        if return_state:
            # A copy of a kept state: changing one must not change the other.
            return outputs, self._copied(final) if self._stateful else final
        return outputs

    def _checked_state(self, initial_state: Any, n_samples: int) -> Any:
        """predict's initial_state, checked, in the form of :attr:`state`."""
        if self._bidirectional:
            raise ValueError(self._no_future("initial_state"))
        if not self._stacked:
            return check_state("initial_state", initial_state, (n_samples, self._sizes[0]),
                               self._dtype)
        if isinstance(initial_state, np.ndarray) or not isinstance(initial_state,
                                                                   (list, tuple)):
            raise TypeError(f"initial_state of a stacked STM must be a list of one array per "
                            f"layer ({len(self._sizes)}), got {type(initial_state).__name__}")
        if len(initial_state) != len(self._sizes):
            raise ValueError(f"initial_state must hold one state per layer: "
                             f"{len(self._sizes)} arrays, of shapes "
                             f"{[(n_samples, n) for n in self._sizes]}, got "
                             f"{len(initial_state)}")
        return [check_state(f"initial_state[{k}]", state, (n_samples, n), self._dtype)
                for k, (state, n) in enumerate(zip(initial_state, self._sizes))]

    def step(self, x: ArrayLike) -> NDArray[Any]:
        """Feed live streams one step: the outputs, and the working memory moves on.

        For each stream i, from its held state ``h`` (zeros when
        :attr:`state` is empty)::

            h <- tanh(x[i] Wx + h Wh + b),    y[i] = f(h W_out + b_out)

        (also with ``return_sequences=False``: the readout of this step). The
        working memory is that of :meth:`predict` over the whole sequence,
        and so are the outputs (predict projects every step's inputs and
        reads every step out apart, as a step does): the same bits for a
        single-layer STM; a deep STM's layers project a sequence's inputs
        at once, which BLAS may round differently in the last bit. Works on any STM, stateful or not: it reads
        :attr:`state` and keeps the new one (:meth:`predict` of a stateful
        model continues from it, and :meth:`reset_state` restarts some
        streams or all). Steps of one model from several threads at once
        race for the one working memory.

        Parameters
        ----------
        x : array-like of shape (n_streams, n_in)
            This step's input of every stream; converted as predict converts X.

        Returns
        -------
        y : ndarray of shape (n_streams, n_out), the model's dtype

        Raises
        ------
        TypeError
            x is not an array of real numbers.
        ValueError
            x has the wrong shape, or its n_streams differs from that of the
            held state (call reset_state() to start new streams).
        """
        if self._bidirectional:
            raise ValueError(self._no_future("step"))
        ready = self._network.step_ready(x, self._state)  # x as the kernels take it
        if ready is not None:
            outputs, self._state = ready
            return outputs
        x = self._features("x", x, 2, "(n_streams, n_in)")
        n_streams = x.shape[0]
        X = np.ascontiguousarray(x, dtype=self._dtype).reshape(n_streams, 1, self._n_in)
        check_sequence_rows(X, self._widest())
        if n_streams == 0:
            # No stream steps: the memory stays as it is (none would refuse
            # the next step's streams). One of other streams still refuses it.
            self._held_state(0, "x has 0 streams")
            return np.empty((0, self._n_out), self._dtype)
        with self._lock.reading():
            outputs, self._state = self._network.predict(
                X, self._held_state(n_streams, f"x has {n_streams} streams"),
                np.ones(n_streams, np.intp))
        return outputs.reshape(n_streams, self._n_out)

    def loss(self, X: ArrayLike, Y: ArrayLike, *, lengths: ArrayLike | None = None,
             weight_decay: float = 0.0, sample_weight: ArrayLike | None = None) -> float:
        """The loss fit minimises: the mean over the valid outputs.

        For "tanh" and "linear" outputs the mean squared error
        ``sum((predict(X) - Y)**2) / (n_valid * n_out)``, where the sum runs
        over valid outputs only: with ``return_sequences``, the steps
        ``t < lengths[i]`` of each sequence (n_valid = sum(lengths)); else
        one output per sequence (n_valid = n_samples). 0 when nothing is valid.
        For "softmax" the cross-entropy ``-sum_k Y_k log p_k`` of each valid
        output, for "sigmoid" its binary log-loss summed over the outputs,
        averaged over the n_valid outputs. With sample_weight, the weighted
        mean ``sum w l / sum w`` over the valid outputs (l the output's loss,
        for the squared error the mean over its n_out values). With
        weight_decay, plus ``weight_decay / 2`` times the sum of the
        squared weights Wx, Wh and W_out (not the biases).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_steps, n_in)
        Y : array-like shaped like :meth:`predict`'s result; the last axis
            may be left out when n_out == 1. Padded steps are ignored.
        lengths : array-like of int, shape (n_samples,), optional
        weight_decay : float >= 0, default 0.0
            The L2 penalty's coefficient, as :meth:`fit` takes it.
        sample_weight : array-like, optional
            Finite weights >= 0, not all zero: one per sequence, shape
            (n_samples,), or with ``return_sequences`` one per step, shape
            (n_samples, n_steps) (padded steps take none either way).

        Returns
        -------
        loss : float

        A stateful model starts from :attr:`state`, and leaves it as it is.

        Raises
        ------
        TypeError
            X, Y or sample_weight is not an array of real numbers.
        ValueError
            X, Y or lengths has the wrong shape or range; targets a
            "softmax" or "sigmoid" output cannot take (as for
            :meth:`lgmstm.LGM.loss`); sample_weight of another shape,
            negative, non-finite, all zero or zero on every valid step.
        """
        X, lengths = self._inputs(X, lengths)
        Y = self._targets(Y, X, lengths)
        weight_decay = check_positive_float("weight_decay", weight_decay, allow_zero=True)
        weights = self._row_weights(sample_weight, lengths, X.shape[1])
        with self._lock.reading():
            penalty = weight_penalty(self._params, weight_decay)
            if not self._deep:
                # The training loop's validation loss, to the bit.
                return self._network.loss(X, Y, self._initial_state(X.shape[0]), lengths,
                                          weights) + penalty
            outputs, _ = self._network.predict(X, self._initial_state(X.shape[0]), lengths,
                                               logits=True)
        if weights is None and self._output not in PROBABILITY_OUTPUTS:
            n_valid = int(lengths.sum()) if self._return_sequences else X.shape[0]
            diff = outputs - Y
            return float(np.vdot(diff, diff)) / max(1, n_valid * self._n_out) + penalty
        value, _ = reference.output_loss(self._output, outputs.reshape(-1, self._n_out),
                                         Y.reshape(-1, self._n_out),
                                         None if weights is None else weights.reshape(-1))
        return value + penalty

    def predict_log_proba(self, X: ArrayLike, *, lengths: ArrayLike | None = None,
                          ) -> NDArray[Any]:
        """Log-probabilities of a ``"softmax"`` or ``"sigmoid"`` model.

        As :meth:`predict` (shape, lengths, a stateful model's
        :attr:`state`, which it leaves as it is), computed stably from the
        logits: ``log_softmax`` (max-subtracted) or ``-softplus(-z)``,
        never ``log(0)``; 0 at padded steps. ``exp`` of it is
        :meth:`predict`'s result on the valid steps.

        Raises
        ------
        ValueError
            The model's output is not "softmax" or "sigmoid"; X or lengths
            of the wrong shape or range.
        TypeError
            X or lengths is not an array of numbers.
        """
        if self._output not in PROBABILITY_OUTPUTS:
            raise ValueError("predict_log_proba needs a model made with output='softmax' or "
                             f"output='sigmoid', this one has output={self._output!r}")
        X, lengths = self._inputs(X, lengths)
        with self._lock.reading():
            logits, _ = self._network.predict(X, self._initial_state(X.shape[0]), lengths,
                                              logits=True)
        log_proba = reference.log_probabilities(self._output, logits)
        if self._return_sequences:
            log_proba[~_valid_steps(lengths, X.shape[1])] = 0
        return log_proba

    def gradients(self, X: ArrayLike, Y: ArrayLike, *, lengths: ArrayLike | None = None,
                  weight_decay: float = 0.0,
                  sample_weight: ArrayLike | None = None) -> dict[str, NDArray[Any]]:
        """Gradient of :meth:`loss` with respect to every parameter: with
        weight_decay, each weight's gains ``weight_decay * W``.

        Parameters
        ----------
        X, Y, lengths, weight_decay, sample_weight : as for :meth:`loss`

        Returns
        -------
        grads : dict of str to ndarray
            ``d loss / d param``, keyed and shaped like :attr:`params`, the
            model's dtype.

        A stateful model starts from :attr:`state` (the gradients do not flow
        into it), and leaves it as it is.

        Raises
        ------
        As :meth:`loss`.
        """
        X, lengths = self._inputs(X, lengths)
        Y = self._targets(Y, X, lengths)
        weight_decay = check_positive_float("weight_decay", weight_decay, allow_zero=True)
        weights = self._row_weights(sample_weight, lengths, X.shape[1])
        with self._lock.reading():
            _, grads = self._network.gradients(X, Y, self._initial_state(X.shape[0]), lengths,
                                               weights)
            add_weight_decay(grads, self._params, weight_decay)
        return self._named(grads)

    def fit(self, X: ArrayLike, Y: ArrayLike, *, epochs: int, lr: float,
            batch_size: int | None = None, optimizer: str = "sgd",
            momentum: float = MOMENTUM, nesterov: bool = False, beta1: float = ADAM_BETA1,
            beta2: float = ADAM_BETA2, eps: float = ADAM_EPS, weight_decay: float = 0.0,
            clip_norm: float | None = None, shuffle: bool = True,
            seed: int | np.random.Generator | None = None,
            callback: Callable[[int, float], bool | None] | None = None,
            verbose: bool = False, lengths: ArrayLike | None = None,
            warm_start: bool = False,
            sample_weight: ArrayLike | None = None,
            validation_data: tuple[ArrayLike, ...] | None = None,
            validation_fraction: float | None = None, early_stopping: bool = False,
            patience: int = PATIENCE, tol: float = TOL, lr_schedule: str = "constant",
            power_t: float = POWER_T, stop_on_plateau: bool = False) -> NDArray[np.float64]:
        """Train by backpropagation through time on the loss of the output
        (see :meth:`loss`: squared error, or cross-entropy for "softmax" and
        "sigmoid").

        Parameters
        ----------
        X : array-like of shape (n_samples, n_steps, n_in), finite, n_samples >= 1
        Y : array-like shaped like :meth:`predict`'s result, finite
        epochs : int >= 0
            Passes over the data.
        lr : float > 0
            Learning rate.
        batch_size : int >= 1 or None, default None
            Sequences per update; None (or anything >= n_samples) is one
            update per epoch on the whole batch.
        optimizer : {"sgd", "momentum", "adam"}, default "sgd"
            As for :meth:`lgmstm.LGM.fit`; the moments and step count start
            from zero unless ``warm_start``.
        momentum, nesterov, beta1, beta2, eps
            The optimizer's settings, as for :meth:`lgmstm.LGM.fit`.
        weight_decay : float >= 0, default 0.0
            L2 regularisation of the weights Wx, Wh and W_out (not the
            biases), as for :meth:`lgmstm.LGM.fit`: the loss gains
            ``weight_decay / 2 * sum(W**2)``, every update adds
            ``weight_decay * W`` to a weight's gradient, after clipping.
        clip_norm : float > 0 or None, default None
            When the global norm of the gradient (all parameters together,
            before weight decay) exceeds clip_norm, scale the gradient down
            to that norm before the update.
        shuffle : bool, default True
            Visit the sequences in a new random order each epoch (only matters
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
        lengths : array-like of int, shape (n_samples,), optional
            Steps each sequence runs, in [0, n_steps]; None means all n_steps.
        warm_start : bool, default False
            Go on with the optimizer state the model kept from its last
            training, as :meth:`partial_fit` does (see
            :meth:`reset_optimizer` for the rules); by default start it afresh.
        sample_weight : array-like, optional
            As for :meth:`loss`: per sequence (n_samples,) or, with
            ``return_sequences``, per step (n_samples, n_steps). Each batch
            minimises its weighted mean over its valid outputs (in a full
            batch a weight of 2 is the sequence twice).
        validation_data : (X_val, Y_val) or (X_val, Y_val, lengths_val), optional
            Validation sequences, shaped and converted as X, Y and lengths
            (their own n_steps allowed); each starts from a zero state
            (also for a stateful model). Their loss (see :meth:`loss`)
            after every epoch is computed in the compiled loop into
            ``validation_history_``.
        validation_fraction, early_stopping, patience, tol, lr_schedule, power_t, stop_on_plateau
            As for :meth:`lgmstm.LGM.fit` (the held-out samples are
            sequences; a stateful model takes validation_data only).

        Returns
        -------
        losses : ndarray of shape (n_epochs_run,), float64
            The loss (see :meth:`loss`) of each epoch, each batch measured
            before its update. Also kept as ``history_`` (fewer than
            ``epochs`` when early stopping or the adaptive schedule stopped).

        A stateful model starts every epoch from :attr:`state` (gradients do
        not flow into it: truncated BPTT) and afterwards holds the final
        states of the last epoch's forward passes, one stream per training
        sequence, for the next chunk: call :meth:`reset_state` before
        predicting other streams.

        Raises
        ------
        TypeError
            A hyper-parameter of the wrong type, a non-callable callback, or
            X/Y not arrays of real numbers.
        ValueError
            Empty, non-finite or misshapen data or lengths; targets or
            sample_weight that :meth:`loss` refuses; epochs < 0; lr,
            eps or clip_norm not finite and > 0; momentum, beta1 or beta2
            outside [0, 1); weight_decay negative or not finite;
            nesterov=True with another optimizer than "momentum";
            batch_size < 1; an unknown optimizer.
        RuntimeError
            Another thread is training this model.
        TrainingInterrupted (a KeyboardInterrupt)
            On Ctrl-C, within about 0.1 s; the model keeps its last finished epoch.

        Warns
        -----
        DivergenceWarning
            A non-finite loss or parameter: training stops and the model keeps
            the last finite parameters.
        TargetRangeWarning (a UserWarning)
            Once per call, when ``output="tanh"`` and Y holds a target outside
            [-1, 1], which the model cannot reach: make it with
            ``output="linear"``, or scale Y. Both warnings point at the line
            that called fit (or partial_fit).
        """
        if short_fit_takes(epochs, callback, verbose, seed, sample_weight, lengths,
                           validation_data, validation_fraction, early_stopping, patience,
                           tol, lr_schedule, power_t, stop_on_plateau):
            losses = self._short_fit(X, Y, lr, batch_size, optimizer, clip_norm, shuffle,
                                     warm_start, momentum, nesterov, beta1, beta2, eps,
                                     weight_decay)
            if losses is not None:
                return losses
        X, lengths = self._inputs(X, lengths)
        Y = self._targets(Y, X, lengths)
        weights = self._row_weights(sample_weight, lengths, X.shape[1])
        validation = None
        if validation_data is not None:
            X_val, Y_val, *more = check_validation_data(validation_data, (2, 3))
            X_val, lengths_val = naming_validation_data(self._inputs, X_val,
                                                        more[0] if more else None)
            Y_val = naming_validation_data(self._targets, Y_val, X_val, lengths_val)
            validation = check_validation_set(X_val, Y_val, "sequence", lengths_val)
        if validation_fraction is not None and self._stateful:
            raise ValueError("validation_fraction: a stateful STM trains streams, which "
                             "cannot be split; give validation_data")
        plan = plan_fit(self._rng, X, Y, sample="sequence", epochs=epochs, lr=lr,
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
            validation = X[held], Y[held], lengths[held]
            X, Y, lengths = X[rows], Y[rows], lengths[rows]
            weights = None if weights is None else weights[rows]
        if validation is not None:
            # A cross-entropy's padded steps weigh 0 (the validation loss is unweighted).
            X_val, Y_val, lengths_val = validation
            validation = (X_val, Y_val, lengths_val,
                          self._row_weights(None, lengths_val, X_val.shape[1]))
        return train_model(self, plan,
                           self._trainer_maker(X, Y, lengths, weights, validation, plan),
                           callback, finish=self._keep_final_states)

    def _trainer_maker(self, X, Y, lengths, weights, validation, plan):
        """make_trainer(state) for train_model. A method, not a lambda in
        fit: a closure there would make fit allocate cells for the
        variables it captures on every call, the short fit's too."""
        return lambda state: self._network.trainer(
            X, Y, lengths, self._initial_state(X.shape[0]), plan.batch_size, state, plan.lr,
            plan.clip_norm, plan.weight_decay, weights, validation, plan.control)

    def _keep_final_states(self, trainer: CompiledTrainer | _ReferenceTrainer) -> None:
        """train_model's finish: a stateful STM keeps the final states of
        the epochs it trained as its working memory."""
        if self._stateful and len(self.history_):
            self._state = trainer.final_states

    def partial_fit(self, X: ArrayLike, Y: ArrayLike, *, lr: float,
                    batch_size: int | None = None, optimizer: str = "sgd",
                    momentum: float = MOMENTUM, nesterov: bool = False,
                    beta1: float = ADAM_BETA1, beta2: float = ADAM_BETA2, eps: float = ADAM_EPS,
                    weight_decay: float = 0.0,
                    clip_norm: float | None = None, shuffle: bool = True,
                    seed: int | np.random.Generator | None = None,
                    lengths: ArrayLike | None = None,
                    sample_weight: ArrayLike | None = None) -> STM:
        """Train one epoch on (X, Y), going on with the optimizer state.

        ``fit(X, Y, epochs=1, warm_start=True, ...)``: one pass over the
        sequences; the optimizer's moments and step count go on from those
        the model kept from its last training (see :meth:`reset_optimizer`).
        From a new model, N calls on the same data give exactly the bits of
        one ``fit(epochs=N)``, except for a stateful model: there each call
        starts from the working memory the previous one left (as N calls of
        ``fit(epochs=1)`` do), where one fit starts every epoch from the
        same :attr:`state`.

        Takes the arguments of :meth:`fit` but epochs, callback, verbose
        and warm_start, and returns self, raises and warns as
        :meth:`lgmstm.LGM.partial_fit` does (a diverged epoch leaves the
        working memory too).
        """
        if seed is None and lengths is None and sample_weight is None and self._short_fit(
                X, Y, lr, batch_size, optimizer, clip_norm, shuffle, True,
                momentum, nesterov, beta1, beta2, eps, weight_decay) is not None:
            return self
        self.fit(X, Y, epochs=1, lr=lr, batch_size=batch_size, optimizer=optimizer,
                 momentum=momentum, nesterov=nesterov, beta1=beta1, beta2=beta2, eps=eps,
                 weight_decay=weight_decay, clip_norm=clip_norm, shuffle=shuffle, seed=seed,
                 lengths=lengths, warm_start=True, sample_weight=sample_weight)
        return self

    def _short_fit(self, X, Y, lr, batch_size, optimizer, clip_norm, shuffle, warm_start,
                   momentum, nesterov, beta1, beta2, eps, weight_decay):
        """One epoch on the short fit's path (see _train.Program.fit_ready,
        which also sets history_, and a stateful model's final states): its
        losses, or None for the checked path."""
        if self._deep and self._stateful:
            return None  # a deep STM's states travel per layer: the checked path
        final = None
        if self._stateful:
            if type(X) is not np.ndarray or X.ndim != 3:
                return None
            final = np.empty((X.shape[0], self._sizes[0]), self._dtype)
        return self._network.fit_ready(
            self, X, Y, self._state if self._stateful else None, final, lr, batch_size,
            optimizer, clip_norm, shuffle, warm_start, momentum, nesterov, beta1, beta2, eps,
            weight_decay)

    # -- persistence -------------------------------------------------------------
    @classmethod
    def _from_saved(cls, config, dtype, arrays, path, backend):
        def value(name):
            entry = config[name]
            if entry.shape != ():
                raise TypeError(f"config.{name} must hold one value, got shape {entry.shape}")
            return entry.item()

        def sizes(name):  # one size, or a list of them (config.n_hidden of a stacked STM)
            entry = config[name]
            if entry.ndim > 1:
                raise TypeError(f"config.{name} must hold one size or a list of sizes, got "
                                f"shape {entry.shape}")
            return entry.item() if entry.ndim == 0 else [size.item() for size in entry]

        # Files of a single-layer STM have neither (nor older ones).
        bidirectional = value("bidirectional") if "bidirectional" in config else False
        readout = sizes("readout") if "readout" in config else []
        n_hidden = sizes("n_hidden")
        # Shapes first: a file must not make us build a model larger than it holds.
        every_size = [value("n_in"), value("n_out"),
                      *(n_hidden if isinstance(n_hidden, list) else [n_hidden]),
                      *(readout if isinstance(readout, list) else [readout])]
        if all(isinstance(n, int) and not isinstance(n, bool) for n in every_size) \
                and isinstance(bidirectional, bool) and isinstance(readout, list):
            n_in, n_out = every_size[:2]
            expected = parameter_shapes(n_in, n_hidden, n_out, bidirectional, readout)
            found = {name: array.shape for name, array in arrays.items()}
            if found != expected:
                architecture = f"n_in={n_in}, n_hidden={n_hidden}, n_out={n_out}"
                if "bidirectional" in config:
                    architecture += f", bidirectional={bidirectional}, readout={readout}"
                raise ValueError(f"{path}: parameters of shapes {found} do not fit "
                                 f"{architecture}")
        # The constructor's checks refuse a float size or a non-bool flag.
        model = cls(value("n_in"), n_hidden, value("n_out"), output=value("output"),
                    return_sequences=value("return_sequences"), stateful=value("stateful"),
                    bidirectional=bidirectional, readout=readout, dtype=dtype,
                    backend=backend)
        model._restore(arrays, path)
        return model
