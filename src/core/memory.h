// What the machine can still give: sizing optional caches (a profile's
// reference kept on the device, streamed layers kept resident) by it rather
// than by the machine a developer happened to have.
#pragma once
#include <cstdint>

namespace optiq {

// Bytes of host memory available to a new allocation without swapping
// (/proc/meminfo's MemAvailable; free pages where that is missing).
int64_t available_memory_bytes();

}  // namespace optiq
