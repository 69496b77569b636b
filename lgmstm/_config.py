"""show_config(): what this lgmstm was built with and what it runs on."""
from __future__ import annotations

import os
import platform
import sys
import sysconfig

from . import _openmp, _waiting
from ._threads import available_cores, get_num_threads
from ._version import __version__

__all__ = ["show_config"]

# The _OPENMP date macro of each OpenMP specification.
OPENMP_VERSIONS = {200505: "OpenMP 2.5", 200805: "OpenMP 3.0", 201107: "OpenMP 3.1",
                   201307: "OpenMP 4.0", 201511: "OpenMP 4.5", 201811: "OpenMP 5.0",
                   202011: "OpenMP 5.1", 202111: "OpenMP 5.2"}


def _cpu_has(*flags):
    """True/False when /proc/cpuinfo lists every flag, None where there is no /proc."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(flags) <= set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


# The CPU features the kernels' builds choose between (see _tanh_clone and
# _openmp.panel_kernel_build), as /proc/cpuinfo names them.
KERNEL_FLAGS = ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx2", "fma",
                "bmi1", "bmi2", "movbe")


def cpu_info():
    """The CPU: {"vendor", "model", "cores" (this process's), "flags" (those of
    KERNEL_FLAGS it has, None where /proc/cpuinfo cannot be read)}."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = fields.get("flags")
    return {
        "vendor": fields.get("vendor_id") or platform.processor() or "unknown",
        "model": fields.get("model name") or platform.machine() or "unknown",
        "cores": available_cores(),
        "flags": None if flags is None else [f for f in KERNEL_FLAGS if f in flags.split()],
    }


def describe_cpu(cpu=None):
    """One line naming the CPU and the kernel builds it runs (for reports)."""
    cpu = cpu or cpu_info()
    flags = "unknown" if cpu["flags"] is None else " ".join(cpu["flags"]) or "none"
    return (f"{cpu['vendor']} {cpu['model']}, {cpu['cores']} core(s); flags {flags}; "
            f"tanh {_tanh_clone() or 'unknown'}, panels {_openmp.panel_kernel_build()}")


def _tanh_clone():
    """The tanh clone the loader picks on this CPU (GCC's x86-64 levels), or
    None where the CPU's features cannot be read."""
    if _cpu_has("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"):
        return "x86-64-v4 (AVX-512)"
    has_v3 = _cpu_has("avx2", "fma", "bmi1", "bmi2", "movbe")
    if has_v3 is None:
        return None
    return "x86-64-v3 (AVX2+FMA)" if has_v3 else "baseline"


def _compiler():
    """(compiler, flags) of the extension modules.

    Read from lgmstm/_build_info.py when the build wrote one; otherwise the
    compiler and flags Python was built with, which setuptools starts from.
    """
    try:
        from . import _build_info
    except ImportError:
        return (sysconfig.get_config_var("CC") or "unknown",
                f"{sysconfig.get_config_var('CFLAGS') or ''} (Python's; the build "
                f"did not record the extension's own flags)")
    return (_build_info.COMPILER, f"{' '.join(_build_info.COMPILE_ARGS)} "
                                  f"(link: {' '.join(_build_info.LINK_ARGS)})")


def config_info():
    """Everything show_config prints, as a dict of plain values."""
    import numpy
    import scipy
    from threadpoolctl import threadpool_info

    scipy_blas = scipy.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    libraries = []
    found = threadpool_info()
    # The kernels call BLAS through scipy.linalg.cython_blas, the NumPy
    # reference through numpy. A wheel's BLAS lies in scipy's own folders
    # (scipy.libs/, or scipy/.dylibs/): where one does, it is the kernels'
    # (numpy's may be the same OpenBLAS version); else tell them by version.
    scipy_home = os.path.dirname(os.path.abspath(scipy.__file__))
    homes = (scipy_home + os.sep, scipy_home + ".libs" + os.sep)
    blas = [library for library in found if library["user_api"] == "blas"]
    inside = [library for library in blas
              if os.path.abspath(library.get("filepath") or "").startswith(homes)]
    for library in found:
        entry = {key: library.get(key) for key in
                 ("user_api", "internal_api", "version", "num_threads", "architecture",
                  "filepath")}
        if library["user_api"] == "blas":
            entry["used_by_kernels"] = (library in inside if inside else
                                        library.get("version") == scipy_blas.get("version"))
        libraries.append(entry)
    compiler, flags = _compiler()
    return {
        "lgmstm": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "openmp": _openmp.openmp_enabled(),
        "openmp_version": _openmp.openmp_version(),
        "threads": get_num_threads(),
        "wait_policy": _waiting.policy,
        "cpu": cpu_info(),
        "simd_dispatch": _openmp.simd_dispatch(),
        "simd_clone": _tanh_clone(),
        "panel_kernels": _openmp.panel_kernel_build(),
        "scipy_blas": f"{scipy_blas.get('name', 'unknown')} {scipy_blas.get('version', '')}".strip(),
        "compiler": compiler,
        "flags": flags,
        "libraries": libraries,
    }


def show_config(file=None):
    """Print lgmstm's version, build (OpenMP, SIMD, compiler) and runtime
    libraries (BLAS and OpenMP, from threadpoolctl).

    Parameters
    ----------
    file : text stream, default sys.stdout
    """
    info = config_info()
    if info["openmp"]:
        version = OPENMP_VERSIONS.get(info["openmp_version"], "")
        openmp = (f"yes (_OPENMP {info['openmp_version']}{', ' + version if version else ''}), "
                  f"{info['threads']} thread(s) by default")
    else:
        openmp = "no: the kernels run on one thread"
    if info["simd_dispatch"]:
        chosen = info["simd_clone"] or "unknown here"
        simd = ("tanh loops built for baseline, x86-64-v3 and x86-64-v4, one picked at "
                f"load time (this CPU: {chosen})")
    else:
        simd = "none: tanh loops built for the baseline ISA only"
    lines = [
        f"lgmstm {info['lgmstm']}",
        f"  python    {info['python']} on {info['platform']}",
        f"  numpy     {info['numpy']}, scipy {info['scipy']}",
        f"  OpenMP    {openmp}",
        f"  waiting   idle threads: {info['wait_policy']}",
        f"  CPU       {describe_cpu(info['cpu'])}",
        f"  SIMD      {simd}",
        f"  panels    small-network and recurrent-weight kernels: the "
        f"{info['panel_kernels']} build",
        f"  compiler  {info['compiler']}",
        f"  flags     {info['flags']}",
        f"  BLAS      kernels call scipy's ({info['scipy_blas']}) through "
        f"scipy.linalg.cython_blas; the NumPy reference calls numpy's",
        "  libraries loaded (threadpoolctl):",
    ]
    for library in info["libraries"]:
        role = " [scipy's: the kernels' BLAS]" if library.get("used_by_kernels") else ""
        details = ", ".join(f"{key} {library[key]}" for key in
                            ("version", "num_threads", "architecture") if library[key])
        lines.append(f"    {library['user_api']:6} {library['internal_api']:9} "
                     f"{details}{role}")
        lines.append(f"           {library['filepath']}")
    print("\n".join(lines), file=file or sys.stdout)
