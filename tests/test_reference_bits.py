"""Training gives the same bits as the code that recorded them did (eb780a7,
made again since: see tests/data/make_reference_bits.py for when and why).

tests/data/make_reference_bits.py recorded them (its docstring has the
command) for the kernels one CPU runs; on a CPU whose tanh clone, panel
build or BLAS kernels differ, the bits legitimately differ and no file
applies (the NumPy-reference tests cover that machine).
"""
import importlib.util
import os

import numpy as np
import pytest

HERE = os.path.join(os.path.dirname(__file__), "data")
spec = importlib.util.spec_from_file_location(
    "make_reference_bits", os.path.join(HERE, "make_reference_bits.py"))
make_reference_bits = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_reference_bits)

PATH = os.path.join(HERE, f"reference_bits-{make_reference_bits.fingerprint()}.npz")
CASES = list(make_reference_bits.cases())


def recorded_blas_version(path):
    with open(make_reference_bits.blas_version_path(path)) as file:
        return file.read().strip()


BLAS_VERSION = str(make_reference_bits.kernels_blas().get("version"))


@pytest.mark.skipif(not os.path.exists(PATH),
                    reason=f"no reference bits recorded for this CPU's kernels ({PATH})")
@pytest.mark.skipif(os.path.exists(PATH) and recorded_blas_version(PATH) != BLAS_VERSION,
                    reason=f"the reference bits for this CPU's kernels come from another BLAS "
                           f"version than this one's ({BLAS_VERSION})")
@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_same_bits_as_recorded(case):
    with np.load(PATH) as recorded:
        expected = {k: recorded[k] for k in recorded.files if k.startswith(case[0] + "/")}
    produced = make_reference_bits.train(*case)
    assert sorted(produced) == sorted(expected)
    for key, value in produced.items():
        assert value.dtype == expected[key].dtype, key
        np.testing.assert_array_equal(value, expected[key], err_msg=key, strict=True)


def test_a_recording_exists_for_the_machine_that_made_them():
    # The committed files are not empty and cover every case.
    files = [f for f in os.listdir(HERE)
             if f.startswith("reference_bits-") and f.endswith(".npz")]
    assert files
    for name in files:
        # each says which BLAS version gives its bits
        assert recorded_blas_version(os.path.join(HERE, name))
        with np.load(os.path.join(HERE, name)) as recorded:
            assert {k.split("/")[0] for k in recorded.files} == {c[0] for c in CASES}
