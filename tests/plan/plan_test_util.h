#pragma once
#include "model/config.h"

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

}  // namespace optiq::test
