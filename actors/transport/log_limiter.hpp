#pragma once

// Bounds the log lines that peers can cause (refused hellos, dropped
// frames): a peer that sends garbage in a loop must not fill the disk or
// drown the lines that matter. At most `burst` lines per `window`; the
// first line allowed after a suppression says how many were dropped.
// spdlog has no rate limit of its own; this is the few lines it takes.

#include <chrono>
#include <cstdint>
#include <mutex>

namespace dcpp::detail {

class log_limiter {
public:
  using clock = std::chrono::steady_clock;

  log_limiter(uint32_t burst, clock::duration window)
    : burst_(burst), window_(window) {
    // nop
  }

  /// True if a line may be logged at `now`; then `suppressed` is the number
  /// of lines refused since the last one allowed.
  bool allow(clock::time_point now, uint64_t& suppressed) {
    std::lock_guard<std::mutex> guard{mx_};
    if (now - window_start_ >= window_) {
      window_start_ = now;
      used_ = 0;
    }
    if (used_ >= burst_) {
      ++suppressed_;
      return false;
    }
    ++used_;
    suppressed = suppressed_;
    suppressed_ = 0;
    return true;
  }

private:
  std::mutex mx_;
  uint32_t burst_;
  clock::duration window_;
  clock::time_point window_start_{};
  uint32_t used_ = 0;
  uint64_t suppressed_ = 0;
};

} // namespace dcpp::detail
