// Where the device backends (cuda, emu) hand their kernel tables to _C, and where _C looks them up.
#pragma once
#include <cstdint>
#include <string>

namespace ck {

// Which implementation runs an op: CPU kernels, CUDA kernels, or the CUDA kernels on the CPU emulator.
enum class Backend : int { cpu = 0, cuda = 1, emu = 2 };
inline const char* backend_name(Backend b) { return b == Backend::cpu ? "cpu" : b == Backend::cuda ? "cuda" : "emu"; }

// Each op declares a plain struct of launcher pointers (e.g. PoolKernels in ops/pool/pool.h). Bumped whenever
// any of those structs changes, so a stale _cuda/_emu module is refused instead of called with the wrong layout.
constexpr uint32_t kTableAbi = 1;

struct KernelTable {
  uint32_t abi;
  uint32_t size;  // sizeof the op's struct, checked on lookup
  const void* table;
};

void register_kernels(Backend b, const std::string& op, KernelTable t);
void set_backend_error(Backend b, const std::string& reason);
bool backend_attempted(Backend b);
// The op's table for backend b; throws RuntimeError naming the reason the backend is unavailable.
const void* find_kernels(Backend b, const std::string& op, uint32_t size);

template <class Table>
const Table& kernels(Backend b, const char* op) {
  return *static_cast<const Table*>(find_kernels(b, op, sizeof(Table)));
}

}  // namespace ck
