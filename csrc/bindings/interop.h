// Python objects to TensorViews through DLPack, and the lazy loading of device backends.
#pragma once
#include <pybind11/pybind11.h>

#include <vector>

#include "core/tensor_view.h"

namespace ck {

// Keeps the capsules a call created alive until it returns.
using Keepalive = std::vector<pybind11::object>;

// A view of a DLPack capsule ("dltensor" or "dltensor_versioned") or of any object with __dlpack__.
// None gives an empty view (ndim 0). The capsule is borrowed, not consumed: its producer still frees it.
TensorView view(pybind11::handle obj, const char* name, Keepalive& keep);

// Before the first CUDA or emulator call, asks cellkern._ext to import and register that backend (it records
// the reason instead when the backend cannot load). Needs the GIL.
void ensure_backend(const TensorView& t, bool use_emu);

}  // namespace ck
