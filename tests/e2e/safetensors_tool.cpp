// Drives dcpp's safetensors storage on in-process groups of ranks (threads)
// for tests/e2e/safetensors_test.py:
//
//   safetensors_tool save DIR WORLD [MAX_SHARD_BYTES]
//   safetensors_tool load PATH WORLD
//
// The tensors (values known to the Python side by the same formulas):
//   row   float32 [6, 4]  arange(24) * 1.5      row-sharded over the ranks
//   col   float64 [5, 6]  arange(30) - 7        column-sharded over the ranks
//   i     int64   [7]     arange(7) * 1000003   whole (every rank)
//   h     bfloat16[3, 3]  arange(9) / 4         whole
//   b     bool    [5]     arange(5) % 2 == 0    whole
//   u     uint8   [4, 2]  arange(8) * 30        whole
// plus, when saving, the bytes value "epoch" (torch.save of 7).
// `load` loads every tensor into the same sharding on WORLD ranks and
// checks each rank's values; exit 0 when all are equal, 1 otherwise.

#include "actors/checkpointer.hpp"
#include "actors/process_group.hpp"
#include "actors/system.hpp"
#include "core/error.hpp"
#include "storage/safetensors.hpp"

#include <caf/all.hpp>

#include <ATen/ATen.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

using namespace dcpp;
using namespace std::chrono_literals;

namespace {

at::Tensor global(const std::string& name) {
  if (name == "row")
    return at::arange(24, at::kFloat).reshape({6, 4}) * 1.5;
  if (name == "col")
    return at::arange(30, at::kDouble).reshape({5, 6}) - 7;
  if (name == "i")
    return at::arange(7, at::kLong) * 1000003;
  if (name == "h")
    return (at::arange(9, at::kFloat).reshape({3, 3}) / 4).to(at::kBFloat16);
  if (name == "b")
    return at::arange(5, at::kLong).remainder(2).eq(0);
  return (at::arange(8, at::kInt).reshape({4, 2}) * 30).to(at::kByte);
}

/// Rows (dim 0) or columns (dim 1) of `t` that rank `r` of `n` holds.
sharded_tensor split(const at::Tensor& t, int64_t dim, int32_t r, int32_t n) {
  sharded_tensor st;
  st.global_size = t.sizes().vec();
  auto len = t.size(dim);
  auto begin = len * r / n;
  auto end = len * (r + 1) / n;
  shape_t offsets(static_cast<size_t>(t.dim()), 0);
  offsets[static_cast<size_t>(dim)] = begin;
  if (end > begin)
    st.local_shards.push_back(
      {t.narrow(dim, begin, end - begin).clone(), offsets});
  return st;
}

const std::vector<std::string> whole{"i", "h", "b", "u"};

state_dict rank_dict(int32_t r, int32_t n, bool empty) {
  state_dict sd;
  auto value = [&](const std::string& name) {
    auto t = global(name);
    return empty ? at::zeros_like(t) : t;
  };
  sd.set("row", split(value("row"), 0, r, n));
  sd.set("col", split(value("col"), 1, r, n));
  for (const auto& name : whole)
    sd.set(name, value(name));
  if (!empty)
    sd.set("epoch", bytes_value::from_int(7));
  return sd;
}

bool check(const state_dict& sd, int32_t r, int32_t n) {
  bool ok = true;
  auto expect = [&](const std::string& name, const at::Tensor& got,
                    const at::Tensor& want) {
    if (got.scalar_type() != want.scalar_type() || !at::equal(got, want)) {
      std::cerr << "rank " << r << " of " << n << ": " << name
                << " differs\n got " << got << "\n want " << want << "\n";
      ok = false;
    }
  };
  for (const auto& [name, dim] :
       std::vector<std::pair<std::string, int64_t>>{{"row", 0}, {"col", 1}}) {
    auto want = split(global(name), dim, r, n);
    const auto& got = std::get<sharded_tensor>(*sd.find(name));
    for (size_t k = 0; k < got.local_shards.size(); ++k)
      expect(name, got.local_shards[k].tensor, want.local_shards[k].tensor);
  }
  for (const auto& name : whole)
    expect(name, std::get<at::Tensor>(*sd.find(name)), global(name));
  return ok;
}

template <class F>
void on_every_rank(int32_t n, F f) {
  std::vector<std::thread> threads;
  for (int32_t r = 0; r < n; ++r)
    threads.emplace_back([=] { f(r); });
  for (auto& t : threads)
    t.join();
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: safetensors_tool save DIR WORLD [MAX_SHARD_BYTES] | "
                 "load PATH WORLD\n";
    return 2;
  }
  std::string cmd = argv[1];
  std::string path = argv[2];
  auto n = static_cast<int32_t>(std::atoi(argv[3]));
  system_config cfg{system_options{4, false}};
  caf::actor_system sys{cfg};
  auto grp = make_local_process_group(sys, n);
  std::vector<caf::error> errors(static_cast<size_t>(n));
  std::vector<bool> ok(static_cast<size_t>(n), true);
  on_every_rank(n, [&](int32_t r) {
    checkpointer_options opts;
    opts.process_group = grp[static_cast<size_t>(r)];
    opts.coordinator_rank = n - 1;
    opts.step_timeout = 60s;
    safetensors_writer_options wopts;
    if (argc > 4)
      wopts.max_shard_bytes = std::strtoull(argv[4], nullptr, 10);
    checkpointer cp{make_safetensors_writer(path, wopts),
                    make_safetensors_reader(path), opts};
    if (cmd == "save") {
      auto sd = rank_dict(r, n, false);
      auto res = cp.save(sd);
      if (!res)
        errors[static_cast<size_t>(r)] = res.error();
    } else {
      auto sd = rank_dict(r, n, true);
      errors[static_cast<size_t>(r)] = cp.load(sd);
      if (!errors[static_cast<size_t>(r)])
        ok[static_cast<size_t>(r)] = check(sd, r, n);
    }
  });
  int rc = 0;
  for (int32_t r = 0; r < n; ++r) {
    if (errors[static_cast<size_t>(r)]) {
      std::cerr << cmd << " on rank " << r << ": "
                << describe(errors[static_cast<size_t>(r)]) << "\n";
      rc = 1;
    }
    if (!ok[static_cast<size_t>(r)])
      rc = 1;
  }
  if (rc == 0)
    std::cout << cmd << " on " << n << " rank(s): ok\n";
  return rc;
}
