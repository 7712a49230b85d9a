#include "profile/calibration.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/diagnostics.h"
#include "core/error.h"
#include "core/progress.h"
#include "model/sampler.h"
#include "model/transformer.h"

namespace optiq {

std::string read_calibration_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot read calibration file", path);
  if (!path.ends_with(".jsonl")) {
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  std::string line, text;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      auto j = nlohmann::json::parse(line);
      check(j.is_object() && j.contains("text") && j["text"].is_string(),
            "{}:{}: expected a JSON object with a \"text\" string", path, lineno);
      if (!text.empty()) text += "\n\n";
      text += j["text"].get<std::string>();
    } catch (const nlohmann::json::exception& e) {
      fail("{}:{}: not valid JSON: {}", path, lineno, e.what());
    }
  }
  check(!text.empty(), "{}: no \"text\" in any line", path);
  return text;
}

bool same_file(const std::string& a, const std::string& b) {
  std::error_code ec;
  return std::filesystem::equivalent(a, b, ec);
}

namespace {

std::vector<std::vector<int32_t>> self_generated(const Model& m, const CalibrationOptions& opt) {
  const int bos = m.tokenizer->bos();
  check(bos >= 0, "self-generated calibration text needs a model with a BOS token to start from");
  Transformer tf(m, opt.seq);
  Sampler sampler({.temperature = 1.0f, .top_k = 0, .top_p = 1.0f, .seed = opt.seed});
  std::vector<std::vector<int32_t>> out;
  Progress progress("calib self", static_cast<int64_t>(opt.samples) * opt.seq, "tokens");
  for (int s = 0; s < opt.samples; ++s) {
    std::vector<int32_t> w = {bos};
    tf.reset();
    std::vector<float> logits = tf.forward_last(w);
    while (static_cast<int>(w.size()) < opt.seq) {
      int32_t t = sampler.sample(logits);
      if (m.tokenizer->is_eog(t)) t = bos;  // keep going: a new "document"
      w.push_back(t);
      if (static_cast<int>(w.size()) < opt.seq) tf.forward(std::span<const int32_t>(&t, 1), logits.data(), 0);
      progress.update(static_cast<int64_t>(s) * opt.seq + static_cast<int64_t>(w.size()));
    }
    out.push_back(std::move(w));
  }
  progress.finish();
  return out;
}

}  // namespace

std::vector<std::vector<int32_t>> calibration_windows(const Model& m, const CalibrationOptions& opt) {
  check(opt.samples > 0, "calibration: the number of windows must be positive (got {})", opt.samples);
  check(opt.seq >= 8, "calibration: windows must hold at least 8 tokens (got {})", opt.seq);
  check(opt.seq <= m.config.max_seq, "calibration: windows of {} tokens exceed the model's context of {}", opt.seq, m.config.max_seq);
  if (opt.source == "self") return self_generated(m, opt);
  const std::vector<int32_t> ids = m.tokenizer->encode(read_calibration_text(opt.source), /*add_bos=*/false);
  const int64_t body = opt.seq - (m.tokenizer->adds_bos() ? 1 : 0);
  const int64_t slots = static_cast<int64_t>(ids.size()) / body;
  check(slots > 0, "{}: {} tokens, fewer than one calibration window of {}", opt.source, ids.size(), opt.seq);
  std::vector<int64_t> order(slots);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(opt.seed);
  std::shuffle(order.begin(), order.end(), rng);
  if (slots < opt.samples)
    warn("{} holds only {} windows of {} tokens; using all of them", opt.source, slots, opt.seq);
  order.resize(std::min<int64_t>(slots, opt.samples));
  std::sort(order.begin(), order.end());  // file order: reproducible and cache-friendly
  std::vector<std::vector<int32_t>> out;
  for (int64_t s : order) {
    std::vector<int32_t> w;
    if (m.tokenizer->adds_bos()) w.push_back(m.tokenizer->bos());
    w.insert(w.end(), ids.begin() + s * body, ids.begin() + (s + 1) * body);
    out.push_back(std::move(w));
  }
  return out;
}

}  // namespace optiq
