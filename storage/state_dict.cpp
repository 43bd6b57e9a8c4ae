#include "storage/state_dict.hpp"

#include "core/error.hpp"
#include "storage/host_memory.hpp"
#include "storage/pickle.hpp"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <caffe2/serialize/in_memory_adapter.h>
#include <caffe2/serialize/inline_container.h>

#include <map>
#include <mutex>
#include <unordered_map>

namespace dcpp {

// -- bytes_value --------------------------------------------------------------

namespace {

/// torch.save of a pickled non-tensor object: a zip with `data.pkl` and
/// `version`, as Python's torch.save writes it (to a stream: "archive/").
std::string save_object(const pickle::value& obj) {
  auto pkl = pickle::write(obj);
  std::string out;
  caffe2::serialize::PyTorchStreamWriter writer(
    [&out](const void* buf, size_t n) -> size_t {
      out.append(static_cast<const char*>(buf), n);
      return n;
    });
  writer.writeRecord("data.pkl", pkl.data(), pkl.size());
  writer.writeEndOfFile();
  return out;
}

caf::expected<pickle::value_ptr> load_object(const std::string& data) {
  try {
    auto adapter = std::make_shared<caffe2::serialize::MemoryReadAdapter>(
      data.data(), data.size());
    caffe2::serialize::PyTorchStreamReader reader(adapter);
    auto [ptr, size] = reader.getRecord("data.pkl");
    return pickle::read(
      std::string_view{static_cast<const char*>(ptr.get()), size});
  } catch (const std::exception& ex) {
    return make_error(errc::corrupt_item,
                      std::string{"not a torch.save archive: "} + ex.what());
  }
}

} // namespace

bytes_value bytes_value::from_int(int64_t x) {
  return bytes_value{save_object(*pickle::make_int(x))};
}

bytes_value bytes_value::from_double(double x) {
  return bytes_value{save_object(*pickle::make_float(x))};
}

bytes_value bytes_value::from_string(const std::string& x) {
  return bytes_value{save_object(*pickle::make_string(x))};
}

bytes_value bytes_value::from_pickle(const pickle::value& x) {
  return bytes_value{save_object(x)};
}

caf::expected<int64_t> bytes_value::to_int() const {
  auto obj = load_object(data);
  if (!obj)
    return obj.error();
  if ((*obj)->is(pickle::kind::integer))
    return (*obj)->i;
  return make_error(errc::corrupt_item, "bytes value is not an int");
}

caf::expected<double> bytes_value::to_double() const {
  auto obj = load_object(data);
  if (!obj)
    return obj.error();
  if ((*obj)->is(pickle::kind::floating))
    return (*obj)->f;
  if ((*obj)->is(pickle::kind::integer))
    return static_cast<double>((*obj)->i);
  return make_error(errc::corrupt_item, "bytes value is not a float");
}

caf::expected<std::string> bytes_value::to_string() const {
  auto obj = load_object(data);
  if (!obj)
    return obj.error();
  if ((*obj)->is(pickle::kind::string))
    return (*obj)->s;
  return make_error(errc::corrupt_item, "bytes value is not a str");
}

caf::expected<pickle::value_ptr> bytes_value::to_pickle() const {
  return load_object(data);
}

// -- state_dict ---------------------------------------------------------------

void state_dict::set(const std::string& key, value v) {
  if (!carried_.empty())
    carried_.erase(key);
  if (auto x = find(key)) {
    *x = std::move(v);
    return;
  }
  entries_.emplace_back(key, std::move(v));
}

void state_dict::set_carried(const std::string& key, value v, dtype saved) {
  set(key, std::move(v));
  carried_[key] = saved;
}

const dtype* state_dict::carried_dtype(const std::string& key) const {
  auto i = carried_.find(key);
  return i == carried_.end() ? nullptr : &i->second;
}

state_dict& state_dict::nested(const std::string& key) {
  if (auto x = find(key)) {
    if (auto sub = std::get_if<std::shared_ptr<state_dict>>(x); sub && *sub)
      return **sub;
    auto sub = std::make_shared<state_dict>();
    *x = sub;
    return *sub;
  }
  auto sub = std::make_shared<state_dict>();
  entries_.emplace_back(key, sub);
  return *sub;
}

namespace {

/// Below this many keys a dict is scanned, not indexed.
constexpr size_t index_threshold = 32;

} // namespace

void state_dict::index_entries() {
  if (entries_.size() <= index_threshold)
    return;
  // emplace keeps the first of duplicate keys (which only mutable
  // `entries()` can add), as a scan finds it.
  for (; indexed_ < entries_.size(); ++indexed_)
    index_.emplace(entries_[indexed_].first, indexed_);
}

value* state_dict::find(const std::string& key) {
  index_entries();
  if (indexed_ == entries_.size() && indexed_ > 0) {
    auto i = index_.find(key);
    return i == index_.end() ? nullptr : &entries_[i->second].second;
  }
  for (auto& [k, v] : entries_)
    if (k == key)
      return &v;
  return nullptr;
}

const value* state_dict::find(const std::string& key) const {
  // Reads the index only where it is complete (never builds it: const
  // lookups may run on several threads at once).
  if (indexed_ == entries_.size() && indexed_ > 0) {
    auto i = index_.find(key);
    return i == index_.end() ? nullptr : &entries_[i->second].second;
  }
  for (const auto& [k, v] : entries_)
    if (k == key)
      return &v;
  return nullptr;
}

value* state_dict::find_path(const std::vector<std::string>& path) {
  state_dict* current = this;
  for (size_t i = 0; i < path.size(); ++i) {
    auto x = current->find(path[i]);
    if (x == nullptr)
      return nullptr;
    if (i + 1 == path.size())
      return x;
    auto sub = std::get_if<std::shared_ptr<state_dict>>(x);
    if (sub == nullptr || !*sub)
      return nullptr;
    current = sub->get();
  }
  return nullptr;
}

// -- flattening ---------------------------------------------------------------

namespace {

caf::error flatten_into(state_dict& sd, object_path& path, flat_state_dict& out,
                        std::map<std::string, size_t>& seen) {
  for (auto& [key, val] : sd.entries()) {
    path.emplace_back(key);
    path.back().index = sd.is_list();
    if (auto sub = std::get_if<std::shared_ptr<state_dict>>(&val)) {
      if (*sub) {
        if (auto err = flatten_into(**sub, path, out, seen))
          return err;
      }
    } else {
      std::string flat;
      for (size_t i = 0; i < path.size(); ++i) {
        if (i > 0)
          flat += '.';
        flat += path[i].key;
      }
      if (seen.count(flat) > 0)
        return make_error(errc::invalid_argument,
                          "two values flatten to the key '" + flat + "'");
      seen.emplace(flat, out.items.size());
      out.items.emplace_back(flat, &val);
      if (auto saved = sd.carried_dtype(key))
        out.carried.emplace(flat, *saved);
      // Every key, a top-level one too (`{"w": ("w",)}`), as DCP's
      // `flatten_state_dict` records it: PyTorch's loaders look each key
      // of the checkpoint up in `planner_data`.
      out.mapping.emplace(flat, path);
    }
    path.pop_back();
  }
  return caf::none;
}

/// The dtype a tensor of `fqn` is saved as: the carried dtype where one is
/// recorded (its carrier must be `t`'s type), else `t`'s own.
caf::expected<dtype> dtype_of(const flat_state_dict& flat,
                              const std::string& fqn, const at::Tensor& t) {
  auto type = to_dtype(t.scalar_type());
  auto i = flat.carried.find(fqn);
  if (!type || i == flat.carried.end())
    return type;
  if (carrier_dtype(i->second) != *type)
    return make_error(errc::invalid_argument,
                      "a " + to_string(*type) + " tensor cannot carry "
                        + to_string(i->second) + " (wants "
                        + to_string(carrier_dtype(i->second)) + ")");
  return i->second;
}

tensor_properties properties_of(const at::Tensor& t, dtype type) {
  tensor_properties props;
  props.type = type;
  props.requires_grad = t.requires_grad();
  return props;
}

} // namespace

caf::expected<flat_state_dict> flatten(state_dict& sd) {
  flat_state_dict out;
  object_path path;
  std::map<std::string, size_t> seen;
  if (auto err = flatten_into(sd, path, out, seen))
    return err;
  return out;
}

caf::expected<dtype> to_dtype(c10::ScalarType type) {
  switch (type) {
    case c10::ScalarType::Float: return dtype::float32;
    case c10::ScalarType::Double: return dtype::float64;
    case c10::ScalarType::Half: return dtype::float16;
    case c10::ScalarType::BFloat16: return dtype::bfloat16;
    case c10::ScalarType::Long: return dtype::int64;
    case c10::ScalarType::Int: return dtype::int32;
    case c10::ScalarType::Short: return dtype::int16;
    case c10::ScalarType::Char: return dtype::int8;
    case c10::ScalarType::Byte: return dtype::uint8;
    case c10::ScalarType::Bool: return dtype::boolean;
    case c10::ScalarType::ComplexFloat: return dtype::complex64;
    case c10::ScalarType::ComplexDouble: return dtype::complex128;
    default: break;
  }
  return make_error(errc::unknown_dtype, std::string{"unsupported torch dtype "}
                                           + c10::toString(type));
}

c10::ScalarType to_scalar_type(dtype type) {
  switch (carrier_dtype(type)) {
    case dtype::float32: return c10::ScalarType::Float;
    case dtype::float64: return c10::ScalarType::Double;
    case dtype::float16: return c10::ScalarType::Half;
    case dtype::bfloat16: return c10::ScalarType::BFloat16;
    case dtype::int64: return c10::ScalarType::Long;
    case dtype::int32: return c10::ScalarType::Int;
    case dtype::int16: return c10::ScalarType::Short;
    case dtype::int8: return c10::ScalarType::Char;
    case dtype::uint8: return c10::ScalarType::Byte;
    case dtype::boolean: return c10::ScalarType::Bool;
    case dtype::complex64: return c10::ScalarType::ComplexFloat;
    case dtype::complex128: return c10::ScalarType::ComplexDouble;
    default: break;
  }
  return c10::ScalarType::Undefined;
}

caf::expected<state_dict_view> make_view(const flat_state_dict& flat) {
  state_dict_view view;
  view.mapping = flat.mapping;
  view.items.reserve(flat.items.size());
  for (const auto& [fqn, ptr] : flat.items) {
    item_view item;
    item.fqn = fqn;
    if (auto t = std::get_if<at::Tensor>(ptr)) {
      if (!t->defined())
        return make_error(errc::invalid_argument,
                          fqn + ": tensor is undefined");
      auto type = dtype_of(flat, fqn, *t);
      if (!type)
        return with_context(type.error(), fqn);
      item.properties = properties_of(*t, *type);
      item.global_size = t->sizes().vec();
      chunk_storage_metadata chunk;
      chunk.offsets.assign(item.global_size.size(), 0);
      chunk.sizes = item.global_size;
      item.local_chunks.push_back(std::move(chunk));
    } else if (auto st = std::get_if<sharded_tensor>(ptr)) {
      item.sharded = true;
      item.global_size = st->global_size;
      bool first = true;
      for (const auto& sh : st->local_shards) {
        const auto& t = sh.tensor;
        if (!t.defined())
          return make_error(errc::invalid_argument, fqn + ": shard at "
                                                      + to_string(sh.offsets)
                                                      + " is undefined");
        auto type = dtype_of(flat, fqn, t);
        if (!type)
          return with_context(type.error(), fqn);
        if (first) {
          item.properties = properties_of(t, *type);
          first = false;
        } else if (item.properties.type != *type) {
          return make_error(errc::invalid_argument,
                            fqn + ": shards have different dtypes ("
                              + to_string(item.properties.type) + " and "
                              + to_string(*type) + ")");
        }
        auto sizes = t.sizes().vec();
        if (sizes.size() != st->global_size.size()
            || sh.offsets.size() != st->global_size.size())
          return make_error(errc::invalid_argument,
                            fqn + ": shard at " + to_string(sh.offsets)
                              + " of shape " + to_string(sizes)
                              + " does not match the rank of global shape "
                              + to_string(st->global_size));
        for (size_t d = 0; d < sizes.size(); ++d)
          if (sh.offsets[d] < 0
              || sh.offsets[d] + sizes[d] > st->global_size[d])
            return make_error(errc::chunk_out_of_bounds,
                              fqn + ": shard at " + to_string(sh.offsets)
                                + " of shape " + to_string(sizes)
                                + " exceeds global shape "
                                + to_string(st->global_size));
        item.local_chunks.push_back({sh.offsets, std::move(sizes)});
      }
    } else if (auto b = std::get_if<bytes_value>(ptr)) {
      item.kind = item_kind::bytes;
      item.bytes_size = b->data.size();
    } else {
      return make_error(errc::invalid_argument,
                        fqn + ": unexpected nested value");
    }
    view.items.push_back(std::move(item));
  }
  return view;
}

// -- item source / load target
// -------------------------------------------------

item_source::~item_source() = default;

load_target::~load_target() = default;

namespace {

/// Index from (fqn, chunk offset) to the local tensor holding that chunk.
class tensor_index {
public:
  explicit tensor_index(const flat_state_dict& flat) {
    for (const auto& [fqn, ptr] : flat.items) {
      if (auto t = std::get_if<at::Tensor>(ptr)) {
        shape_t zeros(static_cast<size_t>(t->dim()), 0);
        tensors_.emplace(metadata_index{fqn, zeros}, *t);
      } else if (auto st = std::get_if<sharded_tensor>(ptr)) {
        for (const auto& sh : st->local_shards)
          tensors_.emplace(metadata_index{fqn, sh.offsets}, sh.tensor);
      } else if (auto b = std::get_if<bytes_value>(ptr)) {
        bytes_.emplace(fqn, const_cast<bytes_value*>(b));
      }
    }
  }

  caf::expected<at::Tensor> tensor(const metadata_index& idx) const {
    auto i = tensors_.find(idx);
    if (i == tensors_.end())
      return make_error(errc::missing_key,
                        "no local tensor for " + to_string(idx));
    return i->second;
  }

  caf::expected<bytes_value*> bytes(const std::string& fqn) const {
    auto i = bytes_.find(fqn);
    if (i == bytes_.end())
      return make_error(errc::missing_key, "no local bytes value for " + fqn);
    return i->second;
  }

private:
  std::map<metadata_index, at::Tensor> tensors_;
  std::unordered_map<std::string, bytes_value*> bytes_;
};

class state_dict_source : public item_source {
public:
  explicit state_dict_source(const flat_state_dict& flat) : index_(flat) {
    // nop
  }

  caf::expected<at::Tensor> tensor(const write_item& item) const override {
    auto t = index_.tensor(item.index);
    if (!t)
      return t;
    if (!t->device().is_cpu())
      return make_error(errc::unsupported,
                        to_string(item.index)
                          + ": only CPU tensors can be saved directly; "
                            "stage the state dict to host memory first");
    return t;
  }

  caf::expected<std::string_view> bytes(const write_item& item) const override {
    auto b = index_.bytes(item.index.fqn);
    if (!b)
      return b.error();
    return std::string_view{(*b)->data};
  }

private:
  tensor_index index_;
};

class state_dict_target : public load_target {
public:
  explicit state_dict_target(const flat_state_dict& flat) : index_(flat) {
    // nop
  }

  caf::expected<at::Tensor> tensor(const read_item& item) override {
    auto t = index_.tensor(item.dest_index);
    if (!t)
      return t;
    auto dest = *t;
    auto dims = static_cast<size_t>(dest.dim());
    if (item.dest_offsets.size() != dims || item.lengths.size() != dims)
      return make_error(errc::shape_mismatch,
                        to_string(item.dest_index) + ": read item of rank "
                          + std::to_string(item.lengths.size())
                          + " for a tensor of rank " + std::to_string(dims));
    for (size_t d = 0; d < dims; ++d) {
      auto off = item.dest_offsets[d];
      auto len = item.lengths[d];
      if (off < 0 || len < 0 || off + len > dest.size(d))
        return make_error(
          errc::chunk_out_of_bounds,
          to_string(item.dest_index) + ": box " + to_string(item.dest_offsets)
            + "+" + to_string(item.lengths) + " exceeds destination shape "
            + to_string(dest.sizes().vec()));
      if (off != 0 || len != dest.size(d))
        dest = dest.narrow(static_cast<int64_t>(d), off, len);
    }
    return dest;
  }

  caf::error set_bytes(const read_item& item, std::string data) override {
    auto b = index_.bytes(item.dest_index.fqn);
    if (!b)
      return b.error();
    std::lock_guard<std::mutex> guard{mx_};
    (*b)->data = std::move(data);
    return caf::none;
  }

private:
  tensor_index index_;
  std::mutex mx_;
};

} // namespace

std::unique_ptr<item_source> make_item_source(const flat_state_dict& flat) {
  return std::make_unique<state_dict_source>(flat);
}

std::unique_ptr<load_target> make_load_target(const flat_state_dict& flat) {
  return std::make_unique<state_dict_target>(flat);
}

// -- allocation and staging
// ----------------------------------------------------

state_dict make_state_dict_for(const metadata& md) {
  state_dict sd;
  for (const auto& [fqn, item] : md.state_dict_metadata) {
    value v;
    const auto saved = item.tensor.properties.type;
    const bool carried = item.kind != item_kind::bytes
                         && !has_libtorch_type(saved);
    if (item.kind == item_kind::bytes)
      v = bytes_value{};
    else
      v = empty_host_tensor(item.tensor.size, to_scalar_type(saved));
    auto put = [&](state_dict& d, const std::string& key) {
      if (carried)
        d.set_carried(key, std::move(v), saved);
      else
        d.set(key, std::move(v));
    };
    auto path = md.planner_data.find(fqn);
    if (path == md.planner_data.end() || path->second.empty()) {
      put(sd, fqn);
      continue;
    }
    const auto& elements = path->second;
    state_dict* current = &sd;
    for (size_t i = 0; i + 1 < elements.size(); ++i) {
      current = &current->nested(elements[i].key);
      current->is_list(elements[i + 1].index);
    }
    put(*current, elements.back().key);
  }
  return sd;
}

namespace {

/// The one traversal behind `map_tensors` and `for_each_tensor`: `Dict` is
/// `state_dict` or `const state_dict`, `f(name, tensor)` sees every tensor
/// in tree order.
template <class Dict, class F>
void visit_tensors(Dict& sd, const std::string& prefix, F& f) {
  for (auto& [key, val] : sd.entries()) {
    auto name = prefix + key;
    if (auto t = std::get_if<at::Tensor>(&val)) {
      f(name, *t);
    } else if (auto st = std::get_if<sharded_tensor>(&val)) {
      for (size_t i = 0; i < st->local_shards.size(); ++i)
        f(name + " (shard " + std::to_string(i) + ")",
          st->local_shards[i].tensor);
    } else if (auto sub = std::get_if<std::shared_ptr<state_dict>>(&val)) {
      if (*sub)
        visit_tensors(**sub, name + ".", f);
    }
  }
}

at::Tensor stage_tensor(const at::Tensor& t) {
  if (!t.defined())
    return t;
  auto out = empty_host_tensor(t.sizes().vec(), t.scalar_type());
  out.copy_(t.detach());
  return out;
}

} // namespace

state_dict map_tensors(const state_dict& sd,
                       const std::function<at::Tensor(const at::Tensor&)>& f) {
  state_dict out;
  out.is_list(sd.is_list());
  auto put = [&](const std::string& key, value v) {
    if (auto saved = sd.carried_dtype(key))
      out.set_carried(key, std::move(v), *saved);
    else
      out.set(key, std::move(v));
  };
  for (const auto& [key, val] : sd.entries()) {
    if (auto t = std::get_if<at::Tensor>(&val)) {
      put(key, f(*t));
    } else if (auto st = std::get_if<sharded_tensor>(&val)) {
      sharded_tensor copy;
      copy.global_size = st->global_size;
      for (const auto& sh : st->local_shards)
        copy.local_shards.push_back({f(sh.tensor), sh.offsets});
      put(key, std::move(copy));
    } else if (auto b = std::get_if<bytes_value>(&val)) {
      out.set(key, *b);
    } else if (auto sub = std::get_if<std::shared_ptr<state_dict>>(&val)) {
      out.set(key, std::make_shared<state_dict>(*sub ? map_tensors(**sub, f)
                                                     : state_dict{}));
    }
  }
  return out;
}

void for_each_tensor(
  const state_dict& sd,
  const std::function<void(const std::string&, const at::Tensor&)>& f) {
  visit_tensors(sd, std::string{}, f);
}

void for_each_tensor(
  state_dict& sd,
  const std::function<void(const std::string&, at::Tensor&)>& f) {
  visit_tensors(sd, std::string{}, f);
}

state_dict stage_to_host(const state_dict& sd) {
  return map_tensors(sd, stage_tensor);
}

} // namespace dcpp
