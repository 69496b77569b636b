"""The demo (``lgmstm demo``) and the command line's small things: --plot,
the demo's progress lines, an unknown argument reported with its command's
usage, and the public submodules reachable after ``import lgmstm``."""
import importlib.util
import io
import os
import re
import shlex
import struct
import subprocess
import sys

import pytest

from lgmstm.__main__ import _Indented


@pytest.fixture(scope="module")
def quick_demo_with_plot(run_python, tmp_path_factory):
    """``python -m lgmstm demo --quick --plot demo.png`` (without --plot where
    matplotlib is missing): (the finished process, the PNG's path)."""
    folder = tmp_path_factory.mktemp("demo")
    path = folder / "demo.png"
    plot = ["--plot", str(path)] if importlib.util.find_spec("matplotlib") else []
    result = run_python(["-m", "lgmstm", "demo", "--quick", *plot], folder)
    return result, path


def png_size(path):
    """(width, height) in pixels, read from the PNG's header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_demo_plot(quick_demo_with_plot):
    pytest.importorskip("matplotlib")
    result, path = quick_demo_with_plot
    assert result.returncode == 0, result.stderr
    assert f"wrote {path}" in result.stdout
    assert png_size(path) == (960, 272)  # three panels, 12 x 3.4 inches at 80 dpi


def test_demo_progress_lines_are_indented(quick_demo_with_plot):
    result, _ = quick_demo_with_plot
    assert result.returncode == 0, result.stderr
    # Under the demo's own "  training with backend=..." lines.
    assert re.search(r"^  training with backend='cython'", result.stdout, re.M)
    progress = [line for line in result.stderr.splitlines() if " epoch " in line]
    assert progress, result.stderr
    assert all(re.match(r"    (LGM|STM): epoch \d+/\d+ ", line) for line in progress), progress


def test_demo_plot_without_matplotlib(run_python, tmp_path):
    hidden = tmp_path / "hide" / "matplotlib"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    result = run_python(["-m", "lgmstm", "demo", "--quick", "--plot", str(tmp_path / "x.png")],
                        tmp_path, extra_path=[hidden.parent])
    assert result.returncode == 1
    assert "lgmstm demo: --plot needs matplotlib" in result.stderr
    assert "lgmstm[plot]" in result.stderr
    assert result.stdout == ""  # refused before any training
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args, usage, error", [
    (["demo", "--fast"], "usage: python -m lgmstm demo ", "unrecognized arguments: --fast"),
    (["demo", "--plot", "/no/such/folder/demo.png"], "usage: python -m lgmstm demo ",
     "argument --plot: folder /no/such/folder does not exist"),
    (["bench", "--frobnicate"], "usage: python -m lgmstm bench ",
     "unrecognized arguments: --frobnicate"),
    (["info", "--quick"], "usage: python -m lgmstm info ", "unrecognized arguments: --quick"),
    (["--fast"], "usage: python -m lgmstm [-h]", "unrecognized arguments: --fast"),
    # Output paths are checked before any work: a folder, a name, a writable
    # folder, a format the plot can have.
    (["demo", "--plot", "."], "usage: python -m lgmstm demo ",
     "argument --plot: . is a folder, not a file"),
    (["demo", "--plot", ""], "usage: python -m lgmstm demo ",
     "argument --plot: expected a file name, got ''"),
    (["demo", "--plot", "demo.txt"], "usage: python -m lgmstm demo ",
     r"argument --plot: demo.txt: a plot is written as .png, .pdf, .svg from the file's "
     "suffix; name one"),
    (["bench", "--threads", "99999999999999999999"], "usage: python -m lgmstm bench ",
     "argument --threads: must be at most 1024, got 99999999999999999999"),
    # --only: the groups are cases, and have no sizes.
    (["bench", "--only", "dask:x"], "usage: python -m lgmstm bench ",
     "argument --only: dask runs as a whole: it has no sizes, got 'x'"),
    (["bench", "--only", "dense_forward:dask"], "usage: python -m lgmstm bench ",
     "argument --only: dense_forward has no size 'dask'; its sizes are seed, odd, medium, "
     "large"),
    (["bench", "--only", "dense_forward:"], "usage: python -m lgmstm bench ",
     "argument --only: no size after dense_forward: (give CASE or CASE:SIZE)"),
])
def test_bad_arguments_show_their_commands_usage(run_python, tmp_path, args, usage, error):
    result = run_python(["-m", "lgmstm", *args], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(usage), result.stderr
    assert f"error: {error}\n" in result.stderr
    assert result.stdout == ""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc, a folder no file is made in")
def test_an_output_folder_that_takes_no_file_is_refused_first(run_python, tmp_path):
    result = run_python(["-m", "lgmstm", "bench", "--json", "/proc/bench.json"], tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert re.search(r"error: argument --json: cannot write in /proc: \w", result.stderr)


def test_an_unknown_case_names_the_groups_too(run_python, tmp_path):
    result = run_python(["-m", "lgmstm", "bench", "--only", "nope"], tmp_path)
    assert result.returncode == 2
    assert "no benchmark case 'nope'; the cases are " in result.stderr
    assert result.stderr.rstrip().endswith(", dask, quality")


@pytest.mark.parametrize("mode", [["--loaded"], ["--passive"], ["--only", "dask"],
                                  ["--only", "quality"]])
def test_plot_is_refused_where_there_is_no_timing_table(run_python, tmp_path, mode):
    result = run_python(["-m", "lgmstm", "bench", *mode, "--plot", str(tmp_path / "b.png")],
                        tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("lgmstm bench: --plot plots the timing table's speed-ups; "
                                     f"{' '.join(mode)} has no such table")
    assert result.stdout == "" and not (tmp_path / "b.png").exists()


def test_a_closed_pipe_ends_the_output_quietly(tmp_path):
    """lgmstm demo --quick | head -1: head leaves after the first line, the
    demo's later lines go nowhere, and no traceback."""
    result = subprocess.run(f"{shlex.quote(sys.executable)} -m lgmstm demo --quick | head -1",
                            shell=True, cwd=tmp_path, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.startswith("lgmstm ")
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_output_that_cannot_be_written_is_one_line(tmp_path):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "lgmstm", "info"], cwd=tmp_path,
                                stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith("lgmstm info: [Errno 28] No space left on device")
    assert "Traceback" not in result.stderr


def test_indented_writes_every_line_behind_the_indent():
    out = io.StringIO()
    stream = _Indented(out, "    ")
    assert stream.write("LGM: epoch 1") == len("LGM: epoch 1")
    stream.write("/2\nLGM: epoch 2/2\n")
    stream.write("")
    stream.write("a\n\nb\n")
    assert out.getvalue() == "    LGM: epoch 1/2\n    LGM: epoch 2/2\n    a\n    \n    b\n"


def test_submodules_need_no_import_of_their_own(run_python, tmp_path):
    result = run_python(["-c", "import lgmstm; print(lgmstm.kernels.dense_forward.__name__, "
                               "lgmstm.reference.rnn_forward.__name__, "
                               "lgmstm.datasets.load_sunspots.__name__)"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["dense_forward", "rnn_forward", "load_sunspots"]
