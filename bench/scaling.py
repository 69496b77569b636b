"""Thread scaling of the compiled training steps: 1, 2, 4, ... N threads.

    python bench/scaling.py [--max-threads N] [--repeats R] [--quick]

Threads go up to N, by default the cores this process may run on
(lgmstm._threads.available_cores: its CPU affinity, else os.cpu_count()),
1, 2, 4, ... and N itself. The first line names the CPU (vendor, model, the
flags the kernel builds choose between, the builds picked) and the idle
threads' wait policy.

The lgm_step and stm_step of lgmstm.benchmarks at its SCALING_SIZES: the
medium sizes of the benchmark grid, and batch-parallel ones big enough to
give every thread several chunks (--quick: the grid's seed sizes instead, to
check that the script runs). Each
line: the case, threads, median seconds per training step, speed-up over one
thread, parallel efficiency. Run it on an otherwise idle machine; unset
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE where they are set.
"""
import argparse
import time

import numpy as np

import lgmstm
from lgmstm import benchmarks
from lgmstm._config import config_info, describe_cpu
from lgmstm._threads import available_cores


def compiled_step(size, dtype):
    """(label, train(epochs)): the benchmark's compiled training step (lgm_step
    or stm_step, implementation "lgmstm") at that size and dtype."""
    dense = isinstance(size, benchmarks.DenseSize)
    case = next(case for case in benchmarks.CASES
                if case.name == ("lgm_step" if dense else "stm_step"))
    implementation = next(i for i in case.implementations if i.name == "lgmstm")
    network = f"{size.n_in}->{size.n_hidden}->{size.n_out}"
    label = (f"LGM {size.n_samples} x {network}" if dense
             else f"STM {size.n_samples} x {size.n_steps} steps x {network}")
    return label, implementation.make(size, np.dtype(dtype))


def seconds_per_step(train, repeats):
    train(1)  # warm-up: page in buffers, start threads
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        train(3)
        times.append((time.perf_counter() - started) / 3)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-threads", type=int, default=available_cores())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="the benchmark grid's seed sizes (tiny): a check that it runs")
    args = parser.parse_args()
    for name, value in (("--max-threads", args.max_threads), ("--repeats", args.repeats)):
        if value < 1:
            parser.error(f"{name}: expected an integer of at least 1, got {value}")
    sizes = benchmarks.SCALING_SIZES
    if args.quick:
        sizes = tuple(size for size in (*benchmarks.DENSE_SIZES, *benchmarks.RECURRENT_SIZES)
                      if size.name in benchmarks.QUICK_SIZES)
    counts = [1]
    while counts[-1] * 2 <= args.max_threads:
        counts.append(counts[-1] * 2)
    if counts[-1] != args.max_threads:
        counts.append(args.max_threads)
    config = config_info()
    print(f"lgmstm {lgmstm.__version__}; CPU: {describe_cpu(config['cpu'])}; "
          f"OpenMP waiting: {config['wait_policy']}")
    for size in sizes:
        for dtype in (np.float64, np.float32):
            name, train = compiled_step(size, dtype)
            base = None
            for threads in counts:
                lgmstm.set_num_threads(threads)
                step = seconds_per_step(train, args.repeats)
                base = base or step
                print(f"{name:36s} {np.dtype(dtype).name:8s} threads {threads:3d}  "
                      f"{step * 1e3:9.2f} ms/step  x{base / step:5.2f}  "
                      f"efficiency {base / step / threads:5.0%}", flush=True)


if __name__ == "__main__":
    main()
