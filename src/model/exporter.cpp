#include "model/exporter.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"
#include "model/save_gguf.h"
#include "model/save_mlx.h"

namespace optiq {

namespace {

class MlxExporter final : public Exporter {
 public:
  std::string_view name() const override { return "mlx"; }
  void write(const Model& model, const std::string& out, const ExportOptions& opt) const override {
    save_mlx(model, out,
             {.bf16 = opt.bf16, .force = opt.force, .matrices = opt.matrices, .shard_bytes = opt.shard_bytes, .progress = opt.progress,
              .provenance = opt.provenance, .resume_key = opt.resume_key, .source = opt.source});
  }
};

// One .gguf file for llama.cpp, Ollama and LM Studio (model/save_gguf.h).
class GgufExporter final : public Exporter {
 public:
  std::string_view name() const override { return "gguf"; }
  void write(const Model& model, const std::string& out, const ExportOptions& opt) const override {
    check(!opt.source.valid(), "GGUF export: the source's hashes must be known before its header is written (internal error)");
    save_gguf(model, out, {.bf16 = opt.bf16, .force = opt.force, .matrices = opt.matrices, .progress = opt.progress,
               .provenance = opt.provenance, .resume_key = opt.resume_key});
  }
};

}  // namespace

std::vector<std::string> exporter_names() { return {"mlx", "gguf"}; }

std::unique_ptr<Exporter> make_exporter(std::string_view name) {
  if (name == "mlx") return std::make_unique<MlxExporter>();
  if (name == "gguf") return std::make_unique<GgufExporter>();
  fail("export format '{}' is unknown (known: {})", name, fmt::join(exporter_names(), ", "));
}

}  // namespace optiq
