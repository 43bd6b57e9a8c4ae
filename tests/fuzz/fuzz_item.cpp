// Fuzz target: the tensor item reader (storage/tensor_codec.hpp), which
// parses one torch.save zip archive sliced out of a `.distcp` file.
//
// Properties, for any input:
// - `tensor_item_reader::open_memory` and `open` (the same bytes in a file,
//   at a non-zero offset) agree: both fail with `errc::corrupt_item` /
//   `errc::unsupported`, or both succeed with the same layout (no crash, no
//   hang, no allocation beyond the item's size);
// - an item that opens has a layout inside the item, passes `expect` with
//   its own dtype and shape, reads with `read_tensor` (checksum verified;
//   a wrong checksum is `errc::checksum_mismatch`), and `read_into` gives the
//   same elements as `read_tensor` for the whole box, an inner box, a
//   non-contiguous destination, another dtype, and overlapping boxes in one
//   call.
//
// This target links libtorch (the reader fills at::Tensor destinations).

#include "core/error.hpp"
#include "storage/state_dict.hpp"
#include "storage/tensor_codec.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <ATen/ATen.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

using namespace dcpp;

namespace {

/// Destinations are only allocated for tensors up to this many elements (a
/// zero-stride view can have far more elements than the item has bytes).
constexpr int64_t max_dest_numel = int64_t{1} << 16;

/// Bytes the input is preceded and followed by in the file.
constexpr size_t file_prefix = 3;
constexpr size_t file_suffix = 2;

/// A memory-backed file holding `prefix + item + suffix`, reused across
/// inputs.
int item_file(std::string_view item) {
  static int fd = ::memfd_create("fuzz_item", MFD_CLOEXEC);
  DCPP_FUZZ_CHECK(fd >= 0, "memfd_create failed");
  std::string content(file_prefix, 'P');
  content.append(item.data(), item.size());
  content.append(file_suffix, 'S');
  DCPP_FUZZ_CHECK(::ftruncate(fd, 0) == 0, "ftruncate failed");
  DCPP_FUZZ_CHECK(::pwrite(fd, content.data(), content.size(), 0)
                    == static_cast<ssize_t>(content.size()),
                  "pwrite failed");
  return fd;
}

/// The elements of `t` in row-major order, as raw bytes.
std::string bytes_of(const at::Tensor& t) {
  auto c = t.contiguous();
  return std::string{static_cast<const char*>(c.data_ptr()),
                     static_cast<size_t>(c.numel()) * c.element_size()};
}

bool same_layout(const tensor_item_layout& x, const tensor_item_layout& y) {
  return x.type == y.type && x.sizes == y.sizes && x.strides == y.strides
         && x.storage_offset == y.storage_offset
         && x.storage_numel == y.storage_numel && x.data_offset == y.data_offset
         && x.data_size == y.data_size;
}

void check_read_into(const tensor_item_reader& reader, const at::Tensor& all,
                     const std::string& checksum) {
  const auto& layout = reader.layout();
  auto ndim = layout.sizes.size();
  auto type = to_scalar_type(layout.type);
  auto opts = at::TensorOptions().dtype(type);
  shape_t zeros(ndim, 0);
  // The whole tensor into a contiguous destination, checksum verified.
  auto whole = at::empty(layout.sizes, opts);
  auto err = reader.read_into({{zeros, layout.sizes, whole}}, checksum);
  DCPP_FUZZ_CHECK(!err, "read_into (whole): " + describe(err));
  DCPP_FUZZ_CHECK(bytes_of(whole) == bytes_of(all),
                  "read_into (whole) differs from read_tensor");
  // An inner box: the upper half of every dimension.
  shape_t offsets(ndim);
  shape_t lengths(ndim);
  auto expected = all;
  for (size_t i = 0; i < ndim; ++i) {
    offsets[i] = layout.sizes[i] / 2;
    lengths[i] = layout.sizes[i] - offsets[i];
    expected = expected.narrow(static_cast<int64_t>(i), offsets[i], lengths[i]);
  }
  auto inner = at::empty(lengths, opts);
  // A non-contiguous destination: the inner box, dimensions reversed.
  std::vector<int64_t> reversed(lengths.rbegin(), lengths.rend());
  std::vector<int64_t> perm(ndim);
  for (size_t i = 0; i < ndim; ++i)
    perm[i] = static_cast<int64_t>(ndim - 1 - i);
  auto strided = at::empty(reversed, opts).permute(perm);
  // Another dtype (copy_ converts); complex -> real would drop data.
  bool convert = !at::isComplexType(type);
  auto converted = at::empty(lengths, opts.dtype(at::kDouble));
  // All boxes in one call: they overlap in the saved tensor.
  std::vector<chunk_copy> copies{{zeros, layout.sizes, at::empty_like(whole)},
                                 {offsets, lengths, inner},
                                 {offsets, lengths, strided}};
  if (convert)
    copies.push_back({offsets, lengths, converted});
  err = reader.read_into(copies);
  DCPP_FUZZ_CHECK(!err, "read_into (boxes): " + describe(err));
  DCPP_FUZZ_CHECK(bytes_of(copies[0].dest) == bytes_of(all),
                  "read_into (whole, among boxes) differs from read_tensor");
  DCPP_FUZZ_CHECK(bytes_of(inner) == bytes_of(expected),
                  "read_into (inner box) differs from read_tensor");
  DCPP_FUZZ_CHECK(bytes_of(strided) == bytes_of(expected),
                  "read_into (strided destination) differs from read_tensor");
  if (convert)
    DCPP_FUZZ_CHECK(bytes_of(converted) == bytes_of(expected.to(at::kDouble)),
                    "read_into (float64 destination) differs from read_tensor");
  // A box outside the tensor is refused.
  if (ndim > 0) {
    auto outside = lengths;
    outside[0] += 1;
    err = reader.read_into({{offsets, outside, at::empty(outside, opts)}});
    DCPP_FUZZ_CHECK(code_of(err) == errc::invalid_argument,
                    "a box outside the tensor: " + describe(err));
  }
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view item{reinterpret_cast<const char*>(data), size};
  auto mem = tensor_item_reader::open_memory(item, "fuzz input");
  item_location loc{item_file(item), "fuzz file", file_prefix, size};
  auto file = tensor_item_reader::open(loc);
  if (!mem) {
    DCPP_FUZZ_CHECK(fuzz::has_code(mem.error(),
                                   {errc::corrupt_item, errc::unsupported}),
                    describe(mem.error()));
    DCPP_FUZZ_CHECK(!file, "opens from a file but not from memory: "
                             + describe(mem.error()));
    return 0;
  }
  DCPP_FUZZ_CHECK(file, "opens from memory but not from a file: "
                          + describe(file.error()));
  const auto& layout = mem->layout();
  DCPP_FUZZ_CHECK(same_layout(layout, file->layout()),
                  "memory and file give different layouts");
  DCPP_FUZZ_CHECK(layout.data_offset <= size
                    && layout.data_size <= size - layout.data_offset,
                  "tensor data lies outside the item");
  DCPP_FUZZ_CHECK(layout.data_size
                    == static_cast<uint64_t>(layout.storage_numel)
                         * element_size(layout.type),
                  "storage size and data size differ");
  auto err = mem->expect(layout.type, layout.sizes);
  DCPP_FUZZ_CHECK(!err, describe(err));
  auto checksum = item_checksum(item);
  auto all = mem->read_tensor(checksum);
  DCPP_FUZZ_CHECK(all, "read_tensor: " + describe(all.error()));
  DCPP_FUZZ_CHECK(all->sizes() == c10::IntArrayRef{layout.sizes},
                  "read_tensor gives another shape");
  auto from_file = file->read_tensor(checksum);
  DCPP_FUZZ_CHECK(from_file,
                  "read_tensor (file): " + describe(from_file.error()));
  auto wrong = checksum;
  wrong.back() = wrong.back() == '0' ? '1' : '0';
  auto bad = mem->read_tensor(wrong);
  DCPP_FUZZ_CHECK(!bad && code_of(bad.error()) == errc::checksum_mismatch,
                  "a wrong checksum is not detected");
  if (all->numel() <= max_dest_numel) {
    DCPP_FUZZ_CHECK(bytes_of(*from_file) == bytes_of(*all),
                    "memory and file give different elements");
    check_read_into(*mem, *all, checksum);
    check_read_into(*file, *all, checksum);
  }
  return 0;
}
