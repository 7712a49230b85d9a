// Progress line with rate and ETA on stderr for anything that takes more than
// a moment. On a terminal it redraws one line; otherwise it prints a line at
// most every few seconds, so logs stay short. --quiet silences it.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace optiq {

void set_progress_enabled(bool enabled);

class Progress {
 public:
  Progress(std::string label, int64_t total, std::string unit = "");
  ~Progress();
  // Advance to `done` units; `extra` is appended (e.g. "ppl 12.3").
  void update(int64_t done, const std::string& extra = "");
  void finish(const std::string& extra = "");
  // `done` units were there before this run started (resumed work): the rate
  // and ETA count only what this run does.
  void resume_from(int64_t done);
  // Units of unequal cost (a profile's measurements: their modules' sizes):
  // the ETA goes by work, in any measure whose total is `total_work`, while
  // the line still counts units; update_work() advances both.
  void set_total_work(double total_work);
  void update_work(int64_t done, double work_done, const std::string& extra = "");

  // The line drawn `elapsed` seconds in (final: with the time taken instead of an ETA).
  std::string status_line(double elapsed, bool final, const std::string& extra = "") const;

 private:
  void draw(bool final, const std::string& extra);
  std::string label_, unit_;
  int64_t total_, done_ = 0, base_ = 0;
  double work_total_ = 0, work_done_ = 0;
  std::chrono::steady_clock::time_point start_, last_draw_;
  bool tty_, finished_ = false, drawn_ = false;
};

std::string format_duration(double seconds);

// "2.5 measurements/s" at a rate of one a second or more, "1.3 s/measurement"
// below it (the unit's plural s dropped for one).
std::string format_rate(double per_second, const std::string& unit);

}  // namespace optiq
