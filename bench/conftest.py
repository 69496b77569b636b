"""The pytest-benchmark suite runs the cases of lgmstm.benchmarks, nothing else.

    pytest bench --benchmark-only --benchmark-group-by=group
    pytest bench --lgmstm-quick ...   # only the sizes of `python -m lgmstm bench --quick`
    pytest bench -k door ...          # only the door: one call from Python (issue 12)

Each group is one case at one size and dtype; its benchmarks are the
implementations (lgmstm, numpy, torch, gemm_floor) and thread counts, side by side.
A door group is one call from Python, its benchmarks lgmstm and its peers
(numpy, torch, sklearn, steady); the target is in each benchmark's extra_info,
and ``lgmstm bench --only door`` says whether it is met.
"""
import pytest

from lgmstm import benchmarks


def pytest_addoption(parser):
    parser.addoption("--lgmstm-quick", action="store_true",
                     help="only the sizes of `python -m lgmstm bench --quick`")


def pytest_generate_tests(metafunc):
    if "item" not in metafunc.fixturenames:
        return
    items, notes = benchmarks.plan(quick=metafunc.config.getoption("lgmstm_quick"))
    params = [pytest.param(item, id=f"{item.group}-{item.name}".replace(" ", "-"))
              for item in items]
    params += [pytest.param(None, id=note.split(":")[0].replace(" ", "-"),
                            marks=pytest.mark.skip(reason=note)) for note in notes]
    metafunc.parametrize("item", params)
