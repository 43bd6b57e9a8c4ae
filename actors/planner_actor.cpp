#include "actors/planner_actor.hpp"

#include "actors/guarded_call.hpp"
#include "core/error.hpp"

#include <caf/all.hpp>

#include <exception>
#include <string>
#include <type_traits>
#include <utility>

namespace dcpp {

namespace {

/// One call of the save or load planner (actors/guarded_call.hpp); a
/// planner's exception is a bad argument (its input), not a storage fault.
template <class R, class Planner, class F>
caf::result<R>
call(const std::shared_ptr<const Planner>& planner, const char* what, F&& f) {
  constexpr bool save = std::is_same_v<Planner, save_planner>;
  return detail::guarded_call<R>(planner,
                                 save ? "save planner for this operation"
                                      : "load planner for this operation",
                                 what, errc::invalid_argument,
                                 std::forward<F>(f));
}

caf::error no_view() {
  return make_error(errc::invalid_argument, "no state dict view");
}

planner_actor::behavior_type
planner_impl(planner_actor::pointer self,
             std::shared_ptr<const save_planner> save,
             std::shared_ptr<const load_planner> load,
             std::shared_ptr<const state_dict_view> view) {
  using save_plans = std::vector<save_plan>;
  using load_plans = std::vector<load_plan>;
  return {
    // -- save ---------------------------------------------------------------
    [=](local_plan_atom, bool is_coordinator) -> caf::result<save_plan> {
      if (save && !view)
        return no_view();
      return call<save_plan>(
        save, "create_local_plan", [&](const save_planner& p) {
          return p.create_local_plan(*view, is_coordinator);
        });
    },
    [=](global_plan_atom, save_plans& plans) -> caf::result<global_save_plan> {
      return call<global_save_plan>(
        save, "create_global_plan", [&](const save_planner& p) {
          return p.create_global_plan(std::move(plans));
        });
    },
    [=](finish_plan_atom, save_plan& central) -> caf::result<save_plan> {
      return call<save_plan>(save, "finish_plan", [&](const save_planner& p) {
        return p.finish_plan(std::move(central));
      });
    },
    // -- load ---------------------------------------------------------------
    [=](local_plan_atom, const metadata_ptr& md,
        bool is_coordinator) -> caf::result<load_plan> {
      if (load && !view)
        return no_view();
      if (load && !md)
        return make_error(errc::invalid_argument, "no metadata");
      return call<load_plan>(
        load, "create_local_plan", [&](const load_planner& p) {
          return p.create_shared_local_plan(*view, md, is_coordinator);
        });
    },
    [=](global_plan_atom, load_plans& plans) -> caf::result<load_plans> {
      return call<load_plans>(load, "create_global_plan",
                              [&](const load_planner& p) {
                                return p.create_global_plan(std::move(plans));
                              });
    },
    [=](finish_plan_atom, load_plan& central) -> caf::result<load_plan> {
      return call<load_plan>(load, "finish_plan", [&](const load_planner& p) {
        return p.finish_plan(std::move(central));
      });
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
