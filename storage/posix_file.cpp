#include "storage/posix_file.hpp"

#include "core/fault.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
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

int create_exclusive_at(int dirfd, const std::string& name, int flags,
                        mode_t mode) {
  (void)::unlinkat(dirfd, name.c_str(), 0);
  int fd;
  do {
    fd = ::openat(dirfd, name.c_str(), flags | O_CREAT | O_EXCL | O_NOFOLLOW,
                  mode);
  } while (fd < 0 && errno == EINTR);
  return fd;
}

caf::expected<fd_guard> open_directory(const std::string& path,
                                       bool follow_last) {
  auto flags = O_RDONLY | O_CLOEXEC | O_DIRECTORY | O_NONBLOCK
               | (follow_last ? 0 : O_NOFOLLOW);
  fd_guard fd{open_fd(path, flags)};
  if (fd.get() >= 0)
    return fd;
  auto err = errno;
  struct stat st;
  if ((err == ELOOP || err == ENOTDIR) && ::lstat(path.c_str(), &st) == 0) {
    if (S_ISLNK(st.st_mode))
      return make_error(errc::path_escape,
                        path + ": is a symbolic link, not a directory");
    return make_error(errc::io_error, path + ": is " + file_kind(st.st_mode)
                                        + ", not a directory");
  }
  return os_error("open", path, err);
}

caf::expected<fd_guard> make_owned_directory(const std::string& dir,
                                             bool sync) {
  auto parent = parent_of(dir);
  if (auto err = make_directories(parent, sync))
    return err;
  // mkdir(2) never follows a link in the last component: a planted one
  // makes it fail with EEXIST, and the open below refuses it.
  if (::mkdir(dir.c_str(), 0755) == 0) {
    if (sync)
      if (auto err = fsync_dir(parent))
        return err;
  } else if (errno != EEXIST) {
    return os_error("mkdir", dir, errno);
  }
  return open_directory(dir, false);
}

namespace {

/// The nearest existing directory that holds `path` (or would, once the
/// missing directories in between are made), with every link resolved.
std::string real_holder(const std::string& path) {
  auto dir = parent_of(path);
  for (;;) {
    char buf[PATH_MAX];
    if (::realpath(dir.c_str(), buf) != nullptr)
      return buf;
    if (dir == "/" || dir == ".")
      return {};
    dir = parent_of(dir);
  }
}

} // namespace

caf::error
check_output_path(const std::string& path,
                  const std::vector<std::string>& must_not_be_inside) {
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    auto what = path + ": is " + file_kind(st.st_mode)
                + "; refusing to replace it";
    return make_error(
      S_ISLNK(st.st_mode) ? errc::path_escape : errc::invalid_argument, what);
  }
  if (must_not_be_inside.empty())
    return {};
  auto holder = real_holder(path);
  if (holder.empty())
    return {};
  for (const auto& dir : must_not_be_inside) {
    struct stat guarded;
    if (::stat(dir.c_str(), &guarded) != 0 || !S_ISDIR(guarded.st_mode))
      continue;
    // `holder` has no links left: each of its prefixes is an ancestor.
    for (auto up = holder;; up = parent_of(up)) {
      struct stat here;
      if (::stat(up.c_str(), &here) == 0 && here.st_dev == guarded.st_dev
          && here.st_ino == guarded.st_ino)
        return make_error(errc::invalid_argument,
                          path + ": is inside the checkpoint " + dir
                            + " being read; write it elsewhere");
      if (up == "/" || up.empty())
        break;
    }
  }
  return {};
}

int fsync_fd(int fd) {
  while (::fsync(fd) != 0)
    if (errno != EINTR)
      return errno;
  return 0;
}

caf::error fsync_dir_fd(int fd, const std::string& dir) {
  auto err = fsync_fd(fd);
  // Some file systems cannot fsync directories; nothing to wait for then.
  if (err != 0 && err != EINVAL && err != EROFS)
    return os_error("fsync", dir, err);
  return {};
}

caf::error fsync_dir(const std::string& dir) {
  fd_guard fd{open_fd(dir, O_RDONLY | O_CLOEXEC | O_DIRECTORY)};
  if (fd.get() < 0)
    return os_error("open for fsync", dir, errno);
  return fsync_dir_fd(fd.get(), dir);
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

caf::error replace_file_at(int dirfd, const std::string& dir,
                           const std::string& name, std::string_view data,
                           bool sync) {
  auto tmp_name = name + ".tmp";
  auto in_dir = [&dir](const std::string& x) {
    return dir == "/" ? dir + x : dir + "/" + x;
  };
  auto tmp = in_dir(tmp_name);
  auto path = in_dir(name);
  fd_guard fd{create_exclusive_at(dirfd, tmp_name, O_WRONLY | O_CLOEXEC, 0644)};
  if (fd.get() < 0)
    return os_error("create", tmp, errno);
  if (auto err = write_whole(fd.get(), tmp, data.data(), data.size()))
    return err;
  if (sync)
    if (auto err = fsync_fd(fd.get()))
      return os_error("fsync", tmp, err);
  if (fd.close() != 0)
    return os_error("close", tmp, errno);
  if (::renameat(dirfd, tmp_name.c_str(), dirfd, name.c_str()) != 0)
    return os_error("rename to " + path, tmp, errno);
  return sync ? fsync_dir_fd(dirfd, dir) : caf::error{};
}

caf::error replace_file(const std::string& path, std::string_view data,
                        bool sync) {
  auto dir = parent_of(path);
  auto dirfd = open_directory(dir);
  if (!dirfd)
    return std::move(dirfd.error());
  auto pos = path.find_last_of('/');
  return replace_file_at(dirfd->get(), dir,
                         pos == std::string::npos ? path : path.substr(pos + 1),
                         data, sync);
}

} // namespace dcpp::detail
