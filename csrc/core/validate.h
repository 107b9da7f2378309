// Argument checks shared by every op: each failure names the argument and raises the right Python exception.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/check.h"
#include "core/registry.h"
#include "core/tensor_view.h"

namespace ck {

inline std::string shape_str(const TensorView& t) {
  std::string s = "(";
  for (int i = 0; i < t.ndim; ++i) s += (i ? ", " : "") + std::to_string(t.shape[i]);
  return s + (t.ndim == 1 ? ",)" : ")");
}

inline void check_dtype(const TensorView& t, const char* name, std::initializer_list<DType> allowed) {
  for (DType d : allowed)
    if (t.dtype == d) return;
  std::string names;
  for (DType d : allowed) names += std::string(names.empty() ? "" : " or ") + dtype_name(d);
  throw TypeError(str(name, ": expected dtype ", names, ", got ", dtype_name(t.dtype)));
}

inline void check_same_dtype(const TensorView& t, const char* name, const TensorView& ref, const char* ref_name) {
  CK_CHECK_TYPE(t.dtype == ref.dtype, name, ": expected dtype ", dtype_name(ref.dtype), " (the dtype of ", ref_name,
                "), got ", dtype_name(t.dtype));
}

inline void check_same_device(const TensorView& t, const char* name, const TensorView& ref, const char* ref_name) {
  CK_CHECK_VALUE(t.device.type == ref.device.type && t.device.index == ref.device.index, name, " is on ",
                 device_name(t.device.type), ":", t.device.index, " but ", ref_name, " is on ",
                 device_name(ref.device.type), ":", ref.device.index);
}

inline void check_shape(const TensorView& t, const char* name, const int64_t* shape, int ndim) {
  TensorView want;
  want.ndim = ndim;
  bool ok = t.ndim == ndim;
  for (int i = 0; i < ndim; ++i) {
    want.shape[i] = shape[i];
    ok = ok && t.shape[i] == shape[i];
  }
  CK_CHECK_VALUE(ok, name, ": expected shape ", shape_str(want), ", got ", shape_str(t));
}

inline void check_writable(const TensorView& t, const char* name) {
  CK_CHECK_VALUE(!t.readonly, name, ": the output array is read-only");
}

// Outputs must not overlap any other argument: kernels read inputs while writing outputs.
inline void check_no_overlap(const TensorView& a, const char* an, const TensorView& b, const char* bn) {
  if (a.ndim == 0 || b.ndim == 0 || a.numel() == 0 || b.numel() == 0) return;
  uintptr_t alo, ahi, blo, bhi;
  a.byte_range(alo, ahi);
  b.byte_range(blo, bhi);
  CK_CHECK_VALUE(ahi <= blo || bhi <= alo, an, " and ", bn, " overlap in memory; pass a separate output");
}

// a * b with a ValueError instead of silent int64 wrap-around.
inline int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  CK_CHECK_VALUE(!__builtin_mul_overflow(a, b, &r), what, " overflows int64");
  return r;
}

// a + b with a ValueError instead of silent int64 wrap-around.
inline int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r;
  CK_CHECK_VALUE(!__builtin_add_overflow(a, b, &r), what, " overflows int64");
  return r;
}

// The backend a call runs on: the tensor's device decides, except that CPU data may run the CUDA kernels
// on the emulator.
inline Backend pick_backend(const TensorView& t, bool use_emu) {
  if (t.device.type == DeviceType::cuda) {
    CK_CHECK_VALUE(!use_emu, "the emulator backend runs on CPU data, but the tensor is on cuda");
    return Backend::cuda;
  }
  CK_CHECK_VALUE(t.device.type == DeviceType::cpu, "unsupported device; cellkern runs on cpu and cuda");
  return use_emu ? Backend::emu : Backend::cpu;
}

}  // namespace ck
