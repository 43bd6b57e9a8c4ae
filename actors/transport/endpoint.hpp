#pragma once

// TCP endpoints of the ZeroMQ transport: host names resolved (getaddrinfo,
// IPv4 or IPv6), endpoints spelled the way ZeroMQ reads them (brackets
// around an IPv6 literal), and the directory through which a coordinator
// that bound a free port tells the ranks where it listens.
//
// ZeroMQ binds only numeric addresses or interface names: "localhost" or a
// SLURM node name in MASTER_ADDR fails with "No such device". The transport
// therefore resolves the name first. A name with both IPv4 and IPv6
// addresses resolves to its first IPv4 address, so that the binding side
// and the connecting side pick the same family whatever the resolver's
// order on each host.

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>

namespace dcpp {

/// A numeric host address.
struct resolved_host {
  /// "10.0.0.5", "::1", or "*" for every interface.
  std::string address;
  bool ipv6 = false;
};

/// Resolves `host` (a literal, a name, or "*" / "0.0.0.0" / "::" for every
/// interface). Fails with errc::invalid_argument naming the host and the
/// resolver's message.
caf::expected<resolved_host> resolve_host(const std::string& host);

/// "tcp://10.0.0.5:29500", "tcp://[::1]:29500", "tcp://*:29500"; port 0
/// spells ZeroMQ's "any free port" ("tcp://10.0.0.5:*").
std::string tcp_endpoint(const resolved_host& host, uint16_t port);

/// A parsed "tcp://HOST:PORT" (HOST may be bracketed); fails with
/// errc::invalid_argument when `endpoint` is not of that shape.
struct host_port {
  std::string host;
  uint16_t port = 0;
};
caf::expected<host_port> parse_tcp_endpoint(const std::string& endpoint);

/// A key-value store shared by the ranks of a job (torchrun's c10d store),
/// through which the coordinator's process publishes the endpoint it bound
/// and the other ranks look it up. It is not trusted: what a rank reads
/// there only says where to connect; the CURVE handshake (DCPP_SECRET)
/// still decides whether the peer is this job's coordinator. No secret is
/// ever written to it.
///
/// Call order: 1) the coordinator's process: publish(key, endpoint) once
/// it is bound; 2) every other rank: lookup(key, timeout), which waits
/// until the key is set.
///
/// A value is an endpoint: lookup refuses one larger than
/// `max_value_bytes` (errc::too_large). Its errors need not name the key
/// or the directory: the caller's message does.
class endpoint_directory {
public:
  /// The largest value lookup accepts: an endpoint is some 60 bytes, a
  /// host name at most 253.
  static constexpr size_t max_value_bytes = 4096;

  virtual ~endpoint_directory();

  [[nodiscard]] virtual caf::error
  publish(const std::string& key, const std::string& value)
    = 0;

  /// Waits up to `timeout` for `key`; errc::timeout if it stays unset.
  virtual caf::expected<std::string>
  lookup(const std::string& key, std::chrono::milliseconds timeout) = 0;

  /// For messages: "torchrun's store at 127.0.0.1:29500".
  virtual std::string name() const = 0;
};

} // namespace dcpp
