#pragma once

// Progress of the saves and loads that this process's coordinators run.
//
// During the data step every rank reports its bytes done to the
// coordinator a few times a second; the coordinator adds them up and hands
// the sum to the process's progress listener, if one is set. Only the
// process that hosts the operation's coordinator hears of it, so a program
// that prints a progress line prints one per job, not one per rank.

#include <cstdint>
#include <functional>
#include <string>

namespace dcpp {

/// Where an operation stands, as its coordinator sees it.
struct progress_update {
  enum class state : uint8_t {
    running,
    /// Committed (save) or read (load); `done` and `total` are the report's
    /// bytes.
    done,
    failed,
  };

  /// "save 3", "load 4".
  std::string op;
  /// "plan", "write", "read" or "commit".
  std::string step;
  /// Bytes done and planned, summed over the ranks that reported so far.
  uint64_t done = 0;
  uint64_t total = 0;
  int32_t world = 0;
  /// Since the coordinator heard of the operation.
  double elapsed_s = 0;
  state now = state::running;
};

/// Called on a coordinator's thread for every change (up to a few times a
/// second per rank): keep it short, and throttle any output yourself.
using progress_listener = std::function<void(const progress_update&)>;

/// Sets (or, with an empty function, clears) the process's listener.
void set_progress_listener(progress_listener fn);

bool has_progress_listener();

/// Hands `u` to the listener, if any (the coordinator calls this).
void publish_progress(const progress_update& u);

} // namespace dcpp
