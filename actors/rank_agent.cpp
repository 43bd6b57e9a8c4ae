#include "actors/rank_agent.hpp"

#include "actors/delivery.hpp"
#include "actors/planner_actor.hpp"
#include "actors/reader_actor.hpp"
#include "actors/writer_actor.hpp"
#include "core/error.hpp"
#include "core/fault.hpp"

#include <caf/all.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace dcpp {

namespace {

/// How many step timeouts an agent waits for the coordinator's next message
/// (the coordinator itself waits one step timeout for the slowest rank and
/// one for its own global step or commit; the agent's deadline is only the
/// backstop for a coordinator that stopped answering).
constexpr int coordinator_wait_factor = 3;

/// A caller's request waiting for its turn.
struct pending_job {
  op_kind kind = op_kind::save;
  save_job save;
  load_job load;
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
  save_job save;
  load_job load;
  caf::typed_response_promise<metadata> rp;
  // per-operation actors
  planner_actor planner;
  writer_actor writer;
  reader_actor reader;
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
  // write / read step
  size_t parts_pending = 0;
  std::vector<std::vector<write_result>> part_results;
  caf::error part_error;
  // outcome
  bool outcome_known = false;
  bool aborting = false;
  caf::error error;
  /// Save: the committed metadata. Load: the metadata read.
  metadata md;
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
    return make_error(errc::timeout,
                      what + " did not finish within "
                        + std::to_string(op.timeout.count()) + " ms");
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
  if (op->error) {
    ++st.stats.ops_failed;
    spdlog::debug("dcpp agent {}: {} failed: {}", st.rank, to_string(op->id),
                  describe(op->error));
    if (op->rp.pending())
      op->rp.deliver(op->error);
  } else {
    ++st.stats.ops_done;
    if (op->rp.pending())
      op->rp.deliver(std::move(op->md));
  }
  auto stop = [](const auto& hdl) {
    if (hdl)
      caf::anon_send_exit(hdl, caf::exit_reason::user_shutdown);
  };
  stop(op->planner);
  stop(op->writer);
  stop(op->reader);
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
  if (op.error && op.id.kind == op_kind::save && op.writer) {
    op.aborting = true;
    self->request(op.writer, op.timeout, abort_atom::value)
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

// -- save -----------------------------------------------------------------

void send_local_save_plan(agent_ptr self, agent_op& op, save_plan plan,
                          caf::error err) {
  auto inj = injected(self, op, fault::step::plan, err);
  if (!inj.stop) {
    local_save_plan_msg msg;
    msg.hdr = header_to(self, op, op.coordinator);
    msg.step_timeout_ms = op.timeout.count();
    msg.plan = std::move(plan);
    msg.error = std::move(err);
    send_to_coordinator(self, op, std::move(msg), inj.late);
  }
  op.sent_local = true;
  arm(self, op, "the central plan");
}

void send_write_done(agent_ptr self, agent_op& op,
                     std::vector<write_result> results, caf::error err) {
  auto inj = injected(self, op, fault::step::write, err);
  if (!inj.stop) {
    write_done_msg msg;
    msg.hdr = header_to(self, op, op.coordinator);
    if (!err)
      msg.results = std::move(results);
    msg.error = std::move(err);
    send_to_coordinator(self, op, std::move(msg), inj.late);
  }
  arm(self, op, "the outcome");
}

void start_save(agent_ptr self) {
  auto& op = *self->state.op;
  auto seq = op.id.seq;
  auto rank = self->state.rank;
  const auto& job = op.save;
  if (job.error) {
    send_local_save_plan(self, op, {}, job.error);
    return;
  }
  if (!job.view || !job.planner || !job.writer) {
    send_local_save_plan(self, op, {},
                         make_error(errc::invalid_argument,
                                    "save_job without view, planner or "
                                    "writer"));
    return;
  }
  auto& sys = self->system();
  op.planner = spawn_planner(sys, job.planner, nullptr, job.view);
  op.writer = spawn_writer(sys, job.writer, job.source, mode_of(self));
  bool is_coordinator = rank == op.coordinator;
  auto fail_local = [self, seq](caf::error& err, const char* what) {
    if (auto op = on_reply(self, seq))
      send_local_save_plan(self, *op, {},
                           local_error(self, *op, std::move(err), what));
  };
  ++op.inflight;
  self->request(op.writer, op.timeout, set_up_atom::value, is_coordinator, rank)
    .then(
      [=](caf::ok_atom) {
        auto op = on_reply(self, seq);
        if (!op)
          return;
        ++op->inflight;
        self->request(op->planner, op->timeout, local_plan_atom::value,
                      is_coordinator)
          .then(
            [=](save_plan& plan) {
              auto op = on_reply(self, seq);
              if (!op)
                return;
              ++op->inflight;
              self->request(op->writer, op->timeout,
                            prepare_local_atom::value, std::move(plan))
                .then(
                  [=](save_plan& prepared) {
                    if (auto op = on_reply(self, seq))
                      send_local_save_plan(self, *op, std::move(prepared),
                                           caf::error{});
                  },
                  [=](caf::error& err) {
                    fail_local(err, "prepare_local_plan");
                  });
            },
            [=](caf::error& err) { fail_local(err, "create_local_plan"); });
      },
      [=](caf::error& err) { fail_local(err, "set_up"); });
}

/// One part of the write step finished (or failed).
void write_part_done(agent_ptr self, agent_op& op) {
  if (--op.parts_pending > 0)
    return;
  if (op.part_error) {
    send_write_done(self, op, {}, std::move(op.part_error));
    return;
  }
  std::vector<write_result> all;
  for (auto& part : op.part_results)
    all.insert(all.end(), std::make_move_iterator(part.begin()),
               std::make_move_iterator(part.end()));
  op.part_results.clear();
  send_write_done(self, op, std::move(all), caf::error{});
}

/// Writes the parts of this rank's plan in parallel, one writer each.
void write_parts(agent_ptr self, agent_op& op, std::vector<save_plan> parts) {
  auto seq = op.id.seq;
  if (parts.empty()) {
    send_write_done(self, op, {}, caf::error{});
    return;
  }
  auto k = parts.size();
  op.parts_pending = k;
  op.part_results.assign(k, {});
  for (size_t i = 0; i < k; ++i) {
    writer_actor hdl = op.writer;
    if (i > 0) {
      hdl = spawn_writer(self->system(), op.save.writer, op.save.source,
                         mode_of(self));
      op.workers.push_back(caf::actor_cast<caf::actor>(hdl));
    }
    auto what = "write_data (part " + std::to_string(i + 1) + " of "
                + std::to_string(k) + ")";
    ++op.inflight;
    self->request(hdl, op.timeout, write_atom::value, std::move(parts[i]))
      .then(
        [=](std::vector<write_result>& results) {
          if (auto op = on_reply(self, seq)) {
            op->part_results[i] = std::move(results);
            write_part_done(self, *op);
          }
        },
        [=](caf::error& err) {
          if (auto op = on_reply(self, seq)) {
            if (!op->part_error)
              op->part_error = local_error(self, *op, std::move(err), what);
            write_part_done(self, *op);
          }
        });
  }
}

void on_central_save_plan(agent_ptr self, central_save_plan_msg& msg) {
  auto op = check_from_coordinator(self, msg.hdr, "central save plan");
  if (!op)
    return;
  if (op->got_central || !op->sent_local) {
    ++self->state.stats.duplicates;
    return;
  }
  op->got_central = true;
  disarm(*op);
  auto seq = op->id.seq;
  auto max_parts = io_parts(self, op->save.io_threads);
  auto fail_write = [self, seq](caf::error& err, const char* what) {
    if (auto op = on_reply(self, seq))
      send_write_done(self, *op, {},
                      local_error(self, *op, std::move(err), what));
  };
  ++op->inflight;
  self->request(op->planner, op->timeout, finish_plan_atom::value,
                std::move(msg.plan))
    .then(
      [=](save_plan& plan) {
        auto op = on_reply(self, seq);
        if (!op)
          return;
        ++op->inflight;
        self->request(op->writer, op->timeout, split_atom::value,
                      std::move(plan), max_parts)
          .then(
            [=](std::vector<save_plan>& parts) {
              if (auto op = on_reply(self, seq))
                write_parts(self, *op, std::move(parts));
            },
            [=](caf::error& err) { fail_write(err, "split_plan"); });
      },
      [=](caf::error& err) { fail_write(err, "finish_plan"); });
}

void on_global_save_step(agent_ptr self, global_save_step_msg& msg) {
  auto op = check_from_coordinator(self, msg.hdr, "global save step");
  if (!op)
    return;
  if (op->global_started) {
    ++self->state.stats.duplicates;
    return;
  }
  op->global_started = true;
  auto seq = op->id.seq;
  auto hdr = header_to(self, *op, op->coordinator);
  auto fail_global = [self, seq, hdr](caf::error& err, const char* what) {
    if (auto op = on_reply(self, seq))
      send_to_coordinator(self, *op,
                          global_save_step_done_msg{
                            hdr, global_save_plan{},
                            local_error(self, *op, std::move(err), what)});
  };
  ++op->inflight;
  self->request(op->planner, op->timeout, global_plan_atom::value,
                std::move(msg.plans))
    .then(
      [=](global_save_plan& global) {
        auto op = on_reply(self, seq);
        if (!op)
          return;
        auto md = std::make_shared<metadata>(std::move(global.md));
        ++op->inflight;
        self->request(op->writer, op->timeout, prepare_global_atom::value,
                      std::move(global.plans))
          .then(
            [=](std::vector<save_plan>& plans) {
              if (auto op = on_reply(self, seq))
                send_to_coordinator(self, *op,
                                    global_save_step_done_msg{
                                      hdr, global_save_plan{std::move(plans),
                                                            std::move(*md)},
                                      caf::error{}});
            },
            [=](caf::error& err) { fail_global(err, "prepare_global_plan"); });
      },
      [=](caf::error& err) { fail_global(err, "create_global_plan"); });
}

void on_commit(agent_ptr self, commit_msg& msg) {
  auto op = check_from_coordinator(self, msg.hdr, "commit");
  if (!op)
    return;
  if (op->commit_started) {
    ++self->state.stats.duplicates;
    return;
  }
  op->commit_started = true;
  auto seq = op->id.seq;
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
  auto late = inj.late;
  ++op->inflight;
  self->request(op->writer, op->timeout, finish_atom::value, std::move(msg.md),
                std::move(msg.results))
    .then(
      [=](caf::ok_atom) {
        if (auto op = on_reply(self, seq))
          send_to_coordinator(self, *op, commit_done_msg{hdr, caf::error{}},
                              late);
      },
      [=](caf::error& err) {
        if (auto op = on_reply(self, seq))
          send_to_coordinator(self, *op,
                              commit_done_msg{hdr,
                                              local_error(self, *op,
                                                          std::move(err),
                                                          "finish")},
                              late);
      });
}

// -- load -----------------------------------------------------------------

void send_local_load_plan(agent_ptr self, agent_op& op, load_plan plan,
                          caf::error err) {
  auto inj = injected(self, op, fault::step::plan, err);
  if (!inj.stop) {
    local_load_plan_msg msg;
    msg.hdr = header_to(self, op, op.coordinator);
    msg.step_timeout_ms = op.timeout.count();
    msg.plan = std::move(plan);
    msg.error = std::move(err);
    send_to_coordinator(self, op, std::move(msg), inj.late);
  }
  op.sent_local = true;
  arm(self, op, "the central plan");
}

void send_read_done(agent_ptr self, agent_op& op, caf::error err) {
  auto inj = injected(self, op, fault::step::read, err);
  if (!inj.stop)
    send_to_coordinator(self, op,
                        read_done_msg{header_to(self, op, op.coordinator),
                                      std::move(err)},
                        inj.late);
  arm(self, op, "the outcome");
}

void start_load(agent_ptr self) {
  auto& op = *self->state.op;
  auto seq = op.id.seq;
  auto rank = self->state.rank;
  const auto& job = op.load;
  if (job.error) {
    send_local_load_plan(self, op, {}, job.error);
    return;
  }
  if (!job.view || !job.planner || !job.reader) {
    send_local_load_plan(self, op, {},
                         make_error(errc::invalid_argument,
                                    "load_job without view, planner or "
                                    "reader"));
    return;
  }
  auto& sys = self->system();
  op.planner = spawn_planner(sys, nullptr, job.planner, job.view);
  op.reader = spawn_reader(sys, job.reader, job.target, mode_of(self));
  bool is_coordinator = rank == op.coordinator;
  auto fail_local = [self, seq](caf::error& err, const char* what) {
    if (auto op = on_reply(self, seq))
      send_local_load_plan(self, *op, {},
                           local_error(self, *op, std::move(err), what));
  };
  // read_metadata -> set_up -> create_local_plan -> prepare_local_plan
  auto plan_step = [=](const metadata& md) {
    auto op = self->state.op.get();
    if (!op || op->id.seq != seq)
      return;
    ++op->inflight;
    self->request(op->planner, op->timeout, local_plan_atom::value, md,
                  is_coordinator)
      .then(
        [=](load_plan& plan) {
          auto op = on_reply(self, seq);
          if (!op)
            return;
          ++op->inflight;
          self->request(op->reader, op->timeout, prepare_local_atom::value,
                        std::move(plan))
            .then(
              [=](load_plan& prepared) {
                if (auto op = on_reply(self, seq))
                  send_local_load_plan(self, *op, std::move(prepared),
                                       caf::error{});
              },
              [=](caf::error& err) { fail_local(err, "prepare_local_plan"); });
        },
        [=](caf::error& err) { fail_local(err, "create_local_plan"); });
  };
  ++op.inflight;
  self->request(op.reader, op.timeout, read_metadata_atom::value)
    .then(
      [=](metadata& md) {
        auto op = on_reply(self, seq);
        if (!op)
          return;
        op->md = std::move(md);
        ++op->inflight;
        self->request(op->reader, op->timeout, set_up_atom::value, op->md,
                      is_coordinator, rank)
          .then(
            [=](caf::ok_atom) {
              if (auto op = on_reply(self, seq))
                plan_step(op->md);
            },
            [=](caf::error& err) { fail_local(err, "set_up"); });
      },
      [=](caf::error& err) { fail_local(err, "read_metadata"); });
}

void read_part_done(agent_ptr self, agent_op& op) {
  if (--op.parts_pending > 0)
    return;
  send_read_done(self, op, std::move(op.part_error));
}

void read_parts(agent_ptr self, agent_op& op, std::vector<load_plan> parts) {
  auto seq = op.id.seq;
  if (parts.empty()) {
    send_read_done(self, op, caf::error{});
    return;
  }
  auto k = parts.size();
  op.parts_pending = k;
  for (size_t i = 0; i < k; ++i) {
    reader_actor hdl = op.reader;
    if (i > 0) {
      hdl = spawn_reader(self->system(), op.load.reader, op.load.target,
                         mode_of(self));
      op.workers.push_back(caf::actor_cast<caf::actor>(hdl));
    }
    auto what = "read_data (part " + std::to_string(i + 1) + " of "
                + std::to_string(k) + ")";
    ++op.inflight;
    self->request(hdl, op.timeout, read_atom::value, std::move(parts[i]))
      .then(
        [=](caf::ok_atom) {
          if (auto op = on_reply(self, seq))
            read_part_done(self, *op);
        },
        [=](caf::error& err) {
          if (auto op = on_reply(self, seq)) {
            if (!op->part_error)
              op->part_error = local_error(self, *op, std::move(err), what);
            read_part_done(self, *op);
          }
        });
  }
}

void on_central_load_plan(agent_ptr self, central_load_plan_msg& msg) {
  auto op = check_from_coordinator(self, msg.hdr, "central load plan");
  if (!op)
    return;
  if (op->got_central || !op->sent_local) {
    ++self->state.stats.duplicates;
    return;
  }
  op->got_central = true;
  disarm(*op);
  auto seq = op->id.seq;
  auto max_parts = io_parts(self, op->load.io_threads);
  auto fail_read = [self, seq](caf::error& err, const char* what) {
    if (auto op = on_reply(self, seq))
      send_read_done(self, *op, local_error(self, *op, std::move(err), what));
  };
  ++op->inflight;
  self->request(op->planner, op->timeout, finish_plan_atom::value,
                std::move(msg.plan))
    .then(
      [=](load_plan& plan) {
        auto op = on_reply(self, seq);
        if (!op)
          return;
        ++op->inflight;
        self->request(op->reader, op->timeout, split_atom::value,
                      std::move(plan), max_parts)
          .then(
            [=](std::vector<load_plan>& parts) {
              if (auto op = on_reply(self, seq))
                read_parts(self, *op, std::move(parts));
            },
            [=](caf::error& err) { fail_read(err, "split_plan"); });
      },
      [=](caf::error& err) { fail_read(err, "finish_plan"); });
}

void on_global_load_step(agent_ptr self, global_load_step_msg& msg) {
  auto op = check_from_coordinator(self, msg.hdr, "global load step");
  if (!op)
    return;
  if (op->global_started) {
    ++self->state.stats.duplicates;
    return;
  }
  op->global_started = true;
  auto seq = op->id.seq;
  auto hdr = header_to(self, *op, op->coordinator);
  auto fail_global = [self, seq, hdr](caf::error& err, const char* what) {
    if (auto op = on_reply(self, seq))
      send_to_coordinator(self, *op,
                          global_load_step_done_msg{
                            hdr, {},
                            local_error(self, *op, std::move(err), what)});
  };
  ++op->inflight;
  self->request(op->planner, op->timeout, global_plan_atom::value,
                std::move(msg.plans))
    .then(
      [=](std::vector<load_plan>& plans) {
        auto op = on_reply(self, seq);
        if (!op)
          return;
        ++op->inflight;
        self->request(op->reader, op->timeout, prepare_global_atom::value,
                      std::move(plans))
          .then(
            [=](std::vector<load_plan>& prepared) {
              if (auto op = on_reply(self, seq))
                send_to_coordinator(self, *op,
                                    global_load_step_done_msg{
                                      hdr, std::move(prepared), caf::error{}});
            },
            [=](caf::error& err) { fail_global(err, "prepare_global_plan"); });
      },
      [=](caf::error& err) { fail_global(err, "create_global_plan"); });
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
    op.md = std::move(msg.md);
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
  op->id = op_id{job.kind, st.next_seq++};
  op->fault_op = fault::next_op();
  op->rp = std::move(job.rp);
  if (job.kind == op_kind::save) {
    op->coordinator = job.save.coordinator_rank;
    op->timeout = job.save.step_timeout;
    op->save = std::move(job.save);
  } else {
    op->coordinator = job.load.coordinator_rank;
    op->timeout = job.load.step_timeout;
    op->load = std::move(job.load);
  }
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
                            + " is not in the group of "
                            + std::to_string(n) + " ranks");
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
    start_save(self);
  else
    start_load(self);
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
                                + std::to_string(op.coordinator)
                                + ") stopped (" + describe(dm.reason) + ")"));
  });
  return {
    // -- coordinator -> rank ------------------------------------------------
    [=](global_save_step_msg& msg) { on_global_save_step(self, msg); },
    [=](central_save_plan_msg& msg) { on_central_save_plan(self, msg); },
    [=](commit_msg& msg) { on_commit(self, msg); },
    [=](global_load_step_msg& msg) { on_global_load_step(self, msg); },
    [=](central_load_plan_msg& msg) { on_central_load_plan(self, msg); },
    [=](op_outcome_msg& msg) { on_outcome(self, msg); },
    // -- local API ----------------------------------------------------------
    [=](save_atom, save_job& job) -> caf::result<metadata> {
      auto rp = self->make_response_promise<metadata>();
      pending_job pj;
      pj.kind = op_kind::save;
      pj.save = std::move(job);
      pj.rp = rp;
      self->state.queue.push_back(std::move(pj));
      start_next(self);
      return rp;
    },
    [=](load_atom, load_job& job) -> caf::result<metadata> {
      auto rp = self->make_response_promise<metadata>();
      pending_job pj;
      pj.kind = op_kind::load;
      pj.load = std::move(job);
      pj.rp = rp;
      self->state.queue.push_back(std::move(pj));
      start_next(self);
      return rp;
    },
    // -- deadlines and stats --------------------------------------------------
    [=](deadline_atom, uint64_t seq, uint64_t gen) {
      auto& st = self->state;
      if (!st.op || st.op->id.seq != seq || st.op->gen != gen || gen == 0)
        return;
      auto& op = *st.op;
      end_with(self,
               make_error(errc::timeout,
                          "rank " + std::to_string(st.rank)
                            + ": no answer from the coordinator (rank "
                            + std::to_string(op.coordinator) + ") within "
                            + std::to_string(op.timeout.count()
                                             * coordinator_wait_factor)
                            + " ms while waiting for " + op.waiting_for));
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
