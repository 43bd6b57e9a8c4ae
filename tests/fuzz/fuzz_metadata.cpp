// Fuzz target: the `.metadata` codec (storage/metadata_codec.hpp).
//
// Properties, for any input:
// - `decode_metadata` returns metadata or fails with
//   `errc::corrupt_metadata` / `errc::unsupported` (no crash, no hang, no
//   allocation beyond a bound set by the input's size);
// - metadata it returns is not much bigger than the input: shared
//   references (the pickle memo) must not let a small file decode into a
//   huge value (`max_decoded`);
// - metadata it returns survives `encode_metadata` in both flavors and
//   `decode_metadata` again: equal, except for what a flavor cannot hold
//   (torch_1_13 has no version, save_id or checkpoint_id; torch_2 writes
//   "1.0.0" for an empty version);
// - encoding is a fixed point: encoding the decoded copy gives the same
//   bytes.

#include "core/error.hpp"
#include "storage/metadata_codec.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <cstdint>
#include <string>
#include <string_view>

using namespace dcpp;

namespace {

/// The bound on decoded bytes that decode_metadata guarantees for `input`
/// bytes (it charges at least `decoded_bytes` against this budget).
uint64_t max_decoded(size_t input) {
  return 64 * static_cast<uint64_t>(input) + (uint64_t{1} << 20);
}

/// Bytes of strings and shape dimensions in `md`.
uint64_t decoded_bytes(const metadata& md) {
  uint64_t total = 0;
  auto dims = [](const shape_t& xs) { return sizeof(int64_t) * xs.size(); };
  for (const auto& [fqn, item] : md.state_dict_metadata) {
    total += fqn.size() + dims(item.tensor.size);
    for (const auto& chunk : item.tensor.chunks)
      total += dims(chunk.offsets) + dims(chunk.sizes);
  }
  for (const auto& [idx, info] : md.storage_data)
    total += idx.fqn.size() + dims(idx.offset) + info.relative_path.size()
             + info.checksum.size();
  for (const auto& [key, path] : md.planner_data) {
    total += key.size();
    for (const auto& part : path)
      total += part.key.size();
  }
  return total;
}

/// What `md` becomes after a round trip through `flavor`.
metadata as_flavor(metadata md, metadata_flavor flavor) {
  if (flavor == metadata_flavor::torch_1_13) {
    md.version.clear();
    md.save_id.clear();
    md.checkpoint_id.clear();
  } else if (md.version.empty()) {
    md.version = "1.0.0";
  }
  return md;
}

void round_trip(const metadata& md, metadata_flavor flavor) {
  auto bytes = encode_metadata(md, flavor);
  auto again = decode_metadata(bytes);
  DCPP_FUZZ_CHECK(again, "decoding the " + to_string(flavor)
                           + " encoding failed: " + describe(again.error()));
  DCPP_FUZZ_CHECK(*again == as_flavor(md, flavor),
                  "the " + to_string(flavor)
                    + " encoding decodes to different metadata");
  DCPP_FUZZ_CHECK(encode_metadata(*again, flavor) == bytes,
                  "encoding the decoded " + to_string(flavor)
                    + " copy gives different bytes");
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view bytes{reinterpret_cast<const char*>(data), size};
  auto md = decode_metadata(bytes);
  if (!md) {
    DCPP_FUZZ_CHECK(fuzz::has_code(md.error(),
                                   {errc::corrupt_metadata, errc::unsupported}),
                    describe(md.error()));
    return 0;
  }
  DCPP_FUZZ_CHECK(decoded_bytes(*md) <= max_decoded(size),
                  std::to_string(size) + " bytes decode to "
                    + std::to_string(decoded_bytes(*md)));
  round_trip(*md, metadata_flavor::torch_2);
  round_trip(*md, metadata_flavor::torch_1_13);
  return 0;
}
