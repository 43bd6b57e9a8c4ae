#include "storage/torch_save_writer.hpp"

#include "core/error.hpp"
#include "storage/file_sink.hpp"
#include "storage/pickle.hpp"
#include "storage/posix_file.hpp"
#include "storage/zip_writer.hpp"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>
#include <set>
#include <string_view>
#include <vector>

namespace dcpp {

namespace {

using pickle::kind;
using pickle::value_ptr;

// -- what torch.load(weights_only=True) accepts -------------------------------

/// Globals a non-tensor value may name and still load with
/// `torch.load(weights_only=True)`: the intersection of what PyTorch 2.x
/// allows by default (torch/_weights_only_unpickler.py) with what a
/// torch.save'd Python value names. 1.13's weights-only unpickler allows a
/// subset (no floats, no bytes, no torch.device, fewer dtypes), so a value
/// with those loads in 1.13 with plain `torch.load` only, as Python's own
/// torch.save of the same value does.
bool weights_only_global(std::string_view module, std::string_view name) {
  if (module == "collections")
    return name == "OrderedDict";
  if (module == "builtins")
    return name == "set" || name == "complex" || name == "bytearray";
  if (module == "_codecs")
    return name == "encode";
  if (module == "torch") {
    if (name == "Size" || name == "device")
      return true;
    // Only the canonical names ("float32", not the alias "float"): the
    // allow-list holds `str(dtype)`.
    auto type = parse_dtype(std::string{name});
    return type && to_string(*type) == name;
  }
  return false;
}

/// Whether `x` pickles to opcodes and globals that
/// `torch.load(weights_only=True)` accepts: no persistent ids (no tensors
/// inside a bytes value), no keyword arguments, no global outside
/// `weights_only_global`.
bool weights_only_value(const pickle::value* x, size_t depth = 0) {
  if (x == nullptr)
    return true;
  if (depth > 256)
    return false;
  switch (x->k) {
    case kind::persid:
    case kind::mark: return false;
    case kind::global: return weights_only_global(x->s, x->name);
    case kind::object:
      if (x->items.size() != 2)
        return false;
      break;
    default: break;
  }
  for (const auto& item : x->items)
    if (!weights_only_value(item.get(), depth + 1))
      return false;
  for (const auto& item : x->dictitems)
    if (!weights_only_value(item.get(), depth + 1))
      return false;
  return weights_only_value(x->state.get(), depth + 1);
}

/// Whether `x` calls one of the `torch.jit._pickle` functions that return
/// their first argument: libtorch's pickler (what `dcpp export` wrote
/// before) wraps dicts and typed lists in them.
bool is_jit_wrapper_call(const pickle::value& x) {
  if (!x.is(kind::object) || x.items.size() != 2 || !x.items[0] || !x.items[1]
      || !x.items[1]->is(kind::tuple) || x.items[1]->items.empty()
      || !x.dictitems.empty() || x.state)
    return false;
  const auto& g = *x.items[0];
  return g.is(kind::global) && g.s == "torch.jit._pickle"
         && (g.name == "restore_type_tag" || g.name == "build_intlist"
             || g.name == "build_doublelist" || g.name == "build_boollist");
}

/// `x` as the weights-only unpickler reads it: every bytes object spelled
/// as protocol 2 spells it, `_codecs.encode(<latin-1 text>, 'latin1')`
/// (there is no BINBYTES opcode there), and `torch.jit._pickle` wrappers
/// replaced by the value they wrap.
value_ptr portable(const value_ptr& x) {
  if (!x)
    return x;
  if (is_jit_wrapper_call(*x))
    return portable(x->items[1]->items[0]);
  if (x->is(kind::bytes)) {
    std::string text;
    for (unsigned char c : x->s) {
      if (c < 0x80) {
        text += static_cast<char>(c);
      } else {
        text += static_cast<char>(0xC0 | (c >> 6));
        text += static_cast<char>(0x80 | (c & 0x3F));
      }
    }
    return pickle::make_reduce(pickle::make_global("_codecs", "encode"),
                               pickle::make_tuple(
                                 {pickle::make_string(std::move(text)),
                                  pickle::make_string("latin1")}));
  }
  if (x->items.empty() && x->dictitems.empty() && !x->state)
    return x;
  auto copy = std::make_shared<pickle::value>(*x);
  for (auto& item : copy->items)
    item = portable(item);
  for (auto& item : copy->dictitems)
    item = portable(item);
  copy->state = portable(copy->state);
  return copy;
}

// -- values -------------------------------------------------------------------

/// The pickle of a state dict and the storages its tensors refer to (the
/// records `data/0`, `data/1`, ... of the archive).
class pickler {
public:
  std::vector<at::Tensor> storages;

  /// Flat key -> the dtype its tensor carries (state_dict::set_carried).
  std::map<std::string, dtype> carried;

  /// `_rebuild_tensor_v2(('storage', torch.<T>Storage, 'N', 'cpu', numel),
  /// 0, sizes, strides, False, OrderedDict())`, as Python's torch.save
  /// writes a tensor of a dtype that has a typed storage class; for one
  /// without (a carried dtype: uint16, float8_e5m2, ...), as torch 2.x
  /// writes it: `_rebuild_tensor_v3(('storage', torch.storage.UntypedStorage,
  /// 'N', 'cpu', nbytes), 0, sizes, strides, False, OrderedDict(),
  /// torch.<dtype>)`, all of which 2.x's weights-only unpickler allows.
  caf::expected<value_ptr> tensor(const std::string& key, const at::Tensor& t) {
    auto type = to_dtype(t.scalar_type());
    if (!type)
      return with_context(type.error(), "key '" + key + "'");
    if (auto i = carried.find(key); i != carried.end()) {
      if (carrier_dtype(i->second) != *type)
        return make_error(errc::dtype_mismatch,
                          "key '" + key + "': a " + to_string(*type)
                            + " tensor cannot carry " + to_string(i->second));
      type = i->second;
    }
    const bool v3 = storage_class_name(*type).empty();
    // Compact and on the CPU: the record holds exactly the tensor's bytes.
    auto x = t.to(at::kCPU).contiguous();
    if (x.storage_offset() != 0 || x.storage().nbytes() != x.nbytes())
      x = x.clone();
    auto id = std::to_string(storages.size());
    storages.push_back(x);
    std::vector<value_ptr> sizes;
    std::vector<value_ptr> strides;
    for (auto s : x.sizes())
      sizes.push_back(pickle::make_int(s));
    for (auto s : x.strides())
      strides.push_back(pickle::make_int(s));
    auto pid = pickle::make_tuple(
      {pickle::make_string("storage"),
       v3 ? pickle::make_global("torch.storage", "UntypedStorage")
          : pickle::make_global("torch", storage_class_name(*type)),
       pickle::make_string(id), pickle::make_string("cpu"),
       pickle::make_int(v3 ? static_cast<int64_t>(x.nbytes()) : x.numel())});
    std::vector<value_ptr> args{pickle::make_persid(pid),
                                pickle::make_int(0),
                                pickle::make_tuple(std::move(sizes)),
                                pickle::make_tuple(std::move(strides)),
                                pickle::make_bool(false),
                                pickle::make_ordered_dict({})};
    if (v3)
      args.push_back(pickle::make_global("torch", to_string(*type)));
    return pickle::make_reduce(pickle::make_global("torch._utils",
                                                   v3 ? "_rebuild_tensor_v3"
                                                      : "_rebuild_tensor_v2"),
                               pickle::make_tuple(std::move(args)));
  }

  /// The Python object a bytes value holds, as it was torch.save'd (ints,
  /// floats, str, None, tuples, lists, dicts, torch.Size, dtypes, ...);
  /// raw bytes as a uint8 tensor where the object names something
  /// `torch.load(weights_only=True)` refuses, with a warning saying how to
  /// read them.
  caf::expected<value_ptr> bytes(const std::string& key, const bytes_value& b) {
    if (auto obj = b.to_pickle())
      if (auto x = portable(*obj); weights_only_value(x.get()))
        return x;
    spdlog::warn("dcpp: bytes item '{}' holds a value torch.load("
                 "weights_only=True) would refuse; exported as raw torch.save "
                 "bytes in a uint8 tensor (torch.load(io.BytesIO("
                 "t.numpy().tobytes())) reads it)",
                 key);
    auto t = at::empty({static_cast<int64_t>(b.data.size())}, at::kByte);
    if (!b.data.empty())
      std::memcpy(t.data_ptr(), b.data.data(), b.data.size());
    return tensor(key, t);
  }

  caf::expected<value_ptr>
  node(const nested_node& n, const std::map<std::string, const value*>& values,
       bool restore_keys) {
    using nk = nested_node::kind;
    switch (n.type) {
      case nk::none: return pickle::make_none();
      case nk::leaf: {
        auto i = values.find(n.fqn);
        if (i == values.end() || i->second == nullptr)
          return make_error(errc::missing_key,
                            "no value for key '" + n.fqn + "'");
        if (auto* t = std::get_if<at::Tensor>(i->second))
          return tensor(n.fqn, *t);
        if (auto* b = std::get_if<bytes_value>(i->second))
          return bytes(n.fqn, *b);
        return make_error(errc::unsupported,
                          "key '" + n.fqn
                            + "': only plain tensors and bytes values can be "
                              "written to a torch.save file");
      }
      case nk::dict: {
        auto dict = std::make_shared<pickle::value>();
        dict->k = kind::dict;
        for (const auto& [name, child] : n.children) {
          auto x = node(child, values, restore_keys);
          if (!x)
            return x;
          dict->items.push_back(pickle::make_string(name));
          dict->items.push_back(std::move(*x));
        }
        if (restore_keys)
          repair_optimizer(*dict);
        return value_ptr{std::move(dict)};
      }
      case nk::list: {
        std::vector<value_ptr> items;
        for (const auto& [name, child] : n.children) {
          auto x = node(child, values, restore_keys);
          if (!x)
            return x;
          items.push_back(std::move(*x));
        }
        return pickle::make_list(std::move(items));
      }
    }
    return pickle::make_none();
  }

private:
  // -- optimizer state dicts --------------------------------------------------

  static bool is_position(const std::string& s) {
    return !s.empty() && s.size() <= 18
           && s.find_first_not_of("0123456789") == std::string::npos
           && (s == "0" || s[0] != '0');
  }

  /// The value of the str key `key` of dict `d`, as an index into its
  /// items, or -1.
  static ptrdiff_t find(const pickle::value& d, std::string_view key) {
    for (size_t i = 0; i + 1 < d.items.size(); i += 2)
      if (d.items[i]->is(kind::string) && d.items[i]->s == key)
        return static_cast<ptrdiff_t>(i + 1);
    return -1;
  }

  /// A dict keyed "0".."n-1" as a list in that order, or null.
  static value_ptr positions_as_list(const pickle::value& d) {
    auto n = d.items.size() / 2;
    std::vector<value_ptr> items(n);
    for (size_t i = 0; i < n; ++i) {
      const auto& k = *d.items[2 * i];
      if (!k.is(kind::string) || !is_position(k.s))
        return nullptr;
      auto pos = std::stoull(k.s);
      if (pos >= n || items[pos])
        return nullptr;
      items[pos] = d.items[2 * i + 1];
    }
    return pickle::make_list(std::move(items));
  }

  /// The parameter ids of an optimizer's "param_groups", or nullopt if it
  /// is not a list of dicts whose "params" are lists of ints.
  static std::optional<std::set<int64_t>> param_ids(const pickle::value& g) {
    if (!g.is(kind::list))
      return std::nullopt;
    std::set<int64_t> ids;
    for (const auto& group : g.items) {
      if (!group->is(kind::dict))
        return std::nullopt;
      auto p = find(*group, "params");
      if (p < 0 || !group->items[p]->is(kind::list))
        return std::nullopt;
      for (const auto& id : group->items[p]->items) {
        if (!id->is(kind::integer))
          return std::nullopt;
        ids.insert(id->i);
      }
    }
    return ids;
  }

  /// `d` repaired as an optimizer's state dict (see the header), if it is
  /// one.
  static void repair_optimizer(pickle::value& d) {
    auto groups = find(d, "param_groups");
    if (groups < 0)
      return;
    if (d.items[groups]->is(kind::dict))
      if (auto list = positions_as_list(*d.items[groups]))
        d.items[groups] = std::move(list);
    auto ids = param_ids(*d.items[groups]);
    if (!ids)
      return;
    auto state = find(d, "state");
    if (state < 0) {
      d.items.push_back(pickle::make_string("state"));
      d.items.push_back(pickle::make_dict({}));
      return;
    }
    const auto& old = *d.items[state];
    if (!old.is(kind::dict))
      return;
    std::vector<std::pair<value_ptr, value_ptr>> keyed;
    for (size_t i = 0; i + 1 < old.items.size(); i += 2) {
      const auto& k = *old.items[i];
      if (!k.is(kind::string) || !is_position(k.s)
          || ids->count(std::stoll(k.s)) == 0)
        return;
      keyed.emplace_back(pickle::make_int(std::stoll(k.s)), old.items[i + 1]);
    }
    d.items[state] = pickle::make_dict(std::move(keyed));
  }
};

// -- the file -----------------------------------------------------------------

/// Appends to a byte vector (the archive, before it is written atomically).
class vector_sink final : public item_sink {
public:
  explicit vector_sink(std::vector<char>& out) : out_(out) {
    // nop
  }

  caf::error append(const void* data, size_t size) override {
    auto p = static_cast<const char*>(data);
    out_.insert(out_.end(), p, p + size);
    return caf::none;
  }

private:
  std::vector<char>& out_;
};

/// The zip archive Python's torch.save writes: `archive/data.pkl`,
/// `archive/byteorder` (PyTorch 2.x writes it; 1.13 ignores it), one
/// `archive/data/N` per storage, `archive/version`; records 64-byte aligned
/// (storage/zip_writer.hpp).
caf::error write_archive(std::vector<char>& out, const std::string& pkl,
                         const std::vector<at::Tensor>& storages) {
  vector_sink sink{out};
  detail::zip_writer zip{sink, nullptr};
  auto record = [&zip](const std::string& name, const void* data,
                       uint64_t size) -> caf::error {
    if (auto err = zip.begin_record(name, size))
      return err;
    if (size > 0)
      if (auto err = zip.data(data, size))
        return err;
    return zip.end_record();
  };
  if (auto err = record("archive/data.pkl", pkl.data(), pkl.size()))
    return err;
  if (auto err = record("archive/byteorder", "little", 6))
    return err;
  for (size_t i = 0; i < storages.size(); ++i)
    if (auto err = record("archive/data/" + std::to_string(i),
                          storages[i].data_ptr(), storages[i].nbytes()))
      return err;
  if (auto err = record("archive/version", "3\n", 2))
    return err;
  return zip.finish();
}

/// Writes `data` to `path` atomically: `path.tmp`, fsync, rename, fsync dir.
caf::error write_atomically(const std::string& path,
                            const std::vector<char>& data) {
  auto tmp = path + ".tmp";
  auto fail = [&tmp](const char* what, int err) {
    ::unlink(tmp.c_str());
    return detail::os_error(what, tmp, err);
  };
  // Never replaces a link, device or FIFO someone put at `path`.
  if (auto err = detail::check_output_path(path))
    return err;
  {
    // Created afresh: a planted `OUT.tmp` link is removed, never written
    // through.
    detail::fd_guard fd{
      detail::create_exclusive(tmp, O_WRONLY | O_CLOEXEC, 0644)};
    if (fd.get() < 0)
      return detail::os_error("open", tmp, errno);
    uint64_t done = 0;
    if (auto err = detail::write_fully(fd.get(), data.data(), data.size(),
                                       done))
      return fail("write", err < 0 ? ENOSPC : err);
    if (auto err = detail::fsync_fd(fd.get()))
      return fail("fsync", err);
    if (fd.close() != 0)
      return fail("close", errno);
  }
  if (auto err = detail::check_output_path(path)) {
    ::unlink(tmp.c_str());
    return err;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return fail("rename", errno);
  auto parent = std::filesystem::path{path}.parent_path().string();
  return detail::fsync_dir(parent.empty() ? "." : parent);
}

} // namespace

caf::error write_torch_save(const std::string& path, const nested_node& tree,
                            const std::map<std::string, const value*>& values,
                            const torch_save_write_options& opts) {
  try {
    pickler p;
    p.carried = opts.carried;
    auto root = p.node(tree, values, opts.restore_optimizer_keys);
    if (!root)
      return with_context(root.error(), path);
    std::vector<char> data;
    if (auto err = write_archive(data, pickle::write(**root), p.storages))
      return with_context(err, path);
    return write_atomically(path, data);
  } catch (const std::exception& e) {
    std::string what = e.what();
    return make_error(errc::unsupported,
                      path + ": torch: " + what.substr(0, what.find('\n')));
  }
}

} // namespace dcpp
