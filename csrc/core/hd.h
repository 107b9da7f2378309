// CK_HD and the per-ISA namespace: the two macros that let one header serve g++, nvcc and the emulator.
#pragma once

// CK_HD marks math written once for every backend: __host__ __device__ under nvcc, plain inline elsewhere.
#if defined(__CUDACC__)
#define CK_HD __host__ __device__ __forceinline__
#define CK_DEVICE_CODE 1
#else
#define CK_HD inline
#endif

// Functions compiled into several ISA variants (cpu_avx2, cpu_base, dev_cuda, dev_emu; host elsewhere) live in
// ck::<CK_ISA>, an inline namespace: callers write ck::f, yet each variant gets its own symbol, so the linker can never
// swap an AVX2-compiled copy of an inline function into the portable path. Plain data types stay in ck.
#ifndef CK_ISA
#define CK_ISA host
#endif
#define CK_NS_BEGIN \
  namespace ck {    \
  inline namespace CK_ISA {
#define CK_NS_END \
  }               \
  }
// Declared here, first, so that later re-openings (with or without `inline`) all name the same namespace.
namespace ck {
inline namespace CK_ISA {}
}  // namespace ck
