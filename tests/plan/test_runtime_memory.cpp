// The runtimes' memory arithmetic (plan/runtime_memory.h, compute_buffers.h,
// memory_fit.h) on Llama-3-8B's shape, by hand; bad input.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "model/precision.h"
#include "plan/budget.h"
#include "plan/compute_buffers.h"
#include "plan/memory_fit.h"
#include "plan/runtime_memory.h"
#include "plan_test_util.h"

using namespace optiq;
using optiq::test::error_of;

namespace {

// Llama-3-8B: 32 layers, 32 heads of 128, 8 KV heads (kv_dim 1024), MLP 14336, vocab 128256.
ModelConfig llama3_8b() {
  ModelConfig c;
  c.dim = 4096;
  c.n_layers = 32;
  c.n_heads = 32;
  c.n_kv_heads = 8;
  c.head_dim = 128;
  c.hidden_dim = 14336;
  c.vocab_size = 128256;
  c.max_seq = 8192;
  return c;
}

// Gemma 3 270M's attention: 18 layers, every 6th global, the others a window of 512; one KV head of 256.
ModelConfig gemma3_270m() {
  ModelConfig c;
  c.family = "Gemma 3";
  c.dim = 640;
  c.n_layers = 18;
  c.n_heads = 4;
  c.n_kv_heads = 1;
  c.head_dim = 256;
  c.hidden_dim = 2048;
  c.vocab_size = 262144;
  c.tied_embeddings = true;
  c.prefers_bf16 = true;
  c.layer_window.assign(18, 512);
  for (int l = 5; l < 18; l += 6) c.layer_window[l] = 0;
  return c;
}

RuntimeOptions at(Runtime r, int64_t ctx, std::string kv = "", bool fa = true) {
  RuntimeOptions o;
  o.runtime = r;
  o.ctx = ctx;
  o.kv_cache = std::move(kv);
  o.flash_attention = fa;
  return o;
}

}  // namespace

TEST(RuntimeMemory, Names) {
  EXPECT_EQ(runtime_names(), "optiq-cpu, optiq-cuda, llamacpp, llamacpp-gpu, mlx");
  for (Runtime r : {Runtime::OptiqCpu, Runtime::OptiqCuda, Runtime::LlamaCpp, Runtime::LlamaCppGpu, Runtime::Mlx})
    EXPECT_EQ(parse_runtime(std::string(runtime_name(r))), r);
  EXPECT_TRUE(runtime_counts_gpu_memory(Runtime::OptiqCuda));
  EXPECT_TRUE(runtime_counts_gpu_memory(Runtime::LlamaCppGpu));
  EXPECT_FALSE(runtime_counts_gpu_memory(Runtime::LlamaCpp));
  EXPECT_FALSE(runtime_counts_gpu_memory(Runtime::Mlx));
  EXPECT_EQ(runtime_label(Runtime::LlamaCpp, 8192), "llama.cpp (CPU, ctx 8192)");
  EXPECT_EQ(runtime_label(Runtime::Mlx, 8192), "mlx-lm (ctx 8192)");
  EXPECT_EQ(runtime_label(Runtime::Mlx), "mlx-lm");
}

TEST(RuntimeMemory, UnknownRuntimeListsTheValidOnes) {
  const std::string e = error_of([] { parse_runtime("vllm"); });
  EXPECT_EQ(e, "--runtime 'vllm': unknown runtime; expected one of optiq-cpu, optiq-cuda, llamacpp, llamacpp-gpu, mlx");
  EXPECT_EQ(e.find('\n'), std::string::npos);
  EXPECT_NE(error_of([] { parse_runtime(""); }), "");
  EXPECT_NE(error_of([] { parse_runtime("LlamaCpp"); }), "");  // spelled as listed
}

TEST(RuntimeMemory, KvTypeBytes) {
  EXPECT_EQ(kv_type_bytes("f32"), 4.0);
  EXPECT_EQ(kv_type_bytes("f16"), 2.0);
  EXPECT_EQ(kv_type_bytes("bf16"), 2.0);
  EXPECT_EQ(kv_type_bytes("q8_0"), 34.0 / 32);
  EXPECT_EQ(kv_type_bytes("q4_0"), 18.0 / 32);
  EXPECT_EQ(kv_type_bytes("q5_1"), 24.0 / 32);
  EXPECT_NE(error_of([] { kv_type_bytes("q4_k"); }).find("q8_0"), std::string::npos);
}

// KV cache at ctx 8192: n_layers * 2 (K, V) * kv_dim * cells * element bytes.
TEST(RuntimeMemory, KvCacheLlama3_8B) {
  const ModelConfig c = llama3_8b();
  const int64_t f16 = int64_t(32) * 2 * 1024 * 8192 * 2;
  EXPECT_EQ(f16, 1'073'741'824);  // 1.07 GB
  EXPECT_EQ(kv_cache_bytes(c, at(Runtime::LlamaCpp, 8192)), f16);
  EXPECT_EQ(kv_cache_bytes(c, at(Runtime::LlamaCppGpu, 8192)), f16);
  EXPECT_EQ(kv_cache_bytes(c, at(Runtime::LlamaCpp, 8192, "q8_0")), 570'425'344);  // 34 bytes per 32
  EXPECT_EQ(kv_cache_bytes(c, at(Runtime::LlamaCpp, 8192, "q4_0")), 301'989'888);  // 18 bytes per 32
  EXPECT_EQ(kv_cache_bytes(c, at(Runtime::LlamaCpp, 8192, "f32")), 2 * f16);
  EXPECT_EQ(kv_cache_bytes(c, at(Runtime::OptiqCpu, 8192)), 2 * f16);      // fp32
  EXPECT_EQ(kv_cache_bytes(c, at(Runtime::OptiqCuda, 8192)), f16);         // fp16 under fast numerics
  EXPECT_EQ(kv_cache_bytes(c, at(Runtime::OptiqCuda, 8192, "f32")), 2 * f16);
  EXPECT_EQ(kv_cache_bytes(c, at(Runtime::Mlx, 8192)), f16);
  // Cells: llama.cpp pads the context to 256, mlx-lm grows in steps of 256, optiq takes it as given.
  const int64_t per_cell = int64_t(32) * 2 * 1024 * 2;
  EXPECT_EQ(kv_cache_bytes(c, at(Runtime::LlamaCpp, 1000)), 1024 * per_cell);
  EXPECT_EQ(kv_cache_bytes(c, at(Runtime::Mlx, 1000)), 1024 * per_cell);
  EXPECT_EQ(kv_cache_bytes(c, at(Runtime::Mlx, 1025)), 1280 * per_cell);
  EXPECT_EQ(kv_cache_bytes(c, at(Runtime::OptiqCpu, 1000)), 1000 * per_cell * 2);
  EXPECT_EQ(runtime_memory(c, at(Runtime::LlamaCpp, 1000)).kv_cells, 1024);
}

// Sliding-window layers: llama.cpp min(cells, window + n_ubatch) padded to 256, mlx-lm the window.
TEST(RuntimeMemory, KvCacheSlidingWindow) {
  const ModelConfig c = gemma3_270m();
  const int64_t cell = 2 * 256 * 2;  // K and V of one layer, f16/bf16
  const MemoryBreakdown l = runtime_memory(c, at(Runtime::LlamaCpp, 8192));
  EXPECT_EQ(l.kv_cells, 8192);
  EXPECT_EQ(l.swa_cells, 1024);
  EXPECT_EQ(l.kv_bytes, 3 * 8192 * cell + 15 * 1024 * cell);
  EXPECT_EQ(runtime_memory(c, at(Runtime::LlamaCpp, 700)).swa_cells, 768);  // min(768, 512 + 512)
  const MemoryBreakdown m = runtime_memory(c, at(Runtime::Mlx, 8192));
  EXPECT_EQ(m.kv_type, "bf16");
  EXPECT_EQ(m.swa_cells, 512);
  EXPECT_EQ(m.kv_bytes, 3 * 8192 * cell + 15 * 512 * cell);
  // optiq keeps every layer's whole context.
  EXPECT_EQ(runtime_memory(c, at(Runtime::OptiqCpu, 8192)).kv_bytes, 18 * 8192 * cell * 2);
  // Other families' windows (Phi-3's) are ignored by llama.cpp and mlx-lm.
  ModelConfig p = llama3_8b();
  p.family = "Phi-3";
  p.layer_window.assign(32, 2048);
  EXPECT_EQ(kv_cache_bytes(p, at(Runtime::LlamaCpp, 8192)), 1'073'741'824);
}

// llama.cpp's compute buffer for a ubatch of 512 over 8192 cells, by hand.
TEST(RuntimeMemory, LlamaCppComputeLlama3_8B) {
  const ModelConfig c = llama3_8b();
  const int64_t rows = 512, cells = 8192;
  const int64_t small = rows * (2 * 4096 + 2 * 4096 + 2 * 1024) * 4;  // x, xn, q, att, k, v
  // Flash attention: the largest is the output, 512 rows of logits.
  const int64_t output = rows * (128256 + 2 * 4096) * 4;
  EXPECT_EQ(output, 279'445'504);
  const int64_t mlp_fa = rows * cells * 2 + rows * (4 * 4096 + 3 * 14336) * 4;
  EXPECT_LT(mlp_fa, output);
  LlamaCppCompute fa = llamacpp_compute_bytes(c, rows, cells, 0, true);
  EXPECT_EQ(fa.graph, output);
  EXPECT_EQ(fa.output, 128256 * 4);
  // Without it the KQ scores (fp32, every head) and an fp32 mask dominate.
  const int64_t attention = rows * cells * 4 + rows * cells * 32 * 4 + small;
  EXPECT_EQ(attention, 591'396'864);
  EXPECT_EQ(llamacpp_compute_bytes(c, rows, cells, 0, false).graph, attention);
  // The CPU runtime counts the output buffer; the GPU one leaves it in CPU memory.
  const MemoryBreakdown cpu = runtime_memory(c, at(Runtime::LlamaCpp, 8192));
  EXPECT_EQ(cpu.compute_bytes, output + 128256 * 4);
  EXPECT_EQ(cpu.runtime_bytes, 64ll << 20);
  const MemoryBreakdown gpu = runtime_memory(c, at(Runtime::LlamaCppGpu, 8192, "", false));
  EXPECT_EQ(gpu.compute_bytes, attention);
  ASSERT_EQ(gpu.host_buffers.size(), 1u);
  EXPECT_EQ(gpu.host_buffers[0].second, 128256 * 4);
  // A short context: the ubatch is the context (llama.cpp's n_batch = min(n_ctx, n_batch)).
  EXPECT_EQ(runtime_memory(c, at(Runtime::LlamaCpp, 300)).batch, 512);
  EXPECT_EQ(runtime_memory(c, at(Runtime::LlamaCpp, 300)).compute_bytes,
            llamacpp_compute_bytes(c, 300, 512, 0, true).graph + 128256 * 4);
}

TEST(RuntimeMemory, MlxComputeLlama3_8B) {
  const ModelConfig c = llama3_8b();
  const int64_t activations = 2048 * (2 * 4096 + 2 * 4096 + 2 * 1024 + 3 * 14336) * 2;
  const int64_t layer_kv = 2 * 8192 * 1024 * 2;
  EXPECT_TRUE(mlx_fused_prefill_attention(128));  // no score matrix on Metal
  EXPECT_EQ(runtime_memory(c, at(Runtime::Mlx, 8192)).compute_bytes, activations + 128256 * 8 + layer_kv);
  // Head size 256 (Gemma) runs the unfused attention: scores and probabilities of a chunk, fp16.
  EXPECT_FALSE(mlx_fused_prefill_attention(256));
  ModelConfig g = c;
  g.head_dim = 256;
  EXPECT_EQ(mlx_compute_bytes(g, 2048, 8192, 0) - mlx_compute_bytes(c, 2048, 8192, 0),
            int64_t(2) * 32 * 2048 * 8192 * 2 + int64_t(2048) * (2 * 32 * 128 + 2 * 8 * 128) * 2);
}

TEST(RuntimeMemory, OptiqComputeLlama3_8B) {
  const ModelConfig c = llama3_8b();
  // CPU: 512 rows of activations, 16 threads x 16 rows of scores, one row of logits.
  EXPECT_EQ(runtime_memory(c, at(Runtime::OptiqCpu, 8192)).compute_bytes,
            int64_t(512) * (4096 + 4096 + 2 * 4096 + 2 * 1024 + 2 * 14336) * 4 + int64_t(16) * 16 * 8192 * 4 +
                128256 * 4);
  // CUDA: passes of 4096 rows; with the fp16 cache of fast numerics the flash kernel attends (no
  // buffers); with an fp32 cache (exact numerics) prefill attention takes blocks of 512 rows (512 x 8192
  // fp32 scores per head = 512 MiB).
  const int64_t rows = 4096;
  const int64_t activations = rows * (4096 + 4096 + 2 * 4096 + 2 * 1024 + 2 * 14336) * 4;
  const int64_t input_half = rows * 14336 * 2;
  const int64_t slab = int64_t(256) << 20;  // the lm_head expanded 256 MiB at a time
  const MemoryBreakdown m = runtime_memory(c, at(Runtime::OptiqCuda, 8192));
  EXPECT_EQ(m.compute_bytes, activations + input_half + slab + 128256 * 4);
  EXPECT_EQ(m.compute_bytes, 1'158'140'928);
  EXPECT_EQ(m.runtime_bytes, (512ll + 32) << 20);
  const int64_t scores = int64_t(32) * 512 * 8192;
  EXPECT_EQ(runtime_memory(c, at(Runtime::OptiqCuda, 8192, "f32")).compute_bytes,
            activations + input_half + slab + scores * 4 + 128256 * 4);
  // Gemma 3's head width 256 takes the flash kernel too; widths it does not
  // take (32 here) keep scores, fp16 probabilities and fp16 queries.
  ModelConfig wide = c;
  wide.head_dim = 256;
  wide.n_heads = 16, wide.n_kv_heads = 4;  // the same q_dim and kv_dim
  EXPECT_EQ(runtime_memory(wide, at(Runtime::OptiqCuda, 8192)).compute_bytes, m.compute_bytes);
  ModelConfig narrow = c;
  narrow.head_dim = 32;
  narrow.n_heads = 128, narrow.n_kv_heads = 32;
  const int64_t narrow_scores = int64_t(128) * 128 * 8192;  // 128 rows a block at 128 heads
  EXPECT_EQ(runtime_memory(narrow, at(Runtime::OptiqCuda, 8192)).compute_bytes,
            activations + input_half + slab + narrow_scores * 6 + rows * 4096 * 2 + 128256 * 4);
  EXPECT_TRUE(optiq_cuda_flash_prefill(128, true));
  EXPECT_FALSE(optiq_cuda_flash_prefill(128, false));
  EXPECT_TRUE(optiq_cuda_flash_prefill(256, true));
  EXPECT_FALSE(optiq_cuda_flash_prefill(32, true));
}

TEST(RuntimeMemory, BadInput) {
  const ModelConfig c = llama3_8b();
  std::string e = error_of([&] { runtime_memory(c, at(Runtime::OptiqCpu, 8192, "q8_0")); });
  EXPECT_EQ(e, "--kv-cache q8_0: optiq-cpu stores its KV cache as f32");
  e = error_of([&] { runtime_memory(c, at(Runtime::LlamaCpp, 8192, "q4_k")); });
  EXPECT_NE(e.find("f16, f32, bf16, q8_0"), std::string::npos) << e;
  e = error_of([&] { runtime_memory(c, at(Runtime::LlamaCpp, 8192, "q4_0", false)); });
  EXPECT_NE(e.find("flash attention"), std::string::npos) << e;
  e = error_of([&] { runtime_memory(c, at(Runtime::Mlx, 8192, "f32")); });
  EXPECT_EQ(e, "--kv-cache f32: mlx stores its KV cache as f16");
  EXPECT_NE(error_of([&] { runtime_memory(c, at(Runtime::LlamaCpp, 0)); }).find("--ctx"), std::string::npos);
  ModelConfig tiny = test::plan_test_config(2);
  tiny.head_dim = 8;  // stories260K's heads: q8_0 blocks of 32 do not divide them
  tiny.n_heads = 8;
  tiny.n_kv_heads = 4;
  e = error_of([&] { runtime_memory(tiny, at(Runtime::LlamaCpp, 512, "q8_0")); });
  EXPECT_NE(e.find("blocks of 32"), std::string::npos) << e;
}

TEST(RuntimeMemory, FitLineAndJson) {
  const ModelConfig c = test::plan_test_config(6);
  PrecisionMap plan;
  for (const auto& m : quantizable_modules(c)) plan.formats[m.path] = AffineFormat{4, 64};
  // The memory: what the runtime holds plus 10 MB for the weights (within the model's range).
  auto fit_for = [&](const RuntimeOptions& r) {
    return std::to_string(runtime_memory(c, r).reserved() + 10'000'000) + "B";
  };
  BudgetOptions o;
  o.runtime = at(Runtime::LlamaCpp, 4096);
  o.fit = fit_for(o.runtime);
  Budget b = resolve_budget(o, c);
  EXPECT_EQ(b.weight_bytes, 10'000'000);
  const int64_t weights = plan_bytes(c, plan);
  std::string line = memory_fit_line(b, c, plan.formats);
  EXPECT_EQ(line.rfind("fits " + format_bytes(b.fit_bytes) + " on llama.cpp (CPU, ctx 4096): weights ", 0), 0u)
      << line;
  EXPECT_NE(line.find("+ KV cache f16 " + format_bytes(b.memory->kv_bytes)), std::string::npos) << line;
  EXPECT_NE(line.find("= " + format_bytes(weights + b.memory->reserved())), std::string::npos) << line;
  nlohmann::json j = memory_fit_json(b, c, plan.formats);
  EXPECT_EQ(j["runtime"], "llamacpp");
  EXPECT_EQ(j["counted"], "CPU memory");
  EXPECT_EQ(j["kv_cells"], 4096);
  EXPECT_EQ(j["flash_attention"], true);
  EXPECT_EQ(j["weights_bytes"], weights);
  EXPECT_EQ(j["total_bytes"].get<int64_t>(),
            weights + j["kv_cache_bytes"].get<int64_t>() + j["compute_bytes"].get<int64_t>() +
                j["runtime_bytes"].get<int64_t>());
  EXPECT_FALSE(j.contains("cpu_buffers"));
  // On the GPU: says so, and names what stays in CPU memory.
  o.runtime = at(Runtime::LlamaCppGpu, 4096);
  o.fit = fit_for(o.runtime);
  b = resolve_budget(o, c);
  line = memory_fit_line(b, c, plan.formats);
  EXPECT_NE(line.find("of GPU memory on llama.cpp (every layer on the GPU, ctx 4096)"), std::string::npos) << line;
  EXPECT_NE(line.find("in CPU memory: logits buffer"), std::string::npos) << line;
  EXPECT_NE(line.find("token embeddings"), std::string::npos) << line;
  j = memory_fit_json(b, c, plan.formats);
  EXPECT_EQ(j["counted"], "GPU memory");
  EXPECT_EQ(j["cpu_buffers"]["logits buffer"], 1003 * 4);
  EXPECT_EQ(j["cpu_buffers"]["token embeddings"], module_bytes(quantizable_modules(c).front(), AffineFormat{4, 64}));
  // A budget without --fit has no breakdown.
  BudgetOptions bpw;
  bpw.bpw = "4.5";
  EXPECT_NE(error_of([&] { memory_fit_line(resolve_budget(bpw, c), c, plan.formats); }).find("not a --fit"),
            std::string::npos);
}
