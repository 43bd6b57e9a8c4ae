#pragma once

// The error every rank reports when a collective operation fails (DCP's
// CheckpointException): code errc::checkpoint_failed, context
//
//   "<op> failed in step <step>: rank <r>: <describe(error)>; rank <s>: ..."
//
// e.g. "save 3 failed in step write: rank 1: dcpp::storage_failure: disk
// full". Ranks appear in increasing order; `parse_checkpoint_failure`
// recovers the step and the rank -> error text map.

#include "messages/messages.hpp"

#include <caf/error.hpp>
#include <caf/optional.hpp>

#include <cstdint>
#include <map>
#include <string>

namespace dcpp {

caf::error make_checkpoint_failure(const op_id& op, const std::string& step,
                                   const std::map<int32_t, caf::error>& failures);

/// What a checkpoint_failed error says.
struct checkpoint_failure {
  /// "save 3".
  std::string op;
  /// "plan", "write", "commit" or "read".
  std::string step;
  /// rank -> describe() of its error.
  std::map<int32_t, std::string> failures;
};

/// Parses the context of an errc::checkpoint_failed error made by
/// `make_checkpoint_failure`; none for other errors.
caf::optional<checkpoint_failure>
parse_checkpoint_failure(const caf::error& err);

} // namespace dcpp
