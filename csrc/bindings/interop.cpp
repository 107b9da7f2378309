// DLPack consumer: reads legacy and versioned capsules into TensorViews without copying.
#include "bindings/interop.h"

#include <cstring>

#include "core/check.h"
#include "core/dlpack.h"
#include "core/registry.h"

namespace py = pybind11;

namespace ck {

TensorView view(py::handle obj, const char* name, Keepalive& keep) {
  TensorView v;
  if (obj.is_none()) return v;
  py::object cap = py::reinterpret_borrow<py::object>(obj);
  if (!PyCapsule_CheckExact(cap.ptr())) {
    if (!py::hasattr(obj, "__dlpack__"))
      throw TypeError(str(name, ": expected an array (numpy array, torch tensor or DLPack capsule), got ",
                          std::string(py::str(py::type::of(obj).attr("__name__")))));
    // A producer that cannot export (numpy object or string arrays, non-native byte order) raises BufferError: the
    // argument is of the wrong kind for a kernel, a TypeError naming it.
    auto export_error = [&](py::error_already_set& e) {
      if (!e.matches(PyExc_BufferError)) throw;
      throw TypeError(str(name, ": cannot be read as a numeric array (", e.what(), ")"));
    };
    // torch refuses to export meta tensors (BufferError): say what is wrong with the argument instead.
    if (py::hasattr(obj, "device") && py::hasattr(obj.attr("device"), "type")) {
      const std::string dev = py::str(obj.attr("device").attr("type"));
      CK_CHECK_VALUE(dev == "cpu" || dev == "cuda", name, ": cellkern runs on cpu and cuda data, got a tensor on ",
                     dev);
    }
    try {  // versioned first: it carries the read-only flag
      cap = obj.attr("__dlpack__")(py::arg("max_version") = py::make_tuple(1, 0));
    } catch (py::error_already_set& e) {
      if (!e.matches(PyExc_TypeError)) export_error(e);
      try {
        cap = obj.attr("__dlpack__")();
      } catch (py::error_already_set& e2) {
        export_error(e2);
      }
    }
    keep.push_back(cap);
  }
  const char* cname = PyCapsule_GetName(cap.ptr());
  const DLTensor* dl = nullptr;
  if (cname && std::strcmp(cname, "dltensor_versioned") == 0) {
    auto* mt = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap.ptr(), cname));
    CK_CHECK_VALUE(mt, name, ": invalid DLPack capsule");
    CK_CHECK_VALUE(mt->version.major == 1, name, ": DLPack major version ", mt->version.major,
                   " is not supported (cellkern reads version 1)");
    dl = &mt->dl_tensor;
    v.readonly = (mt->flags & CK_DLPACK_FLAG_READ_ONLY) != 0;
  } else if (cname && std::strcmp(cname, "dltensor") == 0) {
    auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), cname));
    CK_CHECK_VALUE(mt, name, ": invalid DLPack capsule");
    dl = &mt->dl_tensor;
  } else {
    throw ValueError(str(name, ": not a live DLPack capsule (name '", cname ? cname : "",
                         "'; a used capsule cannot be read again)"));
  }
  CK_CHECK_VALUE(dl->ndim >= 0 && dl->ndim <= kMaxDims, name, ": ", dl->ndim, " dims; cellkern handles up to ",
                 kMaxDims);
  CK_CHECK_TYPE(dl->dtype.lanes == 1, name, ": vector dtypes (lanes > 1) are not supported");
  v.dtype = dtype_from_dlpack(dl->dtype.code, dl->dtype.bits);
  CK_CHECK_TYPE(v.dtype != DType::unknown, name, ": unsupported dtype (DLPack code ", int(dl->dtype.code), ", ",
                int(dl->dtype.bits), " bits)");
  switch (dl->device.device_type) {
    case kDLCPU:
    case kDLCUDAHost:
      v.device = {DeviceType::cpu, 0};
      break;
    case kDLCUDA:
    case kDLCUDAManaged:
      v.device = {DeviceType::cuda, dl->device.device_id};
      break;
    default:  // meta, mps, ...: nothing a kernel could read
      throw ValueError(str(name, ": cellkern runs on cpu and cuda data, got DLPack device type ",
                           int(dl->device.device_type)));
  }
  v.ndim = dl->ndim;
  v.data = static_cast<char*>(dl->data) + dl->byte_offset;
  int64_t expect = 1;
  for (int i = v.ndim - 1; i >= 0; --i) {
    v.shape[i] = dl->shape[i];
    CK_CHECK_VALUE(v.shape[i] >= 0, name, ": negative dimension in DLPack shape");
    v.strides[i] = dl->strides ? dl->strides[i] : expect;
    expect *= v.shape[i];
  }
  return v;
}

void ensure_backend(const TensorView& t, bool use_emu) {
  Backend b;
  if (t.device.type == DeviceType::cuda)
    b = Backend::cuda;
  else if (use_emu)
    b = Backend::emu;
  else
    return;
  if (backend_attempted(b)) return;
  py::module_::import("cellkern._ext").attr("_load_backend")(backend_name(b));
}

}  // namespace ck
