// The safetensors header decoder on large and hostile headers: its time is
// linear in the header (a header of 4N tensors costs about four times one
// of N), and the bounds of storage/safetensors_header.hpp (tensors per
// file, rank) refuse beyond them at once, naming the file and the tensor.

#include "core/error.hpp"
#include "storage/safetensors_header.hpp"
#include "tests/support/cpu_time.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <string>

using namespace dcpp;

namespace {

/// A header of `n` F32 tensors of shape [1] (4 bytes each), back to back,
/// listed in reverse order of their offsets (the decoder sorts them).
std::string header_of(size_t n) {
  std::string text = "{\"__metadata__\":{\"format\":\"pt\"}";
  for (size_t i = n; i-- > 0;)
    text += ",\"layer." + std::to_string(i)
            + ".weight\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":["
            + std::to_string(4 * i) + "," + std::to_string(4 * i + 4) + "]}";
  text += "}";
  return text;
}

/// A header of one tensor of rank `rank` (every dimension 1).
std::string rank_header(size_t rank) {
  std::string shape;
  for (size_t i = 0; i < rank; ++i)
    shape += i == 0 ? "1" : ",1";
  return "{\"x\":{\"dtype\":\"U8\",\"shape\":[" + shape
         + "],\"data_offsets\":[0,1]}}";
}

/// The least thread CPU time of five decodes, in seconds.
double decode_seconds(const std::string& text, uint64_t file_size) {
  return test::least_cpu_seconds([&] {
    auto h = decode_safetensors_header(text, file_size, "f.safetensors");
    REQUIRE(h);
  });
}

} // namespace

TEST_CASE("safetensors: decoding a header takes time linear in its tensors",
          "[safetensors][fuzz]") {
  constexpr size_t n = safetensors_max_tensors / 4;
  auto small = header_of(n);
  auto large = header_of(4 * n);
  auto t_small = decode_seconds(small, 8 + small.size() + 4 * n);
  auto t_large = decode_seconds(large, 8 + large.size() + 16 * n);
  INFO("N = " << n << ": " << t_small << " s; 4N: " << t_large << " s");
  // Linear: 4; n log n: about 4.5; quadratic: 16.
  CHECK(t_large < 8 * t_small);
  auto h = decode_safetensors_header(large, 8 + large.size() + 16 * n,
                                     "f.safetensors");
  REQUIRE(h);
  CHECK(h->tensors.size() == 4 * n);
  CHECK(h->tensors.front().name == "layer.0.weight");
  CHECK(h->metadata.at("format") == "pt");
}

TEST_CASE("safetensors: more tensors than the limit are refused naming the "
          "file and the count",
          "[safetensors][fuzz]") {
  auto ok = header_of(safetensors_max_tensors);
  CHECK(decode_safetensors_header(
    ok, 8 + ok.size() + 4 * safetensors_max_tensors, "ok.safetensors"));
  auto n = safetensors_max_tensors + 1;
  auto text = header_of(n);
  auto t0 = std::chrono::steady_clock::now();
  auto h = decode_safetensors_header(text, 8 + text.size() + 4 * n,
                                     "many.safetensors");
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now()
                                            - t0)
                .count();
  REQUIRE(!h);
  CHECK(code_of(h.error()) == errc::too_large);
  auto msg = context_of(h.error());
  INFO(msg);
  CHECK(msg.find("many.safetensors") != std::string::npos);
  CHECK(msg.find("more than " + std::to_string(safetensors_max_tensors))
        != std::string::npos);
  CHECK(secs < 10);
}

TEST_CASE("safetensors: a rank beyond the limit is refused naming the file "
          "and the tensor",
          "[safetensors][fuzz]") {
  auto ok = rank_header(safetensors_max_rank);
  auto h = decode_safetensors_header(ok, 8 + ok.size() + 1, "r.safetensors");
  REQUIRE(h);
  CHECK(h->tensors.at(0).shape.size() == safetensors_max_rank);
  // The hostile file of the review: rank 100,000 in 0.6 MB.
  for (size_t rank : {safetensors_max_rank + 1, size_t{100000}}) {
    auto text = rank_header(rank);
    auto bad = decode_safetensors_header(text, 8 + text.size() + 1,
                                         "deep.safetensors");
    REQUIRE(!bad);
    CHECK(code_of(bad.error()) == errc::too_large);
    auto msg = context_of(bad.error());
    INFO(msg);
    CHECK(msg.find("deep.safetensors") != std::string::npos);
    CHECK(msg.find("tensor 'x'") != std::string::npos);
    CHECK(msg.find("rank " + std::to_string(rank)) != std::string::npos);
  }
}
