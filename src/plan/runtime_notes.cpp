#include "plan/runtime_notes.h"

#include <fmt/format.h>

#include "model/precision.h"

namespace optiq {

std::vector<std::string> llamacpp_speed_notes(const ModelConfig& config,
                                              const std::map<std::string, TensorFormat>& formats) {
  int64_t total = 0, slow = 0;
  for (const auto& m : quantizable_modules(config)) {
    total += m.numel();
    auto it = formats.find(m.path);
    if (it == formats.end() || !it->second.ggml()) continue;
    const DType t = format_for_shape(it->second, m.cols).ggml()->type;
    if (t == DType::Q5_0 || t == DType::Q5_1) slow += m.numel();
  }
  std::vector<std::string> notes;
  // SmolLM2-135M, llama.cpp CPU decode at equal file size: plans with 50-70%
  // of their weights in Q5_0/Q5_1 ran at 0.82-0.84x of llama.cpp's own file.
  if (total > 0 && slow * 4 > total)
    notes.push_back(fmt::format(
        "{:.0f}% of the weights are Q5_0/Q5_1 (k-quants stored as llama.cpp's fallback); llama.cpp's CPU decoded "
        "such mixes up to ~18% slower than its own file of the same size (BENCHMARKS.md §8); --candidates without "
        "q4_k/q5_k avoids them at some cost in quality",
        100.0 * static_cast<double>(slow) / static_cast<double>(total)));
  return notes;
}

}  // namespace optiq
