// The seam between the forward pass and the hardware it runs on (MLX's
// eval_cpu / eval_gpu split, ggml's backend): model/transformer.cpp says
// *what* to compute, layer by layer; a Backend says *how*, on memory it owns.
//
//  - Buffers are fp32 arrays in the backend's memory (host RAM for the CPU,
//    device memory for a GPU). Their data() pointers are only dereferenced by
//    the same backend's operations; the host moves data in and out with
//    to_device / to_host.
//  - Weights are uploaded once (upload) into handles the backend owns; the
//    forward pass multiplies by handle. The CPU backend's handle borrows the
//    host storage (a Linear's view), a GPU backend's holds a device copy.
//  - The KV cache is an object (KVCache) the backend allocates and the
//    attention operation reads.
//
// Every operation is synchronous from the caller's point of view (a GPU
// backend may queue work, but to_host waits for it). Rows are row-major.
// One host thread drives a backend at a time.
//
// Recorded steps (optional, CUDA graphs): a decode step issues the same
// operations at every position, and launching hundreds of small kernels one
// by one costs more than running them. A backend that can_record_steps()
// records the operations issued between begin_recording and end_recording
// (they are not run then) and replays them later; position-dependent
// operations and the embedding then read the step's position and tokens from
// its memory (set_step_inputs), so one recording serves every position.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/weight_view.h"
#include "quant/format.h"

namespace optiq {

class Backend;

// An fp32 array of `size()` floats in a backend's memory. Move-only; freed
// by the backend that allocated it.
class Buffer {
 public:
  using Free = void (*)(float*);
  Buffer() = default;
  Buffer(float* data, int64_t size, Free free) : data_(data, free), size_(size) {}
  float* data() const { return data_.get(); }
  int64_t size() const { return size_; }
  size_t bytes() const { return static_cast<size_t>(size_) * sizeof(float); }

 private:
  std::unique_ptr<float, Free> data_{nullptr, nullptr};
  int64_t size_ = 0;
};

// A weight matrix uploaded to a backend.
class WeightHandle {
 public:
  virtual ~WeightHandle() = default;
  int64_t rows() const { return rows_; }
  int64_t cols() const { return cols_; }

 protected:
  WeightHandle(int64_t rows, int64_t cols) : rows_(rows), cols_(cols) {}

 private:
  int64_t rows_, cols_;
};

// Keys and values of every layer: [layer][max_ctx][kv_dim] each.
struct KVCache {
  Buffer k, v;
  int layers = 0, max_ctx = 0;
  int64_t kv_dim = 0;
  bool f16 = false;  // values are rounded to fp16 as they are stored (llama.cpp numerics)
  // The buffers hold fp16 values (two per float slot): a GPU backend's choice
  // when values are fp16 anyway or its fast numerics ask for it. The CPU never.
  bool half_storage = false;
  // Values (not bytes) from the start of the cache to a layer's keys or values.
  int64_t layer_offset(int layer) const { return static_cast<int64_t>(layer) * max_ctx * kv_dim; }
  size_t bytes() const { return k.bytes() + v.bytes(); }
};

// Device time of one kind of operation (Backend::take_op_times).
struct OpTime {
  std::string op;
  int64_t calls = 0;
  double ms = 0;
};

// A recorded step (see can_record_steps); the backend's own type.
class RecordedStep {
 public:
  virtual ~RecordedStep() = default;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  // True when buffers are host memory (the caller may then read and write
  // data() directly and skip copies).
  virtual bool host_memory() const = 0;
  // Bytes this backend could still allocate (a GPU's free memory; for host
  // memory, what the OS reports available). Callers size optional caches by it.
  virtual int64_t free_bytes() const = 0;

  // Memory. alloc'd buffers hold unspecified values.
  virtual Buffer alloc(int64_t n) = 0;
  virtual void to_device(const float* host, int64_t n, float* dst) = 0;
  virtual void to_host(const float* src, int64_t n, float* host) = 0;
  // host[i] = src[i * stride] for i < n (a matrix's diagonal: stride cols + 1).
  virtual void to_host_strided(const float* src, int64_t stride, int64_t n, float* host) {
    for (int64_t i = 0; i < n; ++i) to_host(src + i * stride, 1, host + i);
  }
  Buffer upload(const float* host, int64_t n) {
    Buffer b = alloc(n);
    to_device(host, n, b.data());
    return b;
  }
  // fp32 values unless the backend stores them as fp16 (KVCache::half_storage).
  virtual KVCache make_kv_cache(int layers, int max_ctx, int64_t kv_dim, bool f16);

  // Weights. `w` must stay valid while the handle lives (a backend may borrow it).
  virtual std::unique_ptr<WeightHandle> upload(const WeightView& w) = 0;
  // A matrix only the accuracy path's batched passes multiply by (a profiling
  // anchor's or a measured plan's fake-quantized fp32 matrix, WeightSwap). A
  // backend whose batched products round weights to fp16 anyway (the CUDA
  // backend's fast numerics) may keep fp32 values in fp16: the same products
  // at half the memory (an 8B model's lm_head: 1 GB instead of 2).
  virtual std::unique_ptr<WeightHandle> upload_for_passes(const WeightView& w) { return upload(w); }
  // Host memory page-locked while the returned value lives, for data copied
  // to the backend over and over (a GPU's DMA then reads it directly, at the
  // link's full speed). Empty where there is nothing to gain (host-memory
  // backends) or the system refuses; copies work either way.
  using HostPin = std::unique_ptr<void, void (*)(void*)>;
  virtual HostPin pin_host(const void* p, size_t bytes) { return HostPin(nullptr, [](void*) {}); }
  // y[n x rows] = x[n x cols] . W^T
  virtual void matmul(const WeightHandle& w, const float* x, int64_t n, float* y) = 0;
  // out[i] = row tokens[i] of W times `scale`; tokens are host memory.
  virtual void embed(const WeightHandle& w, const int32_t* tokens, int64_t n, float scale, float* out) = 0;

  // Element-wise pieces (kernels/elementwise.h gives each one's definition).
  // out[r] = rms_norm(x[r]) * w for `rows` rows of `dim` (out may alias x).
  virtual void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out) = 0;
  // x += y over n values.
  virtual void add(float* x, const float* y, int64_t n) = 0;
  // x[0..n) = 0.
  virtual void fill_zero(float* x, int64_t n) = 0;
  // y[r] += b for n rows of m values.
  virtual void add_rows(float* y, const float* b, int64_t n, int64_t m) = 0;
  // dst (n x width) = columns [from, from + width) of src (n x cols).
  virtual void take_columns(const float* src, int64_t n, int64_t cols, int64_t from, int64_t width, float* dst) = 0;
  // RoPE of n rows of `stride` floats (heads of head_dim) at positions pos0..;
  // inv_freq: rot_dim / 2 values in this backend's memory.
  virtual void rope(float* x, int64_t n, int64_t stride, int heads, int head_dim, int rot_dim, int pos0,
                    const float* inv_freq, float mscale) = 0;
  // gate = act(gate) * up over n values; llamacpp: llama.cpp's fp16-table GELU.
  virtual void gated_activation(GateAct act, bool llamacpp, float* gate, const float* up, int64_t n) = 0;
  virtual void softcap(float* x, int64_t n, float cap) = 0;
  // *host = the index of the largest of x[0..n) (this backend's memory): the
  // first of equal values, NaNs skipped, -1 when every one is NaN (as
  // optiq::argmax). Greedy decoding's pick without copying the logits out;
  // while recording it is the step's output (as to_host would be). The
  // default copies x to the host and picks there.
  virtual void argmax_to_host(const float* x, int64_t n, int32_t* host);
  virtual void round_f16(float* x, int64_t n) = 0;

  // Fused steps: each is the composition of the operations above that its
  // default says, run in fewer passes (and launches) where a backend can.
  // x += y, then out = rms_norm(x) * w (rows of dim; out may alias y): a
  // residual add and the norm that follows it.
  virtual void add_rms_norm(float* x, const float* y, const float* w, int64_t rows, int64_t dim, float eps,
                            float* out) {
    add(x, y, rows * dim);
    rms_norm(x, w, rows, dim, eps, out);
  }
  // y (n x W.rows) = a . W^T, then x += y and out = rms_norm(x) * w (out may
  // alias y): a block's last product, the residual add and the next block's
  // norm. A GPU adds y into x as the product stores it.
  virtual void matmul_add_rms_norm(const WeightHandle& wm, const float* a, int64_t n, float* y, float* x,
                                   const float* w, float eps, float* out) {
    matmul(wm, a, n, y);
    add_rms_norm(x, y, w, n, wm.rows(), eps, out);
  }
  // out (n x gate.rows()) = act(x . G^T) * (x . U^T); `up_out` is scratch of the same size.
  virtual void gated_matmul(const WeightHandle& gate, const WeightHandle& up, GateAct act, bool llamacpp,
                            const float* x, int64_t n, float* out, float* up_out) {
    matmul(gate, x, n, out);
    matmul(up, x, n, up_out);
    gated_activation(act, llamacpp, out, up_out, n * gate.rows());
  }
  // A hint: the products right after the next latency-bound operation (decode
  // attention, a norm) read ws. A backend may start bringing them nearer
  // during that operation (CUDA: into L2, while attention or the norm reads
  // next to nothing from memory). It never changes a result; each hint
  // replaces the last and is used at most once.
  virtual void prefetch_next(std::span<const WeightHandle* const> ws) {}
  // ys[i] (n x ws[i].rows) = x . W_i^T for matrices that read the same
  // input (q, k and v): one pass over x where a backend can.
  virtual void matmul_group(std::span<const WeightHandle* const> ws, const float* x, int64_t n,
                            std::span<float* const> ys) {
    for (size_t i = 0; i < ws.size(); ++i) matmul(*ws[i], x, n, ys[i]);
  }
  // RoPE of q (n rows of q_stride, n_heads heads) and k (rows of kv_dim,
  // n_kv_heads heads) at positions pos0.., then k and v stored in the cache.
  struct RopeStore {
    int n_heads = 0, n_kv_heads = 0, head_dim = 0, rot_dim = 0;
    int64_t q_stride = 0;
    const float* inv_freq = nullptr;  // backend memory
    float mscale = 1.0f;
  };
  virtual void rope_kv_store(const RopeStore& r, float* q, float* k, const float* v, int64_t n, int pos0, KVCache& c,
                             int layer) {
    rope(q, n, r.q_stride, r.n_heads, r.head_dim, r.rot_dim, pos0, r.inv_freq, r.mscale);
    rope(k, n, c.kv_dim, r.n_kv_heads, r.head_dim, r.rot_dim, pos0, r.inv_freq, r.mscale);
    kv_store(c, layer, pos0, k, v, n);
  }

  // rope_kv_store, then attention of the n rotated queries: a GPU rotates
  // q and the new key inside its attention kernel (q and k hold unspecified
  // values afterwards; the cache and out are as the composition leaves them).
  virtual void rope_store_attention(const RopeStore& r, float* q, float* k, const float* v, int64_t n, int pos0,
                                    KVCache& c, int layer, const AttentionParams& p, float* out) {
    rope_kv_store(r, q, k, v, n, pos0, c, layer);
    attention(p, q, n, pos0, c, layer, out);
  }

  // Stores n rows of keys and values (kv_dim each) at positions pos0.. of a layer.
  virtual void kv_store(KVCache& c, int layer, int pos0, const float* k, const float* v, int64_t n) = 0;
  // Causal attention of n queries at positions pos0.. against the layer's
  // cache (which already holds their own keys and values).
  virtual void attention(const AttentionParams& p, const float* q, int64_t n, int pos0, const KVCache& c, int layer,
                         float* out) = 0;

  // Rows per pass of a long prompt: a GPU expands packed weights once per
  // pass, so it takes larger passes than the CPU (whose scratch stays small).
  virtual int64_t prefill_rows() const { return 512; }

  // Recorded steps (see the top of this file). While recording, to_host or
  // argmax_to_host may be called once (the step's output): replay delivers it.
  virtual bool can_record_steps() const { return false; }
  // The inputs recorded operations read: n token ids (host memory) and the
  // position of the first one.
  virtual void set_step_inputs(const int32_t* tokens, int64_t n, int pos0) {}
  virtual void begin_recording() {}
  virtual std::unique_ptr<RecordedStep> end_recording() { return nullptr; }
  // Drops a recording cut short by an error (nothing is kept).
  virtual void abort_recording() {}
  // Runs `step` on the inputs set last; its output (the floats of the
  // recorded to_host, or the index of argmax_to_host) lands in host_out.
  virtual void replay(const RecordedStep& step, void* host_out) {}

  // out (rows x cols, this backend's memory) = the matrix's values in fp32,
  // exactly what matmul multiplies by (the profiler starts each module's
  // candidates from them without a trip through the host).
  void weights_to_f32(const WeightHandle& w, float* out) { weight_rows_to_f32(w, 0, w.rows(), out); }
  // Rows [r0, r1) of it ((r1 - r0) x cols): a large matrix a block at a time.
  virtual void weight_rows_to_f32(const WeightHandle& w, int64_t r0, int64_t r1, float* out) = 0;

  // Accuracy-path statistics (profiling, evaluation), on this backend's
  // buffers; sums are returned to the host in double.
  // g (cols x cols) += x^T x for n rows of `cols` (a Gram matrix of a
  // matrix product's inputs).
  virtual void gram_add(const float* x, int64_t n, int64_t cols, float* g) = 0;
  // sum over rows r of d_r . g . d_r^T for d (rows x cols) and a symmetric g
  // (cols x cols): the output error ||(W - W')X||^2 of a weight error d
  // against inputs whose Gram matrix is g.
  virtual double gram_quadratic(const float* d, int64_t rows, int64_t cols, const float* g) = 0;
  // The same sum from the inputs themselves: sum over the n rows x_t of x
  // (n x cols) of ||d x_t||^2 (cheaper than the Gram form when n < cols).
  virtual double rows_quadratic(const float* d, int64_t rows, int64_t cols, const float* x, int64_t n) = 0;
  // Rows of `vocab` logits replaced by their log-probabilities.
  virtual void log_softmax_rows(float* x, int64_t rows, int64_t vocab) = 0;
  // Sum over `rows` rows of KL(p || softmax(logits)), where ref holds log p
  // row by row (fp32, or bf16 words when ref_bf16: profiling keeps large
  // references in bf16); ref and logits are in this backend's memory.
  virtual double kl_sum(const void* ref, bool ref_bf16, const float* logits, int64_t rows, int64_t vocab) = 0;
  // out[r] = sum_j d[r, j]^2 (double, host) for d (rows x cols) in this
  // backend's memory: an embedding's error per token row.
  virtual void row_sq_sums(const float* d, int64_t rows, int64_t cols, double* out) = 0;
  // Accuracy path: w (rows x cols, fp32, this backend's memory) quantized to
  // `fmt` as quantize_matrix(fmt, ..., opt) does and dequantized again, into
  // out (or the error w - w^ when error_out). False when this backend does
  // not quantize `fmt` with `opt`: the caller then quantizes on the host.
  virtual bool fake_quantize(const TensorFormat& fmt, const QuantizeOptions& opt, const float* w, int64_t rows,
                             int64_t cols, bool error_out, float* out) {
    return false;
  }
  // GPTQ on this backend (model/gptq.h has the algorithm; model/gptq.cpp
  // decides what runs where): the upper Cholesky factor of a Hessian's
  // inverse, then affine matrices quantized against it with act-order (static
  // groups: the grid searched up front on the original values, importance
  // diag H) and `grid_passes` grid refits, each row keeping its (codes, grid)
  // of least error. Null / false where this backend has none: the host runs
  // GPTQ then. The results equal the host's up to fp32 summation order.
  //  a:    the dampened H in the column order GPTQ takes (n x n, double,
  //        host), whose inverse's factor U (H^-1 = U^T U) the column loop uses;
  //  perm: that order; diag: H_jj in the natural order (the grid's importance);
  //  h:    the dampened H in the natural order (fp32), for the refits; null
  //        when there are none.
  // A factor whose ok is false: `a` was not positive definite (the caller
  // dampens more and tries again, as on the host).
  class GptqFactor {
   public:
    virtual ~GptqFactor() = default;
    bool ok = false;
  };
  virtual std::unique_ptr<GptqFactor> gptq_factor(const double* a, const int64_t* perm, const float* diag,
                                                  const float* h, int64_t n) {
    return nullptr;
  }
  // w: rows x n fp32 (host); grid: the search's options (method, grid,
  // refit_iters, bf16_scales; its importance is the factor's diag). Out
  // (host): codes rows x n (natural order), scale and bias words rows x
  // n / group. False (nothing written) where this backend has no GPTQ.
  virtual bool gptq_affine(const GptqFactor& f, const float* w, int64_t rows, AffineFormat fmt,
                           const QuantizeOptions& grid, int grid_passes, uint8_t* codes, uint16_t* scales,
                           uint16_t* biases) {
    return false;
  }
  // Per-operation device time (optional, a GPU backend's profile): while on,
  // every operation run directly (not recorded) is timed on the device.
  virtual void set_op_timing(bool on) {}
  // Totals since the last call, largest first (waits for queued work).
  virtual std::vector<OpTime> take_op_times() { return {}; }
};

// The CPU backend (backend/cpu_backend.cpp); one per process.
Backend& cpu_backend();
// The CUDA backend (backend/cuda/) when this build has it and a GPU is
// visible; null otherwise. One per process, on the first visible GPU.
Backend* cuda_backend();
// What models run on unless told otherwise: the CPU until
// set_default_backend (the CLI's --device) says otherwise.
Backend& default_backend();
void set_default_backend(Backend& b);
// The backends this build and machine can run ("cpu" always comes first).
std::vector<Backend*> available_backends();
// By name; throws optiq::Error naming the available ones when `name` is not.
Backend& backend_named(std::string_view name);

}  // namespace optiq
