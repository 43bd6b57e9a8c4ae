#include "storage/posix_file.hpp"

#include "core/fault.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <type_traits>

namespace dcpp::detail {

std::string errno_text(int err) {
  char buf[256];
  auto res = strerror_r(err, buf, sizeof(buf));
  // GNU strerror_r returns the message; XSI returns 0 and fills buf.
  if constexpr (std::is_same_v<decltype(res), char*>)
    return res;
  else
    return buf;
}

errc errno_code(int err) {
  return (err == ENOSPC || err == EDQUOT || err == EFBIG)
           ? errc::storage_failure
           : errc::io_error;
}

caf::error os_error(const std::string& what, const std::string& path, int err) {
  return make_error(errno_code(err),
                    path + ": " + what + ": " + errno_text(err));
}

int open_fd(const std::string& path, int flags, mode_t mode) {
  int fd;
  do {
    fd = ::open(path.c_str(), flags, mode);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

int fd_guard::close() {
  auto fd = std::exchange(fd_, -1);
  return fd >= 0 ? ::close(fd) : 0;
}

const char* file_kind(mode_t mode) {
  if (S_ISFIFO(mode))
    return "a FIFO";
  if (S_ISDIR(mode))
    return "a directory";
  if (S_ISCHR(mode))
    return "a character device";
  if (S_ISBLK(mode))
    return "a block device";
  if (S_ISSOCK(mode))
    return "a socket";
  if (S_ISLNK(mode))
    return "a symbolic link";
  return "a special file";
}

caf::expected<fd_guard> open_regular_file(const std::string& path,
                                          int* open_errno) {
  if (open_errno)
    *open_errno = 0;
  fd_guard fd{open_fd(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)};
  if (fd.get() < 0) {
    auto err = errno;
    if (open_errno)
      *open_errno = err;
    struct stat st;
    if (err == ELOOP && ::lstat(path.c_str(), &st) == 0 && S_ISLNK(st.st_mode))
      return make_error(errc::path_escape,
                        path + ": is a symbolic link, not a regular file");
    return os_error("open", path, err);
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0)
    return os_error("stat", path, errno);
  if (!S_ISREG(st.st_mode))
    return make_error(errc::io_error, path + ": is " + file_kind(st.st_mode)
                                        + ", not a regular file");
  auto fl = ::fcntl(fd.get(), F_GETFL);
  if (fl < 0 || ::fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK) != 0)
    return os_error("fcntl", path, errno);
  return fd;
}

int create_exclusive(const std::string& path, int flags, mode_t mode) {
  // A leftover that cannot be removed (a directory, no permission) makes
  // the open below fail with EEXIST.
  (void)::unlink(path.c_str());
  return open_fd(path, flags | O_CREAT | O_EXCL | O_NOFOLLOW, mode);
}

int fsync_fd(int fd) {
  while (::fsync(fd) != 0)
    if (errno != EINTR)
      return errno;
  return 0;
}

caf::error fsync_dir(const std::string& dir) {
  fd_guard fd{open_fd(dir, O_RDONLY | O_CLOEXEC | O_DIRECTORY)};
  if (fd.get() < 0)
    return os_error("open for fsync", dir, errno);
  auto err = fsync_fd(fd.get());
  // Some file systems cannot fsync directories; nothing to wait for then.
  if (err != 0 && err != EINVAL && err != EROFS)
    return os_error("fsync", dir, err);
  return {};
}

int write_fully(int fd, const char* data, size_t size, uint64_t& done) {
  return transfer_fully(size, done, [&](uint64_t pos, size_t n) {
    return fault::write(fd, data + pos, n);
  });
}

int pread_fully(int fd, char* dst, size_t size, uint64_t offset,
                uint64_t& done) {
  return transfer_fully(size, done, [&](uint64_t pos, size_t n) {
    return ::pread(fd, dst + pos, n, static_cast<off_t>(offset + pos));
  });
}

std::string parent_of(const std::string& path) {
  auto pos = path.find_last_of('/');
  if (pos == std::string::npos)
    return ".";
  if (pos == 0)
    return "/";
  return path.substr(0, pos);
}

caf::error make_directories(const std::string& dir, bool sync) {
  if (dir.empty())
    return make_error(errc::invalid_argument, "empty checkpoint directory");
  size_t pos = 0;
  while (pos != std::string::npos) {
    pos = dir.find('/', pos + 1);
    auto part = dir.substr(0, pos);
    if (part.empty() || part == "/")
      continue;
    if (::mkdir(part.c_str(), 0755) == 0) {
      if (sync)
        if (auto err = fsync_dir(parent_of(part)))
          return err;
      continue;
    }
    auto err = errno;
    if (err != EEXIST)
      return os_error("mkdir", part, err);
    struct stat st;
    if (::stat(part.c_str(), &st) != 0)
      return os_error("stat", part, errno);
    if (!S_ISDIR(st.st_mode))
      return make_error(errc::io_error,
                        part + ": exists and is not a directory");
  }
  return {};
}

caf::error write_whole(int fd, const std::string& path, const char* data,
                       size_t size) {
  uint64_t done = 0;
  auto res = write_fully(fd, data, size, done);
  if (res == -1)
    return make_error(errc::storage_failure,
                      path + ": short write at offset " + std::to_string(done));
  if (res != 0)
    return os_error("write at offset " + std::to_string(done), path, res);
  return {};
}

caf::error replace_file(const std::string& path, std::string_view data,
                        bool sync) {
  auto tmp = path + ".tmp";
  fd_guard fd{create_exclusive(tmp, O_WRONLY | O_CLOEXEC, 0644)};
  if (fd.get() < 0)
    return os_error("create", tmp, errno);
  if (auto err = write_whole(fd.get(), tmp, data.data(), data.size()))
    return err;
  if (sync)
    if (auto err = fsync_fd(fd.get()))
      return os_error("fsync", tmp, err);
  if (fd.close() != 0)
    return os_error("close", tmp, errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return os_error("rename to " + path, tmp, errno);
  return sync ? fsync_dir(parent_of(path)) : caf::error{};
}

} // namespace dcpp::detail
