#include "actors/writer_actor.hpp"

#include "core/error.hpp"
#include "storage/storage.hpp"

#include <caf/all.hpp>

#include <exception>
#include <string>
#include <utility>

namespace dcpp {

namespace {

caf::error thrown(const char* where, const std::exception& ex) {
  return make_error(errc::storage_failure,
                    std::string{where} + " threw: " + ex.what());
}

caf::error no_writer() {
  return make_error(errc::invalid_argument, "no storage writer");
}

writer_actor::behavior_type
writer_impl(writer_actor::pointer, std::shared_ptr<storage_writer> writer,
            std::shared_ptr<const item_source> source) {
  return {
    [=](set_up_atom, bool is_coordinator,
        int32_t rank) -> caf::result<caf::ok_atom> {
      if (!writer)
        return no_writer();
      try {
        if (auto err = writer->set_up(is_coordinator, rank))
          return err;
        return caf::ok_atom::value;
      } catch (const std::exception& ex) {
        return thrown("set_up", ex);
      }
    },
    [=](prepare_local_atom, save_plan& plan) -> caf::result<save_plan> {
      if (!writer)
        return no_writer();
      try {
        auto res = writer->prepare_local_plan(std::move(plan));
        if (!res)
          return std::move(res.error());
        return std::move(*res);
      } catch (const std::exception& ex) {
        return thrown("prepare_local_plan", ex);
      }
    },
    [=](prepare_global_atom, std::vector<save_plan>& plans)
      -> caf::result<std::vector<save_plan>> {
      if (!writer)
        return no_writer();
      try {
        auto res = writer->prepare_global_plan(std::move(plans));
        if (!res)
          return std::move(res.error());
        return std::move(*res);
      } catch (const std::exception& ex) {
        return thrown("prepare_global_plan", ex);
      }
    },
    [=](split_atom, const save_plan& plan,
        uint32_t n) -> caf::result<std::vector<save_plan>> {
      if (!writer)
        return no_writer();
      try {
        return writer->split_plan(plan, n == 0 ? 1 : n);
      } catch (const std::exception& ex) {
        return thrown("split_plan", ex);
      }
    },
    [=](write_atom,
        const save_plan& plan) -> caf::result<std::vector<write_result>> {
      if (!writer)
        return no_writer();
      if (!source) {
        if (!plan.items.empty())
          return make_error(errc::invalid_argument, "no item source");
        return std::vector<write_result>{};
      }
      try {
        auto res = writer->write_data(plan, *source);
        if (!res)
          return std::move(res.error());
        return std::move(*res);
      } catch (const std::exception& ex) {
        return thrown("write_data", ex);
      }
    },
    [=](finish_atom, const metadata& md,
        const std::vector<std::vector<write_result>>& results)
      -> caf::result<caf::ok_atom> {
      if (!writer)
        return no_writer();
      try {
        if (auto err = writer->finish(md, results))
          return err;
        return caf::ok_atom::value;
      } catch (const std::exception& ex) {
        return thrown("finish", ex);
      }
    },
    [=](abort_atom) -> caf::result<caf::ok_atom> {
      if (writer) {
        try {
          writer->abort();
        } catch (const std::exception&) {
          // best effort
        }
      }
      return caf::ok_atom::value;
    },
  };
}

} // namespace

writer_actor spawn_writer(caf::actor_system& sys,
                          std::shared_ptr<storage_writer> writer,
                          std::shared_ptr<const item_source> source,
                          io_mode mode) {
  if (mode == io_mode::detached)
    return sys.spawn<caf::detached>(writer_impl, std::move(writer),
                                    std::move(source));
  return sys.spawn(writer_impl, std::move(writer), std::move(source));
}

} // namespace dcpp
