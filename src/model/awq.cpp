#include "model/awq.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <map>

#include <fmt/format.h>

#include "backend/backend.h"
#include "core/error.h"
#include "core/progress.h"

namespace optiq {

namespace {

// s_c = rms_c^alpha, normalised so that max(s) min(s) = 1. A channel that
// never fired gets a tiny but finite statistic (its s is then small: its
// weights see no inputs and their rounding does not matter).
std::vector<float> scales_for(std::span<const float> rms, double alpha) {
  std::vector<float> s(rms.size(), 1.0f);
  if (alpha == 0) return s;
  float top = 0;
  for (float v : rms) top = std::max(top, v);
  const float floor = top > 0 ? top * 1e-6f : 1.0f;
  double lo = std::numeric_limits<double>::infinity(), hi = 0;
  for (size_t c = 0; c < rms.size(); ++c) {
    s[c] = static_cast<float>(std::pow(static_cast<double>(std::max(rms[c], floor)), alpha));
    lo = std::min<double>(lo, s[c]);
    hi = std::max<double>(hi, s[c]);
  }
  const float norm = static_cast<float>(1.0 / std::sqrt(lo * hi));
  for (float& v : s) v *= norm;
  return s;
}

// tr(D G D^T) for D = W - Q(W diag(s)) diag(1/s).
double scaled_error(const AwqMatrix& m, int64_t cols, const float* gram, const std::vector<float>& s,
                    const QuantizeOptions& qo) {
  const int64_t n = m.rows * cols;
  std::vector<float> ws(static_cast<size_t>(n));
  for (int64_t r = 0; r < m.rows; ++r)
    for (int64_t c = 0; c < cols; ++c) ws[r * cols + c] = m.w[r * cols + c] * s[c];
  QuantizeOptions q = qo;
  std::vector<float> imp;
  if (qo.importance) {  // the scaled matrix reads x / s: its inputs' energy is x^2 / s^2
    imp.resize(static_cast<size_t>(cols));
    for (int64_t c = 0; c < cols; ++c) imp[c] = qo.importance[c] / (s[c] * s[c]);
    q.importance = imp.data();
  }
  std::vector<float> d = fake_quantize(m.fmt, ws.data(), m.rows, cols, q);
  for (int64_t r = 0; r < m.rows; ++r)
    for (int64_t c = 0; c < cols; ++c) d[r * cols + c] = m.w[r * cols + c] - d[r * cols + c] / s[c];
  return cpu_backend().gram_quadratic(d.data(), m.rows, cols, gram);
}

void scale_columns(Linear& lin, const std::vector<float>& s) {
  const int64_t rows = lin.rows(), cols = lin.cols();
  std::vector<float> w = lin.to_f32();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) w[r * cols + c] *= s[c];
  lin = Linear::from_f32(std::move(w), rows, cols);
}

// Rows [r0, r0 + div.size()) divided by div.
void divide_rows(Linear& lin, int64_t r0, const std::vector<float>& div) {
  const int64_t rows = lin.rows(), cols = lin.cols();
  check(r0 >= 0 && r0 + static_cast<int64_t>(div.size()) <= rows, "awq: rows {}..{} of a {}-row matrix", r0,
        r0 + static_cast<int64_t>(div.size()), rows);
  std::vector<float> w = lin.to_f32();
  for (size_t i = 0; i < div.size(); ++i)
    for (int64_t c = 0; c < cols; ++c) w[(r0 + static_cast<int64_t>(i)) * cols + c] /= div[i];
  lin = Linear::from_f32(std::move(w), rows, cols);
}

}  // namespace

AwqSearch awq_search(std::span<const AwqMatrix> ms, int64_t cols, const float* gram,
                     std::span<const float> channel_rms, const QuantizeOptions& qo, const AwqOptions& opt) {
  check(static_cast<int64_t>(channel_rms.size()) == cols, "awq: {} channel statistics for {} inputs",
        channel_rms.size(), cols);
  check(opt.grid >= 1, "awq: the alpha grid needs at least one step, not {}", opt.grid);
  AwqSearch best;
  best.error = std::numeric_limits<double>::infinity();
  for (int k = 0; k <= opt.grid; ++k) {
    const double alpha = static_cast<double>(k) / opt.grid;
    std::vector<float> s = scales_for(channel_rms, alpha);
    double e = 0;
    for (const AwqMatrix& m : ms) e += scaled_error(m, cols, gram, s, qo);
    if (k == 0) best.error_plain = e;
    if (e < best.error) {
      best.error = e;
      best.alpha = alpha;
      best.scales = std::move(s);
    }
  }
  return best;
}

std::vector<AwqSiteReport> awq_transform(Model& model, const PrecisionMap& map, const GramMap& grams,
                                         const QuantizeRecipe& recipe, ImportanceMap* importance,
                                         const AwqOptions& opt) {
  const ModelConfig& c = model.config;
  std::map<std::pair<int, ModuleKind>, ModuleInfo> mods;
  for (const auto& m : quantizable_modules(c))
    if (m.layer >= 0) mods[{m.layer, m.kind}] = m;
  std::vector<AwqSiteReport> reports;
  Progress progress("awq", c.n_layers, "layers");

  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = model.weights.layers[l];
    // Searches a site's scales and applies them to its matrices' columns (and
    // their importance); empty when there is nothing to do.
    auto site = [&](const char* what, std::initializer_list<ModuleKind> kinds,
                    bool tie_query_groups) -> std::vector<float> {
      std::vector<const ModuleInfo*> members;
      for (ModuleKind k : kinds) {
        auto it = mods.find({l, k});
        if (it != mods.end()) members.push_back(&it->second);
      }
      if (members.empty()) return {};
      const int64_t cols = members[0]->cols;
      auto g = grams.find(members[0]->path);
      if (g == grams.end() || static_cast<int64_t>(g->second->size()) != cols * cols) return {};
      const float* gram = g->second->data();
      const bool fixed = opt.fixed_alpha >= 0;
      std::deque<std::vector<float>> weights;  // stable addresses
      std::vector<AwqMatrix> quantized;
      for (const ModuleInfo* m : members) {
        auto f = map.formats.find(m->path);
        if (fixed || f == map.formats.end() || !f->second) continue;  // float: scaled below, nothing to search for
        weights.push_back(module_linear(model.weights, *m).to_f32());
        quantized.push_back({weights.back().data(), m->rows, f->second});
      }
      if (quantized.empty() && !fixed) return {};
      std::vector<float> rms(static_cast<size_t>(cols));
      for (int64_t i = 0; i < cols; ++i) rms[i] = std::sqrt(std::max(gram[i * cols + i], 0.0f));
      if (tie_query_groups) {  // o's inputs: the query heads of a group share their kv head's scale
        const int hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
        check(static_cast<int64_t>(c.n_heads) * hd == cols, "awq: o_proj reads {} inputs, not {} heads of {}", cols,
              c.n_heads, hd);
        for (int kv = 0; kv < c.n_kv_heads; ++kv)
          for (int d = 0; d < hd; ++d) {
            float mean = 0;
            for (int h = kv * group; h < (kv + 1) * group; ++h) mean += rms[h * hd + d];
            mean /= static_cast<float>(group);
            for (int h = kv * group; h < (kv + 1) * group; ++h) rms[h * hd + d] = mean;
          }
      }
      const float* imp = nullptr;
      if (importance) {
        auto it = importance->find(members[0]->path);
        if (it != importance->end() && static_cast<int64_t>(it->second.size()) == cols) imp = it->second.data();
      }
      AwqSearch r;
      if (fixed)
        r.alpha = opt.fixed_alpha, r.scales = scales_for(rms, opt.fixed_alpha);
      else
        r = awq_search(quantized, cols, gram, rms, recipe.options(imp), opt);
      reports.push_back({fmt::format("model.layers.{} {}", l, what), r.alpha, r.error, r.error_plain});
      if (r.alpha == 0) return {};
      for (const ModuleInfo* m : members) {
        scale_columns(module_linear(model.weights, *m), r.scales);
        if (!importance) continue;
        auto it = importance->find(m->path);
        if (it != importance->end() && static_cast<int64_t>(it->second.size()) == cols)
          for (int64_t i = 0; i < cols; ++i) it->second[i] /= r.scales[i] * r.scales[i];
      }
      return r.scales;
    };
    auto divide = [](std::vector<float>& v, const std::vector<float>& s) {
      for (size_t i = 0; i < v.size(); ++i) v[i] /= s[i];
    };

    // q, k, v: the attention norm's multiplier takes 1/s.
    if (!L.attn_norm.empty()) {
      const auto s = c.fused_qkv ? site("attention input", {ModuleKind::QkvProj}, false)
                                 : site("attention input", {ModuleKind::QProj, ModuleKind::KProj, ModuleKind::VProj},
                                        false);
      if (!s.empty()) divide(L.attn_norm, s);
    }
    // o: v's rows (and bias) take 1/s, one scale per kv-head dimension.
    if (c.n_kv_heads > 0 && c.n_heads % c.n_kv_heads == 0) {
      const auto s = site("attention output", {ModuleKind::OProj}, true);
      if (!s.empty()) {
        const int hd = c.head_dim, group = c.n_heads / c.n_kv_heads;
        std::vector<float> sv(static_cast<size_t>(c.kv_dim()));
        for (int kv = 0; kv < c.n_kv_heads; ++kv)
          for (int d = 0; d < hd; ++d) sv[kv * hd + d] = s[(kv * group) * hd + d];
        if (c.fused_qkv)
          divide_rows(L.wqkv, c.q_dim() + c.kv_dim(), sv);
        else
          divide_rows(L.wv, 0, sv);
        if (!L.bv.empty()) divide(L.bv, sv);
      }
    }
    // gate, up: the MLP norm's multiplier.
    if (!L.ffn_norm.empty()) {
      const auto s = c.fused_qkv ? site("MLP input", {ModuleKind::GateUpProj}, false)
                                 : site("MLP input", {ModuleKind::GateProj, ModuleKind::UpProj}, false);
      if (!s.empty()) divide(L.ffn_norm, s);
    }
    // down: up's rows (act(gate) * up is linear in up).
    {
      const auto s = site("MLP hidden", {ModuleKind::DownProj}, false);
      if (!s.empty()) {
        if (c.fused_qkv)
          divide_rows(L.w_gate_up, c.hidden_dim, s);
        else
          divide_rows(L.w_up, 0, s);
      }
    }
    progress.update(l + 1);
  }
  progress.finish();
  return reports;
}

}  // namespace optiq
