#include "pipeline/export_step.h"

#include <chrono>

#include "core/error.h"
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
  make_exporter(eo.format)
      ->write(model, out,
              {.bf16 = opt.recipe.bf16_scales, .force = eo.force, .matrices = &matrices, .shard_bytes = eo.shard_bytes,
               .progress = eo.progress, .provenance = eo.provenance});
  r.matrix_bytes = matrices.bytes_made();
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace optiq
