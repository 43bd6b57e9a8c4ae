#pragma once

// Items of a DCP data file (docs/dcp-format.md §1.3, §3): every item is a
// complete torch.save zip archive, appended to the file with no padding.
//
// - A tensor item holds one tensor: records `archive/data.pkl` (a protocol-2
//   pickle of `torch._utils._rebuild_tensor_v2`), `archive/data/0` (the raw
//   little-endian storage bytes) and `archive/version` ("3\n"), all STORED,
//   each record's data 64-byte aligned relative to the item start, with data
//   descriptors, real CRC-32s, a central directory and a Zip64 end record,
//   byte for byte what Python torch 1.13 `torch.save` writes for the same
//   tensor. The writer streams straight from the tensor's memory; the reader
//   preads straight into destination tensors.
// - A bytes item is a torch.save archive of some other object; it is written
//   and read verbatim.
//
// Every item carries a checksum, "xxh64:<16 hex digits>" (xxHash64, seed 0,
// over all bytes of the item), computed while the item is written and
// checked while it is read, without a second pass over the data.
//
// The zip format is written and parsed by hand (storage/zip_writer.hpp,
// storage/zip_reader.hpp; libtorch's PyTorchStreamWriter would do, but its
// CRC-32 runs at about 0.5 GB/s); the tests check the output byte for byte
// against PyTorchStreamWriter and Python's torch.save. Checksums are in
// storage/checksum.hpp, the sinks items are written to in
// storage/file_sink.hpp, the torch-free item API in storage/item_io.hpp
// (all included here for this header's users). Only
// this file and the storage sources include torch headers (ATen's tensor and
// two operators, not torch/torch.h).

#include "core/metadata.hpp"
#include "storage/checksum.hpp"
#include "storage/file_sink.hpp"
#include "storage/item_io.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dcpp {

namespace pickle {
struct value;
} // namespace pickle

// -- writing ------------------------------------------------------------------

// Sinks (item_sink, string_sink, file_sink): storage/file_sink.hpp; item
// results, bytes items and item locations: storage/item_io.hpp.

/// Writes `tensor` as one torch.save archive. A non-overlapping and dense
/// tensor (any strides, any storage around it) is written straight from its
/// memory with its strides; any other tensor is first made contiguous (a
/// copy of this tensor only). Non-CPU tensors are copied to the CPU. Fails
/// with `errc::unknown_dtype` / `errc::unsupported` for tensors DCP cannot
/// hold, or with the sink's error. `saved`, where given, is the dtype to
/// record: the tensor's own or one it carries (`carrier_dtype`).
caf::expected<item_result>
write_tensor_item(item_sink& out, const at::Tensor& tensor,
                  bool checksum = true, std::optional<dtype> saved = {});

/// The item bytes of `tensor` (what `write_tensor_item` writes).
caf::expected<std::string> encode_tensor_item(const at::Tensor& tensor);

// -- reading ------------------------------------------------------------------

/// What an item's `data.pkl` and zip directory say about its tensor.
struct tensor_item_layout {
  dtype type = dtype::float32;
  shape_t sizes;
  /// In elements, as saved (may be non-contiguous).
  shape_t strides;
  /// In elements.
  int64_t storage_offset = 0;
  /// Elements in the saved storage.
  int64_t storage_numel = 0;
  /// Start of the raw storage bytes, relative to the item start.
  uint64_t data_offset = 0;
  /// Bytes of the raw storage (`storage_numel * element_size`).
  uint64_t data_size = 0;
};

/// What a `torch._utils._rebuild_tensor_v2(...)` call in a `data.pkl`
/// says (docs/dcp-format.md §3.3); sizes in elements.
struct tensor_call {
  dtype type = dtype::float32;
  /// The storage record: `<prefix>/data/<key>`.
  std::string key;
  int64_t storage_numel = 0;
  int64_t storage_offset = 0;
  shape_t sizes;
  shape_t strides;
};

/// Reads `x` as such a call (at most 64 dimensions; the view is not yet
/// checked against its storage: `check_view`). Fails with
/// `errc::corrupt_item` saying what is wrong; callers add where.
caf::expected<tensor_call> read_tensor_call(const pickle::value& x);

/// Fails with `errc::corrupt_item` unless a tensor with `sizes` and
/// `strides` at `storage_offset` lies inside a storage of `storage_numel`
/// elements: no negative size, stride or offset, and (unless the tensor is
/// empty) every element index below `storage_numel`. The message names the
/// view; callers add which tensor it is.
[[nodiscard]] caf::error
check_view(const shape_t& sizes, const shape_t& strides, int64_t storage_offset,
           int64_t storage_numel);

/// One box of a saved chunk copied into a destination: the box
/// `[offsets, offsets + lengths)` of the saved tensor goes into `dest`,
/// whose shape must equal `lengths`. `dest` may have any strides, dtype and
/// device (copy_ semantics); it is filled with pread directly when its
/// memory and the box are both dense with the same layout and dtype.
struct chunk_copy {
  shape_t offsets;
  shape_t lengths;
  at::Tensor dest;
};

/// A tensor item opened for reading: its zip directory and `data.pkl` are
/// parsed and validated against the item's length (hostile input yields
/// `errc::corrupt_item` naming the file and offset, never a crash or an
/// allocation beyond the item's size). Holds the bytes around the tensor
/// data that parsing read, so a checksum costs no second read of them.
class tensor_item_reader {
public:
  tensor_item_reader();
  ~tensor_item_reader();
  tensor_item_reader(tensor_item_reader&&) noexcept;
  tensor_item_reader& operator=(tensor_item_reader&&) noexcept;

  /// Opens the item at `loc` (the file descriptor must stay open while the
  /// reader is used).
  static caf::expected<tensor_item_reader> open(const item_location& loc);

  /// Opens an item held in memory (`item` must outlive the reader); `what`
  /// names it in messages.
  static caf::expected<tensor_item_reader> open_memory(std::string_view item,
                                                       std::string what);

  const tensor_item_layout& layout() const;

  /// Fails with `errc::corrupt_item` unless the saved tensor has dtype
  /// `type` and shape `sizes` (what the metadata says of this chunk).
  [[nodiscard]] caf::error expect(dtype type, const shape_t& sizes) const;

  /// Performs `copies`. With a non-empty `checksum`, reads every byte of the
  /// item exactly once, hashing it on the way, and fails with
  /// `errc::checksum_mismatch` if the hash differs (destinations may then
  /// hold partial data). Fails with `errc::shape_mismatch` if a destination
  /// does not have the box's shape, `errc::invalid_argument` if a box leaves
  /// the saved tensor. `landing` says how bytes reach destinations that are
  /// not dcpp's huge-page memory (storage/landing.hpp).
  [[nodiscard]] caf::error
  read_into(const std::vector<chunk_copy>& copies,
            std::string_view checksum = {},
            landing_mode landing = landing_mode::automatic) const;

  /// Reads the saved tensor into fresh memory: the whole saved storage, viewed
  /// with the saved sizes, strides and storage offset (as torch.load does).
  caf::expected<at::Tensor> read_tensor(std::string_view checksum = {}) const;

  /// "path @ offset (length bytes)" for messages.
  std::string describe() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// Opens `path` (a regular file, never through a link:
/// detail::open_regular_file), reads the tensor item at `[offset, offset +
/// length)` into fresh memory (see `tensor_item_reader::read_tensor`).
caf::expected<at::Tensor> read_tensor_item(const std::string& path,
                                           uint64_t offset, uint64_t length,
                                           std::string_view checksum = {});

} // namespace dcpp
