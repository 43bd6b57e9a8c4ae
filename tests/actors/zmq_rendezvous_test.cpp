// Where ranks find the coordinator, in-process with real sockets: host
// names and IPv6 literals in MASTER_ADDR, and a directory (torchrun's store
// in production, a map here) through which a coordinator bound to a free
// port tells the ranks its endpoint.

#include "actors/system.hpp"
#include "actors/transport/endpoint.hpp"
#include "actors/transport/zmq_transport.hpp"
#include "core/error.hpp"
#include "tests/support/free_port.hpp"

#include <caf/actor_system.hpp>

#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>

using namespace dcpp;
using namespace std::chrono_literals;

namespace {

using test::free_port;

/// An in-memory directory: lookup waits for publish.
class map_directory final : public endpoint_directory {
public:
  caf::error publish(const std::string& key,
                     const std::string& value) override {
    {
      std::lock_guard<std::mutex> guard{mx_};
      values_[key] = value;
    }
    cv_.notify_all();
    return caf::none;
  }

  caf::expected<std::string>
  lookup(const std::string& key, std::chrono::milliseconds timeout) override {
    std::unique_lock<std::mutex> guard{mx_};
    if (!cv_.wait_for(guard, timeout, [&] { return values_.count(key) > 0; }))
      return make_error(errc::timeout, "not set");
    return values_[key];
  }

  std::string name() const override {
    return "the test's map";
  }

  std::map<std::string, std::string> values() {
    std::lock_guard<std::mutex> guard{mx_};
    return values_;
  }

private:
  std::mutex mx_;
  std::condition_variable cv_;
  std::map<std::string, std::string> values_;
};

launch_env env_of(int32_t rank, const std::string& addr, uint16_t port) {
  launch_env env;
  env.rank = rank;
  env.world_size = 2;
  env.master_addr = addr;
  env.master_port = port;
  env.secret = "rendezvous-test-secret";
  env.job_id = "rendezvous-test";
  return env;
}

zmq_options quick_options(std::shared_ptr<endpoint_directory> dir = {}) {
  zmq_options opts;
  opts.drain_timeout = 2000ms;
  opts.connect_timeout = 10000ms;
  opts.directory = std::move(dir);
  return opts;
}

struct two_systems {
  system_options sopts = [] {
    system_options o;
    o.scheduler_threads = 2;
    return o;
  }();
  system_config cfg0{sopts};
  system_config cfg1{sopts};
  caf::actor_system sys0{cfg0};
  caf::actor_system sys1{cfg1};
};

/// Rank 0 hosts the coordinator, rank 1 connects; both groups made.
void check_pair(const std::string& addr0, const std::string& addr1,
                std::shared_ptr<endpoint_directory> dir = {}) {
  two_systems s;
  auto port = free_port();
  auto hub = make_zmq_process_group(s.sys0, env_of(0, addr0, port),
                                    quick_options(dir));
  REQUIRE(hub);
  auto spoke = make_zmq_process_group(s.sys1, env_of(1, addr1, port),
                                      quick_options(dir));
  REQUIRE(spoke);
  CHECK((*spoke)->world_size() == 2);
  spoke->reset();
  hub->reset();
}

} // namespace

TEST_CASE("host names resolve, IPv4 first", "[zmq][rendezvous]") {
  auto v4 = resolve_host("127.0.0.1");
  REQUIRE(v4);
  CHECK(v4->address == "127.0.0.1");
  CHECK(!v4->ipv6);
  CHECK(tcp_endpoint(*v4, 29500) == "tcp://127.0.0.1:29500");
  CHECK(tcp_endpoint(*v4, 0) == "tcp://127.0.0.1:*");
  auto local = resolve_host("localhost");
  REQUIRE(local);
  CHECK(local->address == "127.0.0.1");
  char name[256] = {};
  ::gethostname(name, sizeof name - 1);
  CHECK(resolve_host(name));
  auto v6 = resolve_host("[::1]");
  REQUIRE(v6);
  CHECK(v6->ipv6);
  CHECK(tcp_endpoint(*v6, 7) == "tcp://[::1]:7");
  auto any = resolve_host("0.0.0.0");
  REQUIRE(any);
  CHECK(tcp_endpoint(*any, 7) == "tcp://*:7");
  auto bad = resolve_host("no-such-host.invalid");
  REQUIRE(!bad);
  CHECK(context_of(bad.error()).find("no-such-host.invalid")
        != std::string::npos);
}

TEST_CASE("tcp endpoints parse, brackets and all", "[zmq][rendezvous]") {
  auto a = parse_tcp_endpoint("tcp://10.0.0.5:29500");
  REQUIRE(a);
  CHECK(a->host == "10.0.0.5");
  CHECK(a->port == 29500);
  auto b = parse_tcp_endpoint("tcp://[fe80::1]:41000");
  REQUIRE(b);
  CHECK(b->host == "fe80::1");
  CHECK(b->port == 41000);
  for (auto bad : {"10.0.0.5:1", "tcp://h", "tcp://h:0", "tcp://h:99999",
                   "tcp://:5", "tcp://h:5x"})
    CHECK(!parse_tcp_endpoint(bad));
}

TEST_CASE("ranks meet at a host name or an IPv6 literal", "[zmq][rendezvous]") {
  SECTION("localhost") {
    check_pair("localhost", "localhost");
  }
  SECTION("this host's name") {
    char name[256] = {};
    ::gethostname(name, sizeof name - 1);
    check_pair(name, name);
  }
  SECTION("::1") {
    check_pair("::1", "[::1]");
  }
}

TEST_CASE("a coordinator on a free port publishes its endpoint",
          "[zmq][rendezvous]") {
  auto dir = std::make_shared<map_directory>();
  check_pair("127.0.0.1", "127.0.0.1", dir);
  auto values = dir->values();
  REQUIRE(values.size() == 1);
  CHECK(values.begin()->first.find("dcpp/rendezvous-test/restart-0/group-")
        == 0);
  CHECK(values.begin()->second.find("tcp://127.0.0.1:") == 0);
  // A second group of the same job gets a key of its own.
  check_pair("127.0.0.1", "127.0.0.1", dir);
  CHECK(dir->values().size() == 2);
}

TEST_CASE("a rank that finds no endpoint fails naming the key",
          "[zmq][rendezvous]") {
  two_systems s;
  auto dir = std::make_shared<map_directory>();
  auto opts = quick_options(dir);
  opts.connect_timeout = 200ms;
  auto spoke = make_zmq_process_group(s.sys1, env_of(1, "127.0.0.1", 1), opts);
  REQUIRE(!spoke);
  CHECK(code_of(spoke.error()) == errc::timeout);
  CHECK(context_of(spoke.error()).find("dcpp/rendezvous-test/")
        != std::string::npos);
  CHECK(context_of(spoke.error()).find("the test's map") != std::string::npos);
}

TEST_CASE("a host that does not resolve is named", "[zmq][rendezvous]") {
  two_systems s;
  auto hub = make_zmq_process_group(
    s.sys0, env_of(0, "no-such-host.invalid", free_port()), quick_options());
  REQUIRE(!hub);
  CHECK(context_of(hub.error()).find("no-such-host.invalid")
        != std::string::npos);
}

TEST_CASE("a forged endpoint in the directory is quoted escaped and bounded",
          "[zmq][rendezvous]") {
  two_systems s;
  auto dir = std::make_shared<map_directory>();
  auto opts = quick_options(dir);
  opts.connect_timeout = 2000ms;
  // A job of its own for each value: the first group of a job reads the
  // first key.
  auto rank_reading = [&](const std::string& job, const std::string& value) {
    REQUIRE(
      !dir->publish("dcpp/" + job + "/restart-0/group-1/coordinator", value));
    auto env = env_of(1, "127.0.0.1", 1);
    env.job_id = job;
    auto spoke = make_zmq_process_group(s.sys1, env, opts);
    REQUIRE(!spoke);
    return spoke.error();
  };
  SECTION("escape sequences and a forged log line") {
    auto err = rank_reading("forged-line",
                            "\x1b[2Jtcp://h:1\n[rank 0] all good");
    CHECK(code_of(err) == errc::protocol_error);
    auto why = describe(err);
    CHECK(why.find('\n') == std::string::npos);
    CHECK(why.find('\x1b') == std::string::npos);
    CHECK(why.find("'\\x1b[2Jtcp://h:1\\x0a[rank 0] all good' is not a "
                   "tcp://HOST:PORT endpoint")
          != std::string::npos);
  }
  SECTION("a host that is not printable ASCII") {
    auto err = rank_reading("forged-host", "tcp://h\x1b]0;x\x07:29500");
    CHECK(describe(err).find("(bad host)") != std::string::npos);
  }
  SECTION("a huge value") {
    auto why = describe(
      rank_reading("forged-size", std::string(size_t{64} << 20, 'x')));
    CHECK(why.size() < 1024);
    CHECK(why.find("... (67108864 bytes)") != std::string::npos);
  }
}
