#pragma once

// The CPU time a piece of code takes on the calling thread, for tests that
// tell linear from quadratic work by a ratio of sizes. Thread CPU time
// leaves out the time the thread waits for a core, which on a shared
// machine is most of the wall time's noise; the least of several runs
// leaves out the rest (page faults, cache misses from neighbours).

#include <time.h>

#include <algorithm>

namespace dcpp::test {

inline double thread_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec)
         + static_cast<double>(ts.tv_nsec) * 1e-9;
}

/// The least thread CPU time of `runs` calls of `fn`, in seconds.
template <class F>
double least_cpu_seconds(F&& fn, int runs = 5) {
  double best = 1e30;
  for (int i = 0; i < runs; ++i) {
    auto t0 = thread_cpu_seconds();
    fn();
    best = std::min(best, thread_cpu_seconds() - t0);
  }
  return best;
}

} // namespace dcpp::test
