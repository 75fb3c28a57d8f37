"""Saving and loading models: ``config.json`` + ``model.safetensors``, never pickle.

Two layouts are understood:

* tinyllm's own: our config fields, and weights under our (= nanoGPT's) names with ``Linear``
  weights stored (out, in) as in PyTorch;
* Hugging Face GPT-2 (``"model_type": "gpt2"``): GPT-2's config names (``n_positions``,
  ``activation_function``, ...) and GPT-2's ``Conv1D`` weights, stored transposed as (in, out).

As transformers writes them, the weights may also be split into shards listed by
``model.safetensors.index.json``, or stored as bfloat16 (widened to float32, exactly). A
``pytorch_model.bin`` (pickle) is never read: the error says how to convert it.
"""
import inspect
import json
import math
import mmap
import os
from pathlib import Path

import numpy as np

from ..errors import FileFormatError
from ..logits_process import KNOB_DEFAULTS

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# a checkpoint transformers saved in several files: {"weight_map": {tensor name: file name}}
SHARDED_INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json")  # never read: pickle runs code

# GPT-2's Conv1D layers keep their weight as (in, out): these are transposed on the way in and out.
_CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}

# safetensors' element types and their sizes in bytes (the format's specification).
SAFETENSORS_DTYPES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                      "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit


def write_atomic(path, write):
    """Write a file through ``write(tmp_path)``, flush it to the disk, then rename it over ``path``:
    a crash, a kill or a full disk leaves either the old file or the new one, never half of one.

    The file gets the permissions of any new file (0o666 less the umask), whatever ``write`` does:
    safetensors' ``save_file`` renames a private (0o600) file of its own into place, which would
    leave a model that other users (a server's account, a shared directory) cannot read."""
    tmp = f"{path}.tmp"
    try:
        open(tmp, "wb").close()
        mode = os.stat(tmp).st_mode & 0o777  # the umask's choice, read without changing the umask
        write(tmp)
        if os.stat(tmp).st_mode & 0o777 != mode:
            os.chmod(tmp, mode)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with _ignore_os_errors():
            os.unlink(tmp)
        raise
    fsync_dir(Path(path).parent)


def fsync_file(path):
    """Ask the OS to put ``path``'s bytes on the disk (so a rename after it never exposes an empty file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory):
    """Make a rename inside ``directory`` durable (POSIX; a no-op where directories cannot be opened)."""
    with _ignore_os_errors():
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _ignore_os_errors:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, OSError)


def _write_json(path, obj):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)

    write_atomic(path, write)


def write_safetensors(path, tensors, metadata=None):
    """Serialize ``tensors`` to the file ``path`` (no renaming; tests replace it to simulate a slow
    or failing disk)."""
    from safetensors.numpy import save_file

    save_file(tensors, str(path), metadata=metadata)


def _save_safetensors(path, tensors, metadata=None):
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    write_atomic(path, lambda tmp: write_safetensors(tmp, arrays, metadata))


# ----------------------------------------------------------------------------------------------
# reading files that may be truncated, corrupt or hostile


def read_json_file(path, what="JSON"):
    """Parse a JSON file; a missing, unreadable or malformed file is one :class:`FileFormatError`
    (or FileNotFoundError) that names it and, for bad JSON, the line and column."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except IsADirectoryError:
        raise FileFormatError(path, f"is a directory, not a {what} file") from None
    except UnicodeDecodeError as e:
        raise FileFormatError(path, f"is not UTF-8 text (byte offset {e.start}); not a {what} file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FileFormatError(path, f"is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno} "
                                    f"(a truncated or hand-edited {what} file?)") from None
    except RecursionError:
        raise FileFormatError(path, "nests JSON too deeply to be read") from None


def read_safetensors_header(path):
    """Check a safetensors file's structure without reading its tensors; returns
    ``({name: (dtype, shape, (begin, end))}, metadata)``.

    The format: 8 bytes holding the header's length N (little-endian u64), N bytes of JSON
    ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``, then
    the tensors' bytes, offsets counted from the end of the header. Checked here, before anything
    is allocated: N fits in the file; the JSON parses; every dtype is known, every shape is a list
    of non-negative ints, and ``end - begin`` is exactly shape x item size; the tensors tile the
    data section with no gap, overlap or byte past the end. A file that fails raises
    :class:`FileFormatError` naming it and the first problem found.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise FileFormatError(path, f"is {len(prefix)} bytes long, shorter than a safetensors header "
                                            "(8 bytes of length): truncated, or not a safetensors file")
            n = int.from_bytes(prefix, "little")
            if n > size - 8:
                raise FileFormatError(path, f"its header says it is {n:,} bytes long, but only {size - 8:,} bytes "
                                            "follow: the file is truncated or not a safetensors file")
            if n > MAX_HEADER_BYTES:
                raise FileFormatError(path, f"its header is {n:,} bytes, over the {MAX_HEADER_BYTES:,} safetensors "
                                            "allows: not a safetensors file")
            raw = f.read(n)
    except IsADirectoryError:
        raise FileFormatError(path, "is a directory, not a safetensors file") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FileFormatError(path, f"its header is not valid JSON ({e}): the file is corrupt") from None
    if not isinstance(header, dict):
        raise FileFormatError(path, f"its header is a JSON {type(header).__name__}, not an object: the file is corrupt")
    metadata = header.pop("__metadata__", None) or {}
    if not (isinstance(metadata, dict) and all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in metadata.items())):
        raise FileFormatError(path, "its __metadata__ is not a map of strings to strings: the file is corrupt")
    data_size = size - 8 - n
    tensors = {name: _check_tensor_entry(path, name, info, data_size) for name, info in header.items()}
    _check_tiling(path, tensors, data_size)
    return tensors, metadata


def _check_tensor_entry(path, name, info, data_size):
    def bad(what):
        return FileFormatError(path, f"tensor {name!r}: {what}: the file is corrupt")

    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise bad(f"its entry {info!r:.200} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in SAFETENSORS_DTYPES:
        raise bad(f"unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"shape {shape!r:.200} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise bad(f"data_offsets {offsets!r:.200} is not [begin, end]")
    begin, end = offsets
    if not begin <= end <= data_size:
        raise bad(f"data_offsets [{begin}, {end}] lie outside the {data_size:,} bytes of tensor data")
    nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
    if end - begin != nbytes:
        raise bad(f"shape {shape} of {dtype} needs {nbytes:,} bytes, but its data_offsets span {end - begin:,}")
    return dtype, tuple(shape), (begin, end)


def _is_count(x):
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _check_tiling(path, tensors, data_size):
    """The tensors' byte ranges must cover the data section exactly once (the format's rule)."""
    position, previous = 0, None
    for name, (_, _, (begin, end)) in sorted(tensors.items(), key=lambda kv: kv[1][2]):
        if begin < position:
            raise FileFormatError(path, f"tensors {previous!r} and {name!r} overlap: the file is corrupt")
        if begin > position:
            raise FileFormatError(path, f"bytes {position:,}..{begin:,} of the tensor data belong to no tensor: "
                                        "the file is corrupt")
        position, previous = end, name
    if position != data_size:
        raise FileFormatError(path, f"{data_size - position:,} bytes after the last tensor belong to no tensor: "
                                    "the file is corrupt")


# safetensors' element types that NumPy holds, as little-endian NumPy dtypes (the format's byte order)
# (BF16 is read as its raw 16 bits and widened to float32 by _widen_bf16)
_NUMPY_DTYPES = {"BOOL": "?", "U8": "u1", "I8": "i1", "I16": "<i2", "U16": "<u2", "F16": "<f2", "BF16": "<u2",
                 "I32": "<i4", "U32": "<u4", "F32": "<f4", "I64": "<i8", "U64": "<u8", "F64": "<f8"}


def _check_numpy_dtypes(path, tensors):
    unreadable = {k: d for k, (d, _, _) in tensors.items() if d not in _NUMPY_DTYPES}
    if unreadable:
        raise FileFormatError(path, f"tensors {sorted(unreadable)} are stored as {sorted(set(unreadable.values()))}, "
                                    "which NumPy cannot hold; convert the file to float32 first")


def _data_start(f):
    """Where the tensor data begins: after the 8-byte length and the header (already checked)."""
    f.seek(0)
    return 8 + int.from_bytes(f.read(8), "little")


def load_safetensors(path, header=None):
    """All tensors of a safetensors file as NumPy arrays, after :func:`read_safetensors_header`
    (pass its result as ``header`` if you already have it). BF16, which NumPy lacks, comes back
    widened to float32 (exactly); FP8 is refused by name.

    Each tensor is read from the file straight into its own new array (one ``readinto`` each):
    no second copy of the data, and ordinary arrays that the caller owns (training checkpoints).
    """
    tensors, _ = header or read_safetensors_header(path)
    _check_numpy_dtypes(path, tensors)
    arrays = {}
    try:
        with open(path, "rb") as f:
            data_start = _data_start(f)
            for name, (dtype, shape, (begin, end)) in sorted(tensors.items(), key=lambda kv: kv[1][2]):
                array = np.empty(shape, np.dtype(_NUMPY_DTYPES[dtype]))
                f.seek(data_start + begin)
                if f.readinto(memoryview(array.reshape(-1)).cast("B")) != end - begin:
                    raise OSError(f"tensor {name!r} ends past the end of the file")
                arrays[name] = _widen_bf16(array) if dtype == "BF16" else array
    except OSError as e:  # e.g. the file changed since it was checked
        raise FileFormatError(path, f"could not be read as safetensors: {e}") from None
    return arrays


def map_safetensors(path, header=None):
    """All tensors of a safetensors file as NumPy arrays that view a copy-on-write memory map of
    it (after :func:`read_safetensors_header`; the same dtypes as :func:`load_safetensors`).

    Why: nothing is read or copied until a tensor is used, and then the operating system maps
    the file's pages from its page cache into the process; a model of 500 MB "loads" in
    milliseconds when the file was read recently. Writing to an array (training the model)
    copies just the pages written (``ACCESS_COPY``): the file never changes. The arrays keep
    the map alive. As with any memory map (the safetensors library's own ``safe_open``
    included), truncating the file in place while it is mapped would crash the process; tinyllm
    itself replaces files by renaming a new one over them, which is safe.
    """
    tensors, _ = header or read_safetensors_header(path)
    _check_numpy_dtypes(path, tensors)
    try:
        with open(path, "rb") as f:
            data_start = _data_start(f)
            if not tensors or os.fstat(f.fileno()).st_size == 0:
                return {}
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError) as e:
        raise FileFormatError(path, f"could not be mapped into memory: {e}") from None
    arrays = {}
    for name, (dtype, shape, (begin, end)) in tensors.items():
        np_dtype = np.dtype(_NUMPY_DTYPES[dtype])
        if data_start + end > len(mapped):
            raise FileFormatError(path, f"tensor {name!r} ends past the end of the file (did it change?)")
        array = np.frombuffer(mapped, np_dtype, math.prod(shape), data_start + begin).reshape(shape)
        # A misaligned tensor (possible only in a hand-made file) is copied: compiled kernels
        # would need another specialisation for it.
        if dtype == "BF16":
            array = _widen_bf16(array)  # (a new array: the map holds only the 16-bit halves)
        arrays[name] = array if array.flags.aligned else array.copy()
    return arrays


def _widen_bf16(bits):
    """bfloat16 values given as their raw 16-bit patterns (uint16) -> float32, exactly: a
    bfloat16 is the upper half of the float32 with the same sign, exponent and leading 7
    mantissa bits, so the float32 is the pattern shifted 16 bits up."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def unique_state_dict(model):
    """The state dict without the second name of a tied weight (``lm_head.weight`` = ``wte``)."""
    names = {id(p): n for n, p in model.named_parameters()}  # first name of each parameter
    by_name = dict(model.named_parameters(remove_duplicate=False))
    return {k: v for k, v in model.state_dict().items() if k not in by_name or names[id(by_name[k])] == k}


# ----------------------------------------------------------------------------------------------
# save


def save_model(model, directory, format=None):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if format is None:  # a model read from a GPT-2 directory is written back as one
        format = getattr(model, "source_format", "tinyllm")
    if format == "tinyllm":
        config = {"model_type": getattr(model, "model_type", "tinyllm-gpt"), **model.config.to_dict()}
        tensors = unique_state_dict(model)
    elif format in ("huggingface", "hf"):
        config, tensors = _to_huggingface(model)
    else:
        raise ValueError(f"save_pretrained: format must be 'tinyllm' or 'huggingface', got {format!r}")
    _save_safetensors(directory / WEIGHTS_NAME, tensors, metadata={"format": "pt"})
    _write_json(directory / CONFIG_NAME, config)
    if format in ("huggingface", "hf"):
        _write_json(directory / "generation_config.json", _hf_generation_file(model))


def _hf_generation_file(model):
    """The ``generation_config.json`` transformers reads: the special token ids and each of
    ``model.generation_config``'s settings that differs from transformers' default."""
    c, gen = model.config, getattr(model, "generation_config", {})
    out = {k: getattr(c, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if getattr(c, k) is not None}
    out.update({k: v for k, v in gen.items() if v is not None and v != HF_GENERATION_DEFAULTS.get(k)})
    if isinstance(out.get("sequence_bias"), dict):  # JSON has no tuple keys: transformers' list form
        out["sequence_bias"] = [[list(ids), bias] for ids, bias in out["sequence_bias"].items()]
    return out


def _to_huggingface(model):
    c = model.config
    if not c.bias:
        raise ValueError("save_pretrained(format='huggingface'): GPT-2 always has biases; this model has bias=False")
    if c.pos_encoding != "learned":
        raise ValueError("save_pretrained(format='huggingface'): GPT-2 has learned positions; this model is sinusoidal")
    config = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": c.vocab_size,
        "n_positions": c.block_size,
        "n_ctx": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,
        "activation_function": "gelu_new" if c.activation == "gelu_tanh" else "gelu",
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        # written only when set: transformers' GPT2Config would otherwise default them to 50256
        **{k: getattr(c, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if getattr(c, k) is not None},
    }
    tensors = {}
    for name, array in unique_state_dict(model).items():
        tensors[name] = array.T if name.endswith(_CONV1D_SUFFIXES) else array
    return config, tensors


# ----------------------------------------------------------------------------------------------
# load


def load_model(cls, directory, **options):
    """A model from ``config.json`` + ``model.safetensors``. Every problem with the files (missing,
    truncated, corrupt, hostile, or the two disagreeing) is one error naming the file at fault;
    nothing is allocated before the config has been checked against the weights file's header.
    ``options``: transformers' from_pretrained keywords, as :func:`check_load_options` takes them."""
    from .gpt import GPTConfig

    check_load_options(f"{cls.__name__}.from_pretrained", options)

    directory = Path(directory)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise _not_found(config_path)
    weights_path, weight_files = _weight_files(directory)
    raw = read_json_file(config_path, "model config")
    if not isinstance(raw, dict):
        raise FileFormatError(config_path, f"holds a JSON {type(raw).__name__}, not an object of config fields")
    expected, found = getattr(cls, "model_type", "tinyllm-gpt"), raw.get("model_type")
    if found is not None and found != expected and not (found == "gpt2" and expected == "tinyllm-gpt"):
        raise FileFormatError(config_path, f"holds a model of type {found!r}, but {cls.__name__} reads {expected!r} "
                                           "(AutoModelForCausalLM / AutoModelForSeq2SeqLM pick the class)")
    hf = found == "gpt2"
    try:
        config = _hf_config(raw, GPTConfig) if hf else getattr(cls, "config_class", GPTConfig).from_dict(raw)
    except (KeyError, TypeError, ValueError) as e:
        what = f"lacks the field {e}" if isinstance(e, KeyError) else str(e)
        raise FileFormatError(config_path, f"{what} (a hand-edited or foreign config?)") from None
    headers = {path: read_safetensors_header(path) for path in weight_files}
    _check_size_against_file(config, config_path, weights_path, _all_entries(weights_path, headers))
    tensors = {}
    for path, header in headers.items():
        tensors.update(map_safetensors(path, header))
    try:
        state = _hf_state(tensors) if hf else tensors
        _check_float_weights(state)
        model = _uninitialised(cls, config)
        model.load_state_dict(state, strict=True, assign=True)  # the arrays are fresh: no second copy
    except ValueError as e:
        raise FileFormatError(weights_path, f"does not match {config_path.name}: {e}") from None
    if hf:
        model.generation_config = _hf_generation_config(raw, directory)
        model.source_format = "huggingface"
    return model


def check_load_options(who, options):
    """The keyword arguments of transformers' ``from_pretrained`` whose meaning tinyllm already
    has: ``local_files_only`` (tinyllm never downloads), ``use_safetensors`` (True: the only
    format read), ``trust_remote_code`` (False: no code from a model directory runs) and
    ``dtype`` / ``torch_dtype`` (float32, or "auto": tinyllm computes in float32). Another value of
    those is a ValueError saying why; another keyword a TypeError naming it."""
    float32_only = (_is_float32, "tinyllm computes in float32 (bfloat16 / float16 weights are widened on loading)")
    refusals = {
        "use_safetensors": (lambda v: v is None or v is True, "tinyllm reads safetensors only (never pickle)"),
        "trust_remote_code": (lambda v: not v, "tinyllm never runs code from a model directory"),
        "dtype": float32_only,
        "torch_dtype": float32_only,
        "local_files_only": (lambda v: True, ""),  # (either way: tinyllm never downloads)
    }
    for name, value in options.items():
        if name not in refusals:
            raise TypeError(f"{who}: unexpected keyword argument {name!r} (tinyllm takes "
                            f"{', '.join(sorted(refusals))} from transformers' from_pretrained)")
        ok, why = refusals[name]
        if not ok(value):
            raise ValueError(f"{who}: {name}={value!r} is not possible: {why}")


def _is_float32(value):
    """dtype / torch_dtype values that mean float32 here: None, "auto", "float32", float32 as a
    NumPy dtype or type, or torch.float32 (recognised by name: torch is never imported)."""
    if value is None or value in ("auto", "float32") or str(value) == "torch.float32":
        return True
    try:
        return np.dtype(value) == np.float32
    except TypeError:
        return False


def _weight_files(directory):
    """(the weights file to name in errors, [the safetensors files to read]): ``model.safetensors``,
    or the shards listed by transformers' ``model.safetensors.index.json`` (its ``weight_map``:
    tensor name -> file). A directory with only PyTorch's pickled ``pytorch_model.bin`` is refused
    with the way to convert it: unpickling a stranger's file can run their code."""
    single, index = directory / WEIGHTS_NAME, directory / SHARDED_INDEX_NAME
    if single.is_file():
        return single, [single]
    if index.is_file():
        weight_map = read_json_file(index, "sharded checkpoint index")
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise FileFormatError(index, "has no weight_map of tensor names to file names")
        shards = []
        for name in sorted(set(weight_map.values())):
            shard = directory / name
            if Path(name).name != name or not shard.is_file():
                raise FileFormatError(index, f"lists the shard {name!r}, which is not a file of {directory}")
            shards.append(shard)
        return index, shards
    pickled = [name for name in PICKLE_WEIGHTS_NAMES if (directory / name).is_file()]
    if pickled:
        raise FileNotFoundError(
            f"from_pretrained: {directory} holds {pickled[0]}, PyTorch's pickle format, which tinyllm never loads "
            "(unpickling a file can run any code in it). Convert it once with transformers: "
            "AutoModelForCausalLM.from_pretrained(d).save_pretrained(d) writes model.safetensors")
    raise _not_found(single)


def _not_found(path):
    return FileNotFoundError(f"from_pretrained: {path} not found; a model directory holds {CONFIG_NAME} and "
                             f"{WEIGHTS_NAME} (written by save_pretrained, or a Hugging Face GPT-2 directory)")


def _all_entries(index, headers):
    """The tensor entries of every shard together; a name in two shards is an error."""
    entries = {}
    for path, (tensors, _) in headers.items():
        twice = sorted(set(tensors) & set(entries))
        if twice:
            raise FileFormatError(index, f"{path.name} and another shard both hold {twice[:3]}")
        entries.update(tensors)
    return entries


def _uninitialised(cls, config):
    """``cls(config)`` without drawing initial weights where the class allows it
    (``init_weights=False``): they are all about to be replaced by the file's."""
    if "init_weights" in inspect.signature(cls.__init__).parameters:
        return cls(config, init_weights=False)
    return cls(config)


def _check_size_against_file(config, config_path, weights_path, tensors):
    """Refuse, before allocating anything, a config whose embeddings and matmul weights alone would
    need more numbers than the weights file holds (a hostile or mismatched config.json)."""
    at_least, sizes = _min_parameters(config)
    held = sum(math.prod(shape) for _, shape, _ in tensors.values())
    if at_least > held:
        raise FileFormatError(config_path, f"describes a model of at least {at_least:,} parameters ({sizes}), but "
                                           f"{weights_path.name} holds only {held:,} numbers: they do not belong "
                                           "together")


def _min_parameters(config):
    """A lower bound on a config's parameter count (its embeddings and matmul weights), and the
    sizes it came from, for the error message."""
    c = config
    if hasattr(c, "n_embd"):  # GPT: wte + per layer attention (4 C^2) and MLP (8 C^2)
        return (c.vocab_size * c.n_embd + c.n_layer * 12 * c.n_embd * c.n_embd,
                f"vocab_size {c.vocab_size}, n_layer {c.n_layer}, n_embd {c.n_embd}")
    # encoder-decoder: the smaller embedding table, then per encoder layer self-attention (4 d^2)
    # and FFN (2 d d_ff), per decoder layer self- and cross-attention (8 d^2) and FFN
    d, ffn = c.d_model, 2 * c.d_model * c.d_ff
    at_least = (min(c.src_vocab_size, c.tgt_vocab_size) * d + c.n_encoder_layers * (4 * d * d + ffn)
                + c.n_decoder_layers * (8 * d * d + ffn))
    return at_least, (f"vocab sizes {c.src_vocab_size}/{c.tgt_vocab_size}, {c.n_encoder_layers}+"
                      f"{c.n_decoder_layers} layers, d_model {d}, d_ff {c.d_ff}")


def _check_float_weights(state):
    for name, array in state.items():
        if array.dtype.kind != "f":
            raise ValueError(f"{name} is stored as {array.dtype}; weights must be floating point")


# transformers' GenerationConfig defaults, for the settings generate knows (max_length None: 20 new tokens)
HF_GENERATION_DEFAULTS = dict(max_length=None, do_sample=False, temperature=1.0, top_k=50, top_p=1.0,
                              eos_token_id=None, pad_token_id=None, num_beams=1, length_penalty=1.0,
                              early_stopping=False, num_return_sequences=1, repetition_penalty=1.0,
                              no_repeat_ngram_size=0, min_length=0, min_new_tokens=0, max_new_tokens=None,
                              **KNOB_DEFAULTS)


def _hf_generation_config(raw, directory):
    """Hugging Face's generation defaults (greedy, 20 new tokens), then the model's own
    ``generation_config.json`` (or, failing that, the token ids in ``config.json``)."""
    gen = dict(HF_GENERATION_DEFAULTS, eos_token_id=raw.get("eos_token_id"), pad_token_id=raw.get("pad_token_id"))
    path = directory / "generation_config.json"
    if path.is_file():
        saved = read_json_file(path, "generation config")
        if not isinstance(saved, dict):
            raise FileFormatError(path, f"holds a JSON {type(saved).__name__}, not an object of settings")
        gen.update({k: v for k, v in saved.items() if k in gen})
    return gen


def _hf_config(raw, GPTConfig):
    """A GPT-2 ``config.json`` in tinyllm's terms (KeyError / ValueError on a field that is missing or wrong)."""
    activation = raw.get("activation_function", "gelu_new")
    if activation not in _HF_ACTIVATIONS:
        raise ValueError(f"GPT-2 activation_function {activation!r} is not supported "
                         f"(supported: {sorted(_HF_ACTIVATIONS)})")
    if raw.get("n_inner") not in (None, 4 * raw["n_embd"]):
        raise ValueError(f"n_inner={raw['n_inner']} is not supported (the MLP is 4 * n_embd wide)")
    return GPTConfig(
        vocab_size=raw["vocab_size"], block_size=raw.get("n_positions", raw.get("n_ctx")), n_layer=raw["n_layer"],
        n_head=raw["n_head"], n_embd=raw["n_embd"], dropout=0.0, bias=True,
        activation=_HF_ACTIVATIONS[activation], pos_encoding="learned",
        layer_norm_epsilon=raw.get("layer_norm_epsilon", 1e-5), bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"), pad_token_id=raw.get("pad_token_id"),
    )


def _hf_state(tensors):
    """GPT-2's tensor names and Conv1D layouts -> tinyllm's state dict. A Conv1D weight becomes
    its transpose, a view: (in, out) in memory is (out, in) as ``Linear`` wants it, with the
    strides of a transposed array, which every kernel takes as it is (no copy is made, so the
    weights can stay in the file's memory map)."""
    state = {}
    for name, array in tensors.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # old GPT-2 files store the causal mask as a buffer: we compute it
        key = name if name.startswith(("transformer.", "lm_head.")) else f"transformer.{name}"
        state[key] = array.T if key.endswith(_CONV1D_SUFFIXES) else array
    head = state.pop("lm_head.weight", None)
    if head is not None and not np.array_equal(head, state.get("transformer.wte.weight")):
        raise ValueError("lm_head.weight differs from transformer.wte.weight, but GPT ties them")
    return state
