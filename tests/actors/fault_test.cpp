// The fault layer (core/fault.hpp) against process groups inside one actor
// system on the real scheduler: every rank is a thread that calls the public
// checkpointer (SPMD) and saves to / loads from REAL files in a temporary
// directory. Each case installs rules, runs a collective operation, and
// checks what must hold whatever the fault: every rank returns (within its
// deadline), every rank reports the same error naming the step and the
// faulty rank, the committed checkpoint stays byte-identical and loadable,
// and an aborted save leaves no files behind. Each case clears the rules on
// exit (also when a REQUIRE fails) and uses short step deadlines.

#include "core/fault.hpp"

#include "actors/checkpointer.hpp"
#include "actors/process_group.hpp"
#include "actors/system.hpp"
#include "core/error.hpp"
#include "storage/filesystem.hpp"
#include "tests/actors/failure_util.hpp"

#include <caf/all.hpp>

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

using namespace dcpp;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using ms = std::chrono::milliseconds;
using steady = std::chrono::steady_clock;

namespace {

// -- rules
// ----------------------------------------------------------------------

/// Installs `spec` for the scope; clears every rule (and releases blocked
/// hangs) on exit, also when a REQUIRE throws.
struct fault_rules {
  caf::error err;

  explicit fault_rules(const std::string& spec) : err(fault::install(spec)) {
    // nop
  }

  ~fault_rules() {
    fault::clear();
  }

  fault_rules(const fault_rules&) = delete;
  fault_rules& operator=(const fault_rules&) = delete;
};

#define INSTALL_FAULT(var, spec)                                               \
  fault_rules var{spec};                                                       \
  INFO("fault rules: " << (spec));                                             \
  REQUIRE_FALSE(var.err)

// -- the synthetic model (a variant of group_test.cpp's) ----------------------

constexpr int64_t rows = 203; // "model.row": [rows, 5] float32, row shards
constexpr int64_t cols = 131; // "model.col": [3, cols] bfloat16, col shards

/// Values depend on `v`, so that the dicts of two saves differ everywhere.
at::Tensor full_row(int v) {
  return at::arange(rows * 5, at::kFloat).reshape({rows, 5}) * 0.5f - 7.0f
         + static_cast<float>(v);
}

at::Tensor full_col(int v) {
  // small integers (|x| < 256): exact in bfloat16
  return (at::arange(3 * cols, at::kLong).remainder(251) - 100 + v)
    .reshape({3, cols})
    .to(at::kBFloat16);
}

at::Tensor full_bias(int v) {
  return at::arange(7, at::kDouble) * 1.25 + 1e-3 + v;
}

std::pair<int64_t, int64_t> split(int64_t total, int32_t n, int32_t r) {
  auto base = total / n;
  auto extra = total % n;
  auto begin = r * base + std::min<int64_t>(r, extra);
  auto len = base + (r < extra ? 1 : 0);
  return {begin, len};
}

/// Rank `r`'s state dict in a world of `n` with the values of variant `v`
/// (v = 0: zeros, a load destination).
state_dict make_rank_dict(int32_t r, int32_t n, int v) {
  bool zeros = v == 0;
  state_dict sd;
  auto& model = sd.nested("model");
  {
    auto [b, l] = split(rows, n, r);
    sharded_tensor st;
    st.global_size = {rows, 5};
    auto t = full_row(v).narrow(0, b, l).contiguous();
    st.local_shards.push_back({zeros ? at::zeros_like(t) : t, {b, 0}});
    model.set("row", st);
  }
  {
    auto [b, l] = split(cols, n, r);
    sharded_tensor st;
    st.global_size = {3, cols};
    auto t = full_col(v).narrow(1, b, l).contiguous();
    st.local_shards.push_back({zeros ? at::zeros_like(t) : t, {0, b}});
    model.set("col", st);
  }
  model.set("bias", zeros ? at::zeros({7}, at::kDouble) : full_bias(v));
  auto& optim = sd.nested("optim");
  optim.set("step", zeros ? bytes_value{} : bytes_value::from_int(7 + v));
  optim.set("lr", zeros ? bytes_value{} : bytes_value::from_double(0.125 * v));
  optim.set("name", zeros
                      ? bytes_value{}
                      : bytes_value::from_string("adam" + std::to_string(v)));
  return sd;
}

/// Checks a loaded rank dict against the values of variant `v`, bit for bit.
void check_rank_dict(state_dict& sd, int32_t r, int32_t n, int v) {
  INFO("rank " << r << " of " << n << ", variant " << v);
  auto& model = std::get<std::shared_ptr<state_dict>>(*sd.find("model"));
  auto& optim = std::get<std::shared_ptr<state_dict>>(*sd.find("optim"));
  {
    auto [b, l] = split(rows, n, r);
    auto& st = std::get<sharded_tensor>(*model->find("row"));
    CHECK(at::equal(st.local_shards.at(0).tensor, full_row(v).narrow(0, b, l)));
  }
  {
    auto [b, l] = split(cols, n, r);
    auto& st = std::get<sharded_tensor>(*model->find("col"));
    CHECK(at::equal(st.local_shards.at(0).tensor, full_col(v).narrow(1, b, l)));
  }
  CHECK(at::equal(std::get<at::Tensor>(*model->find("bias")), full_bias(v)));
  auto step = std::get<bytes_value>(*optim->find("step")).to_int();
  REQUIRE(step);
  CHECK(*step == 7 + v);
  auto lr = std::get<bytes_value>(*optim->find("lr")).to_double();
  REQUIRE(lr);
  CHECK(*lr == 0.125 * v);
  auto name = std::get<bytes_value>(*optim->find("name")).to_string();
  REQUIRE(name);
  CHECK(*name == "adam" + std::to_string(v));
}

// -- storage ------------------------------------------------------------------

struct checkpoint_dir {
  fs::path path;

  explicit checkpoint_dir(const std::string& name) {
    path = fs::temp_directory_path()
           / ("dcpp-fault-" + std::to_string(::getpid())) / name;
    std::error_code ec;
    fs::remove_all(path, ec);
    fs::create_directories(path);
  }

  ~checkpoint_dir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }

  /// Names of the data files (`*.distcp`).
  std::set<std::string> data_files() const {
    std::set<std::string> out;
    for (auto& entry : fs::directory_iterator(path)) {
      auto name = entry.path().filename().string();
      if (name.size() > 7 && name.compare(name.size() - 7, 7, ".distcp") == 0)
        out.insert(name);
    }
    return out;
  }

  /// The bytes of `.metadata` ("" if missing).
  std::string metadata_bytes() const {
    std::ifstream in{path / ".metadata", std::ios::binary};
    if (!in)
      return {};
    return {std::istreambuf_iterator<char>{in}, {}};
  }

  bool has_tmp() const {
    return fs::exists(path / ".metadata.tmp");
  }
};

filesystem_writer_options fast_writer_options() {
  filesystem_writer_options opts;
  opts.sync_files = false; // tests: no fsync of data files
  return opts;
}

// -- running ranks as threads -------------------------------------------------

/// Enough scheduler threads that a blocked thread never stalls the ranks
/// (storage runs on detached threads anyway).
struct real_system {
  system_config cfg{system_options{8, false}};
  caf::actor_system sys{cfg};
};

struct save_outcome {
  save_result res{make_error(errc::aborted, "not run")};
  ms took{0};
};

struct load_outcome {
  caf::error err{make_error(errc::aborted, "not run")};
  ms took{0};
  state_dict sd;
};

/// Ranks of one operation running as threads; `wait` joins them.
template <class Outcome>
struct rank_threads {
  std::vector<Outcome> out;
  std::unique_ptr<std::atomic<bool>[]> done;
  std::vector<std::thread> threads;

  explicit rank_threads(size_t n) : out(n), done(new std::atomic<bool>[n]) {
    for (size_t i = 0; i < n; ++i)
      done[i] = false;
  }

  rank_threads(const rank_threads&) = delete;
  rank_threads& operator=(const rank_threads&) = delete;
  rank_threads(rank_threads&&) = default;

  ~rank_threads() {
    wait();
  }

  /// Polls until every rank in `ranks` is done or `limit` passed; returns
  /// true if all were done in time.
  bool wait_for(const std::vector<int32_t>& ranks, ms limit) {
    auto until = steady::now() + limit;
    for (;;) {
      bool all = true;
      for (auto r : ranks)
        all = all && done[static_cast<size_t>(r)].load();
      if (all)
        return true;
      if (steady::now() >= until)
        return false;
      std::this_thread::sleep_for(5ms);
    }
  }

  void wait() {
    for (auto& t : threads)
      if (t.joinable())
        t.join();
  }
};

checkpointer_options options_for(const process_group_ptr& pg, int32_t coord,
                                 ms step) {
  checkpointer_options opts;
  opts.process_group = pg;
  opts.coordinator_rank = coord;
  opts.step_timeout = step;
  return opts;
}

/// Starts a save of variant `v` on every rank of `grp` (not waiting).
std::unique_ptr<rank_threads<save_outcome>>
start_save(const std::vector<process_group_ptr>& grp, const fs::path& dir,
           int32_t coord, ms step, int v) {
  auto n = static_cast<int32_t>(grp.size());
  auto rt = std::make_unique<rank_threads<save_outcome>>(grp.size());
  auto* p = rt.get();
  for (int32_t r = 0; r < n; ++r)
    rt->threads.emplace_back([=, &grp] {
      checkpointer cp{
        make_filesystem_writer(dir.string(), fast_writer_options()),
        make_filesystem_reader(dir.string()), options_for(grp[r], coord, step)};
      auto sd = make_rank_dict(r, n, v);
      auto t0 = steady::now();
      p->out[r].res = cp.save(sd);
      p->out[r].took = std::chrono::duration_cast<ms>(steady::now() - t0);
      p->done[r] = true;
    });
  return rt;
}

std::vector<save_outcome> save_all(const std::vector<process_group_ptr>& grp,
                                   const fs::path& dir, int32_t coord, ms step,
                                   int v) {
  auto rt = start_save(grp, dir, coord, step, v);
  rt->wait();
  return std::move(rt->out);
}

std::unique_ptr<rank_threads<load_outcome>>
start_load(const std::vector<process_group_ptr>& grp, const fs::path& dir,
           int32_t coord, ms step) {
  auto n = static_cast<int32_t>(grp.size());
  auto rt = std::make_unique<rank_threads<load_outcome>>(grp.size());
  auto* p = rt.get();
  for (int32_t r = 0; r < n; ++r)
    p->out[r].sd = make_rank_dict(r, n, 0);
  for (int32_t r = 0; r < n; ++r)
    rt->threads.emplace_back([=, &grp] {
      checkpointer cp{
        make_filesystem_writer(dir.string(), fast_writer_options()),
        make_filesystem_reader(dir.string()), options_for(grp[r], coord, step)};
      auto t0 = steady::now();
      p->out[r].err = cp.load(p->out[r].sd);
      p->out[r].took = std::chrono::duration_cast<ms>(steady::now() - t0);
      p->done[r] = true;
    });
  return rt;
}

std::vector<load_outcome> load_all(const std::vector<process_group_ptr>& grp,
                                   const fs::path& dir, int32_t coord,
                                   ms step) {
  auto rt = start_load(grp, dir, coord, step);
  rt->wait();
  return std::move(rt->out);
}

std::string text_of(const save_result& res) {
  return res ? std::string{"ok"} : describe(res.error());
}

void require_saved(const std::vector<save_outcome>& out) {
  for (size_t r = 0; r < out.size(); ++r) {
    INFO("save on rank " << r << ": " << text_of(out[r].res));
    REQUIRE(out[r].res);
  }
}

/// Loads `dir` on a fresh group of `n` ranks (coordinator n - 1) and checks
/// the values of variant `v` bit for bit.
void check_loads(caf::actor_system& sys, const fs::path& dir, int32_t n, int v,
                 ms step = 5s) {
  auto grp = make_local_process_group(sys, n);
  REQUIRE(grp.size() == static_cast<size_t>(n));
  auto out = load_all(grp, dir, n - 1, step);
  for (int32_t r = 0; r < n; ++r) {
    INFO("load on rank " << r << ": " << describe(out[r].err));
    REQUIRE_FALSE(out[r].err);
    check_rank_dict(out[r].sd, r, n, v);
  }
}

/// Every rank failed with the same checkpoint_failed error of step `step`
/// that names exactly the ranks in `ranks`; returns the parsed failure.
failure_text require_failed_everywhere(const std::vector<save_outcome>& out,
                                       const std::string& step,
                                       const std::set<int32_t>& ranks) {
  for (size_t r = 0; r < out.size(); ++r) {
    INFO("rank " << r << ": " << text_of(out[r].res));
    REQUIRE_FALSE(out[r].res);
    CHECK(code_of(out[r].res.error()) == errc::checkpoint_failed);
    CHECK(describe(out[r].res.error()) == describe(out[0].res.error()));
  }
  INFO(describe(out[0].res.error()));
  auto failure = failure_text_of(out[0].res.error());
  REQUIRE(failure);
  CHECK(failure->step == step);
  std::set<int32_t> named;
  for (auto& [r, text] : failure->failures)
    named.insert(r);
  CHECK(named == ranks);
  return *failure;
}

constexpr int32_t world = 3;
constexpr int32_t coord = 1;
constexpr int A = 1; // values of the committed save
constexpr int B = 2; // values of the save under a fault

/// What a fault must not change: the committed checkpoint.
struct committed_state {
  std::string md;
  std::set<std::string> files;
};

/// A clean save of A on `grp`, returning what it committed.
committed_state commit_a(const std::vector<process_group_ptr>& grp,
                         const checkpoint_dir& dir, ms step) {
  auto out = save_all(grp, dir.path, coord, step, A);
  require_saved(out);
  committed_state st{dir.metadata_bytes(), dir.data_files()};
  REQUIRE_FALSE(st.md.empty());
  REQUIRE_FALSE(st.files.empty());
  REQUIRE_FALSE(dir.has_tmp());
  return st;
}

/// The directory still holds exactly the committed checkpoint.
void check_unchanged(const checkpoint_dir& dir, const committed_state& st,
                     bool check_files = true) {
  CHECK(dir.metadata_bytes() == st.md);
  CHECK_FALSE(dir.has_tmp());
  if (check_files)
    CHECK(dir.data_files() == st.files);
}

/// Case 2: a save under `spec` fails everywhere and leaves A intact.
void aborted_save(const std::string& spec, const std::string& step,
                  int32_t faulty, const std::string& must_mention,
                  const std::string& name) {
  real_system rs;
  checkpoint_dir dir{name};
  auto grp = make_local_process_group(rs.sys, world);
  auto st = commit_a(grp, dir, 2s);
  {
    INSTALL_FAULT(rules, spec);
    auto out = save_all(grp, dir.path, coord, 2s, B);
    CHECK(fault::fired() > 0);
    auto failure = require_failed_everywhere(out, step, {faulty});
    INFO(describe(out[0].res.error()));
    CHECK(failure.failures[faulty].find(must_mention) != std::string::npos);
    check_unchanged(dir, st);
  }
  check_loads(rs.sys, dir.path, 2, A);
}

/// The bound on a rank's return under a hang: 4 step timeouts + slack.
ms hang_bound(ms step) {
  return step * 4 + 1500ms;
}

} // namespace

// -- 1. spec parsing
// ------------------------------------------------------------

TEST_CASE("fault specs: valid ones install, malformed ones are rejected",
          "[fault]") {
  fault_rules guard{""};
  REQUIRE_FALSE(guard.err);
  CHECK(fault::current().empty());
  CHECK_FALSE(fault::active());
  for (std::string spec :
       {"plan:fail@1", "write:hang@2", "read:slow@0:10", "commit:exit",
        "rename:fail@*", "io:eio@1:3", "io:enospc@0:1", "io:short@2:7",
        "io:slow@1:5", "msg:drop@2>c", "msg:drop@c>1:3", "msg:delay@1:200",
        "msg:drop@*", "plan:fail@1, io:eio@2:1; msg:delay@c>0:5"}) {
    INFO(spec);
    CHECK_FALSE(fault::install(spec));
    CHECK(fault::current() == spec);
    CHECK(fault::active());
    CHECK(fault::fired() == 0);
  }
  const std::string kept = "write:fail@1";
  REQUIRE_FALSE(fault::install(kept));
  // rule -> what the error must name
  std::vector<std::pair<std::string, std::string>> bad = {
    {"disk:fail@1", "disk:fail@1"},             // unknown place
    {"write:explode@1", "write:explode@1"},     // unknown action
    {"io:eio@1", "io:eio@1"},                   // missing K
    {"io:short@1:0", "io:short@1:0"},           // K counts from 1
    {"msg:drop@1>2", "msg:drop@1>2"},           // neither side is 'c'
    {"plan:fail@x", "plan:fail@x"},             // non-numeric rank
    {"io:eio@one:1", "io:eio@one:1"},           // non-numeric rank
    {"write:fail@1:abc", "write:fail@1:abc"},   // non-numeric argument
    {"write:hang@1:5", "write:hang@1:5"},       // hang takes no argument
    {"plan:slow@1", "plan:slow@1"},             // slow needs MS
    {"nonsense", "nonsense"},                   // no colon
    {"plan:fail@1,msg:delay@2", "msg:delay@2"}, // a bad rule in a list
  };
  for (auto& [spec, rule] : bad) {
    INFO(spec);
    auto err = fault::install(spec);
    REQUIRE(err);
    CHECK(code_of(err) == errc::invalid_argument);
    CHECK(context_of(err).find("'" + rule + "'") != std::string::npos);
    // the previous rules stay installed
    CHECK(fault::current() == kept);
    CHECK(fault::active());
  }
  fault::clear();
  CHECK(fault::current().empty());
  CHECK_FALSE(fault::active());
}

// -- 2. faults that abort a save
// ---------------------------------------------------

TEST_CASE("io:eio aborts the save everywhere, the old checkpoint stays",
          "[fault]") {
  aborted_save("io:eio@2:1", "write", 2, "Input/output error", "eio");
}

TEST_CASE("io:enospc aborts the save everywhere, the old checkpoint stays",
          "[fault]") {
  aborted_save("io:enospc@2:1", "write", 2, "No space left on device",
               "enospc");
}

TEST_CASE("write:fail aborts the save everywhere, the old checkpoint stays",
          "[fault]") {
  aborted_save("write:fail@2", "write", 2, "injected_fault", "write_fail");
}

TEST_CASE("plan:fail aborts the save everywhere, the old checkpoint stays",
          "[fault]") {
  aborted_save("plan:fail@0", "plan", 0, "injected_fault", "plan_fail");
}

TEST_CASE("commit:fail on the coordinator's rank aborts the save", "[fault]") {
  aborted_save("commit:fail@1", "commit", coord, "injected_fault",
               "commit_fail");
}

TEST_CASE("rename:fail on the coordinator's rank aborts the save", "[fault]") {
  aborted_save("rename:fail@1", "commit", coord, "injected_fault",
               "rename_fail");
}

// -- 3. short writes
// -------------------------------------------------------------

TEST_CASE("short writes are continued: the save commits and loads bit-exact",
          "[fault]") {
  real_system rs;
  checkpoint_dir dir{"short"};
  auto grp = make_local_process_group(rs.sys, world);
  {
    INSTALL_FAULT(rules, "io:short@2:1");
    auto out = save_all(grp, dir.path, coord, 2s, A);
    CHECK(fault::fired() == 1);
    require_saved(out);
  }
  check_loads(rs.sys, dir.path, 2, A);
  // Every write of the coordinator's rank in turn, up to the last one of a
  // save: the write of `.metadata.tmp` in finish (no rule fires past it).
  int v = B;
  int last_fired = 0;
  for (int k = 1; k <= 64; ++k) {
    auto spec = "io:short@" + std::to_string(coord) + ":" + std::to_string(k);
    INSTALL_FAULT(rules, spec);
    auto out = save_all(grp, dir.path, coord, 2s, v);
    require_saved(out);
    if (fault::fired() == 0)
      break;
    last_fired = k;
    CHECK_FALSE(dir.has_tmp());
    check_loads(rs.sys, dir.path, 2, v);
    v = v == B ? A : B;
  }
  INFO("short write at write " << last_fired
                               << ", the last of the coordinator's rank");
  // data file(s) and `.metadata.tmp` at least
  CHECK(last_fired >= 2);
  CHECK(last_fired < 64);
}

// -- 4. hangs
// -----------------------------------------------------------------------

namespace {

/// A save of B under a hang rule: every rank returns in time with the
/// failure of `step` naming `hung`; A stays.
void hung_save(const std::string& spec, const std::string& step, int32_t hung,
               const std::string& name) {
  real_system rs;
  checkpoint_dir dir{name};
  auto grp = make_local_process_group(rs.sys, world);
  const auto step_timeout = ms{1000};
  auto st = commit_a(grp, dir, step_timeout);
  {
    INSTALL_FAULT(rules, spec);
    auto out = save_all(grp, dir.path, coord, step_timeout, B);
    CHECK(fault::fired() == 1);
    for (int32_t r = 0; r < world; ++r) {
      INFO("rank " << r << " returned after " << out[r].took.count() << " ms");
      CHECK(out[r].took < hang_bound(step_timeout));
    }
    auto failure = require_failed_everywhere(out, step, {hung});
    CHECK(failure.failures[hung].find("dcpp::timeout") != std::string::npos);
    CHECK(failure.failures[hung].find("rank " + std::to_string(hung))
          != std::string::npos);
    check_unchanged(dir, st);
  }
  check_loads(rs.sys, dir.path, 2, A);
}

} // namespace

TEST_CASE("plan:hang: every rank returns with a timeout of the hung rank",
          "[fault]") {
  hung_save("plan:hang@2", "plan", 2, "plan_hang");
}

TEST_CASE("write:hang: every rank returns with a timeout of the hung rank",
          "[fault]") {
  hung_save("write:hang@0", "write", 0, "write_hang");
}

TEST_CASE("commit:hang: every rank returns with a timeout of the coordinator",
          "[fault]") {
  hung_save("commit:hang@1", "commit", coord, "commit_hang");
}

TEST_CASE("rename:hang blocks the storage thread, not the ranks", "[fault]") {
  real_system rs;
  checkpoint_dir dir{"rename_hang"};
  auto grp = make_local_process_group(rs.sys, world);
  const auto step_timeout = ms{1000};
  auto st = commit_a(grp, dir, step_timeout);
  {
    INSTALL_FAULT(rules, "rename:hang@1");
    auto rt = start_save(grp, dir.path, coord, step_timeout, B);
    // The ranks other than the coordinator's return while the coordinator
    // rank's writer thread is still blocked before the rename.
    auto in_time = rt->wait_for({0, 2}, hang_bound(step_timeout));
    CHECK(in_time);
    CHECK(fault::fired() == 1);
    bool coord_in_time = rt->wait_for({coord}, hang_bound(step_timeout));
    CHECK(dir.metadata_bytes() == st.md); // still blocked: no rename
    // Release the blocked thread; nothing may commit afterwards.
    fault::clear();
    rt->wait();
    INFO("coordinator rank returned before the release: " << coord_in_time);
    CHECK(coord_in_time);
    for (int32_t r = 0; r < world; ++r) {
      INFO("rank " << r << " returned after " << rt->out[r].took.count()
                   << " ms");
      CHECK(rt->out[r].took < hang_bound(step_timeout));
    }
    auto failure = require_failed_everywhere(rt->out, "commit", {coord});
    CHECK(failure.failures[coord].find("dcpp::timeout") != std::string::npos);
    // The released writer thread must not rename; it then runs the abort
    // the agent queued before it gave up (FIFO before the exit message):
    // `.metadata.tmp` and the aborted save's files go away.
    auto until = steady::now() + 3s;
    while ((dir.has_tmp() || dir.data_files() != st.files)
           && steady::now() < until)
      std::this_thread::sleep_for(10ms);
    check_unchanged(dir, st);
  }
  check_loads(rs.sys, dir.path, 2, A);
  // The next save commits (and collects what the aborted one left).
  require_saved(save_all(grp, dir.path, coord, step_timeout, B));
  CHECK_FALSE(dir.has_tmp());
  check_loads(rs.sys, dir.path, 2, B);
}

// -- 5. messages
// -------------------------------------------------------------------

TEST_CASE("msg:drop of every message of a rank fails the save in time",
          "[fault]") {
  real_system rs;
  checkpoint_dir dir{"drop_rank"};
  auto grp = make_local_process_group(rs.sys, world);
  const auto step_timeout = ms{1000};
  auto st = commit_a(grp, dir, step_timeout);
  {
    INSTALL_FAULT(rules, "msg:drop@2>c");
    auto out = save_all(grp, dir.path, coord, step_timeout, B);
    CHECK(fault::fired() > 0);
    for (int32_t r = 0; r < world; ++r) {
      INFO("rank " << r << " returned after " << out[r].took.count() << " ms");
      CHECK(out[r].took < hang_bound(step_timeout));
    }
    auto failure = require_failed_everywhere(out, "plan", {2});
    CHECK(failure.failures[2].find("dcpp::timeout") != std::string::npos);
    check_unchanged(dir, st);
  }
  check_loads(rs.sys, dir.path, 2, A);
}

TEST_CASE("msg:delay within the deadline: the save commits", "[fault]") {
  real_system rs;
  checkpoint_dir dir{"delay"};
  auto grp = make_local_process_group(rs.sys, world);
  {
    INSTALL_FAULT(rules, "msg:delay@2:200");
    auto t0 = steady::now();
    auto out = save_all(grp, dir.path, coord, 3s, A);
    auto took = steady::now() - t0;
    require_saved(out);
    CHECK(fault::fired() > 0);
    // plan, central plan, write result, outcome: 4 delayed messages
    CHECK(took >= 800ms);
  }
  check_loads(rs.sys, dir.path, 2, A);
}

TEST_CASE("slow steps: a late report within the deadline commits, one "
          "beyond it fails in time naming the rank",
          "[fault]") {
  // A slow step delays the rank's report (no scheduler thread sleeps).
  real_system rs;
  checkpoint_dir dir{"slow"};
  auto grp = make_local_process_group(rs.sys, world);
  const auto step_timeout = ms{1000};
  {
    INSTALL_FAULT(rules, "plan:slow@0:300,write:slow@2:300");
    auto t0 = steady::now();
    auto out = save_all(grp, dir.path, coord, step_timeout, A);
    auto took = steady::now() - t0;
    require_saved(out);
    CHECK(fault::fired() == 2);
    CHECK(took >= 600ms);
  }
  check_loads(rs.sys, dir.path, 2, A);
  auto st = committed_state{dir.metadata_bytes(), dir.data_files()};
  {
    INSTALL_FAULT(rules, "write:slow@2:2500");
    auto out = save_all(grp, dir.path, coord, step_timeout, B);
    for (int32_t r = 0; r < world; ++r) {
      INFO("rank " << r << " returned after " << out[r].took.count() << " ms");
      CHECK(out[r].took < hang_bound(step_timeout));
    }
    auto failure = require_failed_everywhere(out, "write", {2});
    CHECK(failure.failures[2].find("dcpp::timeout") != std::string::npos);
    check_unchanged(dir, st);
  }
  check_loads(rs.sys, dir.path, 2, A);
}

TEST_CASE("msg:drop of the outcome to one rank: it commits, that rank times "
          "out",
          "[fault]") {
  // The coordinator sends a rank other than its own two messages in a save:
  // 1. the central plan, 2. the outcome. Dropping the 2nd loses only the
  // outcome: the checkpoint commits, the rank waits for the outcome until
  // its own deadline (3 step timeouts) and reports a timeout.
  real_system rs;
  checkpoint_dir dir{"drop_outcome"};
  auto grp = make_local_process_group(rs.sys, world);
  const auto step_timeout = ms{1000};
  commit_a(grp, dir, step_timeout);
  {
    INSTALL_FAULT(rules, "msg:drop@c>2:2");
    auto out = save_all(grp, dir.path, coord, step_timeout, B);
    CHECK(fault::fired() == 1);
    CHECK(out[0].res);
    CHECK(out[1].res);
    INFO("rank 2: " << text_of(out[2].res) << " after " << out[2].took.count()
                    << " ms");
    REQUIRE_FALSE(out[2].res);
    CHECK(code_of(out[2].res.error()) == errc::timeout);
    CHECK(context_of(out[2].res.error()).find("the outcome")
          != std::string::npos);
    CHECK(out[2].took >= step_timeout * 3 - 100ms);
    CHECK(out[2].took < hang_bound(step_timeout));
    CHECK_FALSE(dir.has_tmp());
  }
  // Rank 2's abort kept its files: the committed `.metadata` names them.
  check_loads(rs.sys, dir.path, 2, B);
  // The group goes on: the next save commits on every rank.
  require_saved(save_all(grp, dir.path, coord, step_timeout, A));
  check_loads(rs.sys, dir.path, 2, A);
}

// -- 6. loads
// ------------------------------------------------------------------------

TEST_CASE("read:fail and read:hang end a load on every rank", "[fault]") {
  real_system rs;
  checkpoint_dir dir{"read"};
  auto grp = make_local_process_group(rs.sys, world);
  const auto step_timeout = ms{1000};
  commit_a(grp, dir, step_timeout);
  auto load_grp = make_local_process_group(rs.sys, 2);
  SECTION("read:fail") {
    INSTALL_FAULT(rules, "read:fail@1");
    auto out = load_all(load_grp, dir.path, 0, step_timeout);
    CHECK(fault::fired() == 1);
    for (size_t r = 0; r < out.size(); ++r) {
      INFO("rank " << r << ": " << describe(out[r].err));
      REQUIRE(out[r].err);
      CHECK(describe(out[r].err) == describe(out[0].err));
    }
    auto failure = failure_text_of(out[0].err);
    REQUIRE(failure);
    CHECK(failure->step == "read");
    REQUIRE(failure->failures.size() == 1);
    CHECK(failure->failures.count(1) == 1);
    CHECK(failure->failures[1].find("injected_fault") != std::string::npos);
  }
  SECTION("read:hang") {
    INSTALL_FAULT(rules, "read:hang@0");
    auto out = load_all(load_grp, dir.path, 1, step_timeout);
    CHECK(fault::fired() == 1);
    for (size_t r = 0; r < out.size(); ++r) {
      INFO("rank " << r << ": " << describe(out[r].err) << " after "
                   << out[r].took.count() << " ms");
      REQUIRE(out[r].err);
      CHECK(out[r].took < hang_bound(step_timeout));
      CHECK(describe(out[r].err) == describe(out[0].err));
    }
    auto failure = failure_text_of(out[0].err);
    REQUIRE(failure);
    CHECK(failure->step == "read");
    REQUIRE(failure->failures.size() == 1);
    CHECK(failure->failures.count(0) == 1);
    CHECK(failure->failures[0].find("dcpp::timeout") != std::string::npos);
  }
  // The same group loads once the rules are gone.
  auto out = load_all(load_grp, dir.path, 0, step_timeout);
  for (int32_t r = 0; r < 2; ++r) {
    INFO("load on rank " << r << ": " << describe(out[r].err));
    REQUIRE_FALSE(out[r].err);
    check_rank_dict(out[r].sd, r, 2, A);
  }
}

// -- 7. a rank agent that dies
// -------------------------------------------------------

TEST_CASE("a rank agent killed during the write fails the save in time",
          "[fault]") {
  real_system rs;
  checkpoint_dir dir{"killed"};
  auto grp = make_local_process_group(rs.sys, world);
  const auto step_timeout = ms{1000};
  auto st = commit_a(grp, dir, step_timeout);
  constexpr int32_t victim = 2;
  {
    INSTALL_FAULT(rules, "write:hang@2");
    auto rt = start_save(grp, dir.path, coord, step_timeout, B);
    auto until = steady::now() + 10s;
    while (fault::fired() == 0 && steady::now() < until)
      std::this_thread::sleep_for(1ms);
    REQUIRE(fault::fired() > 0);
    auto killed_at = steady::now();
    caf::anon_send_exit(grp[victim]->agent(), caf::exit_reason::kill);
    CHECK(rt->wait_for({0, 1, 2}, hang_bound(step_timeout)));
    auto took = steady::now() - killed_at;
    rt->wait();
    for (int32_t r = 0; r < world; ++r)
      UNSCOPED_INFO("rank " << r << ": " << text_of(rt->out[r].res) << " after "
                            << rt->out[r].took.count() << " ms");
    CHECK(took < hang_bound(step_timeout));
    INFO("victim: " << text_of(rt->out[victim].res));
    // The victim's caller learns at once that its agent stopped.
    REQUIRE_FALSE(rt->out[victim].res);
    CHECK(code_of(rt->out[victim].res.error()) == errc::rank_lost);
    for (int32_t r : {0, 1}) {
      INFO("rank " << r << ": " << text_of(rt->out[r].res));
      REQUIRE_FALSE(rt->out[r].res);
      CHECK(describe(rt->out[r].res.error())
            == describe(rt->out[0].res.error()));
      auto failure = failure_text_of(rt->out[r].res.error());
      REQUIRE(failure);
      CHECK(failure->step == "write");
      REQUIRE(failure->failures.count(victim) == 1);
      auto& text = failure->failures[victim];
      CHECK((text.find("rank_lost") != std::string::npos
             || text.find("timeout") != std::string::npos));
      CHECK(text.find("rank 2") != std::string::npos);
    }
    // No commit; the victim's files of the aborted save may stay (its
    // writer never aborted), the next commit collects them.
    CHECK(dir.metadata_bytes() == st.md);
    CHECK_FALSE(dir.has_tmp());
  }
  check_loads(rs.sys, dir.path, 2, A);
}

TEST_CASE("the coordinator killed before and during the commit fails the "
          "save in time",
          "[fault]") {
  // In-process counterpart of kill_test.sh's kill -9 of the coordinator:
  // the coordinator actor is killed while its rank waits at the commit
  // (before `.metadata.tmp`), or while its storage thread is blocked with
  // `.metadata.tmp` written (before the rename).
  for (const char* spec : {"commit:hang@1", "rename:hang@1"}) {
    INFO(spec);
    real_system rs;
    checkpoint_dir dir{"coord_killed"};
    auto grp = make_local_process_group(rs.sys, world);
    const auto step_timeout = ms{1000};
    auto st = commit_a(grp, dir, step_timeout);
    {
      INSTALL_FAULT(rules, spec);
      auto rt = start_save(grp, dir.path, coord, step_timeout, B);
      auto until = steady::now() + 10s;
      while (fault::fired() == 0 && steady::now() < until)
        std::this_thread::sleep_for(1ms);
      REQUIRE(fault::fired() > 0);
      auto killed_at = steady::now();
      caf::anon_send_exit(grp[coord]->coordinator(), caf::exit_reason::kill);
      CHECK(rt->wait_for({0, 1, 2}, hang_bound(step_timeout)));
      CHECK(steady::now() - killed_at < hang_bound(step_timeout));
      // Release a storage thread blocked before the rename; its finish
      // must not commit after all.
      fault::clear();
      rt->wait();
      for (int32_t r = 0; r < world; ++r) {
        INFO("rank " << r << ": " << text_of(rt->out[r].res));
        REQUIRE_FALSE(rt->out[r].res);
        auto text = describe(rt->out[r].res.error());
        CHECK((text.find("rank_lost") != std::string::npos
               || text.find("timeout") != std::string::npos));
        CHECK(text.find("coordinator") != std::string::npos);
      }
      std::this_thread::sleep_for(200ms); // a late rename would show now
      CHECK(dir.metadata_bytes() == st.md);
    }
    check_loads(rs.sys, dir.path, 2, A);
  }
}

// -- 8. nothing left behind
// -----------------------------------------------------------

TEST_CASE("after faults, saves without faults commit in the same group and "
          "in a fresh one",
          "[fault]") {
  real_system rs;
  checkpoint_dir dir{"after"};
  auto grp = make_local_process_group(rs.sys, world);
  const auto step_timeout = ms{1000};
  auto st = commit_a(grp, dir, step_timeout);
  for (std::string spec : {"io:eio@0:1", "plan:hang@1", "msg:drop@0>c",
                           "commit:fail@1", "write:hang@2", "io:slow@2:20"}) {
    INSTALL_FAULT(rules, spec);
    auto out = save_all(grp, dir.path, coord, step_timeout, B);
    if (spec.rfind("io:slow", 0) == 0) {
      // (slow writes are not counted by fault::fired())
      require_saved(out);
      // back to A for the checks below
      require_saved(save_all(grp, dir.path, coord, step_timeout, A));
      st.md = dir.metadata_bytes();
      st.files = dir.data_files();
    } else {
      CHECK(fault::fired() > 0);
      for (int32_t r = 0; r < world; ++r) {
        INFO("rank " << r << ": " << text_of(out[r].res));
        CHECK_FALSE(out[r].res);
        CHECK(out[r].took < hang_bound(step_timeout));
      }
      check_unchanged(dir, st);
    }
  }
  CHECK_FALSE(fault::active());
  CHECK(fault::current().empty());
  // The same group, no rules: commits B, which loads.
  require_saved(save_all(grp, dir.path, coord, step_timeout, B));
  CHECK_FALSE(dir.has_tmp());
  check_loads(rs.sys, dir.path, 2, B);
  // A fresh group with another coordinator: commits A, which loads; the
  // garbage collection left only the files of that save.
  auto fresh = make_local_process_group(rs.sys, 4);
  auto out = save_all(fresh, dir.path, 3, step_timeout, A);
  require_saved(out);
  std::set<std::string> named;
  for (auto& [idx, info] : out[0].res->storage_data)
    named.insert(info.relative_path);
  for (auto& name : dir.data_files())
    CHECK(named.count(name) == 1);
  check_loads(rs.sys, dir.path, 3, A);
}

// -- rules fire once per operation, in every operation
// ------------------------------

TEST_CASE("a step rule fires again in every later operation", "[fault]") {
  // core/fault.hpp: "Every step rule fires at most once per operation and
  // rank, any number of times over a process's life."
  real_system rs;
  checkpoint_dir dir{"every_op"};
  auto grp = make_local_process_group(rs.sys, world);
  const auto step_timeout = ms{1000};
  auto st = commit_a(grp, dir, step_timeout);
  SECTION("rename:fail in two saves of the same group (fresh writers)") {
    INSTALL_FAULT(rules, "rename:fail@1");
    for (int i = 0; i < 2; ++i) {
      INFO("save " << i + 1 << " under the rule");
      auto out = save_all(grp, dir.path, coord, step_timeout, B);
      CHECK(fault::fired() == static_cast<uint64_t>(i + 1));
      require_failed_everywhere(out, "commit", {coord});
      check_unchanged(dir, st);
    }
  }
  SECTION("plan:fail in the first save of two fresh groups") {
    INSTALL_FAULT(rules, "plan:fail@0");
    // Both groups number their operations from 1.
    for (int i = 0; i < 2; ++i) {
      INFO("fresh group " << i + 1);
      auto fresh = make_local_process_group(rs.sys, world);
      auto out = save_all(fresh, dir.path, coord, step_timeout, B);
      CHECK(fault::fired() == static_cast<uint64_t>(i + 1));
      require_failed_everywhere(out, "plan", {0});
      check_unchanged(dir, st);
    }
  }
  check_loads(rs.sys, dir.path, 2, A);
}
