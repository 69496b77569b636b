"""A small typed program using lgmstm, for mypy.

tests/test_typing.py type-checks this file (with the package's stubs and
annotations) and runs it. ``assert_type`` makes mypy fail when a public
function's type changes.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np
from numpy.typing import NDArray

import lgmstm
from lgmstm import _dense, _openmp
from lgmstm.datasets import load_diabetes
from lgmstm.sklearn import LGMClassifier, LGMRegressor

if sys.version_info >= (3, 11):
    from typing import assert_type
else:
    from typing_extensions import assert_type


def build_info() -> str:
    threads = lgmstm.get_num_threads()
    assert_type(threads, int)
    lgmstm.set_num_threads(threads)
    assert_type(_openmp.openmp_enabled(), bool)
    assert_type(_openmp.openmp_version(), int)
    return f"OpenMP {_openmp.openmp_version()}, {threads} threads"


def vectorised_tanh(values: NDArray[np.float32]) -> NDArray[np.float32]:
    out = values.copy()
    _dense._tanh(out)  # the kernels' tanh; same dtype in and out
    return out


def standardised_diabetes() -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    X, y, _ = load_diabetes()
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return X, (y - y.mean()) / y.std()


def train_lgm(X: NDArray[np.float64], y: NDArray[np.float64]) -> float:
    model = lgmstm.LGM([X.shape[1], 8, 1], output="linear", seed=0)
    model.fit(X, y, epochs=20, lr=1e-3, batch_size=32, optimizer="adam")
    return float(model.loss(X, y))


def sklearn_estimators(X: NDArray[np.float64], y: NDArray[np.float64]) -> tuple[float, float]:
    regressor = LGMRegressor(hidden_layer_sizes=(8,), max_iter=20, random_state=0)
    assert_type(regressor.fit(X, y), LGMRegressor)
    prediction = regressor.predict(X)
    assert_type(prediction, NDArray[np.float64])
    classifier = LGMClassifier(hidden_layer_sizes=8, max_iter=20, random_state=0)
    classifier.fit(X, y > 0)
    proba: NDArray[Any] = classifier.predict_proba(X)
    assert proba.shape == (len(X), 2)
    return float(regressor.score(X, y)), float(classifier.score(X, y > 0))


def live_streams() -> NDArray[Any]:
    model = lgmstm.STM(2, 8, 1, seed=0)
    X = np.zeros((3, 5, 2))
    assert_type(model.predict(X), NDArray[Any])
    outputs, final = model.predict(X[:, :2], return_state=True)
    assert_type(final, NDArray[Any])
    model.predict(X[:, 2:], initial_state=final)
    y = model.step(X[:, 0])
    assert_type(y, NDArray[Any])
    model.reset_state(streams=[1])
    return y


def main() -> None:
    print(build_info())
    print(vectorised_tanh(np.linspace(-3, 3, 5, dtype=np.float32)))
    X, y = standardised_diabetes()
    print(f"LGM loss {train_lgm(X, y):.3f}")
    print("R^2 {:.3f}, accuracy {:.3f}".format(*sklearn_estimators(X, y)))
    print(f"STM step outputs {live_streams().shape}")


if __name__ == "__main__":
    main()
