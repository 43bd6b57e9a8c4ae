#pragma once

// The `data.pkl` record of a tensor item (docs/dcp-format.md §3): the
// protocol-2 pickle of `torch._utils._rebuild_tensor_v2(...)`, byte for
// byte what Python's torch.save writes for the same tensor. Torch-free: the
// tensor is described by its dtype, storage size, sizes and strides.

#include "core/metadata.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

namespace dcpp::detail {

/// A view of a tensor's sizes or strides (`c10::IntArrayRef` without the
/// torch headers).
class int_list {
public:
  int_list(const int64_t* data, size_t size) : data_(data), size_(size) {
    // nop
  }

  const int64_t* begin() const {
    return data_;
  }

  const int64_t* end() const {
    return data_ + size_;
  }

  size_t size() const {
    return size_;
  }

  bool empty() const {
    return size_ == 0;
  }

private:
  const int64_t* data_;
  size_t size_;
};

/// The `data.pkl` of a tensor of `type` viewing a storage of
/// `storage_numel` elements (storage offset 0) with `sizes` and `strides`:
/// `_rebuild_tensor_v2`, or for a dtype without a typed storage class
/// `_rebuild_tensor_v3` as torch 2.x writes it.
std::string tensor_pickle(dtype type, int64_t storage_numel, int_list sizes,
                          int_list strides);

} // namespace dcpp::detail
