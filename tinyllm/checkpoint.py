"""Training checkpoints: everything needed to continue a run exactly where it stopped, and the lock
that keeps two trainers out of one output directory.

One file, ``ckpt.safetensors``: the arrays (model weights under ``model.``, AdamW moments under
``optim.<i>.``) in safetensors, and everything else (iteration, configs, optimizer settings and
step counts, random-generator states, the tokenizer) as JSON in the safetensors header's metadata.
It is written to a temporary file, flushed to the disk and renamed over the old one, so a crash, a
``kill -9`` or a full disk leaves the previous checkpoint whole. Loading checks the file's
structure before reading any tensor (a truncated or hostile file is one clear error naming it),
and nothing is pickled: loading a stranger's checkpoint runs no code.
"""
import json
import os
import socket
import time
from pathlib import Path

import numpy as np

from .errors import CheckpointWriteError, FileFormatError, OutDirLocked
from .models import io as model_io
from .models.io import read_safetensors_header, unique_state_dict

__all__ = ["CHECKPOINT_NAME", "LOCK_NAME", "load_checkpoint", "lock_out_dir", "read_checkpoint_meta",
           "restore_rng", "rng_state", "save_checkpoint"]

CHECKPOINT_NAME = "ckpt.safetensors"
LOCK_NAME = "train.lock"
FORMAT_VERSION = 1
# The bit generators numpy.random offers; a checkpoint may name only these (never any other attribute).
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def save_checkpoint(path, model, optimizer, iter_num, rng_states, extra=None):
    """Write model, optimizer state, iteration and RNG states to ``path`` atomically.

    A failed write (disk full, file too large, no permission) raises :class:`CheckpointWriteError`;
    the file at ``path`` is then what it was before, and no temporary file is left behind.
    """
    tensors = {f"model.{k}": np.ascontiguousarray(v) for k, v in unique_state_dict(model).items()}
    opt_state = optimizer.state_dict()
    steps = {}
    for i, s in opt_state["state"].items():
        for k, v in s.items():
            if isinstance(v, np.ndarray):
                tensors[f"optim.{i}.{k}"] = np.ascontiguousarray(v)
            else:
                steps.setdefault(str(i), {})[k] = v
    meta = {
        "format_version": FORMAT_VERSION,
        "iter": int(iter_num),
        "model_config": model.config.to_dict(),
        "optimizer": {"param_groups": opt_state["param_groups"], "scalars": steps},
        "rng_states": rng_states,
        **(extra or {}),
    }
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # model_io.write_safetensors is looked up at call time: fault tests replace it with a slow disk.
        model_io.write_atomic(path, lambda tmp: model_io.write_safetensors(tmp, tensors, {"tinyllm": json.dumps(meta)}))
    except Exception as e:  # OSError, or SafetensorError wrapping one (safetensors writes from Rust)
        raise CheckpointWriteError(f"could not write the checkpoint {path}: {e}") from e


# ----------------------------------------------------------------------------------------------
# reading


def _open_checkpoint(path, with_arrays):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: {path} not found")
    tensors, header_meta = read_safetensors_header(path)
    if "tinyllm" not in header_meta:
        raise FileFormatError(path, "is a safetensors file but not a tinyllm training checkpoint "
                                    "(no 'tinyllm' metadata)")
    try:
        meta = json.loads(header_meta["tinyllm"])
    except (json.JSONDecodeError, RecursionError) as e:
        raise FileFormatError(path, f"its tinyllm metadata is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise FileFormatError(path, "its tinyllm metadata is not a JSON object")
    if meta.get("format_version") != FORMAT_VERSION:
        raise FileFormatError(path, f"has format_version {meta.get('format_version')}, "
                                    f"this tinyllm reads {FORMAT_VERSION}")
    _check_meta(path, meta, tensors)
    arrays = model_io.load_safetensors(path, (tensors, header_meta)) if with_arrays else {}
    return meta, arrays


def _check_meta(path, meta, tensors):
    """The fields every checkpoint has, with the types :func:`load_checkpoint` relies on."""
    def require(ok, what):
        if not ok:
            raise FileFormatError(path, f"{what} (a corrupt or hand-edited checkpoint)")

    it = meta.get("iter")
    require(isinstance(it, int) and not isinstance(it, bool) and it >= 0, f"'iter' is {it!r}, not a step count")
    require(isinstance(meta.get("model_config"), dict), "'model_config' is missing")
    opt = meta.get("optimizer")
    require(isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)
            and all(isinstance(g, dict) for g in opt["param_groups"])
            and isinstance(opt.get("scalars"), dict)
            and all(k.isdigit() and isinstance(v, dict) for k, v in opt["scalars"].items()),
            "'optimizer' is not {param_groups: [...], scalars: {index: {...}}}")
    require(isinstance(meta.get("rng_states"), dict), "'rng_states' is missing")
    for name in tensors:
        parts = name.split(".", 2)
        require(parts[0] == "model" and len(parts) > 1 or (parts[0] == "optim" and len(parts) == 3
                                                           and parts[1].isdigit()),
                f"holds a tensor {name!r} that is neither model.<name> nor optim.<index>.<name>")


def read_checkpoint_meta(path):
    """The JSON part of a checkpoint (iteration, configs, RNG states, tokenizer), without the arrays."""
    return _open_checkpoint(path, with_arrays=False)[0]


def load_checkpoint(path):
    """-> (meta dict, model state dict, optimizer state dict in :meth:`Optimizer.state_dict` form).

    Raises FileNotFoundError for a missing file and :class:`FileFormatError` (a ValueError) naming
    the file for one that is truncated, corrupt, of another format version or not a checkpoint.
    """
    meta, arrays = _open_checkpoint(path, with_arrays=True)
    model_state = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    opt = {"param_groups": [dict(g) for g in meta["optimizer"]["param_groups"]], "state": {}}
    for i, scalars in meta["optimizer"]["scalars"].items():
        opt["state"].setdefault(int(i), {}).update(scalars)
    for k, v in arrays.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            opt["state"].setdefault(int(i), {})[name] = v
    for g in opt["param_groups"]:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return meta, model_state, opt


def rng_state(rng):
    """A Generator's state as JSON-able data (PCG64's 128-bit integers are plain Python ints)."""
    return rng.bit_generator.state


def restore_rng(state, source="checkpoint"):
    """A Generator continuing exactly from a state saved by :func:`rng_state`.

    Only NumPy's bit generators are accepted by name (a checkpoint must not make us call anything
    else); a malformed state is a :class:`FileFormatError` naming ``source``.
    """
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise FileFormatError(source, f"random-generator state names {name!r}, not one of {list(_BIT_GENERATORS)}")
    bit_gen = getattr(np.random, name)()
    try:
        bit_gen.state = state
    except (TypeError, ValueError, KeyError) as e:
        raise FileFormatError(source, f"random-generator state for {name} is malformed ({e})") from None
    return np.random.Generator(bit_gen)


# ----------------------------------------------------------------------------------------------
# one trainer per output directory

_held_locks = {}  # realpath of a lock file -> [fd, count]: re-entrant within this process


class lock_out_dir:
    """Hold ``out_dir/train.lock`` for as long as the ``with`` block runs.

    The lock is ``flock`` on that file: the kernel drops it when its process ends, however it ends,
    so a killed trainer never leaves a directory locked. The file keeps the holder's pid and host
    so that a second trainer can say whom it found. Taking it twice in one process is allowed (a
    script holds it while it prepares, its Trainer again while it trains). Where ``fcntl`` does not
    exist (Windows), nothing is locked.
    """

    def __init__(self, out_dir):
        self.path = Path(out_dir) / LOCK_NAME
        self.key = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:  # a file of that name, a path under a file, no permission
            raise OSError(f"cannot use {self.path.parent} as the output directory (--out-dir): {e.strerror} "
                          f"({e.filename}); choose another --out-dir") from None
        key = os.path.realpath(self.path)
        if key in _held_locks:
            _held_locks[key][1] += 1
            self.key = key
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid, host = self._holder()
            who = f"process {pid}" if pid else "another process"
            if host and host != socket.gethostname():
                who += f" on {host}"
            raise OutDirLocked(f"{self.path.parent} is in use by {who}, which is training into it (lock file "
                               f"{self.path}); wait for it to finish or stop it, or choose another --out-dir",
                               pid=pid) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        _held_locks[key] = [fd, 1]
        self.key = key
        return self

    def _holder(self):
        for _ in range(50):  # the holder writes its pid right after locking: give it a moment
            try:
                fields = self.path.read_text().split()
            except OSError:
                fields = []
            if fields and fields[0].isdigit():
                return int(fields[0]), (fields[1] if len(fields) > 1 else None)
            time.sleep(0.01)
        return None, None

    def __exit__(self, *exc):
        if self.key is None:
            return False
        entry = _held_locks[self.key]
        entry[1] -= 1
        if entry[1] == 0:
            del _held_locks[self.key]
            os.close(entry[0])  # releases the flock; the file stays (deleting it would race a waiting process)
        self.key = None
        return False
