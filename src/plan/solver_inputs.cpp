// What the solver is given: pins (REGEX=FORMAT), tied groups (q/k/v, gate/up
// of a layer) and one item per module (its candidate formats, bytes, damage).
#include <regex>

#include <fmt/format.h>

#include "core/error.h"
#include "plan/budget.h"
#include "plan/solver.h"

namespace optiq {

TensorFormat parse_format_spec(const std::string& text, int default_group_size) {
  return parse_tensor_format(text, default_group_size);
}

Pin parse_pin(const std::string& text, int default_group_size) {
  const auto eq = text.rfind('=');
  check(eq != std::string::npos && eq > 0 && eq + 1 < text.size(),
        "pin '{}': expected REGEX=FORMAT, e.g. lm_head=8, lm_head=q8g32 or 'layers\\.0\\.'=float", text);
  Pin p;
  p.pattern = text.substr(0, eq);
  p.text = text;
  try {
    std::regex probe(p.pattern);
  } catch (const std::regex_error& e) {
    fail("pin '{}': bad regex '{}': {}", text, p.pattern, e.what());
  }
  try {
    p.format = parse_format_spec(text.substr(eq + 1), default_group_size);
  } catch (const Error& e) {
    fail("pin '{}': {}", text, e.what());
  }
  return p;
}

std::vector<std::vector<std::string>> tie_qkv_groups(const std::vector<ModuleInfo>& modules, bool gate_up) {
  std::map<int, std::vector<std::string>> qkv, gu;
  for (const auto& m : modules) {
    if (m.layer < 0) continue;
    if (m.kind == ModuleKind::QProj || m.kind == ModuleKind::KProj || m.kind == ModuleKind::VProj)
      qkv[m.layer].push_back(m.path);
    if (gate_up && (m.kind == ModuleKind::GateProj || m.kind == ModuleKind::UpProj)) gu[m.layer].push_back(m.path);
  }
  std::vector<std::vector<std::string>> g;
  for (auto& [l, v] : qkv) g.push_back(v);
  for (auto& [l, v] : gu) g.push_back(v);
  return g;
}

SolverItem make_item(const ModuleInfo& m, const std::map<std::string, double>& damage,
                     const std::vector<TensorFormat>& formats, const CandidateTime& time_of) {
  SolverItem it{m.path, {}};
  for (const auto& candidate : formats) {
    const TensorFormat f = module_format(candidate, m);  // `source`: m's own type, or none
    if (f && !format_fits(f, m.cols)) continue;
    auto d = damage.find(tensor_format_name(f));
    if (d == damage.end() && f) continue;
    it.candidates.push_back(
        {f, module_bytes(m, f), d == damage.end() ? 0.0 : d->second, time_of ? time_of(m, f) : 0.0});
  }
  return it;
}

}  // namespace optiq
