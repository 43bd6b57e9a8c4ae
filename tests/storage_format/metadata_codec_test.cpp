#include "storage/metadata_codec.hpp"

#include "core/error.hpp"
#include "storage/pickle.hpp"
#include "tests/storage_format/test_data.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <utility>
#include <vector>

using namespace dcpp;
using namespace std::string_literals;

namespace {

using chunk_list = std::vector<std::pair<shape_t, shape_t>>;

item_metadata tensor(dtype type, shape_t size, chunk_list chunks) {
  item_metadata result;
  result.kind = item_kind::tensor;
  result.tensor.properties.type = type;
  result.tensor.size = std::move(size);
  for (auto& [offsets, sizes] : chunks)
    result.tensor.chunks.push_back({std::move(offsets), std::move(sizes)});
  return result;
}

storage_info at(std::string file, uint64_t offset, uint64_t length) {
  storage_info result;
  result.relative_path = std::move(file);
  result.offset = offset;
  result.length = length;
  return result;
}

/// The state dict of the 1.13 fixtures (README of the fixtures).
std::map<std::string, item_metadata> fixture_113_items() {
  return {
    {"f32", tensor(dtype::float32, {2, 3}, {{{0, 0}, {2, 3}}})},
    {"bf16", tensor(dtype::bfloat16, {4}, {{{0}, {4}}})},
    {"i64", tensor(dtype::int64, {3}, {{{0}, {3}}})},
    {"f64_scalar", tensor(dtype::float64, {}, {{{}, {}}})},
    {"f32_t", tensor(dtype::float32, {4, 3}, {{{0, 0}, {4, 3}}})},
    {"epoch", item_metadata::bytes()},
    {"cfg", item_metadata::bytes()},
    {"st",
     tensor(dtype::float32, {4, 3}, {{{0, 0}, {2, 3}}, {{2, 0}, {2, 3}}})},
  };
}

/// Expected index hints: (fqn, offset) -> index, -1 for bytes items.
using hint_list = std::vector<std::pair<metadata_index, int64_t>>;

void check_hints(const metadata& md, const hint_list& hints) {
  REQUIRE(md.storage_data.size() == hints.size());
  for (const auto& [key, hint] : hints) {
    auto i = md.storage_data.find(key);
    INFO(to_string(key));
    REQUIRE(i != md.storage_data.end());
    CHECK(i->first.index == hint);
  }
}

metadata expected_113_per_item() {
  metadata md;
  md.state_dict_metadata = fixture_113_items();
  md.storage_data = {
    {metadata_index{"f32", {0, 0}, 0}, at("__0_0.distcp", 0, 747)},
    {metadata_index{"bf16", {0}, 0}, at("__0_1.distcp", 0, 747)},
    {metadata_index{"i64", {0}, 0}, at("__0_2.distcp", 0, 747)},
    {metadata_index{"f64_scalar", {}, 0}, at("__0_3.distcp", 0, 747)},
    {metadata_index{"f32_t", {0, 0}, 0}, at("__0_4.distcp", 0, 747)},
    {metadata_index{"epoch"}, at("__0_5.distcp", 0, 431)},
    {metadata_index{"cfg"}, at("__0_6.distcp", 0, 431)},
    {metadata_index{"st", {0, 0}, 0}, at("__0_7.distcp", 0, 747)},
    {metadata_index{"st", {2, 0}, 1}, at("__1_0.distcp", 0, 747)},
  };
  return md;
}

metadata expected_113_per_rank() {
  metadata md;
  md.state_dict_metadata = fixture_113_items();
  md.storage_data = {
    {metadata_index{"epoch"}, at("__0_0.distcp", 0, 431)},
    {metadata_index{"cfg"}, at("__0_0.distcp", 431, 431)},
    {metadata_index{"f32", {0, 0}, 0}, at("__0_0.distcp", 862, 747)},
    {metadata_index{"bf16", {0}, 0}, at("__0_0.distcp", 1609, 747)},
    {metadata_index{"i64", {0}, 0}, at("__0_0.distcp", 2356, 747)},
    {metadata_index{"f64_scalar", {}, 0}, at("__0_0.distcp", 3103, 747)},
    {metadata_index{"f32_t", {0, 0}, 0}, at("__0_0.distcp", 3850, 747)},
    {metadata_index{"st", {0, 0}, 0}, at("__0_0.distcp", 4597, 747)},
    {metadata_index{"st", {2, 0}, 1}, at("__1_0.distcp", 0, 747)},
  };
  return md;
}

metadata expected_cpp_written() {
  metadata md;
  md.state_dict_metadata = {
    {"f32", tensor(dtype::float32, {2, 3}, {{{0, 0}, {2, 3}}})},
    {"bf16", tensor(dtype::bfloat16, {4}, {{{0}, {4}}})},
    {"i64", tensor(dtype::int64, {3}, {{{0}, {3}}})},
    {"f64_scalar", tensor(dtype::float64, {}, {{{}, {}}})},
    {"f32_t", tensor(dtype::float32, {4, 3}, {{{0, 0}, {4, 3}}})},
    {"view", tensor(dtype::float32, {3}, {{{0}, {3}}})},
    {"st",
     tensor(dtype::float32, {4, 3}, {{{0, 0}, {2, 3}}, {{2, 0}, {2, 3}}})},
    {"int", item_metadata::bytes()},
    {"dict", item_metadata::bytes()},
  };
  md.storage_data = {
    {metadata_index{"f32", {0, 0}, 0}, at("__0_0.distcp", 0, 747)},
    {metadata_index{"bf16", {0}, 0}, at("__0_0.distcp", 747, 747)},
    {metadata_index{"i64", {0}, 0}, at("__0_0.distcp", 1494, 747)},
    {metadata_index{"f64_scalar", {}, 0}, at("__0_0.distcp", 2241, 747)},
    {metadata_index{"f32_t", {0, 0}, 0}, at("__0_0.distcp", 2988, 747)},
    {metadata_index{"view", {0}, 0}, at("__0_0.distcp", 3735, 747)},
    {metadata_index{"st", {0, 0}, 0}, at("__0_0.distcp", 0, 747)},
    {metadata_index{"st", {2, 0}, 1}, at("__0_0.distcp", 0, 747)},
    {metadata_index{"int"}, at("__0_0.distcp", 4482, 431)},
    {metadata_index{"dict"}, at("__0_0.distcp", 4913, 495)},
  };
  return md;
}

/// The same checkpoint as torch >= 2 would describe it (v2meta fixture).
metadata expected_cpp_written_v2() {
  auto md = expected_cpp_written();
  for (const auto& [fqn, item] : md.state_dict_metadata)
    md.planner_data[fqn] = {fqn};
  md.version = "1.0.0";
  md.checkpoint_id = "ckpt_cpp_written_v2meta";
  md.save_id = "00000000-0000-0000-0000-000000000000";
  return md;
}

hint_list hints_of(const metadata& md) {
  hint_list result;
  for (const auto& [key, info] : md.storage_data)
    result.emplace_back(key, key.index);
  return result;
}

/// What tests/data/pickle/make_pickles.py writes (md_v2_p*.pickle).
metadata expected_generated_v2() {
  metadata md;
  md.state_dict_metadata = {
    {"model.w",
     tensor(dtype::float32, {8, 4}, {{{0, 0}, {4, 4}}, {{4, 0}, {4, 4}}})},
    {"opt.state.0.step", item_metadata::bytes()},
    {"big", tensor(dtype::bfloat16, {3000000000}, {{{0}, {3000000000}}})},
  };
  md.storage_data = {
    {metadata_index{"model.w", {0, 0}, 0}, at("__0_0.distcp", 0, 747)},
    {metadata_index{"model.w", {4, 0}, 1}, at("__1_0.distcp", 5000000000, 747)},
    {metadata_index{"opt.state.0.step"}, at("__0_0.distcp", 747, 431)},
    {metadata_index{"big", {0}, 0}, at("__0_1.distcp", 0, 6000000000)},
  };
  // The fixture's path holds the int 0: a list position, as DCP records it.
  md.planner_data = {
    {"model.w", {"model", "w"}},
    {"opt.state.0.step", {"opt", "state", path_element::position(0), "step"}},
    {"big", {"big"}},
  };
  md.version = "1.0.0";
  md.checkpoint_id = "/ckpt/run1";
  md.save_id = "save-0001";
  return md;
}

metadata decode_ok(std::string_view bytes) {
  auto result = decode_metadata(bytes);
  if (!result)
    FAIL("decode failed: " << describe(result.error()));
  return std::move(*result);
}

metadata decode_file(const std::string& rel) {
  return decode_ok(test::read_data(rel));
}

/// Decoding must fail with `code`; returns the context.
std::string decode_error(std::string_view bytes,
                         errc code = errc::corrupt_metadata) {
  auto result = decode_metadata(bytes);
  REQUIRE(!result);
  CHECK(code_of(result.error()) == code);
  return context_of(result.error());
}

/// Replaces the only occurrence of `from` in `bytes` by `to`.
std::string replace_once(std::string bytes, const std::string& from,
                         const std::string& to) {
  auto pos = bytes.find(from);
  REQUIRE(pos != std::string::npos);
  REQUIRE(bytes.find(from, pos + 1) == std::string::npos);
  bytes.replace(pos, from.size(), to);
  return bytes;
}

/// BINUNICODE spelling of a short string, as the writer emits it.
std::string text(const std::string& str) {
  return "X"s + static_cast<char>(str.size()) + "\x00\x00\x00"s + str;
}

/// A synthetic checkpoint that exercises every field.
metadata synthetic() {
  metadata md;
  md.state_dict_metadata = {
    {"layers.0.w",
     tensor(dtype::float16, {6, 2}, {{{0, 0}, {3, 2}}, {{3, 0}, {3, 2}}})},
    {"scalar", tensor(dtype::complex64, {}, {{{}, {}}})},
    {"huge",
     tensor(dtype::int8, {int64_t{1} << 40}, {{{0}, {int64_t{1} << 40}}})},
    {"opt.state.0.step", item_metadata::bytes()},
  };
  md.state_dict_metadata["layers.0.w"].tensor.properties.requires_grad = true;
  md.state_dict_metadata["scalar"].tensor.properties.pin_memory = true;
  md.state_dict_metadata["scalar"].tensor.properties.format
    = memory_format::channels_last;
  auto with_sum = [](storage_info info, std::string sum) {
    info.checksum = std::move(sum);
    return info;
  };
  md.storage_data = {
    {metadata_index{"layers.0.w", {0, 0}, 0},
     with_sum(at("__0_0.distcp", 0, 747), "xxh64:0123456789abcdef")},
    {metadata_index{"layers.0.w", {3, 0}, 1},
     at("__1_0.distcp", (uint64_t{1} << 31) + 5, 747)},
    {metadata_index{"scalar", {}, 0},
     at("__0_0.distcp", uint64_t{1} << 62, (uint64_t{1} << 32) + 1)},
    {metadata_index{"huge", {0}, 0}, at("__0_1.distcp", 0, uint64_t{1} << 40)},
    {metadata_index{"opt.state.0.step"},
     with_sum(at("__0_0.distcp", 747, 431), "xxh64:fedcba9876543210")},
  };
  md.planner_data = {
    {"layers.0.w", {"layers", "0", "w"}},
    {"opt.state.0.step", {"opt", "state", "0", "step"}},
  };
  md.version = "1.0.0";
  md.checkpoint_id = "/data/ckpt/step-100";
  md.save_id = "5f0c7f5e-0000-4000-8000-000000000001";
  return md;
}

} // namespace

TEST_CASE("the 1.13 per-item fixture decodes exactly", "[metadata]") {
  auto md = decode_file("dcp-1.13/ckpt_113_per_item/.metadata");
  auto expected = expected_113_per_item();
  CHECK(md == expected);
  check_hints(md, hints_of(expected));
  CHECK(md.planner_data.empty());
  CHECK(md.version.empty());
  CHECK(md.save_id.empty());
  CHECK(md.checkpoint_id.empty());
  for (const auto& [key, info] : md.storage_data)
    CHECK(info.checksum.empty());
  const auto& props = md.state_dict_metadata.at("f32").tensor.properties;
  CHECK(props.layout == "strided");
  CHECK(!props.requires_grad);
  CHECK(props.format == memory_format::contiguous);
  CHECK(!props.pin_memory);
}

TEST_CASE("the 1.13 per-rank fixture decodes exactly", "[metadata]") {
  auto md = decode_file("dcp-1.13/ckpt_113_per_rank/.metadata");
  auto expected = expected_113_per_rank();
  CHECK(md == expected);
  check_hints(md, hints_of(expected));
}

TEST_CASE("the C++-written fixtures decode exactly", "[metadata]") {
  auto md = decode_file("dcp-1.13/ckpt_cpp_written/.metadata");
  auto expected = expected_cpp_written();
  CHECK(md == expected);
  check_hints(md, hints_of(expected));
  auto v2 = decode_file("dcp-1.13/ckpt_cpp_written_v2meta/.metadata");
  CHECK(v2 == expected_cpp_written_v2());
  check_hints(v2, hints_of(expected));
}

TEST_CASE("torch 2 style pickles decode at protocols 2, 4 and 5",
          "[metadata]") {
  // p2: enum by getattr, PosixPath parts; p4: enum by value, str id;
  // p5: enum by value, Python 3.13 PosixPath. Offsets and lengths beyond
  // 2^31 and 2^32 come as LONG1; a planner path part is the int 0.
  auto expected = expected_generated_v2();
  for (int proto : {2, 4, 5}) {
    INFO("protocol " << proto);
    auto md = decode_file("pickle/md_v2_p" + std::to_string(proto) + ".pickle");
    CHECK(md == expected);
    check_hints(md, hints_of(expected));
  }
}

TEST_CASE("items stored with transforms are refused by name", "[metadata]") {
  auto msg = decode_error(test::read_data("pickle/md_v2_transforms.pickle"),
                          errc::unsupported);
  CHECK(msg.find("opt.state.0.step") != std::string::npos);
}

TEST_CASE("encode then decode gives the same metadata", "[metadata]") {
  SECTION("torch 2 flavor keeps every field") {
    auto md = synthetic();
    auto back = decode_ok(encode_metadata(md, metadata_flavor::torch_2));
    CHECK(back == md);
    check_hints(back, hints_of(md));
  }
  SECTION("torch 1.13 flavor keeps what 1.13 has") {
    auto md = synthetic();
    md.version.clear();
    md.checkpoint_id.clear();
    md.save_id.clear();
    auto back = decode_ok(encode_metadata(md, metadata_flavor::torch_1_13));
    CHECK(back == md);
    check_hints(back, hints_of(md));
  }
  SECTION("an empty checkpoint") {
    metadata md;
    CHECK(decode_ok(encode_metadata(md, metadata_flavor::torch_1_13)) == md);
    md.version = "1.0.0";
    CHECK(decode_ok(encode_metadata(md, metadata_flavor::torch_2)) == md);
  }
}

TEST_CASE("torch 2.x dtypes round-trip in both flavors", "[metadata]") {
  // uint16/32/64 and float8 have no torch 1.13 type, but a checkpoint of
  // them is bytes with a dtype: both flavors name them as `torch.<name>`.
  const std::pair<dtype, size_t> types[] = {
    {dtype::uint16, 2},        {dtype::uint32, 4},      {dtype::uint64, 8},
    {dtype::float8_e4m3fn, 1}, {dtype::float8_e5m2, 1},
  };
  for (auto [type, size] : types) {
    CAPTURE(to_string(type));
    CHECK(element_size(type) == size);
    CHECK_FALSE(has_libtorch_type(type));
    CHECK(element_size(carrier_dtype(type)) == size);
    CHECK(has_libtorch_type(carrier_dtype(type)));
    CHECK(parse_dtype("torch." + to_string(type)) == type);
    CHECK(storage_class_name(type).empty());
    metadata md;
    md.state_dict_metadata.emplace("w", tensor(type, {5}, {{{0}, {5}}}));
    CHECK(decode_ok(encode_metadata(md, metadata_flavor::torch_1_13)) == md);
    md.version = "1.0.0";
    auto bytes = encode_metadata(md, metadata_flavor::torch_2);
    CHECK(bytes.find(to_string(type)) != std::string::npos);
    CHECK(decode_ok(bytes) == md);
  }
  CHECK_FALSE(dtype_from_storage_class(""));
}

TEST_CASE("re-encoding a 1.13 fixture decodes equal in both flavors",
          "[metadata]") {
  for (auto file : {"dcp-1.13/ckpt_113_per_item/.metadata",
                    "dcp-1.13/ckpt_113_per_rank/.metadata"}) {
    INFO(file);
    auto md = decode_file(file);
    auto again = decode_ok(encode_metadata(md, metadata_flavor::torch_1_13));
    CHECK(again == md);
    check_hints(again, hints_of(md));
    auto v2 = decode_ok(encode_metadata(md, metadata_flavor::torch_2));
    CHECK(v2.version == "1.0.0");
    v2.version.clear();
    CHECK(v2 == md);
  }
}

TEST_CASE("the encoder matches the reference emitter byte for byte",
          "[metadata]") {
  // Goldens from tests/data/pickle/make_golden.py (emit_metadata_raw.py).
  auto md = decode_file("dcp-1.13/ckpt_cpp_written/.metadata");
  CHECK(encode_metadata(md, metadata_flavor::torch_1_13)
        == test::read_data("pickle/golden_cpp_written_113.metadata"));
  auto v2 = expected_cpp_written_v2();
  v2.checkpoint_id.clear(); // the reference writes a path object there
  CHECK(encode_metadata(v2, metadata_flavor::torch_2)
        == test::read_data("pickle/golden_cpp_written_2x.metadata"));
}

TEST_CASE("each flavor names its own classes", "[metadata]") {
  auto md = synthetic();
  auto v113 = encode_metadata(md, metadata_flavor::torch_1_13);
  auto v2 = encode_metadata(md, metadata_flavor::torch_2);
  CHECK(v113.substr(0, 2) == "\x80\x02");
  CHECK(v2.substr(0, 2) == "\x80\x02");
  CHECK(v113.find("ctorch.distributed.checkpoint.") == std::string::npos);
  CHECK(v113.find("torch.distributed._shard.checkpoint.metadata\nMetadata\n")
        != std::string::npos);
  CHECK(v113.find("torch.distributed._shard.sharded_tensor.metadata\n"
                  "MEM_FORMAT_ENCODING\n")
        != std::string::npos);
  CHECK(v113.find("\nStorageMeta\n") == std::string::npos);
  CHECK(v113.find(text("version")) == std::string::npos);
  CHECK(v2.find("_shard") == std::string::npos);
  CHECK(v2.find("torch.distributed.checkpoint.metadata\n"
                "_MEM_FORMAT_ENCODING\n")
        != std::string::npos);
  CHECK(v2.find("torch.distributed.checkpoint.filesystem\n_StorageInfo\n")
        != std::string::npos);
  // checkpoint_id is written as a plain str, version defaults to 1.0.0.
  CHECK(v2.find(text("checkpoint_id") + text("/data/ckpt/step-100"))
        != std::string::npos);
  md.version.clear();
  md.checkpoint_id.clear();
  auto v2_defaults = encode_metadata(md, metadata_flavor::torch_2);
  CHECK(v2_defaults.find(text("version") + text("1.0.0")) != std::string::npos);
  CHECK(v2_defaults.find(text("checkpoint_id") + "N") != std::string::npos);
  // checksum appears only where one is set: two of five entries.
  size_t count = 0;
  for (auto pos = v2.find(text("checksum")); pos != std::string::npos;
       pos = v2.find(text("checksum"), pos + 1))
    ++count;
  CHECK(count == 2);
}

TEST_CASE("metadata flavors parse and print", "[metadata]") {
  CHECK(parse_metadata_flavor("1.13") == metadata_flavor::torch_1_13);
  CHECK(parse_metadata_flavor("torch_1_13") == metadata_flavor::torch_1_13);
  CHECK(parse_metadata_flavor("2") == metadata_flavor::torch_2);
  CHECK(parse_metadata_flavor("torch_2") == metadata_flavor::torch_2);
  auto bad = parse_metadata_flavor("3");
  REQUIRE(!bad);
  CHECK(code_of(bad.error()) == errc::invalid_argument);
  for (auto x : {metadata_flavor::torch_1_13, metadata_flavor::torch_2})
    CHECK(parse_metadata_flavor(to_string(x)) == x);
}

TEST_CASE("wrong types are errors that name the field", "[metadata]") {
  metadata md;
  md.state_dict_metadata["w"] = tensor(dtype::float32, {2, 3},
                                       {{{0, 0}, {2, 3}}});
  md.storage_data[metadata_index{"w", {0, 0}, 0}] = at("__0_0.distcp", 0, 9);
  md.storage_data[metadata_index{"w", {0, 0}, 0}].checksum = "xxh64:00";
  auto good = encode_metadata(md, metadata_flavor::torch_2);
  REQUIRE(decode_metadata(good));
  auto expect = [&](const std::string& from, const std::string& to,
                    std::vector<std::string> words) {
    auto msg = decode_error(replace_once(good, from, to));
    for (const auto& word : words) {
      INFO(msg);
      CHECK(msg.find(word) != std::string::npos);
    }
  };
  expect(text("relative_path") + text("__0_0.distcp"),
         text("relative_path") + "K\x05",
         {"relative_path", "expected str, found int"});
  expect(text("length") + "K\x09", text("length") + text("x"),
         {"length", "expected int, found str"});
  expect(text("length") + "K\x09", text("length") + "J\xf7\xff\xff\xff",
         {"length", "negative"});
  expect(text("index") + "K\x00"s, text("index") + "J\xfb\xff\xff\xff",
         {"index", "negative"});
  expect(text("checksum") + text("xxh64:00"), text("checksum") + "K\x01",
         {"checksum", "expected str"});
  expect(text("fqn") + text("w"), text("fqn") + "N", {"fqn"});
  expect("\x89\x63", "K\x00\x63"s, {"requires_grad", "expected bool"});
  expect("ctorch\nfloat32\n", "ctorch\nfloat99\n", {"torch.float99"});
  expect("ctorch\nstrided\n", "ctorch\nSize\n", {"layout"});
  expect(text("size") + "ctorch\nSize\nK\x02",
         text("size") + "ctorch\nSize\nJ\xfe\xff\xff\xff",
         {"size", "negative"});
  expect(text("state_dict_metadata"), text("state_dict_metadatX"),
         {"state_dict_metadata: missing"});
  expect(text("planner_data") + "N", text("planner_data") + "K\x01",
         {"planner_data", "expected dict or None"});
  expect(text("version") + text("1.0.0"), text("version") + "K\x01",
         {"version", "expected str or None"});
  expect(text("checkpoint_id") + "N", text("checkpoint_id") + "K\x01",
         {"checkpoint_id"});
  expect(text("save_id") + "N", text("save_id") + "\x88", {"save_id"});
  // The enum: by value 3 is unknown.
  expect("_MEM_FORMAT_ENCODING\nK\x00"s, "_MEM_FORMAT_ENCODING\nK\x03",
         {"memory_format", "unknown enum value 3"});
  // A chunk whose rank differs from the tensor's.
  expect(text("offsets") + "ctorch\nSize\nK\x00K\x00\x86"s,
         text("offsets") + "ctorch\nSize\nK\x00\x85"s, {"chunks[0]", "rank"});
}

namespace {

using namespace pickle;

/// A Metadata value graph with one tensor "w" whose TensorProperties
/// object is `props`.
std::string with_properties(value_ptr props) {
  const char* md = "torch.distributed.checkpoint.metadata";
  auto dataclass = [&](const char* name, value_ptr state) {
    return make_newobj(make_global(md, name), make_tuple({}), std::move(state));
  };
  auto size = [](std::vector<int64_t> dims) {
    std::vector<value_ptr> xs;
    for (auto d : dims)
      xs.push_back(make_int(d));
    return make_reduce(make_global("torch", "Size"),
                       make_tuple({make_tuple(std::move(xs))}));
  };
  auto chunk = dataclass("ChunkStorageMetadata",
                         make_dict({{make_string("offsets"), size({0})},
                                    {make_string("sizes"), size({4})}}));
  auto item = dataclass("TensorStorageMetadata",
                        make_dict(
                          {{make_string("properties"), std::move(props)},
                           {make_string("size"), size({4})},
                           {make_string("chunks"), make_list({chunk})}}));
  // BytesStorageMetadata without BUILD, as Python writes it.
  auto bytes_item = make_newobj(make_global(md, "BytesStorageMetadata"),
                                make_tuple({}));
  auto root = dataclass(
    "Metadata", make_dict({{make_string("state_dict_metadata"),
                            make_dict({{make_string("w"), item},
                                       {make_string("b"), bytes_item}})}}));
  return write(*root);
}

value_ptr properties(value_ptr state,
                     const char* module = "torch.distributed.checkpoint."
                                          "metadata") {
  return make_newobj(make_global(module, "TensorProperties"), make_tuple({}),
                     std::move(state));
}

value_ptr enum_by_name(const char* member) {
  return make_reduce(
    make_global("builtins", "getattr"),
    make_tuple({make_global("torch.distributed._shard.sharded_tensor.metadata",
                            "MEM_FORMAT_ENCODING"),
                make_string(member)}));
}

value_ptr get_layout(const char* name) {
  return make_reduce(make_global("torch.serialization", "_get_layout"),
                     make_tuple({make_string(name)}));
}

} // namespace

TEST_CASE("TensorProperties in all its spellings", "[metadata]") {
  SECTION("5-tuple state, old module, enum by name, _get_layout") {
    auto md = decode_ok(with_properties(properties(
      make_tuple({make_global("torch", "float64"), get_layout("torch.strided"),
                  make_bool(true), enum_by_name("TORCH_PRESERVE_FORMAT"),
                  make_bool(false)}),
      "torch.distributed._shard.sharded_tensor.metadata")));
    const auto& props = md.state_dict_metadata.at("w").tensor.properties;
    CHECK(props.type == dtype::float64);
    CHECK(props.layout == "strided");
    CHECK(props.requires_grad);
    CHECK(props.format == memory_format::preserve);
    CHECK(md.state_dict_metadata.at("b").kind == item_kind::bytes);
  }
  SECTION("dict state with defaults") {
    auto md = decode_ok(with_properties(properties(
      make_dict({{make_string("dtype"), make_global("torch", "bool")},
                 {make_string("pin_memory"), make_bool(true)}}))));
    const auto& props = md.state_dict_metadata.at("w").tensor.properties;
    CHECK(props.type == dtype::boolean);
    CHECK(props.pin_memory);
    CHECK(props.layout == "strided");
    CHECK(props.format == memory_format::contiguous);
  }
  SECTION("bad spellings are refused") {
    auto ok_state = [](value_ptr fmt) {
      return make_tuple({make_global("torch", "float32"),
                         make_global("torch", "strided"), make_bool(false),
                         std::move(fmt), make_bool(false)});
    };
    CHECK(decode_error(
            with_properties(properties(make_tuple(
              {make_global("torch", "float32"), make_global("torch", "strided"),
               make_bool(false), enum_by_name("TORCH_CONTIGUOUS_FORMAT")}))))
            .find("5-tuple")
          != std::string::npos);
    CHECK(
      decode_error(with_properties(properties(ok_state(enum_by_name("NOPE")))))
        .find("NOPE")
      != std::string::npos);
    CHECK(decode_error(with_properties(properties(ok_state(make_int(0)))))
            .find("memory_format")
          != std::string::npos);
    CHECK(
      decode_error(with_properties(properties(make_tuple(
                     {make_global("torch", "float32"), get_layout("torch.wavy"),
                      make_bool(false), enum_by_name("TORCH_CONTIGUOUS_FORMAT"),
                      make_bool(false)}))))
        .find("torch.wavy")
      != std::string::npos);
    CHECK(
      decode_error(with_properties(properties(make_none()))).find("properties")
      != std::string::npos);
    CHECK(decode_error(with_properties(make_int(3))).find("TensorProperties")
          != std::string::npos);
  }
}

TEST_CASE("duplicate storage keys behave like a Python dict", "[metadata]") {
  // Two entries for ("w", [0]): the first key (with its hint) stays, the
  // last value wins.
  metadata md;
  md.state_dict_metadata["w"] = tensor(dtype::float32, {4}, {{{0}, {4}}});
  md.storage_data[metadata_index{"w", {0}, 0}] = at("__0_0.distcp", 0, 1);
  auto bytes = encode_metadata(md, metadata_flavor::torch_1_13);
  // Duplicate the storage_data entry with another value and hint.
  auto entry_begin = bytes.find("ctorch.distributed._shard.checkpoint."
                                "metadata\nMetadataIndex");
  // The file ends with the SETITEMS of storage_data and of the Metadata
  // state, the Metadata BUILD and STOP.
  auto entry_end = bytes.rfind("uub.");
  REQUIRE(entry_begin != std::string::npos);
  REQUIRE(entry_end == bytes.size() - 4);
  auto entry = bytes.substr(entry_begin, entry_end - entry_begin);
  auto second = replace_once(entry, text("index") + "K\x00"s,
                             text("index") + "K\x07");
  second = replace_once(second, text("length") + "K\x01",
                        text("length") + "K\x02");
  bytes.insert(entry_end, second);
  auto back = decode_ok(bytes);
  REQUIRE(back.storage_data.size() == 1);
  CHECK(back.storage_data.begin()->first.index == 0);
  CHECK(back.storage_data.begin()->second.length == 2);
}
