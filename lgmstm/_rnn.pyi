"""Type stubs for the compiled module lgmstm._rnn (csrc/lgmstm/_rnn.pyx): the
Elman recurrent layer's kernel entry points. Unchecked: use
lgmstm.kernels.rnn_forward / rnn_backward."""
from typing import Any

import numpy as np
from numpy.typing import NDArray

_Float = NDArray[np.floating[Any]]
_Index = NDArray[np.intp]

def scratch_size(n_samples: int, n_in: int, n_hidden: int, backward: bool) -> int:
    """Values of scratch the forward pass (or also the backward pass) needs."""

def _recurrent_product_kind(n_hidden: int) -> str:
    """"packed" or "blas": how the time loops multiply by Wh (a test hook)."""

def forward(
    X: _Float,  # IN (n_samples, n_steps, n_in)
    h0: _Float | None,  # IN (n_samples, n_hidden), None: zeros
    Wx: _Float, Wh: _Float, b: _Float, lengths: _Index,  # IN
    H: _Float,  # OUT (n_samples, n_steps, n_hidden)
    scratch: _Float, order: _Index,  # scratch
    n_threads: int,
) -> None: ...
def backward(
    X: _Float, h0: _Float | None, Wx: _Float, Wh: _Float, H: _Float,  # IN
    dH: _Float, dh_last: _Float | None, lengths: _Index,  # IN
    dZ: _Float, dz_first: _Float,  # scratch
    dX: _Float, dh0: _Float, dWx: _Float, dWh: _Float, db: _Float,  # OUT
    scratch: _Float, order: _Index,  # scratch
    n_threads: int,
) -> None: ...
