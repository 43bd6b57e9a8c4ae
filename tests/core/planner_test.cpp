// Save planning with N simulated ranks in one process, in the style of DCP's
// test_planner.py: local plans, global plan, metadata, index hints, flatten
// mappings, and the default planner classes.

#include "core/planner.hpp"

#include "tests/core/planner_fixtures.hpp"

#include <catch2/catch.hpp>

#include <set>

using namespace dcpp;
using namespace dcpp::test;

namespace {

/// A state dict as every rank of a world of `n` holds it: a replicated
/// weight, a row-sharded tensor (10 rows, uneven), a 0-d step counter and
/// a bytes value.
std::vector<state_dict_view> world(int64_t n) {
  shape_t st_size{10, 3};
  auto rows = split_along(st_size, 0, n, true);
  std::vector<state_dict_view> views(static_cast<size_t>(n));
  for (size_t r = 0; r < views.size(); ++r) {
    auto& v = views[r];
    v.items.push_back(plain("model.w", {4, 3}));
    v.items.push_back(sharded("model.st", st_size, {rows[r]}));
    v.items.push_back(plain("optim.step", {}, dtype::int64));
    v.items.push_back(bytes("optim.cfg", 16));
    v.mapping["model.w"] = {"model", "w"};
    v.mapping["model.st"] = {"model", "st"};
    v.mapping["optim.step"] = {"optim", "step"};
    v.mapping["optim.cfg"] = {"optim", "cfg"};
  }
  return views;
}

size_t count_fqn(const std::vector<save_plan>& plans, const std::string& fqn) {
  size_t n = 0;
  for (const auto& p : plans)
    for (const auto& item : p.items)
      n += item.index.fqn == fqn ? 1 : 0;
  return n;
}

} // namespace

TEST_CASE("local save plan: one item per chunk and per bytes value",
          "[planner][save]") {
  state_dict_view view;
  view.items.push_back(plain("w", {4, 3}, dtype::bfloat16));
  view.items.push_back(
    sharded("st", {8, 3}, {box({0, 0}, {2, 3}), box({4, 0}, {2, 3})}));
  view.items.push_back(bytes("cfg", 42));
  view.mapping["w"] = {"w"};
  auto plan = create_default_local_save_plan(view);
  REQUIRE(plan.items.size() == 4);
  const auto& w = plan.items[0];
  CHECK(w.index == metadata_index("w", {0, 0}));
  CHECK(w.index.index == -1);
  CHECK(w.type == write_item_type::tensor);
  CHECK(w.tensor_data.chunk == box({0, 0}, {4, 3}));
  CHECK(w.tensor_data.size == shape_t{4, 3});
  CHECK(w.tensor_data.properties.type == dtype::bfloat16);
  CHECK(w.byte_count() == 4 * 3 * 2);
  for (size_t i : {1u, 2u}) {
    const auto& s = plan.items[i];
    CHECK(s.type == write_item_type::shard);
    CHECK(s.tensor_data.size == shape_t{8, 3});
    CHECK(s.index.offset == s.tensor_data.chunk.offsets);
  }
  CHECK(plan.items[2].index == metadata_index("st", {4, 0}));
  const auto& b = plan.items[3];
  CHECK(b.type == write_item_type::bytes);
  CHECK(b.index == metadata_index("cfg"));
  CHECK_FALSE(b.index.has_offset);
  CHECK(b.bytes_size == 42);
  CHECK(b.byte_count() == 42);
  auto mapping = decode_flatten_mapping(plan.planner_data);
  REQUIRE(mapping);
  CHECK(*mapping == view.mapping);
}

TEST_CASE("local save plan: a sharded tensor without local shards writes "
          "nothing, a plain one without chunks covers itself",
          "[planner][save]") {
  state_dict_view view;
  view.items.push_back(sharded("st", {8}, {}));
  auto p = plain("w", {2, 2});
  p.local_chunks.clear();
  view.items.push_back(p);
  auto plan = create_default_local_save_plan(view);
  REQUIRE(plan.items.size() == 1);
  CHECK(plan.items[0].tensor_data.chunk == box({0, 0}, {2, 2}));
}

TEST_CASE("global save plan for 1, 2, 3, 4 and 8 ranks", "[planner][save]") {
  for (int64_t n : {1, 2, 3, 4, 8}) {
    INFO("world size " << n);
    auto views = world(n);
    auto g = global_plan_of(views);
    REQUIRE(g.plans.size() == static_cast<size_t>(n));
    const auto& sdm = g.md.state_dict_metadata;
    REQUIRE(sdm.size() == 4);
    // Replicated values are written exactly once; every shard is written.
    CHECK(count_fqn(g.plans, "model.w") == 1);
    CHECK(count_fqn(g.plans, "optim.step") == 1);
    CHECK(count_fqn(g.plans, "optim.cfg") == 1);
    CHECK(count_fqn(g.plans, "model.st") == static_cast<size_t>(n));
    // Metadata.
    const auto& w = sdm.at("model.w");
    CHECK(w.kind == item_kind::tensor);
    CHECK(w.tensor.size == shape_t{4, 3});
    CHECK(w.tensor.chunks
          == std::vector<chunk_storage_metadata>{box({0, 0}, {4, 3})});
    const auto& step = sdm.at("optim.step");
    CHECK(step.tensor.size.empty());
    CHECK(step.tensor.properties.type == dtype::int64);
    REQUIRE(step.tensor.chunks.size() == 1);
    CHECK(step.tensor.chunks[0] == box({}, {}));
    CHECK(sdm.at("optim.cfg").kind == item_kind::bytes);
    // Shards are appended in plan order, rank 0 first.
    const auto& st = sdm.at("model.st").tensor;
    CHECK(st.chunks == split_along({10, 3}, 0, n, true));
    // Every item's hint points at its chunk.
    for (const auto& plan : g.plans) {
      for (const auto& item : plan.items) {
        if (item.type == write_item_type::bytes) {
          CHECK(item.index.index == -1);
          continue;
        }
        const auto& chunks = sdm.at(item.index.fqn).tensor.chunks;
        REQUIRE(item.index.index >= 0);
        REQUIRE(item.index.index < static_cast<int64_t>(chunks.size()));
        CHECK(chunks[static_cast<size_t>(item.index.index)]
              == item.tensor_data.chunk);
      }
    }
    // Shards stay on their ranks, in order.
    for (size_t r = 0; r < g.plans.size(); ++r) {
      auto shards = 0;
      for (const auto& item : g.plans[r].items)
        if (item.index.fqn == "model.st") {
          ++shards;
          CHECK(item.index.index == static_cast<int64_t>(r));
        }
      CHECK(shards == 1);
    }
    CHECK(g.md.planner_data.size() == 4);
    CHECK(g.md.planner_data.at("optim.step") == object_path{"optim", "step"});
    CHECK(!validate_metadata(g.md));
  }
}

TEST_CASE("global save plan appends chunks in plan order, rank 0 first",
          "[planner][save]") {
  // Rank 1 holds two shards, rank 0 one: chunks are appended per plan.
  std::vector<state_dict_view> views(2);
  views[0].items.push_back(sharded("st", {6}, {box({4}, {2})}));
  views[1].items.push_back(sharded("st", {6}, {box({0}, {2}), box({2}, {2})}));
  auto g = global_plan_of(views);
  CHECK(g.md.state_dict_metadata.at("st").tensor.chunks
        == std::vector<chunk_storage_metadata>{box({4}, {2}), box({0}, {2}),
                                               box({2}, {2})});
  REQUIRE(g.plans[1].items.size() == 2);
  CHECK(g.plans[1].items[0].index.index == 1);
  CHECK(g.plans[1].items[1].index.index == 2);
}

TEST_CASE("global save plan: tensors with empty dimensions",
          "[planner][save]") {
  for (int64_t n : {1, 2, 4}) {
    INFO("world size " << n);
    std::vector<state_dict_view> views(static_cast<size_t>(n));
    // 2 rows over 4 ranks with torch.chunk: sizes 1, 1, 0, 0.
    auto rows = split_along({2, 3}, 0, n, false);
    auto zero_cols = split_along({4, 0}, 0, n, true);
    for (size_t r = 0; r < views.size(); ++r) {
      views[r].items.push_back(plain("empty", {0, 3}));
      views[r].items.push_back(sharded("rows", {2, 3}, {rows[r]}));
      views[r].items.push_back(sharded("nocols", {4, 0}, {zero_cols[r]}));
    }
    auto g = global_plan_of(views);
    const auto& sdm = g.md.state_dict_metadata;
    CHECK(sdm.at("empty").tensor.chunks
          == std::vector<chunk_storage_metadata>{box({0, 0}, {0, 3})});
    CHECK(count_fqn(g.plans, "empty") == 1);
    // Empty shards at the same offset are one index: written once.
    std::set<shape_t> offsets;
    for (const auto& c : rows)
      offsets.insert(c.offsets);
    CHECK(sdm.at("rows").tensor.chunks.size() == offsets.size());
    CHECK(sdm.at("nocols").tensor.chunks.size() == static_cast<size_t>(n));
    CHECK(!validate_metadata(g.md));
  }
}

TEST_CASE("global save plan merges flatten mappings, lowest rank first",
          "[planner][save]") {
  std::vector<state_dict_view> views(2);
  views[0].items.push_back(bytes("a.b"));
  views[0].mapping["a.b"] = {"a", "b"};
  views[1].items.push_back(bytes("c.d"));
  views[1].mapping["c.d"] = {"c", "d"};
  views[1].mapping["a.b"] = {"x"};
  auto g = global_plan_of(views);
  CHECK(g.md.planner_data
        == flatten_mapping{{"a.b", {"a", "b"}}, {"c.d", {"c", "d"}}});
}

TEST_CASE("global save plan rejects undecodable planner_data",
          "[planner][save]") {
  auto plans = local_save_plans(world(2));
  plans[1].planner_data = "not a mapping";
  auto g = create_default_global_save_plan(plans);
  REQUIRE(!g);
  CHECK(code_of(g.error()) == errc::corrupt_metadata);
  CHECK(context_of(g.error()).find("rank 1") != std::string::npos);
  // An empty slot (a custom planner's plan) contributes nothing.
  plans[1].planner_data.clear();
  CHECK(create_default_global_save_plan(plans));
}

TEST_CASE("global save plan reports validation errors", "[planner][save]") {
  SECTION("a hole") {
    std::vector<state_dict_view> views(2);
    views[0].items.push_back(sharded("st", {6}, {box({0}, {2})}));
    views[1].items.push_back(sharded("st", {6}, {box({4}, {2})}));
    auto g = create_default_global_save_plan(local_save_plans(views));
    REQUIRE(!g);
    check_error(g.error(), errc::incomplete_chunks, "st");
  }
  SECTION("a hole with a single rank") {
    // DCP checks coverage only with several plans; dcpp always does.
    std::vector<state_dict_view> views(1);
    views[0].items.push_back(sharded("st", {6}, {box({0}, {5})}));
    auto g = create_default_global_save_plan(local_save_plans(views));
    REQUIRE(!g);
    check_error(g.error(), errc::incomplete_chunks, "st");
  }
  SECTION("overlapping shards of two ranks") {
    std::vector<state_dict_view> views(2);
    views[0].items.push_back(sharded("st", {6}, {box({0}, {4})}));
    views[1].items.push_back(sharded("st", {6}, {box({2}, {4})}));
    auto g = create_default_global_save_plan(local_save_plans(views));
    REQUIRE(!g);
    check_error(g.error(), errc::overlapping_chunks, "st");
  }
  SECTION("a plain tensor on one rank, a shard of it on another") {
    std::vector<state_dict_view> views(2);
    views[0].items.push_back(plain("w", {6}));
    views[1].items.push_back(sharded("w", {6}, {box({3}, {3})}));
    auto g = create_default_global_save_plan(local_save_plans(views));
    REQUIRE(!g);
    check_error(g.error(), errc::overlapping_chunks, "w");
  }
  SECTION("a shard out of bounds") {
    std::vector<state_dict_view> views(1);
    views[0].items.push_back(
      sharded("st", {6}, {box({0}, {4}), box({4}, {4})}));
    auto g = create_default_global_save_plan(local_save_plans(views));
    REQUIRE(!g);
    check_error(g.error(), errc::chunk_out_of_bounds, "st");
  }
}

TEST_CASE("default planners wrap the free functions", "[planner]") {
  auto views = world(3);
  auto sp = make_default_save_planner();
  std::vector<save_plan> locals;
  for (size_t r = 0; r < views.size(); ++r) {
    auto p = sp->create_local_plan(views[r], r == 0);
    REQUIRE(p);
    CHECK(*p == create_default_local_save_plan(views[r]));
    locals.push_back(std::move(*p));
  }
  auto g = sp->create_global_plan(locals);
  REQUIRE(g);
  auto expected = create_default_global_save_plan(locals);
  REQUIRE(expected);
  CHECK(g->plans == expected->plans);
  CHECK(g->md == expected->md);
  auto finished = sp->finish_plan(g->plans[1]);
  REQUIRE(finished);
  CHECK(*finished == g->plans[1]);
  // Lowest-rank mode: rank 0 writes every replicated value.
  auto lowest = make_default_save_planner(true)->create_global_plan(locals);
  REQUIRE(lowest);
  CHECK(count_fqn({lowest->plans[0]}, "model.w") == 1);
  CHECK(count_fqn({lowest->plans[0]}, "optim.cfg") == 1);
  CHECK(count_fqn({lowest->plans[0]}, "optim.step") == 1);
  // Load planner: options reach the free function.
  state_dict_view request;
  request.items.push_back(plain("model.w", {4, 3}));
  request.items.push_back(plain("missing", {1}));
  auto strict = make_default_load_planner();
  auto lp = strict->create_local_plan(request, g->md, true);
  REQUIRE(!lp);
  CHECK(code_of(lp.error()) == errc::missing_key);
  load_options lenient;
  lenient.strict = false;
  auto lax = make_default_load_planner(lenient);
  lp = lax->create_local_plan(request, g->md, true);
  REQUIRE(lp);
  CHECK(lp->items.size() == 1);
  auto globals = lax->create_global_plan({*lp, *lp});
  REQUIRE(globals);
  CHECK(globals->size() == 2);
  CHECK((*globals)[1] == *lp);
  auto fin = lax->finish_plan(*lp);
  REQUIRE(fin);
  CHECK(*fin == *lp);
}

TEST_CASE("plan enums have names and items count their bytes", "[plan]") {
  CHECK(to_string(write_item_type::tensor) == "tensor");
  CHECK(to_string(write_item_type::shard) == "shard");
  CHECK(to_string(write_item_type::bytes) == "bytes");
  CHECK(to_string(load_item_type::tensor) == "tensor");
  CHECK(to_string(load_item_type::bytes) == "bytes");
  write_item w;
  w.tensor_data.properties.type = dtype::float64;
  w.tensor_data.chunk = box({0, 0}, {3, 5});
  CHECK(w.byte_count() == 120);
  w.tensor_data.chunk = box({0, 0}, {0, 5});
  CHECK(w.byte_count() == 1);
  w.tensor_data.chunk = box({}, {});
  CHECK(w.byte_count() == 8);
  w.type = write_item_type::bytes;
  CHECK(w.byte_count() == 1);
  w.bytes_size = 7;
  CHECK(w.byte_count() == 7);
}
