"""Lets torch 1.13's distributed checkpoint package import on Python 3.11.

Why: Debian bookworm pairs python3-torch 1.13 with Python 3.11. Since 3.11,
`dataclasses` refuses a mutable default value, and torch 1.13's
`torch/distributed/_shard/sharded_tensor/metadata.py` declares a field as
`field(default=TensorProperties())`; importing
`torch.distributed._shard.checkpoint` therefore fails with
"ValueError: mutable default ... use default_factory". torch 2.0 changed
that line to `default_factory`.

What: `install()` puts a finder in front of `sys.meta_path` that takes over
exactly that one module. Its loader compiles the installed source with the
line rewritten to `field(default_factory=TensorProperties)`. The module
keeps its name and file (so pickled class paths are unchanged), nothing on
disk is modified, and no bytecode cache is read or written for it.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import sys

MODULE = "torch.distributed._shard.sharded_tensor.metadata"
BROKEN = b"field(default=TensorProperties())"
FIXED = b"field(default_factory=TensorProperties)"


class _PatchedSourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles the module from its source with the default fixed."""

    def get_code(self, fullname):
        source = self.get_data(self.path)
        return compile(source.replace(BROKEN, FIXED), self.path, "exec",
                       dont_inherit=True)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return None
        loader = _PatchedSourceLoader(fullname, spec.origin)
        return importlib.util.spec_from_file_location(fullname, spec.origin,
                                                      loader=loader)


def install():
    """Idempotent; a no-op before Python 3.11, where no fix is needed."""
    if sys.version_info < (3, 11):
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
