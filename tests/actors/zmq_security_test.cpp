// The ZeroMQ transport's door (issue 11), in-process with real sockets:
// CURVE keys derived from the secret, the ZAP handler refusing a client
// with another key before any of its frames is delivered, and the refusal
// to start without a secret.

#include "actors/system.hpp"
#include "actors/transport/curve_keys.hpp"
#include "actors/transport/zmq_transport.hpp"
#include "core/error.hpp"
#include "tests/support/free_port.hpp"

#include <caf/actor_system.hpp>

#include <catch2/catch.hpp>
#include <zmq.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <string>

using namespace dcpp;

namespace {

using test::free_port;

launch_env hub_env(uint16_t port, std::string secret) {
  launch_env env;
  env.rank = 0;
  env.world_size = 2;
  env.master_port = port;
  env.secret = std::move(secret);
  env.job_id = "zmq-security-test";
  return env;
}

/// The first handshake event a CURVE client with the given keys sees
/// when it connects to `port` and sends a frame of `frame_bytes`
/// (ZMQ_EVENT_HANDSHAKE_SUCCEEDED or one of the failures), 0 if none
/// within 10 s.
uint16_t try_client(uint16_t port, const detail::curve_key_pair& server,
                    const detail::curve_key_pair& client, size_t frame_bytes) {
  zmq::context_t ctx{1};
  zmq::socket_t sock{ctx, zmq::socket_type::dealer};
  sock.set(zmq::sockopt::linger, 0);
  sock.set(zmq::sockopt::curve_serverkey,
           zmq::const_buffer(server.public_key.data(), 32));
  sock.set(zmq::sockopt::curve_publickey,
           zmq::const_buffer(client.public_key.data(), 32));
  sock.set(zmq::sockopt::curve_secretkey,
           zmq::const_buffer(client.secret_key.data(), 32));
  REQUIRE(zmq_socket_monitor(sock.handle(), "inproc://client-monitor",
                             ZMQ_EVENT_HANDSHAKE_SUCCEEDED
                               | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH
                               | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                               | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL)
          == 0);
  zmq::socket_t mon{ctx, zmq::socket_type::pair};
  mon.set(zmq::sockopt::rcvtimeo, 10000);
  mon.set(zmq::sockopt::linger, 0);
  mon.connect("inproc://client-monitor");
  sock.connect("tcp://127.0.0.1:" + std::to_string(port));
  std::string frame(frame_bytes, 'x');
  (void)sock.send(zmq::buffer(frame), zmq::send_flags::dontwait);
  zmq::message_t head;
  zmq::message_t addr;
  if (!mon.recv(head) || head.size() < 6)
    return 0;
  (void)mon.recv(addr);
  uint16_t event = 0;
  std::memcpy(&event, head.data(), sizeof(event));
  return event;
}

detail::curve_key_pair random_pair() {
  char pub[41] = {};
  char sec[41] = {};
  REQUIRE(zmq_curve_keypair(pub, sec) == 0);
  detail::curve_key_pair out;
  zmq_z85_decode(out.public_key.data(), pub);
  zmq_z85_decode(out.secret_key.data(), sec);
  return out;
}

} // namespace

TEST_CASE("CURVE keys follow from the secret and the job id",
          "[zmq][security]") {
  auto a = detail::derive_curve_keys("secret-a", "job");
  auto a2 = detail::derive_curve_keys("secret-a", "job");
  auto b = detail::derive_curve_keys("secret-b", "job");
  REQUIRE(a);
  REQUIRE(a2);
  REQUIRE(b);
  CHECK(a->server.public_key == a2->server.public_key);
  CHECK(a->client.secret_key == a2->client.secret_key);
  CHECK(a->server.public_key != b->server.public_key);
  CHECK(a->client.public_key != b->client.public_key);
  CHECK(a->server.public_key != a->client.public_key);
  // The public key is the one ZeroMQ computes from the secret key.
  char pub[41] = {};
  REQUIRE(zmq_curve_public(pub, detail::z85(a->server.secret_key).c_str())
          == 0);
  CHECK(std::string{pub} == detail::z85(a->server.public_key));
  auto empty = detail::derive_curve_keys("", "job");
  REQUIRE(!empty);
  CHECK(empty.error() == errc::invalid_argument);
}

TEST_CASE("without a secret a process refuses to start unless insecure",
          "[zmq][security]") {
  system_options sopts;
  sopts.scheduler_threads = 2;
  system_config cfg{sopts};
  caf::actor_system sys{cfg};
  auto port = free_port();
  auto refused = make_zmq_process_group(sys, hub_env(port, ""));
  REQUIRE(!refused);
  CHECK(refused.error() == errc::unauthorized);
  CHECK(describe(refused.error()).find("--insecure") != std::string::npos);
  zmq_options opts;
  opts.insecure = true;
  opts.drain_timeout = std::chrono::milliseconds(10);
  auto insecure = make_zmq_process_group(sys, hub_env(port, ""), opts);
  CHECK(insecure);
}

TEST_CASE("the coordinator admits only the key of its job", "[zmq][security]") {
  system_options sopts;
  sopts.scheduler_threads = 2;
  system_config cfg{sopts};
  caf::actor_system sys{cfg};
  auto port = free_port();
  zmq_options opts;
  opts.drain_timeout = std::chrono::milliseconds(10);
  auto hub = make_zmq_process_group(sys, hub_env(port, "the-job-secret"), opts);
  REQUIRE(hub);
  auto keys = detail::derive_curve_keys("the-job-secret", "zmq-security-test");
  auto other = detail::derive_curve_keys("another-secret", "zmq-security-test");
  REQUIRE(keys);
  REQUIRE(other);
  // Knows the coordinator's public key but not a key of the job: ZAP
  // refuses it (status 400) before its 32 MiB frame is read.
  CHECK(try_client(port, keys->server, random_pair(), size_t{32} << 20)
        == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH);
  // Holds another job's keys: cannot even talk to this server.
  auto wrong = try_client(port, other->server, other->client, 16);
  CHECK((wrong == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
         || wrong == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL));
  // The job's own client key passes (the test can tell the difference).
  CHECK(try_client(port, keys->server, keys->client, 16)
        == ZMQ_EVENT_HANDSHAKE_SUCCEEDED);
}
