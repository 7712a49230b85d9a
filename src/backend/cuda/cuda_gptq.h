// GPTQ on the GPU (Backend::gptq_factor / gptq_affine for the CUDA backend):
// model/gptq.cpp's algorithm for affine formats with act-order, every
// O(n^3) and O(rows n^2) step on the device: the inverse factor (blocked
// Cholesky and triangular inverse in double, cuBLAS for the trailing
// updates), the column loop (gptq.cu, one warp per row, 128 columns at a
// time, a cuBLAS product for the lazy updates) and the grid refits (cuBLAS
// products H c_g for a tile of rows, a block per row for the normal
// equations). The host sends w and takes back codes and words.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>

#include "backend/backend.h"

namespace optiq::cuda {

std::unique_ptr<Backend::GptqFactor> gptq_factor(const double* a, const int64_t* perm, const float* diag,
                                                 const float* h, int64_t n, cudaStream_t s, cublasHandle_t blas);
void gptq_affine(const Backend::GptqFactor& f, const float* w, int64_t rows, AffineFormat fmt,
                 const QuantizeOptions& grid, int grid_passes, uint8_t* codes, uint16_t* scales, uint16_t* biases,
                 cudaStream_t s, cublasHandle_t blas);

}  // namespace optiq::cuda
