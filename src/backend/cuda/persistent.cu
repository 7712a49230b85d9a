// The persistent decode kernel: the steps of a decode layer between two
// attention launches (o product and residual, norm, gate/up, int8 rounding,
// down product and residual, norm, q/k/v) in one launch instead of seven.
//
// Why: at batch 1 a 4-bit layer of an 8B model reads ~29 us of bytes, but
// each kernel boundary costs a drain, a launch and a first trip to memory
// (~4 us, BENCHMARKS.md §6), and there were seven of them a layer. Here the
// grid (every block resident: a cooperative launch) walks the steps in
// order and meets at a grid barrier between them; a product issues its
// first weight loads *before* it waits at the barrier (weights never depend
// on the previous step), so that trip to memory overlaps the wait.
//
// Each step runs the device code of its own kernel (matvec_rows.cuh,
// norm_rows.cuh) with the same rows per warp and chunks per lane, so every
// value is the same bits as the separate launches (tests/gpu hold recorded
// steps equal to direct ones).
//
// Measured slower, so off by default (OPTIQ_CUDA_PERSISTENT=1 switches it
// on; BENCHMARKS.md §6): on an H100, q4 Llama-3-8B decode 309 tok/s against
// 384 with separate launches, and 335 even with the barriers dropped. The
// kernel holds the largest step's registers (128 a thread: 16 warps an SM,
// 8 at one block an SM gave 223 tok/s), where the separate gated product
// runs 32 warps an SM at 64. What it needs before it can win: steps written
// for ~64 registers, and a barrier cheaper than the ~1 us each costs here
// (~200 a token).
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_kernels.h"
#include "backend/cuda/matvec_rows.cuh"
#include "backend/cuda/norm_rows.cuh"

#include <algorithm>
#include <vector>

namespace optiq::cuda {
namespace {

constexpr int kStepWarps = kSplitThreads / 32;  // 8: the norm's block size
constexpr int kMaxSteps = 16;                    // a layer's run is 7

static_assert(kMaxSteps + 1 <= kPersistentBarrierWords, "a count per barrier and one for the launch's end");

struct StepList {
  int count = 0;
  PersistentStep steps[kMaxSteps];
};

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

template <int kB, typename Wait>
__device__ __forceinline__ void product_step(const PersistentStep& st, Wait& wait) {
  matvec_rows<1, kStepWarps, 2, false>(st.w[0], 1, st.y[0], st.act, st.accum,
                                       [&](int64_t r0, int lane, float (&acc)[2][1]) {
                                         int8_rows<kB, 1, 2, chunks_two_rows(kB), false>(
                                             st.w[0], st.w[0], r0, lane, st.xq, st.xscale, st.xsum, 1, acc, wait);
                                       });
}

template <int kB, typename Wait>
__device__ __forceinline__ void gated_step(const PersistentStep& st, Wait& wait) {
  matvec_rows<1, kStepWarps, 2, true>(st.w[0], 1, st.y[0], st.act, nullptr,
                                      [&](int64_t r0, int lane, float (&acc)[2][1]) {
                                        int8_rows<kB, 1, 2, chunks_gated(kB), true>(
                                            st.w[0], st.w[1], r0, lane, st.xq, st.xscale, st.xsum, 1, acc, wait);
                                      });
}

// group_rows' walk (matvec_rows.cuh) with each matrix read where the step
// list holds it (a copy of three matrices, as MatrixGroup makes, spilled).
template <int kB, typename Wait>
__device__ __forceinline__ void group_step(const PersistentStep& st, Wait& wait) {
  const int64_t end0 = st.w[0].rows, end1 = end0 + (st.count > 1 ? st.w[1].rows : 0);
  const int64_t end2 = end1 + (st.count > 2 ? st.w[2].rows : 0);
  const int lane = threadIdx.x & 31;
  for_warp_rows<kStepWarps, 2>(end2, [&](int64_t R) {
    const int m = R < end0 ? 0 : (R < end1 ? 1 : 2);
    const DevMatrix& w = st.w[m];
    const int64_t r = R - (m == 0 ? 0 : (m == 1 ? end0 : end1));
    float acc[2][1] = {};
    int8_rows<kB, 1, 2, chunks_two_rows(kB), false>(w, w, r, lane, st.xq, st.xscale, st.xsum, 1, acc, wait);
#pragma unroll
    for (int i = 0; i < 2; ++i) store_rows<1>(acc[i], 1, r + i, w.rows, lane, st.y[m]);
  });
}

template <typename Wait>
__device__ __forceinline__ void run_step(const PersistentStep& st, Wait& wait) {
  switch (st.kind) {
    case StepKind::Product:
      with_bits(st.w[0].bits, [&](auto b) { product_step<decltype(b)::value>(st, wait); });
      break;
    case StepKind::Gated:
      with_bits(st.w[0].bits, [&](auto b) { gated_step<decltype(b)::value>(st, wait); });
      break;
    case StepKind::Group:
      with_bits(st.w[0].bits, [&](auto b) { group_step<decltype(b)::value>(st, wait); });
      break;
    case StepKind::Quantize: {  // quantize_act_kernel's arithmetic, a warp per block of 32
      const int64_t blocks = (st.cols + 31) / 32;
      const int lane = threadIdx.x & 31;
      for (int64_t t = static_cast<int64_t>(blockIdx.x) * kStepWarps + (threadIdx.x >> 5); t < blocks;
           t += static_cast<int64_t>(gridDim.x) * kStepWarps) {
        wait();
        const int64_t k = 32 * t + lane;
        int8_block(k < st.cols ? st.x[k] : 0.0f, t, st.q, st.qscale, st.qsum);
      }
      break;
    }
    case StepKind::Norm: {  // rms_norm_split_kernel's blocks (block-uniform loop: the norm syncs its block)
      const int64_t blocks = (st.cols + kSplitThreads - 1) / kSplitThreads;
      for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x)
        norm_split_block(st.x, st.norm_w, st.cols, st.eps, st.out, st.q, st.qscale, st.qsum, b, 0, wait);
      break;
    }
  }
}

// The grid barriers: barrier[k] counts the blocks done with step k (step
// k is over for everyone once it reaches the grid size); barrier[kMaxSteps]
// counts the blocks done with the launch, and the last of them puts every
// word back to 0 for the next launch (nobody reads them any more by then).
// A warp waits for barrier k with every active lane spinning on an acquiring
// load (measured against one poller a block that tells the others through
// shared memory, and against lane 0 polling with a sleep: no faster, and a
// poller's __syncwarp needs lanes that a narrow matrix leaves without a
// chunk). OPTIQ_CUDA_PERSISTENT_WAIT=3 drops the barriers (wrong results: a
// timing experiment, what the steps cost without them).
__device__ __forceinline__ void barrier_wait(const unsigned* counter, unsigned blocks) {
  while (load_acquire(counter) < blocks) {
  }
}

__global__ void __launch_bounds__(kSplitThreads, 2)
    persistent_kernel(const __grid_constant__ StepList list, unsigned* barrier, int wait_mode) {
  for (int k = 0; k < list.count; ++k) {
    bool waited = k == 0 || wait_mode == 3;
    // Per warp, after its first weight loads: until every block is done with the step before.
    auto wait = [&] {
      if (!waited) {
        barrier_wait(barrier + k - 1, gridDim.x);
        waited = true;
      }
    };
    run_step(list.steps[k], wait);
    if (wait_mode == 3) continue;
    __syncthreads();  // this block's writes of step k are done (or, after the last step, its waits)
    if (threadIdx.x == 0) {
      __threadfence();
      if (k + 1 < list.count) {
        atomicAdd(barrier + k, 1u);
      } else if (atomicAdd(barrier + kMaxSteps, 1u) == gridDim.x - 1) {
        for (int j = 0; j + 1 < list.count; ++j) barrier[j] = 0;
        barrier[kMaxSteps] = 0;
      }
    }
  }
}

// What a stream has queued.
struct Collecting {
  cudaStream_t stream = nullptr;
  unsigned* barrier = nullptr;
  StepList list;
};
thread_local Collecting* g_collecting = nullptr;
thread_local Collecting g_state;

unsigned persistent_grid() {
  static const unsigned grid = [] {
    int dev = 0, sms = 0, per_sm = 0;
    OPTIQ_CUDA_OK(cudaGetDevice(&dev));
    OPTIQ_CUDA_OK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    OPTIQ_CUDA_OK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, persistent_kernel, kSplitThreads, 0));
    const int want = static_cast<int>(env_int("OPTIQ_CUDA_PERSISTENT_BLOCKS", per_sm));  // blocks an SM (A/B runs; at most what fits)
    return static_cast<unsigned>(sms * std::clamp(want, 1, std::max(per_sm, 1)));
  }();
  return grid;
}

void launch_list(cudaStream_t s, const StepList& list, unsigned* barrier) {
  static const int wait_mode = static_cast<int>(env_int("OPTIQ_CUDA_PERSISTENT_WAIT", 0));
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeCooperative;  // every block resident: the barriers wait for all of them
  attr[0].val.cooperative = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(persistent_grid());
  cfg.blockDim = dim3(kSplitThreads);
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  check_cuda(cudaLaunchKernelEx(&cfg, persistent_kernel, list, barrier, wait_mode), "cudaLaunchKernelEx (persistent decode)",
             __FILE__, __LINE__);
}

}  // namespace

bool persistent_enabled() {
  static const bool can = [] {
    int dev = 0, coop = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return false;
    if (cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess) return false;
    return coop != 0;
  }();
  // Read at every recording (a recording serves every later position: rare),
  // so a test can switch it for one model.
  return can && env_switch("OPTIQ_CUDA_PERSISTENT", false);
}

void persistent_begin(cudaStream_t s, unsigned* barrier) {
  persistent_end(s);
  g_state = Collecting{s, barrier, {}};
  g_collecting = &g_state;
}

namespace {
// Launches what c has queued (nothing when nothing is) and empties the queue first.
void launch_queued(Collecting& c) {
  if (c.list.count == 0) return;
  const StepList list = c.list;
  c.list.count = 0;
  launch_list(c.stream, list, c.barrier);
}
}  // namespace

void persistent_flush(cudaStream_t s) {
  Collecting* c = g_collecting;
  if (c && c->stream == s) launch_queued(*c);
}

void persistent_end(cudaStream_t s) {
  Collecting* c = g_collecting;
  if (!c || c->stream != s) return;
  g_collecting = nullptr;  // first: an exception from the launch leaves nothing collecting
  launch_queued(*c);
}

void persistent_discard(cudaStream_t s) noexcept {
  Collecting* c = g_collecting;
  if (!c || c->stream != s) return;
  g_collecting = nullptr;
  c->list.count = 0;
}

bool persistent_take(cudaStream_t s, const PersistentStep& step) {
  Collecting* c = g_collecting;
  if (!c || c->stream != s) return false;
  // OPTIQ_CUDA_PERSISTENT_KINDS: a bit mask of the StepKinds taken (A/B runs; default all).
  static const int kinds = env_int("OPTIQ_CUDA_PERSISTENT_KINDS", 31);
  if (!(kinds >> static_cast<int>(step.kind) & 1)) return false;
  if (c->list.count == kMaxSteps) persistent_flush(s);
  c->list.steps[c->list.count++] = step;
  return true;
}

}  // namespace optiq::cuda
