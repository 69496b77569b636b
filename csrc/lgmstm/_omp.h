/* The one door to OpenMP: every omp_* call of the package goes through here,
 * and it still compiles (serially, one thread) when the build has no OpenMP. */
#ifndef LGMSTM_OMP_H
#define LGMSTM_OMP_H

#ifdef _OPENMP
#include <omp.h>
#define LGMSTM_OPENMP_ENABLED 1
static inline int lgmstm_omp_max_threads(void) { return omp_get_max_threads(); }
static inline void lgmstm_omp_set_threads(int n) { omp_set_num_threads(n); }
static inline int lgmstm_omp_version(void) { return _OPENMP; }
static inline double lgmstm_omp_wtime(void) { return omp_get_wtime(); }
#else
#define LGMSTM_OPENMP_ENABLED 0
static inline int lgmstm_omp_max_threads(void) { return 1; }
static inline void lgmstm_omp_set_threads(int n) { (void)n; }
static inline int lgmstm_omp_version(void) { return 0; }
/* Only multithreaded training times its epochs (_train.pyx's ThreadChoice). */
static inline double lgmstm_omp_wtime(void) { return 0.0; }
#endif

#endif
