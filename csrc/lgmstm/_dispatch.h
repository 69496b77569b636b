/* LGMSTM_DISPATCH: build an array loop for the baseline ISA, for AVX2+FMA
 * and (GCC 11+) for AVX-512 (x86-64-v4); the loader picks one at run time
 * (GCC target_clones, x86-64 ELF only). Elsewhere only the baseline version
 * exists, and LGMSTM_HAS_DISPATCH is 0.
 */
#ifndef LGMSTM_DISPATCH_H
#define LGMSTM_DISPATCH_H

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && defined(__ELF__) \
    && !defined(__clang__) && !defined(LGMSTM_NO_DISPATCH)
/* One clone per string: "avx2,fma" would make two clones, not one. */
#if __GNUC__ >= 11
#define LGMSTM_DISPATCH \
    __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define LGMSTM_DISPATCH __attribute__((target_clones("arch=haswell", "default")))
#endif
#define LGMSTM_HAS_DISPATCH 1
#else
#define LGMSTM_DISPATCH
#define LGMSTM_HAS_DISPATCH 0
#endif

#endif
