// dcpp_plan_bench: how planning grows with the number of ranks (issue 13).
//
// All ranks in one process, pure planning functions only (core/): every
// rank builds its local save plan, the coordinator de-duplicates and builds
// the global plan and metadata, and every rank plans a load of the same
// layout against that metadata. Prints one JSON line per world size with
// the wall time of each phase (median of --rounds). Load planning runs
// against one load_index of the metadata, built once (load_index_s) and
// shared by every rank, as ranks in one process can.
//
//   dcpp_plan_bench [--ranks 64,256,1024] [--tensors 1000] [--rounds 3]
//
// The layout: `--tensors` tensors per rank; half of them row-sharded over
// all ranks (one chunk per rank: the metadata holds ranks × tensors / 2
// chunks), half replicated on every rank (de-duplicated to one writer).
// Every rank's flatten mapping is the same (nested keys "model.layer_N.x").

#include "core/planner.hpp"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <sstream>
#include <string>
#include <vector>

using namespace dcpp;

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

state_dict_view rank_view(int64_t rank, int64_t world, int64_t tensors) {
  state_dict_view view;
  const int64_t rows_per_rank = 4;
  const int64_t cols = 256;
  for (int64_t t = 0; t < tensors; ++t) {
    item_view item;
    auto leaf = (t % 2 == 0) ? "weight" : "bias";
    item.fqn = "model.layer_" + std::to_string(t / 2) + "." + leaf;
    item.properties.type = dtype::float32;
    if (t % 2 == 0) {
      item.sharded = true;
      item.global_size = {rows_per_rank * world, cols};
      chunk_storage_metadata c;
      c.offsets = {rows_per_rank * rank, 0};
      c.sizes = {rows_per_rank, cols};
      item.local_chunks.push_back(std::move(c));
    } else {
      item.global_size = {cols};
    }
    view.mapping[item.fqn] = {"model", "layer_" + std::to_string(t / 2), leaf};
    view.items.push_back(std::move(item));
  }
  return view;
}

/// This thread's CPU seconds: on a shared machine, what planning costs
/// without the time other processes took the core away.
double thread_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec)
         + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double median(std::vector<double> xs) {
  std::sort(xs.begin(), xs.end());
  return xs[xs.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"dcpp_plan_bench: planning time against the number of ranks"};
  std::vector<int64_t> worlds{64, 256, 1024};
  int64_t tensors = 1000;
  int rounds = 3;
  bool load = true;
  app.add_option("--ranks", worlds, "world sizes")->delimiter(',');
  app.add_option("--tensors", tensors, "tensors per rank");
  app.add_option("--rounds", rounds, "rounds per world size (median)");
  app.add_flag("!--no-load", load, "skip the load planning");
  CLI11_PARSE(app, argc, argv);
  for (auto world : worlds) {
    std::vector<double> t_local, t_dedup, t_global, t_index, t_load, t_load_max;
    std::vector<double> cpu_global;
    size_t chunks = 0;
    for (int round = 0; round < rounds; ++round) {
      std::vector<state_dict_view> views;
      for (int64_t r = 0; r < world; ++r)
        views.push_back(rank_view(r, world, tensors));
      auto t0 = clock_type::now();
      std::vector<save_plan> plans;
      for (const auto& v : views)
        plans.push_back(create_default_local_save_plan(v));
      t_local.push_back(seconds_since(t0));
      {
        auto copy = plans;
        auto t2 = clock_type::now();
        auto d = dedup_save_plans(std::move(copy));
        t_dedup.push_back(seconds_since(t2));
        if (!d) {
          std::fprintf(stderr, "dedup failed\n");
          return 1;
        }
      }
      t0 = clock_type::now();
      auto c0 = thread_cpu_seconds();
      auto global = create_default_global_save_plan(std::move(plans));
      cpu_global.push_back(thread_cpu_seconds() - c0);
      t_global.push_back(seconds_since(t0));
      if (!global) {
        std::fprintf(stderr, "global plan failed\n");
        return 1;
      }
      chunks = 0;
      for (const auto& [fqn, item] : global->md.state_dict_metadata)
        chunks += item.tensor.chunks.size();
      auto t3 = clock_type::now();
      load_index index{global->md};
      t_index.push_back(seconds_since(t3));
      double total = 0;
      double slowest = 0;
      for (const auto& v : views) {
        if (!load)
          break;
        auto t1 = clock_type::now();
        auto lp = create_default_local_load_plan(v, global->md, {}, index);
        auto dt = seconds_since(t1);
        if (!lp) {
          std::fprintf(stderr, "load plan failed\n");
          return 1;
        }
        total += dt;
        slowest = std::max(slowest, dt);
      }
      t_load.push_back(total / static_cast<double>(world));
      t_load_max.push_back(slowest);
    }
    std::printf(
      "{\"ranks\": %lld, \"tensors_per_rank\": %lld, "
      "\"saved_chunks\": %zu, \"local_save_plans_s\": %.4f, "
      "\"dedup_s\": %.4f, \"global_save_plan_s\": %.4f, "
      "\"global_save_plan_cpu_s\": %.4f, \"load_index_s\": %.4f, \"load_plan_per_rank_s\": "
      "%.5f, \"load_plan_slowest_rank_s\": %.5f}\n",
      static_cast<long long>(world), static_cast<long long>(tensors), chunks,
      median(t_local), median(t_dedup), median(t_global), median(cpu_global),
      median(t_index), median(t_load), median(t_load_max));
    std::fflush(stdout);
  }
  return 0;
}
