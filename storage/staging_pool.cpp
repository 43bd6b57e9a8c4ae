#include "storage/staging_pool.hpp"

#include "core/error.hpp"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace dcpp {

namespace detail {

/// What the pool and its lent buffers share: a lent buffer comes back here
/// even after the `staging_pool` object is gone (then it is unmapped).
struct staging_pool_state {
  std::mutex mx;
  bool keep = true;
  /// The buffer kept for the next stage; empty (size 0) if none.
  host_region kept;
  staging_pool_stats stats;

  /// Counts `r` as held and no longer lent, then keeps it or unmaps it.
  void give_back(host_region r) {
    host_region drop; // unmapped after the lock is released
    std::lock_guard<std::mutex> guard{mx};
    stats.buffers_in_use -= 1;
    stats.bytes_in_use -= r.size();
    if (!keep) {
      drop = std::move(r);
    } else if (r.size() >= kept.size()) {
      drop = std::move(kept); // at most one buffer kept: the larger one
      kept = std::move(r);
    } else {
      drop = std::move(r);
    }
    forget(drop);
  }

  /// Counts `r` (about to be unmapped) as no longer held.
  void forget(const host_region& r) {
    if (r.size() == 0)
      return;
    stats.buffers_held -= 1;
    stats.bytes_held -= r.size();
  }
};

} // namespace detail

namespace {

using detail::staging_pool_state;

/// A buffer lent to one staged state dict, shared by its tensors' deleters:
/// the last tensor to go gives it back.
struct lease {
  host_region region;
  std::weak_ptr<staging_pool_state> pool;

  lease(host_region r, std::weak_ptr<staging_pool_state> p)
    : region(std::move(r)), pool(std::move(p)) {
    // nop
  }

  ~lease() {
    if (auto p = pool.lock())
      p->give_back(std::move(region));
    // else: the pool is gone, `region` unmaps itself
  }
};

/// Offsets inside the buffer: cache-line aligned, page aligned from 64 KiB
/// on (so that large tensors start on a page, as O_DIRECT writers like).
uint64_t alignment_of(uint64_t bytes) {
  return bytes < (uint64_t{64} << 10) ? 64 : 4096;
}

/// One tensor of the source state dict and where its copy goes.
struct placed {
  const at::Tensor* src;
  std::string key;
  uint64_t offset = 0;
  uint64_t bytes = 0;
};

uint64_t nbytes_of(const at::Tensor& t) {
  return static_cast<uint64_t>(t.numel()) * t.element_size();
}

/// Every tensor of `sd` with data, in the order `map_tensors` visits them.
std::vector<placed> place(const state_dict& sd, uint64_t& total) {
  std::vector<placed> out;
  for_each_tensor(sd, [&](const std::string& name, const at::Tensor& t) {
    if (!t.defined() || t.numel() == 0)
      return;
    auto bytes = nbytes_of(t);
    auto align = alignment_of(bytes);
    total = (total + align - 1) / align * align;
    out.push_back({&t, name, total, bytes});
    total += bytes;
  });
  return out;
}

/// A memcpy of part of a tensor.
struct segment {
  std::byte* dst;
  const std::byte* src;
  uint64_t len;
};

/// Whether `t`'s bytes are its values in row-major order on the host.
bool plain_host_tensor(const at::Tensor& t) {
  return t.device().is_cpu() && t.layout() == at::kStrided && t.is_contiguous()
         && !t.is_conj() && !t.is_neg();
}

/// Runs `segs` on `threads` threads (the caller's included), split into
/// equal byte ranges.
void copy_segments(const std::vector<segment>& segs, uint64_t total,
                   uint32_t threads) {
  if (threads <= 1) {
    for (const auto& s : segs)
      std::memcpy(s.dst, s.src, s.len);
    return;
  }
  auto share = (total + threads - 1) / threads;
  std::vector<std::vector<segment>> parts(threads);
  size_t part = 0;
  uint64_t room = share;
  for (auto s : segs) {
    while (s.len > 0) {
      auto n = std::min(s.len, room);
      parts[part].push_back({s.dst, s.src, n});
      s.dst += n;
      s.src += n;
      s.len -= n;
      room -= n;
      if (room == 0 && part + 1 < parts.size()) {
        ++part;
        room = share;
      }
    }
  }
  auto run = [](const std::vector<segment>& list) {
    for (const auto& s : list)
      std::memcpy(s.dst, s.src, s.len);
  };
  std::vector<std::thread> helpers;
  for (size_t i = 1; i < parts.size(); ++i) {
    try {
      helpers.emplace_back(run, std::cref(parts[i]));
    } catch (const std::system_error& e) {
      spdlog::debug("staging_pool: no copy thread ({}), copying inline",
                    e.what());
      run(parts[i]);
    }
  }
  run(parts[0]);
  for (auto& t : helpers)
    t.join();
}

/// The staged copy of `sd` (`map_tensors`: the same structure), each tensor
/// of `places` a view of `base`; the views with data go to `staged`, in
/// the order of `places`.
state_dict build(const state_dict& sd, const std::vector<placed>& places,
                 std::byte* base, const std::shared_ptr<lease>& owner,
                 std::vector<at::Tensor>& staged) {
  return map_tensors(sd, [&](const at::Tensor& t) -> at::Tensor {
    if (!t.defined())
      return t;
    auto opts = at::TensorOptions().dtype(t.scalar_type()).device(at::kCPU);
    if (t.numel() == 0)
      return at::empty(t.sizes(), opts);
    const auto& p = places[staged.size()];
    staged.push_back(at::from_blob(
      base + p.offset, t.sizes(), [owner](void*) {}, opts));
    return staged.back();
  });
}

} // namespace

staging_pool::staging_pool(staging_pool_options opts)
  : opts_(opts), state_(std::make_shared<staging_pool_state>()) {
  state_->keep = opts_.keep_memory;
}

staging_pool::~staging_pool() {
  release();
}

caf::expected<state_dict> staging_pool::stage(const state_dict& sd) {
  uint64_t total = 0;
  auto places = place(sd, total);
  // -- a buffer: the kept one if it fits, else a fresh one --------------------
  host_region region;
  if (total > 0) {
    host_region drop;
    {
      std::lock_guard<std::mutex> guard{state_->mx};
      auto& st = state_->stats;
      if (state_->kept.size() >= total) {
        region = std::move(state_->kept);
        st.reuses += 1;
      } else if (state_->kept.size() > 0) {
        drop = std::move(state_->kept);
        state_->forget(drop);
        st.rebuilds += 1;
      }
      if (region.size() > 0) {
        st.buffers_in_use += 1;
        st.bytes_in_use += region.size();
      }
    }
    // `drop` is unmapped before a larger buffer is mapped: peak memory
    // stays one staged copy.
    drop = host_region{};
    if (region.size() == 0) {
      auto fresh = host_region::map(total, true);
      if (!fresh)
        return make_error(errc::storage_failure, "staging "
                                                   + std::to_string(total)
                                                   + " bytes for async_save: "
                                                   + context_of(fresh.error()));
      region = std::move(*fresh);
      std::lock_guard<std::mutex> guard{state_->mx};
      auto& st = state_->stats;
      st.allocations += 1;
      st.buffers_held += 1;
      st.bytes_held += region.size();
      st.buffers_in_use += 1;
      st.bytes_in_use += region.size();
    }
  }
  auto base = region.data();
  auto owner = std::make_shared<lease>(std::move(region), state_);
  // -- views, then the copy ---------------------------------------------------
  std::vector<at::Tensor> staged;
  staged.reserve(places.size());
  state_dict out;
  try {
    out = build(sd, places, base, owner, staged);
  } catch (const std::exception& e) {
    auto at = staged.size();
    auto key = at < places.size() ? places[at].key : std::string{"?"};
    return make_error(errc::invalid_argument,
                      "staging " + key + " for async_save: " + e.what());
  }
  owner.reset(); // the tensors hold the lease now
  std::vector<segment> segs;
  uint64_t plain_bytes = 0;
  for (size_t i = 0; i < places.size(); ++i) {
    const auto& src = *places[i].src;
    if (!plain_host_tensor(src))
      continue;
    segs.push_back({base + places[i].offset,
                    static_cast<const std::byte*>(src.data_ptr()),
                    places[i].bytes});
    plain_bytes += places[i].bytes;
  }
  auto threads = plain_bytes >= opts_.parallel_copy_bytes
                   ? std::max<uint32_t>(opts_.copy_threads, 1)
                   : 1;
  copy_segments(segs, plain_bytes, threads);
  // Other devices, strides, conjugate or negative views: torch copies.
  for (size_t i = 0; i < places.size(); ++i) {
    const auto& src = *places[i].src;
    if (plain_host_tensor(src))
      continue;
    try {
      staged[i].copy_(src.detach());
    } catch (const std::exception& e) {
      return make_error(errc::invalid_argument,
                        "staging " + places[i].key
                          + " for async_save: " + e.what());
    }
  }
  return out;
}

void staging_pool::release() {
  host_region drop;
  std::lock_guard<std::mutex> guard{state_->mx};
  drop = std::move(state_->kept);
  state_->forget(drop);
}

staging_pool_stats staging_pool::stats() const {
  std::lock_guard<std::mutex> guard{state_->mx};
  return state_->stats;
}

} // namespace dcpp
