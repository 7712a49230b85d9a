// Weight bytes brought into the L2 cache ahead of the product that reads
// them (Backend::prefetch). Decode at batch 1 alternates bandwidth-bound
// products with latency-bound steps (norms, attention, the small q/k/v and o
// products) that leave device memory idle; a prefetch issued on a side stream
// at the start of such a step fills that idle time, and the next product
// then reads its first rows from L2. A hint only: nothing is written.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"

namespace optiq::cuda {
namespace {

// Bytes per bulk prefetch (sm_90) and blocks issuing them: one SM's copy
// engine would issue a whole matrix's requests too slowly, so they are spread.
constexpr int64_t kPiece = int64_t{16} << 10;
constexpr int kBlocks = 32;
constexpr int kThreads = 32;

__global__ void __launch_bounds__(kThreads) l2_prefetch_kernel(PrefetchRanges r) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x, stride = int64_t{kBlocks} * kThreads;
  for (int i = 0; i < r.count; ++i) {
    const char* p = static_cast<const char*>(r.p[i]);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    for (int64_t off = t * kPiece; off < r.bytes[i]; off += stride * kPiece) {
      const uint32_t n = static_cast<uint32_t>(min(kPiece, r.bytes[i] - off)) & ~15u;  // whole 16-byte units
      if (n) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + off), "r"(n) : "memory");
    }
#else
    for (int64_t off = t * 128; off < r.bytes[i]; off += stride * 128)
      asm volatile("prefetch.global.L2 [%0];" ::"l"(p + off));
#endif
  }
}

}  // namespace

void l2_prefetch(const PrefetchRanges& r, cudaStream_t s) {
  if (r.count == 0) return;
  l2_prefetch_kernel<<<kBlocks, kThreads, 0, s>>>(r);
  OPTIQ_CUDA_LAUNCHED();
}

}  // namespace optiq::cuda
