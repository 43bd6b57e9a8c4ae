// The plan cache of a save (DCP's cached save plans), on real groups: ranks
// as threads of one actor system, and ranks in actor systems of their own
// joined by the ZeroMQ transport. A repeated save whose plans did not
// change sends fingerprints only and reuses the global plan, and is still
// bit-exact with new storage keys; a change of keys or shapes on one rank
// only makes that save plan in full, and the next one is cached again.

#include "actors/checkpointer.hpp"
#include "actors/process_group.hpp"
#include "actors/system.hpp"
#include "actors/transport/zmq_transport.hpp"
#include "core/error.hpp"
#include "storage/memory_storage.hpp"
#include "tests/support/free_port.hpp"

#include <caf/all.hpp>

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace dcpp;
using namespace std::chrono_literals;

namespace {

constexpr int64_t rows_per_rank = 2;

/// What rank `r` of `n` holds in version `v` of the model: row shards of
/// "model.w", a replicated "model.b", and from version 1 on an extra
/// tensor on `changed` only, whose shape grows in version 2.
state_dict rank_state(int32_t r, int32_t n, int v, int32_t changed,
                      bool zeros) {
  auto fill = [&](at::Tensor t, float base) {
    return zeros ? at::zeros_like(t) : t.add_(base);
  };
  state_dict sd;
  auto local
    = at::arange(rows_per_rank * 3, at::kFloat).reshape({rows_per_rank, 3});
  sd.nested("model").set("w", sharded_tensor{{rows_per_rank * n, 3},
                                             {shard{fill(local, 100.0f * r),
                                                    {rows_per_rank * r, 0}}}});
  sd.nested("model").set("b", fill(at::arange(4, at::kDouble), 0.5f));
  if (v >= 1 && r == changed)
    sd.nested("extra").set("only_here",
                           fill(at::arange(v == 1 ? 3 : 5, at::kFloat), 7.0f));
  return sd;
}

/// True if every tensor of `got` equals the one of `want` (same keys).
bool same_tensors(state_dict& got, const state_dict& want) {
  for (const auto& [key, value] : want.entries()) {
    auto other = got.find(key);
    if (!other)
      return false;
    if (auto nested = std::get_if<std::shared_ptr<state_dict>>(&value)) {
      auto other_nested = std::get_if<std::shared_ptr<state_dict>>(other);
      if (!other_nested || !same_tensors(**other_nested, **nested))
        return false;
    } else if (auto t = std::get_if<at::Tensor>(&value)) {
      auto o = std::get_if<at::Tensor>(other);
      if (!o || !at::equal(*o, *t))
        return false;
    } else if (auto st = std::get_if<sharded_tensor>(&value)) {
      auto o = std::get_if<sharded_tensor>(other);
      if (!o
          || !at::equal(o->local_shards.at(0).tensor,
                        st->local_shards.at(0).tensor))
        return false;
    }
  }
  return true;
}

/// An actor system with two scheduler threads (the ranks only pass
/// messages; the memory storage's calls are quick).
struct small_system {
  system_config cfg{[] {
    system_options o;
    o.scheduler_threads = 2;
    return o;
  }()};
  caf::actor_system sys{cfg};
};

/// Runs `f(rank)` on one thread per rank and waits for all of them.
void on_ranks(int32_t n, const std::function<void(int32_t)>& f) {
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < n; ++r)
    threads.emplace_back(f, r);
  for (auto& t : threads)
    t.join();
}

template <class Stats, class Handle>
Stats stats_of(caf::actor_system& sys, const Handle& hdl) {
  Stats out;
  caf::scoped_actor self{sys};
  self->request(hdl, 10s, caf::get_atom::value, stats_atom::value)
    .receive([&](Stats& x) { out = x; },
             [&](caf::error& err) { FAIL(describe(err)); });
  return out;
}

/// The outcome of one collective save or load, per rank.
struct round_result {
  std::vector<caf::error> errors;
  std::vector<op_report> reports;
  std::vector<metadata> mds;
  std::vector<bool> exact;
};

/// The ranks of one group, each with its checkpointer over one memory store.
struct ranks {
  std::vector<process_group_ptr> group;
  std::shared_ptr<memory_store> store = make_memory_storage();
  std::vector<std::unique_ptr<checkpointer>> cps;

  explicit ranks(std::vector<process_group_ptr> g) : group(std::move(g)) {
    for (auto& member : group) {
      checkpointer_options opts;
      opts.process_group = member;
      opts.step_timeout = 20s;
      cps.push_back(std::make_unique<checkpointer>(
        make_memory_writer(store), make_memory_reader(store), opts));
    }
  }

  int32_t size() const {
    return static_cast<int32_t>(group.size());
  }

  /// Every rank saves version `v`, then loads it into zeros and compares.
  round_result save_and_load(int v, int32_t changed) {
    auto n = size();
    round_result res;
    res.errors.resize(n);
    res.reports.resize(n);
    res.mds.resize(n);
    res.exact.assign(n, false);
    std::vector<caf::error> load_errors(n);
    on_ranks(n, [&](int32_t r) {
      auto sd = rank_state(r, n, v, changed, false);
      auto md = cps[r]->save(sd);
      if (!md) {
        res.errors[r] = md.error();
        return;
      }
      res.mds[r] = std::move(*md);
      res.reports[r] = cps[r]->last_report();
    });
    for (auto& err : res.errors)
      if (err)
        return res;
    on_ranks(n, [&](int32_t r) {
      auto target = rank_state(r, n, v, changed, true);
      if (auto err = cps[r]->load(target)) {
        res.errors[r] = err;
        return;
      }
      res.exact[r] = same_tensors(target, rank_state(r, n, v, changed, false));
    });
    return res;
  }
};

void check_ok(const round_result& res) {
  for (size_t r = 0; r < res.errors.size(); ++r) {
    CAPTURE(r);
    REQUIRE_FALSE(res.errors[r]);
    CHECK(res.exact[r]);
  }
}

/// Every rank's report says whether the plans came from the cache.
void check_cached(const round_result& res, bool cached) {
  for (size_t r = 0; r < res.reports.size(); ++r) {
    CAPTURE(r);
    CHECK(res.reports[r].plans_cached == cached);
  }
}

/// The committed storage keys of `store`.
std::set<std::string> committed_keys(const memory_store& store) {
  return stored_keys(store);
}

/// The scenario shared by both transports: rank `changed` changes its keys
/// (version 1) and then a shape (version 2).
void run_scenario(ranks& rk, caf::actor_system& coord_sys, int32_t changed) {
  // Save 1: full plans.
  auto first = rk.save_and_load(0, changed);
  check_ok(first);
  check_cached(first, false);
  auto keys1 = committed_keys(*rk.store);
  // Save 2: the same plans, from the cache; new storage keys all the same.
  auto second = rk.save_and_load(0, changed);
  check_ok(second);
  check_cached(second, true);
  CHECK(
    (second.mds[0].state_dict_metadata == first.mds[0].state_dict_metadata));
  CHECK(second.mds[0].storage_data.size() == first.mds[0].storage_data.size());
  auto keys2 = committed_keys(*rk.store);
  for (const auto& key : keys2)
    CHECK(keys1.count(key) == 0);
  auto cs = stats_of<coordinator_stats>(coord_sys, rk.group[0]->coordinator());
  CHECK(cs.plan_cache_hits == 1);
  CHECK(cs.plan_cache_misses == 0);
  auto as = stats_of<agent_stats>(coord_sys, rk.group[0]->agent());
  CHECK(as.global_plans_reused == 1);
  CHECK(as.plans_sent_cached == 1);
  // Save 3: one rank has a key more: that save plans in full.
  auto third = rk.save_and_load(1, changed);
  check_ok(third);
  check_cached(third, false);
  CHECK(third.mds[0].state_dict_metadata.count("extra.only_here") == 1);
  // Save 4: unchanged again: cached, with the new key.
  auto fourth = rk.save_and_load(1, changed);
  check_ok(fourth);
  check_cached(fourth, true);
  CHECK(
    (fourth.mds[0].state_dict_metadata == third.mds[0].state_dict_metadata));
  // Save 5: that rank's tensor changes its shape: full plans, right shape.
  auto fifth = rk.save_and_load(2, changed);
  check_ok(fifth);
  check_cached(fifth, false);
  CHECK((fifth.mds[0].state_dict_metadata.at("extra.only_here").tensor.size
         == shape_t{5}));
  cs = stats_of<coordinator_stats>(coord_sys, rk.group[0]->coordinator());
  CHECK(cs.plan_cache_hits == 2);
  CHECK(cs.plan_cache_misses == 0);
  as = stats_of<agent_stats>(coord_sys, rk.group[0]->agent());
  CHECK(as.global_plans_reused == 2);
}

} // namespace

TEST_CASE("a repeated save reuses the plans, a change on one rank plans "
          "in full",
          "[plan_cache]") {
  small_system s;
  ranks rk{make_local_process_group(s.sys, 4)};
  run_scenario(rk, s.sys, 2);
}

TEST_CASE("a failed save makes every rank send its full plan next time",
          "[plan_cache]") {
  small_system s;
  auto& sys = s.sys;
  {
    ranks rk{make_local_process_group(sys, 3)};
    check_ok(rk.save_and_load(0, 1));
    // A save whose state dict cannot be planned on rank 1 (a replicated
    // tensor that disagrees with the other ranks') fails everywhere.
    std::vector<caf::error> errors(3);
    on_ranks(3, [&](int32_t r) {
      auto sd = rank_state(r, 3, 0, 1, false);
      if (r == 1)
        sd.nested("model").set("b", at::zeros({9}, at::kDouble));
      auto md = rk.cps[r]->save(sd);
      errors[r] = md ? caf::error{} : md.error();
    });
    for (auto& err : errors)
      CHECK(err);
    // The same plans as the first save, but no rank trusts its cache now.
    auto again = rk.save_and_load(0, 1);
    check_ok(again);
    check_cached(again, false);
    auto cs = stats_of<coordinator_stats>(sys, rk.group[0]->coordinator());
    CHECK(cs.plan_cache_misses == 0);
    // And the next one is cached again.
    auto third = rk.save_and_load(0, 1);
    check_ok(third);
    check_cached(third, true);
  }
}

TEST_CASE("the plan cache over ZeroMQ: one actor system per rank",
          "[plan_cache][zmq]") {
  constexpr int32_t n = 3;
  std::vector<std::unique_ptr<small_system>> systems;
  for (int32_t r = 0; r < n; ++r)
    systems.push_back(std::make_unique<small_system>());
  auto port = test::free_port();
  std::vector<process_group_ptr> members(n);
  std::vector<caf::error> errors(n);
  on_ranks(n, [&](int32_t r) {
    launch_env env;
    env.rank = r;
    env.world_size = n;
    env.master_addr = "127.0.0.1";
    env.master_port = port;
    env.secret = "plan-cache-test-secret";
    env.job_id = "plan-cache-test";
    zmq_options opts;
    opts.drain_timeout = 2000ms;
    opts.connect_timeout = 20000ms;
    auto g = make_zmq_process_group(systems[r]->sys, env, opts);
    if (g)
      members[r] = std::move(*g);
    else
      errors[r] = g.error();
  });
  for (auto& err : errors)
    REQUIRE_FALSE(err);
  {
    ranks rk{members};
    members.clear();
    run_scenario(rk, systems[0]->sys, 1);
    // Groups go before their actor systems, the coordinator's last.
    for (int32_t r = n - 1; r >= 0; --r) {
      rk.cps[r].reset();
      rk.group[r].reset();
    }
  }
}
