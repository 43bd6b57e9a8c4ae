// dcpp_bench: saves and loads the same synthetic state dict as
// shared/bench/peer_dcp.py (its --print-layout JSON), timing save, cold load
// (page cache dropped) and warm load, verifying every value, and printing
// one JSON line per iteration with the same field names as peer_dcp.py so
// that scripts/bench.py can put both side by side.

#include "actors/checkpointer.hpp"
#include "apps/cli_common.hpp"
#include "core/error.hpp"
#include "storage/filesystem.hpp"
#include "storage/host_memory.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

using namespace dcpp;
namespace fs = std::filesystem;

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

struct tensor_desc {
  std::string name;
  shape_t shape;
};

std::vector<tensor_desc> read_layout(const std::string& path) {
  std::ifstream in{path};
  auto doc = nlohmann::json::parse(in);
  // peer_dcp.py --print-layout: {"layout": [[name, [dims...]], ...], ...}
  // or a bare list.
  const auto& list = doc.is_array() ? doc : doc.at("layout");
  std::vector<tensor_desc> out;
  for (const auto& entry : list)
    out.push_back({entry.at(0).get<std::string>(), entry.at(1).get<shape_t>()});
  return out;
}

/// Values: a cheap deterministic fill (not random: torch's RNG would cost
/// more than the save itself).
state_dict make_state(const std::vector<tensor_desc>& layout, bool fill) {
  state_dict sd;
  int64_t k = 0;
  for (const auto& t : layout) {
    auto x = empty_host_tensor(t.shape, at::kFloat);
    if (fill)
      x.copy_(at::arange(x.numel(), at::kFloat).add_(k++).view(t.shape));
    else
      x.zero_();
    sd.set(t.name, x);
  }
  return sd;
}

bool drop_page_cache() {
  ::sync();
  std::ofstream f{"/proc/sys/vm/drop_caches"};
  if (!f)
    return false;
  f << "3\n";
  return static_cast<bool>(f);
}

bool equal_state(const state_dict& a, const state_dict& b) {
  for (const auto& [key, val] : a.entries()) {
    auto other = b.find(key);
    if (other == nullptr
        || !at::equal(std::get<at::Tensor>(val), std::get<at::Tensor>(*other)))
      return false;
  }
  return true;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"dcpp benchmark: save, cold load, warm load"};
  dcpp::cli::log_options log;
  dcpp::cli::add_common_options(app, log);
  std::string layout_path;
  std::string parent = "/tmp";
  size_t threads = 2;
  bool sync_files = true;
  bool drop = true;
  int iters = 1;
  bool keep = false;
  app
    .add_option("--layout", layout_path,
                "tensor layout JSON (peer_dcp.py --print-layout)")
    ->required();
  app.add_option("--dir", parent, "parent directory for the checkpoint");
  app.add_option("--threads", threads, "writer/reader threads per rank");
  app.add_flag("!--no-sync-files", sync_files, "skip fsync of data files");
  app.add_flag("!--no-drop-cache", drop, "skip dropping the page cache");
  app.add_option("--iters", iters, "iterations");
  app.add_flag("--keep", keep, "keep the checkpoint directory");
  app.footer(dcpp::cli::env_footer({}));
  if (int rc = dcpp::cli::parse(app, argc, argv, "dcpp_bench"); rc >= 0)
    return rc;
  dcpp::cli::init_logging(log, "dcpp_bench");

  at::set_num_threads(1);
  auto layout = read_layout(layout_path);
  auto sd = make_state(layout, true);
  uint64_t bytes = 0;
  for (const auto& t : layout)
    bytes += static_cast<uint64_t>(numel(t.shape)) * 4;
  double gb = static_cast<double>(bytes) / 1e9;

  for (int it = 0; it < iters; ++it) {
    auto dir = fs::path{parent}
               / ("dcpp_bench_" + std::to_string(::getpid()) + "_"
                  + std::to_string(it));
    fs::remove_all(dir);
    filesystem_writer_options wopts;
    wopts.thread_count = threads;
    wopts.sync_files = sync_files;
    filesystem_reader_options ropts;
    ropts.thread_count = threads;
    checkpointer_options opts;
    opts.no_dist = true;
    checkpointer cp{make_filesystem_writer(dir.string(), wopts),
                    make_filesystem_reader(dir.string(), ropts), opts};
    auto t0 = clock_type::now();
    auto md = cp.save(sd);
    auto save_s = seconds_since(t0);
    if (!md) {
      std::fprintf(stderr, "save failed: %s\n", describe(md.error()).c_str());
      return 1;
    }
    bool dropped = drop && drop_page_cache();
    auto dest = make_state(layout, false);
    t0 = clock_type::now();
    auto err = cp.load(dest);
    auto cold_s = seconds_since(t0);
    if (err) {
      std::fprintf(stderr, "load failed: %s\n", describe(err).c_str());
      return 1;
    }
    auto verified = equal_state(sd, dest);
    auto dest2 = make_state(layout, false);
    t0 = clock_type::now();
    err = cp.load(dest2);
    auto warm_s = seconds_since(t0);
    if (err) {
      std::fprintf(stderr, "load failed: %s\n", describe(err).c_str());
      return 1;
    }
    verified = verified && equal_state(sd, dest2);
    nlohmann::json rec{
      {"impl", "dcpp"},
      {"world", 1},
      {"size_mb", static_cast<double>(bytes) / (1 << 20)},
      {"n_tensors", layout.size()},
      {"threads", threads},
      {"sync_files", sync_files},
      {"cache_drop", dropped ? "drop_caches" : "none"},
      {"save_s", save_s},
      {"save_GBps", gb / save_s},
      {"load_cold_s", cold_s},
      {"load_cold_GBps", gb / cold_s},
      {"load_warm_s", warm_s},
      {"load_warm_GBps", gb / warm_s},
      {"verified", verified},
    };
    std::cout << rec.dump() << std::endl;
    if (!keep)
      fs::remove_all(dir);
    if (!verified)
      return 1;
  }
  return 0;
}
