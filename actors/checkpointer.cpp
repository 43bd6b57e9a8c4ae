#include "actors/checkpointer.hpp"

#include "core/error.hpp"

namespace dcpp {

namespace {

/// Prefixes an error with the step it happened in, like DCP's
/// CheckpointException("plan" / "write" / ...).
caf::error in_step(const char* step, const caf::error& err) {
  return with_context(err, std::string{"step '"} + step + "'");
}

std::shared_ptr<save_planner> save_planner_of(const checkpointer_options& o) {
  return o.save_planner ? o.save_planner : make_default_save_planner();
}

std::shared_ptr<load_planner> load_planner_of(const checkpointer_options& o) {
  return o.load_planner ? o.load_planner : make_default_load_planner();
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
  if (plans->size() != 1)
    return in_step("plan", make_error(errc::protocol_error,
                                      "global plan has "
                                        + std::to_string(plans->size())
                                        + " plans for a world of 1"));
  auto central = planner.finish_plan(std::move(plans->front()));
  if (!central)
    return in_step("plan", central.error());
  auto source = make_item_source(*flat);
  auto results = writer.write_data(*central, *source);
  if (!results) {
    writer.abort();
    return in_step("write", results.error());
  }
  std::vector<std::vector<write_result>> all_results;
  all_results.push_back(std::move(*results));
  if (auto err = writer.finish(global->md, all_results)) {
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
  if (plans->size() != 1)
    return in_step("plan", make_error(errc::protocol_error,
                                      "global plan has "
                                        + std::to_string(plans->size())
                                        + " plans for a world of 1"));
  auto central = planner.finish_plan(std::move(plans->front()));
  if (!central)
    return in_step("plan", central.error());
  auto target = make_load_target(*flat);
  if (auto err = reader.read_data(*central, *target))
    return in_step("read", err);
  return caf::none;
}

caf::error no_group_error() {
  return make_error(errc::invalid_argument,
                    "checkpointer: no process group given and no_dist is "
                    "false");
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
  if (opts_.no_dist)
    return save_no_dist(*writer_, *save_planner_of(opts_), sd);
  return no_group_error();
}

std::future<save_result> checkpointer::async_save(const state_dict& sd) {
  // One save in flight at a time: wait for the previous one before staging,
  // which also bounds host memory to one staged copy.
  if (pending_.valid())
    pending_.wait();
  auto staged = std::make_shared<state_dict>(stage_to_host(sd));
  auto done = std::make_shared<std::promise<save_result>>();
  auto result = done->get_future();
  pending_ = std::async(std::launch::async,
                        [this, staged, done] { done->set_value(save(*staged)); })
               .share();
  return result;
}

caf::error checkpointer::load(state_dict& sd) {
  if (!reader_)
    return make_error(errc::invalid_argument, "checkpointer has no reader");
  if (opts_.no_dist)
    return load_no_dist(*reader_, *load_planner_of(opts_), sd);
  return no_group_error();
}

} // namespace dcpp
