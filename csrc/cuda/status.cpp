// cuda_status(): the first CUDA runtime call cellkern makes, so importing never touches the driver.
#include "cuda/status.h"

#include <cuda_runtime.h>

namespace ck {

CudaStatus query_cuda_status() {
  CudaStatus s;
  cudaRuntimeGetVersion(&s.runtime_version);
  cudaDriverGetVersion(&s.driver_version);  // 0 when no driver is installed
  cudaError_t e = cudaGetDeviceCount(&s.device_count);
  s.error = int(e);
  if (e != cudaSuccess) {
    s.device_count = 0;
    s.error_name = cudaGetErrorName(e);
    s.error_string = cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
  }
  return s;
}

}  // namespace ck
