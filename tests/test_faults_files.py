"""Every loader turns a truncated, corrupt or hostile file into one clear error naming the file
(issue 13): model directories (tinyllm and Hugging Face), tokenizer files, training checkpoints.
Hostile headers are refused before anything of the size they ask for is allocated.

The errors are ``FileFormatError`` (a ``ValueError``); these tests catch ``ValueError`` and then
check the class by name, so that on a tinyllm without it they fail one by one, saying why.
"""
import json
import struct
import tracemalloc

import numpy as np
import pytest

from tinyllm import CharTokenizer
from tinyllm.checkpoint import load_checkpoint, restore_rng, save_checkpoint
from tinyllm.models import GPT, GPTConfig
from tinyllm.tokenizers import AutoTokenizer, BPETokenizer, Tokenizer
from tinyllm.training import TrainConfig, configure_optimizer

CONFIG = dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)


def expect_file_error(call, path, *fragments):
    """``call()`` raises one FileFormatError whose message names ``path`` and each fragment."""
    with pytest.raises(ValueError) as err:
        call()
    message = str(err.value)
    assert type(err.value).__name__ == "FileFormatError", f"{type(err.value).__name__}: {message}"
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def split(path):
    """A safetensors file as (header dict, data bytes)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(path, header, data, length=None):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if length is None else length) + blob + data)


@pytest.fixture
def model_dir(tmp_path):
    GPT(GPTConfig(**CONFIG), seed=0).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def hf_dir(tmp_path):
    GPT(GPTConfig(**CONFIG), seed=0).save_pretrained(tmp_path / "hf", format="huggingface")
    return tmp_path / "hf"


# ----------------------------------------------------------------------------------------------
# model.safetensors


@pytest.mark.parametrize("keep", [0, 5, 8, 20, -100, -1])
def test_truncated_weights_name_the_file(model_dir, keep):
    weights = model_dir / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(raw[:keep] if keep >= 0 else raw[:len(raw) + keep])
    expect_file_error(lambda: GPT.from_pretrained(model_dir), weights)


def test_header_length_larger_than_the_file(model_dir):
    weights = model_dir / "model.safetensors"
    header, data = split(weights)
    join(weights, header, data, length=2 ** 62)
    expect_file_error(lambda: GPT.from_pretrained(model_dir), weights, "truncated or not a safetensors file")


def test_header_that_is_not_json(model_dir):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(struct.pack("<Q", 12) + b"\x80\x04 pickle?" + b"\0" * 40)
    expect_file_error(lambda: GPT.from_pretrained(model_dir), weights, "not valid JSON")


def _edit_first_tensor(weights, **changes):
    header, data = split(weights)
    name = next(k for k in header if k != "__metadata__")
    header[name].update(changes)
    join(weights, header, data)
    return name


def test_offsets_outside_the_file_are_refused_before_allocating(model_dir):
    """A header promising a 4 GB tensor in a file of a few KB: refused, and nothing near that size
    is allocated on the way."""
    weights = model_dir / "model.safetensors"
    name = _edit_first_tensor(weights, shape=[10 ** 9], data_offsets=[0, 4 * 10 ** 9])
    tracemalloc.start()
    try:
        expect_file_error(lambda: GPT.from_pretrained(model_dir), weights, repr(name), "lie outside")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2 ** 20, f"{peak:,} bytes allocated"


@pytest.mark.parametrize("change, fragment", [
    (dict(dtype="F64"), "needs"),  # 8-byte items in the 4-byte items' span
    (dict(dtype="Q7"), "unknown dtype 'Q7'"),
    (dict(shape=[-1, 8]), "not a list of non-negative integers"),
    (dict(shape="big"), "not a list of non-negative integers"),
    (dict(data_offsets=[8, 4]), "lie outside"),
    (dict(data_offsets=[0]), "is not [begin, end]"),
])
def test_inconsistent_tensor_entries_name_the_tensor(model_dir, change, fragment):
    weights = model_dir / "model.safetensors"
    name = _edit_first_tensor(weights, **change)
    expect_file_error(lambda: GPT.from_pretrained(model_dir), weights, repr(name), fragment)


def test_overlapping_tensors_are_refused(model_dir):
    weights = model_dir / "model.safetensors"
    header, data = split(weights)
    span = {k: tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__"}
    a, b = next((a, b) for a in span for b in span if a < b and span[a][1] - span[a][0] == span[b][1] - span[b][0])
    header[b]["data_offsets"] = list(span[a])  # b now reads a's bytes (and its own are nobody's)
    join(weights, header, data)
    expect_file_error(lambda: GPT.from_pretrained(model_dir), weights, "overlap")


def test_bytes_that_belong_to_no_tensor_are_refused(model_dir):
    weights = model_dir / "model.safetensors"
    header, data = split(weights)
    join(weights, header, data + b"\0" * 16)
    expect_file_error(lambda: GPT.from_pretrained(model_dir), weights, "belong to no tensor")


def test_integer_weights_are_refused(model_dir):
    from safetensors.numpy import load_file, save_file

    weights = model_dir / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["transformer.wte.weight"] = tensors["transformer.wte.weight"].view(np.int32)
    save_file(tensors, str(weights))
    expect_file_error(lambda: GPT.from_pretrained(model_dir), weights, "transformer.wte.weight is stored as int32")


def test_weights_of_another_shape_than_the_config_name_both_files(model_dir):
    config = json.loads((model_dir / "config.json").read_text())
    config["vocab_size"] = 10
    (model_dir / "config.json").write_text(json.dumps(config))
    expect_file_error(lambda: GPT.from_pretrained(model_dir), model_dir / "model.safetensors", "config.json",
                      "transformer.wte.weight: checkpoint (11, 8) vs model (10, 8)")


@pytest.mark.parametrize("seed", range(4))
def test_random_damage_to_weights_is_refused_or_harmless(model_dir, seed):
    """Flip random bytes anywhere in the file, or cut it anywhere: loading either succeeds (damage
    to the numbers themselves) or raises the one FileFormatError; never anything else."""
    weights = model_dir / "model.safetensors"
    good = weights.read_bytes()
    rng = np.random.default_rng(seed)
    n_header = struct.unpack("<Q", good[:8])[0] + 8
    for trial in range(40):
        raw = bytearray(good)
        if trial % 4 == 0:
            raw = raw[:int(rng.integers(0, len(raw)))]
        else:
            for i in rng.integers(0, n_header, size=int(rng.integers(1, 4))):
                raw[i] = int(rng.integers(0, 256))
        weights.write_bytes(bytes(raw))
        try:
            GPT.from_pretrained(model_dir)
        except ValueError as e:
            assert type(e).__name__ == "FileFormatError" and str(weights.parent) in str(e), repr(e)


# ----------------------------------------------------------------------------------------------
# config.json


def test_config_that_is_not_json_names_line_and_column(model_dir):
    path = model_dir / "config.json"
    path.write_text('{"vocab_size": 11,\n "block_size": 8,,}')
    expect_file_error(lambda: GPT.from_pretrained(model_dir), path, "not valid JSON", "line 2")


@pytest.mark.parametrize("field, value, fragment", [
    ("vocab_size", -3, "vocab_size must be a positive integer, got -3"),
    ("n_layer", "4", "n_layer must be a positive integer, got '4'"),
    ("n_embd", 2.5, "n_embd must be a positive integer, got 2.5"),
    ("dropout", 1.5, "dropout must be in [0, 1)"),
    ("colour", "red", "unknown keys ['colour']"),
])
def test_config_with_a_bad_field_names_the_file_and_field(model_dir, field, value, fragment):
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    expect_file_error(lambda: GPT.from_pretrained(model_dir), path, fragment)


def test_config_asking_for_a_huge_model_is_refused_before_allocating(model_dir):
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    config.update(vocab_size=10 ** 9, n_embd=4096, n_head=32)
    path.write_text(json.dumps(config))
    tracemalloc.start()
    try:
        expect_file_error(lambda: GPT.from_pretrained(model_dir), path, "do not belong together")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2 ** 20, f"{peak:,} bytes allocated"


def test_config_json_that_is_a_list(model_dir):
    path = model_dir / "config.json"
    path.write_text("[1, 2, 3]")
    expect_file_error(lambda: GPT.from_pretrained(model_dir), path, "not an object")


def test_hugging_face_config_missing_a_field(hf_dir):
    path = hf_dir / "config.json"
    config = json.loads(path.read_text())
    del config["n_embd"]
    path.write_text(json.dumps(config))
    expect_file_error(lambda: GPT.from_pretrained(hf_dir), path, "lacks the field 'n_embd'")


def test_hugging_face_generation_config_that_is_not_json(hf_dir):
    path = hf_dir / "generation_config.json"
    path.write_text('{"max_length": ')
    expect_file_error(lambda: GPT.from_pretrained(hf_dir), path, "not valid JSON")


# ----------------------------------------------------------------------------------------------
# tokenizer files


@pytest.fixture
def bpe():
    return BPETokenizer.train("low lower lowest newer newest " * 20, 270, special_tokens=["<|endoftext|>"])


@pytest.mark.parametrize("mangle, fragment", [
    (lambda d: {**d, "chars": 5}, "is not a valid CharTokenizer"),
    (lambda d: {k: v for k, v in d.items() if k != "chars"}, "lacks the field 'chars'"),
    (lambda d: {**d, "chars": ["a", "bc"]}, "single characters"),
    (lambda d: {**d, "format_version": [1]}, "format_version [1] is not an integer"),
])
def test_mangled_char_tokenizer_file(tmp_path, mangle, fragment):
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(mangle(CharTokenizer.from_text("hello world").to_dict())))
    expect_file_error(lambda: Tokenizer.load(path), path, fragment)
    expect_file_error(lambda: AutoTokenizer.from_pretrained(path), path, fragment)


@pytest.mark.parametrize("mangle, fragment", [
    (lambda d: {**d, "merges": [m + " x" for m in d["merges"]]}, "is not a valid BPETokenizer"),
    (lambda d: {**d, "vocab": {k: "seven" for k in d["vocab"]}}, "is not a valid BPETokenizer"),
    (lambda d: {**d, "vocab": list(d["vocab"])}, "is not a valid BPETokenizer"),
    (lambda d: {k: v for k, v in d.items() if k != "merges"}, "lacks the field 'merges'"),
    (lambda d: {**d, "pattern": "(unclosed"}, "does not compile"),
    # one id of 10**12: the model's embedding table would need 10**12 rows (refused, not allocated)
    (lambda d: {**d, "vocab": {**d["vocab"], "Ġlow": 10**12}}, "far past the"),
    (lambda d: {**d, "special_tokens": {"<|x|>": -3}}, "not a non-negative integer"),
])
def test_mangled_bpe_tokenizer_file(tmp_path, bpe, mangle, fragment):
    path = tmp_path / "tok.json"
    path.write_text(json.dumps(mangle(bpe.to_dict())))
    expect_file_error(lambda: BPETokenizer.load(path), path, fragment)


@pytest.mark.parametrize("content", [b"", b"{\"type\": \"CharTokenizer\", \"chars\": [", b"\xff\xfe\x00garbage",
                                     b"[[[[[[[[[[" * 100_000])
def test_tokenizer_file_that_is_not_json(tmp_path, content):
    path = tmp_path / "tok.json"
    path.write_bytes(content)
    expect_file_error(lambda: Tokenizer.load(path), path)


def test_mangled_hugging_face_tokenizer_directory(tmp_path, bpe):
    d = tmp_path / "hf"
    bpe.save_pretrained(d)
    (d / "tinyllm_tokenizer.json").unlink()  # so the Hugging Face files are what is read
    good = {name: (d / name).read_bytes() for name in ("vocab.json", "merges.txt", "tokenizer_config.json")}

    (d / "vocab.json").write_text('{"a": 0,')
    expect_file_error(lambda: AutoTokenizer.from_pretrained(d), d / "vocab.json", "not valid JSON")
    (d / "vocab.json").write_text("[1, 2]")
    expect_file_error(lambda: AutoTokenizer.from_pretrained(d), d / "vocab.json", "not an object")
    (d / "vocab.json").write_bytes(good["vocab.json"])

    (d / "merges.txt").write_bytes(good["merges.txt"] + b"a b c\n")
    expect_file_error(lambda: AutoTokenizer.from_pretrained(d), d / "merges.txt", "two tokens")
    (d / "merges.txt").write_bytes(b"#version: 0.2\n\xe9 \xe8\n")
    expect_file_error(lambda: AutoTokenizer.from_pretrained(d), d / "merges.txt", "not UTF-8")
    (d / "merges.txt").write_bytes(good["merges.txt"])

    (d / "tokenizer_config.json").write_text('{"added_tokens_decoder": {"x": {"content": "<|a|>"}}}')
    expect_file_error(lambda: AutoTokenizer.from_pretrained(d), d, "is not a valid tokenizer")
    (d / "tokenizer_config.json").write_bytes(good["tokenizer_config.json"])
    assert AutoTokenizer.from_pretrained(d).encode("lowest") == bpe.encode("lowest")


def test_hugging_face_tokenizer_json_truncated(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"type": "BPE", "vocab": {')
    expect_file_error(lambda: AutoTokenizer.from_pretrained(tmp_path), path, "not valid JSON")
    path.write_text('{"model": {"type": "BPE"}, "pre_tokenizer": {"type": "ByteLevel"}}')
    expect_file_error(lambda: AutoTokenizer.from_pretrained(tmp_path), path, "lacks the field")


# ----------------------------------------------------------------------------------------------
# training checkpoints


@pytest.fixture
def ckpt(tmp_path):
    model = GPT(GPTConfig(**CONFIG), seed=0)
    opt = configure_optimizer(model, TrainConfig(learning_rate=1e-2))
    x = np.random.default_rng(0).integers(0, 11, (2, 8))
    _, loss = model(x, (x + 1) % 11)
    loss.backward()
    opt.step()
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, model, opt, 1, {"batch": np.random.default_rng(1).bit_generator.state})
    return path


@pytest.mark.parametrize("seed", range(3))
def test_random_damage_to_a_checkpoint_is_refused_or_harmless(ckpt, seed):
    good = ckpt.read_bytes()
    rng = np.random.default_rng(seed)
    n_header = struct.unpack("<Q", good[:8])[0] + 8
    for trial in range(40):
        raw = bytearray(good)
        if trial % 4 == 0:
            raw = raw[:int(rng.integers(0, len(raw)))]
        else:
            for i in rng.integers(0, n_header, size=int(rng.integers(1, 4))):
                raw[i] = int(rng.integers(0, 256))
        ckpt.write_bytes(bytes(raw))
        try:
            load_checkpoint(ckpt)
        except ValueError as e:
            assert type(e).__name__ == "FileFormatError" and str(ckpt) in str(e), repr(e)


def _edit_meta(path, edit):
    header, data = split(path)
    meta = json.loads(header["__metadata__"]["tinyllm"])
    edit(meta)
    header["__metadata__"]["tinyllm"] = json.dumps(meta)
    join(path, header, data)


@pytest.mark.parametrize("edit, fragment", [
    (lambda m: m.update(iter=-5), "'iter' is -5"),
    (lambda m: m.pop("model_config"), "'model_config' is missing"),
    (lambda m: m.update(optimizer={"param_groups": 3}), "'optimizer' is not"),
    (lambda m: m.pop("rng_states"), "'rng_states' is missing"),
])
def test_checkpoint_with_mangled_metadata(ckpt, edit, fragment):
    _edit_meta(ckpt, edit)
    expect_file_error(lambda: load_checkpoint(ckpt), ckpt, fragment)


def test_checkpoint_metadata_that_is_not_json(ckpt):
    header, data = split(ckpt)
    header["__metadata__"]["tinyllm"] = "{not json"
    join(ckpt, header, data)
    expect_file_error(lambda: load_checkpoint(ckpt), ckpt, "not valid JSON")


def test_a_checkpoint_cannot_make_restore_rng_call_anything_else(ckpt):
    """The generator's class is looked up by name in numpy.random: only bit generators qualify
    (``seed`` there would reseed NumPy's global generator)."""
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    for name in ("seed", "default_rng", "__init__", None):
        expect_file_error(lambda: restore_rng({"bit_generator": name, "state": {}}, ckpt), ckpt, "not one of")
    expect_file_error(lambda: restore_rng({"bit_generator": "PCG64", "state": "x"}, ckpt), ckpt, "malformed")
    assert np.random.random() == expected  # the global generator was never touched
