#pragma once

// Skipping a test case whose prerequisite is missing here (python3 with
// torch, O_DIRECT, /dev/full, ...), visibly: ctest reports the entry as
// "Skipped" instead of "Passed".
//
//   if (!have_torch_python())
//     DCPP_SKIP(torch_python() << " cannot import torch");
//
// DCPP_SKIP prints "SKIP: <case>: <reason>" and returns from the test case
// (so its destructors run: temporary directories go away); the test
// executable then exits with `skip_exit_code` unless a case failed. Every
// ctest entry runs one Catch2 case (catch_discover_tests), and every entry
// carries SKIP_RETURN_CODE 77 (dcpp_add_test in tests/CMakeLists.txt), so
// the entry shows as skipped, with the reason in its output. Call it in the
// body of the TEST_CASE itself, not in a helper or a lambda (it returns).

#include <catch2/catch.hpp>

#include <sstream>
#include <string>

namespace dcpp::test {

/// The exit code of a test executable whose cases passed or were skipped,
/// at least one skipped; ctest's SKIP_RETURN_CODE (the automake convention).
inline constexpr int skip_exit_code = 77;

/// Records that the running case skips because of `reason` and prints it.
void mark_skipped(const std::string& reason);

/// Whether a case of this run called DCPP_SKIP.
bool any_skipped();

} // namespace dcpp::test

#define DCPP_SKIP(reason)                                                      \
  do {                                                                         \
    std::ostringstream dcpp_skip_reason_;                                      \
    dcpp_skip_reason_ << reason;                                               \
    ::dcpp::test::mark_skipped(dcpp_skip_reason_.str());                       \
    return;                                                                    \
  } while (false)
