#pragma once

// The messages that cross ranks: plain value types, each with a CAF
// `inspect` overload that lists its fields once for every encoding (see
// messages/inspect.hpp). Tensor data never travels in them; only plans,
// write results, metadata and control.
//
// Every message starts with an `envelope`: the protocol version, the id of
// the collective operation (save or load, and its sequence number in the
// process group), and the sending and receiving rank. A transport bridge
// routes by `envelope::to` and needs nothing else.
//
// The conversation of one save (C = coordinator rank, r = every rank):
//
//   r -> C  local_save_plan_msg        step "plan": r's local plan or error
//   C -> C  global_save_step_msg       all local plans, to C's own agent
//   C -> C  global_save_step_done_msg  central plans + metadata, or error
//   C -> r  central_save_plan_msg      the plan r writes
//   r -> C  write_done_msg             step "write": r's progress (a few a
//                                      second), then its results or error
//   C -> C  commit_msg                 step "commit": metadata + results
//   C -> C  commit_done_msg            the commit's outcome
//   C -> r  op_outcome_msg             committed metadata, or the error
//
// and of one load:
//
//   r -> C  local_load_plan_msg        step "plan"
//   C -> C  global_load_step_msg / global_load_step_done_msg
//   C -> r  central_load_plan_msg
//   r -> C  read_done_msg              step "read"
//   C -> r  op_outcome_msg
//
// Any failure ends the operation: C sends every rank one op_outcome_msg
// whose error is `errc::checkpoint_failed`, naming the step and each failing
// rank with its error.

#include "messages/atoms.hpp"
#include "messages/inspect.hpp"

#include <caf/error.hpp>
#include <caf/meta/type_name.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace dcpp {

/// Version of the coordinator <-> rank protocol (3: data-step results carry
/// a `rank_report`, outcomes an `op_report`; 4: the plan cache, local save
/// plans carry a fingerprint and may leave the plan out, outcomes say
/// whether the plans came from the cache; 5: a metadata's flatten paths
/// are `path_element`s, each with its list-position flag). A message with
/// another version is rejected (the sending rank's step fails with
/// `errc::protocol_error`).
inline constexpr uint32_t protocol_version = 5;

/// The two kinds of collective operations.
enum class op_kind : uint8_t {
  save = 0,
  load = 1,
};

std::string to_string(op_kind x);

/// Identifies one collective operation of a process group: every rank
/// numbers its operations 1, 2, 3, ... in call order (SPMD), so the n-th
/// save or load has the same id on every rank.
struct op_id {
  op_kind kind = op_kind::save;
  uint64_t seq = 0;

  friend bool operator==(const op_id& x, const op_id& y) {
    return x.kind == y.kind && x.seq == y.seq;
  }
  friend bool operator!=(const op_id& x, const op_id& y) {
    return !(x == y);
  }
};

/// "save 3", "load 4".
std::string to_string(const op_id& x);

/// The header of every message that crosses ranks.
struct envelope {
  uint32_t version = protocol_version;
  op_id op;
  /// The sending rank.
  int32_t from = -1;
  /// The receiving rank (for rank -> coordinator messages: the coordinator).
  int32_t to = -1;
};

std::string to_string(const envelope& x);

// -- shared fields ----------------------------------------------------------

/// A field that every receiver in one process shares read-only: copying a
/// message copies the pointer, not the value (a coordinator sends the same
/// committed metadata to every rank). On the wire it is the value itself
/// (a default one when null), so each process decodes its own copy once.
template <class T>
struct shared_field {
  std::shared_ptr<const T> ptr;

  shared_field() = default;

  shared_field(std::shared_ptr<const T> x) : ptr(std::move(x)) {
    // nop
  }

  shared_field(T x) : ptr(std::make_shared<const T>(std::move(x))) {
    // nop
  }

  /// The value, or a default one when null.
  const T& get() const {
    static const T empty{};
    return ptr ? *ptr : empty;
  }

  const T* operator->() const {
    return &get();
  }
};

using shared_metadata = shared_field<metadata>;
using shared_save_plans = shared_field<std::vector<save_plan>>;

// -- save -----------------------------------------------------------------

/// Step "plan" of a save: a rank's local plan (or why it has none).
///
/// The plan cache (DCP's cached save plans): a rank whose local plan is the
/// one of its last save that succeeded with this coordinator sends only its
/// fingerprint (`plan_cached`, `plan` empty); the coordinator holds that
/// plan from then. Any other plan goes in full, and replaces the
/// coordinator's copy.
struct local_save_plan_msg {
  envelope hdr;
  /// The deadline of each step of this operation, as the rank's caller set
  /// it; the coordinator uses the value of the first message of an op.
  int64_t step_timeout_ms = 0;
  save_plan plan;
  caf::error error;
  /// xxHash64 of the plan's wire encoding (`plan_fingerprint`).
  uint64_t fingerprint = 0;
  /// The plan is left out: it is the one whose fingerprint this is.
  bool plan_cached = false;
};

/// The coordinator asks its own rank's agent for the global plan.
struct global_save_step_msg {
  envelope hdr;
  /// Index = rank; shared with the coordinator's plan cache.
  shared_save_plans plans;
  /// Fingerprint of every rank's fingerprint (`plans_fingerprint`): the key
  /// under which the agent caches the planner's global plan of `plans`.
  uint64_t plans_key = 0;
};

/// The global plan (after the storage's `prepare_global_plan`) or an error.
struct global_save_step_done_msg {
  envelope hdr;
  global_save_plan global;
  caf::error error;
};

/// The plan one rank writes.
struct central_save_plan_msg {
  envelope hdr;
  save_plan plan;
};

/// Step "write": what a rank wrote, or why it failed. With
/// `report.in_progress` only a progress report (bytes so far); the step's
/// result comes later.
struct write_done_msg {
  envelope hdr;
  std::vector<write_result> results;
  caf::error error;
  rank_report report;
};

/// Step "commit": the coordinator asks its own rank's agent to call the
/// storage's `finish` with the metadata and every rank's results.
struct commit_msg {
  envelope hdr;
  metadata md;
  /// Index = rank.
  std::vector<std::vector<write_result>> results;
};

struct commit_done_msg {
  envelope hdr;
  caf::error error;
};

// -- load -----------------------------------------------------------------

/// Step "plan" of a load.
struct local_load_plan_msg {
  envelope hdr;
  int64_t step_timeout_ms = 0;
  load_plan plan;
  caf::error error;
};

struct global_load_step_msg {
  envelope hdr;
  std::vector<load_plan> plans;
};

struct global_load_step_done_msg {
  envelope hdr;
  std::vector<load_plan> plans;
  caf::error error;
};

struct central_load_plan_msg {
  envelope hdr;
  load_plan plan;
};

/// Step "read": a rank's outcome of reading its plan (or, with
/// `report.in_progress`, bytes read so far).
struct read_done_msg {
  envelope hdr;
  caf::error error;
  rank_report report;
};

// -- both -------------------------------------------------------------------

/// The end of an operation, sent by the coordinator to every rank: the
/// committed metadata of a save (empty for a load), or the error that every
/// rank reports. A failed step's error is `errc::checkpoint_failed` and
/// `failure` holds its data (step, rank -> error), so that it survives a
/// transport that renders error contexts as text.
struct op_outcome_msg {
  envelope hdr;
  caf::error error;
  shared_metadata md;
  checkpoint_failure failure;
  /// What the operation did (bytes, files, step times); empty on failure.
  op_report report;
};

// -- introspection (local) ----------------------------------------------------

/// Counters of a coordinator, for tests and diagnostics.
struct coordinator_stats {
  uint64_t ops_committed = 0;
  uint64_t ops_failed = 0;
  /// Messages for an operation that already ended (or was never opened here
  /// and is older than the newest ended one).
  uint64_t stale = 0;
  /// A second message of one rank for one step.
  uint64_t duplicates = 0;
  /// Messages with another protocol version, a rank out of range, or sent
  /// to the wrong coordinator.
  uint64_t rejected = 0;
  /// Operations open right now.
  uint64_t open_ops = 0;
  /// Saves whose every rank sent only its plan's fingerprint.
  uint64_t plan_cache_hits = 0;
  /// Fingerprints whose plan the coordinator did not hold (the save fails
  /// in step plan; the rank sends its full plan next time).
  uint64_t plan_cache_misses = 0;
};

/// Counters of a rank agent.
struct agent_stats {
  uint64_t ops_done = 0;
  uint64_t ops_failed = 0;
  uint64_t stale = 0;
  uint64_t duplicates = 0;
  uint64_t rejected = 0;
  /// Saves whose local plan this rank sent as a fingerprint only.
  uint64_t plans_sent_cached = 0;
  /// As the coordinator's rank: global plans reused from the plan cache
  /// (the planner's global step skipped).
  uint64_t global_plans_reused = 0;
};

// -- fields -------------------------------------------------------------------

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, op_id& x) {
  return f(caf::meta::type_name("dcpp.op_id"), x.kind, x.seq);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, envelope& x) {
  return f(caf::meta::type_name("dcpp.envelope"), x.version, x.op, x.from,
           x.to);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, local_save_plan_msg& x) {
  return f(caf::meta::type_name("dcpp.local_save_plan_msg"), x.hdr,
           x.step_timeout_ms, x.plan, x.error, x.fingerprint,
           wire_name("local_save_plan_msg.plan_cached"), x.plan_cached);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, global_save_step_msg& x) {
  return f(caf::meta::type_name("dcpp.global_save_step_msg"), x.hdr, x.plans,
           x.plans_key);
}

template <class Inspector>
typename Inspector::result_type
inspect(Inspector& f, global_save_step_done_msg& x) {
  return f(caf::meta::type_name("dcpp.global_save_step_done_msg"), x.hdr,
           x.global, x.error);
}

template <class Inspector>
typename Inspector::result_type
inspect(Inspector& f, central_save_plan_msg& x) {
  return f(caf::meta::type_name("dcpp.central_save_plan_msg"), x.hdr, x.plan);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, write_done_msg& x) {
  return f(caf::meta::type_name("dcpp.write_done_msg"), x.hdr, x.results,
           x.error, x.report);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, commit_msg& x) {
  return f(caf::meta::type_name("dcpp.commit_msg"), x.hdr, x.md, x.results);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, commit_done_msg& x) {
  return f(caf::meta::type_name("dcpp.commit_done_msg"), x.hdr, x.error);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, local_load_plan_msg& x) {
  return f(caf::meta::type_name("dcpp.local_load_plan_msg"), x.hdr,
           x.step_timeout_ms, x.plan, x.error);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, global_load_step_msg& x) {
  return f(caf::meta::type_name("dcpp.global_load_step_msg"), x.hdr, x.plans);
}

template <class Inspector>
typename Inspector::result_type
inspect(Inspector& f, global_load_step_done_msg& x) {
  return f(caf::meta::type_name("dcpp.global_load_step_done_msg"), x.hdr,
           x.plans, x.error);
}

template <class Inspector>
typename Inspector::result_type
inspect(Inspector& f, central_load_plan_msg& x) {
  return f(caf::meta::type_name("dcpp.central_load_plan_msg"), x.hdr, x.plan);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, read_done_msg& x) {
  return f(caf::meta::type_name("dcpp.read_done_msg"), x.hdr, x.error,
           x.report);
}

template <class Inspector, class T>
typename Inspector::result_type inspect(Inspector& f, shared_field<T>& x) {
  if constexpr (Inspector::writes_state) {
    // Decoding: a fresh object, shared from here on.
    auto value = std::make_shared<T>();
    if constexpr (std::is_void_v<typename Inspector::result_type>) {
      f(*value);
      x.ptr = std::move(value);
    } else {
      auto res = f(*value);
      x.ptr = std::move(value);
      return res;
    }
  } else {
    // Encoding and printing only read the (shared, const) value.
    return f(const_cast<T&>(x.get()));
  }
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, op_outcome_msg& x) {
  return f(caf::meta::type_name("dcpp.op_outcome_msg"), x.hdr, x.error, x.md,
           x.failure, x.report);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, coordinator_stats& x) {
  return f(caf::meta::type_name("dcpp.coordinator_stats"), x.ops_committed,
           x.ops_failed, x.stale, x.duplicates, x.rejected, x.open_ops,
           x.plan_cache_hits, x.plan_cache_misses);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, agent_stats& x) {
  return f(caf::meta::type_name("dcpp.agent_stats"), x.ops_done, x.ops_failed,
           x.stale, x.duplicates, x.rejected, x.plans_sent_cached,
           x.global_plans_reused);
}

} // namespace dcpp
