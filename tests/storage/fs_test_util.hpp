#pragma once

// Helpers for the tensor codec and file-system storage tests: temporary
// directories, whole-file I/O, the fixture checkpoints and the Debian
// python3 (which has torch 1.13) as an independent reader and writer.

#include "core/error.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

namespace dcpp::fs_test {

/// A fresh directory under $TMPDIR (or /tmp), removed with its content.
class temp_dir {
public:
  temp_dir() {
    const char* base = std::getenv("TMPDIR");
    std::string templ = std::string{base ? base : "/tmp"} + "/dcpp-fs-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr)
      throw std::runtime_error("mkdtemp failed");
    path_ = templ;
  }

  ~temp_dir() {
    std::string cmd = "rm -rf '" + path_ + "'";
    if (std::system(cmd.c_str()) != 0) {
      // best effort
    }
  }

  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  const std::string& path() const {
    return path_;
  }

  std::string operator/(const std::string& name) const {
    return path_ + "/" + name;
  }

private:
  std::string path_;
};

inline std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  if (!in)
    throw std::runtime_error("cannot read " + path);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

inline void write_file(const std::string& path, const std::string& data) {
  std::ofstream out{path, std::ios::binary | std::ios::trunc};
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!out)
    throw std::runtime_error("cannot write " + path);
}

inline bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

/// The fixture checkpoints written by torch 1.13 and by the C++ probe.
inline std::string fixture(const std::string& name) {
  return std::string{DCPP_TEST_DATA_DIR} + "/dcp-1.13/" + name;
}

/// Result of a command: exit status and combined output.
struct command_result {
  int status = -1;
  std::string output;
};

inline command_result run_command(const std::string& cmd) {
  command_result res;
  auto full = cmd + " 2>&1";
  FILE* pipe = ::popen(full.c_str(), "r");
  if (pipe == nullptr)
    return res;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), pipe)) > 0)
    res.output.append(buf, n);
  auto st = ::pclose(pipe);
  res.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return res;
}

/// The interpreter with torch 1.13 (Debian's python3-torch).
inline const char* torch_python() {
  return "/usr/bin/python3";
}

/// Whether `torch_python()` can import torch (checked once).
inline bool have_torch_python() {
  static const bool result = [] {
    auto res = run_command(std::string{torch_python()}
                           + " -c 'import torch' >/dev/null");
    return res.status == 0;
  }();
  return result;
}

/// Runs a Python script (written to `dir`) with `args`.
inline command_result run_python(const std::string& dir,
                                 const std::string& script,
                                 const std::string& args) {
  auto file = dir + "/script.py";
  write_file(file, script);
  return run_command(std::string{torch_python()} + " " + file + " " + args);
}

inline bool ok(const caf::error& err) {
  return !err;
}

template <class T>
bool ok(const caf::expected<T>& x) {
  return static_cast<bool>(x);
}

inline std::string why(const caf::error& err) {
  return err ? describe(err) : std::string{};
}

template <class T>
std::string why(const caf::expected<T>& x) {
  return x ? std::string{} : describe(x.error());
}

} // namespace dcpp::fs_test

/// Requires success of a call returning `caf::error` or `caf::expected`,
/// printing the error otherwise.
#define FS_REQUIRE(expr)                                                       \
  do {                                                                         \
    const auto& fs_require_result_ = (expr);                                   \
    INFO(::dcpp::fs_test::why(fs_require_result_));                            \
    REQUIRE(::dcpp::fs_test::ok(fs_require_result_));                          \
  } while (false)
