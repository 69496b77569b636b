"""Build the Cython kernels, with OpenMP where the compiler has it.

LGMSTM_FAIL_NO_OPENMP=1 turns a missing OpenMP into a build error (CI sets it);
otherwise the build goes on single-threaded with a warning.

LGMSTM_DEBUG=1 builds for AddressSanitizer (see .ci/sanitize): Cython's
bounds, wraparound and initialisation checks on, -O1 -g -fsanitize=address.
"""
import os
import subprocess
import sys
import tempfile
import textwrap
import warnings

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# The compiled modules, in csrc/lgmstm/ (see docs/architecture.md): the
# building blocks that share cdef functions through their .pxd files, the two
# model programs, and the build facts.
MODULES = ["_openmp", "_train", "_dense", "_rnn", "_lgm", "_stm", "_deep_stm"]

OPENMP_FLAGS = {
    # compiler type: (compile flags, link flags)
    "unix": (["-fopenmp"], ["-fopenmp"]),
    "msvc": (["/openmp"], []),
    "mingw32": (["-fopenmp"], ["-fopenmp"]),
}
OPTIMIZE_FLAGS = {
    # -fno-trapping-math lets GCC vectorise tanh's branch-free selects, and
    # -fno-math-errno the optimizers' sqrt (Adam's update loop ran scalar,
    # a branch per element to set errno); the results do not change
    # (nothing here reads floating-point exceptions or errno, and sqrt is
    # correctly rounded in either form).
    "unix": ["-O3", "-fno-trapping-math", "-fno-math-errno", "-g0"],
    "mingw32": ["-O3", "-fno-trapping-math", "-fno-math-errno", "-g0"],
    "msvc": ["/O2"],
}

DEBUG = os.environ.get("LGMSTM_DEBUG", "0") not in ("", "0")
DEBUG_FLAGS = ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address"]

OPENMP_TEST = textwrap.dedent(
    """
    #include <omp.h>
    int main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }
    """
)


def _openmp_flags(compiler):
    """(compile, link) flags that build and link an OpenMP program, or None."""
    if sys.platform == "darwin":
        # Apple clang takes OpenMP through the preprocessor, with Homebrew's libomp.
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
    else:
        candidates = [OPENMP_FLAGS.get(compiler.compiler_type, (["-fopenmp"], ["-fopenmp"]))]
    with tempfile.TemporaryDirectory() as tmp:
        source = os.path.join(tmp, "omp_test.c")
        with open(source, "w") as f:
            f.write(OPENMP_TEST)
        for compile_flags, link_flags in candidates:
            try:
                objects = compiler.compile([source], output_dir=tmp, extra_postargs=compile_flags)
                compiler.link_executable(objects, "omp_test", output_dir=tmp, extra_postargs=link_flags)
            except Exception:
                continue
            return compile_flags, link_flags
    return None


class BuildExt(build_ext):
    def finalize_options(self):
        super().finalize_options()
        # The modules compile independently: one per core.
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        kind = self.compiler.compiler_type
        flags = _openmp_flags(self.compiler)
        if flags is None:
            message = (
                "lgmstm: this compiler cannot build OpenMP programs; the kernels "
                "will run on one thread."
            )
            if os.environ.get("LGMSTM_FAIL_NO_OPENMP", "0") not in ("", "0"):
                raise RuntimeError(message + " (LGMSTM_FAIL_NO_OPENMP is set)")
            warnings.warn(message)
            flags = ([], [])
        compile_args = (DEBUG_FLAGS if DEBUG else OPTIMIZE_FLAGS.get(kind, [])) + flags[0]
        link_args = flags[1] + (DEBUG_FLAGS if DEBUG else [])
        for ext in self.extensions:
            ext.extra_compile_args = compile_args
            ext.extra_link_args = link_args
        self._write_build_info(compile_args, link_args)
        super().build_extensions()

    def _write_build_info(self, compile_args, link_args):
        """lgmstm/_build_info.py beside the built modules, for lgmstm.show_config()."""
        command = getattr(self.compiler, "compiler_so", None) or [self.compiler.compiler_type]
        try:
            version = subprocess.run([command[0], "--version"], capture_output=True,
                                     text=True).stdout.splitlines()[0]
        except (OSError, IndexError):
            version = command[0]
        text = ('"""Written by setup.py at build time; read by lgmstm.show_config()."""\n'
                f"COMPILER = {version!r}\n"
                f"COMPILE_ARGS = {command[1:] + compile_args!r}\n"
                f"LINK_ARGS = {link_args!r}\n")
        os.makedirs(os.path.join(self.build_lib, "lgmstm"), exist_ok=True)
        with open(os.path.join(self.build_lib, "lgmstm", "_build_info.py"), "w") as f:
            f.write(text)

    def run(self):
        super().run()
        if self.inplace:  # setuptools built into build_lib, then copied the modules back
            self.copy_file(os.path.join(self.build_lib, "lgmstm", "_build_info.py"), "lgmstm")


extensions = [
    Extension(
        f"lgmstm.{name}",
        [f"csrc/lgmstm/{name}.pyx"],
        include_dirs=["csrc/lgmstm", np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION")],
    )
    for name in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["csrc"],
        nthreads=os.cpu_count() or 1,
        compiler_directives={
            "language_level": 3,
            # Shapes are checked once in Python; kernels trust their views.
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
            **({"boundscheck": True, "wraparound": True, "initializedcheck": True}
               if DEBUG else {}),
        },
    ),
    cmdclass={"build_ext": BuildExt},
)
