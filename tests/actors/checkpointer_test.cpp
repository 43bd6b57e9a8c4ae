// The public checkpointer in a world of one rank (`no_dist`): save -> load
// round trips through in-memory storage, every dtype, 0-d and strided
// tensors, bytes values, nested dicts, async save, and bad input.

#include "actors/checkpointer.hpp"

#include "core/error.hpp"
#include "storage/memory_storage.hpp"

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <chrono>

using namespace dcpp;

namespace {

checkpointer make_memory_checkpointer(std::shared_ptr<memory_store> store) {
  checkpointer_options opts;
  opts.no_dist = true;
  return checkpointer{make_memory_writer(store), make_memory_reader(store),
                      opts};
}

/// A state dict with one tensor of each kind the issue names.
state_dict make_mixed() {
  state_dict sd;
  sd.set("f32", at::arange(6, at::kFloat).reshape({2, 3}));
  sd.set("bf16", at::tensor({1.5, -2.0, 3.25, 0.5}).to(at::kBFloat16));
  sd.set("f16", at::linspace(-1, 1, 7).to(at::kHalf));
  sd.set("i64", at::tensor({int64_t{7}, int64_t{-1}, int64_t{1} << 40}));
  sd.set("bool", at::tensor({1, 0, 1}).to(at::kBool));
  sd.set("scalar", at::scalar_tensor(3.5, at::kDouble));
  sd.set("strided", at::arange(12, at::kFloat).reshape({3, 4}).t());
  sd.set("epoch", bytes_value::from_int(3));
  sd.nested("optim").nested("state").set("lr", bytes_value::from_double(0.1));
  sd.nested("optim").nested("state").set("exp_avg",
                                         at::rand({5, 2}, at::kFloat));
  return sd;
}

/// Same keys and shapes, zeroed (the caller's preallocated destination).
state_dict zeros_like(const state_dict& sd) {
  state_dict out;
  for (const auto& [key, val] : sd.entries()) {
    if (auto t = std::get_if<at::Tensor>(&val))
      out.set(key, at::zeros_like(*t, at::MemoryFormat::Contiguous));
    else if (std::get_if<bytes_value>(&val))
      out.set(key, bytes_value{});
    else if (auto sub = std::get_if<std::shared_ptr<state_dict>>(&val))
      out.set(key, std::make_shared<state_dict>(zeros_like(**sub)));
  }
  return out;
}

void require_equal(const state_dict& expected, const state_dict& actual) {
  REQUIRE(expected.size() == actual.size());
  for (const auto& [key, val] : expected.entries()) {
    INFO("key " << key);
    auto other = actual.find(key);
    REQUIRE(other != nullptr);
    if (auto t = std::get_if<at::Tensor>(&val)) {
      auto& u = std::get<at::Tensor>(*other);
      CHECK(u.scalar_type() == t->scalar_type());
      CHECK(u.sizes() == t->sizes());
      CHECK(at::equal(u, *t));
    } else if (auto b = std::get_if<bytes_value>(&val)) {
      CHECK(std::get<bytes_value>(*other).data == b->data);
    } else if (auto sub = std::get_if<std::shared_ptr<state_dict>>(&val)) {
      require_equal(**sub, *std::get<std::shared_ptr<state_dict>>(*other));
    }
  }
}

} // namespace

TEST_CASE("no_dist save then load is bit-exact", "[checkpointer]") {
  auto store = make_memory_storage();
  auto cp = make_memory_checkpointer(store);
  auto sd = make_mixed();
  auto md = cp.save(sd);
  REQUIRE(md);
  CHECK(md->state_dict_metadata.size() == 10);
  CHECK(md->state_dict_metadata.at("epoch").kind == item_kind::bytes);
  CHECK(md->state_dict_metadata.at("scalar").tensor.size.empty());
  CHECK(md->storage_data.size() == 10);
  CHECK(to_string(md->planner_data.at("optim.state.lr"))
        == "('optim', 'state', 'lr')");
  CHECK(committed_items(*store) == 10);
  auto loaded = zeros_like(sd);
  auto err = cp.load(loaded);
  REQUIRE_FALSE(err);
  require_equal(sd, loaded);
  CHECK(std::get<bytes_value>(*loaded.find("epoch")).to_int() == 3);
}

TEST_CASE("load into a fresh state dict built from the metadata",
          "[checkpointer]") {
  auto store = make_memory_storage();
  auto cp = make_memory_checkpointer(store);
  auto sd = make_mixed();
  auto md = cp.save(sd);
  REQUIRE(md);
  auto loaded = make_state_dict_for(*md);
  REQUIRE_FALSE(cp.load(loaded));
  require_equal(sd, loaded);
}

TEST_CASE("load reshards into a sharded destination", "[checkpointer]") {
  auto store = make_memory_storage();
  auto cp = make_memory_checkpointer(store);
  state_dict sd;
  auto full = at::arange(30, at::kFloat).reshape({10, 3});
  sd.set("w", full);
  REQUIRE(cp.save(sd));
  // This rank holds rows 3..7 and column 2 of rows 8..9, as two shards.
  state_dict dest;
  sharded_tensor st;
  st.global_size = {10, 3};
  st.local_shards.push_back({at::zeros({5, 3}), {3, 0}});
  st.local_shards.push_back({at::zeros({2, 1}), {8, 2}});
  dest.set("w", st);
  REQUIRE_FALSE(cp.load(dest));
  const auto& got = std::get<sharded_tensor>(*dest.find("w"));
  CHECK(at::equal(got.local_shards[0].tensor, full.narrow(0, 3, 5)));
  CHECK(at::equal(got.local_shards[1].tensor,
                  full.narrow(0, 8, 2).narrow(1, 2, 1)));
}

/// The error of rank 0 in a failed operation of a world of one: no_dist
/// runs the steps of a group and fails as a group does, with one
/// checkpoint_failed that names the step and carries each rank's error.
caf::error rank0_error(const caf::error& err) {
  REQUIRE(code_of(err) == errc::checkpoint_failed);
  auto failure = checkpoint_failure_of(err);
  REQUIRE(failure);
  CHECK(failure->step == "plan");
  REQUIRE(failure->failures.size() == 1);
  REQUIRE(failure->failures.count(0) == 1);
  return failure->failures.at(0);
}

TEST_CASE("bad loads name the key and change nothing they should not",
          "[checkpointer]") {
  auto store = make_memory_storage();
  auto cp = make_memory_checkpointer(store);
  state_dict sd;
  sd.set("w", at::ones({4, 4}));
  REQUIRE(cp.save(sd));
  SECTION("missing key") {
    state_dict dest;
    dest.set("nope", at::zeros({4, 4}));
    auto err = cp.load(dest);
    REQUIRE(err);
    CHECK(code_of(rank0_error(err)) == errc::missing_key);
    CHECK(context_of(rank0_error(err)).find("nope") != std::string::npos);
  }
  SECTION("wrong shape") {
    state_dict dest;
    dest.set("w", at::zeros({4, 5}));
    auto err = cp.load(dest);
    REQUIRE(err);
    CHECK(code_of(rank0_error(err)) == errc::shape_mismatch);
    CHECK(context_of(rank0_error(err)).find("w") != std::string::npos);
  }
  SECTION("wrong dtype") {
    state_dict dest;
    dest.set("w", at::zeros({4, 4}, at::kDouble));
    auto err = cp.load(dest);
    REQUIRE(err);
    CHECK(code_of(rank0_error(err)) == errc::dtype_mismatch);
  }
  SECTION("tensor where bytes were saved") {
    state_dict s2;
    s2.set("b", bytes_value::from_int(1));
    REQUIRE(cp.save(s2));
    state_dict dest;
    dest.set("b", at::zeros({1}));
    auto err = cp.load(dest);
    REQUIRE(err);
    CHECK(code_of(rank0_error(err)) == errc::kind_mismatch);
  }
  SECTION("nothing saved yet") {
    auto empty = make_memory_storage();
    auto cp2 = make_memory_checkpointer(empty);
    state_dict dest;
    dest.set("w", at::zeros({4, 4}));
    auto err = cp2.load(dest);
    REQUIRE(err);
    CHECK(code_of(rank0_error(err)) == errc::not_found);
  }
}

TEST_CASE("save without a process group or no_dist is refused",
          "[checkpointer]") {
  auto store = make_memory_storage();
  checkpointer cp{make_memory_writer(store), make_memory_reader(store)};
  state_dict sd;
  sd.set("w", at::ones({2}));
  auto md = cp.save(sd);
  REQUIRE(!md);
  CHECK(code_of(md.error()) == errc::invalid_argument);
}

TEST_CASE("async_save stages, returns, and commits in the background",
          "[checkpointer]") {
  auto store = make_memory_storage();
  auto cp = make_memory_checkpointer(store);
  state_dict sd;
  auto w = at::arange(1000, at::kFloat);
  sd.set("w", w);
  auto fut = cp.async_save(sd);
  w.fill_(-1); // staging copied the values: this must not reach storage
  auto second = cp.async_save(sd); // waits for the first, saves the -1s
  auto md = fut.get();
  REQUIRE(md);
  auto md2 = second.get();
  REQUIRE(md2);
  state_dict dest;
  dest.set("w", at::zeros({1000}));
  REQUIRE_FALSE(cp.load(dest));
  CHECK(
    at::equal(std::get<at::Tensor>(*dest.find("w")), at::full({1000}, -1.0f)));
}
