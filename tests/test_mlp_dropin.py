"""LGMRegressor and LGMClassifier as drop-ins for scikit-learn's MLPRegressor
and MLPClassifier: the MLP hyper-parameter names and defaults, alpha against
scikit-learn's own update, coefs_/intercepts_, scikit-learn's stopping rules
against a hand count on the loss curve, the (stratified) validation split of
early stopping and the epoch it restores, files of the estimators from before
the MLP names, and the bad input."""
import functools
import os
import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn", minversion="1.6")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import load_iris  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402

import lgmstm  # noqa: E402
from lgmstm.sklearn import LGMClassifier, LGMRegressor  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")
MLP_NAMES = ["hidden_layer_sizes", "activation", "solver", "alpha", "batch_size",
             "learning_rate", "learning_rate_init", "power_t", "max_iter", "shuffle",
             "random_state", "tol", "verbose", "warm_start", "momentum", "nesterovs_momentum",
             "early_stopping", "validation_fraction", "beta_1", "beta_2", "epsilon",
             "n_iter_no_change", "max_fun"]


@pytest.fixture
def regression():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    Y = np.column_stack([np.sin(X[:, 0]) + 0.5 * X[:, 1], X[:, 2] ** 2 - 1])
    return X, Y


@pytest.mark.parametrize("ours, theirs", [(LGMRegressor, MLPRegressor),
                                          (LGMClassifier, MLPClassifier)])
def test_mlp_names_and_defaults(ours, theirs):
    params, mlp = ours().get_params(), theirs(activation="tanh").get_params()
    assert set(MLP_NAMES) <= set(params)
    for name in MLP_NAMES:
        assert params[name] == mlp[name], name
    # The same names, the same positions: a user replaces the import.
    assert ours((7,), "tanh").get_params()["hidden_layer_sizes"] == (7,)
    if ours is LGMRegressor:
        assert params["loss"] == mlp["loss"] == "squared_error"


def _three_epochs(Estimator, X, y, **settings):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return Estimator(hidden_layer_sizes=(4,), max_iter=3, random_state=0, **settings).fit(
            X, y)


@pytest.mark.parametrize("target", ["one-output", "two-outputs", "two-classes", "three-classes",
                                    "multi-label"])
def test_loss_and_n_outputs_are_scikit_learns(target):
    X, y = load_iris(return_X_y=True)
    y = {"one-output": X[:, 0], "two-outputs": X[:, :2], "two-classes": y == 2,
         "three-classes": y, "multi-label": np.column_stack([y == 0, X[:, 1] > 3]).astype(int)
         }[target]
    X = X[:, 1:]
    ours, theirs = ((LGMRegressor, MLPRegressor) if target.endswith(("output", "outputs"))
                    else (LGMClassifier, MLPClassifier))
    assert not hasattr(ours(), "loss_") and not hasattr(theirs(), "loss_")
    assert not hasattr(ours(), "n_outputs_") and not hasattr(theirs(), "n_outputs_")
    mine = _three_epochs(ours, X, y)
    expected = _three_epochs(theirs, X, y, activation="tanh")
    # n_outputs_: the output units (for a classifier 1 up to two classes).
    assert mine.n_outputs_ == expected.n_outputs_ == mine.lgm_.layer_sizes[-1]
    assert type(mine.n_outputs_) is int
    # loss_: the last epoch's training loss, as scikit-learn's is its loss_curve_[-1].
    assert expected.loss_ == expected.loss_curve_[-1]
    assert mine.loss_ == mine.loss_curve_[-1] and type(mine.loss_) is float
    mine.partial_fit(X, y)
    assert len(mine.loss_curve_) == 4 and mine.loss_ == mine.loss_curve_[-1]
    assert mine.loss_ != mine.loss_curve_[-2]


def test_regressor_loss_is_squared_error_only(regression):
    X, Y = regression
    plain = _three_epochs(LGMRegressor, X, Y)
    named = _three_epochs(LGMRegressor, X, Y, loss="squared_error")
    np.testing.assert_array_equal(named.loss_curve_, plain.loss_curve_, strict=True)
    with pytest.raises(ValueError, match="loss='poisson' is not available: LGMRegressor "
                                         "trains the squared error only"):
        LGMRegressor(loss="poisson").fit(X, Y)
    with pytest.raises(ValueError, match="loss must be one of 'squared_error'; got 'absolute'"):
        LGMRegressor(loss="absolute").partial_fit(X, Y)
    with pytest.raises(ValueError):  # scikit-learn refuses it too
        MLPRegressor(loss="absolute").fit(X, Y)
    # Keyword-only: the first positional argument stays hidden_layer_sizes.
    with pytest.raises(TypeError):
        LGMRegressor((7,), "tanh", "squared_error")


@pytest.mark.parametrize("Estimator", [LGMRegressor, LGMClassifier])
def test_max_fun_is_checked_and_has_no_effect(Estimator):
    X, y = load_iris(return_X_y=True)
    plain = _three_epochs(Estimator, X, y)
    once = _three_epochs(Estimator, X, y, max_fun=1)
    np.testing.assert_array_equal(once.loss_curve_, plain.loss_curve_, strict=True)
    for mine, other in zip(once.coefs_, plain.coefs_):
        np.testing.assert_array_equal(mine, other, strict=True)
    with pytest.raises(ValueError, match="max_fun must be >= 1, got 0"):
        Estimator(max_fun=0).fit(X, y)
    with pytest.raises(TypeError, match="max_fun must be an integer >= 1, got"):
        Estimator(max_fun=1.5).fit(X, y)


def test_pickles_from_before_loss_and_max_fun_take_their_defaults(regression):
    X, Y = regression
    for estimator, y in ((_three_epochs(LGMRegressor, X, Y), Y),
                         (_three_epochs(LGMClassifier, X, Y[:, 0] > 0), Y[:, 0] > 0)):
        state = dict(estimator.__getstate__())  # a copy: it may be vars(estimator)
        for name in ("max_fun", "loss"):
            state.pop(name, None)
        older = type(estimator).__new__(type(estimator))
        older.__setstate__(state)
        assert older.get_params() == estimator.get_params()
        np.testing.assert_array_equal(clone(older).fit(X, y).predict(X),
                                      clone(estimator).fit(X, y).predict(X), strict=True)


def _same_start(X, Y, dtype=np.float64, **settings):
    """Our regressor and scikit-learn's, fitted once and then set to the same
    weights (ours, from its first fit) and fresh optimizers, ready for
    partial_fit."""
    ours = LGMRegressor(standardize_y=False, max_iter=1, random_state=0, shuffle=False,
                        dtype=dtype, **settings)
    theirs = MLPRegressor(activation="tanh", max_iter=1, random_state=0, shuffle=False,
                          **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, Y)
        theirs.fit(X, Y)
    theirs.coefs_ = [w.astype(np.float64) for w in ours.coefs_]
    theirs.intercepts_ = [b.astype(np.float64) for b in ours.intercepts_]
    # Both optimizers start afresh (no velocity, Adam's step 0) at the next call.
    del theirs._optimizer
    ours.lgm_.reset_optimizer()
    return ours, theirs


@pytest.mark.parametrize("batch_size", [40, 10])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_alpha_and_sgd_steps_are_scikit_learns(regression, batch_size, momentum):
    # scikit-learn adds alpha / (2 n_batch) * sum(W**2) to half the squared
    # error summed over outputs: one epoch of its own SGD from the same
    # weights is the oracle (two outputs, so the loss scale 2 / n_outputs
    # matters; batches of 10 make 4 steps, with Nesterov's momentum at 0.9).
    X, Y = regression
    settings = dict(hidden_layer_sizes=(5, 4), solver="sgd", alpha=0.7, momentum=momentum,
                    learning_rate_init=0.05, batch_size=batch_size)
    ours, theirs = _same_start(X, Y, **settings)
    ours.partial_fit(X, Y)
    # scikit-learn's epoch, one batch at a time (partial_fit on a batch is
    # one step, its optimizer going on), each batch's half squared error
    # measured on the weights it starts from: what an epoch's loss is, the
    # mean of its batches' losses before their steps, without alpha's
    # penalty (scikit-learn's loss_curve_ adds it). The steps agree to
    # rounding, so the losses do too.
    batch_losses = []
    for start in range(0, len(X), batch_size):
        X_batch, Y_batch = X[start:start + batch_size], Y[start:start + batch_size]
        batch_losses.append(0.5 * np.mean((Y_batch - theirs.predict(X_batch)) ** 2))
        theirs.partial_fit(X_batch, Y_batch)
    for mine, expected in zip(ours.coefs_ + ours.intercepts_,
                              theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(mine, expected, rtol=1e-12, atol=1e-14)
    assert ours.loss_curve_[-1] == pytest.approx(np.mean(batch_losses), rel=1e-12)
    assert ours.loss_ == ours.loss_curve_[-1]


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("solver", ["sgd", "adam"])
def test_classifier_log_loss_steps_are_scikit_learns(n_classes, solver):
    # The log-loss (logistic for two classes, softmax for more) and alpha on
    # mini-batches: one epoch of scikit-learn's own from the same weights.
    X, y = load_iris(return_X_y=True)
    X, y = X[y < n_classes], y[y < n_classes]
    settings = dict(hidden_layer_sizes=(5,), solver=solver, alpha=0.5, batch_size=25,
                    learning_rate_init=0.05, max_iter=1, random_state=0, shuffle=False)
    ours = LGMClassifier(**settings)
    theirs = MLPClassifier(activation="tanh", **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours.fit(X, y)
        theirs.fit(X, y)
    assert ours.out_activation_ == theirs.out_activation_
    theirs.coefs_, theirs.intercepts_ = ours.coefs_, ours.intercepts_
    del theirs._optimizer
    ours.lgm_.reset_optimizer()
    ours.partial_fit(X, y)
    theirs.partial_fit(X, y)
    # Adam: scikit-learn's epsilon weighs on the smallest gradients (see above).
    tolerance = dict(rtol=1e-12, atol=1e-14) if solver == "sgd" else dict(rtol=0, atol=1e-4)
    for mine, expected in zip(ours.coefs_ + ours.intercepts_,
                              theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(mine, expected, **tolerance)
    np.testing.assert_allclose(ours.predict_proba(X), theirs.predict_proba(X),
                               **tolerance)
    np.testing.assert_allclose(ours.predict_log_proba(X), np.log(theirs.predict_proba(X)),
                               rtol=1e-6 if solver == "sgd" else 1e-3)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))


def test_multi_label_indicator_trains_a_sigmoid_per_label():
    X, y = load_iris(return_X_y=True)
    Y = np.column_stack([y == 0, y == 2, X[:, 0] > 5.8]).astype(int)
    model = LGMClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.01,
                          random_state=0).fit(X, Y)
    assert model.out_activation_ == "logistic" and model.lgm_.layer_sizes == (4, 8, 3)
    np.testing.assert_array_equal(model.classes_, [0, 1, 2])
    proba = model.predict_proba(X)
    assert proba.shape == (150, 3)
    np.testing.assert_array_equal(model.predict(X), (proba > 0.5).astype(int))
    np.testing.assert_allclose(np.exp(model.predict_log_proba(X)), proba, rtol=1e-12)
    assert model.score(X, Y) > 0.6  # subset accuracy; measured 0.8
    with pytest.raises(ValueError, match="was fitted with one"):
        model.set_params(warm_start=True).fit(X, y)


def test_alpha_with_adam_is_scikit_learns(regression):
    # Adam's step does not change when the loss is scaled, up to epsilon,
    # which scikit-learn puts in its denominator before the bias correction.
    X, Y = regression
    ours, theirs = _same_start(X, Y, hidden_layer_sizes=(6,), alpha=3.0, batch_size=10,
                               learning_rate_init=0.01)
    undecayed = clone(ours).set_params(alpha=0.0)
    undecayed.fit(X, Y)
    undecayed.coefs_, undecayed.intercepts_ = ours.coefs_, ours.intercepts_
    undecayed.lgm_.reset_optimizer()
    for _ in range(3):
        for model in (ours, theirs, undecayed):
            model.partial_fit(X, Y)
    for mine, expected, without in zip(ours.coefs_ + ours.intercepts_,
                                       theirs.coefs_ + theirs.intercepts_,
                                       undecayed.coefs_ + undecayed.intercepts_):
        np.testing.assert_allclose(mine, expected, rtol=0, atol=2e-6)
    # alpha moved the weights much further than that.
    assert np.abs(ours.coefs_[0] - undecayed.coefs_[0]).max() > 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_coefs_and_intercepts_shapes_and_round_trip(regression, dtype):
    X, Y = regression
    model = LGMRegressor(hidden_layer_sizes=(5, 4), max_iter=3, dtype=dtype,
                         random_state=0).fit(X, Y)
    assert [w.shape for w in model.coefs_] == [(3, 5), (5, 4), (4, 2)]
    assert [b.shape for b in model.intercepts_] == [(5,), (4,), (2,)]
    assert all(a.dtype == dtype for a in model.coefs_ + model.intercepts_)
    assert model.out_activation_ == "identity" and model.n_layers_ == 4
    rng = np.random.default_rng(1)
    coefs = [rng.uniform(-1, 1, w.shape) for w in model.coefs_]
    intercepts = [rng.uniform(-1, 1, b.shape) for b in model.intercepts_]
    model.coefs_, model.intercepts_ = coefs, intercepts
    for got, want in zip(model.coefs_ + model.intercepts_, coefs + intercepts):
        np.testing.assert_array_equal(got, want.astype(dtype))
    # The oracle: scikit-learn's forward pass of these weights, in the
    # network's dtype, mapped back to the target's units.
    hidden = X.astype(dtype)
    for W, b in zip(coefs[:-1], intercepts[:-1]):
        hidden = np.tanh(hidden @ W.astype(dtype) + b.astype(dtype))
    outputs = hidden @ coefs[-1].astype(dtype) + intercepts[-1].astype(dtype)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(model.predict(X), outputs * model.y_scale_ + model.y_mean_,
                               rtol=tolerance, atol=tolerance)
    # What coefs_ gives back, set again, changes nothing.
    before = model.predict(X)
    model.coefs_, model.intercepts_ = model.coefs_, model.intercepts_
    np.testing.assert_array_equal(model.predict(X), before)


def test_coefs_checked_and_absent_before_fit(regression):
    X, Y = regression
    model = LGMRegressor(hidden_layer_sizes=(5,))
    assert not hasattr(model, "coefs_") and not hasattr(model, "intercepts_")
    model.set_params(max_iter=1).fit(X, Y)
    with pytest.raises(ValueError, match="coefs_ must be a list of 2 arrays"):
        model.coefs_ = model.coefs_[:1]
    with pytest.raises(ValueError, match=r"layer1\.weight.*\(5, 2\)"):
        model.coefs_ = [model.coefs_[0], np.zeros((5, 3))]
    with pytest.raises(ValueError, match="layer0.bias"):
        model.intercepts_ = [np.full(5, np.nan), model.intercepts_[1]]


def _sklearn_stop(losses, tol, n_iter_no_change):
    """The epoch count after which scikit-learn's loop stops on these
    training losses (its _update_no_improvement_count), or None."""
    best, count = np.inf, 0
    for epoch, loss in enumerate(losses):
        count = count + 1 if loss > best - tol else 0
        best = min(best, loss)
        if count > n_iter_no_change:
            return epoch + 1
    return None


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch_size", [None, 8])
def test_training_loss_plateau_stops_as_scikit_learn(regression, dtype, batch_size, backend,
                                                     solver):
    # A new fit at a constant rate: the network's fit applies the rule
    # (LGM.fit's stop_on_plateau), in one compiled call.
    X, Y = regression
    settings = dict(hidden_layer_sizes=(6,), batch_size=batch_size, learning_rate_init=0.01,
                    dtype=dtype, random_state=0, backend=backend, solver=solver)
    never = LGMRegressor(max_iter=150, n_iter_no_change=10**6, tol=1e-3, **settings)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(150\) reached"):
        never.fit(X, Y)
    stop = _sklearn_stop(never.loss_curve_, 1e-3, 4)
    assert stop is not None and stop < 150
    model = LGMRegressor(max_iter=150, n_iter_no_change=4, tol=1e-3, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # it stopped: no warning
        model.fit(X, Y)
    assert model.n_iter_ == stop and model.t_ == stop * len(X)
    np.testing.assert_array_equal(model.loss_curve_, never.loss_curve_[:stop], strict=True)
    assert model.best_loss_ == float(never.loss_curve_[:stop].min())
    assert model.validation_scores_ is None and model.best_validation_score_ is None
    # It stopped there and kept that epoch's network: the same as max_iter=stop.
    straight = LGMRegressor(max_iter=stop, n_iter_no_change=10**6, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        straight.fit(X, Y)
    np.testing.assert_array_equal(model.predict(X), straight.predict(X), strict=True)


def threaded_regressor():
    """An early-stopping fit whose batches run on more than one thread:
    4000 samples 16 -> 64 -> 10 in batches of 2000 (the panel layout's two
    sample groups; below MIN_PARALLEL_WORK flops per region,
    csrc/lgmstm/_parallel.pxd, any setting would run one thread), alpha's
    decay on."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((4000, 16))
    Y = np.tanh(X @ rng.standard_normal((16, 10)) / 4) + 0.3 * rng.standard_normal((4000, 10))
    model = LGMRegressor(hidden_layer_sizes=(64,), early_stopping=True, max_iter=30,
                         n_iter_no_change=2, batch_size=2000, learning_rate_init=0.01,
                         random_state=0, alpha=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return model.fit(X, Y)


def test_same_bits_for_any_thread_count(threads, starts_a_second_thread):
    results = []
    for n_threads in (1, 2, 3):
        with threads(n_threads):
            model = threaded_regressor()
        results.append((model.loss_curve_, model.validation_scores_, *model.coefs_))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b, strict=True)
    assert starts_a_second_thread("test_mlp_dropin", "threaded_regressor()")


# Adam, and SGD with "invscaling" (a rate per epoch from the samples seen):
# the network's own early stopping, in one compiled call.
@pytest.mark.parametrize("settings", [
    dict(learning_rate_init=0.01),
    dict(solver="sgd", learning_rate="invscaling", learning_rate_init=0.5, momentum=0.0,
         power_t=0.25)])
def test_early_stopping_holds_out_a_stratified_split_and_restores_the_best(settings):
    X, y = load_iris(return_X_y=True)
    X = X[:, :2]  # the sepals only: the classes overlap, and the validation loss turns
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    keep = np.r_[0:50, 50:60, 100:150]  # 50 / 10 / 50: the small class must be in proportion
    X, y = X[keep], y[keep]
    model = LGMClassifier(hidden_layer_sizes=(8,), early_stopping=True, validation_fraction=0.2,
                          n_iter_no_change=3, tol=0.0, max_iter=500, batch_size=16,
                          random_state=3, **settings)
    model.fit(X, y)
    # The oracle split: scikit-learn's stratified split with the estimator's
    # random state, drawn first (as MLPClassifier does).
    _, X_val, _, y_val = train_test_split(X, y, test_size=0.2,
                                          random_state=np.random.RandomState(3), stratify=y)
    assert np.bincount(y_val).tolist() == [10, 2, 10]
    targets = (np.arange(3) == y_val[:, None]).astype(float)  # one-hot: the softmax's
    scores = model.validation_scores_
    assert scores.shape == (model.n_iter_,) and model.best_loss_ is None
    best = int(np.argmax(scores))
    # Stopped after 4 epochs (n_iter_no_change + 1) without a better score.
    assert model.n_iter_ == best + 1 + 4 < 500
    assert model.best_validation_score_ == scores[best]
    # The restored network is the best epoch's: its validation loss is that
    # score, to the bit (loss() runs the training loop's validation pass).
    assert -model.lgm_.loss(X_val, targets) == model.best_validation_score_
    assert not np.isclose(scores[best], scores[best + 1], rtol=1e-6, atol=0)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # max_iter=5
def test_warm_fits_with_early_stopping_carry_on_the_scores_and_keep_the_best_network(
        regression):
    """As scikit-learn: a warm fit's validation scores follow the earlier
    fits' (one per epoch, as loss_curve_), best_validation_score_ is their
    best, and the network kept is that best epoch's, also when it came from
    an earlier fit (a second fit at a rate that diverges leaves the network
    as the first fit left it, bit for bit)."""
    X, y = regression
    model = LGMRegressor(hidden_layer_sizes=(16,), max_iter=5, early_stopping=True,
                         warm_start=True, learning_rate_init=0.01, random_state=0)
    model.fit(X, y)
    assert model.n_iter_ == 5   # still improving: a better fit can follow
    first_scores = model.validation_scores_.copy()
    first_predictions = model.predict(X)
    first_best = model.best_validation_score_
    assert first_best == first_scores.max()
    model.set_params(learning_rate_init=1.0, max_iter=15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the bad rate's divergence and convergence
        model.fit(X, y)
    assert len(model.validation_scores_) == model.n_iter_ == len(model.loss_curve_)
    np.testing.assert_array_equal(model.validation_scores_[:len(first_scores)], first_scores)
    assert model.validation_scores_[len(first_scores):].max() < first_best
    assert model.best_validation_score_ == first_best == model.validation_scores_.max()
    np.testing.assert_array_equal(model.predict(X), first_predictions)
    # A warm fit that does better keeps its own best network and score.
    model.set_params(learning_rate_init=0.01, max_iter=60)
    model.fit(X, y)
    assert model.best_validation_score_ == model.validation_scores_.max() > first_best
    # partial_fit does not validate (scikit-learn's does not either): no score.
    n_scores = len(model.validation_scores_)
    model.partial_fit(X, y)
    assert len(model.validation_scores_) == n_scores == model.n_iter_ - 1


def test_mlp_argument_forms_scikit_learn_takes(regression, tmp_path, capsys):
    """Forms of arguments MLPRegressor takes that lgmstm took otherwise: a
    verbose count, hidden sizes as an array, one weight for every sample (the
    bits of that weight given per sample; up to rounding, the unweighted
    fit's at alpha=0), dtype=float (saved and loaded back as it was)."""
    X, Y = regression
    model = LGMRegressor(hidden_layer_sizes=np.array([4, 3]), max_iter=3, alpha=0.0,
                         verbose=2, dtype=float, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, Y, sample_weight=2.0)
        per_sample = clone(model).fit(X, Y, sample_weight=np.full(len(X), 2.0))
        unweighted = clone(model).fit(X, Y)
    assert "Iteration 3, loss = " in capsys.readouterr().out
    assert [w.shape for w in model.coefs_] == [(3, 4), (4, 3), (3, 2)]
    np.testing.assert_array_equal(model.predict(X), per_sample.predict(X))
    np.testing.assert_allclose(model.predict(X), unweighted.predict(X), rtol=1e-12, atol=1e-12)
    model.save(tmp_path / "m.npz")
    loaded = LGMRegressor.load(tmp_path / "m.npz")
    assert loaded.get_params()["dtype"] is float
    np.testing.assert_array_equal(loaded.hidden_layer_sizes, [4, 3], strict=True)
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    for params, error, match in [({"verbose": -1}, ValueError, "verbose must be >= 0"),
                                 ({"verbose": "yes"}, TypeError, "verbose"),
                                 ({"hidden_layer_sizes": np.array([[4]])}, ValueError,
                                  "hidden_layer_sizes must be an int or a sequence")]:
        with pytest.raises(error, match=match):
            clone(model).set_params(**params).fit(X, Y)
    with pytest.raises(ValueError, match="sample_weight must be >= 0"):
        clone(model).fit(X, Y, sample_weight=-1.0)


def test_schedules(regression):
    X, Y = regression
    settings = dict(hidden_layer_sizes=(5,), solver="sgd", momentum=0.0, alpha=0.0,
                    batch_size=None, shuffle=False, standardize_y=False, random_state=0)
    # invscaling: epoch e (0-based) runs at learning_rate_init / (t_ + 1) ** power_t,
    # t_ the samples seen before it (scikit-learn's); one full-batch step per epoch.
    model = LGMRegressor(learning_rate="invscaling", learning_rate_init=0.2, power_t=0.5,
                         max_iter=1, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, Y)
        expected = LGMRegressor(learning_rate_init=0.2, max_iter=1, **settings).fit(X, Y)
    for epoch in range(1, 4):
        rate = 0.2 / (epoch * len(X) + 1) ** 0.5
        before = expected.coefs_
        model.partial_fit(X, Y)
        expected.set_params(learning_rate_init=rate).partial_fit(X, Y)
        assert model.t_ == (epoch + 1) * len(X)
        for got, want in zip(model.coefs_, expected.coefs_):
            np.testing.assert_array_equal(got, want)
        assert not all(np.array_equal(a, b) for a, b in zip(before, expected.coefs_))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_invscaling_runs_at_scikit_learns_rates(regression, dtype, momentum):
    # scikit-learn's own rates: its optimizer's learning_rate before each
    # epoch (iteration_ends sets it from t_ after every epoch).
    X, Y = regression
    settings = dict(hidden_layer_sizes=(5,), solver="sgd", learning_rate_init=0.2,
                    momentum=momentum, alpha=0.0, batch_size=16, shuffle=False, random_state=0)
    theirs = MLPRegressor(activation="tanh", learning_rate="invscaling", power_t=0.25,
                          max_iter=1, **settings)
    rates = []
    for _ in range(6):
        rates.append(theirs._optimizer.learning_rate if rates else 0.2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            theirs.partial_fit(X, Y)
    assert rates[1:] == [0.2 / (epoch * len(X) + 1) ** 0.25 for epoch in range(1, 6)]
    # Ours in one compiled call (no plateau stops it in 6 epochs) against
    # one epoch per call at those rates (the loss scale 2 / n_outputs is 1
    # here, so the network's rates are the same numbers).
    model = LGMRegressor(learning_rate="invscaling", power_t=0.25, max_iter=6, tol=0.0,
                         n_iter_no_change=6, dtype=dtype, standardize_y=False, **settings)
    with pytest.warns(ConvergenceWarning, match="Maximum iterations"):
        model.fit(X, Y)
    expected = LGMRegressor(max_iter=1, dtype=dtype, standardize_y=False, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        expected.set_params(learning_rate_init=rates[0]).fit(X, Y)
    for rate in rates[1:]:
        expected.set_params(learning_rate_init=rate).partial_fit(X, Y)
    assert model.t_ == expected.t_ == 6 * len(X) and model.n_iter_ == 6
    np.testing.assert_array_equal(model.loss_curve_, expected.loss_curve_)
    for got, want in zip(model.coefs_ + model.intercepts_,
                         expected.coefs_ + expected.intercepts_):
        np.testing.assert_array_equal(got, want)
    # A warm start goes on with the clock: t_ = 6 n before its first epoch.
    model.set_params(warm_start=True, max_iter=2)
    with pytest.warns(ConvergenceWarning):
        model.fit(X, Y)
    for epoch in (6, 7):
        expected.set_params(learning_rate_init=0.2 / (epoch * len(X) + 1) ** 0.25)
        expected.partial_fit(X, Y)
    assert model.t_ == expected.t_
    np.testing.assert_array_equal(model.loss_curve_, expected.loss_curve_)
    for got, want in zip(model.coefs_, expected.coefs_):
        np.testing.assert_array_equal(got, want)


def test_adaptive_with_early_stopping_divides_on_validation_plateaus(regression, capsys):
    # tol=10: no validation epoch after the first improves enough, so every
    # 3 epochs the rate is divided by 5 while it is above 1e-6: 7 times
    # (0.05 / 5**7 = 6.4e-7; the loss scale is 1 with two outputs), then 3
    # more epochs and the stop, the best epoch's network restored.
    X, Y = regression
    model = LGMRegressor(hidden_layer_sizes=(5,), solver="sgd", learning_rate="adaptive",
                         learning_rate_init=0.05, tol=10.0, n_iter_no_change=2, max_iter=100,
                         early_stopping=True, verbose=True, random_state=0,
                         standardize_y=False)
    model.fit(X, Y)
    printed = capsys.readouterr().out
    assert printed.count("Setting learning rate to") == 7
    assert "Setting learning rate to 0.000003" in printed  # 0.05 / 5**6
    assert model.n_iter_ == 25 and "Validation score did not improve" in printed
    assert printed.index("Iteration 4,") < printed.index("Setting learning rate to 0.010000")
    assert printed.index("Setting learning rate to 0.010000") < printed.index("Iteration 5,")
    assert model.best_validation_score_ == max(model.validation_scores_)
    # The restored network is the best epoch's (scores in scikit-learn's
    # half squared error).
    _, X_val, _, Y_val = train_test_split(X, Y, test_size=0.1,
                                          random_state=np.random.RandomState(0))
    assert -0.5 * model.lgm_.loss(X_val, Y_val) == model.best_validation_score_


@pytest.mark.parametrize("early_stopping", [False, True])
def test_adaptive_floor_is_scikit_learns_with_one_output(early_stopping, capsys):
    """With one output, SGD's rate inside the network is learning_rate_init
    over the loss scale 2; the 1e-6 floor is scikit-learn's on
    learning_rate_init's scale all the same. tol=1e3: no epoch after the
    first improves, so every n_iter_no_change + 1 epochs the rate is divided
    by 5 while above 1e-6 (1e-3 -> ... -> 1.6e-6 -> 3.2e-7: 5 times), then
    the next plateau stops. scikit-learn's own run is the oracle: the same
    rates announced, in the same epochs."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = np.tanh(X @ rng.normal(size=4))
    settings = dict(hidden_layer_sizes=(3,), solver="sgd", learning_rate="adaptive",
                    learning_rate_init=1e-3, momentum=0.0, tol=1e3, n_iter_no_change=1,
                    max_iter=100, early_stopping=early_stopping, verbose=True,
                    random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        theirs = MLPRegressor(activation="tanh", **settings).fit(X, y)
        their_lines = capsys.readouterr().out.splitlines()
        ours = LGMRegressor(**settings).fit(X, y)
        our_lines = capsys.readouterr().out.splitlines()

    def rates(lines):
        """(epoch count so far, the rate announced) of each division
        (scikit-learn says why on the same line)."""
        epochs, found = 0, []
        for line in lines:
            if line.startswith("Iteration "):
                epochs += 1
            elif "Setting learning rate to " in line:
                found.append((epochs, line.split("Setting learning rate to ")[1]))
        return found

    assert len(rates(their_lines)) == 5
    assert rates(our_lines) == rates(their_lines)
    assert ours.n_iter_ == theirs.n_iter_


def test_adaptive_divides_the_rate_on_a_plateau(regression, capsys):
    X, Y = regression
    model = LGMRegressor(hidden_layer_sizes=(5,), solver="sgd", learning_rate="adaptive",
                         learning_rate_init=0.05, tol=10.0, n_iter_no_change=2, max_iter=100,
                         verbose=True, random_state=0)
    model.fit(X, Y)
    printed = capsys.readouterr().out
    # tol=10: no epoch after the first (better than no loss at all)
    # improves enough, so every 3 epochs the rate is divided by 5 while it
    # is above 1e-6: 7 times (0.05 / 5**7 = 6.4e-7), after 1 + 7 * 3 epochs,
    # then 3 more epochs and the stop.
    assert printed.count("Setting learning rate to") == 7
    assert "Setting learning rate to 0.000003" in printed  # 0.05 / 5**6
    assert model.n_iter_ == 25 and "Training loss did not improve" in printed


def test_grid_search_over_mlp_names():
    from sklearn.model_selection import GridSearchCV
    X, y = load_iris(return_X_y=True)
    search = GridSearchCV(LGMClassifier(hidden_layer_sizes=(4,), random_state=0),
                          {"alpha": [1e-4, 1.0], "learning_rate_init": [1e-3, 1e-2],
                           "solver": ["sgd", "adam"]}, cv=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, y)
    assert search.cv_results_["mean_test_score"].shape == (8,)
    assert set(search.best_params_) == {"alpha", "learning_rate_init", "solver"}


@pytest.mark.parametrize("params, match", [
    ({"solver": "lbfgs"}, "solver='lbfgs' is not available"),
    ({"validation_fraction": 0.0}, r"validation_fraction must be a number in \(0, 1\), got 0.0"),
    ({"validation_fraction": 1.5}, r"validation_fraction must be a number in \(0, 1\), got 1.5"),
    ({"batch_size": "all"}, "batch_size must be one of 'auto'"),
    ({"learning_rate": "optimal"}, "learning_rate must be one of"),
    ({"activation": "relu"}, "activation must be 'tanh', got 'relu'"),
    ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
])
@pytest.mark.parametrize("Estimator", [LGMRegressor, LGMClassifier])
def test_bad_hyper_parameters(Estimator, params, match):
    X, y = load_iris(return_X_y=True)
    with pytest.raises(ValueError, match=match):
        Estimator(**params).fit(X, y)
    # partial_fit checks them too.
    with pytest.raises(ValueError, match=match):
        if Estimator is LGMClassifier:
            Estimator(**params).partial_fit(X, y, classes=[0, 1, 2])
        else:
            Estimator(**params).partial_fit(X, y)


# -- files and pickles from before the MLP names --------------------------------------

@pytest.mark.parametrize("load", [
    "file",
    pytest.param("pickle", marks=pytest.mark.skipif(
        np.lib.NumpyVersion(np.__version__) < "2.0.0",
        reason="the pickle was written with numpy 2 (numpy._core), which numpy 1 cannot "
               "unpickle"))])
def test_estimators_saved_with_the_old_names_load(load):
    expected = np.load(os.path.join(DATA, "estimators-cfc702f-outputs.npz"))
    X = expected["X"]
    # Recorded with scipy-openblas 0.3.30; another BLAS (the oldest supported
    # scipy's) may round the last bit of a product otherwise.
    same = functools.partial(np.testing.assert_allclose, rtol=1e-12, atol=1e-15)
    if load == "file":
        regressor = lgmstm.load(os.path.join(DATA, "estimator-regressor-cfc702f.npz"))
        classifier = LGMClassifier.load(os.path.join(DATA, "estimator-classifier-cfc702f.npz"))
    else:
        with open(os.path.join(DATA, "estimators-cfc702f.pkl"), "rb") as f:
            saved = pickle.load(f)
        regressor, classifier = saved["regressor"], saved["classifier"]
    same(regressor.predict(X[:, :2]), expected["regressor_predict"])
    same(classifier.predict_proba(X), expected["classifier_predict_proba"])
    np.testing.assert_array_equal(classifier.predict(X), expected["classifier_predict"])
    # epochs=4, lr=0.01, optimizer="momentum" (heavy ball at 0.9) on 2 outputs:
    params = regressor.get_params()
    assert not {"epochs", "lr", "optimizer"} & set(params)
    assert (params["max_iter"], params["solver"], params["momentum"],
            params["nesterovs_momentum"], params["alpha"]) == (4, "sgd", 0.9, False, 0.0)
    assert params["learning_rate_init"] == 0.01  # 2 outputs: the same steps as lr=0.01
    assert params["n_iter_no_change"] == 4 and params["batch_size"] == 16
    assert classifier.get_params()["solver"] == "adam"
    assert classifier.out_activation_ == "tanh" and regressor.n_iter_ == 4
    # They go on training, with the settings they were made with.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        regressor.set_params(warm_start=True).fit(X[:, :2], X[:, 2:])
        classifier.partial_fit(X, expected["classifier_predict"])
    assert regressor.n_iter_ == 8 and classifier.n_iter_ == 4
    # and they are saved and read back with the new names.
    clone(regressor).fit(X[:, :2], X[:, 2:])


# -- sample_weight ------------------------------------------------------------------------


def _fit_quietly(estimator, *arguments, **keywords):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(*arguments, **keywords)


def test_sample_weight_steps_are_scikit_learns(regression):
    # One full-batch epoch of scikit-learn's own weighted SGD from the same
    # weights: the weighted mean loss, and alpha over the summed weight.
    X, Y = regression
    weights = np.random.default_rng(1).uniform(0.0, 3.0, len(X))
    settings = dict(hidden_layer_sizes=(5, 4), solver="sgd", alpha=0.7, momentum=0.9,
                    learning_rate_init=0.05, batch_size=len(X))
    ours, theirs = _same_start(X, Y, **settings)
    ours.partial_fit(X, Y, sample_weight=weights)
    theirs.partial_fit(X, Y, sample_weight=weights)
    for mine, expected in zip(ours.coefs_ + ours.intercepts_,
                              theirs.coefs_ + theirs.intercepts_):
        np.testing.assert_allclose(mine, expected, rtol=1e-12, atol=1e-14)


ESTIMATORS = {
    "regressor": (LGMRegressor, lambda X: np.column_stack([np.sin(X[:, 0]), X[:, 1] * X[:, 2]])),
    "classifier": (LGMClassifier, lambda X: (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5)),
    "binary": (LGMClassifier, lambda X: np.where(X[:, 0] > 0, "yes", "no")),
}


@pytest.mark.parametrize("kind", ESTIMATORS)
def test_sample_weight_repeats_and_drops_samples(kind, dtype):
    # Full batches: a weight of k is the sample k times, 0 leaves it out
    # (alpha included: scikit-learn divides it by the summed weight; the
    # regressor's standardised target is weighted likewise).
    Estimator, target = ESTIMATORS[kind]
    rng = np.random.default_rng(2)
    X = rng.standard_normal((30, 3))
    y = target(X)
    weights = rng.integers(0, 4, len(X))
    weights[:3] = [2, 0, 3]
    rows = np.repeat(np.arange(len(X)), weights)
    settings = dict(hidden_layer_sizes=(6,), batch_size=None, alpha=0.01, max_iter=30,
                    learning_rate_init=0.01, random_state=0, dtype=dtype)
    weighted = _fit_quietly(Estimator(**settings), X, y, sample_weight=weights)
    repeated = _fit_quietly(Estimator(**settings), X[rows], y[rows])
    # The same number of epochs (a plateau stops both at once), the same
    # network up to the summation order of the batch.
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=rtol)
    for mine, expected in zip(weighted.coefs_ + weighted.intercepts_,
                              repeated.coefs_ + repeated.intercepts_):
        np.testing.assert_allclose(mine, expected, rtol=rtol * 10, atol=rtol)
    # Unit weights are no weights, and other weights change the network.
    unit = _fit_quietly(Estimator(**settings), X, y, sample_weight=np.ones(len(X)))
    plain = _fit_quietly(Estimator(**settings), X, y)
    np.testing.assert_allclose(unit.coefs_[0], plain.coefs_[0], rtol=rtol * 10, atol=rtol)
    assert not np.allclose(weighted.coefs_[0], plain.coefs_[0], rtol=1e-3)


@pytest.mark.parametrize("kind", ESTIMATORS)
def test_partial_fit_takes_sample_weight(kind):
    Estimator, target = ESTIMATORS[kind]
    rng = np.random.default_rng(3)
    X = rng.standard_normal((20, 3))
    y = target(X)
    weights = rng.integers(0, 3, len(X))
    weights[0] = 2
    rows = np.repeat(np.arange(len(X)), weights)
    extra = {} if Estimator is LGMRegressor else {"classes": np.unique(y)}
    settings = dict(hidden_layer_sizes=(4,), batch_size=None, random_state=0)
    weighted, repeated = Estimator(**settings), Estimator(**settings)
    for _ in range(3):
        weighted.partial_fit(X, y, sample_weight=weights, **extra)
        repeated.partial_fit(X[rows], y[rows], **extra)
    np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=1e-12)
    np.testing.assert_allclose(weighted.coefs_[0], repeated.coefs_[0], rtol=1e-12, atol=1e-14)


def test_early_stopping_splits_the_weights_and_weighs_the_validation_loss():
    X, y = load_iris(return_X_y=True)
    X = (X[:, :2] - X[:, :2].mean(axis=0)) / X[:, :2].std(axis=0)
    weights = np.random.default_rng(4).uniform(0.2, 3.0, len(X))
    settings = dict(hidden_layer_sizes=(8,), early_stopping=True, validation_fraction=0.2,
                    n_iter_no_change=3, tol=0.0, max_iter=500, batch_size=16,
                    learning_rate_init=0.01, random_state=3)
    model = LGMClassifier(**settings).fit(X, y, sample_weight=weights)
    # The oracle split: scikit-learn's, the weights split with the samples
    # by the same permutation as without them.
    _, X_val, _, y_val, _, w_val = train_test_split(
        X, y, weights, test_size=0.2, random_state=np.random.RandomState(3), stratify=y)
    targets = (np.arange(3) == y_val[:, None]).astype(float)
    best = int(np.argmax(model.validation_scores_))
    assert model.n_iter_ == best + 1 + 4 < 500
    # The restored network's weighted validation loss is the best score, to the bit.
    assert -model.lgm_.loss(X_val, targets, sample_weight=w_val) == \
        model.best_validation_score_ == model.validation_scores_[best]
    assert -model.lgm_.loss(X_val, targets) != model.best_validation_score_
    # The training part keeps its weights (the same split and network
    # without them trains otherwise).
    unweighted = LGMClassifier(**settings).fit(X, y)
    assert unweighted.loss_curve_[0] != model.loss_curve_[0]


@pytest.mark.parametrize("Estimator", [LGMRegressor, LGMClassifier])
@pytest.mark.parametrize("weights, match", [
    (-np.ones(12), r"sample_weight must be >= 0, got sample_weight\[0\] = -1.0"),
    (np.r_[np.nan, np.ones(11)], "sample_weight must be finite"),
    (np.ones(13), r"sample_weight must have shape \(n_samples,\) = \(12,\), got \(13,\)"),
    (np.ones((12, 2)), r"sample_weight must have shape \(n_samples,\)"),
    (np.zeros(12), "sample_weight must not be all zero")])
def test_bad_sample_weight(Estimator, weights, match):
    X = np.random.default_rng(5).standard_normal((12, 2))
    y = np.arange(12) % 2
    with pytest.raises(ValueError, match=match):
        Estimator(max_iter=2).fit(X, y, sample_weight=weights)
    with pytest.raises(ValueError, match=match):
        Estimator().partial_fit(X, y, sample_weight=weights,
                                **({"classes": [0, 1]} if Estimator is LGMClassifier else {}))


def test_early_stopping_refuses_a_split_that_weighs_nothing():
    X = np.random.default_rng(6).standard_normal((20, 2))
    y = X[:, 0]
    weights = np.r_[np.ones(1), np.zeros(19)]
    with pytest.raises(ValueError, match="sample_weight: every sample of early stopping's"):
        LGMRegressor(early_stopping=True, random_state=0).fit(X, y, sample_weight=weights)
