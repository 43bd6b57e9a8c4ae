// Resharding: read items for N -> M ranks (uneven row splits, column
// splits, row -> column), checked for exact tiling and by a bit-exact
// simulated load against a global array, plus 0-d and empty tensors and a
// randomized comparison with DCP's quadratic algorithm.

#include "core/planner.hpp"
#include "tests/core/planner_fixtures.hpp"

#include <catch2/catch.hpp>

#include <random>

using namespace dcpp;
using namespace dcpp::test;

namespace {

/// DCP 1.13's quadratic `create_read_items_for_chunk_list`, as reference.
/// One deliberate difference: DCP's overlap test lets an empty box inside
/// another "overlap" it ([2, 2) vs [0, 4)) and emits a zero-length item;
/// dcpp emits none, so the reference skips empty chunks.
std::vector<read_item>
reference_read_items(const std::string& fqn, const tensor_storage_metadata& md,
                     const std::vector<chunk_storage_metadata>& local) {
  std::vector<read_item> out;
  for (size_t i = 0; i < local.size(); ++i) {
    const auto& shard = local[i];
    if (numel(shard.sizes) == 0)
      continue;
    for (size_t j = 0; j < md.chunks.size(); ++j) {
      const auto& saved = md.chunks[j];
      if (numel(saved.sizes) == 0)
        continue;
      bool overlap = true;
      for (size_t d = 0; d < shard.offsets.size(); ++d)
        if (shard.offsets[d] >= saved.offsets[d] + saved.sizes[d]
            || saved.offsets[d] >= shard.offsets[d] + shard.sizes[d])
          overlap = false;
      if (!overlap)
        continue;
      read_item r;
      r.dest_index = metadata_index{fqn, shard.offsets,
                                    static_cast<int64_t>(i)};
      r.storage_index = metadata_index{fqn, saved.offsets,
                                       static_cast<int64_t>(j)};
      for (size_t d = 0; d < shard.offsets.size(); ++d) {
        auto end = std::min(saved.offsets[d] + saved.sizes[d],
                            shard.offsets[d] + shard.sizes[d]);
        r.lengths.push_back(end - std::max(shard.offsets[d], saved.offsets[d]));
        if (saved.offsets[d] > shard.offsets[d]) {
          r.storage_offsets.push_back(0);
          r.dest_offsets.push_back(saved.offsets[d] - shard.offsets[d]);
        } else {
          r.storage_offsets.push_back(shard.offsets[d] - saved.offsets[d]);
          r.dest_offsets.push_back(0);
        }
      }
      out.push_back(std::move(r));
    }
  }
  return out;
}

/// Saves `fqn` from `save_chunks.size()` ranks, then loads it on
/// `load_chunks.size()` ranks; checks every rank's read items.
void reshard(const shape_t& size,
             const std::vector<chunk_storage_metadata>& save_chunks,
             const std::vector<chunk_storage_metadata>& load_chunks) {
  const std::string fqn = "layer.weight";
  auto md = saved_metadata(one_chunk_per_rank(fqn, size, save_chunks));
  const auto& tmd = md.state_dict_metadata.at(fqn).tensor;
  REQUIRE(tmd.chunks.size() <= save_chunks.size());
  for (size_t r = 0; r < load_chunks.size(); ++r) {
    INFO("loading rank " << r << " chunk at "
                         << to_string(load_chunks[r].offsets) << " sizes "
                         << to_string(load_chunks[r].sizes));
    state_dict_view request;
    request.items.push_back(sharded(fqn, size, {load_chunks[r]}));
    auto plan = load_plan_of(request, md);
    check_tiling(fqn, tmd, {load_chunks[r]}, plan.items);
    simulate_load(fqn, md, {load_chunks[r]}, plan.items);
    CHECK(plan.items == reference_read_items(fqn, tmd, {load_chunks[r]}));
  }
}

} // namespace

TEST_CASE("the worked example of dcp-format.md 5.1", "[resharding]") {
  tensor_storage_metadata md;
  md.size = {4, 3};
  md.chunks = {box({0, 0}, {2, 3}), box({2, 0}, {2, 3})};
  auto items = create_read_items("st", md, {box({0, 2}, {4, 1})});
  REQUIRE(items.size() == 2);
  CHECK(items[0].storage_index == metadata_index("st", {0, 0}));
  CHECK(items[0].storage_index.index == 0);
  CHECK(items[0].storage_offsets == shape_t{0, 2});
  CHECK(items[0].dest_offsets == shape_t{0, 0});
  CHECK(items[0].lengths == shape_t{2, 1});
  CHECK(items[0].dest_index == metadata_index("st", {0, 2}));
  CHECK(items[0].dest_index.index == 0);
  CHECK(items[1].storage_index == metadata_index("st", {2, 0}));
  CHECK(items[1].storage_index.index == 1);
  CHECK(items[1].storage_offsets == shape_t{0, 2});
  CHECK(items[1].dest_offsets == shape_t{2, 0});
  CHECK(items[1].lengths == shape_t{2, 1});
}

TEST_CASE("row splits N -> M with uneven splits", "[resharding]") {
  const std::pair<int64_t, int64_t> worlds[] = {{8, 4}, {4, 8}, {3, 2},
                                                {2, 3}, {1, 3}, {3, 1}};
  for (auto [n, m] : worlds) {
    for (int64_t rows : {10, 17, 8}) {
      for (bool save_balanced : {true, false}) {
        for (bool load_balanced : {true, false}) {
          INFO(n << " -> " << m << " ranks, " << rows << " rows, save "
                 << (save_balanced ? "balanced" : "ceil") << ", load "
                 << (load_balanced ? "balanced" : "ceil"));
          shape_t size{rows, 5};
          reshard(size, split_along(size, 0, n, save_balanced),
                  split_along(size, 0, m, load_balanced));
        }
      }
    }
  }
}

TEST_CASE("column splits and row <-> column", "[resharding]") {
  const std::pair<int64_t, int64_t> worlds[] = {{8, 4}, {4, 8}, {3, 2}, {2, 3}};
  for (auto [n, m] : worlds) {
    shape_t size{7, 10};
    {
      INFO(n << " -> " << m << " ranks, columns -> columns");
      reshard(size, split_along(size, 1, n, true),
              split_along(size, 1, m, false));
    }
    {
      INFO(n << " -> " << m << " ranks, rows -> columns");
      reshard(size, split_along(size, 0, n, true),
              split_along(size, 1, m, true));
    }
    {
      INFO(n << " -> " << m << " ranks, columns -> rows");
      reshard(size, split_along(size, 1, n, false),
              split_along(size, 0, m, true));
    }
  }
}

TEST_CASE("a 2-D grid saved, rows and a plain tensor loaded", "[resharding]") {
  shape_t size{6, 8};
  // 2 x 2 grid over 4 ranks, uneven: rows 4+2, cols 3+5.
  std::vector<chunk_storage_metadata> grid{box({0, 0}, {4, 3}),
                                           box({0, 3}, {4, 5}),
                                           box({4, 0}, {2, 3}),
                                           box({4, 3}, {2, 5})};
  reshard(size, grid, split_along(size, 0, 3, true));
  reshard(size, grid, {box({0, 0}, size)});
  reshard(size, {box({0, 0}, size)}, grid);
}

TEST_CASE("a replicated tensor is loaded into shards and back",
          "[resharding]") {
  const std::string fqn = "w";
  std::vector<state_dict_view> views(4);
  for (auto& v : views)
    v.items.push_back(plain(fqn, {9, 2}));
  auto md = saved_metadata(views);
  auto rows = split_along({9, 2}, 0, 4, true);
  state_dict_view request;
  request.items.push_back(sharded(fqn, {9, 2}, rows));
  auto plan = load_plan_of(request, md);
  CHECK(plan.items.size() == 4);
  check_tiling(fqn, md.state_dict_metadata.at(fqn).tensor, rows, plan.items);
  simulate_load(fqn, md, rows, plan.items);
}

TEST_CASE("several local chunks per rank", "[resharding]") {
  const std::string fqn = "st";
  shape_t size{12, 4};
  auto md = saved_metadata(
    one_chunk_per_rank(fqn, size, split_along(size, 0, 5, true)));
  // One rank holds rows [0, 3) and [9, 12) plus a column block.
  std::vector<chunk_storage_metadata> local{box({0, 0}, {3, 4}),
                                            box({9, 0}, {3, 4}),
                                            box({3, 1}, {6, 2})};
  state_dict_view request;
  request.items.push_back(sharded(fqn, size, local));
  auto plan = load_plan_of(request, md);
  const auto& tmd = md.state_dict_metadata.at(fqn).tensor;
  check_tiling(fqn, tmd, local, plan.items);
  simulate_load(fqn, md, local, plan.items);
  CHECK(plan.items == reference_read_items(fqn, tmd, local));
}

TEST_CASE("0-d tensors always overlap", "[resharding]") {
  std::vector<state_dict_view> views(3);
  for (auto& v : views)
    v.items.push_back(plain("step", {}, dtype::int64));
  auto md = saved_metadata(views);
  state_dict_view request;
  request.items.push_back(plain("step", {}, dtype::int64));
  auto plan = load_plan_of(request, md);
  REQUIRE(plan.items.size() == 1);
  const auto& r = plan.items[0];
  CHECK(r.type == load_item_type::tensor);
  CHECK(r.dest_index == metadata_index("step", shape_t{}));
  CHECK(r.storage_index == metadata_index("step", shape_t{}));
  CHECK(r.storage_index.index == 0);
  CHECK(r.lengths.empty());
  CHECK(r.dest_offsets.empty());
  CHECK(r.storage_offsets.empty());
  simulate_load("step", md, {box({}, {})}, plan.items);
}

TEST_CASE("tensors with an empty dimension produce no read items",
          "[resharding]") {
  std::vector<state_dict_view> views(2);
  auto rows = split_along({4, 0}, 0, 2, true);
  for (size_t r = 0; r < 2; ++r) {
    views[r].items.push_back(plain("e", {0, 3}));
    views[r].items.push_back(sharded("z", {4, 0}, {rows[r]}));
  }
  auto md = saved_metadata(views);
  state_dict_view request;
  request.items.push_back(plain("e", {0, 3}));
  request.items.push_back(
    sharded("z", {4, 0}, split_along({4, 0}, 0, 3, true)));
  auto plan = load_plan_of(request, md);
  CHECK(plan.items.empty());
}

TEST_CASE("empty saved and local chunks are skipped", "[resharding]") {
  tensor_storage_metadata md;
  md.size = {4};
  md.chunks = {box({0}, {0}), box({0}, {4}), box({4}, {0})};
  auto items = create_read_items("t", md, {box({0}, {0}), box({0}, {4})});
  REQUIRE(items.size() == 1);
  CHECK(items[0].dest_index.index == 1);
  CHECK(items[0].storage_index.index == 1);
  CHECK(items[0].lengths == shape_t{4});
}

TEST_CASE("random 3-D grids match DCP's quadratic algorithm", "[resharding]") {
  std::mt19937 rng{42};
  auto random_split = [&](int64_t total, int64_t parts) {
    // `parts` cut points, possibly equal (empty parts allowed).
    std::uniform_int_distribution<int64_t> dist(0, total);
    std::vector<int64_t> cuts{0, total};
    for (int64_t k = 1; k < parts; ++k)
      cuts.push_back(dist(rng));
    std::sort(cuts.begin(), cuts.end());
    return cuts;
  };
  auto random_grid = [&](const shape_t& size) {
    std::uniform_int_distribution<int64_t> parts(1, 4);
    std::vector<std::vector<int64_t>> cuts;
    for (auto s : size)
      cuts.push_back(random_split(s, parts(rng)));
    std::vector<chunk_storage_metadata> out;
    for (size_t a = 0; a + 1 < cuts[0].size(); ++a)
      for (size_t b = 0; b + 1 < cuts[1].size(); ++b)
        for (size_t c = 0; c + 1 < cuts[2].size(); ++c)
          out.push_back(
            box({cuts[0][a], cuts[1][b], cuts[2][c]},
                {cuts[0][a + 1] - cuts[0][a], cuts[1][b + 1] - cuts[1][b],
                 cuts[2][c + 1] - cuts[2][c]}));
    std::shuffle(out.begin(), out.end(), rng);
    return out;
  };
  std::uniform_int_distribution<int64_t> dim(1, 7);
  for (int round = 0; round < 60; ++round) {
    INFO("round " << round);
    shape_t size{dim(rng), dim(rng), dim(rng)};
    auto saved = random_grid(size);
    // Empty chunks would collide on their offsets; a real save drops them
    // in dedup, here they are simply left out of the metadata.
    metadata md;
    auto& entry = md.state_dict_metadata["g"];
    entry.tensor.size = size;
    for (const auto& c : saved)
      if (numel(c.sizes) > 0)
        entry.tensor.chunks.push_back(c);
    REQUIRE(!validate_metadata(md));
    auto local = random_grid(size);
    auto items = create_read_items("g", entry.tensor, local);
    CHECK(items == reference_read_items("g", entry.tensor, local));
    check_tiling("g", entry.tensor, local, items);
    // Destinations with equal offsets cannot be told apart by index; use
    // the non-empty ones, which are distinct.
    std::vector<chunk_storage_metadata> nonempty;
    for (const auto& c : local)
      if (numel(c.sizes) > 0)
        nonempty.push_back(c);
    simulate_load("g", md, nonempty,
                  create_read_items("g", entry.tensor, nonempty));
  }
}

TEST_CASE("many chunks: 1024 -> 1000 ranks", "[resharding]") {
  // Exercises the sweep: a quadratic loop would compare ~10^6 pairs per
  // world; here every destination meets at most a few saved chunks.
  shape_t size{100000, 2};
  auto saved = split_along(size, 0, 1024, true);
  metadata md;
  auto& entry = md.state_dict_metadata["big"];
  entry.tensor.size = size;
  entry.tensor.chunks = saved;
  REQUIRE(!validate_metadata(md));
  auto local = split_along(size, 0, 1000, false);
  auto items = create_read_items("big", entry.tensor, local);
  check_tiling("big", entry.tensor, local, items);
  CHECK(items.size() < local.size() + saved.size());
}
