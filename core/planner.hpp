#pragma once

// Save and load planning: the pluggable planner interfaces and the default
// planning rules as pure functions (DCP's `default_planner.py`,
// `_dedup_save_plans.py`, `planner_helpers.py`, `resharding.py`).
//
// Everything here works on `state_dict_view` and plan data; nothing touches
// tensor bytes, files or actors, so N ranks can be simulated by calling the
// functions N times in one process.

#include "core/plan.hpp"
#include "core/state_dict_view.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace dcpp {

// -- save planning ------------------------------------------------------------

/// Result of global save planning on the coordinator.
struct global_save_plan {
  /// One plan per rank, index = rank.
  std::vector<save_plan> plans;
  /// The checkpoint metadata without `storage_data` (filled in at commit).
  metadata md;
};

/// Local plan: one write item per tensor chunk this rank holds and one per
/// bytes item. Every rank proposes every value it has; replicated values
/// are de-duplicated by the coordinator. The flatten mapping travels in
/// `planner_data`.
save_plan create_default_local_save_plan(const state_dict_view& view);

/// Removes items that several ranks hold (same fqn and chunk offset) so each
/// is written by exactly one rank: the rank whose plan holds the fewest bytes
/// so far (or the lowest rank if `to_lowest_rank`). Items under the same
/// index must agree (kind, global size, chunk sizes, dtype); otherwise fails
/// with `errc::conflicting_item` naming the fqn and both ranks.
caf::expected<std::vector<save_plan>>
dedup_save_plans(std::vector<save_plan> plans, bool to_lowest_rank = false);

/// Builds the metadata from (de-duplicated) plans and writes each item's
/// chunk position into its `index.index` hint.
caf::expected<global_save_plan>
create_default_global_save_plan(std::vector<save_plan> plans,
                                bool to_lowest_rank = false);

/// Checks every tensor in `md`: chunks inside bounds, no two overlapping,
/// volumes adding up to the tensor. Errors name the fqn.
caf::error validate_metadata(const metadata& md);

/// The commit record of a save (DCP's `finish` input): `md` with every
/// rank's write results as its storage data. Refuses (errc::missing_key,
/// naming the item) a record in which a tensor chunk or bytes value has no
/// data, so that no backend commits a checkpoint that cannot be loaded.
caf::expected<metadata>
commit_record(const metadata& md,
              const std::vector<std::vector<write_result>>& results);

// -- load planning ------------------------------------------------------------

struct load_options {
  /// Fail on keys the checkpoint lacks (DCP default); else skip them.
  bool strict = true;
  /// Fail when a requested tensor's dtype differs from the saved one (DCP
  /// casts silently; dcpp refuses unless this is false).
  bool check_dtype = true;
};

/// For every requested tensor chunk and every saved chunk that overlaps it,
/// one read item; one bytes read item per bytes value. Errors name the fqn:
/// missing key, kind, shape or dtype mismatch.
caf::expected<load_plan>
create_default_local_load_plan(const state_dict_view& request,
                               const metadata& md, const load_options& opts);

/// The saved chunks of one tensor, ordered for resharding: sorted by their
/// offset along the tensor's largest dimension, with a running maximum of
/// their ends, so that the chunks a local box overlaps are found by binary
/// search instead of a scan.
struct chunk_sweep {
  /// The dimension swept (the largest; the first one on ties).
  size_t dim = 0;
  /// Positions (in `chunks`) of the chunks that can overlap anything (the
  /// tensor's rank, no empty dimension), by (start along dim, position).
  std::vector<size_t> order;
  /// max_end[k]: the largest end along `dim` among order[0..k].
  std::vector<int64_t> max_end;
  /// The first chunk whose rank is not the tensor's (corrupt metadata), or
  /// -1 if none.
  int64_t bad_chunk = -1;
};

/// Builds the sweep of one tensor: O(chunks log chunks).
chunk_sweep make_chunk_sweep(const tensor_storage_metadata& saved);

/// The sweeps of every tensor of a checkpoint, built once per metadata and
/// then shared, read-only, by every rank that plans a load against it (in
/// one process, or one per process): each rank's planning then costs what
/// its own chunks overlap, not the number of saved chunks.
class load_index {
public:
  explicit load_index(const metadata& md);

  /// The sweep of `fqn`, or null if it is not a tensor of the metadata.
  const chunk_sweep* find(const std::string& fqn) const;

private:
  std::unordered_map<std::string, chunk_sweep> sweeps_;
};

/// The load_index of `md`, built once per metadata object in this process
/// and shared by every rank that plans a load against it (it lives as long
/// as `md` and the ranks that use it).
std::shared_ptr<const load_index> shared_load_index(const metadata_ptr& md);

/// `validate_metadata(*md)`, run once per metadata object in this process:
/// every rank of a process that loads the same checkpoint shares the
/// result.
caf::error validate_shared_metadata(const metadata_ptr& md);

/// Read items for one tensor: `local_chunks` (destination boxes in global
/// coordinates) against the saved chunks of `saved`.
std::vector<read_item>
create_read_items(const std::string& fqn, const tensor_storage_metadata& saved,
                  const std::vector<chunk_storage_metadata>& local_chunks);

/// The same through a prebuilt sweep of `saved`.
std::vector<read_item>
create_read_items(const std::string& fqn, const tensor_storage_metadata& saved,
                  const chunk_sweep& sweep,
                  const std::vector<chunk_storage_metadata>& local_chunks);

/// create_default_local_load_plan with the sweeps of `index` (built from `md`).
caf::expected<load_plan>
create_default_local_load_plan(const state_dict_view& request,
                               const metadata& md, const load_options& opts,
                               const load_index& index);

// -- pluggable planners (DCP's SavePlanner / LoadPlanner) --------------------

/// Call order (each rank has one planner; the methods are const so one
/// instance may serve all ranks of an in-process group):
/// 1. every rank: `create_local_plan(view, is_coordinator)`
/// 2. coordinator: `create_global_plan(all local plans)` -> plans + metadata
/// 3. every rank: `finish_plan(its central plan)` -> the plan it writes.
class save_planner {
public:
  virtual ~save_planner();

  [[nodiscard]] virtual caf::expected<save_plan>
  create_local_plan(const state_dict_view& view, bool is_coordinator) const = 0;

  [[nodiscard]] virtual caf::expected<global_save_plan>
  create_global_plan(std::vector<save_plan> plans) const = 0;

  [[nodiscard]] virtual caf::expected<save_plan>
  finish_plan(save_plan central) const;
};

/// Call order:
/// 1. every rank: `create_local_plan(request, metadata, is_coordinator)`
/// 2. coordinator: `create_global_plan(all local plans)`
/// 3. every rank: `finish_plan(its central plan)` -> the plan it reads.
class load_planner {
public:
  virtual ~load_planner();

  [[nodiscard]] virtual caf::expected<load_plan>
  create_local_plan(const state_dict_view& request, const metadata& md,
                    bool is_coordinator) const = 0;

  /// Step 1 as the rank agent calls it: with the metadata object that
  /// every rank of the process shares, so that a planner can share what it
  /// derives from it (the default planner: one `shared_load_index`). The
  /// default calls `create_local_plan(request, *md, is_coordinator)`.
  [[nodiscard]] virtual caf::expected<load_plan>
  create_shared_local_plan(const state_dict_view& request,
                           const metadata_ptr& md, bool is_coordinator) const;

  [[nodiscard]] virtual caf::expected<std::vector<load_plan>>
  create_global_plan(std::vector<load_plan> plans) const;

  [[nodiscard]] virtual caf::expected<load_plan>
  finish_plan(load_plan central) const;
};

std::shared_ptr<save_planner>
make_default_save_planner(bool dedup_to_lowest_rank = false);

std::shared_ptr<load_planner> make_default_load_planner(load_options opts = {});

// -- helpers shared with storage and actors ----------------------------------

/// Encodes a flatten mapping for a plan's opaque `planner_data` slot.
std::string encode_flatten_mapping(const flatten_mapping& mapping);

/// Inverse of `encode_flatten_mapping`.
caf::expected<flatten_mapping> decode_flatten_mapping(const std::string& str);

} // namespace dcpp
