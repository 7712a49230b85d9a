// The plan solver: a multiple-choice knapsack. Each quantizable module (an
// "item") gets exactly one of its candidate formats; each candidate has a size
// in bytes and a predicted damage (KL divergence contribution, >= 0, assumed
// additive over modules). Minimise total damage subject to
//   fixed_bytes + sum(bytes) <= budget.
//
// Constraints, applied before solving:
//   * min_bits: affine candidates with fewer bits are dropped (float is kept);
//   * pins: the first pin whose regex matches (std::regex_search, ECMAScript)
//     a module path forces that module's format (pins override min_bits). The
//     pinned format must be among the module's candidates;
//   * tie groups: the modules of a group must share one format. A group becomes
//     one item whose candidates are the formats every member has, with bytes
//     and damage summed over the members.
//
// Method:
//   1. Per item, drop dominated candidates (another one is no larger and no
//      more damaging) and take the lower convex hull in the (bytes, damage)
//      plane.
//   2. Lagrangian relaxation: for a multiplier lambda each item independently
//      picks argmin damage + lambda*bytes. Instead of bisecting on lambda we
//      enumerate its breakpoints exactly: all hull segments sorted by
//      efficiency (damage saved per byte) and taken in that order until the
//      budget is hit. This is the optimum of the bisection (the dual), and the
//      fractional use of the first segment that does not fit gives the LP
//      relaxation value, which equals the Lagrangian dual maximum
//        LB = max_lambda [ sum_i min_c (d_ic + lambda*b_ic) - lambda*(budget - fixed) ].
//      LB is a certified lower bound on the damage of ANY feasible plan.
//   3. Greedy fill: from the integral part of the Lagrangian solution, apply
//      the best damage-per-byte upgrade (any non-dominated candidate, not only
//      hull ones) that still fits, until none fits.
//   4. Dynamic programming over a discretised byte axis: the variable part of
//      the budget (budget - fixed - sum of each item's smallest candidate) is
//      cut into at most min(max_dp_bins, max_dp_ops / #candidates) bins; each
//      candidate's extra bytes are rounded UP to whole bins, so every DP
//      solution is truly feasible. When a bin is one byte (small instances) the
//      DP is exact. The DP result is greedy-filled again with the true byte
//      counts; the better of 3 and 4 wins. Unless the bins were single bytes, a
//      second DP with the extra bytes rounded DOWN solves a relaxation of the
//      problem, whose optimum is another certified lower bound (usually much
//      tighter than the LP one).
// Result: Solution::damage (the plan), Solution::lower_bound (the larger of
// the Lagrangian/LP bound and the rounded-down DP bound) and
// Solution::gap = damage - lower_bound >= 0: the plan is certified to be within
// `gap` of the true optimum. gap == 0 (up to rounding) means proven optimal;
// `exact` is also true when the DP ran at one-byte resolution.
//
// Cost: O(sum of candidates * log) for 1-3 and O(bins * candidates) for 4
// (<= 2 * max_dp_ops cell updates); 300 modules x 19 candidates take well under
// a second (see tests/plan/test_solver.cpp, FastOnModelSizedInstances).
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "model/precision.h"

namespace optiq {

struct Candidate {
  TensorFormat format;
  int64_t bytes = 0;   // storage of this module in this format
  double damage = 0;   // predicted KL contribution, >= 0
  double time = 0;     // predicted decode time (plan/decode_speed.h), used by SolverOptions::max_time
};

struct SolverItem {
  std::string path;  // module path, e.g. "model.layers.3.self_attn.v_proj"
  std::vector<Candidate> candidates;
};

// "lm_head=8" (8 bits, default group size), "lm_head=q8g32", "lm_head=q4",
// "lm_head=float" (also "f16", "fp16", "bf16"); the part before the last '='
// is an ECMAScript regex searched in the module path.
struct Pin {
  std::string pattern;
  TensorFormat format;
  std::string text;  // as given, for messages
};
Pin parse_pin(const std::string& text, int default_group_size = 64);
// "q4g64", "q4" (default group), "4", "float": the format part of a pin.
TensorFormat parse_format_spec(const std::string& text, int default_group_size = 64);

struct SolverOptions {
  int64_t fixed_bytes = 0;  // bytes outside the items (norms), counted against the budget
  int min_bits = 0;         // drop affine candidates below this many bits
  std::vector<Pin> pins;
  std::vector<std::vector<std::string>> tie_groups;  // module paths sharing one format
  // > 0: the chosen candidates' summed `time` must not exceed this as well
  // (a decode-speed bound). Solved by a second Lagrange multiplier: plans of
  // damage + mu * time for mu found by bisection; the result is the least
  // damaging plan that meets both limits among those, and its lower bound
  // stays certified (weak duality: LB(mu) - mu * max_time). Throws when even
  // the fastest plan within the budget is slower.
  double max_time = 0;
  int64_t max_dp_bins = 1 << 16;
  int64_t max_dp_ops = 100'000'000;  // bins * candidates per DP; fewer bins when above
};

// Tie groups for the usual constraint "q, k and v of a layer share a format"
// (and, with gate_up, "gate and up of a layer share a format").
std::vector<std::vector<std::string>> tie_qkv_groups(const std::vector<ModuleInfo>& modules, bool gate_up = false);

struct Solution {
  std::map<std::string, TensorFormat> formats;  // every item's chosen format
  int64_t bytes = 0;         // fixed_bytes + sum of chosen bytes (<= budget)
  double damage = 0;         // sum of chosen damage
  double lower_bound = 0;    // Lagrangian/LP bound: no feasible plan has less damage
  double gap = 0;            // damage - lower_bound (>= 0)
  double lambda = 0;         // optimal Lagrange multiplier (damage per byte)
  double time = 0;           // sum of the chosen candidates' time
  double mu = 0;             // with max_time: the time multiplier used (0: the bound did not bind)
  bool exact = false;        // proven optimal (gap ~ 0 or one-byte DP)
  std::string method;        // "unconstrained", "lagrange+greedy", "dp+greedy"
  PrecisionMap precision_map() const { return PrecisionMap{formats, {}}; }
};

// Throws optiq::Error for empty/invalid input (no candidates, negative or NaN
// damage, non-positive bytes, bad pins, unknown paths in tie groups,
// contradictory pins in a tie group) and for a budget below the smallest
// achievable size (the message gives it).
Solution solve(const std::vector<SolverItem>& items, int64_t budget, const SolverOptions& opts = {});

struct ParetoPoint {
  int64_t bytes = 0;  // fixed_bytes + sum of chosen bytes
  double damage = 0;
  bool on_hull = false;  // on the lower convex hull (a Lagrangian solution: exactly optimal at its size)
  std::vector<TensorFormat> formats;  // formats[i] is the choice for items[i]
};
// The efficient frontier (damage vs bytes) from the smallest to the
// damage-minimising plan, sorted by bytes, damage strictly decreasing. Points
// are exact optima of the discretised problem (bins of (max-min)/max_points
// bytes, rounded up), plus every Lagrangian (convex hull) breakpoint.
std::vector<ParetoPoint> solve_pareto(const std::vector<SolverItem>& items, const SolverOptions& opts = {},
                                      int max_points = 4096);

// Candidates for a module from a damage table: every format in `formats` that
// fits the module, with module_bytes and damage(format). Float gets damage 0
// unless the table says otherwise. Formats missing from `damage` are skipped.
// time_of (optional): each candidate's Candidate::time.
using CandidateTime = std::function<double(const ModuleInfo&, const TensorFormat&)>;
SolverItem make_item(const ModuleInfo& m, const std::map<std::string, double>& damage_by_format_name,
                     const std::vector<TensorFormat>& formats, const CandidateTime& time_of = {});

}  // namespace optiq
