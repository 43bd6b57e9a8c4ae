#pragma once

// Hugging Face safetensors as a storage backend (PyTorch DCP 2.x's
// HuggingFaceStorageWriter/Reader and its consolidation), see
// storage/safetensors_header.hpp for the file format.
//
// Writer: every rank writes its chunks and bytes values into a staging
// file of its own (`.dcpp-<tag>-rank<r>-<n>.part`, raw bytes with
// checksums in the write results). The coordinator's `finish` is the
// consolidation: it reads every chunk back (checking its checksum),
// assembles full tensors one at a time and writes `model.safetensors` (or
// shards `model-00001-of-0000N.safetensors` of at most `max_shard_bytes`
// plus `model.safetensors.index.json`), so the result is what Hugging Face
// consumers read whatever sharding the save had. Bytes items (DCP's
// serialized non-tensor values) go into `__metadata__` base64-encoded under
// "dcpp.bytes.<key>"; other `__metadata__` entries come from the options.
// The single file commits by rename; with shards, the index is written
// last. Staging files of this and older saves are removed after the commit.
//
// Reader: a `.safetensors` file, a `.index.json`, or a directory holding
// either `model.safetensors.index.json` or `model.safetensors`. Every
// tensor is one whole chunk in the metadata, so the normal load planner
// reshards it into any sharding; a read item reads only the rows of its
// box. Headers are validated before anything is read (hostile files fail
// with `errc::corrupt_item` / `errc::too_large` / `errc::unknown_dtype`
// naming file and tensor). safetensors carries no checksums.

#include "storage/storage.hpp"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace dcpp {

struct safetensors_writer_options {
  /// Name of the single file; with shards `<stem>-00001-of-0000N.safetensors`
  /// and `<file_name>.index.json`.
  std::string file_name = "model.safetensors";
  /// 0: one file. Else the largest shard (a tensor larger than this gets a
  /// shard of its own).
  uint64_t max_shard_bytes = 0;
  /// `__metadata__` entries written into every file.
  std::map<std::string, std::string> metadata{{"format", "pt"}};
  /// fsync files and the directory before the commit.
  bool sync_files = true;
};

/// A writer for one rank into directory `dir` (created if missing).
storage_writer_ptr
make_safetensors_writer(std::string dir, safetensors_writer_options opts = {});

/// A reader for one rank (see above for what `path` may name).
storage_reader_ptr make_safetensors_reader(std::string path);

/// What `read_metadata` of a safetensors reader sees, plus the files and
/// their `__metadata__` (without dcpp's own entries), for `dcpp inspect`.
struct safetensors_info {
  metadata md;
  std::vector<std::string> files;
  std::map<std::string, std::string> user_metadata;
  /// tensor name -> its safetensors dtype name.
  std::map<std::string, std::string> dtype_names;
};

caf::expected<safetensors_info> read_safetensors_info(const std::string& path);

/// True if `path` names a safetensors file, index or a directory holding
/// one (by name: `.safetensors`, `.safetensors.index.json`, or a directory
/// with `model.safetensors[.index.json]`).
bool is_safetensors_path(const std::string& path);

} // namespace dcpp
