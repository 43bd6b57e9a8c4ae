// dcpp-launch: starts N copies of a command as the ranks of one job on this
// host, the way torchrun does, and supervises them.
//
//   dcpp-launch --nproc N [--master-port P] [--master-addr A] [--] CMD ARGS...
//
// torchrun's spellings work too (--nproc-per-node / --nproc_per_node,
// --nnodes, --node-rank, --master-addr, --master-port, with dashes or
// underscores), and the command may follow without `--`: the first word
// that is not an option starts it. With --nnodes M > 1 one dcpp-launch runs
// on each host (--node-rank 0..M-1) and its ranks are node_rank * N + 0..N-1
// of M * N; every host must then be given the same DCPP_SECRET and
// DCPP_JOB_ID, and node 0's address as --master-addr (port default 29500).
//
// Every child gets RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
// GROUP_RANK, MASTER_ADDR, MASTER_PORT, DCPP_SECRET and DCPP_JOB_ID (fresh
// random values unless set already) in its environment, in its own process
// group.
// Ctrl-C / SIGTERM are forwarded to every child. As soon as one child fails
// (non-zero exit or killed by a signal) the others get SIGTERM, then SIGKILL
// after a grace period, and dcpp-launch exits non-zero naming the rank.
// Ranks die with dcpp-launch: if it is killed (even with -9), the kernel
// sends every rank SIGKILL (PR_SET_PDEATHSIG), so no rank runs on without
// its supervisor.
//
// Exit code: 0 when every rank exited 0; the first failing rank's exit code
// (1 for a failed dcpp operation, 2 for its usage error; 1 if it was
// killed); 2 for dcpp-launch's own usage errors; 128+N after a forwarded
// signal N. With --json a summary (every rank's exit code or signal, the
// wall time) goes to stdout as one JSON object at the end.

#include "apps/cli_common.hpp"

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace {

volatile std::sig_atomic_t pending_signal = 0;

void on_signal(int sig) {
  pending_signal = sig;
}

std::string random_secret() {
  std::array<unsigned char, 16> buf{};
  std::ifstream urandom{"/dev/urandom", std::ios::binary};
  urandom.read(reinterpret_cast<char*>(buf.data()), buf.size());
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (auto b : buf) {
    out += hex[b >> 4];
    out += hex[b & 15];
  }
  return out;
}

struct child {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
  int status = 0;
};

std::string describe_status(int status) {
  if (WIFEXITED(status))
    return "exited with code " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return std::string{"was killed by signal "}
           + std::to_string(WTERMSIG(status)) + " ("
           + ::strsignal(WTERMSIG(status)) + ")";
  return "stopped";
}

/// Signals the process group of every rank, also of ranks that already
/// exited: what they left behind (a background process) goes too.
void signal_all(std::vector<child>& children, int sig) {
  for (auto& c : children)
    if (c.pid > 0)
      ::kill(-c.pid, sig); // the child's whole process group
}

/// Reaps children that ended; returns the first failure's index or -1.
int reap(std::vector<child>& children, bool block) {
  int failed = -1;
  for (;;) {
    int status = 0;
    pid_t pid = ::waitpid(-1, &status, block ? 0 : WNOHANG);
    if (pid <= 0)
      return failed;
    for (size_t i = 0; i < children.size(); ++i) {
      if (children[i].pid != pid)
        continue;
      children[i].running = false;
      children[i].status = status;
      bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && failed < 0)
        failed = static_cast<int>(i);
    }
    block = false;
  }
}

size_t count_running(const std::vector<child>& children) {
  size_t n = 0;
  for (const auto& c : children)
    n += c.running ? 1 : 0;
  return n;
}

} // namespace

/// The --json summary: every rank's end and the wall time.
void print_summary(const std::vector<child>& children, int failed, int rc,
                   double wall_s) {
  nlohmann::json ranks = nlohmann::json::array();
  for (const auto& c : children) {
    nlohmann::json r{{"rank", c.rank}};
    if (c.running || c.pid <= 0) {
      r["exit_code"] = nullptr;
    } else if (WIFEXITED(c.status)) {
      r["exit_code"] = WEXITSTATUS(c.status);
    } else if (WIFSIGNALED(c.status)) {
      r["exit_code"] = nullptr;
      r["signal"] = WTERMSIG(c.status);
    }
    ranks.push_back(std::move(r));
  }
  nlohmann::json j{{"ok", rc == 0},
                   {"exit_code", rc},
                   {"wall_s", wall_s},
                   {"failed_rank", failed >= 0 ? nlohmann::json(failed)
                                               : nlohmann::json(nullptr)},
                   {"ranks", std::move(ranks)}};
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

int main(int argc, char** argv) {
  auto t_start = std::chrono::steady_clock::now();
  CLI::App app{"dcpp-launch: run N ranks of a command on this host"};
  dcpp::cli::log_options log;
  dcpp::cli::add_common_options(app, log);
  int nproc = 1;
  int nnodes = 1;
  int node_rank = 0;
  int master_port = 0;
  std::string master_addr = "127.0.0.1";
  double grace_s = 5;
  app
    .add_option("--nproc,-n,--nproc-per-node,--nproc_per_node", nproc,
                "number of ranks on this host")
    ->required()
    ->check(CLI::Range(1, 4096));
  app.add_option("--nnodes", nnodes, "number of hosts (one dcpp-launch each)")
    ->check(CLI::Range(1, 4096));
  app
    .add_option("--node-rank,--node_rank", node_rank,
                "this host's index among --nnodes (0: the coordinator's)")
    ->check(CLI::Range(0, 4095));
  app.add_option("--master-port,--master_port", master_port,
                 "coordinator port (default: a free one; 29500 with "
                 "--nnodes > 1)");
  app.add_option("--master-addr,--master_addr", master_addr,
                 "coordinator address or host name");
  app.add_option("--grace", grace_s,
                 "seconds between SIGTERM and SIGKILL when stopping ranks");
  bool as_json = false;
  app.add_flag("--json", as_json,
               "print a summary at the end on stdout: every rank's exit "
               "code (or signal) and the wall time");
  app.footer(dcpp::cli::env_footer(
    {"The command follows the options, after -- or directly.",
     "DCPP_SECRET / DCPP_SECRET_FILE: the job's secret, passed on (default: "
     "a fresh one)",
     "DCPP_JOB_ID: the job's id, passed on (default: a fresh one)",
     "Sets for every rank: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, "
     "MASTER_ADDR, MASTER_PORT, DCPP_SECRET, DCPP_JOB_ID"}));
  // Everything from the first word that is not an option on is the command
  // (its own options included), with or without `--` before it.
  app.prefix_command();
  if (int rc = dcpp::cli::parse(app, argc, argv, "dcpp-launch"); rc >= 0)
    return rc;
  dcpp::cli::init_logging(log, "dcpp-launch");
  std::vector<std::string> command = app.remaining();
  if (!command.empty() && command.front() == "--")
    command.erase(command.begin());
  if (command.empty()) {
    std::fprintf(stderr, "dcpp-launch: no command to run (dcpp-launch "
                         "--nproc N [--] CMD ARGS...)\n");
    return 2;
  }
  if (node_rank >= nnodes) {
    std::fprintf(stderr,
                 "dcpp-launch: --node-rank %d is not below --nnodes "
                 "%d\n",
                 node_rank, nnodes);
    return 2;
  }
  if (nnodes > 1) {
    for (const char* name : {"DCPP_JOB_ID", "DCPP_SECRET"}) {
      const char* v = std::getenv(name);
      if ((v == nullptr || *v == '\0')
          && !(std::string{name} == "DCPP_SECRET"
               && std::getenv("DCPP_SECRET_FILE"))) {
        std::fprintf(stderr,
                     "dcpp-launch: --nnodes %d: set %s to the same value on "
                     "every host (a value drawn here would differ between "
                     "hosts)\n",
                     nnodes, name);
        return 2;
      }
    }
    if (master_port == 0)
      master_port = 29500;
  }

  if (master_port == 0)
    if (auto port = dcpp::cli::free_loopback_port(); port != 0)
      master_port = port;
    else
      master_port = 29500;
  // The job's secret (the ranks derive their CURVE keys from it): the
  // caller's DCPP_SECRET or DCPP_SECRET_FILE, else a fresh one.
  const char* env_secret = std::getenv("DCPP_SECRET");
  const char* env_secret_file = std::getenv("DCPP_SECRET_FILE");
  bool secret_from_file = !(env_secret && *env_secret) && env_secret_file
                          && *env_secret_file;
  std::string secret = env_secret && *env_secret ? env_secret : random_secret();
  // The job's identity: the ranks' coordinator refuses ranks of another job
  // (two jobs that share a port and a secret never pair up).
  const char* env_job = std::getenv("DCPP_JOB_ID");
  std::string job_id = env_job && *env_job ? env_job : random_secret();

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  ::sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  std::vector<child> children(static_cast<size_t>(nproc));
  const pid_t launcher_pid = ::getpid();
  for (int r = 0; r < nproc; ++r) {
    auto& c = children[static_cast<size_t>(r)];
    c.rank = node_rank * nproc + r;
    pid_t pid = ::fork();
    if (pid < 0) {
      std::fprintf(stderr, "dcpp-launch: fork failed: %s\n",
                   std::strerror(errno));
      signal_all(children, SIGKILL);
      return 1;
    }
    if (pid == 0) {
      ::setpgid(0, 0);
      // Die with the launcher (this thread: dcpp-launch has only one). The
      // setting survives exec. If the launcher died before prctl, nobody
      // would send the signal: check the parent after setting it.
      if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
        std::fprintf(stderr, "dcpp-launch: rank %d: prctl: %s\n", c.rank,
                     std::strerror(errno));
        ::_exit(127);
      }
      if (::getppid() != launcher_pid)
        ::_exit(137);
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      ::setenv("RANK", std::to_string(node_rank * nproc + r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nnodes * nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("GROUP_RANK", std::to_string(node_rank).c_str(), 1);
      ::setenv("MASTER_ADDR", master_addr.c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(master_port).c_str(), 1);
      if (!secret_from_file)
        ::setenv("DCPP_SECRET", secret.c_str(), 1);
      ::setenv("DCPP_JOB_ID", job_id.c_str(), 1);
      std::vector<char*> args;
      for (auto& a : command)
        args.push_back(a.data());
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      std::fprintf(stderr, "dcpp-launch: rank %d: cannot run %s: %s\n", c.rank,
                   args[0], std::strerror(errno));
      ::_exit(127);
    }
    ::setpgid(pid, pid); // also from the parent: no race with the child
    c.pid = pid;
    c.running = true;
  }

  int failed = -1;
  int forwarded = 0;
  while (count_running(children) > 0) {
    if (pending_signal != 0 && forwarded == 0) {
      forwarded = pending_signal;
      std::fprintf(stderr, "dcpp-launch: forwarding signal %d to %d rank(s)\n",
                   forwarded, nproc);
      signal_all(children, forwarded);
    }
    auto f = reap(children, false);
    if (f >= 0 && failed < 0) {
      failed = f;
      const auto& c = children[static_cast<size_t>(f)];
      std::fprintf(stderr, "dcpp-launch: rank %d %s; stopping the others\n",
                   c.rank, describe_status(c.status).c_str());
      auto wait_grace = [&] {
        auto deadline = std::chrono::steady_clock::now()
                        + std::chrono::duration<double>(grace_s);
        while (count_running(children) > 0
               && std::chrono::steady_clock::now() < deadline) {
          reap(children, false);
          std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
      };
      // After a forwarded Ctrl-C every rank is handling that signal: a
      // SIGTERM now could cut its handler short (seen as a lost SIGINT).
      if (forwarded != 0)
        wait_grace();
      if (count_running(children) > 0) {
        signal_all(children, SIGTERM);
        wait_grace();
      }
      signal_all(children, SIGKILL);
      reap(children, true);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  int rc = 0;
  if (failed >= 0) {
    const auto& c = children[static_cast<size_t>(failed)];
    std::fprintf(stderr, "dcpp-launch: failed: rank %d %s\n", c.rank,
                 describe_status(c.status).c_str());
    rc = WIFEXITED(c.status) && WEXITSTATUS(c.status) != 0
           ? WEXITSTATUS(c.status)
           : 1;
  } else if (forwarded != 0) {
    rc = 128 + forwarded;
  }
  if (as_json)
    print_summary(children, failed >= 0 ? children[failed].rank : -1, rc,
                  std::chrono::duration<double>(std::chrono::steady_clock::now()
                                                - t_start)
                    .count());
  return rc;
}
