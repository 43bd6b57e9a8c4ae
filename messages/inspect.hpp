#pragma once

// Serialization of dcpp's data model, two ways:
// - `inspect` overloads for CAF (messages between actors, deep_to_string,
//   caf::binary_serializer), found by ADL in namespace dcpp;
// - cereal `serialize` free functions (the encoding of the ZeroMQ transport,
//   `messages/wire.hpp`), also found by ADL in namespace dcpp.
// Both list the same fields in the same order as the structs declare them.
// `caf::error` gets cereal `save`/`load` in namespace cereal (it is CAF's
// type): code, category and the context rendered as one string.
// Bool and enum fields are wrapped in `wire_field` (a `cereal::make_nvp`):
// the portable binary encoding ignores the name, the wire decoder
// (`messages.cpp`) uses it to name the field when it refuses an out-of-range
// value.

#include "core/error.hpp"
#include "core/metadata.hpp"
#include "core/plan.hpp"
#include "core/planner.hpp"

#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/make_message.hpp>
#include <caf/message.hpp>
#include <caf/meta/type_name.hpp>

#include <cereal/cereal.hpp>
#include <cereal/types/common.hpp>
#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/vector.hpp>

#include <cstdint>
#include <string>
#include <type_traits>

namespace dcpp {

// -- CAF ----------------------------------------------------------------------

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tensor_properties& x) {
  return f(caf::meta::type_name("dcpp.tensor_properties"), x.type, x.layout,
           x.requires_grad, x.format, x.pin_memory);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f,
                                        chunk_storage_metadata& x) {
  return f(caf::meta::type_name("dcpp.chunk_storage_metadata"), x.offsets,
           x.sizes);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f,
                                        tensor_storage_metadata& x) {
  return f(caf::meta::type_name("dcpp.tensor_storage_metadata"), x.properties,
           x.size, x.chunks);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f,
                                        bytes_storage_metadata&) {
  return f(caf::meta::type_name("dcpp.bytes_storage_metadata"));
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, item_metadata& x) {
  return f(caf::meta::type_name("dcpp.item_metadata"), x.kind, x.tensor);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, metadata_index& x) {
  return f(caf::meta::type_name("dcpp.metadata_index"), x.fqn, x.has_offset,
           x.offset, x.index);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, storage_info& x) {
  return f(caf::meta::type_name("dcpp.storage_info"), x.relative_path,
           x.offset, x.length, x.checksum);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, metadata& x) {
  return f(caf::meta::type_name("dcpp.metadata"), x.state_dict_metadata,
           x.planner_data, x.storage_data, x.version, x.save_id,
           x.checkpoint_id);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tensor_write_data& x) {
  return f(caf::meta::type_name("dcpp.tensor_write_data"), x.chunk,
           x.properties, x.size);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, write_item& x) {
  return f(caf::meta::type_name("dcpp.write_item"), x.index, x.type,
           x.tensor_data, x.bytes_size);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, read_item& x) {
  return f(caf::meta::type_name("dcpp.read_item"), x.type, x.dest_index,
           x.dest_offsets, x.storage_index, x.storage_offsets, x.lengths);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, save_plan& x) {
  return f(caf::meta::type_name("dcpp.save_plan"), x.items, x.storage_data,
           x.planner_data, x.usable);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, load_plan& x) {
  return f(caf::meta::type_name("dcpp.load_plan"), x.items, x.storage_data,
           x.planner_data);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, write_result& x) {
  return f(caf::meta::type_name("dcpp.write_result"), x.index,
           x.size_in_bytes, x.storage_data);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, global_save_plan& x) {
  return f(caf::meta::type_name("dcpp.global_save_plan"), x.plans, x.md);
}

// -- cereal -------------------------------------------------------------------

/// Names a field for cereal archives (the wire decoder reports it when it
/// refuses a value; the portable binary encoding ignores names). CAF also
/// calls these `serialize` functions and gets the bare field.
template <class Archive, class T>
decltype(auto) wire_field(const char* name, T& x) {
  if constexpr (std::is_base_of<cereal::detail::InputArchiveBase,
                                Archive>::value
                || std::is_base_of<cereal::detail::OutputArchiveBase,
                                   Archive>::value)
    return cereal::make_nvp(name, x);
  else
    return (x);
}

template <class Archive>
void serialize(Archive& ar, tensor_properties& x) {
  ar(wire_field<Archive>("tensor_properties.type", x.type), x.layout,
     wire_field<Archive>("tensor_properties.requires_grad", x.requires_grad),
     wire_field<Archive>("tensor_properties.format", x.format),
     wire_field<Archive>("tensor_properties.pin_memory", x.pin_memory));
}

template <class Archive>
void serialize(Archive& ar, chunk_storage_metadata& x) {
  ar(x.offsets, x.sizes);
}

template <class Archive>
void serialize(Archive& ar, tensor_storage_metadata& x) {
  ar(x.properties, x.size, x.chunks);
}

template <class Archive>
void serialize(Archive&, bytes_storage_metadata&) {
  // nop
}

template <class Archive>
void serialize(Archive& ar, item_metadata& x) {
  ar(wire_field<Archive>("item_metadata.kind", x.kind), x.tensor);
}

template <class Archive>
void serialize(Archive& ar, metadata_index& x) {
  ar(x.fqn, wire_field<Archive>("metadata_index.has_offset", x.has_offset),
     x.offset, x.index);
}

template <class Archive>
void serialize(Archive& ar, storage_info& x) {
  ar(x.relative_path, x.offset, x.length, x.checksum);
}

template <class Archive>
void serialize(Archive& ar, metadata& x) {
  ar(x.state_dict_metadata, x.planner_data, x.storage_data, x.version,
     x.save_id, x.checkpoint_id);
}

template <class Archive>
void serialize(Archive& ar, tensor_write_data& x) {
  ar(x.chunk, x.properties, x.size);
}

template <class Archive>
void serialize(Archive& ar, write_item& x) {
  ar(x.index, wire_field<Archive>("write_item.type", x.type), x.tensor_data,
     x.bytes_size);
}

template <class Archive>
void serialize(Archive& ar, read_item& x) {
  ar(wire_field<Archive>("read_item.type", x.type), x.dest_index,
     x.dest_offsets, x.storage_index, x.storage_offsets, x.lengths);
}

template <class Archive>
void serialize(Archive& ar, save_plan& x) {
  ar(x.items, x.storage_data, x.planner_data,
     wire_field<Archive>("save_plan.usable", x.usable));
}

template <class Archive>
void serialize(Archive& ar, load_plan& x) {
  ar(x.items, x.storage_data, x.planner_data);
}

template <class Archive>
void serialize(Archive& ar, write_result& x) {
  ar(x.index, x.size_in_bytes, x.storage_data);
}

template <class Archive>
void serialize(Archive& ar, global_save_plan& x) {
  ar(x.plans, x.md);
}

template <class Archive>
void serialize(Archive& ar, checkpoint_failure& x) {
  ar(x.op, x.step, x.failures);
}

} // namespace dcpp

namespace cereal {

/// caf::error on the wire: code, category (the atom's text) and context as
/// one string. A dcpp error round-trips exactly (its context is one string);
/// other errors keep code, category and a rendering of their context.
template <class Archive>
void save(Archive& ar, const caf::error& x) {
  uint8_t code = x ? x.code() : uint8_t{0};
  std::string category = x ? caf::to_string(x.category()) : std::string{};
  std::string context;
  if (x && !x.context().empty()) {
    const auto& ctx = x.context();
    // dcpp errors carry their text first (data may follow it).
    if (ctx.match_element<std::string>(0))
      context = ctx.get_as<std::string>(0);
    else
      context = caf::to_string(ctx);
  }
  ar(code, category, context);
}

template <class Archive>
void load(Archive& ar, caf::error& x) {
  uint8_t code = 0;
  std::string category;
  std::string context;
  ar(code, category, context);
  // Only what `save` produces is accepted: "no error" is all empty, an error
  // has a nonzero code and a category that is an atom's exact text (anything
  // else would decode into a different error, or into none at all).
  if (code == 0) {
    if (!category.empty() || !context.empty())
      throw cereal::Exception("caf::error: code 0 with category or context");
    x = caf::error{};
    return;
  }
  if (category.empty() || category.size() > 10)
    throw cereal::Exception("caf::error: invalid category of "
                            + std::to_string(category.size()) + " bytes");
  auto cat = caf::atom_from_string(category);
  if (caf::to_string(cat) != category)
    throw cereal::Exception("caf::error: category is not an atom");
  if (context.empty())
    x = caf::error{code, cat};
  else
    x = caf::error{code, cat, caf::make_message(std::move(context))};
}

} // namespace cereal
