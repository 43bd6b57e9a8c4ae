#include "actors/checkpointer.hpp"

#include "actors/jobs.hpp"
#include "actors/process_group.hpp"
#include "actors/system.hpp"
#include "core/error.hpp"
#include "storage/staging_pool.hpp"

#include <caf/all.hpp>

#include <algorithm>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <utility>

namespace dcpp {

namespace {

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
Job job_or_failure(caf::expected<Job> job, const checkpointer_options& o) {
  if (job)
    return std::move(*job);
  Job failed;
  failed.coordinator_rank = o.coordinator_rank;
  failed.step_timeout = o.step_timeout;
  failed.error = std::move(job.error());
  return failed;
}

using reply_fn = std::function<void(caf::expected<metadata>)>;

/// Hands `job` to this rank's agent; `reply` gets the outcome exactly once.
/// A one-shot helper actor makes the request and monitors the agent: if
/// the agent stops before it replies (killed, or ended by an exception),
/// its response promise is never delivered, and the caller learns that at
/// once (errc::rank_lost) instead of waiting for the whole operation
/// deadline. If the actor system stops first, `reply` is never called.
template <class Job, class Atom>
void submit(const checkpointer_options& o, Atom atom, Job job, reply_fn reply) {
  auto& group = *o.process_group;
  auto rank = group.rank();
  auto agent = group.agent();
  auto deadline = operation_deadline(o);
  group.system().spawn([=](caf::event_based_actor* self) mutable {
    auto answered = std::make_shared<bool>(false);
    auto answer = [self, reply, answered](caf::expected<metadata> x) {
      if (*answered)
        return;
      *answered = true;
      reply(std::move(x));
      self->quit();
    };
    self->set_down_handler([=](caf::down_msg& dm) {
      answer(make_error(errc::rank_lost, "rank " + std::to_string(rank)
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
                                   + std::to_string(deadline.count()) + " ms");
              answer(std::move(err));
            });
  });
}

/// Runs `job` on this rank's agent and waits for the outcome.
template <class Job, class Atom>
caf::expected<metadata>
run_on_agent(const checkpointer_options& o, Atom atom, Job job) {
  auto done = std::make_shared<std::promise<caf::expected<metadata>>>();
  auto result = done->get_future();
  submit(o, atom, std::move(job),
         [done](caf::expected<metadata> x) { done->set_value(std::move(x)); });
  try {
    return result.get();
  } catch (const std::future_error&) {
    // The helper actor went away unanswered: the actor system stopped.
    return make_error(errc::aborted,
                      "rank " + std::to_string(o.process_group->rank())
                        + ": the actor system stopped before the operation "
                          "ended");
  }
}

// -- staged copies of async saves ---------------------------------------------

/// Drops every tensor of `sd` in place (bytes values and structure stay).
void drop_tensors(state_dict& sd) {
  for_each_tensor(sd,
                  [](const std::string&, at::Tensor& t) { t = at::Tensor{}; });
}

/// The item source of an async save's staged copy, which the checkpointer
/// lets go of as soon as the save ended: the rank agent and its writer
/// actors may hold the job a while longer, but not the staging memory.
/// After `release`, both calls fail (no writer of an ended save asks);
/// views of bytes values handed out before stay valid, as the interface
/// promises, since the staged dict keeps its bytes values.
class staged_source : public item_source {
public:
  staged_source(std::shared_ptr<const item_source> inner,
                std::shared_ptr<state_dict> staged)
    : inner_(std::move(inner)), staged_(std::move(staged)) {
    // nop
  }

  caf::expected<at::Tensor> tensor(const write_item& item) const override {
    std::shared_lock<std::shared_mutex> guard{mx_};
    if (!inner_)
      return released(item);
    return inner_->tensor(item);
  }

  caf::expected<std::string_view> bytes(const write_item& item) const override {
    std::shared_lock<std::shared_mutex> guard{mx_};
    if (!inner_)
      return released(item);
    return inner_->bytes(item);
  }

  /// Drops the staged tensors (the inner source holds them too): their
  /// memory goes back to the staging pool once no writer holds one of them
  /// any more, at once after a save that wrote everything.
  void release() {
    std::unique_lock<std::shared_mutex> guard{mx_};
    inner_.reset();
    drop_tensors(*staged_);
  }

private:
  static caf::error released(const write_item& item) {
    return make_error(errc::aborted,
                      "async_save: " + item.index.fqn
                        + " asked for after the save ended and its staged "
                          "copy was released");
  }

  mutable std::shared_mutex mx_;
  std::shared_ptr<const item_source> inner_;
  std::shared_ptr<state_dict> staged_;
};

} // namespace

namespace detail {

/// The last report, written by whichever thread sees an operation end.
struct report_box {
  mutable std::mutex mx;
  op_report last;

  void set(const op_report& x) {
    std::lock_guard<std::mutex> guard{mx};
    last = x;
  }

  op_report get() const {
    std::lock_guard<std::mutex> guard{mx};
    return last;
  }
};

/// The world of one rank that `no_dist` runs in: a private actor system and
/// a process group of one, so that a no_dist save or load runs the very
/// steps a group runs (as DCP's `_DistWrapper` does without a process
/// group), not a copy of them.
struct solo_world {
  system_config cfg;
  caf::actor_system sys;
  process_group_ptr group;

  solo_world() : cfg(solo_options()), sys(cfg) {
    group = make_local_process_group(sys, 1).front();
  }

  ~solo_world() {
    // The last member of the group stops its actors; the system's
    // destructor then waits for them.
    group.reset();
  }

  static system_options solo_options() {
    system_options opts;
    // The agent and the coordinator only pass messages; storage calls run
    // on the writer and reader actors' own threads.
    opts.scheduler_threads = 2;
    return opts;
  }
};

} // namespace detail

checkpointer::checkpointer(storage_writer_ptr writer, storage_reader_ptr reader,
                           checkpointer_options opts)
  : writer_(std::move(writer)), reader_(std::move(reader)),
    opts_(std::move(opts)), report_(std::make_shared<detail::report_box>()),
    staging_(std::make_unique<staging_pool>(
      staging_pool_options{opts_.keep_staging_memory,
                           std::max<uint32_t>(opts_.staging_threads, 1)})) {
  // nop
}

checkpointer::~checkpointer() {
  // A save in flight writes into storage we own: let it finish.
  if (pending_.valid())
    pending_.wait();
}

const checkpointer_options& checkpointer::group_options() {
  if (!opts_.no_dist)
    return opts_;
  if (!solo_) {
    solo_ = std::make_unique<detail::solo_world>();
    solo_opts_ = opts_;
    solo_opts_.process_group = solo_->group;
    solo_opts_.coordinator_rank = 0;
  }
  return solo_opts_;
}

caf::error checkpointer::begin(bool has_storage, const char* storage) {
  // Collective operations run in call order on every rank: a background
  // save of this checkpointer comes first (which also bounds host memory
  // to one staged copy).
  if (pending_.valid())
    pending_.wait();
  if (!has_storage)
    return make_error(errc::invalid_argument,
                      std::string{"checkpointer has no "} + storage);
  if (!opts_.no_dist && !opts_.process_group)
    return make_error(errc::invalid_argument,
                      "checkpointer: no process group given and no_dist is "
                      "false");
  return caf::none;
}

op_report checkpointer::last_report() const {
  return report_->get();
}

staging_pool_stats checkpointer::staging_stats() const {
  return staging_->stats();
}

void checkpointer::release_staging_memory() {
  if (pending_.valid())
    pending_.wait();
  staging_->release();
}

namespace {

/// `job`, leaving its report in a fresh slot.
template <class Job>
Job with_report(Job job, std::shared_ptr<op_report>& slot) {
  slot = std::make_shared<op_report>();
  job.report = slot;
  return job;
}

} // namespace

save_result checkpointer::save(const state_dict& sd) {
  if (auto err = begin(writer_ != nullptr, "writer"))
    return err;
  const auto& opts = group_options();
  std::shared_ptr<op_report> report;
  auto res = run_on_agent(
    opts, save_atom::value,
    with_report(job_or_failure(make_save_job(sd, writer_, job_options_of(opts)),
                               opts),
                report));
  if (res)
    report_->set(*report);
  return res;
}

std::future<save_result> checkpointer::async_save(const state_dict& sd) {
  auto done = std::make_shared<std::promise<save_result>>();
  auto result = done->get_future();
  if (auto err = begin(writer_ != nullptr, "writer")) {
    done->set_value(std::move(err));
    return result;
  }
  const auto& opts = group_options();
  // A staging failure still goes through the agent (job_or_failure), so
  // that every rank of the group fails this save together.
  std::shared_ptr<staged_source> source;
  auto made = [&]() -> caf::expected<save_job> {
    auto staged = staging_->stage(sd);
    if (!staged)
      return std::move(staged.error());
    auto copy = std::make_shared<state_dict>(std::move(*staged));
    auto job = make_save_job(std::shared_ptr<const state_dict>(copy), writer_,
                             job_options_of(opts));
    if (job) {
      source = std::make_shared<staged_source>(std::move(job->source),
                                               std::move(copy));
      job->source = source;
    }
    return job;
  }();
  std::shared_ptr<op_report> report;
  auto job = with_report(job_or_failure(std::move(made), opts), report);
  // The outcome goes to the caller's future and to the one the next
  // operation waits on, after the staged copy went back to the pool.
  auto internal = std::make_shared<std::promise<void>>();
  pending_ = internal->get_future().share();
  submit(opts, save_atom::value, std::move(job),
         [done, internal, report, source,
          box = report_](caf::expected<metadata> x) {
           if (source)
             source->release();
           if (x)
             box->set(*report);
           done->set_value(std::move(x));
           internal->set_value();
         });
  return result;
}

caf::error checkpointer::load(state_dict& sd) {
  if (auto err = begin(reader_ != nullptr, "reader"))
    return err;
  const auto& opts = group_options();
  std::shared_ptr<op_report> report;
  auto res = run_on_agent(
    opts, load_atom::value,
    with_report(job_or_failure(make_load_job(sd, reader_, job_options_of(opts)),
                               opts),
                report));
  if (!res)
    return std::move(res.error());
  report_->set(*report);
  return caf::none;
}

save_result checkpointer::save(const state_dict& sd,
                               const std::string& checkpoint_id) {
  if (auto err = begin(writer_ != nullptr, "writer"))
    return err;
  if (auto err = writer_->reset(checkpoint_id))
    return err;
  return save(sd);
}

std::future<save_result>
checkpointer::async_save(const state_dict& sd,
                         const std::string& checkpoint_id) {
  caf::error err = begin(writer_ != nullptr, "writer");
  if (!err)
    err = writer_->reset(checkpoint_id);
  if (err) {
    std::promise<save_result> failed;
    failed.set_value(std::move(err));
    return failed.get_future();
  }
  return async_save(sd);
}

caf::error checkpointer::load(state_dict& sd,
                              const std::string& checkpoint_id) {
  if (auto err = begin(reader_ != nullptr, "reader"))
    return err;
  if (auto err = reader_->reset(checkpoint_id))
    return err;
  return load(sd);
}

} // namespace dcpp
