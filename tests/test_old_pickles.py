"""Pickles made by lgmstm at eb780a7 (tests/data/pickles-eb780a7.pkl, written
by that version: an LGM and a stateful STM after a short fit, with their
outputs) still load, with the same parameters, outputs and working memory;
so do the single-layer STM files saved at cfc702f, before the deep STMs
(tests/data/make_old_stm.py wrote them)."""
import functools
import os
import pickle

import numpy as np
import pytest
from test_reference_bits import make_reference_bits

import lgmstm

DATA = os.path.join(os.path.dirname(__file__), "data")
PATH = os.path.join(DATA, "pickles-eb780a7.pkl")


@pytest.mark.skipif(np.lib.NumpyVersion(np.__version__) < "2.0.0",
                    reason="the pickle was written with numpy 2 (numpy._core), which numpy 1 "
                           "cannot unpickle")
def test_old_pickles_load_unchanged():
    with open(PATH, "rb") as f:
        saved = pickle.load(f)
    lgm, stm = saved["lgm"], saved["stm"]
    assert isinstance(lgm, lgmstm.LGM) and isinstance(stm, lgmstm.STM)
    assert lgm.dtype == np.float32 and len(lgm.history_) == 3
    np.testing.assert_array_equal(lgm.predict(saved["X"]), saved["lgm_predict"], strict=True)
    np.testing.assert_array_equal(stm.state, saved["stm_state"], strict=True)
    # Both still train, from where they were.
    lgm.fit(saved["X"], np.zeros((3, 2)), epochs=1, lr=0.1)
    stm.reset_state()
    stm.fit(saved["Xs"], np.zeros((2, 5, 1)), epochs=1, lr=0.1)


def test_single_layer_stm_files_from_before_the_deep_stms_load(dtype):
    expected = np.load(os.path.join(DATA, "stm-cfc702f-outputs.npz"))
    model = lgmstm.load(os.path.join(DATA, f"stm-{dtype}-cfc702f.npz"))
    assert (model.n_in, model.n_hidden, model.n_out, model.bidirectional, model.readout) == (
        4, 5, 2, False, ())
    assert model.stateful and model.dtype == dtype and len(model.history_) == 3
    assert list(model.params) == ["input_weight", "recurrent_weight", "bias",
                                  "readout.weight", "readout.bias"]
    if str(expected["fingerprint"]) == make_reference_bits.fingerprint():
        same = functools.partial(np.testing.assert_array_equal, strict=True)
    else:  # another CPU's kernels or BLAS: the last bits may differ
        tolerance = 1e-5 if dtype == np.float32 else 1e-11
        same = functools.partial(np.testing.assert_allclose, rtol=tolerance, atol=tolerance)
    X, Y = (expected[key].astype(dtype) for key in ("X", "Y"))
    # from the working memory the file holds, as the old version predicted
    same(model.predict(expected["X_next"].astype(dtype)), expected[f"{dtype}.predict"])
    same(model.state, expected[f"{dtype}.state"])
    # and training goes on from the saved optimizer state as it did then
    same(model.fit(X, Y, epochs=2, lr=0.05, optimizer="adam", warm_start=True),
         expected[f"{dtype}.history"])
    for name, value in model.params.items():
        same(value, expected[f"{dtype}.trained.{name}"], err_msg=name)
