"""Record what training the seed models produces, bit for bit, so that a
restructuring of the code can be checked to change nothing.

    python tests/data/make_reference_bits.py tests/data/

run against an installed lgmstm (from outside the source root's lgmstm/, or
with PYTHONPATH pointing at a built tree) writes
``reference_bits-<fingerprint>.npz``. The fingerprint names what decides the
bits besides the code: the tanh clone and panel-kernel build this CPU runs
and the BLAS kernels' architecture; beside the file, ``.blas-version``
names the BLAS version whose kernels give them (see
tests/test_reference_bits.py, which trains the same models and compares).
The files committed were made from main at eb780a7, and made again when
the small STMs' predict moved to the panel layout (issue 12), which changed
only the predictions of small STMs (and a stateful model's gradients, which
start from the state its predict left): every trained parameter and loss
kept its bits. Made again when the LGM's and the STM's panel-layout steps
became group-major, each group summing its own weight gradients (issue 13):
the cases of several sample groups (lgm-wide, the full-batch stm-seed ones)
changed in the last bits, the others (one group) kept theirs.
"""
import re
import sys

import numpy as np

import lgmstm

# (name, constructor, fit keywords, data shapes): small, but covering the
# panel layout (seed sizes), the BLAS path (wider layers), ragged sequences,
# a final-state readout, stateful training and gradient clipping.
OPTIMIZERS = ("sgd", "momentum", "adam")
LR = {"sgd": 0.05, "momentum": 0.02, "adam": 0.01}


def cases():
    for dtype in ("float32", "float64"):
        for optimizer in OPTIMIZERS:
            for batch in ("full", "mini"):
                batch_size = None if batch == "full" else 32
                yield (f"lgm-seed-{dtype}-{optimizer}-{batch}", "LGM",
                       dict(layer_sizes=[10, 5, 2]), dtype, (100, 10), (100, 2),
                       dict(epochs=7, optimizer=optimizer, batch_size=batch_size))
                yield (f"stm-seed-{dtype}-{optimizer}-{batch}", "STM",
                       dict(n_in=10, n_hidden=5, n_out=2), dtype, (100, 20, 10),
                       (100, 20, 2), dict(epochs=4, optimizer=optimizer,
                                          batch_size=batch_size))
        yield (f"lgm-wide-{dtype}", "LGM", dict(layer_sizes=[64, 160, 96, 8],
                                               output="linear"),
               dtype, (300, 64), (300, 8), dict(epochs=3, optimizer="adam",
                                                 batch_size=128))
        yield (f"stm-wide-{dtype}", "STM", dict(n_in=16, n_hidden=160, n_out=4),
               dtype, (40, 12, 16), (40, 12, 4),
               dict(epochs=3, optimizer="momentum", batch_size=16, clip_norm=0.5))
        yield (f"stm-ragged-{dtype}", "STM", dict(n_in=3, n_hidden=9, n_out=2,
                                                 return_sequences=False,
                                                 output="linear"),
               dtype, (50, 15, 3), (50, 2),
               dict(epochs=5, optimizer="adam", batch_size=16, lengths=True))
        yield (f"stm-stateful-{dtype}", "STM", dict(n_in=4, n_hidden=6, n_out=1,
                                                   stateful=True),
               dtype, (8, 10, 4), (8, 10, 1), dict(epochs=3, optimizer="sgd"))


def train(name, kind, architecture, dtype, x_shape, y_shape, fit):
    """Every array the case produces, by name."""
    rng = np.random.default_rng(sum(map(ord, name)))
    X = rng.standard_normal(x_shape)
    Y = np.tanh(rng.standard_normal(y_shape))
    fit = dict(fit)
    lr = LR[fit["optimizer"]]
    lengths = None
    if fit.pop("lengths", False):
        lengths = rng.integers(0, x_shape[1] + 1, size=x_shape[0])
        fit["lengths"] = lengths
    if kind == "LGM":
        model = lgmstm.LGM(architecture["layer_sizes"],
                           output=architecture.get("output", "tanh"), dtype=dtype, seed=3)
    else:
        model = lgmstm.STM(dtype=dtype, seed=3, **architecture)
    history = model.fit(X, Y, lr=lr, seed=5, **fit)
    out = {f"param.{k}": v for k, v in model.params.items()}
    out["history"] = history
    if kind == "LGM":
        out["predict"] = model.predict(X)
        grads = model.gradients(X, Y)
    else:
        if model.stateful:
            out["state"] = model.state
            model.reset_state()
        out["predict"] = model.predict(X, lengths=lengths)
        grads = model.gradients(X, Y, lengths=lengths)
    out.update({f"grad.{k}": v for k, v in grads.items()})
    return {f"{name}/{k}": np.asarray(v) for k, v in out.items()}


def kernels_blas(info=None):
    """threadpoolctl's entry for the BLAS the kernels call ({} if none), from
    lgmstm._config.config_info() (info, when the caller has it already)."""
    info = lgmstm._config.config_info() if info is None else info
    return next((lib for lib in info["libraries"] if lib.get("used_by_kernels")), {})


def fingerprint():
    """What besides the code decides the bits on this machine."""
    info = lgmstm._config.config_info()
    blas = kernels_blas(info)
    name = "-".join(str(part) for part in (
        info["simd_clone"], info["panel_kernels"],
        blas.get("internal_api"), blas.get("architecture")))
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("_")


def blas_version_path(bits_path):
    """The file beside reference_bits-<fingerprint>.npz that holds the
    version of the BLAS whose kernels give its bits: another version with
    the same architecture name may sum in another order (OpenBLAS 0.3.21,
    scipy 1.10's, did on a Xeon of family 6 model 167, where 0.3.30 gives
    these bits)."""
    return bits_path[: -len(".npz")] + ".blas-version"


def record():
    arrays = {}
    for case in cases():
        arrays.update(train(*case))
    return arrays


if __name__ == "__main__":
    import os
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(__file__)
    path = os.path.join(folder, f"reference_bits-{fingerprint()}.npz")
    np.savez_compressed(path, **record())
    with open(blas_version_path(path), "w") as file:
        file.write(f"{kernels_blas().get('version')}\n")
    print(path)
