#pragma once

// Rendezvous through torchrun's own store. Under torchrun's static
// rendezvous (the default) the agent of node 0 runs a c10d TCPStore on
// MASTER_ADDR:MASTER_PORT and tells its workers so
// (TORCHELASTIC_USE_AGENT_STORE=True): the port is taken, and binding it
// fails with "Address already in use". There the coordinator's process
// binds a free port and publishes its endpoint in that store; the other
// ranks read it (launch_env::agent_store, zmq_options::directory).
//
// The store is not authenticated: anyone who reaches it may read or write
// it. So nothing secret goes into it, and no secret is derived from it; the
// endpoint read there only says where to connect, and CURVE (DCPP_SECRET)
// still decides whether what listens there is this job's coordinator (a
// forged endpoint makes the ranks fail with `unauthorized`, having sent
// nothing). Under torchrun, set DCPP_SECRET (or DCPP_SECRET_FILE) in the
// environment torchrun passes on, or pass --insecure.
//
// The only translation unit that includes c10d's headers (libtorch_cpu).

#include "actors/transport/endpoint.hpp"
#include "actors/transport/launch_env.hpp"

#include <caf/expected.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace dcpp {

/// A client of the c10d TCPStore at host:port. Connecting waits up to
/// `timeout`; errors (errc::io_error) name the store's address.
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
