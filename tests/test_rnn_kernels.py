"""The compiled recurrent kernels against the NumPy reference, finite
differences, thread counts and bad input."""
import numpy as np
import pytest

from lgmstm import kernels, reference

TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}

# (n_samples, n_steps, n_in, n_hidden)
SHAPES = {
    "one step": (5, 1, 3, 4),
    "one sample": (1, 12, 3, 4),
    "odd": (7, 33, 13, 29),
    "zero steps": (4, 0, 3, 5),
    "empty batch": (0, 6, 3, 5),
    "several chunks": (130, 9, 4, 6),
    "several chunks, wide state": (70, 5, 3, 40),
    # 128-512 units multiply by Wh in packed panels on AVX-512 machines
    # (_panel.pxd, use_packed_product); 131 leaves a ragged last panel.
    "packed panels": (9, 6, 5, 128),
    "packed panels, ragged": (70, 4, 3, 131),
}


def make_problem(shape, dtype, seed=0):
    n_samples, n_steps, n_in, n_hidden = shape
    rng = np.random.default_rng(seed)
    scale = 1.0 / np.sqrt(n_hidden)
    return dict(
        X=rng.standard_normal((n_samples, n_steps, n_in)).astype(dtype),
        h0=(0.5 * rng.standard_normal((n_samples, n_hidden))).astype(dtype),
        Wx=(rng.standard_normal((n_in, n_hidden)) / np.sqrt(n_in)).astype(dtype),
        Wh=(scale * rng.standard_normal((n_hidden, n_hidden))).astype(dtype),
        b=(0.1 * rng.standard_normal(n_hidden)).astype(dtype),
        lengths=rng.integers(0, n_steps + 1, n_samples),
        dH=rng.standard_normal((n_samples, n_steps, n_hidden)).astype(dtype),
        dh_last=rng.standard_normal((n_samples, n_hidden)).astype(dtype),
    )


def assert_close(actual, expected, dtype, name=""):
    tol = TOLERANCE[dtype]
    assert actual.dtype == expected.dtype == dtype, name
    assert actual.shape == expected.shape, name
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
# Lengths that never increase along the batch leave every chunk in order, so
# its time loop runs on H in place (a shrinking prefix of the chunk); random
# lengths take the gathered loop.
@pytest.mark.parametrize("with_lengths", ["full", "lengths", "sorted lengths"])
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero h0", "h0"])
def test_kernels_match_reference(dtype, shape, with_lengths, with_h0):
    p = make_problem(shape, dtype)
    h0 = p["h0"] if with_h0 else None
    lengths = {"full": None, "lengths": p["lengths"],
               "sorted lengths": np.sort(p["lengths"])[::-1].copy()}[with_lengths]
    H = kernels.rnn_forward(p["X"], h0, p["Wx"], p["Wh"], p["b"], lengths=lengths)
    expected_H = reference.rnn_forward(p["X"], h0, p["Wx"], p["Wh"], p["b"], lengths=lengths)
    assert_close(H, expected_H, dtype)
    for dh_last in (None, p["dh_last"]):
        grads = kernels.rnn_backward(p["X"], h0, p["Wx"], p["Wh"], expected_H, p["dH"],
                                     dh_last=dh_last, lengths=lengths)
        expected = reference.rnn_backward(p["X"], h0, p["Wx"], p["Wh"], expected_H, p["dH"],
                                          dh_last=dh_last, lengths=lengths)
        for name, actual, wanted in zip(("dX", "dh0", "dWx", "dWh", "db"), grads, expected):
            assert_close(actual, wanted, dtype, name)


@pytest.mark.parametrize("module", [kernels, reference])
def test_padding_semantics(module):
    p = make_problem((6, 8, 3, 5), np.float64)
    lengths = np.array([8, 3, 0, 5, 8, 1])
    H = module.rnn_forward(p["X"], p["h0"], p["Wx"], p["Wh"], p["b"], lengths=lengths)
    dX, dh0, *_ = module.rnn_backward(p["X"], p["h0"], p["Wx"], p["Wh"], H, p["dH"],
                                      dh_last=p["dh_last"], lengths=lengths)
    for i, length in enumerate(lengths):
        assert not H[i, length:].any() and not dX[i, length:].any()
        alone = module.rnn_forward(p["X"][i:i + 1, :length], p["h0"][i:i + 1], p["Wx"],
                                   p["Wh"], p["b"])
        np.testing.assert_allclose(H[i, :length], alone[0], rtol=1e-13, atol=1e-15)
    # A sequence of length 0 hands dh_last straight back to h0.
    np.testing.assert_array_equal(dh0[2], p["dh_last"][2])


@pytest.mark.parametrize("module", [kernels, reference])
def test_padded_inputs_are_never_read(module):
    """NaN or inf past each sequence's end, in X, in the states H handed to
    the backward pass and in dH: no effect on anything (both modules: the
    reference selects the valid steps, where a product with 0 would keep a
    NaN), the results those of clean padding."""
    p = make_problem((9, 7, 3, 4), np.float64)
    lengths = np.array([7, 0, 2, 7, 7, 5, 0, 1, 3])
    padded = np.arange(7) >= lengths[:, None]
    clean_H = module.rnn_forward(p["X"], p["h0"], p["Wx"], p["Wh"], p["b"], lengths=lengths)
    clean = module.rnn_backward(p["X"], p["h0"], p["Wx"], p["Wh"], clean_H, p["dH"],
                                dh_last=p["dh_last"], lengths=lengths)
    X, dH = p["X"].copy(), p["dH"].copy()
    X[padded], dH[padded] = np.nan, np.inf
    H = module.rnn_forward(X, p["h0"], p["Wx"], p["Wh"], p["b"], lengths=lengths)
    np.testing.assert_array_equal(H, clean_H)
    H[padded] = np.nan
    grads = module.rnn_backward(X, p["h0"], p["Wx"], p["Wh"], H, dH,
                                dh_last=p["dh_last"], lengths=lengths)
    for got, want in zip(grads, clean):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("module", [kernels, reference])
def test_out_may_share_memory_with_lengths(module):
    """lengths read from the memory out= is written to: read before, as if
    apart (the kernels once wrote states over the lengths they read next)."""
    p = make_problem((4, 3, 2, 2), np.float64)
    given = np.array([3, 1, 2, 0])
    expected = module.rnn_forward(p["X"], None, p["Wx"], p["Wh"], p["b"], lengths=given)
    memory = np.zeros(4 * 3 * 2)
    lengths = memory[:4].view(np.intp)
    lengths[:] = given
    out = memory.reshape(4, 3, 2)
    H = module.rnn_forward(p["X"], None, p["Wx"], p["Wh"], p["b"], lengths=lengths, out=out)
    np.testing.assert_array_equal(H, expected)


def loss_of(X, h0, Wx, Wh, b, lengths, G, g_last):
    """sum(H * G) + sum(final states * g_last), whose gradient rnn_backward gives."""
    H = reference.rnn_forward(X, h0, Wx, Wh, b, lengths=lengths)
    return float(np.sum(H * G) + np.sum(reference.final_states(H, h0, lengths) * g_last))


@pytest.mark.parametrize("module", [kernels, reference])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
def test_gradients_match_finite_differences(module, with_lengths):
    p = make_problem((4, 5, 3, 4), np.float64, seed=1)
    lengths = np.array([5, 2, 0, 4]) if with_lengths else np.full(4, 5)
    args = {name: p[name] for name in ("X", "h0", "Wx", "Wh", "b")}
    H = module.rnn_forward(*args.values(), lengths=lengths)
    grads = module.rnn_backward(args["X"], args["h0"], args["Wx"], args["Wh"], H, p["dH"],
                                dh_last=p["dh_last"], lengths=lengths)
    eps = 1e-6
    for name, grad in zip(("X", "h0", "Wx", "Wh", "b"), grads):
        numeric = np.empty_like(args[name])
        for index in np.ndindex(args[name].shape):
            values = {k: v.copy() for k, v in args.items()}
            values[name][index] += eps
            plus = loss_of(*values.values(), lengths, p["dH"], p["dh_last"])
            values[name][index] -= 2 * eps
            minus = loss_of(*values.values(), lengths, p["dH"], p["dh_last"])
            numeric[index] = (plus - minus) / (2 * eps)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8, err_msg=name)


def test_packed_panels_are_used_where_expected():
    from lgmstm import _openmp, _rnn
    # Only the AVX-512 build of the panel kernel beats BLAS at these sizes.
    expected = "packed" if _openmp.panel_kernel_build() == "avx512" else "blas"
    for n_hidden in (128, 131, 136, 512):
        assert _rnn._recurrent_product_kind(n_hidden) == expected
    for n_hidden in (1, 64, 127, 513, 1024):
        assert _rnn._recurrent_product_kind(n_hidden) == "blas"


@pytest.mark.parametrize("n_hidden", [6, 40, 136],
                         ids=["narrow state", "wide state", "packed panels"])
def test_same_bits_for_any_thread_count(threads, n_hidden):
    # 200 samples make 4 chunks of 50, so 2 and 3 threads really share the work.
    p = make_problem((200, 12, 9, n_hidden), np.float64, seed=2)
    lengths = p["lengths"]
    lengths[:100] = 12
    results = []
    for n_threads in threads.counts:
        with threads(n_threads):
            H = kernels.rnn_forward(p["X"], p["h0"], p["Wx"], p["Wh"], p["b"], lengths=lengths)
            grads = kernels.rnn_backward(p["X"], p["h0"], p["Wx"], p["Wh"], H, p["dH"],
                                         dh_last=p["dh_last"], lengths=lengths)
            results.append((H, *grads))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_out_argument(dtype):
    p = make_problem((3, 4, 2, 5), dtype)
    out = np.full((3, 4, 5), np.nan, dtype)
    result = kernels.rnn_forward(p["X"], p["h0"], p["Wx"], p["Wh"], p["b"], out=out)
    assert result is out
    assert_close(out, reference.rnn_forward(p["X"], p["h0"], p["Wx"], p["Wh"], p["b"]), dtype)


def test_integer_inputs_follow_the_float_dtype():
    p = make_problem((2, 3, 2, 4), np.float32)
    H = kernels.rnn_forward(np.ones((2, 3, 2), np.int64), None, p["Wx"], p["Wh"], p["b"])
    assert H.dtype == np.float32


BAD_FORWARD = [
    # (argument changes, error, words the message must contain)
    (dict(X=np.zeros((3, 4))), ValueError, ["X", "3-dimensional", "(3, 4)"]),
    (dict(Wx=np.zeros((3, 5))), ValueError, ["Wx", "2 rows", "(3, 5)"]),
    (dict(Wh=np.zeros((5, 4))), ValueError, ["Wh", "(5, 5)", "(5, 4)"]),
    (dict(b=np.zeros(4)), ValueError, ["b", "(5,)", "(4,)"]),
    (dict(h0=np.zeros((2, 5))), ValueError, ["h0", "(3, 5)", "(2, 5)"]),
    (dict(lengths=[1, 2, 5]), ValueError, ["lengths", "[0, 4]", "lengths[2] = 5"]),
    (dict(lengths=[1, -1, 2]), ValueError, ["lengths", "lengths[1] = -1"]),
    (dict(lengths=[1, 2]), ValueError, ["lengths", "(3,)", "(2,)"]),
    (dict(lengths=[1.0, 2.0, 3.0]), TypeError, ["lengths", "integers", "float64"]),
    (dict(Wh=np.zeros((5, 5), np.float32)), TypeError, ["mixed", "Wh is float32", "X is float64"]),
    (dict(X=np.zeros((3, 4, 2), complex)), TypeError, ["X", "complex128"]),
    (dict(out=np.zeros((3, 4, 4))), ValueError, ["out", "(3, 4, 5)", "(3, 4, 4)"]),
    (dict(out=np.zeros((3, 4, 5), np.float32)), TypeError, ["out", "float64", "float32"]),
]


def forward_args():
    return dict(X=np.zeros((3, 4, 2)), h0=None, Wx=np.zeros((2, 5)), Wh=np.zeros((5, 5)),
                b=np.zeros(5), lengths=None, out=None)


@pytest.mark.parametrize("module", [kernels, reference])
@pytest.mark.parametrize("change, error, words", BAD_FORWARD,
                         ids=[", ".join(c) + f" {i}" for i, (c, _, _) in enumerate(BAD_FORWARD)])
def test_bad_forward_input(module, change, error, words):
    args = forward_args()
    args.update(change)
    with pytest.raises(error) as info:
        module.rnn_forward(args.pop("X"), args.pop("h0"), args.pop("Wx"), args.pop("Wh"),
                           args.pop("b"), **args)
    for word in words:
        assert word in str(info.value)


BAD_BACKWARD = [
    (dict(H=np.zeros((3, 4, 6))), ValueError, ["H", "(3, 4, 5)", "(3, 4, 6)"]),
    (dict(dH=np.zeros((3, 5, 5))), ValueError, ["dH", "(3, 4, 5)", "(3, 5, 5)"]),
    (dict(dh_last=np.zeros((3, 4))), ValueError, ["dh_last", "(3, 5)", "(3, 4)"]),
    (dict(dH=np.zeros((3, 4, 5), np.float32)), TypeError, ["mixed", "dH is float32"]),
    (dict(lengths=[0, 9, 1]), ValueError, ["lengths", "lengths[1] = 9"]),
    (dict(X=np.zeros((3, 4, 2, 1))), ValueError, ["X", "3-dimensional"]),
]


@pytest.mark.parametrize("module", [kernels, reference])
@pytest.mark.parametrize("change, error, words", BAD_BACKWARD,
                         ids=[", ".join(c) for c, _, _ in BAD_BACKWARD])
def test_bad_backward_input(module, change, error, words):
    args = dict(X=np.zeros((3, 4, 2)), h0=None, Wx=np.zeros((2, 5)), Wh=np.zeros((5, 5)),
                H=np.zeros((3, 4, 5)), dH=np.zeros((3, 4, 5)), dh_last=None, lengths=None)
    args.update(change)
    with pytest.raises(error) as info:
        module.rnn_backward(args.pop("X"), args.pop("h0"), args.pop("Wx"), args.pop("Wh"),
                            args.pop("H"), args.pop("dH"), **args)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("module", [kernels, reference])
def test_too_many_rows_for_blas(module):
    X = np.lib.stride_tricks.as_strided(np.zeros(1), (2**16, 2**16, 1), (0, 0, 0))
    with pytest.raises(ValueError, match="below 2\\*\\*31"):
        module.rnn_forward(X, None, np.zeros((1, 3)), np.zeros((3, 3)), np.zeros(3))


@pytest.mark.parametrize("module", [kernels, reference], ids=["kernels", "reference"])
def test_zero_initial_state_adds_nothing_even_with_infinite_weights(module):
    # h0=None is the zero state: no 0 @ Wh term, so an infinite recurrent
    # weight first shows at step 1, whichever way a chunk is ordered
    # (sorted lengths run in place, others gathered).
    X = np.ones((2, 3, 2))
    Wx, b = np.full((2, 4), 0.1), np.zeros(4)
    Wh = np.eye(4)
    Wh[0, 1] = np.inf
    expected_step0 = np.tanh(X[:, 0] @ Wx + b)
    for lengths in ([3, 2], [2, 3]):
        H = module.rnn_forward(X, None, Wx, Wh, b, lengths=np.array(lengths))
        np.testing.assert_allclose(H[:, 0], expected_step0, rtol=1e-15)


def test_scratch_holds_only_what_a_pass_uses():
    from lgmstm import _openmp, _rnn
    n_samples, n_in, n_hidden = 2048, 4096, 4096
    rows = n_samples * (2 * n_hidden + 32)
    # Forward, BLAS (over 512 units): the state rows and nothing else.
    assert _rnn.scratch_size(n_samples, n_in, n_hidden, False) == rows
    # Backward: Wh^T and partial sums within PARTIALS_BUDGET (4 Mi values;
    # these weights are 8 times that, so there is one group and none).
    assert _rnn.scratch_size(n_samples, n_in, n_hidden, True) == rows + n_hidden**2
    # The benchmark's large STM: 4 groups' worth would fit, its 2 chunks make 2.
    assert (_rnn.scratch_size(128, 256, 512, True)
            - _rnn.scratch_size(128, 256, 512, False)) >= (256 + 512) * 512
