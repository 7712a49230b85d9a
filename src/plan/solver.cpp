#include "plan/solver.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <regex>
#include <set>

#include <fmt/format.h>

#include "core/error.h"
#include "plan/budget.h"

namespace optiq {

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Cand {
  TensorFormat format;
  int64_t bytes;
  double damage;
};

// One knapsack item after pins and ties: one or several modules sharing a format.
struct Group {
  std::vector<int> members;  // indices into the input items
  std::vector<Cand> eff;     // efficient candidates: bytes increasing, damage strictly decreasing
  std::vector<int> hull;     // indices into eff: lower convex hull
};

struct Problem {
  std::vector<Group> groups;
  int64_t fixed = 0;
  int64_t min_bytes = 0;  // fixed + sum of smallest candidates
  int64_t max_bytes = 0;  // fixed + sum of damage-minimising candidates
};

std::string item_name(const std::vector<SolverItem>& items, const Group& g) {
  if (g.members.size() == 1) return items[g.members[0]].path;
  std::string s = "tie group {";
  for (size_t i = 0; i < g.members.size(); ++i) s += (i ? ", " : "") + items[g.members[i]].path;
  return s + "}";
}

Problem build(const std::vector<SolverItem>& items, const SolverOptions& o) {
  check(!items.empty(), "solver: no modules to plan");
  check(o.fixed_bytes >= 0, "solver: fixed bytes must be >= 0");
  std::map<std::string, int> index;
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& it = items[i];
    check(index.emplace(it.path, int(i)).second, "solver: module {} is listed twice", it.path);
    check(!it.candidates.empty(), "solver: module {} has no candidate formats", it.path);
    for (const auto& c : it.candidates) {
      check(c.bytes > 0, "solver: {} {}: bytes must be > 0 (got {})", it.path, tensor_format_name(c.format), c.bytes);
      check(std::isfinite(c.damage) && c.damage >= 0, "solver: {} {}: damage must be finite and >= 0 (got {})",
            it.path, tensor_format_name(c.format), c.damage);
    }
  }
  std::vector<std::regex> pin_re;
  for (const auto& p : o.pins) {
    try {
      pin_re.emplace_back(p.pattern);
    } catch (const std::regex_error& e) {
      fail("pin '{}': bad regex: {}", p.text.empty() ? p.pattern : p.text, e.what());
    }
  }
  std::vector<bool> pin_used(o.pins.size(), false);
  // Per item: its allowed candidates (one per format, least damage).
  std::vector<std::vector<Cand>> allowed(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    const auto& it = items[i];
    int pin = -1;
    for (size_t k = 0; k < o.pins.size(); ++k)
      if (std::regex_search(it.path, pin_re[k])) {
        pin = int(k);
        pin_used[k] = true;
        break;
      }
    std::vector<Cand> a;
    for (const auto& c : it.candidates) {
      // (A pin to `source` takes each module's own resolved type.)
      const bool pinned = pin >= 0 && (c.format == o.pins[pin].format ||
                                       (c.format.is_source() && o.pins[pin].format.is_source()));
      if (pin >= 0 ? !pinned : (c.format && c.format.code_bits() < o.min_bits)) continue;
      auto same = std::find_if(a.begin(), a.end(), [&](const Cand& x) { return x.format == c.format; });
      if (same == a.end()) a.push_back({c.format, c.bytes, c.damage});
      else if (c.damage < same->damage || (c.damage == same->damage && c.bytes < same->bytes))
        *same = {c.format, c.bytes, c.damage};
    }
    if (pin >= 0)
      check(!a.empty(), "pin '{}': module {} has no candidate in {} (its candidates: {})",
            o.pins[pin].text.empty() ? o.pins[pin].pattern : o.pins[pin].text, it.path,
            tensor_format_name(o.pins[pin].format), [&] {
              std::string s;
              for (const auto& c : it.candidates) s += (s.empty() ? "" : ", ") + tensor_format_name(c.format);
              return s;
            }());
    else
      check(!a.empty(), "solver: module {} has no candidate with >= {} bits (min_bits)", it.path, o.min_bits);
    allowed[i] = std::move(a);
  }
  for (size_t k = 0; k < o.pins.size(); ++k)
    check(pin_used[k], "pin '{}': the pattern matches no module (e.g. {})",
          o.pins[k].text.empty() ? o.pins[k].pattern : o.pins[k].text, items[0].path);

  Problem P;
  P.fixed = o.fixed_bytes;
  std::vector<int> group_of(items.size(), -1);
  for (const auto& tg : o.tie_groups) {
    if (tg.empty()) continue;
    Group g;
    for (const auto& path : tg) {
      auto f = index.find(path);
      check(f != index.end(), "tie group: {} is not a module of this plan", path);
      check(group_of[f->second] < 0, "tie group: {} is in two tie groups", path);
      group_of[f->second] = int(P.groups.size());
      g.members.push_back(f->second);
    }
    // Formats every member allows, bytes and damage summed.
    std::vector<Cand> common = allowed[g.members[0]];
    for (size_t k = 1; k < g.members.size(); ++k) {
      std::vector<Cand> next;
      for (const auto& c : common)
        for (const auto& d : allowed[g.members[k]])
          if (d.format == c.format) next.push_back({c.format, c.bytes + d.bytes, c.damage + d.damage});
      common = std::move(next);
    }
    check(!common.empty(), "solver: the modules of {} share no allowed format (check pins and min_bits)",
          item_name(items, g));
    g.eff = std::move(common);
    P.groups.push_back(std::move(g));
  }
  for (size_t i = 0; i < items.size(); ++i)
    if (group_of[i] < 0) {
      Group g;
      g.members = {int(i)};
      g.eff = allowed[i];
      P.groups.push_back(std::move(g));
    }

  for (auto& g : P.groups) {
    auto& c = g.eff;
    std::sort(c.begin(), c.end(), [](const Cand& a, const Cand& b) {
      return a.bytes != b.bytes ? a.bytes < b.bytes : a.damage < b.damage;
    });
    std::vector<Cand> e;
    for (const auto& x : c)
      if (e.empty() || x.damage < e.back().damage) {
        if (!e.empty() && e.back().bytes == x.bytes) continue;  // same bytes, more damage: sorted away
        e.push_back(x);
      }
    c = std::move(e);
    // Lower convex hull (savings per byte strictly decreasing along the hull).
    auto& h = g.hull;
    for (int j = 0; j < int(c.size()); ++j) {
      while (h.size() >= 2) {
        const Cand& a = c[h[h.size() - 2]];
        const Cand& b = c[h.back()];
        const Cand& d = c[j];
        // Drop b if it lies on or above the segment a-d.
        const long double lhs = (long double)(b.damage - a.damage) * (long double)(d.bytes - a.bytes);
        const long double rhs = (long double)(d.damage - a.damage) * (long double)(b.bytes - a.bytes);
        if (lhs >= rhs) h.pop_back();
        else break;
      }
      h.push_back(j);
    }
    P.min_bytes += c.front().bytes;
    P.max_bytes += c.back().bytes;
  }
  P.min_bytes += P.fixed;
  P.max_bytes += P.fixed;
  return P;
}

struct Lagrange {
  std::vector<int> choice;  // eff index per group (integral part)
  int64_t bytes = 0;
  double damage = 0;
  double lower_bound = 0;
  double lambda = 0;
};

struct Segment {
  double eff;  // damage saved per byte
  int group, k;  // hull[k] -> hull[k+1]
};

std::vector<Segment> sorted_segments(const Problem& P) {
  std::vector<Segment> s;
  for (int g = 0; g < int(P.groups.size()); ++g) {
    const auto& G = P.groups[g];
    for (int k = 0; k + 1 < int(G.hull.size()); ++k) {
      const Cand& a = G.eff[G.hull[k]];
      const Cand& b = G.eff[G.hull[k + 1]];
      s.push_back({(a.damage - b.damage) / double(b.bytes - a.bytes), g, k});
    }
  }
  std::stable_sort(s.begin(), s.end(), [](const Segment& a, const Segment& b) {
    if (a.eff != b.eff) return a.eff > b.eff;
    if (a.group != b.group) return a.group < b.group;
    return a.k < b.k;
  });
  return s;
}

Lagrange lagrange(const Problem& P, int64_t budget) {
  Lagrange L;
  L.choice.assign(P.groups.size(), 0);
  std::vector<int> hk(P.groups.size(), 0);
  L.bytes = P.min_bytes;
  for (const auto& g : P.groups) L.damage += g.eff.front().damage;
  L.lower_bound = L.damage;
  for (const auto& s : sorted_segments(P)) {
    const auto& G = P.groups[s.group];
    // Within a group segments come in hull order (efficiency strictly decreasing).
    const Cand& a = G.eff[G.hull[s.k]];
    const Cand& b = G.eff[G.hull[s.k + 1]];
    const int64_t db = b.bytes - a.bytes;
    if (L.bytes + db <= budget) {
      L.bytes += db;
      L.damage -= a.damage - b.damage;
      hk[s.group] = s.k + 1;
      L.choice[s.group] = G.hull[s.k + 1];
      L.lower_bound = L.damage;
    } else {
      const double frac = double(budget - L.bytes) / double(db);
      L.lower_bound = L.damage - frac * (a.damage - b.damage);
      L.lambda = s.eff;
      return L;
    }
  }
  return L;  // everything fits
}

// Best damage-per-byte upgrades that fit, until none does.
void greedy_fill(const Problem& P, int64_t budget, std::vector<int>& choice, int64_t& bytes, double& damage) {
  for (;;) {
    int bg = -1, bj = -1;
    double best = 0;
    const int64_t left = budget - bytes;
    for (int g = 0; g < int(P.groups.size()); ++g) {
      const auto& e = P.groups[g].eff;
      const Cand& cur = e[choice[g]];
      for (int j = choice[g] + 1; j < int(e.size()); ++j) {
        const int64_t db = e[j].bytes - cur.bytes;
        if (db > left) break;  // bytes increase along eff
        const double r = (cur.damage - e[j].damage) / double(db);
        if (r > best) {
          best = r;
          bg = g;
          bj = j;
        }
      }
    }
    if (bg < 0) return;
    const auto& e = P.groups[bg].eff;
    bytes += e[bj].bytes - e[choice[bg]].bytes;
    damage -= e[choice[bg]].damage - e[bj].damage;
    choice[bg] = bj;
  }
}

// Min-damage DP over bins of `unit` bytes of the variable part; weights rounded up.
// Returns per capacity c in [0, nbins) the min damage (nonincreasing in c) and
// the choice table for reconstruction.
struct Dp {
  int64_t unit = 1, nbins = 0;
  std::vector<std::vector<int32_t>> w;  // per group, per eff candidate: bins
  std::vector<double> best;
  std::vector<uint8_t> choice;  // groups x nbins
  bool ran = false;
};

// DP over the candidates allowed by `allowed` (empty: all), capacity
// `cap_bytes` above each group's smallest allowed candidate. round_up: weights
// rounded up (every DP solution is feasible); otherwise rounded down (a
// relaxation: its optimum is a lower bound on the true optimum) and no choice
// table is kept. Bins are limited so that bins * candidates <= max_ops.
using Mask = std::vector<std::vector<char>>;

Dp run_dp(const Problem& P, const Mask& allowed, int64_t cap_bytes, int64_t max_bins, int64_t extra_bins,
          int64_t max_ops, bool round_up = true) {
  Dp D;
  if (cap_bytes < 0) return D;
  const size_t G = P.groups.size();
  auto ok = [&](size_t g, size_t j) { return allowed.empty() || allowed[g][j]; };
  int64_t ncand = 0;
  for (size_t g = 0; g < G; ++g) {
    if (P.groups[g].eff.size() > 255) return D;
    for (size_t j = 0; j < P.groups[g].eff.size(); ++j) ncand += ok(g, j);
  }
  max_bins = std::min<int64_t>(max_bins, max_ops / std::max<int64_t>(ncand, 1) - extra_bins - 1);
  if (max_bins < 1) return D;
  D.unit = std::max<int64_t>(1, (cap_bytes + max_bins - 1) / max_bins);
  D.nbins = cap_bytes / D.unit + 1 + extra_bins;
  D.w.resize(G);
  for (size_t g = 0; g < G; ++g) {
    const auto& e = P.groups[g].eff;
    int64_t base = -1;
    for (size_t j = 0; j < e.size() && base < 0; ++j)
      if (ok(g, j)) base = e[j].bytes;
    for (size_t j = 0; j < e.size(); ++j) {
      int64_t x = D.nbins;  // >= nbins: never fits
      if (ok(g, j)) x = std::min<int64_t>(x, (e[j].bytes - base + (round_up ? D.unit - 1 : 0)) / D.unit);
      D.w[g].push_back(int32_t(x));
    }
  }
  if (round_up) D.choice.assign(G * size_t(D.nbins), 0);
  std::vector<uint8_t> scratch(round_up ? 0 : size_t(D.nbins));
  std::vector<double> prev(D.nbins, 0.0), cur(D.nbins);
  for (size_t g = 0; g < G; ++g) {
    const auto& e = P.groups[g].eff;
    uint8_t* ch = round_up ? &D.choice[g * size_t(D.nbins)] : scratch.data();
    std::fill(cur.begin(), cur.end(), kInf);
    for (size_t j = 0; j < e.size(); ++j) {
      const int64_t wj = D.w[g][j];
      if (wj >= D.nbins) continue;
      const double dj = e[j].damage;
      const double* p = prev.data();
      double* c = cur.data();
      for (int64_t b = wj; b < D.nbins; ++b) {
        const double v = p[b - wj] + dj;
        if (v < c[b]) {
          c[b] = v;
          ch[b] = uint8_t(j);
        }
      }
    }
    std::swap(prev, cur);
  }
  D.best = std::move(prev);
  D.ran = true;
  return D;
}

std::vector<int> dp_choice(const Problem& P, const Dp& D, int64_t cap) {
  std::vector<int> choice(P.groups.size());
  for (size_t g = P.groups.size(); g-- > 0;) {
    const int j = D.choice[g * size_t(D.nbins) + size_t(cap)];
    choice[g] = j;
    cap -= D.w[g][j];
  }
  return choice;
}

void totals(const Problem& P, const std::vector<int>& choice, int64_t& bytes, double& damage) {
  bytes = P.fixed;
  damage = 0;
  for (size_t g = 0; g < P.groups.size(); ++g) {
    bytes += P.groups[g].eff[choice[g]].bytes;
    damage += P.groups[g].eff[choice[g]].damage;
  }
}

std::vector<TensorFormat> item_formats(const Problem& P, const std::vector<int>& choice, size_t n_items) {
  std::vector<TensorFormat> f(n_items);
  for (size_t g = 0; g < P.groups.size(); ++g)
    for (int m : P.groups[g].members) f[m] = P.groups[g].eff[choice[g]].format;
  return f;
}

}  // namespace

namespace {

Solution solve_bytes(const std::vector<SolverItem>& items, int64_t budget, const SolverOptions& o);

// Sum of `field` over the chosen candidate of every item.
double chosen_sum(const std::vector<SolverItem>& items, const std::map<std::string, TensorFormat>& formats,
                  double Candidate::*field) {
  double t = 0;
  for (const auto& it : items) {
    auto f = formats.find(it.path);
    if (f == formats.end()) continue;
    for (const auto& c : it.candidates)
      if (c.format == f->second) {
        t += c.*field;
        break;
      }
  }
  return t;
}

double chosen_time(const std::vector<SolverItem>& items, const std::map<std::string, TensorFormat>& formats) {
  return chosen_sum(items, formats, &Candidate::time);
}

// damage + mu * time for every candidate.
std::vector<SolverItem> penalised(const std::vector<SolverItem>& items, double mu) {
  std::vector<SolverItem> out = items;
  for (auto& it : out)
    for (auto& c : it.candidates) c.damage += mu * c.time;
  return out;
}

}  // namespace

Solution solve(const std::vector<SolverItem>& items, int64_t budget, const SolverOptions& o) {
  SolverOptions plain = o;
  plain.max_time = 0;
  Solution s = solve_bytes(items, budget, plain);
  s.time = chosen_time(items, s.formats);
  if (o.max_time <= 0 || s.time <= o.max_time) return s;
  for (const auto& it : items)
    for (const auto& c : it.candidates)
      check(std::isfinite(c.time) && c.time >= 0, "solver: {}: candidate time must be finite and >= 0", it.path);
  // The true damage of a plan (the penalised solves report damage + mu * time).
  auto true_damage = [&](const Solution& x) { return chosen_sum(items, x.formats, &Candidate::damage); };
  // Scale of mu: damage per unit of time, from the candidates' medians.
  std::vector<double> ds, ts;
  for (const auto& it : items)
    for (const auto& c : it.candidates) {
      if (c.damage > 0) ds.push_back(c.damage);
      if (c.time > 0) ts.push_back(c.time);
    }
  auto median = [](std::vector<double>& v) {
    if (v.empty()) return 1.0;
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  };
  const double scale = median(ds) / median(ts);
  {
    // The fastest plan within the budget (time first, damage breaking ties):
    // when even it is too slow, no multiplier helps.
    std::vector<SolverItem> fastest = items;
    for (auto& it : fastest)
      for (auto& c : it.candidates) c.damage = c.time + 1e-9 * c.damage / scale;
    const Solution f = solve_bytes(fastest, budget, plain);
    const double t = chosen_time(items, f.formats);
    check(t <= o.max_time * (1 + 1e-12),
          "solver: no plan within {} meets the time bound: the fastest predicted is {:.4g}, the bound {:.4g}",
          format_bytes(budget), t, o.max_time);
  }
  std::optional<Solution> best;
  double best_lb = 0;
  auto attempt = [&](double mu) {
    Solution x = solve_bytes(penalised(items, mu), budget, plain);
    x.time = chosen_time(items, x.formats);
    best_lb = std::max(best_lb, x.lower_bound - mu * o.max_time);  // weak duality, any mu >= 0
    x.damage = true_damage(x);
    x.mu = mu;
    const bool ok = x.time <= o.max_time;
    if (ok && (!best || x.damage < best->damage)) best = std::move(x);
    return ok;
  };
  double lo = 0, hi = scale;
  for (int k = 0; !attempt(hi); ++k) {
    check(k < 60, "solver: no multiplier meets the time bound within {}", format_bytes(budget));
    lo = hi;
    hi *= 4;
  }
  for (int i = 0; i < 24 && hi > lo * (1 + 1e-3); ++i) {
    const double mid = lo > 0 ? std::sqrt(lo * hi) : hi / 4;
    if (attempt(mid)) hi = mid; else lo = mid;
  }
  Solution r = *best;
  r.lower_bound = std::clamp(best_lb, 0.0, r.damage);
  r.gap = r.damage - r.lower_bound;
  r.exact = r.gap <= 1e-9 * std::max(1e-12, std::abs(r.damage));
  r.method += " + time bound";
  return r;
}

namespace {

Solution solve_bytes(const std::vector<SolverItem>& items, int64_t budget, const SolverOptions& o) {
  const Problem P = build(items, o);
  check(budget >= P.min_bytes,
        "solver: budget {} ({} bytes) is below the smallest achievable size {} ({} bytes) under these constraints",
        format_bytes(budget), budget, format_bytes(P.min_bytes), P.min_bytes);
  Solution s;
  std::vector<int> choice;
  if (P.max_bytes <= budget) {
    choice.resize(P.groups.size());
    for (size_t g = 0; g < P.groups.size(); ++g) choice[g] = int(P.groups[g].eff.size()) - 1;
    totals(P, choice, s.bytes, s.damage);
    s.lower_bound = s.damage;
    s.exact = true;
    s.method = "unconstrained";
  } else {
    Lagrange L = lagrange(P, budget);
    s.lower_bound = L.lower_bound;
    s.lambda = L.lambda;
    choice = L.choice;
    s.bytes = L.bytes;
    s.damage = L.damage;
    greedy_fill(P, budget, choice, s.bytes, s.damage);
    s.method = "lagrange+greedy";
    const double tol = 1e-12 * std::max(1.0, std::abs(s.damage));
    if (s.damage - s.lower_bound > tol) {
      // Reduction by reduced costs: with h_g = min_c (d_c + lambda*b_c), forcing
      // candidate c of group g raises the Lagrangian bound by
      // rc = d_c + lambda*b_c - h_g, so a candidate with LB + rc > incumbent
      // cannot be part of a better plan. The DP then only sees the rest.
      const double lam = L.lambda;
      const double incumbent = s.damage;
      double dual = -lam * double(budget - P.fixed);
      std::vector<double> h(P.groups.size());
      for (size_t g = 0; g < P.groups.size(); ++g) {
        h[g] = kInf;
        for (const auto& c : P.groups[g].eff) h[g] = std::min(h[g], c.damage + lam * double(c.bytes));
        dual += h[g];
      }
      const double lb = std::max(dual, s.lower_bound);
      Mask allowed(P.groups.size());
      int64_t base = P.fixed, span = 0;
      const double slack = 1e-9 * std::max(1e-12, std::abs(incumbent));
      for (size_t g = 0; g < P.groups.size(); ++g) {
        const auto& e = P.groups[g].eff;
        allowed[g].assign(e.size(), 0);
        int64_t lo = -1, hi = 0;
        for (size_t j = 0; j < e.size(); ++j) {
          const double rc = e[j].damage + lam * double(e[j].bytes) - h[g];
          if (lb + rc <= incumbent + slack || int(j) == choice[g]) {
            allowed[g][j] = 1;
            if (lo < 0) lo = e[j].bytes;
            hi = e[j].bytes;
          }
        }
        base += lo;
        span += hi - lo;
      }
      const int64_t cap = std::min(budget - base, span);
      const Dp D = run_dp(P, allowed, cap, o.max_dp_bins, 0, o.max_dp_ops);
      if (D.ran) {
        std::vector<int> c2 = dp_choice(P, D, D.nbins - 1);
        int64_t b2;
        double d2;
        totals(P, c2, b2, d2);
        greedy_fill(P, budget, c2, b2, d2);
        if (d2 < s.damage || (d2 == s.damage && b2 < s.bytes)) {
          choice = c2;
          s.bytes = b2;
          s.damage = d2;
          s.method = "dp+greedy";
        }
        if (D.unit == 1) {
          // Exact over every plan that could beat the incumbent.
          s.exact = true;
          s.lower_bound = s.damage;
        } else {
          // Rounding weights down relaxes the reduced problem: any plan better
          // than the incumbent has damage >= its optimum.
          const Dp R = run_dp(P, allowed, cap, o.max_dp_bins, 0, o.max_dp_ops, false);
          if (R.ran) s.lower_bound = std::max(s.lower_bound, std::min(incumbent, R.best[R.nbins - 1]));
        }
      }
    }
    // Recompute exactly from the choice (no drift from incremental updates).
    totals(P, choice, s.bytes, s.damage);
    if (s.exact) s.lower_bound = std::min(s.lower_bound, s.damage);
    s.exact = s.exact || s.damage - s.lower_bound <= 1e-9 * std::max(1e-12, std::abs(s.damage));
  }
  s.lower_bound = std::min(s.lower_bound, s.damage);
  s.gap = s.damage - s.lower_bound;
  const auto f = item_formats(P, choice, items.size());
  for (size_t i = 0; i < items.size(); ++i) s.formats[items[i].path] = f[i];
  return s;
}

}  // namespace

std::vector<ParetoPoint> solve_pareto(const std::vector<SolverItem>& items, const SolverOptions& o, int max_points) {
  check(max_points >= 2, "solve_pareto: max_points must be >= 2");
  const Problem P = build(items, o);
  std::vector<ParetoPoint> pts;
  auto add = [&](const std::vector<int>& choice, bool hull) {
    ParetoPoint p;
    totals(P, choice, p.bytes, p.damage);
    p.on_hull = hull;
    p.formats = item_formats(P, choice, items.size());
    pts.push_back(std::move(p));
  };
  // Hull breakpoints: prefixes of the efficiency-sorted segments.
  std::vector<int> choice(P.groups.size(), 0);
  add(choice, true);
  for (const auto& s : sorted_segments(P)) {
    choice[s.group] = P.groups[s.group].hull[s.k + 1];
    add(choice, true);
  }
  // DP frontier over the whole range; extra bins absorb the rounding up of weights.
  const int64_t var = P.max_bytes - P.min_bytes;
  const Dp D = run_dp(P, {}, var, max_points, int64_t(P.groups.size()), std::max<int64_t>(o.max_dp_ops, 1));
  if (D.ran) {
    double last = kInf;
    for (int64_t c = 0; c < D.nbins; ++c)
      if (D.best[c] < last) {
        last = D.best[c];
        add(dp_choice(P, D, c), false);
      }
  }
  std::sort(pts.begin(), pts.end(), [](const ParetoPoint& a, const ParetoPoint& b) {
    if (a.bytes != b.bytes) return a.bytes < b.bytes;
    if (a.damage != b.damage) return a.damage < b.damage;
    return a.on_hull > b.on_hull;
  });
  std::vector<ParetoPoint> out;
  for (auto& p : pts) {
    if (!out.empty() && p.damage >= out.back().damage) {
      if (p.bytes == out.back().bytes && p.damage == out.back().damage) out.back().on_hull |= p.on_hull;
      continue;
    }
    out.push_back(std::move(p));
  }
  return out;
}

}  // namespace optiq
