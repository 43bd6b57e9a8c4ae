#include "actors/checkpoint_manager.hpp"

#include "actors/process_group.hpp"
#include "core/error.hpp"
#include "core/planner.hpp"
#include "storage/checkpoint_root.hpp"
#include "storage/posix_file.hpp"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
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

// -- step agreement --------------------------------------------------------
//
// A collective "load" of nothing: the reader's metadata is empty and it
// reads nothing, the planner's local plan carries this rank's committed
// steps in `planner_data`, the coordinator's global plan computes the
// agreement into every central plan's `planner_data`, and `finish_plan`
// hands it back. Zero items, zero bytes: the cost is the protocol's
// messages only.

/// The metadata of an agreement: empty; the load reads nothing.
class agreement_reader final : public storage_reader {
public:
  caf::expected<metadata> read_metadata() override {
    return metadata{};
  }

  caf::error set_up(const metadata&, bool, int32_t) override {
    return caf::none;
  }

  caf::error read_data(const load_plan& plan, load_target&) override {
    if (!plan.items.empty())
      return make_error(errc::invalid_argument,
                        "step agreement: a plan with read items");
    return caf::none;
  }
};

/// The reader of a rank that cannot load the step the others load: its
/// `read_metadata` fails with the reason, which fails the load on every
/// rank in its plan step.
class failing_reader final : public storage_reader {
public:
  explicit failing_reader(caf::error why) : why_(std::move(why)) {
    // nop
  }

  caf::expected<metadata> read_metadata() override {
    return why_;
  }

  caf::error set_up(const metadata&, bool, int32_t) override {
    return why_;
  }

  caf::error read_data(const load_plan&, load_target&) override {
    return why_;
  }

private:
  caf::error why_;
};

/// One rank's view: `{"rank": r, "steps": [...]}`, or `{"rank": r,
/// "error": "..."}` if it could not list its root.
std::string encode_view(int32_t rank,
                        const caf::expected<std::vector<uint64_t>>& steps) {
  json doc{{"rank", rank}};
  if (steps)
    doc["steps"] = *steps;
  else
    doc["error"] = describe(steps.error());
  return doc.dump();
}

} // namespace

/// What the ranks agreed on: the steps committed on every rank (ascending)
/// and, per rank, the newest step it sees (none: -1).
struct checkpoint_manager::agreement {
  std::vector<uint64_t> steps;
  std::vector<int64_t> newest;

  /// "rank 0: step 8, rank 1: none".
  std::string describe_newest() const {
    std::string out;
    for (size_t r = 0; r < newest.size(); ++r) {
      if (r > 0)
        out += ", ";
      out += "rank " + std::to_string(r) + ": "
             + (newest[r] < 0 ? std::string{"none"}
                              : "step " + std::to_string(newest[r]));
    }
    return out;
  }

  static std::string encode(const agreement& x) {
    return json{{"agreed", x.steps}, {"newest", x.newest}}.dump();
  }

  static caf::expected<agreement> decode(const std::string& text) {
    auto doc = json::parse(text, nullptr, false);
    agreement x;
    try {
      if (doc.is_discarded() || !doc.is_object())
        throw std::invalid_argument{"not an object"};
      x.steps = doc.at("agreed").get<std::vector<uint64_t>>();
      x.newest = doc.at("newest").get<std::vector<int64_t>>();
    } catch (const std::exception& ex) {
      return make_error(errc::corrupt_item,
                        std::string{"step agreement: a central plan that is "
                                    "not an agreement: "}
                          + ex.what());
    }
    return x;
  }
};

namespace {

/// The planner of one rank's agreement (one instance per call and rank:
/// `finish_plan` keeps the outcome for the caller).
class agreement_planner final : public load_planner {
public:
  using agreement = checkpoint_manager::agreement;

  agreement_planner(std::string root, std::string view)
    : root_(std::move(root)), view_(std::move(view)) {
    // nop
  }

  caf::expected<load_plan> create_local_plan(const state_dict_view&,
                                             const metadata&,
                                             bool) const override {
    load_plan plan;
    plan.planner_data = view_;
    return plan;
  }

  /// The agreed steps: those committed on every rank (so the newest of them
  /// is the newest step every rank can load).
  caf::expected<std::vector<load_plan>>
  create_global_plan(std::vector<load_plan> plans) const override {
    agreement x;
    std::vector<uint64_t> common;
    std::string errors;
    for (size_t r = 0; r < plans.size(); ++r) {
      auto doc = json::parse(plans[r].planner_data, nullptr, false);
      auto who = "rank " + std::to_string(r);
      if (doc.is_discarded() || !doc.is_object()
          || (!doc.contains("steps") && !doc.contains("error"))) {
        errors += (errors.empty() ? "" : "; ") + who + ": not a step view";
        x.newest.push_back(-1);
        continue;
      }
      if (doc.contains("error")) {
        errors += (errors.empty() ? "" : "; ") + who + ": "
                  + doc["error"].get<std::string>();
        x.newest.push_back(-1);
        continue;
      }
      auto steps = doc["steps"].get<std::vector<uint64_t>>();
      std::sort(steps.begin(), steps.end());
      x.newest.push_back(steps.empty() ? -1
                                       : static_cast<int64_t>(steps.back()));
      if (r == 0) {
        common = std::move(steps);
      } else {
        std::vector<uint64_t> both;
        std::set_intersection(common.begin(), common.end(), steps.begin(),
                              steps.end(), std::back_inserter(both));
        common = std::move(both);
      }
    }
    if (!errors.empty())
      return make_error(errc::io_error,
                        "checkpoint manager " + root_
                          + ": step agreement: ranks could not list their "
                            "steps: "
                          + errors);
    x.steps = std::move(common);
    int64_t agreed = x.steps.empty() ? -1
                                     : static_cast<int64_t>(x.steps.back());
    if (std::any_of(x.newest.begin(), x.newest.end(),
                    [agreed](int64_t n) { return n != agreed; }))
      spdlog::warn("dcpp: checkpoint manager {}: ranks see different newest "
                   "committed steps ({}); agreed on {} (the newest step every "
                   "rank sees)",
                   root_, x.describe_newest(),
                   agreed < 0 ? std::string{"none"}
                              : "step " + std::to_string(agreed));
    auto central = agreement::encode(x);
    for (auto& plan : plans) {
      plan.items.clear();
      plan.planner_data = central;
    }
    return plans;
  }

  caf::expected<load_plan> finish_plan(load_plan central) const override {
    std::lock_guard<std::mutex> guard{mx_};
    outcome_ = central.planner_data;
    return central;
  }

  /// What `finish_plan` received (empty before).
  std::string outcome() const {
    std::lock_guard<std::mutex> guard{mx_};
    return outcome_;
  }

private:
  std::string root_;
  std::string view_;
  mutable std::mutex mx_;
  mutable std::string outcome_;
};

} // namespace

namespace {

/// The options with the step directories owned by the manager: its writer
/// never follows a link planted under a step's name.
checkpoint_manager_options owning_steps(checkpoint_manager_options opts) {
  opts.writer.owned_directory = true;
  return opts;
}

/// The committed steps of `root`, ascending; warns naming each broken step
/// directory newer than the newest of them (one the root holds but that is
/// not restored as the latest: see storage/checkpoint_root.hpp).
caf::expected<std::vector<uint64_t>>
committed_steps_noting(const std::string& root) {
  std::vector<step_entry> passed;
  auto steps = committed_steps(root, &passed);
  for (const auto& entry : passed)
    spdlog::warn("dcpp: checkpoint manager {}: passed over {} (not restored "
                 "as the latest, left in place): {}",
                 root, entry.path, entry.broken);
  return steps;
}

} // namespace

checkpoint_manager::checkpoint_manager(std::string root,
                                       checkpoint_manager_options opts)
  : root_(std::move(root)), opts_(owning_steps(std::move(opts))),
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
  if (step > max_step)
    return refuse("beyond the largest step " + std::to_string(max_step));
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
    // The step directory is the manager's own: a link planted under its
    // name is refused here (and by every rank's writer), never written
    // through.
    auto dirfd = detail::make_owned_directory(dir, opts_.writer.sync_files);
    if (!dirfd)
      metrics_err = std::move(dirfd.error());
    else
      metrics_err = detail::replace_file_at(dirfd->get(), dir,
                                            metrics_file_name,
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
    // Named by the step the loop knows (the checkpointer counts its own
    // saves: "save 4" is the fourth, which may be step 40).
    if (err)
      err = with_context(err, "checkpoint manager " + root_ + ": step "
                                + std::to_string(step));
    finished(step, err);
    return err;
  };
  if (!opts_.async)
    return complete(cp_.save(sd, dir));
  // The previous async save has finished on every rank once this one is
  // staged (the checkpointer stages after the previous write), so a failure
  // of it is reported here, at the next save, on every rank alike; this
  // step's save still starts. (`on_finished` hears of it sooner, from the
  // background.)
  if (tail_.valid())
    tail_.wait();
  caf::error earlier;
  {
    std::lock_guard<std::mutex> guard{mx_};
    earlier = std::exchange(first_error_, caf::error{});
  }
  auto fut = cp_.async_save(sd, dir).share();
  auto prev = tail_;
  tail_ = std::async(std::launch::async, [complete, fut, prev] {
            if (prev.valid())
              prev.wait();
            complete(fut.get());
          }).share();
  return earlier;
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

bool checkpoint_manager::is_local() const {
  const auto& cp = opts_.checkpointer;
  return cp.no_dist
         || (cp.process_group && cp.process_group->world_size() == 1);
}

caf::expected<checkpoint_manager::agreement> checkpoint_manager::agree() {
  if (tail_.valid())
    tail_.wait();
  auto mine = committed_steps_noting(root_);
  if (is_local()) {
    if (!mine)
      return std::move(mine.error());
    agreement x;
    x.steps = std::move(*mine);
    x.newest.push_back(x.steps.empty() ? -1
                                       : static_cast<int64_t>(x.steps.back()));
    return x;
  }
  const auto& group = opts_.checkpointer.process_group;
  if (!group)
    return make_error(errc::invalid_argument,
                      "checkpoint manager " + root_
                        + ": no process group given and no_dist is false");
  auto rank = group->rank();
  auto planner = std::make_shared<agreement_planner>(root_,
                                                     encode_view(rank, mine));
  auto opts = opts_.checkpointer;
  opts.load_planner = planner;
  checkpointer agree_cp{nullptr, std::make_shared<agreement_reader>(), opts};
  state_dict nothing;
  if (auto err = agree_cp.load(nothing))
    return with_context(err, "checkpoint manager " + root_ + ": rank "
                               + std::to_string(rank) + ": step agreement");
  return agreement::decode(planner->outcome());
}

caf::expected<std::vector<uint64_t>> checkpoint_manager::agreed_steps() {
  auto x = agree();
  if (!x)
    return std::move(x.error());
  return std::move(x->steps);
}

caf::expected<uint64_t> checkpoint_manager::agreed_latest_step() {
  auto x = agree();
  if (!x)
    return std::move(x.error());
  if (!x->steps.empty())
    return x->steps.back();
  if (is_local())
    return make_error(errc::not_found,
                      "checkpoint manager: no step is committed under "
                        + root_);
  return make_error(errc::not_found,
                    "checkpoint manager: rank "
                      + std::to_string(opts_.checkpointer.process_group->rank())
                      + ": no step is committed on every rank ("
                      + x->describe_newest() + ") under " + root_);
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
    auto latest = agreed_latest_step();
    if (!latest)
      return std::move(latest.error());
    step = *latest;
  }
  auto dir = step_directory(root_, *step);
  if (auto err = check_committed(dir)) {
    err = with_context(err, "checkpoint manager: restore step "
                              + std::to_string(*step));
    // The other ranks may have the step: take part in their load, failing
    // it at once with this error, so they do not wait for this rank until
    // the step deadline.
    if (!is_local()) {
      checkpointer failing{nullptr, std::make_shared<failing_reader>(err),
                           opts_.checkpointer};
      (void)failing.load(sd);
    }
    return err;
  }
  if (auto err = cp_.load(sd, dir))
    return err;
  last_saved_ = *step;
  return *step;
}

caf::expected<uint64_t>
checkpoint_manager::restore(std::optional<uint64_t> step,
                            const stateful_list& objs) {
  if (!step) {
    auto latest = agreed_latest_step();
    if (!latest)
      return std::move(latest.error());
    step = *latest;
  }
  // The load target follows what the step holds (a checkpoint of an older
  // dcpp lacks keys this one saves); without a readable .metadata the load
  // below reports why, on every rank.
  auto saved
    = make_filesystem_reader(step_directory(root_, *step))->read_metadata();
  auto sd = saved ? collect_load_target(objs, *saved) : collect_state(objs);
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
