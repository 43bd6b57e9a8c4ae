// De-duplication of replicated items (DCP's test_dedup_tensors.py and the
// dedup parts of test_planner.py), plus the conflicts dcpp refuses.

#include "core/planner.hpp"
#include "tests/core/planner_fixtures.hpp"

#include <catch2/catch.hpp>

#include <map>

using namespace dcpp;
using namespace dcpp::test;

namespace {

/// fqn -> ranks whose deduplicated plan writes it.
std::map<std::string, std::vector<size_t>>
writers(const std::vector<save_plan>& plans) {
  std::map<std::string, std::vector<size_t>> out;
  for (size_t r = 0; r < plans.size(); ++r)
    for (const auto& item : plans[r].items)
      out[to_string(item.index)].push_back(r);
  return out;
}

std::vector<save_plan> dedup_ok(const std::vector<state_dict_view>& views,
                                bool to_lowest_rank = false) {
  auto res = dedup_save_plans(local_save_plans(views), to_lowest_rank);
  if (!res)
    FAIL("dedup failed: " << describe(res.error()));
  return std::move(*res);
}

caf::error dedup_error(const std::vector<state_dict_view>& views) {
  auto res = dedup_save_plans(local_save_plans(views));
  if (res)
    FAIL("dedup unexpectedly succeeded");
  return res.error();
}

} // namespace

TEST_CASE("replicated tensors are written by exactly one rank, balanced",
          "[dedup]") {
  for (size_t n : {1u, 2u, 3u, 4u, 8u}) {
    INFO("world size " << n);
    std::vector<state_dict_view> views(n);
    for (auto& v : views)
      for (int i = 0; i < 16; ++i)
        v.items.push_back(plain("w" + std::to_string(i), {8, 8}));
    auto plans = dedup_ok(views);
    auto who = writers(plans);
    CHECK(who.size() == 16);
    for (const auto& [key, ranks] : who) {
      INFO(key);
      CHECK(ranks.size() == 1);
    }
    // Equal sizes: the greedy choice spreads them evenly (16 / n, +1).
    for (const auto& p : plans) {
      CHECK(p.items.size() >= 16 / n);
      CHECK(p.items.size() <= (16 + n - 1) / n);
    }
  }
}

TEST_CASE("bytes items are balanced across ranks", "[dedup]") {
  std::vector<state_dict_view> views(4);
  for (auto& v : views)
    for (int i = 0; i < 8; ++i)
      v.items.push_back(bytes("b" + std::to_string(i), 100));
  auto plans = dedup_ok(views);
  for (const auto& p : plans)
    CHECK(p.items.size() == 2);
  // Item order within a plan is preserved; planner_data travels along.
  CHECK(plans[0].items[0].index.fqn == "b0");
  CHECK(plans[1].items[0].index.fqn == "b1");
}

TEST_CASE("lowest-rank mode keeps every replicated item on rank 0", "[dedup]") {
  std::vector<state_dict_view> views(4);
  for (size_t r = 0; r < views.size(); ++r) {
    views[r].items.push_back(plain("w", {4}));
    views[r].items.push_back(bytes("cfg"));
    views[r].items.push_back(
      sharded("st", {4}, {box({static_cast<int64_t>(r)}, {1})}));
  }
  auto plans = dedup_ok(views, true);
  REQUIRE(plans[0].items.size() == 3);
  CHECK(plans[0].items[0].index.fqn == "w");
  CHECK(plans[0].items[1].index.fqn == "cfg");
  for (size_t r = 1; r < plans.size(); ++r) {
    REQUIRE(plans[r].items.size() == 1);
    CHECK(plans[r].items[0].index.fqn == "st");
  }
}

TEST_CASE("the greedy choice follows DCP: first-seen order, fewest bytes, "
          "lowest rank on ties",
          "[dedup]") {
  std::vector<state_dict_view> views(2);
  // Rank 0 alone holds `big`; it is visited first and counts for rank 0.
  views[0].items.push_back(plain("big", {100}));
  for (auto& v : views) {
    v.items.push_back(plain("a", {10}));
    v.items.push_back(plain("b", {1}));
  }
  views[1].items.push_back(plain("c", {200}));
  views[0].items.push_back(plain("c", {200}));
  auto who = writers(dedup_ok(views));
  CHECK(who["big@[0]"] == std::vector<size_t>{0});
  CHECK(who["a@[0]"] == std::vector<size_t>{1}); // 400 bytes vs 0
  CHECK(who["b@[0]"] == std::vector<size_t>{1}); // 400 vs 40
  CHECK(who["c@[0]"] == std::vector<size_t>{1}); // 400 vs 44
  // Ties go to the lowest rank.
  std::vector<state_dict_view> tie(3);
  for (auto& v : tie)
    v.items.push_back(plain("t", {3}));
  CHECK(writers(dedup_ok(tie))["t@[0]"] == std::vector<size_t>{0});
}

TEST_CASE("shards are never de-duplicated", "[dedup]") {
  auto chunks = split_along({10, 4}, 0, 3, true);
  auto plans = dedup_ok(one_chunk_per_rank("st", {10, 4}, chunks));
  for (const auto& p : plans)
    CHECK(p.items.size() == 1);
}

TEST_CASE("planner_data and storage_data survive de-duplication", "[dedup]") {
  std::vector<state_dict_view> views(2);
  for (auto& v : views) {
    v.items.push_back(plain("w", {2}));
    v.mapping["w"] = {"w"};
  }
  auto locals = local_save_plans(views);
  locals[1].storage_data = "__1_";
  auto res = dedup_save_plans(locals);
  REQUIRE(res);
  CHECK((*res)[1].storage_data == "__1_");
  CHECK((*res)[1].planner_data == locals[1].planner_data);
  CHECK((*res)[0].items.size() + (*res)[1].items.size() == 1);
}

TEST_CASE("two different tensors under one key are an error", "[dedup]") {
  SECTION("different global sizes, same index") {
    std::vector<state_dict_view> views(2);
    views[0].items.push_back(plain("w", {4}));
    views[1].items.push_back(plain("w", {5}));
    auto err = dedup_error(views);
    check_error(err, errc::conflicting_item, "w");
    CHECK(context_of(err).find("rank 0") != std::string::npos);
    CHECK(context_of(err).find("rank 1") != std::string::npos);
    CHECK(context_of(err).find("[5]") != std::string::npos);
  }
  SECTION("different dtypes") {
    std::vector<state_dict_view> views(3);
    views[0].items.push_back(plain("w", {4}));
    views[1].items.push_back(plain("w", {4}));
    views[2].items.push_back(plain("w", {4}, dtype::float16));
    auto err = dedup_error(views);
    check_error(err, errc::conflicting_item, "w");
    CHECK(context_of(err).find("rank 2") != std::string::npos);
    CHECK(context_of(err).find("float16") != std::string::npos);
  }
  SECTION("bytes on one rank, a tensor on another") {
    std::vector<state_dict_view> views(2);
    views[0].items.push_back(bytes("x"));
    views[1].items.push_back(plain("x", {1}));
    check_error(dedup_error(views), errc::conflicting_item, "x");
  }
  SECTION("a plain tensor vs shards of a larger tensor") {
    std::vector<state_dict_view> views(2);
    views[0].items.push_back(plain("w", {4}));
    views[1].items.push_back(sharded("w", {8}, {box({4}, {4})}));
    check_error(dedup_error(views), errc::conflicting_item, "w");
  }
  SECTION("shards of one tensor disagreeing on the global size") {
    std::vector<state_dict_view> views(2);
    views[0].items.push_back(sharded("st", {8, 2}, {box({0, 0}, {4, 2})}));
    views[1].items.push_back(sharded("st", {9, 2}, {box({4, 0}, {5, 2})}));
    check_error(dedup_error(views), errc::conflicting_item, "st");
  }
  SECTION("same offset, different chunk sizes") {
    std::vector<state_dict_view> views(2);
    views[0].items.push_back(sharded("st", {4}, {box({0}, {2})}));
    views[1].items.push_back(sharded("st", {4}, {box({0}, {3})}));
    auto err = dedup_error(views);
    check_error(err, errc::conflicting_item, "st");
    CHECK(context_of(err).find("chunk sizes") != std::string::npos);
  }
  SECTION("one index twice in one plan") {
    std::vector<state_dict_view> views(1);
    views[0].items.push_back(plain("w", {4}));
    views[0].items.push_back(plain("w", {4}));
    check_error(dedup_error(views), errc::conflicting_item, "w");
  }
  SECTION("the global plan reports it too") {
    std::vector<state_dict_view> views(2);
    views[0].items.push_back(plain("w", {4}));
    views[1].items.push_back(plain("w", {5}));
    auto g = create_default_global_save_plan(local_save_plans(views));
    REQUIRE(!g);
    check_error(g.error(), errc::conflicting_item, "w");
  }
}

TEST_CASE("an empty shard loses to a real chunk at the same offset",
          "[dedup]") {
  // Old torch gives empty local shards offset 0, the offset of rank 0's
  // real chunk; DCP's dedup may then keep the empty one and lose data.
  for (bool empty_first : {true, false}) {
    INFO("empty shard on rank " << (empty_first ? 0 : 1));
    std::vector<state_dict_view> views(2);
    auto empty = sharded("st", {2, 3}, {box({0, 0}, {0, 3})});
    auto real = sharded("st", {2, 3}, {box({0, 0}, {2, 3})});
    views[0].items.push_back(empty_first ? empty : real);
    views[1].items.push_back(empty_first ? real : empty);
    auto g = global_plan_of(views);
    auto who = writers(g.plans);
    CHECK(who["st@[0, 0]"] == std::vector<size_t>{empty_first ? 1u : 0u});
    CHECK(g.md.state_dict_metadata.at("st").tensor.chunks
          == std::vector<chunk_storage_metadata>{box({0, 0}, {2, 3})});
  }
}
