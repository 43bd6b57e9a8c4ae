#include "apps/progress_line.hpp"

#include "actors/progress.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>

namespace dcpp::cli {

namespace {

using clock_type = std::chrono::steady_clock;

constexpr double mib = 1024.0 * 1024.0;

std::string seconds_text(double s) {
  char buf[32];
  if (s < 60)
    std::snprintf(buf, sizeof buf, "%.0f s", s);
  else
    std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s) / 60,
                  static_cast<int>(s) % 60);
  return buf;
}

/// "save 1: write 512.0/1024.0 MiB 50%, 250.3 MiB/s, ETA 2 s".
std::string render(const progress_update& u) {
  char buf[256];
  double rate = u.elapsed_s > 0 ? u.done / mib / u.elapsed_s : 0;
  if (u.now == progress_update::state::done) {
    std::snprintf(buf, sizeof buf, "%s: done, %.1f MiB in %.1f s (%.1f MiB/s)",
                  u.op.c_str(), u.done / mib, u.elapsed_s, rate);
    return buf;
  }
  std::string pct = "--%";
  std::string eta = "?";
  if (u.total > 0) {
    auto done = std::min(u.done, u.total);
    pct = std::to_string(done * 100 / u.total) + "%";
    if (rate > 0)
      eta = seconds_text((u.total - done) / mib / rate);
  }
  std::snprintf(buf, sizeof buf, "%s: %s %.1f/%.1f MiB %s, %.1f MiB/s, ETA %s",
                u.op.c_str(), u.step.c_str(), u.done / mib, u.total / mib,
                pct.c_str(), rate, eta.c_str());
  return buf;
}

struct printer {
  std::mutex mx;
  bool tty = ::isatty(STDERR_FILENO) != 0;
  std::chrono::milliseconds every;
  clock_type::time_point last{};
  /// The operation a line was printed for (its final line follows it).
  std::string shown;

  void on_update(const progress_update& u) {
    std::lock_guard<std::mutex> guard{mx};
    auto now = clock_type::now();
    bool final = u.now != progress_update::state::running;
    if (final) {
      if (shown != u.op)
        return; // a short operation: no line at all
      shown.clear();
      if (u.now == progress_update::state::done)
        print(render(u), true);
      else if (tty)
        std::fputs("\r\x1b[K", stderr);
      std::fflush(stderr);
      return;
    }
    auto gap = tty ? std::chrono::milliseconds(100) : every;
    // The first line waits one gap too: short operations print nothing.
    if (shown != u.op) {
      if (u.elapsed_s * 1000 < gap.count())
        return;
    } else if (now - last < gap) {
      return;
    }
    last = now;
    shown = u.op;
    print(render(u), !tty);
    std::fflush(stderr);
  }

  void print(const std::string& line, bool newline) {
    if (tty)
      std::fprintf(stderr, "\r%s\x1b[K%s", line.c_str(), newline ? "\n" : "");
    else
      std::fprintf(stderr, "%s\n", line.c_str());
  }
};

} // namespace

void start_progress_line(std::chrono::milliseconds every) {
  auto p = std::make_shared<printer>();
  p->every = every;
  set_progress_listener([p](const progress_update& u) { p->on_update(u); });
}

void stop_progress_line() {
  set_progress_listener({});
}

} // namespace dcpp::cli
