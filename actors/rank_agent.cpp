#include "actors/rank_agent.hpp"

#include "actors/delivery.hpp"
#include "actors/operation.hpp"
#include "actors/planner_actor.hpp"
#include "actors/reader_actor.hpp"
#include "actors/writer_actor.hpp"
#include "core/error.hpp"
#include "core/fault.hpp"
#include "core/report.hpp"
#include "messages/wire.hpp"
#include "storage/byte_counter.hpp"

#include <caf/all.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace dcpp {

namespace {

/// How many step timeouts an agent waits for the coordinator's next message
/// (the coordinator itself waits one step timeout for the slowest rank and
/// one for its own global step or commit; the agent's deadline is only the
/// backstop for a coordinator that stopped answering).
constexpr int coordinator_wait_factor = 3;

/// How often a rank reports its bytes done during the data step (the
/// coordinator's progress line).
constexpr auto progress_interval = std::chrono::milliseconds(500);

using clock_type = std::chrono::steady_clock;

int64_t micros(clock_type::duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

using detail::is_save;
using detail::load_op;
using detail::save_op;

/// A save or a load, as the caller asked for it.
using any_job = std::variant<save_job, load_job>;

/// A caller's request waiting for its turn.
struct pending_job {
  any_job job;
  caf::typed_response_promise<metadata> rp;
};

/// The operation this agent runs now.
struct agent_op {
  op_id id;
  /// The operation's number for the fault layer's step rules (unique in
  /// the process; `id.seq` restarts at 1 in every process group).
  uint64_t fault_op = 0;
  int32_t coordinator = 0;
  std::chrono::milliseconds timeout{0};
  any_job job;
  caf::typed_response_promise<metadata> rp;
  // per-operation actors
  planner_actor planner;
  /// The writer (save) or reader (load) that runs the storage's calls.
  caf::actor io;
  /// Further writers (readers) of the data step.
  std::vector<caf::actor> workers;
  /// Requests to per-operation actors still unanswered.
  int inflight = 0;
  // progress
  bool sent_local = false;
  bool got_central = false;
  bool global_started = false;
  bool commit_started = false;
  /// The deadline armed last (0: none).
  uint64_t gen = 0;
  std::string waiting_for;
  // report
  clock_type::time_point t_start = clock_type::now();
  clock_type::time_point t_central;
  /// Bytes the writers (readers) have taken (filled) so far.
  byte_counter_ptr counter = std::make_shared<byte_counter>();
  /// Bytes and files of this rank's plan (a load's, known from its plan).
  rank_report planned;
  uint64_t progress_sent = 0;
  /// The outcome's report.
  op_report report;
  // data step
  size_t parts_pending = 0;
  std::vector<std::vector<write_result>> part_results;
  caf::error part_error;
  // outcome
  bool outcome_known = false;
  bool aborting = false;
  caf::error error;
  /// Save: the committed metadata. Load: the metadata read. Shared by the
  /// ranks of the process (never copied per rank).
  metadata_ptr md;
  /// A save's local plan: its fingerprint (the plan cache).
  uint64_t plan_fingerprint = 0;
};

/// A rank's side of the plan cache (DCP's `_cached_save_plan`): the
/// fingerprint of its local plan in the last save that succeeded, and the
/// coordinator rank of that save. A save whose local plan has that
/// fingerprint sends only the fingerprint. Any failed save forgets it, so
/// the next one sends the full plan (which also resynchronizes a
/// coordinator that missed this rank's last plan).
struct rank_plan_cache {
  bool valid = false;
  int32_t coordinator = -1;
  uint64_t fingerprint = 0;
};

/// The coordinator's rank: the planner's global plan (before the storage's
/// `prepare_global_plan`) for the set of local plans with key `key`, made
/// by `planner` (DCP's `_cached_global_plan` and metadata). Reused only
/// for the same key and the same planner object: a deterministic planner
/// makes the same global plan from the same local plans.
struct global_plan_cache {
  std::weak_ptr<const save_planner> planner;
  uint64_t key = 0;
  std::shared_ptr<const global_save_plan> global;
};

struct agent_state {
  int32_t rank = 0;
  peer_table_ptr peers;
  rank_agent_options opts;
  uint64_t next_seq = 1;
  std::deque<pending_job> queue;
  std::unique_ptr<agent_op> op;
  /// Outcomes that arrived before this rank started their operation.
  std::map<uint64_t, op_outcome_msg> early;
  uint64_t next_gen = 1;
  agent_stats stats;
  rank_plan_cache plan_cache;
  global_plan_cache global_cache;

  static constexpr const char* name = "dcpp.rank_agent";
};

using agent_ptr = rank_agent_actor::stateful_pointer<agent_state>;

io_mode mode_of(agent_ptr self) {
  return self->state.opts.detached_io ? io_mode::detached : io_mode::scheduled;
}

/// The `n` of `split_plan(plan, n)`.
uint32_t io_parts(agent_ptr self, uint32_t requested) {
  auto cap = std::max<uint32_t>(self->state.opts.max_io_actors, 1);
  return std::min(std::max<uint32_t>(requested, 1), cap);
}

envelope header_to(agent_ptr self, const agent_op& op, int32_t to) {
  envelope hdr;
  hdr.op = op.id;
  hdr.from = self->state.rank;
  hdr.to = to;
  return hdr;
}

coordinator_actor coordinator_of(agent_ptr self, const agent_op& op) {
  return self->state.peers->coordinators[op.coordinator];
}

/// Sends `msg` to the operation's coordinator (through the fault layer's
/// message rules), at least `late` late.
template <class Msg>
void send_to_coordinator(agent_ptr self, const agent_op& op, Msg&& msg,
                         std::chrono::milliseconds late = {}) {
  deliver(self, coordinator_of(self, op), self->state.rank, true,
          std::forward<Msg>(msg), late);
}

/// What an injected fault (core/fault.hpp) does to this rank's report of a
/// step.
struct injection {
  /// An injected hang: the rank sends nothing more for this operation, and
  /// only deadlines end it.
  bool stop = false;
  /// An injected slow step: the report goes this late (no thread sleeps).
  std::chrono::milliseconds late{0};
};

/// The fault layer's hook of step `s`; an injected failure replaces `err`.
injection injected(agent_ptr self, const agent_op& op, fault::step s,
                   caf::error& err) {
  if (err)
    return {};
  auto v = fault::at_step(s, self->state.rank, op.fault_op);
  if (v.what == fault::action::fail)
    err = std::move(v.error);
  return {v.what == fault::action::hang, v.delay};
}

/// Turns the error of a request to a local actor into the error this rank
/// reports, naming what it was doing.
caf::error local_error(agent_ptr self, const agent_op& op, caf::error err,
                       const std::string& what) {
  if (err == caf::sec::request_timeout)
    return make_error(errc::timeout, what + " did not finish within "
                                       + std::to_string(op.timeout.count())
                                       + " ms");
  // Storage backends often name the call themselves ("set_up: ..."): say
  // it once ("set_up: ...", "write_data (part 1 of 2): ...").
  if (code_of(err) != errc::none) {
    auto call = what.substr(0, what.find(" ("));
    auto ctx = context_of(err);
    if (ctx.compare(0, call.size() + 2, call + ": ") == 0)
      return make_error(code_of(err),
                        what + ": " + ctx.substr(call.size() + 2));
  }
  return with_context(err, what, errc::aborted);
}

void arm(agent_ptr self, agent_op& op, std::string waiting_for) {
  op.gen = self->state.next_gen++;
  op.waiting_for = std::move(waiting_for);
  self->delayed_send(self, op.timeout * coordinator_wait_factor,
                     deadline_atom::value, op.id.seq, op.gen);
}

void disarm(agent_op& op) {
  op.gen = 0;
}

void start_next(agent_ptr self);

/// Replies to the caller, stops the operation's actors, starts the next.
void finalize(agent_ptr self, uint64_t seq) {
  auto& st = self->state;
  if (!st.op || st.op->id.seq != seq)
    return;
  auto op = std::move(st.op);
  if (op->id.kind == op_kind::save)
    st.plan_cache = rank_plan_cache{!op->error, op->coordinator,
                                    op->plan_fingerprint};
  if (op->error) {
    ++st.stats.ops_failed;
    spdlog::debug("dcpp agent {}: {} failed: {}", st.rank, to_string(op->id),
                  describe(op->error));
    if (op->rp.pending())
      op->rp.deliver(op->error);
  } else {
    ++st.stats.ops_done;
    bool shared = false;
    std::visit(
      [&](auto& job) {
        if (job.report)
          *job.report = op->report;
        if (job.metadata_out) {
          *job.metadata_out = op->md;
          shared = true;
        }
      },
      op->job);
    // The caller who took the shared object gets no copy.
    if (op->rp.pending())
      op->rp.deliver(shared || !op->md ? metadata{} : *op->md);
  }
  auto stop = [](const auto& hdl) {
    if (hdl)
      caf::anon_send_exit(hdl, caf::exit_reason::user_shutdown);
  };
  stop(op->planner);
  stop(op->io);
  for (auto& w : op->workers)
    stop(w);
  if (op->coordinator >= 0 && op->coordinator < st.peers->world_size())
    self->demonitor(coordinator_of(self, *op).address());
  start_next(self);
}

/// Ends the operation once no request is in flight; a failed save first
/// asks the storage to drop what this rank wrote.
void try_finish(agent_ptr self) {
  auto& op = *self->state.op;
  if (!op.outcome_known || op.inflight > 0 || op.aborting)
    return;
  auto seq = op.id.seq;
  if (op.error && op.id.kind == op_kind::save && op.io) {
    op.aborting = true;
    self
      ->request(caf::actor_cast<writer_actor>(op.io), op.timeout,
                abort_atom::value)
      .then([=](caf::ok_atom) { finalize(self, seq); },
            [=](caf::error&) { finalize(self, seq); });
    return;
  }
  finalize(self, seq);
}

/// Ends the current operation with `err` as far as this rank is concerned.
void end_with(agent_ptr self, caf::error err) {
  auto& op = *self->state.op;
  if (op.outcome_known)
    return;
  op.outcome_known = true;
  op.error = std::move(err);
  try_finish(self);
}

/// Bookkeeping for a reply of a per-operation actor: returns the operation
/// if the reply still matters.
agent_op* on_reply(agent_ptr self, uint64_t seq) {
  auto& op = self->state.op;
  if (!op || op->id.seq != seq)
    return nullptr;
  --op->inflight;
  if (op->outcome_known) {
    try_finish(self);
    return nullptr;
  }
  return op.get();
}

/// Checks a message from a coordinator; returns the operation it belongs
/// to, or nullptr (counted) if it must be ignored.
agent_op* check_from_coordinator(agent_ptr self, const envelope& hdr,
                                 const char* what) {
  auto& st = self->state;
  auto& op = st.op;
  auto ignore = [&](uint64_t& counter, const char* why) -> agent_op* {
    ++counter;
    spdlog::debug("dcpp agent {}: ignored {} of {} ({})", st.rank, what,
                  to_string(hdr), why);
    return nullptr;
  };
  if (hdr.to != st.rank)
    return ignore(st.stats.rejected, "addressed to another rank");
  if (!op || hdr.op.seq < op->id.seq)
    return ignore(st.stats.stale, "stale");
  if (hdr.op.seq > op->id.seq)
    return ignore(st.stats.rejected, "for an operation not started here");
  if (hdr.version != protocol_version) {
    ++st.stats.rejected;
    end_with(self, make_error(errc::protocol_error,
                              "the coordinator speaks protocol version "
                                + std::to_string(hdr.version) + ", rank "
                                + std::to_string(st.rank) + " "
                                + std::to_string(protocol_version)));
    return nullptr;
  }
  if (hdr.op.kind != op->id.kind || hdr.from != op->coordinator)
    return ignore(st.stats.rejected, "wrong kind or coordinator");
  if (op->outcome_known)
    return ignore(st.stats.stale, "operation ending");
  return op.get();
}

/// The operation that a coordinator's order of a step (global plan,
/// commit) is for, marked as started; nullptr for messages to ignore and
/// for repeats (counted).
agent_op* begin_step(agent_ptr self, const envelope& hdr, const char* what,
                     bool agent_op::*started) {
  auto op = check_from_coordinator(self, hdr, what);
  if (!op)
    return nullptr;
  if (op->*started) {
    ++self->state.stats.duplicates;
    return nullptr;
  }
  op->*started = true;
  return op;
}

// -- the steps, written once for save and load ------------------------------

template <class Op>
typename Op::job& job_of(agent_op& op) {
  return std::get<typename Op::job>(op.job);
}

/// The writer (save) or reader (load) actor that runs the operation's
/// storage calls.
template <class Op>
typename Op::io_actor io_of(const agent_op& op) {
  return caf::actor_cast<typename Op::io_actor>(op.io);
}

template <class Op>
caf::actor spawn_io(agent_ptr self, const typename Op::job& job) {
  auto& sys = self->system();
  if constexpr (is_save<Op>)
    return caf::actor_cast<caf::actor>(
      spawn_writer(sys, job.writer, job.source, mode_of(self)));
  else
    return caf::actor_cast<caf::actor>(
      spawn_reader(sys, job.reader, job.target, mode_of(self)));
}

/// Asks `hdl`, an actor of the current operation, within the step timeout.
/// `next(op, answer)` runs if the operation still wants the answer;
/// `fail(op, error)` gets the error, named after `what` (the storage or
/// planner call). Every request of the agent goes through here.
template <class Result, class Handle, class Next, class Fail, class... Ts>
void ask(agent_ptr self, agent_op& op, const Handle& hdl, std::string what,
         Next next, Fail fail, Ts&&... xs) {
  // Atom constants (ok_atom) are matched by value, everything else by
  // reference.
  using arg
    = std::conditional_t<caf::is_atom_constant<Result>::value, Result, Result&>;
  auto seq = op.id.seq;
  ++op.inflight;
  auto t0 = clock_type::now();
  self->request(hdl, op.timeout, std::forward<Ts>(xs)...)
    .then(
      [=](arg x) mutable {
        spdlog::trace("dcpp agent: {} took {} us", what,
                      micros(clock_type::now() - t0));
        if (auto op = on_reply(self, seq))
          next(*op, x);
      },
      [=](caf::error& err) mutable {
        if (auto op = on_reply(self, seq))
          fail(*op, local_error(self, *op, std::move(err), what));
      });
}

/// Reports this rank's local plan (or why it has none) to the coordinator.
template <class Op>
void send_local_plan(agent_ptr self, agent_op& op, typename Op::plan plan,
                     caf::error err) {
  auto inj = injected(self, op, fault::step::plan, err);
  typename Op::local_msg msg{header_to(self, op, op.coordinator),
                             op.timeout.count(), std::move(plan),
                             std::move(err)};
  if constexpr (is_save<Op>) {
    if (!msg.error) {
      // The plan cache: the plan of the last successful save goes as its
      // fingerprint only.
      const auto& cache = self->state.plan_cache;
      op.plan_fingerprint = plan_fingerprint(msg.plan);
      msg.fingerprint = op.plan_fingerprint;
      if (cache.valid && cache.coordinator == op.coordinator
          && cache.fingerprint == op.plan_fingerprint) {
        msg.plan = save_plan{};
        msg.plan_cached = true;
        ++self->state.stats.plans_sent_cached;
      }
    }
  }
  if (!inj.stop)
    send_to_coordinator(self, op, std::move(msg), inj.late);
  op.sent_local = true;
  arm(self, op, "the central plan");
}

/// Reports this rank's data step (what it wrote, or that it read).
template <class Op>
void send_data_done(agent_ptr self, agent_op& op,
                    std::vector<write_result> results, caf::error err) {
  auto inj = injected(self, op, Op::data_fault, err);
  if (!inj.stop) {
    if (err)
      results.clear();
    rank_report report;
    if (!err)
      report = is_save<Op> ? written(results) : op.planned;
    report.bytes_planned = op.planned.bytes_planned;
    if (op.got_central) {
      report.plan_us = micros(op.t_central - op.t_start);
      report.data_us = micros(clock_type::now() - op.t_central);
    }
    send_to_coordinator(self, op,
                        Op::data_done(header_to(self, op, op.coordinator),
                                      std::move(results), std::move(err),
                                      report),
                        inj.late);
  }
  arm(self, op, "the outcome");
}

/// During the data step: reports the bytes done so far (if they changed)
/// and rearms the timer. Progress reports bypass the fault layer's message
/// rules, so that they do not shift its message counts; the coordinator
/// uses them only for its progress line.
template <class Op>
void report_progress(agent_ptr self, agent_op& op) {
  if (op.outcome_known || op.parts_pending == 0)
    return;
  auto done = op.counter->done.load();
  if (done != op.progress_sent) {
    op.progress_sent = done;
    rank_report report;
    report.in_progress = true;
    report.bytes = done;
    report.bytes_planned = op.planned.bytes_planned;
    self->send(coordinator_of(self, op),
               Op::data_done(header_to(self, op, op.coordinator), {},
                             caf::error{}, report));
  }
  self->delayed_send(self, progress_interval, progress_atom::value, op.id.seq);
}

/// Step "plan", every rank: set up the storage (a load reads the metadata
/// first), make the local plan, let the storage annotate it, report it.
template <class Op>
void start(agent_ptr self, agent_op& op) {
  using plan = typename Op::plan;
  auto report = [self](agent_op& op, caf::error err) {
    send_local_plan<Op>(self, op, {}, std::move(err));
  };
  const auto& job = job_of<Op>(op);
  if (job.error)
    return report(op, job.error);
  bool has_storage;
  if constexpr (is_save<Op>)
    has_storage = job.writer != nullptr;
  else
    has_storage = job.reader != nullptr;
  if (!job.view || !job.planner || !has_storage)
    return report(op, make_error(errc::invalid_argument,
                                 to_string(Op::kind)
                                   + " job without view, planner or "
                                     "storage"));
  // The writers (readers) count the bytes they take (fill) for the
  // progress reports.
  auto& data = Op::data_of(job_of<Op>(op));
  if constexpr (is_save<Op>)
    data = counting_source(std::move(data), op.counter);
  else
    data = counting_target(std::move(data), op.counter);
  if constexpr (is_save<Op>)
    op.planner = spawn_planner(self->system(), job.planner, nullptr, job.view);
  else
    op.planner = spawn_planner(self->system(), nullptr, job.planner, job.view);
  op.io = spawn_io<Op>(self, job);
  auto rank = self->state.rank;
  bool coord = rank == op.coordinator;
  auto local_plan = [=](agent_op& op) {
    auto prepare = [=](agent_op& op, plan& local) {
      ask<plan>(
        self, op, io_of<Op>(op), "prepare_local_plan",
        [=](agent_op& op, plan& prepared) {
          send_local_plan<Op>(self, op, std::move(prepared), caf::error{});
        },
        report, prepare_local_atom::value, std::move(local));
    };
    if constexpr (is_save<Op>)
      ask<plan>(self, op, op.planner, "create_local_plan", prepare, report,
                local_plan_atom::value, coord);
    else
      ask<plan>(self, op, op.planner, "create_local_plan", prepare, report,
                local_plan_atom::value, op.md, coord);
  };
  auto set_up_done = [=](agent_op& op, caf::ok_atom) { local_plan(op); };
  if constexpr (is_save<Op>) {
    ask<caf::ok_atom>(self, op, io_of<Op>(op), "set_up", set_up_done, report,
                      set_up_atom::value, coord, rank);
  } else {
    ask<metadata_ptr>(
      self, op, io_of<Op>(op), "read_metadata",
      [=](agent_op& op, metadata_ptr& md) {
        op.md = md;
        op.counter->md = md;
        ask<caf::ok_atom>(self, op, io_of<Op>(op), "set_up", set_up_done,
                          report, set_up_atom::value, op.md, coord, rank);
      },
      report, read_metadata_atom::value);
  }
}

/// The planner's global plan of a save: from the plan cache if it holds
/// the plans of `msg` for this planner, else made by the planner (and
/// cached). `next` gets a copy that the storage may annotate.
template <class Next, class Fail>
void global_save_plan_of(agent_ptr self, agent_op& op,
                         global_save_step_msg& msg, Next next, Fail fail) {
  auto& cache = self->state.global_cache;
  auto planner = job_of<save_op>(op).planner;
  if (cache.global && cache.key == msg.plans_key
      && cache.planner.lock() == planner) {
    ++self->state.stats.global_plans_reused;
    auto global = *cache.global;
    next(op, global);
    return;
  }
  auto key = msg.plans_key;
  ask<global_save_plan>(
    self, op, op.planner, "create_global_plan",
    [=](agent_op& op, global_save_plan& planned) {
      auto& cache = self->state.global_cache;
      cache.planner = planner;
      cache.key = key;
      cache.global = std::make_shared<const global_save_plan>(planned);
      next(op, planned);
    },
    fail, global_plan_atom::value, msg.plans.get());
}

/// Step "plan", the coordinator's own rank: the global plan from every
/// rank's local plan, annotated by the storage.
template <class Op>
void on_global_step(agent_ptr self, typename Op::global_msg& msg) {
  using global_plan = typename Op::global_plan;
  using plans = std::vector<typename Op::plan>;
  auto op = begin_step(self, msg.hdr, "global plan step",
                       &agent_op::global_started);
  if (!op)
    return;
  auto hdr = header_to(self, *op, op->coordinator);
  auto reply = [self, hdr](agent_op& op, global_plan global, caf::error err) {
    send_to_coordinator(self, op,
                        typename Op::global_done_msg{hdr, std::move(global),
                                                     std::move(err)});
  };
  auto fail = [reply](agent_op& op, caf::error err) {
    reply(op, global_plan{}, std::move(err));
  };
  auto prepare = [=](agent_op& op, global_plan& planned) {
    auto global = std::make_shared<global_plan>(std::move(planned));
    auto local_plans = std::move(Op::plans_of(*global));
    ask<plans>(
      self, op, io_of<Op>(op), "prepare_global_plan",
      [=](agent_op& op, plans& prepared) {
        Op::plans_of(*global) = std::move(prepared);
        reply(op, std::move(*global), caf::error{});
      },
      fail, prepare_global_atom::value, std::move(local_plans));
  };
  if constexpr (is_save<Op>)
    global_save_plan_of(self, *op, msg, prepare, fail);
  else
    ask<global_plan>(self, *op, op->planner, "create_global_plan", prepare,
                     fail, global_plan_atom::value, std::move(msg.plans));
}

/// One part of the data step finished (or failed); the last one reports.
template <class Op>
void part_done(agent_ptr self, agent_op& op) {
  if (--op.parts_pending > 0)
    return;
  if (op.part_error) {
    send_data_done<Op>(self, op, {}, std::move(op.part_error));
    return;
  }
  std::vector<write_result> all;
  for (auto& part : op.part_results)
    all.insert(all.end(), std::make_move_iterator(part.begin()),
               std::make_move_iterator(part.end()));
  op.part_results.clear();
  send_data_done<Op>(self, op, std::move(all), caf::error{});
}

/// Step "write" / "read", every rank: the parts of this rank's plan in
/// parallel, one writer (reader) actor each.
template <class Op>
void run_parts(agent_ptr self, agent_op& op,
               std::vector<typename Op::plan> parts) {
  if (parts.empty()) {
    send_data_done<Op>(self, op, {}, caf::error{});
    return;
  }
  auto k = parts.size();
  op.parts_pending = k;
  self->delayed_send(self, progress_interval, progress_atom::value, op.id.seq);
  op.part_results.assign(k, {});
  for (size_t i = 0; i < k; ++i) {
    auto hdl = io_of<Op>(op);
    if (i > 0) {
      auto worker = spawn_io<Op>(self, job_of<Op>(op));
      op.workers.push_back(worker);
      hdl = caf::actor_cast<typename Op::io_actor>(worker);
    }
    auto what = std::string{is_save<Op> ? "write_data" : "read_data"}
                + " (part " + std::to_string(i + 1) + " of " + std::to_string(k)
                + ")";
    ask<typename Op::part_result>(
      self, op, hdl, std::move(what),
      [=](agent_op& op, typename Op::part_result& res) {
        if constexpr (is_save<Op>)
          op.part_results[i] = std::move(res);
        part_done<Op>(self, op);
      },
      [=](agent_op& op, caf::error err) {
        if (!op.part_error)
          op.part_error = std::move(err);
        part_done<Op>(self, op);
      },
      typename Op::data_atom{}, std::move(parts[i]));
  }
}

/// Every rank: the coordinator's central plan for this rank, finished by
/// the planner and split by the storage, starts the data step.
template <class Op>
void on_central_plan(agent_ptr self, typename Op::central_msg& msg) {
  using plan = typename Op::plan;
  auto op = check_from_coordinator(self, msg.hdr, "central plan");
  if (!op)
    return;
  if (op->got_central || !op->sent_local) {
    ++self->state.stats.duplicates;
    return;
  }
  op->got_central = true;
  op->t_central = clock_type::now();
  disarm(*op);
  auto max_parts = io_parts(self, job_of<Op>(*op).io_threads);
  auto fail = [self](agent_op& op, caf::error err) {
    send_data_done<Op>(self, op, {}, std::move(err));
  };
  ask<plan>(
    self, *op, op->planner, "finish_plan",
    [=](agent_op& op, plan& central) {
      if constexpr (is_save<Op>) {
        op.planned.bytes_planned = planned_bytes(central);
      } else {
        op.planned = to_read(central, *op.md);
        op.planned.bytes_planned = op.planned.bytes;
      }
      ask<std::vector<plan>>(
        self, op, io_of<Op>(op), "split_plan",
        [=](agent_op& op, std::vector<plan>& parts) {
          run_parts<Op>(self, op, std::move(parts));
        },
        fail, split_atom::value, std::move(central), max_parts);
    },
    fail, finish_plan_atom::value, std::move(msg.plan));
}

/// Step "commit" (a save only), the coordinator's own rank: the storage's
/// `finish` writes the metadata last.
void on_commit(agent_ptr self, commit_msg& msg) {
  auto op = begin_step(self, msg.hdr, "commit", &agent_op::commit_started);
  if (!op)
    return;
  auto hdr = header_to(self, *op, op->coordinator);
  caf::error injected_error;
  auto inj = injected(self, *op, fault::step::commit, injected_error);
  if (inj.stop)
    return; // the coordinator's commit deadline ends the operation
  if (injected_error) {
    send_to_coordinator(self, *op,
                        commit_done_msg{hdr, std::move(injected_error)});
    return;
  }
  auto report = [self, hdr, late = inj.late](agent_op& op, caf::error err) {
    send_to_coordinator(self, op, commit_done_msg{hdr, std::move(err)}, late);
  };
  ask<caf::ok_atom>(
    self, *op, io_of<save_op>(*op), "finish",
    [=](agent_op& op, caf::ok_atom) { report(op, caf::error{}); }, report,
    finish_atom::value, std::move(msg.md), std::move(msg.results));
}

// -- both -------------------------------------------------------------------

void on_outcome(agent_ptr self, op_outcome_msg& msg) {
  auto& st = self->state;
  const auto& hdr = msg.hdr;
  if (hdr.to != st.rank) {
    ++st.stats.rejected;
    return;
  }
  auto current = st.op ? st.op->id.seq : 0;
  if (!st.op || hdr.op.seq != current) {
    auto first_future = st.op ? current + 1 : st.next_seq;
    if (hdr.op.seq >= first_future) {
      // This rank has not started the operation yet (it is slow): keep the
      // outcome; the operation ends as soon as it starts.
      st.early[hdr.op.seq] = std::move(msg);
      while (st.early.size() > 64)
        st.early.erase(st.early.begin());
    } else {
      ++st.stats.stale;
      spdlog::debug("dcpp agent {}: ignored outcome of {} (stale)", st.rank,
                    to_string(hdr));
    }
    return;
  }
  auto& op = *st.op;
  if (hdr.version != protocol_version || hdr.from != op.coordinator
      || hdr.op.kind != op.id.kind) {
    ++st.stats.rejected;
    return;
  }
  if (op.outcome_known) {
    ++st.stats.duplicates;
    return;
  }
  if (!msg.error && op.id.kind == op_kind::save)
    op.md = std::move(msg.md.ptr);
  op.report = msg.report;
  // A transport renders error contexts as text: the failure's data travels
  // beside the error and is put back into it here.
  if (code_of(msg.error) == errc::checkpoint_failed
      && !checkpoint_failure_of(msg.error) && !msg.failure.op.empty())
    msg.error = make_checkpoint_failure(std::move(msg.failure));
  end_with(self, std::move(msg.error));
}

void start_next(agent_ptr self) {
  auto& st = self->state;
  if (st.op || st.queue.empty())
    return;
  auto job = std::move(st.queue.front());
  st.queue.pop_front();
  auto op = std::make_unique<agent_op>();
  std::visit(
    [&](const auto& x) {
      using job_type = std::decay_t<decltype(x)>;
      auto kind = std::is_same_v<job_type, save_job> ? op_kind::save
                                                     : op_kind::load;
      op->id = op_id{kind, st.next_seq++};
      op->coordinator = x.coordinator_rank;
      op->timeout = x.step_timeout;
    },
    job.job);
  op->fault_op = fault::next_op();
  op->rp = std::move(job.rp);
  op->job = std::move(job.job);
  if (op->timeout.count() <= 0)
    op->timeout = std::chrono::milliseconds{1};
  st.op = std::move(op);
  auto& cur = *st.op;
  while (!st.early.empty() && st.early.begin()->first < cur.id.seq)
    st.early.erase(st.early.begin());
  auto n = st.peers ? st.peers->world_size() : 0;
  if (cur.coordinator < 0 || cur.coordinator >= n) {
    auto err = make_error(errc::invalid_argument,
                          "coordinator rank " + std::to_string(cur.coordinator)
                            + " is not in the group of " + std::to_string(n)
                            + " ranks");
    cur.coordinator = -1;
    end_with(self, std::move(err));
    return;
  }
  self->monitor(coordinator_of(self, cur));
  auto early = st.early.find(cur.id.seq);
  if (early != st.early.end()) {
    auto msg = std::move(early->second);
    st.early.erase(early);
    on_outcome(self, msg);
    return;
  }
  if (cur.id.kind == op_kind::save)
    start<save_op>(self, cur);
  else
    start<load_op>(self, cur);
}

/// Queues a caller's save or load; the reply comes when it ends.
caf::result<metadata> enqueue(agent_ptr self, any_job job) {
  auto rp = self->make_response_promise<metadata>();
  self->state.queue.push_back(pending_job{std::move(job), rp});
  start_next(self);
  return rp;
}

rank_agent_actor::behavior_type agent_impl(agent_ptr self, int32_t rank,
                                           peer_table_ptr peers,
                                           rank_agent_options opts) {
  self->state.rank = rank;
  self->state.peers = std::move(peers);
  self->state.opts = opts;
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    if (!st.op || st.op->coordinator < 0)
      return;
    auto& op = *st.op;
    if (coordinator_of(self, op).address() != dm.source)
      return;
    end_with(self, make_error(errc::rank_lost,
                              "the coordinator (rank "
                                + std::to_string(op.coordinator) + ") stopped ("
                                + describe(dm.reason) + ")"));
  });
  return {
    // -- coordinator -> rank ------------------------------------------------
    [=](global_save_step_msg& msg) { on_global_step<save_op>(self, msg); },
    [=](central_save_plan_msg& msg) { on_central_plan<save_op>(self, msg); },
    [=](commit_msg& msg) { on_commit(self, msg); },
    [=](global_load_step_msg& msg) { on_global_step<load_op>(self, msg); },
    [=](central_load_plan_msg& msg) { on_central_plan<load_op>(self, msg); },
    [=](op_outcome_msg& msg) { on_outcome(self, msg); },
    // -- local API ----------------------------------------------------------
    [=](save_atom, save_job& job) -> caf::result<metadata> {
      return enqueue(self, std::move(job));
    },
    [=](load_atom, load_job& job) -> caf::result<metadata> {
      return enqueue(self, std::move(job));
    },
    // -- deadlines and stats --------------------------------------------------
    [=](deadline_atom, uint64_t seq, uint64_t gen) {
      auto& st = self->state;
      if (!st.op || st.op->id.seq != seq || st.op->gen != gen || gen == 0)
        return;
      auto& op = *st.op;
      end_with(self, make_error(errc::timeout,
                                "rank " + std::to_string(st.rank)
                                  + ": no answer from the coordinator (rank "
                                  + std::to_string(op.coordinator) + ") within "
                                  + std::to_string(op.timeout.count()
                                                   * coordinator_wait_factor)
                                  + " ms while waiting for " + op.waiting_for));
    },
    [=](progress_atom, uint64_t seq) {
      auto& st = self->state;
      if (!st.op || st.op->id.seq != seq)
        return;
      if (st.op->id.kind == op_kind::save)
        report_progress<save_op>(self, *st.op);
      else
        report_progress<load_op>(self, *st.op);
    },
    [=](caf::get_atom, stats_atom) { return self->state.stats; },
  };
}

} // namespace

rank_agent_actor spawn_rank_agent(caf::actor_system& sys, int32_t rank,
                                  peer_table_ptr peers,
                                  rank_agent_options opts) {
  return sys.spawn(agent_impl, rank, std::move(peers), opts);
}

} // namespace dcpp
