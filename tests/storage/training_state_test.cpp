// The state of a libtorch training loop (storage/training_state.hpp):
// module and optimizer state in get_state_dict's layout, round trips
// through a real file-system checkpoint into a fresh module and optimizer,
// training on bit-identically after a restore; `stateful` objects; one
// checkpointer for many checkpoint ids.

#include "storage/training_state.hpp"

#include "actors/checkpoint_manager.hpp"
#include "actors/checkpointer.hpp"
#include "core/error.hpp"
#include "storage/filesystem.hpp"
#include "storage/pickle.hpp"
#include "tests/storage/fs_test_util.hpp"

#include <catch2/catch.hpp>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <functional>
#include <memory>

using namespace dcpp;

namespace {

/// A module with a nested submodule and buffers.
struct net_impl : torch::nn::Module {
  net_impl() {
    fc1 = register_module("fc1", torch::nn::Linear(4, 8));
    block = register_module("block",
                            torch::nn::Sequential(torch::nn::Linear(8, 3),
                                                  torch::nn::BatchNorm1d(3)));
  }
  at::Tensor forward(at::Tensor x) {
    return block->forward(torch::relu(fc1->forward(x)));
  }
  torch::nn::Linear fc1{nullptr};
  torch::nn::Sequential block{nullptr};
};
TORCH_MODULE_IMPL(net, net_impl);

checkpointer make_fs_checkpointer(const std::string& dir) {
  checkpointer_options opts;
  opts.no_dist = true;
  return checkpointer{make_filesystem_writer(dir), make_filesystem_reader(dir),
                      opts};
}

void train_step(net& model, torch::optim::Optimizer& opt, int k) {
  auto x = at::sin(at::arange(16 * 4, at::kFloat).reshape({16, 4}) + k);
  auto y = at::cos(at::arange(16 * 3, at::kFloat).reshape({16, 3}) * 0.5 + k);
  opt.zero_grad();
  auto loss = (model->forward(x) - y).pow(2).mean();
  loss.backward();
  opt.step();
}

const state_dict& sub(const state_dict& sd, const std::string& key) {
  auto v = sd.find(key);
  REQUIRE(v);
  auto p = std::get_if<std::shared_ptr<state_dict>>(v);
  REQUIRE(p);
  return **p;
}

void check_modules_equal(net& a, net& b) {
  auto pa = a->named_parameters();
  auto pb = b->named_parameters();
  for (const auto& item : pa) {
    INFO(item.key());
    CHECK(torch::equal(item.value(), pb[item.key()]));
  }
  auto ba = a->named_buffers();
  auto bb = b->named_buffers();
  for (const auto& item : ba) {
    INFO(item.key());
    CHECK(torch::equal(item.value(), bb[item.key()]));
  }
}

/// Saves model + optimizer after 3 steps, restores into fresh ones with
/// other hyper-parameters, and checks that one more step matches.
void round_trip(const std::function<std::unique_ptr<torch::optim::Optimizer>(
                  net&, bool fresh)>& make_opt) {
  fs_test::temp_dir dir;
  torch::manual_seed(1);
  net a;
  auto opt_a = make_opt(a, false);
  for (int k = 0; k < 3; ++k)
    train_step(a, *opt_a, k);
  auto cp = make_fs_checkpointer(dir.path());
  auto sd = training_state(*a, *opt_a);
  REQUIRE(sd);
  auto md = cp.save(*sd);
  REQUIRE(md);

  torch::manual_seed(2);
  net b;
  auto opt_b = make_opt(b, true);
  CHECK(opt_b->state().empty());
  auto target = training_load_target(*b, *opt_b, &*md);
  REQUIRE(target);
  REQUIRE(!cp.load(*target));
  REQUIRE(!load_training_state(*b, *opt_b, *target));
  check_modules_equal(a, b);

  // The restored state as saved, key for key.
  auto again = training_state(*b, *opt_b);
  REQUIRE(again);
  auto flat_a = flatten(*sd);
  auto flat_b = flatten(*again);
  REQUIRE(flat_a);
  REQUIRE(flat_b);
  REQUIRE(flat_a->items.size() == flat_b->items.size());
  for (size_t i = 0; i < flat_a->items.size(); ++i) {
    const auto& [key, va] = flat_a->items[i];
    INFO(key);
    CHECK(flat_b->items[i].first == key);
    auto vb = flat_b->items[i].second;
    if (auto ta = std::get_if<at::Tensor>(va))
      CHECK(torch::equal(*ta, std::get<at::Tensor>(*vb)));
    else
      CHECK(std::get<bytes_value>(*va).data == std::get<bytes_value>(*vb).data);
  }

  train_step(a, *opt_a, 3);
  train_step(b, *opt_b, 3);
  check_modules_equal(a, b);
}

} // namespace

TEST_CASE("module state: fqns of parameters and buffers, views", "[training]") {
  net model;
  auto sd = module_state(*model);
  std::vector<std::string> keys;
  for (const auto& [key, v] : sd.entries())
    keys.push_back(key);
  CHECK(keys
        == std::vector<std::string>{"fc1.weight", "fc1.bias", "block.0.weight",
                                    "block.0.bias", "block.1.weight",
                                    "block.1.bias", "block.1.running_mean",
                                    "block.1.running_var",
                                    "block.1.num_batches_tracked"});
  auto w = std::get<at::Tensor>(*sd.find("fc1.weight"));
  CHECK(w.data_ptr() == model->fc1->weight.data_ptr());
  CHECK(!w.requires_grad());
  // Values written into the views land in the module (a load in place).
  w.fill_(0.5);
  CHECK(model->fc1->weight.eq(0.5).all().item<bool>());
  std::get<at::Tensor>(*sd.find("block.1.num_batches_tracked")).fill_(7);
  CHECK(model->block[1]->named_buffers()["num_batches_tracked"].item<int64_t>()
        == 7);
}

TEST_CASE("optimizer state: fqn keys, float32 step, param_groups",
          "[training]") {
  net model;
  torch::optim::Adam opt(model->parameters(),
                         torch::optim::AdamOptions(0.01).amsgrad(true));
  auto fresh = optimizer_state(opt, *model);
  REQUIRE(fresh);
  CHECK(sub(*fresh, "state").empty());
  train_step(model, opt, 0);
  train_step(model, opt, 1);
  auto sd = optimizer_state(opt, *model);
  REQUIRE(sd);
  const auto& w = sub(sub(*sd, "state"), "block.0.weight");
  auto step = std::get<at::Tensor>(*w.find("step"));
  CHECK(step.scalar_type() == at::kFloat);
  CHECK(step.dim() == 0);
  CHECK(step.item<float>() == 2.0f);
  CHECK(w.find("exp_avg"));
  CHECK(w.find("exp_avg_sq"));
  CHECK(w.find("max_exp_avg_sq"));
  // The state is the optimizer's own tensor, not a copy.
  auto key = c10::guts::to_string(
    model->block[0]->named_parameters()["weight"].unsafeGetTensorImpl());
  auto& ps = static_cast<torch::optim::AdamParamState&>(*opt.state().at(key));
  CHECK(std::get<at::Tensor>(*w.find("exp_avg")).data_ptr()
        == ps.exp_avg().data_ptr());
  const auto& g0 = sub(sub(*sd, "param_groups"), "0");
  CHECK(g0.find("lr")->index() == 2);
  CHECK(*std::get<bytes_value>(*g0.find("lr")).to_double() == 0.01);
  // Flattened as DCP 2.4+ flattens: param_groups by index.
  auto flat = flatten(*sd);
  REQUIRE(flat);
  std::vector<std::string> keys;
  for (const auto& [k, v] : flat->items)
    keys.push_back(k);
  CHECK(std::count(keys.begin(), keys.end(), "state.fc1.weight.exp_avg") == 1);
  CHECK(std::count(keys.begin(), keys.end(), "param_groups.0.params") == 1);
  CHECK(std::count(keys.begin(), keys.end(), "param_groups.0.betas") == 1);
  // The group's position is recorded as DCP records it, an int (so DCP's
  // set_element rebuilds a list); parameter fqns stay str keys.
  CHECK(to_string(flat->mapping.at("param_groups.0.lr"))
        == "('param_groups', 0, 'lr')");
  CHECK(to_string(flat->mapping.at("state.fc1.weight.exp_avg"))
        == "('state', 'fc1.weight', 'exp_avg')");
}

TEST_CASE("Adam round trip through a file-system checkpoint, then one step",
          "[training]") {
  round_trip([](net& m, bool fresh) {
    return std::make_unique<torch::optim::Adam>(
      m->parameters(), torch::optim::AdamOptions(fresh ? 0.5 : 0.01)
                         .betas({0.8, 0.99})
                         .weight_decay(fresh ? 0 : 0.1));
  });
}

TEST_CASE("AdamW (amsgrad) round trip, then one step", "[training]") {
  round_trip([](net& m, bool fresh) {
    return std::make_unique<torch::optim::AdamW>(
      m->parameters(),
      torch::optim::AdamWOptions(fresh ? 0.5 : 0.02).amsgrad(true));
  });
}

TEST_CASE("SGD (momentum, nesterov) round trip, then one step", "[training]") {
  round_trip([](net& m, bool fresh) {
    return std::make_unique<torch::optim::SGD>(
      m->parameters(), torch::optim::SGDOptions(fresh ? 0.5 : 0.05)
                         .momentum(0.9)
                         .nesterov(true)
                         .dampening(0));
  });
}

TEST_CASE("a sharded parameter keeps its optimizer state sharded alike",
          "[training]") {
  net model;
  torch::optim::Adam opt(model->parameters());
  train_step(model, opt, 0);
  auto sd = training_state(*model, opt);
  REQUIRE(sd);
  // This rank holds rows 8..15 of a 16 x 4 fc1.weight.
  REQUIRE(!shard_parameter(*sd, "fc1.weight", {16, 4}, {8, 0}));
  auto st = std::get_if<sharded_tensor>(sd->find_path({"model", "fc1.weight"}));
  REQUIRE(st);
  CHECK(st->global_size == shape_t{16, 4});
  auto m = std::get_if<sharded_tensor>(
    sd->find_path({"optim", "state", "fc1.weight", "exp_avg"}));
  REQUIRE(m);
  CHECK(m->local_shards.at(0).offsets == shape_t{8, 0});
  CHECK(std::get_if<at::Tensor>(
    sd->find_path({"optim", "state", "fc1.weight", "step"})));
  auto err = shard_parameter(*sd, "fc1.bias", {4}, {2});
  CHECK(code_of(err) == errc::invalid_argument);
  CHECK(code_of(shard_parameter(*sd, "nope", {1}, {0})) == errc::missing_key);
  // The load helpers take the local slice of a one-shard entry.
  CHECK(!load_training_state(*model, opt, *sd));
}

namespace {

/// A data loader position as a `stateful`.
struct loader_position final : stateful {
  int64_t epoch = 0;
  at::Tensor rng = at::zeros({4}, at::kLong);
  caf::expected<dcpp::state_dict> state_dict() override {
    dcpp::state_dict sd;
    sd.set("epoch", bytes_value::from_int(epoch));
    sd.set("rng", rng);
    return sd;
  }
  caf::error load_state_dict(const dcpp::state_dict& sd) override {
    auto e = std::get<bytes_value>(*sd.find("epoch")).to_int();
    if (!e)
      return e.error();
    epoch = *e;
    rng.copy_(std::get<at::Tensor>(*sd.find("rng")));
    return caf::none;
  }
};

} // namespace

TEST_CASE("stateful objects and one checkpointer for many checkpoint ids",
          "[training]") {
  fs_test::temp_dir dir;
  auto cp = make_fs_checkpointer(dir / "unused");
  torch::manual_seed(3);
  net model;
  torch::optim::SGD opt(model->parameters(),
                        torch::optim::SGDOptions(0.1).momentum(0.5));
  loader_position pos;
  training_stateful train{*model, opt};
  stateful_list objs{{"app", &train}, {"loader", &pos}};
  for (int step = 1; step <= 2; ++step) {
    train_step(model, opt, step);
    pos.epoch = step;
    pos.rng.fill_(step * 10);
    auto sd = collect_state(objs);
    REQUIRE(sd);
    REQUIRE(cp.save(*sd, dir / ("step_" + std::to_string(step))));
  }
  auto after_two = module_state(*model);
  std::vector<at::Tensor> expected;
  for (auto& [k, v] : after_two.entries())
    expected.push_back(std::get<at::Tensor>(v).clone());

  // Load step 1, then step 2, into fresh objects through the same
  // checkpointer.
  torch::manual_seed(4);
  net fresh;
  torch::optim::SGD fresh_opt(fresh->parameters(),
                              torch::optim::SGDOptions(0.7));
  loader_position fresh_pos;
  training_stateful fresh_train{*fresh, fresh_opt};
  stateful_list fresh_objs{{"app", &fresh_train}, {"loader", &fresh_pos}};
  for (int step = 1; step <= 2; ++step) {
    auto sd = collect_state(fresh_objs);
    REQUIRE(sd);
    REQUIRE(!cp.load(*sd, dir / ("step_" + std::to_string(step))));
    REQUIRE(!apply_state(fresh_objs, *sd));
    CHECK(fresh_pos.epoch == step);
    CHECK(fresh_pos.rng.eq(step * 10).all().item<bool>());
  }
  CHECK(static_cast<torch::optim::SGDOptions&>(
          fresh_opt.param_groups()[0].options())
          .momentum()
        == 0.5);
  auto got = module_state(*fresh);
  size_t i = 0;
  for (auto& [k, v] : got.entries())
    CHECK(torch::equal(std::get<at::Tensor>(v), expected[i++]));
  // No checkpoint under that id.
  state_dict empty;
  auto missing = cp.load(empty, dir / "missing");
  INFO(describe(missing));
  CHECK(missing);
}

// -- PyTorch 2.x's param_groups
// -------------------------------------------------

namespace {

/// The keys of group 0 of a fresh `optimizer_state`, in order.
std::vector<std::string> group_keys(const torch::optim::Optimizer& opt,
                                    net& model) {
  auto sd = optimizer_state(opt, *model);
  REQUIRE(sd);
  std::vector<std::string> keys;
  for (const auto& [key, v] : sub(sub(*sd, "param_groups"), "0").entries())
    keys.push_back(key);
  return keys;
}

/// Group 0's `key` of a training state, decoded.
pickle::value_ptr group_value(state_dict& sd, const std::string& key) {
  auto v = sd.find_path({"optim", "param_groups", "0", key});
  REQUIRE(v);
  auto x = std::get<bytes_value>(*v).to_pickle();
  REQUIRE(x);
  return *x;
}

/// What `save_edited_and_load` saw.
struct edited_load {
  metadata saved;
  caf::error err;
  double lr = 0;
};

/// Keeps only the keys of an Adam param group that libtorch knows, as dcpp
/// wrote them before it wrote Python's too.
void keep_libtorch_keys(state_dict& group) {
  state_dict old;
  for (auto& [key, v] : group.entries())
    if (key == "lr" || key == "betas" || key == "eps" || key == "weight_decay"
        || key == "amsgrad" || key == "params")
      old.set(key, v);
  group = old;
}

/// Saves an Adam training state (one step, lr 0.01) whose group 0 `edit`
/// changed first (as another writer would have written it), then loads it
/// into a fresh model and Adam (lr 0.5).
edited_load save_edited_and_load(const std::function<void(state_dict&)>& edit) {
  fs_test::temp_dir dir;
  net a;
  torch::optim::Adam opt_a(a->parameters(), torch::optim::AdamOptions(0.01));
  train_step(a, opt_a, 0);
  auto sd = training_state(*a, opt_a);
  REQUIRE(sd);
  edit(*std::get<std::shared_ptr<state_dict>>(
    *sd->find_path({"optim", "param_groups", "0"})));
  auto cp = make_fs_checkpointer(dir.path());
  auto md = cp.save(*sd);
  REQUIRE(md);
  net b;
  torch::optim::Adam opt_b(b->parameters(), torch::optim::AdamOptions(0.5));
  auto target = training_load_target(*b, opt_b, &*md);
  REQUIRE(target);
  REQUIRE(!cp.load(*target));
  edited_load out;
  out.saved = *md;
  out.err = load_training_state(*b, opt_b, *target);
  out.lr = static_cast<torch::optim::AdamOptions&>(
             opt_b.param_groups()[0].options())
             .lr();
  return out;
}

/// The error of loading a checkpoint whose group 0 has `key` = `value`.
caf::error load_with_group_value(const std::string& key,
                                 const pickle::value_ptr& value) {
  return save_edited_and_load([&](state_dict& group) {
           group.set(key, bytes_value::from_pickle(*value));
         })
    .err;
}

} // namespace

TEST_CASE("param_groups carry every key of PyTorch 2.6's optimizer",
          "[training]") {
  net model;
  // Python 2.6's `Optimizer.state_dict()["param_groups"][0]` keys, in order.
  torch::optim::Adam adam(model->parameters(), torch::optim::AdamOptions(0.1));
  CHECK(group_keys(adam, model)
        == std::vector<std::string>{"lr", "betas", "eps", "weight_decay",
                                    "amsgrad", "maximize", "foreach",
                                    "capturable", "differentiable", "fused",
                                    "params"});
  torch::optim::AdamW adamw(model->parameters(),
                            torch::optim::AdamWOptions(0.1));
  CHECK(group_keys(adamw, model)
        == std::vector<std::string>{"lr", "betas", "eps", "weight_decay",
                                    "amsgrad", "foreach", "maximize",
                                    "capturable", "differentiable", "fused",
                                    "params"});
  torch::optim::SGD sgd(model->parameters(), torch::optim::SGDOptions(0.1));
  CHECK(group_keys(sgd, model)
        == std::vector<std::string>{"lr", "momentum", "dampening",
                                    "weight_decay", "nesterov", "maximize",
                                    "foreach", "differentiable", "fused",
                                    "params"});
  // Python's defaults where libtorch has no such option.
  auto sd = training_state(*model, adam);
  REQUIRE(sd);
  for (const char* key : {"maximize", "capturable", "differentiable"}) {
    INFO(key);
    auto x = group_value(*sd, key);
    CHECK(x->is(pickle::kind::boolean));
    CHECK_FALSE(x->b);
  }
  for (const char* key : {"foreach", "fused"}) {
    INFO(key);
    CHECK(group_value(*sd, key)->is(pickle::kind::none));
  }
}

TEST_CASE("a Python-only hyper-parameter loads only as None or False",
          "[training]") {
  // Python's defaults, and PyTorch 1.13's fused=False, foreach=False.
  CHECK_FALSE(load_with_group_value("fused", pickle::make_none()));
  CHECK_FALSE(load_with_group_value("fused", pickle::make_bool(false)));
  CHECK_FALSE(load_with_group_value("foreach", pickle::make_bool(false)));
  CHECK_FALSE(load_with_group_value("maximize", pickle::make_bool(false)));
  // What libtorch's Adam would silently not do.
  for (const char* key :
       {"fused", "maximize", "foreach", "capturable", "differentiable"}) {
    INFO(key);
    auto err = load_with_group_value(key, pickle::make_bool(true));
    REQUIRE(err);
    CHECK(code_of(err) == errc::unsupported);
    auto what = context_of(err);
    INFO(what);
    CHECK(what.find(std::string{"optim.param_groups.0."} + key + ": True")
          != std::string::npos);
    CHECK(what.find("Adam") != std::string::npos);
  }
  auto err = load_with_group_value("maximize", pickle::make_int(1));
  REQUIRE(err);
  CHECK(context_of(err).find("optim.param_groups.0.maximize: 1")
        != std::string::npos);
}

TEST_CASE("a checkpoint without the Python-only keys still loads",
          "[training]") {
  // As dcpp wrote param_groups before, and as libtorch knows them.
  auto res = save_edited_and_load(keep_libtorch_keys);
  CHECK(res.saved.state_dict_metadata.count("optim.param_groups.0.lr") == 1);
  CHECK(res.saved.state_dict_metadata.count("optim.param_groups.0.fused") == 0);
  CHECK_FALSE(res.err);
  CHECK(res.lr == 0.01);
}

TEST_CASE("async_save records param_groups positions as ints", "[training]") {
  fs_test::temp_dir dir;
  net model;
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(0.1));
  train_step(model, opt, 0);
  auto sd = training_state(*model, opt);
  REQUIRE(sd);
  auto cp = make_fs_checkpointer(dir.path());
  auto sync = cp.save(*sd, dir / "sync");
  REQUIRE(sync);
  auto async = cp.async_save(*sd, dir / "async").get();
  REQUIRE(async);
  CHECK(async->planner_data.size() == sync->planner_data.size());
  for (const auto& [key, path] : sync->planner_data) {
    INFO(key);
    REQUIRE(async->planner_data.count(key) == 1);
    CHECK(to_string(async->planner_data.at(key)) == to_string(path));
  }
  for (const char* key : {"lr", "fused", "params"}) {
    auto fqn = std::string{"optim.param_groups.0."} + key;
    INFO(fqn);
    REQUIRE(async->planner_data.count(fqn) == 1);
    const auto& path = async->planner_data.at(fqn);
    REQUIRE(path.size() == 4);
    CHECK(path[2].index);
    CHECK(path[2].key == "0");
  }
  // And so it is on disk: the reader decodes what was written.
  auto reader = make_filesystem_reader(dir / "async");
  auto on_disk = reader->read_metadata();
  REQUIRE(on_disk);
  CHECK((on_disk->planner_data == sync->planner_data));
}

TEST_CASE("the checkpoint manager resumes from a checkpoint without the "
          "Python-only keys",
          "[training]") {
  // A step written by an earlier dcpp: param_groups hold only libtorch's
  // options. restore(stateful) shapes its load target by the step's
  // metadata, so the keys this dcpp saves but the step lacks are not asked
  // for.
  fs_test::temp_dir dir;
  checkpoint_manager_options o;
  o.checkpointer.no_dist = true;
  net a;
  torch::optim::Adam opt_a(a->parameters(), torch::optim::AdamOptions(0.01));
  train_step(a, opt_a, 0);
  {
    auto sd = training_state(*a, opt_a);
    REQUIRE(sd);
    keep_libtorch_keys(*std::get<std::shared_ptr<state_dict>>(
      *sd->find_path({"optim", "param_groups", "0"})));
    state_dict wrapped;
    wrapped.nested("app") = std::move(*sd);
    checkpoint_manager mgr{dir.path(), o};
    auto err = mgr.save(5, wrapped);
    INFO(describe(err));
    REQUIRE(!err);
    REQUIRE(!mgr.wait_until_finished());
  }
  net b;
  torch::optim::Adam opt_b(b->parameters(), torch::optim::AdamOptions(0.5));
  training_stateful app{*b, opt_b};
  checkpoint_manager mgr{dir.path(), o};
  auto step = mgr.restore(std::nullopt, {{"app", &app}});
  INFO((step ? std::string{} : describe(step.error())));
  REQUIRE(step);
  CHECK(*step == 5);
  CHECK(
    static_cast<torch::optim::AdamOptions&>(opt_b.param_groups()[0].options())
      .lr()
    == 0.01);
  for (const auto& item : a->named_parameters())
    CHECK(at::equal(item.value(), b->named_parameters()[item.key()]));
}
