// What `.metadata` records of a state dict's structure (`planner_data`, the
// path of every key) through every way a save can take: a synchronous save,
// `async_save` (the staging pool), a save of a staging pool's copy and of
// `stage_to_host`'s copy all record the same paths, list positions as
// ints; a flat state dict records every key as its own one-step path, in
// both `.metadata` flavors, as PyTorch's `flatten_state_dict` does. Real
// files in a temporary directory, decoded from the bytes on disk.

#include "actors/checkpointer.hpp"
#include "core/error.hpp"
#include "storage/filesystem.hpp"
#include "storage/metadata_codec.hpp"
#include "storage/pickle.hpp"
#include "storage/staging_pool.hpp"
#include "tests/storage/fs_test_util.hpp"

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <fstream>
#include <memory>
#include <string>
#include <vector>

using namespace dcpp;

namespace {

/// A state dict with lists (param_groups, and a list inside a list), a
/// sharded tensor inside a list, bytes values and a top-level key.
state_dict make_nested() {
  state_dict sd;
  sd.set("step", bytes_value::from_int(5));
  sd.nested("model").set("w", at::arange(12, at::kFloat).reshape({3, 4}));
  auto& optim = sd.nested("optim");
  optim.nested("state").nested("w").set("exp_avg", at::ones({3, 4}));
  auto& groups = optim.nested("param_groups");
  groups.is_list(true);
  for (int g = 0; g < 2; ++g) {
    auto& group = groups.nested(std::to_string(g));
    group.set("lr", bytes_value::from_double(0.1 * (g + 1)));
    auto& extra = group.nested("buffers");
    extra.is_list(true);
    extra.set("0", at::full({2}, g, at::kDouble));
    sharded_tensor st;
    st.global_size = {4, 2};
    st.local_shards.push_back({at::zeros({2, 2}, at::kInt), {0, 0}});
    st.local_shards.push_back({at::ones({2, 2}, at::kInt), {2, 0}});
    extra.set("1", std::move(st));
  }
  return sd;
}

/// The paths `make_nested` must record.
flatten_mapping expected_nested() {
  using p = path_element;
  flatten_mapping m;
  m["step"] = {"step"};
  m["model.w"] = {"model", "w"};
  m["optim.state.w.exp_avg"] = {"optim", "state", "w", "exp_avg"};
  for (uint64_t g = 0; g < 2; ++g) {
    auto at = "optim.param_groups." + std::to_string(g) + ".";
    m[at + "lr"] = {"optim", "param_groups", p::position(g), "lr"};
    m[at + "buffers.0"] = {"optim", "param_groups", p::position(g), "buffers",
                           p::position(0)};
    m[at + "buffers.1"] = {"optim", "param_groups", p::position(g), "buffers",
                           p::position(1)};
  }
  return m;
}

checkpointer
make_checkpointer(const std::string& dir,
                  metadata_flavor flavor = metadata_flavor::torch_2) {
  checkpointer_options opts;
  opts.no_dist = true;
  filesystem_writer_options wopts;
  wopts.flavor = flavor;
  return checkpointer{make_filesystem_writer(dir, wopts),
                      make_filesystem_reader(dir), opts};
}

/// `.metadata` of `dir`, decoded from the file's bytes.
metadata metadata_on_disk(const std::string& dir) {
  auto md = decode_metadata(fs_test::read_file(dir + "/.metadata"));
  INFO(dir << ": " << (md ? "" : describe(md.error())));
  REQUIRE(md);
  return *md;
}

/// `Metadata.planner_data` of `dir`'s `.metadata` as pickled: a dict (not
/// None) whose values are tuples.
pickle::value_ptr raw_planner_data(const std::string& dir) {
  auto root = pickle::read(fs_test::read_file(dir + "/.metadata"));
  REQUIRE(root);
  REQUIRE((*root)->state);
  auto pd = (*root)->state->get("planner_data");
  REQUIRE(pd);
  return pd;
}

/// One line per key, "key -> ('path', 0, ...)": list positions unquoted.
std::string describe_mapping(const flatten_mapping& m) {
  std::string out;
  for (const auto& [key, path] : m)
    out += key + " -> " + to_string(path) + "\n";
  return out;
}

} // namespace

TEST_CASE("every staging path records the paths a synchronous save records",
          "[structure]") {
  fs_test::temp_dir dir;
  auto cp = make_checkpointer(dir.path());
  auto sd = make_nested();
  auto saved = cp.save(sd, dir / "sync");
  INFO((saved ? "" : describe(saved.error())));
  REQUIRE(saved);
  auto sync = metadata_on_disk(dir / "sync");
  CHECK(describe_mapping(sync.planner_data)
        == describe_mapping(expected_nested()));

  // async_save: the checkpointer's staging pool.
  auto fut = cp.async_save(sd, dir / "async");
  auto res = fut.get();
  INFO((res ? "" : describe(res.error())));
  REQUIRE(res);
  // A staging pool's copy, saved synchronously.
  staging_pool pool;
  auto staged = pool.stage(sd);
  REQUIRE(staged);
  REQUIRE(cp.save(*staged, dir / "pool"));
  // stage_to_host's copy.
  REQUIRE(cp.save(stage_to_host(sd), dir / "host"));

  for (const char* name : {"async", "pool", "host"}) {
    auto md = metadata_on_disk(dir / name);
    INFO(name);
    CHECK(describe_mapping(md.planner_data)
          == describe_mapping(sync.planner_data));
    CHECK((md.state_dict_metadata == sync.state_dict_metadata));
  }
}

TEST_CASE("map_tensors keeps every list marker and only replaces tensors",
          "[structure]") {
  auto sd = make_nested();
  size_t calls = 0;
  auto copy = map_tensors(sd, [&](const at::Tensor& t) {
    ++calls;
    return t.to(at::kFloat).add(1);
  });
  // model.w, exp_avg, and per group a plain tensor and two shards.
  CHECK(calls == 2 + 2 * 3);
  auto flat = flatten(copy);
  REQUIRE(flat);
  CHECK(describe_mapping(flat->mapping) == describe_mapping(expected_nested()));
  auto* lr = copy.find_path({"optim", "param_groups", "1", "lr"});
  REQUIRE(lr);
  CHECK(std::get<bytes_value>(*lr).to_double() == 0.2);
  auto* st = copy.find_path({"optim", "param_groups", "0", "buffers", "1"});
  REQUIRE(st);
  const auto& shard = std::get<sharded_tensor>(*st);
  CHECK(shard.global_size == shape_t{4, 2});
  REQUIRE(shard.local_shards.size() == 2);
  CHECK(shard.local_shards[1].offsets == shape_t{2, 0});
  CHECK(shard.local_shards[0].tensor.scalar_type() == at::kFloat);
  std::vector<std::string> names;
  for_each_tensor(copy, [&](const std::string& name, const at::Tensor&) {
    names.push_back(name);
  });
  CHECK(names
        == std::vector<std::string>{
          "model.w", "optim.state.w.exp_avg", "optim.param_groups.0.buffers.0",
          "optim.param_groups.0.buffers.1 (shard 0)",
          "optim.param_groups.0.buffers.1 (shard 1)",
          "optim.param_groups.1.buffers.0",
          "optim.param_groups.1.buffers.1 (shard 0)",
          "optim.param_groups.1.buffers.1 (shard 1)"});
}

TEST_CASE("a flat state dict records every key in planner_data, both "
          "flavors",
          "[structure]") {
  fs_test::temp_dir dir;
  state_dict sd;
  sd.set("weight", at::arange(6, at::kFloat));
  sd.set("bias", at::zeros({2}, at::kHalf));
  sd.set("epoch", bytes_value::from_int(3));
  flatten_mapping expected;
  for (const char* key : {"weight", "bias", "epoch"})
    expected[key] = {key};
  for (auto flavor : {metadata_flavor::torch_2, metadata_flavor::torch_1_13}) {
    auto name = to_string(flavor);
    INFO(name);
    auto cp = make_checkpointer(dir / name, flavor);
    REQUIRE(cp.save(sd));
    auto md = metadata_on_disk(dir / name);
    CHECK(describe_mapping(md.planner_data) == describe_mapping(expected));
    // As PyTorch pickles it: {fqn: (fqn,)}, not None.
    auto pd = raw_planner_data(dir / name);
    REQUIRE(pd->is(pickle::kind::dict));
    REQUIRE(pd->items.size() == 2 * expected.size());
    for (size_t i = 0; i < pd->items.size(); i += 2) {
      const auto& key = pd->items[i];
      const auto& path = pd->items[i + 1];
      REQUIRE(key->is(pickle::kind::string));
      REQUIRE(path->is(pickle::kind::tuple));
      REQUIRE(path->items.size() == 1);
      CHECK(path->items[0]->is(pickle::kind::string));
      CHECK(path->items[0]->s == key->s);
    }
    // And it loads back by the recorded paths, flat.
    auto fresh = make_state_dict_for(md);
    CHECK(fresh.size() == 3);
    REQUIRE_FALSE(cp.load(fresh));
    CHECK(at::equal(std::get<at::Tensor>(*fresh.find("weight")),
                    at::arange(6, at::kFloat)));
  }
}

TEST_CASE("a checkpoint whose planner_data is None still loads",
          "[structure]") {
  fs_test::temp_dir dir;
  state_dict sd;
  sd.set("weight", at::arange(6, at::kFloat));
  sd.nested("optim").set("lr", bytes_value::from_double(0.5));
  auto cp = make_checkpointer(dir.path());
  REQUIRE(cp.save(sd));
  // Rewrite .metadata as dcpp wrote it before, and PyTorch 1.13 always:
  // planner_data None.
  auto md = metadata_on_disk(dir.path());
  md.planner_data.clear();
  {
    std::ofstream out{dir / ".metadata", std::ios::binary | std::ios::trunc};
    out << encode_metadata(md);
  }
  REQUIRE(raw_planner_data(dir.path())->is(pickle::kind::none));
  auto fresh = make_state_dict_for(metadata_on_disk(dir.path()));
  REQUIRE(fresh.find("optim.lr") != nullptr); // flat: no path recorded
  REQUIRE_FALSE(cp.load(fresh));
  CHECK(std::get<bytes_value>(*fresh.find("optim.lr")).to_double() == 0.5);
  // The original nesting loads too (keys are the same dotted keys).
  auto nested = sd;
  REQUIRE_FALSE(cp.load(nested));
}
