// Throughput of the file-system storage on one rank: save (with fsync) and
// load (cold: page cache dropped, then warm), into preallocated, already
// touched destinations. Hidden; run it explicitly:
//
//   build/tests/storage/storage_tests "[bench]"
//
// Environment: DCPP_BENCH_DIR (parent directory, default $TMPDIR or /tmp),
// DCPP_BENCH_MB (state dict size, default 1024), DCPP_BENCH_WRITE_THREADS,
// DCPP_BENCH_READ_THREADS (default 1), DCPP_BENCH_VERIFY (default 1),
// DCPP_BENCH_DIRECT (default 1). The layout follows bench/BASELINE.md: an
// embedding plus transformer layers of 12 float32 tensors at hidden size
// 1024 (217 tensors at 1 GiB). Cold loads need root for drop_caches; without
// it they are reported as "not cold".

#include "core/error.hpp"
#include "storage/filesystem.hpp"
#include "storage/tensor_codec.hpp"
#include "tests/storage/fs_test_util.hpp"

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <map>

using namespace dcpp;
using namespace dcpp::fs_test;

namespace {

size_t env_size(const char* name, size_t fallback) {
  auto str = std::getenv(name);
  return str != nullptr && *str != '\0' ? std::stoul(str) : fallback;
}

double seconds() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

class bench_source : public item_source {
public:
  std::map<metadata_index, at::Tensor> tensors;

  caf::expected<at::Tensor> tensor(const write_item& item) const override {
    return tensors.at(item.index);
  }

  caf::expected<std::string_view> bytes(const write_item&) const override {
    return make_error(errc::missing_key, "no bytes items here");
  }
};

class bench_target : public load_target {
public:
  std::map<metadata_index, at::Tensor> tensors;

  caf::expected<at::Tensor> tensor(const read_item& item) override {
    return tensors.at(item.dest_index);
  }

  caf::error set_bytes(const read_item&, std::string) override {
    return {};
  }
};

/// A touched destination on huge pages (first touch of fresh 4 KiB pages is
/// the slowest thing on the benchmark VM; see BASELINE.md).
at::Tensor destination(const shape_t& sizes) {
  auto t = at::empty(sizes, at::kFloat);
  auto p = reinterpret_cast<uintptr_t>(t.data_ptr());
  auto n = static_cast<uintptr_t>(t.numel()) * 4;
  uintptr_t huge = uintptr_t{2} << 20;
  auto b = (p + huge - 1) & ~(huge - 1);
  auto e = (p + n) & ~(huge - 1);
  if (e > b)
    ::madvise(reinterpret_cast<void*>(b), e - b, MADV_HUGEPAGE);
  t.zero_();
  return t;
}

} // namespace

TEST_CASE("throughput: save and load a state dict", "[.][bench]") {
  auto mb = env_size("DCPP_BENCH_MB", 1024);
  auto write_threads = env_size("DCPP_BENCH_WRITE_THREADS", 1);
  auto read_threads = env_size("DCPP_BENCH_READ_THREADS", 1);
  bool verify = env_size("DCPP_BENCH_VERIFY", 1) != 0;
  bool direct = env_size("DCPP_BENCH_DIRECT", 1) != 0;
  // Layout: embedding of 40000 rows at 1024 (156 MiB per GiB), then layers
  // of 4 x (1024, 1024) + (4096, 1024) + (1024, 4096) + 6 x (1024).
  std::vector<std::pair<std::string, shape_t>> layout;
  int64_t emb_rows = static_cast<int64_t>(40000 * mb / 1024);
  layout.push_back({"emb", {std::max<int64_t>(emb_rows, 1), 1024}});
  auto layers = std::max<size_t>(1, mb * 18 / 1024);
  for (size_t l = 0; l < layers; ++l) {
    auto p = "layer" + std::to_string(l) + ".";
    for (auto n : {"q", "k", "v", "o"})
      layout.push_back({p + n + ".weight", {1024, 1024}});
    layout.push_back({p + "up.weight", {4096, 1024}});
    layout.push_back({p + "down.weight", {1024, 4096}});
    for (auto n : {"q", "k", "v", "o", "norm1", "norm2"})
      layout.push_back({p + n + ".bias", {1024}});
  }
  bench_source source;
  bench_target target;
  metadata md;
  save_plan plan;
  load_plan lplan;
  uint64_t total = 0;
  for (const auto& [fqn, sizes] : layout) {
    auto t = at::randn(sizes, at::kFloat);
    total += static_cast<uint64_t>(t.numel()) * 4;
    shape_t zeros(sizes.size(), 0);
    metadata_index idx{fqn, zeros, 0};
    source.tensors[idx] = t;
    write_item item;
    item.index = idx;
    item.tensor_data.chunk = {zeros, sizes};
    item.tensor_data.size = sizes;
    plan.items.push_back(item);
    auto& entry = md.state_dict_metadata[fqn];
    entry.tensor.size = sizes;
    entry.tensor.chunks.push_back({zeros, sizes});
    target.tensors[metadata_index{fqn, zeros}] = destination(sizes);
    read_item r;
    r.dest_index = idx;
    r.storage_index = idx;
    r.dest_offsets = zeros;
    r.storage_offsets = zeros;
    r.lengths = sizes;
    lplan.items.push_back(r);
  }
  const char* base = std::getenv("DCPP_BENCH_DIR");
  if (base == nullptr || *base == '\0')
    base = std::getenv("TMPDIR");
  std::string parent = base != nullptr && *base != '\0' ? base : "/tmp";
  auto dir = parent + "/dcpp-bench-ckpt";
  run_command("rm -rf '" + dir + "'");
  auto gb = [&](double s) { return static_cast<double>(total) / 1e9 / s; };
  std::printf("%zu tensors, %.1f MiB, write threads %zu, read threads %zu, "
              "verify %d, direct %d, in %s\n",
              layout.size(), static_cast<double>(total) / 1048576.0,
              write_threads, read_threads, static_cast<int>(verify),
              static_cast<int>(direct), dir.c_str());
  filesystem_writer_options wopts;
  wopts.thread_count = write_threads;
  wopts.direct_io = direct;
  auto writer = make_filesystem_writer(dir, wopts);
  auto t0 = seconds();
  FS_REQUIRE(writer->set_up(true, 0));
  auto central = writer->prepare_global_plan({plan});
  FS_REQUIRE(central);
  auto results = writer->write_data((*central)[0], source);
  FS_REQUIRE(results);
  FS_REQUIRE(writer->finish(md, {*results}));
  auto t1 = seconds();
  std::printf("save       %.3f s  %.3f GB/s\n", t1 - t0, gb(t1 - t0));
  for (int round = 0; round < 3; ++round) {
    bool cold
      = round == 0
        && run_command("sync && echo 3 > /proc/sys/vm/drop_caches").status == 0;
    filesystem_reader_options ropts;
    ropts.thread_count = read_threads;
    ropts.verify_checksums = verify;
    auto reader = make_filesystem_reader(dir, ropts);
    auto a = seconds();
    auto m = reader->read_metadata();
    FS_REQUIRE(m);
    FS_REQUIRE(reader->set_up(*m, true, 0));
    FS_REQUIRE(reader->read_data(lplan, target));
    auto b = seconds();
    std::printf("load %-5s %.3f s  %.3f GB/s\n",
                cold ? "cold" : (round == 0 ? "(not cold)" : "warm"), b - a,
                gb(b - a));
  }
  for (const auto& [idx, t] : source.tensors)
    CHECK(target.tensors.at(metadata_index{idx.fqn, idx.offset}).equal(t));
  run_command("rm -rf '" + dir + "'");
}
