// The shard index of a Hugging Face directory (model.safetensors.index.json):
// the fuzz input is the index; the directory holds a config.json and two
// valid shards (a.safetensors: x, y; b.safetensors: z), so that shard names,
// path traversal, missing and duplicate tensors are all reachable.
#include <memory>
#include <vector>

#include "formats/hf_checkpoint.h"
#include "formats/safetensors.h"
#include "fuzz_util.h"

using namespace optiq;

namespace {
const fuzz::ScratchDir& model_dir() {
  static const std::unique_ptr<fuzz::ScratchDir> dir = [] {
    auto d = std::make_unique<fuzz::ScratchDir>("hf-index");
    d->write("config.json", R"({"model_type": "llama"})");
    const std::vector<uint8_t> bytes(24, 1);
    SafetensorsWriter a;
    a.add("x", DType::F32, {2, 3}, bytes);
    a.add("y", DType::F16, {4}, {bytes.data(), 8});
    a.write(d->file("a.safetensors"));
    SafetensorsWriter b;
    b.add("z", DType::U8, {5}, {bytes.data(), 5});
    b.write(d->file("b.safetensors"));
    return d;
  }();
  return *dir;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fuzz::ScratchDir& dir = model_dir();
  dir.write("model.safetensors.index.json", data, size);
  fuzz::accepts([&] {
    HfCheckpoint c(dir.path());
    for (const auto& t : c.tensors())
      if (c.file_of(t.name) == nullptr) __builtin_trap();  // every listed tensor has its file
  });
  return 0;
}
