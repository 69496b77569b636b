"""Write single-layer STM files as lgmstm wrote them before the deep STMs
(issue 15: stacked layers, a reverse direction, a readout of tanh layers;
its first commit is 0d30038), so that tests/test_old_pickles.py can check
that they still load, predict the same and train on:

    PYTHONPATH=<main at cfc702f, built> python tests/data/make_old_stm.py tests/data/

writes ``stm-float32-cfc702f.npz`` and ``stm-float64-cfc702f.npz`` (a
stateful STM after a short adam fit, holding the working memory of 3
streams) and ``stm-cfc702f-outputs.npz``: the data, what each file's model
predicted next from the memory it held, the memory it then held, its
parameters after two more epochs of the same training, and the machine's
fingerprint (make_reference_bits.fingerprint: what besides the code decides
the bits).
"""
import os
import sys

import numpy as np
from make_reference_bits import fingerprint

import lgmstm

folder = sys.argv[1]
rng = np.random.default_rng(15)
X = rng.standard_normal((3, 6, 4))
Y = rng.uniform(-0.8, 0.8, (3, 6, 2))
X_next = rng.standard_normal((3, 5, 4))
outputs = {"X": X, "Y": Y, "X_next": X_next, "fingerprint": np.asarray(fingerprint())}
for dtype in ("float32", "float64"):
    model = lgmstm.STM(4, 5, 2, stateful=True, dtype=dtype, seed=3)
    model.fit(X.astype(dtype), Y.astype(dtype), epochs=3, lr=0.05, optimizer="adam")
    path = os.path.join(folder, f"stm-{dtype}-cfc702f.npz")
    model.save(path)
    loaded = lgmstm.load(path)  # what the file holds, as this version reads it back
    outputs[f"{dtype}.predict"] = loaded.predict(X_next.astype(dtype))
    outputs[f"{dtype}.state"] = loaded.state
    outputs[f"{dtype}.history"] = loaded.fit(X.astype(dtype), Y.astype(dtype), epochs=2,
                                             lr=0.05, optimizer="adam", warm_start=True)
    outputs.update({f"{dtype}.trained.{name}": value for name, value in loaded.params.items()})
np.savez(os.path.join(folder, "stm-cfc702f-outputs.npz"), **outputs)
