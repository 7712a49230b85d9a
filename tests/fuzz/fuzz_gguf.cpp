// GGUF reader: header, metadata, tensor table, then every tensor's data
// through optiq's dequantizer for its type, and the model config built from
// the metadata (what `optiq info` and the loader do with a stranger's file).
#include "formats/gguf.h"
#include "fuzz_util.h"
#include "model/config.h"
#include "quant/ggml_dequant.h"

using namespace optiq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemFile file("fuzz.gguf");
  file.write(data, size);
  fuzz::accepts([&] {
    GgufFile g(file.path());
    for (const auto& kv : g.metadata()) (void)g.metadata_to_string(kv.second);
    for (const auto& t : g.tensors())
      if (can_dequantize(t.dtype)) (void)dequantize(t);
    fuzz::accepts([&] { config_from_gguf(g).validate(g.path()); });
  });
  return 0;
}
