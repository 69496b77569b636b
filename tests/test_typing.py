"""Type checking: mypy passes on the package and on tests/typed_usage.py,
refuses misuse that the stubs describe, and the stubs match the compiled
modules (mypy's stubtest)."""
import runpy
import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = Path(__file__).resolve().parent / "typed_usage.py"


# The mypy runs check the package's source and its pyproject settings: they
# need a source checkout (not a copy of the tests beside an installed wheel).
needs_source = pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(),
                                  reason="not in a source checkout")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mypy_cache")


def run_mypy(cache_dir, *paths):
    stdout, stderr, status = mypy_api.run([
        "--config-file", str(ROOT / "pyproject.toml"),
        "--cache-dir", str(cache_dir),
        "--no-error-summary", "--hide-error-context",
        *map(str, paths)])
    return status, stdout + stderr


@needs_source
def test_package_and_typed_usage_pass_mypy(cache_dir):
    status, output = run_mypy(cache_dir, ROOT / "lgmstm", EXAMPLE)
    assert status == 0, output


@needs_source
def test_misuse_is_reported(cache_dir, tmp_path):
    misuse = tmp_path / "misuse.py"
    misuse.write_text(textwrap.dedent("""
        import numpy as np
        import lgmstm
        from lgmstm import _dense, _openmp
        from lgmstm.sklearn import LGMRegressor

        X32 = np.zeros((2, 3), np.float32)
        W64 = np.zeros((3, 4), np.float64)
        b64 = np.zeros(4, np.float64)
        out64 = np.zeros((2, 4), np.float64)
        _dense.forward(X32, W64, b64, out64, True, 1)
        _openmp.set_num_threads("4")
        lgmstm.set_num_threads(2.5)
        flag: int = _openmp.openmp_enabled()
        name: str = _openmp.openmp_version()
        LGMRegressor(hidden_layer_sizes="32")
        LGMRegressor().fit([[1.0]], [1.0]).predict([[1.0]]).nonexistent
    """))
    status, output = run_mypy(cache_dir, ROOT / "lgmstm", misuse)
    assert status == 1
    errors = [line for line in output.splitlines() if "misuse.py" in line and "error" in line]
    lines = sorted({int(line.split(":")[1]) for line in errors})
    # Every misuse line is flagged, the mixed-dtype kernel call included;
    # `flag: int = <bool>` is fine (bool is an int).
    assert lines == [11, 12, 13, 15, 16, 17], output


def test_stubs_match_the_compiled_modules(run_python, tmp_path):
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nignore_missing_imports = True\n")
    allowlist = tmp_path / "allowlist.txt"  # Cython's module internals
    allowlist.write_text("lgmstm\\._\\w+\\.__test__\n"
                         "lgmstm\\._\\w+\\.__(reduce|setstate)_cython__\n"
                         "lgmstm\\._\\w+\\.__pyx_capi__\n")  # the cdef functions shared
    # Run where the installed (or in-place built) lgmstm is imported, never
    # a source tree without compiled modules.
    result = run_python(
        ["-m", "mypy.stubtest", "--mypy-config-file", str(config), "--allowlist",
         str(allowlist), "lgmstm._dense", "lgmstm._openmp", "lgmstm._rnn", "lgmstm._train", "lgmstm._lgm",
         "lgmstm._stm"],
        cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_typed_usage_runs(capsys):
    pytest.importorskip("sklearn", minversion="1.6")
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    assert "R^2" in capsys.readouterr().out
