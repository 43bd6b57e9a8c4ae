// The in-memory backend in the storage conformance suite.

#include "storage/memory_storage.hpp"
#include "tests/storage/conformance.hpp"

#include <memory>

namespace dcpp::conformance {

namespace {

class memory_under_test final : public storage_under_test {
public:
  storage_writer_ptr make_writer() override {
    return make_memory_writer(store_);
  }

  storage_reader_ptr make_reader() override {
    return make_memory_reader(store_);
  }

  std::set<std::string> data_objects() override {
    return stored_keys(*store_);
  }

  bool corrupt(const storage_info& info) override {
    return corrupt_stored_item(*store_, info.relative_path);
  }

private:
  std::shared_ptr<memory_store> store_ = make_memory_storage();
};

storage_params memory_params() {
  storage_params params;
  params.name = "memory";
  params.make_storage = [] { return std::make_unique<memory_under_test>(); };
  return params;
}

const bool registered = register_storage_tests(memory_params());

} // namespace

} // namespace dcpp::conformance
