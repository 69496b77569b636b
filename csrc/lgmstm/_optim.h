/* The optimizers' element-wise update (see _optim.pxd for the formulas),
 * built per ISA like _tanh.h's loops: the baseline build is SSE2, two
 * doubles a vector, and Adam's square root and divides were most of its
 * time. No FMA contraction (GCC's option, clang's pragma in each body), so
 * every build gives the bits of the plain loop, each value's operations in
 * the same order: on x86-64 those of the Cython loop before it; on arm64,
 * where that loop was contracted, now the same bits as on x86-64.
 */
#ifndef LGMSTM_OPTIM_H
#define LGMSTM_OPTIM_H

#include <math.h>
#include <stddef.h>

#include "_dispatch.h"

enum { LGMSTM_SGD = 0, LGMSTM_MOMENTUM = 1, LGMSTM_ADAM = 2 };

/* clang's contraction switch, which holds for the block it opens. */
#if defined(__clang__)
#define LGMSTM_NO_CONTRACT _Pragma("clang fp contract(off)")
#else
#define LGMSTM_NO_CONTRACT
#endif

/* param[i], and its moments, for i in [start, stop): first, when decayed,
 * the weight decay into grad, then the optimizer's step. */
#define LGMSTM_DEFINE_OPTIMIZER_UPDATE(NAME, T, ROOT)                               \
    LGMSTM_DISPATCH                                                                 \
    static void NAME(int kind, int nesterov, T *param, T *grad, T *m, T *v,         \
                     ptrdiff_t start, ptrdiff_t stop, T lr, T mu, T b1, T b2,       \
                     T one_minus_b1, T one_minus_b2, T correction1, T correction2,  \
                     T eps, int decayed, T decay)                                   \
    {                                                                               \
        LGMSTM_NO_CONTRACT                                                          \
        if (decayed)                                                                \
            for (ptrdiff_t i = start; i < stop; ++i) grad[i] = grad[i] + decay * param[i]; \
        if (kind == LGMSTM_SGD) {                                                   \
            for (ptrdiff_t i = start; i < stop; ++i) param[i] = param[i] - lr * grad[i]; \
        } else if (kind == LGMSTM_MOMENTUM && nesterov) {                           \
            for (ptrdiff_t i = start; i < stop; ++i) {                              \
                m[i] = mu * m[i] + grad[i];                                         \
                param[i] = param[i] - lr * (grad[i] + mu * m[i]);                   \
            }                                                                       \
        } else if (kind == LGMSTM_MOMENTUM) {                                       \
            for (ptrdiff_t i = start; i < stop; ++i) {                              \
                m[i] = mu * m[i] + grad[i];                                         \
                param[i] = param[i] - lr * m[i];                                    \
            }                                                                       \
        } else {                                                                    \
            for (ptrdiff_t i = start; i < stop; ++i) {                              \
                m[i] = b1 * m[i] + one_minus_b1 * grad[i];                          \
                v[i] = b2 * v[i] + one_minus_b2 * grad[i] * grad[i];                \
                param[i] = param[i] - lr * (m[i] / correction1)                     \
                    / (ROOT(v[i] / correction2) + eps);                             \
            }                                                                       \
        }                                                                           \
    }

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
LGMSTM_DEFINE_OPTIMIZER_UPDATE(lgmstm_optimizer_update_d, double, sqrt)
LGMSTM_DEFINE_OPTIMIZER_UPDATE(lgmstm_optimizer_update_f, float, sqrtf)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif
