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

/// An index (fqn and chunk offset) by the fqn's number and a pointer to
/// the offset of the first item seen with it: grouping a million items
/// hashes small integers instead of comparing strings in an ordered map
/// (1024 ranks x 1000 tensors spent ~60 % of the global plan there).
struct index_key {
  uint32_t fqn;
  bool has_offset;
  const shape_t* offset;

  friend bool operator==(const index_key& x, const index_key& y) {
    return x.fqn == y.fqn && x.has_offset == y.has_offset
           && *x.offset == *y.offset;
  }
};

struct index_key_hash {
  size_t operator()(const index_key& k) const noexcept {
    // FNV-1a over the fqn number and the offsets.
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](uint64_t v) {
      h ^= v;
      h *= 1099511628211ull;
    };
    mix(k.fqn);
    mix(k.has_offset);
    for (auto v : *k.offset)
      mix(static_cast<uint64_t>(v));
    return static_cast<size_t>(h);
  }
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

/// All copies of one index.
struct group {
  /// (rank, position in that rank's plan), ascending rank.
  std::vector<std::pair<size_t, size_t>> holders;
};

} // namespace

caf::expected<std::vector<save_plan>>
dedup_save_plans(std::vector<save_plan> plans, bool to_lowest_rank) {
  std::unordered_map<std::string_view, fqn_signature> signatures;
  std::unordered_map<index_key, size_t, index_key_hash> group_of;
  std::vector<group> groups; // in first-seen order
  size_t total = 0;
  for (const auto& plan : plans)
    total += plan.items.size();
  group_of.reserve(total);
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
      index_key key{sig->second.id, item.index.has_offset, &item.index.offset};
      auto [git, added] = group_of.try_emplace(key, groups.size());
      if (added) {
        groups.emplace_back();
      } else {
        const auto& last = groups[git->second].holders.back();
        if (last.first == rank)
          return make_error(errc::conflicting_item,
                            to_string(item.index) + ": " + rank_str(rank)
                              + " lists it twice (positions "
                              + std::to_string(last.second) + " and "
                              + std::to_string(pos) + ")");
      }
      groups[git->second].holders.emplace_back(rank, pos);
    }
  }
  auto item_at = [&](std::pair<size_t, size_t> h) -> const write_item& {
    return plans[h.first].items[h.second];
  };
  std::vector<uint64_t> plan_bytes(plans.size(), 0);
  std::vector<std::vector<bool>> keep(plans.size());
  for (size_t rank = 0; rank < plans.size(); ++rank)
    keep[rank].resize(plans[rank].items.size(), false);
  std::vector<std::pair<size_t, size_t>> eligible;
  for (const auto& g : groups) {
    // Copies with elements win over empty ones; the rest must agree.
    eligible.clear();
    for (const auto& h : g.holders)
      if (has_elements(item_at(h)))
        eligible.push_back(h);
    if (eligible.empty())
      eligible = g.holders;
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
    auto chosen = eligible.front(); // lowest rank
    if (!to_lowest_rank)
      for (const auto& h : eligible)
        if (plan_bytes[h.first] < plan_bytes[chosen.first])
          chosen = h;
    plan_bytes[chosen.first] += item_at(chosen).byte_count();
    keep[chosen.first][chosen.second] = true;
  }
  for (size_t rank = 0; rank < plans.size(); ++rank) {
    auto& items = plans[rank].items;
    std::vector<write_item> kept;
    kept.reserve(items.size());
    for (size_t pos = 0; pos < items.size(); ++pos)
      if (keep[rank][pos])
        kept.push_back(std::move(items[pos]));
    items = std::move(kept);
  }
  return plans;
}

} // namespace dcpp
