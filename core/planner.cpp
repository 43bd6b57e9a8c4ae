// The default save and load planning rules (DCP's `default_planner.py`),
// the default planner classes and the flatten-mapping codec. De-duplication
// lives in dedup.cpp, read-item creation in resharding.cpp, metadata checks
// in validate.cpp.

#include "core/planner.hpp"

#include "core/error.hpp"

#include <cstdint>
#include <memory>
#include <mutex>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace dcpp {

namespace {

/// The chunks an item stands for. A plain tensor whose view lists no chunk
/// stands for one chunk covering it (offsets 0, sizes = global size).
std::vector<chunk_storage_metadata> chunks_of(const item_view& item) {
  if (item.sharded || !item.local_chunks.empty())
    return item.local_chunks;
  chunk_storage_metadata whole;
  whole.offsets.assign(item.global_size.size(), 0);
  whole.sizes = item.global_size;
  return {std::move(whole)};
}

} // namespace

// -- save planning ------------------------------------------------------------

save_plan create_default_local_save_plan(const state_dict_view& view) {
  save_plan plan;
  for (const auto& item : view.items) {
    if (item.kind == item_kind::bytes) {
      write_item w;
      w.index = metadata_index{item.fqn};
      w.type = write_item_type::bytes;
      w.bytes_size = item.bytes_size;
      plan.items.push_back(std::move(w));
      continue;
    }
    for (auto& chunk : chunks_of(item)) {
      write_item w;
      w.index = metadata_index{item.fqn, chunk.offsets};
      w.type = item.sharded ? write_item_type::shard : write_item_type::tensor;
      w.tensor_data.chunk = std::move(chunk);
      w.tensor_data.properties = item.properties;
      w.tensor_data.size = item.global_size;
      plan.items.push_back(std::move(w));
    }
  }
  plan.planner_data = encode_flatten_mapping(view.mapping);
  return plan;
}

caf::expected<global_save_plan>
create_default_global_save_plan(std::vector<save_plan> plans,
                                bool to_lowest_rank) {
  auto deduped = dedup_save_plans(std::move(plans), to_lowest_rank);
  if (!deduped)
    return std::move(deduped.error());
  global_save_plan result;
  result.plans = std::move(*deduped);
  auto& sdm = result.md.state_dict_metadata;
  // Entries by fqn through a hash map: the ordered map's string compares
  // were a third of the global plan at 1024 ranks x 1000 tensors. Its
  // nodes never move, so the pointers stay valid.
  std::unordered_map<std::string_view, item_metadata*> entries;
  for (size_t rank = 0; rank < result.plans.size(); ++rank) {
    for (auto& item : result.plans[rank].items) {
      const auto& fqn = item.index.fqn;
      bool added = false;
      auto cached = entries.find(fqn);
      if (cached == entries.end()) {
        auto [it, fresh] = sdm.try_emplace(fqn);
        added = fresh;
        cached = entries.emplace(it->first, &it->second).first;
      }
      auto& entry = *cached->second;
      if (item.type == write_item_type::bytes) {
        // dedup_save_plans leaves one bytes item per fqn and no tensor
        // under the same fqn; this guards callers of custom planners.
        if (!added)
          return make_error(errc::conflicting_item,
                            fqn + ": bytes from rank " + std::to_string(rank)
                              + " collide with an earlier item");
        entry = item_metadata::bytes();
        continue;
      }
      if (added) {
        entry.kind = item_kind::tensor;
        entry.tensor.properties = item.tensor_data.properties;
        entry.tensor.size = item.tensor_data.size;
      } else if (entry.kind != item_kind::tensor) {
        return make_error(errc::conflicting_item,
                          fqn + ": a tensor chunk from rank "
                            + std::to_string(rank)
                            + " collides with an earlier bytes item");
      }
      auto& chunks = entry.tensor.chunks;
      item.index.index = static_cast<int64_t>(chunks.size());
      chunks.push_back(item.tensor_data.chunk);
    }
  }
  // Merge the flatten mappings; like DCP's ChainMap, the lowest rank wins
  // when two ranks map the same key differently. Ranks of one model mostly
  // send the same mapping: each distinct one is decoded once.
  std::unordered_set<std::string_view> merged;
  for (size_t rank = 0; rank < result.plans.size(); ++rank) {
    const auto& data = result.plans[rank].planner_data;
    if (data.empty() || !merged.insert(data).second)
      continue;
    auto mapping = decode_flatten_mapping(data);
    if (!mapping)
      return make_error(errc::corrupt_metadata, "planner_data of rank "
                                                  + std::to_string(rank) + ": "
                                                  + describe(mapping.error()));
    for (auto& [key, path] : *mapping)
      result.md.planner_data.emplace(key, std::move(path));
  }
  if (auto err = validate_metadata(result.md))
    return err;
  return result;
}

// -- load planning ------------------------------------------------------------

namespace {

/// The load plan, with the sweep of each requested tensor from `sweep_of`.
template <class SweepOf>
caf::expected<load_plan>
local_load_plan(const state_dict_view& request, const metadata& md,
                const load_options& opts, SweepOf&& sweep_of) {
  load_plan plan;
  for (const auto& item : request.items) {
    const auto& fqn = item.fqn;
    auto it = md.state_dict_metadata.find(fqn);
    if (it == md.state_dict_metadata.end()) {
      if (opts.strict)
        return make_error(errc::missing_key,
                          fqn + ": requested but not in the checkpoint");
      continue;
    }
    const auto& saved = it->second;
    if (saved.kind != item.kind)
      return make_error(errc::kind_mismatch,
                        fqn + ": requested " + to_string(item.kind)
                          + ", the checkpoint holds " + to_string(saved.kind));
    if (item.kind == item_kind::bytes) {
      // Same placeholders as DCP: offsets (0,), lengths (0,).
      read_item r;
      r.type = load_item_type::bytes;
      r.dest_index = metadata_index{fqn};
      r.storage_index = metadata_index{fqn};
      r.dest_offsets = {0};
      r.storage_offsets = {0};
      r.lengths = {0};
      plan.items.push_back(std::move(r));
      continue;
    }
    const auto& tensor = saved.tensor;
    if (tensor.size != item.global_size)
      return make_error(errc::shape_mismatch,
                        fqn + ": requested size " + to_string(item.global_size)
                          + ", the checkpoint holds " + to_string(tensor.size));
    // A dtype libtorch 1.13 has no tensor type for is loaded only as
    // itself (into its carrier, state_dict::set_carried): into any other
    // tensor a cast would reinterpret its bytes, so unchecked loads refuse
    // it too.
    if (!item.local_chunks.empty() && !has_libtorch_type(tensor.properties.type)
        && item.properties.type != tensor.properties.type)
      return make_error(errc::unsupported,
                        fqn + ": saved as torch."
                          + to_string(tensor.properties.type)
                          + ", which libtorch 1.13 has no tensor type for "
                            "(requested "
                          + to_string(item.properties.type) + ")");
    // A rank holding no chunk of a sharded tensor has no dtype to compare.
    if (opts.check_dtype && !item.local_chunks.empty()
        && tensor.properties.type != item.properties.type)
      return make_error(errc::dtype_mismatch,
                        fqn + ": requested " + to_string(item.properties.type)
                          + ", the checkpoint holds "
                          + to_string(tensor.properties.type));
    const auto ndim = tensor.size.size();
    const chunk_sweep& sweep = sweep_of(fqn, tensor);
    if (sweep.bad_chunk >= 0)
      return make_error(
        errc::corrupt_metadata,
        fqn + ": saved chunk #" + std::to_string(sweep.bad_chunk)
          + " does not have the tensor's rank " + std::to_string(ndim));
    auto local = chunks_of(item);
    std::vector<int64_t> volumes(local.size());
    for (size_t i = 0; i < local.size(); ++i) {
      const auto& c = local[i];
      bool ok = c.offsets.size() == ndim && c.sizes.size() == ndim;
      for (size_t d = 0; ok && d < ndim; ++d)
        ok = c.offsets[d] >= 0 && c.sizes[d] >= 0
             && c.sizes[d] <= tensor.size[d]
             && c.offsets[d] <= tensor.size[d] - c.sizes[d];
      if (!ok)
        return make_error(errc::chunk_out_of_bounds,
                          fqn + ": requested chunk (offsets "
                            + to_string(c.offsets) + ", sizes "
                            + to_string(c.sizes) + ") lies outside size "
                            + to_string(tensor.size));
      volumes[i] = numel(c.sizes);
    }
    auto items = create_read_items(fqn, tensor, sweep, local);
    // Every requested element must come from exactly one saved element;
    // DCP leaves holes of a broken checkpoint silently uninitialized.
    std::vector<int64_t> covered(local.size(), 0);
    for (const auto& r : items)
      covered[static_cast<size_t>(r.dest_index.index)] += numel(r.lengths);
    for (size_t i = 0; i < local.size(); ++i) {
      if (covered[i] == volumes[i])
        continue;
      auto code = covered[i] < volumes[i] ? errc::incomplete_chunks
                                          : errc::overlapping_chunks;
      return make_error(code, fqn + ": saved chunks cover "
                                + std::to_string(covered[i]) + " of "
                                + std::to_string(volumes[i])
                                + " elements of the requested chunk at "
                                + to_string(local[i].offsets));
    }
    plan.items.insert(plan.items.end(), std::make_move_iterator(items.begin()),
                      std::make_move_iterator(items.end()));
  }
  return plan;
}

} // namespace

caf::expected<load_plan>
create_default_local_load_plan(const state_dict_view& request,
                               const metadata& md, const load_options& opts) {
  // Without an index: the sweep of each requested tensor, built here.
  chunk_sweep scratch;
  return local_load_plan(
    request, md, opts,
    [&](const std::string&,
        const tensor_storage_metadata& t) -> const chunk_sweep& {
      scratch = make_chunk_sweep(t);
      return scratch;
    });
}

caf::expected<load_plan>
create_default_local_load_plan(const state_dict_view& request,
                               const metadata& md, const load_options& opts,
                               const load_index& index) {
  chunk_sweep scratch;
  return local_load_plan(
    request, md, opts,
    [&](const std::string& fqn,
        const tensor_storage_metadata& t) -> const chunk_sweep& {
      if (auto sweep = index.find(fqn))
        return *sweep;
      scratch = make_chunk_sweep(t);
      return scratch;
    });
}

namespace {

/// A value derived from a metadata object once per process, kept while the
/// metadata object lives (entries of dead ones go on the next lookup).
template <class T>
class per_metadata {
public:
  template <class Make>
  std::shared_ptr<const T> get(const metadata_ptr& md, Make make) {
    std::lock_guard<std::mutex> guard{mx_};
    for (auto i = entries_.begin(); i != entries_.end();) {
      if (i->md.expired()) {
        i = entries_.erase(i);
      } else if (!i->md.owner_before(md) && !md.owner_before(i->md)) {
        return i->value;
      } else {
        ++i;
      }
    }
    // Built under the lock: the other ranks of the process wait for this
    // one instead of building it again.
    auto value = std::make_shared<const T>(make(*md));
    entries_.push_back(entry{md, value});
    return value;
  }

private:
  struct entry {
    std::weak_ptr<const metadata> md;
    std::shared_ptr<const T> value;
  };

  std::mutex mx_;
  std::vector<entry> entries_;
};

} // namespace

std::shared_ptr<const load_index> shared_load_index(const metadata_ptr& md) {
  static per_metadata<load_index> cache;
  return cache.get(md, [](const metadata& x) { return load_index{x}; });
}

caf::error validate_shared_metadata(const metadata_ptr& md) {
  static per_metadata<caf::error> cache;
  return *cache.get(md, [](const metadata& x) { return validate_metadata(x); });
}

// -- pluggable planners -------------------------------------------------------

save_planner::~save_planner() {
  // nop
}

caf::expected<save_plan> save_planner::finish_plan(save_plan central) const {
  return central;
}

load_planner::~load_planner() {
  // nop
}

caf::expected<load_plan>
load_planner::create_shared_local_plan(const state_dict_view& request,
                                       const metadata_ptr& md,
                                       bool is_coordinator) const {
  return create_local_plan(request, *md, is_coordinator);
}

caf::expected<std::vector<load_plan>>
load_planner::create_global_plan(std::vector<load_plan> plans) const {
  return plans;
}

caf::expected<load_plan> load_planner::finish_plan(load_plan central) const {
  return central;
}

namespace {

class default_save_planner final : public save_planner {
public:
  explicit default_save_planner(bool to_lowest_rank)
    : to_lowest_rank_(to_lowest_rank) {
    // nop
  }

  caf::expected<save_plan> create_local_plan(const state_dict_view& view,
                                             bool) const override {
    return create_default_local_save_plan(view);
  }

  caf::expected<global_save_plan>
  create_global_plan(std::vector<save_plan> plans) const override {
    return create_default_global_save_plan(std::move(plans), to_lowest_rank_);
  }

private:
  bool to_lowest_rank_;
};

class default_load_planner final : public load_planner {
public:
  explicit default_load_planner(load_options opts) : opts_(opts) {
    // nop
  }

  caf::expected<load_plan> create_local_plan(const state_dict_view& request,
                                             const metadata& md,
                                             bool) const override {
    return create_default_local_load_plan(request, md, opts_);
  }

  caf::expected<load_plan>
  create_shared_local_plan(const state_dict_view& request,
                           const metadata_ptr& md, bool) const override {
    return create_default_local_load_plan(request, *md, opts_,
                                          *shared_load_index(md));
  }

private:
  load_options opts_;
};

} // namespace

std::shared_ptr<save_planner>
make_default_save_planner(bool dedup_to_lowest_rank) {
  return std::make_shared<default_save_planner>(dedup_to_lowest_rank);
}

std::shared_ptr<load_planner> make_default_load_planner(load_options opts) {
  return std::make_shared<default_load_planner>(opts);
}

// -- flatten mapping codec ----------------------------------------------------

// Format: the header line "dcpp-flatten-mapping/1", then one line per key:
// the key followed by each path element, each preceded by a tab. A line ends
// with "\n". Backslash, tab, newline and carriage return inside keys and
// elements are escaped as "\\", "\t", "\n" and "\r"; every other byte is
// written as is. A list position (an element whose `index` is set)
// is written as "\i" and its digits. A key with an empty path is a line without
// tabs; the empty string also decodes to the empty mapping (plans of custom
// planners).

namespace {

constexpr const char* mapping_header = "dcpp-flatten-mapping/1\n";

void append_escaped(std::string& out, const std::string& str) {
  for (auto c : str) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\t': out += "\\t"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      default: out += c;
    }
  }
}

caf::error mapping_error(size_t line, const std::string& what) {
  return make_error(errc::corrupt_metadata, "flatten mapping, line "
                                              + std::to_string(line) + ": "
                                              + what);
}

} // namespace

std::string encode_flatten_mapping(const flatten_mapping& mapping) {
  std::string out = mapping_header;
  for (const auto& [key, path] : mapping) {
    append_escaped(out, key);
    for (const auto& element : path) {
      out += '\t';
      if (element.index)
        out += "\\i";
      append_escaped(out, element.key);
    }
    out += '\n';
  }
  return out;
}

caf::expected<flatten_mapping> decode_flatten_mapping(const std::string& str) {
  flatten_mapping result;
  if (str.empty())
    return result;
  const std::string header = mapping_header;
  if (str.compare(0, header.size(), header) != 0)
    return mapping_error(1, "missing header \"dcpp-flatten-mapping/1\"");
  size_t line = 1;
  size_t pos = header.size();
  std::vector<path_element> fields;
  while (pos < str.size()) {
    ++line;
    fields.assign(1, path_element{});
    bool done = false;
    while (!done) {
      if (pos >= str.size())
        return mapping_error(line, "truncated (no final newline)");
      auto c = str[pos++];
      switch (c) {
        case '\n': done = true; break;
        case '\t': fields.emplace_back(); break;
        case '\\': {
          if (pos >= str.size())
            return mapping_error(line, "truncated escape sequence");
          auto e = str[pos++];
          auto& field = fields.back();
          switch (e) {
            case '\\': field.key += '\\'; break;
            case 't': field.key += '\t'; break;
            case 'n': field.key += '\n'; break;
            case 'r': field.key += '\r'; break;
            case 'i':
              if (fields.size() == 1 || field.index || !field.key.empty())
                return mapping_error(line, "\\i not at the start of a path "
                                           "element");
              field.index = true;
              break;
            default:
              return mapping_error(line, std::string{"invalid escape \\"} + e);
          }
          break;
        }
        default: fields.back().key += c;
      }
    }
    for (const auto& field : fields)
      if (field.index
          && (field.key.empty() || field.key.size() > 18
              || field.key.find_first_not_of("0123456789")
                   != std::string::npos))
        return mapping_error(line, "list position '" + field.key
                                     + "' is not a number");
    auto key = std::move(fields.front().key);
    object_path path(std::make_move_iterator(fields.begin() + 1),
                     std::make_move_iterator(fields.end()));
    if (result.count(key) > 0)
      return mapping_error(line, "duplicate key '" + key + "'");
    result.emplace(std::move(key), std::move(path));
  }
  return result;
}

} // namespace dcpp
