#pragma once

// The per-rank agent: the rank side of the protocol. It takes a save_job or
// load_job from its caller, runs the local steps through a planner actor and
// writer / reader actors (blocking I/O on their own threads), talks to the
// coordinator with wire messages, and replies to the caller with the
// committed (or read) metadata or with the error every rank reports.
// Operations run one at a time in arrival order; the n-th operation gets
// sequence number n, on every rank alike.

#include "actors/peers.hpp"
#include "messages/protocol.hpp"

#include <caf/fwd.hpp>

#include <cstdint>

namespace dcpp {

struct rank_agent_options {
  /// Spawn writer and reader actors detached (own threads, the default).
  /// Tests on CAF's deterministic scheduler turn this off.
  bool detached_io = true;
  /// Upper bound on the writer (reader) actors of one rank working on one
  /// operation in parallel (a job's `io_threads` is capped to it).
  uint32_t max_io_actors = 16;
};

/// Spawns the agent of `rank`. `peers` must be filled before the first
/// operation starts. Stop it with an exit message (the process group does).
rank_agent_actor spawn_rank_agent(caf::actor_system& sys, int32_t rank,
                                  peer_table_ptr peers,
                                  rank_agent_options opts = {});

} // namespace dcpp
