// Chooses the CPU kernel variant from the CPU's features and CELLKERN_CPU_ISA.
#include "core/cpu_isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace ck {
namespace {

bool avx2_supported() {
#if defined(CK_HAVE_AVX2) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

CpuIsa detect() {
  const char* force = std::getenv("CELLKERN_CPU_ISA");
  if (force && std::strcmp(force, "base") == 0) return CpuIsa::base;
  return avx2_supported() ? CpuIsa::avx2 : CpuIsa::base;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{int(detect())};
  return isa;
}

}  // namespace

CpuIsa cpu_isa() { return CpuIsa(current().load(std::memory_order_relaxed)); }

const char* cpu_isa_name() { return cpu_isa() == CpuIsa::avx2 ? "avx2" : "base"; }

bool set_cpu_isa(CpuIsa isa) {
  if (isa == CpuIsa::avx2 && !avx2_supported()) return false;
  current().store(int(isa));
  return true;
}

}  // namespace ck
