#pragma once

// Actor system configuration for dcpp: the error renderer of the "dcpp"
// category, dcpp's message types, and scheduler settings. Applications that
// own their actor system call `configure(cfg)` on their config before they
// construct the system (optional: without it dcpp works, errors just render
// as numbers in CAF's own output); `system_config` is a ready-made config.

#include <caf/actor_system_config.hpp>

#include <cstddef>

namespace dcpp {

struct system_options {
  /// Scheduler worker threads; 0 keeps CAF's default (max(4, cores)).
  size_t scheduler_threads = 0;
  /// Use CAF's deterministic test scheduler (nothing runs until the test
  /// calls run(); time is virtual).
  bool deterministic = false;
};

/// Adds dcpp's error renderer and message types to `cfg` and applies
/// `opts`.
void configure(caf::actor_system_config& cfg, const system_options& opts = {});

/// A config with `configure` applied.
class system_config : public caf::actor_system_config {
public:
  explicit system_config(const system_options& opts = {});
};

} // namespace dcpp
