// The CUDA backend's kernels as host-callable launchers (each enqueues on the
// given stream and returns at once). cuda_backend.cu decides which to call;
// the kernel files implement them: matvec.cu (decode products), dequant.cu
// (weights to fp16/fp32 rows for prefill GEMMs and embeddings),
// elementwise.cu, attention.cu.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/tensor.h"
#include "kernels/activation.h"
#include "kernels/attention.h"
#include "kernels/weight_view.h"

namespace optiq::cuda {

// A weight matrix in device memory, in the storage it was uploaded in
// (nothing is widened: the kernels read packed words).
enum class DevStorage : uint8_t { F32, F16, BF16, Affine, KQuant };

struct DevMatrix {
  DevStorage storage = DevStorage::F32;
  int64_t rows = 0, cols = 0;
  const void* data = nullptr;  // elements, affine packed words, or k-quant blocks
  // Affine groups (quant/affine.h): scales/biases {rows, cols/group}; biases
  // null means symmetric (bias = -zero_point * scale).
  const uint16_t* scales = nullptr;
  const uint16_t* biases = nullptr;
  int bits = 0, group = 0, zero_point = 0;
  bool bf16_scales = false;
  DType kquant = DType::Q4_K;  // k-quant blocks of 256
  int64_t row_bytes = 0;       // k-quant bytes per row
  ActRounding act = ActRounding::Exact;
};

// Decode products take at most this many activation rows; more go through
// dequantize_rows + a cuBLAS GEMM.
constexpr int kMatvecMaxRows = 8;

// Where a producer also writes its output as int8 blocks of 32 (the next
// int8 decode product's input, as quantize_act_int8 would make it); null q:
// it does not.
struct Int8Out {
  int8_t* q = nullptr;
  float* scale = nullptr;
  int32_t* sum = nullptr;
};

// Weight bytes a latency-bound decode kernel (attention, a norm, an int8
// rounding) asks the memory system to bring into L2 while it runs: the next
// product's weights, or the first part of them. Those kernels read almost
// nothing from DRAM (BENCHMARKS.md §6: ~40% of a 4-bit step at ~0 bytes), so
// the product that follows finds its first bytes in L2. A hint only: the
// results never change. Ranges of whole 128-byte lines from 128-aligned
// starts (device allocations are).
struct L2Prefetch {
  static constexpr int kMaxRanges = 12;
  const char* start[kMaxRanges] = {};
  uint32_t lines[kMaxRanges] = {};
  int count = 0;
  // Issued after the kernel's wait for the previous one (when that kernel's
  // own reads are done), not at its start (OPTIQ_CUDA_PREFETCH_AFTER).
  bool after_wait = false;
};
// The first `fraction` of w's rows (codes, scales, biases) into pf, as far
// as pf has room; the bytes added.
int64_t add_prefetch(L2Prefetch& pf, const DevMatrix& w, double fraction);
// The bytes of w a product reads (codes, scales and biases).
int64_t weight_bytes(const DevMatrix& w);

// y[n x rows] = x[n x cols] . W^T with fp32 activations (every storage).
void matvec_f32(const DevMatrix& w, const float* x, int n, float* y, cudaStream_t s);
// Dense storage (fp32/fp16/bf16, width a multiple of 8, n <= kMatvecMaxRows)
// with `accum`: also accum += y, the residual add in the product's last step
// (the same bits as matvec_f32 then an add). False (nothing launched) otherwise.
bool matvec_dense(const DevMatrix& w, const float* x, int n, float* y, cudaStream_t s, float* accum);
// Whether matvec_dense (group false) / matvec_dense_group (true) take w: dense
// storage, width a multiple of 8, and switched on by OPTIQ_CUDA_DENSE_FUSE
// (residual, the default: the residual add only; 1: the group too; group:
// the group only; 0: neither).
bool has_matvec_dense(const DevMatrix& w, bool group);
// Up to three dense matrices of one storage and width that read the same x
// (q, k, v) in one launch, each row the same bits as matvec_f32's; false
// (nothing launched) otherwise.
bool matvec_dense_group(const DevMatrix* ws, float* const* ys, int count, const float* x, int n, cudaStream_t s);
// The same with activations rounded to int8 blocks of 32 by quantize_act_int8
// (affine storage, and the GGUF k-quants Q2_K..Q6_K: integer dot products per
// block, the CPU's int8 decode numerics; kquant_int8.cuh).
bool has_matvec_int8(const DevMatrix& w);
// With `accum`, also accum += y (a residual add after the product, in its last step).
void matvec_int8(const DevMatrix& w, const int8_t* xq, const float* xscale, const int32_t* xsum, int n, float* y,
                 cudaStream_t s, float* accum = nullptr);
// Up to three matrices of one affine format that read the same x (q, k, v)
// in one launch: ys[i] = x . W_i^T. False (nothing launched) when they differ
// in format or width.
bool matvec_int8_group(const DevMatrix* ws, float* const* ys, int count, const int8_t* xq, const float* xscale,
                       const int32_t* xsum, int n, cudaStream_t s);
// The gated MLP's first half in one pass: out = act(x . G^T) * (x . U^T),
// when G and U share a storage these kernels fuse (affine of one format, one
// k-quant type with int8 blocks, or dense); false (nothing launched) otherwise. xq/xscale/xsum: int8 blocks of
// x for the int8 path (null: fp32 x).
bool matvec_gated(const DevMatrix& g, const DevMatrix& u, GateAct act, const float* x, const int8_t* xq,
                  const float* xscale, const int32_t* xsum, int n, float* out, cudaStream_t s);
// Tuning experiments (bench/gpu_kernels.cpp): one activation row, a launch
// shape by index (names in kMatvecTunings: warps per block, rows per warp,
// chunks per lane in flight, halved at 8 bits; "default": what the backend
// launches), grid 0 = one block per row group; affine (int8, every width)
// and bf16 (fp32) only. False when the index is past the list.
constexpr int kMatvecTuningCount = 8;
extern const char* const kMatvecTunings[kMatvecTuningCount];
bool matvec_tuned(int tuning, const DevMatrix& w, const float* x, const int8_t* xq, const float* xscale,
                  const int32_t* xsum, float* y, unsigned grid, cudaStream_t s);
// x (n x cols) -> blocks of 32: q (n x blocks*32, zero padded), scale and sum
// per block, bit for bit as kernels/act_quant.h.
void quantize_act_int8(const float* x, int n, int64_t cols, int8_t* q, float* scale, int32_t* sum, cudaStream_t s,
                       const L2Prefetch& pf = {});

// Rows [r0, r1) of W as fp32 or fp16, row-major ((r1 - r0) x cols), values as
// quant/ggml_dequant and quant/affine compute them (fp16: rounded once).
void dequantize_rows(const DevMatrix& w, int64_t r0, int64_t r1, float* out, cudaStream_t s);
// Rewrites an affine matrix's packed codes (chunks of 32, `bits` words each)
// from MLX's bit stream to the plane layout every kernel reads
// (code_planes.h), in place; uploads call it once.
void affine_to_planes(uint32_t* words, int64_t chunks, int bits, cudaStream_t s);
void dequantize_rows(const DevMatrix& w, int64_t r0, int64_t r1, __half* out, cudaStream_t s);
// out[i] = scale * W[tokens[i]] (tokens in device memory).
void embed_rows(const DevMatrix& w, const int32_t* tokens, int n, float scale, float* out, cudaStream_t s);

// A position the kernels read at run time: (dev ? *dev : 0) + offset. A
// recorded decode step (CUDA graph) points dev at the step's position, so
// one recording serves every position.
struct DevPos {
  const int32_t* dev = nullptr;
  int offset = 0;
};

void rms_norm(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out, cudaStream_t s);
// The same for a few rows (decode) over many blocks, with out's int8 blocks
// (as quantize_act_int8 makes them) when q is given: out must not alias x,
// dim a multiple of 32, at most kSplitNormMaxDim. False (nothing launched) otherwise.
constexpr int64_t kSplitNormMaxDim = 8192;
bool rms_norm_split(const float* x, const float* w, int64_t rows, int64_t dim, float eps, float* out, cudaStream_t s,
                    int8_t* q = nullptr, float* qscale = nullptr, int32_t* qsum = nullptr,
                    const L2Prefetch& pf = {});
void add(float* x, const float* y, int64_t n, cudaStream_t s);
// x += y, then out = rms_norm(x) * w (out may alias y); with q (and dim a
// multiple of 32, at most 8192) also out's int8 blocks, as quantize_act_int8
// makes them: true when it wrote them.
bool add_rms_norm(float* x, const float* y, const float* w, int64_t rows, int64_t dim, float eps, float* out,
                  cudaStream_t s, int8_t* q = nullptr, float* qscale = nullptr, int32_t* qsum = nullptr);
void add_rows(float* y, const float* b, int64_t n, int64_t m, cudaStream_t s);
void take_columns(const float* src, int64_t n, int64_t cols, int64_t from, int64_t width, float* dst, cudaStream_t s);
void rope(float* x, int64_t n, int64_t stride, int heads, int head_dim, int rot_dim, DevPos pos0,
          const float* inv_freq, float mscale, cudaStream_t s);
void gated_activation(GateAct act, bool llamacpp, float* gate, const float* up, int64_t n, cudaStream_t s);
void softcap(float* x, int64_t n, float cap, cudaStream_t s);
// out[0] = index of the largest of x[0..n): the first of equal values, NaNs
// skipped, -1 when every value is NaN (optiq::argmax's answer). `state` is
// kArgmaxStateWords words zeroed once: the kernel leaves them zero again.
constexpr int kArgmaxStateWords = 4;
void argmax(const float* x, int64_t n, uint32_t* state, int32_t* out, cudaStream_t s);
// x rounded as ActRounding says (kernels/weight_view.h), into out (may alias x).
void round_activations(ActRounding r, const float* x, int64_t n, int64_t cols, float* out, cudaStream_t s);
void to_half(const float* x, int64_t n, __half* out, cudaStream_t s);
void to_bf16(const float* x, int64_t n, __nv_bfloat16* out, cudaStream_t s);

// The KV cache of one layer: [max_ctx][kv_dim] of fp32 or fp16.
struct DevKV {
  void* k = nullptr;
  void* v = nullptr;
  bool half = false;
  int64_t kv_dim = 0;
  // The layer's rows before the step's first position were written before
  // everything still running on the stream (no kernel since the last copy or
  // synchronisation wrote this layer): decode attention may then load them
  // before pdl_wait, while the q/k/v product is still running.
  bool settled = false;
};
void kv_store(const DevKV& c, DevPos pos0, const float* k, const float* v, int64_t n, cudaStream_t s);
// RoPE of q and k (Backend::rope_kv_store), then k and v into the cache.
struct RopeKV {
  int n_heads = 0, n_kv_heads = 0, head_dim = 0, rot_dim = 0;
  int64_t q_stride = 0;
  const float* inv_freq = nullptr;
  float mscale = 1.0f;
};
void rope_kv_store(const RopeKV& r, float* q, float* k, const float* v, int64_t n, DevPos pos0, const DevKV& c,
                   cudaStream_t s);

// Attention of n <= kMatvecMaxRows queries (decode), split over the keys
// (flash-decoding): `splits` (<= 64) partial softmaxes per (query, head) in
// `partial` (attention_decode_partial_floats floats), combined by the last
// block of each group; `counters` holds n x n_kv_heads zeros (and is left so).
// head_dim must be even.
int64_t attention_decode_partial_floats(const AttentionParams& p, int n, int splits);
size_t attention_decode_smem(const AttentionParams& p, int splits);
// With int8.q, also out's int8 blocks (rows of q_stride) where the kernel can:
// true when it wrote them.
// pf: weights the single-pass kernel prefetches into L2 (the o product's).
bool attention_decode(const AttentionParams& p, const float* q, int n, DevPos pos0, const DevKV& c, int splits,
                      float* partial, int* counters, float* out, cudaStream_t s, Int8Out int8 = {},
                      const L2Prefetch& pf = {});
// The new token's RoPE and cache store done by the attention kernel itself
// (one query): q and k as projected (not rotated), v; rotary over the whole
// head (rot_dim == head_dim), the rotation of rope_kv_store bit for bit.
struct RopeIn {
  const float* k = nullptr;
  const float* v = nullptr;
  const float* inv_freq = nullptr;
  float mscale = 1.0f;
};
// Whether decode attention runs the single-pass kernel (fast numerics: no
// dynamic shared memory), not the two-pass one that holds a range's scores.
bool attention_decode_single_pass(const AttentionParams& p, const DevKV& c, int splits);
// Whether decode attention runs a block per query head (and key range), not
// per kv head: the single-pass kernel of fast numerics on grouped heads.
bool attention_decode_per_query_head(const AttentionParams& p, const DevKV& c);
// Blocks an SM of the per-query-head kernel decode attention launches on c
// (its registers depend on whether c is settled); 0 where that kernel does not apply.
int attention_decode_blocks_per_sm(const AttentionParams& p, const DevKV& c);
// True when attention_decode_rope applies (then it must be used alone: it
// rotates and stores what rope_kv_store would have).
bool attention_decode_rope_applies(const AttentionParams& p, int n, const DevKV& c, int splits, int rot_dim);
bool attention_decode_rope(const AttentionParams& p, const float* q, DevPos pos0, const DevKV& c, int splits,
                           float* partial, int* counters, float* out, cudaStream_t s, Int8Out int8, RopeIn rope,
                           const L2Prefetch& pf = {});
// Prefill attention's middle step: scores S (rows of ld floats: query i of
// head h at S + (h * n + i) * ld, keys 0..pos0+n-1) -> probabilities (scale,
// soft-cap, causal window, softmax), in place, or into p16 as fp16 when given
// (S then holds intermediate values).
void attention_softmax(const AttentionParams& p, float* S, int64_t n, int64_t ld, int pos0, __half* p16,
                       cudaStream_t s);
// Prefill attention's operands for batched GEMMs over every query head h
// (whose keys and values are kv head h / group's), written to out: [0, H) K,
// [H, 2H) Q, [2H, 3H) scores, [3H, 4H) V, [4H, 5H) probabilities, [5H, 6H)
// the head's output columns (H = n_heads).
struct PrefillHeads {
  const void *k = nullptr, *v = nullptr, *q = nullptr, *probs = nullptr;
  float *scores = nullptr, *out = nullptr;
  int n_heads = 0, group = 1, head_dim = 0, esz = 2;  // esz: bytes of a K, V, Q or probability element
  int64_t head_scores = 0;                           // elements from one head's scores (or probabilities) to the next
};
void attention_prefill_pointers(const PrefillHeads& a, void** out, cudaStream_t s);
// Prefill attention in one kernel (flash_prefill.cu): an fp16 cache, head_dim
// 64, 96, 128 or 256; q and out rows as attention_decode's. False (nothing
// launched) where it does not apply.
bool flash_prefill_applies(const AttentionParams& p, const DevKV& c);
bool attention_flash_prefill(const AttentionParams& p, const float* q, int64_t n, int pos0, const DevKV& c, float* out,
                             cudaStream_t s);

// Affine quantize + dequantize of a row-major rows x cols matrix (fake_quant.cu):
// quant/quantizer.h's min/max (search false) or search rule, the search
// weighted by `importance` (cols values in device memory) when not null; out
// gets w^ (or w - w^ with error_out; null: nothing), scale_words and
// bias_words (rows x cols/group; null: nothing) the chosen grid's words
// (GPTQ's static groups). False when the group size is not 32, 64 or 128 or
// does not divide cols.
bool fake_quantize_affine(const float* w, int64_t rows, int64_t cols, int bits, int group, bool bf16, bool search,
                          int grid, int refit_iters, const float* importance, bool error_out, float* out,
                          cudaStream_t s,
                          uint16_t* scale_words = nullptr, uint16_t* bias_words = nullptr);

// The persistent decode kernel (persistent.cu). While a decode step is
// recorded (CUDA graph), the steps between two other launches (int8
// products alone, with a residual add, as a q/k/v group or a gated pair, the
// rounding of a row to int8 blocks, the decode norm) run as one launch: a
// grid of blocks that all stay resident and meet at a grid barrier between
// steps, each product's first weight loads issued before it waits there.
// Each step is the same arithmetic as its own kernel, so the results are
// the same bits. The launchers below queue their step (persistent_take)
// while a stream collects; every other launch, copy or cuBLAS call on it
// first launches what is queued (persistent_flush).
enum class StepKind : int32_t { Product, Group, Gated, Quantize, Norm };
struct PersistentStep {
  StepKind kind = StepKind::Product;
  int count = 1;              // Group: matrices (q, k, v)
  DevMatrix w[3];             // Product: w[0]; Group: w[0..count); Gated: gate w[0], up w[1]
  float* y[3] = {};           // outputs (Gated: y[0])
  float* accum = nullptr;     // Product: accum += y (the residual add)
  GateAct act = GateAct::Silu;
  const int8_t* xq = nullptr;  // products' int8 activation blocks
  const float* xscale = nullptr;
  const int32_t* xsum = nullptr;
  const float* x = nullptr;    // Quantize / Norm: the row
  const float* norm_w = nullptr;
  int64_t cols = 0;            // Quantize / Norm: row width
  float eps = 0;
  float* out = nullptr;        // Norm: the normed row
  int8_t* q = nullptr;         // Quantize / Norm: int8 blocks written
  float* qscale = nullptr;
  int32_t* qsum = nullptr;
};
// Starts collecting the steps launched on s (`barrier`: kPersistentBarrierWords
// words of device memory, zero before the first use and left so).
constexpr int kPersistentBarrierWords = 32;
void persistent_begin(cudaStream_t s, unsigned* barrier);
// Launches what is queued and stops collecting.
void persistent_end(cudaStream_t s);
// Stops collecting and drops what is queued (an abandoned recording; never throws).
void persistent_discard(cudaStream_t s) noexcept;
// Queues `step` when s is collecting: true when it was queued (nothing else to do).
bool persistent_take(cudaStream_t s, const PersistentStep& step);
// Launches what is queued on s (nothing when nothing is).
void persistent_flush(cudaStream_t s);
// OPTIQ_CUDA_PERSISTENT=1 switches collecting on (off by default: measured
// slower than the separate launches, BENCHMARKS.md §6); never where the GPU
// cannot launch it (cooperative launch).
bool persistent_enabled();

// Accuracy-path statistics (stats.cu).
// Rows of `vocab` logits -> log-probabilities in place.
void log_softmax_rows(float* x, int64_t rows, int64_t vocab, cudaStream_t s);
// row_kl[r] = KL(p_r || softmax(logits_r)) for log p rows in ref (fp32, or bf16 words).
void kl_rows(const void* ref, bool ref_bf16, const float* logits, int64_t rows, int64_t vocab, double* row_kl,
             cudaStream_t s);
// out[r] = sum_j d[r, j]^2 (double) for d (rows x cols).
void row_sq_sums(const float* d, int64_t rows, int64_t cols, double* out, cudaStream_t s);
// sum_i x[i] y[i] as kDotBlocks partial sums (double) in `partial`.
constexpr int kDotBlocks = 264;
void dot_partials(const float* x, const float* y, int64_t n, double* partial, cudaStream_t s);

}  // namespace optiq::cuda
