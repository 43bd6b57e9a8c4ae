#pragma once

// The planner actor: wraps a save or load planner (the pure planning
// functions of core/planner.hpp) and one rank's view of its state dict for
// one operation. Planning is CPU work without I/O, so it runs on the
// scheduler. Exceptions become errors; nothing here blocks.

#include "messages/protocol.hpp"

#include <caf/fwd.hpp>

#include <memory>

namespace dcpp {

/// `save` or `load` may be null (requests for the missing one fail with
/// errc::invalid_argument). `view` is the rank's state dict as the planner
/// sees it.
planner_actor spawn_planner(caf::actor_system& sys,
                            std::shared_ptr<const save_planner> save,
                            std::shared_ptr<const load_planner> load,
                            std::shared_ptr<const state_dict_view> view);

} // namespace dcpp
