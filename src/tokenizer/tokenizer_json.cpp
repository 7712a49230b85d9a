#include "tokenizer/tokenizer_json.h"

#include "core/error.h"

namespace optiq {

void write_hf_tokenizer(const Tokenizer& tok, const std::string& dir) {
  fail("{}: writing tokenizer.json is not implemented yet", dir);
}

}  // namespace optiq
