#include "plan/baselines.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include <fmt/format.h>

#include "core/error.h"
#include "plan/budget.h"
#include "plan/solver.h"

namespace optiq {

PrecisionMap uniform_plan(const ModelConfig& config, const TensorFormat& fmt) { return PrecisionMap::uniform(config, fmt); }

bool llama_use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

std::string kquant_mix_name(KQuantMix mix) {
  switch (mix) {
    case KQuantMix::Q3_K_M: return "Q3_K_M";
    case KQuantMix::Q4_K_M: return "Q4_K_M";
    case KQuantMix::Q5_K_M: return "Q5_K_M";
  }
  return "?";
}

namespace {

// Bits per module kind and layer -> plan (float where the group size does not fit).
template <typename BitsFn>
PrecisionMap plan_from_bits(const ModelConfig& config, int group_size, BitsFn bits_of) {
  PrecisionMap p;
  for (const auto& m : quantizable_modules(config)) {
    const AffineFormat f{bits_of(m), group_size};
    check_affine_format(f);
    p.formats[m.path] = format_fits(f, m.cols) ? TensorFormat(f) : std::nullopt;
  }
  return p;
}

}  // namespace

bool llama_output_tensor(const ModelConfig& c, const ModuleInfo& m) {
  return m.kind == ModuleKind::LmHead || (c.tied_embeddings && m.kind == ModuleKind::Embed);
}

PrecisionMap kquant_plan(const ModelConfig& c, KQuantMix mix, int group_size) {
  const int n = c.n_layers;
  switch (mix) {
    case KQuantMix::Q3_K_M:
      return plan_from_bits(c, group_size, [&](const ModuleInfo& m) {
        if (llama_output_tensor(c, m)) return 6;
        if (m.kind == ModuleKind::VProj) return m.layer < 2 ? 5 : 4;
        if (m.kind == ModuleKind::DownProj) return m.layer < n / 16 ? 5 : 4;
        if (m.kind == ModuleKind::OProj) return 4;
        return 3;
      });
    case KQuantMix::Q4_K_M: return kquant_shape_plan(c, 4, 6, group_size);
    case KQuantMix::Q5_K_M: return kquant_shape_plan(c, 5, 6, group_size);
  }
  fail("kquant_plan: unknown mix");
}

PrecisionMap kquant_shape_plan(const ModelConfig& c, int base, int high, int group_size) {
  check(high >= base, "kquant_shape_plan: upgrade bits {} below base bits {}", high, base);
  const int n = c.n_layers;
  return plan_from_bits(c, group_size, [&](const ModuleInfo& m) {
    if (llama_output_tensor(c, m)) return std::max(high, base);
    if ((m.kind == ModuleKind::VProj || m.kind == ModuleKind::DownProj) && llama_use_more_bits(m.layer, n)) return high;
    return base;
  });
}

BaselinePlan kquant_plan_for_budget(const ModelConfig& c, int64_t budget, const std::vector<int>& group_sizes) {
  check(!group_sizes.empty(), "kquant_plan_for_budget: no group sizes");
  BaselinePlan best;
  best.bytes = -1;
  int64_t smallest = -1;
  auto consider = [&](PrecisionMap p, std::string name) {
    const int64_t b = plan_bytes(c, p);
    if (smallest < 0 || b < smallest) smallest = b;
    // Largest within budget; on equal size prefer the earlier (named) candidate.
    if (b <= budget && b > best.bytes) best = {std::move(p), std::move(name), b};
  };
  const int bits[] = {2, 3, 4, 5, 6, 8};
  for (int g : group_sizes) {
    for (KQuantMix mix : {KQuantMix::Q3_K_M, KQuantMix::Q4_K_M, KQuantMix::Q5_K_M})
      consider(kquant_plan(c, mix, g), fmt::format("{} g{}", kquant_mix_name(mix), g));
    for (int b : bits)
      for (int u : bits)
        if (u >= b)
          consider(kquant_shape_plan(c, b, u, g),
                   u == b ? fmt::format("uniform q{} g{}", b, g) : fmt::format("kquant-shape b{}/u{} g{}", b, u, g));
  }
  check(best.bytes >= 0,
        "k-quant baseline: budget {} is below the smallest k-quant-style plan ({}, 2-bit base); raise the budget",
        format_bytes(budget), format_bytes(smallest));
  return best;
}

BaselinePlan dynamic_plan(const ModelConfig& c, const std::map<std::string, double>& scores, int64_t budget,
                          AffineFormat low, AffineFormat high) {
  check_affine_format(low);
  check_affine_format(high);
  const auto modules = quantizable_modules(c);
  for (const auto& [path, s] : scores)
    check(!std::isnan(s), "dynamic baseline: sensitivity of {} is NaN", path);
  auto fmt_for = [](const ModuleInfo& m, AffineFormat f) { return format_fits(f, m.cols) ? TensorFormat(f) : std::nullopt; };
  PrecisionMap p;
  for (const auto& m : modules) p.formats[m.path] = fmt_for(m, low);
  int64_t bytes = plan_bytes(c, p);
  check(bytes <= budget, "dynamic baseline: budget {} is below the all-low plan ({} at {})", format_bytes(budget),
        format_bytes(bytes), affine_format_name(low));
  // Rank by score, most sensitive first; missing scores rank lowest.
  std::vector<std::pair<double, const ModuleInfo*>> ranked;
  for (const auto& m : modules) {
    auto it = scores.find(m.path);
    ranked.push_back({it == scores.end() ? -INFINITY : it->second, &m});
  }
  std::stable_sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  // Lower the threshold one distinct score at a time while the plan fits.
  int n_high = 0;
  for (size_t i = 0; i < ranked.size();) {
    size_t j = i;
    int64_t add = 0;
    while (j < ranked.size() && ranked[j].first == ranked[i].first) {
      const ModuleInfo& m = *ranked[j].second;
      add += module_bytes(m, fmt_for(m, high)) - module_bytes(m, fmt_for(m, low));
      ++j;
    }
    if (bytes + add > budget) break;
    for (size_t k = i; k < j; ++k) p.formats[ranked[k].second->path] = fmt_for(*ranked[k].second, high);
    bytes += add;
    n_high += int(j - i);
    i = j;
  }
  return {std::move(p),
          fmt::format("dynamic q{}g{}/q{}g{} ({} of {} high)", low.bits, low.group_size, high.bits, high.group_size, n_high,
                      modules.size()),
          bytes};
}

namespace {

// "Q4_K_M/g32" or "b3u5/g32" (group 64 when no "/gN").
BaselinePlan kquant_from_spec(const ModelConfig& c, const std::string& spec) {
  std::string body = spec;
  int group = 64;
  if (auto slash = body.find("/g"); slash != std::string::npos) {
    try {
      group = std::stoi(body.substr(slash + 2));
    } catch (const std::exception&) {
      fail("baseline 'kquant:{}': bad group size after /g", spec);
    }
    body = body.substr(0, slash);
  }
  check(group == 32 || group == 64 || group == 128, "baseline 'kquant:{}': group size must be 32, 64 or 128", spec);
  for (KQuantMix mix : {KQuantMix::Q3_K_M, KQuantMix::Q4_K_M, KQuantMix::Q5_K_M})
    if (body == kquant_mix_name(mix)) {
      PrecisionMap p = kquant_plan(c, mix, group);
      const int64_t b = plan_bytes(c, p);
      return {std::move(p), fmt::format("{} g{}", body, group), b};
    }
  int base = 0, high = 0;
  char tail = 0;
  check(std::sscanf(body.c_str(), "b%du%d%c", &base, &high, &tail) == 2,
        "baseline 'kquant:{}': expected Q3_K_M, Q4_K_M, Q5_K_M or bBuU (e.g. b3u5), optionally /gN", spec);
  check_affine_format({base, group});
  check_affine_format({high, group});
  check(high >= base, "baseline 'kquant:{}': upgrade bits below base bits", spec);
  PrecisionMap p = kquant_shape_plan(c, base, high, group);
  const int64_t b = plan_bytes(c, p);
  return {std::move(p), fmt::format("kquant-shape b{}/u{} g{}", base, high, group), b};
}

std::map<std::string, double> scores_at(const std::map<std::string, std::map<std::string, double>>& damage,
                                        AffineFormat low) {
  std::map<std::string, double> scores;
  for (const auto& [path, by_fmt] : damage) {
    auto it = by_fmt.find(affine_format_name(low));
    scores[path] = it == by_fmt.end() ? 0.0 : it->second;
  }
  return scores;
}

}  // namespace

BaselinePlan baseline_plan_from_spec(const ModelConfig& c, const std::string& spec, int64_t budget,
                                     const std::map<std::string, std::map<std::string, double>>& damage) {
  auto within_budget = [&](BaselinePlan b) {
    check(b.bytes <= budget, "baseline '{}': {} ({}) exceeds the budget of {}", spec, b.name, format_bytes(b.bytes),
          format_bytes(budget));
    return b;
  };
  if (spec.rfind("uniform:", 0) == 0) {
    const TensorFormat f = parse_format_spec(spec.substr(8));
    check(f.has_value(), "baseline '{}': uniform needs a quantized format such as uniform:q4g64", spec);
    const std::string name =
        f.affine() ? fmt::format("uniform q{} g{}", f->bits, f->group_size) : "uniform " + tensor_format_short(f);
    BaselinePlan b{uniform_plan(c, f), name, 0};
    b.bytes = plan_bytes(c, b.map);
    return within_budget(std::move(b));
  }
  if (spec == "kquant") return kquant_plan_for_budget(c, budget);
  if (spec.rfind("kquant:", 0) == 0) return within_budget(kquant_from_spec(c, spec.substr(7)));
  if (spec == "dynamic") {
    static const int levels[] = {2, 3, 4, 5, 6, 8};
    for (int i = 4; i >= 0; --i) {
      const AffineFormat low{levels[i], 64}, high{levels[i + 1], 64};
      if (plan_bytes(c, uniform_plan(c, low)) > budget) continue;
      return dynamic_plan(c, scores_at(damage, low), budget, low, high);
    }
    fail("baseline 'dynamic': even 2 bits everywhere exceeds the budget of {}", format_bytes(budget));
  }
  if (spec.rfind("dynamic:", 0) == 0) {
    const std::string levels = spec.substr(8);
    const auto slash = levels.find('/');
    check(slash != std::string::npos, "baseline '{}': expected dynamic:LOW/HIGH, e.g. dynamic:q3g64/q5g64", spec);
    const TensorFormat low = parse_format_spec(levels.substr(0, slash));
    const TensorFormat high = parse_format_spec(levels.substr(slash + 1));
    check(low && high, "baseline '{}': both levels must be quantized formats", spec);
    return dynamic_plan(c, scores_at(damage, *low), budget, *low, *high);
  }
  fail("baseline '{}': expected uniform:qBgG, kquant, kquant:Q4_K_M, kquant:b3u5, dynamic or dynamic:LOW/HIGH", spec);
}

}  // namespace optiq
