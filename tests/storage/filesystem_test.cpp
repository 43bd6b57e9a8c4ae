#include "storage/filesystem.hpp"

#include "core/error.hpp"
#include "core/fault.hpp"
#include "storage/host_memory.hpp"
#include "storage/landing.hpp"
#include "storage/metadata_codec.hpp"
#include "storage/state_dict.hpp"
#include "storage/tensor_codec.hpp"
#include "tests/storage/fs_test_util.hpp"
#include "tests/support/skip.hpp"

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

using namespace dcpp;
using namespace dcpp::fs_test;

namespace {

// -- a tiny in-test state dict ------------------------------------------------

/// Serves tensors by (fqn, chunk offset) and bytes by fqn.
class map_source : public item_source {
public:
  std::map<metadata_index, at::Tensor> tensors;
  std::map<std::string, std::string> blobs;

  caf::expected<at::Tensor> tensor(const write_item& item) const override {
    auto i = tensors.find(item.index);
    if (i == tensors.end())
      return make_error(errc::missing_key, to_string(item.index));
    return i->second;
  }

  caf::expected<std::string_view> bytes(const write_item& item) const override {
    auto i = blobs.find(item.index.fqn);
    if (i == blobs.end())
      return make_error(errc::missing_key, item.index.fqn);
    return std::string_view{i->second};
  }
};

/// Destinations by dest index; bytes by fqn.
class map_target : public load_target {
public:
  std::map<metadata_index, at::Tensor> tensors;
  std::map<std::string, std::string> blobs;
  std::mutex mx;

  caf::expected<at::Tensor> tensor(const read_item& item) override {
    auto i = tensors.find(item.dest_index);
    if (i == tensors.end())
      return make_error(errc::missing_key, to_string(item.dest_index));
    auto t = i->second;
    for (size_t d = 0; d < item.lengths.size(); ++d)
      t = t.narrow(static_cast<int64_t>(d), item.dest_offsets[d],
                   item.lengths[d]);
    return t;
  }

  caf::error set_bytes(const read_item& item, std::string data) override {
    std::lock_guard<std::mutex> guard{mx};
    blobs[item.dest_index.fqn] = std::move(data);
    return {};
  }
};

/// One rank's values: plain tensors / shards and bytes.
struct rank_values {
  struct tensor_entry {
    std::string fqn;
    at::Tensor tensor;
    shape_t offsets;
    shape_t global;
  };
  std::vector<tensor_entry> tensors;
  std::vector<std::pair<std::string, std::string>> blobs;

  void plain(std::string fqn, at::Tensor t) {
    auto sizes = t.sizes().vec();
    tensors.push_back({std::move(fqn), t, shape_t(sizes.size(), 0), sizes});
  }

  void shard(std::string fqn, at::Tensor t, shape_t offsets, shape_t global) {
    tensors.push_back(
      {std::move(fqn), t, std::move(offsets), std::move(global)});
  }
};

dtype dtype_for(const at::Tensor& t) {
  auto x = to_dtype(t.scalar_type());
  FS_REQUIRE(x);
  return *x;
}

/// Everything a save produces in one process: plans, sources, metadata.
struct save_setup {
  std::vector<save_plan> local_plans;
  std::vector<map_source> sources;
  metadata md;
};

save_setup make_setup(const std::vector<rank_values>& ranks) {
  save_setup s;
  s.sources.resize(ranks.size());
  for (size_t r = 0; r < ranks.size(); ++r) {
    save_plan plan;
    for (const auto& [fqn, data] : ranks[r].blobs) {
      write_item item;
      item.index = metadata_index{fqn};
      item.type = write_item_type::bytes;
      item.bytes_size = data.size();
      plan.items.push_back(item);
      s.sources[r].blobs[fqn] = data;
      s.md.state_dict_metadata[fqn] = item_metadata::bytes();
    }
    for (const auto& e : ranks[r].tensors) {
      auto& entry = s.md.state_dict_metadata[e.fqn];
      entry.kind = item_kind::tensor;
      entry.tensor.properties.type = dtype_for(e.tensor);
      entry.tensor.size = e.global;
      auto hint = static_cast<int64_t>(entry.tensor.chunks.size());
      entry.tensor.chunks.push_back({e.offsets, e.tensor.sizes().vec()});
      write_item item;
      item.index = metadata_index{e.fqn, e.offsets, hint};
      item.type = e.offsets == shape_t(e.offsets.size(), 0)
                      && e.global == e.tensor.sizes().vec()
                    ? write_item_type::tensor
                    : write_item_type::shard;
      item.tensor_data.chunk = {e.offsets, e.tensor.sizes().vec()};
      item.tensor_data.properties = entry.tensor.properties;
      item.tensor_data.size = e.global;
      plan.items.push_back(item);
      s.sources[r].tensors[item.index] = e.tensor;
    }
    s.local_plans.push_back(std::move(plan));
  }
  return s;
}

/// Runs the whole save protocol for all ranks in this process.
caf::error save_all(const std::string& dir,
                    const filesystem_writer_options& opts,
                    const std::vector<rank_values>& ranks,
                    std::vector<storage_writer_ptr>* writers_out = nullptr) {
  auto s = make_setup(ranks);
  std::vector<storage_writer_ptr> writers;
  for (size_t r = 0; r < ranks.size(); ++r) {
    writers.push_back(make_filesystem_writer(dir, opts));
    if (auto err = writers[r]->set_up(r == 0, static_cast<int32_t>(r)))
      return err;
  }
  std::vector<save_plan> local;
  for (size_t r = 0; r < ranks.size(); ++r) {
    auto p = writers[r]->prepare_local_plan(s.local_plans[r]);
    if (!p)
      return p.error();
    local.push_back(*p);
  }
  auto central = writers[0]->prepare_global_plan(local);
  if (!central)
    return central.error();
  std::vector<std::vector<write_result>> results;
  for (size_t r = 0; r < ranks.size(); ++r) {
    auto res = writers[r]->write_data((*central)[r], s.sources[r]);
    if (!res)
      return res.error();
    results.push_back(*res);
  }
  if (writers_out)
    *writers_out = writers;
  return writers[0]->finish(s.md, results);
}

/// A load plan reading every chunk of `fqns` into whole destinations named
/// (fqn, zeros) plus every bytes item.
load_plan full_load_plan(const metadata& md) {
  load_plan plan;
  for (const auto& [fqn, item] : md.state_dict_metadata) {
    read_item r;
    if (item.kind == item_kind::bytes) {
      r.type = load_item_type::bytes;
      r.dest_index = metadata_index{fqn};
      r.storage_index = metadata_index{fqn};
      r.dest_offsets = {0};
      r.storage_offsets = {0};
      r.lengths = {0};
      plan.items.push_back(r);
      continue;
    }
    shape_t zeros(item.tensor.size.size(), 0);
    for (size_t j = 0; j < item.tensor.chunks.size(); ++j) {
      const auto& c = item.tensor.chunks[j];
      r.type = load_item_type::tensor;
      r.dest_index = metadata_index{fqn, zeros, 0};
      r.dest_offsets = c.offsets;
      r.storage_index = metadata_index{fqn, c.offsets, static_cast<int64_t>(j)};
      r.storage_offsets = shape_t(c.offsets.size(), 0);
      r.lengths = c.sizes;
      plan.items.push_back(r);
    }
  }
  return plan;
}

/// Makes a destination tensor of a shape and dtype (default: at::full).
using make_destination
  = std::function<at::Tensor(const shape_t&, at::ScalarType)>;

/// Destinations for `full_load_plan`, filled with a marker value.
void add_destinations(const metadata& md, map_target& target,
                      const make_destination& make = {}) {
  for (const auto& [fqn, item] : md.state_dict_metadata) {
    if (item.kind != item_kind::tensor)
      continue;
    shape_t zeros(item.tensor.size.size(), 0);
    auto type = to_scalar_type(item.tensor.properties.type);
    auto t = make ? make(item.tensor.size, type)
                  : at::empty(item.tensor.size, type);
    target.tensors[metadata_index{fqn, zeros}] = t.fill_(99);
  }
}

caf::error load_all(const std::string& dir,
                    const filesystem_reader_options& opts, map_target& target,
                    metadata* md_out = nullptr,
                    const make_destination& make = {}) {
  auto reader = make_filesystem_reader(dir, opts);
  auto md = reader->read_metadata();
  if (!md)
    return md.error();
  if (auto err = reader->set_up(*md, true, 0))
    return err;
  add_destinations(*md, target, make);
  auto plan = reader->prepare_local_plan(full_load_plan(*md));
  if (!plan)
    return plan.error();
  if (md_out)
    *md_out = *md;
  return reader->read_data(*plan, target);
}

std::set<std::string> list_dir(const std::string& dir) {
  std::set<std::string> out;
  if (auto d = ::opendir(dir.c_str())) {
    while (auto e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..")
        out.insert(name);
    }
    ::closedir(d);
  }
  return out;
}

/// A data file name without its save tag: "__0_1.<tag>.distcp" ->
/// "__0_1.distcp".
std::string untag(const std::string& name) {
  auto last = name.rfind(".distcp");
  if (last == std::string::npos || last == 0)
    return name;
  auto dot = name.rfind('.', last - 1);
  if (dot == std::string::npos || dot + 1 == last)
    return name;
  return name.substr(0, dot) + name.substr(last);
}

/// The save tag of a data file name ("" without one).
std::string tag_of(const std::string& name) {
  auto stripped = untag(name);
  if (stripped == name)
    return {};
  return name.substr(stripped.size() - 7 + 1,
                     name.size() - stripped.size() - 1);
}

std::set<std::string> untag(const std::set<std::string>& names) {
  std::set<std::string> out;
  for (const auto& name : names)
    out.insert(untag(name));
  return out;
}

/// The data file whose untagged name is `name` (e.g. "__1_0.distcp").
std::string data_file(const std::string& dir, const std::string& name) {
  for (const auto& x : list_dir(dir))
    if (untag(x) == name)
      return dir + "/" + x;
  return dir + "/" + name;
}

at::Tensor key(map_target& t, const std::string& fqn, size_t ndim) {
  return t.tensors.at(metadata_index{fqn, shape_t(ndim, 0)});
}

/// Two ranks: rank 0 has plain tensors of every dtype and bytes, both ranks
/// hold a row shard of "st".
std::vector<rank_values> two_ranks() {
  std::vector<rank_values> ranks(2);
  auto& r0 = ranks[0];
  r0.plain("f32", at::arange(6, at::kFloat).reshape({2, 3}));
  r0.plain("bf16", at::arange(4, at::kFloat).to(at::kBFloat16));
  r0.plain("i64", at::tensor(std::vector<int64_t>{7, -1, int64_t{1} << 40}));
  r0.plain("f64_scalar", at::scalar_tensor(3.5, at::kDouble));
  r0.plain("f32_t", at::arange(12, at::kFloat).reshape({3, 4}).t());
  r0.plain("view", at::arange(10, at::kFloat).narrow(0, 2, 3));
  r0.plain("cols", at::arange(20, at::kInt).reshape({4, 5}).narrow(1, 1, 2));
  r0.plain("f16", at::arange(7, at::kFloat).to(at::kHalf));
  r0.plain("i32", at::arange(-2, 2, at::kInt));
  r0.plain("i16", at::arange(-2, 2, at::kShort));
  r0.plain("i8", at::arange(-2, 2, at::kChar));
  r0.plain("u8", at::arange(0, 200, 9, at::kByte));
  r0.plain("bool", at::arange(5).remainder(2).eq(0));
  r0.plain("c64", at::complex(at::arange(3, at::kFloat), at::ones({3})));
  r0.plain("c128",
           at::complex(at::arange(2, at::kDouble), at::ones({2}, at::kDouble)));
  r0.plain("big", at::randn({512, 1024}, at::kFloat)); // 2 MiB
  r0.plain("empty", at::zeros({0, 4}, at::kFloat));
  r0.blobs.emplace_back("epoch", "epoch-bytes");
  r0.blobs.emplace_back("cfg", std::string(1000, 'c'));
  auto st = at::arange(12, at::kFloat).reshape({4, 3}) + 0.5;
  r0.shard("st", st.narrow(0, 0, 2), {0, 0}, {4, 3});
  ranks[1].shard("st", st.narrow(0, 2, 2), {2, 0}, {4, 3});
  return ranks;
}

void check_two_ranks(map_target& t) {
  auto ranks = two_ranks();
  for (const auto& e : ranks[0].tensors) {
    if (e.fqn == "st" || e.fqn == "big")
      continue;
    INFO(e.fqn);
    CHECK(key(t, e.fqn, e.global.size()).equal(e.tensor));
  }
  auto st = at::arange(12, at::kFloat).reshape({4, 3}) + 0.5;
  CHECK(key(t, "st", 2).equal(st));
  CHECK(t.blobs.at("epoch") == "epoch-bytes");
  CHECK(t.blobs.at("cfg") == std::string(1000, 'c'));
}

} // namespace

TEST_CASE("round trip: single file per rank on and off, 1 and 3 threads",
          "[filesystem]") {
  for (bool single : {true, false})
    for (size_t threads : {size_t{1}, size_t{3}}) {
      INFO("single_file_per_rank " << single << " thread_count " << threads);
      temp_dir tmp;
      auto dir = tmp / "ckpt";
      filesystem_writer_options wopts;
      wopts.single_file_per_rank = single;
      wopts.thread_count = threads;
      auto ranks = two_ranks();
      // The random tensor must be the same when checking: keep it.
      auto big = ranks[0].tensors[15].tensor;
      FS_REQUIRE(save_all(dir, wopts, ranks));
      auto files = list_dir(dir);
      CHECK(files.count(".metadata") == 1);
      CHECK(files.count(".metadata.tmp") == 0);
      size_t rank0_items = ranks[0].tensors.size() + ranks[0].blobs.size();
      std::set<std::string> expected{".metadata"};
      if (single) {
        for (size_t n = 0; n < threads; ++n) {
          expected.insert("__0_" + std::to_string(n) + ".distcp");
          expected.insert("__1_" + std::to_string(n) + ".distcp");
        }
      } else {
        for (size_t n = 0; n < rank0_items; ++n)
          expected.insert("__0_" + std::to_string(n) + ".distcp");
        expected.insert("__1_0.distcp");
      }
      // Data files carry the save's tag, one for all ranks and files.
      CHECK(untag(files) == expected);
      std::set<std::string> tags;
      for (const auto& name : files)
        if (name != ".metadata")
          tags.insert(tag_of(name));
      CHECK(tags.size() == 1);
      CHECK(tags.count("") == 0);
      for (size_t reader_threads : {size_t{1}, size_t{3}}) {
        map_target target;
        filesystem_reader_options ropts;
        ropts.thread_count = reader_threads;
        metadata md;
        FS_REQUIRE(load_all(dir, ropts, target, &md));
        check_two_ranks(target);
        CHECK(key(target, "big", 2).equal(big));
        for (const auto& [idx, info] : md.storage_data)
          CHECK(info.checksum.rfind("xxh64:", 0) == 0);
      }
    }
}

TEST_CASE("per-item layout numbers files in plan order, bytes and tensors",
          "[filesystem]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  filesystem_writer_options wopts;
  wopts.single_file_per_rank = false;
  wopts.flavor = metadata_flavor::torch_1_13;
  auto ranks = two_ranks();
  FS_REQUIRE(save_all(dir, wopts, ranks));
  auto md = decode_metadata(read_file(dir + "/.metadata"));
  FS_REQUIRE(md);
  // Plan order: bytes items first (as make_setup builds the plan), then
  // tensors; every item alone in its file at offset 0.
  CHECK(untag(md->storage_data.at(metadata_index{"epoch"}).relative_path)
        == "__0_0.distcp");
  CHECK(untag(md->storage_data.at(metadata_index{"cfg"}).relative_path)
        == "__0_1.distcp");
  CHECK(untag(md->storage_data.at(metadata_index{"f32", {0, 0}}).relative_path)
        == "__0_2.distcp");
  CHECK(untag(md->storage_data.at(metadata_index{"st", {2, 0}}).relative_path)
        == "__1_0.distcp");
  for (const auto& [idx, info] : md->storage_data)
    CHECK(info.offset == 0);
}

TEST_CASE("single file per rank: bytes first, then tensors", "[filesystem]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  FS_REQUIRE(save_all(dir, {}, two_ranks()));
  auto md = decode_metadata(read_file(dir + "/.metadata"));
  FS_REQUIRE(md);
  CHECK(md->storage_data.at(metadata_index{"epoch"}).offset == 0);
  auto cfg = md->storage_data.at(metadata_index{"cfg"});
  CHECK(cfg.offset == std::string{"epoch-bytes"}.size());
  for (const auto& [idx, info] : md->storage_data)
    if (idx.has_offset && untag(info.relative_path) == "__0_0.distcp")
      CHECK(info.offset >= cfg.offset + cfg.length);
  // Items tile the file exactly.
  uint64_t total = 0;
  for (const auto& [idx, info] : md->storage_data)
    if (untag(info.relative_path) == "__0_0.distcp")
      total += info.length;
  CHECK(total == read_file(data_file(dir, "__0_0.distcp")).size());
}

TEST_CASE(".metadata appears only after finish", "[filesystem][durability]") {
  temp_dir tmp;
  auto dir = tmp / "a/b";
  auto ranks = two_ranks();
  auto s = make_setup(ranks);
  auto w = make_filesystem_writer(dir);
  FS_REQUIRE(w->set_up(true, 0));
  CHECK(exists(dir));
  auto local = w->prepare_local_plan(s.local_plans[0]);
  FS_REQUIRE(local);
  auto central = w->prepare_global_plan({*local, s.local_plans[1]});
  FS_REQUIRE(central);
  // Prefix and the save's tag, the same for every rank.
  auto tag0 = (*central)[0].storage_data.substr(5);
  CHECK((*central)[0].storage_data.substr(0, 5) == "__0_\t");
  CHECK((*central)[1].storage_data == "__1_\t" + tag0);
  CHECK(tag0.size() == 16);
  auto r0 = w->write_data((*central)[0], s.sources[0]);
  FS_REQUIRE(r0);
  auto w1 = make_filesystem_writer(dir);
  FS_REQUIRE(w1->set_up(false, 1));
  auto r1 = w1->write_data((*central)[1], s.sources[1]);
  FS_REQUIRE(r1);
  CHECK(exists(dir + "/__0_0." + tag0 + ".distcp"));
  CHECK(!exists(dir + "/.metadata"));
  // A reader sees no checkpoint yet.
  auto reader = make_filesystem_reader(dir);
  CHECK(code_of(reader->read_metadata().error()) == errc::not_found);
  FS_REQUIRE(w->finish(s.md, {*r0, *r1}));
  CHECK(exists(dir + "/.metadata"));
  CHECK(!exists(dir + "/.metadata.tmp"));
  CHECK(ok(reader->read_metadata()));
  // A new save into the same directory keeps the old commit until its own.
  auto again = make_filesystem_writer(dir);
  FS_REQUIRE(again->set_up(true, 0));
  CHECK(exists(dir + "/.metadata"));
  CHECK(ok(reader->read_metadata()));
}

TEST_CASE("abort removes the files of the current save", "[filesystem]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  auto s = make_setup(two_ranks());
  filesystem_writer_options opts;
  opts.thread_count = 2;
  auto w = make_filesystem_writer(dir, opts);
  FS_REQUIRE(w->set_up(true, 0));
  auto central = w->prepare_global_plan(s.local_plans);
  FS_REQUIRE(central);
  FS_REQUIRE(w->write_data((*central)[0], s.sources[0]));
  // Two data files and the coordinator's directory lock.
  CHECK(list_dir(dir).size() == 3);
  CHECK(list_dir(dir).count(".dcpp.lock") == 1);
  w->abort();
  CHECK(list_dir(dir).empty());
}

TEST_CASE("abort after the commit keeps the checkpoint", "[filesystem]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  std::vector<storage_writer_ptr> writers;
  FS_REQUIRE(save_all(dir, {}, two_ranks(), &writers));
  for (auto& w : writers)
    w->abort();
  map_target target;
  FS_REQUIRE(load_all(dir, {}, target));
  check_two_ranks(target);
}

TEST_CASE("finish refuses a checkpoint with unwritten chunks", "[filesystem]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  auto s = make_setup(two_ranks());
  auto w = make_filesystem_writer(dir);
  FS_REQUIRE(w->set_up(true, 0));
  auto central = w->prepare_global_plan(s.local_plans);
  FS_REQUIRE(central);
  auto r0 = w->write_data((*central)[0], s.sources[0]);
  FS_REQUIRE(r0);
  auto err = w->finish(s.md, {*r0}); // rank 1's shard is missing
  CHECK(code_of(err) == errc::missing_key);
  CHECK(context_of(err).find("st") != std::string::npos);
  CHECK(!exists(dir + "/.metadata"));
}

TEST_CASE("split plans write disjoint files from concurrent threads",
          "[filesystem]") {
  for (bool single : {true, false}) {
    INFO("single_file_per_rank " << single);
    temp_dir tmp;
    auto dir = tmp / "ckpt";
    auto ranks = two_ranks();
    auto s = make_setup(ranks);
    filesystem_writer_options opts;
    opts.single_file_per_rank = single;
    auto w = make_filesystem_writer(dir, opts);
    FS_REQUIRE(w->set_up(true, 0));
    auto central = w->prepare_global_plan(s.local_plans);
    FS_REQUIRE(central);
    std::vector<std::vector<write_result>> results(2);
    for (size_t r = 0; r < 2; ++r) {
      auto parts = w->split_plan((*central)[r], 4);
      if (single)
        CHECK(parts.size() == 4);
      else
        CHECK(parts.size() <= std::min<size_t>(4, (*central)[r].items.size()));
      size_t items = 0;
      for (const auto& p : parts)
        items += p.items.size();
      CHECK(items == (*central)[r].items.size());
      std::vector<caf::expected<std::vector<write_result>>> out(
        parts.size(), std::vector<write_result>{});
      std::vector<std::thread> threads;
      for (size_t i = 0; i < parts.size(); ++i)
        threads.emplace_back(
          [&, i] { out[i] = w->write_data(parts[i], s.sources[r]); });
      for (auto& t : threads)
        t.join();
      std::set<std::string> files_seen;
      for (size_t i = 0; i < parts.size(); ++i) {
        FS_REQUIRE(out[i]);
        std::set<std::string> mine;
        for (const auto& res : *out[i]) {
          mine.insert(res.storage_data.relative_path);
          results[r].push_back(res);
        }
        for (const auto& f : mine)
          CHECK(files_seen.insert(f).second); // no file shared by two parts
      }
    }
    FS_REQUIRE(w->finish(s.md, results));
    map_target target;
    FS_REQUIRE(load_all(dir, {}, target));
    check_two_ranks(target);
  }
}

TEST_CASE("reader split keeps reads of one item together", "[filesystem]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  FS_REQUIRE(save_all(dir, {}, two_ranks()));
  auto reader = make_filesystem_reader(dir);
  auto md = reader->read_metadata();
  FS_REQUIRE(md);
  FS_REQUIRE(reader->set_up(*md, true, 0));
  auto plan = full_load_plan(*md);
  // A second read of f32 into another destination.
  read_item extra = plan.items.front();
  for (const auto& r : plan.items)
    if (r.storage_index.fqn == "f32")
      extra = r;
  extra.dest_index = metadata_index{"f32_copy", {0, 0}, 0};
  plan.items.push_back(extra);
  map_target target;
  add_destinations(*md, target);
  target.tensors[metadata_index{"f32_copy", {0, 0}}] = at::zeros({2, 3});
  auto parts = reader->split_plan(plan, 3);
  CHECK(parts.size() == 3);
  size_t total = 0;
  std::map<metadata_index, size_t> part_of;
  for (size_t i = 0; i < parts.size(); ++i)
    for (const auto& r : parts[i].items) {
      ++total;
      auto [it, fresh] = part_of.emplace(r.storage_index, i);
      CHECK(it->second == i);
    }
  CHECK(total == plan.items.size());
  std::vector<caf::error> errs(parts.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < parts.size(); ++i)
    threads.emplace_back(
      [&, i] { errs[i] = reader->read_data(parts[i], target); });
  for (auto& t : threads)
    t.join();
  for (const auto& e : errs)
    CHECK(!e);
  check_two_ranks(target);
  CHECK(key(target, "f32_copy", 2).equal(key(target, "f32", 2)));
}

TEST_CASE("every fixture checkpoint loads through the reader",
          "[filesystem][fixtures]") {
  for (auto ckpt : {"ckpt_113_per_item", "ckpt_113_per_rank",
                    "ckpt_cpp_written", "ckpt_cpp_written_v2meta"})
    for (size_t threads : {size_t{1}, size_t{2}}) {
      INFO(ckpt << " threads " << threads);
      map_target target;
      filesystem_reader_options opts;
      opts.thread_count = threads;
      metadata md;
      auto dir = fixture(ckpt);
      FS_REQUIRE(load_all(dir, opts, target, &md));
      bool cpp = std::string{ckpt}.find("cpp") != std::string::npos;
      CHECK(
        key(target, "f32", 2).equal(at::arange(6, at::kFloat).reshape({2, 3})));
      CHECK(key(target, "bf16", 1)
              .equal(at::tensor(std::vector<float>{1.5f, -2.f, 3.25f, 0.5f})
                       .to(at::kBFloat16)));
      CHECK(
        key(target, "i64", 1)
          .equal(at::tensor(std::vector<int64_t>{7, -1, int64_t{1} << 40})));
      CHECK(key(target, "f64_scalar", 0).item<double>() == 3.5);
      CHECK(key(target, "f32_t", 2)
              .equal(at::arange(12, at::kFloat).reshape({3, 4}).t()));
      auto st = key(target, "st", 2);
      if (cpp) {
        auto f = at::arange(6, at::kFloat).reshape({2, 3});
        CHECK(st.equal(at::cat({f, f})));
        CHECK(key(target, "view", 1)
                .equal(at::tensor(std::vector<float>{2.f, 3.f, 4.f})));
      } else {
        CHECK(st.equal(at::arange(12, at::kFloat).reshape({4, 3}) + 0.5));
      }
      // Bytes items are the raw torch.save archives.
      for (const auto& [fqn, item] : md.state_dict_metadata) {
        if (item.kind != item_kind::bytes)
          continue;
        const auto& info = md.storage_data.at(metadata_index{fqn});
        auto file = read_file(dir + "/" + info.relative_path);
        CHECK(target.blobs.at(fqn) == file.substr(info.offset, info.length));
        CHECK(target.blobs.at(fqn).substr(0, 4) == std::string{"PK\x03\x04"});
      }
    }
}

TEST_CASE("resharding reads: a column box out of row shards",
          "[filesystem][fixtures]") {
  // The worked example of the spec: rank 1 loads columns [2, 3) of "st".
  auto reader = make_filesystem_reader(fixture("ckpt_113_per_rank"));
  auto md = reader->read_metadata();
  FS_REQUIRE(md);
  FS_REQUIRE(reader->set_up(*md, false, 1));
  load_plan plan;
  read_item a;
  a.dest_index = metadata_index{"st", {0, 2}, 0};
  a.storage_index = metadata_index{"st", {0, 0}, 0};
  a.storage_offsets = {0, 2};
  a.dest_offsets = {0, 0};
  a.lengths = {2, 1};
  read_item b = a;
  b.storage_index = metadata_index{"st", {2, 0}, 1};
  b.dest_offsets = {2, 0};
  plan.items = {a, b};
  map_target target;
  auto dest = at::zeros({4, 1}, at::kFloat);
  target.tensors[metadata_index{"st", {0, 2}}] = dest;
  FS_REQUIRE(reader->read_data(plan, target));
  auto st = at::arange(12, at::kFloat).reshape({4, 3}) + 0.5;
  CHECK(dest.equal(st.narrow(1, 2, 1)));
}

TEST_CASE("PyTorch DCP 1.13 loads checkpoints dcpp wrote",
          "[filesystem][python]") {
  std::string checker = std::string{DCPP_SOURCE_DIR}
                        + "/scripts/interop/check_metadata_with_torch.py";
  if (!exists(checker))
    DCPP_SKIP("no " << checker);
  if (!have_torch_python())
    DCPP_SKIP(torch_python() << " cannot import torch");
  // The fixture's state dict; bytes items are its torch.save archives.
  auto fixture_file = read_file(fixture("ckpt_113_per_rank") + "/__0_0.distcp");
  std::vector<rank_values> ranks(2);
  auto& r0 = ranks[0];
  r0.plain("f32", at::arange(6, at::kFloat).reshape({2, 3}));
  r0.plain(
    "bf16",
    at::tensor(std::vector<float>{1.5f, -2.f, 3.25f, 0.5f}).to(at::kBFloat16));
  r0.plain("i64", at::tensor(std::vector<int64_t>{7, -1, int64_t{1} << 40}));
  r0.plain("f64_scalar", at::scalar_tensor(3.5, at::kDouble));
  r0.plain("f32_t", at::arange(12, at::kFloat).reshape({3, 4}).t());
  r0.blobs.emplace_back("epoch", fixture_file.substr(0, 431));
  r0.blobs.emplace_back("cfg", fixture_file.substr(431, 431));
  auto st = at::arange(12, at::kFloat).reshape({4, 3}) + 0.5;
  r0.shard("st", st.narrow(0, 0, 2), {0, 0}, {4, 3});
  ranks[1].shard("st", st.narrow(0, 2, 2), {2, 0}, {4, 3});
  for (bool single : {true, false})
    for (size_t threads : {size_t{1}, size_t{3}}) {
      INFO("single_file_per_rank " << single << " thread_count " << threads);
      temp_dir tmp;
      auto dir = tmp / "ckpt";
      filesystem_writer_options opts;
      opts.flavor = metadata_flavor::torch_1_13;
      opts.single_file_per_rank = single;
      opts.thread_count = threads;
      FS_REQUIRE(save_all(dir, opts, ranks));
      auto res = run_command(std::string{torch_python()} + " -B " + checker
                             + " load " + dir);
      INFO(res.output);
      if (res.status == 77)
        DCPP_SKIP(res.output);
      CHECK(res.status == 0);
      CHECK(res.output.find("PASS epoch cfg") != std::string::npos);
    }
}

TEST_CASE("bad inputs fail with named errors", "[filesystem][errors]") {
  temp_dir tmp;
  SECTION("missing directory") {
    auto r = make_filesystem_reader(tmp / "nope");
    auto md = r->read_metadata();
    REQUIRE(!md);
    CHECK(code_of(md.error()) == errc::not_found);
    CHECK(context_of(md.error()).find(tmp / "nope") != std::string::npos);
  }
  SECTION("directory without .metadata") {
    auto md = make_filesystem_reader(tmp.path())->read_metadata();
    REQUIRE(!md);
    CHECK(code_of(md.error()) == errc::not_found);
  }
  SECTION("truncated .metadata") {
    auto dir = tmp / "ckpt";
    FS_REQUIRE(save_all(dir, {}, two_ranks()));
    auto bytes = read_file(dir + "/.metadata");
    write_file(dir + "/.metadata", bytes.substr(0, bytes.size() / 2));
    auto md = make_filesystem_reader(dir)->read_metadata();
    REQUIRE(!md);
    CHECK(code_of(md.error()) == errc::corrupt_metadata);
    CHECK(context_of(md.error()).find(".metadata") != std::string::npos);
  }
  SECTION(".metadata beyond 1 GiB") {
    auto dir = tmp / "ckpt";
    FS_REQUIRE(save_all(dir, {}, two_ranks()));
    REQUIRE(::truncate((dir + "/.metadata").c_str(), (off_t{1} << 30) + 1)
            == 0);
    auto md = make_filesystem_reader(dir)->read_metadata();
    REQUIRE(!md);
    CHECK(code_of(md.error()) == errc::too_large);
  }
  SECTION("data file shorter than its items") {
    auto dir = tmp / "ckpt";
    FS_REQUIRE(save_all(dir, {}, two_ranks()));
    auto file = data_file(dir, "__1_0.distcp");
    auto bytes = read_file(file);
    write_file(file, bytes.substr(0, bytes.size() - 10));
    auto r = make_filesystem_reader(dir);
    auto md = r->read_metadata();
    FS_REQUIRE(md);
    auto err = r->set_up(*md, true, 0);
    CHECK(code_of(err) == errc::corrupt_item);
    CHECK(context_of(err).find("__1_0.") != std::string::npos);
    CHECK(context_of(err).find("st@[2, 0]") != std::string::npos);
  }
  SECTION("relative paths leaving the directory") {
    auto dir = tmp / "ckpt";
    FS_REQUIRE(save_all(dir, {}, two_ranks()));
    auto r = make_filesystem_reader(dir);
    auto md = r->read_metadata();
    FS_REQUIRE(md);
    for (auto bad : {"../x", "/etc/passwd", "..", "", "sub/file"}) {
      INFO(bad);
      auto copy = *md;
      copy.storage_data.at(metadata_index{"f32", {0, 0}}).relative_path = bad;
      auto err = r->set_up(copy, true, 0);
      CHECK(code_of(err) == errc::path_escape);
      CHECK(context_of(err).find(std::string{"'"} + bad + "'")
            != std::string::npos);
    }
  }
  SECTION("a flipped byte is a checksum mismatch naming the key") {
    auto dir = tmp / "ckpt";
    FS_REQUIRE(save_all(dir, {}, two_ranks()));
    auto md = decode_metadata(read_file(dir + "/.metadata"));
    FS_REQUIRE(md);
    for (auto fqn : {"f32", "big"}) {
      INFO(fqn);
      const auto& info = md->storage_data.at(metadata_index{fqn, {0, 0}});
      auto path = dir + "/" + info.relative_path;
      auto bytes = read_file(path);
      // In the middle of the data record.
      auto item = bytes.substr(info.offset, info.length);
      auto layout = tensor_item_reader::open_memory(item, fqn);
      FS_REQUIRE(layout);
      auto pos = info.offset + layout->layout().data_offset
                 + layout->layout().data_size / 2;
      bytes[pos] = static_cast<char>(bytes[pos] ^ 0x01);
      write_file(path, bytes);
      map_target target;
      auto err = load_all(dir, {}, target);
      CHECK(code_of(err) == errc::checksum_mismatch);
      CHECK(context_of(err).find(std::string{fqn} + "@[0, 0]")
            != std::string::npos);
      CHECK(context_of(err).find(info.relative_path) != std::string::npos);
      // Without verification the load goes through.
      map_target unchecked;
      filesystem_reader_options opts;
      opts.verify_checksums = false;
      CHECK(!load_all(dir, opts, unchecked));
      bytes[pos] = static_cast<char>(bytes[pos] ^ 0x01);
      write_file(path, bytes);
    }
    // A byte outside the tensor data (the version record) is caught too.
    const auto& info = md->storage_data.at(metadata_index{"i64", {0}});
    auto path = dir + "/" + info.relative_path;
    auto bytes = read_file(path);
    auto version = bytes.find("3\nPK\x07\x08", info.offset);
    REQUIRE(version != std::string::npos);
    bytes[version] = '4';
    write_file(path, bytes);
    map_target target;
    auto err = load_all(dir, {}, target);
    CHECK(code_of(err) == errc::checksum_mismatch);
    CHECK(context_of(err).find("i64") != std::string::npos);
  }
  SECTION("the checkpoint path is a file") {
    write_file(tmp / "file", "x");
    auto w = make_filesystem_writer(tmp / "file/ckpt");
    auto err = w->set_up(true, 0);
    CHECK(code_of(err) == errc::io_error);
    CHECK(context_of(err).find(tmp / "file") != std::string::npos);
  }
  SECTION("plans the writer refuses") {
    auto dir = tmp / "ckpt";
    auto ranks = two_ranks();
    auto s = make_setup(ranks);
    auto w = make_filesystem_writer(dir);
    FS_REQUIRE(w->set_up(true, 0));
    auto plan = s.local_plans[1];
    plan.storage_data = "../__1_";
    CHECK(code_of(w->write_data(plan, s.sources[1]).error())
          == errc::path_escape);
    plan.storage_data = "__1_";
    plan.items[0].tensor_data.properties.type = dtype::float64;
    CHECK(code_of(w->write_data(plan, s.sources[1]).error())
          == errc::dtype_mismatch);
    plan = s.local_plans[1];
    plan.items[0].tensor_data.chunk.sizes = {3, 3};
    CHECK(code_of(w->write_data(plan, s.sources[1]).error())
          == errc::invalid_argument);
  }
}

TEST_CASE("a full disk is a storage failure naming the file",
          "[filesystem][errors]") {
  auto fd = ::open("/dev/full", O_WRONLY);
  if (fd < 0)
    DCPP_SKIP("cannot open /dev/full: " << std::strerror(errno));
  file_sink sink{fd, "/dev/full"};
  auto t = at::randn({1 << 18}, at::kFloat); // 1 MiB: a direct write
  auto res = write_tensor_item(sink, t);
  REQUIRE(!res);
  CHECK(code_of(res.error()) == errc::storage_failure);
  CHECK(context_of(res.error()).find("/dev/full") != std::string::npos);
  ::close(fd);
}

TEST_CASE("short writes are continued, buffered and O_DIRECT",
          "[filesystem][errors]") {
  // io:short makes the K-th write system call of a rank store only half of
  // its bytes (an unaligned count on O_DIRECT files, which must then go on
  // buffered). Every K up to the last write of the save, on both ranks.
  struct clear_rules {
    ~clear_rules() {
      fault::clear();
    }
  } guard;
  for (bool direct : {false, true})
    for (int k = 1;; ++k) {
      INFO("direct_io " << direct << ", short write " << k);
      temp_dir tmp;
      auto dir = tmp / "ckpt";
      filesystem_writer_options wopts;
      wopts.direct_io = direct;
      auto ranks = two_ranks();
      auto big = ranks[0].tensors[15].tensor;
      REQUIRE(!fault::install("io:short@0:" + std::to_string(k)
                              + ",io:short@1:" + std::to_string(k)));
      FS_REQUIRE(save_all(dir, wopts, ranks));
      auto fired = fault::fired();
      fault::clear();
      map_target target;
      FS_REQUIRE(load_all(dir, {}, target, nullptr));
      check_two_ranks(target);
      CHECK(key(target, "big", 2).equal(big));
      if (fired == 0)
        break; // past the last write of both ranks
      REQUIRE(k < 64);
    }
}

// -- overwriting a checkpoint (issue 6) ---------------------------------------

namespace {

/// Two ranks whose every value depends on `version`, so that a load tells
/// which save it came from.
std::vector<rank_values> versioned_ranks(int version) {
  std::vector<rank_values> ranks(2);
  auto v = static_cast<double>(version);
  ranks[0].plain("w", at::arange(6, at::kFloat).reshape({2, 3}) + 100 * v);
  ranks[0].plain("i", at::arange(4, at::kLong) + version);
  ranks[0].blobs.emplace_back("epoch", "epoch-" + std::to_string(version));
  auto st = at::arange(12, at::kFloat).reshape({4, 3}) + 1000 * v;
  ranks[0].shard("st", st.narrow(0, 0, 2), {0, 0}, {4, 3});
  ranks[1].shard("st", st.narrow(0, 2, 2), {2, 0}, {4, 3});
  ranks[1].blobs.emplace_back("extra", "extra-" + std::to_string(version));
  return ranks;
}

/// Loads `dir` with a fresh reader; returns the version all values agree
/// on, or -1 (a failed load or a mix of versions).
int loaded_version(const std::string& dir) {
  map_target t;
  if (auto err = load_all(dir, {}, t)) {
    UNSCOPED_INFO("load failed: " << describe(err));
    return -1;
  }
  auto epoch = t.blobs.at("epoch");
  auto version = std::stoi(epoch.substr(6));
  auto ranks = versioned_ranks(version);
  bool same = key(t, "w", 2).equal(ranks[0].tensors[0].tensor)
              && key(t, "i", 1).equal(ranks[0].tensors[1].tensor)
              && t.blobs.at("extra") == "extra-" + std::to_string(version)
              && key(t, "st", 2)
                   .equal(at::arange(12, at::kFloat).reshape({4, 3})
                          + 1000 * static_cast<double>(version));
  return same ? version : -1;
}

/// The files a committed checkpoint consists of: `.metadata` and the data
/// files of its save (named in it, or carrying the same tag).
std::set<std::string> committed_files(const std::string& dir) {
  std::set<std::string> out{".metadata"};
  std::set<std::string> tags;
  auto md = decode_metadata(read_file(dir + "/.metadata"));
  if (md)
    for (const auto& [idx, info] : md->storage_data) {
      out.insert(info.relative_path);
      tags.insert(tag_of(info.relative_path));
    }
  for (const auto& name : list_dir(dir))
    if (name.rfind("__", 0) == 0 && tags.count(tag_of(name)) > 0)
      out.insert(name);
  return out;
}

/// Where a simulated crash stops a save.
enum class crash_point {
  after_set_up,
  after_some_writes,
  after_all_writes,
  after_metadata_tmp,
  after_rename,
  none,
};

/// Runs the save protocol for `ranks` step by step, as the coordinator and
/// the ranks would, and stops (as if every process died) at `stop`.
void save_until(const std::string& dir, const std::vector<rank_values>& ranks,
                crash_point stop, const filesystem_writer_options& opts) {
  auto s = make_setup(ranks);
  std::vector<storage_writer_ptr> writers;
  for (size_t r = 0; r < ranks.size(); ++r) {
    writers.push_back(make_filesystem_writer(dir, opts));
    FS_REQUIRE(writers[r]->set_up(r == 0, static_cast<int32_t>(r)));
  }
  if (stop == crash_point::after_set_up)
    return;
  auto central = writers[0]->prepare_global_plan(s.local_plans);
  FS_REQUIRE(central);
  std::vector<std::vector<write_result>> results;
  for (size_t r = 0; r < ranks.size(); ++r) {
    auto res = writers[r]->write_data((*central)[r], s.sources[r]);
    FS_REQUIRE(res);
    results.push_back(*res);
    if (stop == crash_point::after_some_writes)
      return;
  }
  if (stop == crash_point::after_all_writes)
    return;
  if (stop == crash_point::none) {
    FS_REQUIRE(writers[0]->finish(s.md, results));
    return;
  }
  // finish up to the crash: the same `.metadata.tmp` it writes, then
  // possibly the rename, but not the garbage collection after it.
  metadata out = s.md;
  for (const auto& rank_results : results)
    for (const auto& r : rank_results)
      out.storage_data[r.index] = r.storage_data;
  write_file(dir + "/.metadata.tmp", encode_metadata(out, opts.flavor));
  if (stop == crash_point::after_metadata_tmp)
    return;
  REQUIRE(
    ::rename((dir + "/.metadata.tmp").c_str(), (dir + "/.metadata").c_str())
    == 0);
}

} // namespace

TEST_CASE("a crash at any step of an overwrite leaves the old or the new "
          "checkpoint",
          "[filesystem][durability]") {
  struct expectation {
    crash_point stop;
    const char* name;
    int version; // the checkpoint a reader sees afterwards
  };
  std::vector<expectation> cases{
    {crash_point::after_set_up, "after set_up", 1},
    {crash_point::after_some_writes, "after rank 0 wrote", 1},
    {crash_point::after_all_writes, "after all ranks wrote", 1},
    {crash_point::after_metadata_tmp, "after .metadata.tmp", 1},
    {crash_point::after_rename, "after the rename, before GC", 2},
    {crash_point::none, "no crash", 2},
  };
  for (bool single : {true, false})
    for (const auto& c : cases) {
      INFO(c.name << ", single_file_per_rank " << single);
      temp_dir tmp;
      auto dir = tmp / "ckpt";
      filesystem_writer_options opts;
      opts.single_file_per_rank = single;
      opts.thread_count = 2;
      FS_REQUIRE(save_all(dir, opts, versioned_ranks(1)));
      REQUIRE(loaded_version(dir) == 1);
      auto old_files = committed_files(dir);
      save_until(dir, versioned_ranks(2), c.stop, opts);
      CHECK(loaded_version(dir) == c.version);
      if (c.version == 1) {
        // The old checkpoint is untouched, file by file.
        auto files = list_dir(dir);
        for (const auto& name : old_files)
          CHECK(files.count(name) == 1);
      }
      // The next save commits, loads and collects every leftover.
      FS_REQUIRE(save_all(dir, opts, versioned_ranks(3)));
      CHECK(loaded_version(dir) == 3);
      CHECK(list_dir(dir) == committed_files(dir));
    }
}

TEST_CASE("garbage collection after a commit removes only data files",
          "[filesystem][durability]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  FS_REQUIRE(save_all(dir, {}, versioned_ranks(1)));
  // Leftovers of older saves and files that belong to someone else.
  write_file(dir + "/__7_0.distcp", "stale");
  write_file(dir + "/__7_1.0123456789abcdef.distcp", "stale");
  write_file(dir + "/notes.txt", "keep");
  write_file(dir + "/__keep.bin", "keep");
  write_file(dir + "/model.distcp", "keep");
  FS_REQUIRE(save_all(dir, {}, versioned_ranks(2)));
  CHECK(loaded_version(dir) == 2);
  auto expected = committed_files(dir);
  expected.insert("notes.txt");
  expected.insert("__keep.bin");
  expected.insert("model.distcp");
  CHECK(list_dir(dir) == expected);
}

TEST_CASE("abort of an overwrite removes only the files of its save",
          "[filesystem][durability]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  FS_REQUIRE(save_all(dir, {}, versioned_ranks(1)));
  auto before = list_dir(dir);
  auto s = make_setup(versioned_ranks(2));
  auto w0 = make_filesystem_writer(dir);
  auto w1 = make_filesystem_writer(dir);
  FS_REQUIRE(w0->set_up(true, 0));
  FS_REQUIRE(w1->set_up(false, 1));
  auto central = w0->prepare_global_plan(s.local_plans);
  FS_REQUIRE(central);
  FS_REQUIRE(w0->write_data((*central)[0], s.sources[0]));
  FS_REQUIRE(w1->write_data((*central)[1], s.sources[1]));
  CHECK(list_dir(dir).size() > before.size());
  w0->abort();
  w1->abort();
  CHECK(list_dir(dir) == before);
  CHECK(loaded_version(dir) == 1);
}

// -- one writer per directory (issue 11) --------------------------------------

namespace {

std::string lock_path(const std::string& dir) {
  return dir + "/.dcpp.lock";
}

/// The ranks of one save ("job") into `dir`, driven step by step.
struct job {
  save_setup s;
  std::vector<storage_writer_ptr> writers;
  std::vector<save_plan> central;
  std::vector<std::vector<write_result>> results;

  job(const std::string& dir, int version)
    : s(make_setup(versioned_ranks(version))) {
    for (int r = 0; r < 2; ++r)
      writers.push_back(make_filesystem_writer(dir));
  }

  caf::error set_up() {
    if (auto err = writers[0]->set_up(true, 0))
      return err;
    return writers[1]->set_up(false, 1);
  }

  caf::error write() {
    auto plans = writers[0]->prepare_global_plan(s.local_plans);
    if (!plans)
      return plans.error();
    central = *plans;
    for (size_t r = 0; r < 2; ++r) {
      auto res = writers[r]->write_data(central[r], s.sources[r]);
      if (!res)
        return res.error();
      results.push_back(*res);
    }
    return {};
  }

  caf::error finish() {
    return writers[0]->finish(s.md, results);
  }

  void abort() {
    for (auto& w : writers)
      w->abort();
  }
};

} // namespace

TEST_CASE("a second save into a directory in use fails naming the holder",
          "[filesystem][dir_lock]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  FS_REQUIRE(save_all(dir, {}, versioned_ranks(1)));
  job a{dir, 2};
  FS_REQUIRE(a.set_up());
  // The holder's identity is in the lock file while it holds the lock.
  auto identity = read_file(lock_path(dir));
  INFO("lock file: " << identity);
  CHECK(identity.find("pid " + std::to_string(::getpid()))
        != std::string::npos);
  FS_REQUIRE(a.write());
  // Another job's coordinator is refused at once, naming the directory and
  // the holder.
  job b{dir, 3};
  auto err = b.writers[0]->set_up(true, 0);
  REQUIRE(err);
  CHECK(code_of(err) == errc::storage_failure);
  auto text = describe(err);
  INFO(text);
  CHECK(text.find(dir) != std::string::npos);
  CHECK(text.find("pid " + std::to_string(::getpid())) != std::string::npos);
  CHECK(text.find("host ") != std::string::npos);
  // The refused job's abort touches neither the lock nor the other's files.
  b.abort();
  CHECK(read_file(lock_path(dir)) == identity);
  FS_REQUIRE(a.finish());
  CHECK(loaded_version(dir) == 2);
  // The commit released the lock (and removed its file): a new save works.
  CHECK(!exists(lock_path(dir)));
  job c{dir, 4};
  FS_REQUIRE(c.set_up());
  FS_REQUIRE(c.write());
  FS_REQUIRE(c.finish());
  CHECK(loaded_version(dir) == 4);
  CHECK(list_dir(dir) == committed_files(dir));
}

TEST_CASE("abort releases the directory lock", "[filesystem][dir_lock]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  job a{dir, 1};
  FS_REQUIRE(a.set_up());
  FS_REQUIRE(a.write());
  job b{dir, 2};
  CHECK(b.writers[0]->set_up(true, 0));
  a.abort();
  CHECK(!exists(lock_path(dir)));
  FS_REQUIRE(b.set_up());
  FS_REQUIRE(b.write());
  FS_REQUIRE(b.finish());
  CHECK(loaded_version(dir) == 2);
}

TEST_CASE("overlapping saves: the refused one leaves the first's checkpoint "
          "loadable",
          "[filesystem][dir_lock]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  FS_REQUIRE(save_all(dir, {}, versioned_ranks(1)));
  job a{dir, 2};
  FS_REQUIRE(a.set_up());
  FS_REQUIRE(a.write());
  // A second job starts while the first is between its writes and its
  // commit. Without a lock it runs through, and its garbage collection
  // removes the first job's data files.
  job b{dir, 3};
  auto refused = b.set_up();
  CHECK(refused);
  if (!refused) {
    (void)b.write();
    (void)b.finish();
  } else {
    b.abort();
  }
  FS_REQUIRE(a.finish());
  CHECK(loaded_version(dir) == 2);
  CHECK(list_dir(dir) == committed_files(dir));
}

TEST_CASE("garbage collection keeps files newer than the lock",
          "[filesystem][dir_lock]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  FS_REQUIRE(save_all(dir, {}, versioned_ranks(1)));
  auto old_files = list_dir(dir);
  // A leftover of an aborted save from before: collected.
  write_file(dir + "/__7_0.00000000000000aa.distcp", "old leftover");
  // A leftover that existed before the lock but is written to after it
  // (a rank of a save whose coordinator died): kept.
  write_file(dir + "/__7_1.00000000000000bb.distcp", "still written");
  job a{dir, 2};
  FS_REQUIRE(a.set_up());
  struct timespec later[2];
  later[0].tv_sec = 0;
  later[0].tv_nsec = UTIME_OMIT;
  later[1].tv_sec = ::time(nullptr) + 60;
  later[1].tv_nsec = 0;
  REQUIRE(::utimensat(AT_FDCWD,
                      (dir + "/__7_1.00000000000000bb.distcp").c_str(), later,
                      0)
          == 0);
  // A lockless writer (the ranks of such a save) creates files after the
  // lock was taken: kept.
  job x{dir, 5};
  FS_REQUIRE(x.writers[1]->set_up(false, 1));
  auto x_plans = x.writers[1]->prepare_global_plan(x.s.local_plans);
  FS_REQUIRE(x_plans);
  FS_REQUIRE(x.writers[1]->write_data((*x_plans)[1], x.s.sources[1]));
  std::set<std::string> x_files;
  for (const auto& name : list_dir(dir))
    if (name.rfind("__1_", 0) == 0 && old_files.count(name) == 0)
      x_files.insert(name);
  REQUIRE(!x_files.empty());
  FS_REQUIRE(a.write());
  FS_REQUIRE(a.finish());
  CHECK(loaded_version(dir) == 2);
  auto after = list_dir(dir);
  CHECK(after.count("__7_0.00000000000000aa.distcp") == 0);
  CHECK(after.count("__7_1.00000000000000bb.distcp") == 1);
  for (const auto& name : old_files)
    if (name != ".metadata")
      CHECK(after.count(name) == 0);
  for (const auto& name : x_files) {
    INFO(name);
    CHECK(after.count(name) == 1);
  }
}

TEST_CASE("a lock file left by a dead process does not block",
          "[filesystem][dir_lock]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  FS_REQUIRE(save_all(dir, {}, versioned_ranks(1)));
  // A process takes the lock, writes its identity and dies holding it.
  auto path = lock_path(dir);
  auto child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 || ::flock(fd, LOCK_EX | LOCK_NB) != 0)
      ::_exit(1);
    static const char text[] = "host elsewhere pid 1 since then save dead\n";
    if (::write(fd, text, sizeof(text) - 1) != sizeof(text) - 1)
      ::_exit(1);
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  REQUIRE(exists(path));
  job a{dir, 2};
  FS_REQUIRE(a.set_up());
  // The new holder's identity replaced the dead one's.
  auto identity = read_file(path);
  INFO(identity);
  CHECK(identity.find("pid " + std::to_string(::getpid()))
        != std::string::npos);
  CHECK(identity.find("dead") == std::string::npos);
  FS_REQUIRE(a.write());
  FS_REQUIRE(a.finish());
  CHECK(loaded_version(dir) == 2);
  CHECK(!exists(path));
}

TEST_CASE("the directory lock never follows a symlink",
          "[filesystem][dir_lock]") {
  temp_dir tmp;
  auto dir = tmp / "ckpt";
  FS_REQUIRE(save_all(dir, {}, versioned_ranks(1)));
  auto victim = tmp / "victim";
  write_file(victim, "do not touch");
  REQUIRE(::symlink(victim.c_str(), lock_path(dir).c_str()) == 0);
  job a{dir, 2};
  auto err = a.writers[0]->set_up(true, 0);
  CHECK(err);
  CHECK(read_file(victim) == "do not touch");
  CHECK(loaded_version(dir) == 1);
}

// -- hostile directories (issue 11)
// -------------------------------------------

TEST_CASE("the reader refuses a symlinked data file, naming it",
          "[filesystem][issue11]") {
  temp_dir tmp;
  temp_dir outside;
  auto dir = tmp.path();
  FS_REQUIRE(save_all(dir, {}, two_ranks()));
  auto path = data_file(dir, "__1_0.distcp");
  // The same bytes outside the directory: checksums still match.
  auto target = outside / "data.bin";
  REQUIRE(::rename(path.c_str(), target.c_str()) == 0);
  REQUIRE(::symlink(target.c_str(), path.c_str()) == 0);
  map_target t;
  auto err = load_all(dir, {}, t);
  INFO(describe(err));
  REQUIRE(err);
  CHECK(code_of(err) == errc::path_escape);
  CHECK(describe(err).find(path + ": is a symbolic link") != std::string::npos);
}

TEST_CASE("a planted .metadata.tmp symlink is not written through",
          "[filesystem][issue11]") {
  temp_dir tmp;
  temp_dir outside;
  auto dir = tmp.path();
  auto victim = outside / "victim";
  write_file(victim, "precious");
  REQUIRE(::symlink(victim.c_str(), (tmp / ".metadata.tmp").c_str()) == 0);
  FS_REQUIRE(save_all(dir, {}, two_ranks()));
  CHECK(read_file(victim) == "precious");
  struct stat st;
  REQUIRE(::lstat((tmp / ".metadata").c_str(), &st) == 0);
  CHECK(S_ISREG(st.st_mode));
  CHECK(!exists(tmp / ".metadata.tmp"));
  map_target t;
  FS_REQUIRE(load_all(dir, {}, t));
  check_two_ranks(t);
}

TEST_CASE("a FIFO as .metadata fails the load at once, naming it",
          "[filesystem][issue11]") {
  temp_dir tmp;
  auto fifo = tmp / ".metadata";
  REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);
  auto reader = make_filesystem_reader(tmp.path());
  auto res = std::async(std::launch::async,
                        [&] { return reader->read_metadata(); });
  if (res.wait_for(std::chrono::seconds{10}) != std::future_status::ready) {
    FAIL_CHECK("read_metadata blocks on a FIFO");
    // Unblock the open (a writer appears and leaves at once).
    int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0)
      ::close(fd);
  }
  auto md = res.get();
  REQUIRE(!md);
  INFO(describe(md.error()));
  CHECK(code_of(md.error()) == errc::io_error);
  CHECK(describe(md.error()).find(fifo + ": is a FIFO") != std::string::npos);
}

// -- landing paths (storage/landing.hpp) --------------------------------------

namespace {

/// The kinds of destination a load meets, each filled by whichever landing
/// path the reader takes: PyTorch's allocator, dcpp's huge pages (both
/// allocators), a view at an odd offset inside a larger tensor (direct but
/// unaligned), and non-contiguous views (staged, then copied).
std::vector<std::pair<std::string, make_destination>> destination_kinds() {
  auto permuted = [](const shape_t& sizes, at::ScalarType type) {
    // Same shape, dimensions stored in reverse order.
    shape_t rev(sizes.rbegin(), sizes.rend());
    std::vector<int64_t> perm;
    for (auto d = static_cast<int64_t>(sizes.size()); d-- > 0;)
      perm.push_back(d);
    return at::zeros(rev, type).permute(perm);
  };
  return {
    {"at::zeros",
     [](const shape_t& s, at::ScalarType t) { return at::zeros(s, t); }},
    {"empty_host_tensor",
     [](const shape_t& s, at::ScalarType t) {
       return empty_host_tensor(s, t);
     }},
    {"host_region",
     [](const shape_t& s, at::ScalarType t) {
       auto bytes = static_cast<size_t>(numel(s)) * c10::elementSize(t);
       auto region = host_region::map(std::max<size_t>(bytes, 1), true);
       FS_REQUIRE(region);
       auto owner = std::make_shared<host_region>(std::move(*region));
       return at::from_blob(
         owner->data(), s, [owner](void*) mutable { owner.reset(); },
         at::TensorOptions().dtype(t));
     }},
    {"odd offset view",
     [](const shape_t& s, at::ScalarType t) {
       auto n = numel(s);
       return at::zeros({n + 3}, t).narrow(0, 3, n).view(s);
     }},
    {"permuted", permuted},
    {"column slice",
     [](const shape_t& s, at::ScalarType t) {
       if (s.size() < 2)
         return at::zeros(s, t);
       auto wide = s;
       wide.back() = wide.back() * 2 + 1;
       return at::zeros(wide, t).narrow(static_cast<int64_t>(s.size()) - 1, 1,
                                        s.back());
     }},
  };
}

/// Two ranks with tensors of several blocks (storage/aligned_buffers.hpp)
/// and odd sizes: plain ones and row shards of "st".
std::vector<rank_values> landing_ranks() {
  std::vector<rank_values> ranks(2);
  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  ranks[0].plain("w", at::randn({701, 1031}, gen, at::kFloat)); // 2.8 MiB
  ranks[0].plain("d", at::randn({300, 257}, gen, at::kDouble));
  ranks[0].plain("b", at::randint(0, 255, {4099}, gen, at::kByte));
  ranks[0].blobs.emplace_back("epoch", "3");
  auto st = at::randn({1000, 777}, gen, at::kFloat);
  ranks[0].shard("st", st.narrow(0, 0, 600).clone(), {0, 0}, {1000, 777});
  ranks[1].shard("st", st.narrow(0, 600, 400).clone(), {600, 0}, {1000, 777});
  return ranks;
}

at::Tensor landing_st() {
  auto ranks = landing_ranks();
  return at::cat({ranks[0].tensors.back().tensor, ranks[1].tensors[0].tensor});
}

/// Read items of "st" (global {1000, 777}, saved as rows [0, 600) and
/// [600, 1000)) for the destination box rows [r0, r1) x cols [c0, c1),
/// named (`name`, {r0, c0}).
std::vector<read_item> st_box(const std::string& name, int64_t r0, int64_t r1,
                              int64_t c0, int64_t c1) {
  std::vector<read_item> out;
  const int64_t starts[] = {0, 600};
  const int64_t ends[] = {600, 1000};
  for (int64_t k = 0; k < 2; ++k) {
    auto lo = std::max(r0, starts[k]);
    auto hi = std::min(r1, ends[k]);
    if (lo >= hi)
      continue;
    read_item r;
    r.type = load_item_type::tensor;
    r.dest_index = metadata_index{name, {r0, c0}, 0};
    r.storage_index = metadata_index{"st", {starts[k], 0}, k};
    r.storage_offsets = {lo - starts[k], c0};
    r.dest_offsets = {lo - r0, 0};
    r.lengths = {hi - lo, c1 - c0};
    out.push_back(r);
  }
  return out;
}

} // namespace

TEST_CASE("the landing probes decide once per direction",
          "[filesystem][landing]") {
  dcpp::detail::prepare_landing(false);
  for (bool write : {false, true}) {
    const auto& host = write ? dcpp::detail::write_landing_of_host()
                             : dcpp::detail::read_landing_of_host();
    // Printed: what this host measured.
    WARN((write ? "writes: " : "reads: ")
         << to_string(host.mode) << ", " << host.source << ", direct "
         << host.direct_GBps << " GB/s, bounce " << host.bounce_GBps);
    CHECK(&host
          == (write ? &dcpp::detail::write_landing_of_host()
                    : &dcpp::detail::read_landing_of_host()));
    if (host.source == "probe") {
      CHECK(host.direct_GBps > 0);
      CHECK(host.bounce_GBps > 0);
      // Bounce only where it won clearly (every run, by 2x).
      if (host.mode == landing_mode::bounce)
        CHECK(host.bounce_GBps > 2 * host.direct_GBps);
    } else {
      // Only an override skips the probe here (memfd works on Linux).
      CHECK(host.source.rfind("DCPP_LANDING=", 0) == 0);
    }
    CHECK((write ? dcpp::detail::resolve_write_landing(landing_mode::automatic)
                 : dcpp::detail::resolve_read_landing(landing_mode::automatic))
          == host.mode);
  }
  CHECK(dcpp::detail::resolve_read_landing(landing_mode::bounce)
        == landing_mode::bounce);
  for (auto m :
       {landing_mode::automatic, landing_mode::direct, landing_mode::bounce})
    CHECK(parse_landing_mode(to_string(m)) == m);
  CHECK(!parse_landing_mode("hugepages"));
}

// Run by the next case in a child process whose environment names
// DCPP_LANDING (the variable is read once per process).
TEST_CASE("landing of a process started with DCPP_LANDING",
          "[.][landing_env]") {
  std::string want = std::getenv("DCPP_LANDING_EXPECT");
  for (bool write : {false, true}) {
    const auto& host = write ? dcpp::detail::write_landing_of_host()
                             : dcpp::detail::read_landing_of_host();
    INFO(host.source);
    if (want == "probe") {
      CHECK(host.source == "probe");
    } else {
      CHECK(host.source == "DCPP_LANDING=" + want);
      CHECK(to_string(host.mode) == want);
    }
  }
}

TEST_CASE("DCPP_LANDING forces a path for the process and other values are "
          "named and measured",
          "[filesystem][landing]") {
  for (auto [value, expect] :
       {std::pair<std::string, std::string>{"bounce", "bounce"},
        {"direct", "direct"},
        {"auto", "probe"},
        {"fastest", "probe"}}) {
    INFO("DCPP_LANDING=" << value);
    temp_dir tmp;
    auto log = tmp / "output";
    std::string cmd = "DCPP_LANDING=" + value + " DCPP_LANDING_EXPECT=" + expect
                      + " /proc/" + std::to_string(::getpid())
                      + "/exe '[landing_env]' >" + log + " 2>&1";
    CHECK(std::system(cmd.c_str()) == 0);
    auto out = read_file(log);
    if (value == "fastest")
      CHECK(out.find("DCPP_LANDING='fastest' is not direct, bounce or auto")
            != std::string::npos);
    else
      CHECK(out.find("is not direct, bounce or auto") == std::string::npos);
  }
}

TEST_CASE("every kind of destination loads bit-exact through every landing "
          "path",
          "[filesystem][landing]") {
  auto ranks = landing_ranks();
  auto st = landing_st();
  auto huge_before = [](const at::Tensor& t) {
    return dcpp::detail::is_huge_memory(t.data_ptr(), t.nbytes());
  };
  CHECK(huge_before(empty_host_tensor({1 << 20}, at::kFloat)));
  CHECK(!huge_before(at::zeros({1 << 20}, at::kFloat)));
  for (auto write : {landing_mode::direct, landing_mode::bounce})
    for (bool direct_io : {true, false}) {
      temp_dir tmp;
      auto dir = tmp / "ckpt";
      filesystem_writer_options wopts;
      wopts.landing = write;
      wopts.direct_io = direct_io;
      // Per-item files: items under 16 MiB are written buffered, from the
      // tensors' memory or bounced.
      wopts.single_file_per_rank = direct_io;
      auto bounced = dcpp::detail::bounced_bytes();
      FS_REQUIRE(save_all(dir, wopts, ranks));
      if (write == landing_mode::bounce && !direct_io)
        CHECK(dcpp::detail::bounced_bytes() - bounced >= st.nbytes());
      if (write == landing_mode::direct)
        CHECK(dcpp::detail::bounced_bytes() == bounced);
      for (auto read : {landing_mode::direct, landing_mode::bounce,
                        landing_mode::automatic})
        for (bool verify : {true, false})
          for (const auto& [kind, make] : destination_kinds()) {
            INFO("write " << to_string(write) << ", O_DIRECT " << direct_io
                          << ", read " << to_string(read) << ", verify "
                          << verify << ", destination " << kind);
            filesystem_reader_options ropts;
            ropts.landing = read;
            ropts.verify_checksums = verify;
            ropts.thread_count = 2;
            map_target target;
            auto before = dcpp::detail::bounced_bytes();
            FS_REQUIRE(load_all(dir, ropts, target, nullptr, make));
            auto moved = dcpp::detail::bounced_bytes() - before;
            CHECK(key(target, "w", 2).equal(ranks[0].tensors[0].tensor));
            CHECK(key(target, "d", 2).equal(ranks[0].tensors[1].tensor));
            CHECK(key(target, "b", 1).equal(ranks[0].tensors[2].tensor));
            CHECK(key(target, "st", 2).equal(st));
            CHECK(target.blobs.at("epoch") == "3");
            auto w = key(target, "w", 2);
            // (Small tensors of the "huge" kinds are PyTorch's memory.)
            if (read == landing_mode::direct)
              CHECK(moved == 0);
            else if (huge_before(w))
              CHECK(moved < w.nbytes());
            else if (read == landing_mode::bounce && w.is_contiguous())
              CHECK(moved >= w.nbytes());
          }
      // Resharded slices of "st": row boxes across the saved shards into
      // at::zeros and huge pages, and a column box (staged).
      for (auto read : {landing_mode::direct, landing_mode::bounce}) {
        INFO("resharded, read " << to_string(read));
        filesystem_reader_options ropts;
        ropts.landing = read;
        auto reader = make_filesystem_reader(dir, ropts);
        auto md = reader->read_metadata();
        FS_REQUIRE(md);
        FS_REQUIRE(reader->set_up(*md, true, 0));
        load_plan plan;
        map_target target;
        struct box {
          int64_t r0, r1, c0, c1;
          bool huge;
        };
        const box boxes[] = {{0, 333, 0, 777, false},
                             {333, 700, 0, 777, true},
                             {700, 1000, 0, 777, false},
                             {0, 1000, 100, 400, false}};
        for (const auto& b : boxes) {
          shape_t sizes{b.r1 - b.r0, b.c1 - b.c0};
          auto t = b.huge ? empty_host_tensor(sizes, at::kFloat)
                          : at::zeros(sizes, at::kFloat);
          target.tensors[metadata_index{"part", {b.r0, b.c0}}] = t.fill_(99);
          for (auto& r : st_box("part", b.r0, b.r1, b.c0, b.c1))
            plan.items.push_back(r);
        }
        auto local = reader->prepare_local_plan(plan);
        FS_REQUIRE(local);
        FS_REQUIRE(reader->read_data(*local, target));
        for (const auto& b : boxes)
          CHECK(target.tensors.at(metadata_index{"part", {b.r0, b.c0}})
                  .equal(st.slice(0, b.r0, b.r1).slice(1, b.c0, b.c1)));
      }
    }
}
