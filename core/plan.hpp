#pragma once

// Plan data of PyTorch DCP (`planner.py`, `storage.py`): what each rank
// writes or reads. Pure data.

#include "core/metadata.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace dcpp {

/// `WriteItemType`.
enum class write_item_type : uint8_t {
  tensor = 0, ///< A whole (plain) tensor.
  shard = 1,  ///< One local shard of a sharded tensor.
  bytes = 2,  ///< A serialized non-tensor value (DCP's BYTE_IO).
};

std::string to_string(write_item_type x);

/// `TensorWriteData`: the chunk a write item covers and the tensor it is a
/// chunk of.
struct tensor_write_data {
  chunk_storage_metadata chunk;
  tensor_properties properties;
  shape_t size;

  friend bool operator==(const tensor_write_data& x,
                         const tensor_write_data& y) {
    return x.chunk == y.chunk && x.properties == y.properties
           && x.size == y.size;
  }
};

/// `WriteItem`: one chunk (or bytes value) that one rank writes.
struct write_item {
  metadata_index index;
  write_item_type type = write_item_type::tensor;
  /// Meaningful unless `type == bytes`.
  tensor_write_data tensor_data;
  /// Size of the serialized value for bytes items (0 if unknown). Used to
  /// balance bytes across ranks; not part of DCP's WriteItem.
  uint64_t bytes_size = 0;

  /// Logical bytes this item stands for (elements × element size, or the
  /// serialized size of a bytes item, at least 1).
  uint64_t byte_count() const;

  friend bool operator==(const write_item& x, const write_item& y) {
    return x.index == y.index && x.index.index == y.index.index
           && x.type == y.type
           && (x.type == write_item_type::bytes
               || x.tensor_data == y.tensor_data);
  }
};

/// `LoadItemType`.
enum class load_item_type : uint8_t {
  tensor = 0,
  bytes = 1,
};

std::string to_string(load_item_type x);

/// `ReadItem`: copy a box of one saved chunk into a box of one local
/// destination. Offsets are relative to the chunk (storage) and to the
/// destination tensor or shard (dest).
struct read_item {
  load_item_type type = load_item_type::tensor;
  metadata_index dest_index;
  shape_t dest_offsets;
  metadata_index storage_index;
  shape_t storage_offsets;
  shape_t lengths;

  friend bool operator==(const read_item& x, const read_item& y) {
    return x.type == y.type && x.dest_index == y.dest_index
           && x.dest_index.index == y.dest_index.index
           && x.dest_offsets == y.dest_offsets
           && x.storage_index == y.storage_index
           && x.storage_index.index == y.storage_index.index
           && x.storage_offsets == y.storage_offsets && x.lengths == y.lengths;
  }
};

/// `SavePlan`. `planner_data` and `storage_data` are opaque slots a planner
/// or a storage backend may use to annotate the plan (the file-system writer
/// stores its file prefix "__3_" in `storage_data`).
struct save_plan {
  std::vector<write_item> items;
  std::string storage_data;
  std::string planner_data;
  bool usable = true;

  friend bool operator==(const save_plan& x, const save_plan& y) {
    return x.items == y.items && x.storage_data == y.storage_data
           && x.planner_data == y.planner_data && x.usable == y.usable;
  }
};

/// `LoadPlan`.
struct load_plan {
  std::vector<read_item> items;
  std::string storage_data;
  std::string planner_data;

  friend bool operator==(const load_plan& x, const load_plan& y) {
    return x.items == y.items && x.storage_data == y.storage_data
           && x.planner_data == y.planner_data;
  }
};

/// `WriteResult`: where one write item ended up.
struct write_result {
  metadata_index index;
  uint64_t size_in_bytes = 0;
  storage_info storage_data;

  friend bool operator==(const write_result& x, const write_result& y) {
    return x.index == y.index && x.size_in_bytes == y.size_in_bytes
           && x.storage_data == y.storage_data;
  }
};

} // namespace dcpp
