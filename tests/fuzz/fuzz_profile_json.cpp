// Profile files (SensitivityTable::read: `<model>.profile.json`, which
// `optiq plan` and a resumed `optiq profile` read) checked against
// stories260K's shape, then the numbers a plan takes from them.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "profile/sensitivity.h"

using namespace optiq;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ModelConfig config = fuzz::stories_config();
  static fuzz::MemFile file("profile.json");
  file.write(data, size);
  fuzz::accepts([&] {
    SensitivityTable t = SensitivityTable::read(file.path(), config);
    (void)t.source.describe();
    (void)t.count_exact();
    (void)t.spearman_fast_exact();
    for (auto use : {DamageSource::Auto, DamageSource::Exact, DamageSource::Fast})
      fuzz::accepts([&] { (void)t.damage(use); });
    t.calibrate_fast();
    (void)t.to_json().dump();
  });
  return 0;
}
