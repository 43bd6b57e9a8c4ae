#pragma once

// A process group: the ranks that save and load together, each with its
// rank agent and its coordinator. `make_local_process_group` builds N ranks
// inside one actor system (users who run ranks as threads, and tests); a
// later transport puts ranks in separate processes behind the same
// interface (bridge actors in the peer table, see actors/peers.hpp).
//
// Lifetime: the actor system must outlive every process_group object of
// it. The actors of a local group stop when the last process_group object
// of the group is destroyed (or when the system shuts down).

#include "actors/peers.hpp"
#include "actors/rank_agent.hpp"
#include "messages/protocol.hpp"

#include <caf/fwd.hpp>

#include <cstdint>
#include <memory>
#include <vector>

namespace dcpp {

class process_group {
public:
  virtual ~process_group();

  /// This member's rank, 0 <= rank() < world_size().
  virtual int32_t rank() const = 0;

  virtual int32_t world_size() const = 0;

  /// The actor system the group's actors live in.
  virtual caf::actor_system& system() const = 0;

  /// This rank's agent: send it (save_atom, save_job) or
  /// (load_atom, load_job).
  virtual rank_agent_actor agent() const = 0;

  /// The coordinator hosted by this rank (used by operations whose callers
  /// name this rank as coordinator rank).
  virtual coordinator_actor coordinator() const = 0;
};

using process_group_ptr = std::shared_ptr<process_group>;

struct process_group_options {
  /// Options of every rank agent of the group.
  rank_agent_options agent;
};

/// Spawns `world_size` ranks (agent + coordinator each) into `sys` and
/// returns one group member per rank (index = rank). Any rank may serve as
/// coordinator rank of an operation. Returns an empty vector if
/// `world_size` < 1.
std::vector<process_group_ptr>
make_local_process_group(caf::actor_system& sys, int32_t world_size,
                         process_group_options opts = {});

} // namespace dcpp
