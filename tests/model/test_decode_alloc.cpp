// Decode does no heap allocation per token once the scratch has grown: a
// global operator new counter around forward() of tiny fp32 and fp16 models
// of several families (the affine matmul's per-call sums are not covered).
#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <new>

#include "core/half.h"
#include "model/transformer.h"
#include "test_models.h"
#include "test_util.h"

namespace {
std::atomic<bool> g_counting{false};
std::atomic<long> g_allocs{0};
}  // namespace

// clang's TSan runtime is linked statically and defines every operator new and
// delete itself: no replacement can link there, and the test skips.
#if defined(__SANITIZE_THREAD__)
#define OPTIQ_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define OPTIQ_TSAN 1
#endif
#endif

#ifndef OPTIQ_TSAN
// GCC inlines this operator new (std::malloc) into callers of the deletes
// below and calls their free() mismatched; it is the replacement's own pair.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
void* operator new(std::size_t n) {
  if (g_counting.load(std::memory_order_relaxed)) g_allocs.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
// The nothrow forms too (std::stable_sort's temporary buffer uses them): left
// to the runtime, ASan's nothrow new paired with the free() above is an
// alloc-dealloc mismatch.
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  try {
    return operator new(n);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void operator delete(void* p, const std::nothrow_t&) noexcept { std::free(p); }
void operator delete[](void* p, const std::nothrow_t&) noexcept { std::free(p); }
#endif

namespace optiq {
namespace {

ModelConfig config(bool gemma) {
  ModelConfig c;
  c.arch = gemma ? "gemma3" : "llama";
  c.dim = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 16, c.hidden_dim = 96;
  c.vocab_size = 97, c.max_seq = 64;
  if (gemma) {
    c.activation = Activation::GeluTanh, c.qk_norm = true, c.sandwich_norms = true, c.tied_embeddings = true;
    c.attn_softcap = 20.0f, c.final_softcap = 15.0f, c.layer_window = {4, 0};
    c.rope_theta = 1e6f, c.rope_theta_local = 1e4f;
  }
  c.validate(c.arch);
  return c;
}

}  // namespace

TEST(DecodeAlloc, NoHeapAllocationPerToken) {
#ifdef OPTIQ_TSAN
  GTEST_SKIP() << "operator new belongs to TSan's runtime here";
#endif
  {  // the counter sees allocations
    g_allocs = 0;
    g_counting = true;
    auto p = std::make_unique<std::vector<float>>(3);
    g_counting = false;
    ASSERT_EQ(g_allocs.load(), 2);
  }
  for (bool gemma : {false, true})
    for (bool half : {false, true})
      for (bool llamacpp : {false, true}) {
        Model m = test::random_model(config(gemma), 3, half);
        m.llamacpp_numerics = llamacpp;
        Transformer t(m, 48);
        std::vector<float> logits(m.config.vocab_size);
        const int32_t first[] = {1, 2, 3, 4, 5};
        t.forward(first, logits.data(), 4);
        // Warm-up decode steps grow the thread_local scratch to its final size.
        for (int32_t id = 0; id < 4; ++id) t.forward(std::span(&id, 1), logits.data(), 0);
        g_allocs = 0;
        g_counting = true;
        for (int32_t id = 10; id < 30; ++id) t.forward(std::span(&id, 1), logits.data(), 0);
        g_counting = false;
        EXPECT_EQ(g_allocs.load(), 0) << (gemma ? "gemma3" : "llama") << (half ? " f16" : " f32")
                                      << (llamacpp ? " llamacpp" : "");
      }
}

}  // namespace optiq
