#include "storage/storage.hpp"

#include "core/error.hpp"

#include <memory>
#include <utility>

namespace dcpp {

storage_writer::~storage_writer() = default;

caf::error storage_writer::reset(const std::string& checkpoint_id) {
  return make_error(errc::unsupported,
                    "this storage writer cannot switch to checkpoint "
                      + checkpoint_id);
}

void storage_writer::abort() {
  // nop: nothing to remove by default
}

std::vector<save_plan> storage_writer::split_plan(const save_plan& plan,
                                                  size_t) {
  return {plan};
}

storage_reader::~storage_reader() = default;

caf::error storage_reader::reset(const std::string& checkpoint_id) {
  return make_error(errc::unsupported,
                    "this storage reader cannot switch to checkpoint "
                      + checkpoint_id);
}

caf::expected<metadata_ptr> storage_reader::read_shared_metadata() {
  auto md = read_metadata();
  if (!md)
    return std::move(md.error());
  return std::make_shared<const metadata>(std::move(*md));
}

caf::error storage_reader::set_up_shared(const metadata_ptr& md,
                                         bool is_coordinator, int32_t rank) {
  return set_up(*md, is_coordinator, rank);
}

caf::expected<load_plan> storage_reader::prepare_local_plan(load_plan plan) {
  return plan;
}

caf::expected<std::vector<load_plan>>
storage_reader::prepare_global_plan(std::vector<load_plan> plans) {
  return plans;
}

std::vector<load_plan> storage_reader::split_plan(const load_plan& plan,
                                                  size_t) {
  return {plan};
}

} // namespace dcpp
