// The kernel-table registry behind ck::kernels<T>(backend, op).
#include "core/registry.h"

#include <map>
#include <mutex>

#include "core/check.h"

namespace ck {
namespace {
struct State {
  std::mutex mu;
  std::map<std::pair<int, std::string>, KernelTable> tables;
  std::map<int, std::string> errors;
  std::map<int, bool> loaded;
};
State& state() {
  static State s;
  return s;
}
}  // namespace

void register_kernels(Backend b, const std::string& op, KernelTable t) {
  CK_CHECK(t.abi == kTableAbi, "kernel table '", op, "' for backend ", backend_name(b), " has ABI ", t.abi,
           " but _C expects ", kTableAbi, ": rebuild cellkern");
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.tables[{int(b), op}] = t;
  s.loaded[int(b)] = true;
}

void set_backend_error(Backend b, const std::string& reason) {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.errors[int(b)] = reason;
}

bool backend_attempted(Backend b) {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.loaded[int(b)] || !s.errors[int(b)].empty();
}

const void* find_kernels(Backend b, const std::string& op, uint32_t size) {
  auto& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.tables.find({int(b), op});
  if (it == s.tables.end()) {
    const std::string& why = s.errors[int(b)];
    if (!why.empty()) throw RuntimeError(str("the ", backend_name(b), " backend is unavailable: ", why));
    throw RuntimeError(str("no ", backend_name(b), " kernels registered for op '", op, "'"));
  }
  CK_CHECK(it->second.size == size, "kernel table '", op, "' for backend ", backend_name(b),
           " has an unexpected size: rebuild cellkern");
  return it->second.table;
}

}  // namespace ck
