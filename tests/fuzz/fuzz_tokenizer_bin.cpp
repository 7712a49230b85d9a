// llama2.c tokenizer.bin (tokenizer_spec_from_llama2c), read to its end and
// with stories260K's vocabulary size, then encode/decode of arbitrary bytes.
#include "fuzz_util.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer_exercise.h"

using namespace optiq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fuzz::MemFile file("tokenizer.bin");
  file.write(data, size);
  for (int32_t vocab : {0, 512}) {
    fuzz::accepts([&] {
      Tokenizer tok(tokenizer_spec_from_llama2c(file.path(), vocab));
      fuzz::exercise_tokenizer(tok, fuzz::sample_text(data, size));
    });
  }
  return 0;
}
