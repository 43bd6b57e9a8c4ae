#include "actors/reader_actor.hpp"

#include "actors/guarded_call.hpp"
#include "core/error.hpp"
#include "core/planner.hpp"
#include "storage/storage.hpp"

#include <caf/all.hpp>

#include <exception>
#include <string>
#include <utility>

namespace dcpp {

namespace {

/// One call of the storage reader (actors/guarded_call.hpp).
template <class R, class F>
caf::result<R>
call(const std::shared_ptr<storage_reader>& reader, const char* what, F&& f) {
  return detail::guarded_call<R>(reader, "storage reader", what,
                                 errc::storage_failure, std::forward<F>(f));
}

/// The storage's metadata, refused unless it passes the checks of `dcpp
/// verify` (validate_metadata). Every load, whatever its planner or
/// storage, comes through here: overlapping chunks whose sizes add up to
/// the tensor's would pass the load planner's coverage count and leave the
/// elements that no chunk holds unloaded.
/// The check runs once per metadata object in the process: ranks that share
/// the storage's metadata object share its verdict.
caf::expected<metadata_ptr> checked_metadata(storage_reader& r) {
  auto md = r.read_shared_metadata();
  if (md && !*md)
    return make_error(errc::storage_failure, "read_metadata: no metadata");
  if (md)
    if (auto err = validate_shared_metadata(*md))
      return err;
  return md;
}

reader_actor::behavior_type reader_impl(reader_actor::pointer,
                                        std::shared_ptr<storage_reader> reader,
                                        std::shared_ptr<load_target> target) {
  using plans = std::vector<load_plan>;
  return {
    [=](read_metadata_atom) -> caf::result<metadata_ptr> {
      return call<metadata_ptr>(reader, "read_metadata", checked_metadata);
    },
    [=](set_up_atom, const metadata_ptr& md, bool is_coordinator,
        int32_t rank) -> caf::result<caf::ok_atom> {
      return call<caf::ok_atom>(reader, "set_up", [&](storage_reader& r) {
        return r.set_up_shared(md, is_coordinator, rank);
      });
    },
    [=](prepare_local_atom, load_plan& plan) -> caf::result<load_plan> {
      return call<load_plan>(reader, "prepare_local_plan",
                             [&](storage_reader& r) {
                               return r.prepare_local_plan(std::move(plan));
                             });
    },
    [=](prepare_global_atom, plans& ps) -> caf::result<plans> {
      return call<plans>(reader, "prepare_global_plan", [&](storage_reader& r) {
        return r.prepare_global_plan(std::move(ps));
      });
    },
    [=](split_atom, const load_plan& plan, uint32_t n) -> caf::result<plans> {
      return call<plans>(reader, "split_plan", [&](storage_reader& r) {
        return r.split_plan(plan, n == 0 ? 1 : n);
      });
    },
    [=](read_atom, const load_plan& plan) -> caf::result<caf::ok_atom> {
      return call<caf::ok_atom>(reader, "read_data", [&](storage_reader& r) {
        if (target)
          return r.read_data(plan, *target);
        if (!plan.items.empty())
          return make_error(errc::invalid_argument, "no load target");
        return caf::error{};
      });
    },
  };
}

} // namespace

reader_actor spawn_reader(caf::actor_system& sys,
                          std::shared_ptr<storage_reader> reader,
                          std::shared_ptr<load_target> target, io_mode mode) {
  if (mode == io_mode::detached)
    return sys.spawn<caf::detached>(reader_impl, std::move(reader),
                                    std::move(target));
  return sys.spawn(reader_impl, std::move(reader), std::move(target));
}

} // namespace dcpp
