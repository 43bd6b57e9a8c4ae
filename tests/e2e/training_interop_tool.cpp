// dcpp's side of the training-state interoperability test with PyTorch
// (training_interop_test.py drives both sides).
//
//   training_interop_tool save DIR STEPS   the model below, initialized by
//                                          formula, trained STEPS Adam
//                                          steps, saved as a training state
//   training_interop_tool async-save DIR STEPS
//                                          the same through `async_save`
//                                          (the staging pool)
//   training_interop_tool resume IN OUT    a fresh model and Adam load IN,
//                                          train one step, save to OUT
//
// The model is PyTorch's nn.Sequential(Linear(8, 16), ReLU(),
// Linear(16, 4)) (fqns "0.weight", "0.bias", "2.weight", "2.bias"), the data
// and the initial values are formulas the Python side repeats. Exit code 0
// on success.

#include "actors/checkpointer.hpp"
#include "core/error.hpp"
#include "storage/filesystem.hpp"
#include "storage/training_state.hpp"

#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>

#include <cstdio>
#include <cstdlib>
#include <string>

using namespace dcpp;

namespace {

torch::nn::Sequential make_model() {
  torch::nn::Sequential model(torch::nn::Linear(8, 16), torch::nn::ReLU(),
                              torch::nn::Linear(16, 4));
  torch::NoGradGuard no_grad;
  int i = 0;
  for (auto& p : model->parameters()) {
    auto n = p.numel();
    p.copy_(
      (at::sin(at::arange(n, at::kFloat) * 0.37 + i) * 0.3).reshape(p.sizes()));
    ++i;
  }
  return model;
}

torch::optim::Adam make_adam(torch::nn::Sequential& model, double lr) {
  return torch::optim::Adam(model->parameters(), torch::optim::AdamOptions(lr)
                                                   .betas({0.9, 0.99})
                                                   .eps(1e-8)
                                                   .weight_decay(0.01));
}

void train_step(torch::nn::Sequential& model, torch::optim::Adam& opt) {
  auto x = at::sin(at::arange(32 * 8, at::kFloat).reshape({32, 8}) * 0.1);
  auto y = at::cos(at::arange(32 * 4, at::kFloat).reshape({32, 4}) * 0.2);
  opt.zero_grad();
  auto loss = (model->forward(x) - y).pow(2).mean();
  loss.backward();
  opt.step();
}

checkpointer make_checkpointer() {
  checkpointer_options opts;
  opts.no_dist = true;
  return checkpointer{make_filesystem_writer("."), make_filesystem_reader("."),
                      opts};
}

int fail(const std::string& what, const caf::error& err) {
  std::fprintf(stderr, "training_interop_tool: %s: %s\n", what.c_str(),
               describe(err).c_str());
  return 1;
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: training_interop_tool save|async-save DIR "
                         "STEPS | resume IN OUT\n");
    return 2;
  }
  std::string mode = argv[1];
  auto cp = make_checkpointer();
  auto model = make_model();
  if (mode == "save" || mode == "async-save") {
    auto opt = make_adam(model, 0.01);
    for (int k = 0; k < std::atoi(argv[3]); ++k)
      train_step(model, opt);
    auto sd = training_state(*model, opt);
    if (!sd)
      return fail("training_state", sd.error());
    auto md = mode == "save" ? cp.save(*sd, argv[2])
                             : cp.async_save(*sd, argv[2]).get();
    if (!md)
      return fail(mode, md.error());
    return 0;
  }
  if (mode == "resume") {
    // Another learning rate: the checkpoint's must win.
    auto opt = make_adam(model, 0.5);
    auto md = make_filesystem_reader(argv[2])->read_metadata();
    if (!md)
      return fail("read_metadata", md.error());
    auto target = training_load_target(*model, opt, &*md);
    if (!target)
      return fail("training_load_target", target.error());
    if (auto err = cp.load(*target, argv[2]))
      return fail("load", err);
    if (auto err = load_training_state(*model, opt, *target))
      return fail("load_training_state", err);
    train_step(model, opt);
    auto sd = training_state(*model, opt);
    if (!sd)
      return fail("training_state", sd.error());
    if (auto saved = cp.save(*sd, argv[3]); !saved)
      return fail("save", saved.error());
    return 0;
  }
  std::fprintf(stderr, "training_interop_tool: unknown mode %s\n",
               mode.c_str());
  return 2;
}
