// Fuzz target: the wire decoder of coordinator <-> rank messages
// (messages/wire.hpp), what a transport bridge runs on every frame it
// receives from another process.
//
// Properties, for any input:
// - `message_from_wire` returns a message or fails with
//   `errc::protocol_error` / `errc::corrupt_item` (no crash, no hang, no
//   allocation beyond a bound set by the frame's size);
// - `wire_tag_from_wire` and `envelope_from_wire` agree with it;
// - a decoded message renders (`caf::to_string`, as logs do) and encodes
//   again with `message_to_wire`; decoding and encoding that frame gives
//   the same bytes (decoding may normalize, e.g. an error with code 0, so
//   the first re-encoding is the reference).

#include "core/error.hpp"
#include "messages/wire.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <caf/message.hpp>

#include <cstdint>
#include <string>

using namespace dcpp;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string frame{reinterpret_cast<const char*>(data), size};
  auto msg = message_from_wire(frame);
  auto tag = wire_tag_from_wire(frame);
  if (!msg) {
    DCPP_FUZZ_CHECK(fuzz::has_code(msg.error(),
                                   {errc::protocol_error, errc::corrupt_item}),
                    describe(msg.error()));
    return 0;
  }
  DCPP_FUZZ_CHECK(tag,
                  "decodes, but its tag does not: " + describe(tag.error()));
  auto hdr = envelope_from_wire(frame);
  DCPP_FUZZ_CHECK(hdr, "decodes, but its envelope does not: "
                         + describe(hdr.error()));
  // Logging a message must not trip over decoded values.
  auto text = caf::to_string(*msg);
  DCPP_FUZZ_CHECK(!text.empty(), "renders as nothing");
  auto first = message_to_wire(*msg);
  DCPP_FUZZ_CHECK(first, "cannot encode a decoded message: "
                           + describe(first.error()));
  DCPP_FUZZ_CHECK(wire_tag_from_wire(*first) == *tag,
                  "encoding changes the tag");
  auto again = message_from_wire(*first);
  DCPP_FUZZ_CHECK(again, "cannot decode a re-encoded message: "
                           + describe(again.error()));
  auto second = message_to_wire(*again);
  DCPP_FUZZ_CHECK(second && *second == *first,
                  "decode + encode is not a fixed point");
  return 0;
}
