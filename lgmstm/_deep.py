"""The deep STM's backends: stacked and bidirectional recurrent layers and
a readout of tanh layers (``STM(n_in, [n_1, ...], n_out, bidirectional=...,
readout=[...])``).

``backend="cython"`` trains in compiled code: the program
lgmstm._deep_stm.DeepNetwork (csrc/lgmstm/_deep_stm.pyx) composes the
compiled recurrent and dense passes per layer and per direction (each
layer's input projection one GEMM over all steps), its batches run by the
one training driver (_train.run_epochs), and its short fit (partial_fit,
fit(epochs=1)) is Program.fit_ready's; its gradients come from the same
program; predict composes the same compiled passes, in one compiled call
for a model of one direction (DeepNetwork.predict_stacked), else from
Python (COMPILED_PASSES, over lgmstm.reference.deep_forward), both with
every step's readout apart (a step's bits). ``backend="numpy"``
runs lgmstm.reference's composition (deep_forward, deep_backward) on the
NumPy passes, trained by ReferenceTrainer's loop.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _dense, _rnn, reference
from ._deep_stm import DeepNetwork
from ._threads import get_num_threads, single_threaded_blas
from ._training import (CheckedPathOnly, CompiledTrainer, OptimizerState, ReferenceTrainer,
                        TrainingControl, TrainingWorkspace, recurrent_validation,
                        short_fit_state)
from .kernels import _chunk_scratch, _rnn_work


def _compiled_recurrent_forward(X, h0, Wx, Wh, b, lengths, H):
    n_samples, n_steps, n_in = X.shape
    n_hidden = Wh.shape[0]
    scratch, order = _chunk_scratch(n_samples, n_in, n_hidden, X.dtype, False)
    with single_threaded_blas(_rnn_work(n_samples, n_steps, n_in, n_hidden)):
        _rnn.forward(X, h0, Wx, Wh, b, lengths, H, scratch, order, get_num_threads())
    return H


def _compiled_recurrent_backward(X, h0, Wx, Wh, H, dH, dh_last, lengths, need_dX=True):
    n_samples, n_steps, n_in = X.shape
    n_hidden = Wh.shape[0]
    dtype = X.dtype
    if dH is None:
        dH = np.zeros_like(H)
    dX = np.empty_like(X)
    dh0 = np.empty((n_samples, n_hidden), dtype)
    dWx, dWh, db = np.empty_like(Wx), np.empty_like(Wh), np.empty(n_hidden, dtype)
    dZ, dz_first = np.empty_like(H), np.empty((n_samples, n_hidden), dtype)
    scratch, order = _chunk_scratch(n_samples, n_in, n_hidden, dtype, True)
    with single_threaded_blas(_rnn_work(n_samples, n_steps, n_in, n_hidden)):
        _rnn.backward(X, h0, Wx, Wh, H, dH, dh_last, lengths, dZ, dz_first, dX, dh0, dWx, dWh,
                      db, scratch, order, get_num_threads())
    return dX, dh0, dWx, dWh, db


def _compiled_layer_forward(X, W, b, apply_tanh, out=None):
    out = np.empty((X.shape[0], W.shape[1]), X.dtype) if out is None else out
    with single_threaded_blas(_dense.TASK_ROWS * W.shape[0] * W.shape[1]):
        _dense.forward(X, W, b, out, apply_tanh, get_num_threads())
    return out


def _compiled_layer_backward(X, W, A, dA, apply_tanh, need_dX=True):
    dZ = np.empty_like(A)
    dX = np.empty_like(X)
    dW, db = np.empty_like(W), np.empty(W.shape[1], W.dtype)
    with single_threaded_blas(_dense.TASK_ROWS * W.shape[0] * W.shape[1]):
        _dense.backward(X, W, A, np.ascontiguousarray(dA), dZ, dX, dW, db, need_dX, apply_tanh,
                        get_num_threads())
    return (dX if need_dX else None), dW, db


def _compiled_layer_forward_steps(X, W, b, apply_tanh):
    out = np.empty(X.shape[:2] + (W.shape[1],), X.dtype)
    with single_threaded_blas(_dense.TASK_ROWS * W.shape[0] * W.shape[1]):
        _dense.forward_steps(X, W, b, out, apply_tanh, get_num_threads())
    return out


COMPILED_PASSES = reference.Passes(_compiled_layer_forward, _compiled_layer_backward,
                                   _compiled_recurrent_forward, _compiled_recurrent_backward,
                                   _compiled_layer_forward_steps)


class DeepRecurrent(CheckedPathOnly):
    """Forward, gradients and training of a deep STM (see the module's doc).

    params: the model's parameter list, in the order of the STM's names (per
    layer: the forward direction's Wx, Wh, b, then the reverse direction's;
    then each readout layer's W, b); sizes: the recurrent layers' sizes;
    output: the STM's ("softmax" and "sigmoid" train their cross-entropy on
    the last layer's logits, and predict applies their function);
    stacked: whether the STM's state is a list of one array per layer (its
    n_hidden a sequence) or one array (an int). States given to and returned
    by predict take that form.
    """

    def __init__(self, params, n_in, sizes, n_directions, output, return_sequences,
                 stacked, backend, lock):
        self.params = params
        self.sizes = list(sizes)
        self.n_directions = n_directions
        self.output = output
        self.output_tanh = output == "tanh"
        self.return_sequences = return_sequences
        self.stacked = stacked
        self.compiled = backend == "cython"
        self.passes = COMPILED_PASSES if self.compiled else reference.REFERENCE_PASSES
        self.program = None
        # fit's scratch arrays, kept for the next fit (fresh pages cost a
        # tenth of an epoch of the benchmark's stacked STM)
        self.workspace = TrainingWorkspace()
        if self.compiled:
            n_recurrent = 3 * n_directions * len(self.sizes)
            dense = [W.shape[1] for W in params[n_recurrent::2]]
            self.program = DeepNetwork(params, n_in, np.asarray(self.sizes, np.intp),
                                       np.asarray(dense, np.intp), n_directions, output,
                                       return_sequences, lock)
        # the readout: every parameter after the recurrent ones
        self.n_recurrent = 3 * n_directions * len(self.sizes)
        self.n_out = params[-1].shape[0]
        if self.program is not None:
            self.program.run_factory = self._short_run

    def fit_ready(self, *arguments: Any) -> Any:
        """The short fit of partial_fit and fit(epochs=1), from zero states
        (_train.Program.fit_ready): the epoch's losses, or None for the
        checked path (always on the NumPy backend)."""
        program = self.program
        return None if program is None else program.fit_ready(*arguments)

    def _short_run(self, X, Y, h0, batch_size, state, optimizer, settings):
        """The TrainingRun the short fit keeps (see _train.Program.fit_ready),
        for sequences of X's full length from zero states, and the state it
        continues (see short_fit_state)."""
        state = short_fit_state(state, optimizer, settings, self.params)
        lengths = np.full(X.shape[0], X.shape[1], np.intp)
        return self.trainer(X, Y, lengths, None, batch_size, state, 1.0, None).run_data, state

    def _network(self):
        recurrent, dense = self.params[:self.n_recurrent], self.params[self.n_recurrent:]
        layers = [[tuple(recurrent[i:i + 3]) for i in range(start, start + 3 * self.n_directions,
                                                             3)]
                  for start in range(0, self.n_recurrent, 3 * self.n_directions)]
        readout = [tuple(dense[j:j + 2]) for j in range(0, len(dense), 2)]
        return layers, readout

    def _layer_states(self, h0):
        if h0 is None:
            return None
        return list(h0) if self.stacked else [h0]

    def _public_states(self, finals):
        return finals if self.stacked else finals[0]

    def predict(self, X, h0, lengths, logits=False):
        """(outputs, final states): softmax and sigmoid outputs are
        probabilities (0 at padded steps), or with logits=True their logits."""
        program = self.program
        if program is not None and self.n_directions == 1 and X.shape[0] and X.shape[1]:
            # The same compiled passes, composed in one compiled call.
            with single_threaded_blas(program.blas_work(X.shape[0], X.shape[1])):
                outputs, finals = program.predict_stacked(
                    X, self._layer_states(h0), lengths, get_num_threads())
        else:
            layers, readout = self._network()
            outputs, kept = reference.deep_forward(X, layers, readout, self._layer_states(h0),
                                                   lengths, self.output_tanh,
                                                   self.return_sequences, self.passes,
                                                   steps_apart=True)
            finals = [directions[0] for directions in kept.finals]
        if not logits and self.output in ("softmax", "sigmoid"):
            outputs = reference.output_function(self.output, outputs)
            if self.return_sequences:
                outputs[np.arange(X.shape[1]) >= lengths[:, None]] = 0
        return outputs, self._public_states(finals)

    def step_gradients(self, X, Y, h0, lengths, weights=None):
        """(loss, grads, final states in the public form) of one batch
        (unchecked; weights: None or each output row's, as STM._row_weights
        makes them)."""
        layers, readout = self._network()
        loss, grads, finals = reference.deep_loss_gradients(
            X, Y, layers, readout, self._layer_states(h0), lengths, self.output,
            self.return_sequences, self.passes, weights)
        return loss, grads, self._public_states(finals)

    def validation_loss(self, X, Y, lengths, weights):
        """The loss over the valid outputs (weights: the rows' mask, or
        None), from zero states."""
        return self.step_gradients(X, Y, None, lengths, weights)[0]

    def gradients(self, X, Y, h0, lengths, weights=None):
        program = self.program
        if program is None:
            loss, grads, _ = self.step_gradients(X, Y, h0, lengths, weights)
            return loss, grads
        # The training program's batch, on every sequence in order.
        trainer = CompiledDeepTrainer(self, X, Y, lengths, h0, max(1, X.shape[0]),
                                      OptimizerState.fresh("sgd", self.params), 1.0, None,
                                      weights=weights)
        with single_threaded_blas(trainer.blas_work):
            loss = program.gradients(trainer.run_data, get_num_threads())
        return loss, trainer.run_data.grads.arrays

    def trainer(self, X, Y, lengths, h0, batch_size, optimizer, lr, clip_norm, weight_decay=0.0,
                weights=None, validation=None, control=TrainingControl()):
        """A trainer of the backend: weights, the output rows' loss weights
        or None; validation, (X_val, Y_val, lengths_val, weights_val) or None
        (weights_val: the rows' mask for a cross-entropy, or None)."""
        if self.compiled:
            return CompiledDeepTrainer(self, X, Y, lengths, h0, batch_size, optimizer, lr,
                                       clip_norm, weight_decay, control, self.workspace,
                                       weights, validation)
        return DeepTrainer(self, X, Y, lengths, h0, batch_size, optimizer, lr, clip_norm,
                           weight_decay, control, weights, validation)


class CompiledDeepTrainer(CompiledTrainer):
    """One fit of a deep STM in compiled code (DeepNetwork.train): the
    layers' states packed side by side in one row per sequence, as the
    program takes them; final_states in the STM's form (see DeepRecurrent).
    kept: a TrainingWorkspace to take the gradients and scratch from (fit;
    None: fresh ones, for a call that may run beside another); weights and
    validation as DeepRecurrent.trainer takes them."""

    def __init__(self, network, X, Y, lengths, h0, batch_size, optimizer, lr, clip_norm,
                 weight_decay=0.0, control=TrainingControl(), kept=None, weights=None,
                 validation=None):
        n_samples, n_steps, _ = X.shape
        dtype = X.dtype
        layer_h0 = network._layer_states(h0)
        packed_h0 = None if layer_h0 is None else np.ascontiguousarray(
            np.concatenate(layer_h0, axis=1))
        n_values, n_indices, n_partials = network.program.workspace_sizes(
            min(batch_size, n_samples), n_steps)

        def make_workspace():
            return ([np.empty_like(p) for p in network.params],
                    [np.empty(n_values, dtype), np.empty(n_indices, np.intp),
                     np.empty(n_partials, np.float64)])

        grads, workspace = (make_workspace() if kept is None else
                            kept.get((n_values, n_indices, n_partials, dtype), make_workspace))
        self.network_of_states = network
        validation, blas_work = recurrent_validation(
            network.program, validation,
            network.program.blas_work(min(batch_size, n_samples), n_steps))
        super().__init__(
            network, X, Y.reshape(-1), batch_size, optimizer, lr,
            grads=grads, workspace=workspace, blas_work=blas_work,
            clip_norm=clip_norm, weight_decay=weight_decay, lengths=lengths,
            initial_states=packed_h0,
            final_states=np.zeros((n_samples, sum(network.sizes)), dtype),
            weights=None if weights is None else weights.reshape(-1), validation=validation,
            control=control)

    @property
    def final_states(self):
        """Each sequence's final states, from the latest epoch, in the STM's form."""
        splits = np.cumsum(self.network_of_states.sizes)[:-1]
        return self.network_of_states._public_states(
            [np.ascontiguousarray(part) for part in np.split(self.packed_finals, splits, axis=1)])

    @final_states.setter
    def final_states(self, packed):
        self.packed_finals = packed


class DeepTrainer(ReferenceTrainer):
    """ReferenceTrainer on a deep STM's batches; final_states: each
    sequence's final state per layer (the public form), from the latest epoch."""

    def __init__(self, network, X, Y, lengths, h0, batch_size, optimizer, lr, clip_norm,
                 weight_decay, control=TrainingControl(), weights=None, validation=None):
        finals = [np.zeros((X.shape[0], n), X.dtype) for n in network.sizes]
        layer_h0 = network._layer_states(h0)

        def count(batch_lengths, batch_weights):
            """What a batch's loss is the mean over (STM._row_weights)."""
            n_valid = (int(batch_lengths.sum()) if network.return_sequences
                       else len(batch_lengths))
            return reference.loss_count(network.output, batch_weights, n_valid, network.n_out)

        def batch(rows):
            batch_lengths = lengths[rows]
            batch_weights = None if weights is None else weights[rows]
            loss, grads, batch_finals = network.step_gradients(
                X[rows], Y[rows],
                None if layer_h0 is None else network._public_states([h[rows] for h in layer_h0]),
                batch_lengths, batch_weights)
            for kept, final in zip(finals, network._layer_states(batch_finals)):
                kept[rows] = final
            return loss * count(batch_lengths, batch_weights), grads

        def validate():
            return network.validation_loss(*validation)

        super().__init__(network.params, batch, X.shape[0], count(lengths, weights), batch_size,
                         optimizer, lr, clip_norm, carried=finals, weight_decay=weight_decay,
                         validate=None if validation is None else validate, control=control)
        self.final_states = network._public_states(finals)
