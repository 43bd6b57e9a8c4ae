#pragma once

// POSIX file helpers of the storage units: one errno text, one error
// mapping, one descriptor guard, one directory fsync, and one rule for
// interrupted calls.
//
// EINTR: a call that a signal interrupts before it did anything (open,
// read, pread, write, pwrite, fsync) is retried, everywhere. fsync is
// included: an interrupted fsync has not promised anything, and reporting
// EINTR as a failed save (as one copy of these helpers used to) would fail
// a checkpoint over a harmless signal. close(2) is the one exception and is
// never retried: Linux releases the descriptor even when close reports
// EINTR, so a retry could close a descriptor another thread just opened.

#include "core/error.hpp"

#include <caf/error.hpp>

#include <sys/types.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dcpp::detail {

/// strerror_r's text for `err`.
std::string errno_text(int err);

/// `errc::storage_failure` for a full disk or quota (ENOSPC, EDQUOT, EFBIG),
/// `errc::io_error` for any other errno.
errc errno_code(int err);

/// "<path>: <what>: <errno text>", coded by `errno_code(err)`.
caf::error os_error(const std::string& what, const std::string& path, int err);

/// What a file of mode `mode` is, for "<path>: is <what>, not a regular
/// file": "a FIFO", "a directory", "a character device", ...
const char* file_kind(mode_t mode);

/// open(2), retried on EINTR.
int open_fd(const std::string& path, int flags, mode_t mode = 0);

/// Closes a file descriptor on scope exit (unless closed earlier).
class fd_guard {
public:
  explicit fd_guard(int fd = -1) : fd_(fd) {
    // nop
  }

  ~fd_guard() {
    if (fd_ >= 0)
      (void)close();
  }

  fd_guard(const fd_guard&) = delete;
  fd_guard& operator=(const fd_guard&) = delete;

  fd_guard(fd_guard&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {
    // nop
  }

  fd_guard& operator=(fd_guard&& other) noexcept {
    if (this != &other) {
      (void)close();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }

  int get() const {
    return fd_;
  }

  /// Closes now and returns close(2)'s result (never retried, see above).
  int close();

private:
  int fd_;
};

/// Opens an existing checkpoint file (data file, `.metadata`) for reading,
/// refusing what a hostile directory may plant in its place: a symbolic
/// link is never followed (O_NOFOLLOW: `errc::path_escape`, "<path>: is a
/// symbolic link, not a regular file"), and a FIFO, device, socket or
/// directory is refused without blocking in open(2) (O_NONBLOCK, cleared
/// again on success: `errc::io_error`, "<path>: is a FIFO, not a regular
/// file"). Any other failure is `os_error("open", path, errno)`, and
/// `open_errno` (if given) receives that errno (0 when open succeeded).
caf::expected<fd_guard> open_regular_file(const std::string& path,
                                          int* open_errno = nullptr);

/// Creates `path` afresh for writing (`flags` | O_CREAT | O_EXCL |
/// O_NOFOLLOW): a leftover entry of that name (an old temp file, or a
/// symbolic link or FIFO someone planted) is unlinked first, so nothing is
/// ever written through a link or into a file that was there before.
/// Returns the descriptor, or -1 with errno set.
int create_exclusive(const std::string& path, int flags, mode_t mode);

/// `create_exclusive` of `name` in the directory open as `dirfd` (openat:
/// the file lands in that directory even if its path was replaced by a
/// link since it was opened).
int create_exclusive_at(int dirfd, const std::string& name, int flags,
                        mode_t mode);

/// Opens the directory `path` (O_DIRECTORY). With `follow_last` false its
/// last component is never followed: a symbolic link there is
/// `errc::path_escape` ("<path>: is a symbolic link, not a directory"),
/// anything else that is not a directory `errc::io_error` ("<path>: is a
/// FIFO, not a directory"); other failures `os_error("open", path, ...)`.
caf::expected<fd_guard> open_directory(const std::string& path,
                                       bool follow_last = true);

/// A directory that the caller creates and owns (a checkpoint manager's
/// step directory): `make_directories` of its parent (given by the user,
/// links there are followed), then mkdir(2) of `dir` itself (fsyncing the
/// parent if `sync`), then `open_directory(dir, false)`: an existing
/// directory is reused, a symbolic link, device, FIFO or file planted under
/// the name is refused, naming it, and never written through. Returns the
/// open directory, for `*at` calls that stay in it.
caf::expected<fd_guard> make_owned_directory(const std::string& dir, bool sync);

/// Checks that a file may be written to `path` by replacing whatever is
/// there (a temporary file renamed over it): nothing is there yet or a
/// regular file (a symbolic link is refused, `errc::path_escape`, "<path>:
/// is a symbolic link; refusing to replace it"; a device, FIFO, socket or
/// directory `errc::invalid_argument`, "<path>: is a character device;
/// refusing to replace it"), and it does not lie inside any of
/// `must_not_be_inside` (the checkpoint being read: `errc::invalid_argument`,
/// "<path>: is inside the checkpoint <dir> being read"), compared by the
/// real directory that would hold it, so links, `..` and bind-free aliases
/// are seen through. Every writer of an output path calls it before it
/// creates its temporary file and again just before the rename.
caf::error
check_output_path(const std::string& path,
                  const std::vector<std::string>& must_not_be_inside = {});

/// fsync(2) retried on EINTR: 0 or an errno.
int fsync_fd(int fd);

/// fsyncs the directory `dir`, so that names created, renamed or removed in
/// it are durable. A file system that cannot fsync directories (EINVAL,
/// EROFS: nothing is pending there) counts as success. Errors are
/// `os_error("open for fsync" / "fsync", dir, errno)`.
caf::error fsync_dir(const std::string& dir);

/// `fsync_dir` of the directory open as `fd` (`dir` names it in errors).
caf::error fsync_dir_fd(int fd, const std::string& dir);

/// The directory part of `path` ("." without a slash, "/" for "/x").
std::string parent_of(const std::string& path);

/// `mkdir -p dir`; fsyncs the parent of each directory it creates if
/// `sync`. A part of the path that exists and is not a directory is an
/// `errc::io_error` naming it.
caf::error make_directories(const std::string& dir, bool sync);

/// Writes all of `data` to `fd` (`write_fully`): a short write is an
/// `errc::storage_failure`, any other failure an `os_error`, naming `path`
/// and the offset.
caf::error write_whole(int fd, const std::string& path, const char* data,
                       size_t size);

/// `replace_file` of `name` in the directory open as `dirfd` (`dir` is its
/// path, for messages): the temporary file, the rename and the fsync stay
/// in that directory (openat, renameat).
caf::error replace_file_at(int dirfd, const std::string& dir,
                           const std::string& name, std::string_view data,
                           bool sync = true);

/// Replaces `path` by a file holding `data`, durably and atomically:
/// writes `path.tmp` (`create_exclusive`), fsyncs and closes it, renames it
/// over `path` and fsyncs the directory (the fsyncs only if `sync`).
/// Readers see the old file or the new one, never a part. Errors name the
/// path and the call that failed.
caf::error replace_file(const std::string& path, std::string_view data,
                        bool sync = true);

/// Largest piece handed to one read or write call.
constexpr size_t max_io = size_t{1} << 30;

/// Transfers `size` bytes by calling `op(done, piece)` (a read or write of
/// `piece` bytes, at most 1 GiB, `done` bytes into the transfer; returns
/// what the system call returns) until all are done, retrying on EINTR.
/// Returns 0, an errno, or -1 if a call transfers nothing; `done` counts the
/// bytes transferred either way.
template <class Op>
int transfer_fully(size_t size, uint64_t& done, Op op) {
  done = 0;
  while (done < size) {
    auto res = op(done, std::min(static_cast<size_t>(size - done), max_io));
    if (res < 0) {
      if (errno == EINTR)
        continue;
      return errno;
    }
    if (res == 0)
      return -1;
    done += static_cast<uint64_t>(res);
  }
  return 0;
}

/// write(2) of all `size` bytes (through the storage fault hooks, in pieces
/// of at most 1 GiB, retried on EINTR). Returns 0, an errno, or -1 for a
/// write that stored nothing; `done` counts the bytes written either way.
int write_fully(int fd, const char* data, size_t size, uint64_t& done);

/// pread(2) of exactly `size` bytes at `offset` (pieces of at most 1 GiB,
/// retried on EINTR). Returns 0, an errno, or -1 if the file ends first;
/// `done` counts the bytes read either way.
int pread_fully(int fd, char* dst, size_t size, uint64_t offset,
                uint64_t& done);

} // namespace dcpp::detail
