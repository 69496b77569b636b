# Signatures of the compiled recurrent kernels (csrc/_recurrent.pyx). Unchecked:
# use lgmstm.kernels.rnn_forward / rnn_backward or lgmstm.STM.
from typing import Any

import numpy as np
from numpy.typing import NDArray

_Float = NDArray[np.floating[Any]]
_Index = NDArray[np.intp]

def buffer_shapes(
    n_samples: int, n_steps: int, n_in: int, n_hidden: int, n_out: int,
    return_sequences: bool, backward: bool = ...,
) -> list[tuple[tuple[int, ...], type | None]]: ...
def scratch_size(n_samples: int, n_in: int, n_hidden: int, backward: bool) -> int: ...
def recurrent_product_kind(n_hidden: int) -> str: ...
def panel_kernel_build() -> str: ...
def forward(
    X: _Float, h0: _Float | None, Wx: _Float, Wh: _Float, b: _Float, lengths: _Index,
    H: _Float, scratch: _Float, order: _Index, n_threads: int,
) -> None: ...
def backward(
    X: _Float, h0: _Float | None, Wx: _Float, Wh: _Float, H: _Float, dH: _Float,
    dh_last: _Float | None, lengths: _Index, dZ: _Float, dz_first: _Float, dX: _Float,
    dh0: _Float, dWx: _Float, dWh: _Float, db: _Float, scratch: _Float, order: _Index,
    n_threads: int,
) -> None: ...
def training_layout(
    n_rows: int, n_steps: int, sizes: _Index, itemsize: int, return_sequences: bool
) -> tuple[int, int] | None: ...
def predict(
    X: _Float, h0: _Float | None, lengths: _Index, params: list[_Float], sizes: _Index,
    output_tanh: bool, return_sequences: bool, buffers: list[np.ndarray], n_threads: int,
) -> tuple[_Float, _Float]: ...
def gradients(
    X: _Float, Y: _Float, h0: _Float | None, lengths: _Index, params: list[_Float],
    grads: list[_Float], sizes: _Index, output_tanh: bool, return_sequences: bool,
    buffers: list[np.ndarray], n_threads: int,
) -> float: ...
def train(
    X: _Float, Y: _Float, lengths: _Index, initial_states: _Float | None,
    final_states: _Float | None, params: list[_Float], grads: list[_Float],
    state1: list[_Float], state2: list[_Float], sizes: _Index, output_tanh: bool,
    return_sequences: bool, buffers: list[np.ndarray], X_batch: _Float, Y_batch: _Float,
    lengths_batch: _Index, h0_batch: _Float, order: _Index, batch_size: int, optimizer: int,
    lr: float, momentum: float, beta1: float, beta2: float, eps: float, clip_norm: float,
    step: int, epoch_losses: NDArray[np.float64], n_threads: int,
) -> int: ...
