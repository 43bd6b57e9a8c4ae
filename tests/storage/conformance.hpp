#pragma once

// The storage conformance suite (style rule 11, after TensorStore's
// `RegisterKeyValueStoreOpsTests(params)`): every storage backend passes the
// same cases, which check what storage/storage.hpp promises — the call
// order, the commit rule (the committed checkpoint stays readable until a
// new one has validated and committed; a failed or aborted save leaves it
// intact), validation in `finish`, abort, resharded reads, checksum
// failures and garbage collection of older saves.
//
// A backend registers the suite from its own source file, at static
// initialization, with a few lines:
//
//   storage_params params;
//   params.name = "memory";
//   params.make_storage = [] { return std::make_unique<my_storage>(); };
//   const bool registered = register_storage_tests(std::move(params));
//
// Each case becomes the Catch2 test case "<name>.<case>", so every backend
// gets its own ctest entries ("storage_conformance.memory.<case>").

#include "core/metadata.hpp"
#include "storage/storage.hpp"

#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

namespace dcpp::conformance {

/// One storage location (a directory, a store) that one test case uses;
/// every writer and reader it makes works on that location. Destroying it
/// removes the location.
class storage_under_test {
public:
  virtual ~storage_under_test();

  /// A fresh writer for one rank.
  [[nodiscard]] virtual storage_writer_ptr make_writer() = 0;

  /// A fresh reader for one rank.
  [[nodiscard]] virtual storage_reader_ptr make_reader() = 0;

  /// The names of every stored object that holds item data (data files,
  /// blobs), of the committed checkpoint or of any save in progress.
  [[nodiscard]] virtual std::set<std::string> data_objects() = 0;

  /// Changes stored bytes of the item that `info` (from the committed
  /// metadata) describes — payload, not framing — and nothing else, so that
  /// only a checksum can tell. Returns false if there is no such item.
  [[nodiscard]] virtual bool corrupt(const storage_info& info) = 0;
};

/// How to test one backend, and which optional features it has.
struct storage_params {
  /// Names the backend in the test names: "<name>.<case>".
  std::string name;

  /// Makes a fresh, empty storage location for one test case.
  std::function<std::unique_ptr<storage_under_test>()> make_storage;

  /// The reader verifies checksums recorded at save time, so corrupted
  /// bytes fail with `errc::checksum_mismatch`. Without it the corruption
  /// case is not registered.
  bool verifies_checksums = true;

  /// Cases this backend is known to fail: case name -> reason. They are
  /// registered as `[!shouldfail]` and print the reason, so they are
  /// visible in every run and turn red once the backend is fixed.
  std::map<std::string, std::string> known_failures;
};

/// Registers every case of the suite for the backend `params` describes.
/// Call at static initialization (before the Catch2 session starts).
/// Returns true, so a backend can keep the result in a namespace-scope
/// constant.
bool register_storage_tests(storage_params params);

} // namespace dcpp::conformance
