// Process groups of 1 to 64 ranks inside one actor system on the real
// scheduler: every rank is a thread that calls the public checkpointer
// (SPMD), saving a mixed state dict (row- and column-sharded tensors with
// uneven splits, a replicated tensor, bytes values, nested dicts) to the
// file system or to memory, and loading it back on a different number of
// ranks, bit-exact. Also: async_save, parallel writer actors, and a failing
// rank on real threads.
//
// Interop hook: with DCPP_ACTORS_KEEP_DIR=<dir> set, the file-system
// checkpoints of the round-trip cases are written to
// <dir>/save<N>_coord<C>/ and kept (`.metadata` + `__<rank>_<k>.distcp`),
// for the PyTorch DCP harness to load (see `expected_value` for the values).

#include "actors/checkpointer.hpp"
#include "actors/jobs.hpp"
#include "actors/process_group.hpp"
#include "actors/progress.hpp"
#include "actors/system.hpp"
#include "core/error.hpp"
#include "storage/filesystem.hpp"
#include "storage/memory_storage.hpp"
#include "tests/actors/failure_util.hpp"

#include <caf/all.hpp>

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <iterator>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

using namespace dcpp;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// -- the synthetic model ------------------------------------------------------

/// Global shapes, independent of the world size; primes so that every
/// world size splits them unevenly.
constexpr int64_t rows = 203; // "model.row": [rows, 5] float32, row shards
constexpr int64_t cols = 131; // "model.col": [3, cols] bfloat16, col shards

/// The full tensors every rank's shards are cut from.
at::Tensor full_row() {
  return at::arange(rows * 5, at::kFloat).reshape({rows, 5}) * 0.5f - 7.0f;
}

at::Tensor full_col() {
  // small integers: exact in bfloat16
  return (at::arange(3 * cols, at::kLong).remainder(251) - 100)
    .reshape({3, cols})
    .to(at::kBFloat16);
}

at::Tensor full_bias() {
  return at::arange(7, at::kDouble) * 1.25 + 1e-3;
}

/// [begin, begin + len) of an uneven split of `total` over `n` ranks.
std::pair<int64_t, int64_t> split(int64_t total, int32_t n, int32_t r) {
  auto base = total / n;
  auto extra = total % n;
  auto begin = r * base + std::min<int64_t>(r, extra);
  auto len = base + (r < extra ? 1 : 0);
  return {begin, len};
}

/// Rank `r`'s state dict in a world of `n`. With `zeros`, the same layout
/// filled with zeros (a load destination).
state_dict make_rank_dict(int32_t r, int32_t n, bool zeros) {
  state_dict sd;
  auto& model = sd.nested("model");
  {
    auto [b, l] = split(rows, n, r);
    sharded_tensor st;
    st.global_size = {rows, 5};
    auto t = full_row().narrow(0, b, l).contiguous();
    st.local_shards.push_back({zeros ? at::zeros_like(t) : t, {b, 0}});
    model.set("row", st);
  }
  {
    auto [b, l] = split(cols, n, r);
    sharded_tensor st;
    st.global_size = {3, cols};
    auto t = full_col().narrow(1, b, l).contiguous();
    st.local_shards.push_back({zeros ? at::zeros_like(t) : t, {0, b}});
    model.set("col", st);
  }
  model.set("bias", zeros ? at::zeros({7}, at::kDouble) : full_bias());
  auto& optim = sd.nested("optim");
  optim.set("step", zeros ? bytes_value{} : bytes_value::from_int(7));
  optim.set("lr", zeros ? bytes_value{} : bytes_value::from_double(0.125));
  optim.set("name", zeros ? bytes_value{} : bytes_value::from_string("adam"));
  return sd;
}

/// Checks a loaded rank dict against the expected values, bit for bit.
void check_rank_dict(state_dict& sd, int32_t r, int32_t n) {
  INFO("rank " << r << " of " << n);
  auto& model = std::get<std::shared_ptr<state_dict>>(*sd.find("model"));
  auto& optim = std::get<std::shared_ptr<state_dict>>(*sd.find("optim"));
  {
    auto [b, l] = split(rows, n, r);
    auto& st = std::get<sharded_tensor>(*model->find("row"));
    CHECK(at::equal(st.local_shards.at(0).tensor, full_row().narrow(0, b, l)));
  }
  {
    auto [b, l] = split(cols, n, r);
    auto& st = std::get<sharded_tensor>(*model->find("col"));
    CHECK(at::equal(st.local_shards.at(0).tensor, full_col().narrow(1, b, l)));
  }
  CHECK(at::equal(std::get<at::Tensor>(*model->find("bias")), full_bias()));
  auto step = std::get<bytes_value>(*optim->find("step")).to_int();
  REQUIRE(step);
  CHECK(*step == 7);
  auto lr = std::get<bytes_value>(*optim->find("lr")).to_double();
  REQUIRE(lr);
  CHECK(*lr == 0.125);
  auto name = std::get<bytes_value>(*optim->find("name")).to_string();
  REQUIRE(name);
  CHECK(*name == "adam");
}

// -- storage ------------------------------------------------------------------

/// A temporary checkpoint directory (kept under DCPP_ACTORS_KEEP_DIR).
struct checkpoint_dir {
  fs::path path;
  bool keep = false;

  explicit checkpoint_dir(const std::string& name) {
    if (auto keep_dir = std::getenv("DCPP_ACTORS_KEEP_DIR");
        keep_dir && *keep_dir) {
      path = fs::path{keep_dir} / name;
      keep = true;
      fs::remove_all(path);
    } else {
      auto base = fs::temp_directory_path()
                  / ("dcpp-actors-" + std::to_string(::getpid()));
      path = base / name;
    }
    fs::create_directories(path);
  }

  ~checkpoint_dir() {
    if (!keep) {
      std::error_code ec;
      fs::remove_all(path, ec);
    }
  }

  size_t count(const std::string& suffix) const {
    size_t n = 0;
    for (auto& entry : fs::directory_iterator(path)) {
      auto name = entry.path().filename().string();
      if (name.size() >= suffix.size()
          && name.compare(name.size() - suffix.size(), suffix.size(), suffix)
               == 0)
        ++n;
    }
    return n;
  }
};

filesystem_writer_options fast_writer_options() {
  filesystem_writer_options opts;
  opts.sync_files = false; // tests: no fsync of data files
  return opts;
}

/// Fails write_data on demand, forwards everything else.
class faulty_writer : public storage_writer {
public:
  faulty_writer(storage_writer_ptr inner, bool fail_write)
    : faulty_writer(std::move(inner),
                    fail_write
                      ? make_error(errc::storage_failure, "injected: disk full")
                      : caf::error{}) {
    // nop
  }

  /// Fails write_data with `fail_with` (none: forwards).
  faulty_writer(storage_writer_ptr inner, caf::error fail_with)
    : inner_(std::move(inner)), fail_with_(std::move(fail_with)) {
    // nop
  }

  caf::error set_up(bool c, int32_t r) override {
    return inner_->set_up(c, r);
  }
  caf::expected<save_plan> prepare_local_plan(save_plan p) override {
    return inner_->prepare_local_plan(std::move(p));
  }
  caf::expected<std::vector<save_plan>>
  prepare_global_plan(std::vector<save_plan> ps) override {
    return inner_->prepare_global_plan(std::move(ps));
  }
  caf::expected<std::vector<write_result>>
  write_data(const save_plan& p, const item_source& s) override {
    auto res = inner_->write_data(p, s); // the files exist afterwards
    if (fail_with_)
      return fail_with_;
    return res;
  }
  std::vector<save_plan> split_plan(const save_plan& p, size_t n) override {
    return inner_->split_plan(p, n);
  }
  caf::error finish(const metadata& md,
                    const std::vector<std::vector<write_result>>& rs) override {
    return inner_->finish(md, rs);
  }
  void abort() override {
    inner_->abort();
  }

private:
  storage_writer_ptr inner_;
  caf::error fail_with_;
};

/// A gate that test code opens and closes.
struct gate {
  std::mutex mx;
  std::condition_variable cv;
  bool is_open = true;

  void set(bool value) {
    {
      std::lock_guard<std::mutex> guard{mx};
      is_open = value;
    }
    cv.notify_all();
  }

  void wait() {
    std::unique_lock<std::mutex> guard{mx};
    cv.wait(guard, [this] { return is_open; });
  }
};

/// Holds write_data until the gate opens.
class gated_writer : public faulty_writer {
public:
  gated_writer(storage_writer_ptr inner, std::shared_ptr<gate> g)
    : faulty_writer(std::move(inner), false), gate_(std::move(g)) {
    // nop
  }

  caf::expected<std::vector<write_result>>
  write_data(const save_plan& p, const item_source& s) override {
    gate_->wait();
    return faulty_writer::write_data(p, s);
  }

private:
  std::shared_ptr<gate> gate_;
};

// -- running ranks as threads
// ---------------------------------------------------

struct real_system {
  system_config cfg{system_options{4, false}};
  caf::actor_system sys{cfg};
};

template <class F>
void on_every_rank(int32_t n, F f) {
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < n; ++r)
    threads.emplace_back([=] { f(r); });
  for (auto& t : threads)
    t.join();
}

enum class backend { filesystem, memory };

/// Saves on `n_save` ranks (coordinator `coord`), loads on `n_load` ranks
/// (coordinator n_load - 1), checks every rank bit for bit.
void round_trip(int32_t n_save, int32_t coord, int32_t n_load, backend kind) {
  real_system rs;
  checkpoint_dir dir{"save" + std::to_string(n_save) + "_coord"
                     + std::to_string(coord)};
  auto store = make_memory_storage();
  auto writer_for = [&](int32_t) -> storage_writer_ptr {
    if (kind == backend::filesystem)
      return make_filesystem_writer(dir.path.string(), fast_writer_options());
    return make_memory_writer(store);
  };
  auto reader_for = [&](int32_t) -> storage_reader_ptr {
    if (kind == backend::filesystem)
      return make_filesystem_reader(dir.path.string());
    return make_memory_reader(store);
  };
  // -- save ---------------------------------------------------------------
  {
    auto grp = make_local_process_group(rs.sys, n_save);
    REQUIRE(grp.size() == static_cast<size_t>(n_save));
    std::vector<save_result> results(
      n_save, save_result{make_error(errc::aborted, "not run")});
    on_every_rank(n_save, [&](int32_t r) {
      checkpointer_options opts;
      opts.process_group = grp[r];
      opts.coordinator_rank = coord;
      opts.step_timeout = 20s;
      checkpointer cp{writer_for(r), reader_for(r), opts};
      auto sd = make_rank_dict(r, n_save, false);
      results[r] = cp.save(sd);
    });
    for (int32_t r = 0; r < n_save; ++r) {
      INFO(
        "save on rank " << r << ": "
                        << (results[r] ? "ok" : describe(results[r].error())));
      REQUIRE(results[r]);
      CHECK(
        (results[r]->state_dict_metadata == results[0]->state_dict_metadata));
    }
    const auto& md = *results[0];
    CHECK(md.state_dict_metadata.size() == 6);
    CHECK(md.state_dict_metadata.at("model.row").tensor.chunks.size()
          == static_cast<size_t>(n_save));
    CHECK(md.state_dict_metadata.at("model.col").tensor.chunks.size()
          == static_cast<size_t>(n_save));
    // every chunk of both sharded tensors, one bias, three bytes values
    CHECK(md.storage_data.size() == static_cast<size_t>(2 * n_save + 4));
    if (kind == backend::filesystem)
      CHECK(dir.count(".metadata") == 1);
  }
  // -- load on another number of ranks --------------------------------------
  {
    auto grp = make_local_process_group(rs.sys, n_load);
    std::vector<caf::error> errors(n_load);
    std::vector<state_dict> dicts(n_load);
    on_every_rank(n_load, [&](int32_t r) {
      checkpointer_options opts;
      opts.process_group = grp[r];
      opts.coordinator_rank = n_load - 1;
      opts.step_timeout = 20s;
      checkpointer cp{writer_for(r), reader_for(r), opts};
      dicts[r] = make_rank_dict(r, n_load, true);
      errors[r] = cp.load(dicts[r]);
    });
    for (int32_t r = 0; r < n_load; ++r) {
      INFO("load on rank " << r << ": " << describe(errors[r]));
      REQUIRE_FALSE(errors[r]);
      check_rank_dict(dicts[r], r, n_load);
    }
  }
}

} // namespace

TEST_CASE("1 rank saves, 3 ranks load", "[group]") {
  round_trip(1, 0, 3, backend::filesystem);
}

TEST_CASE("2 ranks save, 5 ranks load", "[group]") {
  round_trip(2, 1, 5, backend::filesystem);
}

TEST_CASE("4 ranks save, 3 ranks load", "[group]") {
  round_trip(4, 2, 3, backend::filesystem);
}

TEST_CASE("8 ranks save, 5 ranks load", "[group]") {
  round_trip(8, 0, 5, backend::filesystem);
}

TEST_CASE("64 ranks save, 7 ranks load", "[group]") {
  round_trip(64, 63, 7, backend::filesystem);
}

TEST_CASE("8 ranks save to memory, 64 ranks load", "[group]") {
  round_trip(8, 5, 64, backend::memory);
}

TEST_CASE("parallel writer and reader actors split each rank's plan",
          "[group]") {
  real_system rs;
  checkpoint_dir dir{"parallel"};
  constexpr int32_t n = 3;
  auto grp = make_local_process_group(rs.sys, n);
  // Drive the agents by messages, as an embedding application would.
  std::vector<state_dict> dicts;
  for (int32_t r = 0; r < n; ++r)
    dicts.push_back(make_rank_dict(r, n, false));
  job_options jo;
  jo.coordinator_rank = 1;
  jo.step_timeout = 20s;
  jo.io_threads = 4;
  caf::scoped_actor self{rs.sys};
  for (int32_t r = 0; r < n; ++r) {
    auto job = make_save_job(
      dicts[r],
      make_filesystem_writer(dir.path.string(), fast_writer_options()), jo);
    REQUIRE(job);
    self->send(grp[r]->agent(), save_atom::value, std::move(*job));
  }
  for (int32_t r = 0; r < n; ++r)
    self->receive([](metadata&) {},
                  [](caf::error& err) { FAIL(describe(err)); },
                  caf::after(60s) >> [] { FAIL("no reply"); });
  // Four parts per rank: four data files per rank.
  CHECK(dir.count(".distcp") == static_cast<size_t>(4 * n));
  std::vector<state_dict> loaded;
  for (int32_t r = 0; r < n; ++r)
    loaded.push_back(make_rank_dict(r, n, true));
  for (int32_t r = 0; r < n; ++r) {
    auto job = make_load_job(loaded[r],
                             make_filesystem_reader(dir.path.string()), jo);
    REQUIRE(job);
    self->send(grp[r]->agent(), load_atom::value, std::move(*job));
  }
  for (int32_t r = 0; r < n; ++r)
    self->receive([](metadata&) {},
                  [](caf::error& err) { FAIL(describe(err)); },
                  caf::after(60s) >> [] { FAIL("no reply"); });
  for (int32_t r = 0; r < n; ++r)
    check_rank_dict(loaded[r], r, n);
}

TEST_CASE("async_save returns before the write and commits in the background",
          "[group]") {
  real_system rs;
  constexpr int32_t n = 4;
  auto store = make_memory_storage();
  auto grp = make_local_process_group(rs.sys, n);
  auto writes = std::make_shared<gate>();
  std::vector<std::unique_ptr<checkpointer>> cps;
  std::vector<state_dict> dicts;
  for (int32_t r = 0; r < n; ++r) {
    checkpointer_options opts;
    opts.process_group = grp[r];
    opts.coordinator_rank = 3;
    opts.step_timeout = 20s;
    cps.push_back(std::make_unique<checkpointer>(
      std::make_shared<gated_writer>(make_memory_writer(store), writes),
      make_memory_reader(store), opts));
    dicts.push_back(make_rank_dict(r, n, false));
  }
  auto row_of = [](state_dict& sd) -> at::Tensor& {
    auto& model = std::get<std::shared_ptr<state_dict>>(*sd.find("model"));
    return std::get<sharded_tensor>(*model->find("row")).local_shards[0].tensor;
  };
  // -- async_save returns once staged; the write happens later ---------------
  writes->set(false);
  std::vector<std::future<save_result>> first(n);
  on_every_rank(n, [&](int32_t r) { first[r] = cps[r]->async_save(dicts[r]); });
  for (auto& f : first)
    CHECK(f.wait_for(0s) == std::future_status::timeout);
  CHECK(committed_items(*store) == 0);
  // The staged copy is what gets written, not the caller's tensors.
  for (auto& sd : dicts)
    row_of(sd).fill_(-1.0f);
  writes->set(true);
  for (auto& f : first) {
    auto md = f.get();
    INFO((md ? "ok" : describe(md.error())));
    REQUIRE(md);
  }
  CHECK(committed_items(*store) > 0);
  std::vector<caf::error> errors(n);
  std::vector<state_dict> loaded(n);
  on_every_rank(n, [&](int32_t r) {
    loaded[r] = make_rank_dict(r, n, true);
    errors[r] = cps[r]->load(loaded[r]);
  });
  for (int32_t r = 0; r < n; ++r) {
    INFO(describe(errors[r]));
    REQUIRE_FALSE(errors[r]);
    check_rank_dict(loaded[r], r, n); // the values of before the fill
  }
  // -- a second async_save waits for the first -------------------------------
  writes->set(false);
  on_every_rank(n, [&](int32_t r) { first[r] = cps[r]->async_save(dicts[r]); });
  std::atomic<int> returned{0};
  std::vector<std::future<save_result>> second(n);
  std::vector<std::thread> callers;
  for (int32_t r = 0; r < n; ++r)
    callers.emplace_back([&, r] {
      second[r] = cps[r]->async_save(dicts[r]);
      ++returned;
    });
  std::this_thread::sleep_for(100ms);
  CHECK(returned == 0);
  writes->set(true);
  for (auto& t : callers)
    t.join();
  for (auto& f : first)
    CHECK(f.wait_for(0s) == std::future_status::ready);
  for (auto& f : first)
    REQUIRE(f.get());
  for (auto& f : second)
    REQUIRE(f.get());
  on_every_rank(n, [&](int32_t r) {
    loaded[r] = make_rank_dict(r, n, true);
    errors[r] = cps[r]->load(loaded[r]);
  });
  for (int32_t r = 0; r < n; ++r) {
    REQUIRE_FALSE(errors[r]);
    CHECK(at::equal(row_of(loaded[r]), row_of(dicts[r]))); // the -1s now
  }
}

/// Saves `make_rank_dict(r, n, changed)` on every rank of a fresh local
/// group of `n` ranks in `sys`, rank r with the storage writer
/// `writer_of(r)`, coordinated by `coordinator`; every rank's result.
template <class WriterOf>
std::vector<save_result>
save_on_every_rank(caf::actor_system& sys, int32_t n, WriterOf writer_of,
                   bool changed = false, int32_t coordinator = 0) {
  auto grp = make_local_process_group(sys, n);
  std::vector<save_result> results(n, save_result{
                                        make_error(errc::aborted, "not run")});
  on_every_rank(n, [&](int32_t r) {
    checkpointer_options opts;
    opts.process_group = grp[r];
    opts.coordinator_rank = coordinator;
    opts.step_timeout = 20s;
    checkpointer cp{writer_of(r), nullptr, opts};
    auto sd = make_rank_dict(r, n, changed);
    results[r] = cp.save(sd);
  });
  return results;
}

TEST_CASE("a rank that fails to write aborts the save on every rank",
          "[group]") {
  real_system rs;
  checkpoint_dir dir{"failed"};
  constexpr int32_t n = 4;
  auto results = save_on_every_rank(
    rs.sys, n,
    [&](int32_t r) {
      auto fs_writer = make_filesystem_writer(dir.path.string(),
                                              fast_writer_options());
      return std::make_shared<faulty_writer>(fs_writer, r == 2);
    },
    false, 1);
  for (int32_t r = 0; r < n; ++r) {
    INFO("rank " << r);
    REQUIRE_FALSE(results[r]);
    CHECK(describe(results[r].error()) == describe(results[0].error()));
  }
  auto failure = failure_text_of(results[0].error());
  REQUIRE(failure);
  CHECK(failure->step == "write");
  REQUIRE(failure->failures.size() == 1);
  CHECK(failure->failures.at(2).find("disk full") != std::string::npos);
  // No commit record, and every rank removed its data files.
  CHECK(dir.count(".metadata") == 0);
  CHECK(dir.count(".distcp") == 0);
}

TEST_CASE("a failure carries each failing rank with its own error code",
          "[group]") {
  real_system rs;
  checkpoint_dir dir{"failure_map"};
  constexpr int32_t n = 4;
  auto error_of = [](int32_t r) {
    if (r == 1)
      return make_error(errc::storage_failure, "rank 1: disk full");
    if (r == 3)
      return make_error(errc::io_error, "rank 3: EIO on __3_0.distcp");
    return caf::error{};
  };
  auto results = save_on_every_rank(rs.sys, n, [&](int32_t r) {
    auto fs_writer = make_filesystem_writer(dir.path.string(),
                                            fast_writer_options());
    return std::make_shared<faulty_writer>(fs_writer, error_of(r));
  });
  for (int32_t r = 0; r < n; ++r) {
    INFO("rank " << r);
    REQUIRE_FALSE(results[r]);
    CHECK(code_of(results[r].error()) == errc::checkpoint_failed);
    auto failure = checkpoint_failure_of(results[r].error());
    REQUIRE(failure);
    CHECK(failure->op == "save 1");
    CHECK(failure->step == "write");
    REQUIRE(failure->failures.size() == 2);
    REQUIRE(failure->failures.count(1) == 1);
    REQUIRE(failure->failures.count(3) == 1);
    CHECK(code_of(failure->failures.at(1)) == errc::storage_failure);
    CHECK(code_of(failure->failures.at(3)) == errc::io_error);
    CHECK(describe(failure->failures.at(3)).find("__3_0.distcp")
          != std::string::npos);
  }
  CHECK(dir.count(".metadata") == 0);
}

TEST_CASE("ranks given different directories fail in step plan, writing "
          "and deleting nothing",
          "[group]") {
  real_system rs;
  checkpoint_dir a{"dirs_a"};
  checkpoint_dir b{"dirs_b"};
  constexpr int32_t n = 3;
  auto save_all = [&](auto dir_of, bool changed) {
    return save_on_every_rank(
      rs.sys, n,
      [&](int32_t r) {
        return make_filesystem_writer(dir_of(r).string(),
                                      fast_writer_options());
      },
      changed);
  };
  auto read_file = [](const fs::path& p) {
    std::ifstream in{p, std::ios::binary};
    return std::string{std::istreambuf_iterator<char>{in}, {}};
  };
  auto probes = [](const fs::path& dir) {
    size_t k = 0;
    for (auto& entry : fs::directory_iterator(dir))
      if (entry.path().filename().string().rfind(".dcpp.probe.", 0) == 0)
        ++k;
    return k;
  };
  // A good checkpoint in `a` first.
  for (auto& res : save_all([&](int32_t) { return a.path; }, 0))
    REQUIRE(res);
  auto files_a = a.count(".distcp");
  auto md_a = read_file(a.path / ".metadata");
  // Rank 1 is given `b`.
  auto results = save_all([&](int32_t r) { return r == 1 ? b.path : a.path; },
                          1);
  for (int32_t r = 0; r < n; ++r) {
    INFO("rank " << r);
    REQUIRE_FALSE(results[r]);
    auto failure = checkpoint_failure_of(results[r].error());
    REQUIRE(failure);
    CHECK(failure->step == "plan");
    REQUIRE(failure->failures.count(0) == 1);
    auto text = describe(failure->failures.at(0));
    CHECK(text.find("rank(s) 1 do not write into") != std::string::npos);
  }
  // Nothing written, nothing deleted: `a` holds its checkpoint as it was.
  CHECK(read_file(a.path / ".metadata") == md_a);
  CHECK(a.count(".distcp") == files_a);
  CHECK(b.count(".distcp") == 0);
  CHECK(b.count(".metadata") == 0);
  CHECK(probes(a.path) == 0);
  CHECK(probes(b.path) == 0);
}

TEST_CASE("a rank whose state dict is broken fails the save everywhere",
          "[group]") {
  real_system rs;
  constexpr int32_t n = 3;
  auto store = make_memory_storage();
  auto grp = make_local_process_group(rs.sys, n);
  std::vector<save_result> results(n, save_result{
                                        make_error(errc::aborted, "not run")});
  on_every_rank(n, [&](int32_t r) {
    checkpointer_options opts;
    opts.process_group = grp[r];
    opts.step_timeout = 20s;
    checkpointer cp{make_memory_writer(store), make_memory_reader(store), opts};
    auto sd = make_rank_dict(r, n, false);
    if (r == 1)
      sd.set("broken", at::Tensor{}); // undefined tensor: make_view fails
    results[r] = cp.save(sd);
  });
  for (int32_t r = 0; r < n; ++r)
    REQUIRE_FALSE(results[r]);
  auto failure = failure_text_of(results[2].error());
  REQUIRE(failure);
  CHECK(failure->step == "plan");
  REQUIRE(failure->failures.count(1) == 1);
  CHECK(failure->failures.at(1).find("broken") != std::string::npos);
  CHECK(committed_items(*store) == 0);
}

TEST_CASE("the report of a group save counts the bytes of its data files",
          "[group][report]") {
  real_system rs;
  constexpr int32_t n = 3;
  checkpoint_dir dir{"report"};
  std::mutex mx;
  std::vector<progress_update> updates;
  set_progress_listener([&](const progress_update& u) {
    std::lock_guard<std::mutex> guard{mx};
    updates.push_back(u);
  });
  // -- save -----------------------------------------------------------------
  std::vector<op_report> reports(n);
  {
    auto grp = make_local_process_group(rs.sys, n);
    std::vector<caf::error> errors(n);
    on_every_rank(n, [&](int32_t r) {
      checkpointer_options opts;
      opts.process_group = grp[r];
      opts.coordinator_rank = 1;
      opts.step_timeout = 20s;
      checkpointer cp{make_filesystem_writer(dir.path.string(),
                                             fast_writer_options()),
                      make_filesystem_reader(dir.path.string()), opts};
      CHECK(cp.last_report().bytes == 0);
      auto sd = make_rank_dict(r, n, false);
      auto md = cp.save(sd);
      if (!md)
        errors[r] = md.error();
      reports[r] = cp.last_report();
    });
    for (int32_t r = 0; r < n; ++r) {
      INFO("rank " << r << ": " << describe(errors[r]));
      REQUIRE_FALSE(errors[r]);
    }
  }
  set_progress_listener({});
  uint64_t file_bytes = 0;
  uint64_t files = 0;
  for (const auto& entry : fs::directory_iterator(dir.path))
    if (entry.path().extension() == ".distcp") {
      file_bytes += fs::file_size(entry.path());
      ++files;
    }
  REQUIRE(file_bytes > 0);
  for (int32_t r = 0; r < n; ++r) {
    INFO("rank " << r);
    const auto& rep = reports[r];
    CHECK(rep.bytes == file_bytes);
    CHECK(rep.files == files);
    CHECK(rep.ranks == n);
    CHECK(rep.plan_us > 0);
    CHECK(rep.data_us > 0);
    CHECK(rep.commit_us > 0);
    CHECK(rep.total_us >= rep.data_us);
    CHECK(rep.throughput() > 0);
    CHECK(rep.total_us == reports[0].total_us); // one report for all ranks
  }
  // The coordinator's process heard of the save's end once, with its bytes.
  {
    std::lock_guard<std::mutex> guard{mx};
    size_t done = 0;
    for (const auto& u : updates)
      if (u.now == progress_update::state::done) {
        ++done;
        CHECK(u.op == "save 1");
        CHECK(u.done == file_bytes);
        CHECK(u.world == n);
      }
    CHECK(done == 1);
  }
  // -- load on two ranks
  // --------------------------------------------------------
  {
    auto grp = make_local_process_group(rs.sys, 2);
    std::vector<caf::error> errors(2);
    std::vector<op_report> load_reports(2);
    on_every_rank(2, [&](int32_t r) {
      checkpointer_options opts;
      opts.process_group = grp[r];
      opts.step_timeout = 20s;
      checkpointer cp{nullptr, make_filesystem_reader(dir.path.string()), opts};
      auto sd = make_rank_dict(r, 2, true);
      errors[r] = cp.load(sd);
      load_reports[r] = cp.last_report();
    });
    for (int32_t r = 0; r < 2; ++r) {
      INFO("rank " << r << ": " << describe(errors[r]));
      REQUIRE_FALSE(errors[r]);
      // Replicated items are read by both ranks: at least every file's bytes
      // once, at most twice.
      CHECK(load_reports[r].bytes >= file_bytes);
      CHECK(load_reports[r].bytes <= 2 * file_bytes);
      CHECK(load_reports[r].files >= files);
      CHECK(load_reports[r].data_us > 0);
      CHECK(load_reports[r].commit_us == 0);
    }
  }
}
