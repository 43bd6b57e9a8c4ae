#pragma once

// Writes the zip archive of one tensor item (docs/dcp-format.md §3): STORED
// records, each record's data 64-byte aligned relative to the item start,
// data descriptors with real CRC-32s, a central directory and a Zip64 end
// record. The layout is the one of libtorch 1.13's PyTorchStreamWriter
// (which Python's torch.save uses), checked byte for byte against
// Python-written items, including the Zip64 extras of records of 4 GiB and
// more. PyTorchStreamWriter itself is not used: its miniz CRC-32 runs at
// about 0.5 GB/s, below the disk's speed; ours uses carry-less
// multiplication (about 13 GB/s).

#include "storage/checksum.hpp"
#include "storage/file_sink.hpp"

#include <caf/error.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dcpp::detail {

/// Writes the records of one torch.save archive to a sink, tracking the
/// position relative to the item start and hashing every byte.
class zip_writer {
public:
  /// Writes to `out`; feeds every byte to `hash` unless it is null.
  zip_writer(item_sink& out, hasher* hash) : out_(out), hash_(hash) {
    // nop
  }

  uint64_t position() const {
    return pos_;
  }

  /// Starts a record of `size` bytes: its local header and padding.
  caf::error begin_record(std::string name, uint64_t size);

  /// Appends record data: CRC, hash, sink.
  caf::error data(const void* ptr, size_t size);

  /// Ends the current record: its data descriptor.
  caf::error end_record();

  /// Central directory, Zip64 end record and locator, end record.
  caf::error finish();

private:
  struct entry {
    std::string name;
    uint64_t offset = 0;
    uint64_t size = 0;
    uint32_t crc = 0;
  };

  static uint16_t flags_of(uint64_t size);

  caf::error emit(const void* ptr, size_t size);

  item_sink& out_;
  hasher* hash_;
  uint64_t pos_ = 0;
  uint32_t crc_ = 0;
  std::vector<entry> entries_;
};

} // namespace dcpp::detail
