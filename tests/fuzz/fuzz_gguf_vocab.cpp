// A GGUF's tokenizer.ggml.* metadata (tokenizer_spec_from_gguf), then
// encode/decode of arbitrary bytes with the tokenizer it builds.
#include "formats/gguf.h"
#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_exercise.h"

using namespace optiq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemFile file("vocab.gguf");
  file.write(data, size);
  fuzz::accepts([&] {
    GgufFile g(file.path());
    Tokenizer tok(tokenizer_spec_from_gguf(g));
    fuzz::exercise_tokenizer(tok, fuzz::sample_text(data, size));
  });
  return 0;
}
