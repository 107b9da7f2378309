// The per-op binding functions module.cpp calls, and argument helpers they share.
#pragma once
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <vector>

#include "core/check.h"

namespace ck {

using Ints = std::vector<int64_t>;

// Copies an nd-long argument list into a params array, naming the argument when the length is wrong.
inline void copy_dims(const Ints& v, int nd, int64_t* dst, const char* name) {
  CK_CHECK_VALUE(int(v.size()) == nd, name, ": expected ", nd, " values, got ", v.size());
  for (int i = 0; i < nd; ++i) dst[i] = v[i];
}

void bind_pool(pybind11::module_& m);
void bind_conv(pybind11::module_& m);
void bind_star(pybind11::module_& m);
void bind_star3d(pybind11::module_& m);

}  // namespace ck
