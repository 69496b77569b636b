# Signatures of the compiled recurrent kernels (csrc/_recurrent.pyx). Unchecked:
# use lgmstm.kernels.rnn_forward / rnn_backward or lgmstm.STM.
from typing import Any

import numpy as np
from numpy.typing import NDArray

Float = NDArray[np.floating[Any]]
Index = NDArray[np.intp]

def buffer_shapes(
    n_samples: int, n_steps: int, n_hidden: int, n_out: int, return_sequences: bool
) -> list[tuple[tuple[int, ...], type | None]]: ...
def forward(
    X: Float, h0: Float | None, Wx: Float, Wh: Float, b: Float, lengths: Index,
    H: Float, scratch: Float, order: Index, n_threads: int,
) -> None: ...
def backward(
    X: Float, h0: Float | None, Wx: Float, Wh: Float, H: Float, dH: Float,
    dh_last: Float | None, lengths: Index, dZ: Float, dz_first: Float, dX: Float,
    dh0: Float, dWx: Float, dWh: Float, db: Float, scratch: Float, order: Index,
    n_threads: int,
) -> None: ...
def predict(
    X: Float, h0: Float | None, lengths: Index, params: list[Float], sizes: Index,
    output_tanh: bool, return_sequences: bool, buffers: list[np.ndarray], n_threads: int,
) -> tuple[Float, Float]: ...
def gradients(
    X: Float, Y: Float, h0: Float | None, lengths: Index, params: list[Float],
    grads: list[Float], sizes: Index, output_tanh: bool, return_sequences: bool,
    buffers: list[np.ndarray], n_threads: int,
) -> float: ...
def train(
    X: Float, Y: Float, lengths: Index, initial_states: Float | None,
    final_states: Float | None, params: list[Float], grads: list[Float],
    state1: list[Float], state2: list[Float], sizes: Index, output_tanh: bool,
    return_sequences: bool, buffers: list[np.ndarray], X_batch: Float, Y_batch: Float,
    lengths_batch: Index, h0_batch: Float, order: Index, batch_size: int, optimizer: int,
    lr: float, momentum: float, beta1: float, beta2: float, eps: float, clip_norm: float,
    step: int, epoch_losses: NDArray[np.float64], n_threads: int,
) -> int: ...
