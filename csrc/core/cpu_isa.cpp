// Chooses the CPU kernel variant from the CPU's features and CELLKERN_CPU_ISA.
#include "core/cpu_isa.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace ck {
namespace {

bool supported(CpuIsa isa) {
  if (isa == CpuIsa::base) return true;
#if defined(CK_HAVE_AVX2) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == CpuIsa::avx2) return avx2;
#if defined(CK_HAVE_AVX512)
  // libgcc checks XCR0 too: the OS saves the 512-bit state.
  return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
#endif
#endif
  return false;
}

CpuIsa detect() {
  CpuIsa best = supported(CpuIsa::avx512) ? CpuIsa::avx512 : supported(CpuIsa::avx2) ? CpuIsa::avx2 : CpuIsa::base;
  // CELLKERN_CPU_ISA may only choose an older variant than the CPU's best (an unknown name is ignored).
  CpuIsa forced;
  const char* force = std::getenv("CELLKERN_CPU_ISA");
  if (force && cpu_isa_from_name(force, &forced) && int(forced) < int(best)) best = forced;
  return best;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{int(detect())};
  return isa;
}

}  // namespace

bool cpu_isa_from_name(const char* name, CpuIsa* isa) {
  static const char* const names[] = {"base", "avx2", "avx512"};
  for (int i = 0; i < 3; ++i)
    if (std::strcmp(name, names[i]) == 0) {
      *isa = CpuIsa(i);
      return true;
    }
  return false;
}

CpuIsa cpu_isa() { return CpuIsa(current().load(std::memory_order_relaxed)); }

const char* cpu_isa_name() {
  const CpuIsa isa = cpu_isa();
  return isa == CpuIsa::avx512 ? "avx512" : isa == CpuIsa::avx2 ? "avx2" : "base";
}

bool set_cpu_isa(CpuIsa isa) {
  if (!supported(isa)) return false;
  current().store(int(isa));
  return true;
}

}  // namespace ck
