# Debian's PyTorch 2.6 is built without libuv, while TCPStore defaults to
# use_libuv=True (clients too: "use_libuv was requested but PyTorch was
# build without libuv support"): every torchrun and
# init_process_group(env://) fails until that default is turned off.
# rendezvous.py and elastic's utils read USE_LIBUV; other call sites
# construct TCPStore with the C++ default, so every module of torch that
# holds the class gets one whose default is use_libuv=False.
import os
import sys

os.environ.setdefault("USE_LIBUV", "0")
try:
    import torch.distributed as _dist

    if _dist.is_available():
        import torch.distributed.rendezvous  # noqa: F401 (binds TCPStore)

        _Orig = _dist.TCPStore

        class TCPStore(_Orig):
            def __init__(self, *args, **kwargs):
                kwargs.setdefault("use_libuv", False)
                super().__init__(*args, **kwargs)

        TCPStore.__name__ = TCPStore.__qualname__ = "TCPStore"
        for _name, _mod in list(sys.modules.items()):
            if _name.startswith("torch") and getattr(_mod, "TCPStore", None) is _Orig:
                _mod.TCPStore = TCPStore
except ImportError:
    pass
