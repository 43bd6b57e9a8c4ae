// De-duplication of replicated items across ranks (DCP's
// `_dedup_save_plans.py`).
//
// As in DCP, items are visited in first-seen order (rank 0's plan first,
// each plan in item order) and each is given to the holder whose plan has
// the fewest bytes so far (ties: the lowest rank), or to the lowest rank.
// Every visited item adds its `byte_count()` to the chosen plan, also when
// only one rank holds it.
//
// Unlike DCP, which keeps whichever copy it picks, disagreeing copies are an
// error (`errc::conflicting_item`, naming the fqn and two ranks):
// - per fqn, across all indexes: bytes on one rank, a tensor on another;
//   different global sizes; different dtypes;
// - per index: different chunk sizes; the same index twice in one plan.
// One exception: a chunk without elements never conflicts with a chunk
// that has elements at the same offset, and loses to it. Empty local shards
// (e.g. 2 rows over 4 ranks) may carry the offset of a real chunk; they hold
// no data, so dropping them is always right.

#include "core/error.hpp"
#include "core/planner.hpp"

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <unordered_map>

namespace dcpp {

namespace {

std::string rank_str(size_t rank) {
  return "rank " + std::to_string(rank);
}

bool is_bytes(const write_item& x) {
  return x.type == write_item_type::bytes;
}

bool has_elements(const write_item& x) {
  return !is_bytes(x) && numel(x.tensor_data.chunk.sizes) != 0;
}

/// What every item of one fqn must agree on, and who said it first.
struct fqn_signature {
  size_t rank;
  const write_item* item;
  /// Dense number of the fqn (first-seen order), for hashing indexes.
  uint32_t id;
};

/// The groups of equal indexes (fqn and chunk offset), in an open-addressing
/// table: grouping a million items (1024 ranks x 1000 tensors) is bound by
/// cache misses, and a node-based map paid three per item (the bucket, the
/// node, and the first item's offset vector for the compare). A 32-byte
/// slot holds a hash, the fqn's number and up to two offsets, so a lookup
/// touches one slot besides the item's own offsets; longer offsets are
/// compared with the group's first one. Grows at half full.
class index_groups {
public:
  static constexpr uint32_t inline_dims = 2;

  /// The group of (fqn, has_offset, offset), numbered in order of
  /// appearance; `added` tells whether it is new.
  uint32_t find_or_add(uint32_t fqn, bool has_offset, const shape_t& offset,
                       bool& added) {
    if (2 * (firsts_.size() + 1) > slots_.size())
      grow();
    auto h = hash(fqn, has_offset, offset);
    auto dims = static_cast<uint16_t>(std::min<size_t>(offset.size(), 0xFFFF));
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      auto& s = slots_[i];
      if (s.group == empty) {
        s.hash = h;
        s.fqn = fqn;
        s.dims = dims;
        s.has_offset = has_offset;
        for (size_t d = 0; d < std::min<size_t>(dims, inline_dims); ++d)
          s.offset[d] = offset[d];
        s.group = static_cast<uint32_t>(firsts_.size());
        firsts_.push_back(&offset);
        added = true;
        return s.group;
      }
      if (s.hash == h && s.fqn == fqn && s.dims == dims
          && s.has_offset == has_offset && same_offset(s, offset)) {
        added = false;
        return s.group;
      }
    }
  }

private:
  static constexpr uint32_t empty = UINT32_MAX;

  struct slot {
    uint32_t hash = 0;
    uint32_t group = empty;
    uint32_t fqn = 0;
    uint16_t dims = 0;
    bool has_offset = false;
    int64_t offset[inline_dims] = {};
  };

  bool same_offset(const slot& s, const shape_t& offset) const {
    if (offset.size() > inline_dims)
      return *firsts_[s.group] == offset;
    for (size_t d = 0; d < offset.size(); ++d)
      if (s.offset[d] != offset[d])
        return false;
    return true;
  }

  void grow() {
    std::vector<slot> old = std::move(slots_);
    size_t cap = std::max<size_t>(1024, old.size() * 2);
    slots_.assign(cap, slot{});
    mask_ = cap - 1;
    for (const auto& s : old) {
      if (s.group == empty)
        continue;
      auto i = s.hash & mask_;
      while (slots_[i].group != empty)
        i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }

  static uint32_t hash(uint32_t fqn, bool has_offset, const shape_t& offset) {
    // FNV-1a over the fqn number and the offsets, then a final mix so that
    // the low bits (the slot) depend on every input bit.
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](uint64_t v) {
      h ^= v;
      h *= 1099511628211ull;
    };
    mix(fqn);
    mix(has_offset);
    for (auto v : offset)
      mix(static_cast<uint64_t>(v));
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return static_cast<uint32_t>(h);
  }

  std::vector<slot> slots_;
  size_t mask_ = 0;
  /// Per group: the offset of its first item.
  std::vector<const shape_t*> firsts_;
};

caf::error check_same_fqn(const fqn_signature& first, size_t rank,
                          const write_item& item) {
  const auto& fqn = item.index.fqn;
  const auto& x = *first.item;
  auto both = [&](const std::string& a, const std::string& b) {
    return ": " + rank_str(first.rank) + " has " + a + ", " + rank_str(rank)
           + " has " + b;
  };
  auto kind_of = [](const write_item& w) {
    return is_bytes(w) ? std::string{"bytes"} : std::string{"a tensor"};
  };
  if (is_bytes(x) != is_bytes(item))
    return make_error(errc::conflicting_item,
                      fqn + both(kind_of(x), kind_of(item)));
  if (is_bytes(x))
    return caf::none;
  if (x.tensor_data.size != item.tensor_data.size)
    return make_error(errc::conflicting_item,
                      fqn
                        + both("global size " + to_string(x.tensor_data.size),
                               to_string(item.tensor_data.size)));
  auto xt = x.tensor_data.properties.type;
  auto yt = item.tensor_data.properties.type;
  if (xt != yt)
    return make_error(errc::conflicting_item,
                      fqn + both("dtype " + to_string(xt), to_string(yt)));
  return caf::none;
}

} // namespace

caf::expected<std::vector<save_plan>>
dedup_save_plans(std::vector<save_plan> plans, bool to_lowest_rank) {
  // Items are numbered across plans: rank r's item p is base[r] + p. The
  // holders of each group sit in one flat array (by group, then rank), not
  // in a vector per group: at 1024 ranks x 1000 tensors there are half a
  // million groups.
  std::vector<size_t> base(plans.size() + 1, 0);
  for (size_t rank = 0; rank < plans.size(); ++rank)
    base[rank + 1] = base[rank] + plans[rank].items.size();
  const size_t total = base.back();
  std::unordered_map<std::string_view, fqn_signature> signatures;
  index_groups group_of;
  std::vector<uint32_t> group_of_item(total);
  std::vector<uint32_t> holder_count; // per group
  std::vector<size_t> last_holder;    // per group: item number
  for (size_t rank = 0; rank < plans.size(); ++rank) {
    const auto& items = plans[rank].items;
    for (size_t pos = 0; pos < items.size(); ++pos) {
      const auto& item = items[pos];
      auto next_id = static_cast<uint32_t>(signatures.size());
      auto [sig, fresh] = signatures.try_emplace(
        item.index.fqn, fqn_signature{rank, &item, next_id});
      if (!fresh)
        if (auto err = check_same_fqn(sig->second, rank, item))
          return err;
      bool added = false;
      auto g = group_of.find_or_add(sig->second.id, item.index.has_offset,
                                    item.index.offset, added);
      if (added) {
        holder_count.push_back(0);
        last_holder.push_back(0);
      } else {
        auto last = last_holder[g];
        if (last >= base[rank]) // the same rank holds it already
          return make_error(errc::conflicting_item,
                            to_string(item.index) + ": " + rank_str(rank)
                              + " lists it twice (positions "
                              + std::to_string(last - base[rank]) + " and "
                              + std::to_string(pos) + ")");
      }
      ++holder_count[g];
      last_holder[g] = base[rank] + pos;
      group_of_item[base[rank] + pos] = g;
    }
  }
  const size_t ngroups = holder_count.size();
  // first[g]: where group g's holders start in `holders`.
  std::vector<size_t> first(ngroups + 1, 0);
  for (size_t g = 0; g < ngroups; ++g)
    first[g + 1] = first[g] + holder_count[g];
  std::vector<std::pair<uint32_t, uint32_t>> holders(total); // (rank, pos)
  {
    std::vector<size_t> fill(first.begin(), first.end() - 1);
    for (size_t rank = 0; rank < plans.size(); ++rank)
      for (size_t pos = 0; pos < plans[rank].items.size(); ++pos)
        holders[fill[group_of_item[base[rank] + pos]]++]
          = {static_cast<uint32_t>(rank), static_cast<uint32_t>(pos)};
  }
  auto item_at = [&](std::pair<uint32_t, uint32_t> h) -> const write_item& {
    return plans[h.first].items[h.second];
  };
  std::vector<uint64_t> plan_bytes(plans.size(), 0);
  std::vector<char> keep(total, 0);
  std::vector<std::pair<uint32_t, uint32_t>> eligible;
  for (size_t g = 0; g < ngroups; ++g) {
    auto begin = holders.begin() + static_cast<std::ptrdiff_t>(first[g]);
    auto end = holders.begin() + static_cast<std::ptrdiff_t>(first[g + 1]);
    auto chosen = *begin; // the lowest rank
    if (end - begin > 1) {
      // Copies with elements win over empty ones; the rest must agree.
      eligible.clear();
      for (auto h = begin; h != end; ++h)
        if (has_elements(item_at(*h)))
          eligible.push_back(*h);
      if (eligible.empty())
        eligible.assign(begin, end);
      const auto& ref = item_at(eligible.front());
      for (size_t k = 1; k < eligible.size(); ++k) {
        const auto& other = item_at(eligible[k]);
        if (has_elements(ref)
            && ref.tensor_data.chunk.sizes != other.tensor_data.chunk.sizes)
          return make_error(
            errc::conflicting_item,
            to_string(ref.index) + ": " + rank_str(eligible.front().first)
              + " has chunk sizes " + to_string(ref.tensor_data.chunk.sizes)
              + ", " + rank_str(eligible[k].first) + " has "
              + to_string(other.tensor_data.chunk.sizes));
      }
      chosen = eligible.front();
      if (!to_lowest_rank)
        for (const auto& h : eligible)
          if (plan_bytes[h.first] < plan_bytes[chosen.first])
            chosen = h;
    }
    plan_bytes[chosen.first] += item_at(chosen).byte_count();
    keep[base[chosen.first] + chosen.second] = 1;
  }
  // Drop the others in place.
  for (size_t rank = 0; rank < plans.size(); ++rank) {
    auto& items = plans[rank].items;
    size_t out = 0;
    for (size_t pos = 0; pos < items.size(); ++pos)
      if (keep[base[rank] + pos]) {
        if (out != pos)
          items[out] = std::move(items[pos]);
        ++out;
      }
    items.erase(items.begin() + static_cast<std::ptrdiff_t>(out), items.end());
  }
  return plans;
}

} // namespace dcpp
