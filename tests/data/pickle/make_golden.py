"""Writes golden `.metadata` files with the torch-free reference emitter
(`emit_metadata_raw.py` from the DCP format fixtures), for the byte-exact
encoder tests in tests/storage_format:

    python3 tests/data/pickle/make_golden.py /work/shared/fixtures/dcp-1.13

The content is the checkpoint in tests/data/dcp-1.13/ckpt_cpp_written with
its entries sorted by fqn (dcpp keeps `state_dict_metadata` and
`storage_data` in sorted maps):
* golden_cpp_written_113.metadata -- flavor "1.13"
* golden_cpp_written_2x.metadata  -- flavor "2.x", version "1.0.0", save_id
  "00000000-0000-0000-0000-000000000000", no checkpoint_id (the reference
  writes a path object there; dcpp writes a str, checked separately).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # leave the reference directory untouched
sys.path.insert(0, sys.argv[1])
from emit_metadata_raw import emit_metadata  # noqa: E402

F = "__0_0.distcp"
ENTRIES = [
    {"fqn": "bf16", "kind": "tensor", "dtype": "bfloat16", "size": [4],
     "chunks": [([0], [4], F, 747, 747)]},
    {"fqn": "dict", "kind": "bytes", "rel": F, "off": 4913, "len": 495},
    {"fqn": "f32", "kind": "tensor", "dtype": "float32", "size": [2, 3],
     "chunks": [([0, 0], [2, 3], F, 0, 747)]},
    {"fqn": "f32_t", "kind": "tensor", "dtype": "float32", "size": [4, 3],
     "chunks": [([0, 0], [4, 3], F, 2988, 747)]},
    {"fqn": "f64_scalar", "kind": "tensor", "dtype": "float64", "size": [],
     "chunks": [([], [], F, 2241, 747)]},
    {"fqn": "i64", "kind": "tensor", "dtype": "int64", "size": [3],
     "chunks": [([0], [3], F, 1494, 747)]},
    {"fqn": "int", "kind": "bytes", "rel": F, "off": 4482, "len": 431},
    {"fqn": "st", "kind": "tensor", "dtype": "float32", "size": [4, 3],
     "chunks": [([0, 0], [2, 3], F, 0, 747), ([2, 0], [2, 3], F, 0, 747)]},
    {"fqn": "view", "kind": "tensor", "dtype": "float32", "size": [3],
     "chunks": [([0], [3], F, 3735, 747)]},
]


def main():
    with open(os.path.join(HERE, "golden_cpp_written_113.metadata"), "wb") as f:
        f.write(emit_metadata(ENTRIES, "1.13"))
    with open(os.path.join(HERE, "golden_cpp_written_2x.metadata"), "wb") as f:
        f.write(emit_metadata(ENTRIES, "2.x", version="1.0.0",
                              save_id="00000000-0000-0000-0000-000000000000"))


if __name__ == "__main__":
    main()
