// A small deterministic training loop that checkpoints through the
// checkpoint manager and resumes from the latest step when restarted: one
// rank of a job started by dcpp-launch (README, "Checkpointing a training
// loop"; test train.resume_after_kill).
//
//   dcpp-launch --nproc 2 -- dcpp_train_example --root DIR --steps 30
//
// The model: an embedding table of `--rows` rows whose rows are split
// between the ranks (each rank owns and updates its slice, saved as one
// sharded parameter), and a small MLP that every rank holds whole and
// trains identically (the same batch on every rank, so no all-reduce).
// Batches are computed from the step number, the MLP's loss trains the MLP
// and the embedding rows are fitted through a detached copy of it, so a
// run is a function of its start state and the step numbers alone: a run
// that resumes from a checkpoint ends bit-identical to one that never
// stopped.
//
// `--dump FILE` (with `{rank}` replaced) writes every tensor of the final
// model and optimizer state as raw bytes (key, dtype, shape, data) for
// comparison. `--kill-at STEP` makes rank `--kill-rank` kill itself with
// SIGKILL after that step (after its save, if the step saves one).

#include "actors/checkpoint_manager.hpp"
#include "actors/system.hpp"
#include "actors/transport/launch_env.hpp"
#include "actors/transport/zmq_transport.hpp"
#include "apps/cli_common.hpp"
#include "core/error.hpp"
#include "storage/training_state.hpp"

#include <caf/actor_system.hpp>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>

#include <csignal>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

namespace {

using namespace dcpp;

/// The embedding rows this rank owns, and the replicated MLP.
struct net : torch::nn::Module {
  net(at::Tensor rows, int64_t dim, int64_t hidden)
    : emb(register_parameter("emb", std::move(rows))),
      fc1(register_module("fc1", torch::nn::Linear(dim, hidden))),
      fc2(register_module("fc2", torch::nn::Linear(hidden, 1))) {
    // nop
  }

  /// The MLP; with `frozen`, through detached weights (no gradient to them).
  at::Tensor mlp(const at::Tensor& x, bool frozen = false) {
    auto w = [frozen](const at::Tensor& t) { return frozen ? t.detach() : t; };
    auto h = at::tanh(at::linear(x, w(fc1->weight), w(fc1->bias)));
    return at::linear(h, w(fc2->weight), w(fc2->bias)).squeeze(1);
  }

  at::Tensor emb;
  torch::nn::Linear fc1;
  torch::nn::Linear fc2;
};

struct config {
  int64_t rows = 16;
  int64_t dim = 8;
  int64_t hidden = 16;
  int64_t batch = 8;
};

/// The model and its optimizer as one `stateful`, with this rank's rows of
/// the embedding as a shard of the whole table.
class sharded_training final : public stateful {
public:
  sharded_training(net& model, torch::optim::Optimizer& optim, shape_t global,
                   shape_t offsets)
    : inner_(model, optim), global_(std::move(global)),
      offsets_(std::move(offsets)) {
    // nop
  }

  caf::expected<dcpp::state_dict> state_dict() override {
    auto sd = inner_.state_dict();
    if (!sd)
      return sd;
    if (auto err = shard_parameter(*sd, "emb", global_, offsets_))
      return err;
    return sd;
  }

  caf::error load_state_dict(const dcpp::state_dict& sd) override {
    return inner_.load_state_dict(sd);
  }

private:
  training_stateful inner_;
  shape_t global_;
  shape_t offsets_;
};

/// One training step; returns the MLP's loss.
double train_step(net& model, torch::optim::Adam& adam, const config& c,
                  int64_t step, int32_t rank) {
  auto opts = at::TensorOptions{}.dtype(at::kFloat);
  auto s = static_cast<double>(step);
  // The MLP's batch: the same on every rank.
  auto i = at::arange(c.batch, opts).unsqueeze(1);
  auto j = at::arange(c.dim, opts).unsqueeze(0);
  auto x = at::sin(0.37 * s + 0.11 * i + 0.53 * j);
  auto y = at::cos(0.23 * s + 0.7 * at::arange(c.batch, opts));
  auto loss_mlp = (model.mlp(x) - y).pow(2).mean();
  // This rank's rows: fitted to targets through the frozen MLP.
  auto local_rows = model.emb.size(0);
  auto k = at::arange(4, at::TensorOptions{}.dtype(at::kLong));
  auto idx = (k + 3 * step) % local_rows;
  auto target = at::sin(0.1 * s + 0.3 * k.to(at::kFloat) + rank);
  auto loss_emb
    = (model.mlp(model.emb.index_select(0, idx), true) - target).pow(2).mean();
  adam.zero_grad();
  (loss_mlp + loss_emb).backward();
  adam.step();
  return loss_mlp.item<double>();
}

/// Every tensor of the model and optimizer state, as raw bytes.
caf::error dump(const std::string& path, net& model, torch::optim::Adam& adam) {
  auto sd = training_state(model, adam);
  if (!sd)
    return std::move(sd.error());
  auto flat = flatten(*sd);
  if (!flat)
    return std::move(flat.error());
  std::ofstream out{path, std::ios::binary};
  for (const auto& [key, val] : flat->items) {
    out << key << '\n';
    if (auto t = std::get_if<at::Tensor>(val)) {
      auto c = t->contiguous();
      out << c10::toString(c.scalar_type()) << ' ' << c.sizes() << '\n';
      out.write(static_cast<const char*>(c.data_ptr()),
                static_cast<std::streamsize>(c.nbytes()));
    } else if (auto b = std::get_if<bytes_value>(val)) {
      out << "bytes " << b->data.size() << '\n' << b->data;
    }
    out << '\n';
  }
  out.close();
  if (!out)
    return make_error(errc::io_error, "cannot write " + path);
  return caf::none;
}

std::string with_rank(std::string pattern, int32_t rank) {
  if (auto pos = pattern.find("{rank}"); pos != std::string::npos)
    pattern.replace(pos, 6, std::to_string(rank));
  return pattern;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"One rank of a small deterministic training loop that "
               "checkpoints every --save-every steps and resumes from the "
               "latest committed step"};
  cli::log_options log;
  cli::add_common_options(app, log);
  std::string root;
  int64_t steps = 30;
  uint64_t save_every = 5;
  size_t keep = 2;
  bool sync = false;
  std::string dump_path;
  int64_t kill_at = -1;
  int32_t kill_rank = 1;
  config c;
  app.add_option("--root", root, "the checkpoint root (step directories)")
    ->required();
  app.add_option("--steps", steps, "train up to this step");
  app.add_option("--save-every", save_every, "save_interval_steps");
  app.add_option("--keep", keep, "max_to_keep");
  app.add_flag("--sync", sync, "synchronous saves (default: async)");
  app.add_option("--rows", c.rows, "rows of the sharded embedding table");
  app.add_option("--dump", dump_path,
                 "at the end, write the final state's tensors as raw bytes "
                 "here ({rank} is replaced)");
  app.add_option("--kill-at", kill_at,
                 "SIGKILL rank --kill-rank after this step (and its save)");
  app.add_option("--kill-rank", kill_rank, "the rank --kill-at kills");
  if (int rc = cli::parse(app, argc, argv, "dcpp_train_example"); rc >= 0)
    return rc;
  cli::init_logging(log, "dcpp_train_example");
  auto env = read_launch_env();
  if (!env) {
    spdlog::error("{}", describe(env.error()));
    return cli::exit_usage;
  }
  cli::set_log_tag("rank " + std::to_string(env->rank));
  const int32_t rank = env->rank;
  const int32_t world = env->world_size;
  if (c.rows % world != 0) {
    spdlog::error("--rows {} is not a multiple of the {} ranks", c.rows, world);
    return cli::exit_usage;
  }
  // One thread: the same reductions in the same order in every run.
  at::set_num_threads(1);

  // The same initial values on every rank, then this rank's rows.
  torch::manual_seed(1234);
  auto table = at::randn({c.rows, c.dim}) * 0.1;
  const int64_t local = c.rows / world;
  auto model = std::make_shared<net>(
    table.narrow(0, rank * local, local).clone(), c.dim, c.hidden);
  torch::optim::Adam adam{model->parameters(), torch::optim::AdamOptions(1e-2)};

  system_options sopts;
  sopts.scheduler_threads = 2;
  system_config cfg{sopts};
  caf::actor_system sys{cfg};
  int rc = cli::exit_ok;
  {
    auto group = make_zmq_process_group(sys, *env, zmq_options{});
    if (!group) {
      spdlog::error("connect: {}", describe(group.error()));
      return cli::exit_failed;
    }
    // -- the lines the README shows ------------------------------------------
    checkpoint_manager_options o;
    o.save_interval_steps = save_every;
    o.max_to_keep = keep;
    o.async = !sync;
    o.checkpointer.process_group = *group;
    checkpoint_manager mgr{root, o};
    sharded_training state_obj{*model,
                               adam,
                               {c.rows, c.dim},
                               {rank * local, 0}};
    stateful_list state{{"app", &state_obj}};
    int64_t first = 1;
    if (auto restored = mgr.restore(std::nullopt, state))
      first = static_cast<int64_t>(*restored) + 1;
    else if (code_of(restored.error()) != errc::not_found) {
      spdlog::error("restore: {}", describe(restored.error()));
      return cli::exit_failed;
    }
    for (int64_t step = first; step <= steps; ++step) {
      double loss = train_step(*model, adam, c, step, rank);
      if (mgr.should_save(step))
        if (auto err = mgr.save(step, state, {{"loss", loss}})) {
          spdlog::error("save step {}: {}", step, describe(err));
          return cli::exit_failed;
        }
      if (step == kill_at && rank == kill_rank) {
        spdlog::info("killing myself (SIGKILL) after step {}", step);
        std::raise(SIGKILL);
      }
    }
    if (auto err = mgr.wait_until_finished()) {
      spdlog::error("{}", describe(err));
      rc = cli::exit_failed;
    }
    // ---------------------------------------------------------------------------
    if (rc == cli::exit_ok && !dump_path.empty())
      if (auto err = dump(with_rank(dump_path, rank), *model, adam)) {
        spdlog::error("{}", describe(err));
        rc = cli::exit_failed;
      }
    std::printf("rank %d/%d: trained steps %lld..%lld\n", rank, world,
                static_cast<long long>(first), static_cast<long long>(steps));
    std::fflush(stdout);
  } // the manager and the group go before the actor system
  return rc;
}
