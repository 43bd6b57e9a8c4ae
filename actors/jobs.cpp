#include "actors/jobs.hpp"

#include "storage/state_dict.hpp"
#include "storage/storage.hpp"

#include <utility>

namespace dcpp {

namespace {

/// Everything a job's source or target points into.
struct save_holder {
  std::shared_ptr<const state_dict> keep_alive;
  flat_state_dict flat;
  std::unique_ptr<item_source> source;
};

struct load_holder {
  flat_state_dict flat;
  std::unique_ptr<load_target> target;
};

/// What save and load jobs share: the planner's view of `flat`, the
/// planner (the default one when none is given) and the options.
template <class Job, class Planner, class Default>
caf::error fill(Job& job, const flat_state_dict& flat,
                std::shared_ptr<const Planner> planner, Default make_default,
                const job_options& opts) {
  auto view = make_view(flat);
  if (!view)
    return std::move(view.error());
  job.view = std::make_shared<const state_dict_view>(std::move(*view));
  if (planner)
    job.planner = std::move(planner);
  else
    job.planner = make_default();
  job.coordinator_rank = opts.coordinator_rank;
  job.step_timeout = opts.step_timeout;
  job.io_threads = opts.io_threads;
  return caf::none;
}

caf::expected<save_job>
build(const state_dict& sd, std::shared_ptr<const state_dict> keep_alive,
      std::shared_ptr<storage_writer> writer, const job_options& opts) {
  // flatten() hands out mutable pointers for loading; saving only reads.
  auto flat = flatten(const_cast<state_dict&>(sd));
  if (!flat)
    return std::move(flat.error());
  auto holder = std::make_shared<save_holder>();
  holder->keep_alive = std::move(keep_alive);
  holder->flat = std::move(*flat);
  save_job job;
  if (auto err = fill(
        job, holder->flat, opts.save_planner,
        [] {
          // Stateless: one instance per process, so that the plan cache
          // (which reuses a global plan only for the same planner object)
          // recognizes it from save to save.
          static const std::shared_ptr<const save_planner> planner
            = make_default_save_planner();
          return planner;
        },
        opts))
    return err;
  holder->source = make_item_source(holder->flat);
  job.source = std::shared_ptr<const item_source>(holder, holder->source.get());
  job.writer = std::move(writer);
  return job;
}

} // namespace

caf::expected<save_job> make_save_job(const state_dict& sd,
                                      std::shared_ptr<storage_writer> writer,
                                      const job_options& opts) {
  return build(sd, nullptr, std::move(writer), opts);
}

caf::expected<save_job> make_save_job(std::shared_ptr<const state_dict> sd,
                                      std::shared_ptr<storage_writer> writer,
                                      const job_options& opts) {
  const auto& ref = *sd;
  return build(ref, std::move(sd), std::move(writer), opts);
}

caf::expected<load_job> make_load_job(state_dict& sd,
                                      std::shared_ptr<storage_reader> reader,
                                      const job_options& opts) {
  auto flat = flatten(sd);
  if (!flat)
    return std::move(flat.error());
  auto holder = std::make_shared<load_holder>();
  holder->flat = std::move(*flat);
  load_job job;
  if (auto err = fill(
        job, holder->flat, opts.load_planner,
        [] { return make_default_load_planner(); }, opts))
    return err;
  holder->target = make_load_target(holder->flat);
  job.target = std::shared_ptr<load_target>(holder, holder->target.get());
  job.reader = std::move(reader);
  return job;
}

} // namespace dcpp
