// Errors carry their context (file, tensor, what is wrong) as one line, so that
// the CLI can print them verbatim and exit non-zero instead of crashing.
#pragma once
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace optiq {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Throws optiq::Error with a fmt-formatted message.
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

// check(cond, "...") is for validating untrusted input (file contents, CLI
// arguments); it is never compiled out.
template <typename... Args>
void check(bool cond, fmt::format_string<Args...> f, Args&&... args) {
  if (!cond) throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace optiq
