#include "actors/transport/log_limiter.hpp"

#include <catch2/catch.hpp>

#include <chrono>

using dcpp::detail::log_limiter;

TEST_CASE("the peer log allows a burst per window and counts the rest",
          "[log_limiter]") {
  using namespace std::chrono_literals;
  log_limiter lim{3, 10s};
  auto t0 = log_limiter::clock::time_point{} + 100s;
  uint64_t suppressed = 99;
  for (int i = 0; i < 3; ++i) {
    REQUIRE(lim.allow(t0 + std::chrono::milliseconds(i), suppressed));
    CHECK(suppressed == 0);
  }
  for (int i = 0; i < 1000; ++i)
    CHECK_FALSE(lim.allow(t0 + 1s, suppressed));
  // The next window: the first line reports what the last one dropped.
  REQUIRE(lim.allow(t0 + 11s, suppressed));
  CHECK(suppressed == 1000);
  REQUIRE(lim.allow(t0 + 11s, suppressed));
  CHECK(suppressed == 0);
}
