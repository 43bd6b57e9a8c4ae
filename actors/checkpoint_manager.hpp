#pragma once

// Checkpoints of a training loop, one per step, in a checkpoint root
// (`storage/checkpoint_root.hpp`), in the spirit of Orbax's
// CheckpointManager:
//
//   ROOT/step_000000100/.metadata, __0_0.<tag>.distcp, ..., metrics.json
//
//   dcpp::checkpoint_manager_options o;
//   o.save_interval_steps = 100;
//   o.max_to_keep = 3;
//   o.checkpointer.process_group = group;      // or o.checkpointer.no_dist
//   dcpp::checkpoint_manager mgr{root, o};
//   dcpp::training_stateful app{*model, adam};
//   dcpp::stateful_list state{{"app", &app}};
//   auto start = mgr.restore(std::nullopt, state); // latest, if any
//   for (step = start ? *start + 1 : 1; ...; ++step) {
//     train(step);
//     if (mgr.should_save(step))
//       mgr.save(step, state, {{"loss", loss}});
//   }
//   mgr.wait_until_finished();
//
// Every rank makes its own manager over the same root with the same options
// and calls `save` and `restore` with the same steps in the same order
// (they are collective, as `checkpointer::save` / `load`).
//
// Commit, metrics, crash safety. A step is saved into `step_directory(root,
// step)` by the file-system storage, whose `.metadata` is the commit record
// (written last, atomically; see storage/filesystem_writer.cpp). Before the
// save starts, the coordinator rank writes the step's metrics into the same
// directory as `metrics.json` (write `metrics.json.tmp`, fsync, rename,
// fsync the directory): a file beside the data, as Orbax keeps a `metrics`
// item beside the state, rather than a bytes value inside the checkpoint,
// so that retention reads a few bytes per step instead of loading part of
// every checkpoint, and the state dict holds only the user's keys (PyTorch
// loads it into a plain `get_state_dict` layout). Metrics count only once
// `.metadata` commits the directory; before that the directory is an
// uncommitted one, ignored by `latest_step`/`all_steps` and removed by a
// later prune. So a crash at any point (during the metrics write, the data
// write, the commit or a prune) leaves the newest committed step
// restorable.
//
// Step directories are the manager's own. The coordinator's metrics write
// and every rank's writer (`filesystem_writer_options::owned_directory`)
// create a step's directory and open it without following links, then
// write relative to the open directory: a symbolic link planted under a
// step's name (to another run's committed step, say) fails the save on
// every rank with `errc::path_escape` naming it, and nothing is written
// through it. `save` refuses a step beyond `max_step`.
//
// Which steps `restore(latest)` considers: those that storage/checkpoint_root
// counts as the root's own ("Which steps belong to the root's own series":
// a number up to `max_step`, a real directory, a commit record that does
// not name another step). A step directory that fails this and is newer
// than the newest good one is passed over with a warning naming it and
// left in place (it may be another run's); an explicit `restore(step)` of
// it fails naming the directory and why.
//
// Retention (coordinator rank only, only after a save committed; in the
// background for async saves): of the committed steps, keep
//   - the newest one, always (a restart resumes from it);
//   - with `max_to_keep` > 0: the newest `max_to_keep`, or with
//     `best_metric` the `max_to_keep` best by that metric (`best_mode`; a
//     step without the metric ranks below every step with it; ties go to
//     the newer step); with `max_to_keep` == 0 every step;
//   - with `keep_period` > 0: every step that is a multiple of it;
// and remove the others with `dcpp::prune_except`, which also removes
// uncommitted directories of steps older than the newest committed one
// (saves that died) and leftovers of a prune that crashed.
//
// Agreement between ranks. `should_save` is a function of the step and the
// options only, so every rank decides alike. Which steps exist is agreed
// collectively: `agreed_steps` / `agreed_latest_step` (and so
// `restore(latest)`) have every rank list the committed steps of its root
// and send the list to the coordinator rank, which answers every rank with
// the steps committed on EVERY rank; the agreed latest step is the newest
// of them, the newest step every rank can load. All ranks get the same
// answer: that step, or `errc::not_found` on every rank (a rank that sees no
// step at all takes part too, so nobody waits for it). Ranks whose newest
// steps differ (a commit racing the restore, a network file system's stale
// cache, a rank that lost the newest step) make the coordinator log a
// warning naming each rank's newest step. The agreement rides on the
// collective load protocol (no message types of its own): a load of
// nothing whose reader has an empty metadata and reads nothing, whose
// planner carries each rank's steps in its local plan's `planner_data` and
// the agreement in every central plan's; it costs the messages of one load
// of zero bytes, under the checkpointer's `step_timeout` like any load.
// With `no_dist` or a world of one it lists the root and sends nothing.
// An explicit `restore(step)` does not agree: a rank that lacks the step
// joins the load with a reader that fails, so every rank fails at once
// naming it. Every load still has the file-system reader compare the
// `.metadata` checksums of all ranks in its plan step (ranks that read
// different checkpoints fail on every rank naming them; test
// fault.ranks_in_different_dirs). The manager never prunes while a restore
// may read: retention runs only after its own commits.

#include "actors/checkpointer.hpp"
#include "storage/filesystem.hpp"
#include "storage/state_dict.hpp"
#include "storage/training_state.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace dcpp {

/// Named scalar metrics of one step ("loss", "accuracy", ...).
using step_metrics = std::map<std::string, double>;

/// Whether a smaller (`min`, a loss) or larger (`max`, an accuracy) value of
/// `best_metric` is better.
enum class best_mode : uint8_t { min, max };

/// The name of the metrics file in a step directory.
inline constexpr const char* metrics_file_name = "metrics.json";

struct checkpoint_manager_options {
  /// `should_save(step)` is true for multiples of it (0: never).
  uint64_t save_interval_steps = 1;
  /// How many committed steps retention keeps (0: all); see above.
  size_t max_to_keep = 0;
  /// Steps that are multiples of it are kept for good (0: none).
  uint64_t keep_period = 0;
  /// Rank steps by this metric instead of by age (empty: by age).
  std::string best_metric;
  best_mode mode = best_mode::min;
  /// `save` stages the state to host memory and returns; the write, the
  /// commit and retention run in the background, one save after the other.
  bool async = false;
  /// Called after each save (sync or async) has finished, in the order of
  /// the saves, with its error (none: committed, retention done). Async
  /// saves call it from a background thread.
  std::function<void(uint64_t step, const caf::error& err)> on_finished;
  /// The group (or `no_dist`), coordinator rank, timeouts of every save and
  /// restore.
  checkpointer_options checkpointer;
  /// The file-system storage's options.
  filesystem_writer_options writer;
  filesystem_reader_options reader;
};

class checkpoint_manager {
public:
  /// A manager of the step directories under `root` (created on the first
  /// save). Reads nothing yet.
  checkpoint_manager(std::string root, checkpoint_manager_options opts);

  /// Waits for the saves in flight (as `wait_until_finished`, errors
  /// logged).
  ~checkpoint_manager();

  checkpoint_manager(const checkpoint_manager&) = delete;
  checkpoint_manager& operator=(const checkpoint_manager&) = delete;

  /// Whether `step` is due by `save_interval_steps` (the same on every
  /// rank: it reads nothing).
  [[nodiscard]] bool should_save(uint64_t step) const;

  /// Saves `sd` as step `step` with its `metrics`, then applies retention.
  /// Collective. Synchronous: returns once committed (the save's error, or
  /// a retention failure as `errc::io_error` naming the path). Async:
  /// returns once `sd` is staged to host memory (after the previous async
  /// save finished writing); the outcome goes to `on_finished` and to the
  /// next `save` or `wait_until_finished`, whichever comes first: an async
  /// `save` returns the error of the earlier save that failed since the
  /// last report, naming its step ("checkpoint manager ROOT: step 40:
  /// ..."), while its own step's save goes ahead. Refuses
  /// (`errc::invalid_argument`, nothing written) a step not newer than the last
  /// one this manager saved or restored, or than the newest committed step in
  /// the root (retention would remove an older save in flight as a leftover); a
  /// leftover uncommitted directory of the step is saved over. If the
  /// coordinator cannot write the metrics file it still joins the save and
  /// returns that error once the save is done.
  caf::error save(uint64_t step, const state_dict& sd,
                  const step_metrics& metrics = {});

  /// `save` of `collect_state(objs)`.
  caf::error save(uint64_t step, const stateful_list& objs,
                  const step_metrics& metrics = {});

  /// Waits until every async save finished; returns the first error among
  /// the saves that finished since the last call (none: all committed).
  caf::error wait_until_finished();

  /// The newest committed step (waits for async saves first);
  /// `errc::not_found` naming the root if there is none.
  [[nodiscard]] caf::expected<uint64_t> latest_step();

  /// Every committed step, ascending (waits for async saves first).
  [[nodiscard]] caf::expected<std::vector<uint64_t>> all_steps();

  /// The metrics saved with committed step `step` (empty if it was saved
  /// without a metrics file); `errc::not_found` if the step is not
  /// committed, `errc::corrupt_item` naming the file if it does not parse.
  [[nodiscard]] caf::expected<step_metrics> metrics(uint64_t step);

  /// The steps committed on every rank, ascending (see "Agreement between
  /// ranks" above; waits for async saves first). Collective: every rank
  /// must call it, at the same point of its calls, or the others fail at
  /// the step deadline. The same result on every rank; an error (a rank
  /// that could not list its root, a lost rank) fails it on every rank.
  [[nodiscard]] caf::expected<std::vector<uint64_t>> agreed_steps();

  /// The newest of `agreed_steps` (collective, the same on every rank);
  /// `errc::not_found` on every rank, naming each rank's newest step and
  /// the root, if no step is committed on every rank.
  [[nodiscard]] caf::expected<uint64_t> agreed_latest_step();

  /// Loads step `step` (nothing: `agreed_latest_step`, so every rank loads
  /// the same step) into `sd` in place, resharding as needed; returns the
  /// step. Collective; waits for async saves first. `errc::not_found`
  /// naming the root if nothing is committed on every rank (or `step` is
  /// not committed on this rank: the rank still takes part in the load and
  /// fails it on every rank at once, naming itself).
  caf::expected<uint64_t> restore(std::optional<uint64_t> step, state_dict& sd);

  /// `restore` into `collect_state(objs)`, then `apply_state`.
  caf::expected<uint64_t> restore(std::optional<uint64_t> step,
                                  const stateful_list& objs);

  const std::string& root() const {
    return root_;
  }

  /// What `agreed_steps` computes (defined in the .cpp).
  struct agreement;

private:
  /// Whether this rank writes metrics and applies retention.
  bool is_coordinator() const;

  /// Whether the agreement is local (no_dist, or a world of one).
  bool is_local() const;

  /// The collective step agreement (local if `is_local`).
  caf::expected<agreement> agree();

  /// The steps retention keeps among `committed` (ascending).
  std::vector<uint64_t> steps_to_keep(const std::vector<uint64_t>& committed);

  /// Retention after step `step` committed (coordinator only).
  caf::error retain();

  /// Records the outcome of the save of `step` and calls `on_finished`.
  void finished(uint64_t step, const caf::error& err);

  std::string root_;
  checkpoint_manager_options opts_;
  checkpointer cp_;
  /// The newest step `save` accepted or `restore` loaded.
  std::optional<uint64_t> last_saved_;
  /// The last async save's completion (retention included); each waits for
  /// the one before, so they finish in order.
  std::shared_future<void> tail_;
  std::mutex mx_;
  /// The first error of a save since the last `wait_until_finished`.
  caf::error first_error_;
};

} // namespace dcpp
