"""Pickles made by lgmstm at eb780a7 (tests/data/pickles-eb780a7.pkl, written
by that version: an LGM and a stateful STM after a short fit, with their
outputs) still load, with the same parameters, outputs and working memory."""
import os
import pickle

import numpy as np
import pytest

import lgmstm

PATH = os.path.join(os.path.dirname(__file__), "data", "pickles-eb780a7.pkl")


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
