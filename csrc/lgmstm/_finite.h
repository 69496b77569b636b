/* Whether every value of a float or double array is finite.
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

#endif
