"""lgmstm: two memories of a learning system, with compiled OpenMP kernels.

- :class:`LGM`, long-term generalization memory: a feed-forward tanh network.
- :class:`STM`, short-term working memory: an Elman tanh RNN trained by
  backpropagation through time.
- :mod:`lgmstm.kernels`: the compiled dense and recurrent kernels;
  :mod:`lgmstm.reference`: the same maths in NumPy.
- :mod:`lgmstm.datasets`: the bundled real data (diabetes, monthly sunspots).
- :mod:`lgmstm.sklearn`: scikit-learn estimators (needs scikit-learn).
- :func:`set_num_threads`, :func:`show_config`, :func:`load`.
"""
from ._waiting import spin_count_while_loading

try:
    with spin_count_while_loading():  # before libgomp reads its environment
        from . import _lgm, _openmp, _stm  # noqa: F401  (compiled)
except ImportError as exc:  # pragma: no cover - depends on how it is run
    import os as _os

    raise ImportError(
        f"lgmstm's compiled modules are missing from {_os.path.dirname(__file__)}: this "
        "looks like the source tree, not an installed lgmstm. Run from another directory "
        "(or `python -I -m lgmstm`), or build in place with "
        "`python setup.py build_ext --inplace`."
    ) from exc

# The public submodules, so that `import lgmstm; lgmstm.kernels` works (cheap: the
# compiled modules are loaded above anyway). lgmstm.sklearn needs scikit-learn and
# is imported on its own.
from . import datasets, kernels, reference
from ._config import show_config
from ._load import load
from ._threads import OversubscriptionWarning, get_num_threads, set_num_threads
from ._training import DivergenceWarning, TargetRangeWarning, TrainingInterrupted
from ._version import __version__
from .lgm import LGM
from .stm import STM

__all__ = [
    "LGM",
    "STM",
    "load",
    "get_num_threads",
    "set_num_threads",
    "OversubscriptionWarning",
    "show_config",
    "DivergenceWarning",
    "TargetRangeWarning",
    "TrainingInterrupted",
    "__version__",
]
