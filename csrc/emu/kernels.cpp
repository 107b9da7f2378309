// The g++ translation unit of _emu: the same CUDA kernel sources, run by the SIMT emulator.
#include "emu/simt.h"  // first: it stands in for the CUDA headers
#include "cuda/tables.h"
