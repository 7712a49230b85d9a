// llama2.c checkpoints (version 0): header validation, the exact file size
// the header implies, the tensor table, and the model config from the header.
#include "formats/llama2c.h"
#include "fuzz_util.h"
#include "model/config.h"

using namespace optiq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemFile file("fuzz.bin");
  file.write(data, size);
  fuzz::accepts([&] {
    Llama2cCheckpoint c(file.path());
    float sum = 0;
    for (const auto& t : c.tensors()) {
      const auto* p = static_cast<const uint8_t*>(t.data);
      if (t.nbytes) sum += p[0] + p[t.nbytes - 1];  // ASan: first and last byte lie in the map
    }
    asm volatile("" : : "r"(sum));
    config_from_llama2c(c.header()).validate(c.path());
  });
  return 0;
}
