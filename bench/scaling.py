"""Thread scaling of the compiled training steps: 1, 2, 4, ... N threads.

    python bench/scaling.py [--max-threads N] [--repeats R]

The medium training steps of the benchmark grid, and batch-parallel cases
big enough to give every thread several chunks. Each
line: the case, threads, median seconds per training step, speed-up over one
thread, parallel efficiency. Run it on an otherwise idle machine; unset
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE where they are set.
"""
import argparse
import os
import time

import numpy as np

import lgmstm


def lgm_case(n_samples):
    def make(dtype):
        rng = np.random.default_rng(0)
        X = rng.standard_normal((n_samples, 256)).astype(dtype)
        Y = rng.uniform(-0.5, 0.5, (n_samples, 64)).astype(dtype)
        model = lgmstm.LGM([256, 256, 64], dtype=dtype, seed=0)
        return (f"LGM {n_samples} x 256->256->64",
                lambda epochs: model.fit(X, Y, epochs=epochs, lr=1e-3))
    return make


def stm_case(n_samples, n_steps):
    def make(dtype):
        rng = np.random.default_rng(0)
        X = rng.standard_normal((n_samples, n_steps, 64)).astype(dtype)
        Y = rng.uniform(-0.5, 0.5, (n_samples, n_steps, 16)).astype(dtype)
        model = lgmstm.STM(64, 128, 16, dtype=dtype, seed=0)
        return (f"STM {n_samples} x {n_steps} steps x 64->128->16",
                lambda epochs: model.fit(X, Y, epochs=epochs, lr=1e-3))
    return make


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
    parser.add_argument("--max-threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    counts = [1]
    while counts[-1] * 2 <= args.max_threads:
        counts.append(counts[-1] * 2)
    if counts[-1] != args.max_threads:
        counts.append(args.max_threads)
    # The benchmark grid's medium sizes, then batch-parallel ones for many threads.
    cases = [lgm_case(256), stm_case(64, 100), lgm_case(4096), stm_case(1024, 50)]
    print(f"lgmstm {lgmstm.__version__}, {os.cpu_count()} cores")
    for make in cases:
        for dtype in (np.float64, np.float32):
            name, train = make(dtype)
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
