#pragma once

// Byte sinks that DCP items are written to: a string (tests, in-memory
// storage) or a file descriptor, buffered or with O_DIRECT through a pool of
// aligned staging buffers written by a background thread.

#include "storage/aligned_buffers.hpp"
#include "storage/landing.hpp"

#include <caf/error.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace dcpp {

/// An append-only byte stream that items are written to.
class item_sink {
public:
  virtual ~item_sink();

  /// Appends `size` bytes. `data` needs to stay valid only during the call.
  [[nodiscard]] virtual caf::error append(const void* data, size_t size) = 0;
};

/// Appends to a string (tests, in-memory storage).
class string_sink final : public item_sink {
public:
  caf::error append(const void* data, size_t size) override;

  std::string& buffer() {
    return buf_;
  }

private:
  std::string buf_;
};

/// How a `file_sink` hands bytes to the kernel.
struct file_sink_options {
  /// Buffered mode: ask the kernel to start writing back every few MiB
  /// (sync_file_range), so that a final fsync has little left to wait for.
  bool early_writeback = false;
  /// `fd` was opened with O_DIRECT (and `position` is 0): bytes go through
  /// a few aligned staging buffers that a background thread writes to the
  /// device, bypassing the page cache (no page-cache allocation, no second
  /// copy in the kernel; writing overlaps with encoding). `flush` writes the
  /// last partial block padded and truncates the file to its real size.
  bool direct = false;
  /// Buffered mode: how large appends leave memory that is not dcpp's
  /// huge pages (write(2) from it, or copied into the sink's huge-page
  /// buffer first); measured once per process by default.
  landing_mode landing = landing_mode::automatic;
};

/// Appends to a file descriptor. Buffered mode gathers small pieces in a
/// buffer and hands large spans to write(2) straight from the caller's
/// memory; direct mode (see `file_sink_options::direct`) streams through
/// aligned buffers. Errors name the path and the errno text
/// (`errc::storage_failure` for a full disk or a short write,
/// `errc::io_error` otherwise).
class file_sink final : public item_sink {
public:
  /// Writes to `fd` (not owned), whose file offset is `position`.
  file_sink(int fd, std::string path, uint64_t position = 0,
            file_sink_options opts = {});

  /// Does not flush: call `flush` to see its errors. Waits for background
  /// writes in flight.
  ~file_sink() override;

  file_sink(const file_sink&) = delete;
  file_sink& operator=(const file_sink&) = delete;

  caf::error append(const void* data, size_t size) override;

  /// Hands all appended bytes to the kernel (direct mode: writes them to
  /// the device and sets the file size). Appending after a flush is fine.
  [[nodiscard]] caf::error flush();

  /// The file offset after the last appended byte.
  uint64_t position() const {
    return pos_;
  }

  const std::string& path() const {
    return path_;
  }

private:
  struct direct_state;

  caf::error write_all(const char* data, size_t size);
  caf::error append_direct(const char* data, size_t size);
  caf::error flush_direct();

  int fd_;
  std::string path_;
  uint64_t pos_;
  uint64_t written_;
  uint64_t kicked_;
  file_sink_options opts_;
  /// Buffered mode: the buffer (in `buffer_`) and whether appends from
  /// memory that is not dcpp's huge pages go through it
  /// (storage/landing.hpp).
  detail::scratch_buffer buffer_;
  char* buf_ = nullptr;
  bool bounce_ = false;
  size_t used_ = 0;
  std::unique_ptr<direct_state> direct_;
};

} // namespace dcpp
