#include "pipeline/export_step.h"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "core/error.h"
#include "core/partial_output.h"
#include "core/read_once_stream.h"
#include "core/version.h"
#include "formats/hf_checkpoint.h"
#include "kernels/matmul.h"
#include "model/matrix_source.h"
#include "model/provenance.h"
#include "model/save_mlx.h"

namespace optiq {

namespace {

// What an MLX export of a Hugging Face directory reads through a
// ReadOnceStream: every matrix borrowed from a shard's map, as a range of its
// file, in the order save_mlx asks for them (mlx_matrix_order).
struct SourceStreamPlan {
  std::vector<std::string> files;
  std::vector<ReadOnceStream::Range> ranges;
  std::unordered_map<std::string, size_t> range_of;  // module path -> range
  uint64_t window = 0;
};

bool source_stream_allowed() {
  const char* e = std::getenv("OPTIQ_SOURCE_STREAM");
  return !(e && std::string_view(e) == "0");
}

std::optional<SourceStreamPlan> plan_source_stream(const Model& model, const PrecisionMap& map) {
  const HfCheckpoint* ckpt = model.hf_checkpoint;
  if (!ckpt || !source_stream_allowed()) return std::nullopt;
  SourceStreamPlan p;
  for (const auto& f : ckpt->files()) p.files.push_back(f->path());
  // Packed in the export: what the plan quantizes (the source here is floats).
  const std::vector<ModuleInfo> order = mlx_matrix_order(model.config, [&map](const ModuleInfo& mod) {
    const TensorFormat fmt = map.format_of(mod.path);
    return fmt && !fmt.is_source();
  });
  uint64_t largest = 0, total = 0;
  for (const ModuleInfo& m : order) {
    const ModuleInfo* mod = &m;
    const Linear& lin = module_linear(model.weights, *mod);
    const void* data = nullptr;
    size_t elem = 0;
    if (const auto* h = lin.view().as<HalfWeights>()) data = h->data, elem = 2;
    else if (const auto* w = lin.view().as<F32Weights>()) data = w->data, elem = 4;
    if (!data) continue;  // packed already (an MLX source): read from the map
    const uint64_t bytes = static_cast<uint64_t>(lin.rows() * lin.cols()) * elem;
    for (size_t f = 0; f < ckpt->files().size(); ++f)
      if (const auto off = ckpt->files()[f]->file_offset_of(data, bytes)) {
        p.range_of[mod->path] = p.ranges.size();
        p.ranges.push_back({f, *off, bytes});
        largest = std::max(largest, bytes);
        total += bytes;
        break;
      }
  }
  if (p.ranges.empty()) return std::nullopt;
  // Room for the largest matrix and 256 MB read ahead of it (a layer's
  // matrices of an 8B model are 30-120 MB); no more than everything.
  constexpr uint64_t kAhead = uint64_t{256} << 20, kPage = 4096;
  p.window = std::min(largest + kAhead, total + p.ranges.size() * 2 * kPage) + 2 * kPage;
  return p;
}

}  // namespace

ExportStepResult run_export_step(Model& model, const PrecisionMap& map, const QuantizeModelOptions& opt,
                                 const std::string& out, const ExportStepOptions& eo) {
  const auto t0 = std::chrono::steady_clock::now();
  ExportStepResult r;
  for (const auto& mod : quantizable_modules(model.config)) {
    model.precision.formats[mod.path] = map.format_of(mod.path);
    r.matrix_params += mod.numel();
  }
  nlohmann::json provenance = eo.provenance;
  std::shared_future<nlohmann::json> source = eo.source;
  // An HF directory whose digests are still to come is read once, in file
  // order, hashed as it is read (core/read_once_stream.h); its partial work is
  // then keyed by the files' sizes and times, known at once.
  std::unique_ptr<ReadOnceStream> stream;  // outlives `matrices`, which reads through it
  std::optional<SourceStreamPlan> stream_plan;
  if (source.valid() && eo.format == "mlx") stream_plan = plan_source_stream(model, map);
  StreamedMatrices matrices(model, map, opt);
  if (stream_plan) {
    stream = std::make_unique<ReadOnceStream>(stream_plan->files, stream_plan->ranges, stream_plan->window);
    matrices.read_through(stream.get(), stream_plan->range_of);
    source = std::async(std::launch::deferred, [&model, &eo, s = stream.get(), files = stream_plan->files] {
               const std::vector<std::string> d = s->digests();
               std::map<std::string, std::string> known;
               for (size_t i = 0; i < files.size(); ++i) known[files[i]] = d[i];
               return source_record_with(model.path, eo.tokenizer_path, known);
             }).share();
  } else if (source.valid()) {
    // The hashes first where they cannot come late: a GGUF's header holds
    // them (written first), and partial work to continue is keyed by them.
    std::error_code ec;
    const bool partial_work =
        eo.resume && !eo.force && std::filesystem::exists(PartialOutput::dir_for(out) + "/optiq-partial.json", ec);
    if (eo.format != "mlx" || partial_work) {
      provenance["source"] = source.get();
      source = {};
    } else if (source.wait_for(std::chrono::seconds(0)) == std::future_status::deferred) {
      source = std::async(std::launch::async, [f = source] { return f.get(); }).share();  // hashed meanwhile
    }
  }
  nlohmann::json key;
  if (eo.resume && !provenance.is_null()) {
    // Everything the bytes depend on: the source files' SHA-256 and every
    // option (the provenance), the plan with its roundings, and what the
    // provenance leaves out (the exporter's settings, optiq's version, the
    // kernels' instruction set: calibration statistics differ in their last
    // bits across them, docs/reliability.md).
    key = {{"source", stream ? nlohmann::json{{"fingerprint", source_fingerprint(model.path, eo.tokenizer_path)}}
                             : provenance.value("source", nlohmann::json())},
           {"options", provenance.value("options", nlohmann::json())},
           {"command", provenance.value("command", nlohmann::json())},
           {"optiq version", kOptiqVersion},
           {"plan", map.to_plan_json()},
           {"format", eo.format},
           {"shard size", eo.format == "mlx" ? eo.shard_bytes : 0},
           {"scale type", opt.recipe.bf16_scales ? "bf16" : "f16"},
           {"instruction set", isa_name(active_isa())}};
    // Until the hashes are known the key matches no run's (a kill before
    // then keeps nothing); the exporter records the full key then.
    if (source.valid() && !stream) key["source pending"] = true;
  }
  make_exporter(eo.format)
      ->write(model, out,
              {.bf16 = opt.recipe.bf16_scales, .force = eo.force, .matrices = &matrices, .shard_bytes = eo.shard_bytes,
               .progress = eo.progress, .provenance = provenance, .resume_key = key, .source = source});
  if (stream) r.source_stream = stream->stats();
  r.matrix_bytes = matrices.bytes_made();
  // Matrices a resumed export found written already.
  for (const auto& mod : quantizable_modules(model.config))
    if (!matrices.made(mod)) r.matrix_bytes += matrices.stored_bytes(mod);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace optiq
