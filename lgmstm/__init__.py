"""lgmstm: two memories of a learning system, with compiled OpenMP kernels.

- :class:`LGM`, long-term generalization memory: a feed-forward tanh network.
- :class:`STM`, short-term working memory: an Elman tanh RNN trained by
  backpropagation through time.
- :mod:`lgmstm.kernels`: the compiled dense and recurrent kernels;
  :mod:`lgmstm.reference`: the same maths in NumPy.
"""
from ._persist import load
from ._threads import get_num_threads, set_num_threads
from .models import LGM
from .stm import STM

__version__ = "0.1.0"

__all__ = ["LGM", "STM", "load", "get_num_threads", "set_num_threads", "__version__"]
