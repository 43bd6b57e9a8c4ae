// The safetensors header codec and writer checks that need no files from
// Python (those are in tests/e2e/safetensors_test.py).

#include "storage/safetensors.hpp"

#include "core/error.hpp"
#include "storage/safetensors_header.hpp"

#include <catch2/catch.hpp>

#include <string>

using namespace dcpp;

TEST_CASE("safetensors dtype names are Hugging Face's and round-trip") {
  for (auto i = 0; i < static_cast<int>(dtype::num_values); ++i) {
    auto x = static_cast<dtype>(i);
    auto name = safetensors_dtype_name(x);
    if (x == dtype::complex128 || !has_libtorch_type(x)) {
      REQUIRE_FALSE(name);
      CHECK(code_of(name.error()) == errc::unsupported);
      continue;
    }
    REQUIRE(name);
    auto back = parse_safetensors_dtype(*name);
    REQUIRE(back);
    CHECK(*back == x);
  }
  CHECK(*safetensors_dtype_name(dtype::bfloat16) == "BF16");
  CHECK(*safetensors_dtype_name(dtype::boolean) == "BOOL");
  CHECK(code_of(parse_safetensors_dtype("U64").error()) == errc::unknown_dtype);
}

TEST_CASE("base64 round-trips every tail length and refuses garbage") {
  std::string data;
  for (int n = 0; n < 12; ++n) {
    auto enc = base64_encode(data);
    CHECK(enc.size() % 4 == 0);
    auto dec = base64_decode(enc);
    REQUIRE(dec);
    CHECK(*dec == data);
    data += static_cast<char>(n * 37 + 200);
  }
  CHECK(base64_encode("epoch") == "ZXBvY2g=");
  CHECK_FALSE(base64_decode("abc"));
  CHECK_FALSE(base64_decode("ab!d"));
  CHECK_FALSE(base64_decode("a=bc"));
}

TEST_CASE("an encoded header decodes to the same tensors and metadata") {
  std::vector<safetensors_entry> tensors(2);
  tensors[0].name = "a.weight";
  tensors[0].type = dtype::float16;
  tensors[0].shape = {3, 2};
  tensors[1].name = "scalar";
  tensors[1].type = dtype::int64;
  std::map<std::string, std::string> md{{"format", "pt"}, {"k", "v\"q"}};
  auto bytes = encode_safetensors_header(tensors, md);
  CHECK(bytes.size() % 8 == 0);
  uint64_t file_size = bytes.size() + 12 + 8;
  auto n = safetensors_header_length(bytes.substr(0, 8), file_size, "f");
  REQUIRE(n);
  auto h = decode_safetensors_header(bytes.substr(8), file_size, "f");
  REQUIRE(h);
  CHECK(h->metadata == md);
  REQUIRE(h->tensors.size() == 2);
  CHECK(h->tensors[0].name == "a.weight");
  CHECK(h->tensors[0].end == 12);
  CHECK(h->tensors[1].shape.empty());
  CHECK(h->tensors[1].begin == 12);
  // One byte more in the file is a gap the reference implementation
  // refuses too.
  auto longer = decode_safetensors_header(bytes.substr(8), file_size + 1, "f");
  REQUIRE_FALSE(longer);
  CHECK(context_of(longer.error()).find("f: ") == 0);
}

TEST_CASE("the safetensors writer refuses complex128 naming the key") {
  auto writer = make_safetensors_writer("/nonexistent-dcpp-dir");
  REQUIRE_FALSE(writer->set_up(true, 0));
  save_plan plan;
  write_item item;
  item.index = metadata_index{"z", {0}};
  item.tensor_data.properties.type = dtype::complex128;
  item.tensor_data.size = {2};
  plan.items.push_back(item);
  auto res = writer->prepare_local_plan(plan);
  REQUIRE_FALSE(res);
  CHECK(code_of(res.error()) == errc::unsupported);
  CHECK(context_of(res.error()).find("z") != std::string::npos);
}
