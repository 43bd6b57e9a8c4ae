#include "storage/training_state.hpp"

#include "core/error.hpp"
#include "storage/pickle.hpp"

#include <torch/nn/module.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/sgd.h>

#include <cmath>
#include <exception>
#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace dcpp {

namespace {

using torch::optim::Adam;
using torch::optim::AdamOptions;
using torch::optim::AdamParamState;
using torch::optim::AdamW;
using torch::optim::AdamWOptions;
using torch::optim::AdamWParamState;
using torch::optim::SGD;
using torch::optim::SGDOptions;
using torch::optim::SGDParamState;

enum class optim_kind { adam, adamw, sgd };

caf::expected<optim_kind> kind_of(const torch::optim::Optimizer& optim) {
  if (dynamic_cast<const Adam*>(&optim))
    return optim_kind::adam;
  if (dynamic_cast<const AdamW*>(&optim))
    return optim_kind::adamw;
  if (dynamic_cast<const SGD*>(&optim))
    return optim_kind::sgd;
  return make_error(errc::unsupported,
                    "optimizer_state: only Adam, AdamW and SGD are supported");
}

/// libtorch's key of a parameter in `Optimizer::state()`.
std::string state_key(const at::Tensor& p) {
  return c10::guts::to_string(p.unsafeGetTensorImpl());
}

/// The fqn of every parameter of `module`, by tensor impl.
std::map<const void*, std::string> fqns_of(const torch::nn::Module& module) {
  std::map<const void*, std::string> out;
  for (const auto& item : module.named_parameters())
    out.emplace(item.value().unsafeGetTensorImpl(), item.key());
  return out;
}

caf::expected<std::string>
fqn_of(const std::map<const void*, std::string>& fqns, const at::Tensor& p) {
  auto i = fqns.find(p.unsafeGetTensorImpl());
  if (i == fqns.end())
    return make_error(errc::invalid_argument,
                      "optimizer_state: a parameter of the optimizer is not "
                      "a parameter of the module");
  return i->second;
}

bytes_value pickled(const pickle::value_ptr& x) {
  return bytes_value::from_pickle(*x);
}

const char* class_name(optim_kind kind) {
  switch (kind) {
    case optim_kind::adam: return "Adam";
    case optim_kind::adamw: return "AdamW";
    case optim_kind::sgd: return "SGD";
  }
  return "?";
}

/// The keys of a `param_groups` entry of PyTorch 2.6's optimizer of the
/// same class that libtorch 1.13's options lack, in Python's order (they
/// follow libtorch's keys; `params` comes last). Each is saved with
/// Python's default, None or False, so that a strict load into Python's
/// optimizer finds every key it has. None of them changes the arithmetic
/// while it is None or False (`foreach`, `fused`: the implementation;
/// `capturable`, `differentiable`: CUDA graphs and autograd; `maximize`:
/// the direction), which is what libtorch's optimizer does; any other
/// value is refused on load (`check_python_only`). PyTorch 1.13 has the
/// same keys but `fused` defaults to False there, and its
/// `Optimizer.load_state_dict` keeps keys it does not use.
const std::vector<const char*>& python_only_keys(optim_kind kind) {
  static const std::vector<const char*> adam{"maximize", "foreach",
                                             "capturable", "differentiable",
                                             "fused"};
  static const std::vector<const char*> adamw{"foreach", "maximize",
                                              "capturable", "differentiable",
                                              "fused"};
  static const std::vector<const char*> sgd{"maximize", "foreach",
                                            "differentiable", "fused"};
  switch (kind) {
    case optim_kind::adam: return adam;
    case optim_kind::adamw: return adamw;
    case optim_kind::sgd: return sgd;
  }
  return adam;
}

/// Python's default of a key of `python_only_keys`.
pickle::value_ptr python_default(const std::string& key) {
  return key == "foreach" || key == "fused" ? pickle::make_none()
                                            : pickle::make_bool(false);
}

/// The hyper-parameters of a group as DCP's `param_groups` entry.
state_dict group_state(optim_kind kind,
                       const torch::optim::OptimizerParamGroup& group,
                       std::vector<pickle::value_ptr> params) {
  using namespace pickle;
  state_dict out;
  auto adam_like = [&](double lr, std::tuple<double, double> betas, double eps,
                       double wd, bool amsgrad) {
    out.set("lr", pickled(make_float(lr)));
    out.set("betas", pickled(make_tuple({make_float(std::get<0>(betas)),
                                         make_float(std::get<1>(betas))})));
    out.set("eps", pickled(make_float(eps)));
    out.set("weight_decay", pickled(make_float(wd)));
    out.set("amsgrad", pickled(make_bool(amsgrad)));
  };
  switch (kind) {
    case optim_kind::adam: {
      const auto& o = static_cast<const AdamOptions&>(group.options());
      adam_like(o.lr(), o.betas(), o.eps(), o.weight_decay(), o.amsgrad());
      break;
    }
    case optim_kind::adamw: {
      const auto& o = static_cast<const AdamWOptions&>(group.options());
      adam_like(o.lr(), o.betas(), o.eps(), o.weight_decay(), o.amsgrad());
      break;
    }
    case optim_kind::sgd: {
      const auto& o = static_cast<const SGDOptions&>(group.options());
      out.set("lr", pickled(make_float(o.lr())));
      out.set("momentum", pickled(make_float(o.momentum())));
      out.set("dampening", pickled(make_float(o.dampening())));
      out.set("weight_decay", pickled(make_float(o.weight_decay())));
      out.set("nesterov", pickled(make_bool(o.nesterov())));
      break;
    }
  }
  for (const char* key : python_only_keys(kind))
    out.set(key, pickled(python_default(key)));
  out.set("params", pickled(make_list(std::move(params))));
  return out;
}

at::Tensor step_tensor(int64_t step) {
  return at::scalar_tensor(static_cast<double>(step), at::kFloat);
}

/// The per-parameter state of `p` (views), or allocated zeros when
/// `allocate` and the optimizer has none. Empty when there is none.
state_dict param_state(optim_kind kind, const torch::optim::Optimizer& optim,
                       const at::Tensor& p, bool amsgrad, double momentum,
                       bool allocate) {
  state_dict out;
  const auto& states = optim.state();
  auto i = states.find(state_key(p));
  const torch::optim::OptimizerParamState* st = i == states.end()
                                                  ? nullptr
                                                  : i->second.get();
  auto zeros = [&] { return at::zeros_like(p.detach()); };
  auto adam_like = [&](int64_t step, const at::Tensor& m, const at::Tensor& v,
                       const at::Tensor& vmax) {
    out.set("step", step_tensor(step));
    out.set("exp_avg", m);
    out.set("exp_avg_sq", v);
    if (amsgrad)
      out.set("max_exp_avg_sq", vmax.defined() ? vmax : zeros());
  };
  switch (kind) {
    case optim_kind::adam:
      if (st) {
        auto& s = static_cast<const AdamParamState&>(*st);
        adam_like(s.step(), s.exp_avg(), s.exp_avg_sq(), s.max_exp_avg_sq());
      } else if (allocate) {
        adam_like(0, zeros(), zeros(), {});
      }
      break;
    case optim_kind::adamw:
      if (st) {
        auto& s = static_cast<const AdamWParamState&>(*st);
        adam_like(s.step(), s.exp_avg(), s.exp_avg_sq(), s.max_exp_avg_sq());
      } else if (allocate) {
        adam_like(0, zeros(), zeros(), {});
      }
      break;
    case optim_kind::sgd:
      if (st) {
        auto& s = static_cast<const SGDParamState&>(*st);
        if (s.momentum_buffer().defined())
          out.set("momentum_buffer", s.momentum_buffer());
      } else if (allocate && momentum != 0) {
        out.set("momentum_buffer", zeros());
      }
      break;
  }
  return out;
}

caf::expected<state_dict> optim_dict(const torch::optim::Optimizer& optim,
                                     const torch::nn::Module& module,
                                     bool allocate, const metadata* saved,
                                     const std::string& prefix) {
  auto kind = kind_of(optim);
  if (!kind)
    return kind.error();
  auto fqns = fqns_of(module);
  state_dict out;
  auto& state = out.nested("state");
  auto& groups = out.nested("param_groups");
  groups.is_list(true); // DCP records the group positions as ints
  try {
    const auto& all = optim.param_groups();
    for (size_t g = 0; g < all.size(); ++g) {
      const auto& group = all[g];
      bool amsgrad = false;
      double momentum = 0;
      if (*kind == optim_kind::adam)
        amsgrad = static_cast<const AdamOptions&>(group.options()).amsgrad();
      else if (*kind == optim_kind::adamw)
        amsgrad = static_cast<const AdamWOptions&>(group.options()).amsgrad();
      else
        momentum = static_cast<const SGDOptions&>(group.options()).momentum();
      std::vector<pickle::value_ptr> names;
      for (const auto& p : group.params()) {
        auto fqn = fqn_of(fqns, p);
        if (!fqn)
          return fqn.error();
        names.push_back(pickle::make_string(*fqn));
        auto ps = param_state(*kind, optim, p, amsgrad, momentum, allocate);
        if (saved) {
          // Only what the checkpoint holds.
          state_dict kept;
          for (auto& [key, val] : ps.entries())
            if (saved->state_dict_metadata.count(prefix + "state." + *fqn + "."
                                                 + key))
              kept.set(key, std::move(val));
          ps = std::move(kept);
        }
        if (!ps.empty())
          state.nested(*fqn) = std::move(ps);
      }
      auto gs = group_state(*kind, group, std::move(names));
      if (saved) {
        state_dict kept;
        auto base = prefix + "param_groups." + std::to_string(g) + ".";
        for (auto& [key, val] : gs.entries())
          if (saved->state_dict_metadata.count(base + key))
            kept.set(key, std::move(val));
        gs = std::move(kept);
      }
      if (!gs.empty())
        groups.nested(std::to_string(g)) = std::move(gs);
    }
  } catch (const std::exception& ex) {
    return make_error(errc::invalid_argument,
                      std::string{"optimizer_state: "} + ex.what());
  }
  return out;
}

/// The tensor of a value: a plain tensor or the only shard of a sharded
/// tensor (the local slice).
caf::expected<at::Tensor> local_tensor(const value& v, const std::string& key) {
  if (auto t = std::get_if<at::Tensor>(&v))
    return *t;
  if (auto st = std::get_if<sharded_tensor>(&v)) {
    if (st->local_shards.size() == 1)
      return st->local_shards.front().tensor;
    return make_error(errc::invalid_argument,
                      key + ": a sharded tensor with "
                        + std::to_string(st->local_shards.size())
                        + " local shards (one expected)");
  }
  return make_error(errc::kind_mismatch, key + ": not a tensor");
}

caf::error copy_into(const at::Tensor& dst, const value& src,
                     const std::string& key) {
  auto t = local_tensor(src, key);
  if (!t)
    return t.error();
  if (t->sizes() != dst.sizes())
    return make_error(errc::shape_mismatch,
                      key + ": shape " + c10::str(t->sizes()) + " does not fit "
                        + c10::str(dst.sizes()));
  if (t->scalar_type() != dst.scalar_type())
    return make_error(errc::dtype_mismatch,
                      key + ": " + c10::toString(t->scalar_type())
                        + " instead of " + c10::toString(dst.scalar_type()));
  if (t->is_same(dst)
      || (t->data_ptr() == dst.data_ptr() && t->strides() == dst.strides()))
    return caf::none;
  at::NoGradGuard no_grad;
  dst.detach().copy_(*t);
  return caf::none;
}

const state_dict* sub_dict(const state_dict& sd, const std::string& key) {
  auto v = sd.find(key);
  if (!v)
    return nullptr;
  auto sub = std::get_if<std::shared_ptr<state_dict>>(v);
  return sub && *sub ? sub->get() : nullptr;
}

caf::expected<pickle::value_ptr> group_value(const state_dict& group,
                                             const std::string& key,
                                             const std::string& where) {
  auto v = group.find(key);
  if (!v)
    return pickle::value_ptr{};
  auto b = std::get_if<bytes_value>(v);
  if (!b)
    return make_error(errc::corrupt_item, where + key + ": not a bytes value");
  auto x = b->to_pickle();
  if (!x)
    return make_error(errc::corrupt_item,
                      where + key + ": " + to_string(x.error()));
  return x;
}

/// Applies `f(number)` if the group has `key` as an int or float.
caf::error set_number(const state_dict& group, const std::string& key,
                      const std::string& where,
                      const std::function<void(double)>& f) {
  auto x = group_value(group, key, where);
  if (!x)
    return x.error();
  if (!*x)
    return caf::none;
  const auto& v = **x;
  if (v.is(pickle::kind::floating))
    f(v.f);
  else if (v.is(pickle::kind::integer))
    f(static_cast<double>(v.i));
  else if (v.is(pickle::kind::boolean))
    f(v.b ? 1.0 : 0.0);
  else
    return make_error(errc::corrupt_item, where + key + ": not a number but a "
                                            + pickle::kind_name(v.k));
  return caf::none;
}

/// Refuses a key of `python_only_keys` whose loaded value is neither None
/// nor False: libtorch's optimizer would silently do something else.
caf::error check_python_only(optim_kind kind, const state_dict& group,
                             const std::string& where) {
  for (const char* key : python_only_keys(kind)) {
    auto x = group_value(group, key, where);
    if (!x)
      return x.error();
    if (!*x)
      continue; // not in the checkpoint (dcpp before these keys, or 1.13)
    const auto& v = **x;
    if (v.is(pickle::kind::none) || (v.is(pickle::kind::boolean) && !v.b))
      continue;
    std::string shown;
    if (v.is(pickle::kind::boolean))
      shown = "True";
    else if (v.is(pickle::kind::integer))
      shown = std::to_string(v.i);
    else if (v.is(pickle::kind::string))
      shown = "'" + v.s + "'";
    else
      shown = std::string{"a "} + pickle::kind_name(v.k);
    return make_error(errc::unsupported,
                      where + key + ": " + shown + ", which libtorch's "
                        + class_name(kind) + " cannot honour (it has no '" + key
                        + "' option); only None or False load");
  }
  return caf::none;
}

caf::error load_group(optim_kind kind, torch::optim::OptimizerParamGroup& group,
                      const state_dict& gs, const std::string& where,
                      const std::vector<std::string>& expected_params) {
  // `params`: the group's parameters, in order.
  auto params = group_value(gs, "params", where);
  if (!params)
    return params.error();
  if (*params) {
    const auto& xs = **params;
    bool ok = xs.is(pickle::kind::list) || xs.is(pickle::kind::tuple);
    ok = ok && xs.items.size() == expected_params.size();
    for (size_t i = 0; ok && i < xs.items.size(); ++i)
      ok = xs.items[i]->is(pickle::kind::string)
           && xs.items[i]->s == expected_params[i];
    if (!ok)
      return make_error(errc::invalid_argument,
                        where
                          + "params: does not name the group's "
                            "parameters in order");
  }
  if (auto err = check_python_only(kind, gs, where))
    return err;
  auto number = [&](const std::string& key, auto setter) {
    return set_number(gs, key, where, setter);
  };
  auto betas = [&](auto& o) -> caf::error {
    auto x = group_value(gs, "betas", where);
    if (!x)
      return x.error();
    if (!*x)
      return caf::none;
    const auto& v = **x;
    auto num = [](const pickle::value& y, double& out) {
      if (y.is(pickle::kind::floating))
        out = y.f;
      else if (y.is(pickle::kind::integer))
        out = static_cast<double>(y.i);
      else
        return false;
      return true;
    };
    double b1 = 0;
    double b2 = 0;
    if (!(v.is(pickle::kind::tuple) || v.is(pickle::kind::list))
        || v.items.size() != 2 || !num(*v.items[0], b1)
        || !num(*v.items[1], b2))
      return make_error(errc::corrupt_item,
                        where + "betas: not a pair of numbers");
    o.betas(std::make_tuple(b1, b2));
    return caf::none;
  };
  auto adam_like = [&](auto& o) -> caf::error {
    caf::error err;
    if ((err = number("lr", [&](double x) { o.lr(x); })))
      return err;
    if ((err = betas(o)))
      return err;
    if ((err = number("eps", [&](double x) { o.eps(x); })))
      return err;
    if ((err = number("weight_decay", [&](double x) { o.weight_decay(x); })))
      return err;
    return number("amsgrad", [&](double x) { o.amsgrad(x != 0); });
  };
  switch (kind) {
    case optim_kind::adam:
      return adam_like(static_cast<AdamOptions&>(group.options()));
    case optim_kind::adamw:
      return adam_like(static_cast<AdamWOptions&>(group.options()));
    case optim_kind::sgd: {
      auto& o = static_cast<SGDOptions&>(group.options());
      caf::error err;
      if ((err = number("lr", [&](double x) { o.lr(x); })))
        return err;
      if ((err = number("momentum", [&](double x) { o.momentum(x); })))
        return err;
      if ((err = number("dampening", [&](double x) { o.dampening(x); })))
        return err;
      if ((err = number("weight_decay", [&](double x) { o.weight_decay(x); })))
        return err;
      return number("nesterov", [&](double x) { o.nesterov(x != 0); });
    }
  }
  return caf::none;
}

/// The tensor under `key` of a per-parameter state, copied (the loaded
/// values may be views of a state dict the caller drops).
caf::expected<at::Tensor>
state_tensor(const state_dict& ps, const std::string& key,
             const at::Tensor& like, const std::string& where) {
  auto v = ps.find(key);
  if (!v)
    return at::Tensor{};
  auto t = local_tensor(*v, where + key);
  if (!t)
    return t.error();
  if (t->sizes() != like.sizes())
    return make_error(errc::shape_mismatch,
                      where + key + ": shape " + c10::str(t->sizes())
                        + " instead of " + c10::str(like.sizes()));
  return *t;
}

caf::expected<int64_t> state_step(const state_dict& ps,
                                  const std::string& where) {
  auto v = ps.find("step");
  if (!v)
    return int64_t{0};
  if (auto t = std::get_if<at::Tensor>(v); t && t->numel() == 1)
    return static_cast<int64_t>(std::llround(t->item<double>()));
  if (auto b = std::get_if<bytes_value>(v)) {
    auto x = b->to_double();
    if (x)
      return static_cast<int64_t>(std::llround(*x));
  }
  return make_error(errc::corrupt_item,
                    where + "step: not a one-element tensor or a number");
}

} // namespace

// -- modules ------------------------------------------------------------------

state_dict module_state(const torch::nn::Module& module) {
  state_dict out;
  for (const auto& item : module.named_parameters())
    out.set(item.key(), item.value().detach());
  for (const auto& item : module.named_buffers())
    out.set(item.key(), item.value().detach());
  return out;
}

caf::error load_module_state(torch::nn::Module& module, const state_dict& sd) {
  try {
    auto load = [&](const std::string& key, const at::Tensor& dst) {
      auto v = sd.find(key);
      if (!v)
        return make_error(errc::missing_key,
                          "load_module_state: no value for " + key);
      return copy_into(dst, *v, key);
    };
    for (const auto& item : module.named_parameters())
      if (auto err = load(item.key(), item.value()))
        return err;
    for (const auto& item : module.named_buffers())
      if (auto err = load(item.key(), item.value()))
        return err;
  } catch (const std::exception& ex) {
    return make_error(errc::invalid_argument,
                      std::string{"load_module_state: "} + ex.what());
  }
  return caf::none;
}

// -- optimizers ---------------------------------------------------------------

caf::expected<state_dict> optimizer_state(const torch::optim::Optimizer& optim,
                                          const torch::nn::Module& module) {
  return optim_dict(optim, module, false, nullptr, {});
}

caf::expected<state_dict>
optimizer_load_target(const torch::optim::Optimizer& optim,
                      const torch::nn::Module& module, const metadata* saved,
                      const std::string& prefix) {
  return optim_dict(optim, module, true, saved, prefix);
}

caf::error load_optimizer_state(torch::optim::Optimizer& optim,
                                const torch::nn::Module& module,
                                const state_dict& sd) {
  auto kind = kind_of(optim);
  if (!kind)
    return kind.error();
  auto fqns = fqns_of(module);
  const auto* state = sub_dict(sd, "state");
  const auto* groups = sub_dict(sd, "param_groups");
  try {
    auto& all = optim.param_groups();
    for (size_t g = 0; g < all.size(); ++g) {
      auto& group = all[g];
      std::vector<std::string> names;
      for (const auto& p : group.params()) {
        auto fqn = fqn_of(fqns, p);
        if (!fqn)
          return fqn.error();
        names.push_back(*fqn);
        const auto* ps = state ? sub_dict(*state, *fqn) : nullptr;
        if (!ps)
          continue;
        auto where = "optim.state." + *fqn + ".";
        auto key = state_key(p);
        if (*kind == optim_kind::sgd) {
          auto buf = state_tensor(*ps, "momentum_buffer", p, where);
          if (!buf)
            return buf.error();
          auto st = std::make_unique<SGDParamState>();
          if (buf->defined())
            st->momentum_buffer(buf->clone());
          optim.state()[key] = std::move(st);
          continue;
        }
        auto step = state_step(*ps, where);
        if (!step)
          return step.error();
        bool amsgrad
          = *kind == optim_kind::adam
              ? static_cast<const AdamOptions&>(group.options()).amsgrad()
              : static_cast<const AdamWOptions&>(group.options()).amsgrad();
        at::Tensor ts[3];
        const char* keys[] = {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
        for (int i = 0; i < 3; ++i) {
          auto t = state_tensor(*ps, keys[i], p, where);
          if (!t)
            return t.error();
          if (t->defined())
            ts[i] = t->clone();
          else if (i < 2 || amsgrad)
            ts[i] = at::zeros_like(p.detach());
        }
        auto install = [&](auto st) {
          st->step(*step);
          st->exp_avg(ts[0]);
          st->exp_avg_sq(ts[1]);
          if (ts[2].defined())
            st->max_exp_avg_sq(ts[2]);
          optim.state()[key] = std::move(st);
        };
        if (*kind == optim_kind::adam)
          install(std::make_unique<AdamParamState>());
        else
          install(std::make_unique<AdamWParamState>());
      }
      if (!groups)
        continue;
      const auto* gs = sub_dict(*groups, std::to_string(g));
      if (!gs)
        continue;
      auto where = "optim.param_groups." + std::to_string(g) + ".";
      if (auto err = load_group(*kind, group, *gs, where, names))
        return err;
    }
  } catch (const std::exception& ex) {
    return make_error(errc::invalid_argument,
                      std::string{"load_optimizer_state: "} + ex.what());
  }
  return caf::none;
}

// -- both ---------------------------------------------------------------------

caf::expected<state_dict> training_state(const torch::nn::Module& module,
                                         const torch::optim::Optimizer& optim) {
  auto os = optimizer_state(optim, module);
  if (!os)
    return os.error();
  state_dict out;
  out.nested("model") = module_state(module);
  out.nested("optim") = std::move(*os);
  return out;
}

caf::expected<state_dict>
training_load_target(const torch::nn::Module& module,
                     const torch::optim::Optimizer& optim,
                     const metadata* saved, const std::string& prefix) {
  auto os = optimizer_load_target(optim, module, saved, prefix + "optim.");
  if (!os)
    return os.error();
  state_dict out;
  out.nested("model") = module_state(module);
  out.nested("optim") = std::move(*os);
  return out;
}

caf::error load_training_state(torch::nn::Module& module,
                               torch::optim::Optimizer& optim,
                               const state_dict& sd) {
  const auto* model = sub_dict(sd, "model");
  if (!model)
    return make_error(errc::missing_key, "load_training_state: no 'model'");
  if (auto err = load_module_state(module, *model))
    return err;
  const auto* os = sub_dict(sd, "optim");
  if (!os)
    return make_error(errc::missing_key, "load_training_state: no 'optim'");
  return load_optimizer_state(optim, module, *os);
}

caf::error shard_parameter(state_dict& sd, const std::string& fqn,
                           shape_t global_size, shape_t offsets) {
  auto wrap = [&](value& v, const std::string& key) -> caf::error {
    auto t = std::get_if<at::Tensor>(&v);
    if (!t)
      return caf::none; // already sharded, or not a tensor
    auto sizes = t->sizes();
    bool fits = static_cast<size_t>(t->dim()) == global_size.size()
                && offsets.size() == global_size.size();
    for (size_t d = 0; fits && d < global_size.size(); ++d)
      fits = offsets[d] >= 0 && offsets[d] + sizes[d] <= global_size[d];
    if (!fits)
      return make_error(errc::invalid_argument,
                        "shard_parameter: " + key + " of shape "
                          + c10::str(sizes) + " does not fit at the offsets");
    v = sharded_tensor{global_size, {shard{*t, offsets}}};
    return caf::none;
  };
  auto model = sd.find("model");
  auto md = model ? std::get_if<std::shared_ptr<state_dict>>(model) : nullptr;
  value* param = md && *md ? (*md)->find(fqn) : nullptr;
  if (!param)
    return make_error(errc::missing_key, "shard_parameter: no model." + fqn);
  if (auto err = wrap(*param, "model." + fqn))
    return err;
  if (auto ps = sd.find_path({"optim", "state", fqn})) {
    if (auto sub = std::get_if<std::shared_ptr<state_dict>>(ps); sub && *sub)
      for (auto& [key, v] : (*sub)->entries())
        if (key != "step")
          if (auto err = wrap(v, "optim.state." + fqn + "." + key))
            return err;
  }
  return caf::none;
}

// -- stateful -----------------------------------------------------------------

stateful::~stateful() = default;

caf::expected<state_dict> collect_state(const stateful_list& objs) {
  state_dict out;
  for (const auto& [key, obj] : objs) {
    auto sd = obj->state_dict();
    if (!sd)
      return sd.error();
    out.nested(key) = std::move(*sd);
  }
  return out;
}

caf::expected<state_dict> stateful::load_target(const metadata&,
                                                const std::string&) {
  return state_dict();
}

caf::expected<state_dict> collect_load_target(const stateful_list& objs,
                                              const metadata& saved) {
  state_dict out;
  for (const auto& [key, obj] : objs) {
    auto sd = obj->load_target(saved, key + ".");
    if (!sd)
      return sd.error();
    out.nested(key) = std::move(*sd);
  }
  return out;
}

caf::error apply_state(const stateful_list& objs, const state_dict& sd) {
  for (const auto& [key, obj] : objs) {
    const auto* sub = sub_dict(sd, key);
    if (!sub)
      return make_error(errc::missing_key, "apply_state: no " + key);
    if (auto err = obj->load_state_dict(*sub))
      return err;
  }
  return caf::none;
}

caf::expected<state_dict> training_stateful::state_dict() {
  return training_load_target(module_, optim_);
}

caf::expected<state_dict>
training_stateful::load_target(const metadata& saved,
                               const std::string& prefix) {
  return training_load_target(module_, optim_, &saved, prefix);
}

caf::error training_stateful::load_state_dict(const dcpp::state_dict& sd) {
  return load_training_state(module_, optim_, sd);
}

} // namespace dcpp
