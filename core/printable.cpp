#include "core/printable.hpp"

#include <algorithm>
#include <cstdint>

namespace dcpp {

namespace {

/// The length of the well-formed UTF-8 sequence at `s[i]` (RFC 3629: no
/// overlong forms, no surrogates, nothing above U+10FFFF) and its code
/// point; 0 if there is none. Written out rather than taken from a library
/// (ICU, utfcpp): these twenty lines are all that is needed, and the core
/// library depends on nothing but CAF.
size_t utf8_sequence(std::string_view s, size_t i, uint32_t& cp) {
  auto byte = [&](size_t k) { return static_cast<uint8_t>(s[i + k]); };
  auto b0 = byte(0);
  size_t len = 0;
  uint32_t min = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2, cp = b0 & 0x1Fu, min = 0x80;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3, cp = b0 & 0x0Fu, min = 0x800;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4, cp = b0 & 0x07u, min = 0x10000;
  } else {
    return 0;
  }
  if (i + len > s.size())
    return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((byte(k) & 0xC0) != 0x80)
      return 0;
    cp = (cp << 6) | (byte(k) & 0x3Fu);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return len;
}

/// Code points that are printable but change how a line reads: C1
/// controls, line and paragraph separators, bidirectional controls.
bool disruptive(uint32_t cp) {
  return (cp >= 0x80 && cp <= 0x9F) || (cp >= 0x2028 && cp <= 0x202E)
         || (cp >= 0x2066 && cp <= 0x2069);
}

void append_escaped(std::string& out, uint8_t b) {
  static constexpr char hex[] = "0123456789abcdef";
  out += "\\x";
  out += hex[b >> 4];
  out += hex[b & 15];
}

} // namespace

std::string printable(std::string_view text, size_t max_bytes) {
  std::string out;
  out.reserve(std::min(text.size(), max_bytes) + 32);
  std::string piece;
  size_t i = 0;
  while (i < text.size()) {
    piece.clear();
    auto b = static_cast<uint8_t>(text[i]);
    size_t used = 1;
    if (b == '\\') {
      piece = "\\\\";
    } else if (b >= 0x20 && b < 0x7F) {
      piece.assign(1, static_cast<char>(b));
    } else {
      uint32_t cp = 0;
      size_t len = b >= 0x80 ? utf8_sequence(text, i, cp) : 0;
      if (len == 0) {
        append_escaped(piece, b);
      } else {
        used = len;
        if (disruptive(cp))
          for (size_t k = 0; k < len; ++k)
            append_escaped(piece, static_cast<uint8_t>(text[i + k]));
        else
          piece.assign(text.substr(i, len));
      }
    }
    if (out.size() + piece.size() > max_bytes)
      break;
    out += piece;
    i += used;
  }
  if (i < text.size())
    out += "... (" + std::to_string(text.size()) + " bytes)";
  return out;
}

} // namespace dcpp
