#include "storage/aligned_buffers.hpp"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>

namespace dcpp::detail {

void advise_huge_pages(void* ptr, size_t size) {
  constexpr uintptr_t huge = uintptr_t{2} << 20;
  auto begin = (reinterpret_cast<uintptr_t>(ptr) + huge - 1) & ~(huge - 1);
  auto end = (reinterpret_cast<uintptr_t>(ptr) + size) & ~(huge - 1);
  if (end > begin)
    madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

scratch_buffer::~scratch_buffer() {
  std::free(ptr_);
}

char* scratch_buffer::get(size_t size) {
  if (size <= capacity_)
    return ptr_;
  std::free(ptr_);
  ptr_ = nullptr;
  capacity_ = 0;
  // From one block on, whole huge pages: reads land in them at the speed of
  // huge pages (storage/landing.hpp), and one 2 MiB page costs one fault.
  size_t align = size >= block_size ? (size_t{2} << 20) : 64;
  size_t cap = (size + align - 1) / align * align;
  void* p = nullptr;
  if (posix_memalign(&p, align, cap) != 0)
    return nullptr;
  advise_huge_pages(p, cap);
  ptr_ = static_cast<char*>(p);
  capacity_ = cap;
  return ptr_;
}

void scratch_buffer::trim(size_t keep) {
  if (capacity_ > keep) {
    std::free(ptr_);
    ptr_ = nullptr;
    capacity_ = 0;
  }
}

scratch_buffer& block_scratch() {
  thread_local scratch_buffer buf;
  return buf;
}

} // namespace dcpp::detail
