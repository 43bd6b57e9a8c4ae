#include "storage/metadata_codec.hpp"

#include "core/error.hpp"
#include "storage/pickle.hpp"

#include <algorithm>

// Decoding runs in three steps: the restricted pickle VM turns the bytes
// into an inert value graph; `check_globals` walks the whole graph and
// refuses every global that is not on the short list a DCP `.metadata`
// needs; then `interpreter` reads the graph against the schema of DCP's
// dataclasses (docs/dcp-format.md, section 2), checking the type of every
// field it uses.
//
// Encoding is in metadata_encoder.cpp.

namespace dcpp {

std::string to_string(metadata_flavor x) {
  switch (x) {
    case metadata_flavor::torch_1_13: return "torch_1_13";
    case metadata_flavor::torch_2: return "torch_2";
  }
  return "<invalid metadata_flavor>";
}

caf::expected<metadata_flavor> parse_metadata_flavor(const std::string& str) {
  if (str == "1.13" || str == "torch_1_13")
    return metadata_flavor::torch_1_13;
  if (str == "2" || str == "torch_2")
    return metadata_flavor::torch_2;
  return make_error(errc::invalid_argument, "unknown metadata flavor '" + str
                                              + "' (expected 1.13 or 2)");
}

namespace {

using pickle::kind;
using pickle::value;
using pickle::value_ptr;

// -- globals ------------------------------------------------------------------

/// What a global may stand for in a `.metadata` file.
enum class global_tag {
  metadata,
  tensor_storage,
  bytes_storage,
  chunk,
  index,
  properties,
  mem_format,
  storage_info,
  storage_meta,
  size,
  dtype,
  layout,
  get_layout,
  getattr,
  path,
  unknown,
};

bool starts_with(const std::string& str, const std::string& prefix) {
  return str.compare(0, prefix.size(), prefix) == 0;
}

/// True for the packages that define DCP's classes in torch 1.13 and in
/// torch >= 2 (including submodules).
bool is_dcp_module(const std::string& module) {
  static const char* packages[] = {
    "torch.distributed.checkpoint",
    "torch.distributed._shard.checkpoint",
    "torch.distributed._shard.sharded_tensor",
  };
  for (std::string pkg : packages)
    if (module == pkg || starts_with(module, pkg + "."))
      return true;
  return false;
}

const char* const layout_names[] = {
  "strided",    "sparse_coo", "sparse_csr", "sparse_csc",
  "sparse_bsr", "sparse_bsc", "_mkldnn",
};

bool is_layout_name(const std::string& name) {
  return std::find(std::begin(layout_names), std::end(layout_names), name)
         != std::end(layout_names);
}

global_tag classify(const value& g) {
  const auto& module = g.s;
  const auto& name = g.name;
  if (is_dcp_module(module)) {
    static const std::pair<const char*, global_tag> classes[] = {
      {"Metadata", global_tag::metadata},
      {"TensorStorageMetadata", global_tag::tensor_storage},
      {"BytesStorageMetadata", global_tag::bytes_storage},
      {"ChunkStorageMetadata", global_tag::chunk},
      {"MetadataIndex", global_tag::index},
      {"TensorProperties", global_tag::properties},
      {"MEM_FORMAT_ENCODING", global_tag::mem_format},
      {"_MEM_FORMAT_ENCODING", global_tag::mem_format},
      {"_StorageInfo", global_tag::storage_info},
      {"StorageMeta", global_tag::storage_meta},
    };
    for (const auto& [cls, tag] : classes)
      if (name == cls)
        return tag;
    return global_tag::unknown;
  }
  if (module == "torch") {
    if (name == "Size")
      return global_tag::size;
    if (is_layout_name(name))
      return global_tag::layout;
    if (parse_dtype(name))
      return global_tag::dtype;
    return global_tag::unknown;
  }
  if (module == "torch.serialization" && name == "_get_layout")
    return global_tag::get_layout;
  if ((module == "builtins" || module == "__builtin__") && name == "getattr")
    return global_tag::getattr;
  if ((module == "pathlib" || module == "pathlib._local")
      && (name == "PosixPath" || name == "PurePosixPath"))
    return global_tag::path;
  return global_tag::unknown;
}

caf::error corrupt(const std::string& what) {
  return make_error(errc::corrupt_metadata, ".metadata: " + what);
}

/// The pickle VM's gate (`read_limits::allow_global`): any global outside
/// the list above is refused wherever it appears, before it is built.
bool known_global(std::string_view module, std::string_view name) {
  value g;
  g.k = kind::global;
  g.s.assign(module.data(), module.size());
  g.name.assign(name.data(), name.size());
  return classify(g) != global_tag::unknown;
}

// -- interpretation -----------------------------------------------------------

const char* kind_name(const value_ptr& x) {
  return x ? pickle::kind_name(x->k) : "nothing";
}

/// A short description of what was found: "int", "object torch.Size".
std::string describe_value(const value_ptr& x) {
  std::string out = kind_name(x);
  if (x && (x->is(kind::global) || x->is(kind::object))) {
    auto module = x->global_module();
    if (!module.empty())
      out += " " + module + "." + x->global_name();
  }
  return out;
}

caf::error wrong_type(const std::string& field, const std::string& expected,
                      const value_ptr& found) {
  return corrupt(field + ": expected " + expected + ", found "
                 + describe_value(found));
}

bool is_none(const value_ptr& x) {
  return !x || x->is(kind::none);
}

/// `x` is an object made by calling the global classified as `tag`.
bool is_object_of(const value_ptr& x, global_tag tag) {
  return x && x->is(kind::object) && !x->items.empty() && x->items[0]
         && x->items[0]->is(kind::global) && classify(*x->items[0]) == tag;
}

const value_ptr& args_of(const value& obj) {
  static const value_ptr nothing;
  return obj.items.size() > 1 ? obj.items[1] : nothing;
}

/// The pairs of a dict whose keys must all be strings.
caf::error check_str_keys(const value& dict, const std::string& field) {
  for (size_t i = 0; i + 1 < dict.items.size(); i += 2)
    if (!dict.items[i] || !dict.items[i]->is(kind::string))
      return wrong_type(field + " key", "str", dict.items[i]);
  return {};
}

/// Reads the value graph against DCP's schema.
///
/// The graph is a DAG: the pickle memo lets a few bytes name a value that
/// is already big (a long string, a torch.Size of many dimensions, a list
/// of chunks, a dataclass whose state dict has many keys) any number of
/// times. Reading each reference anew would let a small file decode into
/// gigabytes or take hours, so everything the interpreter copies out or
/// scans is charged against a budget proportional to the input size
/// (`charge`); real files, which share little, stay far below it.
class interpreter {
public:
  explicit interpreter(uint64_t budget) : budget_(budget) {
    // nop
  }

  caf::expected<metadata> run(const value_ptr& root) {
    metadata md;
    const value* state = nullptr;
    if (auto err = dataclass_state(root, global_tag::metadata, "Metadata",
                                   "Metadata", state))
      return err;
    if (!state)
      return corrupt("Metadata: object has no state");
    // state_dict_metadata
    auto sdm = state->get("state_dict_metadata");
    if (!sdm)
      return corrupt("Metadata.state_dict_metadata: missing");
    if (!sdm->is(kind::dict))
      return wrong_type("Metadata.state_dict_metadata", "dict", sdm);
    if (auto err = check_str_keys(*sdm, "state_dict_metadata"))
      return err;
    for (size_t i = 0; i + 1 < sdm->items.size(); i += 2) {
      const auto& fqn = sdm->items[i]->s;
      if (auto err = charge(entry_cost + fqn.size()))
        return err;
      auto item = read_item(sdm->items[i + 1], fqn);
      if (!item)
        return item.error();
      md.state_dict_metadata[fqn] = std::move(*item);
    }
    // planner_data
    if (auto err = read_planner_data(state->get("planner_data"),
                                     md.planner_data))
      return err;
    // storage_data
    auto sd = state->get("storage_data");
    if (!is_none(sd)) {
      if (!sd->is(kind::dict))
        return wrong_type("Metadata.storage_data", "dict or None", sd);
      for (size_t i = 0; i + 1 < sd->items.size(); i += 2) {
        if (auto err = charge(entry_cost))
          return err;
        auto idx = read_index(sd->items[i]);
        if (!idx)
          return idx.error();
        auto info = read_storage_info(sd->items[i + 1], to_string(*idx));
        if (!info)
          return info.error();
        // As a Python dict: the first key object stays, the last value
        // wins (MetadataIndex compares by fqn and offset).
        md.storage_data.try_emplace(*idx).first->second = std::move(*info);
      }
    }
    // version
    auto version = state->get("version");
    if (!is_none(version)) {
      if (!version->is(kind::string))
        return wrong_type("Metadata.version", "str or None", version);
      md.version = version->s;
    }
    // storage_meta
    if (auto err = read_storage_meta(state->get("storage_meta"), md))
      return err;
    return md;
  }

private:
  /// What the interpreter charges for one container element (a chunk, a
  /// dict entry) and, on top of their length, for one string or shape.
  static constexpr uint64_t entry_cost = 32;

  /// Every state dict is scanned about once per field it has (key check
  /// and `get`s); this many times its size is charged.
  static constexpr uint64_t scan_cost = 8;

  /// Takes `units` (about one byte of output or one item scanned) from the
  /// budget.
  caf::error charge(uint64_t units) {
    if (units > budget_)
      return corrupt("decodes to far more than its size (shared "
                     "references repeat beyond any real checkpoint)");
    budget_ -= units;
    return {};
  }

  /// Checks that `x` is a DCP dataclass instance of class `tag` (made with
  /// no constructor arguments) and returns its state dict (nullptr when it
  /// has none).
  caf::error dataclass_state(const value_ptr& x, global_tag tag,
                             const char* cls, const std::string& field,
                             const value*& state) {
    if (!is_object_of(x, tag))
      return wrong_type(field, std::string{"a "} + cls, x);
    const auto& args = args_of(*x);
    if (!args || !args->is(kind::tuple) || !args->items.empty()
        || x->items.size() > 2)
      return corrupt(field + ": unexpected constructor arguments for " + cls);
    state = nullptr;
    if (!x->state)
      return {};
    if (!x->state->is(kind::dict))
      return wrong_type(field + " state", "dict", x->state);
    if (auto err = charge(entry_cost + field.size()
                          + scan_cost * x->state->items.size()))
      return err;
    if (auto err = check_str_keys(*x->state, field))
      return err;
    state = x->state.get();
    return {};
  }

  caf::error read_int(const value_ptr& x, const std::string& field,
                      int64_t& out) {
    if (!x || !x->is(kind::integer))
      return wrong_type(field, "int", x);
    out = x->i;
    return {};
  }

  caf::error read_nonneg(const value_ptr& x, const std::string& field,
                         uint64_t& out) {
    int64_t tmp = 0;
    if (auto err = read_int(x, field, tmp))
      return err;
    if (tmp < 0)
      return corrupt(field + ": negative value " + std::to_string(tmp));
    out = static_cast<uint64_t>(tmp);
    return {};
  }

  caf::error read_str(const value_ptr& x, const std::string& field,
                      std::string& out) {
    if (!x || !x->is(kind::string))
      return wrong_type(field, "str", x);
    if (auto err = charge(entry_cost + x->s.size()))
      return err;
    out = x->s;
    return {};
  }

  caf::error read_bool(const value_ptr& x, const std::string& field,
                       bool& out) {
    if (!x || !x->is(kind::boolean))
      return wrong_type(field, "bool", x);
    out = x->b;
    return {};
  }

  /// `torch.Size`: REDUCE(torch.Size, ((d0, d1, ...),)).
  caf::error read_size(const value_ptr& x, const std::string& field,
                       shape_t& out) {
    if (!is_object_of(x, global_tag::size) || x->newobj || x->state
        || x->items.size() != 2)
      return wrong_type(field, "a torch.Size", x);
    const auto& args = args_of(*x);
    if (!args || !args->is(kind::tuple) || args->items.size() != 1)
      return corrupt(field + ": torch.Size needs one argument");
    const auto& dims = args->items[0];
    if (!dims || (!dims->is(kind::tuple) && !dims->is(kind::list)))
      return wrong_type(field, "a tuple of ints", dims);
    if (auto err = charge(entry_cost + field.size()
                          + sizeof(int64_t) * dims->items.size()))
      return err;
    out.clear();
    out.reserve(dims->items.size());
    // The field name is built only for an error: a shape may have as many
    // dimensions as the input has bytes.
    for (const auto& dim : dims->items) {
      if (!dim || !dim->is(kind::integer))
        return wrong_type(field + " dimension", "int", dim);
      if (dim->i < 0)
        return corrupt(field + " dimension: negative value "
                       + std::to_string(dim->i));
      out.push_back(dim->i);
    }
    return {};
  }

  caf::error read_dtype(const value_ptr& x, const std::string& field,
                        dtype& out) {
    if (!x || !x->is(kind::global) || classify(*x) != global_tag::dtype)
      return wrong_type(field, "a torch dtype", x);
    auto parsed = parse_dtype(x->name);
    if (!parsed)
      return corrupt(field + ": unknown dtype torch." + x->name);
    out = *parsed;
    return {};
  }

  /// The global `torch.strided` or REDUCE(_get_layout, ("torch.strided",)).
  caf::error read_layout(const value_ptr& x, const std::string& field,
                         std::string& out) {
    if (x && x->is(kind::global) && classify(*x) == global_tag::layout) {
      out = x->name;
      return {};
    }
    if (!is_object_of(x, global_tag::get_layout) || x->newobj || x->state
        || x->items.size() != 2)
      return wrong_type(field, "a torch layout", x);
    const auto& args = args_of(*x);
    if (!args || !args->is(kind::tuple) || args->items.size() != 1)
      return corrupt(field + ": _get_layout needs one argument");
    std::string name;
    if (auto err = read_str(args->items[0], field, name))
      return err;
    if (starts_with(name, "torch."))
      name.erase(0, 6);
    if (!is_layout_name(name))
      return corrupt(field + ": unknown layout '" + args->items[0]->s + "'");
    out = name;
    return {};
  }

  /// The memory-format enum member: REDUCE(getattr, (EnumCls, "NAME")) or
  /// REDUCE(EnumCls, (value,)).
  caf::error read_memory_format(const value_ptr& x, const std::string& field,
                                memory_format& out) {
    static const std::pair<const char*, memory_format> members[] = {
      {"TORCH_CONTIGUOUS_FORMAT", memory_format::contiguous},
      {"TORCH_CHANNELS_LAST", memory_format::channels_last},
      {"TORCH_PRESERVE_FORMAT", memory_format::preserve},
    };
    auto fail = [&] {
      return wrong_type(field, "a memory-format enum member", x);
    };
    if (!x || !x->is(kind::object) || x->newobj || x->state
        || x->items.size() != 2)
      return fail();
    const auto& args = args_of(*x);
    if (!args || !args->is(kind::tuple))
      return fail();
    if (is_object_of(x, global_tag::getattr)) {
      if (args->items.size() != 2 || !args->items[0]
          || !args->items[0]->is(kind::global)
          || classify(*args->items[0]) != global_tag::mem_format)
        return fail();
      std::string name;
      if (auto err = read_str(args->items[1], field + " member", name))
        return err;
      for (const auto& [member, format] : members) {
        if (name == member) {
          out = format;
          return {};
        }
      }
      return corrupt(field + ": unknown enum member '" + name + "'");
    }
    if (is_object_of(x, global_tag::mem_format)) {
      if (args->items.size() != 1)
        return fail();
      int64_t code = 0;
      if (auto err = read_int(args->items[0], field + " value", code))
        return err;
      if (code < 0 || code > 2)
        return corrupt(field + ": unknown enum value " + std::to_string(code));
      out = static_cast<memory_format>(code);
      return {};
    }
    return fail();
  }

  /// TensorProperties: BUILD with the 5-tuple of `__getstate__` (or a
  /// dict of the fields).
  caf::error read_properties(const value_ptr& x, const std::string& field,
                             tensor_properties& out) {
    if (!is_object_of(x, global_tag::properties))
      return wrong_type(field, "a TensorProperties", x);
    const auto& args = args_of(*x);
    if (!args || !args->is(kind::tuple) || !args->items.empty()
        || x->items.size() > 2)
      return corrupt(field + ": unexpected constructor arguments");
    const auto& state = x->state;
    out = tensor_properties{};
    if (state && state->is(kind::tuple)) {
      if (state->items.size() != 5)
        return corrupt(field + ": expected a 5-tuple state, found "
                       + std::to_string(state->items.size()) + " items");
      const auto& xs = state->items;
      if (auto err = read_dtype(xs[0], field + ".dtype", out.type))
        return err;
      if (auto err = read_layout(xs[1], field + ".layout", out.layout))
        return err;
      if (auto err = read_bool(xs[2], field + ".requires_grad",
                               out.requires_grad))
        return err;
      if (auto err = read_memory_format(xs[3], field + ".memory_format",
                                        out.format))
        return err;
      return read_bool(xs[4], field + ".pin_memory", out.pin_memory);
    }
    if (state && state->is(kind::dict)) {
      if (auto err = charge(scan_cost * state->items.size()))
        return err;
      if (auto err = check_str_keys(*state, field))
        return err;
      auto dt = state->get("dtype");
      if (!dt)
        return corrupt(field + ".dtype: missing");
      if (auto err = read_dtype(dt, field + ".dtype", out.type))
        return err;
      if (auto y = state->get("layout"))
        if (auto err = read_layout(y, field + ".layout", out.layout))
          return err;
      if (auto y = state->get("requires_grad"))
        if (auto err = read_bool(y, field + ".requires_grad",
                                 out.requires_grad))
          return err;
      if (auto y = state->get("memory_format"))
        if (auto err = read_memory_format(y, field + ".memory_format",
                                          out.format))
          return err;
      if (auto y = state->get("pin_memory"))
        if (auto err = read_bool(y, field + ".pin_memory", out.pin_memory))
          return err;
      return {};
    }
    return wrong_type(field + " state", "a 5-tuple or dict", state);
  }

  caf::expected<item_metadata> read_item(const value_ptr& x,
                                         const std::string& fqn) {
    auto field = "state_dict_metadata['" + fqn + "']";
    if (is_object_of(x, global_tag::bytes_storage)) {
      const value* state = nullptr;
      if (auto err = dataclass_state(x, global_tag::bytes_storage,
                                     "BytesStorageMetadata", field, state))
        return err;
      return item_metadata::bytes();
    }
    const value* state = nullptr;
    if (auto err = dataclass_state(x, global_tag::tensor_storage,
                                   "TensorStorageMetadata", field, state))
      return err;
    if (!state)
      return corrupt(field + ": TensorStorageMetadata has no state");
    item_metadata result;
    result.kind = item_kind::tensor;
    auto& tensor = result.tensor;
    auto props = state->get("properties");
    if (!props)
      return corrupt(field + ".properties: missing");
    if (auto err = read_properties(props, field + ".properties",
                                   tensor.properties))
      return err;
    auto size = state->get("size");
    if (!size)
      return corrupt(field + ".size: missing");
    if (auto err = read_size(size, field + ".size", tensor.size))
      return err;
    auto chunks = state->get("chunks");
    if (!chunks)
      return corrupt(field + ".chunks: missing");
    if (!chunks->is(kind::list) && !chunks->is(kind::tuple))
      return wrong_type(field + ".chunks", "list", chunks);
    for (size_t i = 0; i < chunks->items.size(); ++i) {
      auto chunk_field = field + ".chunks[" + std::to_string(i) + "]";
      const value* cs = nullptr;
      if (auto err = dataclass_state(chunks->items[i], global_tag::chunk,
                                     "ChunkStorageMetadata", chunk_field, cs))
        return err;
      if (!cs)
        return corrupt(chunk_field + ": ChunkStorageMetadata has no state");
      chunk_storage_metadata chunk;
      auto offsets = cs->get("offsets");
      auto sizes = cs->get("sizes");
      if (!offsets)
        return corrupt(chunk_field + ".offsets: missing");
      if (!sizes)
        return corrupt(chunk_field + ".sizes: missing");
      if (auto err = read_size(offsets, chunk_field + ".offsets",
                               chunk.offsets))
        return err;
      if (auto err = read_size(sizes, chunk_field + ".sizes", chunk.sizes))
        return err;
      if (chunk.offsets.size() != tensor.size.size()
          || chunk.sizes.size() != tensor.size.size())
        return corrupt(chunk_field + ": rank differs from the tensor's "
                       + to_string(tensor.size));
      tensor.chunks.emplace_back(std::move(chunk));
    }
    return result;
  }

  caf::expected<metadata_index> read_index(const value_ptr& x) {
    const std::string field = "storage_data key";
    const value* state = nullptr;
    if (auto err = dataclass_state(x, global_tag::index, "MetadataIndex", field,
                                   state))
      return err;
    if (!state)
      return corrupt(field + ": MetadataIndex has no state");
    metadata_index result;
    auto fqn = state->get("fqn");
    if (!fqn)
      return corrupt(field + ".fqn: missing");
    if (auto err = read_str(fqn, field + ".fqn", result.fqn))
      return err;
    auto where = field + " '" + result.fqn + "'";
    auto offset = state->get("offset");
    if (!is_none(offset)) {
      if (auto err = read_size(offset, where + ".offset", result.offset))
        return err;
      result.has_offset = true;
    }
    auto index = state->get("index");
    if (!is_none(index)) {
      if (auto err = read_int(index, where + ".index", result.index))
        return err;
      if (result.index < 0)
        return corrupt(where + ".index: negative value "
                       + std::to_string(result.index));
    }
    return result;
  }

  caf::expected<storage_info> read_storage_info(const value_ptr& x,
                                                const std::string& item) {
    auto field = "storage_data[" + item + "]";
    const value* state = nullptr;
    if (auto err = dataclass_state(x, global_tag::storage_info, "_StorageInfo",
                                   field, state))
      return err;
    if (!state)
      return corrupt(field + ": _StorageInfo has no state");
    storage_info result;
    auto path = state->get("relative_path");
    auto offset = state->get("offset");
    auto length = state->get("length");
    if (!path)
      return corrupt(field + ".relative_path: missing");
    if (!offset)
      return corrupt(field + ".offset: missing");
    if (!length)
      return corrupt(field + ".length: missing");
    if (auto err = read_str(path, field + ".relative_path",
                            result.relative_path))
      return err;
    if (auto err = read_nonneg(offset, field + ".offset", result.offset))
      return err;
    if (auto err = read_nonneg(length, field + ".length", result.length))
      return err;
    if (result.offset > UINT64_MAX - result.length)
      return corrupt(field + ": offset + length overflows");
    auto transforms = state->get("transform_descriptors");
    if (!is_none(transforms)) {
      if (!transforms->is(kind::list) && !transforms->is(kind::tuple))
        return wrong_type(field + ".transform_descriptors", "list or None",
                          transforms);
      if (!transforms->items.empty())
        return make_error(errc::unsupported,
                          ".metadata: " + item
                            + " is stored with transforms (e.g. "
                              "compression), which dcpp cannot undo");
    }
    auto checksum = state->get("checksum");
    if (!is_none(checksum))
      if (auto err = read_str(checksum, field + ".checksum", result.checksum))
        return err;
    return result;
  }

  caf::error read_planner_data(const value_ptr& x, flatten_mapping& out) {
    const std::string field = "Metadata.planner_data";
    if (is_none(x))
      return {};
    if (!x->is(kind::dict))
      return wrong_type(field, "dict or None", x);
    if (auto err = check_str_keys(*x, field))
      return err;
    for (size_t i = 0; i + 1 < x->items.size(); i += 2) {
      const auto& key = x->items[i]->s;
      const auto& path = x->items[i + 1];
      if (auto err = charge(entry_cost + 2 * key.size()))
        return err;
      auto where = field + "['" + key + "']";
      if (!path || (!path->is(kind::tuple) && !path->is(kind::list)))
        return wrong_type(where, "a tuple of path parts", path);
      object_path parts;
      parts.reserve(path->items.size());
      for (const auto& part : path->items) {
        if (auto err = charge(
              entry_cost
              + (part && part->is(kind::string) ? part->s.size() : 0)))
          return err;
        if (part && part->is(kind::string))
          parts.push_back(part->s);
        else if (part && part->is(kind::integer) && part->i >= 0)
          parts.push_back(path_element::position(part->i));
        else if (part && part->is(kind::integer))
          return wrong_type(where, "a list position >= 0", part);
        else
          return wrong_type(where, "str or int path parts", part);
      }
      out[key] = std::move(parts);
    }
    return {};
  }

  /// `pathlib.PosixPath`: REDUCE(cls, parts) with the parts of Python <=
  /// 3.12 ("/", "a", "b") or the raw segments of 3.13 ("/a/b",).
  caf::error read_path(const value_ptr& x, const std::string& field,
                       std::string& out) {
    if (x->newobj || x->state || x->items.size() != 2)
      return wrong_type(field, "a path", x);
    const auto& args = args_of(*x);
    if (!args || !args->is(kind::tuple))
      return wrong_type(field, "a path", x);
    out.clear();
    for (const auto& part : args->items) {
      std::string segment;
      if (auto err = read_str(part, field + " part", segment))
        return err;
      if (segment.empty())
        continue;
      if (segment.front() == '/' || out.empty())
        out = segment;
      else if (out.back() == '/')
        out += segment;
      else
        out += "/" + segment;
    }
    if (out.empty())
      out = ".";
    return {};
  }

  caf::error read_storage_meta(const value_ptr& x, metadata& md) {
    const std::string field = "Metadata.storage_meta";
    if (is_none(x))
      return {};
    const value* state = nullptr;
    if (auto err = dataclass_state(x, global_tag::storage_meta, "StorageMeta",
                                   field, state))
      return err;
    if (!state)
      return {};
    auto id = state->get("checkpoint_id");
    if (!is_none(id)) {
      if (id->is(kind::string))
        md.checkpoint_id = id->s;
      else if (is_object_of(id, global_tag::path)) {
        if (auto err = read_path(id, field + ".checkpoint_id",
                                 md.checkpoint_id))
          return err;
      } else {
        return wrong_type(field + ".checkpoint_id", "str, path or None", id);
      }
    }
    auto save_id = state->get("save_id");
    if (!is_none(save_id))
      if (auto err = read_str(save_id, field + ".save_id", md.save_id))
        return err;
    auto load_id = state->get("load_id");
    if (!is_none(load_id) && !load_id->is(kind::string))
      return wrong_type(field + ".load_id", "str or None", load_id);
    auto modules = state->get("modules");
    if (!is_none(modules)) {
      if (!modules->is(kind::list) && !modules->is(kind::tuple))
        return wrong_type(field + ".modules", "list", modules);
      for (const auto& module : modules->items)
        if (!module || !module->is(kind::string))
          return wrong_type(field + ".modules", "a list of str", module);
    }
    return {};
  }

  /// Units left to `charge`.
  uint64_t budget_;
};

} // namespace

caf::expected<metadata> decode_metadata(std::string_view bytes) {
  pickle::read_limits limits;
  // Python memoizes nearly every object, so a big checkpoint can exceed the
  // default memo limit; each memo entry costs at least one input byte, so
  // the input size still bounds it.
  limits.max_memo = std::max(limits.max_memo, bytes.size());
  limits.allow_global = known_global;
  auto root = pickle::read(bytes, limits);
  if (!root)
    return with_context(root.error(), ".metadata", errc::corrupt_metadata);
  // See `interpreter`: real files decode to a few times their size.
  interpreter interp{64 * static_cast<uint64_t>(bytes.size()) + (1u << 20)};
  return interp.run(*root);
}

} // namespace dcpp
