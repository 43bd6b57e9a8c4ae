#include "actors/reader_actor.hpp"

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

caf::error no_reader() {
  return make_error(errc::invalid_argument, "no storage reader");
}

reader_actor::behavior_type
reader_impl(reader_actor::pointer, std::shared_ptr<storage_reader> reader,
            std::shared_ptr<load_target> target) {
  return {
    [=](read_metadata_atom) -> caf::result<metadata> {
      if (!reader)
        return no_reader();
      try {
        auto md = reader->read_metadata();
        if (!md)
          return std::move(md.error());
        return std::move(*md);
      } catch (const std::exception& ex) {
        return thrown("read_metadata", ex);
      }
    },
    [=](set_up_atom, const metadata& md, bool is_coordinator,
        int32_t rank) -> caf::result<caf::ok_atom> {
      if (!reader)
        return no_reader();
      try {
        if (auto err = reader->set_up(md, is_coordinator, rank))
          return err;
        return caf::ok_atom::value;
      } catch (const std::exception& ex) {
        return thrown("set_up", ex);
      }
    },
    [=](prepare_local_atom, load_plan& plan) -> caf::result<load_plan> {
      if (!reader)
        return no_reader();
      try {
        auto res = reader->prepare_local_plan(std::move(plan));
        if (!res)
          return std::move(res.error());
        return std::move(*res);
      } catch (const std::exception& ex) {
        return thrown("prepare_local_plan", ex);
      }
    },
    [=](prepare_global_atom, std::vector<load_plan>& plans)
      -> caf::result<std::vector<load_plan>> {
      if (!reader)
        return no_reader();
      try {
        auto res = reader->prepare_global_plan(std::move(plans));
        if (!res)
          return std::move(res.error());
        return std::move(*res);
      } catch (const std::exception& ex) {
        return thrown("prepare_global_plan", ex);
      }
    },
    [=](split_atom, const load_plan& plan,
        uint32_t n) -> caf::result<std::vector<load_plan>> {
      if (!reader)
        return no_reader();
      try {
        return reader->split_plan(plan, n == 0 ? 1 : n);
      } catch (const std::exception& ex) {
        return thrown("split_plan", ex);
      }
    },
    [=](read_atom, const load_plan& plan) -> caf::result<caf::ok_atom> {
      if (!reader)
        return no_reader();
      if (!target) {
        if (!plan.items.empty())
          return make_error(errc::invalid_argument, "no load target");
        return caf::ok_atom::value;
      }
      try {
        if (auto err = reader->read_data(plan, *target))
          return err;
        return caf::ok_atom::value;
      } catch (const std::exception& ex) {
        return thrown("read_data", ex);
      }
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
