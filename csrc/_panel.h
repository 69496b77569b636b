/* Panel kernels: the arithmetic of small networks, without BLAS.
 *
 * Small networks run in a feature-major layout: an activation matrix is
 * stored transposed, one row per unit and one column per sample, with the
 * columns padded to a multiple of LGMSTM_PANEL. Every product then runs
 * along the samples, in vectors as long as the batch, however few units a
 * layer has; BLAS, handed the same products as 2-5 column matrices, spends
 * more time on call and packing overhead than on arithmetic.
 *
 *   panel_product  C = (init + A B) [* tanh']   A small (m, k), B, C (., n) panels
 *   row_dots       out = scale X Y^T + beta out       (weight gradients)
 *   row_sums       out = scale Y 1 + beta out         (bias gradients)
 *
 * Sums over samples run in one fixed order (lanes of a panel, then the
 * lanes in order), so results never depend on who calls or when. Built, as
 * tanh, for the baseline ISA, AVX2+FMA and AVX-512 (see _tanh.h).
 */
#ifndef LGMSTM_PANEL_H
#define LGMSTM_PANEL_H

#include <stddef.h>
#include <string.h>
#include "_tanh.h"  /* LGMSTM_DISPATCH */

/* Columns per panel: a multiple of every vector width (16 floats = 512 bits). */
#define LGMSTM_PANEL 16

/* Accumulators are GCC/Clang generic vectors of 32 bytes, which every
 * clone keeps in registers (one ymm, or two xmm in the baseline build);
 * wider generic vectors are split badly where the target lacks them. A
 * panel row is LGMSTM_PANEL_VECS(T) of them; memcpy does the unaligned
 * loads and stores. */
#define LGMSTM_VECTOR_BYTES 32
#define LGMSTM_PANEL_VECS(T) (LGMSTM_PANEL * (int)sizeof(T) / LGMSTM_VECTOR_BYTES)
#define LGMSTM_LANES(T) (LGMSTM_VECTOR_BYTES / (int)sizeof(T))
typedef double lgmstm_vector_d __attribute__((vector_size(LGMSTM_VECTOR_BYTES)));
typedef float lgmstm_vector_f __attribute__((vector_size(LGMSTM_VECTOR_BYTES)));
/* Rows of C per pass over a panel of B: 16 (double) or 8 (float) accumulators,
 * which AVX-512's 32 registers hold (AVX2 spills a few for double). */
#define LGMSTM_PANEL_ROWS 4

/*
 * panel_product: for i < m and s < n (n a multiple of LGMSTM_PANEL),
 *   z = init + sum_k A[i a_rs + k a_cs] B[k ldb + s]
 *   init = C[i ldc + s] when accumulate, else bias[i] (0 when bias is NULL)
 *   C[i ldc + s] = z, times (1 - D[i ldd + s]^2) (tanh's derivative at the
 *   output D) when D is not NULL.
 * The strides a_rs, a_cs read A or its transpose in place.
 */
#define LGMSTM_PANEL_BLOCK(T, V, R)                                           \
    do {                                                                            \
        enum { NV = LGMSTM_PANEL_VECS(T), NL = LGMSTM_LANES(T) };                   \
        V acc[R][NV], b_part;                                                       \
        for (int r = 0; r < R; ++r) {                                               \
            if (accumulate)                                                         \
                for (int u = 0; u < NV; ++u)                                        \
                    memcpy(&acc[r][u], C + (i + r) * ldc + s0 + u * NL, sizeof(V)); \
            else                                                                    \
                for (int u = 0; u < NV; ++u)                                        \
                    acc[r][u] = (V){0} + (bias ? bias[i + r] : (T)0);               \
        }                                                                           \
        for (ptrdiff_t kk = 0; kk < k; ++kk) {                                      \
            for (int u = 0; u < NV; ++u) {                                          \
                memcpy(&b_part, B + kk * ldb + s0 + u * NL, sizeof b_part);         \
                for (int r = 0; r < R; ++r)                                         \
                    acc[r][u] += A[(i + r) * a_rs + kk * a_cs] * b_part;            \
            }                                                                       \
        }                                                                           \
        for (int r = 0; r < R; ++r) {                                               \
            T *c_row = C + (i + r) * ldc + s0;                                      \
            for (int u = 0; u < NV; ++u) {                                          \
                if (D) {                                                            \
                    V d_part;                                                       \
                    memcpy(&d_part, D + (i + r) * ldd + s0 + u * NL, sizeof(V));    \
                    acc[r][u] *= (T)1 - d_part * d_part;                            \
                }                                                                   \
                memcpy(c_row + u * NL, &acc[r][u], sizeof(V));                      \
            }                                                                       \
        }                                                                           \
    } while (0)

#define LGMSTM_DEFINE_PANEL_PRODUCT(NAME, T, V)                               \
    LGMSTM_DISPATCH                                                                 \
    static void NAME(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,                         \
                     const T *A, ptrdiff_t a_rs, ptrdiff_t a_cs,                    \
                     const T *B, ptrdiff_t ldb, const T *bias, int accumulate,      \
                     const T *D, ptrdiff_t ldd,                                     \
                     T *C, ptrdiff_t ldc)                                           \
    {                                                                               \
        for (ptrdiff_t s0 = 0; s0 < n; s0 += LGMSTM_PANEL) {                        \
            ptrdiff_t i = 0;                                                        \
            for (; i + LGMSTM_PANEL_ROWS <= m; i += LGMSTM_PANEL_ROWS)        \
                LGMSTM_PANEL_BLOCK(T, V, LGMSTM_PANEL_ROWS);              \
            if (i + 2 <= m) {                                                       \
                LGMSTM_PANEL_BLOCK(T, V, 2);                                  \
                i += 2;                                                             \
            }                                                                       \
            if (i < m)                                                              \
                LGMSTM_PANEL_BLOCK(T, V, 1);                                  \
        }                                                                           \
    }

/*
 * row_dots: for p < m_x, q < m_y,
 *   out[p ld_out + q] = scale sum_{s < n} X[p ldx + s] Y[q ldy + s] + beta out[...]
 * (beta 0: out is not read). n is a multiple of LGMSTM_PANEL; each vector
 * lane sums its columns in order, then the lanes are added in order.
 */
#define LGMSTM_DOTS_BLOCK(T, V, RX, RY)                                             \
    do {                                                                            \
        enum { NV = LGMSTM_PANEL_VECS(T), NL = LGMSTM_LANES(T) };                   \
        V acc[RX][RY], x_part[RX], y_part;                                          \
        for (int r = 0; r < RX; ++r)                                                \
            for (int c = 0; c < RY; ++c) acc[r][c] = (V){0};                        \
        for (ptrdiff_t s0 = 0; s0 < n; s0 += LGMSTM_PANEL) {                        \
            for (int u = 0; u < NV; ++u) {                                          \
                for (int r = 0; r < RX; ++r)                                        \
                    memcpy(&x_part[r], X + (p + r) * ldx + s0 + u * NL, sizeof(V)); \
                for (int c = 0; c < RY; ++c) {                                      \
                    memcpy(&y_part, Y + (q + c) * ldy + s0 + u * NL, sizeof(V));    \
                    for (int r = 0; r < RX; ++r) acc[r][c] += x_part[r] * y_part;   \
                }                                                                   \
            }                                                                       \
        }                                                                           \
        for (int r = 0; r < RX; ++r)                                                \
            for (int c = 0; c < RY; ++c) {                                          \
                T total = 0;                                                        \
                for (int v = 0; v < NL; ++v) total += acc[r][c][v];                 \
                T *o = out + (p + r) * ld_out + q + c;                              \
                *o = scale * total + (beta != 0 ? beta * *o : (T)0);                \
            }                                                                       \
    } while (0)

/* The q blocks of one p block of RX rows: 4 columns at a time, then 2, then 1. */
#define LGMSTM_DOTS_ROWS(T, V, RX)                                                  \
    do {                                                                            \
        ptrdiff_t q = 0;                                                            \
        for (; q + 4 <= m_y; q += 4) LGMSTM_DOTS_BLOCK(T, V, RX, 4);                \
        if (q + 2 <= m_y) {                                                         \
            LGMSTM_DOTS_BLOCK(T, V, RX, 2);                                         \
            q += 2;                                                                 \
        }                                                                           \
        if (q < m_y) LGMSTM_DOTS_BLOCK(T, V, RX, 1);                                \
    } while (0)

#define LGMSTM_DEFINE_ROW_DOTS(NAME, T, V)                                          \
    LGMSTM_DISPATCH                                                                 \
    static void NAME(ptrdiff_t m_x, ptrdiff_t m_y, ptrdiff_t n,                     \
                     const T *X, ptrdiff_t ldx, const T *Y, ptrdiff_t ldy,          \
                     T scale, T beta, T *out, ptrdiff_t ld_out)                     \
    {                                                                               \
        ptrdiff_t p = 0;                                                            \
        for (; p + 4 <= m_x; p += 4) LGMSTM_DOTS_ROWS(T, V, 4);                     \
        if (p + 2 <= m_x) {                                                         \
            LGMSTM_DOTS_ROWS(T, V, 2);                                              \
            p += 2;                                                                 \
        }                                                                           \
        if (p < m_x) LGMSTM_DOTS_ROWS(T, V, 1);                                     \
    }

/* row_sums: out[q] = scale sum_{s < n} Y[q ldy + s] + beta out[q], as row_dots. */
#define LGMSTM_DEFINE_ROW_SUMS(NAME, T, V)                                          \
    LGMSTM_DISPATCH                                                                 \
    static void NAME(ptrdiff_t m_y, ptrdiff_t n, const T *Y, ptrdiff_t ldy,         \
                     T scale, T beta, T *out)                                       \
    {                                                                               \
        enum { NV = LGMSTM_PANEL_VECS(T), NL = LGMSTM_LANES(T) };                   \
        for (ptrdiff_t q = 0; q < m_y; ++q) {                                       \
            V acc = {0}, y_part;                                                    \
            for (ptrdiff_t s0 = 0; s0 < n; s0 += LGMSTM_PANEL)                      \
                for (int u = 0; u < NV; ++u) {                                      \
                    memcpy(&y_part, Y + q * ldy + s0 + u * NL, sizeof y_part);      \
                    acc += y_part;                                                  \
                }                                                                   \
            T total = 0;                                                            \
            for (int v = 0; v < LGMSTM_LANES(T); ++v) total += acc[v];              \
            out[q] = scale * total + (beta != 0 ? beta * out[q] : (T)0);            \
        }                                                                           \
    }

LGMSTM_DEFINE_PANEL_PRODUCT(lgmstm_panel_product_d, double, lgmstm_vector_d)
LGMSTM_DEFINE_PANEL_PRODUCT(lgmstm_panel_product_f, float, lgmstm_vector_f)
LGMSTM_DEFINE_ROW_DOTS(lgmstm_row_dots_d, double, lgmstm_vector_d)
LGMSTM_DEFINE_ROW_DOTS(lgmstm_row_dots_f, float, lgmstm_vector_f)
LGMSTM_DEFINE_ROW_SUMS(lgmstm_row_sums_d, double, lgmstm_vector_d)
LGMSTM_DEFINE_ROW_SUMS(lgmstm_row_sums_f, float, lgmstm_vector_f)

#endif
