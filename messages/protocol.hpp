#pragma once

// The protocol of dcpp as typed actor interfaces, in one place.
//
// Roles (every rank runs one rank agent and one coordinator; an operation
// uses the coordinator of the rank its callers name):
//
//   caller ──save_job/load_job──▶ rank agent ──▶ planner actor
//                                   │   ▲   └──▶ writer / reader actors
//                 wire messages     ▼   │        (detached: blocking I/O)
//                               coordinator (of rank C)
//
// Call order of a save, as seen by the rank agent of rank r:
//  1. caller:        (save_atom, save_job) -> metadata | error
//  2. r:             writer (set_up_atom) ; planner (local_plan_atom) ;
//                    writer (prepare_local_atom) ; send local_save_plan_msg
//  3. C's agent:     on global_save_step_msg: planner (global_plan_atom) ;
//                    writer (prepare_global_atom) ; send ..._done_msg
//  4. r:             on central_save_plan_msg: planner (finish_plan_atom) ;
//                    writer (split_atom) ; N writers (write_atom) in
//                    parallel ; send write_done_msg
//  5. C's agent:     on commit_msg: writer (finish_atom) ; send
//                    commit_done_msg
//  6. r:             on op_outcome_msg: reply to the caller; on error first
//                    writer (abort_atom), once no write is in flight.
// A load runs the same way with the reader actor (read_metadata_atom
// first), global_load_step_msg, central_load_plan_msg, N readers
// (read_atom) and read_done_msg.
//
// Every request between actors has a deadline (the operation's step
// timeout); the coordinator and the agents also arm a deadline for every
// message they wait for, so nothing waits forever.

#include "messages/atoms.hpp"
#include "messages/local.hpp"
#include "messages/messages.hpp"

#include <caf/replies_to.hpp>
#include <caf/typed_actor.hpp>

#include <cstdint>
#include <vector>

namespace dcpp {

/// What a coordinator accepts: the rank -> coordinator messages of the
/// protocol, plus its own deadline timer and a stats query.
using coordinator_actor = caf::typed_actor<
  caf::reacts_to<local_save_plan_msg>,
  caf::reacts_to<global_save_step_done_msg>, caf::reacts_to<write_done_msg>,
  caf::reacts_to<commit_done_msg>, caf::reacts_to<local_load_plan_msg>,
  caf::reacts_to<global_load_step_done_msg>, caf::reacts_to<read_done_msg>,
  /// Internal: (seq, generation) of a step deadline.
  caf::reacts_to<deadline_atom, uint64_t, uint64_t>,
  caf::replies_to<caf::get_atom, stats_atom>::with<coordinator_stats>>;

/// What a rank accepts from a coordinator: the part of a rank agent that a
/// transport bridge must carry.
using rank_endpoint_actor = caf::typed_actor<
  caf::reacts_to<global_save_step_msg>, caf::reacts_to<central_save_plan_msg>,
  caf::reacts_to<commit_msg>, caf::reacts_to<global_load_step_msg>,
  caf::reacts_to<central_load_plan_msg>, caf::reacts_to<op_outcome_msg>>;

/// A rank agent: the rank endpoint plus the local API (save, load) and its
/// own deadline timer. One per rank; it runs one operation at a time and
/// queues further requests in arrival order.
using rank_agent_actor = rank_endpoint_actor::extend<
  caf::replies_to<save_atom, save_job>::with<metadata>,
  caf::replies_to<load_atom, load_job>::with<metadata>,
  /// Internal: (seq, generation) of a deadline.
  caf::reacts_to<deadline_atom, uint64_t, uint64_t>,
  /// Internal: (seq) the data step's progress timer.
  caf::reacts_to<progress_atom, uint64_t>,
  caf::replies_to<caf::get_atom, stats_atom>::with<agent_stats>>;

/// Wraps a planner (the pure planning functions) and the view of one rank's
/// state dict for one operation.
using planner_actor = caf::typed_actor<
  // save
  caf::replies_to<local_plan_atom, bool>::with<save_plan>,
  caf::replies_to<global_plan_atom,
                  std::vector<save_plan>>::with<global_save_plan>,
  caf::replies_to<finish_plan_atom, save_plan>::with<save_plan>,
  // load: (local_plan_atom, checkpoint metadata, is_coordinator)
  caf::replies_to<local_plan_atom, metadata_ptr, bool>::with<load_plan>,
  caf::replies_to<global_plan_atom,
                  std::vector<load_plan>>::with<std::vector<load_plan>>,
  caf::replies_to<finish_plan_atom, load_plan>::with<load_plan>>;

/// Drives one rank's storage_writer for one operation (blocking calls:
/// spawned detached). Data writers of the write step use only write_atom.
using writer_actor = caf::typed_actor<
  caf::replies_to<set_up_atom, bool, int32_t>::with<caf::ok_atom>,
  caf::replies_to<prepare_local_atom, save_plan>::with<save_plan>,
  caf::replies_to<prepare_global_atom,
                  std::vector<save_plan>>::with<std::vector<save_plan>>,
  caf::replies_to<split_atom, save_plan,
                  uint32_t>::with<std::vector<save_plan>>,
  caf::replies_to<write_atom, save_plan>::with<std::vector<write_result>>,
  caf::replies_to<finish_atom, metadata,
                  std::vector<std::vector<write_result>>>::with<caf::ok_atom>,
  caf::replies_to<abort_atom>::with<caf::ok_atom>>;

/// Drives one rank's storage_reader for one operation (detached).
using reader_actor = caf::typed_actor<
  caf::replies_to<read_metadata_atom>::with<metadata_ptr>,
  caf::replies_to<set_up_atom, metadata_ptr, bool, int32_t>::with<caf::ok_atom>,
  caf::replies_to<prepare_local_atom, load_plan>::with<load_plan>,
  caf::replies_to<prepare_global_atom,
                  std::vector<load_plan>>::with<std::vector<load_plan>>,
  caf::replies_to<split_atom, load_plan,
                  uint32_t>::with<std::vector<load_plan>>,
  caf::replies_to<read_atom, load_plan>::with<caf::ok_atom>>;

} // namespace dcpp
