#pragma once

// Text from outside (a value read from a store, a peer's hello, a file or
// key name, an environment variable) made safe for one log line or error
// message: bounded, and with nothing a terminal or a log reader would take
// for structure.
//
// Printed as is: printable ASCII and well-formed UTF-8 of printable
// characters. Escaped as \xNN, byte by byte: control characters (a newline
// could forge a log line of its own, an ESC sequence could rewrite the
// terminal), DEL, the C1 controls (U+0080..U+009F, which some terminals
// obey like ESC), the line and paragraph separators and the bidirectional
// overrides (U+2028, U+2029, U+202A..U+202E, U+2066..U+2069: they reorder
// what a reader sees), and every byte that is not part of well-formed
// UTF-8. A backslash is doubled, so that an escape in the output always
// stands for a byte of the input.
//
// Longer text is cut at a character boundary so that the escaped part
// stays within `max_bytes`, followed by "... (N bytes)" giving the size of
// the whole input.

#include <cstddef>
#include <string>
#include <string_view>

namespace dcpp {

/// The bound of `printable` when a caller gives none: enough for a path, a
/// host name or an endpoint, short enough for one log line.
constexpr size_t printable_default_bytes = 256;

/// `text` bounded and escaped (see above). The result holds at most
/// `max_bytes` bytes of escaped text plus the "... (N bytes)" suffix.
std::string printable(std::string_view text,
                      size_t max_bytes = printable_default_bytes);

} // namespace dcpp
