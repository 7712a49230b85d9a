// Plan files (PrecisionMap::from_plan_file: docs/plan-format.md) checked
// against stories260K's shape, then written back and read again (what
// `optiq quantize --plan` and `eval --plan` do before quantizing).
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "model/precision.h"
#include "quant/format.h"

using namespace optiq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ModelConfig config = fuzz::stories_config();
  static fuzz::MemFile file("plan.json");
  file.write(data, size);
  fuzz::accepts([&] {
    PrecisionMap m = PrecisionMap::from_plan_file(file.path(), config);
    for (const auto& mod : quantizable_modules(config)) {
      auto it = m.formats.find(mod.path);
      if (it == m.formats.end()) continue;
      (void)format_bits_per_weight(it->second);
      (void)format_fits(it->second, mod.cols);
      (void)format_matrix_bytes(format_for_shape(it->second, mod.cols), mod.rows, mod.cols);
    }
    // What optiq writes it must read back as the same map.
    PrecisionMap again = PrecisionMap::from_plan_json(m.to_plan_json(), config, "round trip");
    if (again.to_plan_json() != m.to_plan_json()) __builtin_trap();
  });
  return 0;
}
