#pragma once

// A synthetic transformer-like model for demos, benchmarks and
// interoperability tests: an embedding, per-layer 2-D weights and 1-D
// biases, an optimizer-like nested dict, a `step` integer and a bytes item.
//
// Every element is a deterministic function of its flattened key `k` and its
// global row-major flat index `i`, so any rank count can verify a load
// without the writer:
//   v = ((fnv1a32(k) ^ seed) + i) % 65521
//   float tensors: float32(double(v) / 65521), integer tensors: v.
// `scripts/interop/synthetic.py` builds the same model in Python.

#include "storage/state_dict.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace dcpp::synthetic {

/// How tensors are split across ranks.
enum class layout : uint8_t {
  row,        ///< every tensor sharded along dim 0
  col,        ///< 2-D tensors along dim 1, 1-D tensors along dim 0
  replicated, ///< every rank holds every tensor in full
  mixed,      ///< embedding rows, attention columns, biases replicated, ...
};

caf::expected<layout> parse_layout(const std::string& str);
std::string to_string(layout x);

struct options {
  double size_mb = 16;
  uint32_t seed = 0;
  synthetic::layout split = layout::mixed;
  int32_t rank = 0;
  int32_t world = 1;
  /// Instead of the built-in model: float32 tensors with these flat keys and
  /// shapes and nothing else (no bytes items), e.g. the layout of PyTorch
  /// DCP's benchmark (`peer_dcp.py --print-layout`). Splits along dim 0
  /// then follow `torch.tensor_split`, as that benchmark's ShardedTensors
  /// do (see rank_range).
  std::vector<std::pair<std::string, shape_t>> tensors;
  /// Destination tensors of a load (make_empty_state_dict): dcpp's
  /// huge-page host memory instead of torch's allocator (`at::zeros`, what
  /// a PyTorch program's own tensors use). Either way every page is touched
  /// before the function returns.
  bool huge_pages = false;
};

/// One tensor of the model.
struct tensor_spec {
  /// Path in the nested state dict; the flattened key joins it with '.'.
  std::vector<std::string> path;
  shape_t shape;
  dtype type = dtype::float32;
  /// Dimension split across ranks, or -1 when replicated.
  int split_dim = -1;

  std::string key() const;
};

/// The model's tensors for `opts.size_mb` and `opts.split`.
std::vector<tensor_spec> specs(const options& opts);

/// 32-bit FNV-1a of `key`.
uint32_t fnv1a32(const std::string& key);

/// The rows [begin, end) of `n` that `rank` of `world` holds: chunks of
/// ceil(n / world), the last ones shorter or empty (torch's
/// ChunkShardingSpec); with `balanced`, `torch.tensor_split`'s split: the
/// first n % world ranks hold one row more than the others.
std::pair<int64_t, int64_t> rank_range(int64_t n, int32_t rank, int32_t world,
                                       bool balanced = false);

/// The expected values of the box (offsets, sizes) of tensor `key` whose
/// global shape is `shape`.
at::Tensor expected_box(const std::string& key, const shape_t& shape,
                        const shape_t& offsets, const shape_t& sizes,
                        dtype type, uint32_t seed);

/// This rank's state dict, filled with the model's values.
state_dict make_state_dict(const options& opts);

/// This rank's state dict with the same structure, zero-filled (the
/// destination of a load; see options::huge_pages).
state_dict make_empty_state_dict(const options& opts);

/// Compares a loaded state dict with the expected values; returns the keys
/// that differ (empty when everything is bit-exact).
std::vector<std::string> verify(const state_dict& sd, const options& opts);

/// Logical bytes of tensors this rank holds.
uint64_t local_bytes(const state_dict& sd);

} // namespace dcpp::synthetic
