// Embedding dcpp in an application that already runs its own CAF actor
// system: dcpp does not own main() or the system. The application
//   1. (optionally) calls dcpp::configure(cfg) so dcpp errors render nicely,
//   2. spawns a process group of N ranks into its system,
//   3. drives the rank agents by messages from one of its own actors:
//        request(agent, deadline, save_atom, save_job) -> metadata | error
//        request(agent, deadline, load_atom, load_job) -> metadata | error
//   4. drops the group (its actors stop) before the system shuts down.
//
// Usage: dcpp_embed_example [checkpoint-dir] [world-size]

#include "actors/jobs.hpp"
#include "actors/process_group.hpp"
#include "actors/system.hpp"
#include "core/error.hpp"
#include "storage/filesystem.hpp"
#include "storage/state_dict.hpp"

#include <caf/all.hpp>

#include <ATen/ATen.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

namespace {

using namespace std::chrono_literals;

/// Rank r's part of a model of a world of n ranks: a row-sharded weight,
/// a replicated bias and a step counter.
dcpp::state_dict rank_state(int32_t r, int32_t n, bool zeros) {
  constexpr int64_t rows = 10;
  auto begin = r * rows / n;
  auto end = (r + 1) * rows / n;
  auto full = at::arange(rows * 4, at::kFloat).reshape({rows, 4});
  dcpp::sharded_tensor w;
  w.global_size = {rows, 4};
  auto shard = full.narrow(0, begin, end - begin).contiguous();
  w.local_shards.push_back({zeros ? at::zeros_like(shard) : shard, {begin, 0}});
  dcpp::state_dict sd;
  sd.nested("model").set("weight", w);
  sd.nested("model").set("bias", zeros ? at::zeros({4}) : at::ones({4}));
  sd.set("step",
         zeros ? dcpp::bytes_value{} : dcpp::bytes_value::from_int(1000));
  return sd;
}

/// What the application's actor reports back to main.
struct outcome {
  std::promise<bool> done;
};

/// The application's own actor: saves on every rank, then loads on every
/// rank, all by messages, and reports success through a promise.
void app_actor(caf::event_based_actor* self,
               std::vector<dcpp::process_group_ptr> group, std::string dir,
               std::shared_ptr<std::vector<dcpp::state_dict>> model,
               std::shared_ptr<std::vector<dcpp::state_dict>> restored,
               std::shared_ptr<outcome> out) {
  auto n = static_cast<int32_t>(group.size());
  dcpp::job_options opts;
  opts.coordinator_rank = n - 1; // any rank may coordinate
  opts.step_timeout = 30s;
  auto pending = std::make_shared<int32_t>(n);
  auto failed = std::make_shared<bool>(false);
  auto report = [=](const char* what, int32_t r, const caf::error& err) {
    std::cerr << what << " on rank " << r << ": " << dcpp::describe(err)
              << '\n';
    *failed = true;
  };
  // Step 2, after every save replied: load into zeroed state dicts.
  auto load_all = [=] {
    *pending = n;
    for (int32_t r = 0; r < n; ++r) {
      auto job = dcpp::make_load_job((*restored)[r],
                                     dcpp::make_filesystem_reader(dir), opts);
      if (!job) {
        dcpp::load_job failed;
        failed.coordinator_rank = opts.coordinator_rank;
        failed.error = job.error();
        job = std::move(failed);
      }
      self
        ->request(group[r]->agent(), 120s, dcpp::load_atom::value,
                  std::move(*job))
        .then(
          [=](dcpp::metadata&) {
            if (--*pending == 0)
              out->done.set_value(!*failed);
          },
          [=](caf::error& err) {
            report("load", r, err);
            if (--*pending == 0)
              out->done.set_value(false);
          });
    }
  };
  // Step 1: save every rank's state dict.
  for (int32_t r = 0; r < n; ++r) {
    auto job = dcpp::make_save_job((*model)[r],
                                   dcpp::make_filesystem_writer(dir), opts);
    if (!job) {
      // Still take part, so that every rank fails together.
      dcpp::save_job failed;
      failed.coordinator_rank = opts.coordinator_rank;
      failed.error = job.error();
      job = std::move(failed);
    }
    self
      ->request(group[r]->agent(), 120s, dcpp::save_atom::value,
                std::move(*job))
      .then(
        [=](dcpp::metadata& md) {
          if (r == 0)
            std::cout << "committed " << md.state_dict_metadata.size()
                      << " keys, " << md.storage_data.size() << " items\n";
          if (--*pending == 0) {
            if (*failed)
              out->done.set_value(false);
            else
              load_all();
          }
        },
        [=](caf::error& err) {
          // Every rank sees the same checkpoint_failed error, carrying the
          // step and each failing rank's own error as data.
          if (auto f = dcpp::checkpoint_failure_of(err))
            for (const auto& [rank, e] : f->failures)
              std::cerr << "save failed in step " << f->step << " on rank "
                        << rank << " (" << dcpp::to_string(dcpp::code_of(e))
                        << ")\n";
          report("save", r, err);
          if (--*pending == 0)
            out->done.set_value(false);
        });
  }
}

} // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc > 1 && argv[1][0] == '-') {
    // Not a directory to create: any option, --help included.
    std::cerr << "usage: " << argv[0] << " [DIR [WORLD_SIZE]]\n"
              << "  saves a model on WORLD_SIZE (default 4) ranks of this "
                 "process into DIR\n  (default: "
              << (fs::temp_directory_path() / "dcpp-embed").string()
              << ") and loads it back\n";
    return std::string{argv[1]} == "--help" || std::string{argv[1]} == "-h" ? 0
                                                                            : 2;
  }
  std::string dir = argc > 1
                      ? argv[1]
                      : (fs::temp_directory_path() / "dcpp-embed").string();
  int32_t n = argc > 2 ? std::atoi(argv[2]) : 4;
  if (n < 1) {
    std::cerr << "world size must be positive\n";
    return 2;
  }
  // The application's config and system; dcpp::configure is optional.
  caf::actor_system_config cfg;
  dcpp::configure(cfg);
  caf::actor_system sys{cfg};
  bool ok = false;
  {
    auto group = dcpp::make_local_process_group(sys, n);
    auto model = std::make_shared<std::vector<dcpp::state_dict>>();
    auto restored = std::make_shared<std::vector<dcpp::state_dict>>();
    for (int32_t r = 0; r < n; ++r) {
      model->push_back(rank_state(r, n, false));
      restored->push_back(rank_state(r, n, true));
    }
    auto out = std::make_shared<outcome>();
    auto result = out->done.get_future();
    sys.spawn(app_actor, group, dir, model, restored, out);
    if (result.wait_for(300s) == std::future_status::ready)
      ok = result.get();
    else
      std::cerr << "no outcome within 300 s\n";
    if (ok) {
      for (int32_t r = 0; r < n; ++r) {
        auto* w = (*restored)[r].find_path({"model", "weight"});
        auto* w0 = (*model)[r].find_path({"model", "weight"});
        auto& got = std::get<dcpp::sharded_tensor>(*w).local_shards[0].tensor;
        auto& want = std::get<dcpp::sharded_tensor>(*w0).local_shards[0].tensor;
        ok = ok && at::equal(got, want);
      }
      std::cout << (ok ? "loaded back bit-exact on " : "MISMATCH on ") << n
                << " ranks from " << dir << '\n';
    }
    // Leaving the scope drops the group: its actors stop.
  }
  // ~actor_system waits for every actor, dcpp's included.
  return ok ? 0 : 1;
}
