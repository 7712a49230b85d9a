// safetensors reader: header length, JSON header, dtypes, shapes and
// data_offsets; every accepted tensor's bytes are read (ASan checks that they
// lie inside the mapping).
#include "formats/safetensors.h"
#include "fuzz_util.h"

using namespace optiq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemFile file("fuzz.safetensors");
  file.write(data, size);
  fuzz::accepts([&] {
    SafetensorsFile f(file.path());
    uint8_t sum = 0;
    for (const auto& t : f.tensors()) {
      const auto* p = static_cast<const uint8_t*>(t.data);
      for (size_t i = 0; i < t.nbytes; ++i) sum ^= p[i];
      if (t.numel() * static_cast<int64_t>(block_layout(t.dtype).block_bytes) != static_cast<int64_t>(t.nbytes))
        __builtin_trap();  // the header promised one size and the view has another
    }
    (void)f.find_tensor("x");
    asm volatile("" : : "r"(sum));
  });
  return 0;
}
