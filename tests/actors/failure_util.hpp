#pragma once

// Test helper: a checkpoint failure (core/error.hpp's data, carried by the
// error itself) with each rank's error rendered, for `find` checks on the
// text. Codes stay available through `checkpoint_failure_of`.

#include "core/error.hpp"

#include <caf/optional.hpp>

#include <cstdint>
#include <map>
#include <string>

namespace dcpp {

struct failure_text {
  std::string op;
  std::string step;
  /// rank -> describe() of its error.
  std::map<int32_t, std::string> failures;
};

/// The failure `err` carries, rendered per rank; none if `err` is not a
/// checkpoint failure made by `make_checkpoint_failure`.
inline caf::optional<failure_text> failure_text_of(const caf::error& err) {
  auto f = checkpoint_failure_of(err);
  if (!f)
    return caf::none;
  failure_text out;
  out.op = f->op;
  out.step = f->step;
  for (const auto& [rank, e] : f->failures)
    out.failures[rank] = describe(e);
  return out;
}

} // namespace dcpp
