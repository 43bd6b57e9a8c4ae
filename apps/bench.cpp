// dcpp_bench: saves and loads the same synthetic state dict as
// shared/bench/peer_dcp.py (its --print-layout JSON), timing save, cold load
// (page cache dropped) and warm load, verifying every value, and printing
// one JSON line per iteration with the same field names as peer_dcp.py so
// that scripts/bench.py can put both side by side.
//
// With --async-saves N it times N async_saves instead (what the caller
// waits for, and the time to durable), against a memcpy of the same bytes
// into preallocated memory measured in the same run; see the --help footer
// for its JSON line.

#include "actors/checkpointer.hpp"
#include "apps/cli_common.hpp"
#include "apps/landing_report.hpp"
#include "core/error.hpp"
#include "storage/filesystem.hpp"
#include "storage/host_memory.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <thread>
#include <vector>

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

/// Where tensors live: dcpp's huge-page host memory (empty_host_tensor) or
/// PyTorch's allocator (at::empty, 4 KiB pages: a user program's tensors).
bool huge_tensors = true;

/// Values: a cheap deterministic fill (not random: torch's RNG would cost
/// more than the save itself).
state_dict make_state(const std::vector<tensor_desc>& layout, bool fill) {
  state_dict sd;
  int64_t k = 0;
  for (const auto& t : layout) {
    auto x = huge_tensors ? empty_host_tensor(t.shape, at::kFloat)
                          : at::empty(t.shape, at::kFloat);
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

/// --landing (storage/landing.hpp).
landing_mode landing = landing_mode::automatic;

/// A checkpointer on the file system under `dir` with the bench's storage
/// options.
std::unique_ptr<checkpointer>
make_bench_checkpointer(const fs::path& dir, size_t threads, bool sync_files,
                        const checkpointer_options& opts) {
  filesystem_writer_options wopts;
  wopts.thread_count = threads;
  wopts.sync_files = sync_files;
  wopts.landing = landing;
  filesystem_reader_options ropts;
  ropts.thread_count = threads;
  ropts.landing = landing;
  return std::make_unique<checkpointer>(
    make_filesystem_writer(dir.string(), wopts),
    make_filesystem_reader(dir.string(), ropts), opts);
}

/// `name` from /proc/self/status ("VmHWM", "VmRSS") in bytes; 0 if absent.
uint64_t proc_status_bytes(const std::string& name) {
  std::ifstream in{"/proc/self/status"};
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, name.size() + 1, name + ":") != 0)
      continue;
    std::istringstream fields{line.substr(name.size() + 1)};
    uint64_t kib = 0;
    fields >> kib;
    return kib * 1024;
  }
  return 0;
}

/// Resets VmHWM to the current resident set (Linux >= 4.0).
bool reset_peak_rss() {
  std::ofstream f{"/proc/self/clear_refs"};
  f << "5\n";
  f.flush();
  return static_cast<bool>(f);
}

struct spread {
  double median = 0;
  double min = 0;
  double max = 0;
};

spread spread_of(std::vector<double> xs) {
  if (xs.empty())
    return {};
  std::sort(xs.begin(), xs.end());
  auto n = xs.size();
  auto median = n % 2 == 1 ? xs[n / 2] : (xs[n / 2 - 1] + xs[n / 2]) / 2;
  return {median, xs.front(), xs.back()};
}

/// `rounds` timed copies of every tensor of `sd` into one preallocated,
/// touched buffer (the floor of any staging), after one untimed copy.
std::vector<double> time_memcpy(const state_dict& sd, uint64_t bytes,
                                int rounds) {
  std::vector<double> out;
  auto dest = host_region::map(std::max<uint64_t>(bytes, 1), true);
  if (!dest)
    return out;
  auto copy_all = [&] {
    auto* to = dest->data();
    for (const auto& [key, val] : sd.entries()) {
      const auto& t = std::get<at::Tensor>(val);
      auto n = static_cast<size_t>(t.numel()) * t.element_size();
      std::memcpy(to, t.data_ptr(), n);
      to += n;
    }
  };
  copy_all();
  for (int i = 0; i < rounds; ++i) {
    auto t0 = clock_type::now();
    copy_all();
    out.push_back(seconds_since(t0));
  }
  return out;
}

struct async_options {
  int saves = 0;
  int memcpy_rounds = 0;
  uint32_t staging_threads = 1;
  bool release_staging = false;
  bool verify = true;
};

/// Times `aopts.saves` async_saves of `sd` (each into a fresh checkpoint,
/// waiting for the previous one to be durable first, as a training loop
/// saving every k steps does), and prints one JSON line.
int run_async(const std::vector<tensor_desc>& layout, const state_dict& sd,
              uint64_t bytes, const fs::path& parent, size_t threads,
              bool sync_files, const async_options& aopts) {
  auto memcpy_s = time_memcpy(sd, bytes, aopts.memcpy_rounds);
  bool hwm_reset = reset_peak_rss();
  auto base_rss = proc_status_bytes("VmRSS");
  auto root = parent / ("dcpp_bench_async_" + std::to_string(::getpid()));
  fs::remove_all(root);
  fs::create_directories(root);
  checkpointer_options opts;
  opts.no_dist = true;
  opts.keep_staging_memory = !aopts.release_staging;
  opts.staging_threads = aopts.staging_threads;
  auto cp_ptr = make_bench_checkpointer(root, threads, sync_files, opts);
  auto& cp = *cp_ptr;
  std::vector<double> block_s;
  std::vector<double> durable_s;
  fs::path last;
  for (int i = 0; i < aopts.saves; ++i) {
    auto dir = root / ("step_" + std::to_string(i));
    auto t0 = clock_type::now();
    auto fut = cp.async_save(sd, dir.string());
    block_s.push_back(seconds_since(t0));
    auto md = fut.get();
    durable_s.push_back(seconds_since(t0));
    if (!md) {
      std::fprintf(stderr, "async_save %d failed: %s\n", i,
                   describe(md.error()).c_str());
      fs::remove_all(root);
      return 1;
    }
    if (!last.empty())
      fs::remove_all(last);
    last = dir;
  }
  auto peak_rss = proc_status_bytes("VmHWM");
  auto staging = cp.staging_stats();
  bool verified = true;
  if (aopts.verify && !last.empty()) {
    auto dest = make_state(layout, false);
    auto err = cp.load(dest, last.string());
    verified = !err && equal_state(sd, dest);
  }
  cp.release_staging_memory();
  fs::remove_all(root);
  auto more = time_memcpy(sd, bytes, aopts.memcpy_rounds);
  memcpy_s.insert(memcpy_s.end(), more.begin(), more.end());
  // What async_save blocked for before it had a pool: a copy into fresh
  // host memory (allocated, faulted, freed every time).
  std::vector<double> fresh_s;
  for (int i = 0; i < aopts.memcpy_rounds; ++i) {
    auto t0 = clock_type::now();
    auto staged = stage_to_host(sd);
    fresh_s.push_back(seconds_since(t0));
  }
  auto fresh = spread_of(fresh_s);
  auto later_block = spread_of({block_s.begin() + 1, block_s.end()});
  auto later_durable = spread_of({durable_s.begin() + 1, durable_s.end()});
  auto copy = spread_of(memcpy_s);
  auto state = static_cast<double>(bytes);
  nlohmann::json rec{
    {"impl", "dcpp"},
    {"mode", "async"},
    {"world", 1},
    {"size_mb", state / (1 << 20)},
    {"n_tensors", layout.size()},
    {"threads", threads},
    {"sync_files", sync_files},
    {"saves", aopts.saves},
    {"staging_threads", aopts.staging_threads},
    {"keep_staging_memory", !aopts.release_staging},
    {"block_first_s", block_s.front()},
    {"block_s", block_s},
    {"block_later_median_s", later_block.median},
    {"block_later_min_s", later_block.min},
    {"block_later_max_s", later_block.max},
    {"durable_first_s", durable_s.front()},
    {"durable_later_median_s", later_durable.median},
    {"durable_later_min_s", later_durable.min},
    {"durable_later_max_s", later_durable.max},
    {"memcpy_s", memcpy_s},
    {"memcpy_median_s", copy.median},
    {"memcpy_min_s", copy.min},
    {"memcpy_max_s", copy.max},
    {"block_over_memcpy",
     copy.median > 0 ? later_block.median / copy.median : 0.0},
    {"fresh_stage_median_s", fresh.median},
    {"fresh_stage_min_s", fresh.min},
    {"fresh_stage_max_s", fresh.max},
    {"state_bytes", bytes},
    {"base_rss_bytes", base_rss},
    {"peak_rss_bytes", peak_rss},
    {"peak_rss_reset", hwm_reset},
    {"peak_over_state",
     (static_cast<double>(peak_rss) - static_cast<double>(base_rss) + state)
       / state},
    {"staging_allocations", staging.allocations},
    {"staging_reuses", staging.reuses},
    {"verified", verified},
  };
  std::cout << rec.dump() << std::endl;
  return verified ? 0 : 1;
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
  int64_t n_tensors = 0;
  int64_t tensor_mb = 16;
  async_options aopts;
  auto* layout_opt = app.add_option(
    "--layout", layout_path, "tensor layout JSON (peer_dcp.py --print-layout)");
  auto* tensors_opt
    = app.add_option("--tensors", n_tensors,
                     "instead of --layout: this many float32 tensors ...");
  app.add_option("--tensor-mb", tensor_mb, "... of this many MiB each");
  layout_opt->excludes(tensors_opt);
  app.add_option("--dir", parent, "parent directory for the checkpoint");
  app.add_option("--threads", threads, "writer/reader threads per rank");
  std::string alloc = "huge";
  app
    .add_option("--alloc", alloc,
                "tensors saved from and loaded into: huge (dcpp's huge-page "
                "host memory) or torch (at::empty, as a PyTorch program's "
                "own)")
    ->check(CLI::IsMember({"torch", "huge"}));
  std::string landing_name = "auto";
  app
    .add_option("--landing", landing_name,
                "how bytes reach tensors that are not dcpp's huge-page "
                "memory: auto, direct or bounce (storage/landing.hpp)")
    ->check(CLI::IsMember({"auto", "direct", "bounce"}));
  app.add_flag("!--no-sync-files", sync_files, "skip fsync of data files");
  app.add_flag("!--no-drop-cache", drop, "skip dropping the page cache");
  app.add_option("--iters", iters, "iterations");
  app.add_flag("--keep", keep, "keep the checkpoint directory");
  app.add_option("--async-saves", aopts.saves,
                 "time this many async_saves instead (at least 2; see below)");
  app.add_option("--memcpy-rounds", aopts.memcpy_rounds,
                 "timed memcpy rounds before and again after the saves "
                 "(default: --async-saves)");
  app.add_option("--staging-threads", aopts.staging_threads,
                 "checkpointer_options::staging_threads");
  app.add_flag("--release-staging", aopts.release_staging,
               "keep_staging_memory = false");
  app.add_flag("!--no-verify", aopts.verify,
               "async: skip loading and comparing the last save");
  app.footer(
    "With --async-saves N: N async_saves of the state, each into a fresh\n"
    "checkpoint under --dir after the previous one is durable (the future\n"
    "waited for), then one JSON line:\n"
    "  mode \"async\", size_mb, n_tensors, threads, sync_files, saves,\n"
    "  staging_threads, keep_staging_memory: the run;\n"
    "  block_first_s: how long the first async_save call blocked;\n"
    "  block_s: every save's blocking time, in order;\n"
    "  block_later_{median,min,max}_s: the same over saves 2..N;\n"
    "  durable_first_s, durable_later_{median,min,max}_s: call to future\n"
    "    ready (committed, fsynced);\n"
    "  memcpy_s, memcpy_{median,min,max}_s: a single-threaded memcpy of the\n"
    "    same tensors into preallocated, touched memory, --memcpy-rounds\n"
    "    times before and after the saves;\n"
    "  block_over_memcpy: block_later_median_s / memcpy_median_s;\n"
    "  state_bytes; base_rss_bytes: VmRSS before the first save (state dict\n"
    "    made); peak_rss_bytes: VmHWM over the saves (peak_rss_reset: VmHWM\n"
    "    was reset before them, else it includes the memcpy buffer);\n"
    "  peak_over_state: (peak - base + state) / state, the state dict and\n"
    "    all the saves added, in state dicts;\n"
    "  fresh_stage_{median,min,max}_s: stage_to_host into fresh memory,\n"
    "    --memcpy-rounds times after the saves (async_save without a pool);\n"
    "  staging_allocations, staging_reuses: the staging pool's counters;\n"
    "  verified: the last save loads back equal.\n"
    + dcpp::cli::env_footer({}));
  if (int rc = dcpp::cli::parse(app, argc, argv, "dcpp_bench"); rc >= 0)
    return rc;
  dcpp::cli::init_logging(log, "dcpp_bench");
  if (layout_path.empty() && n_tensors <= 0) {
    std::fprintf(stderr, "dcpp_bench: give --layout FILE or --tensors N\n");
    return 2;
  }
  if (aopts.saves == 1 || aopts.saves < 0) {
    std::fprintf(stderr, "dcpp_bench: --async-saves wants 2 or more (the "
                         "first save differs from the later ones)\n");
    return 2;
  }

  huge_tensors = alloc == "huge";
  landing = parse_landing_mode(landing_name).value_or(landing_mode::automatic);
  at::set_num_threads(1);
  std::vector<tensor_desc> layout;
  if (!layout_path.empty())
    layout = read_layout(layout_path);
  else
    for (int64_t i = 0; i < n_tensors; ++i)
      layout.push_back({"t" + std::to_string(i), {tensor_mb << 18}});
  auto sd = make_state(layout, true);
  uint64_t bytes = 0;
  for (const auto& t : layout)
    bytes += static_cast<uint64_t>(numel(t.shape)) * 4;
  double gb = static_cast<double>(bytes) / 1e9;
  if (aopts.saves > 0) {
    if (aopts.memcpy_rounds <= 0)
      aopts.memcpy_rounds = aopts.saves;
    return run_async(layout, sd, bytes, parent, threads, sync_files, aopts);
  }

  for (int it = 0; it < iters; ++it) {
    auto dir = fs::path{parent}
               / ("dcpp_bench_" + std::to_string(::getpid()) + "_"
                  + std::to_string(it));
    fs::remove_all(dir);
    checkpointer_options opts;
    opts.no_dist = true;
    auto cp_ptr = make_bench_checkpointer(dir, threads, sync_files, opts);
    auto& cp = *cp_ptr;
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
      {"alloc", alloc},
      {"landing", dcpp::cli::landing_json(landing, false)},
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
