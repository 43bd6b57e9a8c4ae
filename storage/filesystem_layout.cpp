#include "storage/filesystem_layout.hpp"

#include "core/error.hpp"
#include "storage/metadata_codec.hpp"
#include "storage/posix_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <exception>
#include <map>
#include <string>

namespace dcpp::detail {

namespace {

constexpr uint64_t max_metadata_size = uint64_t{1} << 30;

} // namespace

std::string join(const std::string& dir, const std::string& name) {
  if (dir.empty())
    return name;
  if (dir.back() == '/')
    return dir + name;
  return dir + "/" + name;
}

/// A file name that stays inside the checkpoint directory.
bool plain_file_name(const std::string& name) {
  return !name.empty() && name.find('/') == std::string::npos
         && name.find('\0') == std::string::npos
         && name.find("..") == std::string::npos && name != ".";
}

caf::expected<metadata> read_metadata_file(const std::string& dir,
                                           std::string* bytes_read) {
  auto path = join(dir, metadata_name);
  int err = 0;
  auto opened = open_regular_file(path, &err);
  if (!opened) {
    if (err == ENOENT) {
      struct stat st;
      if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
        return make_error(errc::not_found,
                          dir + ": no such checkpoint directory");
      return make_error(errc::not_found, dir + ": no committed checkpoint ("
                                           + metadata_name + " is missing)");
    }
    return std::move(opened.error());
  }
  auto& fd = *opened;
  struct stat st;
  if (::fstat(fd.get(), &st) != 0)
    return os_error("stat", path, errno);
  auto size = static_cast<uint64_t>(st.st_size);
  if (size > max_metadata_size)
    return make_error(errc::too_large,
                      path + ": " + std::to_string(size)
                        + " bytes exceed the 1 GiB limit for metadata");
  std::string bytes(static_cast<size_t>(size), '\0');
  size_t done = 0;
  while (done < bytes.size()) {
    auto res = ::read(fd.get(), bytes.data() + done, bytes.size() - done);
    if (res < 0) {
      if (errno == EINTR)
        continue;
      return os_error("read", path, errno);
    }
    if (res == 0)
      break;
    done += static_cast<size_t>(res);
  }
  bytes.resize(done);
  try {
    auto md = decode_metadata(bytes);
    if (!md)
      return with_context(md.error(), path, errc::corrupt_metadata);
    if (bytes_read != nullptr)
      *bytes_read = std::move(bytes);
    return md;
  } catch (const std::exception& ex) {
    return make_error(errc::corrupt_metadata, path + ": " + ex.what());
  }
}

caf::error check_data_files(const std::string& dir, const metadata& md) {
  std::map<std::string, uint64_t> sizes;
  for (const auto& [idx, info] : md.storage_data) {
    if (!plain_file_name(info.relative_path))
      return make_error(errc::path_escape, to_string(idx) + ": relative path '"
                                             + info.relative_path
                                             + "' is not a file inside " + dir);
    auto i = sizes.find(info.relative_path);
    if (i == sizes.end()) {
      auto path = join(dir, info.relative_path);
      struct stat st;
      if (::lstat(path.c_str(), &st) != 0) {
        auto err = errno;
        if (err == ENOENT)
          return make_error(errc::corrupt_item, to_string(idx) + ": data file "
                                                  + path + " is missing");
        return os_error("stat", path, err);
      }
      // A link could lead anywhere (/etc/passwd): never followed.
      if (S_ISLNK(st.st_mode))
        return make_error(errc::path_escape,
                          to_string(idx) + ": " + path
                            + ": is a symbolic link, not a regular file");
      if (!S_ISREG(st.st_mode))
        return make_error(errc::corrupt_item, to_string(idx) + ": " + path
                                                + " is not a regular file");
      i = sizes.emplace(info.relative_path, static_cast<uint64_t>(st.st_size))
            .first;
    }
    auto file_size = i->second;
    if (info.offset > file_size || info.length > file_size - info.offset)
      return make_error(
        errc::corrupt_item,
        to_string(idx) + ": item [" + std::to_string(info.offset) + ", +"
          + std::to_string(info.length) + ") extends past the end of "
          + join(dir, info.relative_path) + " (" + std::to_string(file_size)
          + " bytes)");
  }
  return caf::none;
}

} // namespace dcpp::detail
