#pragma once

// A checkpoint root: a directory that holds one checkpoint per training step,
//
//   ROOT/step_000000100/.metadata, __0_0.distcp, ...
//   ROOT/step_000000200/...
//
// A step directory is committed when it holds a `.metadata` (the commit
// record, written last by the file-system writer) that validates (see
// `check_committed`): a file that is merely there and non-empty is not
// enough, a truncated or garbled one would be named "latest" and would let
// `prune` delete the older good steps. Three states:
//
// - committed: `.metadata` decodes and validates; loadable;
// - uncommitted: no `.metadata`, an empty one or one that is not a regular
//   file: a save in flight or one that died;
// - broken: a non-empty `.metadata` that does not validate. Never "latest",
//   never counted toward `prune`'s KEEP and never removed by `prune`: it
//   may be the only trace of a checkpoint someone wants to recover, so it
//   is left for a person to look at (the CLI names it).
//
// This file finds the newest committed checkpoint and prunes old ones.
//
// Names: `step_` followed by decimal digits. `step_directory` pads to 9
// digits (more for larger steps); any number of digits is accepted on read.
// Everything else in the root is ignored and never removed: other names,
// regular files named like steps, and symbolic links (even to step
// directories), so a link can never make `prune` delete what it points to,
// and never a step: `check_committed` of a step-named link fails, so an
// explicit load refuses it too, and a checkpoint manager's writer refuses
// to write through one (filesystem_writer_options::owned_directory).
//
// Which steps belong to the root's own series. Nothing in a root names the
// job that wrote it, so a step directory counts only if it can be one the
// series wrote; the others are broken (named, never latest, never removed):
// - its number is at most `max_step` (a step after it must still fit the
//   int64 step counters of training loops and of PyTorch): a planted
//   `step_18446744073709551615` (or a number beyond 64 bits) is reported,
//   not resumed from (whose next step would wrap around to 0);
// - its commit record does not name another step: dcpp's writer records the
//   directory it commits in `.metadata` (`StorageMeta.checkpoint_id`, as
//   newest PyTorch does), so a copy or a rename of a step under a new
//   number (`cp -r step_000000030 step_999999999999`) is told apart and
//   never restored as "the latest". Only the last component is compared,
//   so a root moved or copied as a whole keeps its steps; records without
//   a `checkpoint_id` (older writers, torch 1.13's format) are taken as
//   they are.
// A far-future step that passes both (written under its own name by some
// other dcpp run into this root) cannot be told apart from this job's.
//
// Crash safety of `prune`: every victim is first renamed to a hidden name
// (`.trash-<name>`), then the root is fsynced, and only then is the victim
// removed recursively. A crash at any point leaves each step directory
// either whole under its own name or (partly) removed under a hidden name
// that no lookup considers; the next `prune` removes such leftovers.
//
// Not safe against a concurrent save into a step older than the newest
// committed one (prune would see it as an aborted save); saves into newer
// steps are never touched.

#include <caf/expected.hpp>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dcpp {

/// The prefix of step directory names.
inline constexpr std::string_view step_prefix = "step_";

/// The largest step a root holds (see "Which steps belong" above).
inline constexpr uint64_t max_step = uint64_t{INT64_MAX} - 1;

/// The prefix that `prune` gives directories it is removing.
inline constexpr std::string_view trash_prefix = ".trash-";

/// The name of a step's directory: "step_000000100" (at least 9 digits).
std::string step_name(uint64_t step);

/// `root` + "/" + `step_name(step)`.
std::string step_directory(const std::string& root, uint64_t step);

/// The step of a directory name ("step_7", "step_000000007" -> 7), or
/// nothing if `name` is not `step_` followed by only digits whose value fits
/// in 64 bits.
std::optional<uint64_t> parse_step_name(std::string_view name);

/// Whether a directory whose name is a step's (`step_` and digits) may be
/// one: its number is at most `max_step` (else `errc::invalid_argument`
/// naming it) and it is not a symbolic link (`errc::path_escape` naming
/// it). Other names pass.
caf::error check_step_directory(const std::string& dir);

/// Whether `dir` holds a committed checkpoint: none if it passes
/// `check_step_directory` and its `.metadata` is a
/// regular file (not a symbolic link) that decodes, whose tensors pass
/// `validate_metadata`, and whose every storage entry names a plain file in
/// `dir` (a regular file, no symbolic link) long enough to hold the entry's
/// bytes. Cheap: one decode and one stat per data file; data checksums are
/// `dcpp verify`'s job. `errc::not_found` when there is no commit record
/// (no `.metadata`, an empty one, or not a regular file); any other error
/// says why the record that is there is broken, naming the path (also
/// `errc::corrupt_metadata` for a step directory whose record commits
/// another step, see above).
caf::error check_committed(const std::string& dir);

/// True if `check_committed(dir)` finds nothing wrong.
bool is_committed(const std::string& dir);

/// A step directory found in a root.
struct step_entry {
  uint64_t step = 0;
  /// The directory's path (`root` + "/" + its name as found).
  std::string path;
  /// Its `.metadata` validates (`check_committed`): loadable.
  bool committed = false;
  /// Why its non-empty `.metadata` does not validate; empty if it does or
  /// if there is none (see "broken" above).
  std::string broken;
};

/// Every step directory in `root` (real directories only; a name whose
/// number is beyond 64 bits as step UINT64_MAX, broken), ordered by step,
/// then by name (so "step_7" and "step_000000007" both appear, in a fixed
/// order). A missing root has no steps; any other failure to list it is an
/// `errc::io_error` naming the root.
caf::expected<std::vector<step_entry>> list_steps(const std::string& root);

/// The steps whose directory is committed, ascending, without duplicates.
/// Directories without a committed `.metadata` are ignored; broken steps
/// newer than the newest committed one are appended to `passed_over`,
/// newest first, if given (as `latest_committed` does).
caf::expected<std::vector<uint64_t>>
committed_steps(const std::string& root,
                std::vector<step_entry>* passed_over = nullptr);

/// The newest committed checkpoint (its step and directory), or
/// `errc::not_found` naming the root (also when the root does not exist).
/// Broken steps newer than it are passed over (appended to `passed_over`,
/// newest first, if given). Checks commit records newest first and stops at
/// the first that validates.
caf::expected<step_entry>
latest_committed(const std::string& root,
                 std::vector<step_entry>* passed_over = nullptr);

/// The newest committed step (see `latest_committed`).
caf::expected<uint64_t> latest_committed_step(const std::string& root);

/// Removes, crash-safely (see above):
/// - all committed step directories but the newest `keep` (so a committed
///   step goes only while `keep` loadable steps newer than it remain),
/// - uncommitted step directories of steps older than the newest committed
///   one (leftovers of aborted saves; newer ones may be saves in flight),
/// - `.trash-*` leftovers of an earlier prune that crashed.
/// Broken steps are neither counted nor removed; they are appended to
/// `broken` (ascending), if given, so that the caller can name them.
/// Never removes the newest committed step: `keep == 0` is an
/// `errc::invalid_argument`, a missing root `errc::not_found` naming it.
/// Without any committed step, removes only leftovers. Returns the paths it
/// removed: step directories under their original names, leftovers under their
/// hidden names. Fails with `errc::io_error` naming the path that could not be
/// renamed or removed; what was renamed before is removed by the next call.
caf::expected<std::vector<std::string>>
prune(const std::string& root, size_t keep,
      std::vector<step_entry>* broken = nullptr);

/// Given the committed steps (ascending, without duplicates), the steps to
/// keep.
using step_chooser
  = std::function<std::vector<uint64_t>(const std::vector<uint64_t>&)>;

/// `prune` with the committed steps to keep chosen by `keep` (a retention
/// policy: newest K, best by a metric, every N-th step, ...): removes every
/// committed step it does not return, except the newest committed step,
/// which always stays; uncommitted and `.trash-*` leftovers and broken
/// steps as `prune`. Crash-safe and failing as `prune`.
caf::expected<std::vector<std::string>>
prune_except(const std::string& root, const step_chooser& keep,
             std::vector<step_entry>* broken = nullptr);

} // namespace dcpp
