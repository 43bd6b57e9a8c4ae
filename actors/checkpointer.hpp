#pragma once

// dcpp's public entry point, the shape of DCP's `_Checkpointer`: `save`,
// `async_save` and `load` over pluggable planners and storage.
//
// Every rank of a job constructs its own checkpointer (SPMD) with its own
// storage writer and reader and the same options, and calls `save` / `load`
// collectively. With `no_dist` the checkpointer runs all steps in the
// calling process as a world of one rank.

#include "core/planner.hpp"
#include "core/report.hpp"
#include "storage/staging_pool.hpp"
#include "storage/state_dict.hpp"
#include "storage/storage.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <chrono>
#include <cstdint>
#include <future>
#include <memory>
#include <string>

namespace dcpp {

class process_group;

namespace detail {
struct solo_world;
struct report_box;
} // namespace detail

struct checkpointer_options {
  /// The rank that builds the global plan and commits the metadata.
  int32_t coordinator_rank = 0;
  /// Run in this process only, as a world of one rank.
  bool no_dist = false;
  /// Planners; the defaults when null.
  std::shared_ptr<dcpp::save_planner> save_planner;
  std::shared_ptr<dcpp::load_planner> load_planner;
  /// This rank's membership in a group of ranks (in one process, or across
  /// processes). Required unless `no_dist`.
  std::shared_ptr<dcpp::process_group> process_group;
  /// Writer (reader) actors of this rank working in parallel on parts of
  /// its plan (`storage_writer::split_plan`); with a process group only.
  /// The file-system storage also has its own `thread_count`.
  uint32_t io_threads = 1;
  /// Deadline of each collective step (plan, write, commit, read).
  std::chrono::milliseconds step_timeout = std::chrono::seconds(300);
  /// `async_save` stages into a pool of host memory owned by the
  /// checkpointer. Keep that memory between saves (true: the next
  /// `async_save` of the same or a smaller state dict copies at memory
  /// speed without allocating), or give it back to the OS as soon as each
  /// background save ended (false: every `async_save` maps and faults its
  /// staging memory anew).
  bool keep_staging_memory = true;
  /// Threads that copy a state dict of 64 MiB or more into the staging
  /// memory (the caller's thread included).
  uint32_t staging_threads = 1;
};

/// What a completed save reports.
using save_result = caf::expected<metadata>;

class checkpointer {
public:
  checkpointer(storage_writer_ptr writer, storage_reader_ptr reader,
               checkpointer_options opts = {});

  ~checkpointer();

  checkpointer(const checkpointer&) = delete;
  checkpointer& operator=(const checkpointer&) = delete;

  /// Saves `sd`; returns the committed metadata or the error of the first
  /// failing step (no `.metadata` is written then). Collective.
  save_result save(const state_dict& sd);

  /// Copies `sd` into host memory, returns once the copy is done, and
  /// writes in the background. A second `async_save` waits until the first
  /// finished. The future yields what `save` would have returned.
  ///
  /// The copy goes into the checkpointer's staging pool (`staging_stats`):
  /// the first `async_save` maps it, the next ones of the same or a smaller
  /// state dict reuse it. When the background save ends, before the future
  /// becomes ready, the save lets go of the staged tensors and their memory
  /// goes back to the pool (or to the OS, see `keep_staging_memory`), so at
  /// most one staged copy exists at any time.
  std::future<save_result> async_save(const state_dict& sd);

  /// Loads into the caller's preallocated tensors, shards and bytes values
  /// of `sd` (in place; resharding as needed). Collective.
  caf::error load(state_dict& sd);

  /// `save`, `async_save` and `load` of the checkpoint `checkpoint_id` (for
  /// the file system: its directory): the storage is `reset` to it first
  /// (after a background save finished), so one checkpointer serves many
  /// checkpoints (DCP's `checkpoint_id`). Fails with `errc::unsupported`
  /// for a storage without `reset`.
  save_result save(const state_dict& sd, const std::string& checkpoint_id);
  std::future<save_result> async_save(const state_dict& sd,
                                      const std::string& checkpoint_id);
  caf::error load(state_dict& sd, const std::string& checkpoint_id);

  const checkpointer_options& options() const {
    return opts_;
  }

  /// What the last save or load of this checkpointer that succeeded did:
  /// bytes and files written (read) by all ranks, each step's wall time as
  /// the slowest rank saw it, and the throughput; the same on every rank.
  /// An `async_save` counts once its future is ready. Empty before the
  /// first success; a failure leaves it alone.
  op_report last_report() const;

  /// What the staging pool of `async_save` did and holds now.
  staging_pool_stats staging_stats() const;

  /// Waits for a background save, then gives the staging pool's memory
  /// back to the OS; the next `async_save` maps it anew.
  void release_staging_memory();

private:
  /// `opts_`, or with `no_dist` the options of the private world of one
  /// rank (made on first use) that runs the same steps as a group.
  const checkpointer_options& group_options();

  /// Waits for a background save, then checks that an operation can run
  /// (it has its `storage`, and a group or no_dist).
  caf::error begin(bool has_storage, const char* storage);

  storage_writer_ptr writer_;
  storage_reader_ptr reader_;
  checkpointer_options opts_;
  /// Where operations leave their report (shared with a background save).
  std::shared_ptr<detail::report_box> report_;
  /// The background save in flight, if any.
  std::shared_future<void> pending_;
  /// Where `async_save` stages (host memory reused from save to save).
  std::unique_ptr<staging_pool> staging_;
  /// With `no_dist`: the world of one rank, and the options that name it.
  std::unique_ptr<detail::solo_world> solo_;
  checkpointer_options solo_opts_;
};

} // namespace dcpp
