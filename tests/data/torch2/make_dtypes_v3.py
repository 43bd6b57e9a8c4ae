#!/usr/bin/env python3
"""Writes dtypes_v3.pt: torch 2.x's torch.save of the dtypes libtorch 1.13
has no tensor type for (pickled with torch._utils._rebuild_tensor_v3 over a
torch.storage.UntypedStorage), read by tests/storage/torch_save_test.cpp.

Run with PyTorch 2.6 (the interop2 chroot):
  DCPP_TORCH2_ROOT=/work/cache/trixie scripts/torch2/run.sh \\
    --bind tests/data/torch2 -- python3 tests/data/torch2/make_dtypes_v3.py
"""
import os

import torch

HERE = os.path.dirname(os.path.abspath(__file__))

# Bits chosen past the signed range, made as signed ints and viewed (2.6
# computes little in the new unsigned types).
u16 = torch.tensor([1, 40000 - 65536, -1], dtype=torch.int16).view(torch.uint16)
u32 = torch.tensor([7, -1], dtype=torch.int32).view(torch.uint32)
u64 = torch.tensor([2**62, -2], dtype=torch.int64).view(torch.uint64)
# float8 e4m3fn: 1.0 = 0x38, 0.5 = 0x30, -2.0 = 0xc0;
# e5m2: 1.0 = 0x3c, 2.0 = 0x40, -0.5 = 0xb8.
f8a = torch.tensor([1.0, 0.5, -2.0]).to(torch.float8_e4m3fn)
f8b = torch.tensor([1.0, 2.0, -0.5]).to(torch.float8_e5m2)
base = torch.arange(6, dtype=torch.int16).view(torch.uint16)
obj = {"u16": u16, "u32": u32, "u64": u64, "f8_e4m3fn": f8a, "f8_e5m2": f8b,
       # A view at storage offset 2 (elements) of a 6-element storage.
       "u16_view": base[2:5]}
torch.save(obj, os.path.join(HERE, "dtypes_v3.pt"))
back = torch.load(os.path.join(HERE, "dtypes_v3.pt"), weights_only=True)
assert all(back[k].dtype == v.dtype and back[k].view(torch.uint8).equal(
    v.contiguous().view(torch.uint8)) for k, v in obj.items())
print("wrote dtypes_v3.pt:", {k: str(v.dtype) for k, v in obj.items()})
