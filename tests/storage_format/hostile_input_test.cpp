// Garbage, truncated and malicious inputs: every one must end in an error
// (or, for harmless mutations, a value), never a crash, a hang or a huge
// allocation. Run under DCPP_SANITIZE=ON for the full effect.

#include "core/error.hpp"
#include "storage/metadata_codec.hpp"
#include "storage/pickle.hpp"
#include "tests/storage_format/test_data.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <random>
#include <string>
#include <vector>

using namespace dcpp;
using namespace std::string_literals;

namespace {

const char* const metadata_files[] = {
  "dcp-1.13/ckpt_113_per_item/.metadata",
  "dcp-1.13/ckpt_113_per_rank/.metadata",
  "dcp-1.13/ckpt_cpp_written/.metadata",
  "dcp-1.13/ckpt_cpp_written_v2meta/.metadata",
  "pickle/md_v2_p2.pickle",
  "pickle/md_v2_p4.pickle",
  "pickle/md_v2_p5.pickle",
};

std::string pickle_error(const std::string& bytes,
                         const pickle::read_limits& limits = {}) {
  auto result = pickle::read(bytes, limits);
  REQUIRE(!result);
  CHECK(code_of(result.error()) == errc::corrupt_metadata);
  return context_of(result.error());
}

std::string repeat(const std::string& x, size_t n) {
  std::string out;
  out.reserve(x.size() * n);
  for (size_t i = 0; i < n; ++i)
    out += x;
  return out;
}

} // namespace

TEST_CASE("random bytes never crash the reader", "[pickle][hostile]") {
  std::mt19937_64 rng{20240601};
  // Opcode bytes and small arguments, so that random programs get past the
  // first byte more often than pure noise does.
  // STOP comes only at the end.
  const std::string alphabet = "()01JKMNQRTUXabcdeghjlpqrstu}]"
                               "\x80\x81\x85\x86\x87\x88\x89\x8a\x8b\x8c"
                               "\x8d\x8e\x8f\x90\x91\x92\x93\x94\x95\x96"
                               "\x00\x01\x02\x03\n"s;
  size_t ok = 0;
  for (int round = 0; round < 20000; ++round) {
    std::string bytes;
    auto len = rng() % 64;
    bool structured = round % 2 == 0;
    if (structured)
      bytes = "\x80\x04"s;
    for (size_t i = 0; i < len; ++i)
      bytes += structured ? alphabet[rng() % alphabet.size()]
                          : static_cast<char>(rng() & 0xff);
    if (structured)
      bytes += '.';
    auto result = pickle::read(bytes);
    if (result) {
      ++ok;
      // Whatever decoded must also survive the writer and the decoder.
      auto again = pickle::read(pickle::write(**result));
      CHECK(again);
    } else {
      CHECK(code_of(result.error()) == errc::corrupt_metadata);
    }
    auto md = decode_metadata(bytes);
    CHECK(!md);
  }
  // The structured half must reach past the first opcodes now and then.
  CHECK(ok > 0);
}

TEST_CASE("every truncation of a real .metadata is an error",
          "[metadata][hostile]") {
  for (auto file : metadata_files) {
    INFO(file);
    auto bytes = test::read_data(file);
    REQUIRE(decode_metadata(bytes));
    for (size_t n = 0; n < bytes.size(); ++n) {
      auto prefix = std::string_view{bytes}.substr(0, n);
      auto result = decode_metadata(prefix);
      if (result) {
        FAIL("prefix of " << n << " bytes decoded");
      }
      CHECK(code_of(result.error()) == errc::corrupt_metadata);
    }
  }
}

TEST_CASE("corrupted bytes of a real .metadata never crash",
          "[metadata][hostile]") {
  std::mt19937_64 rng{7};
  for (auto file : metadata_files) {
    INFO(file);
    auto original = test::read_data(file);
    for (int round = 0; round < 1500; ++round) {
      auto bytes = original;
      auto flips = 1 + rng() % 4;
      for (size_t i = 0; i < flips; ++i) {
        auto pos = rng() % bytes.size();
        bytes[pos] = static_cast<char>(rng() & 0xff);
      }
      auto result = decode_metadata(bytes);
      if (!result) {
        auto code = code_of(result.error());
        CHECK((code == errc::corrupt_metadata || code == errc::unsupported));
      }
    }
  }
}

TEST_CASE("deep nesting is refused before it can hurt", "[pickle][hostile]") {
  // 100k MARKs.
  CHECK(pickle_error("\x80\x02" + repeat("(", 100000) + ".")
          .find("MARKs nested deeper")
        != std::string::npos);
  // 100k nested 1-tuples (no MARK involved).
  CHECK(pickle_error("\x80\x02)" + repeat("\x85", 100000) + ".")
          .find("nesting deeper than 256")
        != std::string::npos);
  // 100k lists appended into each other, innermost first.
  CHECK(
    pickle_error("\x80\x02" + repeat("]", 100000) + repeat("a", 99999) + ".")
      .find("nesting deeper")
    != std::string::npos);
  // Nested lists built outside-in through the memo: the second APPEND
  // would mutate a list that already sits inside another one.
  CHECK(pickle_error("\x80\x02]]q\x00"
                     "ah\x00]a."s)
          .find("already inside")
        != std::string::npos);
  // Cycles: a list appended to itself, an object that is its own state.
  CHECK(pickle_error("\x80\x02]q\x00h\x00"
                     "a."s)
          .find("itself")
        != std::string::npos);
  CHECK(pickle_error("\x80\x02\x63m\nC\n)\x81q\x00h\x00"
                     "b."s)
          .find("itself")
        != std::string::npos);
  // Exactly at the limit is fine.
  pickle::read_limits limits;
  limits.max_depth = 8;
  CHECK(pickle::read("\x80\x02)" + repeat("\x85", 7) + ".", limits));
  pickle_error("\x80\x02)" + repeat("\x85", 8) + ".", limits);
}

TEST_CASE("huge declared lengths fail without allocating",
          "[pickle][hostile]") {
  for (auto bytes : {
         "\x80\x02X\xff\xff\xff\xff"
         "abc."s,
         "\x80\x02\x8c\xff"
         "abc."s,
         "\x80\x04\x8d\xff\xff\xff\xff\xff\xff\xff\xff"
         "abc."s,
         "\x80\x04\x8e\x00\x00\x00\x00\x00\x00\x00\x80"
         "abc."s,
         "\x80\x05\x96\xff\xff\xff\xff\xff\xff\xff\x7f"
         "abc."s,
         "\x80\x03"
         "B\xff\xff\xff\x7f"
         "abc."s,
         "\x80\x03"
         "C\x10"
         "abc."s,
         "\x80\x02T\xff\xff\xff\x7f"
         "abc."s,
         "\x80\x02U\x09"
         "abc."s,
         "\x80\x02\x8a\xff"
         "abc."s,
         "\x80\x02\x8b\xff\xff\xff\x7f"
         "abc."s,
         "\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\xff"
         "N."s,
       }) {
    INFO("input of " << bytes.size() << " bytes");
    CHECK(pickle_error(bytes).find("exceeds") != std::string::npos);
  }
}

TEST_CASE("memo misuse is an error", "[pickle][hostile]") {
  CHECK(pickle_error("\x80\x02h\x05."s).find("memo index 5")
        != std::string::npos);
  CHECK(pickle_error("\x80\x02j\xff\xff\xff\xff."s).find("memo index")
        != std::string::npos);
  CHECK(pickle_error("\x80\x02g99999999999999999999\n."s).find("decimal")
        != std::string::npos);
  pickle::read_limits limits;
  limits.max_memo = 2;
  CHECK(pickle_error("\x80\x04N\x94N\x94N\x94t."s, limits).find("memo")
        != std::string::npos);
  // Overwriting an entry does not count twice.
  CHECK(pickle::read("\x80\x04(Nq\x00Nq\x00Nq\x00t."s, limits));
}

TEST_CASE("structural misuse is an error", "[pickle][hostile]") {
  for (auto bytes : {
         "\x80\x02."s,       // STOP on an empty stack
         "\x80\x02t."s,      // TUPLE without MARK
         "\x80\x02(K\x01."s, // STOP with an open MARK
         "\x80\x02)K\x01"
         "a."s,                    // APPEND to a tuple
         "\x80\x02]K\x01K\x02s."s, // SETITEM on a list
         "\x80\x02}(K\x01u."s,     // odd SETITEMS
         "\x80\x02(K\x01"
         "d."s,                              // odd DICT
         "\x80\x02K\x01)R."s,                // REDUCE on an int
         "\x80\x02\x63m\nf\nK\x01R."s,       // REDUCE with non-tuple args
         "\x80\x02K\x01}b."s,                // BUILD on an int
         "\x80\x02\x63m\nC\n)\x81}b}b."s,    // BUILD twice
         "\x80\x04K\x01K\x02\x93."s,         // STACK_GLOBAL of ints
         "\x80\x02\x63m\nC\n)K\x01\x92."s,   // NEWOBJ_EX, kwargs not a dict
         "\x80\x04]\x94(K\x01\x90."s,        // ADDITEMS to a list
         "\x80\x02\x63m\n\n."s,              // empty global name
         "\x80\x02\x63mod"s,                 // unterminated GLOBAL
         "\x80\x02X\x02\x00\x00\x00\xc3(."s, // invalid UTF-8
         "\x80\x02(K\x01\x31\x31."s,         // POP_MARK without MARK
         "\x80\x02\x30."s,                   // POP on an empty stack
         "\x80\x02(K\x01(t\x85."s,           // TUPLE1 reaching below a MARK
       }) {
    INFO("input " << Catch::Detail::stringify(bytes));
    pickle_error(bytes);
  }
}

TEST_CASE("unknown globals are refused by the metadata decoder",
          "[metadata][hostile]") {
  // The VM records globals without resolving them...
  auto evil = "\x80\x02\x63os\nsystem\nX\x02\x00\x00\x00ls\x85R."s;
  REQUIRE(pickle::read(evil));
  // ... and the decoder refuses any global it does not know, wherever it
  // sits.
  auto result = decode_metadata(evil);
  REQUIRE(!result);
  CHECK(code_of(result.error()) == errc::corrupt_metadata);
  CHECK(context_of(result.error()).find("os.system") != std::string::npos);
  using namespace pickle;
  auto hidden = make_newobj(
    make_global("torch.distributed.checkpoint.metadata", "Metadata"),
    make_tuple({}),
    make_dict(
      {{make_string("state_dict_metadata"), make_dict({})},
       {make_string("unused"), make_reduce(make_global("subprocess", "Popen"),
                                           make_tuple({make_string("sh")}))}}));
  result = decode_metadata(write(*hidden));
  REQUIRE(!result);
  CHECK(context_of(result.error()).find("subprocess.Popen")
        != std::string::npos);
  // A DCP-looking class name under a foreign module is foreign too.
  auto fake = make_newobj(make_global("evil", "Metadata"), make_tuple({}),
                          make_dict({}));
  result = decode_metadata(write(*fake));
  REQUIRE(!result);
  CHECK(context_of(result.error()).find("evil.Metadata") != std::string::npos);
}

TEST_CASE("big and shared inputs stay fast", "[pickle][hostile]") {
  auto start = std::chrono::steady_clock::now();
  // A million-element list.
  auto list = "\x80\x02](" + repeat("N", 1000000) + "e.";
  auto root = pickle::read(list);
  REQUIRE(root);
  CHECK((*root)->items.size() == 1000000);
  // A DAG with 2^60 paths: x = (x, x), sixty times over.
  auto bomb = "\x80\x02)q\x00"s + repeat("0h\x00h\x00\x86q\x00"s, 60) + ".";
  root = pickle::read(bomb);
  REQUIRE(root);
  auto md = decode_metadata(bomb);
  CHECK(!md);
  // Inside a Metadata, where the decoder has to look at it.
  auto in_md = "\x80\x02\x63torch.distributed.checkpoint.metadata\nMetadata\n"
               ")\x81}(X\x13\x00\x00\x00state_dict_metadata}"
               "X\x0c\x00\x00\x00planner_data)q\x00"s
               + repeat("0h\x00h\x00\x86q\x00"s, 60) + "u\x62.";
  md = decode_metadata(in_md);
  CHECK(!md);
  auto elapsed = std::chrono::steady_clock::now() - start;
  CHECK(elapsed < std::chrono::seconds{10});
}
