#include "plan/budget.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>

#include <fmt/format.h>

#include "core/error.h"

namespace optiq {

int64_t module_bytes(const ModuleInfo& m, const TensorFormat& f) {
  check(format_fits(f, m.cols), "{}: {} does not fit: group size {} does not divide its {} inputs", m.path,
        tensor_format_name(f), f.group_size(), m.cols);
  return format_matrix_bytes(f, m.rows, m.cols);
}

int64_t fixed_weight_params(const ModelConfig& c) { return int64_t(c.n_layers) * 2 * c.dim + c.dim; }
int64_t fixed_weight_bytes(const ModelConfig& c) { return fixed_weight_params(c) * 2; }

int64_t total_weight_params(const ModelConfig& c) {
  int64_t n = fixed_weight_params(c);
  for (const auto& m : quantizable_modules(c)) n += m.numel();
  return n;
}

int64_t fp16_weight_bytes(const ModelConfig& c) { return total_weight_params(c) * 2; }

int64_t plan_bytes(const ModelConfig& c, const PrecisionMap& plan) {
  int64_t b = fixed_weight_bytes(c);
  for (const auto& m : quantizable_modules(c)) {
    auto it = plan.formats.find(m.path);
    check(it != plan.formats.end(), "plan: module {} has no format", m.path);
    b += module_bytes(m, it->second);
  }
  return b;
}

double plan_bits_per_weight(const ModelConfig& c, const PrecisionMap& plan) {
  return double(plan_bytes(c, plan)) * 8.0 / double(total_weight_params(c));
}

std::vector<TensorFormat> all_tensor_formats() {
  std::vector<TensorFormat> f;
  for (int b : {2, 3, 4, 5, 6, 8})
    for (int g : {32, 64, 128}) f.push_back(AffineFormat{b, g});
  f.push_back(std::nullopt);
  return f;
}

SizeRange achievable_size_range(const ModelConfig& c, const std::vector<TensorFormat>& formats) {
  check(!formats.empty(), "budget: no candidate formats");
  SizeRange r{fixed_weight_bytes(c), fixed_weight_bytes(c)};
  for (const auto& m : quantizable_modules(c)) {
    int64_t lo = std::numeric_limits<int64_t>::max(), hi = 0;
    for (const auto& candidate : formats) {
      const TensorFormat f = module_format(candidate, m);
      if (f && !format_fits(f, m.cols)) continue;
      const int64_t b = module_bytes(m, f);
      lo = std::min(lo, b);
      hi = std::max(hi, b);
    }
    check(hi > 0, "budget: no candidate format fits module {} ({} inputs)", m.path, m.cols);
    r.min_bytes += lo;
    r.max_bytes += hi;
  }
  return r;
}

namespace {

std::string trim(const std::string& s) {
  size_t a = 0, b = s.size();
  while (a < b && std::isspace(static_cast<unsigned char>(s[a]))) ++a;
  while (b > a && std::isspace(static_cast<unsigned char>(s[b - 1]))) --b;
  return s.substr(a, b - a);
}

// Leading number of `s` (after trimming); `rest` gets what follows, trimmed.
double leading_number(const std::string& s, const std::string& what, const std::string& original,
                      std::string& rest) {
  const char* first = s.data();
  const char* last = s.data() + s.size();
  if (first != last && *first == '+') ++first;
  double v = 0;
  auto [ptr, ec] = std::from_chars(first, last, v, std::chars_format::fixed);
  check(ec == std::errc() && ptr != first, "{} '{}': expected a number", what, original);
  check(std::isfinite(v), "{} '{}': not a finite number", what, original);
  rest = trim(std::string(ptr, last));
  return v;
}

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

}  // namespace

int64_t parse_byte_size(const std::string& text, const std::string& what) {
  const std::string s = trim(text);
  check(!s.empty(), "{}: empty size; expected e.g. 9.7GB, 350MB or 1.5GiB", what);
  std::string unit;
  const double v = leading_number(s, what, text, unit);
  const std::string u = lower(unit);
  double mult = 0;
  if (u == "b") mult = 1;
  else if (u == "kb") mult = 1e3;
  else if (u == "mb") mult = 1e6;
  else if (u == "gb") mult = 1e9;
  else if (u == "tb") mult = 1e12;
  else if (u == "kib") mult = 1024.0;
  else if (u == "mib") mult = 1024.0 * 1024;
  else if (u == "gib") mult = 1024.0 * 1024 * 1024;
  else if (u == "tib") mult = 1024.0 * 1024 * 1024 * 1024;
  else if (u.empty())
    fail("{} '{}': give a unit (B, kB, MB, GB, TB or KiB, MiB, GiB, TiB), e.g. {}GB", what, text, s);
  else
    fail("{} '{}': unknown unit '{}'; use B, kB, MB, GB, TB (decimal) or KiB, MiB, GiB, TiB (binary)", what, text,
         unit);
  check(v > 0, "{} '{}': the size must be > 0", what, text);
  const double bytes = std::floor(v * mult);
  check(bytes >= 1 && bytes < 9.0e18, "{} '{}': size out of range", what, text);
  return static_cast<int64_t>(bytes);
}

double parse_bits_per_weight(const std::string& text, const std::string& what) {
  const std::string s = trim(text);
  check(!s.empty(), "{}: empty; expected bits per weight, e.g. 4.5", what);
  std::string rest;
  const double v = leading_number(s, what, text, rest);
  check(rest.empty(), "{} '{}': expected a plain number of bits per weight, e.g. 4.5", what, text);
  check(v > 0, "{} '{}': bits per weight must be > 0", what, text);
  return v;
}

double parse_reduction(const std::string& text, const std::string& what) {
  const std::string s = trim(text);
  check(!s.empty(), "{}: empty; expected a percentage, e.g. 40%", what);
  std::string rest;
  const double v = leading_number(s, what, text, rest);
  check(rest.empty() || rest == "%", "{} '{}': expected a percentage such as 40%", what, text);
  check(v > 0 && v < 100, "{} '{}': the reduction must lie strictly between 0% and 100%", what, text);
  return v / 100.0;
}

std::string format_bytes(int64_t b) {
  const double v = double(b);
  if (v >= 1e9) return fmt::format("{:.3f} GB", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.2f} MB", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.2f} kB", v / 1e3);
  return fmt::format("{} B", b);
}

Budget resolve_budget(const BudgetOptions& o, const ModelConfig& c, const std::vector<TensorFormat>& formats) {
  const int given = int(o.bpw.has_value()) + int(o.size.has_value()) + int(o.reduction.has_value()) +
                    int(o.fit.has_value());
  check(given == 1, "budget: give exactly one of --bpw, --size, --reduction, --fit (got {})", given);
  const int64_t params = total_weight_params(c);
  check(params > 0, "budget: the model has no weights");
  const double fp16 = double(fp16_weight_bytes(c));
  Budget b;
  double want = 0;  // bytes, before rounding
  if (o.bpw) {
    const double bpw = parse_bits_per_weight(*o.bpw, "--bpw");
    want = bpw * double(params) / 8.0;
    b.kind = "bpw";
    b.text = *o.bpw;
  } else if (o.size) {
    want = double(parse_byte_size(*o.size, "--size"));
    b.kind = "size";
    b.text = *o.size;
  } else if (o.reduction) {
    want = fp16 * (1.0 - parse_reduction(*o.reduction, "--reduction"));
    b.kind = "reduction";
    b.text = *o.reduction;
  } else {
    const int64_t mem = parse_byte_size(*o.fit, "--fit");
    check(o.runtime.ctx > 0, "--fit {}: give the context length with --ctx (> 0)", *o.fit);
    b.memory = runtime_memory(c, o.runtime);
    b.fit_bytes = mem;
    want = double(mem) - double(b.memory->reserved());
    b.kind = "fit";
    b.text = fmt::format("{}@ctx{}", *o.fit, o.runtime.ctx);
    check(want > 0,
          "--fit {} --ctx {} --runtime {}: the KV cache ({}), compute buffers ({}) and runtime ({}) alone exceed the "
          "memory",
          *o.fit, o.runtime.ctx, runtime_name(o.runtime.runtime), format_bytes(b.memory->kv_bytes),
          format_bytes(b.memory->compute_bytes), format_bytes(b.memory->runtime_bytes));
  }
  b.weight_bytes = static_cast<int64_t>(std::floor(want));
  const SizeRange r = achievable_size_range(c, formats);
  // --fit asks for the largest plan that fits: when everything in float
  // does, that is the plan (the other budgets ask for a size, and a size the
  // model cannot reach is an error).
  const bool float_fits = b.kind == "fit" && b.weight_bytes > r.max_bytes;
  if (float_fits) b.weight_bytes = r.max_bytes;
  auto bpw_of = [&](double bytes) { return bytes * 8.0 / double(params); };
  const std::string opt = b.kind == "fit" ? fmt::format("--fit {} --ctx {} --runtime {}", *o.fit, o.runtime.ctx,
                                                        runtime_name(o.runtime.runtime))
                                          : fmt::format("--{} {}", b.kind, b.text);
  check(b.weight_bytes >= r.min_bytes,
        "{}: {} of weights ({:.3f} bits/weight) is below the smallest achievable size {} ({:.3f} bits/weight); "
        "achievable: {} .. {} ({:.3f} .. {:.3f} bits/weight)",
        opt, format_bytes(b.weight_bytes), bpw_of(want), format_bytes(r.min_bytes), bpw_of(r.min_bytes),
        format_bytes(r.min_bytes), format_bytes(r.max_bytes), bpw_of(r.min_bytes), bpw_of(r.max_bytes));
  check(b.weight_bytes <= r.max_bytes,
        "{}: {} of weights ({:.3f} bits/weight) is above the largest achievable size {} ({:.3f} bits/weight, "
        "everything in float); achievable: {} .. {} ({:.3f} .. {:.3f} bits/weight)",
        opt, format_bytes(b.weight_bytes), bpw_of(want), format_bytes(r.max_bytes), bpw_of(r.max_bytes),
        format_bytes(r.min_bytes), format_bytes(r.max_bytes), bpw_of(r.min_bytes), bpw_of(r.max_bytes));
  b.description = fmt::format("{}: {} of weights ({:.3f} bits/weight, {:.1f}% of FP16)", opt,
                              format_bytes(b.weight_bytes), bpw_of(double(b.weight_bytes)),
                              100.0 * double(b.weight_bytes) / fp16);
  if (float_fits)
    b.description += fmt::format(" (everything in float fits, {} to spare)", format_bytes(int64_t(want) - r.max_bytes));
  if (b.memory)
    b.description += fmt::format("; reserved for {}: KV cache {} {} + compute {} + runtime {}",
                                 runtime_label(b.memory->runtime), b.memory->kv_type, format_bytes(b.memory->kv_bytes),
                                 format_bytes(b.memory->compute_bytes), format_bytes(b.memory->runtime_bytes));
  return b;
}

}  // namespace optiq
