# csrc/lgmstm is the compiled half of the package lgmstm: with csrc on
# Cython's include path, "from lgmstm._dense cimport dense_forward" finds
# csrc/lgmstm/_dense.pxd, and cdef functions are shared across modules.
