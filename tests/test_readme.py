"""Every ```python block of README.md runs as shown, on its own, and prints what
it says it prints.

Each block runs alone in a fresh interpreter (``sys.executable``) in an empty
folder, so a block that leans on an earlier one fails here. The README shows
output as ``# -> text`` comments, at the end of a line or on a line of their
own: every such comment is one line of what the block prints, in order, and a
block with any must print exactly those lines. In a line, numbers written
with a decimal point (losses, errors, R²) match within 3% or half a unit of
their last digit, since they come out of training and the last digit may
differ on another CPU or BLAS; everything else, whole numbers too, matches
exactly. A block that imports an optional extra (scikit-learn, matplotlib,
dask, PyTorch) is skipped when that extra is not installed, and only then.
"""
import ast
import importlib.util
import math
import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

# The top-level module a block imports -> the module that provides it, for
# those the package does not need.
OPTIONAL = {"sklearn": "sklearn", "matplotlib": "matplotlib", "dask": "dask",
            "distributed": "distributed", "lgmstm.dask": "distributed",
            "torch": "torch", "lgmstm.sklearn": "sklearn"}

OUTPUT_MARK = re.compile(r"#\s*->\s?(.*)$")
NUMBER = re.compile(r"[-+]?\d+(?:\.(\d+))?(?:[eE]([-+]?\d+))?")


def python_blocks(text):
    """(first line number, heading above, code) of each ```python block."""
    blocks, heading, fence, start = [], "", None, 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if fence is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            elif stripped.startswith("```"):
                fence, code, start = stripped[3:], [], number + 1
        elif stripped == "```":
            if fence == "python":
                blocks.append((start, heading, "\n".join(code) + "\n"))
            fence = None
        else:
            code.append(line)
    assert fence is None, f"README.md: the block at line {start - 1} is not closed"
    return blocks


def expected_output(code):
    """The lines the block says it prints: its ``# -> text`` comments, in order."""
    lines = []
    for line in code.splitlines():
        # A mark inside a string is not a comment; the blocks keep none there.
        mark = OUTPUT_MARK.search(line)
        if mark:
            lines.append(mark.group(1).rstrip())
    return lines


def line_matches(printed, expected):
    """True if the printed line says what the README's line says (see above)."""
    printed_numbers = list(NUMBER.finditer(printed))
    expected_numbers = list(NUMBER.finditer(expected))
    if (NUMBER.sub("#", printed) != NUMBER.sub("#", expected)
            or len(printed_numbers) != len(expected_numbers)):
        return False
    for got, want in zip(printed_numbers, expected_numbers):
        decimals, exponent = want.group(1), want.group(2)
        if decimals is None:
            if got.group() != want.group():
                return False
        else:
            half_unit = 0.5 * 10.0 ** (int(exponent or 0) - len(decimals))
            if not math.isclose(float(got.group()), float(want.group()), rel_tol=0.03,
                                abs_tol=half_unit):
                return False
    return True


def missing_extras(code, optional=OPTIONAL):
    """The optional extras a block imports (`optional`: module -> the module
    that provides it) that are not installed."""
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    needed = {optional[prefix] for name in names for prefix in optional
              if name == prefix or name.startswith(prefix + ".")}
    return sorted(m for m in needed if importlib.util.find_spec(m) is None)


BLOCKS = python_blocks(README.read_text(encoding="utf-8")) if README.is_file() else []


@pytest.mark.skipif(not README.is_file(), reason="no README.md beside tests/ (an installed copy)")
def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 5


def assert_block_runs(code, where, run_python, tmp_path):
    """Run a documentation block alone, in a fresh interpreter in tmp_path
    (skipped when it needs an extra not installed): it must succeed and
    print what its ``# ->`` lines show (line_matches). where: the block's
    place, for the messages."""
    missing = missing_extras(code)
    if missing:
        pytest.skip(f"needs {', '.join(missing)}, not installed")
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    result = run_python([str(script)], tmp_path,
                        env={**os.environ, "PYTHONIOENCODING": "utf-8", "MPLBACKEND": "Agg"})
    assert result.returncode == 0, f"{where} failed:\n{result.stderr}"
    expected = expected_output(code)
    if expected:
        printed = result.stdout.splitlines()
        assert len(printed) == len(expected) and all(map(line_matches, printed, expected)), (
            f"{where} printed\n{result.stdout}\nwhere the docs show\n" + "\n".join(expected))


@pytest.mark.parametrize("start, heading, code", BLOCKS,
                         ids=[f"line {start} ({heading})" for start, heading, _ in BLOCKS])
def test_block_runs_alone(start, heading, code, run_python, tmp_path):
    assert_block_runs(code, f"README.md line {start} ({heading})", run_python, tmp_path)


@pytest.mark.parametrize("printed, expected, matches", [
    ("True", "True", True),
    ("False", "True", False),
    ("True True", "True", False),
    ("held-out RMSE 18.3", "held-out RMSE 18.3", True),
    ("held-out RMSE 18.6", "held-out RMSE 18.3", True),    # within 3%
    ("held-out RMSE 19.6", "held-out RMSE 18.3", False),
    ("R^2 0.50", "R^2 0.50", True),
    ("R^2 0.505", "R^2 0.50", True),                        # half a unit of 0.50's last digit
    ("R^2 0.46", "R^2 0.50", False),
    ("shape (442, 1)", "shape (442, 1)", True),
    ("shape (441, 1)", "shape (442, 1)", False),           # whole numbers: exactly
    ("loss 1.30e-03", "loss 1.31e-03", True),
    ("loss 2.0e-03", "loss 1.3e-03", False),
    ("RMSE 18.3", "MSE 18.3", False),
])
def test_line_matches(printed, expected, matches):
    assert line_matches(printed, expected) == matches


def test_blocks_and_marks_are_found():
    text = ("# Title\n\n## Part\n\n```python\nprint(1)  # -> 1\n# -> two\n```\n\n"
            "```\n# not a heading: a shell comment\n```\n\n```python\nx = 1\n```\n")
    blocks = python_blocks(text)
    assert [(start, heading) for start, heading, _ in blocks] == [(6, "Part"), (15, "Part")]
    assert expected_output(blocks[0][2]) == ["1", "two"]
    assert expected_output(blocks[1][2]) == []


def test_optional_imports_are_found():
    assert missing_extras("import numpy\nfrom lgmstm import kernels\n") == []
    # A module that is not installed anywhere stands in for a missing extra.
    optional = {**OPTIONAL, "no_such_extra": "no_such_extra"}
    assert missing_extras("import numpy\nfrom no_such_extra.part import x\n",
                          optional) == ["no_such_extra"]
    assert missing_extras("import numpy as no_such_extra\n", optional) == []
