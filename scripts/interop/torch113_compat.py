"""Makes Debian's torch 1.13 DCP usable on Python 3.11 and able to read
checkpoints whose `.metadata` uses torch >= 2 class paths.

1. Python 3.11's dataclasses refuse the unhashable default
   `field(default=TensorProperties())` in torch 1.13's
   `torch/distributed/_shard/sharded_tensor/metadata.py`, so importing DCP
   raises ValueError. `install()` adds an import hook that compiles that one
   module from its installed source with `default_factory=TensorProperties`
   instead (torch 2.0's fix). Module names and pickled class paths stay as
   they are; no file is changed.

2. `RemappingReader` is a FileSystemReader whose `read_metadata` maps the
   torch >= 2 names (`torch.distributed.checkpoint.*`) onto the 1.13
   classes, so a torch-2-flavored `.metadata` (dcpp's default) loads in 1.13.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import io
import os
import pickle
import sys

_MODULE = "torch.distributed._shard.sharded_tensor.metadata"


class _PatchedLoader(importlib.machinery.SourceFileLoader):
    def get_data(self, path):
        data = super().get_data(path)
        if path.endswith(".py"):
            data = data.replace(b"field(default=TensorProperties())",
                                b"field(default_factory=TensorProperties)")
        return data

    def path_stats(self, path):
        # Force compiling the patched source instead of the cached bytecode.
        raise OSError("patched module has no bytecode cache")


class _PatchFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.origin is None:
            return None
        return importlib.util.spec_from_file_location(
            fullname, spec.origin, loader=_PatchedLoader(fullname, spec.origin))


def install():
    if sys.version_info >= (3, 11) and not any(
            isinstance(f, _PatchFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchFinder())


install()

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


class _RemappingUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        target = _NEW_TO_OLD.get((module, name))
        if target is not None:
            return target
        return super().find_class(module, name)


class RemappingReader(dcp.FileSystemReader):
    """Reads `.metadata` written with either torch 1.13 or torch >= 2 paths."""

    def read_metadata(self):
        with open(os.path.join(self.path, ".metadata"), "rb") as f:
            return _RemappingUnpickler(io.BytesIO(f.read())).load()
