"""State dicts as trees, for the interoperability tests (any torch
version): DCP 2.x's flattening, and exact comparison of nested values."""
import torch


# -- DCP's flattening (torch 2.x flatten_state_dict / traverse_state_dict) --


def is_terminal(value):
    if isinstance(value, dict):
        return False
    if not isinstance(value, list):
        return True
    for entry in value:
        if isinstance(entry, (dict, list)) and not is_terminal(entry):
            return False
        if isinstance(entry, torch.Tensor):
            return False
    return True


def dcp_flatten(sd):
    flat, mapping = {}, {}

    def visit(path, value):
        if isinstance(value, dict):
            for k, v in value.items():
                visit(path + (str(k),), v)
        elif is_terminal(value):
            key = ".".join(map(str, path))
            assert key not in flat, key
            flat[key] = value
            mapping[key] = path
        else:
            for i, v in enumerate(value):
                visit(path + (i,), v)

    for k, v in sd.items():
        visit((str(k),), v)
    return flat, mapping


def same(a, b):
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.dtype == b.dtype and a.shape == b.shape):
            return False
        try:
            return torch.equal(a, b)
        except RuntimeError:  # no comparison for the type (2.x's float8): bits
            return torch.equal(a.reshape(-1).contiguous().view(torch.uint8),
                               b.reshape(-1).contiguous().view(torch.uint8))
    return type(a) is type(b) and a == b


def plain(value):
    """`value` with every OrderedDict a dict (the one thing export does not
    keep: DCP's flattening records no container class)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if type(value) is tuple:  # not torch.Size: a value of its own
        return tuple(plain(v) for v in value)
    return value


def first_difference(got, want, where="top"):
    """Where `got` differs from `want` (types exactly, dict keys with their
    types, list lengths, tensors by dtype, shape and bits), or None."""
    if isinstance(want, dict):
        if type(got) is not dict:
            return f"{where}: a {type(got).__name__}, expected a dict"
        if set(got) != set(want):
            return f"{where}: keys {sorted(got, key=repr)} != {sorted(want, key=repr)}"
        for k in want:
            d = first_difference(got[k], want[k], f"{where}[{k!r}]")
            if d:
                return d
        return None
    if isinstance(want, (list, tuple)):
        if type(got) is not type(want) or len(got) != len(want):
            return f"{where}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want)):
            d = first_difference(g, w, f"{where}[{i}]")
            if d:
                return d
        return None
    if not same(got, want):
        return f"{where}: {got!r} != {want!r}"
    return None


def normalize(value):
    """The input as DCP's flattening nests it: mappings and traversed lists
    become dicts keyed by str, containers without leaves vanish."""
    if isinstance(value, dict) or (isinstance(value, list) and not is_terminal(value)):
        items = value.items() if isinstance(value, dict) else enumerate(value)
        out = {}
        for k, v in items:
            n = normalize(v)
            if not (isinstance(n, dict) and not n):
                out[str(k)] = n
        return out
    return value


def same_tree(a, b):
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_tree(a[k], b[k]) for k in a)
    return same(a, b)
