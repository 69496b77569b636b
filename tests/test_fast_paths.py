"""The fast paths of one call from Python (LGM.predict, STM.step, the
estimators' predict) give the same bits as the converting, checked path
that every other input takes: lists, other dtypes, Fortran order, strided
views. The fast path only skips conversions and checks that would change
nothing."""
import threading
import warnings

import numpy as np
import pytest

import lgmstm


def converted_forms(x, dtype):
    """x in forms that must take the checked path, each equal in value."""
    forms = {"list": x.tolist(), "fortran": np.asfortranarray(x),
             "strided": np.repeat(x, 2, axis=1)[:, ::2]}
    if dtype == np.float32:  # float32 -> float64 keeps the values exactly
        forms["other dtype"] = x.astype(np.float64)
    return forms


@pytest.mark.parametrize("n_samples", [1, 7, 100])
def test_lgm_predict_fast_and_checked_paths_agree(dtype, n_samples, assert_close):
    model = lgmstm.LGM([10, 5, 2], dtype=dtype, seed=3)
    x = np.random.default_rng(1).standard_normal((n_samples, 10)).astype(dtype)
    fast = model.predict(x)
    assert fast.dtype == dtype and fast.flags.c_contiguous
    for name, form in converted_forms(x, dtype).items():
        np.testing.assert_array_equal(model.predict(form), fast, err_msg=name, strict=True)
    # The NumPy backend has no fast path; the compiled one agrees with it.
    reference = lgmstm.LGM([10, 5, 2], dtype=dtype, seed=3, backend="numpy").predict(x)
    assert_close(fast, reference)


@pytest.mark.parametrize("n_streams", [1, 64])
def test_stm_step_fast_and_checked_paths_agree(dtype, n_streams):
    rng = np.random.default_rng(2)
    xs = rng.standard_normal((6, n_streams, 4)).astype(dtype)
    fast_model = lgmstm.STM(4, 6, 3, dtype=dtype, seed=4)
    checked_model = lgmstm.STM(4, 6, 3, dtype=dtype, seed=4)
    for x in xs:
        fast = fast_model.step(x)
        checked = checked_model.step(x.tolist())
        np.testing.assert_array_equal(fast, checked, strict=True)
        np.testing.assert_array_equal(fast_model.state, checked_model.state, strict=True)


@pytest.mark.parametrize("n_hidden", [6, 48], ids=["panel", "blas"])
def test_stm_step_of_a_sequence_view_takes_the_fast_path(dtype, n_hidden):
    """step(X[:, t]), a strided view, is copied to C order by the fast path
    (not sent down the checked one), with the checked path's bits."""
    X = np.random.default_rng(5).standard_normal((7, 9, 4)).astype(dtype)
    fast_model = lgmstm.STM(4, n_hidden, 3, dtype=dtype, seed=4)
    checked_model = lgmstm.STM(4, n_hidden, 3, dtype=dtype, seed=4)
    for t in range(X.shape[1]):
        view = X[:, t]
        assert not view.flags.c_contiguous
        assert fast_model._network.step_ready(view, fast_model.state) is not None
        fast = fast_model.step(view)
        checked = checked_model.step(view.tolist())
        np.testing.assert_array_equal(fast, checked, strict=True)
        np.testing.assert_array_equal(fast_model.state, checked_model.state, strict=True)
    # Byte-swapped data is converted by the checked path, to the same values.
    assert fast_model._network.step_ready(X[:, 0].astype(dtype.newbyteorder()), None) is None


@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("n_samples", [1, 9])
def test_stm_predict_fast_and_checked_paths_agree(dtype, return_sequences, n_samples):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((n_samples, 5, 4)).astype(dtype)
    h0 = rng.uniform(-0.5, 0.5, (n_samples, 6)).astype(dtype)
    model = lgmstm.STM(4, 6, 3, return_sequences=return_sequences, dtype=dtype, seed=4)
    fast = model.predict(X)
    fast_from_h0, fast_final = model.predict(X, initial_state=h0, return_state=True)
    for name, form in {"list": X.tolist(), "fortran": np.asfortranarray(X),
                       "strided": np.repeat(X, 2, axis=2)[:, :, ::2]}.items():
        np.testing.assert_array_equal(model.predict(form), fast, err_msg=name, strict=True)
        outputs, final = model.predict(form, initial_state=h0.tolist(), return_state=True)
        np.testing.assert_array_equal(outputs, fast_from_h0, err_msg=name, strict=True)
        np.testing.assert_array_equal(final, fast_final, err_msg=name, strict=True)
    # lengths always take the checked path, and full lengths change nothing.
    np.testing.assert_array_equal(model.predict(X, lengths=[5] * n_samples), fast, strict=True)


def test_stateful_stm_predict_fast_and_checked_paths_agree(dtype):
    rng = np.random.default_rng(4)
    chunks = rng.standard_normal((3, 2, 4, 4)).astype(dtype)
    fast_model = lgmstm.STM(4, 6, 3, stateful=True, dtype=dtype, seed=4)
    checked_model = lgmstm.STM(4, 6, 3, stateful=True, dtype=dtype, seed=4)
    for X in chunks:
        np.testing.assert_array_equal(fast_model.predict(X), checked_model.predict(X.tolist()),
                                      strict=True)
        np.testing.assert_array_equal(fast_model.state, checked_model.state, strict=True)
    # The held state's number of streams is checked on either path.
    with pytest.raises(ValueError, match="reset_state"):
        fast_model.predict(chunks[0][:1].copy())
    _, final = fast_model.predict(chunks[0], return_state=True)
    final[...] = 7  # a copy: the kept state does not change
    assert not (fast_model.state == 7).any()


def test_estimator_predict_fast_and_checked_paths_agree():
    pytest.importorskip("sklearn", minversion="1.6")
    from lgmstm.sklearn import LGMRegressor

    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((60, 4)), rng.standard_normal(60)
    estimator = LGMRegressor(hidden_layer_sizes=(5,), max_iter=5, random_state=0).fit(X, y)
    fast = estimator.predict(X[:3])
    for name, form in converted_forms(X[:3], np.float64).items():
        np.testing.assert_array_equal(estimator.predict(form), fast, err_msg=name, strict=True)
    bad = X[:3].copy()
    bad[1, 2] = np.nan  # a NaN takes the checked path, which refuses it
    with pytest.raises(ValueError, match="NaN"):
        estimator.predict(bad)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_classifier_predictions_fast_and_checked_paths_agree(n_classes):
    pytest.importorskip("sklearn", minversion="1.6")
    from lgmstm.sklearn import LGMClassifier

    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((60, 4)), rng.integers(0, n_classes, 60)
    estimator = LGMClassifier(hidden_layer_sizes=(5,), max_iter=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 5 epochs do not converge
        estimator.fit(X, y)
    for method in ("predict_proba", "predict_log_proba", "predict"):
        fast = getattr(estimator, method)(X[:3])
        for name, form in converted_forms(X[:3], np.float64).items():
            np.testing.assert_array_equal(getattr(estimator, method)(form), fast,
                                          err_msg=f"{method} {name}", strict=True)


def test_a_training_thread_sends_readers_to_the_checked_path():
    # While another thread trains, the fast path must not read the
    # parameters: it returns None and the caller waits on the lock.
    model = lgmstm.LGM([10, 5, 2], seed=3)
    x = np.ones((1, 10))
    assert model._network.predict_ready(x) is not None
    started, release = threading.Event(), threading.Event()

    def callback(epoch, loss):
        started.set()
        release.wait(10)
        return False

    trainer = threading.Thread(target=lambda: model.fit(np.ones((4, 10)), np.zeros((4, 2)),
                                                        epochs=5, lr=0.1, callback=callback))
    trainer.start()
    try:
        assert started.wait(10)
        assert model._network.predict_ready(x) is None
    finally:
        release.set()
        trainer.join()
    assert model._network.predict_ready(x) is not None


@pytest.mark.parametrize("method", [lgmstm.LGM.fit, lgmstm.LGM.partial_fit, lgmstm.LGM.predict,
                                    lgmstm.STM.fit, lgmstm.STM.partial_fit, lgmstm.STM.predict,
                                    lgmstm.STM.step])
def test_public_calls_capture_no_variables_in_closures(method):
    """A variable that a lambda, nested function or comprehension in a method
    captures lives in a cell that Python allocates on every call, before the
    first line runs: in fit, seven of them cost the short fit about a fifth
    of a microsecond. The closures live in helper methods instead
    (_trainer_maker)."""
    assert method.__code__.co_cellvars == ()
