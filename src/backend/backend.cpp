// What every backend shares: the KV cache layout and the registry of backends.
#include "backend/backend.h"

#include <string>

#include "core/error.h"

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

Backend& default_backend() { return cpu_backend(); }

std::vector<Backend*> available_backends() { return {&cpu_backend()}; }

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
