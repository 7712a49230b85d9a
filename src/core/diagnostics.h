// Where library code reports what is not an error: notes (a value was
// adjusted) and warnings (a cache was ignored, a file holds fewer windows
// than asked). Library code never prints; it calls note()/warn(), and the
// sink decides: by default one line on stderr ("optiq: warning: ..."); the
// CLI keeps that, tests and embedders may collect or silence them.
#pragma once
#include <functional>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

namespace optiq {

enum class Severity { Note, Warning };

using DiagnosticSink = std::function<void(Severity, std::string_view message)>;

// Replaces the process-wide sink and returns the previous one (an empty
// function restores the default stderr sink).
DiagnosticSink set_diagnostic_sink(DiagnosticSink sink);
void report(Severity s, std::string_view message);

template <typename... Args>
void note(fmt::format_string<Args...> f, Args&&... args) {
  report(Severity::Note, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  report(Severity::Warning, fmt::format(f, std::forward<Args>(args)...));
}

// Collects messages while it lives (tests), restoring the previous sink after.
class CollectDiagnostics {
 public:
  CollectDiagnostics();
  ~CollectDiagnostics();
  CollectDiagnostics(const CollectDiagnostics&) = delete;
  CollectDiagnostics& operator=(const CollectDiagnostics&) = delete;
  const std::string& text() const { return text_; }  // one line per message

 private:
  std::string text_;
  DiagnosticSink saved_;
};

}  // namespace optiq
