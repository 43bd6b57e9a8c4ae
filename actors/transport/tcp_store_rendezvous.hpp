#pragma once

// Rendezvous through torchrun's own store. Under torchrun the agent runs a
// c10d TCPStore on MASTER_ADDR:MASTER_PORT and tells its workers so
// (TORCHELASTIC_USE_AGENT_STORE=True): with the static rendezvous (the
// default) that is the store on --master_port; with the c10d rendezvous of
// torch 2.x (--standalone, --rdzv_backend c10d) it is the rendezvous store,
// MASTER_ADDR often a host name ("localhost"). Either way the port is taken,
// and binding it fails with "Address already in use". There the
// coordinator's process binds a free port and publishes its endpoint in
// that store; the other ranks read it (launch_env::agent_store,
// zmq_options::directory).
//
// The store is not authenticated: anyone who reaches it may read or write
// it. So nothing secret goes into it, and no secret is derived from it; the
// endpoint read there only says where to connect, and CURVE (DCPP_SECRET)
// still decides whether what listens there is this job's coordinator (a
// forged endpoint makes the ranks fail with `unauthorized`, having sent
// nothing). Under torchrun, set DCPP_SECRET (or DCPP_SECRET_FILE) in the
// environment torchrun passes on, or pass --insecure.

#include "actors/transport/endpoint.hpp"
#include "actors/transport/launch_env.hpp"
#include "core/error.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

namespace dcpp {

/// The two wire protocols of c10d's TCPStore that a client meets.
enum class tcp_store_protocol : uint8_t {
  /// torch 1.x: a query is its type byte and its arguments.
  torch1,
  /// torch 2.x: the same framing, the query types shifted by one; a
  /// connection must open with VALIDATE and a magic number.
  torch2,
};

/// "torch 1.x" or "torch 2.x".
std::string to_string(tcp_store_protocol x);

/// A blocking client of a c10d TCPStore server (torchrun's agent store)
/// that speaks the protocol of torch 1.x and of torch 2.x, finding out
/// which one the server speaks when it connects.
///
/// Written here rather than taken from libtorch: libtorch 1.13's
/// c10d::TCPStore speaks only 1.x's protocol, which a 2.x server refuses
/// (it resets a connection that does not open with VALIDATE); 2.x's client
/// is not in the libtorch dcpp builds against, and its VALIDATE opening
/// makes a 1.x server read a key of ~1 GB. The part dcpp needs (set,
/// check, wait, get) is small, and a client of its own gives each request a
/// deadline and an error that names the store and the request, where
/// libtorch's blocks or throws a bare "Connection reset by peer".
///
/// Every request (connect, set, check, get) waits at most the request
/// timeout, a wait its own timeout; one that fails (refused, reset, closed, a
/// reply out of protocol, no answer in time) fails at once with an error whose
/// context is "<name>: <request>: <why>", e.g. "torchrun's store at
/// 127.0.0.1:29500: set 'dcpp/run/coordinator': Connection reset by peer",
/// and closes the connection (the next request opens a new one). Keys get
/// the "/" prefix that torch's TCPStore gives them, so torch's
/// `store.get("k")` reads what `set("k", v)` wrote. Values read are bounded
/// (max_value_size). One request at a time (a mutex).
class tcp_store_client {
public:
  struct options {
    /// Connecting and each request.
    std::chrono::milliseconds request_timeout = std::chrono::seconds(30);
    /// Longest value get() accepts; a longer one fails with errc::too_large.
    size_t max_value_size = 64 * 1024;
    /// For messages; empty: "TCPStore at HOST:PORT".
    std::string name;
  };

  /// Connects to the store at host:port (a name is resolved; every address
  /// is tried) and finds out its protocol: a first connection sends 1.x's
  /// "number of keys" query and closes its sending side; a 1.x server
  /// answers it, a 2.x server closes the connection without an answer.
  /// The client then opens its own connection (2.x: VALIDATE first) and
  /// checks that the server answers there.
  static caf::expected<std::unique_ptr<tcp_store_client>>
  connect(const std::string& host, uint16_t port, options opts);

  ~tcp_store_client();

  tcp_store_client(const tcp_store_client&) = delete;
  tcp_store_client& operator=(const tcp_store_client&) = delete;

  /// Sets `key` to `value`. A set has no reply in either protocol, so a
  /// check of the key follows: a store that lost the connection or the
  /// value makes set() fail here, not later.
  caf::error set(const std::string& key, const std::string& value);

  /// Whether `key` is set.
  caf::expected<bool> check(const std::string& key);

  /// The value of `key`, which must be set (a server closes the connection
  /// on a get of a missing key).
  caf::expected<std::string> get(const std::string& key);

  /// Waits up to `timeout` for `key` to be set (the server answers a WAIT
  /// query when it is; a store that goes away fails the wait at once), then
  /// gets it; errc::timeout if it stays unset (the connection is dropped,
  /// which ends the wait on the server).
  caf::expected<std::string> wait_get(const std::string& key,
                                      std::chrono::milliseconds timeout);

  /// An open TCP connection with deadlines (defined in the .cpp).
  class connection;

  tcp_store_protocol protocol() const {
    return protocol_;
  }

  const std::string& name() const {
    return opts_.name;
  }

private:
  tcp_store_client(std::string host, uint16_t port, options opts,
                   tcp_store_protocol protocol);

  using clock_type = std::chrono::steady_clock;

  caf::error open(const std::string& request);
  /// Sends `query` (opening a connection first if there is none) and reads
  /// `reply_size` bytes of its reply into `reply` before `deadline`.
  caf::error round_trip(const std::string& request, const std::string& query,
                        char* reply, size_t reply_size,
                        clock_type::time_point deadline);
  caf::expected<bool> check_locked(const std::string& key,
                                   const std::string& request);
  caf::expected<std::string> get_locked(const std::string& key,
                                        const std::string& request);
  caf::error fail(errc code, const std::string& request,
                  const std::string& why);

  std::string host_;
  uint16_t port_;
  options opts_;
  tcp_store_protocol protocol_;
  std::mutex mx_;
  std::unique_ptr<connection> conn_;
};

/// A client of the c10d TCPStore at host:port ("torchrun's store at
/// HOST:PORT" in messages) as the endpoint directory of a job. Connecting
/// and each request wait up to `timeout`.
caf::expected<std::shared_ptr<endpoint_directory>>
make_tcp_store_directory(const std::string& host, uint16_t port,
                         std::chrono::milliseconds timeout);

/// The directory of `env`'s launcher: torchrun's agent store when
/// `env.agent_store`, else null (MASTER_ADDR:MASTER_PORT is free for the
/// coordinator).
caf::expected<std::shared_ptr<endpoint_directory>>
launcher_directory(const launch_env& env, std::chrono::milliseconds timeout
                                          = std::chrono::seconds(60));

} // namespace dcpp
