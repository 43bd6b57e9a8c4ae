// dcpp-coordinator: the coordinator of a multi-process job in a process of
// its own. Every rank runs `dcpp-worker --external-coordinator` (or with
// DCPP_COORDINATOR=external) and connects to it:
//
//   export DCPP_SECRET=s DCPP_JOB_ID=j
//   dcpp-coordinator --port 29500 --world 4 &
//   export DCPP_COORDINATOR=external
//   dcpp-launch --nproc 4 --master-port 29500 -- dcpp-worker save --dir /tmp/c
//
// It serves operations until every rank connected and disconnected again,
// or until SIGTERM / SIGINT. Binds 127.0.0.1 unless --addr or MASTER_ADDR
// says otherwise; DCPP_SECRET (or DCPP_SECRET_FILE) is the secret every
// rank must hold (the connections are CURVE-encrypted with keys derived
// from it; without one it refuses to start unless --insecure), and
// DCPP_JOB_ID the job it must belong to (dcpp-launch passes its own on).

#include "actors/system.hpp"
#include "actors/transport/launch_env.hpp"
#include "actors/transport/zmq_transport.hpp"
#include "apps/cli_common.hpp"
#include "apps/progress_line.hpp"
#include "core/error.hpp"

#include <caf/actor_system.hpp>

#include <CLI/CLI.hpp>

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>

using namespace dcpp;

namespace {

std::atomic<bool> stop_requested{false};

extern "C" void on_signal(int) {
  stop_requested = true;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"dcpp-coordinator: the coordinator of ranks run as processes"};
  dcpp::cli::log_options log;
  dcpp::cli::add_common_options(app, log);
  int port = 29500;
  std::string addr;
  int32_t world = 0;
  int32_t coordinator_rank = 0;
  int64_t peer_timeout_ms = 5000;
  app.add_option("--port", port, "TCP port to bind")->required();
  app.add_option("--addr", addr,
                 "address to bind (default: MASTER_ADDR or 127.0.0.1)");
  app.add_option("--world", world, "number of ranks")->required();
  app.add_option("--coordinator-rank", coordinator_rank,
                 "the rank number the ranks name as coordinator rank");
  app.add_option("--peer-timeout-ms", peer_timeout_ms,
                 "a silent rank is lost after this long");
  bool insecure = false;
  app.add_flag("--insecure", insecure,
               "run without DCPP_SECRET: no encryption, no authentication");
  bool quiet = false;
  app.add_flag("--quiet,-q", quiet,
               "no progress line (one per save or load, on stderr)");
  app.footer(dcpp::cli::env_footer(
    {"MASTER_ADDR: the address to bind without --addr",
     "DCPP_SECRET / DCPP_SECRET_FILE: the job's secret (CURVE keys)",
     "DCPP_JOB_ID: the job's id (or TORCHELASTIC_RUN_ID, SLURM_JOB_ID)"}));
  if (int rc = dcpp::cli::parse(app, argc, argv, "dcpp-coordinator"); rc >= 0)
    return rc;
  dcpp::cli::init_logging(log, "dcpp-coordinator");
  if (world < 1 || port < 1 || port > 65535) {
    std::fprintf(stderr, "dcpp-coordinator: need --world >= 1 and a port\n");
    return 2;
  }
  launch_env env;
  env.world_size = world;
  env.master_port = static_cast<uint16_t>(port);
  if (!addr.empty())
    env.master_addr = addr;
  else if (const char* a = std::getenv("MASTER_ADDR"); a && *a)
    env.master_addr = a;
  // The secret (DCPP_SECRET or DCPP_SECRET_FILE) and the job id as ranks
  // read them.
  auto ranks_env = read_launch_env();
  if (!ranks_env) {
    std::fprintf(stderr, "dcpp-coordinator: %s\n",
                 describe(ranks_env.error()).c_str());
    return 2;
  }
  env.job_id = ranks_env->job_id;
  env.secret = ranks_env->secret;
  env.bind_addr = ranks_env->bind_addr;

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);

  system_options sopts;
  sopts.scheduler_threads = 2;
  system_config cfg{sopts};
  caf::actor_system sys{cfg};
  zmq_options zopts;
  zopts.coordinator_rank = coordinator_rank;
  zopts.peer_timeout = std::chrono::milliseconds(peer_timeout_ms);
  zopts.insecure = insecure;
  std::printf("dcpp-coordinator: serving %d ranks on tcp://%s:%d\n", world,
              env.master_addr.c_str(), port);
  std::fflush(stdout);
  if (!quiet)
    dcpp::cli::start_progress_line();
  auto err = serve_zmq_coordinator(sys, env, zopts, stop_requested);
  dcpp::cli::stop_progress_line();
  if (err && !stop_requested.load()) {
    std::fprintf(stderr, "dcpp-coordinator: %s\n", describe(err).c_str());
    return 1;
  }
  std::printf("dcpp-coordinator: %s\n", stop_requested.load()
                                          ? "stopped by a signal"
                                          : "every rank disconnected; done");
  return 0;
}
