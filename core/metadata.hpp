#pragma once

// The checkpoint vocabulary of PyTorch DCP (`metadata.py`) as C++ value types.
// Pure data: no torch, no actors. Field names follow DCP so that readers of
// both code bases map one onto the other.

#include <caf/expected.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace dcpp {

using shape_t = std::vector<int64_t>;

/// Element types that DCP checkpoints carry (the torch storage classes).
enum class dtype : uint8_t {
  float32,
  float64,
  float16,
  bfloat16,
  int64,
  int32,
  int16,
  int8,
  uint8,
  boolean,
  complex64,
  complex128,
  // PyTorch 2.x's dtypes. Their storages pickle as `torch.UntypedStorage`
  // and their tensors as `_rebuild_tensor_v3(..., dtype)`; libtorch 1.13 has
  // no tensor type for them, so dcpp carries their bytes in a tensor of the
  // same element size (`carrier_dtype`).
  uint16,
  uint32,
  uint64,
  float8_e4m3fn,
  float8_e5m2,
  num_values,
};

/// The torch name without prefix: "float32", "bfloat16", "bool", ...
std::string to_string(dtype x);

/// Parses a torch dtype name ("float32", also "torch.float32", "float",
/// "half", "long", ...). Fails with `errc::unknown_dtype`.
caf::expected<dtype> parse_dtype(const std::string& name);

/// Bytes per element.
size_t element_size(dtype x);

/// The torch storage class of a dtype: "FloatStorage", "BFloat16Storage";
/// empty for the 2.x dtypes, which have only `UntypedStorage`.
std::string storage_class_name(dtype x);

/// Whether libtorch 1.13 has a tensor type for `x` (false for the 2.x
/// dtypes: uint16, uint32, uint64, float8_e4m3fn, float8_e5m2).
bool has_libtorch_type(dtype x);

/// The dtype whose libtorch tensors carry `x`'s bytes: `x` itself where
/// libtorch has it, else the signed or byte type of the same element size
/// (uint16 -> int16, uint32 -> int32, uint64 -> int64, float8_* -> uint8).
dtype carrier_dtype(dtype x);

/// Inverse of `storage_class_name`. Fails with `errc::unknown_dtype`.
caf::expected<dtype> dtype_from_storage_class(const std::string& name);

/// DCP records `torch.contiguous_format` for every tensor.
enum class memory_format : uint8_t {
  contiguous = 0,
  channels_last = 1,
  preserve = 2,
};

std::string to_string(memory_format x);

/// `TensorProperties` of DCP. Only `dtype` matters for loading; the rest is
/// kept so that a checkpoint round-trips exactly.
struct tensor_properties {
  dtype type = dtype::float32;
  /// Only "strided" is meaningful for checkpoints.
  std::string layout = "strided";
  bool requires_grad = false;
  memory_format format = memory_format::contiguous;
  bool pin_memory = false;

  friend bool operator==(const tensor_properties& x,
                         const tensor_properties& y) {
    return x.type == y.type && x.layout == y.layout
           && x.requires_grad == y.requires_grad && x.format == y.format
           && x.pin_memory == y.pin_memory;
  }
  friend bool operator!=(const tensor_properties& x,
                         const tensor_properties& y) {
    return !(x == y);
  }
};

/// A box inside a tensor's global shape: `ChunkStorageMetadata`.
struct chunk_storage_metadata {
  shape_t offsets;
  shape_t sizes;

  friend bool operator==(const chunk_storage_metadata& x,
                         const chunk_storage_metadata& y) {
    return x.offsets == y.offsets && x.sizes == y.sizes;
  }
  friend bool operator!=(const chunk_storage_metadata& x,
                         const chunk_storage_metadata& y) {
    return !(x == y);
  }
};

/// Number of elements in a shape (1 for a 0-d shape).
int64_t numel(const shape_t& sizes);

/// `TensorStorageMetadata`: a tensor's properties, global shape and the
/// chunks it was saved in.
struct tensor_storage_metadata {
  tensor_properties properties;
  shape_t size;
  std::vector<chunk_storage_metadata> chunks;

  friend bool operator==(const tensor_storage_metadata& x,
                         const tensor_storage_metadata& y) {
    return x.properties == y.properties && x.size == y.size
           && x.chunks == y.chunks;
  }
};

/// `BytesStorageMetadata`: carries nothing.
struct bytes_storage_metadata {
  friend bool operator==(const bytes_storage_metadata&,
                         const bytes_storage_metadata&) {
    return true;
  }
};

enum class item_kind : uint8_t { tensor = 0, bytes = 1 };

std::string to_string(item_kind x);

/// One entry of `Metadata.state_dict_metadata`: either a tensor or bytes
/// (DCP uses a Python union; a tagged struct keeps it serializable by every
/// inspector).
struct item_metadata {
  item_kind kind = item_kind::tensor;
  /// Meaningful only for `kind == tensor`.
  tensor_storage_metadata tensor;

  static item_metadata bytes() {
    item_metadata x;
    x.kind = item_kind::bytes;
    return x;
  }

  friend bool operator==(const item_metadata& x, const item_metadata& y) {
    return x.kind == y.kind
           && (x.kind == item_kind::bytes || x.tensor == y.tensor);
  }
};

/// `MetadataIndex`: names one chunk of one item. `offset` is the chunk's
/// global offset (absent for bytes items); `index` is a position hint into
/// `chunks` and, as in DCP, is ignored by comparisons.
struct metadata_index {
  std::string fqn;
  bool has_offset = false;
  shape_t offset;
  /// -1 means "no hint" (Python None).
  int64_t index = -1;

  metadata_index() = default;

  explicit metadata_index(std::string key) : fqn(std::move(key)) {
    // nop
  }

  metadata_index(std::string key, shape_t off, int64_t hint = -1)
    : fqn(std::move(key)), has_offset(true), offset(std::move(off)),
      index(hint) {
    // nop
  }

  friend bool operator==(const metadata_index& x, const metadata_index& y) {
    return x.fqn == y.fqn && x.has_offset == y.has_offset
           && x.offset == y.offset;
  }
  friend bool operator!=(const metadata_index& x, const metadata_index& y) {
    return !(x == y);
  }
  friend bool operator<(const metadata_index& x, const metadata_index& y) {
    return std::tie(x.fqn, x.has_offset, x.offset)
           < std::tie(y.fqn, y.has_offset, y.offset);
  }
};

/// "fqn" or "fqn@[0, 4]" for messages.
std::string to_string(const metadata_index& x);

/// `_StorageInfo` of the file-system storage: where an item's bytes live.
struct storage_info {
  /// File name relative to the checkpoint directory.
  std::string relative_path;
  uint64_t offset = 0;
  uint64_t length = 0;
  /// Integrity check of the item's bytes, "xxh64:<16 hex digits>"; empty if
  /// the writer recorded none (e.g. a checkpoint written by PyTorch).
  std::string checksum;

  friend bool operator==(const storage_info& x, const storage_info& y) {
    return x.relative_path == y.relative_path && x.offset == y.offset
           && x.length == y.length && x.checksum == y.checksum;
  }
};

/// One step of a path into a nested state dict, as DCP's `OBJ_PATH` records
/// it: a dict key (a Python str) or a position in a list (a Python int).
struct path_element {
  /// The key, or the position in decimal digits.
  std::string key;
  /// Whether this is a list position (pickled as an int, so DCP's
  /// `set_element` rebuilds a list).
  bool index = false;

  path_element() = default;

  /// A dict key. Implicit on purpose: most elements are keys, and paths
  /// are written as `{"model", "weight"}`.
  path_element(std::string k) : key(std::move(k)) {
    // nop
  }

  path_element(const char* k) : key(k) {
    // nop
  }

  /// A list position.
  static path_element position(uint64_t i) {
    path_element x{std::to_string(i)};
    x.index = true;
    return x;
  }

  friend bool operator==(const path_element& x, const path_element& y) {
    return x.key == y.key && x.index == y.index;
  }

  friend bool operator!=(const path_element& x, const path_element& y) {
    return !(x == y);
  }
};

/// The path of a value in a nested state dict, top-level key first.
using object_path = std::vector<path_element>;

/// `('optim', 'param_groups', 0, 'lr')`, as Python prints the tuple.
std::string to_string(const object_path& path);

/// Maps a flattened key to its path in the nested state dict it came from:
/// `"optim.param_groups.0.lr" -> ("optim", "param_groups", 0, "lr")`. This
/// is what newest DCP stores in `Metadata.planner_data`: dict keys as str
/// (int keys included: DCP flattens `{0: x}` to the key "0"), list
/// positions as int.
using flatten_mapping = std::map<std::string, object_path>;

/// `Metadata`: the content of `.metadata`, the commit record of a checkpoint.
struct metadata {
  std::map<std::string, item_metadata> state_dict_metadata;
  flatten_mapping planner_data;
  std::map<metadata_index, storage_info> storage_data;
  /// DCP format version ("1.0.0" for newest torch; empty for 1.13 files).
  std::string version;
  /// Newest torch: `StorageMeta.save_id` and `checkpoint_id`, if present.
  std::string save_id;
  std::string checkpoint_id;

  friend bool operator==(const metadata& x, const metadata& y) {
    return x.state_dict_metadata == y.state_dict_metadata
           && x.planner_data == y.planner_data
           && x.storage_data == y.storage_data && x.version == y.version
           && x.save_id == y.save_id && x.checkpoint_id == y.checkpoint_id;
  }
};

/// A metadata object shared read-only: every rank of a process that saves
/// or loads the same checkpoint holds this one object, not a copy.
using metadata_ptr = std::shared_ptr<const metadata>;

/// Total logical bytes of all tensor chunks in `md` (bytes items excluded).
uint64_t tensor_bytes(const metadata& md);

/// "[2, 3]" for messages.
std::string to_string(const shape_t& xs);

} // namespace dcpp
