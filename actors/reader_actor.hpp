#pragma once

// Reader actors: each drives one rank's storage_reader (synchronous,
// blocking calls) for one operation, detached like the writer actors; the
// rank agent spawns one control actor per load plus one more per part of
// `split_plan` so that the parts are read in parallel. Exceptions thrown by
// a storage become errc::storage_failure errors.

#include "actors/writer_actor.hpp"
#include "messages/protocol.hpp"

#include <caf/fwd.hpp>

#include <memory>

namespace dcpp {

/// `target` may be null for actors that never get read_atom.
reader_actor spawn_reader(caf::actor_system& sys,
                          std::shared_ptr<storage_reader> reader,
                          std::shared_ptr<load_target> target,
                          io_mode mode = io_mode::detached);

} // namespace dcpp
