#pragma once
#include <string>
#include <vector>

#include "core/error.h"
#include "model/config.h"
#include "plan/budget.h"

namespace optiq::test {

// A small Llama-shaped config (odd-ish sizes, GQA).
inline ModelConfig plan_test_config(int n_layers = 30, bool tied = false) {
  ModelConfig c;
  c.dim = 384;
  c.n_layers = n_layers;
  c.n_heads = 6;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.hidden_dim = 1024;
  c.vocab_size = 1003;
  c.tied_embeddings = tied;
  return c;
}

// Every tensor format the planner knows (the registry's list, built once).
inline const std::vector<TensorFormat> kFormats = all_tensor_formats();

// The message of the optiq::Error that f() throws ("" when none).
inline std::string error_of(auto&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace optiq::test
