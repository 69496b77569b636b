"""lgmstm: two memories of a learning system, with compiled OpenMP kernels.

- :class:`LGM`, long-term generalization memory: a feed-forward tanh network.
- :mod:`lgmstm.kernels`: the compiled dense kernels;
  :mod:`lgmstm.reference`: the same maths in NumPy.
"""
from ._config import show_config
from ._persist import load
from ._threads import get_num_threads, set_num_threads
from .models import LGM

__version__ = "0.1.0"

__all__ = ["LGM", "load", "get_num_threads", "set_num_threads", "show_config", "__version__"]
