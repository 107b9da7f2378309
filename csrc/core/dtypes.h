// The one dtype list: every dtype cellkern knows, its C++ type, DLPack code and name, and dispatch macros.
#pragma once
#include <cstdint>

#include "core/check.h"

namespace ck {

// X(enum name, C++ type, DLPack type code, bits, printable name)
#define CK_DTYPE_LIST(X)               \
  X(f32, float, 2, 32, "float32")      \
  X(f64, double, 2, 64, "float64")     \
  X(f16, uint16_t, 2, 16, "float16")   \
  X(bf16, uint16_t, 4, 16, "bfloat16") \
  X(i8, int8_t, 0, 8, "int8")          \
  X(i16, int16_t, 0, 16, "int16")      \
  X(i32, int32_t, 0, 32, "int32")      \
  X(i64, int64_t, 0, 64, "int64")      \
  X(u8, uint8_t, 1, 8, "uint8")        \
  X(u16, uint16_t, 1, 16, "uint16")    \
  X(u32, uint32_t, 1, 32, "uint32")    \
  X(u64, uint64_t, 1, 64, "uint64")    \
  X(b8, bool, 6, 8, "bool")

enum class DType : uint8_t {
#define CK_X(e, T, code, bits, name) e,
  CK_DTYPE_LIST(CK_X)
#undef CK_X
      unknown
};

inline const char* dtype_name(DType d) {
  switch (d) {
#define CK_X(e, T, code, bits, name) \
  case DType::e:                     \
    return name;
    CK_DTYPE_LIST(CK_X)
#undef CK_X
    default:
      return "unknown";
  }
}

inline int dtype_size(DType d) {
  switch (d) {
#define CK_X(e, T, code, bits, name) \
  case DType::e:                     \
    return bits / 8;
    CK_DTYPE_LIST(CK_X)
#undef CK_X
    default:
      return 0;
  }
}

inline DType dtype_from_dlpack(uint8_t code, uint8_t bits) {
#define CK_X(e, T, c, b, name) \
  if (code == c && bits == b) return DType::e;
  CK_DTYPE_LIST(CK_X)
#undef CK_X
  return DType::unknown;
}

}  // namespace ck

// Runs the code with `scalar_t` bound to float or double; other dtypes have been rejected by validation.
#define CK_DISPATCH_FLOAT(dtype, ...)             \
  do {                                            \
    if ((dtype) == ::ck::DType::f32) {            \
      using scalar_t = float;                     \
      __VA_ARGS__;                                \
    } else if ((dtype) == ::ck::DType::f64) {     \
      using scalar_t = double;                    \
      __VA_ARGS__;                                \
    } else {                                      \
      throw ::ck::TypeError("unsupported dtype"); \
    }                                             \
  } while (0)
