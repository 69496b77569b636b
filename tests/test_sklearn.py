"""lgmstm.sklearn: scikit-learn's estimator checks, pipelines and searches on
real data, and the behaviour the docstrings promise."""
import doctest
import importlib
import sys
import warnings

import numpy as np
import pytest
import scipy.special

pytest.importorskip("sklearn", minversion="1.6")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.exceptions import DataConversionWarning, NotFittedError  # noqa: E402
from sklearn.linear_model import RidgeCV  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score, train_test_split  # noqa: E402
from sklearn.pipeline import Pipeline, make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import lgmstm  # noqa: E402
import lgmstm.sklearn  # noqa: E402
from lgmstm.datasets import load_diabetes  # noqa: E402
from lgmstm.sklearn import LGMClassifier, LGMRegressor  # noqa: E402


# Seeded: with random initial weights each run, the float32 classifier's
# outputs sometimes saturate next to -1, where sklearn's rank check (rounding
# float32 scores at 1e10) sees ties in one score that the other splits.
@parametrize_with_checks([
    LGMRegressor(random_state=0),
    LGMClassifier(random_state=0),
    LGMRegressor(hidden_layer_sizes=(5, 4), dtype=np.float32, solver="sgd",
                 nesterovs_momentum=False, learning_rate_init=0.01, random_state=0),
    LGMClassifier(hidden_layer_sizes=(), dtype="float32", backend="numpy", max_iter=100,
                  batch_size=32, random_state=0),
    LGMRegressor(hidden_layer_sizes=(6,), solver="sgd", learning_rate="adaptive",
                 early_stopping=True, random_state=0),
    LGMClassifier(hidden_layer_sizes=(6,), solver="sgd", learning_rate="invscaling",
                  learning_rate_init=0.1, alpha=0.01, early_stopping=True,
                  validation_fraction=0.5, random_state=0),
])
def test_estimator_checks(estimator, check):
    if getattr(check, "func", check).__name__.startswith("check_sample_weight_equivalence"):
        # As scikit-learn sets parameters for this check on its own
        # estimators (PER_ESTIMATOR_CHECK_PARAMS: MLPRegressor's solver="sgd",
        # tol=1e-2): in float64, at a constant rate, without early stopping.
        # Weights equal repeated samples up to rounding, and the check's
        # rtol of 1e-7 is float64's (float32 training drifts ~1e-6 over its
        # epochs: the float32 case is in test_mlp_dropin); "invscaling"'s
        # clock t_ counts the samples seen, weights aside (scikit-learn's);
        # early stopping's random split of the 15 weighted samples and of
        # their ~30 repeats holds out different samples (MLPClassifier's too).
        estimator = clone(estimator).set_params(dtype=np.float64, early_stopping=False,
                                                learning_rate="constant")
    check(estimator)


# -- real data ------------------------------------------------------------------

def test_pipeline_grid_search_regression_diabetes():
    X, y, _ = load_diabetes()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0)
    pipeline = Pipeline([("scale", StandardScaler()), ("lgm", LGMRegressor(random_state=0))])
    search = GridSearchCV(
        pipeline, {"lgm__hidden_layer_sizes": [(4,), (32,)],
                   "lgm__learning_rate_init": [1e-3, 1e-2]},
        cv=KFold(3, shuffle=True, random_state=0))
    search.fit(X_train, y_train)
    ridge = make_pipeline(StandardScaler(), RidgeCV()).fit(X_train, y_train)
    assert search.cv_results_["mean_test_score"].shape == (4,)
    # Measured: best cross-validated R^2 0.487; held out 0.292 against RidgeCV's 0.358.
    assert search.best_score_ > 0.4
    assert search.score(X_test, y_test) > ridge.score(X_test, y_test) - 0.15
    assert search.best_estimator_["lgm"].n_features_in_ == 10


def test_pipeline_grid_search_classification_iris():
    X, y = load_iris(return_X_y=True)
    pipeline = Pipeline([("scale", StandardScaler()),
                         ("lgm", LGMClassifier(batch_size=32, random_state=0))])
    search = GridSearchCV(pipeline, {"lgm__hidden_layer_sizes": [(), (16,)],
                                     "lgm__max_iter": [20, 200]},
                          cv=KFold(3, shuffle=True, random_state=0))
    search.fit(X, y)
    assert search.best_score_ > 0.9  # measured 0.920
    assert list(search.best_estimator_.classes_) == [0, 1, 2]


# Measured means: accuracy 0.742, roc_auc 0.839, neg_log_loss -0.502.
@pytest.mark.parametrize("scoring, minimum", [("accuracy", 0.7), ("roc_auc", 0.8),
                                              ("neg_log_loss", -0.6)])
def test_binary_diabetes_scorers(scoring, minimum):
    # Above or below the median progression: the scorers use predict,
    # decision_function and predict_proba.
    X, y, _ = load_diabetes()
    labels = np.where(y > np.median(y), "high", "low")
    model = make_pipeline(StandardScaler(), LGMClassifier(random_state=0))
    scores = cross_val_score(model, X, labels, cv=KFold(5, shuffle=True, random_state=0),
                             scoring=scoring)
    assert scores.mean() > minimum


def test_docstring_examples():
    result = doctest.testmod(lgmstm.sklearn, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 2 and result.failed == 0


# -- the documented behaviour ------------------------------------------------------

@pytest.fixture
def regression_data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 3))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1]
    return X, y


def test_random_state(regression_data):
    X, y = regression_data
    def predict(random_state):
        return LGMRegressor(max_iter=5, random_state=random_state).fit(X, y).predict(X)

    np.testing.assert_array_equal(predict(3), predict(3))
    assert not np.array_equal(predict(3), predict(4))
    assert not np.array_equal(predict(None), predict(None))
    shared = np.random.RandomState(0)
    assert not np.array_equal(predict(shared), predict(shared))
    np.testing.assert_array_equal(predict(np.random.RandomState(5)),
                                  predict(np.random.RandomState(5)))


def test_network_and_attributes(regression_data):
    X, y = regression_data
    model = LGMRegressor(hidden_layer_sizes=7, max_iter=3, random_state=0).fit(X, y)
    assert isinstance(model.lgm_, lgmstm.LGM)
    assert model.lgm_.layer_sizes == (3, 7, 1)
    assert model.lgm_.output == "linear"
    assert model.n_iter_ == 3 and model.loss_curve_.shape == (3,)
    # scikit-learn's squared loss: half the mean squared error.
    np.testing.assert_array_equal(model.loss_curve_, model.lgm_.history_ / 2)
    affine = LGMRegressor(hidden_layer_sizes=(), max_iter=1).fit(X, y)
    assert affine.lgm_.layer_sizes == (3, 1)


def test_standardize_y(regression_data):
    X, y = regression_data
    model = LGMRegressor(max_iter=20, random_state=0).fit(X, y)
    np.testing.assert_allclose(model.y_mean_, [y.mean()])
    np.testing.assert_allclose(model.y_scale_, [y.std()])
    np.testing.assert_allclose(model.predict(X),
                               model.lgm_.predict(X)[:, 0] * y.std() + y.mean())
    # Training sees the same standardised target whatever the units.
    rescaled = LGMRegressor(max_iter=20, random_state=0).fit(X, 1000 * y - 5)
    np.testing.assert_allclose(rescaled.predict(X), 1000 * model.predict(X) - 5,
                               rtol=1e-6, atol=1e-6)
    constant = LGMRegressor(batch_size=16, random_state=0).fit(X, np.full(len(X), 4.0))
    np.testing.assert_array_equal(constant.y_scale_, [1.0])
    np.testing.assert_allclose(constant.predict(X), 4.0, atol=0.1)
    raw = LGMRegressor(standardize_y=False, max_iter=2).fit(X, y)
    np.testing.assert_array_equal(raw.y_mean_, [0.0])
    np.testing.assert_array_equal(raw.y_scale_, [1.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_regression_shapes_and_dtypes(regression_data, dtype):
    X, y = regression_data
    model = LGMRegressor(max_iter=2, dtype=dtype, random_state=0)
    assert model.fit(X, y).predict(X).shape == (60,)
    assert model.lgm_.dtype == dtype
    assert model.predict(X).dtype == np.float64
    assert model.fit(X, y[:, None]).predict(X).shape == (60, 1)
    Y = np.column_stack([y, -y, 2 * y])
    assert model.fit(X, Y).predict(X).shape == (60, 3)
    assert model.n_outputs_ == 3 and model.lgm_.layer_sizes[-1] == 3


@pytest.fixture
def blobs():
    rng = np.random.default_rng(1)
    centres = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    labels = rng.integers(0, 3, 150)
    return centres[labels] + 0.5 * rng.standard_normal((150, 2)), labels


def _logits(model, X):
    """The network's last-layer logits, from coefs_ and intercepts_ in NumPy."""
    hidden = X
    for W, b in zip(model.coefs_[:-1], model.intercepts_[:-1]):
        hidden = np.tanh(hidden @ W + b)
    return hidden @ model.coefs_[-1] + model.intercepts_[-1]


def test_multiclass_probabilities(blobs):
    X, labels = blobs
    names = np.array(["ant", "bee", "cat"])[labels]
    model = LGMClassifier(random_state=0).fit(X, names)
    np.testing.assert_array_equal(model.classes_, ["ant", "bee", "cat"])
    assert model.lgm_.layer_sizes == (2, 100, 3) and model.out_activation_ == "softmax"
    proba = model.predict_proba(X)
    logits = _logits(model, X)
    np.testing.assert_allclose(proba, scipy.special.softmax(logits, axis=1), rtol=1e-12)
    np.testing.assert_allclose(model.predict_log_proba(X),
                               scipy.special.log_softmax(logits, axis=1), rtol=1e-12)
    scores = model.decision_function(X)
    np.testing.assert_allclose(scores, np.log(proba), rtol=1e-12)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    np.testing.assert_array_equal(model.predict(X), model.classes_[proba.argmax(axis=1)])
    assert model.score(X, names) > 0.95  # measured 1.0 (separated blobs)


def test_binary_probabilities(blobs):
    X, labels = blobs
    keep = labels < 2
    X, y = X[keep], np.where(labels[keep] == 1, 7, -3)
    model = LGMClassifier(random_state=0).fit(X, y)
    assert model.lgm_.layer_sizes == (2, 100, 1) and model.out_activation_ == "logistic"
    logits = _logits(model, X)[:, 0]
    scores = model.decision_function(X)
    proba = model.predict_proba(X)
    assert scores.shape == (len(X),) and proba.shape == (len(X), 2)
    np.testing.assert_allclose(scores, logits, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(proba[:, 1], scipy.special.expit(logits), rtol=1e-12)
    np.testing.assert_allclose(model.predict_log_proba(X),
                               np.column_stack([scipy.special.log_expit(-logits),
                                                scipy.special.log_expit(logits)]),
                               rtol=1e-9, atol=1e-300)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    np.testing.assert_array_equal(model.predict(X), np.where(scores > 0, 7, -3))
    assert model.score(X, y) > 0.95  # measured 1.0 (separated blobs)


@pytest.mark.parametrize("dtype, logit", [(np.float64, 800.0), (np.float32, 150.0)])
def test_binary_scores_stay_finite_at_logits_past_exp_range(blobs, dtype, logit):
    """Logits whose sigmoid rounds to 1 (past about 37 in float64, 17 in
    float32) and whose exp overflows: decision_function is still the logit
    and predict_log_proba log sigmoid(-z), log sigmoid(z), as NumPy computes
    them from coefs_ and intercepts_."""
    X, labels = blobs
    keep = labels < 2
    model = LGMClassifier(hidden_layer_sizes=(), dtype=dtype, max_iter=3,
                          random_state=0).fit(X[keep], labels[keep])
    model.coefs_ = [np.array([[logit / 2], [0.0]])]
    model.intercepts_ = [np.zeros(1)]
    X = np.array([[2.0, 0.0], [1.9, 1.0], [-2.0, 0.0], [-1.9, -1.0]], dtype=dtype)
    logits = _logits(model, X.astype(np.float64))[:, 0]   # +-logit, +-0.95 logit
    scores = model.decision_function(X)
    assert scores.dtype == dtype and np.isfinite(scores).all()
    np.testing.assert_allclose(scores, logits, rtol=1e-6)
    log_proba = model.predict_log_proba(X)
    assert log_proba.dtype == dtype and np.isfinite(log_proba).all()
    np.testing.assert_allclose(log_proba, np.column_stack([scipy.special.log_expit(-logits),
                                                           scipy.special.log_expit(logits)]),
                               rtol=1e-6, atol=np.finfo(dtype).tiny)  # -e^-z rounds to 0
    np.testing.assert_array_equal(model.predict(X), [1, 1, 0, 0])


def test_one_class(blobs):
    X, _ = blobs
    model = LGMClassifier(max_iter=2).fit(X, np.full(len(X), "only"))
    assert list(model.predict(X[:4])) == ["only"] * 4
    np.testing.assert_array_equal(model.predict_proba(X[:4]), np.ones((4, 1)))


def test_column_vector_labels_warn(blobs):
    X, labels = blobs
    with pytest.warns(DataConversionWarning):
        LGMClassifier(max_iter=1).fit(X, labels[:, None])


def test_continuous_labels_refused(regression_data):
    X, y = regression_data
    with pytest.raises(ValueError, match="Unknown label type"):
        LGMClassifier(max_iter=1).fit(X, y)


def test_unfitted_and_wrong_features(regression_data):
    X, y = regression_data
    for model in (LGMRegressor(), LGMClassifier()):
        with pytest.raises(NotFittedError):
            model.predict(X)
    model = LGMRegressor(max_iter=1).fit(X, y)
    with pytest.raises(ValueError, match="3 features"):
        model.predict(X[:, :2])


@pytest.mark.parametrize("params, error, match", [
    ({"hidden_layer_sizes": 0}, ValueError, "hidden_layer_sizes"),
    ({"hidden_layer_sizes": (4, 2.5)}, ValueError, "hidden_layer_sizes"),
    ({"hidden_layer_sizes": "32"}, ValueError, "hidden_layer_sizes"),
    ({"dtype": np.float16}, ValueError, "dtype"),
    ({"max_iter": 1.5}, TypeError, "max_iter"),
    ({"max_iter": 0}, ValueError, "max_iter"),
    ({"learning_rate_init": 0.0}, ValueError, "learning_rate_init"),
    ({"batch_size": 0}, ValueError, "batch_size"),
    ({"batch_size": "full"}, ValueError, "batch_size"),
    ({"solver": "rmsprop"}, ValueError, "solver"),
    ({"solver": "lbfgs"}, ValueError, "solver='lbfgs' is not available.*L-BFGS"),
    ({"activation": "relu"}, ValueError, "activation must be 'tanh'"),
    ({"alpha": -1.0}, ValueError, "alpha"),
    ({"learning_rate": "optimal"}, ValueError, "learning_rate"),
    ({"power_t": -0.5}, ValueError, "power_t"),
    ({"tol": -1e-4}, ValueError, "tol"),
    ({"momentum": 1.5}, ValueError, "momentum"),
    ({"nesterovs_momentum": "yes"}, TypeError, "nesterovs_momentum"),
    ({"early_stopping": 1}, TypeError, "early_stopping"),
    ({"validation_fraction": 0.0}, ValueError, r"validation_fraction must be a number in \(0, 1\)"),
    ({"validation_fraction": 1.0}, ValueError, "validation_fraction"),
    ({"beta_1": 1.0}, ValueError, "beta_1"),
    ({"beta_2": -0.1}, ValueError, "beta_2"),
    ({"epsilon": 0.0}, ValueError, "epsilon"),
    ({"n_iter_no_change": 0}, ValueError, "n_iter_no_change"),
    ({"backend": "torch"}, ValueError, "backend"),
    ({"output": "relu"}, ValueError, "output"),
    # The classifiers' outputs would train a cross-entropy on the regression target.
    ({"output": "sigmoid"}, ValueError, "output must be one of 'linear', 'tanh'; got 'sigmoid'"),
    ({"output": "softmax"}, ValueError, "output must be one of 'linear', 'tanh'; got 'softmax'"),
    ({"standardize_y": "False"}, TypeError, "standardize_y must be True or False, got str"),
    ({"standardize_y": None}, TypeError, "standardize_y must be True or False, got None"),
    ({"standardize_y": 0}, TypeError, "standardize_y must be True or False"),
])
def test_invalid_hyper_parameters_fail_in_fit(regression_data, params, error, match):
    X, y = regression_data
    model = LGMRegressor(**params)  # stored verbatim, not checked
    assert model.get_params()[next(iter(params))] is next(iter(params.values()))
    with pytest.raises(error, match=match):
        model.fit(X, y)


def test_divergence_warns_and_keeps_finite_parameters(regression_data):
    X, y = regression_data
    model = LGMRegressor(solver="sgd", momentum=0.0, learning_rate_init=1e6, batch_size=None,
                         max_iter=50, n_iter_no_change=50, random_state=0)
    with pytest.warns(lgmstm.DivergenceWarning):
        model.fit(X, y)
    assert model.n_iter_ < 50  # measured 20: stopped at the divergence
    assert np.isfinite(model.predict(X)).all()


def test_clone_of_fitted_is_unfitted(regression_data):
    X, y = regression_data
    fitted = LGMRegressor(max_iter=1).fit(X, y)
    with pytest.raises(NotFittedError):
        clone(fitted).predict(X)


def test_import_error_names_the_extra(monkeypatch):
    # None in sys.modules makes an import fail, as if scikit-learn were absent.
    for name in [name for name in sys.modules if name.split(".")[0] == "sklearn"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "lgmstm.sklearn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImportError, match=r"lgmstm\[sklearn\]"):
            importlib.import_module("lgmstm.sklearn")


def test_interrupted_fit_keeps_finished_epochs(regression_data, monkeypatch):
    X, y = regression_data
    original_fit = lgmstm.LGM.fit

    def interrupted_fit(self, *args, **kwargs):
        # Two epochs run, then Ctrl-C arrives (LGM's own handling is tested with LGM).
        kwargs["callback"] = lambda epoch, loss: epoch < 1
        original_fit(self, *args, **kwargs)
        raise lgmstm.TrainingInterrupted(self.history_)

    monkeypatch.setattr(lgmstm.LGM, "fit", interrupted_fit)
    model = LGMRegressor(max_iter=50)
    with pytest.raises(lgmstm.TrainingInterrupted):
        model.fit(X, y)
    assert model.n_iter_ == 2
    assert model.predict(X).shape == (60,)


def test_failed_fit_leaves_estimator_unfitted(regression_data):
    X, y = regression_data
    model = LGMRegressor(max_iter=1).fit(X, y)
    with pytest.raises(ValueError):
        model.set_params(max_iter=-1).fit(X[:, :2], y)
    with pytest.raises(NotFittedError):
        model.predict(X)
