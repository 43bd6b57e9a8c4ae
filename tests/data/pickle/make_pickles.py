"""Writes the pickles that tests/storage_format reads, with CPython's own
pickler (any Python 3.8+, torch not needed):

    python3 tests/data/pickle/make_pickles.py

* values_p{2,4,5}.pickle -- plain Python values (every scalar width, tuples
  of each size, nesting, shared references, set, frozenset, bytes).
* md_v2_p{2,4,5}.pickle -- a `Metadata` laid out as torch >= 2 writes it.
  Stand-in classes are registered under torch's module names, so the
  globals, memo use and framing are exactly CPython's. The three files hold
  the same checkpoint and differ in how leaves are spelled:
    p2: enum member as getattr(EnumCls, name) (CPython 3.11.2's default),
        checkpoint_id a pathlib.PosixPath (parts, Python <= 3.12)
    p4: enum member as EnumCls(0), checkpoint_id a plain str
    p5: enum member as EnumCls(0), checkpoint_id a PosixPath from
        `pathlib._local` with one raw string (Python 3.13)
* md_v2_transforms.pickle -- protocol 4; one _StorageInfo carries
  `transform_descriptors` (must be refused).

The expected decoded values are spelled out in metadata_codec_test.cpp.
"""
import collections
import enum
import os
import pathlib
import pickle
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))


def module(name):
    """Returns a (new, empty) module registered in sys.modules as `name`."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        full = ".".join(parts[:i])
        if full not in sys.modules:
            sys.modules[full] = types.ModuleType(full)
            if i > 1:
                setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1],
                        sys.modules[full])
    return sys.modules[name]


def place(mod, obj, name=None):
    name = name or obj.__name__
    obj.__module__ = mod.__name__
    obj.__qualname__ = name
    setattr(mod, name, obj)
    return obj


# ---------------------------------------------------------------- torch leaves
torch = module("torch")
serialization = module("torch.serialization")


class Size(tuple):
    def __reduce__(self):
        return (Size, (tuple(self),))


place(torch, Size)


class dtype:
    def __init__(self, name):
        self.name = name

    def __reduce__(self):
        return self.name  # pickled as the global torch.<name>


place(torch, dtype)
for _name in ("float32", "bfloat16", "int64"):
    setattr(torch, _name, dtype(_name))


def _get_layout(name):
    return name


place(serialization, _get_layout)


class layout:
    def __reduce__(self):
        return (_get_layout, ("torch.strided",))


torch.strided = layout()

# ------------------------------------------------------------ DCP (torch >= 2)
md_mod = module("torch.distributed.checkpoint.metadata")
fs_mod = module("torch.distributed.checkpoint.filesystem")


class _MEM_FORMAT_ENCODING(enum.Enum):
    TORCH_CONTIGUOUS_FORMAT = 0
    TORCH_CHANNELS_LAST = 1
    TORCH_PRESERVE_FORMAT = 2


place(md_mod, _MEM_FORMAT_ENCODING)
ENUM_BY_VALUE = [False]
_default_enum_reduce = _MEM_FORMAT_ENCODING.__reduce_ex__


def _enum_reduce(self, proto):
    if ENUM_BY_VALUE[0]:
        return (self.__class__, (self.value,))
    return _default_enum_reduce(self, proto)


_MEM_FORMAT_ENCODING.__reduce_ex__ = _enum_reduce


class TensorProperties:
    def __init__(self, dt):
        self.dtype = dt
        self.layout = torch.strided
        self.requires_grad = False
        self.memory_format = "contiguous"
        self.pin_memory = False

    def __getstate__(self):
        return (self.dtype, self.layout, self.requires_grad,
                _MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT, self.pin_memory)

    def __setstate__(self, state):
        pass


class ChunkStorageMetadata:
    def __init__(self, offsets, sizes):
        self.offsets = Size(offsets)
        self.sizes = Size(sizes)


class TensorStorageMetadata:
    def __init__(self, properties, size, chunks):
        self.properties = properties
        self.size = Size(size)
        self.chunks = chunks


class BytesStorageMetadata:
    pass


class MetadataIndex:
    def __init__(self, fqn, offset=None, index=None):
        self.fqn = fqn
        self.index = index
        if offset is not None:
            self.offset = Size(offset)

    def __hash__(self):
        return hash((self.fqn, getattr(self, "offset", None)))

    def __eq__(self, other):
        return (self.fqn, getattr(self, "offset", None)) == (
            other.fqn, getattr(other, "offset", None))


class StorageMeta:
    def __init__(self, checkpoint_id, save_id):
        self.checkpoint_id = checkpoint_id
        self.save_id = save_id
        self.load_id = None
        self.modules = []


class Metadata:
    def __init__(self, sdm, planner_data, storage_data, storage_meta,
                 version):
        self.state_dict_metadata = sdm
        self.planner_data = planner_data
        self.storage_data = storage_data
        self.storage_meta = storage_meta
        self.version = version


class _StorageInfo:
    def __init__(self, relative_path, offset, length,
                 transform_descriptors=None):
        self.relative_path = relative_path
        self.offset = offset
        self.length = length
        self.transform_descriptors = transform_descriptors

    def __getstate__(self):  # as newest torch: drop None fields
        return {k: v for k, v in self.__dict__.items() if v is not None}


for _cls in (TensorProperties, ChunkStorageMetadata, TensorStorageMetadata,
             BytesStorageMetadata, MetadataIndex, StorageMeta, Metadata):
    place(md_mod, _cls)
place(fs_mod, _StorageInfo)

# Python 3.13 pickles paths as pathlib._local.PosixPath(raw string).
local_mod = module("pathlib._local")


class PosixPath313:
    def __init__(self, raw):
        self.raw = raw

    def __reduce__(self):
        return (PosixPath313, (self.raw,))


place(local_mod, PosixPath313, "PosixPath")


def make_metadata(checkpoint_id, transforms=None):
    f32 = TensorProperties(torch.float32)
    sdm = {
        "model.w": TensorStorageMetadata(
            f32, (8, 4), [ChunkStorageMetadata((0, 0), (4, 4)),
                          ChunkStorageMetadata((4, 0), (4, 4))]),
        "opt.state.0.step": BytesStorageMetadata(),
        "big": TensorStorageMetadata(
            TensorProperties(torch.bfloat16), (3_000_000_000,),
            [ChunkStorageMetadata((0,), (3_000_000_000,))]),
    }
    storage = {
        MetadataIndex("model.w", (0, 0), 0):
            _StorageInfo("__0_0.distcp", 0, 747),
        MetadataIndex("model.w", (4, 0), 1):
            _StorageInfo("__1_0.distcp", 5_000_000_000, 747),
        MetadataIndex("opt.state.0.step"):
            _StorageInfo("__0_0.distcp", 747, 431, transforms),
        MetadataIndex("big", (0,), 0):
            _StorageInfo("__0_1.distcp", 0, 6_000_000_000),
    }
    planner = {
        "model.w": ("model", "w"),
        "opt.state.0.step": ("opt", "state", 0, "step"),
        "big": ("big",),
    }
    return Metadata(sdm, planner, storage,
                    StorageMeta(checkpoint_id, "save-0001"), "1.0.0")


def values():
    shared = [9]
    return {
        "none": None, "true": True, "false": False,
        "i1": 7, "i2": 300, "i4": -5, "i4max": 2 ** 31 - 1,
        "l1": 2 ** 40, "l1neg": -2 ** 63, "l1max": 2 ** 63 - 1,
        "float": 1.5, "text": "h\u00e9llo \u2603", "bytes": b"\x00\x01",
        "t0": (), "t1": (1,), "t2": (1, 2), "t3": (1, 2, 3),
        "t5": (1, 2, 3, 4, 5), "nested": [1, [2, [3]]],
        "set": {4}, "frozenset": frozenset({5}),
        "shared": [shared, shared],
        "odict": collections.OrderedDict(),
    }


def dump(name, obj, protocol):
    with open(os.path.join(HERE, name), "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def main():
    for p in (2, 4, 5):
        dump(f"values_p{p}.pickle", values(), p)
    ENUM_BY_VALUE[0] = False
    dump("md_v2_p2.pickle", make_metadata(pathlib.PosixPath("/ckpt/run1")), 2)
    ENUM_BY_VALUE[0] = True
    dump("md_v2_p4.pickle", make_metadata("/ckpt/run1"), 4)
    dump("md_v2_p5.pickle", make_metadata(PosixPath313("/ckpt/run1")), 5)
    dump("md_v2_transforms.pickle",
         make_metadata("/ckpt/run1", transforms=["zstd"]), 4)


if __name__ == "__main__":
    main()
