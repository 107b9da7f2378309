// Whether the CUDA runtime can reach a GPU here, and if not, why (asked only when the user asks).
#pragma once
#include <string>

namespace ck {

struct CudaStatus {
  int device_count = 0;
  int error = 0;  // cudaError_t of cudaGetDeviceCount; 35 = cudaErrorInsufficientDriver (no driver)
  std::string error_name, error_string;
  int runtime_version = 0, driver_version = 0;
};

CudaStatus query_cuda_status();

}  // namespace ck
