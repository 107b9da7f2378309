// TensorView: a borrowed, non-owning view (pointer, dtype, device, shape, strides) that every kernel reads.
#pragma once
#include <cstdint>

#include "core/check.h"
#include "core/dtypes.h"

namespace ck {

constexpr int kMaxDims = 8;

enum class DeviceType : uint8_t { cpu, cuda, other };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;
};

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::unknown;
  Device device;
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};  // in elements
  bool readonly = false;

  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= shape[i];
    return n;
  }
  bool is_contiguous() const {
    if (numel() == 0) return true;  // as torch: an empty tensor is contiguous whatever its strides
    int64_t expect = 1;
    for (int i = ndim - 1; i >= 0; --i) {
      if (shape[i] != 1 && strides[i] != expect) return false;
      expect *= shape[i];
    }
    return true;
  }
  // Dense with the channel dimension (dim 1) innermost: torch's channels_last / channels_last_3d.
  bool is_channels_last() const {
    if (ndim < 3) return false;
    int64_t expect = 1;
    auto step = [&](int d) {
      bool ok = shape[d] == 1 || strides[d] == expect;
      expect *= shape[d];
      return ok;
    };
    if (!step(1)) return false;
    for (int d = ndim - 1; d >= 2; --d)
      if (!step(d)) return false;
    return step(0);
  }
  template <class T>
  T* ptr() const {
    return static_cast<T*>(data);
  }
  // Bytes spanned [lo, hi) by the elements, used to reject aliasing between inputs and outputs.
  void byte_range(uintptr_t& lo, uintptr_t& hi) const {
    int64_t mn = 0, mx = 0;
    for (int i = 0; i < ndim; ++i) {
      if (shape[i] == 0) {
        lo = hi = reinterpret_cast<uintptr_t>(data);
        return;
      }
      int64_t ext = (shape[i] - 1) * strides[i];
      (ext < 0 ? mn : mx) += ext;
    }
    int sz = dtype_size(dtype);
    lo = reinterpret_cast<uintptr_t>(data) + mn * sz;
    hi = reinterpret_cast<uintptr_t>(data) + (mx + 1) * sz;
  }
};

inline const char* device_name(DeviceType t) {
  return t == DeviceType::cpu ? "cpu" : t == DeviceType::cuda ? "cuda" : "other";
}

}  // namespace ck
