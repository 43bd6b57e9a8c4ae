#include "storage/storage.hpp"

namespace dcpp {

storage_writer::~storage_writer() = default;

void storage_writer::abort() {
  // nop: nothing to remove by default
}

std::vector<save_plan> storage_writer::split_plan(const save_plan& plan,
                                                  size_t) {
  return {plan};
}

storage_reader::~storage_reader() = default;

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
