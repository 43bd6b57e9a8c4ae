#pragma once

// What the file-system writer and reader share about a checkpoint
// directory (storage/filesystem.hpp): the name of its commit record, how
// paths inside it are formed and checked, and how `.metadata` is read.

#include "core/metadata.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <string>

namespace dcpp::detail {

/// The commit record of a checkpoint directory.
constexpr const char* metadata_name = ".metadata";

/// `dir/name` (no doubled slash).
std::string join(const std::string& dir, const std::string& name);

/// A file name that stays inside the checkpoint directory.
bool plain_file_name(const std::string& name);

/// Reads and decodes `<dir>/.metadata`: errc::not_found without one,
/// errc::path_escape if it is a symbolic link, errc::io_error if it is not
/// a regular file (a FIFO fails at once instead of blocking),
/// errc::too_large beyond 1 GiB, errc::corrupt_metadata if it cannot be
/// decoded.
/// With `bytes_read`, also hands out the file's bytes (what identifies the
/// checkpoint a rank read, without encoding the metadata again).
caf::expected<metadata> read_metadata_file(const std::string& dir,
                                           std::string* bytes_read = nullptr);

/// Checks that every storage entry of `md` names a plain, regular file of
/// `dir` (a symbolic link is never followed) that holds the entry's bytes;
/// one lstat per file. Errors name the item and the file: errc::path_escape
/// for a name that leaves the directory or a link, errc::corrupt_item for
/// a missing file, one that is not a regular file or one too short for the
/// item, errc::io_error when lstat fails otherwise.
caf::error check_data_files(const std::string& dir, const metadata& md);

} // namespace dcpp::detail
