// The nvcc translation unit of _cuda: every op's kernels, compiled for the configured architectures.
#include "cuda/tables.h"
