#pragma once

// Conversions between a single torch.save file and a checkpoint, DCP's
// `format_utils` (`torch_save_to_dcp`): the file is read through dcpp's
// restricted unpickler (storage/torch_save.hpp) and saved in a world of one
// rank with the default planner, flattened as DCP flattens nested state
// dicts (the mapping back to the nesting goes to `planner_data`).

#include "storage/storage.hpp"
#include "storage/torch_save.hpp"

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

} // namespace dcpp
