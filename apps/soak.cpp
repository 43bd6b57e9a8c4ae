// dcpp-soak: a bounded soak test. Ranks are threads of one process (a local
// process group); every cycle saves the synthetic model (apps/synthetic.hpp)
// into a new step directory of a checkpoint root under one random injected
// fault (core/fault.hpp), then checks that the newest committed checkpoint
// is exactly the newest save that committed on disk and that it loads,
// bit-exact, on a random number of ranks (sometimes under a read-side
// fault first). Every few cycles the root is pruned.
//
// Some cycles also have a hostile operator plant something where dcpp
// writes or looks for steps, beside a sentinel checkpoint outside the root
// (`<root>.sentinel`, "another run's") whose every file is compared byte
// for byte after each plant and at the end:
// - step link: the cycle's step directory is a symbolic link to the
//   sentinel's step. The soak's writers own their step directories, as a
//   checkpoint manager's do (`owned_directory`), so the save must fail on
//   every rank and write nothing through the link;
// - far step: a copy of the newest committed step planted as
//   `step_999999999999` (kept for the rest of the run): never the latest,
//   never removed by prune, never changed;
// - export link: the newest committed step exported (`export_torch_save`)
//   to a symbolic link to the sentinel's file: refused.
//
//   dcpp-soak --root /tmp/soak --seconds 60 [--seed 123] [--world 3]
//
// One line per cycle, one line per failure ("FAIL cycle N [spec]: ..."),
// and a summary line at the end. Exit code 0 only without hangs, lost data
// or failed verifications; 1 otherwise; 2 on bad arguments; 3 if a rank
// thread stayed stuck (the soak then ends at once).
//
// Replay a run with its printed --seed (and the same --world, --size-mb,
// --step-timeout-ms and --keep): faults, layouts, coordinator ranks and
// load world sizes come from that seed; only timing differs.

#include "actors/checkpointer.hpp"
#include "actors/format_utils.hpp"
#include "actors/process_group.hpp"
#include "actors/system.hpp"
#include "actors/transport/zmq_transport.hpp"
#include "apps/cli_common.hpp"
#include "apps/synthetic.hpp"
#include "core/error.hpp"
#include "core/fault.hpp"
#include "storage/checkpoint_root.hpp"
#include "storage/filesystem.hpp"

#include <caf/actor_system.hpp>

#include <CLI/CLI.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

using namespace dcpp;
namespace fs = std::filesystem;

namespace {

using clock_type = std::chrono::steady_clock;
using ms = std::chrono::milliseconds;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// -- settings and counters ----------------------------------------------------

struct settings {
  std::string root;
  double seconds = 60;
  uint64_t max_cycles = 0; // 0: no limit
  uint64_t seed = 0;
  int32_t world = 3;
  double size_mb = 2;
  int64_t step_timeout_ms = 1000;
  size_t keep = 3;
  bool verbose = false;
  /// With --fault: this save fault in every cycle instead of random ones.
  std::string fixed_fault;
  /// "local": ranks talk through their actor system; "zmq": each rank has
  /// its own ZeroMQ process group (CURVE, keys from a secret of the run)
  /// over loopback, as ranks in separate processes do.
  std::string transport = "local";
};

struct counters {
  uint64_t cycles = 0;
  uint64_t faults = 0;      // faults installed (save and load)
  uint64_t fired = 0;       // of them, how many fired at least once
  uint64_t aborted = 0;     // saves where every rank returned an error
  uint64_t mixed = 0;       // saves where some ranks returned ok, some not
  uint64_t committed = 0;   // saves where every rank returned ok
  uint64_t on_disk = 0;     // saves committed on disk (`.metadata`)
  uint64_t late_commit = 0; // aborted everywhere, committed on disk anyway
  uint64_t unexpected = 0;  // saves without a fatal fault that did not commit
  uint64_t loads = 0;       // loads verified bit-exact
  uint64_t load_faults = 0; // loads run under a read-side fault
  uint64_t prunes = 0;
  uint64_t hangs = 0;
  uint64_t lost = 0;       // data lost, torn or phantom commits
  uint64_t bad_verify = 0; // loads that failed or returned wrong values
  uint64_t other = 0;      // other failures (prune, root listing)
  uint64_t hostile = 0;    // hostile plants (step link, far step, export)
};

settings cfg;
counters cnt;

void fail_line(uint64_t cycle, const std::string& spec, const std::string& what,
               const char* label = "FAIL") {
  std::printf("dcpp-soak: %s cycle %llu [%s]: %s\n", label,
              static_cast<unsigned long long>(cycle),
              spec.empty() ? "no fault" : spec.c_str(), what.c_str());
  std::fflush(stdout);
}

/// The longest a collective call may take before it counts as a hang.
ms call_bound() {
  return ms{cfg.step_timeout_ms * 5 + 2000};
}

void print_summary(double elapsed) {
  std::printf("dcpp-soak: seed %llu, %llu cycles in %.1f s: %llu faults "
              "injected (fired %llu), %llu saves aborted, %llu mixed, %llu "
              "committed (%llu on disk, %llu committed despite errors, %llu "
              "unexpected aborts), %llu loads verified, %llu load faults, "
              "%llu prunes, %llu hostile plants, %llu hangs, data lost "
              "%llu, verify failures %llu, other failures %llu\n",
              static_cast<unsigned long long>(cfg.seed),
              static_cast<unsigned long long>(cnt.cycles), elapsed,
              static_cast<unsigned long long>(cnt.faults),
              static_cast<unsigned long long>(cnt.fired),
              static_cast<unsigned long long>(cnt.aborted),
              static_cast<unsigned long long>(cnt.mixed),
              static_cast<unsigned long long>(cnt.committed),
              static_cast<unsigned long long>(cnt.on_disk),
              static_cast<unsigned long long>(cnt.late_commit),
              static_cast<unsigned long long>(cnt.unexpected),
              static_cast<unsigned long long>(cnt.loads),
              static_cast<unsigned long long>(cnt.load_faults),
              static_cast<unsigned long long>(cnt.prunes),
              static_cast<unsigned long long>(cnt.hostile),
              static_cast<unsigned long long>(cnt.hangs),
              static_cast<unsigned long long>(cnt.lost),
              static_cast<unsigned long long>(cnt.bad_verify),
              static_cast<unsigned long long>(cnt.other));
  std::fflush(stdout);
}

bool passed() {
  return cnt.hangs == 0 && cnt.lost == 0 && cnt.bad_verify == 0
         && cnt.other == 0;
}

// -- random faults ------------------------------------------------------------

using rng_t = std::mt19937_64;

int64_t uniform(rng_t& rng, int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>{lo, hi}(rng);
}

bool chance(rng_t& rng, double p) {
  return std::uniform_real_distribution<double>{0, 1}(rng) < p;
}

/// One fault of a save.
struct save_fault {
  std::string spec; // "" for none
  /// If it fires, the save must not commit.
  bool fatal = false;
  /// The save should commit whether it fires or not (else a WARN line:
  /// timing on a loaded machine, see also io:short below).
  bool benign = false;
  /// rename:hang blocks the coordinator rank's storage thread until
  /// fault::clear(): a watchdog clears it (see `release_after`).
  bool needs_release = false;
};

/// When the watchdog releases an injected rename:hang, counted from the
/// start of the save: well after the coordinator's commit deadline (two
/// step timeouts after the commit order), so the ranks must return while
/// the coordinator rank's storage thread is still blocked; within the
/// hang bound of `call_bound()`.
ms release_after() {
  return ms{cfg.step_timeout_ms * 4};
}

save_fault pick_save_fault(rng_t& rng, int32_t world, int32_t coord) {
  save_fault f;
  if (chance(rng, 0.25)) {
    f.benign = true;
    return f;
  }
  auto R = std::to_string(uniform(rng, 0, world - 1));
  auto C = std::to_string(coord);
  // A rank makes few write system calls (about one per data file and
  // MiB-scale buffer), so K stays small: 1 (half of the time), 2 or 3.
  auto K = std::to_string(chance(rng, 0.5) ? 1 : uniform(rng, 2, 3));
  auto small_ms = std::to_string(
    uniform(rng, 10, std::max<int64_t>(11, cfg.step_timeout_ms / 5)));
  switch (uniform(rng, 0, 18)) {
    case 0:
      f.spec = "io:eio@" + R + ":" + K;
      f.fatal = true;
      break;
    case 1:
      f.spec = "io:enospc@" + R + ":" + K;
      f.fatal = true;
      break;
    // A short write must be continued, so the save should commit; but the
    // O_DIRECT sink (storage/tensor_codec.cpp, pwrite_fully) cannot continue
    // a short write that is not block-aligned and fails the save cleanly
    // with storage_failure: such aborts are reported as WARN, not failures.
    case 2:
      f.spec = "io:short@" + R + ":" + K;
      f.benign = true;
      break;
    case 3: {
      auto slow = uniform(rng, 5,
                          std::max<int64_t>(6, cfg.step_timeout_ms / 10));
      f.spec = "io:slow@" + R + ":" + std::to_string(slow);
      f.benign = true;
      break;
    }
    case 4:
      f.spec = "write:fail@" + R;
      f.fatal = true;
      break;
    case 5:
      f.spec = "plan:fail@" + R;
      f.fatal = true;
      break;
    case 6:
      f.spec = "commit:fail@" + C;
      f.fatal = true;
      break;
    case 7:
      f.spec = "rename:fail@" + C;
      f.fatal = true;
      break;
    // rename:hang is kept (not replaced by rename:fail): the watchdog of
    // `release_guard` clears the fault after `release_after()`, or as soon
    // as every rank returned.
    case 8:
      f.spec = "rename:hang@" + C;
      f.fatal = true;
      f.needs_release = true;
      break;
    case 9:
      f.spec = "plan:hang@" + R;
      f.fatal = true;
      break;
    case 10:
      f.spec = "write:hang@" + R;
      f.fatal = true;
      break;
    case 11:
      f.spec = "commit:hang@" + C;
      f.fatal = true;
      break;
    case 12: {
      auto n = uniform(rng, 0, 3); // 0: every message
      f.spec = "msg:drop@" + R + ">c" + (n > 0 ? ":" + std::to_string(n) : "");
      break;
    }
    case 13: {
      // From the coordinator to a rank other than the coordinator's:
      // message 1 is the central plan, 2 the outcome (losing it leaves
      // that rank with a timeout while the others commit: "mixed").
      auto n = uniform(rng, 0, 4);
      f.spec = "msg:drop@c>" + R + (n > 0 ? ":" + std::to_string(n) : "");
      break;
    }
    case 14: {
      // well below the step deadline: the save still commits
      f.spec = "msg:delay@" + R + ":" + small_ms;
      f.benign = true;
      break;
    }
    case 15:
      f.spec = "plan:slow@" + R + ":" + small_ms;
      f.benign = true;
      break;
    case 16:
      f.spec = "write:slow@" + R + ":" + small_ms;
      f.benign = true;
      break;
    case 17:
      // To the coordinator's own rank: global plan request, central plan,
      // commit order, outcome.
      f.spec = "msg:drop@c>" + C + ":" + std::to_string(uniform(rng, 1, 4));
      break;
    default:
      f.spec = "io:eio@" + C + ":" + K;
      f.fatal = true;
      break;
  }
  return f;
}

/// A read-side fault for a load on `world` ranks (io faults do not apply
/// to reads); `hang` tells whether it is a hang.
std::string pick_load_fault(rng_t& rng, int32_t world, bool& hang) {
  auto R = std::to_string(uniform(rng, 0, world - 1));
  hang = false;
  switch (uniform(rng, 0, 2)) {
    case 0: return "read:fail@" + R;
    case 1: hang = true; return "read:hang@" + R;
    default: return "plan:fail@" + R;
  }
}

/// Clears the faults after `after` unless stopped first (then clears at
/// once): releases an injected rename:hang. Keeps the fired count of the
/// rules it cleared.
class release_guard {
public:
  explicit release_guard(ms after) {
    thread_ = std::thread{[this, after] {
      std::unique_lock<std::mutex> guard{mx_};
      timed_out_ = !cv_.wait_for(guard, after, [this] { return stop_; });
      fired_ = fault::fired();
      fault::clear();
    }};
  }

  /// Clears now (if not done) and returns the fired count before clearing.
  uint64_t stop() {
    {
      std::lock_guard<std::mutex> guard{mx_};
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable())
      thread_.join();
    return fired_;
  }

  ~release_guard() {
    stop();
  }

  /// After `stop()`: true if the watchdog had to release the hang (the
  /// ranks did not return while it held).
  bool timed_out() const {
    return timed_out_;
  }

private:
  std::mutex mx_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool timed_out_ = false;
  uint64_t fired_ = 0;
  std::thread thread_;
};

// -- collective calls on rank threads -----------------------------------------

struct rank_result {
  bool ok = false;
  std::string error;
  std::vector<std::string> bad_keys; // loads with verification only
};

struct call_result {
  std::vector<rank_result> ranks;
  bool hung = false;
  double seconds = 0;

  size_t ok_count() const {
    size_t n = 0;
    for (const auto& r : ranks)
      n += r.ok ? 1 : 0;
    return n;
  }

  std::string first_error() const {
    for (size_t i = 0; i < ranks.size(); ++i)
      if (!ranks[i].ok)
        return "rank " + std::to_string(i) + ": " + ranks[i].error;
    return "";
  }
};

/// Runs `fn(rank)` on `n` threads and waits at most `call_bound()`. On a
/// hang, releases blocked faults and waits a little longer; ranks still
/// stuck end the soak (exit 3): their threads cannot be joined.
template <class F>
call_result run_ranks(int32_t n, F fn, uint64_t cycle, const std::string& spec,
                      const char* what, clock_type::time_point t_start) {
  call_result out;
  out.ranks.resize(static_cast<size_t>(n));
  std::vector<std::future<rank_result>> futures;
  auto t0 = clock_type::now();
  for (int32_t r = 0; r < n; ++r)
    futures.push_back(std::async(std::launch::async, fn, r));
  auto deadline = t0 + call_bound();
  for (auto& f : futures)
    if (f.wait_until(deadline) != std::future_status::ready)
      out.hung = true;
  if (out.hung) {
    ++cnt.hangs;
    fail_line(cycle, spec,
              std::string{what} + " did not return on every rank within "
                + std::to_string(call_bound().count()) + " ms (hang)");
    fault::clear();
    auto grace = clock_type::now() + call_bound() * 2;
    for (auto& f : futures)
      if (f.wait_until(grace) != std::future_status::ready) {
        fail_line(cycle, spec,
                  std::string{what} + ": a rank thread is stuck; giving up");
        print_summary(seconds_since(t_start));
        std::fflush(nullptr);
        std::_Exit(3);
      }
  }
  for (int32_t r = 0; r < n; ++r)
    out.ranks[static_cast<size_t>(r)] = futures[static_cast<size_t>(r)].get();
  out.seconds = seconds_since(t0);
  return out;
}

/// One process group per rank, as `cfg.transport` says. For "zmq", the
/// coordinator rank's group binds a fresh loopback port, the others connect
/// to it with the run's secret. Empty on failure (printed).
struct rank_groups {
  std::vector<process_group_ptr> groups;
  int32_t hub = -1;

  rank_groups() = default;
  rank_groups(const rank_groups&) = delete;
  rank_groups& operator=(const rank_groups&) = delete;

  process_group_ptr operator[](size_t r) const {
    return groups[r];
  }

  /// The hub last: it waits for the others' goodbye.
  ~rank_groups() {
    for (size_t r = 0; r < groups.size(); ++r)
      if (static_cast<int32_t>(r) != hub)
        groups[r].reset();
    groups.clear();
  }
};

void make_groups(rank_groups& out, caf::actor_system& sys, int32_t world,
                 int32_t coord) {
  if (cfg.transport == "local") {
    out.groups = make_local_process_group(sys, world);
    return;
  }
  out.hub = coord;
  launch_env env;
  env.world_size = world;
  env.master_port = cli::free_loopback_port();
  // 16 bytes drawn from the run's seed: as strong as a launcher's secret
  // (no weak-secret warning), and the same on every rank of the run.
  std::mt19937_64 draw{cfg.seed};
  char hex[33];
  std::snprintf(hex, sizeof hex, "%016llx%016llx",
                static_cast<unsigned long long>(draw()),
                static_cast<unsigned long long>(draw()));
  env.secret = hex;
  env.job_id = "dcpp-soak";
  zmq_options zopts;
  zopts.coordinator_rank = coord;
  zopts.peer_timeout = ms{2000};
  zopts.drain_timeout = ms{2000};
  zopts.connect_timeout = ms{10000};
  out.groups.resize(static_cast<size_t>(world));
  // The hub binds first; every other rank blocks until it is welcomed.
  std::vector<int32_t> order{coord};
  for (int32_t r = 0; r < world; ++r)
    if (r != coord)
      order.push_back(r);
  for (auto r : order) {
    env.rank = r;
    auto g = make_zmq_process_group(sys, env, zopts);
    if (!g) {
      std::printf("dcpp-soak: rank %d cannot join: %s\n", r,
                  describe(g.error()).c_str());
      out.groups.clear();
      return;
    }
    out.groups[static_cast<size_t>(r)] = std::move(*g);
  }
}

checkpointer_options cp_options(const process_group_ptr& pg, int32_t coord) {
  checkpointer_options o;
  o.process_group = pg;
  o.coordinator_rank = coord;
  o.step_timeout = ms{cfg.step_timeout_ms};
  return o;
}

synthetic::options model_options(uint32_t seed, synthetic::layout split,
                                 int32_t rank, int32_t world) {
  synthetic::options o;
  o.size_mb = cfg.size_mb;
  o.seed = seed;
  o.split = split;
  o.rank = rank;
  o.world = world;
  return o;
}

/// How a cycle's file-system writers work.
struct writer_choice {
  size_t threads = 1;
  bool per_item = false; // one file per item (torch 1.13's default)
};

call_result save_step(caf::actor_system& sys, uint64_t step,
                      synthetic::layout split, int32_t coord, writer_choice wc,
                      uint64_t cycle, const std::string& spec,
                      clock_type::time_point t_start) {
  rank_groups group;
  make_groups(group, sys, cfg.world, coord);
  if (group.groups.empty()) {
    call_result failed;
    failed.ranks.resize(static_cast<size_t>(cfg.world));
    for (auto& r : failed.ranks)
      r.error = "no process group";
    return failed;
  }
  auto dir = step_directory(cfg.root, step);
  filesystem_writer_options wopts;
  // Step directories are the soak's own, as a checkpoint manager's are.
  wopts.owned_directory = true;
  wopts.thread_count = wc.threads;
  wopts.single_file_per_rank = !wc.per_item;
  auto fn = [&group, dir, step, split, coord, wopts](int32_t r) {
    rank_result res;
    try {
      checkpointer cp{make_filesystem_writer(dir, wopts),
                      make_filesystem_reader(dir),
                      cp_options(group[static_cast<size_t>(r)], coord)};
      auto sd = synthetic::make_state_dict(
        model_options(static_cast<uint32_t>(step), split, r, cfg.world));
      auto md = cp.save(sd);
      res.ok = static_cast<bool>(md);
      if (!md)
        res.error = describe(md.error());
    } catch (const std::exception& ex) {
      res.error = std::string{"exception: "} + ex.what();
    }
    return res;
  };
  return run_ranks(cfg.world, fn, cycle, spec, "save", t_start);
}

call_result load_step(caf::actor_system& sys, uint64_t step, uint32_t seed,
                      synthetic::layout split, int32_t world, int32_t coord,
                      uint64_t cycle, const std::string& spec,
                      clock_type::time_point t_start) {
  rank_groups group;
  make_groups(group, sys, world, coord);
  if (group.groups.empty()) {
    call_result failed;
    failed.ranks.resize(static_cast<size_t>(world));
    for (auto& r : failed.ranks)
      r.error = "no process group";
    return failed;
  }
  auto dir = step_directory(cfg.root, step);
  auto fn = [&group, dir, seed, split, world, coord](int32_t r) {
    rank_result res;
    try {
      checkpointer cp{make_filesystem_writer(dir), make_filesystem_reader(dir),
                      cp_options(group[static_cast<size_t>(r)], coord)};
      auto opts = model_options(seed, split, r, world);
      auto sd = synthetic::make_empty_state_dict(opts);
      if (auto err = cp.load(sd)) {
        res.error = describe(err);
      } else {
        res.ok = true;
        res.bad_keys = synthetic::verify(sd, opts);
      }
    } catch (const std::exception& ex) {
      res.error = std::string{"exception: "} + ex.what();
    }
    return res;
  };
  return run_ranks(world, fn, cycle, spec, "load", t_start);
}

// -- the checkpoint root ------------------------------------------------------

/// Empties `root` if it holds only what a soak leaves there (step and prune
/// trash directories); refuses anything else.
bool prepare_root(const std::string& root) {
  std::error_code ec;
  auto st = fs::symlink_status(root, ec);
  if (ec || !fs::exists(st)) {
    fs::create_directories(root, ec);
    if (ec) {
      std::fprintf(stderr, "dcpp-soak: cannot create %s: %s\n", root.c_str(),
                   ec.message().c_str());
      return false;
    }
    return true;
  }
  if (!fs::is_directory(st)) {
    std::fprintf(stderr, "dcpp-soak: %s is not a directory\n", root.c_str());
    return false;
  }
  std::vector<fs::path> victims;
  for (const auto& entry : fs::directory_iterator{root, ec}) {
    auto name = entry.path().filename().string();
    bool ours = (parse_step_name(name).has_value()
                 || name.rfind(std::string{trash_prefix}, 0) == 0)
                && entry.is_directory() && !entry.is_symlink();
    if (!ours) {
      std::fprintf(stderr,
                   "dcpp-soak: %s holds '%s', which is not a soak's step "
                   "directory; refusing to empty it (use a new --root)\n",
                   root.c_str(), name.c_str());
      return false;
    }
    victims.push_back(entry.path());
  }
  if (ec) {
    std::fprintf(stderr, "dcpp-soak: cannot list %s: %s\n", root.c_str(),
                 ec.message().c_str());
    return false;
  }
  for (const auto& p : victims) {
    fs::remove_all(p, ec);
    if (ec) {
      std::fprintf(stderr, "dcpp-soak: cannot remove %s: %s\n",
                   p.string().c_str(), ec.message().c_str());
      return false;
    }
  }
  return true;
}

struct saved_step {
  uint32_t seed = 0;
  synthetic::layout split = synthetic::layout::row;
};

const synthetic::layout all_layouts[] = {synthetic::layout::row,
                                         synthetic::layout::col,
                                         synthetic::layout::mixed,
                                         synthetic::layout::replicated};

/// Loads `step` on a random world and checks every value; counts it.
/// `spec`: the fault installed for this load ("" for none). Returns true
/// if the load failed on every rank (only meaningful under a fault).
struct load_check {
  bool all_failed = false;
  bool hung = false;
  size_t ok = 0;
  std::string text;
};

load_check check_load(caf::actor_system& sys, rng_t& rng, uint64_t step,
                      const saved_step& info, uint64_t cycle,
                      const std::string& spec, bool expect_ok,
                      clock_type::time_point t_start, int32_t world = 0,
                      int32_t coord = -1) {
  if (world <= 0)
    world = static_cast<int32_t>(uniform(rng, 1, 4));
  if (coord < 0)
    coord = static_cast<int32_t>(uniform(rng, 0, world - 1));
  auto res = load_step(sys, step, info.seed, info.split, world, coord, cycle,
                       spec, t_start);
  load_check out;
  out.hung = res.hung;
  out.ok = res.ok_count();
  out.all_failed = out.ok == 0;
  char buf[96];
  std::snprintf(buf, sizeof buf, "load w%d c%d %s %zu/%d ok %.2fs", world,
                coord, synthetic::to_string(info.split).c_str(), out.ok, world,
                res.seconds);
  out.text = buf;
  if (!expect_ok)
    return out;
  std::string why;
  for (size_t r = 0; r < res.ranks.size(); ++r) {
    const auto& rr = res.ranks[r];
    if (!rr.ok) {
      why = "rank " + std::to_string(r) + " failed: " + rr.error;
      break;
    }
    if (!rr.bad_keys.empty()) {
      why = "rank " + std::to_string(r) + ": values differ in "
            + std::to_string(rr.bad_keys.size()) + " keys, first "
            + rr.bad_keys.front();
      break;
    }
  }
  if (why.empty()) {
    ++cnt.loads;
  } else {
    ++cnt.bad_verify;
    fail_line(cycle, spec,
              "load of step " + std::to_string(step) + " on " + out.text + ": "
                + why);
  }
  return out;
}

/// Checks `latest_committed(root)` against `expected` (0: none).
void check_latest(uint64_t expected, uint64_t cycle, const std::string& spec,
                  const char* when) {
  auto latest = latest_committed(cfg.root);
  if (expected == 0) {
    if (latest) {
      ++cnt.lost;
      fail_line(cycle, spec,
                std::string{when} + ": latest_committed found step "
                  + std::to_string(latest->step)
                  + " but no save committed (phantom commit)");
    } else if (code_of(latest.error()) != errc::not_found) {
      ++cnt.other;
      fail_line(cycle, spec,
                std::string{when}
                  + ": latest_committed: " + describe(latest.error()));
    }
    return;
  }
  if (!latest) {
    ++cnt.lost;
    fail_line(cycle, spec,
              std::string{when} + ": latest_committed: "
                + describe(latest.error()) + " (expected step "
                + std::to_string(expected) + ": data lost)");
  } else if (latest->step != expected) {
    ++cnt.lost;
    fail_line(cycle, spec,
              std::string{when} + ": latest_committed is step "
                + std::to_string(latest->step) + ", expected "
                + std::to_string(expected)
                + (latest->step > expected ? " (phantom commit)"
                                           : " (data lost)"));
  }
}

// -- hostile operators
// ----------------------------------------------------------

/// Every entry under `dir`, links not followed: relative path -> kind and
/// content.
std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it{dir, ec}, end; !ec && it != end;
       it.increment(ec)) {
    auto rel = fs::relative(it->path(), dir, ec).string();
    auto st = it->symlink_status(ec);
    if (fs::is_symlink(st)) {
      out[rel] = "link:" + fs::read_symlink(it->path(), ec).string();
    } else if (fs::is_regular_file(st)) {
      std::FILE* f = std::fopen(it->path().c_str(), "rb");
      std::string data;
      if (f != nullptr) {
        char buf[65536];
        size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, f)) > 0)
          data.append(buf, n);
        std::fclose(f);
      }
      out[rel] = "file:" + data;
    } else {
      out[rel] = fs::is_directory(st) ? "dir" : "other";
    }
  }
  if (ec)
    out["(error)"] = ec.message();
  return out;
}

/// The sentinel: another run's checkpoint beside the root.
struct sentinel {
  std::string dir;
  std::string step_dir;
  std::string file;
  std::string export_link;
  std::map<std::string, std::string> content;

  bool make() {
    dir = cfg.root + ".sentinel";
    step_dir = step_directory(dir, 1);
    file = dir + "/precious";
    export_link = dir + "/export.pt";
    std::error_code ec;
    fs::remove_all(dir, ec);
    fs::create_directories(dir, ec);
    if (ec)
      return false;
    if (std::FILE* f = std::fopen(file.c_str(), "wb")) {
      std::fputs("another run's file\n", f);
      std::fclose(f);
    }
    fs::create_symlink(file, export_link, ec);
    checkpointer_options o;
    o.no_dist = true;
    checkpointer cp{make_filesystem_writer(step_dir), nullptr, o};
    auto sd = synthetic::make_state_dict(
      model_options(7, synthetic::layout::replicated, 0, 1));
    if (ec || !cp.save(sd))
      return false;
    content = snapshot(dir);
    return true;
  }

  /// Counts a change as lost data.
  void check(uint64_t cycle, const std::string& what) const {
    if (snapshot(dir) != content) {
      ++cnt.lost;
      fail_line(cycle, what,
                "the sentinel checkpoint " + dir
                  + " changed (written through a planted path)");
    }
  }
};

/// The name of the planted far-future step.
constexpr uint64_t far_step = 999999999999;

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"dcpp-soak: save/load cycles under random injected faults"};
  dcpp::cli::log_options log;
  // dcpp-soak's own -v shows more per cycle; --log-level sets the logs.
  dcpp::cli::add_common_options(app, log, false);
  std::optional<uint64_t> seed;
  app
    .add_option("--root", cfg.root,
                "checkpoint root (emptied if it holds "
                "only step directories)")
    ->required();
  app.add_option("--seconds", cfg.seconds,
                 "stop starting cycles after this many seconds");
  app.add_option("--cycles", cfg.max_cycles, "at most this many cycles");
  app.add_option("--seed", seed, "RNG seed (default: from the clock)");
  app.add_option("--world", cfg.world, "ranks (threads) of each save")
    ->check(CLI::Range(1, 64));
  app.add_option("--size-mb", cfg.size_mb, "size of the synthetic model")
    ->check(CLI::PositiveNumber);
  app
    .add_option("--step-timeout-ms", cfg.step_timeout_ms,
                "deadline of each collective step")
    ->check(CLI::Range(int64_t{50}, int64_t{600000}));
  app.add_option("--keep", cfg.keep, "committed steps kept by prune")
    ->check(CLI::Range(size_t{1}, size_t{1000000}));
  app.add_flag("--verbose,-v", cfg.verbose, "more detail per cycle");
  app
    .add_option("--transport", cfg.transport,
                "local (ranks share the actor system) or zmq (each rank its "
                "own ZeroMQ process group, CURVE-encrypted, over loopback)")
    ->check(CLI::IsMember({"local", "zmq"}));
  app.add_option("--fault", cfg.fixed_fault,
                 "inject this save fault in every cycle (core/fault.hpp "
                 "syntax) instead of random ones, to reproduce a failure");
  app.footer(dcpp::cli::env_footer({"DCPP_FAULT: further injected faults"}));
  if (int rc = dcpp::cli::parse(app, argc, argv, "dcpp-soak"); rc >= 0)
    return rc;
  dcpp::cli::init_logging(log, "dcpp-soak");
  cfg.seed = seed ? *seed
                  : static_cast<uint64_t>(
                    std::chrono::system_clock::now().time_since_epoch().count()
                    % 1000000007);
  if (fault::active()) {
    std::fprintf(stderr, "dcpp-soak: DCPP_FAULT is set; the soak installs "
                         "its own faults, unset it\n");
    return 2;
  }
  if (!prepare_root(cfg.root))
    return 2;
  std::printf("dcpp-soak: seed %llu, root %s, world %d (%s), %.1f MiB, step "
              "timeout %lld ms, keep %zu, %.0f s%s\n",
              static_cast<unsigned long long>(cfg.seed), cfg.root.c_str(),
              cfg.world, cfg.transport.c_str(), cfg.size_mb,
              static_cast<long long>(cfg.step_timeout_ms), cfg.keep,
              cfg.seconds, cfg.max_cycles ? " (or cycle limit)" : "");
  std::fflush(stdout);

  sentinel guard;
  if (!guard.make()) {
    std::fprintf(stderr, "dcpp-soak: cannot make the sentinel %s.sentinel\n",
                 cfg.root.c_str());
    return 2;
  }
  std::map<std::string, std::string> far_content; // the far step, planted

  rng_t rng{cfg.seed};
  system_options sopts;
  sopts.scheduler_threads = 4;
  system_config scfg{sopts};
  caf::actor_system sys{scfg};

  auto t_start = clock_type::now();
  std::map<uint64_t, saved_step> steps; // every save's seed and layout
  std::vector<uint64_t> committed;      // steps committed on disk, ascending
  uint64_t expected_latest = 0;
  std::optional<uint64_t> last_step; // the previous cycle's step
  bool last_on_disk = false;

  for (uint64_t c = 1;; ++c) {
    if (seconds_since(t_start) >= cfg.seconds)
      break;
    if (cfg.max_cycles != 0 && c > cfg.max_cycles)
      break;
    ++cnt.cycles;
    // A save that every rank saw fail must not commit later (a writer that
    // went on after the deadline): the previous cycle's state is final.
    if (last_step && !last_on_disk
        && is_committed(step_directory(cfg.root, *last_step))) {
      ++cnt.lost;
      fail_line(c - 1, "",
                "step " + std::to_string(*last_step)
                  + " was committed on disk after the save ended "
                    "(late commit)");
    }

    // 1. the fault
    auto coord = static_cast<int32_t>(uniform(rng, 0, cfg.world - 1));
    auto split = all_layouts[uniform(rng, 0, 3)];
    writer_choice wc;
    wc.threads = chance(rng, 0.3) ? 2 : 1;
    wc.per_item = chance(rng, 0.2);
    auto fault = pick_save_fault(rng, cfg.world, coord);
    if (!cfg.fixed_fault.empty()) {
      fault = save_fault{};
      fault.spec = cfg.fixed_fault;
      fault.needs_release = cfg.fixed_fault.find("rename:hang")
                            != std::string::npos;
    }
    // A hostile plant instead of a fault in some cycles.
    enum class plant { none, step_link, far_step, export_link };
    auto hostile = plant::none;
    if (cfg.fixed_fault.empty() && chance(rng, 0.12)) {
      hostile = static_cast<plant>(uniform(rng, 1, 3));
      if (hostile == plant::far_step && !far_content.empty())
        hostile = plant::step_link;
      ++cnt.hostile;
      fault = save_fault{};
      fault.spec = hostile == plant::step_link  ? "hostile:step-link"
                   : hostile == plant::far_step ? "hostile:far-step"
                                                : "hostile:export-link";
    }
    steps[c] = saved_step{static_cast<uint32_t>(c), split};
    if (hostile == plant::step_link) {
      std::error_code ec;
      fs::create_symlink(guard.step_dir, step_directory(cfg.root, c), ec);
      if (ec) {
        ++cnt.other;
        fail_line(c, fault.spec, "cannot plant the link: " + ec.message());
      }
    }
    if (!fault.spec.empty() && hostile == plant::none) {
      if (auto err = fault::install(fault.spec)) {
        std::fprintf(stderr, "dcpp-soak: bad fault spec: %s\n",
                     describe(err).c_str());
        return 2;
      }
      ++cnt.faults;
    }

    // 2. the save
    std::optional<release_guard> releaser;
    if (fault.needs_release)
      releaser.emplace(release_after());
    auto saved = save_step(sys, c, split, coord, wc, c, fault.spec, t_start);
    uint64_t fired = releaser ? releaser->stop() : 0;
    if (releaser && releaser->timed_out())
      fail_line(c, fault.spec,
                "the ranks returned only after the rename hang was released "
                "("
                  + std::to_string(release_after().count()) + " ms)",
                "WARN");
    fired += fault::fired();
    fault::clear();
    if (!fault.spec.empty() && fired > 0)
      ++cnt.fired;
    auto dir = step_directory(cfg.root, c);
    bool on_disk = is_committed(dir);
    if (hostile == plant::step_link) {
      // Refused on every rank, naming the link; then the operator's link
      // goes (the link itself, never what it points to).
      bool named = false;
      for (const auto& rr : saved.ranks)
        named = named
                || rr.error.find(dir + ": is a symbolic link")
                     != std::string::npos;
      if (saved.ok_count() > 0 || !named) {
        ++cnt.lost;
        fail_line(c, fault.spec,
                  "the step link was not refused on every rank, naming it: "
                    + std::to_string(saved.ok_count()) + " ranks saved ok; "
                    + saved.first_error());
      }
      std::error_code ec;
      fs::remove(dir, ec);
      guard.check(c, fault.spec);
    }
    auto ok = saved.ok_count();
    const char* outcome = "mixed";
    if (ok == saved.ranks.size()) {
      outcome = "committed";
      ++cnt.committed;
    } else if (ok == 0) {
      outcome = "aborted";
      ++cnt.aborted;
    } else {
      ++cnt.mixed;
    }
    if (on_disk)
      ++cnt.on_disk;
    if (ok > 0 && !on_disk) {
      ++cnt.lost;
      fail_line(c, fault.spec,
                std::to_string(ok) + " of " + std::to_string(cfg.world)
                  + " ranks saved ok but step " + std::to_string(c)
                  + " has no .metadata (data lost)");
    }
    if (ok == 0 && on_disk) {
      ++cnt.late_commit;
      if (cfg.verbose)
        std::printf("  note: every rank failed, yet step %llu is committed "
                    "(%s)\n",
                    static_cast<unsigned long long>(c),
                    saved.first_error().c_str());
    }
    if (fault.fatal && fired > 0 && on_disk) {
      ++cnt.lost;
      fail_line(c, fault.spec,
                "the fault fired, yet step " + std::to_string(c)
                  + " committed (torn commit)");
    }
    if (fault.benign && !on_disk) {
      ++cnt.unexpected;
      fail_line(c, fault.spec,
                "the save did not commit without a fatal fault: "
                  + saved.first_error(),
                "WARN");
    }
    if (on_disk) {
      committed.push_back(c);
      expected_latest = c;
    }
    last_step = c;
    last_on_disk = on_disk;

    // 3. the newest committed checkpoint, loaded on a random world
    if (hostile == plant::far_step && expected_latest != 0) {
      auto far = step_directory(cfg.root, far_step);
      std::error_code ec;
      fs::copy(step_directory(cfg.root, expected_latest), far,
               fs::copy_options::recursive, ec);
      if (ec) {
        ++cnt.other;
        fail_line(c, fault.spec, "cannot plant " + far + ": " + ec.message());
      }
      far_content = snapshot(far);
    }
    if (hostile == plant::export_link && expected_latest != 0) {
      auto res = export_torch_save(make_filesystem_reader(
                                     step_directory(cfg.root, expected_latest)),
                                   guard.export_link);
      if (res || code_of(res.error()) != errc::path_escape) {
        ++cnt.lost;
        fail_line(c, fault.spec,
                  "export to the link " + guard.export_link + " was not "
                    + "refused: "
                    + (res ? std::string{"exported"} : describe(res.error())));
      }
      guard.check(c, fault.spec);
    }
    check_latest(expected_latest, c, fault.spec, "after the save");
    std::string load_text;
    std::string load_spec;
    if (expected_latest != 0) {
      const auto& info = steps.at(expected_latest);
      if (chance(rng, 0.25)) {
        bool hang = false;
        auto world = static_cast<int32_t>(uniform(rng, 1, 4));
        auto lcoord = static_cast<int32_t>(uniform(rng, 0, world - 1));
        load_spec = pick_load_fault(rng, world, hang);
        if (auto err = fault::install(load_spec)) {
          std::fprintf(stderr, "dcpp-soak: bad fault spec: %s\n",
                       describe(err).c_str());
          return 2;
        }
        ++cnt.faults;
        ++cnt.load_faults;
        auto lc = check_load(sys, rng, expected_latest, info, c, load_spec,
                             false, t_start, world, lcoord);
        auto lfired = fault::fired();
        fault::clear();
        if (lfired > 0)
          ++cnt.fired;
        if (lfired > 0 && !lc.all_failed) {
          ++cnt.bad_verify;
          fail_line(c, load_spec,
                    "the load fault fired, yet " + std::to_string(lc.ok)
                      + " ranks loaded ok (" + lc.text + ")");
        }
        load_text = "[" + load_spec + "] " + lc.text + "; ";
      }
      auto lc = check_load(sys, rng, expected_latest, info, c, "", true,
                           t_start);
      load_text += lc.text;
    }

    // 4. prune every few cycles
    std::string prune_text;
    if (c % 5 == 0) {
      ++cnt.prunes;
      auto removed = prune(cfg.root, cfg.keep);
      if (!removed) {
        ++cnt.other;
        fail_line(c, "", "prune: " + describe(removed.error()));
      } else {
        prune_text = ", pruned " + std::to_string(removed->size());
        if (committed.size() > cfg.keep)
          committed.erase(committed.begin(),
                          committed.end() - static_cast<long>(cfg.keep));
        auto now = committed_steps(cfg.root);
        if (!now) {
          ++cnt.other;
          fail_line(c, "", "committed_steps: " + describe(now.error()));
        } else if (*now != committed) {
          ++cnt.lost;
          std::string have;
          for (auto s : *now)
            have += " " + std::to_string(s);
          std::string want;
          for (auto s : committed)
            want += " " + std::to_string(s);
          fail_line(c, "",
                    "after prune the committed steps are [" + have
                      + " ] instead of [" + want + " ]");
        }
        check_latest(expected_latest, c, "", "after prune");
        if (expected_latest != 0)
          check_load(sys, rng, expected_latest, steps.at(expected_latest), c,
                     "", true, t_start);
      }
    }

    std::printf("cycle %llu: %-22s save %s%s%s %s c%d %s %zu/%d ok%s %.2fs; "
                "latest %llu; %s%s\n",
                static_cast<unsigned long long>(c),
                fault.spec.empty() ? "-" : fault.spec.c_str(),
                synthetic::to_string(split).c_str(),
                wc.threads > 1 ? " t2" : "", wc.per_item ? " per-item" : "",
                fired > 0 ? "fired" : "-", coord, outcome, ok, cfg.world,
                on_disk ? " disk" : "", saved.seconds,
                static_cast<unsigned long long>(expected_latest),
                load_text.empty() ? "no load" : load_text.c_str(),
                prune_text.c_str());
    if (cfg.verbose && ok < saved.ranks.size())
      std::printf("  %s\n", saved.first_error().c_str());
    std::fflush(stdout);
  }
  // The last save must not commit late either.
  if (last_step && !last_on_disk) {
    std::this_thread::sleep_for(ms{cfg.step_timeout_ms});
    if (is_committed(step_directory(cfg.root, *last_step))) {
      ++cnt.lost;
      fail_line(*last_step, "",
                "committed on disk after the save ended "
                "(late commit)");
    }
  }
  guard.check(cnt.cycles, "end");
  if (!far_content.empty()
      && snapshot(step_directory(cfg.root, far_step)) != far_content) {
    ++cnt.lost;
    fail_line(cnt.cycles, "end",
              "the planted step " + step_directory(cfg.root, far_step)
                + " changed or went");
  }
  print_summary(seconds_since(t_start));
  return passed() ? 0 : 1;
}
