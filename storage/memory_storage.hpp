#pragma once

// An in-process storage backend: items live in memory, shared by the
// writers and readers of one `memory_store`. For tests of planning and
// actors that should not touch the disk; it follows the same call order and
// commit rule as the file system and passes the same conformance suite
// (tests/storage/conformance.hpp): metadata visible only after `finish`;
// `finish` refuses results that leave a chunk without data or whose data is
// gone, and keeps the old checkpoint until the new one has validated; the
// commit then drops the old checkpoint's items and those of older
// unfinished saves; every save writes keys of its own; every item carries
// an xxHash64 checksum that the reader verifies.

#include "storage/storage.hpp"

#include <memory>
#include <set>
#include <string>

namespace dcpp {

class memory_store;

/// A fresh, empty store.
std::shared_ptr<memory_store> make_memory_storage();

/// A writer for one rank.
storage_writer_ptr make_memory_writer(std::shared_ptr<memory_store> store);

/// A reader for one rank.
storage_reader_ptr make_memory_reader(std::shared_ptr<memory_store> store);

/// Number of items committed to `store` (for tests).
size_t committed_items(const memory_store& store);

/// Keys (`storage_info::relative_path`) of every item `store` holds, written
/// by a save in progress or committed (for tests).
std::set<std::string> stored_keys(const memory_store& store);

/// Test hook: changes one byte of the data of the committed item stored
/// under `key`, as a bit flip in memory would, and nothing else. Returns
/// false if no committed item has that key.
bool corrupt_stored_item(memory_store& store, const std::string& key);

} // namespace dcpp
