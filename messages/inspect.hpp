#pragma once

// The fields of dcpp's data model, listed once per type in a CAF `inspect`
// overload (found by ADL in namespace dcpp). The same list drives every
// encoding: CAF's inspectors (messages between actors, deep_to_string,
// caf::binary_serializer) and the cereal wire encoding of the ZeroMQ
// transport (`messages/wire.hpp`; the adapter is private to
// `messages/messages.cpp`), so both see the same fields in the same order,
// the order in which the structs declare them. (checkpoint_failure's list
// is next to it, in core/error.hpp.)
//
// Bool and enum fields are preceded by a `wire_name`: CAF skips it, the
// wire encoding writes no names, and the wire decoder uses it to name the
// field when it refuses an out-of-range value.

#include "core/error.hpp"
#include "core/metadata.hpp"
#include "core/plan.hpp"
#include "core/planner.hpp"
#include "core/report.hpp"

#include <caf/meta/annotation.hpp>
#include <caf/meta/type_name.hpp>

namespace dcpp {

/// Names the field that follows it in an `inspect` field list, e.g.
/// `wire_name("save_plan.usable"), x.usable`, for the wire decoder's errors
/// ("invalid bool value 13 in field save_plan.usable"). An annotation: CAF's
/// inspectors skip it and it adds nothing to any encoding.
struct wire_name : caf::meta::annotation {
  constexpr explicit wire_name(const char* name) : value(name) {
    // nop
  }

  const char* value;
};

// -- fields -------------------------------------------------------------------

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, tensor_properties& x) {
  return f(caf::meta::type_name("dcpp.tensor_properties"),
           wire_name("tensor_properties.type"), x.type, x.layout,
           wire_name("tensor_properties.requires_grad"), x.requires_grad,
           wire_name("tensor_properties.format"), x.format,
           wire_name("tensor_properties.pin_memory"), x.pin_memory);
}

template <class Inspector>
typename Inspector::result_type
inspect(Inspector& f, chunk_storage_metadata& x) {
  return f(caf::meta::type_name("dcpp.chunk_storage_metadata"), x.offsets,
           x.sizes);
}

template <class Inspector>
typename Inspector::result_type
inspect(Inspector& f, tensor_storage_metadata& x) {
  return f(caf::meta::type_name("dcpp.tensor_storage_metadata"), x.properties,
           x.size, x.chunks);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, bytes_storage_metadata&) {
  return f(caf::meta::type_name("dcpp.bytes_storage_metadata"));
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, item_metadata& x) {
  return f(caf::meta::type_name("dcpp.item_metadata"),
           wire_name("item_metadata.kind"), x.kind, x.tensor);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, metadata_index& x) {
  return f(caf::meta::type_name("dcpp.metadata_index"), x.fqn,
           wire_name("metadata_index.has_offset"), x.has_offset, x.offset,
           x.index);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, storage_info& x) {
  return f(caf::meta::type_name("dcpp.storage_info"), x.relative_path, x.offset,
           x.length, x.checksum);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, path_element& x) {
  return f(caf::meta::type_name("dcpp.path_element"), x.key,
           wire_name("path_element.index"), x.index);
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
  return f(caf::meta::type_name("dcpp.write_item"), x.index,
           wire_name("write_item.type"), x.type, x.tensor_data, x.bytes_size);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, read_item& x) {
  return f(caf::meta::type_name("dcpp.read_item"), wire_name("read_item.type"),
           x.type, x.dest_index, x.dest_offsets, x.storage_index,
           x.storage_offsets, x.lengths);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, save_plan& x) {
  return f(caf::meta::type_name("dcpp.save_plan"), x.items, x.storage_data,
           x.planner_data, wire_name("save_plan.usable"), x.usable);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, load_plan& x) {
  return f(caf::meta::type_name("dcpp.load_plan"), x.items, x.storage_data,
           x.planner_data);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, write_result& x) {
  return f(caf::meta::type_name("dcpp.write_result"), x.index, x.size_in_bytes,
           x.storage_data);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, rank_report& x) {
  return f(caf::meta::type_name("dcpp.rank_report"),
           wire_name("rank_report.in_progress"), x.in_progress, x.bytes,
           x.bytes_planned, x.files, x.plan_us, x.data_us);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, op_report& x) {
  return f(caf::meta::type_name("dcpp.op_report"), x.bytes, x.files, x.ranks,
           x.plan_us, x.data_us, x.commit_us, x.total_us,
           wire_name("op_report.plans_cached"), x.plans_cached);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, global_save_plan& x) {
  return f(caf::meta::type_name("dcpp.global_save_plan"), x.plans, x.md);
}

} // namespace dcpp
