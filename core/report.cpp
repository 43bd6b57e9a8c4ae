#include "core/report.hpp"

#include <algorithm>
#include <map>
#include <set>
#include <string>

namespace dcpp {

void merge(op_report& into, const rank_report& part) {
  into.bytes += part.bytes;
  into.files += part.files;
  into.ranks += 1;
  into.plan_us = std::max(into.plan_us, part.plan_us);
  into.data_us = std::max(into.data_us, part.data_us);
}

uint64_t planned_bytes(const write_item& item) {
  if (item.type == write_item_type::bytes)
    return item.bytes_size;
  uint64_t n = element_size(item.tensor_data.properties.type);
  for (auto s : item.tensor_data.chunk.sizes)
    n *= static_cast<uint64_t>(std::max<int64_t>(s, 0));
  return n;
}

uint64_t planned_bytes(const save_plan& plan) {
  uint64_t n = 0;
  for (const auto& item : plan.items)
    n += planned_bytes(item);
  return n;
}

uint64_t planned_bytes(const load_plan& plan, const metadata& md) {
  return to_read(plan, md).bytes;
}

rank_report written(const std::vector<write_result>& results) {
  std::map<std::string, uint64_t> file_end;
  for (const auto& res : results) {
    const auto& info = res.storage_data;
    if (info.relative_path.empty())
      continue;
    auto& end = file_end[info.relative_path];
    end = std::max(end, info.offset + info.length);
  }
  rank_report out;
  out.files = file_end.size();
  for (const auto& [path, end] : file_end)
    out.bytes += end;
  return out;
}

rank_report to_read(const load_plan& plan, const metadata& md) {
  std::set<metadata_index> items;
  std::set<std::string> files;
  rank_report out;
  for (const auto& item : plan.items) {
    auto i = md.storage_data.find(item.storage_index);
    if (i == md.storage_data.end() || !items.insert(i->first).second)
      continue;
    out.bytes += i->second.length;
    files.insert(i->second.relative_path);
  }
  out.files = files.size();
  return out;
}

} // namespace dcpp
