// Tiny in-memory models of every family with random weights (no file), for
// tests that run the forward pass: shapes small enough for a debug build,
// every family quirk switched on.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/model.h"

namespace optiq::test {

// A config of `family` (llama, mistral, qwen2, qwen3, phi3, gemma3): dim 48,
// 3 layers, 4 heads over 2 kv heads, vocabulary 61, context 64.
ModelConfig tiny(const std::string& family);
// Weights ~ N(0, 1/cols) in fp32, or in fp16 storage (`half`, kept alive by
// the Model), norms ~ 1 + N(0, 0.2), biases ~ N(0, 0.3).
Model random_model(const ModelConfig& c, uint32_t seed, bool half = false);
std::vector<int32_t> random_ids(int n, int vocab, uint32_t seed);
// A SentencePiece vocabulary of `vocab` tokens (no file behind it): <unk>, <s>, </s>, then "▁t<i>".
std::unique_ptr<Tokenizer> tiny_tokenizer(int vocab);

}  // namespace optiq::test
