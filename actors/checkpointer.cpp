#include "actors/checkpointer.hpp"

#include "actors/jobs.hpp"
#include "actors/process_group.hpp"
#include "core/error.hpp"
#include "core/fault.hpp"

#include <caf/all.hpp>

#include <algorithm>
#include <chrono>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <utility>

namespace dcpp {

namespace {

/// Prefixes an error with the step it happened in, like DCP's
/// CheckpointException("plan" / "write" / ...).
caf::error in_step(const char* step, const caf::error& err) {
  return with_context(err, std::string{"step '"} + step + "'");
}

/// A world of one rank has exactly one plan after global planning.
caf::error require_one_plan(size_t n) {
  if (n == 1)
    return caf::none;
  return make_error(errc::protocol_error,
                    "global plan has " + std::to_string(n)
                      + " plans for a world of 1");
}

std::shared_ptr<save_planner> save_planner_of(const checkpointer_options& o) {
  return o.save_planner ? o.save_planner : make_default_save_planner();
}

std::shared_ptr<load_planner> load_planner_of(const checkpointer_options& o) {
  return o.load_planner ? o.load_planner : make_default_load_planner();
}

/// The fault layer's hook of step `s` for a world of one rank (rank 0),
/// on the caller's thread: an injected failure or hang (which blocks here
/// until the rules are cleared: no deadline watches a world of one) ends
/// the step; a slow step sleeps.
caf::error injected(fault::step s) {
  auto v = fault::at_step(s, 0, fault::next_op());
  if (v.what == fault::action::slow)
    std::this_thread::sleep_for(v.delay);
  if (v.what == fault::action::fail)
    return std::move(v.error);
  if (v.what == fault::action::hang) {
    fault::block_until_released();
    return make_error(errc::aborted,
                      std::string{"released from an injected hang in step "}
                        + fault::to_string(s));
  }
  return {};
}

/// The SPMD save of DCP's `_save_state_dict` for a world of one rank:
/// local plan -> global plan -> write -> commit.
save_result save_no_dist(storage_writer& writer, const save_planner& planner,
                         const state_dict& sd) {
  // flatten() hands out mutable pointers for loading; saving only reads.
  auto flat = flatten(const_cast<state_dict&>(sd));
  if (!flat)
    return in_step("plan", flat.error());
  auto view = make_view(*flat);
  if (!view)
    return in_step("plan", view.error());
  if (auto err = writer.set_up(true, 0))
    return in_step("plan", err);
  auto local = planner.create_local_plan(*view, true);
  if (!local)
    return in_step("plan", local.error());
  auto prepared = writer.prepare_local_plan(std::move(*local));
  if (!prepared)
    return in_step("plan", prepared.error());
  std::vector<save_plan> all;
  all.push_back(std::move(*prepared));
  auto global = planner.create_global_plan(std::move(all));
  if (!global)
    return in_step("plan", global.error());
  auto plans = writer.prepare_global_plan(std::move(global->plans));
  if (!plans)
    return in_step("plan", plans.error());
  if (auto err = require_one_plan(plans->size()))
    return in_step("plan", err);
  auto central = planner.finish_plan(std::move(plans->front()));
  if (!central)
    return in_step("plan", central.error());
  if (auto err = injected(fault::step::plan))
    return in_step("plan", err);
  auto source = make_item_source(*flat);
  auto results = writer.write_data(*central, *source);
  if (results)
    if (auto err = injected(fault::step::write))
      results = std::move(err);
  if (!results) {
    writer.abort();
    return in_step("write", results.error());
  }
  std::vector<std::vector<write_result>> all_results;
  all_results.push_back(std::move(*results));
  auto err = injected(fault::step::commit);
  if (!err)
    err = writer.finish(global->md, all_results);
  if (err) {
    writer.abort();
    return in_step("commit", err);
  }
  auto md = std::move(global->md);
  for (const auto& res : all_results.front())
    md.storage_data[res.index] = res.storage_data;
  return md;
}

/// DCP's `_load_state_dict` for a world of one rank.
caf::error load_no_dist(storage_reader& reader, const load_planner& planner,
                        state_dict& sd) {
  auto flat = flatten(sd);
  if (!flat)
    return in_step("plan", flat.error());
  auto view = make_view(*flat);
  if (!view)
    return in_step("plan", view.error());
  auto md = reader.read_metadata();
  if (!md)
    return in_step("plan", md.error());
  if (auto err = reader.set_up(*md, true, 0))
    return in_step("plan", err);
  auto local = planner.create_local_plan(*view, *md, true);
  if (!local)
    return in_step("plan", local.error());
  auto prepared = reader.prepare_local_plan(std::move(*local));
  if (!prepared)
    return in_step("plan", prepared.error());
  std::vector<load_plan> all;
  all.push_back(std::move(*prepared));
  auto global = planner.create_global_plan(std::move(all));
  if (!global)
    return in_step("plan", global.error());
  auto plans = reader.prepare_global_plan(std::move(*global));
  if (!plans)
    return in_step("plan", plans.error());
  if (auto err = require_one_plan(plans->size()))
    return in_step("plan", err);
  auto central = planner.finish_plan(std::move(plans->front()));
  if (!central)
    return in_step("plan", central.error());
  if (auto err = injected(fault::step::plan))
    return in_step("plan", err);
  auto target = make_load_target(*flat);
  if (auto err = reader.read_data(*central, *target))
    return in_step("read", err);
  if (auto err = injected(fault::step::read))
    return in_step("read", err);
  return caf::none;
}

caf::error no_group_error() {
  return make_error(errc::invalid_argument,
                    "checkpointer: no process group given and no_dist is "
                    "false");
}

// -- process group path -------------------------------------------------------

/// The caller's own deadline for a whole operation: the agent enforces one
/// step timeout per local request and per wait for the coordinator, so its
/// answer (value or a precise error) always comes well before this.
std::chrono::milliseconds operation_deadline(const checkpointer_options& o) {
  auto step = std::max(o.step_timeout, std::chrono::milliseconds{1});
  return step * 16 + std::chrono::seconds(5);
}

job_options job_options_of(const checkpointer_options& o) {
  job_options jo;
  jo.coordinator_rank = o.coordinator_rank;
  jo.step_timeout = o.step_timeout;
  jo.io_threads = std::max<uint32_t>(o.io_threads, 1);
  jo.save_planner = o.save_planner;
  jo.load_planner = o.load_planner;
  return jo;
}

/// A job whose only content is a local failure: the agent still takes part
/// in the operation and reports it, so every rank fails together.
template <class Job>
Job failed_job(const checkpointer_options& o, caf::error err) {
  Job job;
  job.coordinator_rank = o.coordinator_rank;
  job.step_timeout = o.step_timeout;
  job.error = std::move(err);
  return job;
}

save_job save_job_for(caf::expected<save_job> job,
                      const checkpointer_options& o) {
  if (!job)
    return failed_job<save_job>(o, std::move(job.error()));
  return std::move(*job);
}

/// Runs `job` on this rank's agent and waits for the reply. A helper actor
/// monitors the agent: if the agent stops before it replies (killed, or
/// ended by an exception), its response promise is never delivered, and
/// the caller learns that at once (errc::rank_lost) instead of waiting for
/// the whole operation deadline.
template <class Job, class Atom>
caf::expected<metadata> run_on_agent(const checkpointer_options& o, Atom atom,
                                     Job job) {
  auto& group = *o.process_group;
  auto rank = group.rank();
  auto agent = group.agent();
  auto deadline = operation_deadline(o);
  auto done = std::make_shared<std::promise<caf::expected<metadata>>>();
  auto result = done->get_future();
  group.system().spawn([=](caf::event_based_actor* self) mutable {
    auto answered = std::make_shared<bool>(false);
    auto answer = [self, done, answered](caf::expected<metadata> x) {
      if (*answered)
        return;
      *answered = true;
      done->set_value(std::move(x));
      self->quit();
    };
    self->set_down_handler([=](caf::down_msg& dm) {
      answer(make_error(errc::rank_lost,
                        "rank " + std::to_string(rank)
                          + ": the rank agent stopped ("
                          + describe(dm.reason)
                          + ") before the operation ended"));
    });
    self->monitor(agent);
    self->request(agent, deadline, atom, std::move(job))
      .then([=](metadata& md) { answer(std::move(md)); },
            [=](caf::error& err) {
              if (err == caf::sec::request_timeout)
                err = make_error(errc::timeout,
                                 "rank " + std::to_string(rank)
                                   + ": the operation did not end within "
                                   + std::to_string(deadline.count())
                                   + " ms");
              answer(std::move(err));
            });
  });
  try {
    return result.get();
  } catch (const std::future_error&) {
    // The helper actor went away unanswered: the actor system stopped.
    return make_error(errc::aborted,
                      "rank " + std::to_string(rank)
                        + ": the actor system stopped before the operation "
                          "ended");
  }
}

save_result save_in_group(const checkpointer_options& o,
                          storage_writer_ptr writer, const state_dict& sd) {
  auto job = save_job_for(make_save_job(sd, std::move(writer),
                                        job_options_of(o)),
                          o);
  return run_on_agent(o, save_atom::value, std::move(job));
}

caf::error load_in_group(const checkpointer_options& o,
                         storage_reader_ptr reader, state_dict& sd) {
  auto job = make_load_job(sd, std::move(reader), job_options_of(o));
  auto res = run_on_agent(o, load_atom::value,
                          job ? std::move(*job)
                              : failed_job<load_job>(o,
                                                     std::move(job.error())));
  if (!res)
    return std::move(res.error());
  return caf::none;
}

} // namespace

checkpointer::checkpointer(storage_writer_ptr writer, storage_reader_ptr reader,
                           checkpointer_options opts)
  : writer_(std::move(writer)), reader_(std::move(reader)),
    opts_(std::move(opts)) {
  // nop
}

checkpointer::~checkpointer() {
  // A save in flight writes into storage we own: let it finish.
  if (pending_.valid())
    pending_.wait();
}

save_result checkpointer::save(const state_dict& sd) {
  if (!writer_)
    return make_error(errc::invalid_argument, "checkpointer has no writer");
  // Collective operations run in call order on every rank: a background
  // save of this checkpointer comes first.
  if (pending_.valid())
    pending_.wait();
  if (opts_.no_dist)
    return save_no_dist(*writer_, *save_planner_of(opts_), sd);
  if (!opts_.process_group)
    return no_group_error();
  return save_in_group(opts_, writer_, sd);
}

std::future<save_result> checkpointer::async_save(const state_dict& sd) {
  // One save in flight at a time: wait for the previous one before staging,
  // which also bounds host memory to one staged copy.
  if (pending_.valid())
    pending_.wait();
  auto done = std::make_shared<std::promise<save_result>>();
  auto result = done->get_future();
  if (!writer_ || (!opts_.no_dist && !opts_.process_group)) {
    done->set_value(writer_ ? no_group_error()
                            : make_error(errc::invalid_argument,
                                         "checkpointer has no writer"));
    return result;
  }
  auto staged = std::make_shared<const state_dict>(stage_to_host(sd));
  if (opts_.no_dist) {
    auto writer = writer_;
    auto planner = save_planner_of(opts_);
    pending_ = std::async(std::launch::async,
                          [writer, planner, staged, done] {
                            done->set_value(
                              save_no_dist(*writer, *planner, *staged));
                          })
                 .share();
    return result;
  }
  // In a group the agent does the work; a one-shot actor carries the reply
  // to both futures (the caller's and the one the next operation waits on).
  auto job = save_job_for(make_save_job(staged, writer_, job_options_of(opts_)),
                          opts_);
  auto internal = std::make_shared<std::promise<void>>();
  pending_ = internal->get_future().share();
  auto agent = opts_.process_group->agent();
  auto deadline = operation_deadline(opts_);
  opts_.process_group->system().spawn(
    [agent, deadline, job, done, internal](caf::event_based_actor* self) {
      self->request(agent, deadline, save_atom::value, job)
        .then(
          [done, internal](metadata& md) {
            done->set_value(std::move(md));
            internal->set_value();
          },
          [done, internal](caf::error& err) {
            if (err == caf::sec::request_timeout)
              err = make_error(errc::timeout,
                               "the background save did not end in time");
            done->set_value(std::move(err));
            internal->set_value();
          });
    });
  return result;
}

caf::error checkpointer::load(state_dict& sd) {
  if (!reader_)
    return make_error(errc::invalid_argument, "checkpointer has no reader");
  if (pending_.valid())
    pending_.wait();
  if (opts_.no_dist)
    return load_no_dist(*reader_, *load_planner_of(opts_), sd);
  if (!opts_.process_group)
    return no_group_error();
  return load_in_group(opts_, reader_, sd);
}

} // namespace dcpp
