#pragma once

// Large, aligned, reusable memory for the storage I/O paths: buffers
// advised to use transparent huge pages (first touch of fresh 4 KiB pages
// is the slowest part of reading into new memory) and per-thread scratch
// buffers that survive from one item to the next.

#include <cstddef>

namespace dcpp::detail {

/// Block size for streaming data through the CRC, the hash and the sink:
/// small enough to stay in L2 between the passes.
constexpr size_t block_size = size_t{1} << 20;

/// Marks the 2 MiB-aligned part of `[ptr, ptr + size)` (if any) for
/// transparent huge pages.
void advise_huge_pages(void* ptr, size_t size);

/// A reusable buffer: staging areas and hash-only reads.
class scratch_buffer {
public:
  scratch_buffer() = default;
  ~scratch_buffer();

  scratch_buffer(const scratch_buffer&) = delete;
  scratch_buffer& operator=(const scratch_buffer&) = delete;

  /// Returns at least `size` bytes (64-byte aligned; from `block_size` on,
  /// whole 2 MiB pages advised for huge pages); nullptr if memory is
  /// exhausted.
  char* get(size_t size);

  /// Drops the buffer if it grew beyond `keep` bytes.
  void trim(size_t keep);

private:
  char* ptr_ = nullptr;
  size_t capacity_ = 0;
};

/// This thread's buffer for reads of up to `block_size` bytes (huge pages:
/// also the bounce buffer of storage/landing.hpp).
scratch_buffer& block_scratch();

} // namespace dcpp::detail
