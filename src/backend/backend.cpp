// What every backend shares: the KV cache layout and the registry of backends.
#include "backend/backend.h"

#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#include "core/error.h"
#include "kernels/elementwise.h"

namespace optiq {

KVCache Backend::make_kv_cache(int layers, int max_ctx, int64_t kv_dim, bool f16) {
  KVCache c;
  c.layers = layers;
  c.max_ctx = max_ctx;
  c.kv_dim = kv_dim;
  c.f16 = f16;
  const int64_t n = static_cast<int64_t>(layers) * max_ctx * kv_dim;
  c.k = alloc(n);
  c.v = alloc(n);
  return c;
}

void Backend::argmax_to_host(const float* x, int64_t n, int32_t* host) {
  if (host_memory()) {
    *host = static_cast<int32_t>(argmax(x, n));
    return;
  }
  std::vector<float> values(static_cast<size_t>(std::max<int64_t>(n, 0)));
  to_host(x, n, values.data());
  *host = static_cast<int32_t>(argmax(values.data(), n));
}

namespace {
std::atomic<Backend*> g_default{nullptr};
}

Backend& default_backend() {
  Backend* b = g_default.load(std::memory_order_relaxed);
  return b ? *b : cpu_backend();
}

void set_default_backend(Backend& b) { g_default.store(&b, std::memory_order_relaxed); }

#ifndef OPTIQ_HAVE_CUDA
Backend* cuda_backend() { return nullptr; }
#endif

std::vector<Backend*> available_backends() {
  std::vector<Backend*> v = {&cpu_backend()};
  if (Backend* c = cuda_backend()) v.push_back(c);
  return v;
}

Backend& backend_named(std::string_view name) {
  std::string names;
  for (Backend* b : available_backends()) {
    if (b->name() == name) return *b;
    names += names.empty() ? "" : ", ";
    names += b->name();
  }
  fail("unknown backend '{}': this build has {}", name, names);
}

}  // namespace optiq
