"""How long lgmstm's idle OpenMP threads spin before they sleep (libgomp).

libgomp reads its wait policy from the environment once, when it is loaded
(with lgmstm's first compiled module). Left unset, its threads spin about
300000 times after every parallel region before they sleep: about 9 ms on
the 2-core Xeon of issue 13 (31 ns a spin). On a machine that has other
work, those spinning threads hold cores that the other work, and lgmstm's
own threads at the next region, need. ``OMP_WAIT_POLICY=passive`` (no spin)
makes every region pay for waking its threads instead.

So when the user has set neither ``OMP_WAIT_POLICY`` nor ``GOMP_SPINCOUNT``,
lgmstm gives libgomp :data:`SPIN_COUNT` spins (about 0.3 ms here), which
keeps the threads awake across the back-to-back regions of a training step
and from one short epoch to the next, and lets them sleep soon after.
The variable is set only while the compiled modules load, then the
environment is as it was (child processes do not inherit it). A libgomp
that another package loaded earlier keeps its own settings; LLVM's libomp
(``KMP_BLOCKTIME``) is left alone.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

# Spins before an idle libgomp thread sleeps, when the user chose no policy.
SPIN_COUNT = 10000

# The wait policy the kernels' threads got, for show_config (see spin_count_while_loading).
policy = "libgomp's default"


def _libgomp_loaded() -> bool:
    """Whether a libgomp is mapped into this process (Linux; False elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:
        return False


@contextmanager
def spin_count_while_loading():
    """Give libgomp SPIN_COUNT spins while the compiled modules load, unless
    the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT; restore the environment."""
    global policy
    given = [f"{name}={os.environ[name]}" for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
             if name in os.environ]
    if given:
        policy = f"{', '.join(given)} (the user's)"
        yield
        return
    policy = f"GOMP_SPINCOUNT={SPIN_COUNT} (lgmstm's default"
    policy += ("; a libgomp was loaded before lgmstm and may keep its own)"
               if _libgomp_loaded() else ")")
    os.environ["GOMP_SPINCOUNT"] = str(SPIN_COUNT)
    try:
        yield
    finally:
        os.environ.pop("GOMP_SPINCOUNT", None)
