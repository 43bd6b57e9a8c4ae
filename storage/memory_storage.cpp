#include "storage/memory_storage.hpp"

#include "core/error.hpp"
#include "core/planner.hpp"

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <xxhash.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <set>
#include <string>

namespace dcpp {

namespace {

struct stored_item {
  at::Tensor tensor;
  std::string bytes;
  /// The save that wrote the item (`memory_store::saves` at its start).
  uint64_t save = 0;
};

/// The item's bytes: the tensor's (contiguous) data or the bytes value.
std::string_view data_of(const stored_item& item) {
  if (item.tensor.defined())
    return {static_cast<const char*>(item.tensor.data_ptr()),
            item.tensor.nbytes()};
  return item.bytes;
}

/// "xxh64:<16 hex digits>", as the file system records it.
std::string checksum_of(const stored_item& item) {
  auto data = data_of(item);
  char buf[32];
  std::snprintf(buf, sizeof(buf), "xxh64:%016" PRIx64,
                static_cast<uint64_t>(XXH64(data.data(), data.size(), 0)));
  return buf;
}

} // namespace

class memory_store {
public:
  std::mutex mx;
  /// Items written by saves in progress, by storage key
  /// "s<save>/mem<rank>/<serial>".
  std::map<std::string, stored_item> staged;
  /// Items of the committed checkpoint.
  std::map<std::string, stored_item> committed;
  metadata_ptr md;
  /// Saves started so far; numbers the next one, so that no two saves
  /// share a key.
  uint64_t saves = 0;
};

size_t committed_items(const memory_store& store) {
  auto& self = const_cast<memory_store&>(store);
  std::lock_guard<std::mutex> guard{self.mx};
  return self.committed.size();
}

std::set<std::string> stored_keys(const memory_store& store) {
  auto& self = const_cast<memory_store&>(store);
  std::lock_guard<std::mutex> guard{self.mx};
  std::set<std::string> keys;
  for (const auto& [key, item] : self.staged)
    keys.insert(key);
  for (const auto& [key, item] : self.committed)
    keys.insert(key);
  return keys;
}

bool corrupt_stored_item(memory_store& store, const std::string& key) {
  std::lock_guard<std::mutex> guard{store.mx};
  auto i = store.committed.find(key);
  if (i == store.committed.end())
    return false;
  auto& item = i->second;
  if (item.tensor.defined()) {
    if (item.tensor.nbytes() == 0)
      return false;
    auto* data = static_cast<unsigned char*>(item.tensor.data_ptr());
    data[item.tensor.nbytes() / 2] ^= 0x20;
    return true;
  }
  if (item.bytes.empty())
    return false;
  item.bytes[item.bytes.size() / 2] ^= 0x20;
  return true;
}

namespace {

class memory_writer : public storage_writer {
public:
  explicit memory_writer(std::shared_ptr<memory_store> store)
    : store_(std::move(store)) {
    // nop
  }

  caf::error set_up(bool, int32_t rank) override {
    rank_ = rank;
    std::lock_guard<std::mutex> guard{store_->mx};
    written_.clear();
    return caf::none;
  }

  caf::expected<save_plan> prepare_local_plan(save_plan plan) override {
    return plan;
  }

  caf::expected<std::vector<save_plan>>
  prepare_global_plan(std::vector<save_plan> plans) override {
    uint64_t save = 0;
    {
      std::lock_guard<std::mutex> guard{store_->mx};
      save = ++store_->saves;
    }
    for (size_t i = 0; i < plans.size(); ++i)
      plans[i].storage_data = "s" + std::to_string(save) + "/mem"
                              + std::to_string(i) + "/";
    return plans;
  }

  caf::expected<std::vector<write_result>>
  write_data(const save_plan& plan, const item_source& source) override {
    std::vector<write_result> results;
    for (const auto& item : plan.items) {
      stored_item stored;
      uint64_t length = 0;
      if (item.type == write_item_type::bytes) {
        auto bytes = source.bytes(item);
        if (!bytes)
          return bytes.error();
        stored.bytes = std::string{*bytes};
        length = stored.bytes.size();
      } else {
        auto t = source.tensor(item);
        if (!t)
          return t.error();
        try {
          stored.tensor = t->detach().clone(at::MemoryFormat::Contiguous);
        } catch (const c10::Error& ex) {
          return make_error(errc::storage_failure,
                            to_string(item.index) + ": "
                              + ex.what_without_backtrace());
        }
        length = stored.tensor.nbytes();
      }
      stored.save = save_of(plan.storage_data);
      write_result res;
      res.index = item.index;
      res.size_in_bytes = length;
      res.storage_data.length = length;
      res.storage_data.checksum = checksum_of(stored);
      std::lock_guard<std::mutex> guard{store_->mx};
      auto key = plan.storage_data + std::to_string(serial_++);
      res.storage_data.relative_path = key;
      store_->staged[key] = std::move(stored);
      written_.push_back(key);
      results.push_back(std::move(res));
    }
    return results;
  }

  /// Commits, following the file system's rule: the old checkpoint stays
  /// as it is until the new one has validated, then the new one replaces
  /// it in one step (under the store's lock), then the items of the old
  /// one and of older unfinished saves are dropped.
  caf::error
  finish(const metadata& md,
         const std::vector<std::vector<write_result>>& results) override {
    // Commit only a checkpoint that can be loaded: every chunk and bytes
    // value has storage ...
    auto record = commit_record(md, results);
    if (!record)
      return std::move(record.error());
    auto& copy = *record;
    std::lock_guard<std::mutex> guard{store_->mx};
    // ... and every storage entry has its item (an abort may have
    // dropped them).
    uint64_t save = 0;
    for (const auto& [index, info] : copy.storage_data) {
      auto i = store_->staged.find(info.relative_path);
      if (i == store_->staged.end())
        return make_error(errc::storage_failure,
                          "finish: the data of " + to_string(index)
                            + " is gone (" + info.relative_path + ")");
      save = std::max(save, i->second.save);
    }
    // The commit.
    std::map<std::string, stored_item> committed;
    for (const auto& [index, info] : copy.storage_data) {
      auto i = store_->staged.find(info.relative_path);
      if (i != store_->staged.end()) {
        committed.emplace(info.relative_path, std::move(i->second));
        store_->staged.erase(i);
      }
    }
    store_->committed.swap(committed);
    store_->md = std::make_shared<const metadata>(std::move(copy));
    written_.clear();
    // Garbage collection: the old checkpoint and leftovers of saves that
    // started before this one; saves that started later keep their items.
    for (auto i = store_->staged.begin(); i != store_->staged.end();) {
      if (i->second.save <= save)
        i = store_->staged.erase(i);
      else
        ++i;
    }
    return caf::none;
  }

  void abort() override {
    std::lock_guard<std::mutex> guard{store_->mx};
    for (const auto& key : written_)
      store_->staged.erase(key);
    written_.clear();
  }

private:
  /// The save number in a plan's storage prefix "s<save>/mem<rank>/".
  static uint64_t save_of(const std::string& prefix) {
    if (prefix.size() < 2 || prefix[0] != 's')
      return 0;
    return std::strtoull(prefix.c_str() + 1, nullptr, 10);
  }

  std::shared_ptr<memory_store> store_;
  int32_t rank_ = 0;
  uint64_t serial_ = 0;
  std::vector<std::string> written_;
};

class memory_reader : public storage_reader {
public:
  explicit memory_reader(std::shared_ptr<memory_store> store)
    : store_(std::move(store)) {
    // nop
  }

  caf::expected<metadata> read_metadata() override {
    auto md = read_shared_metadata();
    if (!md)
      return std::move(md.error());
    return **md;
  }

  /// Every reader of the store shares the committed metadata object.
  caf::expected<metadata_ptr> read_shared_metadata() override {
    std::lock_guard<std::mutex> guard{store_->mx};
    if (!store_->md)
      return make_error(errc::not_found, "memory store holds no checkpoint");
    return store_->md;
  }

  caf::error set_up(const metadata& md, bool, int32_t) override {
    md_ = std::make_shared<const metadata>(md);
    return caf::none;
  }

  caf::error set_up_shared(const metadata_ptr& md, bool, int32_t) override {
    md_ = md;
    return caf::none;
  }

  caf::error read_data(const load_plan& plan, load_target& target) override {
    for (const auto& item : plan.items) {
      auto info = md_->storage_data.find(item.storage_index);
      if (info == md_->storage_data.end())
        return make_error(errc::missing_key,
                          "no storage for " + to_string(item.storage_index));
      stored_item stored;
      {
        std::lock_guard<std::mutex> guard{store_->mx};
        auto i = store_->committed.find(info->second.relative_path);
        if (i == store_->committed.end())
          return make_error(errc::corrupt_item,
                            "missing data for "
                              + to_string(item.storage_index));
        stored = i->second;
      }
      const auto& expected = info->second.checksum;
      if (!expected.empty()) {
        auto actual = checksum_of(stored);
        if (actual != expected)
          return make_error(errc::checksum_mismatch,
                            to_string(item.storage_index) + ": checksum "
                              + actual + " of the stored data, " + expected
                              + " recorded at save");
      }
      if (item.type == load_item_type::bytes) {
        if (auto err = target.set_bytes(item, std::move(stored.bytes)))
          return err;
        continue;
      }
      auto dest = target.tensor(item);
      if (!dest)
        return dest.error();
      try {
        auto src = stored.tensor;
        for (size_t d = 0; d < item.lengths.size(); ++d)
          src = src.narrow(static_cast<int64_t>(d), item.storage_offsets[d],
                           item.lengths[d]);
        if (src.sizes() != dest->sizes())
          return make_error(errc::shape_mismatch,
                            to_string(item.dest_index) + ": source box "
                              + to_string(src.sizes().vec())
                              + " vs destination "
                              + to_string(dest->sizes().vec()));
        dest->copy_(src);
      } catch (const c10::Error& ex) {
        return make_error(errc::corrupt_item, to_string(item.storage_index)
                                                + ": "
                                                + ex.what_without_backtrace());
      }
    }
    return caf::none;
  }

private:
  std::shared_ptr<memory_store> store_;
  metadata_ptr md_ = std::make_shared<const metadata>();
};

} // namespace

std::shared_ptr<memory_store> make_memory_storage() {
  return std::make_shared<memory_store>();
}

storage_writer_ptr make_memory_writer(std::shared_ptr<memory_store> store) {
  return std::make_shared<memory_writer>(std::move(store));
}

storage_reader_ptr make_memory_reader(std::shared_ptr<memory_store> store) {
  return std::make_shared<memory_reader>(std::move(store));
}

} // namespace dcpp
