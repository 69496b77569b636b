"""scikit-learn estimators around :class:`lgmstm.LGM`.

:class:`LGMRegressor` and :class:`LGMClassifier` follow scikit-learn's
estimator conventions (``get_params``/``set_params``, ``fit``/``predict``,
``partial_fit`` and ``warm_start``, ``score``, ``n_features_in_``, pickling),
so they work in :class:`~sklearn.pipeline.Pipeline`,
:class:`~sklearn.model_selection.GridSearchCV` and the rest of scikit-learn.
They need scikit-learn >= 1.6, installed with
``pip install "lgmstm[sklearn]"``.

Inputs are not scaled: put a :class:`~sklearn.preprocessing.StandardScaler`
in front, as with any network trained by gradient descent.
"""
from __future__ import annotations

import inspect
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import train_test_split
    from sklearn.utils import Tags, check_random_state
    from sklearn.utils.multiclass import (
        check_classification_targets,
        type_of_target,
        unique_labels,
    )
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
except ImportError as exc:  # not installed, or older than 1.6
    raise ImportError(
        "lgmstm.sklearn needs scikit-learn >= 1.6: install it with "
        "pip install 'lgmstm[sklearn]'"
    ) from exc

from ._base import BACKENDS, BIT_GENERATORS, ESTIMATOR_KINDS, read_model_file
from ._persist import ModelFile, read_sized, read_text_array, save_arrays, text_array
from ._train import all_finite
from ._training import (ADAPTIVE_DIVISOR, MIN_ADAPTIVE_LR, AdaptiveFloor, SampleClock,
                        TrainingInterrupted, user_stacklevel)
from ._validation import (
    MAX_DIM,
    check_bool,
    check_choice,
    check_float_dtype,
    check_fraction,
    check_int,
    check_positive_float,
    check_sample_weight,
)
from .lgm import LGM
from .reference import log_probabilities

__all__ = ["LGMRegressor", "LGMClassifier"]

# The estimator's file (see _LGMEstimator.save)
_ESTIMATOR_HEADER = {"hyper_parameters", "attributes", "object_arrays", "network_backend"}
_ATTRIBUTE = "attribute."


def _hidden_sizes(sizes: int | Sequence[int]) -> list[int]:
    if isinstance(sizes, numbers.Integral) and not isinstance(sizes, (bool, np.bool_)):
        sizes = [int(sizes)]
    elif isinstance(sizes, np.ndarray) and sizes.ndim == 1:   # array-like, as scikit-learn's
        sizes = sizes.tolist()
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise ValueError(
            f"hidden_layer_sizes must be an int or a sequence of ints, got {sizes!r}")
    for size in sizes:
        if (isinstance(size, (bool, np.bool_)) or not isinstance(size, numbers.Integral)
                or size < 1):
            raise ValueError(f"hidden_layer_sizes must hold ints >= 1, got {sizes!r}")
    return [int(size) for size in sizes]


# scikit-learn's MLP hyper-parameters that lgmstm takes, with their meanings.
_SOLVERS = ("sgd", "adam")
_LEARNING_RATES = ("constant", "invscaling", "adaptive")
_LBFGS = ("solver='lbfgs' is not available: lgmstm trains by mini-batch gradient descent, "
          "many epochs per compiled call, and L-BFGS is a full-batch quasi-Newton method "
          "with a line search that it does not implement; use solver='adam' (the default) "
          "or 'sgd'")
# The network's activations by scikit-learn's names (out_activation_).
_OUT_ACTIVATIONS = {"linear": "identity", "tanh": "tanh", "sigmoid": "logistic",
                    "softmax": "softmax"}


class _FitSettings(NamedTuple):
    """One fit's hyper-parameters, checked, in the network's terms."""

    max_iter: int
    tol: float
    n_iter_no_change: int
    schedule: str  # learning_rate, "constant" unless solver="sgd" (as scikit-learn)
    power_t: float
    early_stopping: bool
    validation_fraction: float
    lr: float  # LGM.fit's lr: learning_rate_init over the loss scale for sgd
    arguments: dict[str, Any]  # the rest of LGM.fit's arguments


def _squared_error_scale(n_outputs: int) -> float:
    """The network's squared error (the mean over samples and outputs) over
    the loss whose gradient scikit-learn's MLP descends, the sum over
    outputs of half the squared error, averaged over samples."""
    return 2.0 / n_outputs


def _mean_weight(sample_weight: NDArray[np.float64] | None) -> float:
    """The mean of the samples' weights (1 without)."""
    return 1.0 if sample_weight is None else float(np.mean(sample_weight))


def _sample_weight(sample_weight: ArrayLike | None, n_samples: int) -> NDArray[np.float64] | None:
    """fit's sample_weight, checked: None, or n_samples finite weights >= 0,
    not all zero, as float64 (a ValueError naming sample_weight otherwise);
    a single number weighs every sample alike, as in scikit-learn."""
    if (isinstance(sample_weight, numbers.Real)
            and not isinstance(sample_weight, (bool, np.bool_))):
        sample_weight = np.full(n_samples, float(sample_weight))
    return check_sample_weight(sample_weight, ((n_samples,),), "(n_samples,)")


class _Plateau:
    """scikit-learn's count of epochs without improvement: a loss that is
    not below the best one minus tol counts one more, a better one starts
    the count again; the best is the lowest seen."""

    def __init__(self, tol: float, best: float = np.inf) -> None:
        self.tol, self.best, self.count = tol, best, 0

    def update(self, loss: float) -> bool:
        """Count loss; whether it was the best so far."""
        self.count = self.count + 1 if loss > self.best - self.tol else 0
        better = loss < self.best
        if better:
            self.best = loss
        return better


_MLP_PARAMETERS = """\
    hidden_layer_sizes : int, or sequence or 1-D array of int, default (100,)
        Units of each hidden layer, each >= 1; ``()`` fits no hidden layer.
    activation : "tanh", default "tanh"
        The hidden layers' activation: lgmstm's networks are tanh networks
        (any other value is refused).
    solver : {"adam", "sgd"}, default "adam"
        "adam": Adam with beta_1, beta_2 and epsilon; "sgd": gradient
        descent with momentum and nesterovs_momentum (plain at
        ``momentum=0``). "lbfgs" is refused: lgmstm trains by mini-batch
        gradient descent only.
    alpha : float >= 0, default 0.0001
        L2 penalty on the weights (not the biases), as scikit-learn's: each
        batch of n samples adds ``alpha / (2 n) * sum(W**2)`` to the loss
        whose gradient it descends. It is the network's ``weight_decay``
        (:meth:`lgmstm.LGM.fit`) scaled as that loss is, with n the batch
        size (a smaller last batch is decayed as a full one).
    batch_size : int >= 1, "auto" or None, default "auto"
        Samples per update; "auto" is ``min(200, n_samples)``, None (or
        anything >= n_samples) full batch.
    learning_rate : {"constant", "invscaling", "adaptive"}, default "constant"
        The schedule of solver="sgd" (Adam's rate stays constant):
        "invscaling" sets the rate of each epoch to
        ``learning_rate_init / (t_ + 1) ** power_t``; "adaptive" divides it
        by 5 each time the count of epochs without improvement exceeds
        n_iter_no_change, and stops once it is at most 1e-6.
    learning_rate_init : float > 0, default 0.001
        The step size, with scikit-learn's meaning: for "sgd" it scales the
        gradient of scikit-learn's loss (see alpha), whatever the number of
        outputs.
    power_t : float >= 0, default 0.5
        The exponent of "invscaling".
    max_iter : int >= 1, default 200
        The most epochs ``fit`` runs; a ConvergenceWarning says when it ran
        them all without stopping on a plateau.
    shuffle : bool, default True
        Visit the samples in a new random order each epoch.
    random_state : int, numpy.random.RandomState or None, default None
        Seeds the validation split, the initial weights and the shuffling.
        An int makes ``fit`` reproducible; None draws fresh randomness.
    tol : float >= 0, default 1e-4
        An epoch improves when its loss (with early_stopping, its validation
        loss) is at or below the best so far minus tol.
    verbose : bool or int >= 0, default False
        Print each epoch's loss, and why training stopped, to stdout (when
        true or non-zero).
    warm_start : bool, default False
        When fitted, ``fit`` trains the network it has, for up to max_iter
        more epochs, going on with its optimizer state (scikit-learn starts
        a new optimizer), ``loss_curve_``, ``n_iter_`` and ``t_``.
    momentum : float in [0, 1), default 0.9
        solver="sgd"'s momentum: the velocity decays by it each step.
    nesterovs_momentum : bool, default True
        Nesterov's momentum for solver="sgd" with momentum > 0.
    early_stopping : bool, default False
        Hold out validation_fraction of the samples (stratified by class for
        the classifier), stop when the validation loss has not improved by
        tol for more than n_iter_no_change epochs, and keep the network of
        the best epoch.
    validation_fraction : float in (0, 1), default 0.1
        The share of the samples early_stopping holds out.
    beta_1, beta_2 : float in [0, 1), default 0.9 and 0.999
        Adam's decay of its means of the gradient and of its square.
    epsilon : float > 0, default 1e-8
        Added to Adam's denominator (after the bias correction, where
        scikit-learn adds it before: a difference in the last digits).
    n_iter_no_change : int >= 1, default 10
        Training stops (or "adaptive" divides the rate) when more than this
        many epochs in a row did not improve (see tol).
    max_fun : int >= 1, default 15000
        Checked and kept, with no effect: scikit-learn's limit on the calls
        of the loss by solver="lbfgs", which lgmstm does not offer.
"""

_COMMON_PARAMETERS = """\
    dtype : float32 or float64, default numpy.float64
        Dtype of the parameters and of the computation; X is converted to it.
    backend : {"cython", "numpy"}, default "cython"
        "cython" runs the compiled kernels, "numpy" the NumPy reference.
"""

_MLP_ATTRIBUTES = """\
    loss_ : float
        The training loss of the last epoch, ``loss_curve_[-1]`` (after
        :meth:`partial_fit` too).
    coefs_ : list of ndarray
        ``coefs_[i]``, of shape (n_in_i, n_out_i), the weights of layer i:
        copies of ``lgm_``'s; assigning a list of arrays of these shapes
        sets the network's (checked by :meth:`lgmstm.LGM.load_params`).
    intercepts_ : list of ndarray
        ``intercepts_[i]``, of shape (n_out_i,), the biases; set likewise.
    n_iter_ : int
        Epochs run; with ``warm_start`` and :meth:`partial_fit`, since the
        network was made.
    t_ : int
        Training samples seen (scikit-learn's; the clock of "invscaling").
    best_loss_ : float or None
        The lowest of ``loss_curve_`` (None with early_stopping).
    validation_scores_ : ndarray of shape (n_validated,) or None
        With early_stopping, each validated epoch's score: minus its
        validation loss, in loss_curve_'s units (scikit-learn's is
        ``score``'s accuracy or R^2); else None. A warm fit's scores follow
        those of the fits before it, so after fits only it has n_iter_
        entries; :meth:`partial_fit`'s epochs do not validate (nor do
        scikit-learn's) and add none.
    best_validation_score_ : float or None
        The best of validation_scores_, that of the network kept: a warm
        fit whose epochs all score at most the best before it goes back to
        the network it started from (scikit-learn keeps its best
        coefficients across warm fits too).
    n_layers_ : int
        Layers, the input and output layers included.
    out_activation_ : str
        The output layer's activation, by scikit-learn's name.
"""


class _LGMEstimator(BaseEstimator):
    """Hyper-parameters, fitting and prediction shared by the two estimators."""

    hidden_layer_sizes: int | Sequence[int]
    activation: str
    solver: str
    alpha: float
    batch_size: int | str | None
    learning_rate: str
    learning_rate_init: float
    power_t: float
    max_iter: int
    shuffle: bool
    random_state: int | np.random.RandomState | None
    tol: float
    verbose: bool
    warm_start: bool
    momentum: float
    nesterovs_momentum: bool
    early_stopping: bool
    validation_fraction: float
    beta_1: float
    beta_2: float
    epsilon: float
    n_iter_no_change: int
    max_fun: int
    dtype: DTypeLike
    backend: str
    lgm_: LGM
    loss_curve_: NDArray[np.float64]
    best_loss_: float | None
    validation_scores_: NDArray[np.float64] | None
    best_validation_score_: float | None
    n_iter_: int
    t_: int
    n_features_in_: int

    def _set_hyper_parameters(self, arguments: dict[str, Any]) -> None:
        """Store the constructor's arguments (its locals()) as they are, each
        as the attribute of its name, where scikit-learn's get_params reads
        them; no checks (fit makes them)."""
        for name, value in arguments.items():
            if name != "self":
                setattr(self, name, value)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A pickle of an estimator from before the MLP names.
        if "epochs" in state:
            network = state.get("lgm_")
            state = _renamed(state, 1 if network is None else network.layer_sizes[-1])
            if network is not None:
                state = _renamed_attributes(state)
        # Hyper-parameters added since the pickle was made (max_fun, the
        # regressor's loss) take their defaults, which train as it did.
        defaults = inspect.signature(type(self).__init__).parameters
        state = {**{name: defaults[name].default for name in self._get_param_names()},
                 **state}
        super().__setstate__(state)

    def _start_fit(self, keep: bool) -> np.dtype[Any]:
        """The dtype of this fit: the network's when it goes on with ``lgm_``
        (keep: a warm start or partial_fit, on a fitted estimator), else the
        checked ``dtype``, after forgetting the last fit, so that a fit that
        fails leaves the estimator unfitted."""
        if keep:
            return self.lgm_.dtype
        if hasattr(self, "lgm_"):
            del self.lgm_
        return check_float_dtype(self.dtype, error=ValueError)

    def _goes_on(self, warm: bool) -> bool:
        """Whether this fit continues ``lgm_``: warm (warm_start, partial_fit)
        and fitted; the check of the warm_start hyper-parameter."""
        return check_bool("warm_start", warm) and self.__sklearn_is_fitted__()

    def __sklearn_is_fitted__(self) -> bool:
        # Fitted when fit trained a network; a fit that failed after
        # validate_data set n_features_in_ does not count.
        return hasattr(self, "lgm_")

    # -- the hyper-parameters, checked -----------------------------------------------------
    def _settings(self, n_samples: int, loss_scale: float,
                  mean_weight: float = 1.0) -> _FitSettings:
        """The checked hyper-parameters of a fit on n_samples training
        samples of mean sample weight mean_weight, whose network's loss is
        loss_scale times the one scikit-learn's MLP descends (see
        _squared_error_scale)."""
        if self.activation != "tanh":
            raise ValueError(f"activation must be 'tanh', got {self.activation!r}: lgmstm's "
                             "networks are tanh networks (its compiled kernels fuse tanh)")
        if self.solver == "lbfgs":
            raise ValueError(_LBFGS)
        solver = check_choice("solver", self.solver, _SOLVERS)
        alpha = check_positive_float("alpha", self.alpha, allow_zero=True)
        if isinstance(self.batch_size, str):
            check_choice("batch_size", self.batch_size, ("auto",))
            batch_size = min(200, n_samples)
        else:
            batch_size = check_int("batch_size", self.batch_size, 1, allow_none=True)
            batch_size = n_samples if batch_size is None else min(batch_size, n_samples)
        schedule = check_choice("learning_rate", self.learning_rate, _LEARNING_RATES)
        learning_rate_init = check_positive_float("learning_rate_init", self.learning_rate_init)
        power_t = check_positive_float("power_t", self.power_t, allow_zero=True)
        max_iter = check_int("max_iter", self.max_iter, 1, maximum=MAX_DIM)
        shuffle = check_bool("shuffle", self.shuffle)
        tol = check_positive_float("tol", self.tol, allow_zero=True)
        if not isinstance(self.verbose, (bool, np.bool_)):
            check_int("verbose", self.verbose, 0)   # scikit-learn's: a bool or an int >= 0
        momentum = check_fraction("momentum", self.momentum)
        nesterov = check_bool("nesterovs_momentum", self.nesterovs_momentum)
        early_stopping = check_bool("early_stopping", self.early_stopping)
        validation_fraction = self.validation_fraction
        if (isinstance(validation_fraction, (bool, np.bool_))
                or not isinstance(validation_fraction, numbers.Real)
                or not 0 < validation_fraction < 1):
            raise ValueError(f"validation_fraction must be a number in (0, 1), got "
                             f"{validation_fraction!r}")
        beta_1 = check_fraction("beta_1", self.beta_1)
        beta_2 = check_fraction("beta_2", self.beta_2)
        epsilon = check_positive_float("epsilon", self.epsilon)
        n_iter_no_change = check_int("n_iter_no_change", self.n_iter_no_change, 1,
                                     maximum=MAX_DIM)
        check_int("max_fun", self.max_fun, 1)  # lbfgs's only: no effect here
        check_choice("backend", self.backend, BACKENDS)
        if solver == "adam":
            # Adam's steps do not change when the loss is scaled (up to epsilon).
            lr, optimizer, schedule = learning_rate_init, "adam", "constant"
        else:
            lr = learning_rate_init / loss_scale
            optimizer = "momentum" if momentum > 0 else "sgd"
        arguments = dict(batch_size=batch_size, optimizer=optimizer, shuffle=shuffle,
                         # scikit-learn's penalty is alpha / (2 * the batch's
                         # summed weight) * sum(W**2): a batch of mean weight.
                         weight_decay=(loss_scale * alpha / (batch_size * mean_weight)
                                       if mean_weight > 0 else 0.0),
                         momentum=momentum, nesterov=nesterov and optimizer == "momentum",
                         beta1=beta_1, beta2=beta_2, eps=epsilon)
        return _FitSettings(max_iter, tol, n_iter_no_change, schedule, power_t, early_stopping,
                            float(validation_fraction), lr, arguments)

    # -- training ------------------------------------------------------------------------
    def _new_network(self, n_features: int, n_outputs: int, output: str,
                     dtype: np.dtype[Any], seed: int) -> LGM:
        sizes = [n_features, *_hidden_sizes(self.hidden_layer_sizes), n_outputs]
        return LGM(sizes, output=output, dtype=dtype, seed=seed, backend=self.backend)

    def _fit_network(self, X: NDArray[Any], Y: NDArray[Any], output: str, keep: bool,
                     incremental: bool, loss_scale: float, curve_scale: float,
                     stratify: NDArray[Any] | None = None,
                     sample_weight: NDArray[np.float64] | None = None) -> None:
        """Train ``lgm_`` on X (n_samples, n_features) and Y (n_samples,
        n_out): the one there, with its optimizer state, when keep
        (loss_curve_, n_iter_ and t_ go on), else a new one. incremental:
        one epoch (partial_fit), else up to max_iter epochs with
        scikit-learn's stopping rules. The network's loss is loss_scale
        times scikit-learn's (see _squared_error_scale); curve_scale times
        it is scikit-learn's loss_curve_. stratify: the labels a
        classifier's validation split keeps in proportion. sample_weight:
        the samples' weights (checked, float64) or None; with early
        stopping the held-out samples' weigh the validation loss."""
        # Drawn from only when needed: a RandomState made from an int costs
        # more than partial_fit's epoch on a small network.
        random_state: np.random.RandomState | None = None
        settings = self._settings(X.shape[0], loss_scale, _mean_weight(sample_weight))
        validation: tuple[NDArray[Any], ...] | None = None
        if settings.early_stopping and not incremental:
            random_state = check_random_state(self.random_state)
            # The same split with or without weights (one permutation).
            X, X_val, Y, Y_val, *weights = train_test_split(
                X, Y, *([] if sample_weight is None else [sample_weight]),
                test_size=settings.validation_fraction, random_state=random_state,
                stratify=stratify)
            validation = (X_val, Y_val)
            if weights:
                sample_weight, weight_val = weights
                for part, name in ((sample_weight, "training part"),
                                   (weight_val, "validation part")):
                    if not part.any():
                        raise ValueError(
                            f"sample_weight: every sample of early stopping's {name} "
                            f"(validation_fraction={settings.validation_fraction}) weighs 0")
                validation = (X_val, Y_val, weight_val)
            settings = self._settings(X.shape[0], loss_scale, _mean_weight(sample_weight))
        if keep:
            network = self.lgm_
        else:
            if random_state is None:
                random_state = check_random_state(self.random_state)
            seed = int(random_state.randint(np.iinfo(np.int32).max))
            network = self._new_network(X.shape[1], Y.shape[1], output, X.dtype, seed)
            self.loss_curve_, self.n_iter_, self.t_ = np.empty(0), 0, 0
            self.best_loss_, self.validation_scores_, self.best_validation_score_ = \
                np.inf, None, None
        # A warm fit that validates keeps the best network of all the fits
        # since the network was made, as scikit-learn does: its own best
        # (restored by the network's early stopping) when it beat theirs,
        # else the one it started from.
        earlier = None
        if keep and validation is not None and self.best_validation_score_ is not None:
            earlier = (self.best_validation_score_, network.params)
        progress = _Progress(self, network, X.shape[0], settings, curve_scale, validation,
                             incremental, sample_weight)
        try:
            progress.train(X, Y, keep)
        finally:
            progress.keep()
            self.lgm_ = network
            if earlier is not None and not progress.beat(earlier[0]):
                network.load_params(earlier[1])

    def _ready_features(self, X: Any) -> bool:
        """Whether validate_data would take X unchanged, so that its cost can
        be skipped: a finite, C-ordered ndarray of the network's dtype and
        width, on an estimator fitted without feature names (those checks
        must then run)."""
        lgm = getattr(self, "lgm_", None)
        return (lgm is not None and type(X) is np.ndarray and X.dtype == lgm.dtype
                and X.ndim == 2 and X.shape[0] > 0 and X.shape[1] == self.n_features_in_
                and X.flags.c_contiguous and not hasattr(self, "feature_names_in_")
                and all_finite((X,)))

    def _checked_features(self, X: ArrayLike) -> NDArray[Any]:
        """X as the network takes it: as it is when validate_data would take
        it unchanged (see _ready_features, which skips that cost), else
        checked (the estimator fitted, and X validated)."""
        if self._ready_features(X):
            return X  # type: ignore[return-value]  # an ndarray, _ready_features says
        check_is_fitted(self)
        checked: NDArray[Any] = validate_data(self, X, reset=False, dtype=self.lgm_.dtype)
        return checked

    def _network_outputs(self, X: ArrayLike) -> NDArray[Any]:
        X = self._checked_features(X)   # first: before fit, NotFittedError, not lgm_'s absence
        outputs: NDArray[Any] = self.lgm_.predict(X)
        return outputs

    # -- scikit-learn's view of the network ----------------------------------------------
    def _fitted_network(self, name: str) -> LGM:
        network = getattr(self, "lgm_", None)
        if network is None:
            raise AttributeError(f"this {type(self).__name__} has no {name} before fit")
        return network

    @property
    def coefs_(self) -> list[NDArray[Any]]:
        """The weights of each layer, ``coefs_[i]`` of shape (n_in_i, n_out_i):
        copies of ``lgm_``'s; assigning a list of arrays of these shapes
        sets them (through :meth:`lgmstm.LGM.load_params`, checked)."""
        params = self._fitted_network("coefs_").params
        return [params[f"layer{layer}.weight"] for layer in range(len(params) // 2)]

    @coefs_.setter
    def coefs_(self, coefs: Sequence[ArrayLike]) -> None:
        self._set_layers("coefs_", "weight", coefs)

    @property
    def intercepts_(self) -> list[NDArray[Any]]:
        """The biases of each layer, ``intercepts_[i]`` of shape (n_out_i,):
        copies of ``lgm_``'s; assigning sets them, as for ``coefs_``."""
        params = self._fitted_network("intercepts_").params
        return [params[f"layer{layer}.bias"] for layer in range(len(params) // 2)]

    @intercepts_.setter
    def intercepts_(self, intercepts: Sequence[ArrayLike]) -> None:
        self._set_layers("intercepts_", "bias", intercepts)

    def _set_layers(self, name: str, kind: str, values: Sequence[ArrayLike]) -> None:
        network = self._fitted_network(name)
        params = network.params
        n_layers = len(params) // 2
        if isinstance(values, (str, bytes, np.ndarray)) or not isinstance(values, Sequence) \
                or len(values) != n_layers:
            raise ValueError(f"{name} must be a list of {n_layers} arrays, one per layer, got "
                             f"{type(values).__name__}"
                             f"{f' of length {len(values)}' if hasattr(values, '__len__') else ''}")
        updated: dict[str, ArrayLike] = dict(params)
        updated.update({f"layer{layer}.{kind}": value for layer, value in enumerate(values)})
        network.load_params(updated)

    @property
    def loss_(self) -> float:
        """The training loss of the last epoch, ``loss_curve_[-1]``
        (scikit-learn's ``loss_``)."""
        self._fitted_network("loss_")
        if not len(self.loss_curve_):
            raise AttributeError(f"this {type(self).__name__} has no loss_: no epoch finished")
        return float(self.loss_curve_[-1])

    @property
    def out_activation_(self) -> str:
        """The output layer's activation, by scikit-learn's name ("identity"
        for a linear output)."""
        return _OUT_ACTIVATIONS[self._fitted_network("out_activation_").output]

    @property
    def n_layers_(self) -> int:
        """Number of layers, the input and output layers included."""
        return len(self._fitted_network("n_layers_").layer_sizes)

    # -- files: the estimator's save and load ---------------------------------------------
    # An estimator's file (lgmstm._persist's format) is its network's file
    # (``config.*``, ``param.*``, ``memory.*``, ``history``) under the
    # estimator's kind, with ``estimator.header``, JSON text: the
    # hyper-parameters (get_params), the fitted attributes that are not
    # arrays, which arrays were object arrays, and the backend of the
    # network; and each fitted array attribute as
    # ``estimator.attribute.{name}``. Values that JSON cannot hold exactly
    # (tuples, NumPy dtypes and scalars, a RandomState) are written as
    # one-key objects, {"$tuple": [...]} and the like, and only those are
    # read. lgmstm.load reads it with _from_file too.
    def save(self, path: Any) -> None:
        """Write the fitted estimator to ``path`` as an .npz file (no pickle), atomically.

        The file holds the hyper-parameters, the fitted attributes
        (``classes_``, ``loss_curve_``, ``n_features_in_``, ...) and the
        network ``lgm_`` as :meth:`lgmstm.LGM.save` writes it, with its
        optimizer state and generator, so that :meth:`partial_fit` and a
        ``warm_start`` fit go on after :meth:`load` (or
        :func:`lgmstm.load`) exactly as they would have here.
        Hyper-parameters must be None, numbers, text, tuples or lists of
        them, NumPy dtypes and scalar types, or a RandomState.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write, exactly as named (no suffix is added).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        TypeError
            path is not a str, bytes or os.PathLike, or a hyper-parameter
            or attribute cannot be written without pickle.
        OSError
            The file cannot be written (the error names ``path``); an
            existing file at ``path`` is left as it was.
        """
        check_is_fitted(self)
        kind = next(c.__name__ for c in type(self).__mro__ if c.__name__ in ESTIMATOR_KINDS)
        network = self.lgm_
        hyper_parameters = self.get_params(deep=False)
        attributes, arrays, object_arrays = {}, {}, []
        for name, value in vars(self).items():
            if name in hyper_parameters or name == "lgm_":
                continue
            if isinstance(value, np.ndarray):
                if value.dtype.hasobject:
                    value = _without_objects(name, value)
                    object_arrays.append(name)
                arrays[_ATTRIBUTE + name] = value
            else:
                attributes[name] = _to_json(value, f"attribute {name}")
        header = {"hyper_parameters": {name: _to_json(value, f"hyper-parameter {name}")
                                       for name, value in hyper_parameters.items()},
                  "attributes": attributes, "object_arrays": object_arrays,
                  "network_backend": network.backend}
        config = network._config()
        with network._lock.reading():
            save_arrays(path, kind, network.dtype, config, network._named(network._params),
                        network._saved_memory(), history=network.history_,
                        estimator={"header": text_array(header), **arrays})

    @classmethod
    def load(cls, path: Any, *, backend: str | None = None) -> LGMRegressor | LGMClassifier:
        """The estimator :meth:`save` wrote to ``path``, fitted as it was saved.

        Parameters
        ----------
        path : str or os.PathLike
        backend : {"cython", "numpy"} or None, default None
            The backend of the network ``lgm_``; None: the saved one. (The
            ``backend`` hyper-parameter, for later fits, stays as saved.)

        Returns
        -------
        estimator : this class
            With the saved hyper-parameters, fitted attributes and network
            (its optimizer state too).

        Raises
        ------
        FileNotFoundError
            No such file.
        ValueError
            The file holds another kind of model (:func:`lgmstm.load` reads
            any kind), or anything :func:`lgmstm.load` refuses.
        """
        if backend is not None:
            check_choice("backend", backend, BACKENDS)
        estimator: LGMRegressor | LGMClassifier = read_model_file(
            path, (cls.__name__,), lambda stored: cls._from_file(stored, backend))
        return estimator

    @classmethod
    def _from_file(cls, stored: ModelFile, backend: str | None) -> Any:
        """The estimator an open file of this class's kind holds
        (lgmstm._base.read_model_file); backend None: the saved network's."""
        entries = dict(stored.estimator)
        if "header" not in entries:
            raise ValueError(f"{stored.path}: an {stored.kind} file needs an estimator.header "
                             "entry")
        header = read_text_array(entries.pop("header"), "estimator.header")
        if not isinstance(header, dict) or set(header) != _ESTIMATOR_HEADER:
            raise ValueError(f"estimator.header must hold {sorted(_ESTIMATOR_HEADER)}, got "
                             f"{header!r}"[:300])
        known = set(cls._get_param_names())
        hyper_parameters = _mapping(header["hyper_parameters"], "hyper_parameters")
        network_backend = check_choice("the network's backend",
                                       backend or header["network_backend"], BACKENDS)
        network = LGM._from_file(stored, network_backend)
        n_features, n_outputs = network.layer_sizes[0], network.layer_sizes[-1]
        attributes = _mapping(header["attributes"], "attributes")
        if "epochs" in hyper_parameters:  # a file from before the MLP names
            hyper_parameters = _renamed(hyper_parameters, n_outputs)
            attributes = _renamed_attributes(attributes)
        if set(hyper_parameters) - known:
            raise ValueError(f"{stored.kind} has no hyper-parameters "
                             f"{sorted(set(hyper_parameters) - known)}")
        estimator = cls(**{name: _from_json(value, f"hyper-parameter {name}")
                           for name, value in hyper_parameters.items()})
        for name, value in attributes.items():
            setattr(estimator, _attribute_name(estimator, name),
                    _from_json(value, f"attribute {name}"))
        object_arrays = header["object_arrays"]
        if not isinstance(object_arrays, list) or not all(isinstance(n, str)
                                                          for n in object_arrays):
            raise ValueError(f"estimator.header's object_arrays must be a list of names, got "
                             f"{object_arrays!r}"[:200])
        for key, entry in entries.items():
            if not key.startswith(_ATTRIBUTE):
                raise ValueError(f"unexpected entry estimator.{key}")
            name = _attribute_name(estimator, key[len(_ATTRIBUTE):])
            array = _attribute_array(name, entry, n_features, n_outputs)
            setattr(estimator, name, array.astype(object) if name in object_arrays else array)
        estimator.lgm_ = network
        _check_fitted(estimator, stored.kind, n_features, n_outputs)
        return estimator


class _Progress:
    """One fit's epochs, run on the network in compiled blocks, with
    scikit-learn's stopping rules between them (see _LGMEstimator._fit_network).

    A fit is one compiled call of the network's fit, which applies
    scikit-learn's rules itself (patience n_iter_no_change + 1: the same
    count): early stopping is LGM.fit's early_stopping (with "adaptive",
    LGM.fit's adaptive schedule on the validation loss), and the rule on
    the training loss of a new fit LGM.fit's stop_on_plateau;
    "invscaling" is the private SampleClock schedule, which sets the rate
    from the samples seen (t_) after every epoch in compiled code. A warm
    fit without early stopping (its best loss carries over) and "adaptive"
    on the training loss (scikit-learn divides the rate while it is above
    1e-6, then stops) run blocks as long as the count of epochs without
    improvement cannot reach n_iter_no_change + 1 before their end, so that
    training stops exactly where scikit-learn's loop would.
    """

    def __init__(self, estimator: _LGMEstimator, network: LGM, n_samples: int,
                 settings: _FitSettings, curve_scale: float,
                 validation: tuple[NDArray[Any], ...] | None,
                 incremental: bool, sample_weight: NDArray[np.float64] | None = None) -> None:
        self.estimator, self.network, self.n_samples = estimator, network, n_samples
        self.sample_weight = sample_weight
        self.settings, self.curve_scale, self.validation = settings, curve_scale, validation
        self.incremental = incremental
        self.rate = settings.lr  # "adaptive": the rate of the coming epochs
        self.losses: list[NDArray[np.float64]] = []
        self.scores: list[float] = []
        self.plateau = _Plateau(settings.tol, estimator.best_loss_ if
                                estimator.best_loss_ is not None else np.inf)
        self.validation_plateau = _Plateau(settings.tol)

    def _block(self, X: NDArray[Any], Y: NDArray[Any], epochs: int, lr: float,
               warm: bool, **control: Any) -> NDArray[np.float64]:
        """Train epochs epochs at lr (control: LGM.fit's early stopping);
        their losses, in scikit-learn's scale."""
        try:
            return self.network.fit(X, Y, epochs=epochs, lr=lr, warm_start=warm,
                                    sample_weight=self.sample_weight,
                                    **self.settings.arguments, **control) * self.curve_scale
        except TrainingInterrupted as exc:
            self._count(np.asarray(exc.history) * self.curve_scale, self._validated(control))
            raise

    def _validated(self, control: dict[str, Any]) -> NDArray[np.float64] | None:
        """The validation losses of the network's last fit, in scikit-learn's
        scale, when it measured them (control's validation_data), else None."""
        if "validation_data" not in control:
            return None
        return np.asarray(self.network.validation_history_) * self.curve_scale

    def train(self, X: NDArray[Any], Y: NDArray[Any], keep: bool) -> None:
        settings = self.settings
        lr = settings.lr
        if self.incremental:
            self._count(self._block(X, Y, 1, self._partial_fit_rate(lr), keep))
            return
        if self.validation is not None:
            self._stop_early(X, Y, lr, keep)
            return
        if settings.schedule != "adaptive" and not keep:
            self._stop_on_plateau(X, Y, lr)
            return
        done, warm = 0, keep
        while done < settings.max_iter:
            epochs = min(settings.n_iter_no_change + 1 - self.plateau.count,
                         settings.max_iter - done)
            losses = self._block(X, Y, epochs, self.rate, warm, **self._schedule_arguments())
            warm = True
            done += len(losses)
            self._count(losses)
            if len(losses) < epochs:
                return  # diverged: LGM.fit warned and kept the last finite parameters
            if self.plateau.count > settings.n_iter_no_change:
                if self._adapt(self.plateau):
                    continue
                self._say(f"Training loss did not improve more than tol={settings.tol:f} for "
                          f"{settings.n_iter_no_change} consecutive epochs. Stopping.")
                return
        warnings.warn(f"Stochastic Optimizer: Maximum iterations ({settings.max_iter}) reached "
                      "and the optimization hasn't converged yet.", ConvergenceWarning,
                      stacklevel=user_stacklevel())

    def _stop_early(self, X: NDArray[Any], Y: NDArray[Any], lr: float, warm: bool) -> None:
        """Early stopping in one compiled call of the network's fit, which
        measures the validation loss after every epoch, stops after
        n_iter_no_change + 1 epochs without improvement by tol (both in
        scikit-learn's scale) and restores the best epoch's network."""
        settings = self.settings
        assert self.validation is not None
        control = dict(validation_data=self.validation, early_stopping=True,
                       patience=settings.n_iter_no_change + 1,
                       tol=settings.tol / self.curve_scale,
                       **self._schedule_arguments(adaptive=True))
        losses = self._block(X, Y, settings.max_iter, lr, warm, **control)
        self._count(losses, self._validated(control))
        if self.validation_plateau.count > settings.n_iter_no_change:
            self._say(f"Validation score did not improve more than tol={settings.tol:f} for "
                      f"{settings.n_iter_no_change} consecutive epochs. Stopping.")
        elif len(losses) == settings.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({settings.max_iter}) "
                          "reached and the optimization hasn't converged yet.",
                          ConvergenceWarning, stacklevel=user_stacklevel())
        # else diverged: LGM.fit warned and kept the last finite parameters

    def _stop_on_plateau(self, X: NDArray[Any], Y: NDArray[Any], lr: float) -> None:
        """scikit-learn's rule on the training loss of a new fit, in one
        compiled call of the network's fit: it stops after n_iter_no_change
        + 1 epochs without the loss falling below the best minus tol (both
        in scikit-learn's scale; curve_scale is a power of two, so the
        network's comparisons are the same), keeping the last epoch."""
        settings = self.settings
        losses = self._block(X, Y, settings.max_iter, lr, False, stop_on_plateau=True,
                             patience=settings.n_iter_no_change + 1,
                             tol=settings.tol / self.curve_scale, **self._schedule_arguments())
        self._count(losses)
        if self.plateau.count > settings.n_iter_no_change:
            self._say(f"Training loss did not improve more than tol={settings.tol:f} for "
                      f"{settings.n_iter_no_change} consecutive epochs. Stopping.")
        elif len(losses) == settings.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({settings.max_iter}) "
                          "reached and the optimization hasn't converged yet.",
                          ConvergenceWarning, stacklevel=user_stacklevel())
        # else diverged: LGM.fit warned and kept the last finite parameters

    def _lr_scale(self) -> float:
        """learning_rate_init over LGM.fit's lr."""
        return self.estimator.learning_rate_init / self.settings.lr

    def _min_rate(self) -> float:
        """scikit-learn's "adaptive" floor, 1e-6 on learning_rate_init's
        scale, on LGM.fit's lr's: a plateau at a rate at or below it stops
        training (for SGD, fit's lr is learning_rate_init over the loss
        scale, 2 / n_outputs)."""
        return MIN_ADAPTIVE_LR / self._lr_scale()

    def _partial_fit_rate(self, lr: float) -> float:
        """The learning rate of the next epoch: scikit-learn's "invscaling"
        sets it to learning_rate_init / (t_ + 1) ** power_t after each epoch."""
        if self.settings.schedule == "invscaling":
            return SampleClock(self.estimator.t_).rate(lr, self.settings.power_t)
        return lr

    def _schedule_arguments(self, adaptive: bool = False) -> dict[str, Any]:
        """LGM.fit's schedule arguments for the coming epochs: "invscaling"
        as the SampleClock from t_ (the same rates as _partial_fit_rate, set by the
        compiled driver after each epoch); "adaptive" when the network's
        fit applies it (adaptive: with early stopping, on the validation
        loss); else none, a constant rate."""
        settings = self.settings
        if settings.schedule == "invscaling":
            return dict(lr_schedule=SampleClock(self.estimator.t_), power_t=settings.power_t)
        if settings.schedule == "adaptive" and adaptive:
            return dict(lr_schedule=AdaptiveFloor(self._min_rate()))
        return {}

    def _adapt(self, plateau: _Plateau) -> bool:
        """scikit-learn's "adaptive" rule after an epoch whose count of
        epochs without improvement exceeds n_iter_no_change: while the rate
        is above the floor (_min_rate) it is divided by 5 and the count starts again
        (whether it was). With early stopping the network's fit applied the
        rule (end_epoch); here it is followed for the rate and its message."""
        if self.settings.schedule != "adaptive" or self.rate <= self._min_rate():
            return False
        self.rate /= ADAPTIVE_DIVISOR
        plateau.count = 0
        self._say(f"Setting learning rate to {self.rate * self._lr_scale():f}")
        return True

    def _count(self, losses: NDArray[np.float64],
               validated: NDArray[np.float64] | None = None) -> None:
        """Add the block's epochs to the estimator's curves and counts, with
        their validation losses, those the network measured (validated:
        its early stopping, which also applied "adaptive", followed here)."""
        self.losses.append(losses)
        estimator = self.estimator
        if validated is not None and len(validated) != len(losses):
            validated = None  # Ctrl-C came first
        for epoch, loss in enumerate(losses):
            estimator.n_iter_ += 1
            estimator.t_ += self.n_samples
            self.plateau.update(float(loss))
            if validated is not None:
                self.scores.append(-float(validated[epoch]))
                self.validation_plateau.update(float(validated[epoch]))
            if estimator.verbose:  # formatting 200 unprinted lines cost 3% of a small fit
                self._say(f"Iteration {estimator.n_iter_}, loss = {loss:.8f}")
            if (validated is not None
                    and self.validation_plateau.count > self.settings.n_iter_no_change):
                self._adapt(self.validation_plateau)

    def _say(self, message: str) -> None:
        if self.estimator.verbose:
            print(message)

    def keep(self) -> None:
        """Write what the fit did into the estimator (also after Ctrl-C)."""
        estimator = self.estimator
        estimator.loss_curve_ = np.concatenate([estimator.loss_curve_, *self.losses])
        if self.validation is None:
            estimator.best_loss_ = float(self.plateau.best)
            return
        # scikit-learn: with early stopping the best training loss is not kept.
        estimator.best_loss_ = None
        # A warm fit's scores carry on from the fits before it (None: a new network).
        earlier = estimator.validation_scores_
        estimator.validation_scores_ = np.concatenate(
            [np.empty(0) if earlier is None else earlier, self.scores]).astype(np.float64)
        if self.scores and self.beat(estimator.best_validation_score_):
            estimator.best_validation_score_ = -float(self.validation_plateau.best)

    def beat(self, score: float | None) -> bool:
        """Whether this fit's best validation score is above ``score`` (a
        score of the fits before; None: there was none), as scikit-learn
        keeps a new best network (strictly above, without tol)."""
        return bool(self.scores) and (score is None or -self.validation_plateau.best > score)


class LGMRegressor(RegressorMixin, _LGMEstimator):
    """Regression with a feed-forward tanh network, :class:`lgmstm.LGM`: a
    drop-in for scikit-learn's ``MLPRegressor(activation="tanh")``.

    The network minimises half the squared error (scikit-learn's loss, plus
    alpha's penalty) by mini-batch gradient descent on compiled OpenMP
    kernels, many epochs per call, with scikit-learn's stopping rules
    between the calls. Hidden layers are tanh; the output layer is linear by
    default. Single- and multi-output targets are supported. It takes
    ``MLPRegressor``'s hyper-parameters, with their meanings, and lgmstm's
    own (output, standardize_y, dtype, backend).

    Parameters
    ----------
    %(mlp_parameters)s    loss : "squared_error", default "squared_error"
        MLPRegressor's loss, keyword-only here (scikit-learn >= 1.9 also
        takes it as the first positional argument, before
        hidden_layer_sizes); its "poisson" is refused.
    output : {"linear", "tanh"}, default "linear"
        Activation of the output layer. With "tanh" the network's outputs lie
        in (-1, 1) of the trained target: with ``standardize_y=True`` that
        is the training target's mean +- one standard deviation, so use
        "tanh" with ``standardize_y=False`` for targets already in (-1, 1).
    standardize_y : bool, default True
        Train on the target standardised per output (zero mean, unit
        variance; a constant output is only centred) and map predictions
        back, so that the defaults suit a target in any units
        (``MLPRegressor`` has no such step: set False for its behaviour).
        The losses, tol and alpha then apply to the standardised target.
        Without it, a target far from 0 takes many more epochs to reach:
        on the diabetes data (target about 150 +- 77, features
        standardised) the default settings reach a cross-validated R^2 of
        about 0.49 with it and below 0 without it.
    %(common_parameters)s
    Attributes
    ----------
    lgm_ : lgmstm.LGM
        The trained network, of layer sizes
        ``[n_features_in_, *hidden_layer_sizes, n_outputs_]``.
    loss_curve_ : ndarray of shape (n_iter_,), float64
        Half the mean squared error of each epoch (scikit-learn's loss,
        without alpha's penalty), in standardised target units when
        ``standardize_y``; of every epoch since the network was made, with
        ``warm_start`` and :meth:`partial_fit`.
    %(mlp_attributes)s    n_outputs_ : int
        Number of outputs of the target.
    y_mean_ : ndarray of shape (n_outputs_,), float64
        Mean of each training output (zeros without ``standardize_y``); from
        the first call's y, when the network was made (a warm ``fit`` or
        :meth:`partial_fit` keeps it).
    y_scale_ : ndarray of shape (n_outputs_,), float64
        Standard deviation of each training output, 1 where it is 0 (ones
        without ``standardize_y``).
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,), object
        Names of the features, when X had string column names.

    See Also
    --------
    LGMClassifier : Classification with the same network.
    lgmstm.LGM : The network itself, with full control over training.

    Examples
    --------
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from lgmstm.datasets import load_diabetes
    >>> from lgmstm.sklearn import LGMRegressor
    >>> X, y, _ = load_diabetes()
    >>> model = make_pipeline(StandardScaler(), LGMRegressor(random_state=0))
    >>> model.fit(X[:300], y[:300]).score(X[300:], y[300:]) > 0.3
    True
    """

    loss: str
    output: str
    standardize_y: bool
    n_outputs_: int
    y_mean_: NDArray[np.float64]
    y_scale_: NDArray[np.float64]
    _y_1d: bool

    def __init__(self, hidden_layer_sizes: int | Sequence[int] = (100,),
                 activation: str = "tanh", *, solver: str = "adam", alpha: float = 0.0001,
                 batch_size: int | str | None = "auto", learning_rate: str = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5, max_iter: int = 200,
                 shuffle: bool = True,
                 random_state: int | np.random.RandomState | None = None, tol: float = 1e-4,
                 verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000,
                 loss: str = "squared_error", output: str = "linear",
                 standardize_y: bool = True, dtype: DTypeLike = np.float64,
                 backend: str = "cython") -> None:
        self._set_hyper_parameters(locals())

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X: ArrayLike, y: ArrayLike,
            sample_weight: ArrayLike | None = None) -> LGMRegressor:
        """Train a new network on (X, y) (with ``warm_start``, the one there).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite numbers; converted to ``dtype``.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Finite numbers.
        sample_weight : array-like of shape (n_samples,) or float, optional
            Each sample's weight (with ``standardize_y``, also in the
            target's mean and standard deviation). %(sample_weight)s

        Returns
        -------
        self : LGMRegressor
            The fitted estimator.

        Raises
        ------
        ValueError
            Empty, non-finite or non-numeric data, inconsistent lengths, an
            invalid hyper-parameter value, or a sample_weight of another
            shape, negative, non-finite or all zero (also in either part of
            early stopping's split).
        TypeError
            A hyper-parameter of the wrong type (e.g. a float ``max_iter``).
        lgmstm.TrainingInterrupted
            Ctrl-C during training: the estimator keeps the network of the
            last finished epoch.

        Warns
        -----
        lgmstm.DivergenceWarning
            Training met a non-finite loss (try a smaller ``learning_rate_init``).
        sklearn.exceptions.ConvergenceWarning
            max_iter epochs ran and no plateau stopped them (scikit-learn's
            warning).
        """
        return self._train(X, y, self._goes_on(self.warm_start), False, sample_weight)

    def partial_fit(self, X: ArrayLike, y: ArrayLike,
                    sample_weight: ArrayLike | None = None) -> LGMRegressor:
        """Train one epoch on (X, y), going on from the last call.

        As scikit-learn's ``MLPRegressor.partial_fit``: the first call on an
        unfitted estimator makes the network (and, with ``standardize_y``,
        the target's scaling, from this y); every call, later ones too,
        trains it one epoch with the estimator's hyper-parameters (``max_iter``
        aside), going on with its optimizer state (see
        :meth:`lgmstm.LGM.partial_fit`), and adds to ``loss_curve_`` and
        ``n_iter_``. After ``fit``, it goes on from that fit.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite numbers; the features of the first call.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Finite numbers; the outputs of the first call.
        sample_weight : array-like of shape (n_samples,) or float, optional
            Each sample's weight, as :meth:`fit` takes it.

        Returns
        -------
        self : LGMRegressor

        Raises
        ------
        ValueError
            As :meth:`fit`, and X or y does not match what the network was
            made for.
        """
        return self._train(X, y, self.__sklearn_is_fitted__(), True, sample_weight)

    def _train(self, X: ArrayLike, y: ArrayLike, keep: bool, incremental: bool,
               sample_weight: ArrayLike | None) -> LGMRegressor:
        """fit and partial_fit (incremental): keep goes on with the fitted network."""
        if isinstance(self.loss, str) and self.loss == "poisson":
            raise ValueError("loss='poisson' is not available: LGMRegressor trains the "
                             "squared error only; use loss='squared_error' (the default)")
        check_choice("loss", self.loss, ("squared_error",))
        # The classifiers' outputs ("softmax", "sigmoid") train a cross-entropy.
        output = check_choice("output", self.output, ("linear", "tanh"))
        standardize_y = check_bool("standardize_y", self.standardize_y)
        dtype = self._start_fit(keep)
        X_valid: NDArray[Any]
        if keep and self._ready_targets(X, y):
            # What validate_data would take unchanged skips its cost.
            X_valid, y_valid = np.asarray(X), y
        else:
            X_valid, y_valid = validate_data(self, X, y, dtype=dtype, multi_output=True,
                                             y_numeric=True, reset=not keep)
        Y = np.asarray(y_valid, dtype=np.float64)
        Y = Y.reshape(len(Y), -1)
        weights = _sample_weight(sample_weight, len(Y))
        if keep:
            if Y.shape[1] != self.n_outputs_:
                raise ValueError(f"y has {Y.shape[1]} outputs, but this {type(self).__name__}"
                                 f" was fitted with {self.n_outputs_} outputs")
        else:
            self._y_1d = np.ndim(y_valid) == 1
            self.n_outputs_ = Y.shape[1]
            if standardize_y:
                # Weighted: a weight of 2 is the sample twice here too.
                self.y_mean_ = np.average(Y, axis=0, weights=weights)
                std = np.sqrt(np.average((Y - self.y_mean_) ** 2, axis=0, weights=weights))
                self.y_scale_ = np.where(std > 0, std, 1.0)
            else:
                self.y_mean_ = np.zeros(self.n_outputs_)
                self.y_scale_ = np.ones(self.n_outputs_)
        # The loss is half the mean squared error, as scikit-learn's.
        self._fit_network(X_valid, ((Y - self.y_mean_) / self.y_scale_).astype(dtype),
                          output, keep, incremental, _squared_error_scale(Y.shape[1]), 0.5,
                          sample_weight=weights)
        return self

    def _ready_targets(self, X: Any, y: Any) -> bool:
        """Whether validate_data would take X and y of a fitted estimator
        unchanged (see _ready_features): y a finite float ndarray of one
        value per sample, with the fitted number of outputs."""
        return (self._ready_features(X) and type(y) is np.ndarray and y.dtype.kind == "f"
                and y.shape[0] == X.shape[0]
                and (y.ndim == 1 and self.n_outputs_ == 1
                     or y.ndim == 2 and y.shape[1] == self.n_outputs_)
                and all_finite((y,)))

    def predict(self, X: ArrayLike) -> NDArray[np.float64]:
        """Predicted targets.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Samples, finite numbers; converted to ``dtype``.

        Returns
        -------
        y : ndarray of shape (n_samples,) or (n_samples, n_outputs_), float64
            1-D when the training target was. Float64 whatever ``dtype``:
            the target's units are restored in float64.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        ValueError
            X has the wrong number of features or holds NaN or inf.
        """
        y: NDArray[np.float64] = self._network_outputs(X) * self.y_scale_ + self.y_mean_
        return y[:, 0] if self._y_1d else y


class LGMClassifier(ClassifierMixin, _LGMEstimator):
    """Classification with a feed-forward tanh network, :class:`lgmstm.LGM`:
    scikit-learn's ``MLPClassifier(activation="tanh")`` hyper-parameters and
    attributes, with their meanings.

    The network is trained on the log-loss, as scikit-learn's: a sigmoid
    output for two classes (the probability of ``classes_[1]``) and for a
    multi-label indicator y (one per label), a softmax over the classes for
    more; :meth:`predict_proba` is the network's output and
    :meth:`predict_log_proba` its stable logarithm (no ``log(0)``).
    Classifiers saved by lgmstm before the log-loss (tanh outputs trained
    towards +-1) load and predict as they did.

    Parameters
    ----------
    %(mlp_parameters)s%(common_parameters)s
    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted (those of ``classes`` with :meth:`partial_fit`);
        for a multi-label y, the label indices ``0, ..., n_labels - 1``.
    lgm_ : lgmstm.LGM
        The trained network, of layer sizes
        ``[n_features_in_, *hidden_layer_sizes, n_outputs]`` with
        ``n_outputs = 1`` for up to two classes, else ``n_classes`` (or
        ``n_labels``).
    loss_curve_ : ndarray of shape (n_iter_,), float64
        The log-loss of each epoch (without alpha's penalty); of every epoch
        since the network was made, with ``warm_start`` and :meth:`partial_fit`.
    %(mlp_attributes)s    n_outputs_ : int
        Output units of the network (scikit-learn's): 1 for up to two
        classes, else the number of classes (or of labels).
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,), object
        Names of the features, when X had string column names.

    See Also
    --------
    LGMRegressor : Regression with the same network.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from lgmstm.sklearn import LGMClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> model = make_pipeline(StandardScaler(), LGMClassifier(random_state=0))
    >>> model.fit(X, y).score(X, y) > 0.9
    True
    """

    classes_: NDArray[Any]

    def __sklearn_tags__(self) -> Tags:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def __init__(self, hidden_layer_sizes: int | Sequence[int] = (100,),
                 activation: str = "tanh", *, solver: str = "adam", alpha: float = 0.0001,
                 batch_size: int | str | None = "auto", learning_rate: str = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5, max_iter: int = 200,
                 shuffle: bool = True,
                 random_state: int | np.random.RandomState | None = None, tol: float = 1e-4,
                 verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000,
                 dtype: DTypeLike = np.float64, backend: str = "cython") -> None:
        self._set_hyper_parameters(locals())

    def fit(self, X: ArrayLike, y: ArrayLike,
            sample_weight: ArrayLike | None = None) -> LGMClassifier:
        """Train a new network on (X, y) (with ``warm_start``, the one there).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite numbers; converted to ``dtype``.
        y : array-like of shape (n_samples,)
            Class labels (numbers or strings).
        sample_weight : array-like of shape (n_samples,) or float, optional
            Each sample's weight. %(sample_weight)s

        Returns
        -------
        self : LGMClassifier
            The fitted estimator.

        Raises
        ------
        ValueError
            Empty, non-finite or non-numeric X, inconsistent lengths,
            continuous or multi-output y, an invalid hyper-parameter value,
            (``warm_start``, fitted) classes other than ``classes_``, or a
            sample_weight of another shape, negative, non-finite or all zero
            (also in either part of early stopping's split).
        TypeError
            A hyper-parameter of the wrong type (e.g. a float ``max_iter``).
        lgmstm.TrainingInterrupted
            Ctrl-C during training: the estimator keeps the network of the
            last finished epoch.

        Warns
        -----
        sklearn.exceptions.DataConversionWarning
            y is a column vector of shape (n_samples, 1).
        lgmstm.DivergenceWarning
            Training met a non-finite loss (try a smaller ``learning_rate_init``).
        sklearn.exceptions.ConvergenceWarning
            max_iter epochs ran and no plateau stopped them (scikit-learn's
            warning).
        """
        keep = self._goes_on(self.warm_start)
        dtype = self._start_fit(keep)
        X_valid, y_valid = validate_data(self, X, y, dtype=dtype, reset=not keep,
                                         multi_output=True)
        check_classification_targets(y_valid)
        y_valid = self._labels(y_valid, keep)
        classes = np.arange(y_valid.shape[1]) if y_valid.ndim == 2 else np.unique(y_valid)
        if keep and not np.array_equal(classes, self.classes_):
            raise ValueError(f"warm_start can only be used where y has the same classes as "
                             f"in the previous call to fit: previously {self.classes_}, "
                             f"y has {classes}")
        weights = _sample_weight(sample_weight, X_valid.shape[0])
        self.classes_ = classes
        self._fit_labels(X_valid, y_valid, keep, False, weights)
        return self

    def partial_fit(self, X: ArrayLike, y: ArrayLike, sample_weight: ArrayLike | None = None,
                    classes: ArrayLike | None = None) -> LGMClassifier:
        """Train one epoch on (X, y), going on from the last call.

        As scikit-learn's ``MLPClassifier.partial_fit``: the first call on an
        unfitted estimator needs every class there will be in ``classes``
        (y may hold only some of them) and makes the network; every call,
        later ones too, trains it one epoch with the estimator's
        hyper-parameters (``max_iter`` and ``early_stopping`` aside), going on with its optimizer
        state (see :meth:`lgmstm.LGM.partial_fit`), and adds to
        ``loss_curve_`` and ``n_iter_``. After ``fit``, it goes on from that
        fit, with its classes.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite numbers; the features of the first call.
        y : array-like of shape (n_samples,)
            Class labels, each one of ``classes_``.
        sample_weight : array-like of shape (n_samples,) or float, optional
            Each sample's weight, as :meth:`fit` takes it.
        classes : array-like of shape (n_classes,), optional
            Every class label: needed on the first call; later, when given,
            it must be the same classes.

        Returns
        -------
        self : LGMClassifier

        Raises
        ------
        ValueError
            As :meth:`fit`; classes missing on the first call or different
            from ``classes_`` later; y holds a label not in ``classes_``; X
            has other features than the first call's.
        """
        keep = self.__sklearn_is_fitted__()
        if classes is None and not keep:
            raise ValueError("classes must be passed on the first call to partial_fit")
        labels = None if classes is None else unique_labels(classes)
        if keep and labels is not None and not np.array_equal(labels, self.classes_):
            raise ValueError(f"classes={labels} is not the same as on the last call "
                             f"to partial_fit or fit, was: {self.classes_}")
        dtype = self._start_fit(keep)
        X_valid, y_valid = validate_data(self, X, y, dtype=dtype, reset=not keep,
                                         multi_output=True)
        check_classification_targets(y_valid)
        y_valid = self._labels(y_valid, keep)
        weights = _sample_weight(sample_weight, X_valid.shape[0])
        if labels is not None:
            self.classes_ = labels
        if y_valid.ndim == 2:
            if y_valid.shape[1] != len(self.classes_):
                raise ValueError(f"y has {y_valid.shape[1]} labels, classes_ "
                                 f"{len(self.classes_)}")
        else:
            unknown = np.setdiff1d(y_valid, self.classes_)
            if unknown.size:
                raise ValueError(f"y has classes not in classes_ {self.classes_}: {unknown}")
        self._fit_labels(X_valid, y_valid, keep, True, weights)
        return self

    def _labels(self, y: NDArray[Any], keep: bool) -> NDArray[Any]:
        """y as 1-d labels, or a 2-d multi-label indicator (the kind of the
        fitted estimator's y when keep; a column vector warns as scikit-learn's)."""
        multi_label = y.ndim == 2 and type_of_target(y) == "multilabel-indicator"
        if keep and multi_label != self._multi_label:
            raise ValueError(f"y is {'a' if multi_label else 'not a'} multi-label indicator, "
                             f"but this {type(self).__name__} was fitted with "
                             f"{'one' if self._multi_label else 'labels'}")
        if multi_label:
            return y
        return column_or_1d(y, warn=True)

    @property
    def _multi_label(self) -> bool:
        """Whether the network was made for a multi-label indicator y: a
        sigmoid per label (two classes have one sigmoid output)."""
        return self.lgm_.output == "sigmoid" and self.lgm_.layer_sizes[-1] > 1

    def _fit_labels(self, X: NDArray[Any], y: NDArray[Any], keep: bool,
                    incremental: bool, sample_weight: NDArray[np.float64] | None) -> None:
        """Train on the log-loss of the labels y, each one of classes_, or of
        the multi-label indicator y (one epoch when incremental); the
        validation split of early stopping keeps the classes in proportion."""
        if y.ndim == 2:
            Y, output, stratify = y.astype(np.float64), "sigmoid", None
        else:
            stratify = np.searchsorted(self.classes_, y)
            if len(self.classes_) <= 2:
                # One class: trained towards it, so that its probability is 1.
                Y = (stratify == len(self.classes_) - 1).astype(np.float64)[:, None]
                output = "sigmoid"
            else:
                Y = np.zeros((len(stratify), len(self.classes_)))
                Y[np.arange(len(stratify)), stratify] = 1.0
                output = "softmax"
        # scikit-learn's log-loss is the network's (the mean over samples of
        # the cross-entropy summed over outputs).
        self._fit_network(X, Y.astype(X.dtype), output, keep, incremental, 1.0, 1.0,
                          stratify=stratify, sample_weight=sample_weight)

    @property
    def n_outputs_(self) -> int:
        """Output units of the network (scikit-learn's): 1 for up to two
        classes, else the number of classes (or of labels)."""
        return self._fitted_network("n_outputs_").layer_sizes[-1]

    def _tanh_network(self) -> bool:
        """Whether lgm_ is a classifier's network from before the log-loss:
        tanh outputs trained towards +-1."""
        return self.lgm_.output == "tanh"

    def decision_function(self, X: ArrayLike) -> NDArray[Any]:
        """Scores whose sign or largest entry gives the class: the log-odds
        ``log p - log(1 - p)`` of each sigmoid output, the log-probabilities
        of a softmax (its logits, up to a constant per sample), or, for a
        classifier saved before the log-loss, its tanh outputs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Samples, finite numbers; converted to ``dtype``.

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_outputs), ``dtype``
            One column per class (or label) for more than two classes (or a
            multi-label y), in the order of ``classes_``; else 1-D, positive
            values favouring ``classes_[1]``.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        ValueError
            X has the wrong number of features or holds NaN or inf.
        """
        check_is_fitted(self)
        if self._tanh_network():
            scores = self._network_outputs(X)
        elif self.lgm_.output == "sigmoid":
            scores = self._logits(X)   # the log-odds themselves, at any size
        else:
            scores = self._log_outputs(X)
        return scores[:, 0] if scores.shape[1] == 1 and not self._multi_label else scores

    def _log_outputs(self, X: ArrayLike) -> NDArray[Any]:
        """The network's log-probabilities (lgmstm.LGM.predict_log_proba)."""
        log_proba: NDArray[Any] = self.lgm_.predict_log_proba(self._checked_features(X))
        return log_proba

    def _logits(self, X: ArrayLike) -> NDArray[Any]:
        """The network's logits, before its softmax or sigmoid."""
        return self.lgm_._logits(self._checked_features(X))

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """The most probable class (for two classes: ``classes_[1]`` when its
        probability is above 1/2); for a multi-label y, the indicator of the
        labels whose probability is above 1/2.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Samples, finite numbers; converted to ``dtype``.

        Returns
        -------
        y : ndarray of shape (n_samples,), dtype of ``classes_``, or (n_samples, n_labels)
            Predicted class labels, or the 0/1 multi-label indicator.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        ValueError
            X has the wrong number of features or holds NaN or inf.
        """
        scores = self.decision_function(X)
        if self._multi_label:
            return (scores > 0).astype(np.int64)
        if scores.ndim == 2:
            indices = scores.argmax(axis=1)
        elif len(self.classes_) == 2:
            indices = (scores > 0).astype(np.intp)
        else:
            indices = np.zeros(len(scores), np.intp)
        return self.classes_[indices]

    def predict_proba(self, X: ArrayLike) -> NDArray[Any]:
        """Class probabilities: the network's outputs (for two classes, that
        of ``classes_[1]`` beside its complement).

        For a classifier saved before the log-loss: ``(output + 1) / 2`` of
        its tanh outputs, normalised over more than two classes.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Samples, finite numbers; converted to ``dtype``.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes), ``dtype``
            Columns in the order of ``classes_``; rows summing to 1 (a
            multi-label y: each label's own probability).

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        ValueError
            X has the wrong number of features or holds NaN or inf.
        """
        outputs = self._network_outputs(X)
        if len(self.classes_) == 1:
            return np.ones_like(outputs)
        if self._tanh_network():
            outputs = np.clip((outputs + 1) / 2, 0, 1)
            if len(self.classes_) > 2:
                total = outputs.sum(axis=1, keepdims=True)
                empty = total[:, 0] == 0
                outputs[empty], total[empty] = 1, len(self.classes_)
                return outputs / total
        if outputs.shape[1] == 1 and not self._multi_label:
            return np.hstack([1 - outputs, outputs])
        return outputs

    def predict_log_proba(self, X: ArrayLike) -> NDArray[Any]:
        """Logarithm of :meth:`predict_proba`, computed from the network's
        logits without ``log(0)`` (:meth:`lgmstm.LGM.predict_log_proba`).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features_in_)
            Samples, finite numbers; converted to ``dtype``.

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes), ``dtype``
            Columns in the order of ``classes_``.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Before ``fit``.
        ValueError
            X has the wrong number of features or holds NaN or inf.
        """
        check_is_fitted(self)
        if self._tanh_network() or len(self.classes_) == 1:
            with np.errstate(divide="ignore"):
                return np.log(self.predict_proba(X))
        if self.lgm_.output == "sigmoid" and not self._multi_label:
            # log(1 - p) = log sigmoid(-z), from the logit z: finite at any z
            # (from log p, it would be -inf wherever log p rounds to 0).
            logits = self._logits(X)
            return np.hstack([log_probabilities("sigmoid", -logits),
                              log_probabilities("sigmoid", logits)])
        return self._log_outputs(X)


# fit's sample_weight, the same for both estimators.
_SAMPLE_WEIGHT = """As scikit-learn's MLP (>= 1.7) takes it:
            finite, >= 0, not all zero; None weighs every sample 1, and a
            single number every sample alike. Each
            batch minimises the weighted mean of its samples' losses (so, in
            a full batch, a weight of 2 is the sample twice and a weight of
            0 leaves it out); alpha's penalty is divided by the batch's
            summed weight as scikit-learn's, taken as the batch size times
            the mean weight (exact in a full batch). With early_stopping the
            held-out samples keep their weights, and the validation loss is
            their weighted mean, as scikit-learn weighs its validation score."""

for _estimator in (LGMRegressor, LGMClassifier):
    _estimator.__doc__ = (_estimator.__doc__ or "") % {
        "mlp_parameters": _MLP_PARAMETERS.lstrip(), "common_parameters": _COMMON_PARAMETERS,
        "mlp_attributes": _MLP_ATTRIBUTES.lstrip()}
    _estimator.fit.__doc__ = (_estimator.fit.__doc__ or "") % {"sample_weight": _SAMPLE_WEIGHT}


# -- the estimator's file: its checks and its JSON (see _LGMEstimator.save) ------------
def _renamed(hyper_parameters: dict[str, Any], n_outputs: int) -> dict[str, Any]:
    """The hyper-parameters (JSON data, or a pickle's state) of an estimator
    from before scikit-learn's MLP names, as they are now, for a network of
    n_outputs outputs: epochs, lr and optimizer become max_iter,
    learning_rate_init and solver (with momentum and nesterovs_momentum),
    and the settings those estimators did not have take the values that
    train as they trained: no alpha, and a count of epochs without
    improvement that cannot stop a fit before max_iter."""
    renamed = {name: value for name, value in hyper_parameters.items()
               if name not in ("epochs", "lr", "optimizer")}
    optimizer = hyper_parameters.get("optimizer", "adam")
    lr = hyper_parameters.get("lr", 0.001)
    if optimizer in ("sgd", "momentum") and isinstance(lr, (int, float)):
        lr = lr * _squared_error_scale(n_outputs)  # see _LGMEstimator._settings
    renamed.update(
        max_iter=hyper_parameters.get("epochs", 200), learning_rate_init=lr,
        solver="adam" if optimizer == "adam" else "sgd",
        momentum=0.9 if optimizer == "momentum" else 0.0, nesterovs_momentum=False,
        alpha=0.0, n_iter_no_change=max(1, hyper_parameters.get("epochs", 200)))
    return renamed


def _renamed_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """The fitted attributes of an estimator from before the MLP names, with
    those it did not have: t_ unknown (0), no best loss yet (the next
    warm fit starts counting afresh), no validation."""
    return {**attributes, "t_": 0, "best_loss_": None, "validation_scores_": None,
            "best_validation_score_": None}


def _attribute_name(estimator: Any, name: str) -> str:
    """name, when it can be a fitted attribute of estimator: not one of its
    hyper-parameters, methods or properties, nor lgm_."""
    if (not name.isidentifier() or name == "lgm_" or hasattr(type(estimator), name)
            or name in estimator.get_params(deep=False)):
        raise ValueError(f"{name!r} cannot be a fitted attribute of an "
                         f"{type(estimator).__name__}"[:200])
    return name


def _attribute_array(name: str, entry: Any, n_features: int, n_outputs: int) -> np.ndarray:
    """A fitted array attribute, its shape checked against the network before
    its data is read where the network fixes it."""
    what = f"estimator.{_ATTRIBUTE}{name}"
    if name in ("y_mean_", "y_scale_"):
        return read_sized(entry, what, (n_outputs,), np.dtype(np.float64), finite=True)
    if entry.dtype.kind not in "biufUS":
        raise ValueError(f"{what} has dtype {entry.dtype}; lgmstm writes numbers or text")
    if name == "feature_names_in_" and entry.shape != (n_features,):
        raise ValueError(f"{what} has shape {entry.shape}; the network has {n_features} "
                         "features")
    if name == "classes_" and (entry.ndim != 1 or not 0 < entry.shape[0] <= max(2, n_outputs)
                               or (n_outputs > 1 and entry.shape[0] != n_outputs)):
        raise ValueError(f"{what} has shape {entry.shape}; the network has {n_outputs} "
                         "outputs (one for up to two classes, else one per class)")
    if name == "loss_curve_" and (entry.ndim != 1 or entry.dtype != np.float64):
        raise ValueError(f"{what} must be a 1-d float64 array, got shape {entry.shape} and "
                         f"dtype {entry.dtype}")
    return np.asarray(entry)


def _check_fitted(estimator: Any, kind: str, n_features: int, n_outputs: int) -> None:
    """The fitted attributes predict reads are there and fit the network."""
    needed = {"n_features_in_", "n_iter_", "t_", "loss_curve_", "best_loss_",
              "validation_scores_", "best_validation_score_",
              *(("classes_",) if kind == "LGMClassifier" else
                ("n_outputs_", "y_mean_", "y_scale_", "_y_1d"))}
    missing = sorted(name for name in needed if not hasattr(estimator, name))
    if missing:
        raise ValueError(f"the {kind} misses the fitted attributes {missing}")
    for name, value in (("n_features_in_", n_features), ("n_outputs_", n_outputs)):
        if name in needed and (type(getattr(estimator, name)) is not int
                               or getattr(estimator, name) != value):
            raise ValueError(f"{name} must be {value}, the network's, got "
                             f"{getattr(estimator, name)!r}")


def _without_objects(name: str, array: np.ndarray) -> np.ndarray:
    """An object array (labels, feature names) as an array of numbers or
    text that gives back the same values, of the same types, via
    astype(object); ValueError when there is none."""
    plain = np.asarray(array.tolist())
    back = plain.astype(object)
    if (plain.dtype.kind not in "biufU" or plain.shape != array.shape
            or not all(type(a) is type(b) and a == b
                       for a, b in zip(back.ravel(), array.ravel()))):
        raise ValueError(f"{name} holds {array.dtype} values that a file cannot hold "
                         "exactly without pickle (one type of number, or text, can be saved)")
    return plain


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"estimator.header's {name} must be an object, got {value!r}"[:200])
    return value


def _to_json(value: Any, name: str) -> Any:
    """value as JSON data that _from_json turns back into the same value."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, (tuple, list)) and type(value) in (tuple, list):
        return {f"${type(value).__name__}": [_to_json(item, name) for item in value]}
    if isinstance(value, np.dtype):
        return {"$dtype": value.str}
    if isinstance(value, type) and issubclass(value, np.generic):
        return {"$scalar_type": np.dtype(value).str}
    if isinstance(value, np.generic) and value.dtype.kind in "biufU":
        return {"$scalar": value.dtype.str, "value": value.item()}
    if type(value) is np.random.RandomState:
        return {"$RandomState": value.get_state(legacy=False)}
    if isinstance(value, type) and value in _PYTHON_TYPES.values():   # dtype=float
        return {"$python_type": value.__name__}
    if type(value) is np.ndarray and value.dtype.kind in "biuf":   # hidden_layer_sizes
        return {"$array": value.dtype.str, "value": value.tolist()}
    raise TypeError(f"{name} = {value!r} cannot be saved without pickle"[:300])


# Python's types a hyper-parameter may name (dtype=float), by name.
_PYTHON_TYPES: dict[str, type] = {"float": float, "int": int, "bool": bool}


def _from_json(data: Any, name: str) -> Any:
    """The value _to_json wrote as data; ValueError for anything else."""
    if data is None or type(data) in (bool, int, float, str):
        return data
    if isinstance(data, dict) and len(data) in (1, 2):
        tag = next(iter(data))
        body = data[tag]
        try:
            if tag in ("$tuple", "$list") and isinstance(body, list) and len(data) == 1:
                items = [_from_json(item, name) for item in body]
                return tuple(items) if tag == "$tuple" else items
            if tag == "$dtype" and isinstance(body, str) and len(data) == 1:
                return np.dtype(body)
            if tag == "$scalar_type" and isinstance(body, str) and len(data) == 1:
                return np.dtype(body).type
            if tag == "$scalar" and isinstance(body, str) and set(data) == {tag, "value"}:
                dtype = np.dtype(body)
                if dtype.kind in "biufU" and type(data["value"]) in (bool, int, float, str):
                    return dtype.type(data["value"])
            if tag == "$RandomState" and isinstance(body, dict) and len(data) == 1:
                return _random_state(body)
            if tag == "$python_type" and body in _PYTHON_TYPES and len(data) == 1:
                return _PYTHON_TYPES[body]
            if tag == "$array" and isinstance(body, str) and set(data) == {tag, "value"}:
                dtype = np.dtype(body)
                if dtype.kind in "biuf" and isinstance(data["value"], (list, int, float)):
                    return np.array(data["value"], dtype=dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{name}: {data!r}: {exc}"[:300]) from None
    raise ValueError(f"{name} holds {data!r}, which lgmstm does not write"[:300])


def _random_state(state: dict[str, Any]) -> np.random.RandomState:
    name = state.get("bit_generator")
    if not isinstance(name, str) or name not in BIT_GENERATORS:
        raise ValueError(f"a RandomState's state must name one of {sorted(BIT_GENERATORS)}")
    random_state = np.random.RandomState(BIT_GENERATORS[name]())
    try:
        random_state.set_state(state)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"invalid RandomState state: {exc!r}") from None
    return random_state
