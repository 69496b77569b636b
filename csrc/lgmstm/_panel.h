/* Panel kernels: the arithmetic of small networks, without BLAS.
 *
 * Small networks run in a feature-major layout: an activation matrix is
 * stored transposed, one row per unit and one column per sample, with the
 * columns padded to whole panels of 64 bytes (8 doubles, 16 floats: one
 * AVX-512 register). Every product then runs along the samples, in vectors
 * as long as the batch, however few units a layer has; BLAS, handed the
 * same products as 2-5 column matrices, spends more time on call and
 * packing overhead than on arithmetic.
 *
 *   panel_product  C = (init + A B) [* tanh']   A small (m, k); B, C panel rows
 *   row_dots       out = scale X Y^T + beta out  (narrow weight gradients)
 *   row_sums       out = scale Y 1 + beta out    (bias gradients)
 *   gather_panel   row-major samples into the layout (a transpose, in tiles)
 *   scatter_panel  and back
 *
 * Every sum runs in one fixed order (along k; or per vector lane along the
 * panels, then the lanes halving), so results never depend on who calls.
 *
 * Accumulators are GCC/Clang generic vectors, kept in registers. Their
 * width is the target's: a generic vector wider than the hardware's is
 * split badly, so target_clones (one source, several ISAs) cannot serve.
 * On x86-64 with GCC each kernel is built three times, for AVX-512 (64-byte
 * vectors), AVX2+FMA (32) and the baseline (16), and a dispatcher picks one
 * by the CPU's features; elsewhere there is one 16-byte build (NEON,
 * SSE2), and without vector extensions (MSVC) a scalar one.
 */
#ifndef LGMSTM_PANEL_H
#define LGMSTM_PANEL_H

#include <stddef.h>
#include <string.h>

/* Bytes of a panel row: a multiple of every vector width. */
#define LGMSTM_PANEL_BYTES 64
#define LGMSTM_PANEL(T) (LGMSTM_PANEL_BYTES / (ptrdiff_t)sizeof(T))

/* GCC/Clang vector extensions; LGMSTM_NO_VECTORS builds the scalar code
 * that compilers without them (MSVC) get, for the tests. */
#if defined(__GNUC__) && !defined(LGMSTM_NO_VECTORS)
#define LGMSTM_VECTORS 1
#else
#define LGMSTM_VECTORS 0
#endif

#if LGMSTM_VECTORS
#define LGMSTM_SPLAT(V, x) ((V){0} + (x))
#else
#define LGMSTM_SPLAT(V, x) (x)
#endif

/* result = the sum of the lanes of vector x, halving: lanes v and v + w are
 * added for w = NL/2, NL/4, ..., 1, a fixed order whose wide steps vectorise. */
#define LGMSTM_LANE_SUM(T, V, x, result)                                            \
    do {                                                                            \
        T lanes_[sizeof(V) / sizeof(T)];                                            \
        memcpy(lanes_, &(x), sizeof(V));                                            \
        for (int w_ = (int)(sizeof(V) / sizeof(T)) / 2; w_ >= 1; w_ /= 2)          \
            for (int v_ = 0; v_ < w_; ++v_) lanes_[v_] += lanes_[v_ + w_];          \
        (result) = lanes_[0];                                                       \
    } while (0)

/*
 * panel_product: for i < m and s < n (n a multiple of LGMSTM_PANEL(T)),
 *   z = init + sum_k A[i a_rs + k a_cs] B[k ldb + s]
 *   init = C[i ldc + s] when accumulate, else bias[i] (0 when bias is NULL)
 *   C[i ldc + s] = z, times (1 - D[i ldd + s]^2) (tanh's derivative at the
 *   output D) when D is not NULL.
 * The strides a_rs, a_cs read A or its transpose in place.
 */
#define LGMSTM_PANEL_BLOCK(T, V, R, NV)                                             \
    do {                                                                            \
        enum { NL = sizeof(V) / sizeof(T) };                                        \
        V acc[R][NV], b_part;                                                       \
        for (int r = 0; r < R; ++r) {                                               \
            if (accumulate)                                                         \
                for (int u = 0; u < NV; ++u)                                        \
                    memcpy(&acc[r][u], C + (i + r) * ldc + s0 + u * NL, sizeof(V)); \
            else                                                                    \
                for (int u = 0; u < NV; ++u)                                        \
                    acc[r][u] = LGMSTM_SPLAT(V, bias ? bias[i + r] : (T)0);         \
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

/* Every row of C over NV vectors of columns from s0: blocks of rows that
 * keep 8 accumulators (at least one row), then 4, 2 and 1 rows. */
#define LGMSTM_PANEL_COLUMNS(T, V, NV)                                              \
    do {                                                                            \
        enum { ROWS = (NV) >= 8 ? 1 : 8 / (NV) };                                   \
        ptrdiff_t i = 0;                                                            \
        for (; i + ROWS <= m; i += ROWS) LGMSTM_PANEL_BLOCK(T, V, ROWS, NV);        \
        if (ROWS > 4 && i + 4 <= m) {                                               \
            LGMSTM_PANEL_BLOCK(T, V, 4, NV);                                        \
            i += 4;                                                                 \
        }                                                                           \
        if (ROWS > 2 && i + 2 <= m) {                                               \
            LGMSTM_PANEL_BLOCK(T, V, 2, NV);                                        \
            i += 2;                                                                 \
        }                                                                           \
        if (i < m) LGMSTM_PANEL_BLOCK(T, V, 1, NV);                                 \
    } while (0)

/* Columns two panels at a time (fewer loads of A per product), then one. */
#define LGMSTM_DEFINE_PANEL_PRODUCT(NAME, T, V, TARGET)                             \
    TARGET static void NAME(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,                  \
                            const T *A, ptrdiff_t a_rs, ptrdiff_t a_cs,             \
                            const T *B, ptrdiff_t ldb, const T *bias,               \
                            int accumulate, const T *D, ptrdiff_t ldd,              \
                            T *C, ptrdiff_t ldc)                                    \
    {                                                                               \
        enum { PANEL_VECS = LGMSTM_PANEL_BYTES / sizeof(V) };                       \
        ptrdiff_t s0 = 0;                                                           \
        for (; s0 + 2 * LGMSTM_PANEL(T) <= n; s0 += 2 * LGMSTM_PANEL(T))            \
            LGMSTM_PANEL_COLUMNS(T, V, 2 * PANEL_VECS);                             \
        if (s0 < n)                                                                 \
            LGMSTM_PANEL_COLUMNS(T, V, PANEL_VECS);                                 \
    }

/*
 * row_dots: for p < m_x, q < m_y,
 *   out[p ld_out + q] = scale sum_{s < n} X[p ldx + s] Y[q ldy + s] + beta out[...]
 * (beta 0: out is not read). n is a multiple of LGMSTM_PANEL(T); each vector
 * lane sums its columns in order, then the lanes are added in order.
 */
#define LGMSTM_DOTS_BLOCK(T, V, RX, RY)                                             \
    do {                                                                            \
        enum { NL = sizeof(V) / sizeof(T), NV = LGMSTM_PANEL_BYTES / sizeof(V) };                   \
        V acc[RX][RY], x_part[RX], y_part;                                          \
        for (int r = 0; r < RX; ++r)                                                \
            for (int c = 0; c < RY; ++c) acc[r][c] = LGMSTM_SPLAT(V, (T)0);                        \
        for (ptrdiff_t s0 = 0; s0 < n; s0 += LGMSTM_PANEL(T)) {                        \
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
                T total;                                                             \
                LGMSTM_LANE_SUM(T, V, acc[r][c], total);                    \
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

#define LGMSTM_DEFINE_ROW_DOTS(NAME, T, V, TARGET)                                  \
    TARGET static void NAME(ptrdiff_t m_x, ptrdiff_t m_y, ptrdiff_t n,                     \
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
#define LGMSTM_DEFINE_ROW_SUMS(NAME, T, V, TARGET)                                  \
    TARGET static void NAME(ptrdiff_t m_y, ptrdiff_t n, const T *Y, ptrdiff_t ldy,         \
                     T scale, T beta, T *out)                                       \
    {                                                                               \
        enum { NL = sizeof(V) / sizeof(T), NV = LGMSTM_PANEL_BYTES / sizeof(V) };                   \
        for (ptrdiff_t q = 0; q < m_y; ++q) {                                       \
            V acc = LGMSTM_SPLAT(V, (T)0), y_part;                                                    \
            for (ptrdiff_t s0 = 0; s0 < n; s0 += LGMSTM_PANEL(T))                      \
                for (int u = 0; u < NV; ++u) {                                      \
                    memcpy(&y_part, Y + q * ldy + s0 + u * NL, sizeof y_part);      \
                    acc += y_part;                                                  \
                }                                                                   \
            T total;                                                                 \
            LGMSTM_LANE_SUM(T, V, acc, total);                              \
            out[q] = scale * total + (beta != 0 ? beta * out[q] : (T)0);            \
        }                                                                           \
    }

/*
 * gather_panel: a block of samples into the panel layout. Lane l < width
 * (a whole number of panels) is sample rows[first + l] (first + l when rows
 * is NULL) while l < n_lanes, whose values start at src + sample
 * row_stride; its value j < n_values, j = b n_features + f, goes to
 * dest[f ld + b width + l]. Lanes from n_lanes on are 0. A copy, so the
 * same bits whatever the ISA: tiles of NL lanes by NL values go through NL
 * vector registers and a transpose (GCC's __builtin_shuffle; elsewhere
 * through memory), consecutive rows of one or two values through one or
 * two vectors and a deinterleave. Returns whether every value it read was
 * finite (each times 0 summed: NaN for an inf or a NaN), so that a caller need not
 * scan the samples again; it may read a little past a row (see below), so
 * a non-finite value of the block near the rows counts too.
 *
 * scatter_panel: the way back, for one block: value j < n_values of lane
 * l < n_lanes, src[j ld + l], to dest[l row_stride + j]; src's lanes are
 * read to the end of their vector (the panel's padding). Also in tiles.
 */
#define LGMSTM_UNPAREN(...) __VA_ARGS__
#if LGMSTM_VECTORS && defined(__GNUC__) && !defined(__clang__)
/* Rows i and i + d of r, for each i with (i mod 2d) < d: interleave lanes
 * (the LO and HI index lists over the two rows' 2N lanes). log2(N) stages
 * with d = 1, 2, 4, ... transpose N rows of N lanes. */
#define LGMSTM_TRANSPOSE_STAGE(V, IV, r, N, d, LO, HI)                              \
    for (int i_ = 0; i_ < (N); ++i_)                                                \
        if (i_ % (2 * (d)) < (d)) {                                                 \
            V lo_ = (r)[i_], hi_ = (r)[i_ + (d)];                                   \
            (r)[i_] = __builtin_shuffle(lo_, hi_, (IV){LGMSTM_UNPAREN LO});         \
            (r)[i_ + (d)] = __builtin_shuffle(lo_, hi_, (IV){LGMSTM_UNPAREN HI});   \
        }
#define LGMSTM_TRANSPOSE_2(V, IV, r)                                             \
    do {                                                                            \
        LGMSTM_TRANSPOSE_STAGE(V, IV, r, 2, 1,                                   \
            (0, 2),  \
            (1, 3)); \
    } while (0)
#define LGMSTM_TRANSPOSE_4(V, IV, r)                                             \
    do {                                                                            \
        LGMSTM_TRANSPOSE_STAGE(V, IV, r, 4, 1,                                   \
            (0, 4, 2, 6),  \
            (1, 5, 3, 7)); \
        LGMSTM_TRANSPOSE_STAGE(V, IV, r, 4, 2,                                   \
            (0, 1, 4, 5),  \
            (2, 3, 6, 7)); \
    } while (0)
#define LGMSTM_TRANSPOSE_8(V, IV, r)                                             \
    do {                                                                            \
        LGMSTM_TRANSPOSE_STAGE(V, IV, r, 8, 1,                                   \
            (0, 8, 2, 10, 4, 12, 6, 14),  \
            (1, 9, 3, 11, 5, 13, 7, 15)); \
        LGMSTM_TRANSPOSE_STAGE(V, IV, r, 8, 2,                                   \
            (0, 1, 8, 9, 4, 5, 12, 13),  \
            (2, 3, 10, 11, 6, 7, 14, 15)); \
        LGMSTM_TRANSPOSE_STAGE(V, IV, r, 8, 4,                                   \
            (0, 1, 2, 3, 8, 9, 10, 11),  \
            (4, 5, 6, 7, 12, 13, 14, 15)); \
    } while (0)
#define LGMSTM_TRANSPOSE_16(V, IV, r)                                             \
    do {                                                                            \
        LGMSTM_TRANSPOSE_STAGE(V, IV, r, 16, 1,                                   \
            (0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30),  \
            (1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31)); \
        LGMSTM_TRANSPOSE_STAGE(V, IV, r, 16, 2,                                   \
            (0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29),  \
            (2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31)); \
        LGMSTM_TRANSPOSE_STAGE(V, IV, r, 16, 4,                                   \
            (0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27),  \
            (4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31)); \
        LGMSTM_TRANSPOSE_STAGE(V, IV, r, 16, 8,                                   \
            (0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23),  \
            (8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31)); \
    } while (0)
#define LGMSTM_TRANSPOSE_1(V, IV, r) do { } while (0)
/* The shuffles' index vectors: integers of T's size, as many as V's lanes. */
#define LGMSTM_INDEX_double long long
#define LGMSTM_INDEX_float int
#define LGMSTM_TRANSPOSE(T, V, LANES, r)                                            \
    do {                                                                            \
        typedef LGMSTM_INDEX_##T index_vector_ __attribute__((vector_size(sizeof(V)))); \
        LGMSTM_TRANSPOSE_##LANES(V, index_vector_, r);                              \
    } while (0)
/* The even and the odd lanes of r[0] then r[1], into r[0] and r[1]. */
#define LGMSTM_DEINTERLEAVE(T, V, LANES, r)                                         \
    do {                                                                            \
        typedef LGMSTM_INDEX_##T index_vector_ __attribute__((vector_size(sizeof(V)))); \
        index_vector_ even_, odd_;                                                  \
        for (int i_ = 0; i_ < (LANES); ++i_) {                                      \
            even_[i_] = 2 * i_;                                                     \
            odd_[i_] = 2 * i_ + 1;                                                  \
        }                                                                           \
        V lo_ = (r)[0], hi_ = (r)[1];                                               \
        (r)[0] = __builtin_shuffle(lo_, hi_, even_);                                \
        (r)[1] = __builtin_shuffle(lo_, hi_, odd_);                                 \
    } while (0)
#else
#define LGMSTM_TRANSPOSE(T, V, LANES, r)                                            \
    do {                                                                            \
        T tile_[LANES][LANES], swap_;                                               \
        memcpy(tile_, (r), sizeof tile_);                                           \
        for (int a_ = 0; a_ < (LANES); ++a_)                                        \
            for (int b_ = a_ + 1; b_ < (LANES); ++b_) {                             \
                swap_ = tile_[a_][b_];                                              \
                tile_[a_][b_] = tile_[b_][a_];                                      \
                tile_[b_][a_] = swap_;                                              \
            }                                                                       \
        memcpy((r), tile_, sizeof tile_);                                           \
    } while (0)
#define LGMSTM_DEINTERLEAVE(T, V, LANES, r)                                         \
    do {                                                                            \
        T pairs_[2 * (LANES)], split_[2][LANES];                                    \
        memcpy(pairs_, (r), sizeof pairs_);                                         \
        for (int i_ = 0; i_ < (LANES); ++i_) {                                      \
            split_[0][i_] = pairs_[2 * i_];                                         \
            split_[1][i_] = pairs_[2 * i_ + 1];                                     \
        }                                                                           \
        memcpy((r), split_, sizeof split_);                                         \
    } while (0)
#endif

/* at: from the panel row of a block's value j = b n_features + f at lane
 * l0 (dest[f ld + b width + l0]) to value j + 1's. */
#define LGMSTM_GATHER_NEXT_VALUE()                                                  \
    do {                                                                            \
        at += ld;                                                                   \
        if (++f == n_features) {                                                    \
            f = 0;                                                                  \
            at += width - n_features * ld;                                          \
        }                                                                           \
    } while (0)

/* Vectors skip <= k < count of the transposed tile r (of VECTORS), values
 * j, j + 1, ... of lanes l0 .. l0 + NL - 1, to their panel rows from at.
 * (The loop runs over constant k, so that r stays in registers.) */
#define LGMSTM_GATHER_STORE(V, VECTORS, r, skip, count)                             \
    do {                                                                            \
        for (int k_ = 0; k_ < (VECTORS); ++k_)                                      \
            if (k_ >= (skip) && k_ < (count)) {                                     \
                memcpy(at, &(r)[k_], sizeof(V));                                    \
                LGMSTM_GATHER_NEXT_VALUE();                                         \
            }                                                                       \
    } while (0)

/* Adds each value of the LANES vectors r times 0 to the accumulator zeros
 * (products first: a sum of large finite values must not overflow; then
 * halving, so that the additions do not wait on each other). */
#define LGMSTM_CHECK_TILE(V, LANES, r)                                              \
    do {                                                                            \
        V products_[LANES];                                                         \
        for (int l_ = 0; l_ < (LANES); ++l_) products_[l_] = (r)[l_] * 0;           \
        for (int w_ = (LANES) / 2; w_ >= 1; w_ /= 2)                                \
            for (int l_ = 0; l_ < w_; ++l_) products_[l_] += products_[l_ + w_];    \
        zeros += products_[0];                                                      \
    } while (0)

/* Sample row of lane l0 + l. */
#define LGMSTM_GATHER_ROW(l)                                                        \
    (src + (rows ? rows[first + l0 + (l)] : first + l0 + (l)) * row_stride)

/* The tile of values j0 .. j0 + NL - 1 of the first `lanes` lanes from l0
 * (0 past them), its vectors from skip on stored. */
#define LGMSTM_GATHER_TILE(T, V, LANES, lanes, j0, skip)                            \
    do {                                                                            \
        V r[LANES];                                                                 \
        for (int l = 0; l < (LANES); ++l) {                                         \
            if (l < (lanes))                                                        \
                memcpy(&r[l], LGMSTM_GATHER_ROW(l) + (j0), sizeof(V));              \
            else                                                                    \
                r[l] = LGMSTM_SPLAT(V, (T)0);                                       \
        }                                                                           \
        LGMSTM_CHECK_TILE(V, LANES, r);                                             \
        LGMSTM_TRANSPOSE(T, V, LANES, r);                                           \
        LGMSTM_GATHER_STORE(V, LANES, r, skip, LANES);                              \
    } while (0)

/* Rows of fewer than NL values: each row's NL values from its start, those
 * past the row being the next rows' (read, never stored), where the block
 * holds them (before end); the rows near its end (and the lanes past
 * `lanes`) are copied value by value into zeros. Only a tile with such
 * rows goes through memory (tile_); the others load r straight. */
#define LGMSTM_GATHER_SHORT_TILE(T, V, LANES, lanes)                                \
    do {                                                                            \
        V r[LANES];                                                                 \
        int near_end_ = (lanes) < (LANES);                                          \
        for (int l = 0; l < (LANES); ++l)                                           \
            near_end_ |= l < (lanes) && LGMSTM_GATHER_ROW(l) + (LANES) > end;       \
        if (!near_end_) {                                                           \
            for (int l = 0; l < (LANES); ++l)                                       \
                memcpy(&r[l], LGMSTM_GATHER_ROW(l), sizeof(V));                     \
        } else {                                                                    \
            T tile_[LANES][LANES];                                                  \
            for (int l = 0; l < (LANES); ++l) {                                     \
                const T *row_ = l < (lanes) ? LGMSTM_GATHER_ROW(l) : NULL;          \
                if (row_ && row_ + (LANES) <= end) {                                \
                    memcpy(tile_[l], row_, sizeof(V));                              \
                } else {                                                            \
                    memset(tile_[l], 0, sizeof tile_[l]);                           \
                    for (ptrdiff_t j_ = 0; row_ && j_ < n_values; ++j_)             \
                        tile_[l][j_] = row_[j_];                                    \
                }                                                                   \
            }                                                                       \
            for (int l = 0; l < (LANES); ++l) memcpy(&r[l], tile_[l], sizeof(V));   \
        }                                                                           \
        LGMSTM_CHECK_TILE(V, LANES, r);                                             \
        LGMSTM_TRANSPOSE(T, V, LANES, r);                                           \
        LGMSTM_GATHER_STORE(V, LANES, r, 0, n_values);                              \
    } while (0)

/* NL rows of one or two values one after another (rows NULL, row_stride
 * n_values): the tile is one or two whole vectors of values, its lanes'
 * values their lanes, or their even and odd lanes. It reads the rows only,
 * where the short tile would read into the next NL rows: in a block of
 * such rows, the same values in all. */
#define LGMSTM_GATHER_PAIRS_TILE(T, V, LANES)                                       \
    do {                                                                            \
        V r[2];                                                                     \
        const T *from_ = src + (first + l0) * n_values;                             \
        memcpy(&r[0], from_, sizeof(V));                                            \
        if (n_values == 1) {                                                        \
            LGMSTM_CHECK_TILE(V, 1, r);                                             \
        } else {                                                                    \
            memcpy(&r[1], from_ + (LANES), sizeof(V));                              \
            LGMSTM_CHECK_TILE(V, 2, r);                                             \
            LGMSTM_DEINTERLEAVE(T, V, LANES, r);                                    \
        }                                                                           \
        LGMSTM_GATHER_STORE(V, 2, r, 0, n_values);                                  \
    } while (0)

/* Every value of the first `lanes` lanes from l0: rows of at least NL
 * values end on a tile that overlaps the one before (only its new values
 * stored), shorter ones take the short tile (or the pairs tile). */
#define LGMSTM_GATHER_LANES(T, V, LANES, lanes)                                     \
    do {                                                                            \
        T *at = dest + l0;                                                          \
        ptrdiff_t f = 0;                                                            \
        if (n_values < (LANES)) {                                                   \
            if ((lanes) == (LANES) && !rows && row_stride == n_values               \
                    && (n_values == 1 || n_values == 2))                            \
                LGMSTM_GATHER_PAIRS_TILE(T, V, LANES);                              \
            else                                                                    \
                LGMSTM_GATHER_SHORT_TILE(T, V, LANES, lanes);                       \
            break;                                                                  \
        }                                                                           \
        ptrdiff_t j0 = 0;                                                           \
        for (; j0 + (LANES) <= n_values; j0 += (LANES))                             \
            LGMSTM_GATHER_TILE(T, V, LANES, lanes, j0, 0);                          \
        if (j0 < n_values)                                                          \
            LGMSTM_GATHER_TILE(T, V, LANES, lanes, n_values - (LANES),              \
                               (LANES) - (n_values - j0));                          \
    } while (0)

/* Whole tiles of NL lanes, then the last lanes (NULL rows past them), then
 * zeros to width. The short tile's end: the block's last sample's last
 * value. */
#define LGMSTM_DEFINE_GATHER_PANEL(NAME, T, V, LANES, TARGET)                       \
    TARGET static int NAME(const T *src, ptrdiff_t row_stride, const ptrdiff_t *rows, \
                            ptrdiff_t first, ptrdiff_t n_lanes, ptrdiff_t n_values, \
                            ptrdiff_t n_features, T *dest, ptrdiff_t ld,            \
                            ptrdiff_t width)                                        \
    {                                                                               \
        enum { NL = LANES };                                                        \
        V zeros = LGMSTM_SPLAT(V, (T)0);                                            \
        T lanes_[NL];                                                               \
        const T *end = src;                                                         \
        ptrdiff_t l0 = 0;                                                           \
        if (n_values < NL && n_lanes > 0) {                                         \
            if (rows)                                                               \
                for (ptrdiff_t lane = 0; lane < n_lanes; ++lane) {                  \
                    const T *last = src + rows[first + lane] * row_stride + n_values; \
                    end = last > end ? last : end;                                  \
                }                                                                   \
            else                                                                    \
                end = src + (first + n_lanes - 1) * row_stride + n_values;          \
        }                                                                           \
        for (; l0 + NL <= n_lanes; l0 += NL) LGMSTM_GATHER_LANES(T, V, LANES, NL);   \
        if (l0 < n_lanes) {                                                         \
            LGMSTM_GATHER_LANES(T, V, LANES, n_lanes - l0);                         \
            l0 += NL;                                                               \
        }                                                                           \
        if (l0 < width) {                                                           \
            T *at = dest + l0;                                                      \
            ptrdiff_t f = 0;                                                        \
            for (ptrdiff_t j = 0; j < n_values; ++j) {                              \
                memset(at, 0, (size_t)(width - l0) * sizeof(T));                    \
                LGMSTM_GATHER_NEXT_VALUE();                                         \
            }                                                                       \
        }                                                                           \
        memcpy(lanes_, &zeros, sizeof(V));                                          \
        for (int l = 0; l < NL; ++l)                                                \
            if (lanes_[l] != 0) /* NaN */                                           \
                return 0;                                                           \
        return 1;                                                                   \
    }

/* Tiles of NL lanes by NL values, the last overlapping the one before.
 * Rows of fewer values go value by value (measured: whole-vector stores
 * whose tails the next lanes overwrite were slower than that). */
#define LGMSTM_DEFINE_SCATTER_PANEL(NAME, T, V, LANES, TARGET)                      \
    TARGET static void NAME(const T *src, ptrdiff_t ld, ptrdiff_t n_lanes,          \
                            ptrdiff_t n_values, T *dest, ptrdiff_t row_stride)      \
    {                                                                               \
        enum { NL = LANES };                                                        \
        if (n_values < NL) {                                                        \
            for (ptrdiff_t l = 0; l < n_lanes; ++l)                                 \
                for (ptrdiff_t j = 0; j < n_values; ++j)                            \
                    dest[l * row_stride + j] = src[j * ld + l];                     \
            return;                                                                 \
        }                                                                           \
        for (ptrdiff_t l0 = 0; l0 < n_lanes; l0 += NL) {                            \
            const int lanes = n_lanes - l0 < NL ? (int)(n_lanes - l0) : NL;        \
            for (ptrdiff_t j0 = 0; j0 < n_values; ) {                               \
                const ptrdiff_t t0 = j0 + NL <= n_values ? j0 : n_values - NL;      \
                V r[LANES];                                                         \
                for (int j = 0; j < NL; ++j)                                        \
                    memcpy(&r[j], src + (t0 + j) * ld + l0, sizeof(V));             \
                LGMSTM_TRANSPOSE(T, V, LANES, r);                                   \
                for (int k = 0; k < lanes; ++k)                                     \
                    memcpy(dest + (l0 + k) * row_stride + t0, &r[k], sizeof(V));    \
                j0 = t0 + NL;                                                       \
            }                                                                       \
        }                                                                           \
    }

/* Each kernel for one vector type V of T: NAME##SUFFIX. */
#define LGMSTM_DEFINE_KERNELS(SUFFIX, T, V, LANES, TARGET)                          \
    LGMSTM_DEFINE_PANEL_PRODUCT(lgmstm_panel_product##SUFFIX, T, V, TARGET)         \
    LGMSTM_DEFINE_ROW_DOTS(lgmstm_row_dots##SUFFIX, T, V, TARGET)                   \
    LGMSTM_DEFINE_ROW_SUMS(lgmstm_row_sums##SUFFIX, T, V, TARGET)                   \
    LGMSTM_DEFINE_GATHER_PANEL(lgmstm_gather_panel##SUFFIX, T, V, LANES, TARGET)     \
    LGMSTM_DEFINE_SCATTER_PANEL(lgmstm_scatter_panel##SUFFIX, T, V, LANES, TARGET)

#define LGMSTM_PANEL_PRODUCT_ARGS(T)                                                \
    (ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *A, ptrdiff_t a_rs,             \
     ptrdiff_t a_cs, const T *B, ptrdiff_t ldb, const T *bias, int accumulate,      \
     const T *D, ptrdiff_t ldd, T *C, ptrdiff_t ldc)
#define LGMSTM_PANEL_PRODUCT_CALL (m, n, k, A, a_rs, a_cs, B, ldb, bias, accumulate, D, ldd, C, ldc)
#define LGMSTM_ROW_DOTS_ARGS(T)                                                     \
    (ptrdiff_t m_x, ptrdiff_t m_y, ptrdiff_t n, const T *X, ptrdiff_t ldx,          \
     const T *Y, ptrdiff_t ldy, T scale, T beta, T *out, ptrdiff_t ld_out)
#define LGMSTM_ROW_DOTS_CALL (m_x, m_y, n, X, ldx, Y, ldy, scale, beta, out, ld_out)
#define LGMSTM_ROW_SUMS_ARGS(T)                                                     \
    (ptrdiff_t m_y, ptrdiff_t n, const T *Y, ptrdiff_t ldy, T scale, T beta, T *out)
#define LGMSTM_ROW_SUMS_CALL (m_y, n, Y, ldy, scale, beta, out)
#define LGMSTM_GATHER_PANEL_ARGS(T)                                                 \
    (const T *src, ptrdiff_t row_stride, const ptrdiff_t *rows, ptrdiff_t first,     \
     ptrdiff_t n_lanes, ptrdiff_t n_values, ptrdiff_t n_features, T *dest,          \
     ptrdiff_t ld, ptrdiff_t width)
#define LGMSTM_GATHER_PANEL_CALL                                                    \
    (src, row_stride, rows, first, n_lanes, n_values, n_features, dest, ld, width)
#define LGMSTM_SCATTER_PANEL_ARGS(T)                                                \
    (const T *src, ptrdiff_t ld, ptrdiff_t n_lanes, ptrdiff_t n_values, T *dest,    \
     ptrdiff_t row_stride)
#define LGMSTM_SCATTER_PANEL_CALL (src, ld, n_lanes, n_values, dest, row_stride)

#if LGMSTM_VECTORS && !defined(__clang__) && defined(__x86_64__) && defined(__ELF__) \
    && !defined(LGMSTM_NO_DISPATCH)

typedef double lgmstm_d64 __attribute__((vector_size(64)));
typedef double lgmstm_d32 __attribute__((vector_size(32)));
typedef double lgmstm_d16 __attribute__((vector_size(16)));
typedef float lgmstm_f64 __attribute__((vector_size(64)));
typedef float lgmstm_f32 __attribute__((vector_size(32)));
typedef float lgmstm_f16 __attribute__((vector_size(16)));
#define LGMSTM_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))
#define LGMSTM_TARGET_AVX2 __attribute__((target("avx2,fma")))

LGMSTM_DEFINE_KERNELS(_d_avx512, double, lgmstm_d64, 8, LGMSTM_TARGET_AVX512)
LGMSTM_DEFINE_KERNELS(_d_avx2, double, lgmstm_d32, 4, LGMSTM_TARGET_AVX2)
LGMSTM_DEFINE_KERNELS(_d_base, double, lgmstm_d16, 2, )
LGMSTM_DEFINE_KERNELS(_f_avx512, float, lgmstm_f64, 16, LGMSTM_TARGET_AVX512)
LGMSTM_DEFINE_KERNELS(_f_avx2, float, lgmstm_f32, 8, LGMSTM_TARGET_AVX2)
LGMSTM_DEFINE_KERNELS(_f_base, float, lgmstm_f16, 4, )

/* 2: AVX-512 (F, BW, DQ, VL), 1: AVX2 and FMA, 0: neither. Computed once;
 * threads racing on the first call all store the same value (atomically). */
static int lgmstm_panel_level(void)
{
#ifdef LGMSTM_PANEL_LEVEL  /* the tests build each level this way */
    return LGMSTM_PANEL_LEVEL;
#endif
    static int cached = -1;
    int level = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (level < 0) {
        __builtin_cpu_init();
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
                && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
            level = 2;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
            level = 1;
        else
            level = 0;
        __atomic_store_n(&cached, level, __ATOMIC_RELAXED);
    }
    return level;
}

#define LGMSTM_DEFINE_DISPATCH(NAME, ARGS, CALL)                                    \
    static void NAME ARGS                                                           \
    {                                                                               \
        switch (lgmstm_panel_level()) {                                             \
        case 2: NAME##_avx512 CALL; break;                                          \
        case 1: NAME##_avx2 CALL; break;                                            \
        default: NAME##_base CALL;                                                  \
        }                                                                           \
    }
#define LGMSTM_DEFINE_INT_DISPATCH(NAME, ARGS, CALL)                                \
    static int NAME ARGS                                                            \
    {                                                                               \
        switch (lgmstm_panel_level()) {                                             \
        case 2: return NAME##_avx512 CALL;                                          \
        case 1: return NAME##_avx2 CALL;                                            \
        default: return NAME##_base CALL;                                           \
        }                                                                           \
    }
#define LGMSTM_PANEL_HAS_DISPATCH 1

#else

#if LGMSTM_VECTORS
typedef double lgmstm_d16 __attribute__((vector_size(16)));
typedef float lgmstm_f16 __attribute__((vector_size(16)));
LGMSTM_DEFINE_KERNELS(_d_base, double, lgmstm_d16, 2, )
LGMSTM_DEFINE_KERNELS(_f_base, float, lgmstm_f16, 4, )
#else
LGMSTM_DEFINE_KERNELS(_d_base, double, double, 1, )
LGMSTM_DEFINE_KERNELS(_f_base, float, float, 1, )
#endif
#define LGMSTM_DEFINE_DISPATCH(NAME, ARGS, CALL) static void NAME ARGS { NAME##_base CALL; }
#define LGMSTM_DEFINE_INT_DISPATCH(NAME, ARGS, CALL)                                \
    static int NAME ARGS { return NAME##_base CALL; }
#define LGMSTM_PANEL_HAS_DISPATCH 0
static int lgmstm_panel_level(void) { return 0; }

#endif

LGMSTM_DEFINE_DISPATCH(lgmstm_panel_product_d, LGMSTM_PANEL_PRODUCT_ARGS(double), LGMSTM_PANEL_PRODUCT_CALL)
LGMSTM_DEFINE_DISPATCH(lgmstm_panel_product_f, LGMSTM_PANEL_PRODUCT_ARGS(float), LGMSTM_PANEL_PRODUCT_CALL)
LGMSTM_DEFINE_DISPATCH(lgmstm_row_dots_d, LGMSTM_ROW_DOTS_ARGS(double), LGMSTM_ROW_DOTS_CALL)
LGMSTM_DEFINE_DISPATCH(lgmstm_row_dots_f, LGMSTM_ROW_DOTS_ARGS(float), LGMSTM_ROW_DOTS_CALL)
LGMSTM_DEFINE_DISPATCH(lgmstm_row_sums_d, LGMSTM_ROW_SUMS_ARGS(double), LGMSTM_ROW_SUMS_CALL)
LGMSTM_DEFINE_DISPATCH(lgmstm_row_sums_f, LGMSTM_ROW_SUMS_ARGS(float), LGMSTM_ROW_SUMS_CALL)
LGMSTM_DEFINE_INT_DISPATCH(lgmstm_gather_panel_d, LGMSTM_GATHER_PANEL_ARGS(double),
                           LGMSTM_GATHER_PANEL_CALL)
LGMSTM_DEFINE_INT_DISPATCH(lgmstm_gather_panel_f, LGMSTM_GATHER_PANEL_ARGS(float),
                           LGMSTM_GATHER_PANEL_CALL)
LGMSTM_DEFINE_DISPATCH(lgmstm_scatter_panel_d, LGMSTM_SCATTER_PANEL_ARGS(double),
                       LGMSTM_SCATTER_PANEL_CALL)
LGMSTM_DEFINE_DISPATCH(lgmstm_scatter_panel_f, LGMSTM_SCATTER_PANEL_ARGS(float),
                       LGMSTM_SCATTER_PANEL_CALL)

/*
 * Packed products: C (m, n) = A B (+ C when accumulate), all row-major, with
 * B (k, n) packed once into column panels, for a B that many products share
 * (the recurrent weight, at every time step). BLAS repacks B at every call;
 * the panels are packed once per pass.
 *
 * pack_panels: packed = B, or B^T when transpose (B stored (n, k)), as
 * panels of 2 P columns (P = LGMSTM_PANEL(T)) and a last one of P, each
 * k rows of its width, one after another; columns past n are 0. It takes
 * k * round_up(n, P) values.
 *
 * packed_product: panel_product on each panel. A last panel that runs past
 * n goes through scratch (m * 2 P values, at most
 * LGMSTM_PACKED_SCRATCH_PER_ROW per row for either type), so that C's
 * columns past n are never written. Each element sums along k in order,
 * like panel_product.
 */
#define LGMSTM_PACKED_SCRATCH_PER_ROW (2 * LGMSTM_PANEL_BYTES / (ptrdiff_t)sizeof(float))
#define LGMSTM_DEFINE_PACKED(SUFFIX, T)                                             \
    static void lgmstm_pack_panels##SUFFIX(const T *B, ptrdiff_t ldb, int transpose, \
                                           ptrdiff_t k, ptrdiff_t n, T *packed)    \
    {                                                                               \
        const ptrdiff_t P = LGMSTM_PANEL(T);                                        \
        const ptrdiff_t n_padded = (n + P - 1) / P * P;                             \
        for (ptrdiff_t s0 = 0; s0 < n_padded;) {                                    \
            ptrdiff_t width = n_padded - s0 >= 2 * P ? 2 * P : P;                   \
            T *panel = packed + s0 * k;                                             \
            for (ptrdiff_t kk = 0; kk < k; ++kk)                                    \
                for (ptrdiff_t j = 0; j < width; ++j)                               \
                    panel[kk * width + j] = s0 + j >= n ? (T)0                      \
                        : transpose ? B[(s0 + j) * ldb + kk] : B[kk * ldb + s0 + j]; \
            s0 += width;                                                            \
        }                                                                           \
    }                                                                               \
    static void lgmstm_packed_product##SUFFIX(                                      \
            ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const T *A, ptrdiff_t lda,       \
            const T *packed, int accumulate, T *C, ptrdiff_t ldc, T *scratch)       \
    {                                                                               \
        const ptrdiff_t P = LGMSTM_PANEL(T);                                        \
        const ptrdiff_t n_padded = (n + P - 1) / P * P;                             \
        for (ptrdiff_t s0 = 0; s0 < n_padded;) {                                    \
            ptrdiff_t width = n_padded - s0 >= 2 * P ? 2 * P : P;                   \
            if (s0 + width <= n) {                                                  \
                lgmstm_panel_product##SUFFIX(m, width, k, A, lda, 1, packed + s0 * k, \
                                             width, NULL, accumulate, NULL, 0,      \
                                             C + s0, ldc);                          \
            } else {                                                                \
                for (ptrdiff_t i = 0; i < m; ++i)                                   \
                    for (ptrdiff_t j = 0; j < width; ++j)                           \
                        scratch[i * width + j] = accumulate && s0 + j < n           \
                            ? C[i * ldc + s0 + j] : (T)0;                           \
                lgmstm_panel_product##SUFFIX(m, width, k, A, lda, 1, packed + s0 * k, \
                                             width, NULL, accumulate, NULL, 0,      \
                                             scratch, width);                       \
                for (ptrdiff_t i = 0; i < m; ++i)                                   \
                    memcpy(C + i * ldc + s0, scratch + i * width,                   \
                           (size_t)(n - s0) * sizeof(T));                           \
            }                                                                       \
            s0 += width;                                                            \
        }                                                                           \
    }

LGMSTM_DEFINE_PACKED(_d, double)
LGMSTM_DEFINE_PACKED(_f, float)

#endif
