#include "storage/torch_save.hpp"

#include "core/error.hpp"
#include "storage/pickle.hpp"
#include "storage/posix_file.hpp"
#include "storage/tensor_codec.hpp"
#include "storage/zip_reader.hpp"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

// How a torch.save file becomes a state dict, and why nothing in it runs:
//
// 1. The zip directory is read and bounds-checked (storage/zip_reader.hpp);
//    `<prefix>/data.pkl` is decoded by the restricted pickle reader, which
//    records globals by name and builds inert values.
// 2. Every global anywhere in the value is checked against an allow-list
//    before anything else looks at the value; the first other global is
//    refused with its name and the key it sits under.
// 3. The value is walked as DCP's flatten_state_dict walks it. Tensor calls
//    are interpreted here (never called): each storage record is read once
//    (shared storages stay shared) and each view is checked against it.
//    Every other leaf is written back as a torch.save of the same value.
//
// Shared containers are walked once per reference, as DCP does; a budget
// proportional to the size of data.pkl bounds that walk, so a pickle whose
// shared references expand exponentially fails instead of running on.

namespace dcpp {

namespace {

using detail::zip_entry;
using detail::zip_reader;
using pickle::kind;
using pickle::value;
using pickle::value_ptr;

/// The first bytes of a legacy (non-zip) torch.save file: protocol 2, then
/// torch's magic number as a 10-byte LONG1.
constexpr std::string_view legacy_magic
  = "\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19";

constexpr std::string_view zip_magic = "PK\x03\x04";

bool is_global(const value& x, std::string_view module, std::string_view name) {
  return x.is(kind::global) && x.s == module && x.name == name;
}

/// Whether `x` is REDUCE / NEWOBJ of the global `module.name`.
bool calls(const value& x, std::string_view module, std::string_view name) {
  return x.is(kind::object) && !x.items.empty() && x.items[0]
         && is_global(*x.items[0], module, name);
}

/// `_rebuild_tensor_v2`, or 2.x's `_rebuild_tensor_v3` (dtypes without a
/// typed storage class: uint16, float8_e4m3fn, ...).
bool is_rebuild_tensor(const value& x) {
  return calls(x, "torch._utils", "_rebuild_tensor_v2")
         || calls(x, "torch._utils", "_rebuild_tensor_v3");
}

bool is_tensor_call(const value& x) {
  return is_rebuild_tensor(x) || calls(x, "torch._utils", "_rebuild_parameter")
         || calls(x, "torch._utils", "_rebuild_parameter_with_state");
}

/// A dict, or an OrderedDict as Python pickles it (no arguments, entries
/// as dictitems).
const std::vector<value_ptr>* mapping_items(const value& x) {
  if (x.is(kind::dict))
    return &x.items;
  if (calls(x, "collections", "OrderedDict") && x.items.size() == 2
      && x.items[1] && x.items[1]->is(kind::tuple) && x.items[1]->items.empty())
    return &x.dictitems;
  return nullptr;
}

/// libtorch's pickler (`torch::pickle_save`, what `dcpp export` writes)
/// wraps dicts and typed lists in calls of `torch.jit._pickle` functions
/// that return their first argument.
bool is_jit_wrapper(const value& g) {
  return g.is(kind::global) && g.s == "torch.jit._pickle"
         && (g.name == "restore_type_tag" || g.name == "build_intlist"
             || g.name == "build_doublelist" || g.name == "build_boollist"
             || g.name == "build_tensorlist");
}

/// `x` without the wrappers of `is_jit_wrapper`.
const value& unwrap(const value& x) {
  if (x.is(kind::object) && x.items.size() == 2 && x.items[0]
      && is_jit_wrapper(*x.items[0]) && x.items[1]
      && x.items[1]->is(kind::tuple) && !x.items[1]->items.empty()
      && x.items[1]->items[0] && x.dictitems.empty() && !x.state)
    return unwrap(*x.items[1]->items[0]);
  return x;
}

bool is_dtype_name(std::string_view name) {
  static constexpr std::string_view names[]
    = {"float32", "float",     "float64", "double",        "float16",
       "half",    "bfloat16",  "int64",   "long",          "int32",
       "int",     "int16",     "short",   "int8",          "uint8",
       "bool",    "complex64", "cfloat",  "complex128",    "cdouble",
       "uint16",  "uint32",    "uint64",  "float8_e4m3fn", "float8_e5m2"};
  return std::find(std::begin(names), std::end(names), name) != std::end(names);
}

/// Globals that may appear inside a non-tensor value: rebuilt by torch.load
/// without running anything of the file's choosing.
bool allowed_in_leaf(const value& g) {
  if (is_jit_wrapper(g))
    return g.name != "build_tensorlist";
  if (g.s == "collections")
    return g.name == "OrderedDict";
  if (g.s == "builtins")
    return g.name == "set" || g.name == "frozenset" || g.name == "complex";
  if (g.s == "torch")
    return g.name == "Size" || g.name == "device" || is_dtype_name(g.name);
  return false;
}

/// Every global torch.save's own output uses.
bool allowed(const value& g) {
  if (is_jit_wrapper(g))
    return true;
  if (g.s == "torch._utils")
    return g.name == "_rebuild_tensor_v2" || g.name == "_rebuild_tensor_v3"
           || g.name == "_rebuild_parameter"
           || g.name == "_rebuild_parameter_with_state";
  if (g.s == "torch" && dtype_from_storage_class(g.name))
    return true;
  if (g.s == "torch.storage" && g.name == "UntypedStorage")
    return true;
  return allowed_in_leaf(g);
}

std::string kind_name(const value& x) {
  if (x.is(kind::global))
    return "global " + x.s + "." + x.name;
  if (x.is(kind::object) && is_tensor_call(x))
    return "tensor";
  if (x.is(kind::object) && !x.global_name().empty())
    return x.global_module() + "." + x.global_name() + " object";
  return pickle::kind_name(x.k);
}

/// A dict key as DCP's flattening spells it (`str(key)`), for the kinds of
/// keys a state dict has.
bool key_string(const value& k, std::string& out) {
  switch (k.k) {
    case kind::string: out = k.s; return true;
    case kind::integer: out = std::to_string(k.i); return true;
    case kind::boolean: out = k.b ? "True" : "False"; return true;
    default: return false;
  }
}

std::string key_repr(const value& k) {
  if (k.is(kind::string))
    return "'" + k.s + "'";
  std::string out;
  key_string(k, out);
  return out;
}

std::string join(const std::string& path, const std::string& key) {
  return path.empty() ? key : path + "." + key;
}

std::string where(const std::string& path) {
  return path.empty() ? "the top level" : "'" + path + "'";
}

class importer {
public:
  importer(std::string path, const torch_save_limits& limits)
    : path_(std::move(path)), limits_(limits) {
    // nop
  }

  caf::expected<state_dict> run() {
    detail::fd_guard fd{::open(path_.c_str(), O_RDONLY | O_CLOEXEC)};
    if (fd.get() < 0)
      return detail::os_error("open", path_, errno);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0)
      return detail::os_error("stat", path_, errno);
    if (!S_ISREG(st.st_mode))
      return make_error(errc::invalid_argument,
                        path_ + " is not a regular file");
    zip_.fd = fd.get();
    zip_.path = path_;
    zip_.length = static_cast<uint64_t>(st.st_size);
    if (auto err = check_format())
      return err;
    if (auto err = zip_.read_ends())
      return err;
    auto entries = zip_.read_directory();
    if (!entries)
      return std::move(entries.error());
    entries_ = std::move(*entries);
    auto pkl = zip_.torch_pickle_record(entries_, prefix_);
    if (!pkl)
      return std::move(pkl.error());
    auto start = zip_.record_data(**pkl);
    if (!start)
      return std::move(start.error());
    auto bytes = zip_.fetch(*start, (*pkl)->size);
    if (!bytes)
      return std::move(bytes.error());
    auto root = pickle::read(*bytes);
    if (!root)
      return make_error(errc::corrupt_item,
                        path_ + ": data.pkl: " + context_of(root.error()));
    budget_ = std::max<uint64_t>(bytes->size(), 1u << 16);
    std::unordered_set<const value*> seen;
    if (auto err = check_globals(**root, "", seen))
      return err;
    const auto& top = unwrap(**root);
    auto items = mapping_items(top);
    if (items == nullptr)
      return make_error(errc::invalid_argument,
                        path_ + ": the top-level object is a " + kind_name(top)
                          + ", not a dict (a state dict is needed)");
    state_dict sd;
    if (auto err = fill(sd, *items, "", 0))
      return err;
    return sd;
  }

private:
  // -- errors -----------------------------------------------------------------

  caf::error fail(errc code, const std::string& what) const {
    return make_error(code, path_ + ": " + what);
  }

  // -- format -----------------------------------------------------------------

  /// Names the legacy format instead of failing on its zip directory.
  caf::error check_format() {
    std::string head(std::min<uint64_t>(zip_.length, legacy_magic.size()),
                     '\0');
    if (auto err = zip_.read_at(0, head.data(), head.size()))
      return err;
    if (head.compare(0, zip_magic.size(), zip_magic) == 0)
      return {};
    if (head == legacy_magic)
      return fail(errc::unsupported,
                  "the legacy (non-zip) torch.save format "
                  "(_use_new_zipfile_serialization=False, or torch < 1.6) "
                  "is not supported; save it again with a current "
                  "torch.save");
    return fail(errc::corrupt_item,
                "not a torch.save file (no zip archive, not the legacy "
                "format either)");
  }

  // -- globals ----------------------------------------------------------------

  /// Refuses the first global outside the allow-list, naming it and the key
  /// it sits under. Visits each value once (the pickle may share them).
  caf::error check_globals(const value& x, const std::string& path,
                           std::unordered_set<const value*>& seen) const {
    if (!seen.insert(&x).second)
      return {};
    if (x.is(kind::global) && !allowed(x))
      return fail(errc::unsupported,
                  "global " + x.s + "." + x.name + " (under " + where(path)
                    + ") is not allowed: only torch.save's tensor, storage "
                      "and container globals are read, and nothing is "
                      "executed");
    auto visit = [&](const std::vector<value_ptr>& xs, bool pairs) {
      for (size_t i = 0; i < xs.size(); ++i) {
        if (!xs[i])
          continue;
        auto sub = path;
        std::string key;
        if (pairs && i % 2 == 1 && xs[i - 1] && key_string(*xs[i - 1], key))
          sub = join(path, key);
        if (auto err = check_globals(*xs[i], sub, seen))
          return err;
      }
      return caf::error{};
    };
    if (auto err = visit(x.items, x.is(kind::dict)))
      return err;
    if (auto err = visit(x.dictitems, true))
      return err;
    if (x.state)
      return check_globals(*x.state, path, seen);
    return {};
  }

  // -- structure --------------------------------------------------------------

  /// DCP's `_is_terminal`: a list is a leaf unless it holds a mapping, a
  /// tensor, or a list that is not a leaf. Cached per value.
  bool terminal(const value& x) {
    if (mapping_items(x) != nullptr)
      return false;
    if (!x.is(kind::list))
      return true;
    if (auto i = terminal_.find(&x); i != terminal_.end())
      return i->second;
    bool result = true;
    for (const auto& e : x.items) {
      if (e && (is_tensor_call(unwrap(*e)) || !terminal(unwrap(*e)))) {
        result = false;
        break;
      }
    }
    terminal_.emplace(&x, result);
    return result;
  }

  caf::error charge(const std::string& path) {
    if (budget_ == 0)
      return fail(errc::too_large,
                  "shared containers expand to more entries than data.pkl "
                  "has bytes (at "
                    + where(path) + ")");
    --budget_;
    return {};
  }

  caf::error check_depth(const std::string& path, size_t depth) const {
    if (depth > limits_.max_depth)
      return fail(errc::invalid_argument, "dicts and lists nested deeper than "
                                            + std::to_string(limits_.max_depth)
                                            + " levels at " + where(path));
    return {};
  }

  /// Fills `sd` from the key/value pairs of a mapping at `path`.
  caf::error fill(state_dict& sd, const std::vector<value_ptr>& kvs,
                  const std::string& path, size_t depth) {
    if (auto err = check_depth(path, depth))
      return err;
    std::map<std::string, const value*> keys;
    for (size_t i = 0; i + 1 < kvs.size(); i += 2) {
      const auto& k = *kvs[i];
      std::string key;
      if (!key_string(k, key))
        return fail(errc::unsupported, "a key of type " + kind_name(k) + " in "
                                         + where(path)
                                         + " (keys must be str or int)");
      auto [it, fresh] = keys.emplace(key, &k);
      if (!fresh)
        return fail(errc::invalid_argument,
                    "keys " + key_repr(*it->second) + " and " + key_repr(k)
                      + " of " + where(path) + " both become the key '"
                      + join(path, key) + "'");
      if (auto err = put(sd, key, *kvs[i + 1], join(path, key), depth + 1))
        return err;
    }
    return {};
  }

  caf::error put(state_dict& sd, const std::string& key, const value& wrapped,
                 const std::string& path, size_t depth) {
    if (auto err = charge(path))
      return err;
    const auto& x = unwrap(wrapped);
    if (auto items = mapping_items(x))
      return fill(sd.nested(key), *items, path, depth);
    if (x.is(kind::list) && !terminal(x)) {
      if (auto err = check_depth(path, depth))
        return err;
      auto& sub = sd.nested(key);
      sub.is_list(true);
      for (size_t i = 0; i < x.items.size(); ++i) {
        auto index = std::to_string(i);
        if (auto err = put(sub, index, *x.items[i], join(path, index),
                           depth + 1))
          return err;
      }
      return {};
    }
    if (is_tensor_call(x)) {
      dtype saved = dtype::float32;
      auto t = tensor(x, path, 0, saved);
      if (!t)
        return std::move(t.error());
      if (has_libtorch_type(saved))
        sd.set(key, std::move(*t));
      else
        sd.set_carried(key, std::move(*t), saved);
      return {};
    }
    std::unordered_set<const value*> seen;
    if (auto err = check_leaf(x, kind_name(x), path, seen))
      return err;
    sd.set(key, bytes_value::from_pickle(x));
    return {};
  }

  /// A non-tensor value is stored as a torch.save of itself: it must hold
  /// no tensor or storage (those would need records of their own).
  caf::error check_leaf(const value& x, const std::string& leaf,
                        const std::string& path,
                        std::unordered_set<const value*>& seen) const {
    if (!seen.insert(&x).second)
      return {};
    if (is_tensor_call(x) || x.is(kind::persid)
        || (x.is(kind::global) && !allowed_in_leaf(x)))
      return fail(errc::unsupported,
                  "a tensor or storage inside the " + leaf + " at "
                    + where(path)
                    + " (tensors are read from dicts and lists only)");
    for (const auto* xs : {&x.items, &x.dictitems})
      for (const auto& item : *xs)
        if (item)
          if (auto err = check_leaf(*item, leaf, path, seen))
            return err;
    if (x.state)
      return check_leaf(*x.state, leaf, path, seen);
    return {};
  }

  // -- tensors ----------------------------------------------------------------

  /// The tensor of a rebuild call, `saved` its dtype (the tensor is its
  /// carrier where libtorch lacks that dtype).
  caf::expected<at::Tensor> tensor(const value& x, const std::string& path,
                                   int nesting, dtype& saved) {
    auto bad = [&](const std::string& what) {
      return fail(errc::corrupt_item, "tensor '" + path + "': " + what);
    };
    const auto& args = x.items.size() >= 2 ? x.items[1] : nullptr;
    if (!args || !args->is(kind::tuple))
      return bad("arguments are not a tuple");
    if (!is_rebuild_tensor(x)) {
      // _rebuild_parameter(data, requires_grad, hooks[, state]): the data.
      if (nesting > 0 || args->items.empty() || !args->items[0]
          || !is_rebuild_tensor(*args->items[0]))
        return bad("a parameter that does not wrap a tensor");
      return tensor(*args->items[0], path, nesting + 1, saved);
    }
    auto call = read_tensor_call(x);
    if (!call)
      return bad(context_of(call.error()));
    const bool v3 = calls(x, "torch._utils", "_rebuild_tensor_v3");
    if (args->items.size() > (v3 ? 8 : 7))
      return bad(
        std::to_string(args->items.size())
        + (v3 ? " arguments (want 7 or 8)" : " arguments (want 6 or 7)"));
    saved = call->type;
    const auto& sizes = call->sizes;
    const auto& strides = call->strides;
    auto offset = call->storage_offset;
    auto numel = call->storage_numel;
    if (auto err = check_view(sizes, strides, offset, numel))
      return bad(context_of(err));
    int64_t count = 1;
    for (auto s : sizes)
      count *= s;
    if (count > numel)
      return bad("a view of " + std::to_string(count)
                 + " elements repeats elements of its storage of "
                 + std::to_string(numel));
    auto storage = load_storage(call->key, call->type, numel, path);
    if (!storage)
      return storage;
    try {
      return storage->as_strided(sizes, strides, offset);
    } catch (const std::exception& ex) {
      return bad(std::string{"torch: "} + ex.what());
    }
  }

  /// The storage record `data/<key>`, read once as a 1-d tensor.
  caf::expected<at::Tensor> load_storage(const std::string& key, dtype type,
                                         int64_t numel,
                                         const std::string& path) {
    if (auto i = storages_.find(key); i != storages_.end()) {
      const auto& [t, first_type] = i->second;
      if (first_type != type || t.numel() != numel)
        return fail(errc::corrupt_item,
                    "tensor '" + path + "': storage '" + key + "' is used as "
                      + std::to_string(t.numel()) + " " + to_string(first_type)
                      + " elements and as " + std::to_string(numel) + " "
                      + to_string(type) + " elements");
      return t;
    }
    auto name = prefix_ + "/data/" + key;
    auto e = std::find_if(entries_.begin(), entries_.end(),
                          [&](const zip_entry& x) { return x.name == name; });
    if (e == entries_.end())
      return fail(errc::corrupt_item, "tensor '" + path + "': no record " + name
                                        + " for its storage");
    auto esize = element_size(type);
    if (static_cast<uint64_t>(numel) > e->size / esize
        || static_cast<uint64_t>(numel) * esize != e->size)
      return fail(errc::corrupt_item,
                  "tensor '" + path + "': storage '" + key + "' of "
                    + std::to_string(numel) + " " + to_string(type)
                    + " elements does not match its record of "
                    + std::to_string(e->size) + " bytes");
    auto start = zip_.record_data(*e);
    if (!start)
      return std::move(start.error());
    at::Tensor t;
    try {
      t = at::empty({numel}, at::TensorOptions().dtype(to_scalar_type(type)));
    } catch (const std::exception& ex) {
      return fail(errc::too_large, "tensor '" + path + "': storage '" + key
                                     + "': torch: " + ex.what());
    }
    if (e->size > 0)
      if (auto err = zip_.read_at(*start, static_cast<char*>(t.data_ptr()),
                                  static_cast<size_t>(e->size)))
        return err;
    storages_.emplace(key, std::make_pair(t, type));
    return t;
  }

  std::string path_;
  torch_save_limits limits_;
  zip_reader zip_;
  std::vector<zip_entry> entries_;
  std::string prefix_;
  /// Storage key -> its elements and the dtype they were read as.
  std::map<std::string, std::pair<at::Tensor, dtype>> storages_;
  std::unordered_map<const value*, bool> terminal_;
  /// Entries the walk may still visit.
  uint64_t budget_ = 0;
};

} // namespace

caf::expected<state_dict> read_torch_save(const std::string& path,
                                          const torch_save_limits& limits) {
  importer imp{path, limits};
  try {
    return imp.run();
  } catch (const std::exception& ex) {
    std::string msg = ex.what();
    if (auto pos = msg.find('\n'); pos != std::string::npos)
      msg.resize(pos);
    return make_error(errc::corrupt_item, path + ": " + msg);
  }
}

} // namespace dcpp
