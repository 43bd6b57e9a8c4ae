#pragma once

// Where a rank learns who it is: the environment conventions launchers
// already use. torchrun / dcpp-launch (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT) first, then SLURM (SLURM_PROCID, SLURM_NTASKS,
// SLURM_LOCALID, SLURM_STEP_NODELIST, SLURM_LAUNCH_NODE_IPADDR) and Open MPI
// (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK).
// The shared secret comes from DCPP_SECRET, else from the file that
// DCPP_SECRET_FILE names (its first line; the file must be a regular file
// of at most 4 KiB, private, and in a directory that others cannot write).
//
// The coordinator's endpoint, first match wins:
//   host: DCPP_MASTER_ADDR, MASTER_ADDR, the first host of SLURM's node list
//         (SLURM_STEP_NODELIST, SLURM_JOB_NODELIST, SLURM_NODELIST: where
//         task 0 runs), SLURM_LAUNCH_NODE_IPADDR, 127.0.0.1. A host name is
//         resolved by the transport (getaddrinfo), IPv4 or IPv6.
//   port: DCPP_MASTER_PORT, else MASTER_PORT, else 29500.
// Where torchrun runs a store for its workers (TORCHELASTIC_USE_AGENT_STORE=
// True: its static rendezvous, and torch 2.x's c10d rendezvous, --standalone
// included) that c10d store listens on MASTER_ADDR:MASTER_PORT: then
// `agent_store` is set and the coordinator binds a free port and publishes
// it in that store (actors/transport/tcp_store_rendezvous.hpp) instead of
// competing for the port. DCPP_MASTER_PORT turns this off (the port is
// then used as is).

#include <caf/expected.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace dcpp {

struct launch_env {
  int32_t rank = 0;
  int32_t world_size = 1;
  int32_t local_rank = 0;
  /// Address (a literal or a host name) and port of the coordinator
  /// endpoint; under `agent_store`, of torchrun's store.
  std::string master_addr = "127.0.0.1";
  uint16_t master_port = 29500;
  /// Where the coordinator's process binds (DCPP_BIND_ADDR): empty for
  /// `master_addr`; "*" or "0.0.0.0" for every interface ("::" for every
  /// IPv6 and IPv4 interface).
  std::string bind_addr;
  /// torchrun's agent store listens on master_addr:master_port
  /// (TORCHELASTIC_USE_AGENT_STORE=True and no DCPP_MASTER_PORT).
  bool agent_store = false;
  /// TORCHELASTIC_RESTART_COUNT: keeps the endpoints of a restarted worker
  /// group apart from those of the previous attempt in the same store.
  int32_t restart_count = 0;
  /// The job's shared secret (empty: none configured), from which the
  /// transport derives its CURVE keys; it never crosses the wire.
  std::string secret;
  /// Where `secret` came from, for messages: "DCPP_SECRET" or
  /// "DCPP_SECRET_FILE=PATH"; empty when the caller set it.
  std::string secret_source;
  /// The job every rank belongs to: DCPP_JOB_ID, else the launcher's own
  /// (torchrun's TORCHELASTIC_RUN_ID, SLURM_JOB_ID[.SLURM_STEP_ID], Open
  /// MPI's OMPI_MCA_ess_base_jobid); empty if none. dcpp-launch sets
  /// DCPP_JOB_ID. A coordinator refuses ranks of another job.
  std::string job_id;
  /// Which convention supplied rank and world size: "torchrun", "slurm",
  /// "openmpi" or "default".
  std::string source = "default";
};

/// Reads the launch environment through `get` (std::getenv by default).
/// Fails with `errc::invalid_argument` naming the variable when a value is
/// not a number or out of range (rank >= world size, port > 65535).
caf::expected<launch_env>
read_launch_env(const std::function<const char*(const char*)>& get = {});

/// The hosts of a SLURM host list, in the order `scontrol show hostnames`
/// gives them: entries split at commas outside brackets; an entry may hold
/// several bracket groups ("rack[1-2]-node[01-04]", the rightmost group
/// turning fastest) of numbers and ranges ("07-09,12"), each range padded
/// with zeros to the digits of its first number. Fails with
/// `errc::invalid_argument` naming the list (its first 200 characters) when
/// it is malformed or names more than `max_hosts` hosts.
caf::expected<std::vector<std::string>>
expand_slurm_host_list(std::string_view list, size_t max_hosts = 65536);

/// The first host of a SLURM host list ("rack[1-2]-node[01-04],gpu3" ->
/// "rack1-node01"); empty if `list` is empty or malformed.
std::string first_slurm_host(const std::string& list);

} // namespace dcpp
