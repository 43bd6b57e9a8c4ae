#pragma once

// Test doubles for the actor tests: a storage writer and reader that keep
// everything in a shared `fake_store`, count calls, and fail on request at a
// named call; planner views of a small synthetic state dict; helpers that
// run a save or load on a rank agent from a one-shot actor.

#include "core/error.hpp"
#include "core/planner.hpp"
#include "messages/protocol.hpp"
#include "storage/storage.hpp"

#include <caf/all.hpp>

#include <ATen/core/Tensor.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace dcpp::test {

/// What the fake storage of one test saw.
struct fake_store {
  std::mutex mx;
  bool has_committed = false;
  metadata committed;
  std::atomic<int> finish_calls{0};
  std::atomic<int> abort_calls{0};
  std::atomic<int> write_calls{0};
  std::atomic<int> read_calls{0};
};

/// Fails the call named `where` ("set_up", "prepare_local",
/// "prepare_global", "write", "finish", "read_metadata", "read").
struct fault {
  std::string where;

  bool at(const char* call) const {
    return where == call;
  }

  caf::error error(const char* call, int32_t rank) const {
    return make_error(errc::storage_failure, std::string{"injected "} + call
                                               + " failure on rank "
                                               + std::to_string(rank));
  }
};

class fake_writer : public storage_writer {
public:
  fake_writer(std::shared_ptr<fake_store> store, fault f = {})
    : store_(std::move(store)), fault_(std::move(f)) {
    // nop
  }

  caf::error set_up(bool, int32_t rank) override {
    rank_ = rank;
    if (fault_.at("set_up"))
      return fault_.error("set_up", rank_);
    return caf::none;
  }

  caf::expected<save_plan> prepare_local_plan(save_plan plan) override {
    if (fault_.at("prepare_local"))
      return fault_.error("prepare_local", rank_);
    return plan;
  }

  caf::expected<std::vector<save_plan>>
  prepare_global_plan(std::vector<save_plan> plans) override {
    if (fault_.at("prepare_global"))
      return fault_.error("prepare_global", rank_);
    for (size_t i = 0; i < plans.size(); ++i)
      plans[i].storage_data = "__" + std::to_string(i) + "_";
    return plans;
  }

  std::vector<save_plan> split_plan(const save_plan& plan, size_t n) override {
    // Round-robin, to exercise parallel writer actors.
    std::vector<save_plan> parts(std::max<size_t>(n, 1));
    for (auto& p : parts) {
      p.storage_data = plan.storage_data;
      p.planner_data = plan.planner_data;
    }
    for (size_t i = 0; i < plan.items.size(); ++i)
      parts[i % parts.size()].items.push_back(plan.items[i]);
    return parts;
  }

  caf::expected<std::vector<write_result>>
  write_data(const save_plan& plan, const item_source&) override {
    ++store_->write_calls;
    if (fault_.at("write"))
      return fault_.error("write", rank_);
    std::vector<write_result> out;
    uint64_t offset = 0;
    for (const auto& item : plan.items) {
      write_result res;
      res.index = item.index;
      res.size_in_bytes = item.byte_count();
      res.storage_data.relative_path = plan.storage_data + "0.distcp";
      res.storage_data.offset = offset;
      res.storage_data.length = res.size_in_bytes;
      offset += res.size_in_bytes;
      out.push_back(std::move(res));
    }
    return out;
  }

  caf::error finish(const metadata& md,
                    const std::vector<std::vector<write_result>>&) override {
    ++store_->finish_calls;
    if (fault_.at("finish"))
      return fault_.error("finish", rank_);
    std::lock_guard<std::mutex> guard{store_->mx};
    store_->committed = md;
    store_->has_committed = true;
    return caf::none;
  }

  void abort() override {
    ++store_->abort_calls;
  }

private:
  std::shared_ptr<fake_store> store_;
  fault fault_;
  int32_t rank_ = -1;
};

class fake_reader : public storage_reader {
public:
  fake_reader(std::shared_ptr<fake_store> store, fault f = {})
    : store_(std::move(store)), fault_(std::move(f)) {
    // nop
  }

  caf::expected<metadata> read_metadata() override {
    if (fault_.at("read_metadata"))
      return fault_.error("read_metadata", rank_);
    std::lock_guard<std::mutex> guard{store_->mx};
    if (!store_->has_committed)
      return make_error(errc::not_found, "nothing committed");
    return store_->committed;
  }

  caf::error set_up(const metadata&, bool, int32_t rank) override {
    rank_ = rank;
    if (fault_.at("set_up"))
      return fault_.error("set_up", rank_);
    return caf::none;
  }

  caf::error read_data(const load_plan&, load_target&) override {
    ++store_->read_calls;
    if (fault_.at("read"))
      return fault_.error("read", rank_);
    return caf::none;
  }

private:
  std::shared_ptr<fake_store> store_;
  fault fault_;
  int32_t rank_ = -1;
};

/// Never called by the fakes.
class null_source : public item_source {
public:
  caf::expected<at::Tensor> tensor(const write_item&) const override {
    return make_error(errc::invalid_argument, "null_source");
  }
  caf::expected<std::string_view> bytes(const write_item&) const override {
    return make_error(errc::invalid_argument, "null_source");
  }
};

class null_target : public load_target {
public:
  caf::expected<at::Tensor> tensor(const read_item&) override {
    return make_error(errc::invalid_argument, "null_target");
  }
  caf::error set_bytes(const read_item&, std::string) override {
    return make_error(errc::invalid_argument, "null_target");
  }
};

/// A save planner that fails to create the local plan.
class failing_save_planner : public save_planner {
public:
  caf::expected<save_plan> create_local_plan(const state_dict_view&,
                                             bool) const override {
    return make_error(errc::invalid_argument, "injected local plan failure");
  }
  caf::expected<global_save_plan>
  create_global_plan(std::vector<save_plan>) const override {
    return make_error(errc::invalid_argument, "unreachable");
  }
};

/// Rank `rank`'s view of a small state dict of a world of `world` ranks:
/// "w" [2 * world, 3] float32 row-sharded, "b" [4] replicated, "step" bytes.
inline state_dict_view synthetic_view(int32_t rank, int32_t world) {
  state_dict_view view;
  item_view w;
  w.fqn = "w";
  w.kind = item_kind::tensor;
  w.properties.type = dtype::float32;
  w.global_size = {2 * world, 3};
  w.local_chunks.push_back({{2 * rank, 0}, {2, 3}});
  w.sharded = true;
  item_view b;
  b.fqn = "b";
  b.kind = item_kind::tensor;
  b.properties.type = dtype::float32;
  b.global_size = {4};
  b.local_chunks.push_back({{0}, {4}});
  item_view step;
  step.fqn = "step";
  step.kind = item_kind::bytes;
  step.bytes_size = 8;
  view.items = {w, b, step};
  for (const auto& item : view.items)
    view.mapping[item.fqn] = {item.fqn};
  return view;
}

inline save_job
fake_save_job(std::shared_ptr<fake_store> store, int32_t rank, int32_t world,
              int32_t coordinator, fault f = {},
              std::chrono::milliseconds timeout = std::chrono::seconds(1)) {
  save_job job;
  job.view = std::make_shared<const state_dict_view>(
    synthetic_view(rank, world));
  job.source = std::make_shared<null_source>();
  job.planner = make_default_save_planner();
  job.writer = std::make_shared<fake_writer>(std::move(store), std::move(f));
  job.coordinator_rank = coordinator;
  job.step_timeout = timeout;
  job.io_threads = 2;
  return job;
}

inline load_job
fake_load_job(std::shared_ptr<fake_store> store, int32_t rank, int32_t world,
              int32_t coordinator, fault f = {},
              std::chrono::milliseconds timeout = std::chrono::seconds(1)) {
  load_job job;
  job.view = std::make_shared<const state_dict_view>(
    synthetic_view(rank, world));
  job.target = std::make_shared<null_target>();
  job.planner = make_default_load_planner();
  job.reader = std::make_shared<fake_reader>(std::move(store), std::move(f));
  job.coordinator_rank = coordinator;
  job.step_timeout = timeout;
  job.io_threads = 2;
  return job;
}

/// The reply a caller got (filled by a one-shot actor).
struct reply_slot {
  bool done = false;
  metadata md;
  caf::error error;
};

using reply_ptr = std::shared_ptr<reply_slot>;

template <class Atom, class Job>
reply_ptr
call_agent(caf::actor_system& sys, rank_agent_actor agent, Atom atom, Job job) {
  auto slot = std::make_shared<reply_slot>();
  sys.spawn([=](caf::event_based_actor* self) {
    self->request(agent, std::chrono::seconds(3600), atom, job)
      .then(
        [=](metadata& md) {
          slot->done = true;
          slot->md = std::move(md);
        },
        [=](caf::error& err) {
          slot->done = true;
          slot->error = std::move(err);
        });
  });
  return slot;
}

} // namespace dcpp::test
