#pragma once

// Where a rank learns who it is: the environment conventions launchers
// already use. torchrun / dcpp-launch (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT) first, then SLURM (SLURM_PROCID, SLURM_NTASKS,
// SLURM_LOCALID, SLURM_LAUNCH_NODE_IPADDR) and Open MPI
// (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_LOCAL_RANK).
// The shared secret comes from DCPP_SECRET, else from the file that
// DCPP_SECRET_FILE names (its first line; the file must be private).

#include <caf/expected.hpp>

#include <cstdint>
#include <functional>
#include <string>

namespace dcpp {

struct launch_env {
  int32_t rank = 0;
  int32_t world_size = 1;
  int32_t local_rank = 0;
  /// Address and port of the coordinator endpoint.
  std::string master_addr = "127.0.0.1";
  uint16_t master_port = 29500;
  /// The job's shared secret (empty: none configured), from which the
  /// transport derives its CURVE keys; it never crosses the wire.
  std::string secret;
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

} // namespace dcpp
