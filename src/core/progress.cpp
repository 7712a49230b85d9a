#include "core/progress.h"

#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

namespace optiq {

namespace {
bool g_enabled = true;
}

void set_progress_enabled(bool enabled) { g_enabled = enabled; }

std::string format_duration(double s) {
  if (s < 0) s = 0;
  if (s < 60) return fmt::format("{:.0f}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
  return fmt::format("{}h{:02d}m", static_cast<int>(s) / 3600, (static_cast<int>(s) / 60) % 60);
}

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), tty_(isatty(STDERR_FILENO) != 0) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

Progress::~Progress() {
  if (drawn_ && !finished_ && tty_ && g_enabled) std::fputc('\n', stderr);
}

void Progress::update(int64_t done, const std::string& extra) {
  done_ = done;
  if (done >= total_) return;  // finish() draws the last line
  auto now = std::chrono::steady_clock::now();
  const double since = std::chrono::duration<double>(now - last_draw_).count();
  if (since < (tty_ ? 0.2 : 5.0)) return;
  last_draw_ = now;
  draw(false, extra);
}

std::string format_rate(double per_second, const std::string& unit) {
  if (per_second >= 1.0) return fmt::format("{:.1f} {}/s", per_second, unit);
  // "measurements" -> "measurement", "M weights" -> "M weight"; "MB" stays.
  const size_t word = unit.rfind(' ') == std::string::npos ? 0 : unit.rfind(' ') + 1;
  const bool plural = unit.size() - word > 2 && unit.back() == 's';
  return fmt::format("{:.1f} s/{}", per_second > 0 ? 1.0 / per_second : 0.0,
                     plural ? unit.substr(0, unit.size() - 1) : unit);
}

void Progress::resume_from(int64_t done) { base_ = done_ = done; }

void Progress::set_total_work(double total_work) { work_total_ = total_work; }

void Progress::update_work(int64_t done, double work_done, const std::string& extra) {
  work_done_ = work_done;
  update(done, extra);
}

void Progress::finish(const std::string& extra) {
  if (finished_) return;
  done_ = total_;
  draw(true, extra);
  finished_ = true;
}

std::string Progress::status_line(double elapsed, bool final, const std::string& extra) const {
  std::string line = fmt::format("{}: {}/{}{}", label_, done_, total_, unit_.empty() ? "" : " " + unit_);
  if (elapsed > 0 && done_ > base_) {
    const double rate = (done_ - base_) / elapsed;
    line += ", " + format_rate(rate, unit_.empty() ? "it" : unit_);
    if (final) {
      line += fmt::format(", {}", format_duration(elapsed));
    } else {
      // By work where the units differ in cost (a resumed run's work is not
      // counted: set_total_work covers what this run does).
      const bool by_work = work_total_ > 0 && work_done_ > 0;
      const double left = by_work ? (work_total_ - work_done_) / work_done_
                                  : static_cast<double>(total_ - done_) / static_cast<double>(done_ - base_);
      line += fmt::format(", ETA {}", format_duration(elapsed * left));
    }
  }
  if (base_ > 0) line += fmt::format(", {}{} resumed", base_, unit_.empty() ? "" : " " + unit_);
  if (!extra.empty()) line += ", " + extra;
  return line;
}

void Progress::draw(bool final, const std::string& extra) {
  if (!g_enabled) return;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const std::string line = status_line(elapsed, final, extra);
  if (tty_)
    std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final ? "\n" : "");
  else if (final || drawn_ || elapsed > 2.0)
    std::fprintf(stderr, "%s\n", line.c_str());
  drawn_ = true;
  std::fflush(stderr);
}

}  // namespace optiq
