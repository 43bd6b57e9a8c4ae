"""Makes Debian's torch 1.13 DCP usable on Python 3.11 and able to read
checkpoints whose `.metadata` uses torch >= 2 class paths.

1. Installs the Python 3.11 import fix of torch113_py311_shim.py.

2. `RemappingReader` is a FileSystemReader whose `read_metadata` maps the
   torch >= 2 names (`torch.distributed.checkpoint.*`) onto the 1.13
   classes, so a torch-2-flavored `.metadata` (dcpp's default) loads in 1.13.
"""
import io
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch113_py311_shim  # noqa: E402

torch113_py311_shim.install()

import torch  # noqa: E402
import torch.distributed._shard.checkpoint as dcp  # noqa: E402
from torch.distributed._shard.checkpoint import metadata as _md  # noqa: E402
from torch.distributed._shard.checkpoint import filesystem as _fs  # noqa: E402
from torch.distributed._shard.sharded_tensor import metadata as _stmd  # noqa: E402


class _StorageMetaStandIn:
    """torch >= 2 `StorageMeta`; 1.13 never reads it."""


_NEW_TO_OLD = {
    ("torch.distributed.checkpoint.metadata", "Metadata"): _md.Metadata,
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"): _md.TensorStorageMetadata,
    ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"): _md.BytesStorageMetadata,
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"): _md.ChunkStorageMetadata,
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"): _md.MetadataIndex,
    ("torch.distributed.checkpoint.metadata", "TensorProperties"): _stmd.TensorProperties,
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"): _stmd.MEM_FORMAT_ENCODING,
    ("torch.distributed.checkpoint.metadata", "StorageMeta"): _StorageMetaStandIn,
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _fs._StorageInfo,
}


class RemappingUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        target = _NEW_TO_OLD.get((module, name))
        if target is not None:
            return target
        return super().find_class(module, name)


class RemappingReader(dcp.FileSystemReader):
    """Reads `.metadata` written with either torch 1.13 or torch >= 2 paths."""

    def read_metadata(self):
        with open(os.path.join(self.path, ".metadata"), "rb") as f:
            return RemappingUnpickler(io.BytesIO(f.read())).load()
