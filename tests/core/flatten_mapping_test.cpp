// The flatten-mapping codec of a plan's planner_data slot.

#include "core/error.hpp"
#include "core/planner.hpp"

#include <catch2/catch.hpp>

#include <random>

using namespace dcpp;

namespace {

void check_round_trip(const flatten_mapping& m) {
  auto encoded = encode_flatten_mapping(m);
  auto decoded = decode_flatten_mapping(encoded);
  REQUIRE(decoded);
  CHECK(*decoded == m);
}

void check_garbage(const std::string& str) {
  INFO("input: " << str);
  auto res = decode_flatten_mapping(str);
  REQUIRE(!res);
  CHECK(code_of(res.error()) == errc::corrupt_metadata);
}

} // namespace

TEST_CASE("flatten mappings round-trip", "[flatten_mapping]") {
  check_round_trip({});
  check_round_trip(
    {{"model.w", {"model", "w"}},
     {"optim.state.0.exp_avg", {"optim", "state", "0", "exp_avg"}}});
  using namespace std::string_literals;
  flatten_mapping nasty{
    {"", {}},
    {"empty.path", {}},
    {"one.empty.element", {""}},
    {"two.empty", {"", ""}},
    {"tab\tkey", {"tab\t", "\tlead"}},
    {"new\nline", {"a\nb", "\n"}},
    {"cr\r\n", {"\r"}},
    {"back\\slash", {"\\", "\\\\", "x\\"}},
    {"looks escaped \\t \\n", {"\\t", "\\n"}},
    {"trailing\\", {"ends with \\"}},
    {"nul\0byte"s, {"\0"s, "a\0b"s}},
    {"utf8 \xc3\xa4\xe2\x82\xac", {"\xff\xfe", "\x01\x02\x7f"}},
    {"dcpp-flatten-mapping/1", {"header", "lookalike"}},
  };
  check_round_trip(nasty);
}

TEST_CASE("list positions round-trip apart from keys spelled alike",
          "[flatten_mapping]") {
  flatten_mapping m{
    {"optim.param_groups.0.lr",
     {"optim", "param_groups", path_element::position(0), "lr"}},
    {"optim.state.0.exp_avg", {"optim", "state", "0", "exp_avg"}},
    {"x.12", {"x", path_element::position(12)}},
    {"y.\\i3", {"y", "\\i3"}},
  };
  check_round_trip(m);
  auto decoded = decode_flatten_mapping(encode_flatten_mapping(m));
  REQUIRE(decoded);
  CHECK(decoded->at("optim.param_groups.0.lr")[2].index);
  CHECK(!decoded->at("optim.state.0.exp_avg")[2].index);
  CHECK(!decoded->at("y.\\i3")[1].index);
}

TEST_CASE("the empty string decodes to the empty mapping",
          "[flatten_mapping]") {
  auto res = decode_flatten_mapping("");
  REQUIRE(res);
  CHECK(res->empty());
}

TEST_CASE("random mappings round-trip", "[flatten_mapping]") {
  std::mt19937 rng{7};
  const std::string alphabet = std::string("ab.\\\t\n\r\0\xff", 9);
  std::uniform_int_distribution<size_t> pick(0, alphabet.size() - 1);
  std::uniform_int_distribution<size_t> len(0, 6);
  auto word = [&] {
    std::string s;
    for (auto n = len(rng); n > 0; --n)
      s += alphabet[pick(rng)];
    return s;
  };
  for (int round = 0; round < 200; ++round) {
    flatten_mapping m;
    for (auto n = len(rng); n > 0; --n) {
      object_path path;
      for (auto k = len(rng); k > 0; --k)
        path.push_back(k % 3 == 0 ? path_element::position(len(rng))
                                  : path_element{word()});
      m[word()] = path;
    }
    check_round_trip(m);
  }
}

TEST_CASE("garbage does not decode", "[flatten_mapping]") {
  check_garbage("garbage");
  check_garbage("{\"model.w\": [\"model\", \"w\"]}");
  check_garbage("dcpp-flatten-mapping/1");            // header without newline
  check_garbage("dcpp-flatten-mapping/2\n");          // unknown version
  check_garbage("dcpp-flatten-mapping/1\nkey\tpath"); // truncated
  check_garbage("dcpp-flatten-mapping/1\nkey\\x\tpath\n"); // bad escape
  check_garbage("dcpp-flatten-mapping/1\nkey\\");          // cut escape
  check_garbage("dcpp-flatten-mapping/1\na\tb\na\tc\n");   // duplicate key
  check_garbage("dcpp-flatten-mapping/1\na\tb\\i0\n");     // marker inside
  check_garbage("dcpp-flatten-mapping/1\na\\i0\tb\n");     // marker on a key
  check_garbage("dcpp-flatten-mapping/1\na\t\\i\n");       // no digits
  check_garbage("dcpp-flatten-mapping/1\na\t\\ix\n");      // not a number
  check_garbage("dcpp-flatten-mapping/1\na\t\\i\\i1\n");   // twice
  std::mt19937 rng{11};
  std::uniform_int_distribution<int> byte(0, 255);
  for (int round = 0; round < 200; ++round) {
    std::string s = "dcpp-flatten-mapping/1\n";
    for (int n = byte(rng) % 40; n > 0; --n)
      s += static_cast<char>(byte(rng));
    // Must either fail cleanly or decode to something that re-encodes.
    auto res = decode_flatten_mapping(s);
    if (res)
      CHECK(decode_flatten_mapping(encode_flatten_mapping(*res)));
    else
      CHECK(code_of(res.error()) == errc::corrupt_metadata);
  }
}
