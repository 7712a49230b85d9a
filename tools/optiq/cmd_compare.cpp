// optiq compare: the seed article's benchmark table for one model. FP16,
// uniform 8-bit and 4-bit, and optiq's mixed plans at the same sizes (plus
// any --bpw), each quantized, exported, reloaded and measured on held-out
// text against the source model; two SVG plots (bits per weight vs KLD, and
// the precision map of the plan at the 4-bit size).
#include <algorithm>
#include <filesystem>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "pipeline.h"
#include "core/atomic_file.h"
#include "core/error.h"
#include "eval/perplexity.h"
#include "eval/reference_scores.h"
#include "eval/speed.h"
#include "kernels/elementwise.h"
#include "model/calibration_stats.h"
#include "model/quantize_model.h"
#include "model/exporter.h"
#include "model/transformer.h"
#include "plan/baselines.h"
#include "plan/budget.h"
#include "profile/calibration.h"
#include "report/svg.h"

namespace optiq::cli {

namespace {

namespace fs = std::filesystem;

struct CompareArgs {
  ModelArgs model{ModelArgs::Use::Measure};
  ProfileStepArgs profile;
  std::string text;
  std::string out_dir = "optiq-compare";
  std::vector<double> bpw;
  std::string uniform = "8,4";
  std::string sweep = "3,5,6";
  std::string prompt;
  int prompt_tokens = 40;
  int group_size = 64;
  int ctx = 512;
  int chunks = 20;
  int gen_tokens = 64;
  bool no_speed = false;
  std::string use = "auto";
  std::string select = "measured";
  std::string replot;
  bool json = false;
};

struct Row {
  std::string label;
  std::string kind;  // "reference", "uniform", "optiq"
  PrecisionMap map;
  std::optional<double> predicted;
  std::string plan_file;
  int64_t bytes = 0;
  double bpw = 0;
  PerplexityResult eval;
  double decode_tok_s = 0;
  std::string sample;  // greedy continuation of --prompt
};

Row make_row(std::string label, std::string kind, PrecisionMap map, std::optional<double> predicted = std::nullopt,
             std::string plan_file = "") {
  Row r;
  r.label = std::move(label);
  r.kind = std::move(kind);
  r.map = std::move(map);
  r.predicted = predicted;
  r.plan_file = std::move(plan_file);
  return r;
}

std::vector<int> parse_bits_list(const std::string& text) {
  std::vector<int> bits;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    try {
      size_t used = 0;
      const int b = std::stoi(item, &used);
      check(used == item.size(), "");
      check_affine_format({b, 64});
      bits.push_back(b);
    } catch (const std::exception&) {
      fail("'{}': expected comma-separated bit widths among 2,3,4,5,6,8", text);
    }
  }
  return bits;
}

// The greedy continuation of `prompt` (what a user sees first).
std::string greedy_sample(const Model& m, const std::string& prompt, int n) {
  Transformer tf(m, std::min(m.config.max_seq, 2048));
  const std::vector<int32_t> ids = m.tokenizer->encode(prompt, /*add_bos=*/true);
  if (ids.empty() || static_cast<int>(ids.size()) + n > tf.max_ctx()) return "";
  const std::vector<float> logits = tf.forward_last(ids);
  std::string text;
  int32_t tok = static_cast<int32_t>(argmax(logits.data(), static_cast<int64_t>(logits.size())));
  for (int i = 0; i < n; ++i) {
    if (tok < 0 || m.tokenizer->is_eog(tok)) break;
    text += m.tokenizer->decode_token(tok);
    if (i + 1 < n) tok = tf.forward_greedy(tok);
  }
  return text;
}

std::string samples_markdown(const std::vector<Row>& rows, const std::string& prompt) {
  std::string s = fmt::format("\nGreedy continuations of \"{}\":\n\n", prompt);
  for (const Row& r : rows) {
    std::string one = r.sample;
    std::replace(one.begin(), one.end(), '\n', ' ');
    s += fmt::format("- **{}**: {}\n", r.label, one);
  }
  return s;
}

// Quantizes a fresh copy of the source per the row's map (with the roundings
// its plan names, from `stats`), exports it as MLX, reloads the export (what a
// user runs) and measures it.
void measure_row(Row& row, const CompareArgs& a, const ReferenceScores& ref, const std::vector<int32_t>& tokens,
                 const std::string& scratch, const CalibrationStats& stats) {
  {
    Model m = a.model.load();
    QuantizeModelOptions qo{.recipe = QuantizeRecipe::for_model(m.config), .progress = false};
    quantize_as_planned(qo, stats);
    quantize_model(m, row.map, qo);
    make_exporter("mlx")->write(m, scratch, {.bf16 = qo.recipe.bf16_scales, .force = true});
  }
  LoadOptions lo;
  Model q = load_model(scratch, lo);
  PerplexityOptions po;
  po.ctx = a.ctx;
  po.chunks = a.chunks;
  po.ref_scores = &ref;
  po.progress = !a.json;
  row.eval = evaluate_perplexity(q, tokens, po);
  if (!a.prompt.empty()) row.sample = greedy_sample(q, a.prompt, a.prompt_tokens);
  if (!a.no_speed) row.decode_tok_s = measure_speed(q, {.prompt_tokens = 0, .gen_tokens = a.gen_tokens, .reps = 3}).decode_tok_s;
  std::error_code ec;
  fs::remove_all(scratch, ec);
}

std::string markdown_table(const std::vector<Row>& rows, double ref_ppl, bool speed) {
  std::string s = "| model | MB | bits/weight | perplexity | Δppl | KLD | top-1 |";
  s += speed ? " decode tok/s | predicted KL |\n|---|---|---|---|---|---|---|---|---|\n"
             : " predicted KL |\n|---|---|---|---|---|---|---|---|\n";
  for (const Row& r : rows) {
    const double mb = r.bytes / 1e6;
    s += fmt::format("| {} | {} | {:.3f} | {:.4f} | {:+.2f}% | {:.5f} | {:.2f}% |", r.label, mb < 10 ? fmt::format("{:.3f}", mb) : fmt::format("{:.1f}", mb), r.bpw,
                     r.eval.ppl, 100.0 * (r.eval.ppl / ref_ppl - 1.0), r.eval.kld, 100.0 * r.eval.top1);
    if (speed) s += fmt::format(" {:.1f} |", r.decode_tok_s);
    s += r.predicted ? fmt::format(" {:.5f} |\n", *r.predicted) : " |\n";
  }
  return s;
}

std::string pareto_svg(const std::vector<Row>& rows, const std::string& model_name) {
  LineChart c;
  c.title = fmt::format("{}: KL divergence vs size", model_name);
  c.x_label = "bits per weight";
  c.y_label = "KLD vs reference (nats/token, log scale)";
  c.log_y = true;
  ChartSeries uni{"uniform", "#d62728", {}, true}, mix{"optiq mixed", "#1f77b4", {}, true};
  for (const Row& r : rows) {
    if (r.kind == "uniform") uni.xy.push_back({r.bpw, r.eval.kld});
    if (r.kind == "optiq") mix.xy.push_back({r.bpw, r.eval.kld});
  }
  c.series = {uni, mix};
  return render_line_chart(c);
}

std::string precision_map_svg(const ModelConfig& config, const PrecisionMap& map, const std::string& title) {
  std::vector<std::string> kinds;
  for (const auto& m : quantizable_modules(config))
    if (m.layer >= 0 && std::find(kinds.begin(), kinds.end(), m.kind_name()) == kinds.end())
      kinds.emplace_back(m.kind_name());
  Heatmap h;
  h.title = title;
  h.col_labels = kinds;
  h.row_labels.push_back("embed / head");
  h.cells.emplace_back(kinds.size());
  h.cell_text.emplace_back(kinds.size());
  for (int l = 0; l < config.n_layers; ++l) {
    h.row_labels.push_back(fmt::format("layer {}", l));
    h.cells.emplace_back(kinds.size());
    h.cell_text.emplace_back(kinds.size());
  }
  int other_col = 0;
  for (const auto& m : quantizable_modules(config)) {
    const TensorFormat& f = map.formats.at(m.path);
    const double bits = f.code_bits();
    const std::string text = f.affine() ? fmt::format("{}/{}", f->bits, f->group_size)
                             : f ? tensor_format_short(f) : std::string("f16");
    if (m.layer < 0) {  // embedding / lm_head share the first row, labelled in the cell
      if (other_col >= static_cast<int>(kinds.size())) continue;
      h.cells[0][other_col] = bits;
      h.cell_text[0][other_col++] = (m.kind == ModuleKind::Embed ? "emb " : "head ") + text;
      continue;
    }
    const size_t col = std::find(kinds.begin(), kinds.end(), m.kind_name()) - kinds.begin();
    h.cells[m.layer + 1][col] = bits;
    h.cell_text[m.layer + 1][col] = text;
  }
  h.legend = {{2, "2 bits"}, {3, "3 bits"}, {4, "4 bits"}, {5, "5 bits"}, {6, "6 bits"}, {8, "8 bits"}, {16, "fp16"}};
  return render_heatmap(h);
}

// --replot DIR: the plots again from DIR/compare.json and its plans (no measuring).
void replot(const CompareArgs& a) {
  const std::string dir = a.replot;
  const std::string path = (fs::path(dir) / "compare.json").string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_text_file(path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not a compare.json ({})", path, e.what());
  }
  check(j.contains("rows") && j["rows"].is_array(), "{}: no rows", path);
  Model m = a.model.load(/*weights=*/false);
  const std::string model_name = fs::path(a.model.path).filename().string();
  std::vector<Row> rows;
  for (const auto& jr : j["rows"]) {
    Row r;
    r.label = jr.at("label").get<std::string>();
    r.kind = jr.at("kind").get<std::string>();
    r.bpw = jr.at("bits_per_weight").get<double>();
    r.eval.kld = jr.at("kld").get<double>();
    if (jr.contains("plan")) r.plan_file = jr["plan"].get<std::string>();
    rows.push_back(std::move(r));
  }
  write_file_atomic((fs::path(dir) / "pareto.svg").string(), pareto_svg(rows, model_name));
  for (const Row& r : rows)
    if (r.kind == "optiq" && r.label.find("uniform 4-bit") != std::string::npos && !r.plan_file.empty()) {
      const PrecisionMap map = PrecisionMap::from_plan_file(r.plan_file, m.config);
      write_file_atomic((fs::path(dir) / "precision_map.svg").string(),
                        precision_map_svg(m.config, map,
                                          fmt::format("{}: optiq plan at the uniform 4-bit size ({:.3f} bits/weight)",
                                                      model_name, r.bpw)));
    }
  if (!a.json) fmt::print("wrote         {}/pareto.svg, precision_map.svg\n", dir);
}

void run_compare(CompareArgs& a, const CLI::App& cmd) {
  if (!a.replot.empty()) return replot(a);
  check(!a.profile.calib.source.empty() && !a.text.empty(), "compare needs --calib and --text (or --replot DIR)");
  std::error_code ec;
  check(fs::is_regular_file(a.text, ec), "{}: evaluation text not found", a.text);
  if (a.profile.calib.source != "self" && same_file(a.text, a.profile.calib.source))
    fmt::print(stderr, "optiq: warning: --text {} is the calibration file: the comparison will be optimistic; "
                       "evaluate on held-out text\n", a.text);
  check(a.group_size == 32 || a.group_size == 64 || a.group_size == 128, "--group-size must be 32, 64 or 128");
  const std::vector<int> sweep = parse_bits_list(a.sweep);
  const std::vector<int> uniform_levels = parse_bits_list(a.uniform);
  fs::create_directories(a.out_dir, ec);
  check(fs::is_directory(a.out_dir, ec), "{}: cannot create the output directory", a.out_dir);
  if (a.profile.cache.empty()) a.profile.cache = (fs::path(a.out_dir) / "profile.json").string();

  Model src = a.model.load();
  const ModelConfig config = src.config;
  const std::string model_name = fs::path(a.model.path).filename().string();
  const nlohmann::json provenance = command_provenance(cmd, a.model);
  ProfileStepOptions po = profile_step_options(a.profile);
  po.profile.provenance = provenance;
  ProfileStepResult profiled = run_profile_step(src, po);
  const SensitivityTable& t = profiled.table;
  if (!a.json) fmt::print("profile       {} ({:.1f}s)\n", a.profile.cache, t.seconds);

  std::string text = read_text_file(a.text);
  if (!text.empty() && text.back() == '\n') text.pop_back();
  check(!text.empty(), "{}: the text file is empty", a.text);
  const std::vector<int32_t> tokens = src.tokenizer->encode(text, /*add_bos=*/true);
  a.ctx = std::min(a.ctx, config.max_seq);
  const ReferenceScores ref = ReferenceScores::compute(src, tokens, a.ctx, a.chunks, int64_t{3} << 30, !a.json);

  // Rows: FP16, then per uniform level (8, 4, then the sweep) uniform and optiq at its size, then --bpw.
  std::vector<Row> rows;
  PrecisionMap fp16;
  for (const auto& m : quantizable_modules(config)) fp16.formats[m.path] = std::nullopt;
  rows.push_back(make_row(config.prefers_bf16 ? "BF16 (reference precision)" : "FP16 (reference precision)", "reference", fp16));
  std::vector<int> levels = uniform_levels;
  for (int b : sweep)
    if (std::find(levels.begin(), levels.end(), b) == levels.end()) levels.push_back(b);
  // One measurer for every optiq row: the reference pass and quantized tensors are shared.
  // The roundings the profile chose, for measured selection and the rows alike.
  const CalibrationStats stats = profiled_rounding_stats(src, t, profiled.windows, !a.json);
  std::unique_ptr<PlanMeasurer> measurer;
  if (a.select == "measured")
    measurer = make_plan_measurer(src, t, PlanStepOptions{}, {.windows = &profiled.windows, .stats = &stats});
  auto add_optiq = [&](PlanStepArgs pa, const std::string& label, const std::string& file) {
    const std::string plan_path = (fs::path(a.out_dir) / file).string();
    pa.select = a.select;
    PlanStepOptions so = plan_step_options(pa, !a.json);
    so.provenance = provenance;
    PlanStepResult r = run_plan_step(src, t, so, plan_path, {.measurer = measurer.get()});
    rows.push_back(make_row(label, "optiq", r.map, r.solution.damage, plan_path));
  };
  const auto damage = t.damage(parse_damage_source(a.use));
  for (int b : levels) {
    const AffineFormat f{b, a.group_size};
    PrecisionMap u = uniform_plan(config, f);
    const int64_t bytes = plan_bytes(config, u);
    const double pred = plan_predicted_damage(u, damage);
    rows.push_back(make_row(fmt::format("uniform {}-bit g{}", b, a.group_size), "uniform", u, pred));
    PlanStepArgs pa;
    pa.size = fmt::format("{}B", bytes);
    pa.use = a.use;
    add_optiq(pa, fmt::format("optiq mixed @ uniform {}-bit size", b), fmt::format("plan-q{}g{}-size.json", b, a.group_size));
  }
  for (double x : a.bpw) {
    PlanStepArgs pa;
    pa.bpw = fmt::format("{}", x);
    pa.use = a.use;
    add_optiq(pa, fmt::format("optiq mixed @ {:g} bpw", x), fmt::format("plan-{:g}bpw.json", x));
  }

  measurer.reset();
  { Model drop = std::move(src); }  // rows reload the source; keep one copy at a time
  const std::string scratch = (fs::path(a.out_dir) / ".scratch-model").string();
  for (size_t i = 0; i < rows.size(); ++i) {
    Row& r = rows[i];
    r.bytes = plan_bytes(config, r.map);
    r.bpw = plan_bits_per_weight(config, r.map);
    if (!a.json) fmt::print(stderr, "compare: [{}/{}] {} ({:.3f} bits/weight)\n", i + 1, rows.size(), r.label, r.bpw);
    measure_row(r, a, ref, tokens, scratch, stats);
  }
  const double ref_ppl = rows.front().eval.ref_ppl;

  // Table, JSON, plots.
  std::sort(rows.begin() + 1, rows.end(), [](const Row& x, const Row& y) {
    return x.bpw != y.bpw ? x.bpw > y.bpw : x.kind > y.kind;  // larger first; uniform before optiq
  });
  std::string table = markdown_table(rows, ref_ppl, !a.no_speed);
  if (!a.prompt.empty()) table += samples_markdown(rows, a.prompt);
  const std::string header = fmt::format(
      "{}: {} windows x {} tokens of {} ({} scored tokens); reference perplexity {:.4f}; KLD and top-1 against {}\n\n",
      model_name, rows.front().eval.chunks, a.ctx, fs::path(a.text).filename().string(), rows.front().eval.tokens,
      ref_ppl, a.model.path);
  write_file_atomic((fs::path(a.out_dir) / "compare.md").string(), header + table);
  write_file_atomic((fs::path(a.out_dir) / "pareto.svg").string(), pareto_svg(rows, model_name));
  const Row* at4 = nullptr;
  for (const Row& r : rows)
    if (r.kind == "optiq" && r.label.find("uniform 4-bit") != std::string::npos) at4 = &r;
  if (at4)
    write_file_atomic((fs::path(a.out_dir) / "precision_map.svg").string(),
                      precision_map_svg(config, at4->map,
                                        fmt::format("{}: optiq plan at the uniform 4-bit size ({:.3f} bits/weight)",
                                                    model_name, at4->bpw)));
  nlohmann::json j = {{"model", a.model.path}, {"text", a.text}, {"ctx", a.ctx}, {"chunks", rows.front().eval.chunks},
                      {"tokens", rows.front().eval.tokens}, {"ref_ppl", ref_ppl}, {"profile", a.profile.cache},
                      {"out_dir", a.out_dir}, {"rows", nlohmann::json::array()}};
  for (const Row& r : rows) {
    nlohmann::json jr = {{"label", r.label}, {"kind", r.kind}, {"bytes", r.bytes}, {"bits_per_weight", r.bpw},
                         {"ppl", r.eval.ppl}, {"kld", r.eval.kld}, {"kld_stderr", r.eval.kld_stderr},
                         {"top1", r.eval.top1}};
    if (!a.no_speed) jr["decode_tok_s"] = r.decode_tok_s;
    if (r.predicted) jr["predicted_kl"] = *r.predicted;
    if (!r.plan_file.empty()) jr["plan"] = r.plan_file;
    if (!a.prompt.empty()) jr["sample"] = r.sample;
    j["rows"].push_back(jr);
  }
  write_file_atomic((fs::path(a.out_dir) / "compare.json").string(), j.dump(2) + "\n");
  if (a.json) {
    fmt::print("{}\n", j.dump());
    return;
  }
  fmt::print("\n{}{}\nwrote         {}/compare.md, compare.json, pareto.svg{}\n", header, table, a.out_dir,
             at4 ? ", precision_map.svg" : "");
}

}  // namespace

Runner register_compare(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "compare", "Benchmark table: FP16, uniform 8/4-bit and optiq's mixed plans at the same sizes, with SVG plots");
  auto a = std::make_shared<CompareArgs>();
  a->model.add_to(*cmd);
  add_profile_step_options(*cmd, a->profile);
  cmd->get_option("--calib")->required(false);  // not with --replot (checked when running)
  cmd->add_option("--text", a->text, "held-out evaluation text (not the calibration text; required)");
  cmd->add_option("--replot", a->replot, "only redraw the plots of an earlier run's directory from its compare.json");
  cmd->add_option("-o,--out-dir", a->out_dir, "where compare.md/.json, the plots, plans and profile go")
      ->capture_default_str();
  cmd->add_option("--cache", a->profile.cache, "profile/cache JSON (default: OUT_DIR/profile.json)");
  cmd->add_option("--bpw", a->bpw, "extra optiq rows at these bits per weight (repeatable or comma-separated)")
      ->delimiter(',');
  cmd->add_option("--uniform", a->uniform, "uniform bit widths, each with optiq's plan at its size")->capture_default_str();
  cmd->add_option("--prompt", a->prompt, "also show each row's greedy continuation of this prompt");
  cmd->add_option("--prompt-tokens", a->prompt_tokens, "tokens per continuation")->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--sweep", a->sweep, "extra uniform bit widths (with optiq at their sizes) for the Pareto plot; '' for none")
      ->capture_default_str();
  cmd->add_option("--group-size", a->group_size, "group size of the uniform rows")->capture_default_str();
  cmd->add_option("--ctx", a->ctx, "evaluation window")->capture_default_str()->check(CLI::Range(8, 1 << 20));
  cmd->add_option("--chunks", a->chunks, "evaluation windows (0: the whole text)")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--gen-tokens", a->gen_tokens, "decoded tokens per speed measurement")->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--no-speed", a->no_speed, "skip the decode speed column");
  cmd->add_option("--use", a->use, "damage numbers for planning: auto, exact or fast")->capture_default_str()
      ->check(CLI::IsMember({"auto", "exact", "fast"}));
  cmd->add_option("--select", a->select, "optiq's plans: measured (the variant of least KL on the calibration text, or one within two paired "
                  "standard errors of it whose bits spread less) or predicted")
      ->capture_default_str()->check(CLI::IsMember({"predicted", "measured"}));
  cmd->add_flag("--json", a->json, "print one JSON object");
  return [a, cmd] { run_compare(*a, *cmd); };
}

}  // namespace optiq::cli
