#pragma once

// Reusable host memory for the staged copies of async saves.
//
// `stage(sd)` copies every tensor of a state dict into one buffer of the
// pool (a `host_region`: THP-advised, faulted in when it is made) and
// returns a state dict of the same structure (`map_tensors`: nesting, list
// markers, shard offsets, bytes values) whose tensors are contiguous
// views of that buffer (one torch storage per tensor, as a fresh copy would
// have). The buffer is lent to the staged state dict: when its last tensor
// is gone, the buffer goes back to the pool, and the next `stage` of the
// same or a smaller total size reuses it without allocating or faulting a
// single page. A larger state dict drops the kept buffer and maps a new one.
// A buffer still lent when the next `stage` comes (someone kept a staged
// tensor) is never written over: that stage maps another buffer.

#include "storage/host_memory.hpp"
#include "storage/state_dict.hpp"

#include <caf/expected.hpp>

#include <cstdint>
#include <memory>

namespace dcpp {

namespace detail {
struct staging_pool_state;
} // namespace detail

struct staging_pool_options {
  /// Keep a returned buffer for the next `stage` (true), or unmap it as
  /// soon as the staged copy that used it is gone (false: memory goes back
  /// to the OS between saves, and every save maps and faults anew).
  bool keep_memory = true;
  /// Threads that copy (the caller's included) when a state dict holds at
  /// least `parallel_copy_bytes` of plain CPU tensors.
  uint32_t copy_threads = 1;
  uint64_t parallel_copy_bytes = uint64_t{64} << 20;
};

/// What a pool did and holds; counters only grow, the rest is "now".
struct staging_pool_stats {
  /// Buffers mapped since the pool was made.
  uint64_t allocations = 0;
  /// Stagings that reused a kept buffer.
  uint64_t reuses = 0;
  /// Kept buffers unmapped because a state dict did not fit in them.
  uint64_t rebuilds = 0;
  /// Buffers mapped now, lent or kept, and their bytes.
  uint64_t buffers_held = 0;
  uint64_t bytes_held = 0;
  /// Buffers lent to staged state dicts now, and their bytes.
  uint64_t buffers_in_use = 0;
  uint64_t bytes_in_use = 0;
};

class staging_pool {
public:
  explicit staging_pool(staging_pool_options opts = {});

  /// Unmaps the kept buffer; lent buffers are unmapped when their staged
  /// state dicts are gone.
  ~staging_pool();

  staging_pool(const staging_pool&) = delete;
  staging_pool& operator=(const staging_pool&) = delete;

  /// Copies `sd` (structure, tensors, shards, bytes values) into pool
  /// memory; the copy's tensors are contiguous CPU tensors whatever the
  /// originals' device and strides. Undefined tensors stay undefined.
  /// Thread-safe. Fails with `errc::storage_failure` (no memory, naming the
  /// size) or `errc::invalid_argument` naming the key whose tensor cannot
  /// be copied.
  caf::expected<state_dict> stage(const state_dict& sd);

  /// Unmaps the kept buffer now (memory goes back to the OS); a lent one
  /// still comes back to the pool later if `keep_memory`.
  void release();

  staging_pool_stats stats() const;

  const staging_pool_options& options() const {
    return opts_;
  }

private:
  staging_pool_options opts_;
  std::shared_ptr<detail::staging_pool_state> state_;
};

} // namespace dcpp
