#include "core/plan.hpp"

#include <algorithm>
#include <limits>

namespace dcpp {

std::string to_string(write_item_type x) {
  switch (x) {
    case write_item_type::tensor: return "tensor";
    case write_item_type::shard: return "shard";
    case write_item_type::bytes: return "bytes";
  }
  return "<invalid write_item_type>";
}

std::string to_string(load_item_type x) {
  switch (x) {
    case load_item_type::tensor: return "tensor";
    case load_item_type::bytes: return "bytes";
  }
  return "<invalid load_item_type>";
}

uint64_t write_item::byte_count() const {
  if (type == write_item_type::bytes)
    return std::max<uint64_t>(bytes_size, 1);
  // Saturates instead of overflowing on absurd sizes; negative sizes count
  // as empty. Only used for load balancing, so saturation is harmless.
  constexpr auto max = std::numeric_limits<uint64_t>::max();
  uint64_t n = element_size(tensor_data.properties.type);
  for (auto s : tensor_data.chunk.sizes) {
    if (s <= 0)
      return 1;
    auto u = static_cast<uint64_t>(s);
    n = n > max / u ? max : n * u;
  }
  return std::max<uint64_t>(n, 1);
}

} // namespace dcpp
