#include "pipeline/export_step.h"

#include <chrono>

#include "core/error.h"
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
  nlohmann::json key;
  if (eo.resume && !eo.provenance.is_null()) {
    // Everything the bytes depend on: the source files' SHA-256 and every
    // option (the provenance), the plan with its roundings, and what the
    // provenance leaves out (the exporter's settings, optiq's version, the
    // kernels' instruction set: calibration statistics differ in their last
    // bits across them, docs/reliability.md).
    key = {{"source", eo.provenance.value("source", nlohmann::json())},
           {"options", eo.provenance.value("options", nlohmann::json())},
           {"command", eo.provenance.value("command", nlohmann::json())},
           {"optiq version", kOptiqVersion},
           {"plan", map.to_plan_json()},
           {"format", eo.format},
           {"shard size", eo.format == "mlx" ? eo.shard_bytes : 0},
           {"scale type", opt.recipe.bf16_scales ? "bf16" : "f16"},
           {"instruction set", isa_name(active_isa())}};
  }
  make_exporter(eo.format)
      ->write(model, out,
              {.bf16 = opt.recipe.bf16_scales, .force = eo.force, .matrices = &matrices, .shard_bytes = eo.shard_bytes,
               .progress = eo.progress, .provenance = eo.provenance, .resume_key = key});
  r.matrix_bytes = matrices.bytes_made();
  // Matrices a resumed export found written already.
  for (const auto& mod : quantizable_modules(model.config))
    if (!matrices.made(mod)) r.matrix_bytes += matrices.stored_bytes(mod);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace optiq
