// The CUDA backend runs whole models as the CPU does: logits of stories260K
// (fp32, packed affine, GGUF blocks) and of a tiny random model of every
// family, batched prefill and token by token (recorded steps replayed),
// perplexity, the accuracy path (fake quantization) equal to the runtime
// path (packed kernels), and profiles (exact KL, Gram proxies) equal to the CPU's. Every test skips when no GPU is visible (label gpu).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>

#include "backend/backend.h"
#include "eval/perplexity.h"
#include "kernels/act_quant.h"
#include "kernels/elementwise.h"
#include "model/calibration_stats.h"
#include "model/device_weights.h"
#include "model/quantize_model.h"
#include "model/transformer.h"
#include "profile/calibration.h"
#include "profile/sensitivity.h"
#include "test_models.h"
#include "test_util.h"

namespace optiq {
namespace {

#define REQUIRE_GPU()                                             \
  if (cuda_backend() == nullptr) GTEST_SKIP() << "no GPU visible"

struct Numerics {  // process-wide int8 switch, restored on exit
  bool saved = kernels::decode_int8_enabled();
  explicit Numerics(bool fast) { kernels::set_decode_int8(fast); }
  ~Numerics() { kernels::set_decode_int8(saved); }
};

using test::stories;

// Logits of every position: batched (one call) or token by token.
std::vector<float> run(const DeviceWeights& w, std::span<const int32_t> ids, bool stepwise, bool record = true,
                       int ctx = 64) {
  const int64_t vocab = w.model().config.vocab_size, n = static_cast<int64_t>(ids.size());
  Transformer tf(w, ctx);
  tf.set_record_steps(record);
  std::vector<float> out(static_cast<size_t>(n * vocab));
  if (!stepwise) {
    tf.forward(ids, out.data(), 0);
  } else {
    for (int64_t i = 0; i < n; ++i) tf.forward(ids.subspan(i, 1), out.data() + i * vocab, 0);
  }
  return out;
}

struct Agreement {
  double rel = 0;   // ||a - b|| / ||b||
  double top1 = 0;  // fraction of rows with the same argmax
};
Agreement agree(const std::vector<float>& a, const std::vector<float>& b, int64_t vocab) {
  double num = 0, den = 0;
  int64_t same = 0;
  const int64_t rows = static_cast<int64_t>(b.size()) / vocab;
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a.data() + r * vocab;
    const float* y = b.data() + r * vocab;
    for (int64_t v = 0; v < vocab; ++v) {
      num += double(x[v] - y[v]) * (x[v] - y[v]);
      den += double(y[v]) * y[v];
      EXPECT_TRUE(std::isfinite(x[v]));
    }
    same += std::max_element(x, x + vocab) - x == std::max_element(y, y + vocab) - y;
  }
  return {std::sqrt(num / den), double(same) / rows};
}

std::vector<int32_t> prompt(const Model& m) {
  std::vector<int32_t> ids = m.tokenizer->encode("Once upon a time, there was a little dog named Max. He liked to", true);
  return ids;
}

TEST(CudaModel, Stories260KLogitsEqualCpu) {
  REQUIRE_GPU();
  const Model m = load_model(stories());
  const auto ids = prompt(m);
  ASSERT_GT(ids.size(), size_t{9}) << "the batched call must take the prefill path";
  const int64_t vocab = m.config.vocab_size;
  Numerics exact(false);
  const DeviceWeights cpu(m, cpu_backend()), gpu(m, *cuda_backend());
  const auto ref = run(cpu, ids, false);
  for (bool stepwise : {false, true}) {
    const Agreement a = agree(run(gpu, ids, stepwise), ref, vocab);
    EXPECT_LT(a.rel, 1e-4) << (stepwise ? "token by token" : "batched");
    EXPECT_EQ(a.top1, 1.0) << (stepwise ? "token by token" : "batched");
  }
}

TEST(CudaModel, RecordedStepsEqualDirectSteps) {
  REQUIRE_GPU();
  const Model m = load_model(stories());
  const auto ids = prompt(m);
  for (bool fast : {false, true}) {
    Numerics n(fast);
    const DeviceWeights gpu(m, *cuda_backend());
    EXPECT_EQ(run(gpu, ids, true, true), run(gpu, ids, true, false)) << (fast ? "fast" : "exact");
  }
}

// Greedy steps (the pick on the device, recorded or not) pick the argmax of
// the same step's logits; switching between the two outputs re-records.
TEST(CudaModel, GreedyStepsPickTheLogitsArgmax) {
  REQUIRE_GPU();
  const Model m = load_model(stories());
  const auto ids = prompt(m);
  const int64_t vocab = m.config.vocab_size;
  for (bool record : {true, false}) {
    Numerics fast(true);
    const DeviceWeights gpu(m, *cuda_backend());
    Transformer with_logits(gpu, 64), greedy(gpu, 64);
    with_logits.set_record_steps(record);
    greedy.set_record_steps(record);
    std::vector<float> logits(static_cast<size_t>(vocab));
    for (size_t i = 0; i < ids.size(); ++i) {
      with_logits.forward(std::span<const int32_t>(&ids[i], 1), logits.data(), 0);
      const int64_t want = argmax(logits.data(), vocab);
      if (i % 5 == 4) {  // the logits now and then: the recorded step changes output and back
        std::vector<float> again(static_cast<size_t>(vocab));
        greedy.forward(std::span<const int32_t>(&ids[i], 1), again.data(), 0);
        EXPECT_EQ(again, logits) << "step " << i;
      } else {
        EXPECT_EQ(greedy.forward_greedy(ids[i]), want) << "step " << i << (record ? " recorded" : " direct");
      }
    }
  }
}

// Recorded decode steps of packed affine models run their products, norms
// and roundings as persistent launches (persistent.cu); direct steps launch
// each kernel: the same bits, uniform and with a different width per module
// (q, k and v of different widths do not group; 2 to 8 bits).
TEST(CudaModel, PersistentStepsEqualDirectSteps) {
  REQUIRE_GPU();
  Numerics fast(true);
  struct On {  // OPTIQ_CUDA_PERSISTENT=1 for this test's recordings (read at each)
    std::string saved = std::getenv("OPTIQ_CUDA_PERSISTENT") ? std::getenv("OPTIQ_CUDA_PERSISTENT") : "";
    On() { setenv("OPTIQ_CUDA_PERSISTENT", "1", 1); }
    ~On() {
      if (saved.empty())
        unsetenv("OPTIQ_CUDA_PERSISTENT");
      else
        setenv("OPTIQ_CUDA_PERSISTENT", saved.c_str(), 1);
    }
  } on;
  ModelConfig c = test::tiny("llama");
  c.dim = 128, c.n_heads = 2, c.n_kv_heads = 1, c.head_dim = 64, c.hidden_dim = 320, c.n_layers = 2;
  c.vocab_size = 96;
  c.validate("llama");
  const auto ids = test::random_ids(12, c.vocab_size, 5);
  const char* widths[] = {"q4g64", "q8g32", "q2g32", "q6g64", "q3g32", "q5g32"};
  for (bool mixed : {false, true}) {
    Model m = test::random_model(c, 17);
    PrecisionMap map = PrecisionMap::uniform(c, parse_tensor_format("q4g64"));
    if (mixed) {
      size_t i = 0;
      for (const ModuleInfo& mod : quantizable_modules(c)) map.formats[mod.path] = parse_tensor_format(widths[i++ % 6]);
    }
    quantize_model(m, map, QuantizeModelOptions{.recipe = QuantizeRecipe::for_model(c), .progress = false});
    const DeviceWeights gpu(m, *cuda_backend());
    EXPECT_EQ(run(gpu, ids, true, true), run(gpu, ids, true, false)) << (mixed ? "mixed" : "q4g64");
  }
}

// Under fast numerics a prompt's attention at head widths 64 and 128 is the
// flash kernel (fp16 cache): 80 tokens in one call (two tiles of query rows,
// two of keys) give the logits of the CPU and of the same tokens one at a time
// (the decode kernels).
TEST(CudaModel, FlashPrefillAgreesWithCpuAndDecodeSteps) {
  REQUIRE_GPU();
  for (const int hd : {64, 128}) {
    ModelConfig c = test::tiny("llama");
    c.dim = 256, c.head_dim = hd, c.n_heads = 256 / hd, c.n_kv_heads = c.n_heads / 2;
    c.hidden_dim = 320, c.n_layers = 2, c.vocab_size = 96;
    c.validate("llama");
    const Model m = test::random_model(c, 23);
    const auto ids = test::random_ids(80, c.vocab_size, 9);
    std::vector<float> ref;
    {
      Numerics exact(false);
      ref = run(DeviceWeights(m, cpu_backend()), ids, false, true, 96);
    }
    Numerics fast(true);
    const DeviceWeights gpu(m, *cuda_backend());
    const auto batched = run(gpu, ids, false, true, 96), steps = run(gpu, ids, true, true, 96);
    const Agreement to_cpu = agree(batched, ref, c.vocab_size), to_steps = agree(batched, steps, c.vocab_size);
    EXPECT_LT(to_cpu.rel, 5e-3) << "head_dim " << hd;
    EXPECT_GE(to_cpu.top1, 0.9) << "head_dim " << hd;
    EXPECT_LT(to_steps.rel, 5e-3) << "head_dim " << hd;
    EXPECT_GE(to_steps.top1, 0.9) << "head_dim " << hd;
  }
}

TEST(CudaModel, FastNumericsStayClose) {
  REQUIRE_GPU();
  const Model m = load_model(stories());
  const auto ids = prompt(m);
  std::vector<float> ref;
  {
    Numerics exact(false);
    ref = run(DeviceWeights(m, cpu_backend()), ids, false);
  }
  Numerics fast(true);
  const DeviceWeights gpu(m, *cuda_backend());
  for (bool stepwise : {false, true}) {
    const Agreement a = agree(run(gpu, ids, stepwise), ref, m.config.vocab_size);
    EXPECT_LT(a.rel, 5e-3) << (stepwise ? "token by token" : "batched");
    EXPECT_GE(a.top1, 0.9) << (stepwise ? "token by token" : "batched");
  }
}

// Packed affine and GGUF-block models on the GPU give the logits of their
// fake-quantized fp32 copies on the CPU (runtime path == accuracy path).
TEST(CudaModel, PackedFormatsEqualFakeQuantOnCpu) {
  REQUIRE_GPU();
  Numerics exact(false);
  for (const char* spec : {"q4g32", "q3g64", "q8g32", "q2g32", "q5g64", "q6g32"}) {
    const TensorFormat f = parse_tensor_format(spec);
    for (bool bf16 : {false, true}) {
      Model packed = load_model(stories()), fake = load_model(stories());
      const PrecisionMap map = PrecisionMap::uniform(packed.config, f);
      QuantizeModelOptions po{.recipe = QuantizeRecipe::for_model(packed.config), .progress = false};
      po.recipe.bf16_scales = bf16;
      quantize_model(packed, map, po);
      po.fake = true;
      quantize_model(fake, map, po);
      const auto ids = prompt(packed);
      const auto ref = run(DeviceWeights(fake, cpu_backend()), ids, false);
      const DeviceWeights gpu(packed, *cuda_backend());
      for (bool stepwise : {false, true}) {
        const Agreement a = agree(run(gpu, ids, stepwise), ref, packed.config.vocab_size);
        EXPECT_LT(a.rel, 1e-4) << spec << (bf16 ? " bf16" : " fp16") << (stepwise ? " token by token" : " batched");
        EXPECT_EQ(a.top1, 1.0) << spec;
      }
    }
  }
  for (DType t : {DType::Q8_0, DType::Q4_0}) {
    const TensorFormat f{GgmlFormat{t}};
    Model packed = load_model(stories()), fake = load_model(stories());
    const PrecisionMap map = PrecisionMap::uniform(packed.config, f);
    QuantizeModelOptions po{.recipe = QuantizeRecipe::for_model(packed.config), .progress = false};
    quantize_model(packed, map, po);
    po.fake = true;
    quantize_model(fake, map, po);
    const auto ids = prompt(packed);
    const Agreement a = agree(run(DeviceWeights(packed, *cuda_backend()), ids, true),
                              run(DeviceWeights(fake, cpu_backend()), ids, false), packed.config.vocab_size);
    EXPECT_LT(a.rel, 1e-4) << dtype_name(t);
  }
}

class CudaFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaFamily, LogitsEqualCpu) {
  REQUIRE_GPU();
  const ModelConfig c = test::tiny(GetParam());
  const Model m = test::random_model(c, 11);
  const auto ids = test::random_ids(21, c.vocab_size, 3);
  for (bool fast : {false, true}) {
    Numerics n(fast);
    const auto ref = run(DeviceWeights(m, cpu_backend()), ids, false);
    const DeviceWeights gpu(m, *cuda_backend());
    for (bool stepwise : {false, true}) {
      const Agreement a = agree(run(gpu, ids, stepwise), ref, c.vocab_size);
      // fast: the GPU keeps an fp16 KV cache and fp16 prefill GEMM operands.
      EXPECT_LT(a.rel, fast ? 3e-3 : 1e-4) << GetParam() << (fast ? " fast" : " exact")
                                           << (stepwise ? " token by token" : " batched");
      EXPECT_GE(a.top1, fast ? 0.95 : 1.0) << GetParam();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, CudaFamily, ::testing::Values("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3"));

TEST(CudaModel, PerplexityEqualsCpu) {
  REQUIRE_GPU();
  Numerics exact(false);
  Model m = load_model(stories());
  quantize_model(m, PrecisionMap::uniform(m.config, parse_tensor_format("q4g32")),
                 {.recipe = QuantizeRecipe::for_model(m.config), .progress = false});
  const std::string text = test::shared_dir() + "/data/tinystories/tinystories-valid-head.txt";
  std::ifstream in(text);
  ASSERT_TRUE(in) << text;
  std::string s((std::istreambuf_iterator<char>(in)), {});
  s.resize(std::min<size_t>(s.size(), 60000));
  const auto tokens = m.tokenizer->encode(s, true);
  PerplexityOptions o;
  o.ctx = 128;
  o.chunks = 12;
  o.progress = false;
  const PerplexityResult cpu = evaluate_perplexity(DeviceWeights(m, cpu_backend()), tokens, o);
  const PerplexityResult gpu = evaluate_perplexity(DeviceWeights(m, *cuda_backend()), tokens, o);
  EXPECT_EQ(cpu.tokens, gpu.tokens);
  EXPECT_NEAR(gpu.ppl / cpu.ppl, 1.0, 1e-3) << "cpu " << cpu.ppl << " gpu " << gpu.ppl;
}

CalibrationOptions stories_calibration(int samples, int seq) {
  CalibrationOptions co;
  co.source = test::shared_dir() + "/data/tinystories/tinystories-valid-head.txt";
  co.samples = samples;
  co.seq = seq;
  co.progress = false;
  return co;
}

// The exact and fast measurements of `candidates`, with the bf16 row stores a
// large model gets (store_f32_limit) exercised too.
ProfileOptions both_methods(const Model& m, const CalibrationOptions& co, std::vector<TensorFormat> candidates) {
  ProfileOptions o;
  o.method = ProfileMethod::Both;
  o.candidates = std::move(candidates);
  o.progress = false;
  o.source = make_profile_source(m.path, co);
  o.store_f32_limit = 1 << 16;
  return o;
}

// A profile made on backend b (the default backend restored afterwards, also on a throw).
SensitivityTable profile_on(Backend& b, const Model& m, const std::vector<std::vector<int32_t>>& windows,
                            const ProfileOptions& o) {
  struct Restore {
    Backend& saved = default_backend();
    ~Restore() { set_default_backend(saved); }
  } restore;
  set_default_backend(b);
  return profile_model(m, windows, o);
}

// `optiq quantize --method gptq` where the model runs on the GPU: the Gram
// sums summed on the device and GPTQ run there (model/gptq.h) give the
// host's matrices, up to codes that fp32 sums in another order round the
// other way.
TEST(CudaModel, GptqQuantizeEqualsCpu) {
  REQUIRE_GPU();
  Numerics exact(false);
  const Model src = load_model(stories());
  const auto windows = calibration_windows(src, stories_calibration(4, 96));
  const PrecisionMap map = PrecisionMap::uniform(src.config, AffineFormat{3, 32});
  auto quantized_on = [&](Backend& b) {
    struct Restore {
      Backend& saved = default_backend();
      ~Restore() { set_default_backend(saved); }
    } restore;
    set_default_backend(b);
    Model m = load_model(stories());
    const GramMap grams = collect_grams(m, windows, false);
    QuantizeModelOptions opt;
    opt.grams = &grams;
    opt.fake = true;
    opt.progress = false;
    quantize_model(m, map, opt);
    return m;
  };
  const Model cpu = quantized_on(cpu_backend()), gpu = quantized_on(*cuda_backend());
  int64_t same = 0, total = 0;
  for (const auto& mod : quantizable_modules(src.config)) {
    if (!map.format_of(mod.path)) continue;
    const auto a = module_linear(cpu.weights, mod).to_f32(), b = module_linear(gpu.weights, mod).to_f32(),
               w = module_linear(src.weights, mod).to_f32();
    ASSERT_EQ(a.size(), b.size()) << mod.path;
    int64_t s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += a[i] == b[i];
    EXPECT_GT(static_cast<double>(s) / static_cast<double>(a.size()), 0.8) << mod.path;
    EXPECT_NE(a, w) << mod.path;  // quantized at all
    same += s;
    total += static_cast<int64_t>(a.size());
  }
  ASSERT_GT(total, 0);
  EXPECT_GT(static_cast<double>(same) / static_cast<double>(total), 0.95);
}

// Profiling on the GPU (passes, Gram sums, log-probabilities and KL there)
// measures what the CPU measures: the same ranking of modules x candidates.
TEST(CudaModel, ProfileEqualsCpu) {
  REQUIRE_GPU();
  Numerics exact(false);
  const Model m = load_model(stories());
  const CalibrationOptions co = stories_calibration(6, 96);
  const auto windows = calibration_windows(m, co);
  ProfileOptions o = both_methods(m, co, {AffineFormat{2, 32}, AffineFormat{3, 64}, AffineFormat{4, 32}, AffineFormat{8, 64}});
  const SensitivityTable cpu = profile_on(cpu_backend(), m, windows, o),
                         gpu = profile_on(*cuda_backend(), m, windows, o);
  std::vector<double> kc, kg, pc, pg;
  for (size_t i = 0; i < cpu.modules.size(); ++i)
    for (const auto& [name, f] : cpu.modules[i].formats) {
      const FormatSensitivity& g = gpu.modules[i].formats.at(name);
      ASSERT_TRUE(f.kl && g.kl && f.proxy && g.proxy) << cpu.modules[i].module.path << " " << name;
      kc.push_back(*f.kl);
      kg.push_back(*g.kl);
      pc.push_back(*f.proxy);
      pg.push_back(*g.proxy);
      EXPECT_NEAR(*g.proxy / *f.proxy, 1.0, 1e-3) << cpu.modules[i].module.path << " " << name;
      EXPECT_NEAR(*g.kl, *f.kl, 1e-6 + 2e-3 * *f.kl) << cpu.modules[i].module.path << " " << name;
    }
  ASSERT_GT(kc.size(), 50u);
  EXPECT_GE(spearman(kc, kg), 0.99);
  EXPECT_GE(spearman(pc, pg), 0.999);
}

// The fast, weighted profile of stories260K on the CPU and on the GPU (with
// GPTQ among the roundings when `gptq`), paired module x format, each proxy
// within rel_tol of the other; how many modules kept the same rounding and
// how many the CPU rounded by GPTQ.
struct ProxyPairs {
  std::vector<double> cpu, gpu;
  int same_method = 0, cpu_gptq = 0;
};
ProxyPairs fast_profiles(int samples, int seq, std::vector<TensorFormat> candidates, bool gptq, double rel_tol) {
  Numerics exact(false);
  const Model m = load_model(stories());
  const CalibrationOptions co = stories_calibration(samples, seq);
  const auto windows = calibration_windows(m, co);
  ProfileOptions o = both_methods(m, co, std::move(candidates));
  o.method = ProfileMethod::Fast;
  o.weighted = true;
  o.gptq = gptq;
  const SensitivityTable cpu = profile_on(cpu_backend(), m, windows, o),
                         gpu = profile_on(*cuda_backend(), m, windows, o);
  ProxyPairs p;
  for (size_t i = 0; i < cpu.modules.size(); ++i)
    for (const auto& [name, f] : cpu.modules[i].formats) {
      const FormatSensitivity& g = gpu.modules[i].formats.at(name);
      EXPECT_TRUE(f.proxy && g.proxy) << cpu.modules[i].module.path << " " << name;
      if (!f.proxy || !g.proxy) continue;
      p.same_method += f.method == g.method;
      p.cpu_gptq += f.method == "gptq";
      p.cpu.push_back(*f.proxy);
      p.gpu.push_back(*g.proxy);
      EXPECT_NEAR(*g.proxy / *f.proxy, 1.0, rel_tol) << cpu.modules[i].module.path << " " << name;
    }
  return p;
}

// The weighted rounding (the CUDA fake quantization weighing its search) and
// input statistics kept as rows (96 calibration tokens: fewer than the
// 172-wide down projections' inputs; Backend::rows_quadratic) measure on the
// GPU what they measure on the CPU.
TEST(CudaModel, WeightedProfileWithInputRowsEqualsCpu) {
  REQUIRE_GPU();
  const ProxyPairs p = fast_profiles(2, 48, {AffineFormat{2, 32}, AffineFormat{4, 32}}, false, 1e-2);
  ASSERT_GT(p.cpu.size(), 20u);
  EXPECT_EQ(p.same_method, static_cast<int>(p.cpu.size()));
  EXPECT_GE(spearman(p.cpu, p.gpu), 0.999);
}

// With GPTQ among the roundings (--methods weighted,gptq) the GPU profile runs
// GPTQ on the device (model/gptq.h): its held-out proxies and the rounding
// each module keeps agree with the CPU's, which runs GPTQ on the host.
TEST(CudaModel, GptqProfileEqualsCpu) {
  REQUIRE_GPU();
  const ProxyPairs p = fast_profiles(4, 96, {AffineFormat{3, 32}, AffineFormat{4, 64}}, true, 0.05);
  ASSERT_GT(p.cpu.size(), 20u);
  EXPECT_GT(p.cpu_gptq, 0);  // GPTQ won somewhere, so the device's GPTQ was measured
  EXPECT_GE(p.same_method, static_cast<int>(p.cpu.size()) - 2);
  EXPECT_GE(spearman(p.cpu, p.gpu), 0.99);
}

// Within the device-memory headroom (ProfileOptions::device_headroom) the
// reference log-probabilities stay on the host, page-locked, and come in a
// window at a time: the same numbers as with all of them in device memory.
TEST(CudaModel, ProfileWithReferenceOnHostEqualsOnDevice) {
  REQUIRE_GPU();
  Numerics fast(true);
  const Model m = load_model(stories());
  const CalibrationOptions co = stories_calibration(4, 64);
  const auto windows = calibration_windows(m, co);
  ProfileOptions o = both_methods(m, co, {AffineFormat{3, 32}, AffineFormat{4, 64}});
  o.device_headroom = 1e9;  // everything kept on the device
  const SensitivityTable kept = profile_on(*cuda_backend(), m, windows, o);
  o.device_headroom = 0.0;  // nothing
  const SensitivityTable streamed = profile_on(*cuda_backend(), m, windows, o);
  ASSERT_EQ(kept.modules.size(), streamed.modules.size());
  for (size_t i = 0; i < kept.modules.size(); ++i)
    for (const auto& [name, f] : kept.modules[i].formats) {
      const FormatSensitivity& g = streamed.modules[i].formats.at(name);
      ASSERT_TRUE(f.kl && g.kl) << kept.modules[i].module.path << " " << name;
      EXPECT_EQ(*g.kl, *f.kl) << kept.modules[i].module.path << " " << name;
      EXPECT_EQ(*g.proxy, *f.proxy) << kept.modules[i].module.path << " " << name;
    }
}

}  // namespace
}  // namespace optiq
