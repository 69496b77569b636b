"""The C kernels' portable builds: the code paths that only other platforms
compile (no target_clones and no per-ISA panel kernels: clang, aarch64,
LGMSTM_NO_DISPATCH; no vector extensions: MSVC, LGMSTM_NO_VECTORS) and the
per-ISA kernels that only some CPUs run, built here with the system C
compiler and checked against NumPy; LGMSTM_PANEL_LEVEL picks one ISA's
panel kernels, whatever the dispatcher would.

Each build runs a small C driver that prints the panel kernels' (packed
products, the gather into the panel layout and the scatter out of it
included) and tanh's results
on fixed inputs.
"""
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc" / "lgmstm"
COMPILER = shutil.which("cc") or shutil.which("gcc")

pytestmark = pytest.mark.skipif(
    COMPILER is None or not (CSRC / "_panel.h").is_file(),
    reason="needs a C compiler and the csrc/lgmstm/ headers beside tests/")

M, K, N = 13, 29, 48  # N: a whole number of 64-byte panels for both dtypes
# gather_panel: GS samples of GV values, GB blocks of GF features read, GL lanes
GS, GV, GF, GB, GL = 13, 29, 5, 5, 11
NP, LD = N - 7, N + 3  # packed products: NP columns (ragged), rows LD apart

DRIVER = r"""
#include <stdio.h>
#include <math.h>
#include "_panel.h"
#include "_tanh.h"

#define RUN(T, SUF, TANH_ROWS)                                                     \
    do {                                                                        \
        static T A[M * K], B[K * N], C[M * N], D[M * N], O[K * M], S[K], H[M * N]; \
        static T P[K * N], Q[K * N], Bt[N * K], E[M * LD], F[M * LD], W[M * 32]; \
        for (int i = 0; i < M * K; i++) A[i] = (T)sin(i * 0.37);                \
        for (int i = 0; i < K * N; i++) B[i] = (T)cos(i * 0.11);                \
        for (int i = 0; i < M * N; i++) D[i] = (T)(0.3 * sin(i));               \
        for (int i = 0; i < M * N; i++) H[i] = (T)(4.0 * sin(i * 0.7));         \
        lgmstm_panel_product_##SUF(M, N, K, A, K, 1, B, N, NULL, 0, D, N, C, N); \
        lgmstm_row_dots_##SUF(K, M, N, B, N, C, N, (T)2, (T)0, O, M);            \
        lgmstm_row_sums_##SUF(K, N, B, N, (T)1, (T)0, S);                         \
        TANH_ROWS(H, M, N - 5, N);                                              \
        /* Packed products of B's first NP columns (a ragged last panel), from \
           B and from B^T, into E (accumulating) and F, rows LD apart. */      \
        for (int i = 0; i < M * LD; i++) E[i] = F[i] = (T)(0.5 * cos(i * 0.3)); \
        for (int j = 0; j < NP; j++)                                            \
            for (int k = 0; k < K; k++) Bt[j * K + k] = B[k * N + j];           \
        lgmstm_pack_panels_##SUF(B, N, 0, K, NP, P);                            \
        lgmstm_packed_product_##SUF(M, NP, K, A, K, P, 1, E, LD, W);            \
        lgmstm_pack_panels_##SUF(Bt, K, 1, K, NP, Q);                           \
        lgmstm_packed_product_##SUF(M, NP, K, A, K, Q, 0, F, LD, W);            \
        for (int i = 0; i < M * N; i++) printf("%.17g\n", (double)C[i]);        \
        for (int i = 0; i < K * M; i++) printf("%.17g\n", (double)O[i]);        \
        for (int i = 0; i < K; i++) printf("%.17g\n", (double)S[i]);            \
        for (int i = 0; i < M * N; i++) printf("%.17g\n", (double)H[i]);        \
        for (int i = 0; i < M * LD; i++) printf("%.17g\n", (double)E[i]);       \
        for (int i = 0; i < M * LD; i++) printf("%.17g\n", (double)F[i]);       \
        /* gather_panel: GS samples of GV values (GB blocks of GF, then more), \
           lanes GL of N (the rest 0), by position from sample 1 and by rows. */ \
        static T G[GS * GV], Gd[GF * GB * N];                                   \
        static ptrdiff_t order[GS];                                             \
        for (int i = 0; i < GS * GV; i++) G[i] = (T)(i * 0.25 - 3);             \
        for (int i = 0; i < GS; i++) order[i] = (i * 5) % GS;                   \
        for (int pass = 0; pass < 2; pass++) {                                  \
            for (int i = 0; i < GF * GB * N; i++) Gd[i] = (T)7;                 \
            lgmstm_gather_panel_##SUF(G, GV, pass ? order : NULL, pass ? 2 : 1, GL, \
                                      GF * GB, GF, Gd, GB * N, N);              \
            for (int i = 0; i < GF * GB * N; i++) printf("%.17g\n", (double)Gd[i]); \
        }                                                                       \
        /* Rows of fewer values than a vector's lanes: 3 blocks of 1. */       \
        for (int i = 0; i < 3 * N; i++) Gd[i] = (T)7;                           \
        lgmstm_gather_panel_##SUF(G, GV, NULL, 0, GL, 3, 1, Gd, 3 * N, N);      \
        for (int i = 0; i < 3 * N; i++) printf("%.17g\n", (double)Gd[i]);      \
        /* scatter_panel: lanes GL of H's first M panel rows (tiles; for      \
           floats on AVX-512 fewer than the lanes), then of 3, to rows GV apart. */ \
        for (int pass = 0; pass < 2; pass++) {                                  \
            for (int i = 0; i < GL * GV; i++) G[i] = (T)7;                      \
            lgmstm_scatter_panel_##SUF(H, N, GL, pass ? 3 : M, G, GV);          \
            for (int i = 0; i < GL * GV; i++) printf("%.17g\n", (double)G[i]); \
        }                                                                       \
        /* gather_panel's check: 1 for finite samples; 0 with an inf read by   \
           a short tile (a lane's last value), or a NaN read by a full one. */ \
        for (int i = 0; i < GS * GV; i++) G[i] = (T)(i * 0.25 - 3);             \
        printf("%d\n", lgmstm_gather_panel_##SUF(G, GV, NULL, 0, GL, 3, 1, Gd, 3 * N, N)); \
        G[(GL - 1) * GV + 2] = (T)INFINITY;                                     \
        printf("%d\n", lgmstm_gather_panel_##SUF(G, GV, NULL, 0, GL, 3, 1, Gd, 3 * N, N)); \
        G[(GL - 1) * GV + 2] = (T)0;                                            \
        G[5 * GV + 17] = (T)NAN;                                                \
        printf("%d\n", lgmstm_gather_panel_##SUF(G, GV, NULL, 1, GL, GF * GB, GF, Gd,  \
                                                GB * N, N));                    \
    } while (0)

int main(void)
{
    RUN(double, d, lgmstm_tanh_rows_d);
    RUN(float, f, lgmstm_tanh_rows_f);
    return 0;
}
"""


def expected(dtype):
    """The driver's results computed with NumPy, in float64."""
    i = np.arange
    A = np.sin(i(M * K) * 0.37).astype(dtype).astype(float).reshape(M, K)
    B = np.cos(i(K * N) * 0.11).astype(dtype).astype(float).reshape(K, N)
    D = (0.3 * np.sin(i(M * N))).astype(dtype).astype(float).reshape(M, N)
    H = (4.0 * np.sin(i(M * N) * 0.7)).astype(dtype).astype(float).reshape(M, N)
    C = (A @ B) * (1 - D**2)
    O = 2 * B @ C.T
    S = B.sum(axis=1)
    H[:, : N - 5] = np.tanh(H[:, : N - 5])
    E = (0.5 * np.cos(i(M * LD) * 0.3)).astype(dtype).astype(float).reshape(M, LD)
    F = E.copy()  # its columns past NP must stay as they were, like E's
    E[:, :NP] += A @ B[:, :NP]
    F[:, :NP] = A @ B[:, :NP]
    G = (i(GS * GV) * 0.25 - 3).astype(dtype).astype(float).reshape(GS, GV)
    order = (i(GS) * 5) % GS
    gathered = []
    for samples in (i(1, 1 + GL), order[2:2 + GL]):
        panel = np.zeros((GF, GB, N))  # [f, b, lane]: value b * GF + f of each lane's sample
        panel[:, :, :GL] = G[samples, :GF * GB].reshape(GL, GB, GF).transpose(2, 1, 0)
        gathered.append(panel.ravel())
    short = np.zeros((3, N))  # [b, lane]: value b of samples 0 .. GL - 1
    short[:, :GL] = G[:GL, :3].T
    gathered.append(short.ravel())
    scattered = []
    for n_values in (M, 3):
        rows = np.full((GL, GV), 7.0)
        rows[:, :n_values] = H[:n_values, :GL].T
        scattered.append(rows.ravel())
    checks = np.array([1.0, 0.0, 0.0])  # gather_panel: finite, an inf, a NaN
    return [C.ravel(), O.ravel(), S, H.ravel(), E.ravel(), F.ravel(), *gathered, *scattered,
            checks]


def cpu_has(*flags):
    """Whether this x86 Linux CPU reports every one of these /proc/cpuinfo flags."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    reported = next((line.split(":", 1)[1].split() for line in text.splitlines()
                     if line.startswith("flags")), [])
    return all(flag in reported for flag in flags)


@pytest.mark.parametrize("flags", [
    [],
    pytest.param(["-DLGMSTM_PANEL_LEVEL=2"], marks=pytest.mark.skipif(
        not cpu_has("avx512f", "avx512bw", "avx512dq", "avx512vl"), reason="no AVX-512")),
    pytest.param(["-DLGMSTM_PANEL_LEVEL=1"], marks=pytest.mark.skipif(
        not cpu_has("avx2", "fma"), reason="no AVX2 and FMA")),
    ["-DLGMSTM_PANEL_LEVEL=0"],
    ["-DLGMSTM_NO_DISPATCH"],
    ["-DLGMSTM_NO_DISPATCH", "-march=native"],
    ["-DLGMSTM_NO_DISPATCH", "-DLGMSTM_NO_VECTORS"],
], ids=["dispatch", "avx512", "avx2", "baseline", "portable", "portable-native", "scalar"])
def test_kernels_build_and_agree_with_numpy(tmp_path, flags):
    source = tmp_path / "driver.c"
    source.write_text(f"#define M {M}\n#define K {K}\n#define N {N}\n#define NP {NP}\n"
                      f"#define LD {LD}\n#define GS {GS}\n#define GV {GV}\n#define GF {GF}\n"
                      f"#define GB {GB}\n#define GL {GL}\n" + DRIVER)
    program = tmp_path / "driver"
    build = subprocess.run(
        [COMPILER, "-O2", "-std=c99", "-fno-trapping-math", "-Wall", "-Werror",
         "-Wno-unknown-pragmas", "-Wno-unused-function", *flags, f"-I{CSRC}", str(source), "-o", str(program), "-lm"],
        capture_output=True, text=True)
    if build.returncode != 0 and "-march=native" in flags and "march" in build.stderr:
        pytest.skip("the compiler has no -march=native")
    assert build.returncode == 0, build.stderr
    values = np.array(subprocess.run([str(program)], capture_output=True, text=True,
                                     check=True).stdout.split(), dtype=float)
    sizes = [M * N, K * M, K, M * N, M * LD, M * LD, GF * GB * N, GF * GB * N, 3 * N,
             GL * GV, GL * GV, 3]
    for dtype, rtol in ((np.float64, 1e-12), (np.float32, 2e-5)):
        for got_size, want in zip(sizes, expected(dtype)):
            got, values = values[:got_size], values[got_size:]
            scale = max(1.0, np.abs(want).max())
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale)
    assert values.size == 0
