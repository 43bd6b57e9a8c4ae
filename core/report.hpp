#pragma once

// What a save or load did: bytes and files, the wall time of each step as
// the slowest rank saw it, and the throughput. Every rank measures its own
// part (`rank_report`) and sends it with its data step's result; the
// coordinator merges them (`merge`), adds the commit and the total, and
// sends the `op_report` to every rank with the outcome. Pure data.

#include "core/metadata.hpp"
#include "core/plan.hpp"

#include <cstdint>
#include <vector>

namespace dcpp {

/// One rank's part of an operation, reported with its data step's result
/// (and, with `in_progress`, during the step: bytes so far).
struct rank_report {
  /// A progress report during the data step: `bytes` so far out of
  /// `bytes_planned`; the step's result comes later.
  bool in_progress = false;
  /// Save: the bytes of the data files this rank wrote. Load: the bytes of
  /// the saved items this rank read. So far, while `in_progress`.
  uint64_t bytes = 0;
  /// The bytes this rank's plan holds (what `bytes` grows towards).
  uint64_t bytes_planned = 0;
  /// Data files written (save) or read from (load).
  uint64_t files = 0;
  /// From the start of the operation on this rank until its central plan
  /// arrived (step "plan", including the wait for the other ranks).
  int64_t plan_us = 0;
  /// From its central plan to the end of its data step.
  int64_t data_us = 0;
};

/// What one save or load did, the same on every rank.
struct op_report {
  /// Save: bytes of all data files written; load: bytes of saved items read
  /// by all ranks together.
  uint64_t bytes = 0;
  uint64_t files = 0;
  /// Ranks whose parts are counted.
  int32_t ranks = 0;
  /// Each step's wall time as the slowest rank saw it.
  int64_t plan_us = 0;
  /// Step "write" (save) or "read" (load).
  int64_t data_us = 0;
  /// Step "commit" (a save only), as the coordinator saw it.
  int64_t commit_us = 0;
  /// From the coordinator's first message of the operation to its outcome.
  int64_t total_us = 0;
  /// A save whose every rank sent only its plan's fingerprint: the plans
  /// came from the coordinator's plan cache.
  bool plans_cached = false;

  /// Bytes per second over the whole operation (0 if it took no time).
  double throughput() const {
    return total_us > 0
             ? static_cast<double>(bytes) * 1e6 / static_cast<double>(total_us)
             : 0.0;
  }
};

/// Adds one rank's final part: bytes and files add up, step times are the
/// slowest rank's.
void merge(op_report& into, const rank_report& part);

/// The bytes a write item holds: a tensor chunk's elements times their size,
/// or a bytes item's length.
uint64_t planned_bytes(const write_item& item);

/// The bytes of a save plan's items.
uint64_t planned_bytes(const save_plan& plan);

/// The bytes of the saved items a load plan reads (each item once, as
/// `md` stores it).
uint64_t planned_bytes(const load_plan& plan, const metadata& md);

/// Bytes and files of what a writer wrote: every data file's size is the end
/// of its last item (data files are items back to back).
rank_report written(const std::vector<write_result>& results);

/// Bytes and files a load plan reads: every saved item it touches once,
/// and the files holding them.
rank_report to_read(const load_plan& plan, const metadata& md);

} // namespace dcpp
