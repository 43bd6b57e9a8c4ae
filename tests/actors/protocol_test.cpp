// The coordinator <-> rank protocol on CAF's deterministic scheduler
// (scheduler.policy = testing): nothing runs until the test calls run(),
// deadlines fire on virtual time. Storage and data are fakes
// (tests/actors/fakes.hpp); planning is the default planner.

#include "actors/coordinator.hpp"
#include "actors/process_group.hpp"
#include "actors/rank_agent.hpp"
#include "actors/system.hpp"
#include "tests/actors/failure_util.hpp"
#include "tests/actors/fakes.hpp"

#include <caf/all.hpp>

#include <catch2/catch.hpp>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace dcpp;
using namespace dcpp::test;
using namespace std::chrono_literals;

namespace {

struct deterministic_fixture {
  system_config cfg{system_options{0, true}};
  caf::actor_system sys{cfg};
  caf::scheduler::test_coordinator& sched;

  deterministic_fixture()
    : sched(dynamic_cast<caf::scheduler::test_coordinator&>(sys.scheduler())) {
    // nop
  }

  ~deterministic_fixture() {
    sched.run();
  }

  std::vector<process_group_ptr> group(int32_t n) {
    process_group_options opts;
    opts.agent.detached_io = false; // keep every actor on the test scheduler
    return make_local_process_group(sys, n, opts);
  }

  template <class Handle, class Stats>
  Stats stats_of(Handle hdl) {
    auto out = std::make_shared<Stats>();
    sys.spawn([=](caf::event_based_actor* self) {
      self
        ->request(hdl, std::chrono::seconds(3600), caf::get_atom::value,
                  stats_atom::value)
        .then([=](Stats& s) { *out = s; }, [](caf::error&) {});
    });
    sched.run();
    return *out;
  }

  coordinator_stats stats(const coordinator_actor& hdl) {
    return stats_of<coordinator_actor, coordinator_stats>(hdl);
  }

  agent_stats stats(const rank_agent_actor& hdl) {
    return stats_of<rank_agent_actor, agent_stats>(hdl);
  }
};

std::vector<reply_ptr>
save_on(deterministic_fixture& fx, const std::vector<process_group_ptr>& grp,
        std::shared_ptr<fake_store> store, int32_t coordinator,
        std::map<int32_t, fault> faults = {}, std::vector<int32_t> ranks = {}) {
  auto n = static_cast<int32_t>(grp.size());
  if (ranks.empty())
    for (int32_t r = 0; r < n; ++r)
      ranks.push_back(r);
  std::vector<reply_ptr> out(static_cast<size_t>(n));
  for (auto r : ranks)
    out[r] = call_agent(fx.sys, grp[r]->agent(), save_atom::value,
                        fake_save_job(store, r, n, coordinator, faults[r]));
  return out;
}

std::vector<reply_ptr>
load_on(deterministic_fixture& fx, const std::vector<process_group_ptr>& grp,
        std::shared_ptr<fake_store> store, int32_t coordinator,
        std::map<int32_t, fault> faults = {}) {
  auto n = static_cast<int32_t>(grp.size());
  std::vector<reply_ptr> out;
  for (int32_t r = 0; r < n; ++r)
    out.push_back(
      call_agent(fx.sys, grp[r]->agent(), load_atom::value,
                 fake_load_job(store, r, n, coordinator, faults[r])));
  return out;
}

/// Every reply is the same checkpoint_failed error of `step`, naming exactly
/// `ranks`; returns the parsed failure.
failure_text require_failed(const std::vector<reply_ptr>& replies,
                            const std::string& step,
                            const std::vector<int32_t>& ranks) {
  REQUIRE(!replies.empty());
  std::string first;
  for (size_t r = 0; r < replies.size(); ++r) {
    INFO("rank " << r);
    REQUIRE(replies[r]);
    REQUIRE(replies[r]->done);
    REQUIRE(replies[r]->error);
    CHECK(code_of(replies[r]->error) == errc::checkpoint_failed);
    auto text = describe(replies[r]->error);
    if (r == 0)
      first = text;
    else
      CHECK(text == first); // one error, the same on every rank
  }
  auto parsed = failure_text_of(replies[0]->error);
  REQUIRE(parsed);
  CHECK(parsed->step == step);
  std::vector<int32_t> got;
  for (auto& [rank, text] : parsed->failures)
    got.push_back(rank);
  CHECK(got == ranks);
  return *parsed;
}

} // namespace

TEST_CASE_METHOD(deterministic_fixture,
                 "save and load commit on every rank with coordinator rank 2",
                 "[protocol]") {
  auto grp = group(4);
  auto store = std::make_shared<fake_store>();
  auto saves = save_on(*this, grp, store, 2);
  sched.run();
  for (int32_t r = 0; r < 4; ++r) {
    INFO("rank " << r);
    REQUIRE(saves[r]->done);
    REQUIRE_FALSE(saves[r]->error);
    CHECK((saves[r]->md == saves[0]->md));
  }
  CHECK(store->finish_calls == 1);
  CHECK(store->abort_calls == 0);
  // io_threads = 2: each rank wrote its plan in two parts, in parallel.
  CHECK(store->write_calls == 8);
  REQUIRE(store->has_committed);
  const auto& md = saves[0]->md;
  CHECK(md.state_dict_metadata.size() == 3);
  CHECK(md.state_dict_metadata.at("w").tensor.chunks.size() == 4);
  // 4 row chunks of "w", one "b" (replicated, deduplicated), one "step".
  CHECK(md.storage_data.size() == 6);
  CHECK((store->committed.state_dict_metadata == md.state_dict_metadata));
  auto cs = stats(grp[2]->coordinator());
  CHECK(cs.ops_committed == 1);
  CHECK(cs.ops_failed == 0);
  CHECK(cs.open_ops == 0);
  CHECK(stats(grp[0]->coordinator()).ops_committed == 0);
  // Load it back, coordinated by rank 3 this time.
  auto loads = load_on(*this, grp, store, 3);
  sched.run();
  for (int32_t r = 0; r < 4; ++r) {
    INFO("rank " << r);
    REQUIRE(loads[r]->done);
    REQUIRE_FALSE(loads[r]->error);
    CHECK((loads[r]->md.state_dict_metadata == md.state_dict_metadata));
  }
  CHECK(store->read_calls > 0);
  CHECK(stats(grp[3]->coordinator()).ops_committed == 1);
  for (int32_t r = 0; r < 4; ++r)
    CHECK(stats(grp[r]->agent()).ops_done == 2);
}

TEST_CASE_METHOD(deterministic_fixture,
                 "a rank that errors in any step fails the save everywhere",
                 "[protocol]") {
  auto grp = group(4);
  auto store = std::make_shared<fake_store>();
  struct scenario {
    const char* where;
    int32_t rank;
    const char* step;
    const char* context;
  };
  // Coordinator rank 1.
  auto s = GENERATE(scenario{"set_up", 3, "plan", "set_up"},
                    scenario{"prepare_local", 0, "plan", "prepare_local_plan"},
                    scenario{"prepare_global", 1, "plan",
                             "prepare_global_plan"},
                    scenario{"write", 2, "write", "write_data"},
                    scenario{"finish", 1, "commit", "finish"});
  INFO("fault at " << s.where << " on rank " << s.rank);
  auto replies = save_on(*this, grp, store, 1, {{s.rank, fault{s.where}}});
  sched.run();
  auto failure = require_failed(replies, s.step, {s.rank});
  CHECK(failure.op == "save 1");
  auto text = failure.failures.at(s.rank);
  CHECK(text.find("injected") != std::string::npos);
  CHECK(text.find(s.context) != std::string::npos);
  // No commit record, and every rank dropped what it wrote.
  CHECK_FALSE(store->has_committed);
  CHECK(store->abort_calls == 4);
  if (std::string{s.where} != "finish")
    CHECK(store->finish_calls == 0);
  auto cs = stats(grp[1]->coordinator());
  CHECK(cs.ops_failed == 1);
  CHECK(cs.open_ops == 0);
}

TEST_CASE_METHOD(deterministic_fixture,
                 "a planner that fails on one rank fails the save everywhere",
                 "[protocol]") {
  auto grp = group(3);
  auto store = std::make_shared<fake_store>();
  std::vector<reply_ptr> replies;
  for (int32_t r = 0; r < 3; ++r) {
    auto job = fake_save_job(store, r, 3, 0);
    if (r == 2)
      job.planner = std::make_shared<failing_save_planner>();
    replies.push_back(call_agent(sys, grp[r]->agent(), save_atom::value, job));
  }
  sched.run();
  auto failure = require_failed(replies, "plan", {2});
  CHECK(failure.failures.at(2).find("create_local_plan") != std::string::npos);
  CHECK(store->finish_calls == 0);
}

TEST_CASE_METHOD(deterministic_fixture,
                 "a rank that errors while loading fails the load everywhere",
                 "[protocol]") {
  auto grp = group(3);
  auto store = std::make_shared<fake_store>();
  auto saves = save_on(*this, grp, store, 0);
  sched.run();
  REQUIRE(saves[0]->done);
  REQUIRE_FALSE(saves[0]->error);
  SECTION("read_metadata") {
    auto replies = load_on(*this, grp, store, 2, {{1, fault{"read_metadata"}}});
    sched.run();
    require_failed(replies, "plan", {1});
  }
  SECTION("read_data") {
    auto replies = load_on(*this, grp, store, 2, {{0, fault{"read"}}});
    sched.run();
    auto failure = require_failed(replies, "read", {0});
    CHECK(failure.failures.at(0).find("read_data") != std::string::npos);
  }
  SECTION("nothing committed") {
    auto empty = std::make_shared<fake_store>();
    auto replies = load_on(*this, grp, empty, 0);
    sched.run();
    auto failure = require_failed(replies, "plan", {0, 1, 2});
    CHECK(failure.failures.at(1).find("not_found") != std::string::npos);
  }
}

TEST_CASE_METHOD(deterministic_fixture,
                 "a missing local plan times out; the late rank gets the same "
                 "error and its late plan is ignored",
                 "[protocol]") {
  auto grp = group(3);
  auto store = std::make_shared<fake_store>();
  // Rank 2 does not call save (yet).
  auto replies = save_on(*this, grp, store, 0, {}, {0, 1});
  sched.run();
  CHECK_FALSE(replies[0]->done);
  CHECK_FALSE(replies[1]->done);
  sched.advance_time(999ms);
  sched.run();
  CHECK_FALSE(replies[0]->done);
  sched.advance_time(1ms); // the step timeout is 1 s
  sched.run();
  REQUIRE(replies[0]->done);
  REQUIRE(replies[1]->done);
  auto failure = require_failed({replies[0], replies[1]}, "plan", {2});
  CHECK(failure.failures.at(2).find("dcpp::timeout") != std::string::npos);
  CHECK(failure.failures.at(2).find("rank 2 sent no local plan")
        != std::string::npos);
  CHECK(store->abort_calls == 2);
  // Rank 2 arrives late: it ends at once with the error the others got.
  auto late = call_agent(sys, grp[2]->agent(), save_atom::value,
                         fake_save_job(store, 2, 3, 0));
  sched.run();
  REQUIRE(late->done);
  CHECK(describe(late->error) == describe(replies[0]->error));
  // A local plan of the ended save, arriving now, changes nothing.
  local_save_plan_msg stale;
  stale.hdr.op = op_id{op_kind::save, 1};
  stale.hdr.from = 2;
  stale.hdr.to = 0;
  stale.step_timeout_ms = 1000;
  caf::anon_send(grp[0]->coordinator(), stale);
  sched.run();
  auto cs = stats(grp[0]->coordinator());
  CHECK(cs.stale == 1);
  CHECK(cs.open_ops == 0);
  CHECK(cs.ops_failed == 1);
  // The group recovers: the next save commits on every rank.
  auto next = save_on(*this, grp, store, 0);
  sched.run();
  for (auto& rep : next) {
    REQUIRE(rep->done);
    CHECK_FALSE(rep->error);
  }
  CHECK(store->finish_calls == 1);
}

TEST_CASE_METHOD(deterministic_fixture,
                 "a rank that stops fails the save with rank_lost",
                 "[protocol]") {
  auto grp = group(3);
  auto store = std::make_shared<fake_store>();
  auto replies = save_on(*this, grp, store, 1, {}, {0, 1});
  sched.run();
  caf::anon_send_exit(grp[2]->agent(), caf::exit_reason::kill);
  sched.run();
  auto failure = require_failed({replies[0], replies[1]}, "plan", {2});
  CHECK(failure.failures.at(2).find("rank_lost") != std::string::npos);
  // Later operations fail at once instead of waiting for rank 2.
  auto again = save_on(*this, grp, store, 1, {}, {0, 1});
  sched.run();
  require_failed({again[0], again[1]}, "plan", {2});
}

TEST_CASE_METHOD(deterministic_fixture,
                 "an agent whose coordinator stops fails with rank_lost",
                 "[protocol]") {
  auto grp = group(2);
  auto store = std::make_shared<fake_store>();
  caf::anon_send_exit(grp[1]->coordinator(), caf::exit_reason::kill);
  sched.run();
  auto replies = save_on(*this, grp, store, 1);
  sched.run();
  for (auto& rep : replies) {
    REQUIRE(rep->done);
    CHECK(code_of(rep->error) == errc::rank_lost);
    CHECK(describe(rep->error).find("coordinator (rank 1)")
          != std::string::npos);
  }
}

TEST_CASE_METHOD(deterministic_fixture,
                 "an agent gives up on a coordinator that stays silent",
                 "[protocol]") {
  // Coordinator rank 0's actor is replaced by one that ignores everything.
  auto peers = std::make_shared<peer_table>();
  auto mute = sys.spawn(
    [](coordinator_actor::pointer) -> coordinator_actor::behavior_type {
      return {
        [](local_save_plan_msg&) {},
        [](global_save_step_done_msg&) {},
        [](write_done_msg&) {},
        [](commit_done_msg&) {},
        [](local_load_plan_msg&) {},
        [](global_load_step_done_msg&) {},
        [](read_done_msg&) {},
        [](deadline_atom, uint64_t, uint64_t) {},
        [](caf::get_atom, stats_atom) { return coordinator_stats{}; },
      };
    });
  rank_agent_options opts;
  opts.detached_io = false;
  auto agent = spawn_rank_agent(sys, 0, peers, opts);
  peers->coordinators.push_back(mute);
  peers->ranks.push_back(agent);
  auto store = std::make_shared<fake_store>();
  auto reply = call_agent(sys, agent, save_atom::value,
                          fake_save_job(store, 0, 1, 0));
  sched.run();
  CHECK_FALSE(reply->done);
  sched.advance_time(3s); // three step timeouts
  sched.run();
  REQUIRE(reply->done);
  CHECK(code_of(reply->error) == errc::timeout);
  CHECK(describe(reply->error).find("no answer from the coordinator (rank 0)")
        != std::string::npos);
  CHECK(store->abort_calls == 1);
  caf::anon_send_exit(agent, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(mute, caf::exit_reason::user_shutdown);
}

// -- the coordinator alone, driven message by message -------------------------

namespace {

/// A rank endpoint that records what the coordinator sends it.
struct recorded {
  int32_t rank;
  caf::message msg;
};

using record_log = std::shared_ptr<std::vector<recorded>>;

rank_endpoint_actor::behavior_type
recording_rank(rank_endpoint_actor::pointer, int32_t rank, record_log log) {
  auto rec = [=](caf::message msg) { log->push_back({rank, std::move(msg)}); };
  return {
    [=](global_save_step_msg& m) { rec(caf::make_message(m)); },
    [=](central_save_plan_msg& m) { rec(caf::make_message(m)); },
    [=](commit_msg& m) { rec(caf::make_message(m)); },
    [=](global_load_step_msg& m) { rec(caf::make_message(m)); },
    [=](central_load_plan_msg& m) { rec(caf::make_message(m)); },
    [=](op_outcome_msg& m) { rec(caf::make_message(m)); },
  };
}

struct coordinator_fixture : deterministic_fixture {
  peer_table_ptr peers = std::make_shared<peer_table>();
  record_log log = std::make_shared<std::vector<recorded>>();
  coordinator_actor coord;

  coordinator_fixture() {
    coord = spawn_coordinator(sys, 0, peers);
    peers->coordinators.push_back(coord);
    for (int32_t r = 0; r < 2; ++r)
      peers->ranks.push_back(sys.spawn(recording_rank, r, log));
  }

  ~coordinator_fixture() {
    caf::anon_send_exit(coord, caf::exit_reason::user_shutdown);
    for (auto& r : peers->ranks)
      caf::anon_send_exit(r, caf::exit_reason::user_shutdown);
  }

  static envelope hdr(uint64_t seq, int32_t from, op_kind k = op_kind::save) {
    envelope e;
    e.op = op_id{k, seq};
    e.from = from;
    e.to = 0;
    return e;
  }

  void plan(uint64_t seq, int32_t from, uint32_t version = protocol_version) {
    local_save_plan_msg m;
    m.hdr = hdr(seq, from);
    m.hdr.version = version;
    m.step_timeout_ms = 1000;
    m.plan.storage_data = "from " + std::to_string(from);
    caf::anon_send(coord, m);
  }

  void global_done(uint64_t seq) {
    global_save_step_done_msg m;
    m.hdr = hdr(seq, 0);
    m.global.plans.resize(2);
    m.global.md.version = "test";
    caf::anon_send(coord, m);
  }

  void written(uint64_t seq, int32_t from) {
    write_done_msg m;
    m.hdr = hdr(seq, from);
    write_result res;
    res.index = metadata_index{"k" + std::to_string(from)};
    m.results.push_back(res);
    caf::anon_send(coord, m);
  }

  void committed(uint64_t seq) {
    caf::anon_send(coord, commit_done_msg{hdr(seq, 0), caf::error{}});
  }

  /// Takes what was recorded since the last call.
  std::vector<recorded> take() {
    sched.run();
    auto out = std::move(*log);
    log->clear();
    return out;
  }

  template <class T>
  static std::vector<T> all_of(const std::vector<recorded>& xs) {
    std::vector<T> out;
    for (auto& x : xs)
      if (x.msg.match_elements<T>())
        out.push_back(x.msg.get_as<T>(0));
    return out;
  }
};

} // namespace

TEST_CASE_METHOD(coordinator_fixture,
                 "duplicates and messages of an earlier save are ignored",
                 "[protocol]") {
  // -- save 1, with a duplicate in every step --------------------------------
  plan(1, 0);
  plan(1, 1);
  plan(1, 1); // duplicate
  auto got = take();
  REQUIRE(got.size() == 1);
  CHECK(got[0].rank == 0);
  auto steps = all_of<global_save_step_msg>(got);
  REQUIRE(steps.size() == 1);
  CHECK(steps[0].plans->at(1).storage_data == "from 1");
  global_done(1);
  global_done(1); // duplicate
  got = take();
  auto central = all_of<central_save_plan_msg>(got);
  REQUIRE(central.size() == 2);
  CHECK(central[0].hdr.to != central[1].hdr.to);
  written(1, 1);
  written(1, 1); // duplicate
  written(1, 0);
  got = take();
  auto commits = all_of<commit_msg>(got);
  REQUIRE(commits.size() == 1);
  CHECK(commits[0].md.storage_data.size() == 2);
  CHECK(commits[0].results.size() == 2);
  committed(1);
  committed(1); // duplicate, after the end: stale
  got = take();
  auto outcomes = all_of<op_outcome_msg>(got);
  REQUIRE(outcomes.size() == 2);
  for (auto& o : outcomes) {
    CHECK_FALSE(o.error);
    CHECK(o.md->version == "test");
    CHECK(o.hdr.op == (op_id{op_kind::save, 1}));
  }
  // -- save 2, with messages of save 1 arriving in between -------------------
  plan(2, 0);
  written(1, 0); // earlier save
  plan(1, 1);    // earlier save
  plan(2, 1);
  got = take();
  REQUIRE(all_of<global_save_step_msg>(got).size() == 1);
  global_done(2);
  written(2, 0);
  written(2, 1);
  committed(2);
  got = take();
  outcomes = all_of<op_outcome_msg>(got);
  REQUIRE(outcomes.size() == 2);
  CHECK_FALSE(outcomes[0].error);
  auto cs = stats(coord);
  CHECK(cs.ops_committed == 2);
  CHECK(cs.duplicates == 3);
  CHECK(cs.stale == 3);
  CHECK(cs.open_ops == 0);
}

TEST_CASE_METHOD(coordinator_fixture,
                 "a rank speaking another protocol version fails the save",
                 "[protocol]") {
  plan(1, 0);
  plan(1, 1, protocol_version + 1);
  auto outcomes = all_of<op_outcome_msg>(take());
  REQUIRE(outcomes.size() == 2);
  auto failure = failure_text_of(outcomes[0].error);
  REQUIRE(failure);
  CHECK(failure->step == "plan");
  REQUIRE(failure->failures.count(1) == 1);
  CHECK(failure->failures.at(1).find("protocol version") != std::string::npos);
  // Misaddressed messages are rejected outright.
  local_save_plan_msg wrong;
  wrong.hdr = hdr(2, 1);
  wrong.hdr.to = 1;
  wrong.step_timeout_ms = 1000;
  caf::anon_send(coord, wrong);
  local_save_plan_msg out_of_range;
  out_of_range.hdr = hdr(2, 7);
  out_of_range.step_timeout_ms = 1000;
  caf::anon_send(coord, out_of_range);
  CHECK(take().empty());
  auto cs = stats(coord);
  CHECK(cs.rejected == 3);
  CHECK(cs.open_ops == 0);
}

TEST_CASE_METHOD(coordinator_fixture,
                 "a rank that misses the write deadline is named",
                 "[protocol]") {
  plan(1, 0);
  plan(1, 1);
  take();
  global_done(1);
  take();
  written(1, 0);
  CHECK(take().empty());
  sched.advance_time(1s);
  auto outcomes = all_of<op_outcome_msg>(take());
  REQUIRE(outcomes.size() == 2);
  auto failure = failure_text_of(outcomes[1].error);
  REQUIRE(failure);
  CHECK(failure->step == "write");
  REQUIRE(failure->failures.size() == 1);
  CHECK(failure->failures.at(1).find("sent no write result within 1000 ms")
        != std::string::npos);
  // Its write result, arriving late, is stale.
  written(1, 1);
  CHECK(take().empty());
  CHECK(stats(coord).stale == 1);
}

TEST_CASE_METHOD(coordinator_fixture,
                 "a coordinator whose own rank never commits times out",
                 "[protocol]") {
  plan(1, 0);
  plan(1, 1);
  take();
  global_done(1);
  take();
  written(1, 0);
  written(1, 1);
  REQUIRE(all_of<commit_msg>(take()).size() == 1);
  sched.advance_time(1s);
  CHECK(take().empty()); // two step timeouts for the commit
  sched.advance_time(1s);
  auto outcomes = all_of<op_outcome_msg>(take());
  REQUIRE(outcomes.size() == 2);
  auto failure = failure_text_of(outcomes[0].error);
  REQUIRE(failure);
  CHECK(failure->step == "commit");
  CHECK(failure->failures.at(0).find("no commit result within 2000 ms")
        != std::string::npos);
}
