"""fit's training control: the validation loss per epoch (computed in the
compiled loop), early stopping that restores the best epoch exactly, and
the learning-rate schedules, against independent computations: the
model's own loss after each epoch, a fit of best_epoch_ + 1 epochs, and a
hand-written NumPy loop with the schedule's learning rates."""
import pickle

import numpy as np
import pytest

import lgmstm
from lgmstm._training import SampleClock

BACKENDS = ["cython", "numpy"]
# The validation loss is summed in the compiled loop's order, model.loss in
# NumPy's: equal up to rounding.
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}


def lgm_problem(rng, dtype, n=40, n_val=15, n_in=3, n_out=2):
    """Training targets at full scale, validation targets at a third of it:
    the validation loss falls, then rises as the outputs grow past them."""
    W = rng.normal(size=(n_in, n_out)) / np.sqrt(n_in / 3)
    X, X_val = rng.normal(size=(n, n_in)), rng.normal(size=(n_val, n_in))
    Y, Y_val = 0.9 * np.tanh(X @ W), 0.3 * np.tanh(X_val @ W)
    return [a.astype(dtype) for a in (X, Y, X_val, Y_val)]


def stm_problem(rng, dtype, return_sequences, n=24, n_val=10, n_steps=5, n_in=2, n_out=1):
    W = rng.normal(size=(n_in, n_out)) / np.sqrt(n_in / 2)
    X, X_val = rng.normal(size=(n, n_steps, n_in)), rng.normal(size=(n_val, n_steps - 1, n_in))

    def targets(X, scale):
        running = np.tanh(np.cumsum(X, axis=1) @ W / 2)
        return scale * (running if return_sequences else running[:, -1])

    lengths_val = rng.integers(1, n_steps, n_val)
    return [a.astype(dtype) for a in (X, targets(X, 0.9), X_val, targets(X_val, 0.3))] + [
        lengths_val]


MODELS = ["LGM", "STM-sequences", "STM-last"]


def make(kind, dtype, backend, seed=3):
    if kind == "LGM":
        return lgmstm.LGM([3, 6, 2], output="linear", dtype=dtype, backend=backend, seed=seed)
    return lgmstm.STM(2, 5, 1, output="linear", return_sequences=kind == "STM-sequences",
                      dtype=dtype, backend=backend, seed=seed)


def problem(kind, rng, dtype):
    """(X, Y, validation_data, loss keywords of the validation set)."""
    if kind == "LGM":
        X, Y, X_val, Y_val = lgm_problem(rng, dtype)
        return X, Y, (X_val, Y_val), {}
    X, Y, X_val, Y_val, lengths_val = stm_problem(rng, dtype, kind == "STM-sequences")
    return X, Y, (X_val, Y_val, lengths_val), {"lengths": lengths_val}


def validation_loss(model, validation_data):
    X_val, Y_val, *lengths = validation_data
    return model.loss(X_val, Y_val, **({"lengths": lengths[0]} if lengths else {}))


def assert_same_state(a, b):
    """The same parameters and optimizer state, bit for bit."""
    for name, value in a.params.items():
        np.testing.assert_array_equal(value, b.params[name], strict=True, err_msg=name)
    sa, sb = a._optimizer_state, b._optimizer_state
    assert sa.step == sb.step and sa.name == sb.name
    for moments_a, moments_b in zip(sa.moments, sb.moments):
        for ma, mb in zip(moments_a, moments_b):
            np.testing.assert_array_equal(ma, mb, strict=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", MODELS)
def test_validation_loss_per_epoch_is_the_loss_after_that_epoch(kind, backend, dtype, rng):
    X, Y, validation_data, _ = problem(kind, rng, dtype)
    arguments = dict(lr=0.05, batch_size=7, optimizer="adam", shuffle=False)
    model = make(kind, dtype, backend)
    history = model.fit(X, Y, epochs=6, validation_data=validation_data, **arguments)
    assert model.validation_history_.dtype == np.float64
    assert model.validation_history_.shape == history.shape == (6,)
    stepwise = make(kind, dtype, backend)
    expected, losses = [], []
    for _ in range(6):
        losses.append(stepwise.fit(X, Y, epochs=1, warm_start=True, **arguments)[0])
        expected.append(validation_loss(stepwise, validation_data))
    np.testing.assert_array_equal(model.validation_history_, expected)
    # Validating changes nothing in training.
    np.testing.assert_array_equal(history, losses)
    assert_same_state(model, stepwise)
    assert model.best_epoch_ == int(np.argmin(model.validation_history_))


@pytest.mark.parametrize("kind", MODELS)
def test_validation_history_is_empty_without_validation(kind, rng):
    X, Y, _, _ = problem(kind, rng, np.float64)
    model = make(kind, np.float64, "cython")
    model.fit(X, Y, epochs=3, lr=0.1)
    assert model.validation_history_.shape == (0,) and model.best_epoch_ is None
    model.partial_fit(X, Y, lr=0.1)
    assert model.validation_history_.shape == (0,) and model.best_epoch_ is None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", MODELS)
def test_early_stopping_restores_the_best_epoch_exactly(kind, backend, dtype, rng):
    X, Y, validation_data, _ = problem(kind, rng, dtype)
    arguments = dict(lr=0.02, batch_size=8, optimizer="adam", shuffle=False)
    model = make(kind, dtype, backend)
    history = model.fit(X, Y, epochs=400, validation_data=validation_data,
                        early_stopping=True, patience=4, tol=0.0, **arguments)
    best = model.best_epoch_
    # It stopped patience epochs after the best one, which is inside the fit.
    assert 0 < best and len(history) == best + 5 < 400
    assert model.validation_history_.shape == history.shape
    assert best == int(np.argmin(model.validation_history_))
    reference = make(kind, dtype, backend)
    reference_history = reference.fit(X, Y, epochs=best + 1, **arguments)
    np.testing.assert_array_equal(history[: best + 1], reference_history)
    assert_same_state(model, reference)
    # The restored model's loss is the best validation loss, to the bit:
    # loss() runs the training loop's own validation pass.
    assert validation_loss(model, validation_data) == model.validation_history_[best]
    assert validation_loss(model, validation_data) == model.validation_history_.min()


@pytest.mark.parametrize("kind", MODELS)
def test_early_stopping_state_carries_across_blocks(kind, rng):
    """A callback makes every block one epoch: the best parameters and the
    stale count go from block to block, and the result is the same."""
    X, Y, validation_data, _ = problem(kind, rng, np.float64)
    arguments = dict(lr=0.02, batch_size=8, optimizer="adam", shuffle=False, epochs=400,
                     validation_data=validation_data, early_stopping=True, patience=4, tol=0.0)
    whole, per_epoch = make(kind, np.float64, "cython"), make(kind, np.float64, "cython")
    seen = []
    history = whole.fit(X, Y, **arguments)
    per_epoch_history = per_epoch.fit(X, Y, callback=lambda epoch, loss: seen.append(epoch),
                                      **arguments)
    np.testing.assert_array_equal(history, per_epoch_history)
    np.testing.assert_array_equal(whole.validation_history_, per_epoch.validation_history_)
    assert whole.best_epoch_ == per_epoch.best_epoch_
    assert seen == list(range(len(history)))
    assert_same_state(whole, per_epoch)


@pytest.mark.parametrize("backend", BACKENDS)
def test_early_stopping_without_a_stop_ends_on_the_best_epoch(backend, rng):
    X, Y, validation_data, _ = problem("LGM", rng, np.float64)
    arguments = dict(lr=0.02, batch_size=8, optimizer="adam", shuffle=False)
    model = make("LGM", np.float64, backend)
    history = model.fit(X, Y, epochs=60, validation_data=validation_data, early_stopping=True,
                        patience=1000, **arguments)
    assert len(history) == 60 and model.best_epoch_ < 59
    reference = make("LGM", np.float64, backend)
    reference.fit(X, Y, epochs=model.best_epoch_ + 1, **arguments)
    assert_same_state(model, reference)


@pytest.mark.parametrize("kind", MODELS)
def test_validation_fraction_holds_out_the_last_of_a_permutation(kind, rng):
    X, Y, _, _ = problem(kind, rng, np.float64)
    n = X.shape[0]
    model = make(kind, np.float64, "cython")
    model.fit(X, Y, epochs=3, lr=0.05, shuffle=False, validation_fraction=0.25, seed=11)
    permutation = np.random.default_rng(11).permutation(n)
    n_held = int(np.ceil(0.25 * n))
    rows, held = np.sort(permutation[: n - n_held]), np.sort(permutation[n - n_held:])
    reference = make(kind, np.float64, "cython")
    reference.fit(X[rows], Y[rows], epochs=3, lr=0.05, shuffle=False,
                  validation_data=(X[held], Y[held]))
    np.testing.assert_array_equal(model.history_, reference.history_)
    np.testing.assert_array_equal(model.validation_history_, reference.validation_history_)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("schedule", ["invscaling", SampleClock(40)])
def test_compiled_and_numpy_backends_agree(kind, schedule, rng):
    X, Y, validation_data, _ = problem(kind, rng, np.float64)
    arguments = dict(lr=0.05, batch_size=6, optimizer="momentum", shuffle=False, epochs=300,
                     validation_data=validation_data, early_stopping=True, patience=3,
                     lr_schedule=schedule, power_t=0.25)
    compiled, numpy_ = make(kind, np.float64, "cython"), make(kind, np.float64, "numpy")
    compiled.fit(X, Y, **arguments)
    numpy_.fit(X, Y, **arguments)
    assert compiled.best_epoch_ == numpy_.best_epoch_
    np.testing.assert_allclose(compiled.history_, numpy_.history_, rtol=1e-10)
    np.testing.assert_allclose(compiled.validation_history_, numpy_.validation_history_,
                               rtol=1e-10)
    for name, value in compiled.params.items():
        np.testing.assert_allclose(value, numpy_.params[name], rtol=1e-9, atol=1e-12)


# -- schedules against a hand-written loop --------------------------------------------


def linear_problem(rng, n=12):
    X = rng.normal(size=(n, 2))
    Y = X @ np.array([[0.5], [-1.0]]) + 0.25 + 0.1 * rng.normal(size=(n, 1))
    return X, Y


def hand_sgd(X, Y, W, b, epochs, batch_size, rates):
    """Plain SGD on mean((X W + b - Y)**2) per batch, the learning rate of
    update t (1-based) being rates(t), rates.end_epoch(loss) after each
    epoch; (W, b, the epoch losses)."""
    W, b, t, losses = W.copy(), b.copy(), 0, []
    for _ in range(epochs):
        total = 0.0
        for start in range(0, len(X), batch_size):
            x, y = X[start:start + batch_size], Y[start:start + batch_size]
            error = x @ W + b - y
            total += float(np.sum(error ** 2))
            t += 1
            lr = rates(t)
            W -= lr * (2 * x.T @ error / error.size)
            b -= lr * (2 * error.sum(axis=0) / error.size)
        losses.append(total / Y.size)
        rates.end_epoch(losses[-1])
        if rates.stopped:
            break
    return W, b, np.array(losses)


class InverseScaling:
    def __init__(self, lr, power_t):
        self.lr, self.power_t, self.stopped = lr, power_t, False

    def __call__(self, t):
        return self.lr / t ** self.power_t

    def end_epoch(self, loss):
        pass


class PlateauCount:
    """A constant rate, and the count of epochs in a row whose loss is above
    best - tol (scikit-learn's MLP rules on the training loss, as its
    _update_no_improvement_count writes them: a loss at best - tol is an
    improvement)."""

    def __init__(self, lr, patience, tol):
        self.lr, self.patience, self.tol = lr, patience, tol
        self.best, self.stale, self.stopped = np.inf, 0, False

    def __call__(self, t):
        return self.lr

    def count(self, loss):
        self.stale = self.stale + 1 if loss > self.best - self.tol else 0
        self.best = min(self.best, loss)


class Adaptive(PlateauCount):
    """scikit-learn's adaptive schedule on the training loss: after
    patience epochs that do not fall below best - tol, lr / 5 while lr >
    1e-6, else stop."""

    def end_epoch(self, loss):
        self.count(loss)
        if self.stale >= self.patience:
            self.stale = 0
            if self.lr <= 1e-6:
                self.stopped = True
            else:
                self.lr /= 5


class SampleClockRates:
    """scikit-learn's invscaling on its clock of samples seen: every update
    of an epoch at lr / (samples + 1)**power_t, samples those seen before
    the epoch (samples_before, then n_samples more each epoch)."""

    def __init__(self, lr, power_t, samples_before, n_samples):
        self.lr, self.power_t, self.samples = lr, power_t, samples_before
        self.n_samples, self.stopped = n_samples, False

    def __call__(self, t):
        return self.lr / (self.samples + 1) ** self.power_t

    def end_epoch(self, loss):
        self.samples += self.n_samples


def fitted_linear(backend, X, Y, **arguments):
    model = lgmstm.LGM([2, 1], output="linear", dtype=np.float64, backend=backend, seed=0)
    W, b = model.params["layer0.weight"], model.params["layer0.bias"]
    history = model.fit(X, Y, optimizer="sgd", shuffle=False, **arguments)
    return W, b, model, history


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("power_t", [0.5, 0.25, 1.0])
def test_invscaling_matches_a_hand_computation(backend, power_t, rng):
    X, Y = linear_problem(rng)
    W, b, model, history = fitted_linear(backend, X, Y, epochs=7, lr=0.2, batch_size=5,
                                         lr_schedule="invscaling", power_t=power_t)
    W_hand, b_hand, losses = hand_sgd(X, Y, W, b, 7, 5, InverseScaling(0.2, power_t))
    np.testing.assert_allclose(model.params["layer0.weight"], W_hand, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(model.params["layer0.bias"], b_hand, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(history, losses, rtol=1e-13)
    # The rate follows the optimizer's step count, which a warm start continues.
    warm = lgmstm.LGM([2, 1], output="linear", dtype=np.float64, backend=backend, seed=0)
    for _ in range(7):
        warm.fit(X, Y, epochs=1, lr=0.2, batch_size=5, optimizer="sgd", shuffle=False,
                 lr_schedule="invscaling", power_t=power_t, warm_start=True)
    np.testing.assert_allclose(warm.params["layer0.weight"], W_hand, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("power_t, samples_before", [(0.5, 0), (0.25, 30), (1.0, 7)])
def test_sample_clock_matches_a_hand_computation(backend, power_t, samples_before, rng):
    # The estimators' "invscaling" (scikit-learn's): a rate per epoch from
    # the samples seen, those before the fit included.
    X, Y = linear_problem(rng)
    W, b, model, history = fitted_linear(backend, X, Y, epochs=6, lr=0.2, batch_size=5,
                                         lr_schedule=SampleClock(samples_before),
                                         power_t=power_t)
    W_hand, b_hand, losses = hand_sgd(X, Y, W, b, 6, 5,
                                      SampleClockRates(0.2, power_t, samples_before, len(X)))
    np.testing.assert_allclose(model.params["layer0.weight"], W_hand, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(model.params["layer0.bias"], b_hand, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(history, losses, rtol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("optimizer", ["sgd", "momentum"])
def test_sample_clock_is_epochs_at_scikit_learns_rates(kind, dtype, backend, optimizer, rng):
    # One fit on the sample clock takes exactly the steps of one-epoch
    # fits at the constant rates lr / (samples seen + 1)**power_t.
    X, Y, _, _ = problem(kind, rng, dtype)
    arguments = dict(batch_size=7, optimizer=optimizer, shuffle=False)
    model = make(kind, dtype, backend)
    model.fit(X, Y, epochs=5, lr=0.05, lr_schedule=SampleClock(30), power_t=0.25, **arguments)
    by_hand, losses = make(kind, dtype, backend), []
    for epoch in range(5):
        losses.extend(by_hand.fit(X, Y, epochs=1, lr=0.05 / (30 + epoch * len(X) + 1) ** 0.25,
                                  warm_start=True, **arguments))
    np.testing.assert_array_equal(model.history_, losses)
    assert_same_state(model, by_hand)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adaptive_matches_a_hand_computation(backend, rng):
    X, Y = linear_problem(rng)
    # A tol this large: no epoch after the first counts as improving, so lr
    # falls every two epochs, and the first plateau at lr <= 1e-6 stops.
    W, b, model, history = fitted_linear(backend, X, Y, epochs=100, lr=0.05, batch_size=4,
                                         lr_schedule="adaptive", patience=2, tol=1e-2)
    W_hand, b_hand, losses = hand_sgd(X, Y, W, b, 100, 4, Adaptive(0.05, 2, 1e-2))
    assert len(history) == len(losses) < 100
    np.testing.assert_allclose(history, losses, rtol=1e-13)
    np.testing.assert_allclose(model.params["layer0.weight"], W_hand, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(model.params["layer0.bias"], b_hand, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_adaptive_stops_at_a_plateau_once_lr_is_at_most_1e_6(backend, rng):
    X, Y = linear_problem(rng)
    # Epoch 0 improves; 1, 2 and 3 do not (tol 10): lr 1e-5 -> 2e-6 -> 4e-7,
    # and the plateau at 4e-7 stops (scikit-learn's rule).
    _, _, model, history = fitted_linear(backend, X, Y, epochs=50, lr=1e-5,
                                         lr_schedule="adaptive", patience=1, tol=10.0)
    assert len(history) == 4


def threaded_fit(kind, stop_on_plateau=False, schedule="invscaling"):
    """A fit big enough that its batches run on more than one thread (the
    panel layout's sample groups: 4000 samples 16 -> 64 -> 10 in batches of
    2000; 256 sequences of 10 steps 6 -> 32 -> 10 in batches of 128), with
    a validation set and early stopping with schedule, or (LGM,
    stop_on_plateau) stop_on_plateau on the training loss. Below MIN_PARALLEL_WORK flops per region
    (csrc/lgmstm/_parallel.pxd) every setting would run one thread."""
    rng = np.random.default_rng(7)
    if kind == "LGM":
        X, Y, X_val, Y_val = lgm_problem(rng, np.float32, n=4000, n_val=1000, n_in=16, n_out=10)
        model = lgmstm.LGM([16, 64, 10], output="linear", dtype=np.float32, seed=3)
        validation_data, batch_size = (X_val, Y_val), 2000
    else:
        X, Y, X_val, Y_val, lengths_val = stm_problem(
            rng, np.float32, kind == "STM-sequences", n=256, n_val=64, n_steps=10, n_in=6,
            n_out=10)
        model = lgmstm.STM(6, 32, 10, output="linear", return_sequences=kind == "STM-sequences",
                           dtype=np.float32, seed=3)
        validation_data, batch_size = (X_val, Y_val, lengths_val), 128
    control = (dict(stop_on_plateau=True, tol=1e-3) if stop_on_plateau else
               dict(validation_data=validation_data, early_stopping=True,
                    lr_schedule=schedule, power_t=0.1))
    model.fit(X, Y, epochs=40, lr=0.05, batch_size=batch_size, optimizer="adam", patience=3,
              **control)
    return model


@pytest.mark.parametrize("schedule", ["invscaling", SampleClock(10_000)])
@pytest.mark.parametrize("kind", MODELS)
def test_same_bits_for_any_thread_count(kind, schedule, threads, starts_a_second_thread):
    results = []
    for n_threads in (1, 2, 3):
        with threads(n_threads):
            results.append(threaded_fit(kind, schedule=schedule))
    # Early stopping stopped the fit and restored an earlier epoch.
    assert results[0].best_epoch_ < len(results[0].history_) - 1
    for other in results[1:]:
        np.testing.assert_array_equal(other.history_, results[0].history_)
        np.testing.assert_array_equal(other.validation_history_,
                                      results[0].validation_history_)
        assert other.best_epoch_ == results[0].best_epoch_
        assert_same_state(other, results[0])
    assert starts_a_second_thread("test_validation_control", f"threaded_fit({kind!r})")


@pytest.mark.parametrize("kind", MODELS)
def test_pickle_keeps_the_validation_history(kind, rng):
    X, Y, validation_data, _ = problem(kind, rng, np.float64)
    model = make(kind, np.float64, "cython")
    model.fit(X, Y, epochs=5, lr=0.05, validation_data=validation_data)
    copy = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(copy.validation_history_, model.validation_history_,
                                  strict=True)
    assert copy.best_epoch_ == model.best_epoch_


def test_the_short_fit_declines_control_arguments(rng):
    """fit(epochs=1) with a schedule or validation takes the checked path,
    with the same result as the checked path's."""
    X, Y, validation_data, _ = problem("LGM", rng, np.float64)
    model = make("LGM", np.float64, "cython")
    model.fit(X, Y, epochs=1, lr=0.1, validation_data=validation_data)
    assert model.validation_history_.shape == (1,)
    assert model.validation_history_[0] == validation_loss(model, validation_data)


@pytest.mark.parametrize("kind", MODELS)
def test_save_and_load_keep_the_validation_history(kind, rng, tmp_path):
    X, Y, validation_data, _ = problem(kind, rng, np.float64)
    model = make(kind, np.float64, "cython")
    model.fit(X, Y, epochs=5, lr=0.05, validation_data=validation_data)
    model.save(tmp_path / "model.npz")
    loaded = lgmstm.load(tmp_path / "model.npz")
    np.testing.assert_array_equal(loaded.validation_history_, model.validation_history_,
                                  strict=True)
    assert loaded.best_epoch_ == model.best_epoch_ is not None
    # Without validation the file holds neither entry, and loads without.
    plain = make(kind, np.float64, "cython")
    plain.fit(X, Y, epochs=2, lr=0.05)
    plain.save(tmp_path / "plain.npz")
    assert "validation_history" not in np.load(tmp_path / "plain.npz").files
    loaded = lgmstm.load(tmp_path / "plain.npz")
    assert loaded.validation_history_.shape == (0,) and loaded.best_epoch_ is None


def test_load_refuses_a_best_epoch_outside_the_validation_history(rng, tmp_path):
    X, Y, validation_data, _ = problem("LGM", rng, np.float64)
    model = make("LGM", np.float64, "cython")
    model.fit(X, Y, epochs=3, lr=0.05, validation_data=validation_data)
    model.save(tmp_path / "model.npz")
    arrays = dict(np.load(tmp_path / "model.npz"))
    arrays["best_epoch"] = np.asarray(3, np.int64)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="best_epoch"):
        lgmstm.load(tmp_path / "bad.npz")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_divergence_keeps_the_last_finite_epoch_with_early_stopping(backend, rng):
    """A fit that diverges ends as without early stopping: on its last finite
    epoch (as the DivergenceWarning says), not on the best one."""
    X, Y = linear_problem(rng)
    arguments = dict(lr=2.0, optimizer="sgd", shuffle=False)
    model = lgmstm.LGM([2, 1], output="linear", dtype=np.float32, backend=backend, seed=0)
    with pytest.warns(lgmstm.DivergenceWarning):
        history = model.fit(X, Y, epochs=500, validation_data=(X, Y), early_stopping=True,
                            patience=1000, **arguments)
    assert 0 < len(history) < 500 and model.best_epoch_ < len(history) - 1
    reference = lgmstm.LGM([2, 1], output="linear", dtype=np.float32, backend=backend, seed=0)
    reference.fit(X, Y, epochs=len(history), **arguments)
    assert_same_state(model, reference)
    assert model.validation_history_.shape == history.shape


def probability_problem(kind, output, backend, rng, dtype):
    """Targets for a softmax or sigmoid output: one-hot rows (softmax) or
    0/1 labels (sigmoid); STMs with padded validation sequences, whose
    padded steps a cross-entropy must not count."""
    n_out = 3
    if kind == "LGM":
        X, X_val = rng.normal(size=(40, 3)), rng.normal(size=(15, 3))
        shape, val_shape = (40,), (15,)
    else:
        X, X_val = rng.normal(size=(24, 5, 2)), rng.normal(size=(10, 4, 2))
        sequences = kind == "STM-sequences"
        shape, val_shape = ((24, 5), (10, 4)) if sequences else ((24,), (10,))
    labels, val_labels = rng.integers(0, n_out, shape), rng.integers(0, n_out, val_shape)
    if output == "softmax":
        Y, Y_val = np.eye(n_out)[labels], np.eye(n_out)[val_labels]
    else:
        Y, Y_val = rng.integers(0, 2, shape + (n_out,)), rng.integers(0, 2, val_shape + (n_out,))
    X, Y, X_val, Y_val = [a.astype(dtype) for a in (X, Y, X_val, Y_val)]
    if kind == "LGM":
        model = lgmstm.LGM([3, 6, n_out], output=output, dtype=dtype, backend=backend, seed=3)
        return model, X, Y, (X_val, Y_val)
    lengths_val = rng.integers(1, 5, 10)
    if kind == "STM-sequences":
        Y_val[np.arange(4)[None, :] >= lengths_val[:, None]] = 0  # padded steps: no target
    model = lgmstm.STM(2, 5, n_out, output=output, return_sequences=kind == "STM-sequences",
                       dtype=dtype, backend=backend, seed=3)
    return model, X, Y, (X_val, Y_val, lengths_val)


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_validation_loss_follows_the_output_and_ignores_sample_weight(kind, output, backend,
                                                                      dtype, rng):
    # The validation loss is the model's loss (a cross-entropy here, over
    # the valid steps only), unweighted even when the training is weighted.
    model, X, Y, validation_data = probability_problem(kind, output, backend, rng, dtype)
    weight = rng.uniform(0.5, 2.0, X.shape[0])
    arguments = dict(lr=0.05, batch_size=7, optimizer="adam", shuffle=False,
                     sample_weight=weight)
    twin = pickle.loads(pickle.dumps(model))
    model.fit(X, Y, epochs=4, validation_data=validation_data, **arguments)
    expected = []
    for _ in range(4):
        twin.fit(X, Y, epochs=1, warm_start=True, **arguments)
        expected.append(validation_loss(twin, validation_data))
    np.testing.assert_array_equal(model.validation_history_, expected)
    assert_same_state(model, twin)


@pytest.mark.parametrize("kind", MODELS)
def test_validation_fraction_splits_the_sample_weights(kind, rng):
    X, Y, _, _ = problem(kind, rng, np.float64)
    weights = rng.uniform(0.5, 2, X.shape[0])
    model = make(kind, np.float64, "cython")
    model.fit(X, Y, epochs=3, lr=0.05, shuffle=False, validation_fraction=0.25, seed=5,
              sample_weight=weights)
    n = X.shape[0]
    permutation = np.random.default_rng(5).permutation(n)
    n_held = int(np.ceil(0.25 * n))
    rows, held = np.sort(permutation[: n - n_held]), np.sort(permutation[n - n_held:])
    reference = make(kind, np.float64, "cython")
    reference.fit(X[rows], Y[rows], epochs=3, lr=0.05, shuffle=False,
                  validation_data=(X[held], Y[held]), sample_weight=weights[rows])
    np.testing.assert_array_equal(model.history_, reference.history_)
    np.testing.assert_array_equal(model.validation_history_, reference.validation_history_)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lgm_validation_sample_weight_weighs_the_validation_loss(backend, dtype, rng):
    """(X_val, Y_val, sample_weight_val): integer weights are the validation
    samples repeated, and each epoch's validation loss is loss() with them."""
    X, Y, (X_val, Y_val), _ = problem("LGM", rng, dtype)
    weights = rng.integers(0, 4, X_val.shape[0])
    weights[0] = 2
    rows = np.repeat(np.arange(X_val.shape[0]), weights)
    arguments = dict(epochs=5, lr=0.05, batch_size=7, optimizer="adam", shuffle=False)
    weighted, repeated = make("LGM", dtype, backend), make("LGM", dtype, backend)
    weighted.fit(X, Y, validation_data=(X_val, Y_val, weights), **arguments)
    repeated.fit(X, Y, validation_data=(X_val[rows], Y_val[rows]), **arguments)
    np.testing.assert_allclose(weighted.validation_history_, repeated.validation_history_,
                               rtol=RTOL[dtype])
    assert weighted.loss(X_val, Y_val, sample_weight=weights) == weighted.validation_history_[-1]


@pytest.mark.parametrize("weights, match", [
    (np.full(15, -1.0), "validation_data: sample_weight must be >= 0"),
    (np.full(15, np.nan), "validation_data: sample_weight must be finite"),
    (np.ones(14), r"validation_data: sample_weight must have shape \(n_samples,\)"),
    (np.zeros(15), "validation_data: sample_weight must not be all zero")])
def test_lgm_bad_validation_sample_weight(weights, match, rng):
    X, Y, (X_val, Y_val), _ = problem("LGM", rng, np.float64)
    with pytest.raises(ValueError, match=match):
        make("LGM", np.float64, "cython").fit(X, Y, epochs=1, lr=0.1,
                                               validation_data=(X_val, Y_val, weights))


@pytest.mark.parametrize("kind", ["LGM", "STM-sequences"])
@pytest.mark.parametrize("output", ["linear", "softmax"])
def test_loss_has_the_same_bits_for_any_thread_count(kind, output, dtype, threads):
    """loss() (the validation pass) sums fixed blocks in order: enough rows
    for its loss and forward pass to fork, the same bits on 1, 2 and 3 threads."""
    rng = np.random.default_rng(6)
    n_out = 4
    if kind == "LGM":
        X = rng.normal(size=(20000, 8))
        labels = rng.integers(0, n_out, 20000)
        model = lgmstm.LGM([8, 16, n_out], output=output, dtype=dtype, seed=0)
        keywords = {}
    else:
        X = rng.normal(size=(2000, 10, 3))
        labels = rng.integers(0, n_out, (2000, 10))
        model = lgmstm.STM(3, 16, n_out, output=output, return_sequences=True, dtype=dtype,
                           seed=0)
        keywords = {"lengths": rng.integers(0, 11, 2000)}
    Y = np.eye(n_out)[labels] if output == "softmax" else rng.normal(size=labels.shape + (n_out,))
    weights = rng.uniform(0.0, 2.0, X.shape[0])
    results = []
    for n_threads in (1, 2, 3):
        with threads(n_threads):
            results.append((model.loss(X.astype(dtype), Y.astype(dtype), **keywords),
                            model.loss(X.astype(dtype), Y.astype(dtype), sample_weight=weights,
                                       **keywords)))
    assert results[0] == results[1] == results[2]


# -- stop_on_plateau: scikit-learn's rule without early stopping ---------------


class StopOnPlateau(PlateauCount):
    """A constant rate; training stops after patience epochs in a row that
    do not fall below best - tol, keeping the last (scikit-learn's MLP
    without early stopping, its n_iter_no_change + 1 = patience)."""

    def end_epoch(self, loss):
        self.count(loss)
        self.stopped = self.stale >= self.patience


def plateau_stop(losses, patience, tol):
    """The epochs a fit with stop_on_plateau runs on these monitored losses
    (StopOnPlateau's count), or None when it would not stop."""
    rule = StopOnPlateau(0.0, patience, tol)
    for epoch, loss in enumerate(losses):
        rule.end_epoch(loss)
        if rule.stopped:
            return epoch + 1
    return None


@pytest.mark.parametrize("backend", BACKENDS)
def test_stop_on_plateau_matches_a_hand_computation(backend, rng):
    X, Y = linear_problem(rng)
    W, b, model, history = fitted_linear(backend, X, Y, epochs=200, lr=0.05, batch_size=4,
                                         stop_on_plateau=True, patience=3, tol=1e-3)
    W_hand, b_hand, losses = hand_sgd(X, Y, W, b, 200, 4, StopOnPlateau(0.05, 3, 1e-3))
    assert len(history) == len(losses) < 200
    np.testing.assert_allclose(history, losses, rtol=1e-13)
    np.testing.assert_allclose(model.params["layer0.weight"], W_hand, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(model.params["layer0.bias"], b_hand, rtol=1e-13, atol=1e-15)
    assert model.best_epoch_ is None  # no validation set


@pytest.mark.parametrize("validating", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", MODELS)
def test_stop_on_plateau_keeps_the_last_epoch(kind, backend, validating, dtype, rng):
    """The fit stops where the rule, counted by hand on a fit that never
    stops, says (on the validation loss when there is a validation set),
    holding exactly what a plain fit of that many epochs holds: the last
    epoch's parameters, moments and step, not the best one's."""
    X, Y, validation_data, _ = problem(kind, rng, dtype)
    arguments = dict(lr=0.05, batch_size=7, optimizer="adam", seed=5,
                     validation_data=validation_data if validating else None)
    never = make(kind, dtype, backend)
    never.fit(X, Y, epochs=150, **arguments)
    monitored = never.validation_history_ if validating else never.history_
    patience, tol = 4, 1e-3
    stop = plateau_stop(monitored, patience, tol)
    assert stop is not None and stop < 150
    model = make(kind, dtype, backend)
    history = model.fit(X, Y, epochs=150, stop_on_plateau=True, patience=patience, tol=tol,
                        **arguments)
    np.testing.assert_array_equal(history, never.history_[:stop], strict=True)
    plain = make(kind, dtype, backend)
    plain.fit(X, Y, epochs=stop, **arguments)
    assert_same_state(model, plain)
    if validating:
        np.testing.assert_array_equal(model.validation_history_,
                                      never.validation_history_[:stop])
        # The best epoch is reported, not put back (that is early_stopping's).
        assert model.best_epoch_ == int(np.argmin(model.validation_history_))
        assert model.best_epoch_ < stop - patience


def test_stop_on_plateau_same_bits_for_any_thread_count(threads, starts_a_second_thread):
    results = []
    for n_threads in (1, 2, 3):
        with threads(n_threads):
            results.append(threaded_fit("LGM", stop_on_plateau=True))
    assert len(results[0].history_) < 40
    for other in results[1:]:
        np.testing.assert_array_equal(other.history_, results[0].history_)
        assert_same_state(other, results[0])
    assert starts_a_second_thread("test_validation_control", 'threaded_fit("LGM", stop_on_plateau=True)')


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", MODELS)
def test_a_loss_at_best_minus_tol_improves(kind, backend, rng):
    """scikit-learn's rule at the boundary: at an lr too small to move any
    parameter (W - 1e-300 dW == W), every epoch's loss is the first one's,
    which is at best - 0: with tol=0 no epoch is stale and the fit never
    stops; with any tol > 0 each is, and it stops after patience."""
    X, Y, _, _ = problem(kind, rng, np.float64)
    for tol, expected in ((0.0, 12), (1e-12, 1 + 3)):
        model = make(kind, np.float64, backend)
        history = model.fit(X, Y, epochs=12, lr=1e-300, stop_on_plateau=True, patience=3,
                            tol=tol)
        assert len(history) == expected, tol
        assert np.all(history == history[0])


def test_the_short_fit_declines_stop_on_plateau(rng):
    X, Y, _, _ = problem("LGM", rng, np.float64)
    model, plain = make("LGM", np.float64, "cython"), make("LGM", np.float64, "cython")
    # patience 1, tol 10: the one epoch does improve on no loss at all.
    history = model.fit(X, Y, epochs=1, lr=0.1, stop_on_plateau=True, patience=1, tol=10.0)
    np.testing.assert_array_equal(history, plain.fit(X, Y, epochs=1, lr=0.1))
    assert_same_state(model, plain)
