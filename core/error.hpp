#pragma once

// One error vocabulary for every layer of dcpp.
//
// Errors are `caf::error` values in the category "dcpp": an `errc` code plus a
// context string that names what went wrong (the fqn, the rank, the file).
// Functions that can fail return `caf::expected<T>` (or `caf::error` when
// there is no value). Exceptions from torch, the file system or ZeroMQ are
// caught at the edge of the layer that calls them and turned into these.

#include <caf/atom.hpp>
#include <caf/error.hpp>
#include <caf/expected.hpp>
#include <caf/make_message.hpp>
#include <caf/meta/type_name.hpp>

#include <cstdint>
#include <map>
#include <string>

namespace dcpp {

/// Every failure dcpp reports. Each value has a name (`to_string`), checked
/// by a test that walks the whole range.
enum class errc : uint8_t {
  none = 0,
  /// A request named a key that the checkpoint or state dict lacks.
  missing_key,
  /// Global shapes differ between the request and the checkpoint.
  shape_mismatch,
  /// Element types differ between the request and the checkpoint.
  dtype_mismatch,
  /// A tensor was requested where the checkpoint holds bytes, or vice versa.
  kind_mismatch,
  /// A dtype name or code that dcpp does not know.
  unknown_dtype,
  /// Chunks of one tensor overlap each other.
  overlapping_chunks,
  /// Chunks of one tensor leave part of it uncovered.
  incomplete_chunks,
  /// A chunk lies (partly) outside its tensor's global shape.
  chunk_out_of_bounds,
  /// Two ranks hold different items under the same key.
  conflicting_item,
  /// A caller passed an argument that cannot be valid.
  invalid_argument,
  /// The `.metadata` file (or another encoded structure) cannot be decoded.
  corrupt_metadata,
  /// A data item cannot be decoded or does not match its metadata.
  corrupt_item,
  /// A checksum recorded at save time does not match the bytes read.
  checksum_mismatch,
  /// A file or directory operation failed (the context has path and errno).
  io_error,
  /// A checkpoint directory has no committed `.metadata`.
  not_found,
  /// A relative path in the metadata leaves the checkpoint directory.
  path_escape,
  /// A size limit was exceeded (message, metadata, item).
  too_large,
  /// A rank did not answer in time.
  timeout,
  /// A rank stopped (process died, actor quit, connection lost).
  rank_lost,
  /// A collective step failed on one or more ranks; context has the map.
  checkpoint_failed,
  /// A message arrived for a different save or load, or out of order.
  protocol_error,
  /// A peer did not present the shared secret.
  unauthorized,
  /// Storage rejected a write (ENOSPC, short write, injected fault).
  storage_failure,
  /// The save or load was cancelled.
  aborted,
  /// A feature that this build or this format version does not support.
  unsupported,
  /// A fault injected on purpose (core/fault.hpp): tests and the soak test.
  injected_fault,
  /// The number of values; not an error.
  num_values,
};

/// Returns the name of `x`, e.g. "missing_key".
std::string to_string(errc x);

/// The category atom under which every dcpp error lives.
inline constexpr caf::atom_value error_category = caf::atom("dcpp");

/// Makes an error without context.
caf::error make_error(errc x);

/// Makes an error whose context names what went wrong.
caf::error make_error(errc x, std::string context);

/// Returns the code of `err` if it is a dcpp error, `errc::none` otherwise.
errc code_of(const caf::error& err);

/// Returns the context string of a dcpp error (empty if none).
std::string context_of(const caf::error& err);

/// Renders any error, dcpp or CAF, as one readable line:
/// "dcpp::missing_key: model.weight".
std::string describe(const caf::error& err);

/// Returns `err` with `prefix + ": "` prepended to its context (keeps the
/// code). Non-dcpp errors are turned into dcpp errors of code `fallback`.
caf::error with_context(const caf::error& err, const std::string& prefix,
                        errc fallback = errc::checkpoint_failed);

/// DCP's `CheckpointException` as data: the collective operation that
/// failed, the step it failed in, and every failing rank's own error (with
/// its own code). Carried inside an `errc::checkpoint_failed` error; text is
/// made only when the error is rendered (`describe`).
struct checkpoint_failure {
  /// "save 3", "load 4".
  std::string op;
  /// "plan", "write", "commit" or "read".
  std::string step;
  /// rank -> that rank's error.
  std::map<int32_t, caf::error> failures;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, checkpoint_failure& x) {
  return f(caf::meta::type_name("dcpp.checkpoint_failure"), x.op, x.step,
           x.failures);
}

/// Renders a failure as one line: "save 3 failed in step write: rank 1:
/// dcpp::storage_failure: disk full; rank 3: ...".
std::string to_string(const checkpoint_failure& x);

/// An `errc::checkpoint_failed` error that carries `x` (its context holds
/// the rendered text first, then the data).
caf::error make_checkpoint_failure(checkpoint_failure x);

/// The failure carried by an `errc::checkpoint_failed` error made by
/// `make_checkpoint_failure`; nullptr for any other error. The pointer lives
/// as long as `err` (or a copy of it) does.
const checkpoint_failure* checkpoint_failure_of(const caf::error& err);

} // namespace dcpp
