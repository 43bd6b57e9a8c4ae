#include "actors/writer_actor.hpp"

#include "actors/guarded_call.hpp"
#include "core/error.hpp"
#include "storage/storage.hpp"

#include <caf/all.hpp>

#include <exception>
#include <string>
#include <utility>

namespace dcpp {

namespace {

/// One call of the storage writer (actors/guarded_call.hpp).
template <class R, class F>
caf::result<R>
call(const std::shared_ptr<storage_writer>& writer, const char* what, F&& f) {
  return detail::guarded_call<R>(writer, "storage writer", what,
                                 errc::storage_failure, std::forward<F>(f));
}

writer_actor::behavior_type
writer_impl(writer_actor::pointer, std::shared_ptr<storage_writer> writer,
            std::shared_ptr<const item_source> source) {
  using plans = std::vector<save_plan>;
  using results = std::vector<write_result>;
  return {
    [=](set_up_atom, bool is_coordinator,
        int32_t rank) -> caf::result<caf::ok_atom> {
      return call<caf::ok_atom>(writer, "set_up", [&](storage_writer& w) {
        return w.set_up(is_coordinator, rank);
      });
    },
    [=](prepare_local_atom, save_plan& plan) -> caf::result<save_plan> {
      return call<save_plan>(writer, "prepare_local_plan",
                             [&](storage_writer& w) {
                               return w.prepare_local_plan(std::move(plan));
                             });
    },
    [=](prepare_global_atom, plans& ps) -> caf::result<plans> {
      return call<plans>(writer, "prepare_global_plan", [&](storage_writer& w) {
        return w.prepare_global_plan(std::move(ps));
      });
    },
    [=](split_atom, const save_plan& plan, uint32_t n) -> caf::result<plans> {
      return call<plans>(writer, "split_plan", [&](storage_writer& w) {
        return w.split_plan(plan, n == 0 ? 1 : n);
      });
    },
    [=](write_atom, const save_plan& plan) -> caf::result<results> {
      return call<results>(
        writer, "write_data", [&](storage_writer& w) -> caf::expected<results> {
          if (source)
            return w.write_data(plan, *source);
          if (!plan.items.empty())
            return make_error(errc::invalid_argument, "no item source");
          return results{};
        });
    },
    [=](finish_atom, const metadata& md,
        const std::vector<results>& all) -> caf::result<caf::ok_atom> {
      return call<caf::ok_atom>(writer, "finish", [&](storage_writer& w) {
        return w.finish(md, all);
      });
    },
    [=](abort_atom) -> caf::result<caf::ok_atom> {
      // Best effort: the operation has failed already.
      if (writer) {
        try {
          writer->abort();
        } catch (const std::exception&) {
          // nop
        }
      }
      return caf::ok_atom::value;
    },
  };
}

} // namespace

writer_actor
spawn_writer(caf::actor_system& sys, std::shared_ptr<storage_writer> writer,
             std::shared_ptr<const item_source> source, io_mode mode) {
  if (mode == io_mode::detached)
    return sys.spawn<caf::detached>(writer_impl, std::move(writer),
                                    std::move(source));
  return sys.spawn(writer_impl, std::move(writer), std::move(source));
}

} // namespace dcpp
