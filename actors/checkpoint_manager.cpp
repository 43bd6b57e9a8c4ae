#include "actors/checkpoint_manager.hpp"

#include "actors/process_group.hpp"
#include "core/error.hpp"
#include "storage/checkpoint_root.hpp"
#include "storage/posix_file.hpp"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <sstream>
#include <utility>

namespace dcpp {

namespace {

using json = nlohmann::json;

std::string metrics_path(const std::string& root, uint64_t step) {
  return step_directory(root, step) + "/" + metrics_file_name;
}

/// `{"step": N, "metrics": {name: value}}`; values that JSON cannot hold
/// (NaN, infinities) become null and read back as absent.
std::string encode_metrics(uint64_t step, const step_metrics& metrics) {
  json values = json::object();
  for (const auto& [name, x] : metrics)
    values[name] = std::isfinite(x) ? json(x) : json(nullptr);
  return json{{"step", step}, {"metrics", std::move(values)}}.dump() + "\n";
}

/// The metrics file of a step directory; empty if there is none.
caf::expected<step_metrics> read_metrics_file(const std::string& path) {
  std::ifstream in{path};
  if (!in)
    return step_metrics{};
  std::string text{std::istreambuf_iterator<char>{in},
                   std::istreambuf_iterator<char>{}};
  auto doc = json::parse(text, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("metrics")
      || !doc["metrics"].is_object())
    return make_error(errc::corrupt_item,
                      path + ": not a metrics file ({\"metrics\": {...}})");
  step_metrics result;
  for (const auto& [name, x] : doc["metrics"].items())
    if (x.is_number())
      result[name] = x.get<double>();
  return result;
}

/// Whether metric value `x` is better than `y` under `mode`.
bool better(double x, double y, best_mode mode) {
  return mode == best_mode::min ? x < y : x > y;
}

} // namespace

checkpoint_manager::checkpoint_manager(std::string root,
                                       checkpoint_manager_options opts)
  : root_(std::move(root)), opts_(std::move(opts)),
    cp_(make_filesystem_writer(root_, opts_.writer),
        make_filesystem_reader(root_, opts_.reader), opts_.checkpointer) {
  // nop
}

checkpoint_manager::~checkpoint_manager() {
  if (auto err = wait_until_finished())
    spdlog::warn("dcpp: checkpoint manager {}: a save failed: {}", root_,
                 describe(err));
}

bool checkpoint_manager::should_save(uint64_t step) const {
  return opts_.save_interval_steps > 0 && step % opts_.save_interval_steps == 0;
}

bool checkpoint_manager::is_coordinator() const {
  const auto& cp = opts_.checkpointer;
  return cp.no_dist
         || (cp.process_group
             && cp.process_group->rank() == cp.coordinator_rank);
}

caf::error checkpoint_manager::save(uint64_t step, const state_dict& sd,
                                    const step_metrics& metrics) {
  auto refuse = [&](const std::string& why) {
    return make_error(errc::invalid_argument,
                      "checkpoint manager " + root_ + ": cannot save step "
                        + std::to_string(step) + ": " + why);
  };
  if (last_saved_ && step <= *last_saved_)
    return refuse("not newer than step " + std::to_string(*last_saved_)
                  + ", saved or restored before");
  // Retention removes uncommitted directories older than the newest
  // committed step: a save there could be removed while it writes.
  if (auto newest = latest_committed_step(root_); newest && step <= *newest)
    return refuse("not newer than the newest committed step "
                  + std::to_string(*newest)
                  + " (remove the newer steps to train on from an older "
                    "one)");
  last_saved_ = step;
  auto dir = step_directory(root_, step);
  // The metrics are durable before the save starts; the commit of the data
  // makes them count (see the header). If they cannot be written, the
  // coordinator still takes part in the collective save (the other ranks
  // would wait for it until the step deadline otherwise) and reports the
  // error afterwards; the step then has no metrics.
  caf::error metrics_err;
  if (is_coordinator()) {
    metrics_err = detail::make_directories(dir, opts_.writer.sync_files);
    if (!metrics_err)
      metrics_err = detail::replace_file(metrics_path(root_, step),
                                         encode_metrics(step, metrics),
                                         opts_.writer.sync_files);
    if (metrics_err)
      metrics_err = with_context(metrics_err, "checkpoint manager: step "
                                                + std::to_string(step)
                                                + ": metrics");
  }
  auto complete = [this, step, metrics_err](save_result res) {
    caf::error err = res ? retain() : std::move(res.error());
    if (!err)
      err = metrics_err;
    finished(step, err);
    return err;
  };
  if (!opts_.async)
    return complete(cp_.save(sd, dir));
  auto fut = cp_.async_save(sd, dir).share();
  auto prev = tail_;
  tail_ = std::async(std::launch::async, [complete, fut, prev] {
            if (prev.valid())
              prev.wait();
            complete(fut.get());
          }).share();
  return caf::none;
}

caf::error checkpoint_manager::save(uint64_t step, const stateful_list& objs,
                                    const step_metrics& metrics) {
  auto sd = collect_state(objs);
  if (!sd)
    return std::move(sd.error());
  return save(step, *sd, metrics);
}

void checkpoint_manager::finished(uint64_t step, const caf::error& err) {
  {
    std::lock_guard<std::mutex> guard{mx_};
    if (err && !first_error_)
      first_error_ = err;
  }
  if (opts_.on_finished)
    opts_.on_finished(step, err);
}

caf::error checkpoint_manager::wait_until_finished() {
  if (tail_.valid())
    tail_.wait();
  std::lock_guard<std::mutex> guard{mx_};
  return std::exchange(first_error_, caf::error{});
}

std::vector<uint64_t>
checkpoint_manager::steps_to_keep(const std::vector<uint64_t>& committed) {
  if (opts_.max_to_keep == 0 || committed.size() <= opts_.max_to_keep)
    return committed;
  std::vector<uint64_t> kept;
  if (opts_.keep_period > 0)
    for (auto step : committed)
      if (step % opts_.keep_period == 0)
        kept.push_back(step);
  // Ranked best first: by the metric (steps without it last), then newest.
  std::vector<std::pair<std::optional<double>, uint64_t>> ranked;
  for (auto step : committed) {
    std::optional<double> value;
    if (!opts_.best_metric.empty()) {
      auto m = read_metrics_file(metrics_path(root_, step));
      if (!m)
        spdlog::warn("dcpp: checkpoint manager: {}; ranked last",
                     describe(m.error()));
      else if (auto i = m->find(opts_.best_metric); i != m->end())
        value = i->second;
    }
    ranked.emplace_back(value, step);
  }
  auto mode = opts_.mode;
  std::sort(ranked.begin(), ranked.end(), [mode](const auto& x, const auto& y) {
    if (x.first.has_value() != y.first.has_value())
      return x.first.has_value();
    if (x.first && *x.first != *y.first)
      return better(*x.first, *y.first, mode);
    return x.second > y.second;
  });
  for (size_t i = 0; i < opts_.max_to_keep; ++i)
    kept.push_back(ranked[i].second);
  return kept;
}

caf::error checkpoint_manager::retain() {
  if (!is_coordinator())
    return caf::none;
  std::vector<step_entry> broken;
  auto removed = prune_except(
    root_,
    [this](const std::vector<uint64_t>& committed) {
      return steps_to_keep(committed);
    },
    &broken);
  if (!removed)
    return with_context(removed.error(), "checkpoint manager: retention");
  for (const auto& path : *removed)
    spdlog::debug("dcpp: checkpoint manager: removed {}", path);
  for (const auto& entry : broken)
    spdlog::warn("dcpp: checkpoint manager: left broken step {} alone: {}",
                 entry.path, entry.broken);
  return caf::none;
}

caf::expected<uint64_t> checkpoint_manager::latest_step() {
  if (tail_.valid())
    tail_.wait();
  return latest_committed_step(root_);
}

caf::expected<std::vector<uint64_t>> checkpoint_manager::all_steps() {
  if (tail_.valid())
    tail_.wait();
  return committed_steps(root_);
}

caf::expected<step_metrics> checkpoint_manager::metrics(uint64_t step) {
  auto dir = step_directory(root_, step);
  if (!is_committed(dir))
    return make_error(errc::not_found, "checkpoint manager: no committed step "
                                         + std::to_string(step) + " in "
                                         + root_);
  return read_metrics_file(metrics_path(root_, step));
}

caf::expected<uint64_t>
checkpoint_manager::restore(std::optional<uint64_t> step, state_dict& sd) {
  if (tail_.valid())
    tail_.wait();
  if (!step) {
    auto latest = latest_committed_step(root_);
    if (!latest)
      return std::move(latest.error());
    step = *latest;
  }
  auto dir = step_directory(root_, *step);
  if (auto err = check_committed(dir))
    return with_context(err, "checkpoint manager: restore step "
                               + std::to_string(*step));
  if (auto err = cp_.load(sd, dir))
    return err;
  last_saved_ = *step;
  return *step;
}

caf::expected<uint64_t>
checkpoint_manager::restore(std::optional<uint64_t> step,
                            const stateful_list& objs) {
  auto sd = collect_state(objs);
  if (!sd)
    return std::move(sd.error());
  auto res = restore(step, *sd);
  if (!res)
    return res;
  if (auto err = apply_state(objs, *sd))
    return err;
  return res;
}

} // namespace dcpp
