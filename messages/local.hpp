#pragma once

// Process-local messages: what a caller hands its rank agent to start a save
// or a load. They hold shared pointers to the state dict's planner view, the
// data source or target, the planner and the storage; they never leave the
// process (CAF_ALLOW_UNSAFE_MESSAGE_TYPE), and only the plans, results and
// errors derived from them cross ranks.

#include "core/planner.hpp"
#include "core/report.hpp"
#include "core/state_dict_view.hpp"

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/error.hpp>

#include <chrono>
#include <cstdint>
#include <memory>

namespace dcpp {

// storage/storage.hpp; only shared pointers travel here.
class item_source;
class load_target;
class storage_writer;
class storage_reader;

/// Start a save on this rank (message `(save_atom, save_job)` to the rank
/// agent; the reply is the committed metadata or the error).
struct save_job {
  /// What this rank holds (keys, shapes, local chunks).
  std::shared_ptr<const state_dict_view> view;
  /// Where the writers get tensor and bytes data; must stay valid (and the
  /// tensors unchanged) until the reply arrives.
  std::shared_ptr<const item_source> source;
  /// The save planner (all ranks' planners must agree).
  std::shared_ptr<const save_planner> planner;
  /// This rank's storage writer.
  std::shared_ptr<storage_writer> writer;
  /// The rank whose coordinator runs this save (same on every rank).
  int32_t coordinator_rank = 0;
  /// Deadline of each step.
  std::chrono::milliseconds step_timeout = std::chrono::seconds(300);
  /// Writer actors that write this rank's plan in parallel: the `n` of the
  /// storage's `split_plan(plan, n)` (capped by the agent's
  /// `max_io_actors`). 1 leaves any parallelism to the storage itself.
  uint32_t io_threads = 1;
  /// A failure found before the operation started (e.g. the state dict does
  /// not flatten). The agent still takes part and reports it in step "plan",
  /// so that every rank fails together instead of waiting for this one.
  caf::error error;
  /// If set, receives the operation's report (bytes, files, step times)
  /// before the agent replies with the metadata.
  std::shared_ptr<op_report> report;
  /// If set, receives the committed metadata as the one object that every
  /// rank of this process shares, and the reply carries an empty metadata
  /// instead of a copy: a group of many ranks in one process then holds
  /// the metadata once, not once per rank.
  std::shared_ptr<metadata_ptr> metadata_out;
};

/// Start a load on this rank (message `(load_atom, load_job)`; the reply is
/// the checkpoint's metadata or the error).
struct load_job {
  /// What this rank wants (keys, shapes, local chunks).
  std::shared_ptr<const state_dict_view> view;
  /// Where the readers put what they read.
  std::shared_ptr<load_target> target;
  std::shared_ptr<const load_planner> planner;
  std::shared_ptr<storage_reader> reader;
  int32_t coordinator_rank = 0;
  std::chrono::milliseconds step_timeout = std::chrono::seconds(300);
  /// Reader actors that read this rank's plan in parallel.
  uint32_t io_threads = 1;
  /// As in save_job.
  caf::error error;
  /// As in save_job.
  std::shared_ptr<op_report> report;
  /// As in save_job: the checkpoint's metadata, shared.
  std::shared_ptr<metadata_ptr> metadata_out;
};

} // namespace dcpp

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(dcpp::save_job)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(dcpp::load_job)
// Between the actors of one rank (reader, planner): the metadata object
// that the process shares.
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(dcpp::metadata_ptr)
