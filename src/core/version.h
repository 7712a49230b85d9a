// optiq's version: what `optiq --version` prints and what every output
// records (the "optiq" block of plans, profiles and MLX config.json, the
// optiq.version key of GGUF and safetensors metadata; docs/reliability.md).
#pragma once

namespace optiq {

inline constexpr const char* kOptiqVersion = "0.1.0";

}  // namespace optiq
