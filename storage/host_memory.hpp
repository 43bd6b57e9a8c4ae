#pragma once

// Host memory for tensors that dcpp allocates itself (async-save staging,
// load destinations of `make_state_dict_for`, the CLI). Large buffers are
// 2 MiB aligned and advised to use transparent huge pages: on this kind of
// machine first touch of fresh 4 KiB pages runs at ~0.35 GB/s while huge
// pages run at ~10 GB/s (shared/bench/BASELINE.md), and that first touch
// otherwise dominates staging and loading.

#include "core/metadata.hpp"

#include <ATen/core/Tensor.h>

namespace dcpp {

/// An uninitialised, contiguous CPU tensor of `sizes` and `type`.
at::Tensor empty_host_tensor(const shape_t& sizes, c10::ScalarType type);

} // namespace dcpp
