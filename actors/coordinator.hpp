#pragma once

// The coordinator: runs the collective steps of the saves and loads whose
// callers name its rank as coordinator rank.
//
// Save: gather every rank's local plan (step "plan") -> ask its own rank's
// agent for the global plan -> scatter one central plan per rank -> gather
// every rank's write results (step "write") -> ask its own rank's agent to
// commit (storage `finish`, step "commit") -> send every rank the committed
// metadata. Load: gather local plans -> global plan -> scatter -> gather
// read outcomes (step "read") -> send every rank the outcome.
//
// Failure: if any rank reports an error, misses a step's deadline
// (errc::timeout) or stops (errc::rank_lost), every rank receives one
// op_outcome_msg with errc::checkpoint_failed whose context reads
//   "save 3 failed in step write: rank 1: dcpp::storage_failure: ...;
//    rank 5: dcpp::timeout: ..."
// and `finish` is not called. Messages for an operation that already ended,
// duplicates, and messages with another protocol version or addressed to
// another rank are ignored and counted (coordinator_stats).

#include "actors/peers.hpp"
#include "messages/protocol.hpp"

#include <caf/fwd.hpp>

#include <cstdint>

namespace dcpp {

/// Spawns the coordinator of `rank`. `peers` must be filled before the
/// first operation starts. Stop it with an exit message (the process group
/// does that).
coordinator_actor spawn_coordinator(caf::actor_system& sys, int32_t rank,
                                    peer_table_ptr peers);

} // namespace dcpp
