#pragma once

// Counting wrappers around an item source (save) and a load target (load):
// they add each item's bytes to a shared counter as the storage takes or
// fills it, so that a rank can report its data step's progress while the
// storage works, without the storage knowing. Safe from several threads.

#include "core/metadata.hpp"
#include "storage/storage.hpp"

#include <atomic>
#include <cstdint>
#include <memory>

namespace dcpp {

/// Bytes done so far, shared by the counting wrappers of one operation and
/// the rank agent that reports them.
struct byte_counter {
  std::atomic<uint64_t> done{0};
  /// Load: the checkpoint's metadata, which holds every saved item's size;
  /// set before the data step starts.
  std::shared_ptr<const metadata> md;
};

using byte_counter_ptr = std::shared_ptr<byte_counter>;

/// `inner`, counting each write item's bytes into `counter` when a writer
/// takes its data.
std::shared_ptr<const item_source>
counting_source(std::shared_ptr<const item_source> inner,
                byte_counter_ptr counter);

/// `inner`, counting each saved item's bytes into `counter` (once per item)
/// when a reader asks where to put its data.
std::shared_ptr<load_target> counting_target(std::shared_ptr<load_target> inner,
                                             byte_counter_ptr counter);

} // namespace dcpp
