/* Vectorisable tanh for float and double arrays.
 *
 * tanh|x| = -t / (2 + t)  with  t = expm1(-2|x|),  t in (-1, 0].
 * The quotient never cancels, so tanh inherits expm1's relative accuracy
 * over the whole range, small |x| included. expm1 is done branch-free so
 * that the compiler vectorises the array loops:
 *   y = k ln2 + r, |r| <= ln2/2 (Cody-Waite split of ln2),
 *   expm1(y) = 2^k expm1(r) + (2^k - 1), expm1(r) a Taylor polynomial.
 * y is clamped at -40 (float: -20), past which tanh rounds to 1; the clamp
 * is written so that NaN passes through it and propagates.
 *
 * The array loops are built for the baseline ISA, for AVX2+FMA and (GCC 11+)
 * for AVX-512 (x86-64-v4): see _dispatch.h.
 */
#ifndef LGMSTM_TANH_H
#define LGMSTM_TANH_H

#include <stdint.h>
#include <string.h>
#include <stddef.h>
#include <math.h>

#include "_dispatch.h"

static inline double lgmstm_tanh_d(double x)
{
    const double ln2_hi = 6.93147180369123816490e-01; /* 32 significant bits */
    const double ln2_lo = 1.90821492927058770002e-10;
    const double inv_ln2 = 1.44269504088896338700e+00;
    const double shifter = 6755399441055744.0;         /* 1.5 * 2^52 */
    double ax = x < 0.0 ? -x : x;
    double y = -2.0 * ax;
    y = y < -40.0 ? -40.0 : y;                         /* NaN stays NaN */
    double kf = y * inv_ln2 + shifter;                 /* round to nearest */
    uint64_t kbits;
    memcpy(&kbits, &kf, sizeof kbits);
    kf -= shifter;
    double r = (y - kf * ln2_hi) - kf * ln2_lo;
    /* expm1(r) = r + r^2/2! + ... + r^13/13!, |r| <= 0.347: error < 1e-17 */
    double p = 1.0 / 6227020800.0;
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    double em1 = r + (r * r) * p;
    /* 2^k from the low bits of the shifted k: k is in [-58, 0] */
    uint64_t sbits = (kbits + (uint64_t)1023) << 52;
    double scale;
    memcpy(&scale, &sbits, sizeof scale);
    double t = scale * em1 + (scale - 1.0);
    double th = t / (2.0 + t);
    return copysign(th, x);
}

static inline float lgmstm_tanh_f(float x)
{
    const float ln2_hi = 6.93145752e-01f;             /* 16 significant bits */
    const float ln2_lo = 1.42860677e-06f;
    const float inv_ln2 = 1.44269502e+00f;
    const float shifter = 12582912.0f;                 /* 1.5 * 2^23 */
    float ax = x < 0.0f ? -x : x;
    float y = -2.0f * ax;
    y = y < -20.0f ? -20.0f : y;
    float kf = y * inv_ln2 + shifter;
    uint32_t kbits;
    memcpy(&kbits, &kf, sizeof kbits);
    kf -= shifter;
    float r = (y - kf * ln2_hi) - kf * ln2_lo;
    /* expm1(r) to r^8/8!, |r| <= 0.347: error < 2e-9 */
    float p = 1.0f / 40320.0f;
    p = p * r + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    float em1 = r + (r * r) * p;
    uint32_t sbits = (kbits + (uint32_t)127) << 23;
    float scale;
    memcpy(&scale, &sbits, sizeof scale);
    float t = scale * em1 + (scale - 1.0f);
    float th = t / (2.0f + t);
    return copysignf(th, x);
}

/* In place over n contiguous values. */
LGMSTM_DISPATCH
static void lgmstm_tanh_inplace_d(double *x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; ++i) x[i] = lgmstm_tanh_d(x[i]);
}

LGMSTM_DISPATCH
static void lgmstm_tanh_inplace_f(float *x, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; ++i) x[i] = lgmstm_tanh_f(x[i]);
}

/* In place over n_rows rows of n_cols values, rows ld apart: one call, so
 * that the rows' independent work overlaps however short they are. */
LGMSTM_DISPATCH
static void lgmstm_tanh_rows_d(double *x, ptrdiff_t n_rows, ptrdiff_t n_cols, ptrdiff_t ld)
{
    if (ld == n_cols) {  /* rows back to back: one long row vectorises better */
        n_cols *= n_rows;
        n_rows = 1;
    }
    for (ptrdiff_t r = 0; r < n_rows; ++r)
        for (ptrdiff_t i = 0; i < n_cols; ++i) x[r * ld + i] = lgmstm_tanh_d(x[r * ld + i]);
}

LGMSTM_DISPATCH
static void lgmstm_tanh_rows_f(float *x, ptrdiff_t n_rows, ptrdiff_t n_cols, ptrdiff_t ld)
{
    if (ld == n_cols) {  /* rows back to back: one long row vectorises better */
        n_cols *= n_rows;
        n_rows = 1;
    }
    for (ptrdiff_t r = 0; r < n_rows; ++r)
        for (ptrdiff_t i = 0; i < n_cols; ++i) x[r * ld + i] = lgmstm_tanh_f(x[r * ld + i]);
}

/* dz = da (1 - a^2) over n values (dz may be da): the tanh layer's delta,
 * built per ISA like the loops above. float rounds a^2 to float and takes
 * the rest in double, as the Cython loop it replaces did; no FMA
 * contraction, so every build gives those bits. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
LGMSTM_DISPATCH
static void lgmstm_tanh_grad_d(double *dz, const double *da, const double *a, ptrdiff_t n)
{
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    for (ptrdiff_t i = 0; i < n; ++i) dz[i] = da[i] * (1.0 - a[i] * a[i]);
}

LGMSTM_DISPATCH
static void lgmstm_tanh_grad_f(float *dz, const float *da, const float *a, ptrdiff_t n)
{
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
    for (ptrdiff_t i = 0; i < n; ++i) {
        float square = a[i] * a[i];
        dz[i] = (float)((double)da[i] * (1.0 - (double)square));
    }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif
