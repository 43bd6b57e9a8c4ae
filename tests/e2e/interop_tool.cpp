// dcpp's side of the interoperability tests with PyTorch DCP
// (scripts/interop/run_interop.py drives both sides).
//
//   interop_tool save DIR --world W --layout L [--seed K] [--size-mb S]
//                [--flavor 1.13|2] [--threads T] [--coordinator C]
//   interop_tool load DIR --world W --layout L [--seed K] [--size-mb S]
//
// W ranks run as threads of one process (a local process group); each saves
// or loads its part of the synthetic model (apps/synthetic.hpp) and `load`
// verifies every value bit for bit. Exit code 0 on success.

#include "actors/checkpointer.hpp"
#include "actors/process_group.hpp"
#include "actors/system.hpp"
#include "apps/synthetic.hpp"
#include "core/error.hpp"
#include "storage/filesystem.hpp"
#include "storage/metadata_codec.hpp"

#include <caf/actor_system.hpp>

#include <CLI/CLI.hpp>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <thread>

using namespace dcpp;

int main(int argc, char** argv) {
  CLI::App app{"dcpp side of the PyTorch interoperability tests"};
  std::string mode;
  std::string dir;
  int32_t world = 1;
  int32_t coordinator = 0;
  std::string layout_name = "mixed";
  uint32_t seed = 0;
  double size_mb = 4;
  std::string flavor_name = "2";
  size_t threads = 1;
  app.add_option("mode", mode, "save or load")
    ->required()
    ->check(CLI::IsMember({"save", "load"}));
  app.add_option("dir", dir, "checkpoint directory")->required();
  app.add_option("--world", world, "ranks (threads)");
  app.add_option("--coordinator", coordinator, "coordinator rank");
  app.add_option("--layout", layout_name, "row, col, replicated or mixed");
  app.add_option("--seed", seed, "value seed");
  app.add_option("--size-mb", size_mb, "model size");
  app.add_option("--flavor", flavor_name, ".metadata flavor: 1.13 or 2");
  app.add_option("--threads", threads, "writer/reader threads per rank");
  CLI11_PARSE(app, argc, argv);

  auto layout = synthetic::parse_layout(layout_name);
  auto flavor = parse_metadata_flavor(flavor_name);
  if (!layout || !flavor) {
    std::fprintf(stderr, "interop_tool: %s\n",
                 describe(!layout ? layout.error() : flavor.error()).c_str());
    return 2;
  }

  system_options sopts;
  sopts.scheduler_threads = 2;
  system_config cfg{sopts};
  caf::actor_system sys{cfg};
  auto group = make_local_process_group(sys, world);
  std::mutex mx;
  std::atomic<int> failures{0};
  std::vector<std::thread> ranks;
  for (int32_t r = 0; r < world; ++r) {
    ranks.emplace_back([&, r] {
      synthetic::options opts;
      opts.size_mb = size_mb;
      opts.seed = seed;
      opts.split = *layout;
      opts.rank = r;
      opts.world = world;
      filesystem_writer_options wopts;
      wopts.flavor = *flavor;
      wopts.thread_count = threads;
      filesystem_reader_options ropts;
      ropts.thread_count = threads;
      checkpointer_options copts;
      copts.process_group = group[static_cast<size_t>(r)];
      copts.coordinator_rank = coordinator;
      copts.step_timeout = std::chrono::seconds(120);
      checkpointer cp{make_filesystem_writer(dir, wopts),
                      make_filesystem_reader(dir, ropts), copts};
      std::string problem;
      if (mode == "save") {
        auto md = cp.save(synthetic::make_state_dict(opts));
        if (!md)
          problem = describe(md.error());
      } else {
        auto sd = synthetic::make_empty_state_dict(opts);
        if (auto err = cp.load(sd)) {
          problem = describe(err);
        } else {
          for (const auto& key : synthetic::verify(sd, opts))
            problem += (problem.empty() ? "values differ: " : ", ") + key;
        }
      }
      std::lock_guard<std::mutex> guard{mx};
      if (problem.empty()) {
        std::printf("rank %d/%d: %s ok\n", r, world, mode.c_str());
      } else {
        std::fprintf(stderr, "rank %d/%d: %s failed: %s\n", r, world,
                     mode.c_str(), problem.c_str());
        ++failures;
      }
    });
  }
  for (auto& t : ranks)
    t.join();
  group.clear();
  return failures == 0 ? 0 : 1;
}
