"""The real data sets bundled with lgmstm (provenance in lgmstm/data/README.md)."""
from __future__ import annotations

from importlib import resources

import numpy as np

__all__ = ["load_diabetes", "load_sunspots"]


def _read_csv(name):
    with resources.files("lgmstm").joinpath("data").joinpath(name).open("r") as f:
        header = f.readline().strip().split(",")
        values = np.loadtxt(f, delimiter=",", dtype=np.float64, ndmin=2)
    return header, values


def load_diabetes():
    """The diabetes data of Efron et al. (2004), raw and unscaled.

    Returns
    -------
    X : ndarray of shape (442, 10), float64
        age, sex, bmi, bp, s1..s6.
    y : ndarray of shape (442,), float64
        Disease progression one year after baseline.
    feature_names : list of str
    """
    header, values = _read_csv("diabetes.csv")
    return values[:, :-1].copy(), values[:, -1].copy(), header[:-1]


def load_sunspots():
    """Monthly mean sunspot numbers, January 1749 to December 2008.

    Returns
    -------
    sunspots : ndarray of shape (3120,), float64
        In time order.
    dates : ndarray of shape (3120, 2), int
        (year, month) of each value.
    """
    _, values = _read_csv("sunspots_monthly.csv")
    return values[:, 2].copy(), values[:, :2].astype(int)
