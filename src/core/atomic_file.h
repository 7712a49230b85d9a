// Writes a whole file so that readers never see half of it: the content goes
// to PATH.tmp<pid>, which is then renamed over PATH.
#pragma once
#include <string>
#include <string_view>

namespace optiq {

// Throws "<path>: cannot write ..." on failure (the temporary is removed).
void write_file_atomic(const std::string& path, std::string_view content);

}  // namespace optiq
