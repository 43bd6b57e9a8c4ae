#pragma once

// How the actors of one rank reach the other ranks: by rank number.
//
// In a process group inside one actor system the table holds the actors
// themselves. A transport between processes (issue 5) fills it with bridge
// actors that implement the same interfaces and carry the wire messages
// (`messages/wire.hpp`); a bridge actor that loses its peer quits, which
// the coordinator and agents see as a down message (errc::rank_lost).

#include "messages/protocol.hpp"

#include <cstdint>
#include <memory>
#include <vector>

namespace dcpp {

struct peer_table {
  /// Index = rank: the coordinator hosted by that rank.
  std::vector<coordinator_actor> coordinators;
  /// Index = rank: that rank's agent (its coordinator-facing part).
  std::vector<rank_endpoint_actor> ranks;

  int32_t world_size() const {
    return static_cast<int32_t>(ranks.size());
  }
};

/// Filled once by whoever builds the group, before any operation starts;
/// read-only afterwards.
using peer_table_ptr = std::shared_ptr<peer_table>;

} // namespace dcpp
