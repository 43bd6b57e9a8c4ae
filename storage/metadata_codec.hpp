#pragma once

// `.metadata` <-> bytes: the pickle of DCP's `Metadata` dataclass.
//
// The reader accepts pickle protocols 2 to 5, the class paths of torch 1.13
// (`torch.distributed._shard.checkpoint.*`) and of torch >= 2
// (`torch.distributed.checkpoint.*`), both encodings of the memory-format
// enum, and refuses every other global. The writer emits protocol 2 in the
// flavor of the torch that will read it.

#include "core/metadata.hpp"

#include <caf/expected.hpp>

#include <string>
#include <string_view>

namespace dcpp {

enum class metadata_flavor : uint8_t {
  /// `torch.distributed._shard.checkpoint.*` classes (torch 1.13).
  torch_1_13,
  /// `torch.distributed.checkpoint.*` classes, `version` and `storage_meta`
  /// (torch >= 2.0).
  torch_2,
};

std::string to_string(metadata_flavor x);

/// Parses "1.13" / "2" (also "torch_1_13", "torch_2").
caf::expected<metadata_flavor> parse_metadata_flavor(const std::string& str);

/// Encodes `md` as the pickle PyTorch DCP writes into `.metadata`, in the
/// layout of the reference emitter (docs/dcp-format.md, section 2.6).
/// torch_1_13 writes the three fields of 1.13's `Metadata`; torch_2 adds
/// `storage_meta` (checkpoint_id as a str, or None when empty) and
/// `version` ("1.0.0" when `md.version` is empty). `planner_data` is None
/// when empty. A non-empty `storage_info::checksum` becomes an extra
/// `checksum` key of `_StorageInfo` (an instance attribute for Python).
std::string encode_metadata(const metadata& md,
                            metadata_flavor flavor = metadata_flavor::torch_2);

/// Decodes a `.metadata` file. Fails with `errc::corrupt_metadata` naming
/// what was wrong (an unknown global, a missing field, a bad type), or with
/// `errc::unsupported` for an item stored with `transform_descriptors`.
caf::expected<metadata> decode_metadata(std::string_view bytes);

} // namespace dcpp
