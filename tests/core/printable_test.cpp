// Text from outside made safe for one log line: escaped, bounded, and what
// is already harmless left as it is.

#include "core/printable.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <string>

using namespace dcpp;

TEST_CASE("printable text stays as it is", "[printable]") {
  CHECK(printable("tcp://10.0.0.5:29500") == "tcp://10.0.0.5:29500");
  CHECK(printable("") == "");
  CHECK(printable("step_000000035/__0_0.distcp")
        == "step_000000035/__0_0.distcp");
  // Well-formed UTF-8 of printable characters: a file name in Greek.
  CHECK(printable("\xce\xb1\xce\xb2\xce\xb3.pt")
        == "\xce\xb1\xce\xb2\xce\xb3.pt");
}

TEST_CASE("control characters and broken UTF-8 are escaped", "[printable]") {
  // A newline that would forge a log line of its own, and an ESC sequence.
  CHECK(printable("x\n[rank 0] all good") == "x\\x0a[rank 0] all good");
  CHECK(printable("\x1b[2J\x1b]0;pwned\x07") == "\\x1b[2J\\x1b]0;pwned\\x07");
  CHECK(printable(std::string("a\0b", 3)) == "a\\x00b");
  CHECK(printable("\r\t\x7f") == "\\x0d\\x09\\x7f");
  // A backslash is doubled: "\x0a" typed as text is not a newline.
  CHECK(printable("\\x0a") == "\\\\x0a");
  // Not UTF-8: a lone continuation byte, a truncated sequence, an overlong
  // '/', a surrogate, a code point above U+10FFFF.
  CHECK(printable("\x80") == "\\x80");
  CHECK(printable("\xce") == "\\xce");
  CHECK(printable("\xc0\xaf") == "\\xc0\\xaf");
  CHECK(printable("\xed\xa0\x80") == "\\xed\\xa0\\x80");
  CHECK(printable("\xf4\x90\x80\x80") == "\\xf4\\x90\\x80\\x80");
  // Printable in UTF-8 but disruptive: C1 CSI (U+009B), the line
  // separator (U+2028), a right-to-left override (U+202E).
  CHECK(printable("\xc2\x9b"
                  "2J")
        == "\\xc2\\x9b"
           "2J");
  CHECK(printable("a\xe2\x80\xa8"
                  "b")
        == "a\\xe2\\x80\\xa8"
           "b");
  CHECK(printable("\xe2\x80\xae"
                  "gpj.exe")
        == "\\xe2\\x80\\xae"
           "gpj.exe");
}

TEST_CASE("long text is cut and its size named", "[printable]") {
  std::string big(64 << 20, 'a');
  auto out = printable(big, 100);
  CHECK(out == std::string(100, 'a') + "... (67108864 bytes)");
  // The bound is on the escaped text: 30 newlines take 120 bytes.
  auto lines = printable(std::string(30, '\n'), 100);
  CHECK(lines == [] {
    std::string s;
    for (int i = 0; i < 25; ++i)
      s += "\\x0a";
    return s;
  }() + "... (30 bytes)");
  // A character is never split: 3-byte characters under a bound of 10.
  auto euros = printable("\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac",
                         10);
  CHECK(euros == "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac... (12 bytes)");
  // The default bound holds whatever the input.
  std::string hostile;
  for (int i = 0; i < 100000; ++i)
    hostile += static_cast<char>(i % 256);
  auto safe = printable(hostile);
  CHECK(safe.size() <= printable_default_bytes + 32);
  CHECK(std::none_of(safe.begin(), safe.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
  }));
}
