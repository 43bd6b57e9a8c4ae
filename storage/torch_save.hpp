#pragma once

// Reads a file written by Python's `torch.save` (the zip format of PyTorch
// 1.6 and later; 1.13 and 2.x write it by default) into a `state_dict`,
// through dcpp's restricted pickle reader (storage/pickle.hpp): nothing in
// the file is ever executed, and only torch.save's own globals are honoured
// (tensor and parameter rebuilds, typed storages, OrderedDict, set,
// frozenset, complex, torch.Size, torch.device and dtypes, and the
// torch.jit._pickle wrappers libtorch's pickler adds, e.g. in `dcpp export`
// output). Any other global is refused with its name.
//
// The nesting is what DCP's `flatten_state_dict` traverses: dicts and
// OrderedDicts (keys turned into strings, as `str(key)`), and lists that
// hold a dict, a tensor or such a list (elements keyed "0", "1", ... in a
// dict marked `is_list`, so flattening records the positions as ints).
// Tensors become tensors (views of one storage keep sharing it); every
// other value (numbers, strings, None, tuples, lists of scalars) becomes a
// bytes value holding a torch.save of that value, as DCP stores it.
//
// Hostile files yield an error naming the file and the key, never a crash:
// every view is checked against its storage (offset and extent inside, no
// negative stride), nesting is bounded, keys that collide once turned into
// strings are refused, and storage records must match their declared size.

#include "storage/state_dict.hpp"

#include <caf/expected.hpp>

#include <cstddef>
#include <string>

namespace dcpp {

struct torch_save_limits {
  /// Deepest nesting of dicts and lists in the state dict.
  size_t max_depth = 100;
};

/// Reads the torch.save file at `path`. Fails with `errc::unsupported` for
/// a refused global (naming it) or the legacy non-zip format (naming it),
/// `errc::corrupt_item` for a malformed archive, pickle or tensor view,
/// `errc::invalid_argument` for keys that collide, a top level that is not
/// a dict, or nesting deeper than `limits.max_depth`; always naming `path`
/// and, where there is one, the key.
caf::expected<state_dict> read_torch_save(const std::string& path,
                                          const torch_save_limits& limits = {});

} // namespace dcpp
