// The checkpoint manager over real step directories in a temporary root:
// the save interval, retention (max_to_keep, keep_period, best by a metric,
// min and max), async saves finishing in order, a failed async save and a
// restart after it, refused steps, and a group of two ranks (ranks as
// threads) saving a sharded tensor and restoring it.

#include "actors/checkpoint_manager.hpp"

#include "actors/process_group.hpp"
#include "actors/system.hpp"
#include "actors/transport/zmq_transport.hpp"
#include "core/error.hpp"
#include "core/fault.hpp"
#include "storage/checkpoint_root.hpp"
#include "tests/storage/fs_test_util.hpp"
#include "tests/support/free_port.hpp"

#include <caf/actor_system.hpp>

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <chrono>
#include <filesystem>
#include <mutex>
#include <thread>
#include <vector>

using namespace dcpp;
using fs_test::temp_dir;

namespace {

/// The state of step `step`: values that tell the steps apart.
state_dict state_of(uint64_t step) {
  state_dict sd;
  sd.set("w", at::full({3, 2}, static_cast<double>(step), at::kFloat));
  sd.nested("optim").set("step", bytes_value::from_int(int64_t(step)));
  return sd;
}

state_dict empty_state() {
  state_dict sd;
  sd.set("w", at::zeros({3, 2}, at::kFloat));
  sd.nested("optim").set("step", bytes_value{});
  return sd;
}

/// The step a restored `state_of` was saved at (checks both values agree).
int64_t step_in(state_dict& sd) {
  auto w = std::get<at::Tensor>(*sd.find("w"));
  auto step = std::get<bytes_value>(*sd.find_path({"optim", "step"})).to_int();
  REQUIRE(step);
  CHECK(at::equal(w, at::full({3, 2}, static_cast<double>(*step), at::kFloat)));
  return *step;
}

checkpoint_manager_options solo_options() {
  checkpoint_manager_options o;
  o.checkpointer.no_dist = true;
  return o;
}

std::vector<uint64_t> steps(checkpoint_manager& mgr) {
  auto all = mgr.all_steps();
  REQUIRE(all);
  return *all;
}

void save_steps(checkpoint_manager& mgr, uint64_t first, uint64_t last,
                const std::vector<double>& loss = {}) {
  for (auto s = first; s <= last; ++s) {
    step_metrics m;
    if (!loss.empty())
      m["loss"] = loss.at(s - first);
    auto err = mgr.save(s, state_of(s), m);
    REQUIRE(fs_test::why(err) == "");
  }
}

/// Clears injected faults when a test ends, also on failure.
struct fault_guard {
  ~fault_guard() {
    fault::clear();
  }
};

/// A temporary root, async saves of a world of one, faults cleared at the
/// end.
struct async_fixture {
  async_fixture() {
    o.async = true;
  }
  temp_dir tmp;
  fault_guard faults;
  std::string root = tmp / "root";
  checkpoint_manager_options o = solo_options();
};

/// Runs `rank_main(r, member)` for ranks 0 and 1 of a local process group,
/// each on its own thread, and waits for both.
template <class F>
void run_two_ranks(F rank_main) {
  system_options sopts;
  sopts.scheduler_threads = 2;
  system_config cfg{sopts};
  caf::actor_system sys{cfg};
  auto group = make_local_process_group(sys, 2);
  REQUIRE(group.size() == 2);
  std::thread t0{rank_main, 0, group[0]};
  std::thread t1{rank_main, 1, group[1]};
  t0.join();
  t1.join();
}

} // namespace

TEST_CASE("should_save follows the save interval", "[checkpoint_manager]") {
  temp_dir tmp;
  auto o = solo_options();
  o.save_interval_steps = 3;
  checkpoint_manager mgr{tmp / "root", o};
  CHECK(mgr.should_save(3));
  CHECK(mgr.should_save(300));
  CHECK(!mgr.should_save(1));
  CHECK(!mgr.should_save(301));
  o.save_interval_steps = 0;
  checkpoint_manager never{tmp / "root", o};
  CHECK(!never.should_save(3));
}

TEST_CASE("max_to_keep keeps the newest steps and restore loads latest or any",
          "[checkpoint_manager]") {
  temp_dir tmp;
  auto o = solo_options();
  o.max_to_keep = 2;
  checkpoint_manager mgr{tmp / "root", o};
  auto none = mgr.latest_step();
  REQUIRE(!none);
  CHECK(code_of(none.error()) == errc::not_found);
  auto sd = empty_state();
  auto nothing = mgr.restore(std::nullopt, sd);
  REQUIRE(!nothing);
  CHECK(code_of(nothing.error()) == errc::not_found);
  save_steps(mgr, 1, 6);
  CHECK(steps(mgr) == std::vector<uint64_t>{5, 6});
  CHECK(mgr.latest_step() == 6u);
  CHECK(!fs_test::exists(step_directory(mgr.root(), 4)));
  auto restored = mgr.restore(std::nullopt, sd);
  REQUIRE(restored == 6u);
  CHECK(step_in(sd) == 6);
  REQUIRE(mgr.restore(5u, sd) == 5u);
  CHECK(step_in(sd) == 5);
  auto gone = mgr.restore(4u, sd);
  REQUIRE(!gone);
  CHECK(code_of(gone.error()) == errc::not_found);
  CHECK(fs_test::why(gone).find("step_000000004") != std::string::npos);
}

TEST_CASE("keep_period keeps every N-th step besides max_to_keep",
          "[checkpoint_manager]") {
  temp_dir tmp;
  auto o = solo_options();
  o.max_to_keep = 2;
  o.keep_period = 4;
  checkpoint_manager mgr{tmp / "root", o};
  save_steps(mgr, 1, 10);
  CHECK(steps(mgr) == std::vector<uint64_t>{4, 8, 9, 10});
}

TEST_CASE("best by metric keeps the best steps and the newest",
          "[checkpoint_manager]") {
  temp_dir tmp;
  auto o = solo_options();
  o.max_to_keep = 2;
  o.best_metric = "loss";
  std::vector<double> loss{5, 1, 4, 2, 6, 3}; // steps 1..6
  // Keeps `kept`; the best step `best` has its metrics.
  auto run = [&](best_mode mode, std::vector<uint64_t> kept, uint64_t best) {
    o.mode = mode;
    checkpoint_manager mgr{tmp / "root", o};
    save_steps(mgr, 1, 6, loss);
    CHECK(steps(mgr) == kept);
    auto m = mgr.metrics(best);
    REQUIRE(m);
    CHECK(*m == step_metrics{{"loss", loss.at(best - 1)}});
  };
  SECTION("min") {
    run(best_mode::min, {2, 4, 6}, 2);
  }
  SECTION("max") {
    run(best_mode::max, {1, 5, 6}, 5);
  }
  SECTION("a step without the metric ranks last") {
    checkpoint_manager mgr{tmp / "root", o};
    save_steps(mgr, 1, 2, {1, 2});
    REQUIRE(fs_test::why(mgr.save(3, state_of(3))) == "");
    REQUIRE(fs_test::why(mgr.save(4, state_of(4), {{"loss", 9}})) == "");
    // 1 and 2 are the best two; 4 is the newest; 3 has no loss.
    CHECK(steps(mgr) == std::vector<uint64_t>{1, 2, 4});
  }
}

TEST_CASE_METHOD(async_fixture,
                 "async saves finish in order and wait_until_finished waits "
                 "for all",
                 "[checkpoint_manager]") {
  o.max_to_keep = 2;
  std::mutex mx;
  std::vector<uint64_t> order;
  std::string errors; // (Catch2 checks only on the test's thread)
  o.on_finished = [&](uint64_t step, const caf::error& err) {
    std::lock_guard<std::mutex> guard{mx};
    errors += fs_test::why(err);
    order.push_back(step);
  };
  checkpoint_manager mgr{root, o};
  // Every write of rank 0 sleeps: a save is still writing when `save`
  // returns.
  REQUIRE(fs_test::why(fault::install("io:slow@0:100")) == "");
  save_steps(mgr, 1, 4);
  CHECK(!is_committed(step_directory(mgr.root(), 4)));
  CHECK(fs_test::why(mgr.wait_until_finished()) == "");
  CHECK(is_committed(step_directory(mgr.root(), 4)));
  std::lock_guard<std::mutex> guard{mx};
  CHECK(order == std::vector<uint64_t>{1, 2, 3, 4});
  CHECK(errors == "");
  CHECK(steps(mgr) == std::vector<uint64_t>{3, 4});
}

TEST_CASE_METHOD(async_fixture,
                 "a failed async save leaves the step before it latest also "
                 "after a restart",
                 "[checkpoint_manager]") {
  o.max_to_keep = 3;
  {
    checkpoint_manager mgr{root, o};
    save_steps(mgr, 1, 1);
    REQUIRE(fs_test::why(mgr.wait_until_finished()) == "");
    // The first write of the next save fails.
    REQUIRE(fs_test::why(fault::install("io:eio@0:1")) == "");
    REQUIRE(fs_test::why(mgr.save(2, state_of(2), {{"loss", 0.5}})) == "");
    auto err = mgr.wait_until_finished();
    REQUIRE(err);
    CHECK(describe(err).find("write") != std::string::npos);
    CHECK(mgr.latest_step() == 1u);
    // The errors went to the one call.
    CHECK(fs_test::why(mgr.wait_until_finished()) == "");
  } // the "crash": the manager goes, leaving step 2 uncommitted
  fault::clear();
  CHECK(fs_test::exists(step_directory(root, 2) + "/metrics.json"));
  checkpoint_manager again{root, o};
  CHECK(again.latest_step() == 1u);
  CHECK(steps(again) == std::vector<uint64_t>{1});
  CHECK(!again.metrics(2));
  auto sd = empty_state();
  REQUIRE(again.restore(std::nullopt, sd) == 1u);
  CHECK(step_in(sd) == 1);
  // The next commit's retention removes the leftover of step 2.
  save_steps(again, 3, 3);
  CHECK(fs_test::why(again.wait_until_finished()) == "");
  CHECK(steps(again) == std::vector<uint64_t>{1, 3});
  CHECK(!fs_test::exists(step_directory(root, 2)));
}

TEST_CASE_METHOD(async_fixture,
                 "a failed async save is reported by the next save, naming "
                 "its step",
                 "[checkpoint_manager]") {
  std::vector<std::pair<uint64_t, bool>> heard;
  std::mutex heard_mx;
  o.on_finished = [&](uint64_t step, const caf::error& err) {
    std::lock_guard<std::mutex> guard{heard_mx};
    heard.emplace_back(step, static_cast<bool>(err));
  };
  checkpoint_manager mgr{root, o};
  REQUIRE(fs_test::why(mgr.save(10, state_of(10))) == "");
  REQUIRE(fs_test::why(mgr.wait_until_finished()) == "");
  REQUIRE(fs_test::why(fault::install("io:eio@0:1")) == "");
  REQUIRE(fs_test::why(mgr.save(20, state_of(20))) == "");
  // Step 30's save reports step 20's failure (by the step, not by the
  // checkpointer's count of saves) and goes ahead itself.
  auto err = mgr.save(30, state_of(30));
  REQUIRE(err);
  INFO(describe(err));
  CHECK(describe(err).find("step 20") != std::string::npos);
  CHECK(describe(err).find("step 30") == std::string::npos);
  fault::clear();
  // Reported once: the next report is step 30's own outcome.
  CHECK(fs_test::why(mgr.wait_until_finished()) == "");
  CHECK(mgr.latest_step() == 30u);
  std::lock_guard<std::mutex> guard{heard_mx};
  CHECK(heard
        == std::vector<std::pair<uint64_t, bool>>{{10, false},
                                                  {20, true},
                                                  {30, false}});
}

TEST_CASE_METHOD(async_fixture,
                 "destroying a manager finishes its pending async save",
                 "[checkpoint_manager]") {
  {
    checkpoint_manager mgr{root, o};
    REQUIRE(fs_test::why(fault::install("io:slow@0:100")) == "");
    save_steps(mgr, 1, 2);
    CHECK(!is_committed(step_directory(root, 2)));
  }
  fault::clear();
  checkpoint_manager again{root, o};
  CHECK(again.latest_step() == 2u);
  auto sd = empty_state();
  REQUIRE(again.restore(std::nullopt, sd) == 2u);
  CHECK(step_in(sd) == 2);
}

TEST_CASE("save refuses steps not newer than the last one",
          "[checkpoint_manager]") {
  temp_dir tmp;
  auto root = tmp / "root";
  auto o = solo_options();
  {
    checkpoint_manager mgr{root, o};
    save_steps(mgr, 5, 5);
    auto err = mgr.save(5, state_of(5));
    REQUIRE(err);
    CHECK(code_of(err) == errc::invalid_argument);
    CHECK(describe(err).find("step 5") != std::string::npos);
    CHECK(mgr.save(3, state_of(3)));
  }
  // A new manager knows the root's newest committed step.
  checkpoint_manager again{root, o};
  auto err = again.save(4, state_of(4));
  REQUIRE(err);
  CHECK(describe(err).find("newest committed step 5") != std::string::npos);
  CHECK(!fs_test::exists(step_directory(root, 4)));
  save_steps(again, 6, 6);
  CHECK(steps(again) == std::vector<uint64_t>{5, 6});
}

TEST_CASE("two ranks save a sharded tensor and only the coordinator prunes "
          "and writes metrics",
          "[checkpoint_manager]") {
  temp_dir tmp;
  auto root = tmp / "root";
  std::vector<std::string> errors(2);
  std::vector<int64_t> restored(2, -1);
  run_two_ranks([&](int32_t r, process_group_ptr member) {
    auto fail = [&](const std::string& what) { errors[r] = what; };
    checkpoint_manager_options o;
    o.checkpointer.process_group = member;
    o.checkpointer.coordinator_rank = 1;
    o.max_to_keep = 1;
    o.async = r == 0; // the mode is per rank; the saves are collective
    checkpoint_manager mgr{root, o};
    auto rows = [&](uint64_t step) {
      state_dict sd;
      sd.set("emb", sharded_tensor{{4, 2},
                                   {{at::full({2, 2}, double(step * 10 + r)),
                                     {2 * r, 0}}}});
      sd.set("fc", at::full({2}, double(step)));
      return sd;
    };
    for (uint64_t step = 1; step <= 3; ++step)
      if (auto err = mgr.save(step, rows(step), {{"loss", 1.0 / step}}))
        return fail("save: " + describe(err));
    if (auto err = mgr.wait_until_finished())
      return fail("wait: " + describe(err));
    auto sd = rows(0);
    auto step = mgr.restore(std::nullopt, sd);
    if (!step)
      return fail("restore: " + describe(step.error()));
    auto& emb = std::get<sharded_tensor>(*sd.find("emb"));
    if (!at::equal(emb.local_shards[0].tensor, at::full({2, 2}, 30.0 + r))
        || !at::equal(std::get<at::Tensor>(*sd.find("fc")), at::full({2}, 3.0)))
      return fail("restored values differ");
    restored[r] = static_cast<int64_t>(*step);
  });
  CHECK(errors[0] == "");
  CHECK(errors[1] == "");
  CHECK(restored == std::vector<int64_t>{3, 3});
  auto all = committed_steps(root);
  REQUIRE(all);
  CHECK(*all == std::vector<uint64_t>{3});
  CHECK(fs_test::read_file(step_directory(root, 3) + "/metrics.json")
          .find("\"loss\"")
        != std::string::npos);
}

TEST_CASE("ranks that restore different explicit steps fail on every rank",
          "[checkpoint_manager]") {
  // Each rank names another step (here: in another root; in a job, a
  // caller's mistake): the load compares the ranks' `.metadata` and refuses,
  // naming them, instead of loading mixed state.
  temp_dir tmp;
  std::vector<std::string> roots{tmp / "a", tmp / "b"};
  for (uint64_t r = 0; r < 2; ++r) {
    checkpoint_manager mgr{roots[r], solo_options()};
    save_steps(mgr, 7 + r, 7 + r);
  }
  std::vector<std::string> errors(2);
  run_two_ranks([&](int32_t r, process_group_ptr member) {
    checkpoint_manager_options o;
    o.checkpointer.process_group = member;
    o.checkpointer.step_timeout = std::chrono::seconds(30);
    checkpoint_manager mgr{roots[r], o};
    auto sd = empty_state();
    auto step = mgr.restore(7u + r, sd);
    errors[r] = step ? "restored step " + std::to_string(*step)
                     : describe(step.error());
  });
  for (const auto& err : errors) {
    CHECK(err.find("checkpoint_failed") != std::string::npos);
    CHECK(err.find("read different checkpoints") != std::string::npos);
  }
}

TEST_CASE("a rank that lacks an explicit step fails the restore on every "
          "rank, fast",
          "[checkpoint_manager]") {
  temp_dir tmp;
  std::vector<std::string> roots{tmp / "a", tmp / "b"};
  {
    checkpoint_manager mgr{roots[0], solo_options()};
    save_steps(mgr, 1, 2);
  }
  std::filesystem::copy(roots[0], roots[1],
                        std::filesystem::copy_options::recursive);
  std::filesystem::remove(step_directory(roots[1], 2) + "/.metadata");
  std::vector<std::string> errors(2);
  std::vector<double> seconds(2, 0);
  run_two_ranks([&](int32_t r, process_group_ptr member) {
    checkpoint_manager_options o;
    o.checkpointer.process_group = member;
    o.checkpointer.step_timeout = std::chrono::seconds(20);
    checkpoint_manager mgr{roots[r], o};
    auto sd = empty_state();
    auto t0 = std::chrono::steady_clock::now();
    auto step = mgr.restore(2u, sd);
    seconds[r] = std::chrono::duration<double>(std::chrono::steady_clock::now()
                                               - t0)
                   .count();
    errors[r] = step ? "restored step " + std::to_string(*step)
                     : describe(step.error());
  });
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r << ": " << errors[r]);
    CHECK(errors[r].find("restore step 2") != std::string::npos);
    CHECK(seconds[r] < 5);
  }
  // Rank 0 learns which rank failed.
  CHECK(errors[0].find("rank 1") != std::string::npos);
  CHECK(errors[1].find("not_found") != std::string::npos);
}

namespace {

/// What one rank got from the agreement and the restore of the latest step.
struct agreed_view {
  std::string steps;    // "1,2" or the error
  std::string latest;   // "2" or the error
  std::string restored; // "2 (state of step 2)" or the error
  double seconds = 0;   // the three calls
};

std::string join(const std::vector<uint64_t>& xs) {
  std::string out;
  for (auto x : xs)
    out += (out.empty() ? "" : ",") + std::to_string(x);
  return out;
}

/// Ranks 0 and 1 over `roots[r]` (step timeout 20 s): agreed_steps,
/// agreed_latest_step and restore(latest), timed.
std::vector<agreed_view>
agree_two_ranks(const std::vector<std::string>& roots) {
  std::vector<agreed_view> out(2);
  run_two_ranks([&](int32_t r, process_group_ptr member) {
    checkpoint_manager_options o;
    o.checkpointer.process_group = member;
    o.checkpointer.step_timeout = std::chrono::seconds(20);
    checkpoint_manager mgr{roots[r], o};
    auto& v = out[r];
    auto t0 = std::chrono::steady_clock::now();
    auto all = mgr.agreed_steps();
    v.steps = all ? join(*all) : describe(all.error());
    auto latest = mgr.agreed_latest_step();
    v.latest = latest ? std::to_string(*latest) : describe(latest.error());
    auto sd = empty_state();
    auto step = mgr.restore(std::nullopt, sd);
    if (step) {
      auto in
        = std::get<bytes_value>(*sd.find_path({"optim", "step"})).to_int();
      v.restored = std::to_string(*step) + " (state of step "
                   + (in ? std::to_string(*in) : "?") + ")";
    } else {
      v.restored = describe(step.error());
    }
    v.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now()
                                              - t0)
                  .count();
  });
  return out;
}

/// Saves steps `steps` into `root` as a world of one.
void save_into(const std::string& root, const std::vector<uint64_t>& steps) {
  checkpoint_manager mgr{root, solo_options()};
  for (auto s : steps)
    REQUIRE(fs_test::why(mgr.save(s, state_of(s))) == "");
}

/// The mean time of one rank's agreements, or its error.
struct agreement_cost {
  double ms = 0;
  std::string error;
};

/// `rounds` agreements of the member `member` over `root`, each of which
/// must agree on step 2.
agreement_cost time_agreements(const std::string& root,
                               process_group_ptr member, int rounds) {
  checkpoint_manager_options o;
  o.checkpointer.process_group = std::move(member);
  o.checkpointer.step_timeout = std::chrono::seconds(20);
  checkpoint_manager mgr{root, o};
  agreement_cost out;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < rounds; ++i)
    if (auto latest = mgr.agreed_latest_step(); latest != 2u) {
      out.error = latest ? "agreed on " + std::to_string(*latest)
                         : describe(latest.error());
      return out;
    }
  out.ms = std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now() - t0)
             .count()
           / rounds;
  return out;
}

void check_costs(const std::vector<agreement_cost>& costs, double bound_ms) {
  for (size_t r = 0; r < costs.size(); ++r) {
    INFO("rank " << r << ": " << costs[r].ms << " ms per agreement");
    CHECK(costs[r].error == "");
    CHECK(costs[r].ms < bound_ms);
  }
}

} // namespace

TEST_CASE("ranks that see the same steps agree on them",
          "[checkpoint_manager]") {
  temp_dir tmp;
  auto root = tmp / "root";
  save_into(root, {2, 4, 6});
  auto v = agree_two_ranks({root, root});
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r);
    CHECK(v[r].steps == "2,4,6");
    CHECK(v[r].latest == "6");
    CHECK(v[r].restored == "6 (state of step 6)");
    CHECK(v[r].seconds < 5);
  }
}

TEST_CASE("a rank that misses the newest step makes all ranks agree on the "
          "older one, fast",
          "[checkpoint_manager]") {
  // Rank 1's root, a copy of rank 0's (the same checkpoint files, as one
  // shared root would give), lacks step 3 (a lost commit, a stale cache):
  // the newest step every rank sees is 2, and both restore it within a
  // fraction of the step timeout (20 s), not at its end.
  temp_dir tmp;
  std::vector<std::string> roots{tmp / "a", tmp / "b"};
  save_into(roots[0], {1, 2, 3});
  std::filesystem::copy(roots[0], roots[1],
                        std::filesystem::copy_options::recursive);
  SECTION("its .metadata is gone") {
    std::filesystem::remove(step_directory(roots[1], 3) + "/.metadata");
  }
  SECTION("its directory is gone") {
    std::filesystem::remove_all(step_directory(roots[1], 3));
  }
  REQUIRE(committed_steps(roots[1]) == std::vector<uint64_t>{1, 2});
  auto v = agree_two_ranks(roots);
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r);
    CHECK(v[r].steps == "1,2");
    CHECK(v[r].latest == "2");
    CHECK(v[r].restored == "2 (state of step 2)");
    CHECK(v[r].seconds < 5);
  }
}

TEST_CASE("a rank that sees no step makes all ranks agree on none, fast",
          "[checkpoint_manager]") {
  temp_dir tmp;
  std::vector<std::string> roots{tmp / "a", tmp / "b"};
  save_into(roots[1], {4, 5});
  SECTION("rank 0 sees none") {}
  SECTION("the ranks see disjoint steps") {
    save_into(roots[0], {3});
  }
  auto v = agree_two_ranks(roots);
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r);
    CHECK(v[r].steps == "");
    for (const auto& err : {v[r].latest, v[r].restored}) {
      CHECK(err.find("not_found") != std::string::npos);
      CHECK(err.find("no step is committed on every rank")
            != std::string::npos);
      CHECK(err.find("rank 1: step 5") != std::string::npos);
    }
    CHECK(v[r].seconds < 5);
  }
}

TEST_CASE("a rank that cannot list its root fails the agreement on every "
          "rank, fast",
          "[checkpoint_manager]") {
  temp_dir tmp;
  std::vector<std::string> roots{tmp / "a", tmp / "b"};
  save_into(roots[0], {1});
  fs_test::write_file(roots[1], "not a directory");
  auto v = agree_two_ranks(roots);
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r);
    for (const auto& err : {v[r].steps, v[r].latest, v[r].restored}) {
      CHECK(err.find("could not list their steps: rank 1")
            != std::string::npos);
      CHECK(err.find(roots[1]) != std::string::npos);
    }
    CHECK(v[r].seconds < 5);
  }
}

TEST_CASE("an agreement of two ranks costs about one load of nothing",
          "[checkpoint_manager]") {
  temp_dir tmp;
  auto root = tmp / "root";
  save_into(root, {1, 2});
  std::vector<agreement_cost> costs(2);
  run_two_ranks([&](int32_t r, process_group_ptr member) {
    costs[r] = time_agreements(root, std::move(member), 50);
  });
  check_costs(costs, 50);
}

TEST_CASE("an agreement of two ranks over ZeroMQ costs about one load of "
          "nothing",
          "[checkpoint_manager][zmq]") {
  // Two actor systems in this process joined by the ZeroMQ transport (real
  // sockets on loopback), as two processes would be.
  temp_dir tmp;
  std::vector<std::string> roots{tmp / "a", tmp / "b"};
  save_into(roots[0], {1, 2, 3});
  save_into(roots[1], {1, 2});
  system_options sopts;
  sopts.scheduler_threads = 2;
  system_config cfg0{sopts};
  system_config cfg1{sopts};
  caf::actor_system sys0{cfg0};
  caf::actor_system sys1{cfg1};
  auto port = test::free_port();
  REQUIRE(port != 0);
  auto env_of = [port](int32_t rank) {
    launch_env env;
    env.rank = rank;
    env.world_size = 2;
    env.master_port = port;
    env.secret = "manager-test-secret";
    env.job_id = "manager-test";
    return env;
  };
  zmq_options zo;
  zo.drain_timeout = std::chrono::seconds(2);
  zo.connect_timeout = std::chrono::seconds(10);
  auto hub = make_zmq_process_group(sys0, env_of(0), zo);
  REQUIRE(hub);
  auto spoke = make_zmq_process_group(sys1, env_of(1), zo);
  REQUIRE(spoke);
  std::vector<process_group_ptr> members{*hub, *spoke};
  std::vector<agreement_cost> costs(2);
  auto rank_main = [&](int32_t r) {
    costs[r] = time_agreements(roots[r], members[r], 20);
  };
  std::thread t0{rank_main, 0};
  std::thread t1{rank_main, 1};
  t0.join();
  t1.join();
  members.clear();
  spoke->reset();
  hub->reset();
  check_costs(costs, 100);
}

TEST_CASE("a world of one agrees locally", "[checkpoint_manager]") {
  temp_dir tmp;
  checkpoint_manager mgr{tmp / "root", solo_options()};
  auto none = mgr.agreed_latest_step();
  REQUIRE(!none);
  CHECK(code_of(none.error()) == errc::not_found);
  CHECK(mgr.agreed_steps() == std::vector<uint64_t>{});
  save_steps(mgr, 1, 3);
  CHECK(mgr.agreed_steps() == std::vector<uint64_t>{1, 2, 3});
  CHECK(mgr.agreed_latest_step() == 3u);
}
