// `encode_metadata` (storage/metadata_codec.hpp): builds the value graph of
// DCP's metadata objects and writes it with the protocol-2 pickle writer,
// in the layout of the reference emitter (`emit_metadata_raw.py`):
// dataclasses as GLOBAL + EMPTY_TUPLE + NEWOBJ + state dict + BUILD,
// TensorProperties as a 5-tuple state, the memory format enum as
// REDUCE(EnumCls, (0,)), the layout as the global `torch.strided`
// (docs/dcp-format.md, section 2.6). Decoding is in metadata_codec.cpp.

#include "core/error.hpp"
#include "storage/metadata_codec.hpp"
#include "storage/pickle.hpp"

#include <string>
#include <utility>
#include <vector>

namespace dcpp {

namespace {

using pickle::kind;
using pickle::value;
using pickle::value_ptr;

// -- encoding -----------------------------------------------------------------

struct class_paths {
  const char* metadata_module;
  const char* filesystem_module;
  const char* properties_module;
  const char* mem_format_module;
  const char* mem_format_name;
};

class_paths paths_of(metadata_flavor flavor) {
  if (flavor == metadata_flavor::torch_1_13)
    return {"torch.distributed._shard.checkpoint.metadata",
            "torch.distributed._shard.checkpoint.filesystem",
            "torch.distributed._shard.sharded_tensor.metadata",
            "torch.distributed._shard.sharded_tensor.metadata",
            "MEM_FORMAT_ENCODING"};
  return {"torch.distributed.checkpoint.metadata",
          "torch.distributed.checkpoint.filesystem",
          "torch.distributed.checkpoint.metadata",
          "torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"};
}

class encoder {
public:
  explicit encoder(metadata_flavor flavor)
    : flavor_(flavor), paths_(paths_of(flavor)) {
    // nop
  }

  value_ptr encode(const metadata& md) const {
    using pickle::make_dict;
    using pickle::make_none;
    using pickle::make_string;
    std::vector<std::pair<value_ptr, value_ptr>> sdm;
    for (const auto& [fqn, item] : md.state_dict_metadata)
      sdm.emplace_back(make_string(fqn), encode_item(item));
    std::vector<std::pair<value_ptr, value_ptr>> storage;
    for (const auto& [idx, info] : md.storage_data)
      storage.emplace_back(encode_index(idx), encode_storage_info(info));
    std::vector<std::pair<value_ptr, value_ptr>> fields;
    fields.emplace_back(make_string("state_dict_metadata"),
                        make_dict(std::move(sdm)));
    fields.emplace_back(make_string("planner_data"),
                        encode_planner_data(md.planner_data));
    fields.emplace_back(make_string("storage_data"),
                        make_dict(std::move(storage)));
    if (flavor_ == metadata_flavor::torch_2) {
      fields.emplace_back(make_string("storage_meta"), encode_storage_meta(md));
      fields.emplace_back(make_string("version"),
                          make_string(md.version.empty() ? "1.0.0"
                                                         : md.version));
    }
    return dataclass(paths_.metadata_module, "Metadata",
                     make_dict(std::move(fields)));
  }

private:
  static value_ptr dataclass(const char* module, const char* name,
                             value_ptr state) {
    return pickle::make_newobj(pickle::make_global(module, name),
                               pickle::make_tuple({}), std::move(state));
  }

  static value_ptr size(const shape_t& dims) {
    std::vector<value_ptr> xs;
    xs.reserve(dims.size());
    for (auto d : dims)
      xs.emplace_back(pickle::make_int(d));
    return pickle::make_reduce(pickle::make_global("torch", "Size"),
                               pickle::make_tuple(
                                 {pickle::make_tuple(std::move(xs))}));
  }

  value_ptr encode_properties(const tensor_properties& props) const {
    using namespace pickle;
    auto format = make_reduce(
      make_global(paths_.mem_format_module, paths_.mem_format_name),
      make_tuple({make_int(static_cast<int64_t>(props.format))}));
    auto layout = props.layout.empty() ? std::string{"strided"} : props.layout;
    auto state = make_tuple({make_global("torch", to_string(props.type)),
                             make_global("torch", layout),
                             make_bool(props.requires_grad), format,
                             make_bool(props.pin_memory)});
    return dataclass(paths_.properties_module, "TensorProperties", state);
  }

  value_ptr encode_item(const item_metadata& item) const {
    using namespace pickle;
    if (item.kind == item_kind::bytes)
      return dataclass(paths_.metadata_module, "BytesStorageMetadata",
                       make_dict({}));
    const auto& tensor = item.tensor;
    std::vector<value_ptr> chunks;
    for (const auto& chunk : tensor.chunks)
      chunks.emplace_back(
        dataclass(paths_.metadata_module, "ChunkStorageMetadata",
                  make_dict({{make_string("offsets"), size(chunk.offsets)},
                             {make_string("sizes"), size(chunk.sizes)}})));
    return dataclass(
      paths_.metadata_module, "TensorStorageMetadata",
      make_dict(
        {{make_string("properties"), encode_properties(tensor.properties)},
         {make_string("size"), size(tensor.size)},
         {make_string("chunks"), make_list(std::move(chunks))}}));
  }

  /// State keys as Python writes them: fqn, index, then offset if any.
  value_ptr encode_index(const metadata_index& idx) const {
    using namespace pickle;
    std::vector<std::pair<value_ptr, value_ptr>> kvs;
    kvs.emplace_back(make_string("fqn"), make_string(idx.fqn));
    kvs.emplace_back(make_string("index"),
                     idx.index < 0 ? make_none() : make_int(idx.index));
    if (idx.has_offset)
      kvs.emplace_back(make_string("offset"), size(idx.offset));
    return dataclass(paths_.metadata_module, "MetadataIndex",
                     make_dict(std::move(kvs)));
  }

  value_ptr encode_storage_info(const storage_info& info) const {
    using namespace pickle;
    std::vector<std::pair<value_ptr, value_ptr>> kvs;
    kvs.emplace_back(make_string("relative_path"),
                     make_string(info.relative_path));
    kvs.emplace_back(make_string("offset"),
                     make_int(static_cast<int64_t>(info.offset)));
    kvs.emplace_back(make_string("length"),
                     make_int(static_cast<int64_t>(info.length)));
    // dcpp's integrity field: an extra instance attribute for Python (the
    // dataclass has no __setstate__, so BUILD just sets it).
    if (!info.checksum.empty())
      kvs.emplace_back(make_string("checksum"), make_string(info.checksum));
    return dataclass(paths_.filesystem_module, "_StorageInfo",
                     make_dict(std::move(kvs)));
  }

  static value_ptr encode_planner_data(const flatten_mapping& mapping) {
    using namespace pickle;
    if (mapping.empty())
      return make_none();
    std::vector<std::pair<value_ptr, value_ptr>> kvs;
    for (const auto& [key, path] : mapping) {
      std::vector<value_ptr> parts;
      for (const auto& part : path)
        parts.emplace_back(part.index ? make_int(std::stoll(part.key))
                                      : make_string(part.key));
      kvs.emplace_back(make_string(key), make_tuple(std::move(parts)));
    }
    return make_dict(std::move(kvs));
  }

  value_ptr encode_storage_meta(const metadata& md) const {
    using namespace pickle;
    auto str_or_none = [](const std::string& str) {
      return str.empty() ? make_none() : make_string(str);
    };
    return dataclass(
      paths_.metadata_module, "StorageMeta",
      make_dict({{make_string("checkpoint_id"), str_or_none(md.checkpoint_id)},
                 {make_string("save_id"), str_or_none(md.save_id)},
                 {make_string("load_id"), make_none()},
                 {make_string("modules"), make_list({})}}));
  }

  metadata_flavor flavor_;
  class_paths paths_;
};

} // namespace

std::string encode_metadata(const metadata& md, metadata_flavor flavor) {
  encoder enc{flavor};
  return pickle::write(*enc.encode(md));
}

} // namespace dcpp
