#pragma once

// What the planners may see of a state dict: for every flattened key, its
// kind, properties, global shape and the chunks this rank holds. No tensor
// bytes. The torch-aware layer (`storage/state_dict.hpp`) builds it.

#include "core/metadata.hpp"

#include <string>
#include <vector>

namespace dcpp {

/// One value of a (flattened) state dict as the planner sees it.
struct item_view {
  std::string fqn;
  item_kind kind = item_kind::tensor;
  /// Tensors: dtype and friends.
  tensor_properties properties;
  /// Tensors: the global shape (a plain tensor: its own shape).
  shape_t global_size;
  /// Tensors: the chunks this rank holds, in global coordinates. A plain
  /// tensor holds one chunk at offset 0 covering everything. A sharded
  /// tensor lists its local shards (possibly none).
  std::vector<chunk_storage_metadata> local_chunks;
  /// True for sharded tensors (write items are `shard`, not `tensor`).
  bool sharded = false;
  /// Bytes: size of the serialized value (for load balancing).
  uint64_t bytes_size = 0;
};

/// A flattened state dict: items in a stable order, plus how flattened keys
/// map back to nested paths.
struct state_dict_view {
  std::vector<item_view> items;
  flatten_mapping mapping;
};

} // namespace dcpp
