#pragma once

// Writes a state dict as one torch.save file that Python's `torch.load`
// opens (DCP's `dcp_to_torch_save`, the far end of `dcpp export`): full
// tensors, non-tensor values decoded from their torch.save bytes, nested as
// a `nested_node` tree says (dicts, lists, None for list positions no key
// fills). The file is the zip archive Python's torch.save writes, its
// `data.pkl` emitted by dcpp's pickle writer (storage/pickle.hpp) with only
// the globals `torch.load(weights_only=True)` allows: `collections.
// OrderedDict`, `torch._utils._rebuild_tensor_v2` and the typed storage
// classes (`torch.FloatStorage`, ...) in persistent ids, plus what a
// non-tensor value held when it was torch.save'd (`torch.Size`, dtypes,
// `torch.device`, ...); dicts are plain dicts. It is written atomically
// (`FILE.tmp`, fsync, rename, fsync of the directory). Loads in PyTorch 2.x
// with the default `weights_only=True`, and in 1.13 (whose weights-only
// unpickler lacks floats, bytes and some dtypes: such files load there with
// `weights_only=False`, as Python's own torch.save of them does).
//
// Non-tensor values come back as the object they were torch.save'd as; one
// whose pickle names a global outside that list (or holds a tensor) is
// written as its raw torch.save bytes in a uint8 tensor, with a warning.
//
// Optimizer state dicts: DCP's flattening turns every dict key into a str,
// so `optimizer.state_dict()["state"]` (keyed by the int ids of the
// parameters) comes back as {"0": ...}, and `optimizer.load_state_dict`
// then silently drops the state (its lookup by int id misses). With
// `restore_optimizer_keys`, a dict holding "param_groups" (a list of dicts
// whose "params" are lists of ints) and "state" is recognised as an
// optimizer's state dict, and the keys of its "state" are turned back into
// those ints when every key spells one of the groups' ids. This works for
// any checkpoint, also one that PyTorch's DCP wrote (nothing has to be
// recorded at save time, and no reader has to carry an extra field);
// other dicts whose keys were ints come back with str keys, as DCP's
// `dcp_to_torch_save` gives them. Two more repairs of the same layout: a
// "param_groups" recorded as a dict keyed "0", "1", ... (list positions
// recorded as str, as dcpp did before it recorded ints) becomes a list, and
// a missing "state" (DCP drops the empty dict of an optimizer that never
// stepped) becomes an empty dict.

#include "core/unflatten.hpp"
#include "storage/state_dict.hpp"

#include <caf/error.hpp>

#include <map>
#include <string>

namespace dcpp {

struct torch_save_write_options {
  /// See the comment at the top: optimizer state keys back to ints.
  bool restore_optimizer_keys = true;
  /// Flat key -> the dtype its tensor carries (`state_dict::set_carried`:
  /// a dtype libtorch 1.13 lacks), written as torch 2.x writes it.
  std::map<std::string, dtype> carried;
};

/// Writes `tree`, its leaves taken from `values` (flat key -> a plain
/// tensor or a bytes value), to `path`. Fails with `errc::missing_key` for
/// a leaf without a value, `errc::unsupported` for a sharded tensor, or
/// `errc::io_error` naming the file.
caf::error write_torch_save(const std::string& path, const nested_node& tree,
                            const std::map<std::string, const value*>& values,
                            const torch_save_write_options& opts = {});

} // namespace dcpp
