// The staging pool of async saves (storage/staging_pool.hpp) and the
// checkpointer's use of it: the second async_save of a layout allocates
// nothing, staged copies go back to the pool before the future is ready, a
// layout that does not fit rebuilds the pool, released memory leaves the
// process, and what is saved is bit-exact what the caller held when
// async_save returned. Real files in a temporary directory, with no_dist and
// with a local process group of two ranks.

#include "actors/checkpointer.hpp"
#include "actors/process_group.hpp"
#include "actors/system.hpp"
#include "core/error.hpp"
#include "storage/filesystem.hpp"
#include "storage/staging_pool.hpp"
#include "tests/storage/fs_test_util.hpp"

#include <caf/all.hpp>

#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace dcpp;

namespace {

constexpr uint64_t mib = uint64_t{1} << 20;

/// Values of several dtypes, kinds and layouts; `scale` grows the large
/// tensor (a layout change), `salt` changes the values.
state_dict make_state(int64_t scale, int64_t salt) {
  state_dict sd;
  sd.set("big", at::arange(scale * 64 * 1024, at::kFloat).add_(salt));
  sd.set("bf16", at::arange(97, at::kFloat).add_(salt).to(at::kBFloat16));
  sd.set("f16", at::linspace(-1, 1, 33).add_(salt).to(at::kHalf));
  sd.set("f64", at::scalar_tensor(2.5 + salt, at::kDouble));
  sd.set("i64", at::tensor({int64_t{1} << 40, -7 - salt}));
  sd.set("i8", at::arange(-5, 6, at::kChar));
  sd.set("u8", at::arange(200, at::kByte));
  sd.set("bool", at::arange(9).remainder(2 + salt % 2).eq(0));
  sd.set("strided", at::arange(12, at::kFloat).add_(salt).reshape({3, 4}).t());
  sd.set("empty", at::empty({0, 3}, at::kFloat));
  sd.set("step", bytes_value::from_int(100 + salt));
  sharded_tensor st;
  st.global_size = {8, 4};
  st.local_shards.push_back(
    {at::arange(16, at::kInt).add_(salt).reshape({4, 4}), {0, 0}});
  st.local_shards.push_back(
    {at::arange(16, at::kInt).neg_().reshape({4, 4}), {4, 0}});
  sd.nested("optim").set("shard", std::move(st));
  sd.nested("optim").set("lr", bytes_value::from_double(0.5));
  return sd;
}

/// A destination of `sd`'s keys and shapes, zeroed.
state_dict zeroed(state_dict sd) {
  auto flat = flatten(sd);
  REQUIRE(flat);
  for (auto& [key, v] : flat->items) {
    if (auto t = std::get_if<at::Tensor>(v))
      *t = at::zeros(t->sizes(), t->options());
    else if (auto st = std::get_if<sharded_tensor>(v))
      for (auto& sh : st->local_shards)
        sh.tensor = at::zeros(sh.tensor.sizes(), sh.tensor.options());
    else if (auto b = std::get_if<bytes_value>(v))
      b->data.clear();
  }
  return sd;
}

/// Bit-exact equality of every value, walking both flattened.
void require_same(state_dict expected, state_dict actual) {
  auto a = flatten(expected);
  auto b = flatten(actual);
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE(a->items.size() == b->items.size());
  for (size_t i = 0; i < a->items.size(); ++i) {
    const auto& [key, x] = a->items[i];
    const auto* y = b->items[i].second;
    INFO("key " << key);
    REQUIRE(b->items[i].first == key);
    REQUIRE(x->index() == y->index());
    auto same = [](const at::Tensor& p, const at::Tensor& q) {
      return p.scalar_type() == q.scalar_type() && p.sizes() == q.sizes()
             && at::equal(p, q);
    };
    if (auto t = std::get_if<at::Tensor>(x)) {
      CHECK(same(*t, std::get<at::Tensor>(*y)));
    } else if (auto st = std::get_if<sharded_tensor>(x)) {
      const auto& other = std::get<sharded_tensor>(*y);
      REQUIRE(st->local_shards.size() == other.local_shards.size());
      for (size_t k = 0; k < st->local_shards.size(); ++k)
        CHECK(same(st->local_shards[k].tensor, other.local_shards[k].tensor));
    } else {
      CHECK(std::get<bytes_value>(*x).data == std::get<bytes_value>(*y).data);
    }
  }
}

checkpointer_options solo_options(bool keep) {
  checkpointer_options opts;
  opts.no_dist = true;
  opts.keep_staging_memory = keep;
  return opts;
}

std::unique_ptr<checkpointer> make_checkpointer(const std::string& dir,
                                                checkpointer_options opts) {
  return std::make_unique<checkpointer>(make_filesystem_writer(dir),
                                        make_filesystem_reader(dir),
                                        std::move(opts));
}

/// Bytes resident in this process (/proc/self/statm).
uint64_t resident_bytes() {
  std::ifstream in{"/proc/self/statm"};
  uint64_t size = 0;
  uint64_t resident = 0;
  in >> size >> resident;
  return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

} // namespace

// -- the pool alone ---------------------------------------------------------

TEST_CASE("staging_pool copies bit-exact and reuses its buffer", "[staging]") {
  staging_pool pool;
  auto sd = make_state(1, 0);
  {
    auto staged = pool.stage(sd);
    REQUIRE(staged);
    require_same(sd, *staged);
    auto st = pool.stats();
    CHECK(st.allocations == 1);
    CHECK(st.buffers_in_use == 1);
    CHECK(st.bytes_in_use >= 256 * 1024);
    // Views of pool memory, not of the caller's tensors.
    auto& big = std::get<at::Tensor>(*staged->find("big"));
    CHECK(big.data_ptr() != std::get<at::Tensor>(*sd.find("big")).data_ptr());
    CHECK(big.is_contiguous());
  }
  auto after = pool.stats();
  CHECK(after.buffers_in_use == 0);
  CHECK(after.bytes_in_use == 0);
  CHECK(after.buffers_held == 1);
  // The same layout, and a smaller one: no new buffer.
  auto other = make_state(1, 3);
  auto again = pool.stage(other);
  REQUIRE(again);
  require_same(other, *again);
  again = caf::error{make_error(errc::aborted)};
  auto smaller = make_state(0, 1);
  auto small_staged = pool.stage(smaller);
  REQUIRE(small_staged);
  require_same(smaller, *small_staged);
  auto st = pool.stats();
  CHECK(st.allocations == 1);
  CHECK(st.reuses == 2);
  CHECK(st.rebuilds == 0);
}

TEST_CASE("staging_pool rebuilds for a layout that does not fit", "[staging]") {
  staging_pool pool;
  auto small = make_state(1, 0);
  REQUIRE(pool.stage(small));
  auto held = pool.stats().bytes_held;
  auto large = make_state(40, 0); // 10 MiB in "big"
  auto staged = pool.stage(large);
  REQUIRE(staged);
  require_same(large, *staged);
  auto st = pool.stats();
  CHECK(st.allocations == 2);
  CHECK(st.rebuilds == 1);
  CHECK(st.buffers_held == 1); // the small buffer went first
  CHECK(st.bytes_held > held);
}

TEST_CASE("staging_pool never writes over a buffer still lent", "[staging]") {
  staging_pool pool;
  auto sd = make_state(1, 0);
  auto first = pool.stage(sd);
  REQUIRE(first);
  auto kept = std::get<at::Tensor>(*first->find("big")); // outlives the dict
  first = caf::error{make_error(errc::aborted)};
  CHECK(pool.stats().buffers_in_use == 1);
  auto changed = make_state(1, 5);
  auto second = pool.stage(changed);
  REQUIRE(second);
  CHECK(pool.stats().allocations == 2);
  CHECK(at::equal(kept, std::get<at::Tensor>(*sd.find("big"))));
  kept.reset();
  second = caf::error{make_error(errc::aborted)};
  auto st = pool.stats();
  CHECK(st.buffers_in_use == 0);
  CHECK(st.buffers_held == 1); // one kept, the other unmapped
}

TEST_CASE("staging_pool release and keep_memory=false unmap", "[staging]") {
  // 256 MiB, so that the resident set shows it over the noise.
  state_dict sd;
  sd.set("w", at::ones({int64_t{64} << 20}, at::kFloat));
  SECTION("release") {
    staging_pool pool;
    REQUIRE(pool.stage(sd));
    CHECK(pool.stats().bytes_held >= 256 * mib);
    auto before = resident_bytes();
    pool.release();
    auto after = resident_bytes();
    CHECK(pool.stats().bytes_held == 0);
    CHECK(pool.stats().buffers_held == 0);
    INFO("resident before " << before << ", after " << after);
    CHECK(before >= after + 128 * mib);
  }
  SECTION("keep_memory = false") {
    staging_pool_options opts;
    opts.keep_memory = false;
    staging_pool pool{opts};
    auto staged = pool.stage(sd);
    REQUIRE(staged);
    CHECK(pool.stats().bytes_in_use >= 256 * mib);
    auto before = resident_bytes();
    staged = caf::error{make_error(errc::aborted)};
    auto after = resident_bytes();
    CHECK(pool.stats().bytes_held == 0);
    INFO("resident before " << before << ", after " << after);
    CHECK(before >= after + 128 * mib);
  }
}

TEST_CASE("staging_pool copies on two threads", "[staging]") {
  staging_pool_options opts;
  opts.copy_threads = 2;
  opts.parallel_copy_bytes = 0;
  staging_pool pool{opts};
  auto sd = make_state(9, 2);
  auto staged = pool.stage(sd);
  REQUIRE(staged);
  require_same(sd, *staged);
}

TEST_CASE("staging_pool resolves conjugate and negative views", "[staging]") {
  staging_pool pool;
  state_dict sd;
  auto z = at::view_as_complex(at::arange(8, at::kFloat).reshape({4, 2}));
  sd.set("conj", z.conj());
  sd.set("neg", at::_neg_view(at::arange(5, at::kDouble)));
  auto staged = pool.stage(sd);
  REQUIRE(staged);
  auto conj = std::get<at::Tensor>(*staged->find("conj"));
  CHECK_FALSE(conj.is_conj());
  CHECK(at::equal(conj, z.conj().resolve_conj()));
  CHECK(at::equal(std::get<at::Tensor>(*staged->find("neg")),
                  -at::arange(5, at::kDouble)));
}

TEST_CASE("staging_pool names the key it cannot copy", "[staging]") {
  staging_pool pool;
  state_dict sd;
  sd.set("dense", at::ones({4}));
  sd.nested("layer").set("sparse", at::eye(3).to_sparse());
  auto staged = pool.stage(sd);
  REQUIRE_FALSE(staged);
  CHECK(code_of(staged.error()) == errc::invalid_argument);
  CHECK_THAT(context_of(staged.error()), Catch::Contains("layer.sparse"));
  CHECK(pool.stats().buffers_in_use == 0); // the buffer came back
}

// -- the checkpointer -------------------------------------------------------

TEST_CASE("async_save reuses its staging memory and saves what was staged",
          "[staging]") {
  fs_test::temp_dir dir;
  auto cp = make_checkpointer(dir.path(), solo_options(true));
  auto sd = make_state(4, 0);
  auto expected = make_state(4, 0);
  auto fut = cp->async_save(sd, dir / "a");
  // The caller trains on: nothing of this reaches the checkpoint.
  std::get<at::Tensor>(*sd.find("big")).fill_(-1.0f);
  std::get<at::Tensor>(*sd.find("bf16")).zero_();
  auto& shard = std::get<sharded_tensor>(*sd.nested("optim").find("shard"));
  shard.local_shards[1].tensor.fill_(7);
  auto md = fut.get();
  INFO((md ? "ok" : describe(md.error())));
  REQUIRE(md);
  auto st = cp->staging_stats();
  CHECK(st.allocations == 1);
  CHECK(st.buffers_in_use == 0); // released before the future was ready
  CHECK(st.buffers_held == 1);
  // The second save of the same layout allocates nothing.
  auto second = cp->async_save(sd, dir / "b");
  REQUIRE(second.get());
  st = cp->staging_stats();
  CHECK(st.allocations == 1);
  CHECK(st.reuses == 1);
  CHECK(st.buffers_in_use == 0);
  // Back to back: the next async_save waits for this one, whose staged
  // copy is in the pool again by then, so one staged copy at a time.
  auto third = cp->async_save(sd, dir / "b2");
  auto fourth = cp->async_save(sd, dir / "b3");
  CHECK(third.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  REQUIRE(third.get());
  REQUIRE(fourth.get());
  st = cp->staging_stats();
  CHECK(st.allocations == 1);
  CHECK(st.reuses == 3);
  CHECK(st.buffers_held == 1);
  auto loaded = zeroed(make_state(4, 0));
  REQUIRE_FALSE(cp->load(loaded, dir / "a"));
  require_same(expected, loaded);
  loaded = zeroed(make_state(4, 0));
  REQUIRE_FALSE(cp->load(loaded, dir / "b"));
  require_same(sd, loaded);
  // A larger layout rebuilds; release gives everything back.
  auto large = make_state(40, 1);
  REQUIRE(cp->async_save(large, dir / "c").get());
  st = cp->staging_stats();
  CHECK(st.allocations == 2);
  CHECK(st.rebuilds == 1);
  cp->release_staging_memory();
  st = cp->staging_stats();
  CHECK(st.buffers_held == 0);
  CHECK(st.bytes_held == 0);
  loaded = zeroed(make_state(40, 1));
  REQUIRE_FALSE(cp->load(loaded, dir / "c"));
  require_same(large, loaded);
}

TEST_CASE("async_save with keep_staging_memory = false holds nothing after",
          "[staging]") {
  fs_test::temp_dir dir;
  auto cp = make_checkpointer(dir.path(), solo_options(false));
  auto sd = make_state(4, 2);
  for (int i = 0; i < 2; ++i) {
    auto md = cp->async_save(sd).get();
    REQUIRE(md);
    auto st = cp->staging_stats();
    CHECK(st.allocations == static_cast<uint64_t>(i + 1));
    CHECK(st.buffers_held == 0);
    CHECK(st.bytes_held == 0);
  }
  auto loaded = zeroed(make_state(4, 2));
  REQUIRE_FALSE(cp->load(loaded));
  require_same(sd, loaded);
}

TEST_CASE("async_save on a group of two ranks reuses each rank's pool",
          "[staging]") {
  fs_test::temp_dir dir;
  system_config cfg{system_options{4, false}};
  caf::actor_system sys{cfg};
  {
    constexpr int32_t n = 2;
    auto group = make_local_process_group(sys, n);
    std::vector<std::unique_ptr<checkpointer>> cps;
    std::vector<state_dict> dicts;
    for (int32_t r = 0; r < n; ++r) {
      checkpointer_options opts;
      opts.process_group = group[r];
      opts.step_timeout = std::chrono::seconds(30);
      cps.push_back(make_checkpointer(dir.path(), opts));
      // Each rank its own keys: both ranks' data is in the checkpoint.
      state_dict sd;
      sd.set("rank" + std::to_string(r),
             make_state(2, r).entries().front().second);
      sd.set("shared", at::arange(100, at::kLong));
      dicts.push_back(std::move(sd));
    }
    auto on_ranks = [&](auto f) {
      std::vector<std::thread> threads;
      for (int32_t r = 0; r < n; ++r)
        threads.emplace_back([&, r] { f(r); });
      for (auto& t : threads)
        t.join();
    };
    std::vector<save_result> results(n, caf::error{make_error(errc::aborted)});
    for (int round = 0; round < 2; ++round) {
      on_ranks([&](int32_t r) {
        auto fut = cps[r]->async_save(dicts[r]);
        // Changed after staging: the next round saves this.
        std::get<at::Tensor>(dicts[r].entries().front().second).add_(1.0f);
        results[r] = fut.get();
      });
      for (int32_t r = 0; r < n; ++r) {
        INFO("rank " << r << " round " << round << ": "
                     << (results[r] ? "ok" : describe(results[r].error())));
        REQUIRE(results[r]);
        auto st = cps[r]->staging_stats();
        CHECK(st.allocations == 1);
        CHECK(st.reuses == static_cast<uint64_t>(round));
        CHECK(st.buffers_in_use == 0);
      }
    }
    std::vector<caf::error> errors(n);
    std::vector<state_dict> loaded(n);
    for (int32_t r = 0; r < n; ++r)
      loaded[r] = zeroed(dicts[r]);
    on_ranks([&](int32_t r) { errors[r] = cps[r]->load(loaded[r]); });
    for (int32_t r = 0; r < n; ++r) {
      INFO("rank " << r << ": " << describe(errors[r]));
      REQUIRE_FALSE(errors[r]);
      // The second round saved the values before its own add_.
      auto& now = std::get<at::Tensor>(dicts[r].entries().front().second);
      CHECK(at::equal(std::get<at::Tensor>(loaded[r].entries().front().second),
                      now - 1.0f));
      CHECK(at::equal(std::get<at::Tensor>(*loaded[r].find("shared")),
                      at::arange(100, at::kLong)));
    }
    cps.clear();
  }
}
