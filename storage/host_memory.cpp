#include "storage/host_memory.hpp"

#include "core/error.hpp"
#include "storage/landing.hpp"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/ScalarType.h>

#include <sys/mman.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23 // Linux 5.14
#endif

namespace dcpp {

namespace {

constexpr size_t huge_page = size_t{2} << 20;
constexpr size_t small_page = size_t{4} << 10;

size_t round_up(size_t x, size_t to) {
  return (x + to - 1) / to * to;
}

void unmap(std::byte* data, size_t size) {
  detail::forget_huge_memory(data);
  ::munmap(data, size);
}

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
  detail::note_huge_memory(ptr, rounded);
  return at::from_blob(
    ptr, sizes,
    [](void* p) {
      detail::forget_huge_memory(p);
      std::free(p);
    },
    opts);
}

// -- host_region --------------------------------------------------------------

host_region::~host_region() {
  if (data_ != nullptr)
    unmap(data_, size_);
}

host_region::host_region(host_region&& other) noexcept
  : data_(std::exchange(other.data_, nullptr)),
    size_(std::exchange(other.size_, 0)) {
  // nop
}

host_region& host_region::operator=(host_region&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr)
      unmap(data_, size_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

caf::expected<host_region> host_region::map(size_t bytes, bool prefault) {
  if (bytes == 0)
    return make_error(errc::invalid_argument, "host_region: zero bytes");
  auto size = round_up(bytes, huge_page);
  // Over-map by one huge page and trim both ends to a 2 MiB boundary: mmap
  // only promises 4 KiB alignment, and THP needs aligned 2 MiB ranges.
  auto span = size + huge_page;
  void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    auto err = errno;
    return make_error(errc::storage_failure,
                      "host_region: mmap of " + std::to_string(span)
                        + " bytes failed: " + std::strerror(err));
  }
  auto base = reinterpret_cast<uintptr_t>(raw);
  auto aligned = round_up(base, huge_page);
  if (aligned > base)
    ::munmap(raw, aligned - base);
  auto tail = base + span - (aligned + size);
  if (tail > 0)
    ::munmap(reinterpret_cast<void*>(aligned + size), tail);
  auto* data = reinterpret_cast<std::byte*>(aligned);
  // Advice only: without THP the region still works, on 4 KiB pages.
  ::madvise(data, size, MADV_HUGEPAGE);
  detail::note_huge_memory(data, size);
  if (prefault && ::madvise(data, size, MADV_POPULATE_WRITE) != 0) {
    // Older kernels: one write per page faults it in (a huge page at once
    // where THP applies).
    for (size_t off = 0; off < size; off += small_page)
      reinterpret_cast<volatile char*>(data)[off] = 0;
  }
  return host_region{data, size};
}

} // namespace dcpp
