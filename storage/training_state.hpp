#pragma once

// The state of a libtorch training loop as a `dcpp::state_dict`, in the
// layout of PyTorch 2.x's `torch.distributed.checkpoint.state_dict.
// get_state_dict(model, optim)`, so one checkpoint loads on either side:
//
//   model.<fqn>                              parameters and buffers
//   optim.state.<param fqn>.step             float32 0-d (Adam, AdamW)
//   optim.state.<param fqn>.exp_avg          (Adam, AdamW)
//   optim.state.<param fqn>.exp_avg_sq       (Adam, AdamW)
//   optim.state.<param fqn>.max_exp_avg_sq   (Adam, AdamW with amsgrad)
//   optim.state.<param fqn>.momentum_buffer  (SGD with momentum)
//   optim.param_groups.<i>.<hyper-parameter> bytes (torch.save of a float,
//                                            bool, None, or tuple for
//                                            `betas`): every key of the
//                                            group of PyTorch 2.6's
//                                            optimizer of the same class;
//                                            those libtorch lacks
//                                            (maximize, foreach, capturable,
//                                            differentiable, fused) with
//                                            Python's default
//   optim.param_groups.<i>.params            bytes: list of param fqns
//
// Keys are flattened as DCP >= 2.4 flattens (`_traverse.py`: a mapping is
// always traversed, a list of dicts by index, a list or tuple of
// non-tensors is one value; `.metadata`'s planner_data records the
// position in `param_groups` as the int 0, so DCP rebuilds a list). One
// difference, invisible to a load into a given state dict: DCP <= 2.3
// stored the whole `optim.param_groups` list as one bytes item.
//
// `step`: libtorch 1.13 keeps it as an int64 (`AdamParamState::step`),
// PyTorch 1.13 and 2.x as a float32 0-d tensor; the checkpoint holds the
// float32 tensor (exact up to 2^24 steps), converted on save and on load.
//
// Sharded parameters: a rank holding a slice of a parameter makes its module
// hold the slice, and after `training_state` calls `shard_parameter(sd, fqn,
// global_size, offsets)`: the parameter and its optimizer state tensors
// become one-shard `sharded_tensor`s of the global shape (same views, no
// copy). The load helpers accept such entries.
//
// Tensors in the dicts these functions return share storage with the
// module's parameters and the optimizer's state (no copies), so
// `checkpointer::save` reads them and `checkpointer::load` fills them in
// place. The functions never throw; torch's exceptions become errors naming
// the fqn.

#include "storage/state_dict.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <string>
#include <utility>
#include <vector>

namespace torch::nn {
class Module;
} // namespace torch::nn

namespace torch::optim {
class Optimizer;
} // namespace torch::optim

namespace dcpp {

/// Parameters, then buffers, of `module` and its submodules by fully
/// qualified name (`named_parameters()`, `named_buffers()`): detached views
/// of the module's own tensors.
state_dict module_state(const torch::nn::Module& module);

/// Copies the tensors of `sd` (as `module_state` lays them out; a
/// one-shard `sharded_tensor` stands for the local slice) into `module`'s
/// parameters and buffers, skipping those that already share storage (a
/// load in place). Fails with `errc::missing_key` naming the first fqn of
/// the module that `sd` lacks, `errc::shape_mismatch` /
/// `errc::dtype_mismatch` naming it when a value does not fit.
caf::error load_module_state(torch::nn::Module& module, const state_dict& sd);

/// The optimizer's state keyed by the fqns of `module`'s parameters:
/// `{"state": {fqn: {...}}, "param_groups": {"0": {...}, ...}}`. Only
/// parameters that have state appear under "state" (a fresh optimizer has
/// none). Supports `Adam`, `AdamW` and `SGD`; fails with `errc::unsupported`
/// for other optimizers and `errc::invalid_argument` when a parameter of the
/// optimizer is not one of `module`'s.
caf::expected<state_dict> optimizer_state(const torch::optim::Optimizer& optim,
                                          const torch::nn::Module& module);

/// What to pass to `checkpointer::load` for the optimizer: the layout of
/// `optimizer_state`, with state for every parameter of the optimizer;
/// state the optimizer lacks is allocated (zeros of the parameter's shape,
/// `step` 0), not installed. With `saved` (the checkpoint's metadata) only
/// the keys under `prefix` ("optim." by default) the checkpoint holds are
/// included, so an SGD checkpoint saved before its first step (no momentum
/// buffers) loads too.
caf::expected<state_dict>
optimizer_load_target(const torch::optim::Optimizer& optim,
                      const torch::nn::Module& module,
                      const metadata* saved = nullptr,
                      const std::string& prefix = "optim.");

/// Installs a loaded optimizer state (the layout of `optimizer_state`):
/// per-parameter state (replacing what the optimizer had; `step` converted
/// from the float tensor) and the hyper-parameters found under
/// "param_groups" (groups matched by position; their `params` must name the
/// group's parameters in order). The keys libtorch's optimizer lacks
/// (maximize, foreach, capturable, differentiable, fused) load only as
/// None or False, what libtorch does. Fails with `errc::corrupt_item`
/// naming the key of a value of the wrong type, `errc::invalid_argument`
/// when the groups do not match, `errc::unsupported` naming the key
/// (`optim.param_groups.0.fused`) of any other value of those keys.
caf::error load_optimizer_state(torch::optim::Optimizer& optim,
                                const torch::nn::Module& module,
                                const state_dict& sd);

/// `{"model": module_state(module), "optim": optimizer_state(...)}`: what
/// `get_state_dict(model, optim)` returns, to save.
caf::expected<state_dict> training_state(const torch::nn::Module& module,
                                         const torch::optim::Optimizer& optim);

/// The load target of a training state: "model" as `module_state`, "optim"
/// as `optimizer_load_target` (with `saved`, only what the checkpoint has
/// under `prefix` + "optim.").
caf::expected<state_dict>
training_load_target(const torch::nn::Module& module,
                     const torch::optim::Optimizer& optim,
                     const metadata* saved = nullptr,
                     const std::string& prefix = "");

/// After `checkpointer::load(target)`: `load_module_state` and
/// `load_optimizer_state` from `sd["model"]` and `sd["optim"]`.
caf::error load_training_state(torch::nn::Module& module,
                               torch::optim::Optimizer& optim,
                               const state_dict& sd);

/// Wraps `model.<fqn>` and every tensor under `optim.state.<fqn>` of a
/// training state (all but `step`) as a one-shard `sharded_tensor` of
/// `global_size` at `offsets` (the same views). Fails with
/// `errc::missing_key` if `sd` has no `model.<fqn>`, `errc::invalid_argument`
/// if the local tensor does not fit inside `global_size` at `offsets`.
caf::error shard_parameter(state_dict& sd, const std::string& fqn,
                           shape_t global_size, shape_t offsets);

/// An object that takes part in save and load (DCP's `Stateful`): a data
/// loader's position, an RNG state, a whole training state.
///
///   save: `sd.set(key, obj.state_dict())`, then `checkpointer::save(sd)`
///   load: the same `sd`, then `checkpointer::load(sd)`, then
///         `obj.load_state_dict(sd[key])`
///
/// `collect_state` and `apply_state` do both steps for a list of objects.
class stateful {
public:
  virtual ~stateful();

  /// What to save, and the (preallocated) target of a load.
  [[nodiscard]] virtual caf::expected<dcpp::state_dict> state_dict() = 0;

  /// Takes over the values of a loaded `state_dict()`.
  [[nodiscard]] virtual caf::error load_state_dict(const dcpp::state_dict& sd)
    = 0;

  /// The target of a load from the checkpoint whose metadata is `saved`,
  /// in which this object's keys start with `prefix` ("app."): what the
  /// checkpoint holds may differ from what `state_dict()` would save (a
  /// checkpoint of an older dcpp, of another PyTorch). By default
  /// `state_dict()`.
  [[nodiscard]] virtual caf::expected<dcpp::state_dict>
  load_target(const metadata& saved, const std::string& prefix);
};

using stateful_list = std::vector<std::pair<std::string, stateful*>>;

/// `{key: obj->state_dict()}` for every (key, obj) of `objs` (to save, or
/// as the target of a load). Fails with the first object's error.
caf::expected<state_dict> collect_state(const stateful_list& objs);

/// `{key: obj->load_target(saved, key + ".")}` for every (key, obj) of
/// `objs`: the target of a load from the checkpoint of `saved`.
caf::expected<state_dict> collect_load_target(const stateful_list& objs,
                                              const metadata& saved);

/// `obj->load_state_dict(sd[key])` for every (key, obj) of `objs`. Fails
/// with `errc::missing_key` naming a key `sd` lacks, or an object's error.
caf::error apply_state(const stateful_list& objs, const state_dict& sd);

/// A module and its optimizer as one `stateful`: `state_dict()` is
/// `training_load_target` (the optimizer's missing state allocated, as
/// `get_state_dict` initializes it), `load_state_dict` is
/// `load_training_state`. Both must outlive it.
class training_stateful final : public stateful {
public:
  training_stateful(torch::nn::Module& module, torch::optim::Optimizer& optim)
    : module_(module), optim_(optim) {}

  caf::expected<dcpp::state_dict> state_dict() override;

  caf::error load_state_dict(const dcpp::state_dict& sd) override;

  /// `training_load_target` with `saved`: only the keys the checkpoint
  /// holds (a checkpoint without the optimizer keys libtorch lacks loads).
  caf::expected<dcpp::state_dict>
  load_target(const metadata& saved, const std::string& prefix) override;

private:
  torch::nn::Module& module_;
  torch::optim::Optimizer& optim_;
};

} // namespace dcpp
