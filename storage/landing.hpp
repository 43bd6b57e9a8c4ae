#pragma once

// How item bytes travel between the page cache and memory that dcpp did not
// allocate itself (a user's tensors from PyTorch's allocator: 64-byte
// aligned, 4 KiB pages).
//
// The kernel's copy between the page cache and user memory does not run at
// one speed everywhere. On some hosts (virtual machines among them)
// read(2) of a warm file into touched 4 KiB pages runs at ~0.7 GB/s while
// the same read into transparent-huge-page memory runs at ~15 GB/s, and a
// user-space memcpy between the two kinds runs at ~14 GB/s; on others the
// three are within noise of each other. So the path is measured, not
// assumed: a short probe (8 MiB through a memfd, 3 times each way: ~40 ms at
// the slowest speed seen, started in the background when a file-system
// reader or writer is made) decides, once per process and direction,
// between
//
// - direct: pread/write straight between the page cache and the tensor;
// - bounce: through a reused, per-thread huge-page buffer of one block,
//   with a memcpy to or from the tensor (the checksum is computed on the
//   bounce buffer while it is in cache).
//
// Memory that dcpp allocated as huge pages (storage/host_memory.hpp) is
// always read directly: it is the fast case. `DCPP_LANDING=direct|bounce|
// auto` overrides the probe for the process; `filesystem_reader_options::
// landing` for one reader.
//
// Rejected: madvise(MADV_HUGEPAGE) on a destination after the fact does
// nothing to pages already touched (at::zeros touches them) until khugepaged
// gets round to them; MADV_COLLAPSE does it at once but ran at 0.4-3 GB/s
// here (it allocates and compacts), rewrites the user's memory, and would
// pay that on every new destination.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace dcpp {

/// How bytes reach (or leave) memory that is not dcpp's own huge pages.
enum class landing_mode : uint8_t {
  /// The process-wide choice (`DCPP_LANDING`, else the probe).
  automatic,
  /// Straight between the page cache and the tensor.
  direct,
  /// Through a reused huge-page buffer and a memcpy.
  bounce,
};

/// "auto", "direct" or "bounce".
std::string_view to_string(landing_mode mode);

/// Parses what `to_string` writes; nullopt for anything else.
std::optional<landing_mode> parse_landing_mode(std::string_view text);

namespace detail {

/// What the process decided for `landing_mode::automatic`, for one
/// direction (reads into memory, writes out of it), and why.
struct host_landing {
  landing_mode mode = landing_mode::direct;
  /// The probe's figures (GB/s of the best block; 0 without a probe).
  double direct_GBps = 0;
  double bounce_GBps = 0;
  /// "probe", "DCPP_LANDING=<value>", or "probe failed: <why>" (then
  /// direct).
  std::string source;
};

/// The process-wide decision for reads; the first call runs the read probe
/// (or reads `DCPP_LANDING`), later calls return the cached result.
/// Thread-safe.
const host_landing& read_landing_of_host();

/// The same for writes (a probe of its own: a load never pays for it).
const host_landing& write_landing_of_host();

/// Starts the probe for reads (`write` false) or writes on a thread of its
/// own unless it ran or runs already, so that it overlaps with what the
/// program does before its first load or save (allocating the
/// destination) instead of adding to it. The file-system reader and writer
/// call this when they are made.
void prepare_landing(bool write);

/// `mode`, or the host's choice for reads if `mode` is automatic.
landing_mode resolve_read_landing(landing_mode mode);

/// `mode`, or the host's choice for writes if `mode` is automatic.
landing_mode resolve_write_landing(landing_mode mode);

/// Records `[ptr, ptr + size)` as huge-page memory that dcpp allocated
/// (`forget_huge_memory(ptr)` before freeing it).
void note_huge_memory(const void* ptr, size_t size);
void forget_huge_memory(const void* ptr);

/// Whether `[ptr, ptr + size)` lies inside memory recorded by
/// `note_huge_memory`.
bool is_huge_memory(const void* ptr, size_t size);

/// Bytes that went through a bounce buffer in this process, reads and
/// writes (tests check which path ran; reports show it).
uint64_t bounced_bytes();
void count_bounced(uint64_t bytes);

} // namespace detail

} // namespace dcpp
