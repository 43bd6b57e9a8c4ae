#pragma once

// The file-system storage of DCP (`filesystem.py`): a checkpoint is a
// directory with data files `__<rank>_<n>.<tag>.distcp` (items are
// torch.save archives appended back to back, see storage/tensor_codec.hpp;
// `<tag>` is unique to one save) and one `.metadata` file, replaced
// atomically last, which commits the checkpoint. Saving over a checkpoint
// keeps the old one loadable until the new one commits, then removes the
// old data files.
// Checkpoints cross between dcpp and PyTorch DCP in both directions. The
// durability protocol is spelled out at the top of filesystem_writer.cpp.

#include "storage/metadata_codec.hpp"
#include "storage/storage.hpp"

#include <cstddef>
#include <string>

namespace dcpp {

struct filesystem_writer_options {
  /// One data file per rank and writer thread (newest DCP's default), or
  /// one data file per item (torch 1.13's default).
  bool single_file_per_rank = true;
  /// Threads `write_data` uses for a whole plan; with
  /// `single_file_per_rank` also the number of data files per rank
  /// (`__<rank>_0.<tag>` ... `__<rank>_<thread_count - 1>.<tag>`, created
  /// even if empty).
  size_t thread_count = 1;
  /// fsync every data file (and the directory) before `write_data`
  /// returns. Without it a crash after the commit may lose data that
  /// `.metadata` points to; the checksums then detect it on load.
  bool sync_files = true;
  /// Which torch reads `.metadata` (class paths, fields).
  metadata_flavor flavor = metadata_flavor::torch_2;
  /// Record an xxHash64 of every item in `.metadata` (an extra
  /// `_StorageInfo` field that PyTorch ignores).
  bool checksums = true;
  /// With `sync_files`, write data files with O_DIRECT through reused
  /// aligned buffers (the data has to reach the disk anyway; this skips the
  /// page cache's allocation and copy). Used for per-rank files and for
  /// items of 16 MiB or more; falls back to buffered writes where the file
  /// system refuses O_DIRECT. Not a DCP option.
  bool direct_io = true;
  /// The checkpoint directory's last component belongs to the caller (a
  /// checkpoint manager's step directory): it is created if missing and
  /// never followed, so a symbolic link planted under its name (to another
  /// run's checkpoint, say) fails `set_up` on every rank with
  /// `errc::path_escape` naming it, and nothing is written through it.
  /// Without it the directory may be a link the user made; either way the
  /// writer opens it once in `set_up` and creates, renames and removes its
  /// files relative to that open directory (openat), so a path swapped
  /// afterwards redirects nothing. Not a DCP option.
  bool owned_directory = false;
};

/// A writer for one rank. `split_plan(plan, n)` (after the global plan)
/// yields parts that write disjoint files, so concurrent `write_data` calls
/// on the parts never share a file: with `single_file_per_rank` exactly `n`
/// parts, part k writing `__<rank>_<k>.<tag>.distcp` (items bucketed as
/// newest DCP does: bytes items round-robin, tensors by size, largest first,
/// onto the lightest bucket); otherwise up to `n` parts of consecutive
/// items, one file per item numbered in plan order. `write_data` of a whole
/// plan splits it into `thread_count` parts itself and writes them on as
/// many threads.
/// All errors are `errc::io_error` / `errc::storage_failure` (with path and
/// errno text), `errc::path_escape`, `errc::invalid_argument`,
/// `errc::dtype_mismatch` or `errc::missing_key`; nothing throws.
storage_writer_ptr make_filesystem_writer(std::string dir,
                                          filesystem_writer_options opts = {});

struct filesystem_reader_options {
  /// Threads `read_data` uses (items are spread over them, largest first).
  size_t thread_count = 1;
  /// Check the checksum recorded for an item (if any) while reading it;
  /// each item is hashed once, from the bytes read into the destination.
  bool verify_checksums = true;
};

/// A reader for one rank. `read_metadata` fails with `errc::not_found` if
/// the directory holds no committed checkpoint, `errc::too_large` for a
/// `.metadata` beyond 1 GiB, `errc::corrupt_metadata` if it cannot be
/// decoded. `set_up` checks every storage entry: a relative path that is not
/// a plain file name yields `errc::path_escape`, an item beyond its file's
/// end `errc::corrupt_item` (naming key and file). `read_data` reads each
/// file's items straight into the destinations, fails with
/// `errc::checksum_mismatch` naming the key and file when an item's bytes
/// changed, and `split_plan` keeps all reads of one saved item in one part.
storage_reader_ptr make_filesystem_reader(std::string dir,
                                          filesystem_reader_options opts = {});

} // namespace dcpp
