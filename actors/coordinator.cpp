#include "actors/coordinator.hpp"

#include "actors/delivery.hpp"
#include "actors/operation.hpp"
#include "actors/progress.hpp"
#include "core/error.hpp"
#include "core/report.hpp"
#include "messages/wire.hpp"

#include <caf/all.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace dcpp {

namespace {

using detail::is_save;
using detail::load_op;
using detail::save_op;

/// The steps of an operation as the coordinator runs them.
enum class step : uint8_t {
  /// Gathering local plans from every rank.
  plan,
  /// Waiting for its own rank's agent to build the global plan.
  global_plan,
  /// Gathering every rank's write results (save) or read outcome (load).
  data,
  /// Waiting for its own rank's agent to commit (save only).
  commit,
};

/// The step name every rank sees in a failure.
const char* step_name(step x, op_kind kind) {
  switch (x) {
    case step::plan:
    case step::global_plan: return "plan";
    case step::data: return kind == op_kind::save ? "write" : "read";
    case step::commit: return "commit";
  }
  return "?";
}

/// What a rank still owes in a step (for timeout messages).
std::string owed(step x, op_kind kind) {
  switch (x) {
    case step::plan: return "no local plan";
    case step::global_plan: return "no global plan";
    case step::data: return std::string{"no "} + step_name(x, kind) + " result";
    case step::commit: return "no commit result";
  }
  return "nothing";
}

bool gathering(step x) {
  return x == step::plan || x == step::data;
}

using clock_type = std::chrono::steady_clock;

int64_t micros(clock_type::duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

/// One open operation.
struct coord_op {
  op_id id;
  std::chrono::milliseconds timeout{0};
  step cur = step::plan;
  /// Generation of the armed deadline; a deadline message with another
  /// generation is stale.
  uint64_t gen = 0;
  /// Per rank: has it delivered its part of the current gathering step?
  std::vector<bool> have;
  size_t received = 0;
  /// rank -> error of the current step.
  std::map<int32_t, caf::error> failures;
  /// Step "plan": every rank's local plan (index = rank).
  std::variant<std::vector<save_plan>, std::vector<load_plan>> plans;
  /// A save's metadata, from the global plan on.
  metadata md;
  /// A save's write results (index = rank).
  std::vector<std::vector<write_result>> results;
  // report
  clock_type::time_point t_open = clock_type::now();
  clock_type::time_point t_commit;
  /// The ranks' final parts, merged.
  op_report report;
  /// Step "write" / "read": per rank, bytes done and planned so far.
  std::vector<std::pair<uint64_t, uint64_t>> progress;
  // the plan cache (a save only)
  /// Per rank: the fingerprint of its local plan, and whether it sent only
  /// that.
  std::vector<uint64_t> fingerprints;
  std::vector<bool> plan_cached;
  /// Every rank's local plan, as the global step got them, and their key.
  std::shared_ptr<const std::vector<save_plan>> plan_set;
  uint64_t plans_key = 0;
};

/// The coordinator's side of the plan cache (DCP's `_cached_all_plans`):
/// every rank's local plan of the last save that succeeded here. A rank
/// sends only a fingerprint when its plan is the one of that save; the
/// global step then gets this very set of plans (shared, not copied) under
/// the same key, and the agent of the coordinator's rank reuses the global
/// plan it made for them. What storage adds per save (file names with the
/// save's tag, DCP's `storage_data`) is never cached: the storage's
/// `prepare_global_plan` runs on every save.
struct coord_plan_cache {
  std::shared_ptr<const std::vector<save_plan>> plans;
  std::vector<uint64_t> fingerprints;
  uint64_t key = 0;
};

template <class Op>
std::vector<typename Op::plan>& plans_of(coord_op& op) {
  return std::get<std::vector<typename Op::plan>>(op.plans);
}

struct coordinator_state {
  int32_t rank = 0;
  peer_table_ptr peers;
  std::map<uint64_t, coord_op> ops;
  /// Highest sequence number of an operation that ended here.
  uint64_t closed_high = 0;
  /// Ranks whose endpoint stopped.
  std::vector<bool> down;
  bool monitoring = false;
  uint64_t next_gen = 1;
  coordinator_stats stats;
  coord_plan_cache plan_cache;

  static constexpr const char* name = "dcpp.coordinator";
};

using coord_ptr = coordinator_actor::stateful_pointer<coordinator_state>;

/// Sends `msg` to rank `r`'s agent (through the fault layer's message
/// rules).
template <class Msg>
void send_to_rank(coord_ptr self, int32_t r, Msg&& msg) {
  deliver(self, self->state.peers->ranks[r], r, false, std::forward<Msg>(msg));
}

int32_t world_size(coord_ptr self) {
  return self->state.peers ? self->state.peers->world_size() : 0;
}

envelope reply_header(coord_ptr self, const op_id& op, int32_t to) {
  envelope hdr;
  hdr.op = op;
  hdr.from = self->state.rank;
  hdr.to = to;
  return hdr;
}

/// Arms the deadline of the current step. Gathering steps wait one step
/// timeout for the slowest rank. The global step and the commit wait two:
/// the own rank's agent bounds each of its requests by one step timeout and
/// then reports a precise error itself, which must arrive first.
void arm(coord_ptr self, coord_op& op) {
  op.gen = self->state.next_gen++;
  auto d = gathering(op.cur) ? op.timeout : op.timeout * 2;
  self->delayed_send(self, d, deadline_atom::value, op.id.seq, op.gen);
}

void start_gathering(coord_op& op, step next, int32_t n) {
  op.cur = next;
  op.have.assign(static_cast<size_t>(n), false);
  op.received = 0;
  op.failures.clear();
}

void close(coord_ptr self, uint64_t seq) {
  self->state.ops.erase(seq);
  self->state.closed_high = std::max(self->state.closed_high, seq);
  self->state.stats.open_ops = self->state.ops.size();
}

/// Tells the process's progress listener (actors/progress.hpp) where `op`
/// stands.
void notify(coord_ptr self, const coord_op& op, progress_update::state state) {
  if (!has_progress_listener())
    return;
  progress_update u;
  u.op = to_string(op.id);
  u.step = step_name(op.cur, op.id.kind);
  u.world = world_size(self);
  for (const auto& [done, planned] : op.progress) {
    u.done += done;
    u.total += planned;
  }
  u.elapsed_s
    = std::chrono::duration<double>(clock_type::now() - op.t_open).count();
  u.now = state;
  if (state == progress_update::state::done) {
    u.done = op.report.bytes;
    u.total = op.report.bytes;
  }
  publish_progress(u);
}

/// Ends `op` with errc::checkpoint_failed on every rank.
void fail(coord_ptr self, coord_op& op) {
  checkpoint_failure failure{to_string(op.id), step_name(op.cur, op.id.kind),
                             std::move(op.failures)};
  auto err = make_checkpoint_failure(failure);
  spdlog::debug("dcpp coordinator {}: {}", self->state.rank, describe(err));
  // The progress line ends before any rank learns the outcome: the
  // coordinator rank's program prints its result right after.
  notify(self, op, progress_update::state::failed);
  auto n = world_size(self);
  for (int32_t r = 0; r < n; ++r)
    send_to_rank(self, r,
                 op_outcome_msg{reply_header(self, op.id, r), err,
                                shared_metadata{}, failure, op_report{}});
  ++self->state.stats.ops_failed;
  close(self, op.id.seq);
}

/// Ends `op` successfully on every rank.
void succeed(coord_ptr self, coord_op& op) {
  auto n = world_size(self);
  // The operation opened here with the first local plan; a rank started
  // earlier (a load reads and decodes the metadata first), which its plan
  // time counts.
  op.report.total_us = std::max(micros(clock_type::now() - op.t_open),
                                op.report.plan_us + op.report.data_us
                                  + op.report.commit_us);
  // One metadata object for every rank's outcome: in one process the ranks
  // share it, over a transport each process decodes it once.
  shared_metadata md{std::move(op.md)};
  // The ranks keep their plans as cached once they learn of the success;
  // so does the coordinator, before it tells them.
  if (op.plan_set) {
    auto& cache = self->state.plan_cache;
    cache.plans = std::move(op.plan_set);
    cache.fingerprints = std::move(op.fingerprints);
    cache.key = op.plans_key;
  }
  // Before the outcomes (see fail): the final line, then the results.
  notify(self, op, progress_update::state::done);
  for (int32_t r = 0; r < n; ++r)
    send_to_rank(self, r,
                 op_outcome_msg{reply_header(self, op.id, r), caf::error{}, md,
                                checkpoint_failure{}, op.report});
  ++self->state.stats.ops_committed;
  close(self, op.id.seq);
}

void monitor_ranks(coord_ptr self) {
  if (self->state.monitoring)
    return;
  self->state.monitoring = true;
  self->state.down.assign(static_cast<size_t>(world_size(self)), false);
  for (auto& hdl : self->state.peers->ranks)
    self->monitor(hdl);
}

/// Checks the envelope of a message; returns false (and counts) if the
/// message must be ignored outright.
bool check_envelope(coord_ptr self, const envelope& hdr, const char* what) {
  auto n = world_size(self);
  if (hdr.to != self->state.rank || hdr.from < 0 || hdr.from >= n) {
    ++self->state.stats.rejected;
    spdlog::debug("dcpp coordinator {}: rejected {} of {} (ranks 0..{})",
                  self->state.rank, what, to_string(hdr), n - 1);
    return false;
  }
  return true;
}

/// Finds the operation of `hdr`, opening it if `open_timeout_ms` > 0 and the
/// operation is new. Returns nullptr for messages to ignore.
coord_op* find_op(coord_ptr self, const envelope& hdr, const char* what,
                  int64_t open_timeout_ms = 0) {
  auto& st = self->state;
  auto i = st.ops.find(hdr.op.seq);
  if (i != st.ops.end()) {
    if (i->second.id.kind != hdr.op.kind) {
      // The ranks disagree on the order of collective calls.
      auto& op = i->second;
      op.failures[hdr.from] = make_error(
        errc::protocol_error, "rank " + std::to_string(hdr.from) + " sent a "
                                + to_string(hdr.op.kind) + " message for "
                                + to_string(op.id));
      ++st.stats.rejected;
      fail(self, op);
      return nullptr;
    }
    return &i->second;
  }
  if (hdr.op.seq <= st.closed_high || open_timeout_ms <= 0) {
    ++st.stats.stale;
    spdlog::debug("dcpp coordinator {}: ignored {} of {} (stale)", st.rank,
                  what, to_string(hdr));
    return nullptr;
  }
  // A new operation.
  monitor_ranks(self);
  auto& op = st.ops[hdr.op.seq];
  op.id = hdr.op;
  op.timeout = std::chrono::milliseconds{open_timeout_ms};
  start_gathering(op, step::plan, world_size(self));
  auto n = static_cast<size_t>(world_size(self));
  if (hdr.op.kind == op_kind::save) {
    op.plans = std::vector<save_plan>(n);
    op.fingerprints.assign(n, 0);
    op.plan_cached.assign(n, false);
  } else {
    op.plans = std::vector<load_plan>(n);
  }
  st.stats.open_ops = st.ops.size();
  arm(self, op);
  // A rank that already stopped cannot take part.
  for (int32_t r = 0; r < world_size(self); ++r)
    if (st.down[r])
      op.failures[r] = make_error(errc::rank_lost,
                                  "rank " + std::to_string(r) + " stopped");
  if (!op.failures.empty()) {
    fail(self, op);
    return nullptr;
  }
  return &op;
}

/// Accepts the part of rank `from` in gathering step `expected`. Returns
/// false for duplicates and messages of another step.
bool accept_part(coord_ptr self, coord_op& op, const envelope& hdr,
                 step expected, const char* what) {
  auto& st = self->state;
  if (op.cur != expected || op.have[hdr.from]) {
    ++st.stats.duplicates;
    spdlog::debug("dcpp coordinator {}: ignored {} of {} (duplicate or out "
                  "of step)",
                  st.rank, what, to_string(hdr));
    return false;
  }
  op.have[hdr.from] = true;
  ++op.received;
  return true;
}

bool complete(coord_ptr self, const coord_op& op) {
  return op.received == static_cast<size_t>(world_size(self));
}

/// Records a version mismatch as the sender's failure in the current step.
bool check_version(coord_ptr self, const envelope& hdr) {
  if (hdr.version == protocol_version)
    return true;
  auto& st = self->state;
  ++st.stats.rejected;
  auto i = st.ops.find(hdr.op.seq);
  if (i != st.ops.end()) {
    auto& op = i->second;
    op.failures[hdr.from]
      = make_error(errc::protocol_error,
                   "rank " + std::to_string(hdr.from)
                     + " speaks protocol version " + std::to_string(hdr.version)
                     + ", the coordinator " + std::to_string(protocol_version));
    fail(self, op);
  }
  return false;
}

/// The global step's answer must come from the coordinator's own rank.
coord_op* find_global(coord_ptr self, const envelope& hdr, step expected,
                      const char* what) {
  if (!check_envelope(self, hdr, what) || !check_version(self, hdr))
    return nullptr;
  auto op = find_op(self, hdr, what);
  if (!op)
    return nullptr;
  if (hdr.from != self->state.rank || op->cur != expected) {
    ++self->state.stats.duplicates;
    return nullptr;
  }
  return op;
}

// -- the plan cache ---------------------------------------------------------

/// A save's local plan from rank `r`: in full, or only its fingerprint,
/// which must be the one the plan cache holds for `r`.
void take_local_plan(coord_ptr self, coord_op& op, int32_t r,
                     local_save_plan_msg& msg) {
  auto& cache = self->state.plan_cache;
  op.fingerprints[r] = msg.fingerprint;
  if (!msg.plan_cached) {
    plans_of<save_op>(op)[r] = std::move(msg.plan);
    return;
  }
  auto known = cache.plans && static_cast<size_t>(r) < cache.fingerprints.size()
               && cache.fingerprints[r] == msg.fingerprint;
  if (known) {
    op.plan_cached[r] = true;
    return;
  }
  ++self->state.stats.plan_cache_misses;
  char fp[17];
  std::snprintf(fp, sizeof(fp), "%016llx",
                static_cast<unsigned long long>(msg.fingerprint));
  op.failures[r] = make_error(
    errc::protocol_error,
    "rank " + std::to_string(r) + " sent only the fingerprint " + fp
      + " of its local plan, which the coordinator (rank "
      + std::to_string(self->state.rank)
      + ") does not hold; the rank sends its full plan on the next save");
}

/// Every rank's local plan of a save, for the global step: the cached set
/// itself when every rank sent only its fingerprint, else a new set with
/// the cached plans of those that did.
std::shared_ptr<const std::vector<save_plan>> plan_set_of(coord_ptr self,
                                                          coord_op& op) {
  auto& st = self->state;
  auto all_cached = std::all_of(op.plan_cached.begin(), op.plan_cached.end(),
                                [](bool x) { return x; });
  if (all_cached && st.plan_cache.plans) {
    spdlog::debug("dcpp coordinator {}: {}: every rank's plan from the plan "
                  "cache",
                  st.rank, to_string(op.id));
    ++st.stats.plan_cache_hits;
    op.report.plans_cached = true;
    op.plans_key = st.plan_cache.key;
    return st.plan_cache.plans;
  }
  auto& fresh = plans_of<save_op>(op);
  for (size_t r = 0; r < fresh.size(); ++r)
    if (op.plan_cached[r])
      fresh[r] = (*st.plan_cache.plans)[r];
  op.plans_key = plans_fingerprint(op.fingerprints);
  return std::make_shared<const std::vector<save_plan>>(std::move(fresh));
}

// -- the steps, written once for save and load ------------------------------

/// Step "plan": rank `from`'s local plan (or its failure); once every rank
/// reported, the coordinator's own rank makes the global plan.
template <class Op>
void on_local_plan(coord_ptr self, typename Op::local_msg& msg) {
  const auto& hdr = msg.hdr;
  if (!check_envelope(self, hdr, "local plan") || !check_version(self, hdr))
    return;
  auto timeout = msg.step_timeout_ms > 0 ? msg.step_timeout_ms : 1;
  auto op = find_op(self, hdr, "local plan", timeout);
  if (!op || !accept_part(self, *op, hdr, step::plan, "local plan"))
    return;
  if (msg.error)
    op->failures[hdr.from] = std::move(msg.error);
  else if constexpr (is_save<Op>)
    take_local_plan(self, *op, hdr.from, msg);
  else
    plans_of<Op>(*op)[hdr.from] = std::move(msg.plan);
  if (!complete(self, *op))
    return;
  if (!op->failures.empty()) {
    fail(self, *op);
    return;
  }
  auto r = self->state.rank;
  op->cur = step::global_plan;
  arm(self, *op);
  if constexpr (is_save<Op>) {
    op->plan_set = plan_set_of(self, *op);
    send_to_rank(self, r,
                 global_save_step_msg{reply_header(self, op->id, r),
                                      op->plan_set, op->plans_key});
  } else {
    send_to_rank(self, r,
                 typename Op::global_msg{reply_header(self, op->id, r),
                                         std::move(plans_of<Op>(*op))});
  }
}

/// Step "plan", end: the global plan from the own rank; scatter each rank's
/// central plan, which starts the data step.
template <class Op>
void on_global_plan(coord_ptr self, typename Op::global_done_msg& msg) {
  auto op = find_global(self, msg.hdr, step::global_plan, "global plan");
  if (!op)
    return;
  auto n = world_size(self);
  auto& global = Op::global_of(msg);
  auto& plans = Op::plans_of(global);
  if (!msg.error && plans.size() != static_cast<size_t>(n))
    msg.error = make_error(errc::protocol_error,
                           "global " + to_string(Op::kind) + " plan has "
                             + std::to_string(plans.size()) + " plans for "
                             + std::to_string(n) + " ranks");
  if (msg.error) {
    op->failures[self->state.rank] = std::move(msg.error);
    fail(self, *op);
    return;
  }
  if constexpr (is_save<Op>)
    op->md = std::move(global.md);
  start_gathering(*op, step::data, n);
  op->results.assign(is_save<Op> ? static_cast<size_t>(n) : 0, {});
  op->progress.assign(static_cast<size_t>(n), {0, 0});
  // A save's planned bytes are known here; a load's come with the ranks'
  // progress reports (its items' sizes are in the metadata the ranks read).
  if constexpr (is_save<Op>)
    for (int32_t r = 0; r < n; ++r)
      op->progress[r].second = planned_bytes(plans[r]);
  arm(self, *op);
  for (int32_t r = 0; r < n; ++r)
    send_to_rank(self, r,
                 typename Op::central_msg{reply_header(self, op->id, r),
                                          std::move(plans[r])});
}

/// Step "write" / "read": rank `from`'s outcome; once every rank reported,
/// a save commits and a load ends.
template <class Op>
void on_data_done(coord_ptr self, typename Op::data_done_msg& msg) {
  const auto& hdr = msg.hdr;
  if (msg.report.in_progress) {
    // A progress report: counted for the progress line only; a late one
    // (of an operation that ended, or from a rank that already reported
    // its result) is dropped without counting.
    auto i = self->state.ops.find(hdr.op.seq);
    if (i == self->state.ops.end() || hdr.from < 0
        || hdr.from >= world_size(self))
      return;
    auto& op = i->second;
    if (op.cur != step::data || op.have[hdr.from]
        || op.progress.size() != op.have.size())
      return;
    op.progress[hdr.from].first = msg.report.bytes;
    op.progress[hdr.from].second = std::max(op.progress[hdr.from].second,
                                            msg.report.bytes_planned);
    notify(self, op, progress_update::state::running);
    return;
  }
  auto what = std::string{Op::data_step} + " result";
  if (!check_envelope(self, hdr, what.c_str()) || !check_version(self, hdr))
    return;
  auto op = find_op(self, hdr, what.c_str());
  if (!op || !accept_part(self, *op, hdr, step::data, what.c_str()))
    return;
  if (msg.error) {
    op->failures[hdr.from] = std::move(msg.error);
  } else {
    if constexpr (is_save<Op>)
      op->results[hdr.from] = std::move(Op::results_of(msg));
    merge(op->report, msg.report);
    op->progress[hdr.from] = {msg.report.bytes, msg.report.bytes};
    notify(self, *op, progress_update::state::running);
  }
  if (!complete(self, *op))
    return;
  if (!op->failures.empty()) {
    fail(self, *op);
    return;
  }
  if constexpr (is_save<Op>) {
    // The commit record: where every item ended up.
    for (auto& per_rank : op->results)
      for (auto& res : per_rank)
        op->md.storage_data[res.index] = res.storage_data;
    op->cur = step::commit;
    op->t_commit = clock_type::now();
    notify(self, *op, progress_update::state::running);
    arm(self, *op);
    auto r = self->state.rank;
    send_to_rank(self, r,
                 commit_msg{reply_header(self, op->id, r), op->md,
                            std::move(op->results)});
  } else {
    succeed(self, *op);
  }
}

/// Step "commit", end (a save only).
void on_commit_done(coord_ptr self, commit_done_msg& msg) {
  auto op = find_global(self, msg.hdr, step::commit, "commit result");
  if (!op)
    return;
  if (msg.error) {
    op->failures[self->state.rank] = std::move(msg.error);
    fail(self, *op);
    return;
  }
  op->report.commit_us = micros(clock_type::now() - op->t_commit);
  succeed(self, *op);
}

// -- behavior -------------------------------------------------------------

coordinator_actor::behavior_type coordinator_impl(coord_ptr self, int32_t rank,
                                                  peer_table_ptr peers) {
  self->state.rank = rank;
  self->state.peers = std::move(peers);
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    int32_t lost = -1;
    for (int32_t r = 0; r < world_size(self); ++r)
      if (st.peers->ranks[r].address() == dm.source)
        lost = r;
    if (lost < 0 || static_cast<size_t>(lost) >= st.down.size())
      return;
    st.down[lost] = true;
    auto reason = make_error(errc::rank_lost, "rank " + std::to_string(lost)
                                                + " stopped ("
                                                + describe(dm.reason) + ")");
    std::vector<uint64_t> affected;
    for (auto& [seq, op] : st.ops) {
      // In the commit step every rank has written; only the committing
      // rank still matters.
      if (op.cur == step::commit && lost != st.rank)
        continue;
      affected.push_back(seq);
    }
    for (auto seq : affected) {
      auto& op = st.ops.at(seq);
      op.failures[lost] = reason;
      fail(self, op);
    }
  });
  return {
    [=](local_save_plan_msg& msg) { on_local_plan<save_op>(self, msg); },
    [=](global_save_step_done_msg& msg) { on_global_plan<save_op>(self, msg); },
    [=](write_done_msg& msg) { on_data_done<save_op>(self, msg); },
    [=](commit_done_msg& msg) { on_commit_done(self, msg); },
    [=](local_load_plan_msg& msg) { on_local_plan<load_op>(self, msg); },
    [=](global_load_step_done_msg& msg) { on_global_plan<load_op>(self, msg); },
    [=](read_done_msg& msg) { on_data_done<load_op>(self, msg); },
    // -- deadlines ----------------------------------------------------------
    [=](deadline_atom, uint64_t seq, uint64_t gen) {
      auto& st = self->state;
      auto i = st.ops.find(seq);
      if (i == st.ops.end() || i->second.gen != gen)
        return;
      auto& op = i->second;
      auto ms = std::to_string(op.timeout.count());
      if (gathering(op.cur)) {
        for (int32_t r = 0; r < world_size(self); ++r)
          if (!op.have[r])
            op.failures[r] = make_error(errc::timeout,
                                        "rank " + std::to_string(r) + " sent "
                                          + owed(op.cur, op.id.kind)
                                          + " within " + ms + " ms");
      } else {
        op.failures[st.rank] = make_error(
          errc::timeout, "the coordinator's rank " + std::to_string(st.rank)
                           + " sent " + owed(op.cur, op.id.kind) + " within "
                           + std::to_string(op.timeout.count() * 2) + " ms");
      }
      fail(self, op);
    },
    [=](caf::get_atom, stats_atom) { return self->state.stats; },
  };
}

} // namespace

coordinator_actor spawn_coordinator(caf::actor_system& sys, int32_t rank,
                                    peer_table_ptr peers) {
  return sys.spawn(coordinator_impl, rank, std::move(peers));
}

} // namespace dcpp
