cdef extern from "_omp.h" nogil:
    int LGMSTM_OPENMP_ENABLED
    int lgmstm_omp_max_threads()
    void lgmstm_omp_set_threads(int n)
    int lgmstm_omp_version()
    double lgmstm_omp_wtime()
