// dcpp-worker: one rank of a job whose ranks are processes. Run it under
// dcpp-launch (or torchrun, SLURM, mpirun: see actors/transport/launch_env):
//
//   dcpp-launch --nproc 2 -- dcpp-worker save --dir /tmp/ckpt --size-mb 64
//   dcpp-launch --nproc 3 -- dcpp-worker load --dir /tmp/ckpt --size-mb 64
//   --verify
//
// The rank of --coordinator-rank (default 0) hosts the coordinator and binds
// MASTER_ADDR:MASTER_PORT; with --external-coordinator (or
// DCPP_COORDINATOR=external) every rank connects to a dcpp-coordinator
// process instead. Each rank saves or loads its part of the synthetic model
// (apps/synthetic.hpp), or with --layout-file the float32 tensors of a
// layout file (PyTorch DCP's benchmark: peer_dcp.py --print-layout). A load
// first allocates and touches its destination tensors (timed on their own:
// "alloc"), then times the load alone. Exit code 0 on success, 1 with one error
// line naming the rank and the step, 2 for usage errors. The coordinator rank's
// process prints one progress line for the whole job (not with --quiet); every
// rank prints its result, or with --json the operation's report as one JSON
// object.

#include "actors/checkpointer.hpp"
#include "actors/process_group.hpp"
#include "actors/system.hpp"
#include "actors/transport/launch_env.hpp"
#include "actors/transport/tcp_store_rendezvous.hpp"
#include "actors/transport/zmq_transport.hpp"
#include "apps/cli_common.hpp"
#include "apps/landing_report.hpp"
#include "apps/progress_line.hpp"
#include "apps/synthetic.hpp"
#include "core/error.hpp"
#include "core/fault.hpp"
#include "storage/filesystem.hpp"

#include <caf/actor_system.hpp>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <sched.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

using namespace dcpp;

namespace {

using clock_type = std::chrono::steady_clock;

/// I/O threads of a rank when --threads is not given. A save: 1 (measured
/// best at 1, 2 and 4 threads, 1 and 2 ranks on 2 cores: its writer already
/// overlaps with the kernel's write-back). A load from the page cache is
/// bound by one core's copy and checksum (a warm 1 GiB load on one rank at
/// 2.2-2.6 GB/s with one thread, where read(2) alone reaches 3.8): the
/// cores this process may use, shared among the ranks on this machine.
size_t default_threads(const std::string& mode) {
  if (mode != "load")
    return 1;
  cpu_set_t set;
  CPU_ZERO(&set);
  size_t cores = 1;
  if (::sched_getaffinity(0, sizeof set, &set) == 0)
    cores = static_cast<size_t>(CPU_COUNT(&set));
  size_t local = 1;
  for (auto name : {"LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE"})
    if (auto env = std::getenv(name)) {
      local = static_cast<size_t>(std::max<long long>(1, std::atoll(env)));
      break;
    }
  return std::max<size_t>(1, cores / local);
}

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

struct reporter {
  int32_t rank;
  int32_t world;
  bool json = false;
  std::string mode;
  /// Whether this process prints the job's failure map (fail_op).
  bool prints_map = false;

  void progress(const char* phase) const {
    spdlog::debug("{}", phase);
  }

  int fail(const char* step, const std::string& why) const {
    std::fprintf(stderr, "dcpp-worker: rank %d/%d failed in step %s: %s\n",
                 rank, world, step, why.c_str());
    if (json) {
      nlohmann::json j{{"rank", rank}, {"world", world}, {"op", mode},
                       {"ok", false},  {"step", step},   {"error", why}};
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
    }
    return 1;
  }

  /// A bad argument found after parsing: exit code 2.
  int usage(const std::string& why) const {
    fail("arguments", why);
    return cli::exit_usage;
  }

  /// A failed save or load. The process that prints the job's failure
  /// map (the coordinator rank's, or rank 0 with an external coordinator)
  /// prints a summary, then one line per failing rank from the failure's
  /// data ("... rank 3 failed in step write: dcpp::storage_failure: ..."),
  /// so that scripts need not parse the summary. Every other rank prints
  /// one line: its own error, or which ranks failed. So a job prints
  /// about one line per rank, not one per rank squared.
  int fail_op(const char* op, const caf::error& err) const {
    auto f = checkpoint_failure_of(err);
    if (f == nullptr)
      return fail(op, describe(err));
    auto own = f->failures.find(rank);
    if (!prints_map) {
      if (own != f->failures.end())
        return fail(op, f->op + " failed in step " + f->step + ": "
                          + describe(own->second));
      return fail(op, f->op + " failed in step " + f->step + ": "
                        + failing_ranks(*f) + " (the coordinator's process "
                        + "prints why)");
    }
    fail(op, f->op + " failed in step " + f->step + ": " + failing_ranks(*f));
    for (const auto& [r, e] : f->failures)
      std::fprintf(stderr,
                   "dcpp-worker: rank %d/%d: rank %d failed in step %s: "
                   "%s\n",
                   rank, world, r, f->step.c_str(), describe(e).c_str());
    return 1;
  }

  /// "rank 1 failed (rank_lost)" / "ranks 1 (injected_fault), 3
  /// (storage_failure) failed (2 of 4)": each rank's error code, at most 8
  /// ranks named.
  std::string failing_ranks(const checkpoint_failure& f) const {
    std::string out = f.failures.size() == 1 ? "rank " : "ranks ";
    size_t named = 0;
    for (const auto& [r, e] : f.failures) {
      if (named == 8) {
        out += ", ...";
        break;
      }
      out += (named++ ? ", " : "") + std::to_string(r) + " ("
             + to_string(code_of(e)) + ")";
    }
    out += " failed";
    if (f.failures.size() > 1)
      out += " (" + std::to_string(f.failures.size()) + " of "
             + std::to_string(world) + ")";
    return out;
  }
};

/// Seconds since the epoch: ranks on one host compare their start and end
/// times, as a barrier before and after the operation would.
double unix_now() {
  return std::chrono::duration<double>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

/// A layout file: a JSON list of [name, [dims...]] (peer_dcp.py
/// --print-layout), or an object with that list under "layout".
caf::expected<std::vector<std::pair<std::string, shape_t>>>
read_layout_file(const std::string& path) {
  std::ifstream in{path};
  if (!in)
    return make_error(errc::invalid_argument,
                      "cannot open layout file " + path);
  std::vector<std::pair<std::string, shape_t>> out;
  try {
    auto doc = nlohmann::json::parse(in);
    const auto& list = doc.is_array() ? doc : doc.at("layout");
    for (const auto& entry : list)
      out.emplace_back(entry.at(0).get<std::string>(),
                       entry.at(1).get<shape_t>());
  } catch (const std::exception& e) {
    return make_error(errc::invalid_argument,
                      "layout file " + path + ": " + e.what());
  }
  if (out.empty())
    return make_error(errc::invalid_argument,
                      "layout file " + path + " lists no tensors");
  return out;
}

double seconds_of(int64_t us) {
  return static_cast<double>(us) / 1e6;
}

/// The report of a save or load as one JSON object.
nlohmann::json report_json(const op_report& r, const std::string& mode) {
  return {
    {"bytes", r.bytes},
    {"files", r.files},
    {"ranks", r.ranks},
    {"steps_s",
     {{"plan", seconds_of(r.plan_us)},
      {mode == "save" ? "write" : "read", seconds_of(r.data_us)},
      {"commit", seconds_of(r.commit_us)}}},
    {"total_s", seconds_of(r.total_us)},
    {"bytes_per_s", r.throughput()},
  };
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"dcpp-worker: one rank of a multi-process save or load"};
  cli::log_options log;
  cli::add_common_options(app, log);
  std::string mode;
  std::string dir;
  double size_mb = 16;
  uint32_t seed = 0;
  std::string layout_name = "mixed";
  bool verify = false;
  int32_t coordinator_rank = 0;
  // 0: chosen by default_threads (below).
  size_t threads = 0;
  std::string layout_file;
  std::string alloc = "torch";
  std::string landing = "auto";
  bool external = false;
  double step_timeout_s = 120;
  int64_t peer_timeout_ms = 5000;
  std::string fault_spec;
  app.add_option("mode", mode, "save or load")
    ->required()
    ->check(CLI::IsMember({"save", "load"}));
  app.add_option("--dir", dir, "checkpoint directory")->required();
  app.add_option("--size-mb", size_mb, "size of the whole model (MiB)");
  app.add_option("--seed", seed, "value seed");
  app.add_option("--layout", layout_name, "row, col, replicated or mixed");
  app.add_option("--layout-file", layout_file,
                 "the model's tensors from this JSON file instead: [[name, "
                 "[dims...]], ...] as peer_dcp.py --print-layout prints "
                 "them (float32; --size-mb is then ignored)");
  app
    .add_option("--alloc", alloc,
                "destination tensors of a load: torch (at::zeros, as a "
                "PyTorch program's own) or huge (dcpp's huge-page host "
                "memory)")
    ->check(CLI::IsMember({"torch", "huge"}));
  app
    .add_option("--landing", landing,
                "how bytes reach (or leave) tensors that are not dcpp's "
                "huge-page memory: auto (measured once per process), "
                "direct or bounce (through a huge-page buffer); also "
                "DCPP_LANDING")
    ->check(CLI::IsMember({"auto", "direct", "bounce"}));
  app.add_flag("--verify", verify, "check every value after a load");
  app.add_option("--coordinator-rank", coordinator_rank,
                 "rank whose process hosts the coordinator");
  app.add_option("--threads", threads,
                 "writer/reader threads of this rank (default: 1 for a "
                 "save; for a load the machine's cores shared among the "
                 "ranks on it, LOCAL_WORLD_SIZE)");
  app.add_flag("--external-coordinator", external,
               "connect to a dcpp-coordinator process (also: "
               "DCPP_COORDINATOR=external)");
  app.add_option("--step-timeout", step_timeout_s,
                 "deadline of each collective step (seconds)");
  app.add_option("--peer-timeout-ms", peer_timeout_ms,
                 "a silent peer is lost after this long");
  bool insecure = false;
  app.add_flag("--insecure", insecure,
               "run without DCPP_SECRET: no encryption, no authentication");
  app.add_option("--fault", fault_spec,
                 "inject faults, e.g. write:hang@1 or io:enospc@0:3 (see "
                 "core/fault.hpp; also: DCPP_FAULT)");
  bool as_json = false;
  app.add_flag("--json", as_json,
               "print the operation's report (bytes and files written or "
               "read, step times, throughput) as one JSON object per rank");
  bool quiet = false;
  app.add_flag("--quiet,-q", quiet,
               "no progress line (the coordinator rank's process prints "
               "one per job on stderr)");
  app.footer(cli::env_footer(
    {"RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT: this rank and the "
     "coordinator's address (or torchrun's, SLURM_*, OMPI_COMM_WORLD_*)",
     "DCPP_SECRET / DCPP_SECRET_FILE: the job's secret (CURVE keys)",
     "DCPP_JOB_ID: the job's id (or TORCHELASTIC_RUN_ID, SLURM_JOB_ID)",
     "DCPP_COORDINATOR=external: as --external-coordinator",
     "DCPP_FAULT: injected faults, as --fault"}));
  if (int rc = cli::parse(app, argc, argv, "dcpp-worker"); rc >= 0)
    return rc;
  cli::init_logging(log, "dcpp-worker");
  if (const char* c = std::getenv("DCPP_COORDINATOR"))
    if (std::string{c} == "external")
      external = true;

  auto env = read_launch_env();
  if (!env) {
    std::fprintf(stderr, "dcpp-worker: %s\n", describe(env.error()).c_str());
    return 2;
  }
  cli::set_log_tag("rank " + std::to_string(env->rank));
  reporter rep{env->rank, env->world_size, as_json, mode};
  rep.prints_map = env->rank == (external ? 0 : coordinator_rank);
  if (!quiet)
    cli::start_progress_line();
  if (!fault_spec.empty())
    if (auto err = fault::install(fault_spec))
      return rep.usage(describe(err));
  auto layout = synthetic::parse_layout(layout_name);
  if (!layout)
    return rep.usage(describe(layout.error()));
  if (threads < 1)
    threads = default_threads(mode);
  std::vector<std::pair<std::string, shape_t>> tensors;
  if (!layout_file.empty()) {
    auto read = read_layout_file(layout_file);
    if (!read)
      return rep.usage(describe(read.error()));
    tensors = std::move(*read);
  }

  system_options sopts;
  sopts.scheduler_threads = 2;
  system_config cfg{sopts};
  caf::actor_system sys{cfg};
  int rc = 0;
  {
    zmq_options zopts;
    zopts.coordinator_rank = coordinator_rank;
    zopts.external_coordinator = external;
    zopts.peer_timeout = std::chrono::milliseconds(peer_timeout_ms);
    zopts.insecure = insecure;
    rep.progress("connecting");
    auto t0 = clock_type::now();
    // Under torchrun the coordinator's endpoint goes through torchrun's
    // store (its port is taken by that store).
    auto directory = launcher_directory(*env);
    if (!directory)
      return rep.fail("connect", describe(directory.error()));
    zopts.directory = *directory;
    auto group = make_zmq_process_group(sys, *env, zopts);
    if (!group)
      return rep.fail("connect", describe(group.error()));
    double t_connect = seconds_since(t0);

    synthetic::options opts;
    opts.size_mb = size_mb;
    opts.seed = seed;
    opts.split = *layout;
    opts.rank = env->rank;
    opts.world = env->world_size;
    opts.tensors = tensors;
    opts.huge_pages = alloc == "huge";
    auto landing_opt = parse_landing_mode(landing).value_or(
      landing_mode::automatic);
    filesystem_writer_options wopts;
    wopts.thread_count = threads;
    wopts.landing = landing_opt;
    filesystem_reader_options ropts;
    ropts.thread_count = threads;
    ropts.landing = landing_opt;
    checkpointer_options copts;
    copts.process_group = *group;
    copts.coordinator_rank = coordinator_rank;
    copts.io_threads = static_cast<uint32_t>(threads);
    copts.step_timeout = std::chrono::milliseconds(
      static_cast<int64_t>(step_timeout_s * 1000));
    checkpointer cp{make_filesystem_writer(dir, wopts),
                    make_filesystem_reader(dir, ropts), copts};

    rep.progress(mode == "save" ? "building the model"
                                : "allocating the destination");
    t0 = clock_type::now();
    auto sd = mode == "save" ? synthetic::make_state_dict(opts)
                             : synthetic::make_empty_state_dict(opts);
    double t_build = seconds_since(t0);

    rep.progress(mode == "save" ? "saving" : "loading");
    double unix_start = unix_now();
    t0 = clock_type::now();
    if (mode == "save") {
      auto md = cp.save(sd);
      if (!md)
        rc = rep.fail_op("save", md.error());
    } else if (auto err = cp.load(sd)) {
      rc = rep.fail_op("load", err);
    }
    double t_op = seconds_since(t0);
    double unix_end = unix_now();
    auto report = cp.last_report();

    double t_verify = 0;
    if (rc == 0 && mode == "load" && verify) {
      rep.progress("verifying");
      t0 = clock_type::now();
      std::string bad;
      for (const auto& key : synthetic::verify(sd, opts))
        bad += (bad.empty() ? "" : ", ") + key;
      t_verify = seconds_since(t0);
      if (!bad.empty())
        rc = rep.fail("verify", "values differ: " + bad);
    }
    if (rc == 0 && as_json) {
      auto j = report_json(report, mode);
      j["rank"] = env->rank;
      j["world"] = env->world_size;
      j["op"] = mode;
      j["ok"] = true;
      j["wall_s"] = t_op;
      j["connect_s"] = t_connect;
      j[mode == "save" ? "build_s" : "alloc_s"] = t_build;
      j["alloc"] = alloc;
      j["landing"] = cli::landing_json(landing_opt, mode == "save");
      j["threads"] = threads;
      j["local_bytes"] = synthetic::local_bytes(sd);
      j["start_unix"] = unix_start;
      j["end_unix"] = unix_end;
      if (verify && mode == "load")
        j["verify_s"] = t_verify;
      std::printf("%s\n", j.dump().c_str());
      std::fflush(stdout);
    } else if (rc == 0) {
      char verify_note[64] = "";
      if (verify && mode == "load")
        std::snprintf(verify_note, sizeof verify_note, ", verify %.3f s",
                      t_verify);
      constexpr double mib = 1024.0 * 1024.0;
      std::printf("rank %d/%d: %s ok: %.1f MiB in %llu files %s by %d ranks, "
                  "%.3f s (%.1f MiB/s for the job; plan %.3f s, %s %.3f s, "
                  "commit %.3f s); connect %.3f s, %s %.3f s%s\n",
                  env->rank, env->world_size, mode.c_str(), report.bytes / mib,
                  static_cast<unsigned long long>(report.files),
                  mode == "save" ? "written" : "read", report.ranks,
                  seconds_of(report.total_us), report.throughput() / mib,
                  seconds_of(report.plan_us), mode == "save" ? "write" : "read",
                  seconds_of(report.data_us), seconds_of(report.commit_us),
                  t_connect, mode == "save" ? "build" : "alloc", t_build,
                  verify_note);
      std::fflush(stdout);
    }
    // The checkpointer and the group go before the actor system.
  }
  cli::stop_progress_line();
  return rc;
}
