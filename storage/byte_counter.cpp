#include "storage/byte_counter.hpp"

#include "core/report.hpp"

#include <ATen/core/Tensor.h>

#include <mutex>
#include <set>
#include <string>
#include <utility>

namespace dcpp {

namespace {

class counting_item_source : public item_source {
public:
  counting_item_source(std::shared_ptr<const item_source> inner,
                       byte_counter_ptr counter)
    : inner_(std::move(inner)), counter_(std::move(counter)) {
    // nop
  }

  caf::expected<at::Tensor> tensor(const write_item& item) const override {
    auto x = inner_->tensor(item);
    if (x)
      counter_->done += planned_bytes(item);
    return x;
  }

  caf::expected<std::string_view> bytes(const write_item& item) const override {
    auto x = inner_->bytes(item);
    if (x)
      counter_->done += x->size();
    return x;
  }

private:
  std::shared_ptr<const item_source> inner_;
  byte_counter_ptr counter_;
};

class counting_load_target : public load_target {
public:
  counting_load_target(std::shared_ptr<load_target> inner,
                       byte_counter_ptr counter)
    : inner_(std::move(inner)), counter_(std::move(counter)) {
    // nop
  }

  caf::expected<at::Tensor> tensor(const read_item& item) override {
    count(item);
    return inner_->tensor(item);
  }

  caf::error set_bytes(const read_item& item, std::string data) override {
    count(item);
    return inner_->set_bytes(item, std::move(data));
  }

private:
  void count(const read_item& item) {
    if (!counter_->md)
      return;
    auto i = counter_->md->storage_data.find(item.storage_index);
    if (i == counter_->md->storage_data.end())
      return;
    std::lock_guard<std::mutex> guard{mx_};
    if (seen_.insert(i->first).second)
      counter_->done += i->second.length;
  }

  std::shared_ptr<load_target> inner_;
  byte_counter_ptr counter_;
  std::mutex mx_;
  std::set<metadata_index> seen_;
};

} // namespace

std::shared_ptr<const item_source>
counting_source(std::shared_ptr<const item_source> inner,
                byte_counter_ptr counter) {
  return std::make_shared<counting_item_source>(std::move(inner),
                                                std::move(counter));
}

std::shared_ptr<load_target> counting_target(std::shared_ptr<load_target> inner,
                                             byte_counter_ptr counter) {
  return std::make_shared<counting_load_target>(std::move(inner),
                                                std::move(counter));
}

} // namespace dcpp
