"""predict over pieces of a batch against predict over the whole batch.

The kernels cut a batch into tasks of a fixed number of samples (the LGM's
GEMM tasks, the STM's forward chunks and readout tasks), and a sample's bits
may depend on the task it falls in (OpenBLAS computes the last rows of a
product with other micro-kernels). The programs' row_quantum() is the
number of samples a piece must be a multiple of for every sample to fall in
the same task as in the whole batch; lgmstm.dask.predict cuts blocks so.
The oracle is the whole batch's predict, bit for bit; the pieces are
deliberately of other sizes than the tasks (odd totals, a short last piece).
"""
import numpy as np
import pytest
import scipy

import lgmstm

DTYPES = [np.float64, np.float32]


def pieces(n_samples, quantum, multiples):
    """Bounds of consecutive pieces of multiples[i] * quantum samples, the
    last one taking what is left."""
    bounds = [0]
    for k in multiples:
        if bounds[-1] + k * quantum >= n_samples:
            break
        bounds.append(bounds[-1] + k * quantum)
    return bounds + [n_samples]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer_sizes", [[64, 160, 96, 8], [10, 64, 64, 1], [10, 5, 2]])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_lgm_pieces_at_multiples_of_the_quantum_have_the_whole_batchs_bits(
        dtype, layer_sizes, n_threads, threads):
    model = lgmstm.LGM(layer_sizes, dtype=dtype, seed=0)
    quantum = model._network.program.row_quantum()
    assert quantum % 64 == 0
    X = np.random.default_rng(0).standard_normal((7 * quantum + 37, layer_sizes[0])).astype(
        dtype)
    with threads(n_threads):
        whole = model.predict(X)
        bounds = pieces(len(X), quantum, [1, 3, 2])
        joined = np.concatenate([model.predict(X[a:b]) for a, b in zip(bounds, bounds[1:])])
    np.testing.assert_array_equal(joined, whole, strict=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("return_sequences", [True, False])
@pytest.mark.parametrize("n_hidden", [48, 600])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_stm_pieces_at_multiples_of_the_quantum_have_the_whole_batchs_bits(
        dtype, return_sequences, n_hidden, n_threads, threads):
    n_steps = 5 if n_hidden > 100 else 9
    model = lgmstm.STM(6, n_hidden, 3, return_sequences=return_sequences, dtype=dtype, seed=0)
    quantum = model._network.program.row_quantum(n_steps)
    assert quantum % 64 == 0, quantum
    rng = np.random.default_rng(1)
    n_samples = 3 * quantum + 29
    X = rng.standard_normal((n_samples, n_steps, 6)).astype(dtype)
    lengths = rng.integers(0, n_steps + 1, n_samples)
    bounds = pieces(n_samples, quantum, [1, 1])
    with threads(n_threads):
        for lengths_or_none in (None, lengths):
            extra = {} if lengths_or_none is None else {"lengths": lengths_or_none}
            whole = model.predict(X, **extra)
            joined = np.concatenate([
                model.predict(X[a:b], **({} if lengths_or_none is None
                                         else {"lengths": lengths_or_none[a:b]}))
                for a, b in zip(bounds, bounds[1:])])
            np.testing.assert_array_equal(joined, whole, strict=True)


@pytest.mark.parametrize("n_hidden", [5, 32])
def test_a_small_stm_predicts_each_sample_alone(n_hidden):
    # In the panel layout every sample's bits are its own: any piece will do.
    model = lgmstm.STM(4, n_hidden, 2, seed=0)
    assert model._network.program.row_quantum(7) == 1
    X = np.random.default_rng(2).standard_normal((101, 7, 4))
    whole = model.predict(X)
    bounds = [0, 1, 14, 15, 77, 101]
    joined = np.concatenate([model.predict(X[a:b]) for a, b in zip(bounds, bounds[1:])])
    np.testing.assert_array_equal(joined, whole, strict=True)


@pytest.mark.parametrize("hidden", [48, [48, 40]], ids=["one layer", "stacked"])
def test_the_stm_quantum_does_not_depend_on_the_steps(hidden):
    # The readout runs every step apart, in tasks of samples
    # (_dense.dense_forward_steps): the quantum of 1 step serves any.
    program = lgmstm.STM(6, hidden, 3, seed=0)._network.program
    quantum = program.row_quantum(1)
    assert quantum % 64 == 0
    assert [program.row_quantum(n_steps) for n_steps in (0, 3, 7, 64, 100)] == [quantum] * 5


# Older OpenBLAS builds (scipy 1.10's, CI's oldest-dependencies job) round a
# GEMM's rows by the row count of the call; a slab is one call of fewer rows
# than the whole batch's, so on them the slabs may differ from one pass in
# the last bit (the [64, 160, 96, 8] network did, in 9 of 4904 values). The
# dask predict tests, whose chunks keep every task's rows, pass there.
OLD_OPENBLAS = tuple(int(part) for part in scipy.__version__.split(".")[:2]) < (1, 11)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer_sizes, output", [([64, 160, 96, 8], "tanh"),
                                                 ([10, 32, 1], "linear"),
                                                 ([12, 40, 5], "softmax"),
                                                 ([12, 40, 3], "sigmoid")])
@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_lgm_predict_in_slabs_has_the_bits_of_one_pass(dtype, layer_sizes, output,
                                                       n_threads, threads, monkeypatch,
                                                       request):
    if OLD_OPENBLAS:
        request.applymarker(pytest.mark.xfail(
            reason="older OpenBLAS rounds a GEMM row by the call's row count", strict=False))
    # LGM.predict runs a large batch a slab of rows at a time (a multiple of
    # the row quantum); the oracle is one pass of the kernel over the whole
    # batch, with every layer's activations for all of it.
    model = lgmstm.LGM(layer_sizes, output=output, dtype=dtype, seed=0)
    program = model._network.program
    quantum = program.row_quantum()
    X = np.random.default_rng(2).standard_normal((9 * quantum + 37, layer_sizes[0])).astype(
        dtype)

    def one_pass(logits):
        activations = [np.empty((len(X), n), dtype) for n in layer_sizes[1:]]
        program.predict(X, activations, n_threads, logits)
        return activations[-1]

    for slab_bytes in (1, 3 * quantum * sum(layer_sizes[1:]) * np.dtype(dtype).itemsize):
        monkeypatch.setattr(lgmstm.lgm, "PREDICT_SLAB_BYTES", slab_bytes)
        with threads(n_threads):
            assert model._network._slab_rows(dtype, n_threads) < len(X)
            np.testing.assert_array_equal(model.predict(X), one_pass(False), strict=True)
            if output in ("softmax", "sigmoid"):
                np.testing.assert_array_equal(
                    model.predict_log_proba(X),
                    lgmstm.reference.log_probabilities(output, one_pass(True)), strict=True)
