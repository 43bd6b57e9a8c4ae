#include "core/metadata.hpp"

#include "core/error.hpp"

#include <array>

namespace dcpp {

namespace {

struct dtype_info {
  dtype type;
  const char* name;
  const char* storage;
  size_t size;
  dtype carrier;
};

constexpr std::array<dtype_info, static_cast<size_t>(dtype::num_values)>
  dtype_table{{
    {dtype::float32, "float32", "FloatStorage", 4, dtype::float32},
    {dtype::float64, "float64", "DoubleStorage", 8, dtype::float64},
    {dtype::float16, "float16", "HalfStorage", 2, dtype::float16},
    {dtype::bfloat16, "bfloat16", "BFloat16Storage", 2, dtype::bfloat16},
    {dtype::int64, "int64", "LongStorage", 8, dtype::int64},
    {dtype::int32, "int32", "IntStorage", 4, dtype::int32},
    {dtype::int16, "int16", "ShortStorage", 2, dtype::int16},
    {dtype::int8, "int8", "CharStorage", 1, dtype::int8},
    {dtype::uint8, "uint8", "ByteStorage", 1, dtype::uint8},
    {dtype::boolean, "bool", "BoolStorage", 1, dtype::boolean},
    {dtype::complex64, "complex64", "ComplexFloatStorage", 8, dtype::complex64},
    {dtype::complex128, "complex128", "ComplexDoubleStorage", 16,
     dtype::complex128},
    {dtype::uint16, "uint16", "", 2, dtype::int16},
    {dtype::uint32, "uint32", "", 4, dtype::int32},
    {dtype::uint64, "uint64", "", 8, dtype::int64},
    {dtype::float8_e4m3fn, "float8_e4m3fn", "", 1, dtype::uint8},
    {dtype::float8_e5m2, "float8_e5m2", "", 1, dtype::uint8},
  }};

const dtype_info* find_info(dtype x) {
  auto i = static_cast<size_t>(x);
  return i < dtype_table.size() ? &dtype_table[i] : nullptr;
}

} // namespace

std::string to_string(dtype x) {
  if (auto info = find_info(x))
    return info->name;
  return "<invalid dtype " + std::to_string(static_cast<int>(x)) + ">";
}

caf::expected<dtype> parse_dtype(const std::string& name) {
  auto str = name;
  if (str.rfind("torch.", 0) == 0)
    str = str.substr(6);
  for (const auto& info : dtype_table)
    if (str == info.name)
      return info.type;
  // torch's aliases
  static const std::pair<const char*, dtype> aliases[] = {
    {"float", dtype::float32},    {"double", dtype::float64},
    {"half", dtype::float16},     {"long", dtype::int64},
    {"int", dtype::int32},        {"short", dtype::int16},
    {"cfloat", dtype::complex64}, {"cdouble", dtype::complex128},
    {"boolean", dtype::boolean},
  };
  for (const auto& [alias, type] : aliases)
    if (str == alias)
      return type;
  return make_error(errc::unknown_dtype, "unknown dtype '" + name + "'");
}

size_t element_size(dtype x) {
  if (auto info = find_info(x))
    return info->size;
  return 0;
}

std::string storage_class_name(dtype x) {
  if (auto info = find_info(x))
    return info->storage;
  return {};
}

bool has_libtorch_type(dtype x) {
  return carrier_dtype(x) == x;
}

dtype carrier_dtype(dtype x) {
  if (auto info = find_info(x))
    return info->carrier;
  return x;
}

caf::expected<dtype> dtype_from_storage_class(const std::string& name) {
  for (const auto& info : dtype_table)
    if (!name.empty() && name == info.storage)
      return info.type;
  return make_error(errc::unknown_dtype,
                    "unknown storage class '" + name + "'");
}

std::string to_string(memory_format x) {
  switch (x) {
    case memory_format::contiguous: return "contiguous_format";
    case memory_format::channels_last: return "channels_last";
    case memory_format::preserve: return "preserve_format";
  }
  return "<invalid memory_format>";
}

std::string to_string(item_kind x) {
  switch (x) {
    case item_kind::tensor: return "tensor";
    case item_kind::bytes: return "bytes";
  }
  return "<invalid item_kind>";
}

int64_t numel(const shape_t& sizes) {
  int64_t n = 1;
  for (auto s : sizes)
    n *= s;
  return n;
}

std::string to_string(const shape_t& xs) {
  std::string out = "[";
  for (size_t i = 0; i < xs.size(); ++i) {
    if (i > 0)
      out += ", ";
    out += std::to_string(xs[i]);
  }
  out += "]";
  return out;
}

std::string to_string(const object_path& path) {
  std::string out = "(";
  for (size_t i = 0; i < path.size(); ++i) {
    if (i > 0)
      out += ", ";
    if (path[i].index)
      out += path[i].key;
    else
      out += "'" + path[i].key + "'";
  }
  out += path.size() == 1 ? ",)" : ")";
  return out;
}

std::string to_string(const metadata_index& x) {
  if (!x.has_offset)
    return x.fqn;
  return x.fqn + "@" + to_string(x.offset);
}

uint64_t tensor_bytes(const metadata& md) {
  uint64_t total = 0;
  for (const auto& [fqn, item] : md.state_dict_metadata) {
    if (item.kind != item_kind::tensor)
      continue;
    auto esize = element_size(item.tensor.properties.type);
    for (const auto& chunk : item.tensor.chunks)
      total += static_cast<uint64_t>(numel(chunk.sizes)) * esize;
  }
  return total;
}

} // namespace dcpp
