"""One version: written once, in lgmstm/_version.py, and read from there by
lgmstm.__version__, the build (pyproject.toml's dynamic version) and so the
installed metadata."""
import ast
import importlib.metadata
from pathlib import Path

import pytest

import lgmstm

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
needs_source = pytest.mark.skipif(not (ROOT / "pyproject.toml").exists(),
                                  reason="not in a source checkout")


@needs_source
def test_pyproject_has_no_version_of_its_own():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in config["project"]
    assert "version" in config["project"]["dynamic"]
    assert config["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "lgmstm._version.__version__"}


@needs_source
def test_the_version_is_a_literal_the_build_reads_without_importing():
    # setuptools reads `attr` statically when the module assigns a literal at
    # its top level; lgmstm itself cannot be imported before it is built.
    tree = ast.parse((ROOT / "lgmstm" / "_version.py").read_text(encoding="utf-8"))
    values = [node.value for node in tree.body if isinstance(node, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)]
    assert len(values) == 1
    assert isinstance(values[0], ast.Constant) and values[0].value == lgmstm.__version__


def test_installed_metadata_has_the_package_version():
    assert importlib.metadata.version("lgmstm") == lgmstm.__version__
