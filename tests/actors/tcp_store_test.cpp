// dcpp's TCPStore client against torch's own servers: torch 1.13's
// (/usr/bin/python3 here) and torch 2.6's (the chroot of scripts/torch2,
// cases tagged [torch2], run by the interop2 ctest entry
// interop2.tcp_store_client). Each finds the server's protocol, writes what
// torch's own client reads and reads what it writes; a store that is gone,
// resets or stays silent fails the request at once, or at its deadline,
// naming the store and the request.

#include "actors/transport/tcp_store_rendezvous.hpp"
#include "core/error.hpp"
#include "tests/support/free_port.hpp"
#include "tests/support/skip.hpp"

#include <catch2/catch.hpp>

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace dcpp;
using namespace std::chrono_literals;

namespace {

using clock_type = std::chrono::steady_clock;

const std::string peer_script = DCPP_SOURCE_DIR
  "/tests/actors/tcp_store_peer.py";

/// How to run tcp_store_peer.py with one torch: torch 1.13 on the host, or
/// torch 2.6 in the chroot (where the host's root is /host).
struct torch_python {
  std::vector<std::string> prefix;
  std::string script;
  /// For messages.
  std::string label;
  /// Why this torch cannot run here (a skip); empty if it can.
  std::string missing;
};

torch_python torch1() {
  static const bool importable
    = std::system("/usr/bin/python3 -c 'import torch.distributed' 2>/dev/null")
      == 0;
  torch_python py{{"/usr/bin/python3"}, peer_script, "torch 1.13", {}};
  if (!importable)
    py.missing = "/usr/bin/python3 cannot import torch.distributed";
  return py;
}

torch_python torch2() {
  const char* run = std::getenv("DCPP_TORCH2_RUN");
  const char* root = std::getenv("DCPP_TORCH2_ROOT");
  torch_python py{{}, "/host" + peer_script, "torch 2.6", {}};
  if (run == nullptr || root == nullptr || *run == '\0' || *root == '\0')
    py.missing = "DCPP_TORCH2_RUN and DCPP_TORCH2_ROOT are not set (run it "
                 "as the ctest entry interop2.tcp_store_client)";
  else if (::access((std::string{root} + "/.dcpp-torch2-ready").c_str(), F_OK)
           != 0)
    py.missing = std::string{"no PyTorch 2.6 chroot at "} + root
                 + " (scripts/torch2/chroot.sh makes it)";
  else
    py.prefix = {run, "--cwd", "/", "--", "python3"};
  return py;
}

std::string quoted(const std::string& s) {
  std::string out = "'";
  for (char c : s)
    out += c == '\'' ? std::string{"'\\''"} : std::string(1, c);
  return out + "'";
}

/// Runs one request of torch's own client; its output, "" on failure.
std::string torch_client(const torch_python& py,
                         const std::vector<std::string>& args, int* status) {
  std::string cmd;
  for (const auto& a : py.prefix)
    cmd += quoted(a) + " ";
  cmd += quoted(py.script);
  for (const auto& a : args)
    cmd += " " + quoted(a);
  std::string out;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr)
    return out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, pipe)) > 0)
    out.append(buf, n);
  int st = ::pclose(pipe);
  *status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r'))
    out.pop_back();
  return out;
}

std::string hex(const std::string& s) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

/// torch's TCPStore server in a child process (tcp_store_peer.py serve);
/// killed when this goes.
class torch_server {
public:
  /// Starts it and reads its port; `why` says what failed.
  static std::unique_ptr<torch_server> start(const torch_python& py,
                                             std::string& why) {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) {
      why = "pipe failed";
      return nullptr;
    }
    std::vector<std::string> argv = py.prefix;
    argv.push_back(py.script);
    argv.push_back("serve");
    pid_t pid = ::fork();
    if (pid == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      std::vector<char*> args;
      for (auto& a : argv)
        args.push_back(a.data());
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    std::unique_ptr<torch_server> server{new torch_server(pid, in[1], out[0])};
    // Importing torch (and entering the chroot) takes seconds.
    std::string line;
    auto deadline = clock_type::now() + 90s;
    while (line.find('\n') == std::string::npos) {
      pollfd pfd{server->out_, POLLIN, 0};
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - clock_type::now());
      char c[256];
      ssize_t n = 0;
      if (left.count() <= 0
          || ::poll(&pfd, 1, static_cast<int>(left.count())) <= 0
          || (n = ::read(server->out_, c, sizeof c)) <= 0) {
        why = "the server did not say its port: '" + line + "'";
        return nullptr;
      }
      line.append(c, static_cast<size_t>(n));
    }
    unsigned port = 0;
    char version[64] = {};
    if (std::sscanf(line.c_str(), "port %u torch %63s", &port, version) != 2
        || port == 0 || port > 65535) {
      why = "unexpected first line '" + line + "'";
      return nullptr;
    }
    server->port = static_cast<uint16_t>(port);
    server->version = version;
    return server;
  }

  ~torch_server() {
    kill();
    ::close(in_);
    ::close(out_);
  }

  /// SIGKILL: the kernel closes its connections.
  void kill() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }

  uint16_t port = 0;
  std::string version;

private:
  torch_server(pid_t pid, int in, int out) : pid_(pid), in_(in), out_(out) {
    // nop
  }

  pid_t pid_;
  int in_;
  int out_;
};

/// torch's server; null (a skip, py.missing says why) where that torch
/// cannot run; a failure where it can but the server does not start.
std::unique_ptr<torch_server> start_server(const torch_python& py) {
  if (!py.missing.empty())
    return nullptr;
  std::string why;
  auto server = torch_server::start(py, why);
  if (!server)
    FAIL("cannot start the TCPStore server of " << py.label << ": " << why);
  return server;
}

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

caf::expected<std::unique_ptr<tcp_store_client>>
connect_to(uint16_t port, std::chrono::milliseconds timeout = 10s) {
  tcp_store_client::options opts;
  opts.request_timeout = timeout;
  return tcp_store_client::connect("127.0.0.1", port, opts);
}

/// What both torch versions must do with dcpp's client.
void exercise(const torch_python& py, const torch_server& server,
              tcp_store_protocol expected) {
  auto store_name = "TCPStore at 127.0.0.1:" + std::to_string(server.port);
  INFO("torch " << server.version);
  // localhost resolves to ::1 and 127.0.0.1: the address that accepts wins.
  for (std::string host : {"127.0.0.1", "localhost"}) {
    auto client = tcp_store_client::connect(host, server.port, {});
    REQUIRE(client);
    CHECK((*client)->protocol() == expected);
  }
  auto client = connect_to(server.port);
  REQUIRE(client);
  auto& store = **client;
  CHECK(store.name() == store_name);

  // dcpp sets, torch reads (under the same key: both add torch's "/").
  std::string endpoint = "tcp://node-7.example:41234";
  REQUIRE_FALSE(store.set("dcpp/job/restart-0/group-1/coordinator", endpoint));
  auto set = store.check("dcpp/job/restart-0/group-1/coordinator");
  REQUIRE(set);
  CHECK(*set);
  auto unset = store.check("dcpp/job/nothing-here");
  REQUIRE(unset);
  CHECK_FALSE(*unset);
  int status = -1;
  CHECK(torch_client(py,
                     {"get", std::to_string(server.port),
                      "dcpp/job/restart-0/group-1/coordinator"},
                     &status)
        == hex(endpoint));
  CHECK(status == 0);
  auto got = store.get("dcpp/job/restart-0/group-1/coordinator");
  REQUIRE(got);
  CHECK(*got == endpoint);

  // torch sets while dcpp waits.
  std::atomic<int> writer_status{-1};
  std::thread writer{[&] {
    std::this_thread::sleep_for(300ms);
    int st = -1;
    torch_client(py, {"set", std::to_string(server.port), "from/torch", "hi"},
                 &st);
    writer_status = st;
  }};
  auto waited = store.wait_get("from/torch", 60s);
  writer.join();
  CHECK(writer_status == 0);
  REQUIRE(waited);
  CHECK(*waited == "hi");

  // A key that stays unset: errc::timeout at the deadline, naming it.
  auto t0 = clock_type::now();
  auto never = store.wait_get("dcpp/never", 300ms);
  auto took = seconds_since(t0);
  REQUIRE_FALSE(never);
  CHECK(code_of(never.error()) == errc::timeout);
  CHECK(context_of(never.error())
        == store_name + ": wait for 'dcpp/never': not set within 300 ms");
  CHECK(took >= 0.3);
  CHECK(took < 2.0);

  // A value over the bound is refused before it is read; the next request
  // opens a new connection.
  REQUIRE(
    torch_client(py, {"set", std::to_string(server.port), "big", "x", "100000"},
                 &status)
      .empty());
  REQUIRE(status == 0);
  auto big = store.get("big");
  REQUIRE_FALSE(big);
  CHECK(code_of(big.error()) == errc::too_large);
  CHECK(context_of(big.error())
        == store_name
             + ": get 'big': the value is 100000 bytes (at most 65536 "
               "accepted)");
  got = store.get("dcpp/job/restart-0/group-1/coordinator");
  REQUIRE(got);
  CHECK(*got == endpoint);
}

/// The server dies: a rank's wait and the next request fail at once,
/// naming the store and the request.
void store_dies(torch_server& server) {
  auto client = connect_to(server.port);
  REQUIRE(client);
  REQUIRE_FALSE((*client)->set("before", "1"));
  auto waiter = connect_to(server.port);
  REQUIRE(waiter);
  caf::expected<std::string> waited{std::string{}};
  clock_type::time_point wait_ended; // read after join
  std::thread rank{[&] {
    waited = (*waiter)->wait_get("dcpp/job/restart-0/group-1/coordinator", 60s);
    wait_ended = clock_type::now();
  }};
  std::this_thread::sleep_for(200ms); // the WAIT is on the server
  auto t_kill = clock_type::now();
  server.kill();
  rank.join();
  REQUIRE_FALSE(waited);
  CHECK(code_of(waited.error()) == errc::io_error);
  CHECK_THAT(context_of(waited.error()),
             Catch::StartsWith(
               "TCPStore at 127.0.0.1:" + std::to_string(server.port)
               + ": wait for 'dcpp/job/restart-0/group-1/coordinator': "));
  CHECK(std::chrono::duration<double>(wait_ended - t_kill).count() < 1.0);
  auto t0 = clock_type::now();
  auto err = (*client)->set("dcpp/job/restart-0/group-1/coordinator",
                            "tcp://127.0.0.1:1");
  auto took = seconds_since(t0);
  REQUIRE(err);
  CHECK(code_of(err) == errc::io_error);
  auto context = context_of(err);
  INFO(context);
  CHECK_THAT(context, Catch::StartsWith(
                        "TCPStore at 127.0.0.1:" + std::to_string(server.port)
                        + ": set 'dcpp/job/restart-0/group-1/coordinator': "));
  CHECK(took < 1.0);
  // And a new connection is refused, at once too.
  t0 = clock_type::now();
  auto check = (*client)->check("before");
  REQUIRE_FALSE(check);
  CHECK_THAT(context_of(check.error()),
             Catch::Contains("check 'before': Connection refused"));
  CHECK(seconds_since(t0) < 1.0);
}

/// A listener on 127.0.0.1 in this process; `serve` gets each accepted
/// connection (and closes it), until the listener goes.
class local_listener {
public:
  template <class F>
  explicit local_listener(F serve) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof addr;
    ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    ::listen(fd_, 16);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
    thread_ = std::thread{[this, serve] {
      for (;;) {
        int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0)
          return;
        serve(c);
      }
    }};
  }

  ~local_listener() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }

  uint16_t port = 0;

private:
  int fd_ = -1;
  std::thread thread_;
};

} // namespace

TEST_CASE("the client speaks torch 1.13's TCPStore", "[python][tcp_store]") {
  auto server = start_server(torch1());
  if (!server)
    DCPP_SKIP(torch1().missing);
  exercise(torch1(), *server, tcp_store_protocol::torch1);
}

TEST_CASE("torch 1.13's store dies: a wait and a set fail at once",
          "[python][tcp_store]") {
  auto server = start_server(torch1());
  if (!server)
    DCPP_SKIP(torch1().missing);
  store_dies(*server);
}

TEST_CASE("the client speaks torch 2.6's TCPStore", "[.torch2][tcp_store]") {
  auto server = start_server(torch2());
  if (!server)
    DCPP_SKIP(torch2().missing);
  REQUIRE_THAT(server->version, Catch::StartsWith("2.6"));
  exercise(torch2(), *server, tcp_store_protocol::torch2);
}

TEST_CASE("torch 2.6's store dies: a wait and a set fail at once",
          "[.torch2][tcp_store]") {
  auto server = start_server(torch2());
  if (!server)
    DCPP_SKIP(torch2().missing);
  store_dies(*server);
}

TEST_CASE("no store listening: connect fails at once, naming it",
          "[tcp_store]") {
  auto port = test::free_port();
  REQUIRE(port != 0);
  auto t0 = clock_type::now();
  auto client = connect_to(port);
  REQUIRE_FALSE(client);
  CHECK(seconds_since(t0) < 1.0);
  CHECK(code_of(client.error()) == errc::io_error);
  CHECK(context_of(client.error())
        == "TCPStore at 127.0.0.1:" + std::to_string(port)
             + ": connect: Connection refused");
}

TEST_CASE("a peer that resets every connection fails connect at once",
          "[tcp_store]") {
  // Closing with a zero linger time sends RST, as a store does that drops a
  // client in the middle of a query.
  local_listener peer{[](int fd) {
    linger lg{1, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    ::close(fd);
  }};
  auto t0 = clock_type::now();
  auto client = connect_to(peer.port);
  REQUIRE_FALSE(client);
  CHECK(seconds_since(t0) < 1.0);
  auto context = context_of(client.error());
  INFO(context);
  // The probe's query or its answer meets the reset (or, if the reset
  // reads as "2.x", the opening of the next connection does).
  CHECK_THAT(context,
             Catch::StartsWith("TCPStore at 127.0.0.1:"
                               + std::to_string(peer.port) + ": connect: "));
  CHECK_THAT(context, Catch::Matches(".*(reset by peer|Broken pipe).*"));
}

TEST_CASE("a peer that never answers fails connect at the deadline",
          "[tcp_store]") {
  std::vector<int> held;
  std::mutex mx;
  {
    local_listener peer{[&](int fd) {
      std::lock_guard<std::mutex> guard{mx};
      held.push_back(fd); // open, silent
    }};
    auto t0 = clock_type::now();
    auto client = connect_to(peer.port, 300ms);
    auto took = seconds_since(t0);
    REQUIRE_FALSE(client);
    CHECK(code_of(client.error()) == errc::timeout);
    CHECK(context_of(client.error())
          == "TCPStore at 127.0.0.1:" + std::to_string(peer.port)
               + ": connect: neither a torch 1.x nor a torch 2.x TCPStore: "
                 "not answered within 300 ms");
    CHECK(took >= 0.3);
    CHECK(took < 1.5);
  }
  for (int fd : held)
    ::close(fd);
}

TEST_CASE("the directory's messages name the request, its name the store",
          "[python][tcp_store]") {
  auto server = start_server(torch1());
  if (!server)
    DCPP_SKIP(torch1().missing);
  auto dir = make_tcp_store_directory("localhost", server->port, 10s);
  REQUIRE(dir);
  CHECK((*dir)->name()
        == "torchrun's store at localhost:" + std::to_string(server->port));
  REQUIRE_FALSE((*dir)->publish("dcpp/j/coordinator", "tcp://127.0.0.1:5"));
  auto value = (*dir)->lookup("dcpp/j/coordinator", 1s);
  REQUIRE(value);
  CHECK(*value == "tcp://127.0.0.1:5");
  auto missing = (*dir)->lookup("dcpp/j/other", 100ms);
  REQUIRE_FALSE(missing);
  CHECK(code_of(missing.error()) == errc::timeout);
  CHECK(context_of(missing.error())
        == "wait for 'dcpp/j/other': not set within 100 ms (is the "
           "coordinator's rank running dcpp?)");
  server->kill();
  auto t0 = clock_type::now();
  auto lost = (*dir)->publish("dcpp/j/coordinator", "tcp://127.0.0.1:6");
  CHECK(seconds_since(t0) < 1.0);
  REQUIRE(lost);
  CHECK_THAT(context_of(lost), Catch::StartsWith("set 'dcpp/j/coordinator': "));
}
