#pragma once

// The safetensors file format (Hugging Face): an 8-byte little-endian
// header length N, N bytes of JSON
//   {"<name>": {"dtype": "F32", "shape": [..], "data_offsets": [b, e]},
//    "__metadata__": {"<str>": "<str>"}}
// (padded with spaces), then the data buffer; offsets are relative to the
// buffer, tensors row-major and contiguous. Decoding trusts nothing and
// checks what the reference implementation checks: a bounded header,
// valid JSON of that shape, known dtypes, non-negative shapes, sizes that
// match dtype and shape, offsets inside the file, no overlaps and no gaps.
// Torch-free (the fuzz target links it alone).

#include "core/metadata.hpp"

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace dcpp {

// Bounds (hostile files): decoding a header costs time and memory linear
// in its length, and what the importer builds from it linear in the number
// of tensors and the sum of their ranks, each bounded here.

/// Largest header dcpp accepts (the reference implementation's bound).
constexpr uint64_t safetensors_max_header = uint64_t{100} << 20;

/// Most tensors in one file: far above real files (the largest models
/// shard into files of a few thousand tensors), far below what a 100 MiB
/// header could declare (about two million). An import builds a state dict
/// entry and a tensor item per tensor: at this bound about 30 s and 2 GB.
constexpr size_t safetensors_max_tensors = size_t{1} << 16;

/// Highest rank of a tensor: the most a DCP tensor item holds
/// (storage/tensor_codec.cpp), so every tensor imported can be saved.
constexpr size_t safetensors_max_rank = 64;

/// The header entry of string metadata; no tensor may have this name.
constexpr const char* safetensors_metadata_name = "__metadata__";

/// `__metadata__` keys dcpp writes: `dcpp_bytes_prefix + fqn` holds a bytes
/// item (DCP's serialized value), base64-encoded.
constexpr const char* safetensors_bytes_prefix = "dcpp.bytes.";

/// Hugging Face's dtype name ("F32", "BF16", "BOOL", "C64", ...). Fails
/// with `errc::unsupported` for complex128, which safetensors lacks.
caf::expected<std::string> safetensors_dtype_name(dtype x);

/// Inverse of `safetensors_dtype_name`; `errc::unknown_dtype` otherwise
/// (including safetensors dtypes dcpp cannot hold: F8_*, U16, U32, U64).
caf::expected<dtype> parse_safetensors_dtype(const std::string& name);

struct safetensors_entry {
  std::string name;
  dtype type = dtype::float32;
  shape_t shape;
  /// Relative to the data buffer.
  uint64_t begin = 0;
  uint64_t end = 0;
};

struct safetensors_header {
  /// In file order (by `begin`).
  std::vector<safetensors_entry> tensors;
  std::map<std::string, std::string> metadata;
  /// File offset of the data buffer (8 + header length).
  uint64_t data_start = 0;
};

/// Reads the header length from the first 8 bytes of a file of
/// `file_size` bytes. Fails (`errc::corrupt_item`, naming `file`) for a
/// file shorter than 8 bytes, a length beyond `safetensors_max_header`
/// (`errc::too_large`) or beyond the file.
caf::expected<uint64_t> safetensors_header_length(std::string_view first8,
                                                  uint64_t file_size,
                                                  const std::string& file);

/// Decodes and validates the header JSON `json` of a file of `file_size`
/// bytes whose header length is `json.size()`, in time linear in its
/// length. Errors (`errc::corrupt_item`, `errc::unknown_dtype`, and
/// `errc::too_large` beyond `safetensors_max_tensors` or
/// `safetensors_max_rank`) name the file and tensor.
caf::expected<safetensors_header>
decode_safetensors_header(std::string_view json, uint64_t file_size,
                          const std::string& file);

/// The header bytes (8-byte length + JSON padded with spaces to a multiple
/// of 8) for `tensors` laid out back to back in the given order (their
/// `begin`/`end` are ignored and recomputed) and `metadata`.
std::string
encode_safetensors_header(const std::vector<safetensors_entry>& tensors,
                          const std::map<std::string, std::string>& metadata);

/// Bytes of one tensor of type `type` and shape `shape`, or nullopt-like
/// failure on overflow (`errc::too_large`).
caf::expected<uint64_t> safetensors_nbytes(dtype type, const shape_t& shape);

std::string base64_encode(std::string_view data);

/// Fails with `errc::corrupt_item` on characters outside the alphabet or a
/// bad length.
caf::expected<std::string> base64_decode(std::string_view text);

} // namespace dcpp
