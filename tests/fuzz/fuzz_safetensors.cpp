// Fuzz target: the safetensors header decoder
// (storage/safetensors_header.hpp). The input is a whole file.
//
// Properties, for any input:
// - the header length and the header decode, or fail with
//   `errc::corrupt_item` / `errc::too_large` / `errc::unknown_dtype` (no
//   crash, no hang);
// - a header that decodes describes tensors that tile the data buffer
//   exactly, each spanning the bytes its dtype and shape need;
// - re-encoding the decoded header and decoding that again gives the same
//   tensors (names, dtypes, shapes, offsets) and `__metadata__`.

#include "core/error.hpp"
#include "storage/safetensors_header.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <cstdint>
#include <string>
#include <string_view>

using namespace dcpp;

namespace {

bool same(const safetensors_entry& x, const safetensors_entry& y) {
  return x.name == y.name && x.type == y.type && x.shape == y.shape
         && x.begin == y.begin && x.end == y.end;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input{reinterpret_cast<const char*>(data), size};
  auto expected_codes = {errc::corrupt_item, errc::too_large,
                         errc::unknown_dtype};
  auto n = safetensors_header_length(input.substr(0, 8), size, "input");
  if (!n) {
    DCPP_FUZZ_CHECK(fuzz::has_code(n.error(), expected_codes),
                    describe(n.error()));
    return 0;
  }
  DCPP_FUZZ_CHECK(8 + *n <= size, "header length beyond the input");
  auto h = decode_safetensors_header(input.substr(8, *n), size, "input");
  if (!h) {
    DCPP_FUZZ_CHECK(fuzz::has_code(h.error(), expected_codes),
                    describe(h.error()));
    return 0;
  }
  uint64_t pos = 0;
  for (const auto& e : h->tensors) {
    DCPP_FUZZ_CHECK(e.begin == pos, "gap or overlap at " + e.name);
    auto nbytes = safetensors_nbytes(e.type, e.shape);
    DCPP_FUZZ_CHECK(nbytes && *nbytes == e.end - e.begin,
                    "wrong size of " + e.name);
    pos = e.end;
  }
  DCPP_FUZZ_CHECK(h->data_start + pos == size, "buffer not covered");
  auto again = encode_safetensors_header(h->tensors, h->metadata);
  auto m = safetensors_header_length(again.substr(0, 8), again.size() + pos,
                                     "again");
  DCPP_FUZZ_CHECK(m, "re-encoded header length refused");
  auto h2 = decode_safetensors_header(std::string_view{again}.substr(8, *m),
                                      again.size() + pos, "again");
  DCPP_FUZZ_CHECK(h2, "re-encoded header refused: " + describe(h2.error()));
  DCPP_FUZZ_CHECK(h2->metadata == h->metadata, "__metadata__ changed");
  DCPP_FUZZ_CHECK(h2->tensors.size() == h->tensors.size(), "tensors lost");
  for (size_t i = 0; i < h->tensors.size(); ++i)
    DCPP_FUZZ_CHECK(same(h2->tensors[i], h->tensors[i]),
                    "tensor changed: " + h->tensors[i].name);
  return 0;
}
