#include "storage/host_memory.hpp"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/ScalarType.h>

#include <sys/mman.h>

#include <cstdlib>

namespace dcpp {

namespace {

constexpr size_t huge_page = size_t{2} << 20;

} // namespace

at::Tensor empty_host_tensor(const shape_t& sizes, c10::ScalarType type) {
  auto bytes = static_cast<size_t>(numel(sizes)) * c10::elementSize(type);
  auto opts = at::TensorOptions().dtype(type).device(at::kCPU);
  if (bytes < huge_page)
    return at::empty(sizes, opts);
  auto rounded = (bytes + huge_page - 1) / huge_page * huge_page;
  void* ptr = std::aligned_alloc(huge_page, rounded);
  if (ptr == nullptr)
    return at::empty(sizes, opts); // let torch report the failure
  ::madvise(ptr, rounded, MADV_HUGEPAGE);
  return at::from_blob(
    ptr, sizes, [](void* p) { std::free(p); }, opts);
}

} // namespace dcpp
