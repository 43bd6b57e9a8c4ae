"""The synthetic model of apps/synthetic.{hpp,cpp}, in Python (torch 1.13).

Every element is a deterministic function of its flattened key k and global
row-major flat index i:  v = ((fnv1a32(k) ^ seed) + i) % 65521; float
tensors hold float32(double(v) / 65521), integer tensors v. Keys here are the
flattened keys (torch 1.13 DCP does not flatten nested dicts itself).
"""
import torch

HIDDEN = 257
VOCAB = 1009


def fnv1a32(key):
    h = 2166136261
    for c in key.encode():
        h ^= c
        h = (h * 16777619) & 0xFFFFFFFF
    return h


def _split_for(layout, ndim, attention):
    if layout == "row":
        return 0
    if layout == "col":
        return 1 if ndim == 2 else 0
    if layout == "replicated":
        return -1
    if layout == "mixed":
        if ndim == 1:
            return -1
        return 1 if attention else 0
    raise ValueError(f"unknown layout {layout!r}")


def specs(size_mb, layout):
    """[(key, shape, dtype, split_dim)] as apps/synthetic.cpp builds them."""
    h, v = HIDDEN, VOCAB
    out = []

    def add(key, shape, dtype, attention):
        out.append((key, tuple(shape), dtype, _split_for(layout, len(shape), attention)))

    add("model.embedding.weight", (v, h), torch.float32, False)
    add("model.position_ids", (v,), torch.int64, False)
    layer_bytes = ((3.0 * h * h + 3 * h) * 4 + (4.0 * h * h) * 2 + 4.0 * h * 4
                   + (4.0 * h * h) * 4)
    embed_bytes = 2.0 * v * h * 4 + v * 8
    budget = size_mb * 1024 * 1024 - embed_bytes
    layers = max(1, int(_round_half_away(budget / layer_bytes)))
    for layer in range(layers):
        p = f"model.layers.{layer}."
        add(p + "attn.qkv.weight", (3 * h, h), torch.float32, True)
        add(p + "attn.qkv.bias", (3 * h,), torch.float32, True)
        add(p + "mlp.fc1.weight", (4 * h, h), torch.bfloat16, False)
        add(p + "mlp.fc1.bias", (4 * h,), torch.float32, False)
        add(p + "mlp.fc2.weight", (h, 4 * h), torch.float32, False)
    add("optim.state.embedding.exp_avg", (v, h), torch.float32, False)
    return out


def _round_half_away(x):
    # std::llround
    return int(x + 0.5) if x >= 0 else -int(-x + 0.5)


def rank_range(n, rank, world):
    chunk = (n + world - 1) // world
    begin = min(n, chunk * rank)
    return begin, min(n, begin + chunk)


def expected_box(key, shape, offsets, sizes, dtype, seed):
    base = fnv1a32(key) ^ seed
    idx = torch.zeros(sizes, dtype=torch.int64)
    stride = 1
    for d in reversed(range(len(shape))):
        r = torch.arange(offsets[d], offsets[d] + sizes[d], dtype=torch.int64) * stride
        view = [1] * len(shape)
        view[d] = sizes[d]
        idx = idx + r.view(view)
        stride *= shape[d]
    v = (idx + base).remainder(65521)
    if dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        return v.to(dtype)
    return (v.to(torch.float64) / 65521.0).to(torch.float32).to(dtype)


STEP_BASE = 1000
PARAM_GROUPS = "lr=3e-4"
