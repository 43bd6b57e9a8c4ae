#pragma once

// Building save and load jobs from state dicts: flatten the dict, build the
// planner's view, and wrap the data source (save) or the load target (load)
// so that they keep what they point into alive. Used by the checkpointer and
// by applications that drive the rank agents by messages themselves.

#include "core/planner.hpp"
#include "messages/local.hpp"

#include <caf/expected.hpp>

#include <chrono>
#include <cstdint>
#include <memory>

namespace dcpp {

class state_dict;
class storage_writer;
class storage_reader;

struct job_options {
  /// The rank whose coordinator runs the operation (same on every rank).
  int32_t coordinator_rank = 0;
  /// Deadline of each step.
  std::chrono::milliseconds step_timeout = std::chrono::seconds(300);
  /// Writer (reader) actors of this rank working in parallel.
  uint32_t io_threads = 1;
  /// The default planners when null.
  std::shared_ptr<const dcpp::save_planner> save_planner;
  std::shared_ptr<const dcpp::load_planner> load_planner;
};

/// A save of `sd`, which must stay alive and unchanged until the agent
/// replies. Fails like `flatten` / `make_view` (errors name the key).
caf::expected<save_job> make_save_job(const state_dict& sd,
                                      std::shared_ptr<storage_writer> writer,
                                      const job_options& opts = {});

/// A save of `sd` that keeps `sd` alive as long as the job (async saves of
/// a staged copy).
caf::expected<save_job> make_save_job(std::shared_ptr<const state_dict> sd,
                                      std::shared_ptr<storage_writer> writer,
                                      const job_options& opts = {});

/// A load into `sd`'s tensors, shards and bytes values (in place); `sd` must
/// stay alive until the agent replies.
caf::expected<load_job> make_load_job(state_dict& sd,
                                      std::shared_ptr<storage_reader> reader,
                                      const job_options& opts = {});

} // namespace dcpp
