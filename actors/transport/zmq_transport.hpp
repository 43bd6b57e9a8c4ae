#pragma once

// Ranks as processes: a ZeroMQ transport between actor systems.
//
// Topology (a star): the coordinator's process binds a ROUTER socket at
// tcp://MASTER_ADDR:MASTER_PORT (or DCPP_BIND_ADDR; host names resolved,
// IPv4 or IPv6: actors/transport/endpoint.hpp); every other rank's process
// connects one DEALER socket to it. With a directory (`zmq_options::
// directory`, torchrun's store) the coordinator binds a free port instead
// and publishes its endpoint there under a key of this job, its restart and
// this group; the other ranks wait for that key and connect to it. The
// coordinator's process is either the process of rank `coordinator_rank` or a
// standalone process (`serve_zmq_coordinator`, the `dcpp-coordinator` program)
// with `external_coordinator` set on every rank. Only coordinator <-> rank
// messages (messages/wire.hpp) cross; tensor data never does (every rank reads
// and writes the shared storage itself).
//
// In each process the peer table (actors/peers.hpp) holds bridge actors in
// place of the remote actors: on the coordinator's side one bridge per
// remote rank, on a rank's side one bridge for the coordinator. One I/O
// thread per process owns the socket; bridges hand it encoded frames.
//
// Security: with a secret (DCPP_SECRET), every connection is a ZeroMQ
// CURVE connection (encrypted and authenticated) with key pairs derived from
// the secret (actors/transport/curve_keys.hpp): the coordinator's ROUTER is
// the CURVE server and admits, through its ZAP handler, only clients that
// hold the ranks' key. The secret itself never crosses the wire. A rank
// whose handshake fails (another secret, or something else listening on the
// port) fails at once with errc::unauthorized and has sent nothing. Without
// a secret a process refuses to start (errc::unauthorized) unless
// `zmq_options::insecure` is set (the programs' `--insecure`).
//
// Before authentication a peer costs little: frames above
// `max_frame_bytes` are refused by ZeroMQ when their header arrives
// (ZMQ_MAXMSGSIZE), a connection that has not completed its handshake
// within `handshake_timeout` is closed (ZMQ_HANDSHAKE_IVL), connections
// beyond `world_size + max_pending_connections` are closed as they are
// accepted, and log lines that peers cause are rate-limited.
//
// Handshake: after CURVE's, a DEALER sends hello {rank, world size, job
// id}; the ROUTER answers welcome, or a refusal with its reason (another
// job: errc::unauthorized; wrong world size, rank out of range or already
// connected: errc::protocol_error). Both sides send heartbeats; a
// peer silent for `peer_timeout` (killed, unplugged) or one that said
// goodbye is lost: its bridge quits, which the coordinator and the agents
// report as errc::rank_lost for the operation in flight.
//
// zmq headers stay in the .cpp.

#include "actors/process_group.hpp"
#include "actors/transport/endpoint.hpp"
#include "actors/transport/launch_env.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace dcpp {

struct zmq_options {
  /// The rank whose process hosts the coordinator (binds the ROUTER).
  /// Operations of this group must name this rank as coordinator rank.
  int32_t coordinator_rank = 0;
  /// The coordinator runs in its own process (serve_zmq_coordinator):
  /// every rank, including `coordinator_rank`, connects to it.
  bool external_coordinator = false;
  /// Frames above this size are dropped with a logged error.
  size_t max_frame_bytes = size_t{64} << 20;
  /// Run without a secret: no encryption, no authentication, anyone who
  /// reaches the port is welcomed. Without it and without a secret,
  /// making the group fails with errc::unauthorized.
  bool insecure = false;
  /// Connections the coordinator keeps open beyond one per rank (peers
  /// still in their handshake); more are closed as they are accepted.
  size_t max_pending_connections = 64;
  /// A connection that has not completed its handshake (CURVE and hello)
  /// within this time is closed.
  std::chrono::milliseconds handshake_timeout{5000};
  std::chrono::milliseconds heartbeat_interval{500};
  /// A peer silent this long is lost.
  std::chrono::milliseconds peer_timeout{5000};
  /// How long a rank waits for the coordinator's welcome.
  std::chrono::milliseconds connect_timeout{60000};
  /// How long the coordinator's process, when its group member goes away,
  /// waits for the remote ranks to say goodbye (so that they receive the
  /// outcome of the last operation).
  std::chrono::milliseconds drain_timeout{15000};
  /// Where the coordinator publishes the endpoint it bound (a free port)
  /// and the ranks look it up; null: MASTER_ADDR:MASTER_PORT. Not used
  /// with `external_coordinator`. See tcp_store_rendezvous.hpp.
  std::shared_ptr<endpoint_directory> directory;
  process_group_options group;
};

/// This process's member of a process group whose ranks are processes.
/// Blocks until the coordinator welcomed this rank (or refused it:
/// errc::unauthorized for another secret or job). On the coordinator rank's
/// process it binds and returns at once. The actor system must outlive the
/// returned object.
caf::expected<process_group_ptr> make_zmq_process_group(caf::actor_system& sys,
                                                        const launch_env& env,
                                                        zmq_options opts = {});

/// Hosts the coordinator of `opts.coordinator_rank` for `env.world_size`
/// remote ranks in this process (`env.rank` is ignored). Returns once ranks
/// connected and all of them disconnected again (none), or when `stop`
/// becomes true (errc::aborted). Errors: the endpoint cannot be bound.
caf::error serve_zmq_coordinator(caf::actor_system& sys, const launch_env& env,
                                 zmq_options opts,
                                 const std::atomic<bool>& stop);

} // namespace dcpp
