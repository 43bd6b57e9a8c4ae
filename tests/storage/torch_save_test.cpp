// Reading torch.save files through the restricted unpickler: archives are
// built here by hand (data.pkl from dcpp's pickle model, records written by
// dcpp's zip writer), so hostile ones are easy to make.

#include "storage/torch_save.hpp"

#include "core/error.hpp"
#include "storage/pickle.hpp"
#include "storage/tensor_codec.hpp"
#include "storage/zip_writer.hpp"
#include "tests/storage/fs_test_util.hpp"

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <cstring>
#include <map>
#include <string>

using namespace dcpp;
using namespace dcpp::fs_test;
using namespace std::string_literals;
using pickle::make_dict;
using pickle::make_int;
using pickle::make_list;
using pickle::make_string;
using pickle::make_tuple;
using pickle::value_ptr;

namespace {

/// A torch.save zip of `pkl` (the data.pkl bytes) and storage records,
/// written by dcpp's zip writer (the layout of torch.save's).
std::string archive(const std::string& pkl,
                    const std::map<std::string, std::string>& storages = {}) {
  string_sink out;
  dcpp::detail::zip_writer zip{out, nullptr};
  auto record = [&zip](const std::string& name, const std::string& bytes) {
    REQUIRE(!zip.begin_record("archive/" + name, bytes.size()));
    REQUIRE(!zip.data(bytes.data(), bytes.size()));
    REQUIRE(!zip.end_record());
  };
  record("data.pkl", pkl);
  for (const auto& [key, bytes] : storages)
    record("data/" + key, bytes);
  record("version", "3\n");
  REQUIRE(!zip.finish());
  return std::move(out.buffer());
}

/// The raw bytes of a float storage 0, 1, ..., n-1.
std::string float_storage(int n) {
  auto t = at::arange(n, at::kFloat);
  return std::string(static_cast<const char*>(t.data_ptr()),
                     static_cast<size_t>(n) * sizeof(float));
}

value_ptr ints(const std::vector<int64_t>& xs) {
  std::vector<value_ptr> items;
  for (auto x : xs)
    items.push_back(make_int(x));
  return make_tuple(std::move(items));
}

/// `_rebuild_tensor_v2` of a view of storage `key` (`numel` elements of
/// `storage_class`), as torch.save writes it.
value_ptr tensor_call(const std::string& key, int64_t numel, int64_t offset,
                      const std::vector<int64_t>& sizes,
                      const std::vector<int64_t>& strides,
                      const std::string& storage_class = "FloatStorage") {
  auto pid = pickle::make_persid(make_tuple(
    {make_string("storage"), pickle::make_global("torch", storage_class),
     make_string(key), make_string("cpu"), make_int(numel)}));
  return pickle::make_reduce(
    pickle::make_global("torch._utils", "_rebuild_tensor_v2"),
    make_tuple({pid, make_int(offset), ints(sizes), ints(strides),
                pickle::make_bool(false), pickle::make_ordered_dict({})}));
}

struct fixture {
  temp_dir dir;

  std::string file(const std::string& bytes) {
    auto path = dir / "in.pt";
    write_file(path, bytes);
    return path;
  }

  caf::expected<state_dict>
  read(const value_ptr& root,
       const std::map<std::string, std::string>& storages
       = {{"0", float_storage(10)}},
       const torch_save_limits& limits = {}) {
    return read_torch_save(file(archive(pickle::write(*root), storages)),
                           limits);
  }

  /// Reads and expects failure with `code`; returns the message.
  std::string refused(const value_ptr& root, errc code,
                      const torch_save_limits& limits = {}) {
    auto sd = read(root, {{"0", float_storage(10)}}, limits);
    REQUIRE(!sd);
    CHECK(code_of(sd.error()) == code);
    return context_of(sd.error());
  }
};

bool contains(const std::string& text, const std::string& part) {
  INFO(text);
  return text.find(part) != std::string::npos;
}

at::Tensor tensor_at(state_dict& sd, const std::vector<std::string>& path) {
  auto v = sd.find_path(path);
  REQUIRE(v);
  auto t = std::get_if<at::Tensor>(v);
  REQUIRE(t);
  return *t;
}

bytes_value bytes_at(state_dict& sd, const std::vector<std::string>& path) {
  auto v = sd.find_path(path);
  REQUIRE(v);
  auto b = std::get_if<bytes_value>(v);
  REQUIRE(b);
  return *b;
}

} // namespace

TEST_CASE_METHOD(fixture, "a state dict reads with DCP's nesting",
                 "[torch_save]") {
  using pickle::make_float;
  auto root = pickle::make_ordered_dict({
    {make_string("w"), tensor_call("0", 10, 0, {2, 3}, {3, 1})},
    // A view of the same storage, transposed, at an offset.
    {make_string("view"), tensor_call("0", 10, 4, {3, 2}, {1, 3})},
    {make_string("optim"),
     make_dict(
       {{make_string("state"),
         make_dict(
           {{make_int(0), make_dict({{make_string("exp_avg"),
                                      tensor_call("0", 10, 9, {1}, {1})}})}})},
        {make_string("param_groups"),
         make_list({make_dict({{make_string("lr"), make_float(0.5)},
                               {make_string("params"),
                                make_list({make_int(0), make_int(1)})}})})}})},
    {make_string("epoch"), make_int(3)},
    {make_string("name"), make_string("run")},
    {make_string("nothing"), pickle::make_none()},
    {make_string("tensors"), make_list({tensor_call("0", 10, 1, {2}, {2})})},
  });
  auto sd = read(root);
  REQUIRE(sd);
  auto w = tensor_at(*sd, {"w"});
  CHECK(at::equal(w, at::arange(6, at::kFloat).reshape({2, 3})));
  auto view = tensor_at(*sd, {"view"});
  CHECK(at::equal(view, at::arange(4, 10, at::kFloat).reshape({2, 3}).t()));
  // Views of one storage share it, as torch.load gives them.
  CHECK(view.storage().data() == w.storage().data());
  CHECK(at::equal(tensor_at(*sd, {"optim", "state", "0", "exp_avg"}),
                  at::full({1}, 9.f)));
  CHECK(*bytes_at(*sd, {"optim", "param_groups", "0", "lr"}).to_double()
        == 0.5);
  // A list of scalars is one value, a list holding tensors is traversed.
  auto params = bytes_at(*sd, {"optim", "param_groups", "0", "params"});
  CHECK(!params.to_int());
  CHECK(at::equal(tensor_at(*sd, {"tensors", "0"}),
                  at::tensor({1.f, 3.f}, at::kFloat)));
  CHECK(*bytes_at(*sd, {"epoch"}).to_int() == 3);
  CHECK(*bytes_at(*sd, {"name"}).to_string() == "run");
  bytes_at(*sd, {"nothing"});
  auto flat = flatten(*sd);
  REQUIRE(flat);
  // A dict key stays a str (int keys included), a list position is
  // recorded as an int.
  CHECK(to_string(flat->mapping.at("optim.state.0.exp_avg"))
        == "('optim', 'state', '0', 'exp_avg')");
  CHECK(to_string(flat->mapping.at("optim.param_groups.0.lr"))
        == "('optim', 'param_groups', 0, 'lr')");
  CHECK(to_string(flat->mapping.at("tensors.0")) == "('tensors', 0)");
}

TEST_CASE_METHOD(fixture, "every storage class maps to its dtype",
                 "[torch_save]") {
  for (int i = 0; i < static_cast<int>(dtype::num_values); ++i) {
    auto type = static_cast<dtype>(i);
    INFO(to_string(type));
    if (storage_class_name(type).empty())
      continue; // 2.x's dtypes: _rebuild_tensor_v3, tested below
    auto n = 4;
    std::string raw(n * element_size(type), '\x01');
    auto root = make_dict(
      {{make_string("t"),
        tensor_call("7", n, 0, {n}, {1}, storage_class_name(type))}});
    auto sd = read(root, {{"7", raw}});
    REQUIRE(sd);
    auto t = tensor_at(*sd, {"t"});
    CHECK(t.scalar_type() == to_scalar_type(type));
    CHECK(std::memcmp(t.data_ptr(), raw.data(), raw.size()) == 0);
  }
}

TEST_CASE("torch 2.x's _rebuild_tensor_v3 reads as a carried dtype",
          "[torch_save]") {
  // tests/data/torch2/make_dtypes_v3.py (torch 2.6's torch.save).
  auto sd = read_torch_save(std::string{DCPP_TEST_DATA_DIR}
                            + "/torch2/dtypes_v3.pt");
  FS_REQUIRE(sd);
  auto ints = [](std::vector<int64_t> xs, at::ScalarType type) {
    return at::tensor(xs).to(type);
  };
  struct expected {
    const char* key;
    dtype type;
    at::Tensor carrier;
  };
  const expected cases[] = {
    {"u16", dtype::uint16, ints({1, 40000 - 65536, -1}, at::kShort)},
    {"u32", dtype::uint32, ints({7, -1}, at::kInt)},
    {"u64", dtype::uint64, ints({int64_t{1} << 62, -2}, at::kLong)},
    {"f8_e4m3fn", dtype::float8_e4m3fn, ints({0x38, 0x30, 0xc0}, at::kByte)},
    {"f8_e5m2", dtype::float8_e5m2, ints({0x3c, 0x40, 0xb8}, at::kByte)},
    // A view at storage offset 2 (elements, not bytes) of 6 elements.
    {"u16_view", dtype::uint16, ints({2, 3, 4}, at::kShort)},
  };
  for (const auto& c : cases) {
    INFO(c.key);
    auto saved = sd->carried_dtype(c.key);
    REQUIRE(saved);
    CHECK(*saved == c.type);
    auto t = tensor_at(*sd, {c.key});
    CHECK(t.scalar_type() == c.carrier.scalar_type());
    CHECK(at::equal(t, c.carrier));
  }
  // Its planner view names the saved dtype, not the carrier.
  auto flat = flatten(*sd);
  FS_REQUIRE(flat);
  auto view = make_view(*flat);
  FS_REQUIRE(view);
  for (const auto& item : view->items)
    CHECK(item.properties.type == *sd->carried_dtype(item.fqn));
}

TEST_CASE_METHOD(fixture, "views are checked against their storage",
                 "[torch_save][hostile]") {
  auto one = [](value_ptr t) { return make_dict({{make_string("x"), t}}); };
  // An offset past the storage would read heap garbage.
  auto msg = refused(one(tensor_call("0", 10, 20, {2}, {1})),
                     errc::corrupt_item);
  CHECK(contains(msg, "tensor 'x'"));
  CHECK(contains(msg, "exceeds its storage of 10 elements"));
  // A size of 1e6 over 10 elements would read far outside it.
  msg = refused(one(tensor_call("0", 10, 0, {1000000}, {1})),
                errc::corrupt_item);
  CHECK(contains(msg, "exceeds its storage of 10 elements"));
  // Negative strides.
  msg = refused(one(tensor_call("0", 10, 9, {3}, {-1})), errc::corrupt_item);
  CHECK(contains(msg, "negative size or stride"));
  // Storage numel larger than its record.
  msg = refused(one(tensor_call("0", 11, 0, {2}, {1})), errc::corrupt_item);
  CHECK(contains(msg, "does not match its record of 40 bytes"));
  // One storage read as two dtypes.
  msg = refused(
    make_dict(
      {{make_string("a"), tensor_call("0", 10, 0, {2}, {1})},
       {make_string("b"), tensor_call("0", 5, 0, {2}, {1}, "LongStorage")}}),
    errc::corrupt_item);
  CHECK(contains(msg, "storage '0' is used as"));
  // Zero strides that repeat elements.
  msg = refused(one(tensor_call("0", 10, 0, {100}, {0})), errc::corrupt_item);
  CHECK(contains(msg, "repeats elements"));
}

TEST_CASE("check_view accepts exactly the views inside their storage",
          "[torch_save]") {
  CHECK(!check_view({2, 3}, {3, 1}, 0, 6));
  CHECK(!check_view({2, 3}, {3, 1}, 4, 10));
  CHECK(check_view({2, 3}, {3, 1}, 5, 10));
  CHECK(!check_view({0}, {1}, 0, 0));
  CHECK(!check_view({}, {}, 9, 10));
  CHECK(check_view({}, {}, 10, 10));
  CHECK(check_view({2}, {1}, -1, 10));
  CHECK(check_view({2}, {-1}, 5, 10));
  CHECK(check_view({int64_t{1} << 62, 4}, {1, 1}, 0, 10));
  CHECK(check_view({3}, {INT64_MAX}, 0, 10));
}

TEST_CASE_METHOD(fixture, "keys that collide as strings are refused",
                 "[torch_save][hostile]") {
  auto msg = refused(make_dict(
                       {{make_int(1), tensor_call("0", 10, 0, {1}, {1})},
                        {make_string("1"), tensor_call("0", 10, 1, {1}, {1})}}),
                     errc::invalid_argument);
  CHECK(contains(msg, "keys 1 and '1' of the top level both become the key "
                      "'1'"));
  msg = refused(make_dict({{make_string("o"),
                            make_dict({{make_int(0), make_int(1)},
                                       {make_string("0"), make_int(2)}})}}),
                errc::invalid_argument);
  CHECK(contains(msg, "of 'o' both become the key 'o.0'"));
  msg = refused(make_dict({{pickle::make_float(1.5), make_int(1)}}),
                errc::unsupported);
  CHECK(contains(msg, "a key of type float"));
}

TEST_CASE_METHOD(fixture, "nesting is bounded", "[torch_save][hostile]") {
  auto x = make_int(1);
  for (int i = 0; i < 8; ++i)
    x = make_dict({{make_string("k"), x}});
  torch_save_limits limits;
  limits.max_depth = 5;
  auto msg = refused(x, errc::invalid_argument, limits);
  CHECK(contains(msg, "nested deeper than 5 levels at 'k.k.k.k.k.k'"));
  // 100,000 levels (built by hand: the writer would recurse) stop in the
  // pickle reader.
  std::string pkl = "\x80\x02}";
  for (int i = 0; i < 100000; ++i)
    pkl += "X\x01\x00\x00\x00k}"s;
  pkl += std::string(100000, 's') + ".";
  auto sd = read_torch_save(file(archive(pkl)));
  REQUIRE(!sd);
  CHECK(contains(context_of(sd.error()), "data.pkl: pickle: nesting deeper "
                                         "than 256"));
}

TEST_CASE_METHOD(fixture, "shared containers cannot expand without bound",
                 "[torch_save][hostile]") {
  // d0 = {}, d(i+1) = {"a": d(i), "b": d(i)}: 2^60 paths, 60 dicts.
  std::string pkl = "\x80\x02}q\x00"s;
  for (int i = 0; i < 60; ++i) {
    pkl += "0}(X\x01\x00\x00\x00"
           "ah"s
           + static_cast<char>(i);
    pkl += "X\x01\x00\x00\x00"
           "bh"s
           + static_cast<char>(i);
    pkl += "uq"s + static_cast<char>(i + 1);
  }
  pkl += ".";
  auto sd = read_torch_save(file(archive(pkl)));
  REQUIRE(!sd);
  CHECK(code_of(sd.error()) == errc::too_large);
  CHECK(contains(context_of(sd.error()), "shared containers expand"));
}

TEST_CASE_METHOD(fixture, "globals outside the allow-list are refused",
                 "[torch_save][hostile]") {
  // __reduce__ to os.system: recorded by name, never called.
  auto marker = dir / "ran";
  auto evil = pickle::make_reduce(pickle::make_global("posix", "system"),
                                  make_tuple({make_string("touch " + marker)}));
  auto msg = refused(
    make_dict({{make_string("model"), make_dict({{make_string("x"), evil}})}}),
    errc::unsupported);
  CHECK(contains(msg, "global posix.system (under 'model.x') is not allowed"));
  CHECK(!exists(marker));
  msg = refused(
    make_dict({{make_string("f"), pickle::make_global("builtins", "eval")}}),
    errc::unsupported);
  CHECK(contains(msg, "global builtins.eval (under 'f')"));
  // Even at the top.
  msg = refused(evil, errc::unsupported);
  CHECK(contains(msg, "global posix.system (under the top level)"));
  // Tensors inside a tuple would need records of their own.
  msg = refused(make_dict({{make_string("t"),
                            make_tuple({tensor_call("0", 10, 0, {1}, {1})})}}),
                errc::unsupported);
  CHECK(contains(msg, "a tensor or storage inside the tuple at 't'"));
}

TEST_CASE_METHOD(fixture, "other files are refused, naming their format",
                 "[torch_save][hostile]") {
  auto legacy = read_torch_save(
    file("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50"
         "\x19.\x80\x02M\xe9\x03."s));
  REQUIRE(!legacy);
  CHECK(code_of(legacy.error()) == errc::unsupported);
  CHECK(contains(context_of(legacy.error()), "legacy (non-zip) torch.save"));
  auto text = read_torch_save(file("hello"));
  REQUIRE(!text);
  CHECK(contains(context_of(text.error()), "not a torch.save file"));
  auto list = read(make_list({make_int(1)}));
  REQUIRE(!list);
  CHECK(contains(context_of(list.error()), "top-level object is a list"));
  auto missing = read_torch_save(dir / "nope.pt");
  REQUIRE(!missing);
  CHECK(contains(context_of(missing.error()), "nope.pt"));
}
