#include "apps/synthetic.hpp"

#include "core/error.hpp"
#include "storage/host_memory.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace dcpp::synthetic {

caf::expected<layout> parse_layout(const std::string& str) {
  if (str == "row")
    return layout::row;
  if (str == "col")
    return layout::col;
  if (str == "replicated")
    return layout::replicated;
  if (str == "mixed")
    return layout::mixed;
  return make_error(errc::invalid_argument,
                    "unknown layout '" + str
                      + "' (expected row, col, replicated or mixed)");
}

std::string to_string(layout x) {
  switch (x) {
    case layout::row: return "row";
    case layout::col: return "col";
    case layout::replicated: return "replicated";
    case layout::mixed: return "mixed";
  }
  return "?";
}

std::string tensor_spec::key() const {
  std::string out;
  for (size_t i = 0; i < path.size(); ++i) {
    if (i > 0)
      out += '.';
    out += path[i];
  }
  return out;
}

namespace {

// A prime hidden size: row and column splits are uneven for every world
// size above 1.
constexpr int64_t hidden = 257;
constexpr int64_t vocab = 1009;

int split_for(layout split, int rank_of_tensor, bool attention) {
  switch (split) {
    case layout::row: return 0;
    case layout::col: return rank_of_tensor == 2 ? 1 : 0;
    case layout::replicated: return -1;
    case layout::mixed:
      if (rank_of_tensor == 1)
        return -1; // biases replicated
      return attention ? 1 : 0;
  }
  return -1;
}

} // namespace

std::vector<tensor_spec> specs(const options& opts) {
  std::vector<tensor_spec> out;
  auto add = [&](std::vector<std::string> path, shape_t shape, dtype type,
                 bool attention) {
    auto dim = split_for(opts.split, static_cast<int>(shape.size()), attention);
    out.push_back({std::move(path), std::move(shape), type, dim});
  };
  if (!opts.tensors.empty()) {
    for (const auto& [name, shape] : opts.tensors)
      add({name}, shape, dtype::float32, false);
    return out;
  }
  add({"model", "embedding", "weight"}, {vocab, hidden}, dtype::float32, false);
  add({"model", "position_ids"}, {vocab}, dtype::int64, false);
  // Per layer: qkv (3h x h) + bias, fc1 (4h x h, bf16) + bias, fc2 (h x 4h)
  double layer_bytes = (3.0 * hidden * hidden + 3 * hidden) * 4
                       + (4.0 * hidden * hidden) * 2 + 4.0 * hidden * 4
                       + (4.0 * hidden * hidden) * 4;
  double embed_bytes = 2.0 * vocab * hidden * 4 + vocab * 8;
  auto budget = opts.size_mb * 1024 * 1024 - embed_bytes;
  auto layers = std::max<int64_t>(1, static_cast<int64_t>(
                                       std::llround(budget / layer_bytes)));
  for (int64_t l = 0; l < layers; ++l) {
    std::vector<std::string> p{"model", "layers", std::to_string(l)};
    auto with = [&](std::initializer_list<const char*> tail) {
      auto q = p;
      for (auto t : tail)
        q.emplace_back(t);
      return q;
    };
    add(with({"attn", "qkv", "weight"}), {3 * hidden, hidden}, dtype::float32,
        true);
    add(with({"attn", "qkv", "bias"}), {3 * hidden}, dtype::float32, true);
    add(with({"mlp", "fc1", "weight"}), {4 * hidden, hidden}, dtype::bfloat16,
        false);
    add(with({"mlp", "fc1", "bias"}), {4 * hidden}, dtype::float32, false);
    add(with({"mlp", "fc2", "weight"}), {hidden, 4 * hidden}, dtype::float32,
        false);
  }
  add({"optim", "state", "embedding", "exp_avg"}, {vocab, hidden},
      dtype::float32, false);
  return out;
}

uint32_t fnv1a32(const std::string& key) {
  uint32_t h = 2166136261u;
  for (unsigned char c : key) {
    h ^= c;
    h *= 16777619u;
  }
  return h;
}

std::pair<int64_t, int64_t> rank_range(int64_t n, int32_t rank, int32_t world,
                                       bool balanced) {
  if (balanced) {
    auto q = n / world;
    auto r = n % world;
    auto begin = q * rank + std::min<int64_t>(rank, r);
    return {begin, begin + q + (rank < r ? 1 : 0)};
  }
  auto chunk = (n + world - 1) / world;
  auto begin = std::min<int64_t>(n, chunk * rank);
  auto end = std::min<int64_t>(n, begin + chunk);
  return {begin, end};
}

at::Tensor expected_box(const std::string& key, const shape_t& shape,
                        const shape_t& offsets, const shape_t& sizes,
                        dtype type, uint32_t seed) {
  auto base = static_cast<int64_t>(fnv1a32(key) ^ seed);
  // Global flat index of every element of the box, by broadcasting.
  auto idx = at::zeros(sizes, at::kLong);
  int64_t stride = 1;
  for (auto d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    auto dd = static_cast<size_t>(d);
    auto r = at::arange(offsets[dd], offsets[dd] + sizes[dd], at::kLong)
             * stride;
    std::vector<int64_t> view(shape.size(), 1);
    view[dd] = sizes[dd];
    idx = idx + r.view(view);
    stride *= shape[dd];
  }
  auto v = (idx + base).remainder(65521);
  switch (type) {
    case dtype::int64:
    case dtype::int32:
    case dtype::int16:
    case dtype::uint8: return v.to(to_scalar_type(type));
    default:
      return v.to(at::kDouble)
        .div(65521.0)
        .to(at::kFloat)
        .to(to_scalar_type(type));
  }
}

namespace {

/// Puts `v` under `spec.path` in `sd`.
void place(state_dict& sd, const tensor_spec& spec, value v) {
  state_dict* cur = &sd;
  for (size_t i = 0; i + 1 < spec.path.size(); ++i)
    cur = &cur->nested(spec.path[i]);
  cur->set(spec.path.back(), std::move(v));
}

state_dict build(const options& opts, bool filled) {
  state_dict sd;
  for (const auto& spec : specs(opts)) {
    auto key = spec.key();
    auto make = [&](const shape_t& off, const shape_t& sz) {
      if (filled)
        return expected_box(key, spec.shape, off, sz, spec.type, opts.seed);
      if (!opts.huge_pages)
        return at::zeros(sz, to_scalar_type(spec.type));
      auto t = empty_host_tensor(sz, to_scalar_type(spec.type));
      t.zero_();
      return t;
    };
    shape_t zeros(spec.shape.size(), 0);
    if (spec.split_dim < 0 || opts.world == 1) {
      place(sd, spec, make(zeros, spec.shape));
      continue;
    }
    auto d = static_cast<size_t>(spec.split_dim);
    auto [begin, end] = rank_range(spec.shape[d], opts.rank, opts.world,
                                   !opts.tensors.empty());
    sharded_tensor st;
    st.global_size = spec.shape;
    if (end > begin) {
      auto off = zeros;
      off[d] = begin;
      auto sz = spec.shape;
      sz[d] = end - begin;
      st.local_shards.push_back({make(off, sz), off});
    }
    place(sd, spec, std::move(st));
  }
  if (!opts.tensors.empty())
    return sd;
  sd.set("step",
         filled ? bytes_value::from_int(1000 + opts.seed) : bytes_value{});
  sd.nested("optim").set("param_groups", filled
                                           ? bytes_value::from_string("lr=3e-4")
                                           : bytes_value{});
  return sd;
}

} // namespace

state_dict make_state_dict(const options& opts) {
  return build(opts, true);
}

state_dict make_empty_state_dict(const options& opts) {
  return build(opts, false);
}

std::vector<std::string> verify(const state_dict& sd, const options& opts) {
  std::vector<std::string> bad;
  auto& mut = const_cast<state_dict&>(sd);
  for (const auto& spec : specs(opts)) {
    auto key = spec.key();
    auto v = mut.find_path(spec.path);
    if (v == nullptr) {
      bad.push_back(key + " (missing)");
      continue;
    }
    auto check = [&](const at::Tensor& t, const shape_t& off) {
      auto want = expected_box(key, spec.shape, off, t.sizes().vec(), spec.type,
                               opts.seed);
      return t.scalar_type() == want.scalar_type() && at::equal(t, want);
    };
    bool ok = true;
    if (auto t = std::get_if<at::Tensor>(v)) {
      ok = t->sizes().vec() == spec.shape
           && check(*t, shape_t(spec.shape.size(), 0));
    } else if (auto st = std::get_if<sharded_tensor>(v)) {
      for (const auto& sh : st->local_shards)
        ok = ok && check(sh.tensor, sh.offsets);
    } else {
      ok = false;
    }
    if (!ok)
      bad.push_back(key);
  }
  if (!opts.tensors.empty())
    return bad;
  auto step = mut.find("step");
  auto s = step ? std::get_if<bytes_value>(step) : nullptr;
  auto n = s ? s->to_int()
             : caf::expected<int64_t>{make_error(errc::missing_key, "step")};
  if (!n || *n != 1000 + static_cast<int64_t>(opts.seed))
    bad.emplace_back("step");
  auto pg = mut.find_path({"optim", "param_groups"});
  auto p = pg ? std::get_if<bytes_value>(pg) : nullptr;
  auto str = p ? p->to_string()
               : caf::expected<std::string>{
                 make_error(errc::missing_key, "optim.param_groups")};
  if (!str || *str != "lr=3e-4")
    bad.emplace_back("optim.param_groups");
  return bad;
}

uint64_t local_bytes(const state_dict& sd) {
  uint64_t total = 0;
  for (const auto& [key, val] : sd.entries()) {
    if (auto t = std::get_if<at::Tensor>(&val))
      total += t->nbytes();
    else if (auto st = std::get_if<sharded_tensor>(&val))
      for (const auto& sh : st->local_shards)
        total += sh.tensor.nbytes();
    else if (auto sub = std::get_if<std::shared_ptr<state_dict>>(&val))
      total += local_bytes(**sub);
  }
  return total;
}

} // namespace dcpp::synthetic
