// Profiling: the reference pass (log-probs, residual stream, Gram matrices),
// then one re-run from each module's layer per candidate format.
#include "profile/sensitivity.h"
#include "profile/sensitivity_detail.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <set>

#include <fmt/format.h>

#include "core/parallel.h"
#include "core/diagnostics.h"
#include "core/error.h"
#include "core/half.h"
#include "core/progress.h"
#include "eval/perplexity.h"
#include "kernels/matmul.h"
#include "model/quantize_model.h"
#include "model/transformer.h"

namespace optiq {

using profile_detail::empty_table;
using profile_detail::fitting;

namespace {

// Rows of floats kept as fp32, or bf16 when large.
class RowStore {
 public:
  void init(size_t n, bool bf16) {
    bf16_ = bf16;
    if (bf16) h_.assign(n, 0);
    else f_.assign(n, 0.0f);
  }
  void put(size_t off, const float* x, size_t n) {
    if (bf16_)
      for (size_t i = 0; i < n; ++i) h_[off + i] = f32_to_bf16(x[i]);
    else
      std::copy_n(x, n, f_.data() + off);
  }
  void get(size_t off, size_t n, float* out) const {
    if (bf16_)
      for (size_t i = 0; i < n; ++i) out[i] = bf16_to_f32(h_[off + i]);
    else
      std::copy_n(f_.data() + off, n, out);
  }
  float at(size_t i) const { return bf16_ ? bf16_to_f32(h_[i]) : f_[i]; }

 private:
  bool bf16_ = false;
  std::vector<float> f_;
  std::vector<uint16_t> h_;
};

// G += X^T X for n rows of `cols` (through the matmul kernel on X^T).
void accumulate_gram(std::vector<double>& g, const float* x, int64_t n, int64_t cols, std::vector<float>& xt,
                     std::vector<float>& y) {
  if (g.empty()) g.assign(static_cast<size_t>(cols) * cols, 0.0);
  xt.resize(static_cast<size_t>(cols) * n);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < cols; ++j) xt[j * n + i] = x[i * cols + j];
  y.resize(static_cast<size_t>(cols) * cols);
  f32_matmul(xt.data(), cols, n, xt.data(), cols, y.data());
  for (size_t i = 0; i < y.size(); ++i) g[i] += y[i];
}

using Site = ActivationObserver::Site;

class RefObserver : public ActivationObserver {
 public:
  RowStore* hidden = nullptr;
  size_t total_tokens = 0, offset = 0;
  std::vector<double>* head_gram = nullptr;
  void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) override {
    if (site == Site::LayerIn && hidden)
      hidden->put((static_cast<size_t>(layer) * total_tokens + offset) * cols, x, static_cast<size_t>(n * cols));
    if (site == Site::HeadIn && head_gram) accumulate_gram(*head_gram, x, n, cols, xt_, y_);
  }

 private:
  std::vector<float> xt_, y_;
};

struct StopForward {};

// Gram matrices of the four input sites of layers [l0, l1); stops the forward
// pass when it reaches layer l1 or the head.
class GramObserver : public ActivationObserver {
 public:
  GramObserver(int l0, int l1) : l0_(l0), l1_(l1), grams_(static_cast<size_t>(l1 - l0) * 4) {}
  void observe(int layer, Site site, const float* x, int64_t n, int64_t cols) override {
    if (site == Site::HeadIn || (site == Site::LayerIn && layer >= l1_)) throw StopForward{};
    if (site == Site::LayerIn || layer < l0_) return;
    accumulate_gram(grams_[static_cast<size_t>(layer - l0_) * 4 + static_cast<int>(site)], x, n, cols, xt_, y_);
  }
  std::vector<double>& gram(int layer, int site) { return grams_[static_cast<size_t>(layer - l0_) * 4 + site]; }

 private:
  int l0_, l1_;
  std::vector<std::vector<double>> grams_;
  std::vector<float> xt_, y_;
};

// The per-layer input site a module multiplies (index into the Gram arrays).
int site_of(ModuleKind kind) {
  const auto site = module_kind_info(kind).input;
  return site && static_cast<int>(*site) < kLayerInputSites ? static_cast<int>(*site) : -1;
}

std::vector<float> to_mean_f32(const std::vector<double>& g, double tokens) {
  std::vector<float> out(g.size());
  for (size_t i = 0; i < g.size(); ++i) out[i] = static_cast<float>(g[i] / tokens);
  return out;
}

// sum_r d_r G d_r^T for D {rows, cols}, G {cols, cols} symmetric.
double gram_proxy(const std::vector<float>& d, int64_t rows, int64_t cols, const std::vector<float>& g) {
  std::vector<float> dg(d.size());
  f32_matmul(g.data(), cols, cols, d.data(), rows, dg.data());  // D G^T = D G
  const double s = parallel_sum(rows, [&](int64_t r) {
    double t = 0;
    for (int64_t j = 0; j < cols; ++j) t += static_cast<double>(d[r * cols + j]) * dg[r * cols + j];
    return t;
  }, 16);
  return std::max(s, 0.0);
}

}  // namespace

SensitivityTable profile_model(const Model& ref, const std::vector<std::vector<int32_t>>& windows,
                               const ProfileOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = ref.config;
  check(!windows.empty(), "profiling needs at least one calibration window");
  check(!opt.candidates.empty(), "profiling needs at least one candidate format");
  for (const auto& w : windows) check(w.size() >= 4, "calibration windows must hold at least 4 tokens");

  SensitivityTable t = empty_table(c, opt.candidates);
  t.source = opt.source;
  t.method = profile_method_name(opt.method);

  // Resume from the cache.
  std::error_code ec;
  if (!opt.cache_path.empty() && std::filesystem::exists(opt.cache_path, ec)) {
    try {
      SensitivityTable old = SensitivityTable::read(opt.cache_path, c);
      if (old.source.matches(opt.source)) {
        std::map<std::string, const ModuleSensitivity*> by_path;
        for (const auto& ms : old.modules) by_path[ms.module.path] = &ms;
        for (auto& ms : t.modules) {
          auto it = by_path.find(ms.module.path);
          if (it == by_path.end()) continue;
          for (const auto& [name, fs] : it->second->formats) {
            FormatSensitivity& dst = ms.formats[name];
            dst.kl = fs.kl;
            dst.proxy = fs.proxy;
          }
        }
      } else {
        warn("{}: cache made for {}; measuring again for {}", opt.cache_path, old.source.describe(),
             opt.source.describe());
      }
    } catch (const Error& e) {
      warn("ignoring cache: {}", e.what());
    }
  }

  const int anchor_every = opt.anchor_every > 0 ? opt.anchor_every : (c.n_layers <= 12 ? 1 : 3);
  auto anchor_layer = [&](int l) { return l < 0 || l % anchor_every == 0 || l == c.n_layers - 1; };
  const bool all_exact = opt.method != ProfileMethod::Fast;
  const bool want_proxy = opt.method != ProfileMethod::Exact;

  // What to measure: per module, per fitting candidate, exact and/or proxy.
  struct Need {
    TensorFormat fmt;
    bool exact = false, proxy = false;
  };
  std::vector<std::vector<Need>> needs(t.modules.size());
  int64_t total = 0;
  bool need_hidden = false, need_head_gram = false;
  std::set<int> gram_layers;
  for (size_t i = 0; i < t.modules.size(); ++i) {
    const auto& ms = t.modules[i];
    const ModuleInfo& m = ms.module;
    for (const auto& f : fitting(opt.candidates, m.cols)) {
      const std::string name = tensor_format_name(f);
      auto it = ms.formats.find(name);
      const bool has_kl = it != ms.formats.end() && it->second.kl;
      const bool has_proxy = it != ms.formats.end() && it->second.proxy;
      Need n{f};
      n.exact = !has_kl && (all_exact || (name == ms.anchor && anchor_layer(m.layer)));
      n.proxy = !has_proxy && want_proxy;
      if (!n.exact && !n.proxy) continue;
      total += n.exact + n.proxy;
      if (m.layer >= 0) need_hidden = true;
      if (n.proxy && m.layer >= 0) gram_layers.insert(m.layer);
      if (n.proxy && (m.kind == ModuleKind::LmHead || (m.kind == ModuleKind::Embed && c.tied_embeddings)))
        need_head_gram = true;
      needs[i].push_back(n);
    }
  }
  if (total == 0) {
    t.calibrate_fast();
    t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return t;
  }

  // Reference pass.
  const int64_t vocab = c.vocab_size, dim = c.dim;
  const size_t nw = windows.size();
  std::vector<size_t> tok_off(nw), scored_off(nw);
  std::vector<int64_t> from(nw);
  size_t total_tokens = 0, total_scored = 0;
  int64_t max_len = 0, max_scored = 0;
  for (size_t w = 0; w < nw; ++w) {
    const int64_t n = static_cast<int64_t>(windows[w].size());
    tok_off[w] = total_tokens;
    scored_off[w] = total_scored;
    from[w] = n / 2;
    total_tokens += n;
    total_scored += n - n / 2;
    max_len = std::max(max_len, n);
    max_scored = std::max(max_scored, n - n / 2);
  }
  RowStore hidden, logp;
  const size_t hidden_n = need_hidden ? static_cast<size_t>(c.n_layers) * total_tokens * dim : 0;
  const size_t logp_n = total_scored * vocab;
  hidden.init(hidden_n, hidden_n * 4 > static_cast<size_t>(opt.store_f32_limit));
  logp.init(logp_n, logp_n * 4 > static_cast<size_t>(opt.store_f32_limit));
  std::vector<double> token_freq(vocab, 0.0), head_gram_d;
  for (const auto& w : windows)
    for (int32_t tok : w) {
      check(tok >= 0 && tok < vocab, "token id {} is outside the vocabulary of {}", tok, vocab);
      token_freq[tok] += 1.0 / total_tokens;
    }

  DeviceWeights weights(ref, default_backend());
  Transformer tf(weights, static_cast<int>(max_len));
  std::vector<float> logits(static_cast<size_t>(max_scored) * vocab);
  {
    RefObserver obs;
    obs.hidden = need_hidden ? &hidden : nullptr;
    obs.total_tokens = total_tokens;
    obs.head_gram = need_head_gram ? &head_gram_d : nullptr;
    tf.set_observer(&obs);
    std::optional<Progress> p;
    if (opt.progress) p.emplace("profile: reference", static_cast<int64_t>(nw), "windows");
    std::vector<double> lp;
    for (size_t w = 0; w < nw; ++w) {
      obs.offset = tok_off[w];
      tf.reset();
      tf.forward(windows[w], logits.data(), from[w]);
      const int64_t rows = static_cast<int64_t>(windows[w].size()) - from[w];
      std::vector<float> row(vocab);
      for (int64_t r = 0; r < rows; ++r) {
        log_softmax(&logits[r * vocab], vocab, lp);
        for (int64_t v = 0; v < vocab; ++v) row[v] = static_cast<float>(lp[v]);
        logp.put((scored_off[w] + r) * vocab, row.data(), vocab);
      }
      if (p) p->update(static_cast<int64_t>(w + 1));
    }
    if (p) p->finish();
    tf.set_observer(nullptr);
  }
  const std::vector<float> head_gram = need_head_gram ? to_mean_f32(head_gram_d, total_tokens) : std::vector<float>{};
  head_gram_d.clear();
  head_gram_d.shrink_to_fit();

  // Mean KL(ref || current model) over the scored rows, run from `layer` (-1: full forward).
  std::vector<float> hbuf(static_cast<size_t>(max_len) * dim);
  auto measure_kl = [&](int layer) {
    double sum = 0;
    int64_t count = 0;
    for (size_t w = 0; w < nw; ++w) {
      const int64_t n = static_cast<int64_t>(windows[w].size());
      tf.reset();
      if (layer >= 0) {
        hidden.get((static_cast<size_t>(layer) * total_tokens + tok_off[w]) * dim, static_cast<size_t>(n * dim),
                   hbuf.data());
        tf.forward_from_layer(layer, hbuf.data(), n, logits.data(), from[w]);
      } else {
        tf.forward(windows[w], logits.data(), from[w]);
      }
      const int64_t rows = n - from[w];
      std::vector<double> row_kl(rows);
      parallel_for_range(rows, 4, [&](int64_t r0, int64_t r1) {
        std::vector<double> lq, lpr(vocab);
        for (int64_t r = r0; r < r1; ++r) {
          log_softmax(&logits[r * vocab], vocab, lq);
          const size_t base = (scored_off[w] + r) * vocab;
          for (int64_t v = 0; v < vocab; ++v) lpr[v] = logp.at(base + v);
          row_kl[r] = kl_divergence(lpr, lq);
        }
      });
      double s = 0;
      for (double k : row_kl) s += k;
      sum += s;
      count += rows;
    }
    return sum / std::max<int64_t>(count, 1);
  };

  // Gram matrices of a group of layers, computed when first needed.
  std::map<int, std::array<std::vector<float>, 4>> grams;
  auto ensure_grams = [&](int layer) {
    if (grams.count(layer)) return;
    grams.clear();
    const int64_t per_layer =
        (3 * static_cast<int64_t>(dim) * dim + static_cast<int64_t>(c.q_dim()) * c.q_dim() +
         static_cast<int64_t>(c.hidden_dim) * c.hidden_dim) * 12;  // double accumulators + float copies
    int l1 = layer + static_cast<int>(std::max<int64_t>(1, opt.gram_memory / std::max<int64_t>(per_layer, 1)));
    l1 = std::min(l1, c.n_layers);
    while (l1 > layer + 1 && !gram_layers.count(l1 - 1)) --l1;
    GramObserver obs(layer, l1);
    tf.set_observer(&obs);
    for (size_t w = 0; w < nw; ++w) {
      const int64_t n = static_cast<int64_t>(windows[w].size());
      hidden.get((static_cast<size_t>(layer) * total_tokens + tok_off[w]) * dim, static_cast<size_t>(n * dim),
                 hbuf.data());
      tf.reset();
      try {
        tf.forward_from_layer(layer, hbuf.data(), n, logits.data(), n);
      } catch (const StopForward&) {
      }
    }
    tf.set_observer(nullptr);
    tf.reset();
    for (int l = layer; l < l1; ++l)
      for (int s = 0; s < 4; ++s) grams[l][s] = to_mean_f32(obs.gram(l, s), total_tokens);
  };

  std::optional<Progress> progress;
  if (opt.progress) progress.emplace("profile", total, "measurements");
  int64_t done = 0;
  // The export's recipe (bf16 scales for Gemma): the profile measures what ships.
  const QuantizeOptions qo = QuantizeRecipe::for_model(ref.config, opt.rounding).options();
  for (size_t i = 0; i < t.modules.size(); ++i) {
    if (needs[i].empty()) continue;
    ModuleSensitivity& ms = t.modules[i];
    const ModuleInfo& m = ms.module;
    const Linear& original = module_linear(ref.weights, m);
    const std::vector<float> w = original.to_f32();
    for (const Need& n : needs[i]) {
      const std::string name = tensor_format_name(n.fmt);
      std::vector<float> dq = fake_quantize(n.fmt, w.data(), m.rows, m.cols, qo);
      FormatSensitivity& fs = ms.formats[name];
      if (n.proxy) {
        std::vector<float> d(w.size());
        for (size_t k = 0; k < w.size(); ++k) d[k] = w[k] - dq[k];
        double e = 0;
        if (m.kind == ModuleKind::Embed) {
          for (int64_t r = 0; r < m.rows; ++r) {
            if (token_freq[r] == 0) continue;
            double s = 0;
            for (int64_t j = 0; j < m.cols; ++j) s += static_cast<double>(d[r * m.cols + j]) * d[r * m.cols + j];
            e += token_freq[r] * s;
          }
          if (c.tied_embeddings) e += gram_proxy(d, m.rows, m.cols, head_gram);
        } else if (m.kind == ModuleKind::LmHead) {
          e = gram_proxy(d, m.rows, m.cols, head_gram);
        } else {
          ensure_grams(m.layer);
          e = gram_proxy(d, m.rows, m.cols, grams[m.layer][site_of(m.kind)]);
        }
        fs.proxy = e;
        ++t.proxy_measured;
        if (progress) progress->update(++done, m.path);
      }
      if (n.exact) {
        Linear fake = Linear::from_f32(std::move(dq), m.rows, m.cols);
        fake.set_act_rounding(original.act_rounding());
        {
          WeightSwap swap(weights, m, std::move(fake));
          fs.kl = measure_kl(m.layer);
        }
        ++t.exact_measured;
        if (progress) progress->update(++done, m.path);
      }
    }
    if (!opt.cache_path.empty()) t.write(opt.cache_path);
  }
  if (progress) progress->finish();
  t.calibrate_fast();
  if (!opt.cache_path.empty()) t.write(opt.cache_path);
  t.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return t;
}

}  // namespace optiq
