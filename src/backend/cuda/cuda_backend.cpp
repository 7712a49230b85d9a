// The CUDA backend: buffers and weights live in device memory, every
// operation is a kernel on one stream (cuda_kernels.h), and a decode step can
// be recorded once as a CUDA graph and replayed at every later position.
//
// Weights are uploaded in their own storage (packed affine words with their
// scales and biases, k-quant blocks, fp16/bf16/fp32) and never widened in
// device memory. Products with a few activation rows (decode) read the
// packed bytes directly (matvec.cu); larger batches (prefill, evaluation)
// expand the weights a slab of rows at a time into a scratch buffer and
// multiply with cuBLAS: fp16 tensor cores with fp32 accumulation under fast
// numerics, fp32 under exact numerics (kernels::decode_int8_enabled(), the
// same process-wide switch as the CPU's).
//
// Numerics, fast (the default for running): decode products with affine or
// GGUF k-quant (Q2_K..Q6_K) weights round the activations to int8 blocks of
// 32 exactly as the CPU's int8 decode does; prefill GEMMs take fp16 operands; the KV cache is fp16.
// Exact: fp32 everywhere (cuBLAS without TF32), fp32 KV cache.
//
// This file is plain C++ (the CUDA runtime API is C): fmt's compile-time
// format checks do not get through nvcc, so errors are formatted here and the
// .cu files hold only kernels and their launchers.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cublas_api.h"
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_gptq.h"
#include "backend/cuda/cuda_kernels.h"
#include "core/diagnostics.h"
#include "core/error.h"
#include "kernels/act_quant.h"

namespace optiq {
namespace cuda {

void fail_cuda(cudaError_t e, const char* what, const char* file, int line) {
  fail("CUDA: {} failed at {}:{}: {} ({})", what, file, line, cudaGetErrorString(e), cudaGetErrorName(e));
}

bool pdl_enabled() {
  static const bool on = [] {
    if (!env_switch("OPTIQ_CUDA_PDL", true)) return false;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major >= 9;
  }();
  return on;
}

namespace {

// OPTIQ_CUDA_MEMLOG=1: every allocation of 16 MiB or more, and every new
// peak of the bytes held, goes to stderr with the bytes held then: where a
// profile's or a run's device memory goes (BENCHMARKS.md §6).
class AllocationLog {
 public:
  static AllocationLog& get() {
    static AllocationLog log;
    return log;
  }
  void allocated(void* p, size_t bytes) {
    if (!on_) return;
    std::lock_guard lock(mu_);
    live_[p] = bytes;
    held_ += bytes;
    if (bytes >= (size_t{16} << 20) || held_ > peak_ + (size_t{256} << 20))
      fmt::print(stderr, "cuda memory: +{:.1f} MiB, {:.2f} GB held{}\n", bytes / 1048576.0, held_ / 1e9,
                 held_ > peak_ ? " (peak)" : "");
    peak_ = std::max(peak_, held_);
  }
  void freed(void* p) {
    if (!on_ || !p) return;
    std::lock_guard lock(mu_);
    auto it = live_.find(p);
    if (it == live_.end()) return;
    held_ -= it->second;
    live_.erase(it);
  }

 private:
  AllocationLog() {
    on_ = env_switch("OPTIQ_CUDA_MEMLOG", false);
  }
  bool on_ = false;
  std::mutex mu_;
  std::unordered_map<void*, size_t> live_;
  size_t held_ = 0, peak_ = 0;
};

// cudaMalloc that says how much was asked and how much is free when it fails.
void* malloc_device(size_t bytes) {
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e == cudaSuccess) AllocationLog::get().allocated(p, bytes);
  if (e != cudaSuccess) {
    size_t free_b = 0, total_b = 0;
    cudaGetLastError();
    cudaMemGetInfo(&free_b, &total_b);
    fail("CUDA: cannot allocate {:.1f} MiB of device memory ({:.1f} of {:.1f} MiB free): {}", bytes / 1048576.0,
         free_b / 1048576.0, total_b / 1048576.0, cudaGetErrorString(e));
  }
  return p;
}

}  // namespace

namespace {
// Device frees so far: an L2 prefetch hint made before a free is dropped (it
// may name the freed memory).
std::atomic<uint64_t> g_device_frees{0};
}  // namespace

void release_device(void* p) {
  AllocationLog::get().freed(p);
  g_device_frees.fetch_add(1, std::memory_order_relaxed);
  cudaFree(p);
}

DeviceMemory::DeviceMemory(size_t bytes) : bytes_(bytes) {
  if (bytes > 0) ptr_.reset(malloc_device(bytes));
}

namespace {

// A weight matrix in device memory: one allocation holding every array the
// DevMatrix points into.
class CudaWeight final : public WeightHandle {
 public:
  CudaWeight(int64_t rows, int64_t cols) : WeightHandle(rows, cols) {}
  DevMatrix m;
  DeviceMemory mem;
};

const DevMatrix& dev(const WeightHandle& w) { return static_cast<const CudaWeight&>(w).m; }

// A grow-only device scratch buffer. Growing while a graph is being recorded
// keeps the old allocation alive (recorded kernels point into it).
class Scratch {
 public:
  template <class T>
  T* get(size_t count, cudaStream_t s, bool recording) {
    const size_t bytes = std::max<size_t>(count * sizeof(T), 256);
    if (bytes > mem_.bytes()) {
      if (recording) {
        retired_.push_back(std::move(mem_));
      } else {
        OPTIQ_CUDA_OK(cudaStreamSynchronize(s));  // kernels queued on the old buffer finish first
      }
      mem_ = DeviceMemory(bytes + bytes / 4);
    }
    return mem_.as<T>();
  }

 private:
  DeviceMemory mem_;
  std::vector<DeviceMemory> retired_;
};

void free_device(float* p) { release_device(p); }

class CudaStep final : public RecordedStep {
 public:
  ~CudaStep() override {
    if (exec) cudaGraphExecDestroy(exec);
    if (staging) cudaFreeHost(staging);
  }
  cudaGraphExec_t exec = nullptr;
  void* staging = nullptr;  // pinned: the step's output (logits, or the argmax's index)
  size_t out_bytes = 0;
};

// Prefill attention's scores (fp32) for one block of query rows, at most:
// the queries of a pass are attended in blocks that fit it (plan/compute_buffers.cpp
// counts the same bound for --fit).
constexpr int64_t kAttentionScoreBytes = int64_t{512} << 20;
// OPTIQ_CUDA_ATTENTION_SCORE_BYTES lowers it (tests: blocks of one or a few rows).
int64_t attention_score_bytes() {
  const long long v = env_int("OPTIQ_CUDA_ATTENTION_SCORE_BYTES", 0);
  return v > 0 ? std::min<int64_t>(v, kAttentionScoreBytes) : kAttentionScoreBytes;
}

// OPTIQ_CUDA_SKIP=attention,norm,qkv,o,gated,down (benchmarks only: wrong
// results): the named decode operations are not launched, so a step's time
// without them says what each costs inside a recorded step, overlaps included.
bool skipped(std::string_view op) {
  static const std::string list = [] {
    const char* e = std::getenv("OPTIQ_CUDA_SKIP");
    return e ? "," + std::string(e) + "," : std::string();
  }();
  return !list.empty() && list.find("," + std::string(op) + ",") != std::string::npos;
}

// Prefill expands packed rows into fp16 slabs of at most this size for cuBLAS
// (lm_heads of large vocabularies take a few; plan/compute_buffers.cpp counts
// it for --fit). Slabs small enough to stay in the L2 cache were measured
// slower: 16 MB ones halve q4 prefill (BENCHMARKS.md §6).
constexpr size_t kGemmSlabBytes = size_t{256} << 20;

// bf16 rows multiplied as bf16 in prefill (OPTIQ_CUDA_BF16_GEMM=0: expanded
// to fp16 first, as before).
bool bf16_gemm_enabled() {
  static const bool on = env_switch("OPTIQ_CUDA_BF16_GEMM", true);
  return on;
}

// Prefill attention batches every query head through pointer arrays
// (OPTIQ_CUDA_ATTN_HEADS=0: one strided launch per head of a group).
bool attention_by_heads() {
  static const bool on = env_switch("OPTIQ_CUDA_ATTN_HEADS", true);
  return on;
}

// Prefill attention by the flash kernel where it applies (flash_prefill.cu;
// OPTIQ_CUDA_FLASH_PREFILL=0: scores through cuBLAS and a softmax kernel, as
// before; read at every call, so a test can take both paths).
bool flash_prefill_enabled() { return env_switch("OPTIQ_CUDA_FLASH_PREFILL", true); }

// Step inputs as they sit in device memory: the position, then the tokens.
constexpr int kMaxStepTokens = kMatvecMaxRows;
struct StepInputs {
  int32_t pos = 0;
  int32_t tokens[kMaxStepTokens] = {};
};

class CudaBackend;

// Every operation opens one: it counts operations (the int8 activation cache
// below is valid only between two consecutive products) and, while op timing
// is on, records a device event pair around the operation.
class Op {
 public:
  Op(CudaBackend& b, const char* name);
  Op(CudaBackend& b, std::string name);
  ~Op();
  Op(const Op&) = delete;
  Op& operator=(const Op&) = delete;

 private:
  CudaBackend* timed_ = nullptr;
  std::string name_;
  cudaEvent_t start_ = nullptr;
};

class CudaBackend final : public Backend {
  friend class Op;

 public:
  explicit CudaBackend(int device) {
    cublas_api();  // a missing cuBLAS disables the backend now, not at the first prefill
    OPTIQ_CUDA_OK(cudaSetDevice(device));
    OPTIQ_CUDA_OK(cudaGetDeviceProperties(&props_, device));
    OPTIQ_CUDA_OK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    step_dev_ = DeviceMemory(sizeof(StepInputs));
    argmax_state_ = DeviceMemory((cuda::kArgmaxStateWords + 1) * sizeof(uint32_t));
    OPTIQ_CUDA_OK(cudaMemset(argmax_state_.get(), 0, argmax_state_.bytes()));
    OPTIQ_CUDA_OK(cudaMallocHost(&step_host_, sizeof(StepInputs)));
  }
  ~CudaBackend() override {
    if (blas_) cublas_api().destroy(blas_);
    if (step_host_) cudaFreeHost(step_host_);
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string_view name() const override { return "cuda"; }
  bool host_memory() const override { return false; }
  int64_t free_bytes() const override {
    size_t free_b = 0, total_b = 0;
    OPTIQ_CUDA_OK(cudaMemGetInfo(&free_b, &total_b));
    return static_cast<int64_t>(free_b);
  }
  const cudaDeviceProp& props() const { return props_; }

  Buffer alloc(int64_t n) override {
    check(n >= 0, "cuda backend: cannot allocate {} floats", n);
    if (n == 0) return {};
    return Buffer(static_cast<float*>(malloc_device(static_cast<size_t>(n) * sizeof(float))), n, free_device);
  }
  void to_device(const float* host, int64_t n, float* dst) override {
    Op op(*this, "to_device");
    check(!recording_, "cuda backend: host data cannot enter a recorded step");
    if (n <= 0) return;
    OPTIQ_CUDA_OK(cudaMemcpyAsync(dst, host, static_cast<size_t>(n) * sizeof(float), cudaMemcpyHostToDevice, stream_));
    OPTIQ_CUDA_OK(cudaStreamSynchronize(stream_));
    kv_settle();
  }
  void to_host_strided(const float* src, int64_t stride, int64_t n, float* host) override {
    Op op(*this, "to_host strided");
    check(!recording_, "cuda backend: a strided copy cannot be recorded");
    if (n <= 0) return;
    OPTIQ_CUDA_OK(cudaMemcpy2DAsync(host, sizeof(float), src, static_cast<size_t>(stride) * sizeof(float), sizeof(float),
                                    static_cast<size_t>(n), cudaMemcpyDeviceToHost, stream_));
    OPTIQ_CUDA_OK(cudaStreamSynchronize(stream_));
  }
  void to_host(const float* src, int64_t n, float* host) override {
    Op op(*this, "to_host");
    if (n <= 0) return;
    if (recording_) {
      record_output(static_cast<size_t>(n) * sizeof(float));
      OPTIQ_CUDA_OK(cudaMemcpyAsync(record_out_->staging, src, static_cast<size_t>(n) * sizeof(float),
                                    cudaMemcpyDeviceToHost, stream_));
      return;
    }
    OPTIQ_CUDA_OK(cudaMemcpyAsync(host, src, static_cast<size_t>(n) * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    OPTIQ_CUDA_OK(cudaStreamSynchronize(stream_));
    kv_settle();
  }

  void argmax_to_host(const float* x, int64_t n, int32_t* host) override {
    Op op(*this, "argmax");
    if (n <= 0) {
      *host = -1;
      return;
    }
    int32_t* pick = argmax_state_.as<int32_t>() + cuda::kArgmaxStateWords;
    cuda::argmax(x, n, argmax_state_.as<uint32_t>(), pick, stream_);
    if (recording_) {
      record_output(sizeof(int32_t));
      OPTIQ_CUDA_OK(cudaMemcpyAsync(record_out_->staging, pick, sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
      return;
    }
    OPTIQ_CUDA_OK(cudaMemcpyAsync(host, pick, sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
    OPTIQ_CUDA_OK(cudaStreamSynchronize(stream_));
    kv_settle();
  }

  KVCache make_kv_cache(int layers, int max_ctx, int64_t kv_dim, bool f16) override {
    KVCache c;
    c.layers = layers;
    c.max_ctx = max_ctx;
    c.kv_dim = kv_dim;
    c.f16 = f16;
    // fp16 when the values are fp16 anyway, or fast numerics (half the bytes every decode step reads).
    c.half_storage = f16 || kernels::decode_int8_enabled();
    const int64_t n = static_cast<int64_t>(layers) * max_ctx * kv_dim;
    const int64_t slots = c.half_storage ? (n + 1) / 2 : n;
    c.k = alloc(slots);
    c.v = alloc(slots);
    return c;
  }

  std::unique_ptr<WeightHandle> upload(const WeightView& w) override;
  std::unique_ptr<WeightHandle> upload_for_passes(const WeightView& w) override;
  HostPin pin_host(const void* p, size_t bytes) override {
    if (!p || bytes == 0 || cudaHostRegister(const_cast<void*>(p), bytes, cudaHostRegisterDefault) != cudaSuccess) {
      cudaGetLastError();  // a refusal (limits, already registered) only costs speed
      return HostPin(nullptr, [](void*) {});
    }
    return HostPin(const_cast<void*>(p), [](void* q) { cudaHostUnregister(q); });
  }
  void matmul(const WeightHandle& w, const float* x, int64_t n, float* y) override;
  void matmul_group(std::span<const WeightHandle* const> ws, const float* x, int64_t n,
                    std::span<float* const> ys) override;
  void weight_rows_to_f32(const WeightHandle& w, int64_t r0, int64_t r1, float* out) override {
    Op op(*this, "weights to fp32");
    const DevMatrix& m = dev(w);
    check(r0 >= 0 && r0 <= r1 && r1 <= m.rows, "cuda backend: weight rows [{}, {}) of a matrix of {}", r0, r1, m.rows);
    if (r1 > r0) cuda::dequantize_rows(m, r0, r1, out, stream_);
  }
  void embed(const WeightHandle& w, const int32_t* tokens, int64_t n, float scale, float* out) override {
    Op op(*this, "embed");
    if (n <= 0) return;
    const int32_t* dev_tokens;
    if (recording_) {
      check(n == step_n_, "cuda backend: a recorded embedding of {} tokens in a step of {}", n, step_n_);
      dev_tokens = step_dev_.as<StepInputs>()->tokens;
    } else {
      int32_t* t = tokens_.get<int32_t>(static_cast<size_t>(n), stream_, false);
      OPTIQ_CUDA_OK(cudaMemcpyAsync(t, tokens, static_cast<size_t>(n) * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
      kv_settle();  // (a copy waits for every kernel before it)
      dev_tokens = t;
    }
    cuda::embed_rows(dev(w), dev_tokens, static_cast<int>(n), scale, out, stream_);
  }

  void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out) override {
    Op op(*this, "rms_norm");
    if (rows <= kMatvecMaxRows && decode_norm(x, w, rows, dim, eps, out)) return;
    cuda::rms_norm(x, w, rows, dim, eps, out, stream_);
  }
  void add(float* x, const float* y, int64_t n) override {
    Op op(*this, "add");
    cuda::add(x, y, n, stream_);
  }
  void fill_zero(float* x, int64_t n) override {
    Op op(*this, "fill zero");
    cuda::persistent_flush(stream_);
    OPTIQ_CUDA_OK(cudaMemsetAsync(x, 0, static_cast<size_t>(n) * sizeof(float), stream_));
  }
  void add_rows(float* y, const float* b, int64_t n, int64_t m) override {
    Op op(*this, "add_rows");
    cuda::add_rows(y, b, n, m, stream_);
  }
  void take_columns(const float* src, int64_t n, int64_t cols, int64_t from, int64_t width, float* dst) override {
    Op op(*this, "take_columns");
    cuda::take_columns(src, n, cols, from, width, dst, stream_);
  }
  void rope(float* x, int64_t n, int64_t stride, int heads, int head_dim, int rot_dim, int pos0,
            const float* inv_freq, float mscale) override {
    Op op(*this, "rope");
    cuda::rope(x, n, stride, heads, head_dim, rot_dim, position(pos0), inv_freq, mscale, stream_);
  }
  void gated_activation(GateAct act, bool llamacpp, float* gate, const float* up, int64_t n) override {
    Op op(*this, "gated_activation");
    cuda::gated_activation(act, llamacpp, gate, up, n, stream_);
  }
  void add_rms_norm(float* x, const float* y, const float* w, int64_t rows, int64_t dim, float eps,
                    float* out) override {
    Op op(*this, "add_rms_norm");
    if (kernels::decode_int8_enabled() && rows <= kMatvecMaxRows && dim % 32 == 0) {
      // Fast numerics: the norm's output also as int8 blocks, for the products that follow.
      const cuda::Int8Out b = int8_scratch(rows, dim);
      if (cuda::add_rms_norm(x, y, w, rows, dim, eps, out, stream_, b.q, b.scale, b.sum)) {
        int8_input_ = Int8Input{out, rows, dim, ops_, b};
        last_y_ = nullptr;
      }
      return;
    }
    cuda::add_rms_norm(x, y, w, rows, dim, eps, out, stream_);
  }
  void gated_matmul(const WeightHandle& gate, const WeightHandle& up, GateAct act, bool llamacpp, const float* x,
                    int64_t n, float* out, float* up_out) override;
  void prefetch_next(std::span<const WeightHandle* const> ws) override;
  void matmul_add_rms_norm(const WeightHandle& wm, const float* a, int64_t n, float* y, float* x, const float* w,
                           float eps, float* out) override;
  void rope_store_attention(const RopeStore& r, float* q, float* k, const float* v, int64_t n, int pos0, KVCache& c,
                            int layer, const AttentionParams& p, float* out) override;
  void decode_attention(const AttentionParams& p, const float* q, int64_t n, int pos0, DevKV kv, float* out,
                        const cuda::RopeIn* rope);
  // Key ranges of decode attention; with kv, at most one wave of its kernel.
  int decode_splits(const AttentionParams& p, int64_t n, bool per_query_head, const DevKV* kv = nullptr) const;
  // A decode norm (a few rows) over many blocks, with its int8 blocks under
  // fast numerics; false (nothing launched) where it does not apply.
  bool decode_norm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out) {
    const bool int8 = kernels::decode_int8_enabled() && dim % 32 == 0;
    cuda::Int8Out b;
    if (int8) b = int8_scratch(rows, dim);
    if (!skipped("norm") && !cuda::rms_norm_split(x, w, rows, dim, eps, out, stream_, b.q, b.scale, b.sum,
                                                  take_prefetch(prefetch_caps().norm)))
      return false;
    if (int8) {
      int8_input_ = Int8Input{out, rows, dim, ops_, b};
      last_y_ = nullptr;
    }
    return true;
  }
  void rope_kv_store(const RopeStore& r, float* q, float* k, const float* v, int64_t n, int pos0, KVCache& c,
                     int layer) override {
    Op op(*this, "rope_kv_store");
    check(pos0 + n <= c.max_ctx, "cuda backend: {} keys at position {} overflow a cache of {}", n, pos0, c.max_ctx);
    cuda::RopeKV rk;
    rk.n_heads = r.n_heads, rk.n_kv_heads = r.n_kv_heads, rk.head_dim = r.head_dim, rk.rot_dim = r.rot_dim;
    rk.q_stride = r.q_stride, rk.inv_freq = r.inv_freq, rk.mscale = r.mscale;
    const DevKV kv = layer_of(c, layer);
    cuda::rope_kv_store(rk, q, k, v, n, position(pos0), kv, stream_);
    kv_wrote(kv, pos0);
  }
  void softcap(float* x, int64_t n, float cap) override {
    Op op(*this, "softcap");
    cuda::softcap(x, n, cap, stream_);
  }
  void round_f16(float* x, int64_t n) override {
    Op op(*this, "round_f16");
    cuda::round_activations(ActRounding::F16, x, 1, n, x, stream_);
  }

  void kv_store(KVCache& c, int layer, int pos0, const float* k, const float* v, int64_t n) override {
    Op op(*this, "kv_store");
    check(pos0 + n <= c.max_ctx, "cuda backend: {} keys at position {} overflow a cache of {}", n, pos0, c.max_ctx);
    const DevKV kv = layer_of(c, layer);
    cuda::kv_store(kv, position(pos0), k, v, n, stream_);
    kv_wrote(kv, pos0);
  }
  void attention(const AttentionParams& p, const float* q, int64_t n, int pos0, const KVCache& c, int layer,
                 float* out) override;

  bool fake_quantize(const TensorFormat& fmt, const QuantizeOptions& opt, const float* w, int64_t rows, int64_t cols,
                     bool error_out, float* out) override {
    const AffineFormat* a = fmt.affine();
    if (!a) return false;  // GGUF blocks: on the host
    Op op(*this, "fake quantize");
    const bool search = opt.method == QuantMethod::Search;
    const float* importance = nullptr;  // the host's weights per input column, copied in
    if (opt.importance && search) {
      float* dev = importance_.get<float>(static_cast<size_t>(cols), stream_, false);
      OPTIQ_CUDA_OK(cudaMemcpyAsync(dev, opt.importance, static_cast<size_t>(cols) * sizeof(float),
                                    cudaMemcpyHostToDevice, stream_));
      importance = dev;
    }
    return cuda::fake_quantize_affine(w, rows, cols, a->bits, a->group_size, opt.bf16_scales, search, opt.grid,
                                      opt.refit_iters, importance, error_out, out, stream_);
  }
  std::unique_ptr<GptqFactor> gptq_factor(const double* a, const int64_t* perm, const float* diag, const float* h,
                                          int64_t n) override {
    Op op(*this, "gptq factor");
    return cuda::gptq_factor(a, perm, diag, h, n, stream_, blas());
  }
  bool gptq_affine(const GptqFactor& f, const float* w, int64_t rows, AffineFormat fmt, const QuantizeOptions& grid,
                   int grid_passes, uint8_t* codes, uint16_t* scales, uint16_t* biases) override {
    Op op(*this, "gptq");
    cuda::gptq_affine(f, w, rows, fmt, grid, grid_passes, codes, scales, biases, stream_, blas());
    return true;
  }
  void gram_add(const float* x, int64_t n, int64_t cols, float* g) override;
  double gram_quadratic(const float* d, int64_t rows, int64_t cols, const float* g) override;
  double rows_quadratic(const float* d, int64_t rows, int64_t cols, const float* x, int64_t n) override;
  // sum_i a_i b_i over slabs of rows: `slab(r0, nr)` enqueues rows [r0, r0 +
  // nr)'s product and names the two vectors to dot; partial sums in double.
  struct DotPair {
    const float* a;
    const float* b;
    int64_t n;
  };
  double slab_dot_sum(int64_t rows, int64_t slab_rows, const std::function<DotPair(int64_t, int64_t)>& slab);
  void log_softmax_rows(float* x, int64_t rows, int64_t vocab) override;
  double kl_sum(const void* ref, bool ref_bf16, const float* logits, int64_t rows, int64_t vocab) override;
  void row_sq_sums(const float* d, int64_t rows, int64_t cols, double* out) override;

  // Packed weights are expanded once per pass (prefill), so passes are long.
  int64_t prefill_rows() const override { return 4096; }
  bool can_record_steps() const override { return true; }
  void set_step_inputs(const int32_t* tokens, int64_t n, int pos0) override {
    check(n >= 0 && n <= kMaxStepTokens, "cuda backend: a step of {} tokens (at most {})", n, kMaxStepTokens);
    step_host_->pos = pos0;
    std::copy_n(tokens, n, step_host_->tokens);
    step_n_ = n;
    step_pos_ = pos0;
    OPTIQ_CUDA_OK(cudaMemcpyAsync(step_dev_.get(), step_host_, sizeof(StepInputs), cudaMemcpyHostToDevice, stream_));
    if (!recording_) kv_settle();
  }
  void begin_recording() override {
    check(!recording_, "cuda backend: already recording");
    // The step inputs must have reached the device before capture starts
    // (the pinned buffer is reused by the next set_step_inputs).
    OPTIQ_CUDA_OK(cudaStreamSynchronize(stream_));
    const bool persistent = cuda::persistent_enabled();
    if (persistent && !barrier_.get()) {
      barrier_ = DeviceMemory(cuda::kPersistentBarrierWords * sizeof(unsigned));
      OPTIQ_CUDA_OK(cudaMemset(barrier_.get(), 0, barrier_.bytes()));
    }
    OPTIQ_CUDA_OK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed));
    recording_ = true;
    // Decode steps between attention launches collected into persistent launches (persistent.cu):
    // kernel launches flush the queue themselves; so does every copy, memset or cuBLAS call a
    // recorded step can make (to_host's staging copy, fill_zero, matmul's aligned copy, the
    // attention counters, blas()). Copies outside a recording need not: nothing is queued then.
    if (persistent) cuda::persistent_begin(stream_, barrier_.as<unsigned>());
    record_out_.reset();
  }
  std::unique_ptr<RecordedStep> end_recording() override {
    check(recording_, "cuda backend: not recording");
    recording_ = false;
    cuda::persistent_end(stream_);
    cudaGraph_t graph = nullptr;
    OPTIQ_CUDA_OK(cudaStreamEndCapture(stream_, &graph));
    std::unique_ptr<CudaStep> step = record_out_ ? std::move(record_out_) : std::make_unique<CudaStep>();
    const cudaError_t e = cudaGraphInstantiate(&step->exec, graph, 0);
    cudaGraphDestroy(graph);
    OPTIQ_CUDA_OK(e);
    return step;
  }
  void replay(const RecordedStep& s, void* host_out) override {
    const auto& step = static_cast<const CudaStep&>(s);
    OPTIQ_CUDA_OK(cudaGraphLaunch(step.exec, stream_));
    OPTIQ_CUDA_OK(cudaStreamSynchronize(stream_));
    kv_settle();
    if (step.out_bytes > 0 && host_out) std::memcpy(host_out, step.staging, step.out_bytes);
  }

  void set_op_timing(bool on) override { timing_ = on; }
  std::vector<OpTime> take_op_times() override {
    OPTIQ_CUDA_OK(cudaStreamSynchronize(stream_));
    std::vector<OpTime> out;
    for (const Timed& t : timed_) {
      float ms = 0;
      OPTIQ_CUDA_OK(cudaEventElapsedTime(&ms, t.start, t.end));
      auto it = std::find_if(out.begin(), out.end(), [&](const OpTime& o) { return o.op == t.name; });
      if (it == out.end()) it = out.insert(out.end(), OpTime{t.name, 0, 0.0});
      ++it->calls;
      it->ms += ms;
      free_events_.push_back(t.start);
      free_events_.push_back(t.end);
    }
    timed_.clear();
    std::sort(out.begin(), out.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
    return out;
  }

  // A recording abandoned by an exception (the Transformer's guard).
  void abort_recording() override {
    if (!recording_) return;
    recording_ = false;
    cuda::persistent_discard(stream_);
    cudaGraph_t g = nullptr;
    cudaStreamEndCapture(stream_, &g);
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
    record_out_.reset();
  }

 private:
  DevPos position(int pos0) const {
    if (recording_) return DevPos{&step_dev_.as<StepInputs>()->pos, pos0 - step_pos_};
    return DevPos{nullptr, pos0};
  }
  static DevKV layer_of(const KVCache& c, int layer) {
    DevKV d;
    d.half = c.half_storage;
    d.kv_dim = c.kv_dim;
    const int64_t off = c.layer_offset(layer);
    if (c.half_storage) {
      d.k = reinterpret_cast<__half*>(c.k.data()) + off;
      d.v = reinterpret_cast<__half*>(c.v.data()) + off;
    } else {
      d.k = c.k.data() + off;
      d.v = c.v.data() + off;
    }
    return d;
  }
  // The Gram products' arithmetic: TF32 tensor cores under fast numerics (a
  // proxy needs three digits, and fp32 GEMMs made the 8B profile GEMM-bound),
  // fp32 under exact.
  static cublasComputeType_t stats_compute() {
    return kernels::decode_int8_enabled() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  }
  cublasHandle_t blas() {
    cuda::persistent_flush(stream_);  // a cuBLAS call goes after the queued persistent steps
    if (!blas_) {
      check_blas(cublas_api().create(&blas_), "cublasCreate");
      check_blas(cublas_api().set_stream(blas_, stream_), "cublasSetStream");
      // A fixed workspace: cuBLAS then allocates nothing per call.
      blas_ws_ = DeviceMemory(32u << 20);
      check_blas(cublas_api().set_workspace(blas_, blas_ws_.get(), blas_ws_.bytes()), "cublasSetWorkspace");
    }
    return blas_;
  }
  // The int8 blocks of x (n x cols) for the int8 decode products: rounded
  // now, or reused from the product just before when it read the same rows
  // and nothing came between (q/k/v, gate/up). `prev_y` is that product's output.
  struct Int8Blocks {
    const int8_t* q;
    const float* scale;
    const int32_t* sum;
  };
  // `own`: the product's matrix, whose first bytes the rounding kernel (when
  // one runs) prefetches into L2.
  Int8Blocks int8_blocks(const float* x, int64_t n, int64_t cols, const float* prev_y, int64_t prev_y_n,
                         const DevMatrix* own = nullptr);
  // L2 prefetch (Backend::prefetch_next): the hinted matrices (copies: a
  // hint never outlives what it names), taken by the decode attention or norm
  // of the next two operations (a residual product's norm is the second),
  // else dropped; per kernel kind, how many bytes at most (none unless
  // OPTIQ_CUDA_PREFETCH=1; OPTIQ_CUDA_PREFETCH_MB=attention,norm,rounding in
  // MB for A/B runs).
  struct PrefetchCaps {
    int64_t attention = 0, norm = 0, rounding = 0;
    bool after_wait = true;
  };
  static PrefetchCaps prefetch_caps();
  cuda::L2Prefetch take_prefetch(int64_t cap);
  cuda::L2Prefetch prefetch_of(std::span<const DevMatrix* const> ms, int64_t cap) const;
  DevMatrix hinted_[3];
  int hinted_count_ = 0;
  int64_t hinted_at_ = 0;  // ops_ when hinted
  uint64_t hinted_frees_ = 0;  // g_device_frees when hinted
  // y (n x rows) = x (n x cols) . W^T for large n: W a slab of rows at a time.
  void gemm(const DevMatrix& m, const float* x, int64_t n, float* y);
  // fp32 row-major C (n x m_rows, ldc) = X (n x k) . A^T, A (m_rows x k) row-major, both `type`.
  void gemm_rows(const void* a, const void* x, cudaDataType type, int64_t m_rows, int64_t n, int64_t k, float* c,
                 int64_t ldc);

  cudaEvent_t event() {
    if (!free_events_.empty()) {
      cudaEvent_t e = free_events_.back();
      free_events_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    OPTIQ_CUDA_OK(cudaEventCreate(&e));
    return e;
  }

  struct Timed {
    std::string name;
    cudaEvent_t start, end;
  };
  bool timing_ = false;
  std::vector<Timed> timed_;
  std::vector<cudaEvent_t> free_events_;
  int64_t ops_ = 0;  // operations issued (Op)
  // The int8 activation blocks of the last product: reused by the next
  // product when it reads the same rows and no operation came between
  // (q/k/v and gate/up multiply one input).
  // `blocks`: where they are.
  struct Int8Input {
    const float* x = nullptr;
    int64_t n = 0, cols = 0, op = -1;
    cuda::Int8Out blocks;
  } int8_input_;
  // While recording: the step's one output, `bytes` of pinned staging that
  // replay copies out (the copy into it is the caller's next operation).
  void record_output(size_t bytes) {
    check(!record_out_, "cuda backend: a recorded step has one output");
    record_out_ = std::make_unique<CudaStep>();
    OPTIQ_CUDA_OK(cudaMallocHost(&record_out_->staging, bytes));
    record_out_->out_bytes = bytes;
    cuda::persistent_flush(stream_);
  }
  // Scratch for the int8 blocks of n rows of `cols` (one set: each
  // producer of blocks writes it after its readers are done).
  cuda::Int8Out int8_scratch(int64_t n, int64_t cols) {
    const auto count = static_cast<size_t>(n * ((cols + 31) / 32));
    return {xq_.get<int8_t>(count * 32, stream_, recording_), xscale_.get<float>(count, stream_, recording_),
            xsum_.get<int32_t>(count, stream_, recording_)};
  }
  const float* last_y_ = nullptr;  // the last product's output range
  int64_t last_y_n_ = 0;

  cudaDeviceProp props_{};
  cudaStream_t stream_ = nullptr;
  cublasHandle_t blas_ = nullptr;
  DeviceMemory blas_ws_;
  Scratch rounded_, xq_, xscale_, xsum_, aligned_, slab_, xhalf_, tokens_, partial_, scores_, probs_, qhalf_, counters_;
  Scratch stats_, stats_sums_;  // the accuracy-path statistics' staging and partial sums
  Scratch importance_;          // fake_quantize's weights per input column
  Scratch head_ptrs_;           // prefill attention's per-head GEMM operands
  // Cache layers written by kernels since the stream's last copy or
  // synchronisation (a full dependency: programmatic launch overlaps kernels
  // only), each with the lowest step position written (host positions: a
  // recorded step's writes and reads move together). Decode attention may
  // read rows before its step's position early (DevKV::settled) when its
  // layer was not written below that position since.
  std::vector<std::pair<const void*, int>> kv_written_;
  void kv_wrote(const DevKV& d, int pos0) {
    for (auto& [k, lowest] : kv_written_)
      if (k == d.k) {
        lowest = std::min(lowest, pos0);
        return;
      }
    kv_written_.emplace_back(d.k, pos0);
  }
  bool kv_settled_below(const DevKV& d, int pos0) const {
    for (const auto& [k, lowest] : kv_written_)
      if (k == d.k) return lowest >= pos0;
    return true;
  }
  void kv_settle() { kv_written_.clear(); }
  const int32_t* zeroed_counters_ = nullptr;  // decode attention's counters: zeroed once, left zero by the kernel
  size_t zeroed_count_ = 0;
  DeviceMemory argmax_state_;  // cuda::argmax's words (zeroed once, left zero), then its pick
  DeviceMemory step_dev_;
  StepInputs* step_host_ = nullptr;
  int64_t step_n_ = 0;
  int step_pos_ = 0;
  bool recording_ = false;
  DeviceMemory barrier_;  // the persistent decode kernel's grid barriers (zero between launches)
  std::unique_ptr<CudaStep> record_out_;
};


std::unique_ptr<WeightHandle> CudaBackend::upload(const WeightView& w) {
  auto h = std::make_unique<CudaWeight>(w.rows, w.cols);
  DevMatrix& m = h->m;
  m.rows = w.rows;
  m.cols = w.cols;
  m.act = w.act;
  struct Part {
    const void* host;
    size_t bytes;
    const void** dst;
  };
  std::vector<Part> parts;
  const size_t elems = static_cast<size_t>(w.rows) * static_cast<size_t>(w.cols);
  if (const auto* f = w.as<F32Weights>()) {
    m.storage = DevStorage::F32;
    parts.push_back({f->data, elems * 4, &m.data});
  } else if (const auto* hw = w.as<HalfWeights>()) {
    m.storage = hw->bf16 ? DevStorage::BF16 : DevStorage::F16;
    parts.push_back({hw->data, elems * 2, &m.data});
  } else if (const auto* a = w.as<AffineMatrixView>()) {
    check_view(*a);
    m.storage = DevStorage::Affine;
    m.bits = a->fmt.bits;
    m.group = a->fmt.group_size;
    m.bf16_scales = a->bf16_scales;
    m.zero_point = a->zero_point;
    const size_t groups = static_cast<size_t>(a->rows) * static_cast<size_t>(a->groups_per_row());
    parts.push_back({a->packed, static_cast<size_t>(a->rows * a->words_per_row()) * 4, &m.data});
    parts.push_back({a->scales, groups * 2, reinterpret_cast<const void**>(&m.scales)});
    if (a->biases) parts.push_back({a->biases, groups * 2, reinterpret_cast<const void**>(&m.biases)});
  } else if (const auto* kq = w.as<KQuantView>()) {
    check_view(*kq);
    m.storage = DevStorage::KQuant;
    m.kquant = kq->dtype;
    m.row_bytes = static_cast<int64_t>(kq->row_bytes());
    parts.push_back({kq->data, kq->bytes(), &m.data});
  } else {
    fail("cuda backend: a weight storage it does not know");
  }
  size_t total = 0;
  for (const Part& p : parts) total += (p.bytes + 255) / 256 * 256;
  h->mem = DeviceMemory(total);
  size_t off = 0;
  for (const Part& p : parts) {
    auto* dst = static_cast<uint8_t*>(h->mem.get()) + off;
    OPTIQ_CUDA_OK(cudaMemcpyAsync(dst, p.host, p.bytes, cudaMemcpyHostToDevice, stream_));
    *p.dst = dst;
    off += (p.bytes + 255) / 256 * 256;
  }
  if (m.storage == DevStorage::Affine)  // the codes are the first part
    cuda::affine_to_planes(static_cast<uint32_t*>(h->mem.get()), m.rows * (m.cols / 32), m.bits, stream_);
  OPTIQ_CUDA_OK(cudaStreamSynchronize(stream_));
  return h;
}

std::unique_ptr<WeightHandle> CudaBackend::upload_for_passes(const WeightView& w) {
  const auto* f = w.as<F32Weights>();
  // Fast numerics' batched products (gemm) round fp32 weights to fp16 slabs
  // with the same round-to-nearest-even as here: kept in fp16, a matrix gives
  // the same products. Exact numerics multiply in fp32: uploaded as it is.
  if (!f || !kernels::decode_int8_enabled()) return upload(w);
  auto h = std::make_unique<CudaWeight>(w.rows, w.cols);
  DevMatrix& m = h->m;
  m.rows = w.rows;
  m.cols = w.cols;
  m.act = w.act;
  m.storage = DevStorage::F16;
  const size_t elems = static_cast<size_t>(w.rows) * static_cast<size_t>(w.cols);
  h->mem = DeviceMemory(elems * sizeof(__half));
  m.data = h->mem.get();
  // Through a bounded fp32 staging buffer, converted on the device.
  constexpr size_t kChunk = size_t{32} << 20;  // floats (128 MB)
  DeviceMemory staging(std::min(elems, kChunk) * sizeof(float));
  for (size_t off = 0; off < elems; off += kChunk) {
    const size_t n = std::min(kChunk, elems - off);
    OPTIQ_CUDA_OK(cudaMemcpyAsync(staging.get(), f->data + off, n * sizeof(float), cudaMemcpyHostToDevice, stream_));
    cuda::to_half(staging.as<float>(), static_cast<int64_t>(n), h->mem.as<__half>() + off, stream_);
  }
  OPTIQ_CUDA_OK(cudaStreamSynchronize(stream_));
  return h;
}

std::string storage_name(const DevMatrix& m) {
  switch (m.storage) {
    case DevStorage::F32: return "f32";
    case DevStorage::F16: return "f16";
    case DevStorage::BF16: return "bf16";
    case DevStorage::Affine: return fmt::format("q{}g{}", m.bits, m.group);
    case DevStorage::KQuant: return std::string(dtype_name(m.kquant));
  }
  return "?";
}

void CudaBackend::matmul(const WeightHandle& wh, const float* x, int64_t n, float* y) {
  const DevMatrix& m = dev(wh);
  const bool int8 = m.act == ActRounding::Exact && kernels::decode_int8_enabled() && has_matvec_int8(m);
  Op op = timing_ && !recording_ ? Op(*this, "matmul " + storage_name(m) +
                                                 (n > kMatvecMaxRows ? " gemm" : int8 ? " int8" : " fp32"))
                                 : Op(*this, "matmul");
  const float* prev_y = last_y_;
  const int64_t prev_y_n = last_y_n_;
  last_y_ = y;
  last_y_n_ = n * m.rows;
  if (n <= 0) return;
  const int64_t cols = m.cols;
  const float* const x_in = x;  // the caller's rows (x may become a rounded or aligned copy)
  if (m.act != ActRounding::Exact) {
    float* r = rounded_.get<float>(static_cast<size_t>(n * cols), stream_, recording_);
    cuda::round_activations(m.act, x, n, cols, r, stream_);
    x = r;
  } else if (reinterpret_cast<uintptr_t>(x) % 16 != 0) {  // the kernels load 16 bytes at a time
    float* a = aligned_.get<float>(static_cast<size_t>(n * cols), stream_, recording_);
    cuda::persistent_flush(stream_);
    OPTIQ_CUDA_OK(cudaMemcpyAsync(a, x, static_cast<size_t>(n * cols) * sizeof(float), cudaMemcpyDeviceToDevice, stream_));
    x = a;
  }
  if (n > kMatvecMaxRows) {
    check(!recording_, "cuda backend: a recorded step multiplies at most {} rows", kMatvecMaxRows);
    gemm(m, x, n, y);
    return;
  }
  if (int8) {
    if (x != x_in) int8_input_.op = -2;  // an aligned copy: its pointer says nothing about its rows
    const Int8Blocks b = int8_blocks(x, n, cols, prev_y, prev_y_n, &m);
    cuda::matvec_int8(m, b.q, b.scale, b.sum, static_cast<int>(n), y, stream_);
  } else {
    cuda::matvec_f32(m, x, static_cast<int>(n), y, stream_);
  }
}

void CudaBackend::matmul_group(std::span<const WeightHandle* const> ws, const float* x, int64_t n,
                               std::span<float* const> ys) {
  const size_t count = ws.size();
  const bool shaped = count >= 2 && count <= 3 && n > 0 && n <= kMatvecMaxRows && kernels::decode_int8_enabled() &&
                      reinterpret_cast<uintptr_t>(x) % 16 == 0;
  bool fused = shaped, dense = shaped;
  DevMatrix ms[3];
  for (size_t i = 0; shaped && i < count; ++i) {
    ms[i] = dev(*ws[i]);
    // (matvec_int8_group launches what it can as one: one width, or two for one row.)
    fused = fused && ms[i].act == ActRounding::Exact && has_matvec_int8(ms[i]) && ms[i].cols == ms[0].cols;
    dense = dense && ms[i].act == ActRounding::Exact && cuda::has_matvec_dense(ms[i], true) &&
            ms[i].storage == ms[0].storage && ms[i].cols == ms[0].cols;
  }
  if (dense) {  // fp32/fp16/bf16 rows: one launch with fp32 x
    Op op = timing_ && !recording_ ? Op(*this, "matmul group " + storage_name(ms[0]) + " fp32") : Op(*this, "matmul");
    last_y_ = ys[0];
    last_y_n_ = n * ms[0].rows;
    if (cuda::matvec_dense_group(ms, ys.data(), static_cast<int>(count), x, static_cast<int>(n), stream_)) return;
  }
  if (!fused) {
    Backend::matmul_group(ws, x, n, ys);
    return;
  }
  Op op = timing_ && !recording_ ? Op(*this, "matmul group " + storage_name(ms[0]) + " int8") : Op(*this, "matmul");
  const float* prev_y = last_y_;
  const int64_t prev_y_n = last_y_n_;
  last_y_ = ys[0];
  last_y_n_ = n * ms[0].rows;
  if (skipped("qkv")) return;
  const Int8Blocks b = int8_blocks(x, n, ms[0].cols, prev_y, prev_y_n, &ms[0]);
  if (cuda::matvec_int8_group(ms, ys.data(), static_cast<int>(count), b.q, b.scale, b.sum, static_cast<int>(n),
                              stream_))
    return;
  // Not one launch (three widths, k-quants, several rows of two widths): one product at a time.
  for (size_t i = 0; i < count; ++i) cuda::matvec_int8(ms[i], b.q, b.scale, b.sum, static_cast<int>(n), ys[i], stream_);
}

void CudaBackend::matmul_add_rms_norm(const WeightHandle& wm, const float* a, int64_t n, float* y, float* x,
                                      const float* w, float eps, float* out) {
  const DevMatrix& m = dev(wm);
  const bool shaped = n > 0 && n <= kMatvecMaxRows && kernels::decode_int8_enabled() && m.act == ActRounding::Exact &&
                      reinterpret_cast<uintptr_t>(a) % 16 == 0 && m.rows % 32 == 0 &&
                      m.rows <= cuda::kSplitNormMaxDim && out != x && y != x;
  // The residual add in the product's last step: int8 products of affine
  // and k-quant rows, fp32 ones of dense rows.
  const bool dense = shaped && cuda::has_matvec_dense(m, false);
  if (!dense && !(shaped && has_matvec_int8(m))) {
    Backend::matmul_add_rms_norm(wm, a, n, y, x, w, eps, out);
    return;
  }
  {
    Op op = timing_ && !recording_
                ? Op(*this, "matmul " + storage_name(m) + (dense ? " fp32" : " int8") + " + residual")
                : Op(*this, "matmul");
    const float* prev_y = last_y_;
    const int64_t prev_y_n = last_y_n_;
    last_y_ = y;
    last_y_n_ = n * m.rows;
    const bool skip = skipped(m.cols > m.rows ? "down" : "o");  // (the wider input: down)
    if (skip) {
      // left out (OPTIQ_CUDA_SKIP)
    } else if (dense) {
      cuda::matvec_dense(m, a, static_cast<int>(n), y, stream_, x);
    } else {
      const Int8Blocks b = int8_blocks(a, n, m.cols, prev_y, prev_y_n, &m);
      cuda::matvec_int8(m, b.q, b.scale, b.sum, static_cast<int>(n), y, stream_, x);
    }
  }
  Op op(*this, "rms_norm");
  if (!decode_norm(x, w, n, m.rows, eps, out)) cuda::rms_norm(x, w, n, m.rows, eps, out, stream_);
}

CudaBackend::Int8Blocks CudaBackend::int8_blocks(const float* x, int64_t n, int64_t cols, const float* prev_y,
                                                  int64_t prev_y_n, const DevMatrix* own) {
  const bool prev_wrote_x = prev_y && prev_y < x + n * cols && x < prev_y + prev_y_n;
  const bool cached = int8_input_.x == x && int8_input_.n == n && int8_input_.cols == cols &&
                      int8_input_.op == ops_ - 1 && !prev_wrote_x && int8_input_.blocks.q != nullptr;
  const cuda::Int8Out b = cached ? int8_input_.blocks : int8_scratch(n, cols);
  if (!cached) {
    const DevMatrix* const ms[] = {own};
    const cuda::L2Prefetch pf = own ? prefetch_of(ms, prefetch_caps().rounding) : cuda::L2Prefetch{};
    cuda::quantize_act_int8(x, static_cast<int>(n), cols, b.q, b.scale, b.sum, stream_, pf);
  }
  int8_input_ = Int8Input{x, n, cols, ops_, b};
  return {b.q, b.scale, b.sum};
}

// What the latency-bound kernels of a decode step prefetch. Attention at
// short contexts and the norms read almost nothing from DRAM while they run
// (~40% of a 4-bit step, BENCHMARKS.md §6); the idea: the product after them
// finds its first bytes in L2. The caps keep a prefetch to about what the
// kernel's time can bring in (and well inside the 50 MB L2 of an H100/H200).
// Off by default: issued at each kernel's start it measured -2% to +1% on an
// H100 (it competes with the product still streaming before it; BENCHMARKS.md
// §6, 2026-12-08); issued after the kernel's wait (the default once switched
// on with OPTIQ_CUDA_PREFETCH=1) it has not run on a GPU yet.
CudaBackend::PrefetchCaps CudaBackend::prefetch_caps() {
  static const PrefetchCaps caps = [] {
    PrefetchCaps c;
    if (!cuda::env_switch("OPTIQ_CUDA_PREFETCH", false)) return c;
    double mb[3] = {16, 6, 3};
    if (const char* e = std::getenv("OPTIQ_CUDA_PREFETCH_MB"); e && *e)
      std::sscanf(e, "%lf,%lf,%lf", &mb[0], &mb[1], &mb[2]);
    c.attention = static_cast<int64_t>(mb[0] * (1 << 20));
    c.norm = static_cast<int64_t>(mb[1] * (1 << 20));
    c.rounding = static_cast<int64_t>(mb[2] * (1 << 20));
    c.after_wait = cuda::env_switch("OPTIQ_CUDA_PREFETCH_AFTER", true);
    return c;
  }();
  return caps;
}

cuda::L2Prefetch CudaBackend::prefetch_of(std::span<const DevMatrix* const> ms, int64_t cap) const {
  cuda::L2Prefetch pf;
  if (cap <= 0) return pf;
  int64_t total = 0;
  for (const DevMatrix* m : ms) total += cuda::weight_bytes(*m);
  // The same first fraction of every matrix: their products walk the rows together.
  const double fraction = total > 0 ? std::min(1.0, static_cast<double>(cap) / static_cast<double>(total)) : 0.0;
  for (const DevMatrix* m : ms) cuda::add_prefetch(pf, *m, fraction);
  pf.after_wait = prefetch_caps().after_wait;
  return pf;
}

cuda::L2Prefetch CudaBackend::take_prefetch(int64_t cap) {
  const DevMatrix* ms[3];
  const bool fresh = ops_ - hinted_at_ <= 2 && g_device_frees.load(std::memory_order_relaxed) == hinted_frees_;
  const int count = fresh ? hinted_count_ : 0;
  for (int i = 0; i < count; ++i) ms[i] = &hinted_[i];
  hinted_count_ = 0;
  return prefetch_of({ms, static_cast<size_t>(count)}, cap);
}

void CudaBackend::prefetch_next(std::span<const WeightHandle* const> ws) {
  hinted_count_ = 0;
  hinted_at_ = ops_;
  hinted_frees_ = g_device_frees.load(std::memory_order_relaxed);
  for (const WeightHandle* w : ws)
    if (w && hinted_count_ < 3) hinted_[hinted_count_++] = dev(*w);
}

void CudaBackend::gated_matmul(const WeightHandle& gate, const WeightHandle& up, GateAct act, bool llamacpp,
                               const float* x, int64_t n, float* out, float* up_out) {
  const DevMatrix& g = dev(gate);
  const DevMatrix& u = dev(up);
  if (!llamacpp && n > 0 && n <= kMatvecMaxRows && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
    const bool int8 = g.act == ActRounding::Exact && kernels::decode_int8_enabled() && has_matvec_int8(g);
    Op op = timing_ && !recording_ ? Op(*this, "gated_matmul " + storage_name(g) + (int8 ? " int8" : " fp32"))
                                   : Op(*this, "gated_matmul");
    const float* prev_y = last_y_;
    const int64_t prev_y_n = last_y_n_;
    last_y_ = out;
    last_y_n_ = n * g.rows;
    if (int8) {
      // Probe first (no launch when the pair cannot fuse), then round x once.
      const bool fusable = g.storage == u.storage && g.bits == u.bits && g.group == u.group &&
                           g.bf16_scales == u.bf16_scales && (g.biases == nullptr) == (u.biases == nullptr) &&
                           g.zero_point == u.zero_point && u.act == ActRounding::Exact && g.rows == u.rows;
      if (fusable) {
        if (skipped("gated")) return;
        const Int8Blocks b = int8_blocks(x, n, g.cols, prev_y, prev_y_n, &g);
        // (Its output's int8 blocks made by the last warp to finish each group of 32 rows, instead of a
        // rounding launch before the down product, made this product 22 -> 29 us on the H200: a fence and an
        // atomic a row cost more than the launch they save.)
        if (cuda::matvec_gated(g, u, act, nullptr, b.q, b.scale, b.sum, static_cast<int>(n), out, stream_)) return;
      }
    } else if (cuda::matvec_gated(g, u, act, x, nullptr, nullptr, nullptr, static_cast<int>(n), out, stream_)) {
      return;
    }
  }
  Backend::gated_matmul(gate, up, act, llamacpp, x, n, out, up_out);
}

void CudaBackend::gemm_rows(const void* a, const void* x, cudaDataType type, int64_t m_rows, int64_t n, int64_t k,
                            float* c, int64_t ldc) {
  const float one = 1.0f, zero = 0.0f;
  // Column-major view: C^T (m_rows x n) = A (m_rows x k, stored k-major) . X^T (k x n).
  check_blas(cublas_api().gemm_ex(blas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(m_rows), static_cast<int>(n),
                          static_cast<int>(k), &one, a, type, static_cast<int>(k), x, type, static_cast<int>(k), &zero,
                          c, CUDA_R_32F, static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
             "cublasGemmEx");
}

void CudaBackend::gemm(const DevMatrix& m, const float* x, int64_t n, float* y) {
  const bool fast = kernels::decode_int8_enabled();
  const size_t elem = fast ? 2 : 4;
  const int64_t slab_rows = std::max<int64_t>(1, static_cast<int64_t>(kGemmSlabBytes / (elem * m.cols)));
  if (fast && m.storage == DevStorage::BF16 && bf16_gemm_enabled()) {
    // bf16 rows multiply bf16-rounded activations as they are, as llama.cpp's
    // and PyTorch's bf16 paths do: expanding them to fp16 first (the other
    // storages' slab) read and wrote the whole matrix once more per pass.
    auto* xb = xhalf_.get<__nv_bfloat16>(static_cast<size_t>(n * m.cols), stream_, false);
    cuda::to_bf16(x, n * m.cols, xb, stream_);
    gemm_rows(m.data, xb, CUDA_R_16BF, m.rows, n, m.cols, y, m.rows);
    return;
  }
  if (fast) {
    auto* xh = xhalf_.get<__half>(static_cast<size_t>(n * m.cols), stream_, false);
    cuda::to_half(x, n * m.cols, xh, stream_);
    if (m.storage == DevStorage::F16) {
      gemm_rows(m.data, xh, CUDA_R_16F, m.rows, n, m.cols, y, m.rows);
      return;
    }
    auto* slab = slab_.get<__half>(static_cast<size_t>(std::min(slab_rows, m.rows) * m.cols), stream_, false);
    for (int64_t r0 = 0; r0 < m.rows; r0 += slab_rows) {
      const int64_t r1 = std::min(m.rows, r0 + slab_rows);
      cuda::dequantize_rows(m, r0, r1, slab, stream_);
      gemm_rows(slab, xh, CUDA_R_16F, r1 - r0, n, m.cols, y + r0, m.rows);
    }
  } else {
    if (m.storage == DevStorage::F32) {
      gemm_rows(m.data, x, CUDA_R_32F, m.rows, n, m.cols, y, m.rows);
      return;
    }
    auto* slab = slab_.get<float>(static_cast<size_t>(std::min(slab_rows, m.rows) * m.cols), stream_, false);
    for (int64_t r0 = 0; r0 < m.rows; r0 += slab_rows) {
      const int64_t r1 = std::min(m.rows, r0 + slab_rows);
      cuda::dequantize_rows(m, r0, r1, slab, stream_);
      gemm_rows(slab, x, CUDA_R_32F, r1 - r0, n, m.cols, y + r0, m.rows);
    }
  }
}

void CudaBackend::gram_add(const float* x, int64_t n, int64_t cols, float* g) {
  Op op(*this, "gram");
  if (n <= 0) return;
  const float one = 1.0f;
  // Column-major view: x is X^T (cols x n); G (cols x cols) += X^T . (X^T)^T.
  check_blas(cublas_api().gemm_ex(blas(), CUBLAS_OP_N, CUBLAS_OP_T, static_cast<int>(cols), static_cast<int>(cols),
                                  static_cast<int>(n), &one, x, CUDA_R_32F, static_cast<int>(cols), x, CUDA_R_32F,
                                  static_cast<int>(cols), &one, g, CUDA_R_32F, static_cast<int>(cols),
                                  stats_compute(), CUBLAS_GEMM_DEFAULT),
             "cublasGemmEx (gram)");
}

double CudaBackend::slab_dot_sum(int64_t rows, int64_t slab_rows, const std::function<DotPair(int64_t, int64_t)>& slab) {
  auto* partial = stats_sums_.get<double>(cuda::kDotBlocks, stream_, false);
  std::vector<double> host(cuda::kDotBlocks);
  double sum = 0;
  for (int64_t r0 = 0; r0 < rows; r0 += slab_rows) {
    const DotPair v = slab(r0, std::min(slab_rows, rows - r0));
    cuda::dot_partials(v.a, v.b, v.n, partial, stream_);
    OPTIQ_CUDA_OK(cudaMemcpyAsync(host.data(), partial, host.size() * sizeof(double), cudaMemcpyDeviceToHost, stream_));
    OPTIQ_CUDA_OK(cudaStreamSynchronize(stream_));
    for (double h : host) sum += h;
  }
  return sum;
}

double CudaBackend::gram_quadratic(const float* d, int64_t rows, int64_t cols, const float* g) {
  Op op(*this, "gram quadratic");
  if (rows <= 0) return 0.0;
  // D G a slab of rows at a time (an lm_head's D G would be gigabytes), then
  // the element-wise dot with D.
  const int64_t slab_rows = std::max<int64_t>(1, (int64_t{64} << 20) / cols);
  float* dg = stats_.get<float>(static_cast<size_t>(std::min(rows, slab_rows) * cols), stream_, false);
  const float one = 1.0f, zero = 0.0f;
  const double sum = slab_dot_sum(rows, slab_rows, [&](int64_t r0, int64_t nr) {
    const float* e = d + r0 * cols;
    // Column-major view: the slab is E = D^T (cols x nr); (D G)^T = G E.
    check_blas(cublas_api().gemm_ex(blas(), CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(cols), static_cast<int>(nr),
                                    static_cast<int>(cols), &one, g, CUDA_R_32F, static_cast<int>(cols), e,
                                    CUDA_R_32F, static_cast<int>(cols), &zero, dg, CUDA_R_32F,
                                    static_cast<int>(cols), stats_compute(), CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (gram quadratic)");
    return DotPair{e, dg, nr * cols};
  });
  return std::max(sum, 0.0);
}

double CudaBackend::rows_quadratic(const float* d, int64_t rows, int64_t cols, const float* x, int64_t n) {
  Op op(*this, "rows quadratic");
  if (rows <= 0 || n <= 0) return 0.0;
  // (D X^T) a slab of D's rows at a time, then its sum of squares.
  const int64_t slab_rows = std::max<int64_t>(1, (int64_t{64} << 20) / n);
  float* dx = stats_.get<float>(static_cast<size_t>(std::min(rows, slab_rows) * n), stream_, false);
  const float one = 1.0f, zero = 0.0f;
  return slab_dot_sum(rows, slab_rows, [&](int64_t r0, int64_t nr) {
    // Column-major views: x is X^T (cols x n), the slab is D^T (cols x nr);
    // C (n x nr) = (X^T)^T D^T = X D^T.
    check_blas(cublas_api().gemm_ex(blas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(nr),
                                    static_cast<int>(cols), &one, x, CUDA_R_32F, static_cast<int>(cols),
                                    d + r0 * cols, CUDA_R_32F, static_cast<int>(cols), &zero, dx, CUDA_R_32F,
                                    static_cast<int>(n), stats_compute(), CUBLAS_GEMM_DEFAULT),
               "cublasGemmEx (rows quadratic)");
    return DotPair{dx, dx, nr * n};
  });
}

void CudaBackend::log_softmax_rows(float* x, int64_t rows, int64_t vocab) {
  Op op(*this, "log softmax");
  cuda::log_softmax_rows(x, rows, vocab, stream_);
}

double CudaBackend::kl_sum(const void* ref, bool ref_bf16, const float* logits, int64_t rows, int64_t vocab) {
  Op op(*this, "kl");
  if (rows <= 0) return 0.0;
  auto* row_kl = stats_sums_.get<double>(static_cast<size_t>(rows), stream_, false);
  cuda::kl_rows(ref, ref_bf16, logits, rows, vocab, row_kl, stream_);
  std::vector<double> host(static_cast<size_t>(rows));
  OPTIQ_CUDA_OK(cudaMemcpyAsync(host.data(), row_kl, host.size() * sizeof(double), cudaMemcpyDeviceToHost, stream_));
  OPTIQ_CUDA_OK(cudaStreamSynchronize(stream_));
  double sum = 0;  // in row order, as the CPU backend sums
  for (double v : host) sum += v;
  return sum;
}

void CudaBackend::row_sq_sums(const float* d, int64_t rows, int64_t cols, double* out) {
  Op op(*this, "row squares");
  if (rows <= 0) return;
  auto* sums = stats_sums_.get<double>(static_cast<size_t>(rows), stream_, false);
  cuda::row_sq_sums(d, rows, cols, sums, stream_);
  OPTIQ_CUDA_OK(cudaMemcpyAsync(out, sums, static_cast<size_t>(rows) * sizeof(double), cudaMemcpyDeviceToHost, stream_));
  OPTIQ_CUDA_OK(cudaStreamSynchronize(stream_));
}

// Decode attention (n <= kMatvecMaxRows queries); with `rope`, the kernel
// also rotates q and the new key and stores the new key and value (the
// caller checked that it applies: attention_decode_rope_applies).
void CudaBackend::decode_attention(const AttentionParams& p, const float* q, int64_t n, int pos0, DevKV kv,
                                   float* out, const cuda::RopeIn* rope) {
  kv.settled = kv_settled_below(kv, pos0);
  const int splits = decode_splits(p, n, cuda::attention_decode_per_query_head(p, kv), &kv);
  if (!cuda::attention_decode_single_pass(p, kv, splits)) {  // the two-pass kernel holds a range's scores
    const size_t smem = cuda::attention_decode_smem(p, splits);
    check(smem <= props_.sharedMemPerBlockOptin,
          "cuda backend: decode attention over {} keys needs {} KB of shared memory per block, the GPU has {} KB",
          p.max_ctx, smem / 1024, props_.sharedMemPerBlockOptin / 1024);
  }
  check(p.head_dim % 2 == 0 && p.head_dim <= 256,
        "cuda backend: decode attention takes even head dimensions up to 256, not {}", p.head_dim);
  float* partial = partial_.get<float>(
      static_cast<size_t>(attention_decode_partial_floats(p, static_cast<int>(n), splits)), stream_, recording_);
  const size_t n_counters = static_cast<size_t>(n) * p.n_heads;  // a block's counter: per kv head, or per query head
  int32_t* counters = counters_.get<int32_t>(n_counters, stream_, recording_);
  if (counters != zeroed_counters_ || n_counters > zeroed_count_) {  // new memory: zero it once
    cuda::persistent_flush(stream_);
    OPTIQ_CUDA_OK(cudaMemsetAsync(counters, 0, n_counters * sizeof(int32_t), stream_));
    zeroed_counters_ = counters;
    zeroed_count_ = n_counters;
  }
  // Under fast numerics the o product reads int8 blocks of `out`: the kernel writes them where it can.
  cuda::Int8Out int8;
  const int64_t qcols = p.q_stride;
  if (kernels::decode_int8_enabled() && qcols % 32 == 0) int8 = int8_scratch(n, qcols);
  const cuda::L2Prefetch pf = take_prefetch(prefetch_caps().attention);
  const bool wrote_int8 =
      rope ? cuda::attention_decode_rope(p, q, position(pos0), kv, splits, partial, counters, out, stream_, int8, *rope,
                                         pf)
           : cuda::attention_decode(p, q, static_cast<int>(n), position(pos0), kv, splits, partial, counters, out,
                                    stream_, int8, pf);
  if (rope) kv_wrote(kv, pos0);  // the new key and value
  if (wrote_int8) {
    int8_input_ = Int8Input{out, n, qcols, ops_, int8};
    last_y_ = nullptr;
  }
}

int CudaBackend::decode_splits(const AttentionParams& p, int64_t n, bool per_query_head, const DevKV* kv) const {
  // Enough blocks to fill the GPU twice over; llama.cpp numerics normalise
  // the probabilities before V, so they take one range.
  if (p.f16_probs) return 1;
  // A block per query head (the single-pass kernel on grouped heads): about
  // three blocks an SM, one wave (4 fit at 256 threads and 64 registers; a
  // grid just over one wave runs a nearly empty second one). H100, q4 decode at
  // 4096 tokens: Qwen2.5-7B 350 -> 395 tok/s (64 ranges -> 15), Llama-3-8B
  // 352 -> 359 (33 -> 13); BENCHMARKS.md §6. OPTIQ_CUDA_ATTN_WAVES=W for A/B runs.
  static const int waves = static_cast<int>(env_int("OPTIQ_CUDA_ATTN_WAVES", 3));
  const int heads = per_query_head ? p.n_heads : p.n_kv_heads;
  const int target = (per_query_head ? waves : 2) * props_.multiProcessorCount;
  int want = (target + heads * static_cast<int>(n) - 1) / (heads * static_cast<int>(n));
  if (per_query_head && kv && kv->settled) {
    // The pipelined kernel holds more registers (3 blocks an SM at 80, not
    // 4): no more ranges than one wave of it.
    const int per_sm = cuda::attention_decode_blocks_per_sm(p, *kv);
    if (per_sm > 0) want = std::min(want, per_sm * props_.multiProcessorCount / (heads * static_cast<int>(n)));
  }
  return std::clamp(want, 1, std::clamp(p.max_ctx / 16, 1, 64));
}

void CudaBackend::rope_store_attention(const RopeStore& r, float* q, float* k, const float* v, int64_t n, int pos0,
                                       KVCache& c, int layer, const AttentionParams& p, float* out) {
  const DevKV kv = layer_of(c, layer);
  const int splits = decode_splits(p, n, cuda::attention_decode_per_query_head(p, kv));
  if (n > kMatvecMaxRows || !cuda::attention_decode_rope_applies(p, static_cast<int>(n), kv, splits, r.rot_dim)) {
    Backend::rope_store_attention(r, q, k, v, n, pos0, c, layer, p, out);
    return;
  }
  Op op(*this, "rope + attention decode");
  if (skipped("attention")) {  // as if the kernel had written its output's int8 blocks
    if (kernels::decode_int8_enabled() && p.q_stride % 32 == 0) {
      int8_input_ = Int8Input{out, n, p.q_stride, ops_, int8_scratch(n, p.q_stride)};
      last_y_ = nullptr;
    }
    return;
  }
  check(pos0 + n <= c.max_ctx, "cuda backend: {} keys at position {} overflow a cache of {}", n, pos0, c.max_ctx);
  cuda::RopeIn rope;
  rope.k = k, rope.v = v, rope.inv_freq = r.inv_freq, rope.mscale = r.mscale;
  decode_attention(p, q, n, pos0, kv, out, &rope);
}

void CudaBackend::attention(const AttentionParams& p, const float* q, int64_t n, int pos0, const KVCache& c, int layer,
                            float* out) {
  Op op(*this, n <= kMatvecMaxRows ? "attention decode" : "attention prefill");
  if (n <= 0) return;
  check(p.n_kv_heads > 0 && p.n_heads % p.n_kv_heads == 0, "cuda backend: {} heads over {} kv heads", p.n_heads,
        p.n_kv_heads);
  const DevKV kv = layer_of(c, layer);
  if (n <= kMatvecMaxRows) {
    decode_attention(p, q, n, pos0, kv, out, nullptr);
    return;
  }
  check(!recording_, "cuda backend: a recorded step attends with at most {} queries", kMatvecMaxRows);
  if (flash_prefill_enabled() && cuda::attention_flash_prefill(p, q, n, pos0, kv, out, stream_)) return;
  // Prefill: S = K Q^T per head (cuBLAS batched GEMMs), the masked softmax
  // (into fp16 probabilities with an fp16 cache), out = P V. The scores of all n queries at once would take
  // n_heads x n x (pos0 + n) floats (6.5 GB for an 8B shape's 4096-row pass at
  // ctx 8192), so the queries go in blocks of rows whose scores stay within
  // kAttentionScoreBytes, each block against the keys up to its last position.
  const int G = p.n_heads / p.n_kv_heads, hd = p.head_dim, batch = p.n_kv_heads;
  const int64_t ld_all = (pos0 + n + 7) / 8 * 8;
  const int64_t block_rows =
      std::clamp<int64_t>(attention_score_bytes() / (int64_t{4} * p.n_heads * ld_all), 1, n);
  float* S = scores_.get<float>(static_cast<size_t>(p.n_heads) * block_rows * ld_all, stream_, false);
  const float one = 1.0f, zero = 0.0f;
  const cudaDataType type = kv.half ? CUDA_R_16F : CUDA_R_32F;
  const size_t esz = kv.half ? 2 : 4;
  const void* qin = q;
  if (kv.half) {
    auto* qh = qhalf_.get<__half>(static_cast<size_t>(n * p.q_stride), stream_, false);
    cuda::to_half(q, n * p.q_stride, qh, stream_);
    qin = qh;
  }
  __half* p16 =
      kv.half ? probs_.get<__half>(static_cast<size_t>(p.n_heads) * block_rows * ld_all, stream_, false) : nullptr;
  auto at = [](const void* base, int64_t elems, size_t esz) {
    return static_cast<const void*>(static_cast<const uint8_t*>(base) + elems * static_cast<int64_t>(esz));
  };
  const void* P_all = kv.half ? static_cast<const void*>(p16) : static_cast<const void*>(S);
  // With groups (G > 1), every query head in one batched launch through
  // pointer arrays made on the device (a head's keys and values are its kv
  // head's) instead of G strided launches, each over the kv heads;
  // OPTIQ_CUDA_ATTN_HEADS=0 keeps the latter.
  const bool by_heads = G > 1 && attention_by_heads();
  for (int64_t r0 = 0; r0 < n; r0 += block_rows) {
    const int64_t nb = std::min(block_rows, n - r0);
    const int64_t T = pos0 + r0 + nb, ld = (T + 7) / 8 * 8;
    const void* qb = at(qin, r0 * p.q_stride, esz);
    if (by_heads) {
      const int H = p.n_heads;
      void** d = head_ptrs_.get<void*>(static_cast<size_t>(6 * H), stream_, false);
      cuda::PrefillHeads a;
      a.k = kv.k, a.v = kv.v, a.q = qb, a.probs = P_all, a.scores = S, a.out = out + r0 * p.q_stride;
      a.n_heads = H, a.group = G, a.head_dim = hd, a.esz = static_cast<int>(esz), a.head_scores = nb * ld;
      cuda::attention_prefill_pointers(a, d, stream_);
      check_blas(cublas_api().gemm_batched_ex(blas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(T), static_cast<int>(nb),
                                              hd, &one, d, type, static_cast<int>(p.kv_stride), d + H, type,
                                              static_cast<int>(p.q_stride), &zero, d + 2 * H, CUDA_R_32F,
                                              static_cast<int>(ld), H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "attention scores (cublasGemmBatchedEx)");
      cuda::attention_softmax(p, S, nb, ld, static_cast<int>(pos0 + r0), p16, stream_);
      check_blas(cublas_api().gemm_batched_ex(blas(), CUBLAS_OP_N, CUBLAS_OP_N, hd, static_cast<int>(nb),
                                              static_cast<int>(T), &one, d + 3 * H, type, static_cast<int>(p.kv_stride),
                                              d + 4 * H, type, static_cast<int>(ld), &zero, d + 5 * H, CUDA_R_32F,
                                              static_cast<int>(p.q_stride), H, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "attention values (cublasGemmBatchedEx)");
      continue;
    }
    for (int j = 0; j < G; ++j)
      check_blas(cublas_api().gemm_strided_batched_ex(blas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(T), static_cast<int>(nb), hd,
                                            &one, kv.k, type, static_cast<int>(p.kv_stride), hd, at(qb, j * hd, esz),
                                            type, static_cast<int>(p.q_stride), static_cast<int64_t>(G) * hd, &zero,
                                            S + j * nb * ld, CUDA_R_32F, static_cast<int>(ld), G * nb * ld, batch,
                                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "attention scores (cublasGemmStridedBatchedEx)");
    cuda::attention_softmax(p, S, nb, ld, static_cast<int>(pos0 + r0), p16, stream_);
    const void* P = kv.half ? static_cast<const void*>(p16) : static_cast<const void*>(S);
    for (int j = 0; j < G; ++j)
      check_blas(cublas_api().gemm_strided_batched_ex(blas(), CUBLAS_OP_N, CUBLAS_OP_N, hd, static_cast<int>(nb), static_cast<int>(T),
                                            &one, kv.v, type, static_cast<int>(p.kv_stride), hd, at(P, j * nb * ld, esz),
                                            type, static_cast<int>(ld), G * nb * ld, &zero, out + r0 * p.q_stride + j * hd,
                                            CUDA_R_32F, static_cast<int>(p.q_stride), static_cast<int64_t>(G) * hd, batch,
                                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                 "attention values (cublasGemmStridedBatchedEx)");
  }
}

Op::Op(CudaBackend& b, const char* name) : Op(b, std::string()) {
  if (timed_) name_ = name;
}

Op::Op(CudaBackend& b, std::string name) {
  ++b.ops_;
  if (!b.timing_ || b.recording_) return;
  timed_ = &b;
  name_ = std::move(name);
  start_ = b.event();
  OPTIQ_CUDA_OK(cudaEventRecord(start_, b.stream_));
}

Op::~Op() {
  if (!timed_) return;
  cudaEvent_t end = timed_->event();
  cudaEventRecord(end, timed_->stream_);
  timed_->timed_.push_back({std::move(name_), start_, end});
}

}  // namespace
}  // namespace cuda

Backend* cuda_backend() {
  // The CUDA runtime is brought up (and registers its own exit handler)
  // before the backend below is constructed, so that at exit the backend is
  // destroyed first and frees its device memory into a live context (the
  // other order leaves compute-sanitizer reporting every buffer as leaked).
  static const bool runtime_up = [] {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0 || cudaFree(nullptr) != cudaSuccess) {
      cudaGetLastError();  // no driver or no GPU: this build runs on the CPU
      return false;
    }
    return true;
  }();
  static const std::unique_ptr<cuda::CudaBackend> backend = []() -> std::unique_ptr<cuda::CudaBackend> {
    if (!runtime_up) return nullptr;
    try {
      return std::make_unique<cuda::CudaBackend>(0);
    } catch (const Error& e) {
      warn("a GPU is visible but the CUDA backend could not start: {}", e.what());
      return nullptr;
    }
  }();
  return backend.get();
}

}  // namespace optiq
