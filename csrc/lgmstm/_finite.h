/* Scans of float and double arrays: whether every value is finite, and
 * whether some value lies outside [-1, 1].
 *
 * Finite:
 *
 * A value is not finite when its exponent bits are all ones; adding one unit
 * of the exponent's lowest bit to them then carries into the sign bit. The
 * loop is adds, ands and ors over integer lanes, without a branch, so it
 * vectorises at every width (see _dispatch.h); isfinite in a loop that stops
 * at the first failure does not.
 */
#ifndef LGMSTM_FINITE_H
#define LGMSTM_FINITE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "_dispatch.h"

LGMSTM_DISPATCH
static int lgmstm_all_finite_d(const double *x, ptrdiff_t n)
{
    uint64_t carries = 0;
    for (ptrdiff_t i = 0; i < n; ++i) {
        uint64_t bits;
        memcpy(&bits, x + i, sizeof bits);  /* the bits, without breaking aliasing rules */
        carries |= (bits & UINT64_C(0x7FF0000000000000)) + UINT64_C(0x0010000000000000);
    }
    return (carries >> 63) == 0;
}

LGMSTM_DISPATCH
static int lgmstm_all_finite_f(const float *x, ptrdiff_t n)
{
    uint32_t carries = 0;
    for (ptrdiff_t i = 0; i < n; ++i) {
        uint32_t bits;
        memcpy(&bits, x + i, sizeof bits);
        carries |= (bits & UINT32_C(0x7F800000)) + UINT32_C(0x00800000);
    }
    return (carries >> 31) == 0;
}

/* Whether some value lies outside [-1, 1] (NaN counts as outside): its bits
 * with the sign cleared exceed those of 1.0. Signed compares of
 * non-negative lanes, which AVX2 has for 64 bits too. */
LGMSTM_DISPATCH
static int lgmstm_beyond_unit_d(const double *x, ptrdiff_t n)
{
    int64_t beyond = 0;
    for (ptrdiff_t i = 0; i < n; ++i) {
        int64_t bits;
        memcpy(&bits, x + i, sizeof bits);
        beyond |= (bits & INT64_C(0x7FFFFFFFFFFFFFFF)) > INT64_C(0x3FF0000000000000);
    }
    return beyond != 0;
}

LGMSTM_DISPATCH
static int lgmstm_beyond_unit_f(const float *x, ptrdiff_t n)
{
    int32_t beyond = 0;
    for (ptrdiff_t i = 0; i < n; ++i) {
        int32_t bits;
        memcpy(&bits, x + i, sizeof bits);
        beyond |= (bits & INT32_C(0x7FFFFFFF)) > INT32_C(0x3F800000);
    }
    return beyond != 0;
}

#endif
