#include "pipeline/export_step.h"

#include <chrono>
#include <filesystem>

#include "core/error.h"
#include "core/partial_output.h"
#include "core/version.h"
#include "kernels/matmul.h"
#include "model/matrix_source.h"

namespace optiq {

ExportStepResult run_export_step(Model& model, const PrecisionMap& map, const QuantizeModelOptions& opt,
                                 const std::string& out, const ExportStepOptions& eo) {
  const auto t0 = std::chrono::steady_clock::now();
  ExportStepResult r;
  for (const auto& mod : quantizable_modules(model.config)) {
    model.precision.formats[mod.path] = map.format_of(mod.path);
    r.matrix_params += mod.numel();
  }
  StreamedMatrices matrices(model, map, opt);
  nlohmann::json provenance = eo.provenance;
  std::shared_future<nlohmann::json> source = eo.source;
  if (source.valid()) {
    // The hashes first where they cannot come late: a GGUF's header holds
    // them (written first), and partial work to continue is keyed by them.
    std::error_code ec;
    const bool partial_work =
        eo.resume && !eo.force && std::filesystem::exists(PartialOutput::dir_for(out) + "/optiq-partial.json", ec);
    if (eo.format != "mlx" || partial_work) {
      provenance["source"] = source.get();
      source = {};
    }
  }
  nlohmann::json key;
  if (eo.resume && !provenance.is_null()) {
    // Everything the bytes depend on: the source files' SHA-256 and every
    // option (the provenance), the plan with its roundings, and what the
    // provenance leaves out (the exporter's settings, optiq's version, the
    // kernels' instruction set: calibration statistics differ in their last
    // bits across them, docs/reliability.md).
    key = {{"source", provenance.value("source", nlohmann::json())},
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
    if (source.valid()) key["source pending"] = true;
  }
  make_exporter(eo.format)
      ->write(model, out,
              {.bf16 = opt.recipe.bf16_scales, .force = eo.force, .matrices = &matrices, .shard_bytes = eo.shard_bytes,
               .progress = eo.progress, .provenance = provenance, .resume_key = key, .source = source});
  r.matrix_bytes = matrices.bytes_made();
  // Matrices a resumed export found written already.
  for (const auto& mod : quantizable_modules(model.config))
    if (!matrices.made(mod)) r.matrix_bytes += matrices.stored_bytes(mod);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace optiq
