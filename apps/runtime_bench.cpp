// dcpp_runtime_bench: how the actor runtime grows with the number of ranks.
//
// All ranks of a local process group in one actor system, driven by
// messages as an embedding application drives them (no thread per rank),
// over the in-memory storage. Per world size: a first save (plans
// exchanged in full), repeated saves of the same state (the plan cache: the
// ranks send fingerprints, the coordinator reuses its global plan), and a
// load into fresh tensors that is checked against what was saved. Each
// world size runs in a child process of its own, so that its peak RSS is
// its own; one JSON line per world size, then one line with the growth per
// doubling of the world (the ratio of consecutive sizes, scaled to a
// doubling: 2 means linear, 4 quadratic).
//
//   dcpp_runtime_bench [--ranks 64,256,1024] [--tensors 20] [--rounds 3]
//
// The layout: `--tensors` tensors per rank, half of them row-sharded over
// all ranks (one 4 x 16 float chunk per rank: the metadata holds
// ranks x tensors / 2 chunks), half replicated (16 floats, written once).

#include "actors/jobs.hpp"
#include "actors/process_group.hpp"
#include "actors/system.hpp"
#include "core/error.hpp"
#include "storage/memory_storage.hpp"
#include "storage/state_dict.hpp"

#include <caf/all.hpp>

#include <ATen/ATen.h>
#include <CLI/CLI.hpp>

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

using namespace dcpp;

namespace {

using clock_type = std::chrono::steady_clock;

double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

double median(std::vector<double> xs) {
  if (xs.empty())
    return 0;
  std::sort(xs.begin(), xs.end());
  return xs[xs.size() / 2];
}

constexpr int64_t rows_per_rank = 4;
constexpr int64_t cols = 16;

/// Rank `rank`'s state; `fill` gives each value (zeros for a load target).
state_dict rank_state(int64_t rank, int64_t world, int64_t tensors, bool fill) {
  state_dict sd;
  auto& model = sd.nested("model");
  for (int64_t t = 0; t < tensors; ++t) {
    auto& layer = model.nested("layer_" + std::to_string(t / 2));
    if (t % 2 == 0) {
      auto local = at::zeros({rows_per_rank, cols}, at::kFloat);
      if (fill)
        local.fill_(static_cast<float>(rank * 1000 + t));
      layer.set("weight",
                sharded_tensor{{rows_per_rank * world, cols},
                               {shard{local, {rows_per_rank * rank, 0}}}});
    } else {
      auto full = at::zeros({cols}, at::kFloat);
      if (fill)
        full.fill_(static_cast<float>(t));
      layer.set("bias", full);
    }
  }
  return sd;
}

/// True if `sd` holds what rank `rank` saved.
bool holds_saved(const state_dict& sd, int64_t rank, int64_t tensors) {
  for (int64_t t = 0; t < tensors; ++t) {
    auto path = std::vector<std::string>{"model",
                                         "layer_" + std::to_string(t / 2),
                                         t % 2 == 0 ? "weight" : "bias"};
    auto v = const_cast<state_dict&>(sd).find_path(path);
    if (!v)
      return false;
    at::Tensor x;
    if (auto st = std::get_if<sharded_tensor>(v))
      x = st->local_shards.at(0).tensor;
    else if (auto tt = std::get_if<at::Tensor>(v))
      x = *tt;
    else
      return false;
    auto want = t % 2 == 0 ? static_cast<float>(rank * 1000 + t)
                           : static_cast<float>(t);
    if (!x.eq(want).all().item<bool>())
      return false;
  }
  return true;
}

struct op_result {
  double wall_s = 0;
  op_report report;
  bool ok = true;
  std::string error;
};

/// Runs one collective operation: every rank's job sent at once from one
/// scoped actor, then every reply awaited.
template <class Atom, class Job>
op_result run_all(caf::actor_system& sys,
                  const std::vector<process_group_ptr>& group, Atom atom,
                  std::vector<Job> jobs) {
  op_result res;
  auto report = std::make_shared<op_report>();
  jobs[0].report = report;
  caf::scoped_actor self{sys};
  auto t0 = clock_type::now();
  for (size_t r = 0; r < jobs.size(); ++r)
    self->send(group[r]->agent(), atom, std::move(jobs[r]));
  size_t replies = 0;
  while (replies < jobs.size()) {
    self->receive([&](metadata&) { ++replies; },
                  [&](caf::error& err) {
                    ++replies;
                    if (res.ok)
                      res.error = describe(err);
                    res.ok = false;
                  },
                  caf::after(std::chrono::minutes(10)) >>
                    [&] {
                      res.ok = false;
                      res.error = "no reply within 10 minutes";
                      replies = jobs.size();
                    });
  }
  res.wall_s = seconds_since(t0);
  res.report = *report;
  return res;
}

long peak_rss_kib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss;
}

/// One world size, in this process; prints its JSON line.
int run_world(int64_t world, int64_t tensors, int rounds, size_t threads,
              bool scheduled_io) {
  system_options so;
  so.scheduler_threads = threads;
  system_config cfg{so};
  caf::actor_system sys{cfg};
  process_group_options gopts;
  gopts.agent.detached_io = !scheduled_io;
  auto group = make_local_process_group(sys, static_cast<int32_t>(world),
                                        gopts);
  auto store = make_memory_storage();
  std::vector<std::shared_ptr<const state_dict>> states;
  std::vector<storage_writer_ptr> writers;
  std::vector<storage_reader_ptr> readers;
  for (int64_t r = 0; r < world; ++r) {
    states.push_back(
      std::make_shared<const state_dict>(rank_state(r, world, tensors, true)));
    writers.push_back(make_memory_writer(store));
    readers.push_back(make_memory_reader(store));
  }
  job_options jo;
  jo.step_timeout = std::chrono::seconds(120);
  std::vector<metadata_ptr> shared(static_cast<size_t>(world));
  auto save_jobs = [&] {
    std::vector<save_job> jobs;
    for (int64_t r = 0; r < world; ++r) {
      auto job = make_save_job(states[r], writers[r], jo);
      if (!job)
        return std::vector<save_job>{};
      job->metadata_out = std::make_shared<metadata_ptr>();
      jobs.push_back(std::move(*job));
    }
    return jobs;
  };
  std::vector<double> save_s, cached_s, cached_plan_s, load_s;
  double first_save_s = 0;
  double first_plan_s = 0;
  size_t chunks = 0;
  bool loaded_ok = true;
  std::string error;
  auto fail = [&](const std::string& what, const op_result& res) {
    std::fprintf(stderr, "%s at %lld ranks: %s\n", what.c_str(),
                 static_cast<long long>(world), res.error.c_str());
    return 1;
  };
  for (int round = 0; round < rounds; ++round) {
    // A fresh group for the first save of each round: its plans are
    // exchanged in full (no cache on either side).
    if (round > 0) {
      group.clear();
      group = make_local_process_group(sys, static_cast<int32_t>(world), gopts);
    }
    auto jobs = save_jobs();
    if (jobs.empty())
      return 1;
    auto md_slot = jobs[0].metadata_out;
    auto first = run_all(sys, group, save_atom::value, std::move(jobs));
    if (!first.ok)
      return fail("save", first);
    save_s.push_back(first.wall_s);
    if (round == 0) {
      first_save_s = first.wall_s;
      first_plan_s = static_cast<double>(first.report.plan_us) / 1e6;
      chunks = 0;
      if (*md_slot)
        for (const auto& [fqn, item] : (*md_slot)->state_dict_metadata)
          chunks += item.tensor.chunks.size();
    }
    // The same state again: the plan cache.
    auto again = run_all(sys, group, save_atom::value, save_jobs());
    if (!again.ok)
      return fail("repeated save", again);
    cached_s.push_back(again.wall_s);
    cached_plan_s.push_back(static_cast<double>(again.report.plan_us) / 1e6);
    // Load into fresh zeros and check every rank's values.
    std::vector<std::shared_ptr<state_dict>> targets;
    std::vector<load_job> loads;
    for (int64_t r = 0; r < world; ++r) {
      targets.push_back(
        std::make_shared<state_dict>(rank_state(r, world, tensors, false)));
      auto job = make_load_job(*targets.back(), readers[r], jo);
      if (!job)
        return 1;
      job->metadata_out = std::make_shared<metadata_ptr>();
      loads.push_back(std::move(*job));
    }
    auto loaded = run_all(sys, group, load_atom::value, std::move(loads));
    if (!loaded.ok)
      return fail("load", loaded);
    load_s.push_back(loaded.wall_s);
    for (int64_t r = 0; r < world; ++r)
      loaded_ok = loaded_ok && holds_saved(*targets[r], r, tensors);
  }
  group.clear();
  std::printf("{\"ranks\": %lld, \"tensors_per_rank\": %lld, "
              "\"scheduled_io\": %s, "
              "\"saved_chunks\": %zu, \"rounds\": %d, "
              "\"first_save_s\": %.4f, \"first_save_plan_s\": %.4f, "
              "\"save_s\": %.4f, \"cached_save_s\": %.4f, "
              "\"cached_save_plan_s\": %.4f, \"load_s\": %.4f, "
              "\"load_verified\": %s, \"peak_rss_mib\": %.1f}\n",
              static_cast<long long>(world), static_cast<long long>(tensors),
              scheduled_io ? "true" : "false", chunks, rounds, first_save_s,
              first_plan_s, median(save_s), median(cached_s),
              median(cached_plan_s), median(load_s),
              loaded_ok ? "true" : "false",
              static_cast<double>(peak_rss_kib()) / 1024.0);
  std::fflush(stdout);
  return loaded_ok ? 0 : 1;
}

/// Reads the numbers of one JSON line printed by run_world (flat, numbers
/// and booleans only).
std::map<std::string, double> parse_line(const std::string& line) {
  std::map<std::string, double> out;
  size_t pos = 0;
  while ((pos = line.find('"', pos)) != std::string::npos) {
    auto end = line.find('"', pos + 1);
    if (end == std::string::npos)
      break;
    auto key = line.substr(pos + 1, end - pos - 1);
    auto colon = line.find(':', end);
    if (colon == std::string::npos)
      break;
    out[key] = std::atof(line.c_str() + colon + 1);
    pos = line.find_first_of(",}", colon);
  }
  return out;
}

/// Runs one world size in a child process; returns its JSON line.
std::string run_child(const char* self_exe, int64_t world, int64_t tensors,
                      int rounds, size_t threads, bool scheduled_io) {
  int fds[2];
  if (pipe(fds) != 0)
    return {};
  auto pid = fork();
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    auto w = std::to_string(world);
    auto t = std::to_string(tensors);
    auto n = std::to_string(rounds);
    auto th = std::to_string(threads);
    execl(self_exe, self_exe, "--child", "--ranks", w.c_str(), "--tensors",
          t.c_str(), "--rounds", n.c_str(), "--threads", th.c_str(),
          scheduled_io ? "--scheduled-io" : "--detached-io", nullptr);
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char buf[4096];
  ssize_t got;
  while ((got = read(fds[0], buf, sizeof(buf))) > 0)
    out.append(buf, static_cast<size_t>(got));
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return {};
  while (!out.empty() && out.back() == '\n')
    out.pop_back();
  return out;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"dcpp_runtime_bench: the actor runtime against the number of "
               "in-process ranks"};
  std::vector<int64_t> worlds{64, 256, 1024};
  int64_t tensors = 20;
  int rounds = 3;
  size_t threads = 0;
  bool child = false;
  bool scheduled_io = false;
  app.add_option("--ranks", worlds, "world sizes")->delimiter(',');
  app.add_option("--tensors", tensors, "tensors per rank");
  app.add_option("--rounds", rounds, "rounds per world size (median)");
  app.add_option("--threads", threads,
                 "scheduler threads (0: CAF's default, max(4, cores))");
  app.add_flag("--child", child, "run one world size in this process");
  app.add_flag("--scheduled-io,!--detached-io", scheduled_io,
               "run the writer and reader actors on the scheduler instead "
               "of a thread each (the memory storage never blocks)");
  CLI11_PARSE(app, argc, argv);
  if (child)
    return run_world(worlds.at(0), tensors, std::max(rounds, 1), threads,
                     scheduled_io);
  std::vector<std::pair<int64_t, std::map<std::string, double>>> lines;
  for (auto world : worlds) {
    auto line = run_child("/proc/self/exe", world, tensors, rounds, threads,
                          scheduled_io);
    if (line.empty()) {
      std::fprintf(stderr, "world size %lld failed\n",
                   static_cast<long long>(world));
      return 1;
    }
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    lines.emplace_back(world, parse_line(line));
  }
  // Growth per doubling between consecutive world sizes.
  const char* keys[] = {"save_s", "cached_save_s", "cached_save_plan_s",
                        "load_s", "peak_rss_mib"};
  for (size_t i = 1; i < lines.size(); ++i) {
    auto doublings = std::log2(static_cast<double>(lines[i].first)
                               / static_cast<double>(lines[i - 1].first));
    std::printf("{\"growth_per_doubling\": {\"from\": %lld, \"to\": %lld",
                static_cast<long long>(lines[i - 1].first),
                static_cast<long long>(lines[i].first));
    for (auto key : keys) {
      auto a = lines[i - 1].second[key];
      auto b = lines[i].second[key];
      double g = (a > 0 && doublings > 0) ? std::pow(b / a, 1.0 / doublings)
                                          : 0.0;
      std::printf(", \"%s\": %.2f", key, g);
    }
    std::printf("}}\n");
  }
  return 0;
}
