#include "core/diagnostics.h"

#include <cstdio>
#include <mutex>

namespace optiq {

namespace {

std::mutex g_mutex;
DiagnosticSink g_sink;

void print_to_stderr(Severity s, std::string_view message) {
  fmt::print(stderr, "optiq: {}: {}\n", s == Severity::Note ? "note" : "warning", message);
}

}  // namespace

DiagnosticSink set_diagnostic_sink(DiagnosticSink sink) {
  std::lock_guard lock(g_mutex);
  std::swap(g_sink, sink);
  return sink;
}

void report(Severity s, std::string_view message) {
  std::lock_guard lock(g_mutex);
  if (g_sink)
    g_sink(s, message);
  else
    print_to_stderr(s, message);
}

CollectDiagnostics::CollectDiagnostics() {
  saved_ = set_diagnostic_sink([this](Severity s, std::string_view m) {
    text_ += s == Severity::Note ? "note: " : "warning: ";
    text_ += m;
    text_ += '\n';
  });
}

CollectDiagnostics::~CollectDiagnostics() { set_diagnostic_sink(std::move(saved_)); }

}  // namespace optiq
