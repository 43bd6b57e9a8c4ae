#pragma once

// The state dict a user saves and loads: a tree of named values, each a
// plain tensor, a sharded tensor (this rank's shards of a larger tensor) or
// a bytes value (a serialized non-tensor: torch.save bytes, so PyTorch reads
// it as the original object). Nested dicts are flattened to dotted keys for
// planning and restored on load, as newest DCP does.
//
// This header includes only `ATen/core/Tensor.h` (a few seconds of compile
// time); the torch serialization headers stay in storage sources.

#include "core/state_dict_view.hpp"
#include "storage/storage.hpp"

#include <caf/expected.hpp>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

namespace dcpp {

namespace pickle {
struct value;
using value_ptr = std::shared_ptr<const value>;
} // namespace pickle

/// One local shard of a sharded tensor: a tensor and where it sits in the
/// global shape.
struct shard {
  at::Tensor tensor;
  shape_t offsets;
};

/// This rank's part of a tensor of shape `global_size` (DCP's
/// ShardedTensor / DTensor). A rank may hold zero, one or more shards.
struct sharded_tensor {
  shape_t global_size;
  std::vector<shard> local_shards;
};

/// A serialized non-tensor value. `data` is stored verbatim; PyTorch loads it
/// with `torch.load`, so it should be a torch.save archive (see
/// `bytes_value::from_int` and friends, or `from_pickle`).
struct bytes_value {
  std::string data;

  /// Wraps raw bytes as they are (e.g. read from another checkpoint).
  static bytes_value raw(std::string data) {
    return bytes_value{std::move(data)};
  }
  /// torch.save of a Python int / float / str / dict of str (as PyTorch's
  /// own `torch.save` would write it).
  static bytes_value from_int(int64_t x);
  static bytes_value from_double(double x);
  static bytes_value from_string(const std::string& x);
  /// torch.save of any value of dcpp's pickle model (storage/pickle.hpp)
  /// that holds no persistent ids (no tensors).
  static bytes_value from_pickle(const pickle::value& x);

  /// Decoders of the same forms; fail with `errc::corrupt_item`.
  caf::expected<int64_t> to_int() const;
  caf::expected<double> to_double() const;
  caf::expected<std::string> to_string() const;
  /// The pickled object of the torch.save archive, as dcpp's pickle model
  /// (the inverse of `from_pickle`).
  caf::expected<pickle::value_ptr> to_pickle() const;
};

class state_dict;

/// A value of a state dict.
using value = std::variant<at::Tensor, sharded_tensor, bytes_value,
                           std::shared_ptr<state_dict>>;

/// An ordered map of names to values. Keys keep insertion order, which
/// becomes the order of items in the data files.
class state_dict {
public:
  using entry = std::pair<std::string, value>;

  state_dict() = default;

  /// Inserts or replaces `key` (forgetting a carried dtype recorded for it).
  void set(const std::string& key, value v);

  /// Inserts or replaces `key` with a tensor (plain or sharded) of a dtype
  /// that libtorch 1.13 has no type for (`has_libtorch_type`): `v`'s
  /// tensors are of `carrier_dtype(saved)` and hold the bytes as saved.
  /// The saved dtype is recorded beside the value, not in the tensor, so
  /// that every path that moves tensors (staging, the data files, import
  /// and export) keeps working on ordinary libtorch tensors and only the
  /// places that name a dtype (the planner's view, the data file's and
  /// export's pickles) read it from here.
  void set_carried(const std::string& key, value v, dtype saved);

  /// The dtype recorded by `set_carried` for `key`, or nullptr.
  const dtype* carried_dtype(const std::string& key) const;

  /// Returns the nested dict under `key`, creating it if needed.
  state_dict& nested(const std::string& key);

  /// Returns the value under `key` or nullptr.
  value* find(const std::string& key);
  const value* find(const std::string& key) const;

  /// Looks up a dotted path through nested dicts ("optim.state.0.m").
  value* find_path(const std::vector<std::string>& path);

  const std::vector<entry>& entries() const {
    return entries_;
  }
  /// Mutable access drops the key index (the caller may rename keys); the
  /// next non-const `find` rebuilds it. A carried dtype stays with the old
  /// name: a caller renaming a carried key calls `set_carried` again.
  std::vector<entry>& entries() {
    index_.clear();
    indexed_ = 0;
    return entries_;
  }

  size_t size() const {
    return entries_.size();
  }

  bool empty() const {
    return entries_.empty();
  }

  /// Whether this dict stands for a Python list, its keys being the
  /// positions "0", "1", ...: flattening records them as list positions
  /// (ints in `planner_data`, as DCP records a traversed list), so DCP and
  /// `export_torch_save` rebuild a list.
  bool is_list() const {
    return is_list_;
  }

  void is_list(bool value) {
    is_list_ = value;
  }

private:
  /// Indexes the entries added since the last call (dicts above a few
  /// dozen keys only: below, a scan is cheaper).
  void index_entries();

  std::vector<entry> entries_;
  /// Key -> saved dtype of the values put by `set_carried`.
  std::map<std::string, dtype> carried_;
  bool is_list_ = false;
  /// Key -> position in `entries_` for the first `indexed_` entries, so
  /// that `set` and `find` cost O(1) and building a dict of N keys O(N),
  /// not O(N^2).
  std::unordered_map<std::string, size_t> index_;
  size_t indexed_ = 0;
};

/// A flattened state dict: dotted keys to leaf values (tensors, sharded
/// tensors, bytes) in tree order, with the mapping back to nested paths
/// (for every key, a top-level key mapping to itself: DCP's
/// `planner_data`).
struct flat_state_dict {
  std::vector<std::pair<std::string, value*>> items;
  flatten_mapping mapping;
  /// Flat key -> saved dtype of the values put by `set_carried`.
  std::map<std::string, dtype> carried;
};

/// Flattens `sd` (pointers into `sd`, which must outlive the result).
/// Fails with `errc::invalid_argument` if two paths flatten to one key.
caf::expected<flat_state_dict> flatten(state_dict& sd);

/// Builds the planner's view of a flattened state dict: dtype, global
/// shape, local chunks. Fails with `errc::unknown_dtype` or
/// `errc::invalid_argument` naming the fqn (undefined tensor, shard outside
/// its global shape, shard dtype differing from its siblings).
caf::expected<state_dict_view> make_view(const flat_state_dict& flat);

/// An `item_source` over a flattened state dict (DCP's
/// `resolve_data`): plain tensors, shards (found by chunk offset) and bytes
/// values. `flat` must outlive the source.
std::unique_ptr<item_source> make_item_source(const flat_state_dict& flat);

/// A `load_target` over a flattened state dict (DCP's `resolve_tensor` and
/// `load_bytes`): destinations are narrowed views of the caller's tensors
/// and shards; bytes values are replaced. `flat` must outlive the target.
std::unique_ptr<load_target> make_load_target(const flat_state_dict& flat);

/// Maps a torch scalar type to a dcpp dtype (errc::unknown_dtype).
caf::expected<dtype> to_dtype(c10::ScalarType type);

/// Maps a dcpp dtype to the torch scalar type of the tensors that carry
/// it: `carrier_dtype(type)`'s (int16 for uint16, uint8 for float8_e5m2).
c10::ScalarType to_scalar_type(dtype type);

/// Allocates, for every key in `md`, an empty tensor of the saved shape and
/// dtype (a carrier, `set_carried`, for a dtype libtorch 1.13 lacks; or an
/// empty bytes value), nested by `md.planner_data` where it
/// names a path. Used to load a checkpoint without knowing its keys.
state_dict make_state_dict_for(const metadata& md);

/// A copy of `sd`'s structure in which every tensor `t` (a plain tensor or
/// a shard's, defined or not) is `f(t)`, called in tree order: entries in
/// order, a sharded tensor's shards in order, a nested dict where it sits.
/// The copy keeps everything else: the nesting, each dict's list marker
/// (so its keys still flatten to list positions), global shapes, shard
/// offsets and bytes values. This is the one place that copies a state
/// dict's structure; every staging path (`stage_to_host`, the staging pool
/// of async saves) goes through it, so that what a staged save records
/// cannot differ from what a save of the original records. Exceptions of
/// `f` propagate.
state_dict map_tensors(const state_dict& sd,
                       const std::function<at::Tensor(const at::Tensor&)>& f);

/// Calls `f(name, t)` for every tensor of `sd` in `map_tensors`' order;
/// `name` is the dotted key, with " (shard i)" appended for a shard.
void for_each_tensor(
  const state_dict& sd,
  const std::function<void(const std::string&, const at::Tensor&)>& f);
void for_each_tensor(
  state_dict& sd,
  const std::function<void(const std::string&, at::Tensor&)>& f);

/// Copies every tensor of `sd` into freshly allocated host memory, so the
/// caller may modify its tensors while a save runs (async save staging).
/// Keeps structure, shards and bytes values (`map_tensors`).
state_dict stage_to_host(const state_dict& sd);

} // namespace dcpp
