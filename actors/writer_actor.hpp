#pragma once

// Writer actors: each drives one rank's storage_writer (synchronous,
// blocking calls) for one operation. They are
// spawned detached so that blocking I/O never stalls a scheduler thread;
// the rank agent spawns one control actor per operation plus one more per
// part of `split_plan` so that the parts are written in parallel.
// Exceptions thrown by a storage become errc::storage_failure errors.

#include "messages/protocol.hpp"

#include <caf/fwd.hpp>

#include <memory>

namespace dcpp {

enum class io_mode {
  /// Own thread (blocking I/O).
  detached,
  /// On the scheduler: for tests with CAF's deterministic scheduler and
  /// storages that never block.
  scheduled,
};

/// `source` may be null for actors that never get write_atom.
writer_actor spawn_writer(caf::actor_system& sys,
                          std::shared_ptr<storage_writer> writer,
                          std::shared_ptr<const item_source> source,
                          io_mode mode = io_mode::detached);

} // namespace dcpp
