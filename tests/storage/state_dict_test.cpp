#include "storage/state_dict.hpp"

#include "core/error.hpp"
#include "storage/host_memory.hpp"
#include "storage/memory_storage.hpp"
#include "tests/support/cpu_time.hpp"

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>

using namespace dcpp;

namespace {

at::Tensor arange_f32(int64_t n) {
  return at::arange(n, at::kFloat);
}

} // namespace

TEST_CASE("nested state dicts flatten to dotted keys", "[state_dict]") {
  state_dict sd;
  sd.set("step", bytes_value::from_int(7));
  sd.nested("model").set("weight", arange_f32(4));
  sd.nested("optim").nested("state").nested("0").set("exp_avg", arange_f32(2));
  auto flat = flatten(sd);
  REQUIRE(flat);
  REQUIRE(flat->items.size() == 3);
  CHECK(flat->items[0].first == "step");
  CHECK(flat->items[1].first == "model.weight");
  CHECK(flat->items[2].first == "optim.state.0.exp_avg");
  // Every key, as DCP's flatten_state_dict records it: a top-level one too.
  CHECK(to_string(flat->mapping.at("step")) == "('step',)");
  CHECK(to_string(flat->mapping.at("optim.state.0.exp_avg"))
        == "('optim', 'state', '0', 'exp_avg')");
  CHECK(sd.find_path({"optim", "state", "0", "exp_avg"}) != nullptr);
  CHECK(sd.find_path({"optim", "nope"}) == nullptr);
}

TEST_CASE("two paths flattening to one key are refused", "[state_dict]") {
  state_dict sd;
  sd.set("a.b", arange_f32(1));
  sd.nested("a").set("b", arange_f32(1));
  auto flat = flatten(sd);
  REQUIRE(!flat);
  CHECK(code_of(flat.error()) == errc::invalid_argument);
  CHECK(context_of(flat.error()).find("a.b") != std::string::npos);
}

TEST_CASE("the planner view describes tensors, shards and bytes",
          "[state_dict]") {
  state_dict sd;
  sd.set("plain", at::zeros({2, 3}, at::kBFloat16));
  sharded_tensor st;
  st.global_size = {10, 4};
  st.local_shards.push_back({at::zeros({4, 4}), {0, 0}});
  st.local_shards.push_back({at::zeros({3, 4}), {7, 0}});
  sd.set("sharded", st);
  sd.set("cfg", bytes_value::from_string("hello"));
  auto flat = flatten(sd);
  REQUIRE(flat);
  auto view = make_view(*flat);
  REQUIRE(view);
  REQUIRE(view->items.size() == 3);
  const auto& plain = view->items[0];
  CHECK(plain.properties.type == dtype::bfloat16);
  CHECK(plain.global_size == shape_t{2, 3});
  REQUIRE(plain.local_chunks.size() == 1);
  CHECK(plain.local_chunks[0].offsets == shape_t{0, 0});
  CHECK_FALSE(plain.sharded);
  const auto& sharded = view->items[1];
  CHECK(sharded.sharded);
  CHECK(sharded.global_size == shape_t{10, 4});
  REQUIRE(sharded.local_chunks.size() == 2);
  CHECK(sharded.local_chunks[1].offsets == shape_t{7, 0});
  CHECK(sharded.local_chunks[1].sizes == shape_t{3, 4});
  CHECK(view->items[2].kind == item_kind::bytes);
  CHECK(view->items[2].bytes_size > 0);
}

TEST_CASE("bad values get errors naming the key", "[state_dict]") {
  SECTION("undefined tensor") {
    state_dict sd;
    sd.set("w", at::Tensor{});
    auto flat = flatten(sd);
    REQUIRE(flat);
    auto view = make_view(*flat);
    REQUIRE(!view);
    CHECK(context_of(view.error()).find("w") != std::string::npos);
  }
  SECTION("shard outside its global shape") {
    state_dict sd;
    sharded_tensor st;
    st.global_size = {4};
    st.local_shards.push_back({at::zeros({3}), {2}});
    sd.set("emb", st);
    auto flat = flatten(sd);
    REQUIRE(flat);
    auto view = make_view(*flat);
    REQUIRE(!view);
    CHECK(code_of(view.error()) == errc::chunk_out_of_bounds);
    CHECK(context_of(view.error()).find("emb") != std::string::npos);
  }
  SECTION("unsupported dtype") {
    state_dict sd;
    sd.set("q", at::empty({2}, at::TensorOptions().dtype(at::kComplexHalf)));
    auto flat = flatten(sd);
    REQUIRE(flat);
    auto view = make_view(*flat);
    REQUIRE(!view);
    CHECK(code_of(view.error()) == errc::unknown_dtype);
    CHECK(context_of(view.error()).find("q") != std::string::npos);
  }
}

TEST_CASE("bytes values round-trip ints, floats and strings", "[state_dict]") {
  CHECK(bytes_value::from_int(3).to_int() == 3);
  CHECK(bytes_value::from_int(int64_t{1} << 40).to_int() == int64_t{1} << 40);
  CHECK(bytes_value::from_int(-5).to_int() == -5);
  CHECK(bytes_value::from_double(0.25).to_double() == 0.25);
  CHECK(bytes_value::from_string("dcp").to_string() == std::string{"dcp"});
  auto wrong = bytes_value::from_string("x").to_int();
  CHECK(!wrong);
  auto garbage = bytes_value::raw("not a zip").to_int();
  REQUIRE(!garbage);
  CHECK(code_of(garbage.error()) == errc::corrupt_item);
}

TEST_CASE("a carried dtype survives flattening and staging", "[state_dict]") {
  state_dict sd;
  auto bits = at::arange(4, at::kShort);
  sd.nested("sub").set_carried("u", bits, dtype::uint16);
  sd.set("f", arange_f32(2));
  auto staged = stage_to_host(sd);
  for (auto* d : {&sd, &staged}) {
    auto flat = flatten(*d);
    REQUIRE(flat);
    auto view = make_view(*flat);
    REQUIRE(view);
    REQUIRE(view->items.size() == 2);
    CHECK(view->items[0].fqn == "sub.u");
    CHECK(view->items[0].properties.type == dtype::uint16);
    CHECK(view->items[1].properties.type == dtype::float32);
  }
  // Replacing the value forgets the dtype.
  sd.nested("sub").set("u", bits);
  CHECK(sd.nested("sub").carried_dtype("u") == nullptr);
  // A tensor of another element size cannot carry it: named by key.
  sd.nested("sub").set_carried("u", arange_f32(4), dtype::uint16);
  auto flat = flatten(sd);
  REQUIRE(flat);
  auto view = make_view(*flat);
  REQUIRE_FALSE(view);
  CHECK(context_of(view.error()).find("sub.u") != std::string::npos);
  CHECK(context_of(view.error()).find("uint16") != std::string::npos);
}

TEST_CASE("staging copies tensors into fresh host memory", "[state_dict]") {
  state_dict sd;
  auto big = at::arange(1 << 20, at::kFloat); // 4 MiB: huge-page path
  sd.set("big", big);
  sd.nested("sub").set("small", arange_f32(3));
  auto staged = stage_to_host(sd);
  auto* copy = std::get_if<at::Tensor>(staged.find("big"));
  REQUIRE(copy != nullptr);
  CHECK(copy->data_ptr() != big.data_ptr());
  CHECK(at::equal(*copy, big));
  big.fill_(0); // the caller may modify its tensors during the save
  CHECK(copy->sum().item<double>() > 0);
  auto* small = staged.find_path({"sub", "small"});
  REQUIRE(small != nullptr);
  CHECK(at::equal(std::get<at::Tensor>(*small), arange_f32(3)));
  auto empty = empty_host_tensor({0, 3}, at::kFloat);
  CHECK(empty.numel() == 0);
}

TEST_CASE("state_dict: set and find stay O(1) per key in large dicts",
          "[state_dict]") {
  auto build = [](size_t n) {
    state_dict sd;
    for (size_t i = 0; i < n; ++i)
      sd.set("k" + std::to_string(i), bytes_value::raw("v"));
    return sd;
  };
  auto seconds = [&](size_t n) {
    return test::least_cpu_seconds([&] {
      auto sd = build(n);
      REQUIRE(sd.size() == n);
    });
  };
  constexpr size_t n = 20000;
  auto t1 = seconds(n);
  auto t4 = seconds(4 * n);
  INFO("N = " << n << ": " << t1 << " s; 4N: " << t4 << " s");
  // Linear: 4; a scan per insert (as before): 16.
  CHECK(t4 < 8 * t1);
  // Lookups, replacement, and mutation through entries() (which drops
  // the index) all see the current keys.
  auto sd = build(100);
  sd.set("k50", bytes_value::raw("new"));
  CHECK(sd.size() == 100);
  CHECK(std::get<bytes_value>(*sd.find("k50")).data == "new");
  CHECK(sd.find("k100") == nullptr);
  sd.entries()[7].first = "renamed";
  CHECK(sd.find("k7") == nullptr);
  REQUIRE(sd.find("renamed") != nullptr);
  const auto& csd = sd;
  CHECK(csd.find("renamed") != nullptr);
  CHECK(csd.find("k99") != nullptr);
}
