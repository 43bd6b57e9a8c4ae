#pragma once

// Reads the zip archive of one DCP item (docs/dcp-format.md §3) from a
// byte range of an open file or from memory: finds the end records (Zip64
// included), parses and bounds-checks the central directory and locates a
// record's data. Hostile input yields `errc::corrupt_item` naming the file
// and offset, never a crash or an allocation beyond the item's size. The
// bytes at both ends of the item that opening reads are kept, so that later
// reads and hashes of them cost no second read.

#include "storage/checksum.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dcpp::detail {

/// One central directory entry.
struct zip_entry {
  std::string name;
  uint64_t local_offset = 0;
  uint64_t size = 0;
  uint64_t compressed_size = 0;
  uint16_t method = 0;
};

/// The bytes of one zip archive and what reading its ends cached.
struct zip_reader {
  /// The byte source: a file descriptor (read with pread) or memory.
  int fd = -1;
  const char* mem = nullptr;
  /// Names the source in messages.
  std::string path;
  /// The item's offset in the file.
  uint64_t base = 0;
  uint64_t length = 0;

  /// Bytes read while opening: `[0, head.size())` and
  /// `[tail_pos, tail_pos + tail.size())`, relative to the item.
  std::string head;
  std::string tail;
  uint64_t tail_pos = 0;

  /// "path @ offset (length bytes)".
  std::string describe() const;

  /// `errc::corrupt_item`: "<describe()>: <what>".
  caf::error corrupt(const std::string& what) const;

  /// Reads `[pos, pos + n)` of the item into `dst`.
  caf::error read_at(uint64_t pos, char* dst, size_t n) const;

  /// A view of `[pos, pos + n)` if the bytes read while opening cover it.
  const char* cached(uint64_t pos, uint64_t n) const;

  /// Small reads while parsing: a copy of `[pos, pos + n)`.
  caf::expected<std::string> fetch(uint64_t pos, uint64_t n) const;

  /// Feeds `[begin, end)` of the item to `hash`, using bytes already read
  /// where possible.
  caf::error hash_range(uint64_t begin, uint64_t end, hasher& hash) const;

  /// Reads and caches both ends of a file-backed item (the whole item if it
  /// is small); nothing for an item in memory.
  caf::error read_ends();

  /// The central directory, validated against the item's length.
  caf::expected<std::vector<zip_entry>> read_directory();

  /// Where the data of the STORED record `e` starts, relative to the item.
  caf::expected<uint64_t> record_data(const zip_entry& e);

  /// The `<prefix>/data.pkl` record of a torch.save archive (one top-level
  /// folder, any name) among `entries`, with `prefix` set; fails unless
  /// there is one, or if `<prefix>/byteorder` says anything but "little".
  caf::expected<const zip_entry*>
  torch_pickle_record(const std::vector<zip_entry>& entries,
                      std::string& prefix);
};

} // namespace dcpp::detail
