#pragma once

// The nesting of a flattened state dict rebuilt from its flatten mapping,
// as DCP's `unflatten_state_dict` rebuilds it (`_traverse.set_element`: a
// str path element is a dict key, an int one a list position, a list is
// padded with None up to a position). Pure: the result names, at each
// leaf, the flat key whose value belongs there; storage code fills in the
// values (`dcpp export`, `export_torch_save`).
//
// Unlike `set_element`, which overwrites silently, a mapping that cannot
// describe one tree is refused with `errc::corrupt_metadata` naming the
// key: a path that runs through another key's value or ends on a
// container, two keys on one path, a position where a dict is (or a key
// where a list is), a mapping entry for a key the checkpoint lacks, an
// empty path, a position at the top level.

#include "core/metadata.hpp"

#include <caf/expected.hpp>

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace dcpp {

/// One node of a rebuilt nested state dict.
struct nested_node {
  enum class kind : uint8_t {
    /// A value: the flat key `fqn` holds it.
    leaf,
    /// A dict: `children` in the order their keys first appear.
    dict,
    /// A list: `children` are the positions 0..n-1 in order (their names
    /// are the decimal positions).
    list,
    /// A position of a list that no key fills (Python's None, as DCP pads).
    none,
  };

  kind type = kind::dict;
  std::string fqn;
  std::vector<std::pair<std::string, nested_node>> children;
};

struct unflatten_limits {
  /// Largest list position accepted beyond the number of keys: DCP pads a
  /// list with None up to its highest position, so a hostile position
  /// would otherwise allocate without bound.
  size_t max_padding = 65536;
};

/// Nests the flat keys `fqns` (in this order) by `mapping`; a key the
/// mapping does not name stays a top-level key. The root is a dict.
caf::expected<nested_node> unflatten(const std::vector<std::string>& fqns,
                                     const flatten_mapping& mapping,
                                     const unflatten_limits& limits = {});

} // namespace dcpp
