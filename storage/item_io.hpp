#pragma once

// The items of a DCP data file (storage/tensor_codec.hpp) as the storage
// backends see them, without torch types: where an item lies, what writing
// one produced, bytes items, checksums of stored items, and the items of a
// save or load plan. The file-system writer and reader include this header
// instead of tensor_codec.hpp and so compile without torch headers.
// `write_plan_item` and `read_tensor_plan_item` touch tensors and are
// defined in tensor_codec.cpp; the rest is in item_io.cpp.

#include "core/metadata.hpp"
#include "core/plan.hpp"
#include "storage/file_sink.hpp"
#include "storage/landing.hpp"
#include "storage/storage.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dcpp {

// -- writing ------------------------------------------------------------------

/// What writing one item produced.
struct item_result {
  /// Bytes of the item.
  uint64_t length = 0;
  /// "xxh64:..." or empty if no checksum was requested.
  std::string checksum;
};

/// Writes a bytes item verbatim.
caf::expected<item_result>
write_bytes_item(item_sink& out, std::string_view bytes, bool checksum = true);

/// Writes the item of `item` that `source` provides: a bytes item verbatim,
/// or the tensor (`write_tensor_item`) after checking it against the plan:
/// defined, of the chunk's shape (`errc::invalid_argument`) and the plan's
/// dtype (`errc::dtype_mismatch`). Every error names `item.index`.
caf::expected<item_result>
write_plan_item(item_sink& out, const write_item& item,
                const item_source& source, bool checksum = true);

// -- reading ------------------------------------------------------------------

/// A byte range of an open file that holds one item.
struct item_location {
  /// An open file descriptor (not owned), read with pread.
  int fd = -1;
  /// The file's path, for messages.
  std::string path;
  uint64_t offset = 0;
  uint64_t length = 0;
};

/// Reads an item into memory (bytes items), verifying `checksum` if it is
/// not empty.
caf::expected<std::string> read_item_bytes(const item_location& loc,
                                           std::string_view checksum = {});

/// Streams an item's bytes from its file and returns its checksum.
caf::expected<std::string> compute_item_checksum(const item_location& loc);

/// Reads the tensor item at `loc`, which the metadata says holds a chunk of
/// `type` and `sizes`, into the destinations `target` resolves for `reads`
/// (boxes of that chunk; see `tensor_item_reader::read_into`), verifying
/// `checksum` unless it is empty, landing the bytes as `landing` says
/// (storage/landing.hpp). Every error has `key` as its context.
caf::error
read_tensor_plan_item(const item_location& loc, dtype type,
                      const shape_t& sizes,
                      const std::vector<const read_item*>& reads,
                      load_target& target, std::string_view checksum,
                      const std::string& key,
                      landing_mode landing = landing_mode::automatic);

} // namespace dcpp
