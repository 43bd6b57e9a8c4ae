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

caf::expected<save_job> build(const state_dict& sd,
                              std::shared_ptr<const state_dict> keep_alive,
                              std::shared_ptr<storage_writer> writer,
                              const job_options& opts) {
  // flatten() hands out mutable pointers for loading; saving only reads.
  auto flat = flatten(const_cast<state_dict&>(sd));
  if (!flat)
    return std::move(flat.error());
  auto view = make_view(*flat);
  if (!view)
    return std::move(view.error());
  auto holder = std::make_shared<save_holder>();
  holder->keep_alive = std::move(keep_alive);
  holder->flat = std::move(*flat);
  holder->source = make_item_source(holder->flat);
  save_job job;
  job.view = std::make_shared<const state_dict_view>(std::move(*view));
  job.source = std::shared_ptr<const item_source>(holder,
                                                  holder->source.get());
  job.planner = opts.save_planner ? opts.save_planner
                                  : make_default_save_planner();
  job.writer = std::move(writer);
  job.coordinator_rank = opts.coordinator_rank;
  job.step_timeout = opts.step_timeout;
  job.io_threads = opts.io_threads;
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
  auto view = make_view(*flat);
  if (!view)
    return std::move(view.error());
  auto holder = std::make_shared<load_holder>();
  holder->flat = std::move(*flat);
  holder->target = make_load_target(holder->flat);
  load_job job;
  job.view = std::make_shared<const state_dict_view>(std::move(*view));
  job.target = std::shared_ptr<load_target>(holder, holder->target.get());
  job.planner = opts.load_planner ? opts.load_planner
                                  : make_default_load_planner();
  job.reader = std::move(reader);
  job.coordinator_rank = opts.coordinator_rank;
  job.step_timeout = opts.step_timeout;
  job.io_threads = opts.io_threads;
  return job;
}

} // namespace dcpp
