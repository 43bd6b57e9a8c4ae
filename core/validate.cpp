// Consistency checks of a checkpoint's metadata (DCP's
// `_validate_global_plan`), stricter than DCP: coverage is always checked
// (DCP only checks it with more than one plan), 0-d tensors are checked too
// (exactly one chunk), and every failure is an error naming the fqn instead
// of a logged warning.

#include "core/error.hpp"
#include "core/planner.hpp"

#include <algorithm>
#include <cstdint>
#include <numeric>

namespace dcpp {

namespace {

std::string describe_chunk(size_t pos, const chunk_storage_metadata& chunk) {
  return "chunk #" + std::to_string(pos) + " (offsets "
         + to_string(chunk.offsets) + ", sizes " + to_string(chunk.sizes) + ")";
}

/// Product of `xs` into `out`; false on overflow. All `xs` must be >= 0.
bool checked_volume(const shape_t& xs, int64_t& out) {
  int64_t n = 1;
  for (auto x : xs)
    if (__builtin_mul_overflow(n, x, &n))
      return false;
  out = n;
  return true;
}

/// True if the half-open boxes `x` and `y` (same rank) share an element.
/// Boxes without dimensions (0-d) always overlap; a box with an empty
/// dimension never does. Both boxes must be in bounds (no overflow).
bool overlaps(const chunk_storage_metadata& x,
              const chunk_storage_metadata& y) {
  for (size_t d = 0; d < x.offsets.size(); ++d) {
    if (x.offsets[d] >= y.offsets[d] + y.sizes[d])
      return false;
    if (y.offsets[d] >= x.offsets[d] + x.sizes[d])
      return false;
  }
  return true;
}

/// Picks the dimension along which the chunks at `idx` have the most
/// distinct offsets: sweeping along it compares the fewest pairs.
size_t pick_sweep_dim(const std::vector<chunk_storage_metadata>& chunks,
                      const std::vector<size_t>& idx, size_t ndim) {
  size_t best = 0;
  size_t best_count = 0;
  std::vector<int64_t> offs;
  offs.reserve(idx.size());
  for (size_t d = 0; d < ndim; ++d) {
    offs.clear();
    for (auto i : idx)
      offs.push_back(chunks[i].offsets[d]);
    std::sort(offs.begin(), offs.end());
    auto count = static_cast<size_t>(std::unique(offs.begin(), offs.end())
                                     - offs.begin());
    if (count > best_count) {
      best = d;
      best_count = count;
    }
  }
  return best;
}

caf::error validate_tensor(const std::string& fqn,
                           const tensor_storage_metadata& md) {
  const auto& size = md.size;
  const auto ndim = size.size();
  for (auto s : size)
    if (s < 0)
      return make_error(errc::corrupt_metadata,
                        fqn + ": invalid global size " + to_string(size));
  int64_t total = 0;
  if (!checked_volume(size, total))
    return make_error(errc::too_large, fqn + ": global size " + to_string(size)
                                         + " has more than 2^63 elements");
  // Bounds. Written so that nothing overflows: off <= size - sz.
  for (size_t j = 0; j < md.chunks.size(); ++j) {
    const auto& chunk = md.chunks[j];
    if (chunk.offsets.size() != ndim || chunk.sizes.size() != ndim)
      return make_error(errc::chunk_out_of_bounds,
                        fqn + ": " + describe_chunk(j, chunk)
                          + " does not have the tensor's rank "
                          + std::to_string(ndim));
    for (size_t d = 0; d < ndim; ++d) {
      auto off = chunk.offsets[d];
      auto sz = chunk.sizes[d];
      if (off < 0 || sz < 0 || sz > size[d] || off > size[d] - sz)
        return make_error(errc::chunk_out_of_bounds,
                          fqn + ": " + describe_chunk(j, chunk)
                            + " lies outside the tensor of size "
                            + to_string(size));
    }
  }
  // Overlap: only chunks with elements can overlap. Sort by offset along
  // one dimension and compare each chunk with those that start before it
  // ends there.
  std::vector<size_t> idx;
  for (size_t j = 0; j < md.chunks.size(); ++j)
    if (numel(md.chunks[j].sizes) > 0) // in bounds: cannot overflow
      idx.push_back(j);
  if (ndim == 0) {
    if (idx.size() > 1)
      return make_error(errc::overlapping_chunks, fqn + ": the 0-d tensor has "
                                                    + std::to_string(idx.size())
                                                    + " chunks");
  } else if (idx.size() > 1) {
    auto dim = pick_sweep_dim(md.chunks, idx, ndim);
    auto start = [&](size_t j) { return md.chunks[j].offsets[dim]; };
    auto end = [&](size_t j) {
      return md.chunks[j].offsets[dim] + md.chunks[j].sizes[dim];
    };
    std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
      return std::make_pair(start(a), a) < std::make_pair(start(b), b);
    });
    for (size_t k = 0; k < idx.size(); ++k) {
      for (size_t m = k + 1; m < idx.size() && start(idx[m]) < end(idx[k]);
           ++m) {
        auto a = std::min(idx[k], idx[m]);
        auto b = std::max(idx[k], idx[m]);
        if (overlaps(md.chunks[a], md.chunks[b]))
          return make_error(errc::overlapping_chunks,
                            fqn + ": " + describe_chunk(a, md.chunks[a])
                              + " overlaps " + describe_chunk(b, md.chunks[b]));
      }
    }
  }
  // Coverage: in bounds and disjoint, so the volumes add up to at most the
  // tensor's volume (no overflow), and to exactly that when they tile it.
  int64_t covered = 0;
  for (auto j : idx)
    covered += numel(md.chunks[j].sizes);
  if (covered != total)
    return make_error(errc::incomplete_chunks,
                      fqn + ": chunks cover " + std::to_string(covered) + " of "
                        + std::to_string(total) + " elements of size "
                        + to_string(size));
  return caf::none;
}

} // namespace

caf::error validate_metadata(const metadata& md) {
  for (const auto& [fqn, item] : md.state_dict_metadata) {
    if (item.kind != item_kind::tensor)
      continue;
    if (auto err = validate_tensor(fqn, item.tensor))
      return err;
  }
  return caf::none;
}

caf::expected<metadata>
commit_record(const metadata& md,
              const std::vector<std::vector<write_result>>& results) {
  metadata out = md;
  for (const auto& rank_results : results)
    for (const auto& r : rank_results)
      out.storage_data.insert_or_assign(r.index, r.storage_data);
  for (const auto& [fqn, item] : out.state_dict_metadata) {
    if (item.kind == item_kind::bytes) {
      if (out.storage_data.count(metadata_index{fqn}) == 0)
        return make_error(errc::missing_key,
                          "finish: no data was written for " + fqn);
      continue;
    }
    for (const auto& chunk : item.tensor.chunks) {
      metadata_index idx{fqn, chunk.offsets};
      if (out.storage_data.count(idx) == 0)
        return make_error(errc::missing_key,
                          "finish: no data was written for " + to_string(idx));
    }
  }
  return out;
}

} // namespace dcpp
