#pragma once

// Host memory for tensors that dcpp allocates itself (async-save staging,
// load destinations of `make_state_dict_for`, the CLI). Large buffers are
// 2 MiB aligned and advised to use transparent huge pages: on this kind of
// machine first touch of fresh 4 KiB pages runs at ~0.35 GB/s while huge
// pages run at ~10 GB/s (shared/bench/BASELINE.md), and that first touch
// otherwise dominates staging and loading. Both kinds are recorded as dcpp's
// huge-page memory (storage/landing.hpp), which reads always land in
// directly.

#include "core/metadata.hpp"

#include <caf/expected.hpp>

#include <ATen/core/Tensor.h>

#include <cstddef>

namespace dcpp {

/// An uninitialised, contiguous CPU tensor of `sizes` and `type`.
at::Tensor empty_host_tensor(const shape_t& sizes, c10::ScalarType type);

/// An anonymous private mapping of host memory, 2 MiB aligned, its size
/// rounded up to whole 2 MiB pages and advised to use transparent huge
/// pages; unmapped (returned to the OS) on destruction. Move-only.
class host_region {
public:
  host_region() = default;
  ~host_region();

  host_region(host_region&& other) noexcept;
  host_region& operator=(host_region&& other) noexcept;
  host_region(const host_region&) = delete;
  host_region& operator=(const host_region&) = delete;

  /// Maps at least `bytes` (> 0). With `prefault`, every page is faulted in
  /// now (MADV_POPULATE_WRITE, else one write per 4 KiB page), so that the
  /// first copy into the region runs at memory speed instead of paying the
  /// page faults. Fails with `errc::storage_failure` naming the size and
  /// errno.
  static caf::expected<host_region> map(size_t bytes, bool prefault);

  std::byte* data() const {
    return data_;
  }

  size_t size() const {
    return size_;
  }

private:
  host_region(std::byte* data, size_t size) : data_(data), size_(size) {
    // nop
  }

  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

} // namespace dcpp
