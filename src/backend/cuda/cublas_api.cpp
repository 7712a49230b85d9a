#include "backend/cuda/cublas_api.h"

#include <dlfcn.h>

#include <mutex>
#include <string>

#include "core/error.h"

namespace optiq::cuda {

namespace {

template <class F>
void bind(void* lib, const char* name, F& fn, const std::string& path) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  check(fn != nullptr, "{}: has no symbol {} (a cuBLAS older than CUDA {}?)", path, name, CUBLAS_VER_MAJOR);
}

CublasApi load() {
  const std::string name = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
  void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
  check(lib != nullptr,
        "CUDA backend: cannot load {} ({}): install the CUDA {} runtime libraries or add their folder to "
        "LD_LIBRARY_PATH",
        name, dlerror(), CUBLAS_VER_MAJOR);
  CublasApi api;
  bind(lib, "cublasCreate_v2", api.create, name);
  bind(lib, "cublasDestroy_v2", api.destroy, name);
  bind(lib, "cublasSetStream_v2", api.set_stream, name);
  bind(lib, "cublasSetWorkspace_v2", api.set_workspace, name);
  bind(lib, "cublasGemmEx", api.gemm_ex, name);
  bind(lib, "cublasGemmStridedBatchedEx", api.gemm_strided_batched_ex, name);
  bind(lib, "cublasGemmBatchedEx", api.gemm_batched_ex, name);
  bind(lib, "cublasGetStatusString", api.status_string, name);
  return api;  // the library stays loaded for the process
}

}  // namespace

const CublasApi& cublas_api() {
  static std::once_flag once;
  static CublasApi api;
  static std::string error;
  std::call_once(once, [] {
    try {
      api = load();
    } catch (const Error& e) {
      error = e.what();
    }
  });
  if (!error.empty()) throw Error(error);
  return api;
}

void check_blas(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    fail("cuBLAS: {} failed: {} ({})", what, cublas_api().status_string(st), static_cast<int>(st));
}

}  // namespace optiq::cuda
