#include "actors/planner_actor.hpp"

#include "core/error.hpp"

#include <caf/all.hpp>

#include <exception>
#include <string>
#include <utility>

namespace dcpp {

namespace {

caf::error missing(const char* what) {
  return make_error(errc::invalid_argument,
                    std::string{"no "} + what + " planner for this operation");
}

caf::error thrown(const char* where, const std::exception& ex) {
  return make_error(errc::invalid_argument,
                    std::string{where} + " threw: " + ex.what());
}

planner_actor::behavior_type
planner_impl(planner_actor::pointer self,
             std::shared_ptr<const save_planner> save,
             std::shared_ptr<const load_planner> load,
             std::shared_ptr<const state_dict_view> view) {
  return {
    // -- save ---------------------------------------------------------------
    [=](local_plan_atom, bool is_coordinator) -> caf::result<save_plan> {
      if (!save)
        return missing("save");
      if (!view)
        return make_error(errc::invalid_argument, "no state dict view");
      try {
        auto plan = save->create_local_plan(*view, is_coordinator);
        if (!plan)
          return std::move(plan.error());
        return std::move(*plan);
      } catch (const std::exception& ex) {
        return thrown("create_local_plan", ex);
      }
    },
    [=](global_plan_atom,
        std::vector<save_plan>& plans) -> caf::result<global_save_plan> {
      if (!save)
        return missing("save");
      try {
        auto global = save->create_global_plan(std::move(plans));
        if (!global)
          return std::move(global.error());
        return std::move(*global);
      } catch (const std::exception& ex) {
        return thrown("create_global_plan", ex);
      }
    },
    [=](finish_plan_atom, save_plan& central) -> caf::result<save_plan> {
      if (!save)
        return missing("save");
      try {
        auto plan = save->finish_plan(std::move(central));
        if (!plan)
          return std::move(plan.error());
        return std::move(*plan);
      } catch (const std::exception& ex) {
        return thrown("finish_plan", ex);
      }
    },
    // -- load ---------------------------------------------------------------
    [=](local_plan_atom, const metadata& md,
        bool is_coordinator) -> caf::result<load_plan> {
      if (!load)
        return missing("load");
      if (!view)
        return make_error(errc::invalid_argument, "no state dict view");
      try {
        auto plan = load->create_local_plan(*view, md, is_coordinator);
        if (!plan)
          return std::move(plan.error());
        return std::move(*plan);
      } catch (const std::exception& ex) {
        return thrown("create_local_plan", ex);
      }
    },
    [=](global_plan_atom, std::vector<load_plan>& plans)
      -> caf::result<std::vector<load_plan>> {
      if (!load)
        return missing("load");
      try {
        auto global = load->create_global_plan(std::move(plans));
        if (!global)
          return std::move(global.error());
        return std::move(*global);
      } catch (const std::exception& ex) {
        return thrown("create_global_plan", ex);
      }
    },
    [=](finish_plan_atom, load_plan& central) -> caf::result<load_plan> {
      if (!load)
        return missing("load");
      try {
        auto plan = load->finish_plan(std::move(central));
        if (!plan)
          return std::move(plan.error());
        return std::move(*plan);
      } catch (const std::exception& ex) {
        return thrown("finish_plan", ex);
      }
    },
  };
}

} // namespace

planner_actor spawn_planner(caf::actor_system& sys,
                            std::shared_ptr<const save_planner> save,
                            std::shared_ptr<const load_planner> load,
                            std::shared_ptr<const state_dict_view> view) {
  return sys.spawn(planner_impl, std::move(save), std::move(load),
                   std::move(view));
}

} // namespace dcpp
