"""Every ```python block of docs/dask.md runs as shown, on its own, and prints
what it says it prints, as tests/test_readme.py checks the README's (with its
block extractor and its rules for ``# -> text`` marks and optional extras).

One block is shown, not run: the one marked ``<!-- not run: ... -->`` on the
line above its fence (it connects to a scheduler at tcp://scheduler:8786);
it must still be valid Python, and it is the only one so marked.
"""
import ast
from pathlib import Path

import pytest

from test_readme import assert_block_runs, python_blocks

DOCS = Path(__file__).resolve().parent.parent / "docs" / "dask.md"
NOT_RUN = "<!-- not run:"


def marked_blocks(text):
    """(first line number, heading, code, run) of each ```python block: run is
    False for a block whose fence follows a NOT_RUN comment line."""
    lines = text.splitlines()
    return [(start, heading, code, not (start >= 3 and lines[start - 3].startswith(NOT_RUN)))
            for start, heading, code in python_blocks(text)]


BLOCKS = marked_blocks(DOCS.read_text(encoding="utf-8")) if DOCS.is_file() else []
pytestmark = pytest.mark.skipif(not DOCS.is_file(), reason="no docs/ beside tests/ "
                                                          "(an installed copy)")


def test_one_block_is_shown_not_run():
    assert len(BLOCKS) >= 5
    shown = [(heading, code) for _, heading, code, run in BLOCKS if not run]
    assert [heading for heading, _ in shown] == ["On a cluster"]
    for _, code in shown:
        ast.parse(code)


@pytest.mark.parametrize("start, heading, code", [block[:3] for block in BLOCKS if block[3]],
                         ids=[f"line {start} ({heading})" for start, heading, _, run in BLOCKS
                              if run])
def test_block_runs_alone(start, heading, code, run_python, tmp_path):
    assert_block_runs(code, f"docs/dask.md line {start} ({heading})", run_python, tmp_path)


def test_a_marked_block_is_found():
    text = ("## Part\n\n```python\nx = 1\n```\n\n" + NOT_RUN + " needs a cluster -->\n"
            "```python\ny = 2\n```\n")
    assert [(start, run) for start, _, _, run in marked_blocks(text)] == [(4, True), (9, False)]
