# Debian bookworm's torchrun (torch 1.13) crashes on Python 3.11 before it
# starts anything: "'NoneType' object has no attribute 'get'".
#
# Why: since Python 3.11, iterating the IntFlag `Std` no longer yields NONE
# (0) or ALL (3), so torchrun's `Std.from_str("0")` (its default for
# --redirects and --tee) returns None and `to_map` fails. Newer torch builds
# the value with `Std(int)`; this file does the same.
#
# Use: put this folder on torchrun's PYTHONPATH (the ranks under
# `--no_python` are not Python and need nothing):
#   PYTHONPATH=scripts/torchrun113 torchrun --nnodes 1 --nproc_per_node 2 ...
import re

try:
    from torch.distributed.elastic.multiprocessing import api as _api

    if _api.Std.from_str("0") is None:

        def _from_str(cls, vm):
            if re.match(_api._VALUE_REGEX, vm):
                return cls(int(vm))
            if re.match(_api._MAPPING_REGEX, vm):
                return {
                    int(i): cls(int(v))
                    for i, v in (m.split(":") for m in vm.split(","))
                }
            raise ValueError(vm)

        _api.Std.from_str = classmethod(_from_str)
except ImportError:
    pass
