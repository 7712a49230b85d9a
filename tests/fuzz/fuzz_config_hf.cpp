// config.json of every supported family (src/model/config_hf.cpp): the bytes
// are parsed as the loader parses them (a JSON error is a clean rejection,
// as HfCheckpoint reports it), then config_from_hf and the shape checks.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "model/config.h"
#include "model/precision.h"

using namespace optiq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(data, data + size);
  } catch (const nlohmann::json::exception&) {
    return 0;  // HfCheckpoint: "config.json: not valid JSON: ..."
  }
  if (!j.is_object()) return 0;  // HfCheckpoint: "config.json: not a JSON object"
  fuzz::accepts([&] {
    ModelConfig c = config_from_hf(j, "config.json");
    c.validate("config.json");
    (void)c.quirks();
    (void)c.attention_scale();
    (void)quantizable_modules(c);
  });
  return 0;
}
