// Runtime CPU dispatch: every *_cpu.cpp is compiled once per ISA (ck::cpu_avx512, ck::cpu_avx2, ck::cpu_base); pick
// one per call.
#pragma once
#include "core/hd.h"

namespace ck {

enum class CpuIsa { base, avx2, avx512 };

// The best ISA both compiled in and supported by this CPU, unless CELLKERN_CPU_ISA (base, avx2) or set_cpu_isa chose
// an older one (tests run them all).
CpuIsa cpu_isa();
const char* cpu_isa_name();
// Returns false (and changes nothing) when the ISA is not compiled in or not supported by this CPU.
bool set_cpu_isa(CpuIsa isa);
// The ISA of a name ("base", "avx2", "avx512"); false when the name is none of them.
bool cpu_isa_from_name(const char* name, CpuIsa* isa);

}  // namespace ck

// Declares a CPU kernel entry point in every ISA namespace it is compiled for.
#define CK_CPU_DECLARE(decl) \
  namespace ck {             \
  namespace cpu_avx512 {     \
  decl;                      \
  }                          \
  namespace cpu_avx2 {       \
  decl;                      \
  }                          \
  namespace cpu_base {       \
  decl;                      \
  }                          \
  }

#if defined(CK_HAVE_AVX512)
#define CK_CPU_CALL(fn, ...)                                                                                  \
  (::ck::cpu_isa() == ::ck::CpuIsa::avx512 ? ::ck::cpu_avx512::fn(__VA_ARGS__)                               \
   : ::ck::cpu_isa() == ::ck::CpuIsa::avx2 ? ::ck::cpu_avx2::fn(__VA_ARGS__)                                 \
                                           : ::ck::cpu_base::fn(__VA_ARGS__))
#elif defined(CK_HAVE_AVX2)
#define CK_CPU_CALL(fn, ...) \
  (::ck::cpu_isa() == ::ck::CpuIsa::avx2 ? ::ck::cpu_avx2::fn(__VA_ARGS__) : ::ck::cpu_base::fn(__VA_ARGS__))
#else
#define CK_CPU_CALL(fn, ...) ::ck::cpu_base::fn(__VA_ARGS__)
#endif
