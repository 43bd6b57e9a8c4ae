#pragma once

// Checksums of DCP items: CRC-32 for the zip records inside an item, and the
// item checksum recorded in `.metadata`, "xxh64:<16 hex digits>" (xxHash64,
// seed 0, over all bytes of the item; docs/dcp-format.md).

#include <caf/error.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dcpp {

/// CRC-32 (the zip / zlib polynomial) of `data`, continuing `crc` (start
/// with 0). Uses carry-less multiplication where the CPU has it.
uint32_t crc32(uint32_t crc, const void* data, size_t size);

/// The checksum of an item held in memory: "xxh64:<16 hex digits>".
std::string item_checksum(std::string_view item);

/// Formats a raw xxHash64 value as a checksum string.
std::string format_checksum(uint64_t hash);

namespace detail {

/// Streaming xxHash64 with seed 0.
class hasher {
public:
  hasher();

  void update(const void* data, size_t size);

  uint64_t digest() const;

private:
  /// An XXH64_state_t (checked in checksum.cpp); kept opaque so that this
  /// header needs no xxhash.h.
  alignas(8) unsigned char state_[96];
};

/// Checks the form of a recorded checksum; fails with `errc::unsupported`
/// for a scheme other than xxh64. `what` names the item in messages.
caf::error check_checksum_form(std::string_view expected,
                               const std::string& what);

/// Fails with `errc::checksum_mismatch` unless `expected` (any case) is the
/// checksum of the hash value `actual`.
caf::error compare_checksum(std::string_view expected, uint64_t actual,
                            const std::string& what);

} // namespace detail

} // namespace dcpp
