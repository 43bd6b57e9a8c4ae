// Resharding: which boxes of which saved chunks fill which local boxes
// (DCP's `create_read_items_for_chunk_list` and `resharding.py`).
//
// DCP 1.13 compares every local chunk with every saved chunk. Here the saved
// chunks are sorted by their offset along the tensor's largest dimension
// (a `chunk_sweep`, built once per metadata by `load_index`); a prefix
// maximum of their ends finds, by binary search, the first chunk that can
// reach a local chunk, and the scan stops at the first chunk that starts
// after it. The items come out in the same order as DCP's quadratic
// loop (local chunk, then saved chunk position), so plans are identical.

#include "core/planner.hpp"

#include <algorithm>
#include <cstdint>
#include <limits>

namespace dcpp {

namespace {

/// `off + size`, saturated (sizes of corrupt metadata must not overflow).
int64_t end_of(int64_t off, int64_t size) {
  int64_t result = 0;
  if (__builtin_add_overflow(off, size, &result))
    return std::numeric_limits<int64_t>::max();
  return result;
}

/// True if `chunk` has `ndim` dimensions and no empty (or negative) one:
/// only such chunks can overlap anything.
bool usable(const chunk_storage_metadata& chunk, size_t ndim) {
  if (chunk.offsets.size() != ndim || chunk.sizes.size() != ndim)
    return false;
  return std::all_of(chunk.sizes.begin(), chunk.sizes.end(),
                     [](int64_t s) { return s > 0; });
}

/// True if the half-open boxes share an element (both `usable`).
bool overlaps(const chunk_storage_metadata& x,
              const chunk_storage_metadata& y) {
  for (size_t d = 0; d < x.offsets.size(); ++d) {
    if (x.offsets[d] >= end_of(y.offsets[d], y.sizes[d]))
      return false;
    if (y.offsets[d] >= end_of(x.offsets[d], x.sizes[d]))
      return false;
  }
  return true;
}

/// One read item for the overlap of `local` (position `i`) and `saved`
/// (position `j`), per dimension as in DCP's
/// `_shards_get_overlap_region_wrt_saved_tensor`.
read_item make_item(const std::string& fqn, const chunk_storage_metadata& local,
                    size_t i, const chunk_storage_metadata& saved, size_t j) {
  read_item item;
  item.type = load_item_type::tensor;
  item.dest_index = metadata_index{fqn, local.offsets, static_cast<int64_t>(i)};
  item.storage_index = metadata_index{fqn, saved.offsets,
                                      static_cast<int64_t>(j)};
  auto ndim = local.offsets.size();
  item.dest_offsets.resize(ndim);
  item.storage_offsets.resize(ndim);
  item.lengths.resize(ndim);
  for (size_t d = 0; d < ndim; ++d) {
    auto lo = std::max(local.offsets[d], saved.offsets[d]);
    auto hi = std::min(end_of(local.offsets[d], local.sizes[d]),
                       end_of(saved.offsets[d], saved.sizes[d]));
    item.lengths[d] = hi - lo;
    item.storage_offsets[d] = lo - saved.offsets[d];
    item.dest_offsets[d] = lo - local.offsets[d];
  }
  return item;
}

} // namespace

chunk_sweep make_chunk_sweep(const tensor_storage_metadata& saved) {
  chunk_sweep sweep;
  const auto ndim = saved.size.size();
  const auto& chunks = saved.chunks;
  for (size_t j = 0; j < chunks.size(); ++j)
    if (chunks[j].offsets.size() != ndim || chunks[j].sizes.size() != ndim) {
      sweep.bad_chunk = static_cast<int64_t>(j);
      break;
    }
  if (ndim == 0) {
    for (size_t j = 0; j < chunks.size(); ++j)
      if (usable(chunks[j], 0))
        sweep.order.push_back(j);
    return sweep;
  }
  sweep.dim = static_cast<size_t>(
    std::max_element(saved.size.begin(), saved.size.end())
    - saved.size.begin());
  const auto dim = sweep.dim;
  auto& order = sweep.order;
  order.reserve(chunks.size());
  for (size_t j = 0; j < chunks.size(); ++j)
    if (usable(chunks[j], ndim))
      order.push_back(j);
  auto start = [&](size_t j) { return chunks[j].offsets[dim]; };
  auto before = [&](size_t a, size_t b) {
    return std::make_pair(start(a), a) < std::make_pair(start(b), b);
  };
  // Chunks saved in rank order are usually sorted already.
  if (!std::is_sorted(order.begin(), order.end(), before))
    std::sort(order.begin(), order.end(), before);
  sweep.max_end.resize(order.size());
  for (size_t k = 0; k < order.size(); ++k) {
    auto e = end_of(start(order[k]), chunks[order[k]].sizes[dim]);
    sweep.max_end[k] = k == 0 ? e : std::max(sweep.max_end[k - 1], e);
  }
  return sweep;
}

load_index::load_index(const metadata& md) {
  sweeps_.reserve(md.state_dict_metadata.size());
  for (const auto& [fqn, item] : md.state_dict_metadata)
    if (item.kind == item_kind::tensor)
      sweeps_.emplace(fqn, make_chunk_sweep(item.tensor));
}

const chunk_sweep* load_index::find(const std::string& fqn) const {
  auto i = sweeps_.find(fqn);
  return i == sweeps_.end() ? nullptr : &i->second;
}

std::vector<read_item>
create_read_items(const std::string& fqn, const tensor_storage_metadata& saved,
                  const std::vector<chunk_storage_metadata>& local_chunks) {
  return create_read_items(fqn, saved, make_chunk_sweep(saved), local_chunks);
}

std::vector<read_item>
create_read_items(const std::string& fqn, const tensor_storage_metadata& saved,
                  const chunk_sweep& sweep,
                  const std::vector<chunk_storage_metadata>& local_chunks) {
  std::vector<read_item> result;
  const auto ndim = saved.size.size();
  const auto& chunks = saved.chunks;
  const auto& order = sweep.order;
  if (ndim == 0) {
    // 0-d: every pair "overlaps" (DCP), nothing to sweep.
    for (size_t i = 0; i < local_chunks.size(); ++i)
      if (usable(local_chunks[i], 0))
        for (auto j : order)
          result.push_back(make_item(fqn, local_chunks[i], i, chunks[j], j));
    return result;
  }
  const auto dim = sweep.dim;
  auto start = [&](size_t j) { return chunks[j].offsets[dim]; };
  std::vector<size_t> hits;
  for (size_t i = 0; i < local_chunks.size(); ++i) {
    const auto& local = local_chunks[i];
    if (!usable(local, ndim))
      continue;
    auto lo = local.offsets[dim];
    auto hi = end_of(lo, local.sizes[dim]);
    // Chunks before `first` all end at or before `lo`.
    auto first = std::upper_bound(sweep.max_end.begin(), sweep.max_end.end(),
                                  lo)
                 - sweep.max_end.begin();
    hits.clear();
    for (auto k = static_cast<size_t>(first);
         k < order.size() && start(order[k]) < hi; ++k)
      if (overlaps(local, chunks[order[k]]))
        hits.push_back(order[k]);
    std::sort(hits.begin(), hits.end());
    for (auto j : hits)
      result.push_back(make_item(fqn, local, i, chunks[j], j));
  }
  return result;
}

} // namespace dcpp
