#pragma once

// Shared by the fuzz harnesses. A harness returns normally for every input
// that its decoder handles correctly: decoded, or refused with one of the
// documented error codes. A broken property prints what broke and aborts,
// which libFuzzer reports as a crash (and saves the input) and the corpus
// replay reports as a failed test.

#include "core/error.hpp"

#include <caf/error.hpp>

#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>

namespace dcpp::fuzz {

[[noreturn]] inline void fail(const char* file, int line, const char* cond,
                              const std::string& what) {
  std::fprintf(stderr, "%s:%d: fuzz property failed: %s\n  %s\n", file, line,
               cond, what.c_str());
  std::abort();
}

/// True if `err` is a dcpp error whose code is one of `codes`.
inline bool has_code(const caf::error& err, std::initializer_list<errc> codes) {
  for (auto code : codes)
    if (code_of(err) == code)
      return true;
  return false;
}

} // namespace dcpp::fuzz

/// Aborts with `what` (a string) unless `cond` holds.
#define DCPP_FUZZ_CHECK(cond, what)                                            \
  do {                                                                         \
    if (!(cond))                                                               \
      ::dcpp::fuzz::fail(__FILE__, __LINE__, #cond, (what));                   \
  } while (false)
