#pragma once

// Helpers shared by the storage_format tests: test data files and a
// self-removing temporary directory.

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>

namespace dcpp::test {

/// Path of a file under tests/data.
inline std::string data_path(const std::string& rel) {
  return std::string{DCPP_TEST_DATA_DIR} + "/" + rel;
}

/// The whole content of `path`; throws (failing the test) if unreadable.
inline std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  if (!in)
    throw std::runtime_error("cannot read " + path);
  return std::string{std::istreambuf_iterator<char>{in},
                     std::istreambuf_iterator<char>{}};
}

inline std::string read_data(const std::string& rel) {
  return read_file(data_path(rel));
}

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out{path, std::ios::binary | std::ios::trunc};
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out)
    throw std::runtime_error("cannot write " + path);
}

/// A fresh directory under the system's temp dir, removed with its content
/// when the object goes away.
class temp_dir {
public:
  temp_dir() {
    auto pattern = (std::filesystem::temp_directory_path()
                    / "dcpp_storage_format_XXXXXX")
                     .string();
    if (mkdtemp(pattern.data()) == nullptr)
      throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }

  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }

  const std::filesystem::path& path() const {
    return path_;
  }

private:
  std::filesystem::path path_;
};

} // namespace dcpp::test
