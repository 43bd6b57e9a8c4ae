// The Catch2 main, compiled once (keeps the test TUs fast to rebuild). A run
// in which a case called DCPP_SKIP and none failed exits with
// skip_exit_code, so ctest reports that entry as skipped (support/skip.hpp).

#define CATCH_CONFIG_RUNNER
#include "tests/support/skip.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <cctype>
#include <cstdio>
#include <string>

namespace dcpp::test {

namespace {

std::atomic<bool> skipped{false};

} // namespace

void mark_skipped(const std::string& reason) {
  skipped = true;
  // A helper script's own "SKIP: why\n" is passed on as "why".
  std::string why = reason;
  while (!why.empty() && std::isspace(static_cast<unsigned char>(why.back())))
    why.pop_back();
  if (why.rfind("SKIP: ", 0) == 0)
    why.erase(0, 6);
  std::string name = Catch::getResultCapture().getCurrentTestName();
  std::printf("SKIP: %s: %s\n", name.c_str(), why.c_str());
  std::fflush(stdout);
}

bool any_skipped() {
  return skipped;
}

} // namespace dcpp::test

int main(int argc, char* argv[]) {
  int result = Catch::Session().run(argc, argv);
  if (result == 0 && dcpp::test::any_skipped())
    return dcpp::test::skip_exit_code;
  return result;
}
