"""``tinyllm.save(obj, f)`` and ``tinyllm.load(f)``: PyTorch's ``torch.save`` / ``torch.load``
habit, without pickle.

    tinyllm.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "iter_num": 100}, "ckpt.st")
    ckpt = tinyllm.load("ckpt.st")
    model.load_state_dict(ckpt["model"]); opt.load_state_dict(ckpt["optimizer"])

``obj`` is any nesting of dicts (keys: str, int, float, bool or None), lists and tuples whose
leaves are ndarrays, Tensors, numbers, strings, bools or None: what state dicts and training
checkpoints are made of. The file is a safetensors file: the arrays as its tensors, the nesting
(and every non-array leaf) as JSON in its metadata. So loading a stranger's file builds arrays and
plain Python values and can run no code, which is why ``torch.load`` had to grow
``weights_only=True`` and why this has nothing else. An array that appears twice (a tied weight
under both its names) is stored once and comes back as one array in both places.
"""
import json
import os

import numpy as np

from .tensor import Tensor

__all__ = ["save", "load"]

_FORMAT = "tinyllm.save/1"


def save(obj, f):
    """Write ``obj`` to ``f`` (a path, or a binary file object), atomically for a path: a crash
    while writing leaves the file as it was."""
    from safetensors.numpy import save as safetensors_bytes

    arrays = {}  # tensor name -> array
    seen = {}  # id(array) -> tensor name (a shared array is stored once)
    tree = _encode(obj, arrays, seen, "obj")
    data = safetensors_bytes(arrays, metadata={"format": _FORMAT, "tree": json.dumps(tree)})
    if hasattr(f, "write"):
        f.write(data)
        return
    from .models.io import write_atomic

    def write(tmp):
        with open(tmp, "wb") as out:
            out.write(data)

    write_atomic(os.fspath(f), write)


def load(f, map_location=None, weights_only=True):
    """Read what :func:`save` wrote from ``f`` (a path or a binary file object). Arrays come back as
    ndarrays and Tensors as Tensors (with their ``requires_grad``). ``map_location`` (None or
    "cpu") and ``weights_only`` are accepted for code written for ``torch.load``; loading is always
    data only."""
    if map_location not in (None, "cpu"):
        raise ValueError(f"load: tinyllm runs on the CPU only, got map_location={map_location!r}")
    if weights_only is not True:
        raise ValueError("load: weights_only=False would mean unpickling code; tinyllm files hold data only")
    if hasattr(f, "read"):
        data, name = f.read(), getattr(f, "name", "the file object")
    else:
        with open(os.fspath(f), "rb") as file:
            data, name = file.read(), os.fspath(f)
    meta = _metadata(data, name)
    from safetensors.numpy import load as safetensors_load

    arrays = safetensors_load(data)
    return _decode(json.loads(meta["tree"]), arrays, name)


# --- the nesting as JSON ----------------------------------------------------------------------------

def _encode(obj, arrays, seen, path):
    """obj -> a JSON value; arrays go into ``arrays`` and are referenced by name."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return {"float": repr(float(obj))}  # repr keeps every bit, and nan / inf, which JSON lacks
    if isinstance(obj, Tensor):
        return {"tensor": _store(obj.data, arrays, seen, path), "requires_grad": bool(obj.requires_grad)}
    if isinstance(obj, np.ndarray):
        return {"array": _store(obj, arrays, seen, path)}
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, arrays, seen, f"{path}[{i}]") for i, v in enumerate(obj)]
        return {"tuple" if isinstance(obj, tuple) else "list": items}
    if isinstance(obj, dict):
        for k in obj:
            if not (k is None or isinstance(k, (str, int, float, bool))):
                raise TypeError(f"save: {path} has a key of type {type(k).__name__} ({k!r}); keys must be str, int, "
                                "float, bool or None")
        return {"dict": [[_encode(k, arrays, seen, path), _encode(v, arrays, seen, f"{path}[{k!r}]")]
                         for k, v in obj.items()]}
    raise TypeError(f"save: {path} is a {type(obj).__name__}, which tinyllm.save cannot store without pickle; "
                    "store arrays, Tensors, numbers, strings, None and dicts / lists / tuples of them")


def _store(array, arrays, seen, path):
    if array.dtype.kind not in "biuf":
        raise TypeError(f"save: {path} is an array of dtype {array.dtype}; only bool, integer and float arrays can be "
                        "stored")
    name = seen.get(id(array))
    if name is None:
        name = seen[id(array)] = str(len(arrays))
        arrays[name] = np.ascontiguousarray(array)
    return name


def _decode(node, arrays, source):
    if node is None or isinstance(node, (bool, str, int)):
        return node
    if not (isinstance(node, dict) and len(node) in (1, 2)):
        raise ValueError(f"load: {source} is not a file tinyllm.save wrote (unexpected entry {node!r:.80})")
    (kind, value), = [(k, v) for k, v in node.items() if k != "requires_grad"]
    if kind == "float":
        return float(value)
    if kind in ("array", "tensor"):
        if value not in arrays:
            raise ValueError(f"load: {source} refers to a missing array {value!r}")
        array = arrays[value]
        return array if kind == "array" else Tensor(array, requires_grad=node["requires_grad"], dtype=array.dtype)
    if kind in ("list", "tuple"):
        items = [_decode(v, arrays, source) for v in value]
        return items if kind == "list" else tuple(items)
    if kind == "dict":
        return {_decode(k, arrays, source): _decode(v, arrays, source) for k, v in value}
    raise ValueError(f"load: {source} is not a file tinyllm.save wrote (unknown entry kind {kind!r})")


def _metadata(data, source):
    """The safetensors header's metadata of ``data``, checked to be :func:`save`'s."""
    try:
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
        meta = header["__metadata__"]
        ok = meta["format"] == _FORMAT and isinstance(meta["tree"], str)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"load: {source} is not a file tinyllm.save wrote ({type(e).__name__}: {e})") from None
    if not ok:
        raise ValueError(f"load: {source} is not a file tinyllm.save wrote (format {meta.get('format')!r})")
    return meta
