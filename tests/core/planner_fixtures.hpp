#pragma once

// Helpers for the planner tests: build the state dict views of N simulated
// ranks, run the pure planning functions once per rank (as DCP's
// test_planner.py does), and check read items against the boxes they fill.

#include "core/error.hpp"
#include "core/planner.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dcpp::test {

// -- building views -----------------------------------------------------------

inline chunk_storage_metadata box(shape_t offsets, shape_t sizes) {
  return chunk_storage_metadata{std::move(offsets), std::move(sizes)};
}

/// A plain (replicated) tensor: one chunk covering it.
inline item_view plain(std::string fqn, shape_t size,
                       dtype type = dtype::float32) {
  item_view x;
  x.fqn = std::move(fqn);
  x.kind = item_kind::tensor;
  x.properties.type = type;
  x.global_size = size;
  x.local_chunks.push_back(box(shape_t(size.size(), 0), size));
  return x;
}

/// A sharded tensor holding `chunks` locally.
inline item_view sharded(std::string fqn, shape_t size,
                         std::vector<chunk_storage_metadata> chunks,
                         dtype type = dtype::float32) {
  item_view x;
  x.fqn = std::move(fqn);
  x.kind = item_kind::tensor;
  x.properties.type = type;
  x.global_size = std::move(size);
  x.local_chunks = std::move(chunks);
  x.sharded = true;
  return x;
}

inline item_view bytes(std::string fqn, uint64_t size = 0) {
  item_view x;
  x.fqn = std::move(fqn);
  x.kind = item_kind::bytes;
  x.bytes_size = size;
  return x;
}

/// Sizes of `n` parts of `total`: `balanced` gives 4,3,3 for 10 over 3
/// (numpy's array_split); otherwise torch.chunk's ceil split, 4,4,2 (which
/// may leave trailing parts empty, e.g. 2,2,0 for 4 over 3).
inline std::vector<int64_t> split_sizes(int64_t total, int64_t n,
                                        bool balanced) {
  std::vector<int64_t> out;
  if (balanced) {
    for (int64_t i = 0; i < n; ++i)
      out.push_back(total / n + (i < total % n ? 1 : 0));
  } else {
    auto step = (total + n - 1) / n;
    auto left = total;
    for (int64_t i = 0; i < n; ++i) {
      auto s = std::min(step, left);
      out.push_back(s);
      left -= s;
    }
  }
  return out;
}

/// One chunk per rank: `size` split into `n` parts along `dim`.
inline std::vector<chunk_storage_metadata>
split_along(const shape_t& size, size_t dim, int64_t n, bool balanced) {
  std::vector<chunk_storage_metadata> out;
  int64_t off = 0;
  for (auto s : split_sizes(size[dim], n, balanced)) {
    auto c = box(shape_t(size.size(), 0), size);
    c.offsets[dim] = off;
    c.sizes[dim] = s;
    out.push_back(c);
    off += s;
  }
  return out;
}

/// Views of `chunks.size()` ranks, rank r holding `chunks[r]` of `fqn`.
inline std::vector<state_dict_view>
one_chunk_per_rank(const std::string& fqn, const shape_t& size,
                   const std::vector<chunk_storage_metadata>& chunks,
                   dtype type = dtype::float32) {
  std::vector<state_dict_view> out(chunks.size());
  for (size_t r = 0; r < chunks.size(); ++r)
    out[r].items.push_back(sharded(fqn, size, {chunks[r]}, type));
  return out;
}

// -- running simulated ranks --------------------------------------------------

inline std::vector<save_plan>
local_save_plans(const std::vector<state_dict_view>& views) {
  std::vector<save_plan> out;
  for (const auto& v : views)
    out.push_back(create_default_local_save_plan(v));
  return out;
}

/// Local plans of every rank -> global plan; fails the test on error.
inline global_save_plan
global_plan_of(const std::vector<state_dict_view>& views,
               bool to_lowest_rank = false) {
  auto res = create_default_global_save_plan(local_save_plans(views),
                                             to_lowest_rank);
  if (!res)
    FAIL("global save planning failed: " << describe(res.error()));
  return std::move(*res);
}

/// Metadata of a checkpoint saved by `views`.
inline metadata saved_metadata(const std::vector<state_dict_view>& views) {
  return global_plan_of(views).md;
}

inline load_plan load_plan_of(const state_dict_view& request,
                              const metadata& md, load_options opts = {}) {
  auto res = create_default_local_load_plan(request, md, opts);
  if (!res)
    FAIL("load planning failed: " << describe(res.error()));
  return std::move(*res);
}

// -- checking read items ------------------------------------------------------

inline bool contains(const shape_t& offsets, const shape_t& lengths,
                     const shape_t& sizes) {
  for (size_t d = 0; d < sizes.size(); ++d)
    if (offsets[d] < 0 || lengths[d] < 0 || offsets[d] + lengths[d] > sizes[d])
      return false;
  return true;
}

inline bool boxes_overlap(const shape_t& o1, const shape_t& l1,
                          const shape_t& o2, const shape_t& l2) {
  for (size_t d = 0; d < o1.size(); ++d)
    if (o1[d] >= o2[d] + l2[d] || o2[d] >= o1[d] + l1[d])
      return false;
  return true;
}

/// Checks that `items` (all for `fqn`) exactly tile every destination in
/// `local` and read inside the saved chunks of `md`: each storage box lies
/// inside its chunk, each dest box inside its destination, the index hints
/// point at the right chunks, no two items overlap in one destination and
/// the volumes add up.
inline void check_tiling(const std::string& fqn,
                         const tensor_storage_metadata& md,
                         const std::vector<chunk_storage_metadata>& local,
                         const std::vector<read_item>& items) {
  std::vector<std::vector<const read_item*>> per_dest(local.size());
  for (const auto& r : items) {
    INFO("item " << to_string(r.dest_index) << " <- "
                 << to_string(r.storage_index));
    REQUIRE(r.type == load_item_type::tensor);
    REQUIRE(r.dest_index.fqn == fqn);
    REQUIRE(r.storage_index.fqn == fqn);
    REQUIRE(r.dest_index.index >= 0);
    REQUIRE(r.dest_index.index < static_cast<int64_t>(local.size()));
    REQUIRE(r.storage_index.index >= 0);
    REQUIRE(r.storage_index.index < static_cast<int64_t>(md.chunks.size()));
    const auto& dest = local[static_cast<size_t>(r.dest_index.index)];
    const auto& src = md.chunks[static_cast<size_t>(r.storage_index.index)];
    CHECK(r.dest_index.offset == dest.offsets);
    CHECK(r.storage_index.offset == src.offsets);
    REQUIRE(r.lengths.size() == md.size.size());
    CHECK(numel(r.lengths) > 0);
    CHECK(contains(r.storage_offsets, r.lengths, src.sizes));
    CHECK(contains(r.dest_offsets, r.lengths, dest.sizes));
    // Both boxes name the same global elements.
    for (size_t d = 0; d < md.size.size(); ++d)
      CHECK(src.offsets[d] + r.storage_offsets[d]
            == dest.offsets[d] + r.dest_offsets[d]);
    per_dest[static_cast<size_t>(r.dest_index.index)].push_back(&r);
  }
  for (size_t i = 0; i < local.size(); ++i) {
    INFO("destination #" << i << " at " << to_string(local[i].offsets));
    int64_t volume = 0;
    const auto& xs = per_dest[i];
    for (size_t a = 0; a < xs.size(); ++a) {
      volume += numel(xs[a]->lengths);
      for (size_t b = a + 1; b < xs.size(); ++b)
        CHECK_FALSE(boxes_overlap(xs[a]->dest_offsets, xs[a]->lengths,
                                  xs[b]->dest_offsets, xs[b]->lengths));
    }
    CHECK(volume == numel(local[i].sizes));
  }
}

// -- simulated load -----------------------------------------------------------

/// Row-major strides of `sizes`.
inline shape_t strides_of(const shape_t& sizes) {
  shape_t st(sizes.size(), 1);
  for (size_t d = sizes.size(); d-- > 1;)
    st[d - 1] = st[d] * sizes[d];
  return st;
}

/// Calls `fn(idx)` for every multi-index inside `lengths` (row-major).
template <class F>
void for_each_index(const shape_t& lengths, F fn) {
  if (numel(lengths) == 0)
    return;
  shape_t idx(lengths.size(), 0);
  for (;;) {
    fn(idx);
    size_t d = lengths.size();
    for (; d > 0; --d) {
      if (++idx[d - 1] < lengths[d - 1])
        break;
      idx[d - 1] = 0;
    }
    if (d == 0)
      return;
  }
}

inline int64_t flat(const shape_t& idx, const shape_t& offsets,
                    const shape_t& strides) {
  int64_t n = 0;
  for (size_t d = 0; d < idx.size(); ++d)
    n += (offsets[d] + idx[d]) * strides[d];
  return n;
}

/// The buffer of a chunk of a tensor whose element at global flat index k
/// has value k.
inline std::vector<float> fill_chunk(const shape_t& global,
                                     const chunk_storage_metadata& c) {
  std::vector<float> out;
  out.reserve(static_cast<size_t>(numel(c.sizes)));
  auto gs = strides_of(global);
  for_each_index(c.sizes, [&](const shape_t& idx) {
    out.push_back(static_cast<float>(flat(idx, c.offsets, gs)));
  });
  return out;
}

/// Saves `fqn` (shape `global`) as the chunks recorded in `md`, then loads it
/// into `dest` boxes by applying `items` like a storage reader does (find the
/// saved chunk by (fqn, offset), copy the box). Checks every destination
/// element equals its global flat index.
inline void simulate_load(const std::string& fqn, const metadata& md,
                          const std::vector<chunk_storage_metadata>& dest,
                          const std::vector<read_item>& items) {
  const auto& tmd = md.state_dict_metadata.at(fqn).tensor;
  const auto& global = tmd.size;
  std::map<metadata_index, std::pair<size_t, std::vector<float>>> storage;
  for (size_t j = 0; j < tmd.chunks.size(); ++j)
    storage.emplace(metadata_index{fqn, tmd.chunks[j].offsets},
                    std::make_pair(j, fill_chunk(global, tmd.chunks[j])));
  std::map<metadata_index, std::vector<float>> buffers;
  for (const auto& d : dest)
    buffers[metadata_index{fqn, d.offsets}].assign(
      static_cast<size_t>(numel(d.sizes)), -1.0f);
  for (const auto& r : items) {
    auto src = storage.find(r.storage_index);
    REQUIRE(src != storage.end());
    CHECK(static_cast<int64_t>(src->second.first) == r.storage_index.index);
    const auto& schunk = tmd.chunks[src->second.first];
    auto ddest = buffers.find(r.dest_index);
    REQUIRE(ddest != buffers.end());
    const auto& dchunk = dest[static_cast<size_t>(r.dest_index.index)];
    auto ss = strides_of(schunk.sizes);
    auto ds = strides_of(dchunk.sizes);
    for_each_index(r.lengths, [&](const shape_t& idx) {
      auto s = flat(idx, r.storage_offsets, ss);
      auto t = flat(idx, r.dest_offsets, ds);
      ddest->second[static_cast<size_t>(t)]
        = src->second.second[static_cast<size_t>(s)];
    });
  }
  for (const auto& d : dest) {
    INFO("destination at " << to_string(d.offsets) << " sizes "
                           << to_string(d.sizes));
    CHECK(buffers[metadata_index{fqn, d.offsets}] == fill_chunk(global, d));
  }
}

/// Checks `err` has code `code` and that its context names `fqn`.
inline void check_error(const caf::error& err, errc code,
                        const std::string& fqn) {
  INFO("error: " << describe(err));
  CHECK(code_of(err) == code);
  CHECK(context_of(err).find(fqn) != std::string::npos);
}

} // namespace dcpp::test
