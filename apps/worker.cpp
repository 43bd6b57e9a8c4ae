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
// (apps/synthetic.hpp). Exit code 0 on success; otherwise one error line
// naming the rank and the step.

#include "actors/checkpointer.hpp"
#include "actors/process_group.hpp"
#include "actors/system.hpp"
#include "actors/transport/launch_env.hpp"
#include "actors/transport/tcp_store_rendezvous.hpp"
#include "actors/transport/zmq_transport.hpp"
#include "apps/synthetic.hpp"
#include "core/error.hpp"
#include "core/fault.hpp"
#include "storage/filesystem.hpp"

#include <caf/actor_system.hpp>

#include <CLI/CLI.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

using namespace dcpp;

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

struct reporter {
  int32_t rank;
  int32_t world;
  bool tty = ::isatty(STDERR_FILENO) != 0;

  void progress(const char* phase) const {
    if (tty)
      std::fprintf(stderr, "\rrank %d/%d: %s...\x1b[K", rank, world, phase);
  }

  void clear() const {
    if (tty)
      std::fprintf(stderr, "\r\x1b[K");
  }

  int fail(const char* step, const std::string& why) const {
    clear();
    std::fprintf(stderr, "dcpp-worker: rank %d/%d failed in step %s: %s\n",
                 rank, world, step, why.c_str());
    return 1;
  }

  /// A failed save or load: the error, then one line per failing rank from
  /// the failure's data ("... rank 3 failed in step write:
  /// dcpp::storage_failure: ..."), so that scripts need not parse the
  /// summary.
  int fail_op(const char* op, const caf::error& err) const {
    fail(op, describe(err));
    if (auto f = checkpoint_failure_of(err))
      for (const auto& [r, e] : f->failures)
        std::fprintf(stderr,
                     "dcpp-worker: rank %d/%d: rank %d failed in step %s: "
                     "%s\n",
                     rank, world, r, f->step.c_str(), describe(e).c_str());
    return 1;
  }
};

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"dcpp-worker: one rank of a multi-process save or load"};
  std::string mode;
  std::string dir;
  double size_mb = 16;
  uint32_t seed = 0;
  std::string layout_name = "mixed";
  bool verify = false;
  int32_t coordinator_rank = 0;
  size_t threads = 1;
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
  app.add_flag("--verify", verify, "check every value after a load");
  app.add_option("--coordinator-rank", coordinator_rank,
                 "rank whose process hosts the coordinator");
  app.add_option("--threads", threads, "writer/reader threads of this rank");
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
  CLI11_PARSE(app, argc, argv);
  if (const char* c = std::getenv("DCPP_COORDINATOR"))
    if (std::string{c} == "external")
      external = true;

  auto env = read_launch_env();
  if (!env) {
    std::fprintf(stderr, "dcpp-worker: %s\n", describe(env.error()).c_str());
    return 2;
  }
  reporter rep{env->rank, env->world_size};
  if (!fault_spec.empty())
    if (auto err = fault::install(fault_spec))
      return rep.fail("arguments", describe(err));
  auto layout = synthetic::parse_layout(layout_name);
  if (!layout)
    return rep.fail("arguments", describe(layout.error()));
  if (threads < 1)
    threads = 1;

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
    filesystem_writer_options wopts;
    wopts.thread_count = threads;
    filesystem_reader_options ropts;
    ropts.thread_count = threads;
    checkpointer_options copts;
    copts.process_group = *group;
    copts.coordinator_rank = coordinator_rank;
    copts.io_threads = static_cast<uint32_t>(threads);
    copts.step_timeout = std::chrono::milliseconds(
      static_cast<int64_t>(step_timeout_s * 1000));
    checkpointer cp{make_filesystem_writer(dir, wopts),
                    make_filesystem_reader(dir, ropts), copts};

    rep.progress("building the model");
    t0 = clock_type::now();
    auto sd = mode == "save" ? synthetic::make_state_dict(opts)
                             : synthetic::make_empty_state_dict(opts);
    double t_build = seconds_since(t0);

    rep.progress(mode == "save" ? "saving" : "loading");
    t0 = clock_type::now();
    if (mode == "save") {
      auto md = cp.save(sd);
      if (!md)
        rc = rep.fail_op("save", md.error());
    } else if (auto err = cp.load(sd)) {
      rc = rep.fail_op("load", err);
    }
    double t_op = seconds_since(t0);

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
    if (rc == 0) {
      rep.clear();
      char verify_note[64] = "";
      if (verify && mode == "load")
        std::snprintf(verify_note, sizeof verify_note, ", verify %.3f s",
                      t_verify);
      std::printf("rank %d/%d: %s ok: model %.1f MiB, %s %.3f s (%.1f MiB/s "
                  "for the job); connect %.3f s, build %.3f s%s\n",
                  env->rank, env->world_size, mode.c_str(), size_mb,
                  mode.c_str(), t_op, t_op > 0 ? size_mb / t_op : 0.0,
                  t_connect, t_build, verify_note);
      std::fflush(stdout);
    }
    // The checkpointer and the group go before the actor system.
  }
  return rc;
}
