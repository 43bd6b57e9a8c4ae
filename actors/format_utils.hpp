#pragma once

// Conversions between a single torch.save file and a checkpoint, DCP's
// `format_utils` (`torch_save_to_dcp`, `dcp_to_torch_save`).
//
// Import: the file is read through dcpp's restricted unpickler
// (storage/torch_save.hpp) and saved in a world of one rank with the
// default planner, flattened as DCP flattens nested state dicts (the
// mapping back to the nesting goes to `planner_data`: dict keys as str,
// list positions as int).
//
// Export: every value of the checkpoint is read in a world of one rank
// (the checkpoint may have been saved by any number of ranks, with any
// sharding: tensors come out whole) and written as one torch.save file,
// nested again by `planner_data` as DCP's `dcp_to_torch_save` nests it
// (core/unflatten.hpp; storage/torch_save_writer.hpp for optimizer state
// keys).
//
// Both are one-rank operations, as DCP's are (`no_dist=True`): call them in
// one process; no process group is needed, and other ranks have nothing to
// do (a whole file is written by one process anyway).

#include "storage/storage.hpp"
#include "storage/torch_save.hpp"
#include "storage/torch_save_writer.hpp"

#include <caf/expected.hpp>

#include <string>

namespace dcpp {

/// Reads the torch.save file at `path` and saves it through `writer`.
/// Nothing is written unless the whole file reads (and flattens) cleanly.
/// Returns the committed metadata, or the first error (naming `path` and
/// the key).
caf::expected<metadata> import_torch_save(const std::string& path,
                                          storage_writer_ptr writer,
                                          const torch_save_limits& limits = {});

struct torch_save_export_options {
  /// One dict of the flat (dotted) keys, `planner_data` ignored: the form
  /// `dcpp export --flat` writes.
  bool flat = false;
  /// Optimizer state keys back to ints (storage/torch_save_writer.hpp).
  bool restore_optimizer_keys = true;
};

/// Reads every value of the checkpoint behind `reader` and writes it to
/// `path` as one torch.save file: `torch.load` returns the nested state
/// dict that was saved (dicts, lists, tensors, and the non-tensor values
/// torch.save'd in bytes items), or with `opts.flat` a dict of flat keys.
/// A checkpoint without `planner_data` (saved flat) gives its flat keys
/// either way. The flatten mapping is checked before any data is read: one
/// that cannot describe a tree fails with `errc::corrupt_metadata` naming
/// the key. Returns the checkpoint's metadata, or the first error (naming
/// the key or the file); nothing is left at `path` on failure.
caf::expected<metadata>
export_torch_save(storage_reader_ptr reader, const std::string& path,
                  const torch_save_export_options& opts = {});

} // namespace dcpp
