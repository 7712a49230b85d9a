// Hugging Face tokenizer.json (tokenizer_spec_from_hf on a directory that
// holds the fuzz input as tokenizer.json), then the tokenizer it builds
// encodes and decodes arbitrary bytes.
#include <memory>

#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_exercise.h"

using namespace optiq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto dir = std::make_unique<fuzz::ScratchDir>("tokenizer-json");
  dir->write("tokenizer.json", data, size);
  fuzz::accepts([&] {
    Tokenizer tok(tokenizer_spec_from_hf(dir->path()));
    fuzz::exercise_tokenizer(tok, fuzz::sample_text(data, size));
  });
  return 0;
}
