"""Tokenizers: text <-> lists of integer ids.

Two tokenizers share one interface (:class:`Tokenizer`):

* :class:`CharTokenizer` -- one id per character, the vocabulary being the sorted set of the
  characters of a training text (nanoGPT's ``shakespeare_char``).
* :class:`BPETokenizer` -- GPT-2's byte-level BPE. It loads GPT-2's own files and then encodes
  exactly as GPT-2's reference ``encoder.py`` does, or trains a new vocabulary on a text.

The interface follows Hugging Face habits::

    tok = AutoTokenizer.from_pretrained("out/tokenizer")
    input_ids = tok.encode("To be, or not", return_tensors="pt")   # (1, T) int64 ndarray
    text = tok.decode(output_ids[0], skip_special_tokens=True)

tinyllm has no torch, so ``return_tensors="pt"`` gives the same int64 ndarray as ``"np"``: the
Hugging Face example then runs unchanged with tinyllm's models, which take ndarrays. ``decode``
takes one sequence or a batch (a 2-D array, nested lists, a torch tensor) as transformers' does.

Tokens, ids and special tokens, with transformers' names and values (GPT-2's files give GPT-2's):
``tokenize(text)`` (``["Hello", "Ġworld"]``), ``convert_ids_to_tokens``, ``convert_tokens_to_ids``
(an unknown token gives ``unk_token_id``), ``convert_tokens_to_string``, ``get_vocab()``,
``bos_token`` / ``eos_token`` / ``unk_token`` / ``pad_token`` and their ``*_id``,
``all_special_tokens``, ``all_special_ids``, ``special_tokens_map``.

Adding tokens, for fine-tuning, as transformers: ``tok.add_special_tokens({"pad_token": "[PAD]"})``,
``tok.add_tokens(["<user>", "<bot>"])`` (each returns how many it added), then
``model.resize_token_embeddings(len(tok))``. An added token is matched whole by encode and kept
by save_pretrained (see :meth:`Tokenizer.add_tokens`, docs/bpe.md).

Batches: calling the tokenizer
------------------------------
``tokenizer(texts, padding=True, truncation=True, max_length=..., return_tensors="np")`` gives a
:class:`BatchEncoding` (``input_ids`` + ``attention_mask``) with Hugging Face's meanings, so
``model.generate(**tokenizer(prompts, return_tensors="np", padding=True))`` runs a batch of
prompts of different lengths once ``tokenizer.pad_token`` is set and ``tokenizer.padding_side``
is ``"left"`` (see :meth:`Tokenizer.__call__`). As transformers' fast tokenizers, a call also takes
``text_pair``, ``text_target`` (-> ``labels``) and the ``return_offsets_mapping`` /
``return_length`` / ``return_special_tokens_mask`` / ``return_token_type_ids`` options.

Files
-----
``save(path)`` / ``load(path)`` use tinyllm's own JSON (a ``"type"`` field names the class).
``save_pretrained(dir)`` writes that JSON as ``dir/tinyllm_tokenizer.json`` (not
``tokenizer.json``: that name belongs to the Hugging Face ``tokenizers`` library) and, for a BPE,
also GPT-2's ``vocab.json`` + ``merges.txt`` + ``tokenizer_config.json`` +
``special_tokens_map.json``, so ``transformers.GPT2Tokenizer.from_pretrained(dir)`` loads it.
:meth:`AutoTokenizer.from_pretrained` picks the class from whichever files it finds, and also
reads the ``tokenizer.json`` of a GPT-2 style BPE saved by transformers >= 5.

Chat templates
--------------
As in transformers, a tokenizer may carry a ``chat_template``: a Jinja template that renders a
list of ``{"role", "content"}`` messages as the text the model continues
(:meth:`Tokenizer.apply_chat_template`). It is saved with the tokenizer (tinyllm's JSON, and
``tokenizer_config.json`` for a BPE) and read back from a Hugging Face directory.
:func:`shakespeare_chat_template` writes a dialogue in the form of the play.
"""
import json
import operator
import os
import warnings
from collections import Counter, OrderedDict
from collections.abc import Mapping
from heapq import heapify, heappop, heappush
from itertools import repeat
from pathlib import Path

import numpy as np
import regex

from .errors import FileFormatError

__all__ = [
    "GPT2_SPLIT_PATTERN",
    "TOKENIZER_FILE",
    "VERY_LARGE_INTEGER",
    "AutoTokenizer",
    "BPETokenizer",
    "BatchEncoding",
    "CharTokenizer",
    "Seq2SeqTokenizer",
    "Tokenizer",
    "bytes_to_unicode",
    "shakespeare_chat_template",
]

# GPT-2's pre-tokenizer (openai/gpt-2 src/encoder.py). BPE merges never cross a boundary of
# these chunks, so " dog." can only become " dog" + "." and never "g.".
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
TOKENIZER_FILE = "tinyllm_tokenizer.json"
_FORMAT_VERSION = 1
_RETURN_TENSORS = (None, "np", "pt")


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to 256 printable unicode characters.

    Printable Latin-1 bytes map to themselves; the others (control bytes, space, ...) are
    shifted to code points 256+, so the space byte becomes ``"Ġ"`` and newline ``"Ċ"``. GPT-2's
    ``encoder.json`` and ``vocab.bpe`` spell every token in these characters.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    shift = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + shift)
            shift += 1
    return dict(zip(printable, map(chr, chars)))


_BYTE_ENCODER = bytes_to_unicode()
_BYTE_DECODER = {c: b for b, c in _BYTE_ENCODER.items()}
_CHAR_BYTES = {c: bytes([b]) for c, b in _BYTE_DECODER.items()}


def _token_to_str(token_bytes):
    return "".join(_BYTE_ENCODER[b] for b in token_bytes)


def _str_to_token(token_str):
    """Inverse of :func:`_token_to_str`; None if ``token_str`` is not spelled in GPT-2's alphabet."""
    try:
        return bytes(_BYTE_DECODER[c] for c in token_str)
    except KeyError:
        return None


def _as_id_list(ids, who):
    """Accept a list / tuple / 1-D integer ndarray / single int (or a torch tensor: anything with
    ``.tolist()``) and return a list of ints."""
    ids = _from_tensor(ids)
    if isinstance(ids, np.ndarray):
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"{who}: ids must be integers, got an array of dtype {ids.dtype}")
        if ids.ndim == 0:
            return [int(ids)]
        if ids.size == 0:
            return []  # a (0, T) array too, as transformers
        if ids.ndim != 1:
            raise ValueError(
                f"{who}: expected one sequence of ids (a 1-D array), got shape {ids.shape}; "
                "pass a row such as ids[0], or use batch_decode"
            )
        return ids.tolist()
    if isinstance(ids, (int, np.integer)):
        return [int(ids)]
    ids = list(ids)
    try:
        return [operator.index(i) for i in ids]
    except TypeError:
        bad = next(i for i in ids if not hasattr(i, "__index__"))
        raise TypeError(f"{who}: ids must be integers, got {bad!r} ({type(bad).__name__})") from None


_MAX_ID = 2 ** 32 - 1  # transformers' ids are u32 in the tokenizers library: a larger or negative one is an error


def _check_id_range(ids, who):
    """``ids`` (a list of int), if each is a possible token id (0 to 2**32 - 1: what transformers'
    tokenizers accept); an id merely missing from the vocabulary is fine (decode skips it)."""
    bad = next((i for i in ids if not 0 <= i <= _MAX_ID), None)
    if bad is not None:
        raise ValueError(f"{who}: id {bad} is not a token id (ids run from 0 to 2**32 - 1; transformers raises "
                         "OverflowError here)")
    return ids


def _from_tensor(ids):
    """A tensor of another library (torch, ...: anything with ``.tolist()`` but NumPy's) -> Python
    lists or an int, as transformers' ``to_py_obj``; anything else as it is."""
    if hasattr(ids, "tolist") and not isinstance(ids, (np.ndarray, np.generic)):
        return ids.tolist()
    return ids


def _is_batch(ids):
    """True for several sequences (a 2-D array or tensor, a list of lists or of 1-D arrays), False
    for one sequence. As transformers' decode, by the first element: no rows is no sequence."""
    if isinstance(ids, np.ndarray):
        return ids.ndim >= 2 and len(ids) > 0
    return isinstance(ids, (list, tuple)) and len(ids) > 0 and (
        isinstance(ids[0], (list, tuple)) or getattr(ids[0], "ndim", 0) >= 1)


def _is_empty(ids):
    """No ids at all: an empty list or an array or tensor of no rows."""
    if isinstance(ids, (list, tuple)) or getattr(ids, "ndim", 0) >= 1:
        return len(ids) == 0
    return False


def _to_tensors(ids, return_tensors):
    if return_tensors is None:
        return ids
    if return_tensors not in _RETURN_TENSORS:
        raise ValueError(
            f"return_tensors={return_tensors!r} is not supported: use None (a list), 'np' or "
            "'pt' (both give an int64 ndarray of shape (1, T); tinyllm has no torch)"
        )
    return np.asarray(ids, dtype=np.int64).reshape(1, len(ids))


def _check_text(text, who):
    if not isinstance(text, str):
        raise TypeError(f"{who}: expected a str, got {type(text).__name__}")


def _check_new_tokens(new_tokens, who):
    """add_tokens' argument -> a list of str (transformers' AddedToken objects are not supported)."""
    texts = [new_tokens] if isinstance(new_tokens, str) else new_tokens
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"{who}: expected a str or a list of str, got {new_tokens!r:.80} ({type(new_tokens).__name__})")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{who}: token {i} must be a str, got {text!r} ({type(text).__name__}); "
                            "transformers' AddedToken is not supported")
    return list(texts)


def _check_special_tokens_dict(special_tokens_dict, named_keys, extra_keys, who):
    """add_special_tokens' dict -> ({name: text}, [extra texts]), every key and value checked first,
    so a bad one changes nothing."""
    if not isinstance(special_tokens_dict, Mapping):
        raise TypeError(f"{who}: expected a dict such as {{'pad_token': '[PAD]'}}, got "
                        f"{type(special_tokens_dict).__name__}")
    named, extra = {}, []
    for key, value in special_tokens_dict.items():
        if key in extra_keys:
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
                    not all(isinstance(t, str) for t in value):
                raise ValueError(f"{who}: {key} must be a list of str, got {value!r}")
            extra.extend(value)
        elif key in named_keys:
            if not isinstance(value, str) or not value:
                raise ValueError(f"{who}: {key} must be a non-empty str, got {value!r}")
            named[key] = value
        else:
            raise ValueError(f"{who}: unknown key {key!r}; the keys are {', '.join(named_keys + extra_keys)}")
    return named, extra


def _alternation_re(tokens):
    """A regex that matches any of ``tokens`` (None for none), the longest first, so that
    "<|a|><|b|>"-style overlaps pick the longer token (transformers' leftmost-longest match)."""
    if not tokens:
        return None
    return regex.compile("(" + "|".join(regex.escape(t) for t in sorted(tokens, key=len, reverse=True)) + ")")


def _added_token_bytes(text):
    """The bytes an added token decodes to, as transformers' byte-level decoder reads its text: a
    character of GPT-2's byte alphabet stands for its byte (so "é", which is in it, becomes the lone
    byte 0xE9 and decodes as U+FFFD), any other character for its UTF-8. ASCII texts decode as themselves."""
    return b"".join(_CHAR_BYTES.get(c) or c.encode("utf-8", "replace") for c in text)


# ------------------------------------------------------------------------------------------
# Calling a tokenizer: batches with padding and truncation, as Hugging Face's
# ------------------------------------------------------------------------------------------
_SIDES = ("left", "right")
_PADDING = {False: None, None: None, "do_not_pad": None, True: "longest", "longest": "longest",
            "max_length": "max_length"}
_TRUNCATION = {False: None, None: None, "do_not_truncate": None, True: "longest_first",
               "longest_first": "longest_first", "only_first": "only_first", "only_second": "only_second"}
# what padding puts in each field of a call's BatchEncoding (input_ids: the pad token's id)
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1, "offset_mapping": (0, 0)}
# the fields a call can return, in transformers' order
_CALL_FIELDS = ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask", "offset_mapping", "length")
VERY_LARGE_INTEGER = int(1e30)  # transformers' model_max_length when the model's limit is unknown
_LARGE_INTEGER = int(1e20)  # above it a model_max_length means "no limit", as in transformers


class BatchEncoding(dict):
    """What calling a tokenizer returns, as Hugging Face's: a dict of ``input_ids`` and
    ``attention_mask`` (so ``model.generate(**enc)`` works) whose keys also read as attributes
    (``enc.input_ids``)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no {name!r} (it holds {sorted(self)})") from None


def _padding_inputs(encoded_inputs, who):
    """What :meth:`Tokenizer.pad` pads, as ``{name: one sequence or a list of them}``: a mapping
    (a dict, either library's BatchEncoding) or a list of them, one per sequence, made one."""
    if isinstance(encoded_inputs, (list, tuple)):
        if not all(isinstance(e, Mapping) and "input_ids" in e for e in encoded_inputs):
            raise TypeError(f"{who}: expected dicts with 'input_ids', got {encoded_inputs!r:.80}")
        names = dict.fromkeys(name for e in encoded_inputs for name in e)
        encoded_inputs = {name: [e.get(name) for e in encoded_inputs] for name in names}
        if None in encoded_inputs.get("attention_mask", ()):
            del encoded_inputs["attention_mask"]  # some sequences lack one: make them all
    if not isinstance(encoded_inputs, Mapping) or "input_ids" not in encoded_inputs:
        raise TypeError(f"{who}: expected a dict with 'input_ids' or a list of them, got "
                        f"{type(encoded_inputs).__name__}")
    return dict(encoded_inputs)


def _padding_rows(inputs, who):
    """-> (rows of ids, rows of their masks (1s if none given), whether several sequences were given,
    whether they came as arrays or tensors)."""
    ids = inputs["input_ids"]
    first = ids[0] if isinstance(ids, (list, tuple)) and ids else None
    as_arrays = hasattr(ids, "tolist") or hasattr(first, "tolist")  # NumPy or torch (Python ints have no tolist)
    ids = _from_tensor(ids)
    batched = _is_batch(ids) or _is_empty(ids)
    rows = [_as_id_list(row, who) for row in (ids if batched else [ids])]
    masks = inputs.get("attention_mask")
    if masks is None:
        return rows, [[1] * len(row) for row in rows], batched, as_arrays
    masks = _from_tensor(masks)
    masks = [_as_id_list(m, who) for m in (masks if batched else [masks])]
    if [len(m) for m in masks] != [len(r) for r in rows]:
        raise ValueError(f"{who}: attention_mask rows of lengths {[len(m) for m in masks]} do not match the "
                         f"input_ids rows of lengths {[len(r) for r in rows]}")
    return rows, masks, batched, as_arrays


def _padding_extra_rows(inputs, ids, batched, who):
    """{name: rows} of the fields besides the mask that :meth:`Tokenizer.pad` pads, as transformers':
    ``token_type_ids`` and ``special_tokens_mask``, when given; each row as long as its ids."""
    extra = {}
    for name in ("token_type_ids", "special_tokens_mask"):
        if inputs.get(name) is None:
            continue
        values = _from_tensor(inputs[name])
        rows = [_as_id_list(row, who) for row in (values if batched else [values])]
        if [len(r) for r in rows] != [len(r) for r in ids]:
            raise ValueError(f"{who}: {name} rows of lengths {[len(r) for r in rows]} do not match the "
                             f"input_ids rows of lengths {[len(r) for r in ids]}")
        extra[name] = rows
    return extra


def _strategy(table, value, name, who, options):
    """``table[value]``, or a ValueError naming ``value`` and the ``options``."""
    try:
        return table[value]
    except (KeyError, TypeError):  # TypeError: an unhashable value, e.g. a list
        raise ValueError(f"{who}: {name}={value!r} is not supported: use {options}") from None


def _check_return_tensors(return_tensors):
    if return_tensors not in _RETURN_TENSORS:
        raise ValueError(
            f"return_tensors={return_tensors!r} is not supported: use None (lists), 'np' or 'pt' (both give "
            "int64 ndarrays; tinyllm has no torch)"
        )


def _check_side(value, name):
    if value not in _SIDES:
        raise ValueError(f"{name}={value!r} is not supported: use 'left' or 'right'")
    return value


def _check_call_texts(text, who, name="text"):
    """The texts of a call, and whether a batch (a list or tuple of str) was given."""
    if isinstance(text, str):
        return [text], False
    if not isinstance(text, (list, tuple)):
        raise TypeError(f"{who}: {name} must be a str or a list of str, got {type(text).__name__}")
    for i, t in enumerate(text):
        if not isinstance(t, str):
            raise TypeError(f"{who}: {name}[{i}] must be a str, got {type(t).__name__} (pre-split words, "
                            "is_split_into_words, are not supported: join them into one str)")
    return list(text), True


def _check_pairs(text_pair, texts, batched, who):
    """The second text of each pair (None: no pair), as transformers pairs ``text_pair`` with ``text``:
    a list of as many str for a batch, one str for one text (an empty one is no pair, as there)."""
    if text_pair is None:
        return [None] * len(texts)
    if not batched:
        if not isinstance(text_pair, str):
            raise TypeError(f"{who}: text is one str, so text_pair must be one str, got {type(text_pair).__name__}")
        return [text_pair or None]
    if isinstance(text_pair, str):
        raise TypeError(f"{who}: text is a batch of {len(texts)}, so text_pair must be a list of as many str, "
                        "got a str")
    pairs, _ = _check_call_texts(text_pair, who, "text_pair")
    if len(pairs) != len(texts):
        raise ValueError(f"{who}: text has {len(texts)} texts but text_pair has {len(pairs)}")
    return pairs


def _cut(segment, n, side):
    """Keep ``n`` tokens of ``segment`` ((ids, offsets or None)), dropping the rest on ``side``."""
    ids, offsets = segment
    if len(ids) <= n:
        return segment
    keep = slice(len(ids) - n, None) if side == "left" else slice(0, n)
    return ids[keep], None if offsets is None else offsets[keep]


def _longest_first(n1, n2, limit):
    """How many tokens of each text of a pair truncation="longest_first" keeps, as the tokenizers
    library: the longer text loses tokens first, down to half of ``limit`` each."""
    swap = n1 > n2
    if swap:
        n1, n2 = n2, n1
    n2 = n1 if n1 > limit else max(n1, limit - n1)
    if n1 + n2 > limit:
        n1 = limit // 2
        n2 = n1 + limit % 2
    return (n2, n1) if swap else (n1, n2)


def _truncate(first, second, strategy, limit, side, who):
    """Cut a text's segment (and its pair's, or None) to ``limit`` tokens in all, as transformers'
    ``truncation`` strategies: "longest_first", "only_first", "only_second"."""
    if limit == 0:
        return _cut(first, 0, side), None if second is None else _cut(second, 0, side)
    if second is None:
        if strategy == "only_second" and len(first[0]) > limit:
            raise ValueError(f"{who}: truncation='only_second' cuts the second text of a pair, but no text_pair "
                             f"was given and the text is {len(first[0])} tokens long (max_length {limit})")
        return _cut(first, limit, side), None
    n1, n2 = len(first[0]), len(second[0])
    excess = n1 + n2 - limit
    if excess <= 0:
        return first, second
    if strategy == "longest_first":
        k1, k2 = _longest_first(n1, n2, limit)
    else:
        which, n = ("first", n1) if strategy == "only_first" else ("second", n2)
        if n <= excess:
            raise ValueError(f"{who}: truncation={strategy!r}: the {which} text has {n} tokens, too few to drop "
                             f"the {excess} that max_length {limit} asks for (transformers raises here too)")
        k1, k2 = (n1 - excess, n2) if strategy == "only_first" else (n1, n2 - excess)
    return _cut(first, k1, side), _cut(second, k2, side)


def _check_length(value, name, who):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
        raise ValueError(f"{who}: {name} must be a non-negative int or None, got {value!r}")
    return None if value is None else int(value)


def _model_max_length(value, who):
    """A model_max_length from a file or an argument, checked, as an int; None (no limit known) ->
    transformers' :data:`VERY_LARGE_INTEGER`, as is a float such as 1e30 (what JSON may hold)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    value = _check_length(value, "model_max_length", who)
    return VERY_LARGE_INTEGER if value is None else value


def _pad_rows(rows, width, pad_value, side):
    """Pad each list to ``width`` with ``pad_value`` on ``side``; rows already as long stay as they are."""
    padded = []
    for row in rows:
        pad = [pad_value] * max(width - len(row), 0)
        padded.append(pad + row if side == "left" else row + pad)
    return padded


def _batch_encoding(fields, return_tensors, batched, who):
    """The :class:`BatchEncoding` of ``fields`` ({name: rows}, in :data:`_CALL_FIELDS`' order): lists
    (one row's, not ``batched``; ``length`` stays a list, as transformers') or int64 arrays (B, T)
    with ``return_tensors`` ((B, T, 2) for offsets, (B,) for lengths)."""
    enc = {name: fields[name] for name in _CALL_FIELDS if name in fields}
    if return_tensors is not None:
        enc = {name: np.asarray(rows, dtype=np.int64) if name == "length" else _stack(rows, who)
               for name, rows in enc.items()}  # (B, T); (1, T) for one sequence
    elif not batched:
        enc = {name: rows if name == "length" else rows[0] for name, rows in enc.items()}
    return BatchEncoding(enc)


def _stack(rows, who):
    """Equal-length rows -> an int64 array (B, T) (of offsets: (B, T, 2)); rows of different lengths
    are an error."""
    lengths = sorted({len(r) for r in rows})
    if len(lengths) > 1:
        raise ValueError(
            f"{who}: the texts give sequences of different lengths ({lengths[0]} to {lengths[-1]} tokens), "
            "which cannot be one array: pass padding=True (and truncation=True, max_length=...) to make "
            "them equal, or return_tensors=None for lists"
        )
    return np.asarray(rows, dtype=np.int64) if rows else np.zeros((0, 0), dtype=np.int64)


class Tokenizer:
    """The interface every tokenizer implements.

    Subclasses define ``_encode(text) -> list[int]``, ``_decode(ids, skip_special_tokens)``,
    ``vocab_size``, ``__len__``, ``_to_dict()`` and ``_from_dict(d)``; this class turns those
    into ``encode``/``decode`` with Hugging Face's arguments and into the file formats.
    """

    _types = {}  # JSON "type" -> class, filled by __init_subclass__

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        Tokenizer._types[cls.__name__] = cls

    # ---- text <-> ids --------------------------------------------------------------------
    def encode(self, text, return_tensors=None, add_special_tokens=True, **call_kwargs):
        """``text`` -> list of ids, or an int64 ndarray of shape (1, T) with ``return_tensors``
        ``"np"`` or ``"pt"`` (tinyllm has no torch: ``"pt"`` also gives the ndarray).
        ``add_special_tokens``: add the tokens the tokenizer puts around a text, as calling it
        does (none for a CharTokenizer or BPE, as GPT-2's; the EOS for a Seq2SeqTokenizer).
        ``call_kwargs`` (``truncation``, ``max_length``, ``padding``, ...): the ``input_ids`` of
        calling the tokenizer with them (:meth:`__call__`), as transformers' encode."""
        if call_kwargs:
            return self._encode_by_call(text, return_tensors, add_special_tokens, call_kwargs)
        _check_text(text, f"{type(self).__name__}.encode")
        ids = self._encode(text)
        return _to_tensors(self._with_special_tokens(ids) if add_special_tokens else ids, return_tensors)

    def _encode_by_call(self, text, return_tensors, add_special_tokens, call_kwargs):
        """encode with padding / truncation arguments: the ids of :meth:`__call__` with them."""
        _check_text(text, f"{type(self).__name__}.encode")
        call_kwargs = {"return_attention_mask": False, **call_kwargs}
        enc = self(text, return_tensors=return_tensors, add_special_tokens=add_special_tokens, **call_kwargs)
        return enc["input_ids"]

    clean_up_tokenization_spaces = False  # decode's default, as transformers 5's
    # transformers' flag that makes a BPE apply clean_up_tokenization all the same (see _wants_clean_up)
    clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = False
    _byte_level_bpe = False  # whether decode gives the exact text back, spaces before punctuation included

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=None):
        """ids -> text. ``ids``: one sequence (a list, tuple, 1-D integer array or tensor such as
        ``out[0]``, or one int) -> a str; several (a 2-D array, a list of lists) -> a list of str,
        as transformers' decode. An id the vocabulary lacks (say a sampled id of a model whose
        embedding table was rounded up past the tokenizer's size) decodes to nothing, as in transformers
        5; a negative id, or one of 2**32 or more, is an error. ``clean_up_tokenization_spaces`` (default
        :attr:`clean_up_tokenization_spaces`, False): apply :meth:`clean_up_tokenization` (a byte-level
        BPE refuses, with a warning, as transformers 5)."""
        clean_up = self._wants_clean_up(clean_up_tokenization_spaces)
        ids = _from_tensor(ids)
        if _is_batch(ids):
            return self.batch_decode(ids, skip_special_tokens, clean_up)
        return self._decode_one(ids, skip_special_tokens, clean_up)

    def batch_decode(self, sequences, skip_special_tokens=False, clean_up_tokenization_spaces=None):
        """Decode each row of a 2-D array (or each list in a list) -> list of str. One flat
        sequence gives a list of one str (and an empty one, none), as in transformers."""
        clean_up = self._wants_clean_up(clean_up_tokenization_spaces)
        sequences = _from_tensor(sequences)
        if _is_empty(sequences):
            return []
        if not _is_batch(sequences):
            sequences = [sequences]
        return [self._decode_one(seq, skip_special_tokens, clean_up) for seq in sequences]

    def _decode_one(self, ids, skip_special_tokens, clean_up):
        ids = _check_id_range(_as_id_list(ids, f"{type(self).__name__}.decode"), f"{type(self).__name__}.decode")
        text = self._decode([i for i in ids if self._has_id(i)], skip_special_tokens)
        return self.clean_up_tokenization(text) if clean_up else text

    def _has_id(self, token_id):
        """Whether ``token_id`` (an int) is an id of the vocabulary: decode skips any other, as transformers."""
        return self._id_to_token(token_id) is not None

    def _wants_clean_up(self, clean_up_tokenization_spaces):
        """Whether decode applies :meth:`clean_up_tokenization`: as asked, else
        :attr:`clean_up_tokenization_spaces`. Not for a byte-level BPE, whose decoding is exact ("a ."
        is a text of its own): a warning instead, as transformers 5 (unless its flag forces it)."""
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if (clean_up_tokenization_spaces and self._byte_level_bpe
                and not self.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output):
            warnings.warn(f"Ignoring clean_up_tokenization_spaces=True for the byte-level BPE {type(self).__name__}, "
                          "as transformers 5 does: the clean-up would delete real spaces before punctuation. Set "
                          "tokenizer.clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output = True "
                          "to force it.", stacklevel=3)
            return False
        return bool(clean_up_tokenization_spaces)

    def clean_up_tokenization(self, text):
        """transformers' rule: remove the space that word-piece tokenizers leave before punctuation
        and English contractions (" ." -> ".", " n't" -> "n't", ...). It changes the text a lossless
        tokenizer gave back, so :meth:`decode` applies it only when asked to."""
        return (text.replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
                .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
                .replace(" 've", "'ve").replace(" 're", "'re"))

    # ---- tokens (strings as the vocabulary writes them) <-> ids -----------------------------
    def tokenize(self, text, add_special_tokens=False):
        """``text`` -> its tokens as the vocabulary writes them (GPT-2's ``"Ġworld"``; a
        CharTokenizer's characters)."""
        return self.convert_ids_to_tokens(self.encode(text, add_special_tokens=add_special_tokens))

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        """An id -> its token (None for an id the vocabulary lacks, as transformers; a negative id or
        one of 2**32 or more is an error, as there); a sequence of ids -> a list of tokens, without
        :attr:`all_special_ids` if ``skip_special_tokens``."""
        if isinstance(ids, (int, np.integer)):
            return self._id_to_token(_check_id_range([int(ids)], "convert_ids_to_tokens")[0])
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        ids = _check_id_range(_as_id_list(ids, "convert_ids_to_tokens"), "convert_ids_to_tokens")
        return [self._id_to_token(i) for i in ids if i not in skip]

    def convert_tokens_to_ids(self, tokens):
        """A token -> its id; a list of tokens -> a list of ids. A token the vocabulary lacks gives
        :attr:`unk_token_id` (None for a tokenizer without an unknown token), as transformers."""
        if isinstance(tokens, str):
            return self._token_id_or_unk(tokens)
        if not isinstance(tokens, (list, tuple)):
            raise TypeError(f"convert_tokens_to_ids: expected a str or a list of str, got {type(tokens).__name__}")
        return [self._token_id_or_unk(token) for token in tokens]

    def _token_id_or_unk(self, token):
        if not isinstance(token, str):
            raise TypeError(f"convert_tokens_to_ids: a token must be a str, got {token!r} ({type(token).__name__})")
        token_id = self._token_to_id(token)
        return self.unk_token_id if token_id is None else token_id

    def convert_tokens_to_string(self, tokens):
        """Tokens (as :meth:`tokenize` gives them) -> the text they spell."""
        return "".join(tokens)

    def get_vocab(self):
        """``{token: id}`` of every token, special ones included."""
        tokens = ((self._id_to_token(i), i) for i in range(self.vocab_size))
        return {token: i for token, i in tokens if token is not None}

    @property
    def vocab(self):
        """:meth:`get_vocab` (a new dict each time)."""
        return self.get_vocab()

    def get_added_vocab(self):
        """``{token: id}`` of the special tokens that are no merge of bytes or characters (GPT-2's
        ``"<|endoftext|>"``; none for a CharTokenizer) and of the tokens :meth:`add_tokens` added."""
        return {}

    def num_special_tokens_to_add(self, pair=False):
        """How many special tokens ``add_special_tokens=True`` adds to a text or a pair (0 for GPT-2)."""
        n = len(self._with_special_tokens([]))
        if pair and n:
            raise ValueError(f"{type(self).__name__}: pairs of texts are not supported (the tokenizer adds special "
                             "tokens around a text)")
        return n

    # ---- calling the tokenizer: batches ----------------------------------------------------
    model_input_names = ["input_ids", "attention_mask"]  # what calling the tokenizer returns
    @property
    def model_max_length(self):
        """The longest input the model takes: truncation's default length. Unknown:
        :data:`VERY_LARGE_INTEGER` (1e30, as transformers reports; anything above 1e20 means no limit),
        so ``min(tokenizer.model_max_length, 1024)`` works as with transformers. Setting None means unknown."""
        return self.__dict__.get("_model_max_length", VERY_LARGE_INTEGER)

    @model_max_length.setter
    def model_max_length(self, value):
        self._model_max_length = _model_max_length(value, type(self).__name__)

    @property
    def _max_length_limit(self):
        """:attr:`model_max_length` if it is a real limit, else None."""
        return self.model_max_length if self.model_max_length <= _LARGE_INTEGER else None

    def __call__(self, text=None, text_pair=None, *, text_target=None, text_pair_target=None,
                 add_special_tokens=True, padding=False, truncation=None, max_length=None, pad_to_multiple_of=None,
                 padding_side=None, return_tensors=None, return_token_type_ids=None, return_attention_mask=None,
                 return_special_tokens_mask=False, return_offsets_mapping=False, return_length=False, verbose=True,
                 **unknown):
        """Encode a text or a batch of texts, as a Hugging Face tokenizer's call does.

        ``text``: a str (-> flat lists of ids, or arrays (1, T) with ``return_tensors``) or a list
        of str (-> a list of lists, or arrays (B, T)). Returns a :class:`BatchEncoding` holding
        ``input_ids`` and (unless ``return_attention_mask=False``) ``attention_mask``: 1 at the
        text's tokens, 0 at padding.

        ``padding``: ``False`` / ``"do_not_pad"`` (none), ``True`` / ``"longest"`` (to the longest
        sequence of the batch) or ``"max_length"`` (to ``max_length``), then up to a multiple of
        ``pad_to_multiple_of`` if given; with :attr:`pad_token_id`, on ``padding_side`` (default
        :attr:`padding_side`, ``"right"`` unless set: a decoder-only model generating from a batch
        needs ``"left"``). ``truncation=True`` keeps ``max_length`` tokens (special ones included),
        dropping the rest on :attr:`truncation_side`'s side. Without ``max_length`` both use
        :attr:`model_max_length` (none known: no padding / truncation, as transformers 5, and a
        warning, which it does not give); ``max_length`` with neither padding nor truncation asked truncates, with
        transformers 4's warning. ``verbose=False`` silences these warnings. ``return_tensors``:
        ``None`` (lists), ``"np"`` or ``"pt"`` (int64 ndarrays; tinyllm has no torch); sequences of
        different lengths are then an error. ``add_special_tokens``: the tokens the tokenizer adds to
        each text (only :class:`Seq2SeqTokenizer` adds one, the EOS).

        As transformers' fast tokenizers, on request: ``return_token_type_ids`` (0 for ``text``, 1 for
        ``text_pair``'s tokens, 0 at padding), ``return_special_tokens_mask`` (1 at the tokens
        ``add_special_tokens`` added and at padding), ``return_offsets_mapping`` (each token's
        ``(start, end)`` in the characters of its text; a byte-level token holding part of a character
        covers that whole character; ``(0, 0)`` for added special tokens and padding),
        ``return_length`` (each row's length, padding included).

        ``text_pair``: a second text for each text, encoded after it (``truncation`` "longest_first",
        "only_first" or "only_second" choose which loses tokens); only for a tokenizer that adds no
        special tokens (GPT-2's, a CharTokenizer). ``text_target`` (and ``text_pair_target``): the
        texts a seq2seq model learns to produce, encoded with the same arguments; their
        ``input_ids`` become ``labels`` (padded with the pad id, as transformers: turning padding into
        -100 is the data collator's job). ``text_target`` alone gives the targets' encoding.
        """
        who = f"{type(self).__name__}(...)"
        if unknown:
            raise TypeError(f"{who}: unknown argument(s) {sorted(unknown)}; it takes text, text_pair, text_target, "
                            "text_pair_target, add_special_tokens, padding, truncation, max_length, "
                            "pad_to_multiple_of, "
                            "padding_side, return_tensors, return_token_type_ids, return_attention_mask, "
                            "return_special_tokens_mask, return_offsets_mapping, return_length, verbose")
        if text is None and text_target is None:
            raise ValueError(f"{who}: give text (or text_target), got neither")
        _check_return_tensors(return_tensors)
        with warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
            plan = self._padding_and_truncation(padding, truncation, max_length, pad_to_multiple_of, padding_side, who)
        wanted = dict(token_type_ids=bool(return_token_type_ids), special_tokens_mask=return_special_tokens_mask,
                      offset_mapping=return_offsets_mapping, length=return_length,
                      attention_mask=return_attention_mask is None or bool(return_attention_mask))
        how = dict(add_special_tokens=add_special_tokens, plan=plan, wanted=wanted, return_tensors=return_tensors,
                   verbose=verbose, who=who)
        enc = None if text is None else self._call_one(text, text_pair, **how)
        if text_target is None:
            return enc
        targets = self._call_one(text_target, text_pair_target, **how)
        if enc is None:
            return targets
        enc["labels"] = targets["input_ids"]
        return enc

    def _call_one(self, text, text_pair, add_special_tokens, plan, wanted, return_tensors, verbose, who):
        """The :class:`BatchEncoding` of ``text`` (and its ``text_pair``), encoded, truncated and padded as
        ``plan`` says (:meth:`_padding_and_truncation`), holding the fields ``wanted`` says."""
        texts, batched = _check_call_texts(text, who)
        pairs = _check_pairs(text_pair, texts, batched, who)
        pad_mode, max_length, truncation, pad_to_multiple_of, side = plan
        rows = [self._encode_row(t, pair, add_special_tokens, truncation, max_length, wanted["offset_mapping"], who)
                for t, pair in zip(texts, pairs)]
        if verbose and max_length is None:
            self._warn_if_too_long(max((len(row["input_ids"]) for row in rows), default=0))
        names = [name for name in _CALL_FIELDS if name == "input_ids" or (name != "length" and wanted[name])]
        fields = self._pad({name: [row[name] for row in rows] for name in names}, pad_mode, max_length,
                           pad_to_multiple_of, side)
        if wanted["length"]:
            fields["length"] = [len(ids) for ids in fields["input_ids"]]
        return _batch_encoding(fields, return_tensors, batched, who)

    def _warn_if_too_long(self, length):
        """transformers' warning when a call gives a sequence longer than :attr:`model_max_length`."""
        limit = self._max_length_limit
        if limit is not None and length > limit:
            warnings.warn(f"Token indices sequence length is longer than the specified maximum sequence length for "
                          f"this model ({length} > {limit}). Running this sequence through the model will result in "
                          "indexing errors", stacklevel=4)

    def _encode_row(self, text, pair, add_special_tokens, truncation, max_length, with_offsets, who):
        """One row of a call: ``text``'s (and ``pair``'s) tokens, cut as ``truncation`` says to
        ``max_length`` counting the special tokens (which are kept, as transformers does), then those
        added -> {field: list}."""
        first = self._segment(text, with_offsets)
        second = None if pair is None else self._segment(pair, with_offsets)
        prefix, suffix = self._special_tokens_around() if add_special_tokens else ([], [])
        if second is not None and (prefix or suffix):
            raise ValueError(f"{who}: text_pair is not supported by {type(self).__name__}, which adds special tokens "
                             "around a text")
        if truncation is not None:
            limit = max_length - len(prefix) - len(suffix)
            if limit < 0:
                raise ValueError(f"{who}: max_length={max_length} leaves no room for the {len(prefix) + len(suffix)} "
                                 "special token(s) that add_special_tokens=True adds")
            first, second = _truncate(first, second, truncation, limit, self.truncation_side, who)
        (ids, offsets), (ids2, offsets2) = first, second or ([], [])
        n, n2, n_special = len(ids), len(ids2), len(prefix) + len(suffix)
        row = {"input_ids": prefix + ids + ids2 + suffix, "attention_mask": [1] * (n + n2 + n_special),
               "token_type_ids": [0] * (len(prefix) + n) + [1] * n2 + [0] * len(suffix),
               "special_tokens_mask": [1] * len(prefix) + [0] * (n + n2) + [1] * len(suffix)}
        if with_offsets:
            row["offset_mapping"] = [(0, 0)] * len(prefix) + offsets + offsets2 + [(0, 0)] * len(suffix)
        return row

    def _segment(self, text, with_offsets):
        """``text``'s ids without the tokens the tokenizer adds, and (``with_offsets``) each one's
        ``(start, end)`` in ``text``'s characters, else None."""
        if not with_offsets:
            return self._encode_plain(text), None
        _check_text(text, f"{type(self).__name__}(...)")
        ids, offsets = self._encode_with_offsets(text)
        return ids, offsets

    def _encode_with_offsets(self, text):
        """``text`` -> (ids without added special tokens, their ``(start, end)`` character offsets)."""
        raise NotImplementedError(f"{type(self).__name__} does not give offsets")

    def _pad(self, fields, pad_mode, max_length, pad_to_multiple_of, side):
        """Pad each row of each field ({name: rows}; input_ids with :attr:`pad_token_id`, the others
        with :data:`_PAD_VALUES`) to the longest row (``pad_mode`` "longest") or to ``max_length``
        ("max_length"), then up to a multiple of ``pad_to_multiple_of``; ``pad_mode`` None leaves them."""
        if pad_mode is None:
            return fields
        width = max(map(len, fields["input_ids"]), default=0) if pad_mode == "longest" else max_length
        if pad_to_multiple_of is not None:
            width = -(-width // pad_to_multiple_of) * pad_to_multiple_of  # round up
        pad_values = {**_PAD_VALUES, "input_ids": self.pad_token_id}
        return {name: _pad_rows(rows, width, pad_values[name], side) for name, rows in fields.items()}

    def pad(self, encoded_inputs, padding=True, max_length=None, pad_to_multiple_of=None, padding_side=None,
            return_attention_mask=None, return_tensors=None):
        """Pad sequences already encoded, as transformers' ``tokenizer.pad`` (what a data collator
        calls). ``encoded_inputs``: a dict (e.g. a :class:`BatchEncoding`) whose ``input_ids`` is one
        sequence or a list of them, with or without their ``attention_mask``, or a list of such dicts,
        one per sequence. ``padding`` (default True: to the longest) and the other arguments as in
        :meth:`__call__`; nothing is truncated, and ids given as arrays come back as arrays. Returns
        a :class:`BatchEncoding` of ``input_ids``, ``attention_mask`` (the given one padded with 0,
        else 1 at the ids and 0 at the padding), ``token_type_ids`` and ``special_tokens_mask`` if
        given (padded with 0 and 1, as transformers) and any other key as given (e.g. ``labels``)."""
        who = f"{type(self).__name__}.pad"
        _check_return_tensors(return_tensors)
        inputs = _padding_inputs(encoded_inputs, who)
        ids, masks, batched, as_arrays = _padding_rows(inputs, who)
        if return_tensors is None and as_arrays:
            return_tensors = "np"  # arrays in, arrays out, as transformers
        pad_mode, max_length, _, pad_to_multiple_of, side = self._padding_and_truncation(
            padding, False, max_length, pad_to_multiple_of, padding_side, who)
        fields = {"input_ids": ids, "attention_mask": masks, **_padding_extra_rows(inputs, ids, batched, who)}
        fields = self._pad(fields, pad_mode, max_length, pad_to_multiple_of, side)
        if not (return_attention_mask or return_attention_mask is None):
            del fields["attention_mask"]
        enc = _batch_encoding(fields, return_tensors, True, who)
        if not batched:
            enc = BatchEncoding({name: rows[0] for name, rows in enc.items()})  # one sequence: (T,) or a list
        enc.update({name: value for name, value in inputs.items() if name not in fields and name != "attention_mask"})
        return enc

    def _padding_and_truncation(self, padding, truncation, max_length, pad_to_multiple_of, padding_side, who):
        """transformers' ``_get_padding_truncation_strategies``: -> (None / "longest" / "max_length",
        max_length (model_max_length if not given), the truncation strategy ("longest_first",
        "only_first", "only_second") or None, pad_to_multiple_of, the padding side)."""
        pad_mode = _strategy(_PADDING, padding, "padding", who,
                             "True, False, 'longest', 'max_length' or 'do_not_pad'")
        truncate = _strategy(_TRUNCATION, truncation, "truncation", who,
                             "True, False, 'longest_first', 'only_first', 'only_second' or 'do_not_truncate'")
        max_length = _check_length(max_length, "max_length", who)
        pad_to_multiple_of = _check_length(pad_to_multiple_of, "pad_to_multiple_of", who)
        if pad_to_multiple_of == 0:
            raise ValueError(f"{who}: pad_to_multiple_of must be positive, got 0")
        side = self.padding_side if padding_side is None else _check_side(padding_side, "padding_side")
        if max_length is not None and padding in (False, None) and truncation is None:
            warnings.warn("Truncation was not explicitly activated but `max_length` is provided a specific value, "
                          "please use `truncation=True` to explicitly truncate examples to max length. "
                          "Defaulting to truncation.", stacklevel=3)
            truncate = "longest_first"
        if padding is True and max_length is not None and not truncate:
            warnings.warn("`max_length` is ignored when `padding`=`True` and there is no truncation strategy. "
                          "To pad to max length, use `padding='max_length'`.", stacklevel=3)
        if max_length is None and (pad_mode == "max_length" or truncate):
            pad_mode, truncate, max_length = self._model_max_length_default(pad_mode, truncate, who)
        if pad_mode is not None and self.pad_token_id is None:
            how = "tokenizer.eos_token" if self.eos_token is not None else repr(self._id_to_token(0))
            raise ValueError(f"{who}: asking to pad (padding={padding!r}) but the tokenizer has no pad token: set "
                             f"one of its tokens as pad_token, e.g. `tokenizer.pad_token = {how}` (and, to "
                             "generate from the batch with a decoder-only model, `tokenizer.padding_side = 'left'`)")
        if (pad_mode is not None and truncate and pad_to_multiple_of is not None and max_length is not None
                and max_length % pad_to_multiple_of):
            raise ValueError(f"{who}: truncation and padding are both on, but the truncation length ({max_length}) "
                             f"is not a multiple of pad_to_multiple_of ({pad_to_multiple_of})")
        return pad_mode, max_length, truncate, pad_to_multiple_of, side

    def _model_max_length_default(self, pad_mode, truncate, who):
        """Padding to max_length or truncation without a max_length: :attr:`model_max_length`, or,
        when unknown, a warning and neither (as transformers, whose limit is then 1e30).
        -> (pad_mode, truncate, max_length)."""
        limit = self._max_length_limit
        if limit is not None:
            return pad_mode, truncate, limit
        what = "pad to max_length" if pad_mode == "max_length" else "truncate"
        warnings.warn(f"{who}: asked to {what} but max_length is not given and the tokenizer has no "
                      "model_max_length: no padding to max_length / no truncation. Pass max_length=...",
                      stacklevel=4)
        return (None if pad_mode == "max_length" else pad_mode), None, None

    def _encode_plain(self, text):
        """``text``'s ids without the special tokens the tokenizer adds (see :meth:`_with_special_tokens`)."""
        return self.encode(text, add_special_tokens=False)

    def _with_special_tokens(self, ids):
        """The ids with the special tokens the tokenizer adds around a text (:meth:`_special_tokens_around`)."""
        prefix, suffix = self._special_tokens_around()
        return prefix + list(ids) + suffix

    def _special_tokens_around(self):
        """(ids before, ids after) a text that ``add_special_tokens=True`` adds: none by default (as GPT-2)."""
        return [], []

    @property
    def padding_side(self):
        """Where :meth:`__call__` pads: ``"right"`` (the default, GPT-2's) or ``"left"`` (what a
        decoder-only model generating from a batch needs)."""
        return self.__dict__.get("_padding_side", "right")

    @padding_side.setter
    def padding_side(self, value):
        self._padding_side = _check_side(value, "padding_side")

    @property
    def truncation_side(self):
        """Which end ``truncation=True`` cuts: ``"right"`` (the default, keeps the start) or ``"left"``."""
        return self.__dict__.get("_truncation_side", "right")

    @truncation_side.setter
    def truncation_side(self, value):
        self._truncation_side = _check_side(value, "truncation_side")

    @property
    def pad_token(self):
        """The token that pads a batch (None by default: padding is then an error). Set it to one of
        the tokenizer's tokens, e.g. ``tokenizer.pad_token = tokenizer.eos_token``; that also sets
        :attr:`pad_token_id`. A string that is not a token is an error: add it first with
        ``tokenizer.add_special_tokens({"pad_token": "[PAD]"})`` (then
        ``model.resize_token_embeddings(len(tokenizer))``: a new token needs a new embedding row)."""
        return self.__dict__.get("_pad_token")

    @pad_token.setter
    def pad_token(self, value):
        if value is None:
            self._pad_token = self._pad_token_id = None
            return
        self._pad_token, self._pad_token_id = value, self._check_token(value, "pad_token")

    def _check_token(self, value, name):
        """The id of ``value``, which is to become the ``name`` (pad_token, ...): one of the tokenizer's
        tokens, else an error (transformers would add a token, which needs a new row in the model's
        embedding table)."""
        if not isinstance(value, str):
            raise TypeError(f"{type(self).__name__}: {name} must be a str (one of the tokenizer's tokens) or None, "
                            f"got {type(value).__name__}")
        token_id = self._token_to_id(value)
        if token_id is None:
            raise ValueError(f"{type(self).__name__}: {name} {value!r} is not a token of this tokenizer; use one it "
                             f"has, e.g. tokenizer.{name} = tokenizer.eos_token, or add it with "
                             f"tokenizer.add_special_tokens({{{name!r}: {value!r}}}) and give the model its new row "
                             "with model.resize_token_embeddings(len(tokenizer))")
        return token_id

    @property
    def pad_token_id(self):
        """The id of :attr:`pad_token` (None when there is none). Setting it sets :attr:`pad_token`."""
        return self.__dict__.get("_pad_token_id")

    @pad_token_id.setter
    def pad_token_id(self, value):
        if value is None:
            self._pad_token = self._pad_token_id = None
            return
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{type(self).__name__}: pad_token_id must be an int or None, got {value!r}")
        token = self._id_to_token(int(value))
        if token is None:
            raise ValueError(f"{type(self).__name__}: pad_token_id {value} is not an id of this tokenizer "
                             f"(vocab_size {self.vocab_size})")
        self._pad_token, self._pad_token_id = token, int(value)

    def _token_to_id(self, token):
        """The id of a token written as the vocabulary writes it, or None."""
        raise NotImplementedError

    def _id_to_token(self, token_id):
        """The token of an id as the vocabulary writes it, or None for an id it lacks."""
        raise NotImplementedError

    def _padding_fields(self):
        """The settings that differ from the defaults, as saved in tinyllm's JSON: padding, a
        bos_token / unk_token that was set, clean_up_tokenization_spaces."""
        fields = {}
        if self.pad_token is not None:
            fields["pad_token"] = self.pad_token
        for name in ("padding_side", "truncation_side"):
            if getattr(self, name) != "right":
                fields[name] = getattr(self, name)
        if self._max_length_limit is not None:
            fields["model_max_length"] = self.model_max_length
        for name in ("bos_token", "unk_token"):
            if f"_{name}" in self.__dict__:  # set, rather than the default (the eos token)
                fields[name] = getattr(self, name)
        if self.clean_up_tokenization_spaces:
            fields["clean_up_tokenization_spaces"] = True
        return fields

    def _set_padding_fields(self, d):
        """Inverse of :meth:`_padding_fields` (a bad value raises ValueError / TypeError)."""
        for name in ("pad_token", "padding_side", "truncation_side"):
            if d.get(name) is not None:
                setattr(self, name, d[name])
        for name in ("bos_token", "unk_token"):
            if name in d:
                setattr(self, name, d[name])
        if d.get("clean_up_tokenization_spaces") is not None:
            self.clean_up_tokenization_spaces = bool(d["clean_up_tokenization_spaces"])
        self.model_max_length = d.get("model_max_length")
        return self

    # ---- chat ----------------------------------------------------------------------------
    eos_token = eos_token_id = None  # a BPE with an end-of-text token sets its own
    chat_template = None  # Jinja source, as transformers' tokenizer.chat_template
    chat_stop_strings = ()  # text that ends a chat turn (when it is not an eos token)

    @property
    def bos_token(self):
        """The start-of-text token; by default GPT-2's convention, which tinyllm's BPE files follow: one
        token both begins and ends a text."""
        return self.__dict__.get("_bos_token", self.eos_token)

    @bos_token.setter
    def bos_token(self, value):
        if value is not None:
            self._check_token(value, "bos_token")
        self._bos_token = value

    @property
    def bos_token_id(self):
        """The id of :attr:`bos_token` (None without one)."""
        return self._id_of(self.bos_token)

    @property
    def unk_token(self):
        """The token that stands for one the vocabulary lacks (:meth:`convert_tokens_to_ids`); by
        default GPT-2's convention again, the end-of-text token (None without one: a CharTokenizer)."""
        return self.__dict__.get("_unk_token", self.eos_token)

    @unk_token.setter
    def unk_token(self, value):
        if value is not None:
            self._check_token(value, "unk_token")
        self._unk_token = value

    @property
    def unk_token_id(self):
        """The id of :attr:`unk_token` (None without one)."""
        return self._id_of(self.unk_token)

    def _id_of(self, token):
        return None if token is None else self._token_to_id(token)

    @property
    def special_tokens_map(self):
        """``{"bos_token": ..., "eos_token": ..., "unk_token": ..., "pad_token": ...}``: those set."""
        names = ("bos_token", "eos_token", "unk_token", "pad_token")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}

    @property
    def all_special_tokens(self):
        """The special tokens, each once: :attr:`special_tokens_map`'s, then the tokenizer's others."""
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self._other_special_tokens()]))

    @property
    def all_special_ids(self):
        """The ids of :attr:`all_special_tokens`."""
        return [self._token_to_id(token) for token in self.all_special_tokens]

    def _other_special_tokens(self):
        """Special tokens that are none of bos, eos, unk and pad (a BPE's added tokens)."""
        return []

    # ---- adding tokens: transformers' add_tokens / add_special_tokens ---------------------
    # Subclasses that allow it keep two dicts, ``special_tokens`` and ``added_tokens`` ({text: id}),
    # and rebuild what depends on them in _added_tokens_changed().
    _SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
    _EXTRA_SPECIAL_KEYS = ("additional_special_tokens", "extra_special_tokens")  # transformers 4's and 5's name

    def add_tokens(self, new_tokens, special_tokens=False):
        """Add ``new_tokens`` (a str or a list of str) to the vocabulary, as transformers' ``add_tokens``;
        returns how many were added. A new text gets the next id (:attr:`vocab_size`, then + 1, ...);
        a text that is already an ordinary token keeps its id. Either way encode now matches the text
        whole wherever it occurs ("a<user>b" -> a, <user>, b; the spaces around it stay ordinary
        text, as transformers 5's tokenizers do). A text already added is not counted again (unless a
        plain added token becomes special). ``special_tokens=True`` makes them special: dropped by
        ``decode(..., skip_special_tokens=True)``. Resize the model to match:
        ``model.resize_token_embeddings(len(tokenizer))``.

        The ids, counts, encodings and decodings are transformers 5's (its ``tokenizers``-backed
        GPT2Tokenizer; tests/test_tokenizer_add_tokens.py), including its decoding of an added
        token as GPT-2 spelling (see :func:`_added_token_bytes`). Where tinyllm differs: a special
        token whose text is already an ordinary token is matched whole but not skipped; re-adding
        a special token as a plain one counts 0 (transformers counts it once and then forgets that
        it was special when saved); ``all_special_tokens`` lists every special token."""
        texts = _check_new_tokens(new_tokens, f"{type(self).__name__}.add_tokens")
        self._check_can_add_tokens()
        added = sum(self._add_token(text, bool(special_tokens)) for text in texts if text)
        self._added_tokens_changed()
        return added

    def add_special_tokens(self, special_tokens_dict):
        """transformers' ``add_special_tokens``: ``{"pad_token": "[PAD]", "eos_token": ...,
        "additional_special_tokens": ["<a>", ...]}`` (keys: bos_token, eos_token, unk_token,
        pad_token, additional_special_tokens / extra_special_tokens). Adds each token as a special
        one (:meth:`add_tokens`) and sets the named attribute (``tokenizer.pad_token == "[PAD]"``,
        ``pad_token_id`` its id); returns how many tokens were added."""
        who = f"{type(self).__name__}.add_special_tokens"
        named, extra = _check_special_tokens_dict(special_tokens_dict, self._SPECIAL_TOKEN_KEYS,
                                                  self._EXTRA_SPECIAL_KEYS, who)
        added = self.add_tokens([*named.values(), *extra], special_tokens=True)
        for name, text in named.items():
            self._set_special_token(name, text)
        return added

    def _check_can_add_tokens(self):
        if not hasattr(self, "added_tokens"):
            raise NotImplementedError(f"{type(self).__name__} does not support adding tokens")

    def _add_token(self, text, special):
        """Add one non-empty text; -> whether it counts as added (as transformers counts). A special
        token whose text is an ordinary token stays a plain added one at that id (matched whole, not
        skipped by decode; transformers would also skip it)."""
        if text in self.special_tokens or (text in self.added_tokens and not special):
            return False
        if text in self.added_tokens:  # a plain added token becomes special
            if not self._is_ordinary_id(self.added_tokens[text]):
                self.special_tokens[text] = self.added_tokens.pop(text)
            return True
        ordinary_id = self._ordinary_token_id(text)
        if ordinary_id is not None:
            self.added_tokens[text] = ordinary_id
        else:
            (self.special_tokens if special else self.added_tokens)[text] = self._next_token_id()
        return True

    def _next_token_id(self):
        """The id a new token gets: one past the largest so far (vocab_size is rebuilt only once
        add_tokens is done, so the tokens it already added count here)."""
        return max([self.vocab_size - 1, *self.special_tokens.values(), *self.added_tokens.values()]) + 1

    def _set_special_token(self, name, text):
        """Make the token ``text`` (in the vocabulary by now) the ``name`` (bos_token, ...). A new eos
        leaves bos and unk as they were (their default follows eos), as transformers."""
        if name != "eos_token":
            setattr(self, name, text)
            return
        for follower in ("_bos_token", "_unk_token"):
            self.__dict__.setdefault(follower, self.eos_token)
        self.eos_token, self.eos_token_id = text, self._token_to_id(text)

    def _split_added(self, text, special_re):
        """``text`` cut at its added tokens -> [(piece, its id, or None for ordinary text)], pieces
        in order and joining to ``text``. As transformers' added vocabulary: the special tokens
        (those ``special_re`` matches) first, then the plain added tokens in the text between them;
        at each place the longest token that matches."""
        pieces = []
        for k, part in enumerate(special_re.split(text) if special_re is not None else [text]):
            if k % 2:  # split with a capturing group alternates: text, token, text, ...
                pieces.append((part, self.special_tokens[part]))
                continue
            for j, piece in enumerate(self._added_re.split(part) if self._added_re is not None else [part]):
                if j % 2 or piece:
                    pieces.append((piece, self.added_tokens[piece] if j % 2 else None))
        return pieces

    def set_chat_template(self, chat_template, stop_strings=(), check=True):
        """Attach a chat template (Jinja source, see :meth:`apply_chat_template`), and the text that
        ends a turn when generating one (e.g. ``["\\n\\n"]``), kept by :meth:`save_pretrained`.
        ``check`` compiles it now, so a syntax error shows here (loading a file does not: a broken
        template must not stop the model from completing text)."""
        if chat_template is not None:
            _check_text(chat_template, "set_chat_template")
            try:
                if check:
                    _compile_chat_template(chat_template)
            except ImportError:
                pass  # no jinja2: the text is kept, and checked where it is rendered (which needs jinja2)
        if isinstance(stop_strings, str) or not all(isinstance(s, str) and s for s in stop_strings):
            raise TypeError(f"set_chat_template: stop_strings must be a list of non-empty str, got {stop_strings!r}")
        self.chat_template = chat_template
        self.chat_stop_strings = tuple(stop_strings)

    def apply_chat_template(self, conversation, add_generation_prompt=False, tokenize=True, return_tensors=None,
                            chat_template=None, **kwargs):
        """Render ``conversation`` (a list of ``{"role", "content"[, "name"]}`` dicts) through the chat
        template, as transformers does: in a sandboxed Jinja environment that sees ``messages``,
        ``add_generation_prompt`` (end with the cue for the assistant's turn), ``bos_token``,
        ``eos_token`` and any extra ``kwargs``. Returns the text, or (``tokenize=True``) its ids.
        """
        template = chat_template if chat_template is not None else self.chat_template
        if template is None:
            raise ValueError(
                f"{type(self).__name__}.apply_chat_template: this tokenizer has no chat template; attach one "
                "with tokenizer.set_chat_template(...) (e.g. tinyllm.tokenizers.shakespeare_chat_template()) "
                "or pass chat_template="
            )
        messages = _check_messages(conversation)
        context = {"bos_token": self.bos_token or "", "eos_token": self.eos_token or "", **kwargs}
        text = _compile_chat_template(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **context)
        if not tokenize:
            return text
        return self.encode(text, return_tensors=return_tensors)

    @property
    def vocab_size(self):
        """Ids run over ``range(vocab_size)``: the size an embedding table needs."""
        raise NotImplementedError

    def __len__(self):
        raise NotImplementedError

    def _encode(self, text):
        raise NotImplementedError

    def _decode(self, ids, skip_special_tokens):
        raise NotImplementedError

    # ---- files ---------------------------------------------------------------------------
    def _to_dict(self):
        raise NotImplementedError

    @classmethod
    def _from_dict(cls, d):
        raise NotImplementedError

    def to_dict(self):
        """The tokenizer as plain JSON-able data (what :meth:`save` writes)."""
        d = {"type": type(self).__name__, "format_version": _FORMAT_VERSION, **self._to_dict()}
        if self.chat_template is not None:
            d.update(chat_template=self.chat_template, chat_stop_strings=list(self.chat_stop_strings))
        d.update(self._padding_fields())
        return d

    @classmethod
    def from_dict(cls, d, source="tokenizer data"):
        """Inverse of :meth:`to_dict`. ``Tokenizer.from_dict`` returns whichever class ``d``
        names; ``BPETokenizer.from_dict`` insists on a BPE."""
        kind = d.get("type") if isinstance(d, dict) else None
        if kind not in Tokenizer._types:
            raise ValueError(
                f"{source}: not a tinyllm tokenizer (its \"type\" is {kind!r}; "
                f"known types: {sorted(Tokenizer._types)})"
            )
        version = d.get("format_version", _FORMAT_VERSION)
        if not isinstance(version, int):
            raise FileFormatError(source, f"format_version {version!r} is not an integer")
        if version > _FORMAT_VERSION:
            raise ValueError(
                f"{source}: format_version {version} is newer than this tinyllm reads "
                f"({_FORMAT_VERSION}); upgrade tinyllm"
            )
        target = Tokenizer._types[kind]
        if cls is not Tokenizer and not issubclass(target, cls):
            raise ValueError(f"{source} holds a {kind}, not a {cls.__name__}")
        try:
            tok = target._from_dict(d)._set_padding_fields(d)
            if d.get("chat_template") is not None:
                tok.set_chat_template(d["chat_template"], d.get("chat_stop_strings", ()), check=False)
            return tok
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            # a hand-edited or truncated file: one error that names it, whatever broke inside
            what = f"lacks the field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
            raise FileFormatError(source, f"is not a valid {kind}: {what}") from None

    def save(self, path):
        """Write the tokenizer as tinyllm JSON to ``path``."""
        _write_json(path, self.to_dict())

    @classmethod
    def load(cls, path):
        """Read a file written by :meth:`save` (see :meth:`from_dict` for the class returned)."""
        return cls.from_dict(_read_json(path), source=str(path))

    def save_pretrained(self, save_directory):
        """Write the tokenizer into ``save_directory`` (created if needed); returns the paths."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        path = save_directory / TOKENIZER_FILE
        self.save(path)
        return [path]

    @classmethod
    def from_pretrained(cls, path, **settings):
        """Load from a directory written by :meth:`save_pretrained` (or from a tinyllm JSON);
        ``settings`` as in :meth:`AutoTokenizer.from_pretrained`."""
        if cls is Tokenizer:
            return AutoTokenizer.from_pretrained(path, **settings)
        path = Path(path)
        tok = cls.load(path / TOKENIZER_FILE if path.is_dir() else path)
        return tok._with_settings(settings, f"{cls.__name__}.from_pretrained")

    # what from_pretrained(..., name=value) may set, as transformers' keyword arguments of a tokenizer
    _SETTINGS = ("pad_token", "padding_side", "truncation_side", "model_max_length", "bos_token", "unk_token",
                 "clean_up_tokenization_spaces")

    def _with_settings(self, settings, who):
        """The tokenizer with ``settings`` (``padding_side="left"``, ``pad_token=...``, ...) set, in the
        order given; ``use_fast`` is accepted and ignored (one implementation), anything else refused."""
        settings = {name: value for name, value in settings.items() if name != "use_fast"}
        unknown = sorted(set(settings) - set(self._SETTINGS))
        if unknown:
            raise TypeError(f"{who}: unknown argument(s) {unknown}; it takes {', '.join(self._SETTINGS)} "
                            "(and use_fast, which changes nothing)")
        for name, value in settings.items():
            setattr(self, name, _model_max_length(value, who) if name == "model_max_length" else value)
        return self

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class AutoTokenizer:
    """Pick the tokenizer class from the files found, as ``transformers.AutoTokenizer`` does."""

    def __init__(self):
        raise TypeError("AutoTokenizer is not instantiated: use AutoTokenizer.from_pretrained(dir)")

    @staticmethod
    def from_pretrained(path, **settings):
        """``path``: a directory holding ``tinyllm_tokenizer.json`` (any tinyllm tokenizer), or
        GPT-2's ``vocab.json`` + ``merges.txt`` or Hugging Face's ``tokenizer.json`` (a BPE),
        or a tinyllm JSON file itself. ``settings`` override what the files say, as transformers'
        keyword arguments: ``pad_token``, ``padding_side``, ``truncation_side``,
        ``model_max_length``, ``bos_token``, ``unk_token``, ``clean_up_tokenization_spaces``
        (and ``use_fast``, accepted and ignored), e.g. ``from_pretrained(dir, padding_side="left")``."""
        return AutoTokenizer._load(path)._with_settings(settings, "AutoTokenizer.from_pretrained")

    @staticmethod
    def _load(path):
        path = Path(path)
        if path.is_file():
            return Tokenizer.load(path)
        if not path.is_dir():
            from .models.auto import resolve_pretrained  # a model name with a copy in the HF cache

            path = resolve_pretrained(path)
        if (path / TOKENIZER_FILE).is_file():
            return Tokenizer.load(path / TOKENIZER_FILE)
        if ((path / "vocab.json").is_file() and (path / "merges.txt").is_file()) or (
            (path / "tokenizer.json").is_file()
        ):
            return BPETokenizer.from_pretrained(path)
        found = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(
            f"AutoTokenizer.from_pretrained: {path} holds none of {TOKENIZER_FILE}, "
            f"vocab.json + merges.txt, tokenizer.json (found: {found})"
        )


# ------------------------------------------------------------------------------------------
# Characters
# ------------------------------------------------------------------------------------------
class CharTokenizer(Tokenizer):
    """One id per character; ``chars[i]`` is the character of id ``i``. There are no special
    tokens until some are added.

    :meth:`add_tokens` / :meth:`add_special_tokens` give a text of any length (``"<user>"``,
    ``"[PAD]"``) the next id after the characters; encode matches it whole wherever it occurs, as a
    BPE does, so an added token may hold characters the training text lacked. Adding a single
    character that is already in ``chars`` keeps its id (it is matched whole anyway)."""

    def __init__(self, chars):
        chars = list(chars)
        for c in chars:
            if not (isinstance(c, str) and len(c) == 1):
                raise ValueError(f"CharTokenizer: vocabulary entries must be single characters, got {c!r}")
        if not chars:
            raise ValueError("CharTokenizer: the vocabulary is empty")
        if len(set(chars)) != len(chars):
            dup = next(c for c, n in Counter(chars).items() if n > 1)
            raise ValueError(f"CharTokenizer: character {dup!r} appears twice in the vocabulary")
        self.chars = chars
        self._stoi = {c: i for i, c in enumerate(chars)}
        self.special_tokens, self.added_tokens = {}, {}
        self._added_tokens_changed()

    @classmethod
    def from_text(cls, text):
        """Vocabulary = the sorted set of characters of ``text`` (as nanoGPT's shakespeare_char)."""
        _check_text(text, "CharTokenizer.from_text")
        if not text:
            raise ValueError("CharTokenizer.from_text: the text is empty")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self):
        return len(self._itos)

    def __len__(self):
        return len(self._itos)

    def _encode(self, text):
        if self._special_re is None and self._added_re is None:
            return self._encode_chars(text, 0)
        ids, start = [], 0
        for piece, token_id in self._split_added(text, self._special_re):
            ids.extend([token_id] if token_id is not None else self._encode_chars(piece, start))
            start += len(piece)
        return ids

    def _encode_with_offsets(self, text):
        """``text`` -> (its ids, each token's ``(start, end)`` character offsets: one character, or an
        added token's characters)."""
        ids, offsets, start = [], [], 0
        for piece, token_id in self._split_added(text, self._special_re):
            if token_id is not None:
                ids.append(token_id)
                offsets.append((start, start + len(piece)))
            else:
                ids.extend(self._encode_chars(piece, start))
                offsets.extend((start + i, start + i + 1) for i in range(len(piece)))
            start += len(piece)
        return ids, offsets

    def _encode_chars(self, text, start):
        """The ids of ``text``'s characters; ``start``: where ``text`` begins in what was encoded."""
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pos, char = next((i, c) for i, c in enumerate(text) if c not in stoi)
            raise ValueError(
                f"CharTokenizer.encode: character {char!r} at position {start + pos} is not in the "
                f"vocabulary ({len(self.chars)} characters, built from the training text)"
            ) from None

    def _decode(self, ids, skip_special_tokens):
        if skip_special_tokens and self._special_ids:
            ids = [i for i in ids if i not in self._special_ids]
        itos = self._itos
        return "".join([itos[i] for i in ids])

    def _token_to_id(self, token):
        return self.special_tokens.get(token, self.added_tokens.get(token, self._stoi.get(token)))

    def _has_id(self, token_id):
        return 0 <= token_id < len(self._itos)

    def _id_to_token(self, token_id):
        return self._itos[token_id] if 0 <= token_id < len(self._itos) else None

    # ---- added tokens (see Tokenizer.add_tokens) -------------------------------------------
    def _ordinary_token_id(self, text):
        return self._stoi.get(text)

    def _is_ordinary_id(self, token_id):
        return token_id < len(self.chars)

    def _added_tokens_changed(self):
        """Rebuild the id -> text table (characters, then added tokens by id) and the regexes that
        cut the added tokens out of a text; check that the added ids follow the characters."""
        added = {i: t for t, i in {**self.added_tokens, **self.special_tokens}.items() if i >= len(self.chars)}
        if sorted(added) != list(range(len(self.chars), len(self.chars) + len(added))):
            raise ValueError(f"CharTokenizer: added token ids {sorted(added)} do not follow the "
                             f"{len(self.chars)} characters one by one")
        self._itos = self.chars + [added[i] for i in sorted(added)]
        self._special_ids = frozenset(self.special_tokens.values())
        self._special_re = _alternation_re(self.special_tokens)
        self._added_re = _alternation_re(self.added_tokens)

    def get_added_vocab(self):
        """``{token: id}`` of the tokens added by :meth:`add_tokens` / :meth:`add_special_tokens`."""
        return dict(sorted({**self.special_tokens, **self.added_tokens}.items(), key=lambda kv: kv[1]))

    def _other_special_tokens(self):
        return list(self.special_tokens)

    def _to_dict(self):
        d = {"chars": self.chars}
        if self.special_tokens or self.added_tokens:
            d.update(special_tokens=self.special_tokens, added_tokens=self.added_tokens)
        if self.eos_token is not None:
            d["eos_token"] = self.eos_token
        return d

    @classmethod
    def _from_dict(cls, d):
        tok = cls(d["chars"])
        tok.special_tokens = {str(s): int(i) for s, i in d.get("special_tokens", {}).items()}
        tok.added_tokens = {str(s): int(i) for s, i in d.get("added_tokens", {}).items()}
        tok._added_tokens_changed()
        if d.get("eos_token") is not None:
            tok.eos_token, tok.eos_token_id = d["eos_token"], tok._check_token(d["eos_token"], "eos_token")
        return tok


# ------------------------------------------------------------------------------------------
# Byte-level BPE
# ------------------------------------------------------------------------------------------
class BPETokenizer(Tokenizer):
    """GPT-2's byte-level BPE.

    Encoding a text: (1) special tokens (e.g. ``"<|endoftext|>"``) are split out and become
    their ids; (2) the text between them is cut into chunks by ``pattern`` (GPT-2's regex);
    (3) each chunk's UTF-8 bytes start as one token per byte; (4) the adjacent pair whose merge
    was learned earliest (lowest rank) is merged everywhere in the chunk, repeatedly, until no
    learned pair is left. The ids of the chunks are concatenated.

    Args:
        vocab: ``{id: bytes}`` of the ordinary tokens; must hold all 256 single bytes.
        merges: ``[(id_a, id_b, id_merged), ...]`` in rank order (first = merged first), with
            ``vocab[id_merged] == vocab[id_a] + vocab[id_b]``.
        special_tokens: ``{text: id}`` of tokens never produced by merges, e.g.
            ``{"<|endoftext|>": 50256}``.
        pattern: the pre-tokenizer regex (``regex`` syntax).
        eos_token: the end-of-text token; defaults to ``"<|endoftext|>"`` if it is special.
        added_tokens: ``{text: id}`` of plain (not special) added tokens (:meth:`add_tokens`):
            matched whole as the special ones are, but kept by ``skip_special_tokens``. An id is
            new, or that of the ordinary token spelled ``text`` in GPT-2's alphabet.
    """

    def __init__(self, vocab, merges, special_tokens=None, pattern=GPT2_SPLIT_PATTERN,
                 eos_token=None, cache_size=65536, added_tokens=None):
        self._vocab = {int(i): bytes(b) for i, b in vocab.items()}
        self._merges = [(int(a), int(b), int(m)) for a, b, m in merges]
        self.special_tokens = dict(special_tokens or {})
        self.added_tokens = {s: int(i) for s, i in (added_tokens or {}).items()}
        self.pattern = pattern
        self._validate()

        self._token_id = {b: i for i, b in self._vocab.items()}
        self._byte_ids = [self._token_id[bytes([b])] for b in range(256)]
        self._ranks = {}
        for rank, (a, b, _) in enumerate(self._merges):
            self._ranks.setdefault((a, b), rank)  # a pair listed twice keeps its first rank
        self._split_re = regex.compile(pattern)
        self._added_tokens_changed()
        self._cache = OrderedDict()  # chunk -> ids, least recently used first
        self._cache_size = cache_size

        if eos_token is None and "<|endoftext|>" in self.special_tokens:
            eos_token = "<|endoftext|>"
        if eos_token is not None and eos_token not in self.special_tokens and eos_token not in self.added_tokens:
            raise ValueError(f"BPETokenizer: eos_token {eos_token!r} is not a special token")
        self.eos_token = eos_token
        self.eos_token_id = None if eos_token is None else self._token_to_id(eos_token)

    def _validate(self):
        vocab = self._vocab
        tokens = set(vocab.values())
        missing = [b for b in range(256) if bytes([b]) not in tokens]
        if missing:
            raise ValueError(f"BPETokenizer: the vocabulary lacks the single bytes {missing[:8]} "
                             f"({len(missing)} in all); every byte needs a token")
        if len(tokens) != len(vocab):
            dup = next(b for b, n in Counter(vocab.values()).items() if n > 1)
            raise ValueError(f"BPETokenizer: the token {dup!r} has more than one id")
        for rank, (a, b, m) in enumerate(self._merges):
            for i in (a, b, m):
                if i not in vocab:
                    raise ValueError(f"BPETokenizer: merge {rank} uses id {i}, which is not in the vocabulary")
            if vocab[m] != vocab[a] + vocab[b]:
                raise ValueError(f"BPETokenizer: merge {rank} makes {vocab[m]!r} from "
                                 f"{vocab[a]!r} + {vocab[b]!r}")
        for s, i in self.special_tokens.items():
            if not isinstance(s, str) or not s:
                raise ValueError(f"BPETokenizer: special token {s!r} must be a non-empty str")
            if i in vocab:
                raise ValueError(f"BPETokenizer: special token {s!r} has id {i}, which is also the "
                                 f"ordinary token {vocab[i]!r}")
        if len(set(self.special_tokens.values())) != len(self.special_tokens):
            raise ValueError(f"BPETokenizer: two special tokens share an id: {self.special_tokens}")
        self._validate_added_tokens()
        self._validate_id_range()
        try:
            regex.compile(self.pattern)
        except regex.error as e:
            raise ValueError(f"BPETokenizer: pattern {self.pattern!r} does not compile: {e}") from None

    def _validate_added_tokens(self):
        """A plain added token has an id of its own or the id of the ordinary token it spells."""
        special_ids = set(self.special_tokens.values())
        for s, i in self.added_tokens.items():
            if not isinstance(s, str) or not s:
                raise ValueError(f"BPETokenizer: added token {s!r} must be a non-empty str")
            if s in self.special_tokens or i in special_ids:
                raise ValueError(f"BPETokenizer: added token {s!r} (id {i}) is also a special token")
            if i in self._vocab and _str_to_token(s) != self._vocab[i]:
                raise ValueError(f"BPETokenizer: added token {s!r} has id {i}, which is the ordinary token "
                                 f"{self._vocab[i]!r}")
        new_ids = [i for i in self.added_tokens.values() if i not in self._vocab]
        if len(set(new_ids)) != len(new_ids):
            raise ValueError(f"BPETokenizer: two added tokens share an id: {self.added_tokens}")

    def _added_tokens_changed(self):
        """Rebuild what the added tokens (special and plain) feed: the decoder, the skipped ids, the
        regexes that cut them out of a text."""
        self._decoder = dict(self._vocab)
        self._decoder.update({i: _added_token_bytes(s) for s, i in self.added_tokens.items() if i not in self._vocab})
        self._decoder.update({i: _added_token_bytes(s) for s, i in self.special_tokens.items()})
        self._special_ids = frozenset(self.special_tokens.values())
        self._special_re = _alternation_re(self.special_tokens)
        self._added_re = _alternation_re(self.added_tokens)

    def _ordinary_token_id(self, text):
        """The id of the ordinary token spelled ``text`` in GPT-2's alphabet ("Ġthe"), or None."""
        token_bytes = _str_to_token(text)
        return None if token_bytes is None else self._token_id.get(token_bytes)

    def _is_ordinary_id(self, token_id):
        return token_id in self._vocab

    def _validate_id_range(self):
        """Ids are the rows of the model's embedding table (vocab_size = largest id + 1), so gaps
        are allowed (tiktoken's special tokens sit past a gap) but not a table that would be
        mostly rows no token uses: a file with one id of 10**12 is corrupt, not a vocabulary."""
        ids = list(self._vocab) + list(self.special_tokens.values()) + list(self.added_tokens.values())
        bad = next((i for i in ids if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0), None)
        if bad is not None:
            raise ValueError(f"BPETokenizer: token id {bad!r} is not a non-negative integer")
        largest = max(ids)
        if largest + 1 > 2 * len(ids) + 1024:
            raise ValueError(f"BPETokenizer: token id {largest} is far past the {len(ids)} tokens: the model's "
                             f"embedding table would have {largest + 1:,} rows, most of them unused")

    @staticmethod
    def _compile_special_re(specials):
        return _alternation_re(specials)

    # ---- sizes ---------------------------------------------------------------------------
    @property
    def vocab_size(self):
        """Largest id + 1 (50257 for GPT-2), the size an embedding table needs: added tokens count
        (transformers' ``vocab_size`` leaves them out; ``len(tokenizer)`` is the same in both)."""
        return max(self._decoder) + 1

    def __len__(self):
        """Number of distinct tokens, ordinary and special."""
        return len(self._decoder)

    @property
    def merges(self):
        """``[(bytes_a, bytes_b), ...]`` in rank order."""
        return [(self._vocab[a], self._vocab[b]) for a, b, _ in self._merges]

    def id_to_token(self, token_id):
        """The bytes of an ordinary token, or the text of a special or added one."""
        if token_id in self._vocab:
            return self._vocab[token_id]
        return {i: s for s, i in {**self.added_tokens, **self.special_tokens}.items()}[token_id]

    def _token_to_id(self, token):
        """A special or added token's text, or an ordinary token in GPT-2's spelling (``"Ġthe"``), as in vocab.json."""
        if token in self.special_tokens:
            return self.special_tokens[token]
        if token in self.added_tokens:
            return self.added_tokens[token]
        return self._ordinary_token_id(token)

    def _has_id(self, token_id):
        return token_id in self._decoder

    def _id_to_token(self, token_id):
        if token_id in self._special_ids:
            return next(s for s, i in self.special_tokens.items() if i == token_id)
        if token_id in self._vocab:
            return _token_to_str(self._vocab[token_id])
        return next((s for s, i in self.added_tokens.items() if i == token_id), None)

    def _other_special_tokens(self):
        return list(self.special_tokens)

    def get_added_vocab(self):
        """``{token: id}`` of the special and the added tokens (:meth:`add_tokens`), by id."""
        return dict(sorted({**self.special_tokens, **self.added_tokens}.items(), key=lambda kv: kv[1]))

    def convert_tokens_to_string(self, tokens):
        """Tokens in GPT-2's spelling -> text, as transformers' byte-level decoder: each character
        stands for its byte (``"Ġ"`` for a space), one outside GPT-2's alphabet for its own UTF-8;
        the bytes are read as UTF-8, an incomplete character as U+FFFD."""
        data = b"".join(_CHAR_BYTES.get(c) or c.encode("utf-8", "replace") for token in tokens for c in token)
        return data.decode("utf-8", errors="replace")

    _byte_level_bpe = True

    # ---- encode --------------------------------------------------------------------------
    def encode(self, text, return_tensors=None, allowed_special="all", add_special_tokens=True, **call_kwargs):
        """``text`` -> ids (see the class docstring for the algorithm). ``return_tensors``,
        ``add_special_tokens`` (GPT-2 adds none) and ``call_kwargs`` (``truncation``,
        ``max_length``, ...) as in :meth:`Tokenizer.encode`.

        ``allowed_special``: which special tokens written in ``text`` become their ids:
        ``"all"`` (the default, as Hugging Face does for added tokens), ``"none"``, or a set of
        them. A special token that is not allowed is encoded as ordinary text, byte by byte
        (tiktoken would raise instead; here the text always round-trips through decode). Plain
        added tokens (:meth:`add_tokens`) are matched whatever ``allowed_special`` says.
        """
        if call_kwargs:
            if allowed_special != "all":
                raise ValueError(f"BPETokenizer.encode: allowed_special={allowed_special!r} cannot be combined with "
                                 f"{sorted(call_kwargs)} (calling the tokenizer encodes with allowed_special='all')")
            return self._encode_by_call(text, return_tensors, add_special_tokens, call_kwargs)
        _check_text(text, "BPETokenizer.encode")
        special_re = self._special_re_for(allowed_special)
        try:
            ids = self._encode_text(text, special_re)
        except UnicodeEncodeError:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(
                    f"BPETokenizer.encode: character {text[e.start]!r} at position {e.start} "
                    "cannot be encoded as UTF-8 (a lone surrogate)"
                ) from None
            raise
        return _to_tensors(self._with_special_tokens(ids) if add_special_tokens else ids, return_tensors)

    def _special_re_for(self, allowed_special):
        if allowed_special == "all":
            return self._special_re
        if allowed_special == "none" or allowed_special is None:
            return None
        if isinstance(allowed_special, str):
            allowed_special = {allowed_special}
        allowed = set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"BPETokenizer.encode: allowed_special names {sorted(unknown)}, which "
                             f"are not special tokens (those are {sorted(self.special_tokens)})")
        return self._compile_special_re(allowed)

    def _encode_text(self, text, special_re):
        if special_re is None and self._added_re is None:
            return self._encode_ordinary(text)
        ids = []
        for piece, token_id in self._split_added(text, special_re):
            if token_id is not None:
                ids.append(token_id)
            else:
                ids.extend(self._encode_ordinary(piece))
        return ids

    def _encode_ordinary(self, text):
        ids = []
        for chunk in self._split_re.findall(text):
            ids.extend(self._encode_chunk(chunk))
        return ids

    def _encode_chunk(self, chunk):
        """The ids of one pre-tokenizer chunk, from the cache or by :meth:`_bpe`."""
        cache = self._cache
        chunk_ids = cache.get(chunk)
        if chunk_ids is None:
            chunk_ids = self._bpe([self._byte_ids[b] for b in chunk.encode("utf-8")])
            cache[chunk] = chunk_ids
            if len(cache) > self._cache_size:
                cache.popitem(last=False)
        else:
            cache.move_to_end(chunk)
        return chunk_ids

    def _encode_with_offsets(self, text, allowed_special="all"):
        """``text`` -> (its ids, as :meth:`encode`, and each token's ``(start, end)`` in ``text``'s
        characters, as transformers' fast tokenizer gives them)."""
        ids, offsets, start = [], [], 0
        for piece, token_id in self._split_added(text, self._special_re_for(allowed_special)):
            if token_id is not None:
                ids.append(token_id)
                offsets.append((start, start + len(piece)))
            else:
                for match in self._split_re.finditer(piece):
                    chunk_ids = self._encode_chunk(match.group())
                    ids.extend(chunk_ids)
                    offsets.extend(self._chunk_offsets(match.group(), chunk_ids, start + match.start()))
            start += len(piece)
        return ids, offsets

    def _chunk_offsets(self, chunk, chunk_ids, start):
        """The character offsets of ``chunk``'s tokens, ``chunk`` beginning at character ``start``: a token
        covers the characters its bytes belong to, so the three tokens of "日"'s three bytes each get
        that one character, as in the tokenizers library."""
        char_of_byte = [i for i, c in enumerate(chunk) for _ in c.encode("utf-8")]
        offsets, b = [], 0
        for token_id in chunk_ids:
            n = len(self._vocab[token_id])  # (its bytes)
            offsets.append((start + char_of_byte[b], start + char_of_byte[b + n - 1] + 1))
            b += n
        return offsets

    def _bpe(self, ids):
        """Merge the lowest-ranked adjacent pair everywhere, left to right, until none is left."""
        rank_of = self._ranks.get
        no_merge = len(self._merges)  # rank of a pair that was never learned
        while len(ids) >= 2:
            # min over the ranks of all adjacent pairs (map + repeat keep the loop in C)
            rank = min(map(rank_of, zip(ids, ids[1:]), repeat(no_merge)))
            if rank == no_merge:
                break
            a, b, merged = self._merges[rank]
            ids = _merge_pair(ids, (a, b), merged)
        return ids

    # ---- decode --------------------------------------------------------------------------
    def _decode(self, ids, skip_special_tokens):
        decoder = self._decoder
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        data = b"".join([decoder[i] for i in ids])
        # A sequence cut mid-character (e.g. by sampling) holds invalid UTF-8: show U+FFFD.
        return data.decode("utf-8", errors="replace")

    # ---- training ------------------------------------------------------------------------
    @classmethod
    def train(cls, text, vocab_size, pattern=GPT2_SPLIT_PATTERN, special_tokens=None):
        """Learn a byte-level BPE of at most ``vocab_size`` tokens from ``text``.

        Ids: 0..255 are the bytes, then one id per learned merge, then ``special_tokens`` (a
        list of strings, e.g. ``["<|endoftext|>"]``) in the order given. Special tokens written
        in ``text`` are cut out before training. Each step merges the most frequent adjacent
        pair (ties: the smallest ``(id_a, id_b)``), so the result is deterministic. Training
        stops early when no pair is left (a tiny text); ``vocab_size`` is then not reached.

        Cost: the chunks are counted once (``{chunk: count}``), and after a merge only the
        chunks that contain the merged pair are revisited: ``where[pair]`` indexes them (it may
        also list chunks that lost the pair since; those are skipped). A heap of pair counts,
        whose stale entries are skipped when popped, finds the next best pair.
        """
        specials, n_ordinary = _check_train_args("BPETokenizer.train", text, vocab_size, special_tokens)
        words, counts = _count_chunks(text, regex.compile(pattern), specials)
        vocab = {i: bytes([i]) for i in range(256)}
        token_id = {b: i for i, b in vocab.items()}
        merges = []

        pair_counts = Counter()
        where = {}  # pair -> ids of the words that contain it
        for w, (word, n) in enumerate(zip(words, counts)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += n
                where.setdefault(pair, set()).add(w)
        heap = [(-n, pair) for pair, n in pair_counts.items()]
        heapify(heap)

        next_id = 256
        while next_id < n_ordinary:
            pair = _pop_most_frequent(heap, pair_counts)
            if pair is None:
                break
            merged = vocab[pair[0]] + vocab[pair[1]]
            new_id = token_id.get(merged)
            if new_id is None:  # usually; a byte string can also arise from a second pair
                new_id = next_id
                next_id += 1
                vocab[new_id] = merged
                token_id[merged] = new_id
            merges.append((pair[0], pair[1], new_id))

            count_changes = Counter()
            for w in where.pop(pair):
                word = words[w]
                new_word = _merge_pair(word, pair, new_id)
                if len(new_word) == len(word):
                    continue  # a stale index entry: an earlier merge took the pair away
                # pairs gained minus pairs lost in this word, times how often the word occurs
                delta = Counter(zip(new_word, new_word[1:]))
                delta.subtract(zip(word, word[1:]))
                for p, d in delta.items():
                    if d:
                        count_changes[p] += d * counts[w]
                        if d > 0:
                            where.setdefault(p, set()).add(w)
                words[w] = new_word
            for p, d in count_changes.items():
                if not d:
                    continue
                n = pair_counts[p] + d
                if n > 0:
                    pair_counts[p] = n
                    heappush(heap, (-n, p))
                else:
                    del pair_counts[p]

        special_ids = {s: next_id + k for k, s in enumerate(specials)}
        return cls(vocab, merges, special_ids, pattern=pattern)

    @classmethod
    def train_naive(cls, text, vocab_size, pattern=GPT2_SPLIT_PATTERN, special_tokens=None):
        """:meth:`train`'s algorithm written the slow, obvious way, as its readable spec and test
        oracle: the same arguments, the same merges.

        Cut the text into chunks (special tokens removed, then ``pattern``), each a list of byte
        ids; then, until the vocabulary is full: count every adjacent pair in every chunk, take
        the most frequent (ties: the smallest ``(id_a, id_b)``), give the concatenation of its
        two tokens a new id, and replace the pair by it everywhere. A pass over the whole text
        per merge: fine for a page, far too slow for a book (:meth:`train` only revisits the
        chunks that held the merged pair).
        """
        specials, n_ordinary = _check_train_args("BPETokenizer.train_naive", text, vocab_size, special_tokens)
        words = [list(chunk.encode("utf-8")) for chunk in _pretokenize(text, regex.compile(pattern), specials)]
        vocab = {i: bytes([i]) for i in range(256)}
        merges = []
        while len(vocab) < n_ordinary:
            pair_counts = Counter(pair for word in words for pair in zip(word, word[1:]))
            if not pair_counts:
                break
            best = max(pair_counts.values())
            pair = min(p for p, n in pair_counts.items() if n == best)
            merged = vocab[pair[0]] + vocab[pair[1]]
            # a new id, unless another pair made the same bytes already ("a"+"bc" after "ab"+"c")
            new_id = next((i for i, b in vocab.items() if b == merged), len(vocab))
            vocab[new_id] = merged
            merges.append((pair[0], pair[1], new_id))
            words = [_merge_pair(word, pair, new_id) for word in words]
        special_ids = {s: len(vocab) + k for k, s in enumerate(specials)}
        return cls(vocab, merges, special_ids, pattern=pattern)

    # ---- GPT-2 files ---------------------------------------------------------------------
    @classmethod
    def from_gpt2_files(cls, encoder_json, vocab_bpe, special_tokens=None):
        """Load GPT-2's ``encoder.json`` + ``vocab.bpe`` (= Hugging Face's ``vocab.json`` +
        ``merges.txt``). ``special_tokens`` (names) defaults to ``["<|endoftext|>"]`` when
        that token is in the vocabulary (id 50256 in GPT-2)."""
        encoder = _read_json(encoder_json, dict)
        merges = _read_merges(vocab_bpe)
        if special_tokens is None:
            special_tokens = [s for s in ("<|endoftext|>",) if s in encoder]
        missing = [s for s in special_tokens if s not in encoder]
        if missing:
            raise ValueError(f"{encoder_json}: special tokens {missing} are not in the vocabulary")
        return cls._from_gpt2_vocab(encoder, merges, {s: encoder[s] for s in special_tokens},
                                    source=str(encoder_json))

    @classmethod
    def _from_gpt2_vocab(cls, encoder, merges, special_tokens, pattern=GPT2_SPLIT_PATTERN,
                         eos_token=None, source="vocab", added_tokens=None):
        """Build from GPT-2 spelled strings: ``encoder`` {token_str: id}, ``merges`` [(a, b)];
        ``added_tokens`` {text: id}: the plain added tokens (those that are no ordinary token are
        left out of the vocabulary if ``encoder`` lists them)."""
        special_tokens = _without_ordinary_tokens(special_tokens, encoder, merges)
        added_tokens = {s: int(i) for s, i in (added_tokens or {}).items() if s not in special_tokens}
        not_ordinary = _without_ordinary_tokens(added_tokens, encoder, merges)
        vocab = {}
        for s, i in encoder.items():
            if s in special_tokens or (s in not_ordinary and not_ordinary[s] == i):
                continue
            b = _str_to_token(s)
            if b is None:
                raise ValueError(f"{source}: token {s!r} (id {i}) is not spelled in GPT-2's byte "
                                 "alphabet and is not declared a special token")
            vocab[int(i)] = b
        merge_ids = []
        for rank, (a, b) in enumerate(merges):
            try:
                merge_ids.append((encoder[a], encoder[b], encoder[a + b]))
            except KeyError as e:
                raise ValueError(f"{source}: merge {rank} ({a!r} {b!r}) uses the token {e.args[0]!r}, "
                                 "which is not in the vocabulary") from None
        return cls(vocab, merge_ids, special_tokens, pattern=pattern, eos_token=eos_token, added_tokens=added_tokens)

    def _gpt2_vocab(self):
        """``{token_str: id}`` in GPT-2's spelling, special and added tokens as their plain text.
        Every id is there, added ones too: transformers numbers an added token that its vocab.json
        lacks from the vocabulary's size, which would shift the ids after a gap."""
        encoder = {_token_to_str(b): i for i, b in self._vocab.items()}
        added = {s: i for s, i in self.added_tokens.items() if i not in self._vocab}
        for s, i in {**self.special_tokens, **added}.items():
            if s in encoder:
                raise ValueError(f"added token {s!r} is spelled like the ordinary token id "
                                 f"{encoder[s]}; GPT-2's vocab.json cannot hold both")
            encoder[s] = i
        return dict(sorted(encoder.items(), key=lambda kv: kv[1]))

    def _gpt2_merges(self):
        return [f"{_token_to_str(self._vocab[a])} {_token_to_str(self._vocab[b])}"
                for a, b, _ in self._merges]

    def _to_dict(self):
        return {
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "eos_token": self.eos_token,
            "vocab": self._gpt2_vocab(),
            "merges": self._gpt2_merges(),
            **({"added_tokens": self.added_tokens} if self.added_tokens else {}),
        }

    @classmethod
    def _from_dict(cls, d):
        merges = [tuple(m.split(" ")) for m in d["merges"]]
        return cls._from_gpt2_vocab(d["vocab"], merges, d.get("special_tokens", {}),
                                    pattern=d.get("pattern", GPT2_SPLIT_PATTERN),
                                    eos_token=d.get("eos_token"), source="tokenizer JSON",
                                    added_tokens=d.get("added_tokens"))

    def save_pretrained(self, save_directory):
        """Write tinyllm's JSON plus GPT-2's / Hugging Face's files, so that
        ``transformers.GPT2Tokenizer.from_pretrained(save_directory)`` loads the same tokenizer.
        (Hugging Face always pre-tokenizes with GPT-2's regex: a custom ``pattern`` survives only
        in tinyllm's JSON.)"""
        paths = super().save_pretrained(save_directory)
        save_directory = Path(save_directory)
        vocab_path = save_directory / "vocab.json"
        _write_json(vocab_path, self._gpt2_vocab(), indent=None)
        merges_path = save_directory / "merges.txt"
        _write_text(merges_path, "#version: 0.2\n" + "".join(m + "\n" for m in self._gpt2_merges()))

        special_map = self.special_tokens_map  # GPT-2's: its one special token as bos, eos and unk alike
        added = {  # transformers' flags: a plain added token is normalized, a special one is not
            str(i): {"content": s, "lstrip": False, "normalized": s not in self.special_tokens, "rstrip": False,
                     "single_word": False, "special": s in self.special_tokens}
            for s, i in self.get_added_vocab().items()
        }
        config = {
            "tokenizer_class": "GPT2Tokenizer",
            "add_prefix_space": False,
            "add_bos_token": False,
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
            "errors": "replace",
            "added_tokens_decoder": added,
            **special_map,
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
        }
        if self._max_length_limit is not None:
            config["model_max_length"] = self.model_max_length
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        config_path = save_directory / "tokenizer_config.json"
        _write_json(config_path, config)
        map_path = save_directory / "special_tokens_map.json"
        _write_json(map_path, special_map)
        return paths + [vocab_path, merges_path, config_path, map_path]

    @classmethod
    def from_pretrained(cls, path, **settings):
        """Load a directory from :meth:`save_pretrained`, or a Hugging Face GPT-2 directory:
        ``vocab.json`` + ``merges.txt`` (special tokens: ``"<|endoftext|>"`` if in the
        vocabulary plus the added tokens listed in ``tokenizer_config.json`` /
        ``added_tokens.json``), or else the ``tokenizer.json`` that transformers >= 5 writes.
        ``settings`` as in :meth:`AutoTokenizer.from_pretrained`."""
        return cls._load_pretrained(path)._with_settings(settings, "BPETokenizer.from_pretrained")

    @classmethod
    def _load_pretrained(cls, path):
        path = Path(path)
        if path.is_file() or (path / TOKENIZER_FILE).is_file():
            return super().from_pretrained(path)
        vocab_path, merges_path = path / "vocab.json", path / "merges.txt"
        if not (vocab_path.is_file() and merges_path.is_file()):
            if (path / "tokenizer.json").is_file():
                tok = cls._from_hf_tokenizer_json(path / "tokenizer.json")
                return _with_hf_padding(_with_hf_chat_template(tok, path), path)
            raise FileNotFoundError(f"BPETokenizer.from_pretrained: {path} holds neither "
                                    f"vocab.json + merges.txt nor tokenizer.json")
        encoder = _read_json(vocab_path, dict)
        with _names_file(path):
            specials, added = _hf_added_tokens(path, encoder)
            for s, i in specials.items():
                encoder.setdefault(s, i)
            tok = cls._from_gpt2_vocab(encoder, _read_merges(merges_path), specials,
                                       eos_token=_hf_eos_token(path, {**specials, **added}), source=str(vocab_path),
                                       added_tokens=added)
        return _with_hf_padding(_with_hf_chat_template(tok, path), path)

    @classmethod
    def _from_hf_tokenizer_json(cls, path):
        """A ``tokenizers`` library file, if it describes GPT-2's kind of BPE (byte-level,
        GPT-2's regex, no prefix space); anything else is refused rather than misread."""
        d = _read_json(path, dict)
        with _names_file(path):
            return cls._from_hf_tokenizer_dict(d, path)

    @classmethod
    def _from_hf_tokenizer_dict(cls, d, path):
        model = d.get("model") or {}
        pre = d.get("pre_tokenizer") or {}
        if pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
            pre = pre["pretokenizers"][0]
        problems = []
        if model.get("type") != "BPE":
            problems.append(f"model type {model.get('type')!r} (need 'BPE')")
        if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
            problems.append(f"pre_tokenizer {pre} (need ByteLevel with use_regex)")
        elif pre.get("add_prefix_space"):
            problems.append("add_prefix_space=True")
        if d.get("normalizer"):
            problems.append(f"normalizer {d['normalizer'].get('type')!r}")
        if problems:
            raise ValueError(f"{path}: not a GPT-2 style byte-level BPE that tinyllm reproduces "
                             f"exactly: {'; '.join(problems)}")
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        encoder = dict(model["vocab"])
        added_tokens = d.get("added_tokens", [])
        specials = {t["content"]: int(t["id"]) for t in added_tokens if t.get("special", True)}
        added = {t["content"]: int(t["id"]) for t in added_tokens if not t.get("special", True)}
        if "<|endoftext|>" in encoder and "<|endoftext|>" not in added:
            specials.setdefault("<|endoftext|>", encoder["<|endoftext|>"])
        for s, i in specials.items():
            encoder.setdefault(s, i)
        return cls._from_gpt2_vocab(encoder, merges, specials,
                                    eos_token=_hf_eos_token(Path(path).parent, {**specials, **added}),
                                    source=str(path), added_tokens=added)


# ---- helpers for BPETokenizer -----------------------------------------------------------
def _merge_pair(ids, pair, new_id):
    """Replace each occurrence of ``pair`` in ``ids``, scanning left to right, by ``new_id``
    ("aaa" with pair (a, a) -> [aa, a], as GPT-2 does)."""
    a, b = pair
    out = []
    i, n = 0, len(ids)
    while i < n:
        try:
            j = ids.index(a, i)
        except ValueError:
            out.extend(ids[i:])
            break
        out.extend(ids[i:j])
        if j + 1 < n and ids[j + 1] == b:
            out.append(new_id)
            i = j + 2
        else:
            out.append(a)
            i = j + 1
    return out


def _pop_most_frequent(heap, pair_counts):
    """Pop the pair with the highest current count (heap entries go stale as counts change)."""
    while heap:
        neg_count, pair = heappop(heap)
        if pair_counts.get(pair) == -neg_count:
            return pair
    return None


def _check_train_args(who, text, vocab_size, special_tokens):
    """The special tokens as a list, and how many ordinary tokens (bytes + merges) fit."""
    _check_text(text, who)
    if isinstance(special_tokens, str):
        special_tokens = [special_tokens]
    specials = list(special_tokens or [])
    if isinstance(special_tokens, dict):
        raise TypeError(f"{who}: special_tokens is a list of strings; their ids "
                        "are assigned after the learned merges")
    if len(set(specials)) != len(specials):
        raise ValueError(f"{who}: special_tokens has duplicates: {specials}")
    n_ordinary = int(vocab_size) - len(specials)
    if n_ordinary < 256:
        raise ValueError(f"{who}: vocab_size={vocab_size} leaves no room for the "
                         f"256 byte tokens and {len(specials)} special tokens")
    return specials, n_ordinary


def _pretokenize(text, split_re, specials):
    """The chunks of ``text`` that BPE trains on, in order: the special tokens cut out, the rest
    split by ``split_re``."""
    parts = [text]
    if specials:
        special_re = BPETokenizer._compile_special_re(specials)
        parts = special_re.split(text)[::2]  # drop the special tokens themselves
    return [chunk for part in parts for chunk in split_re.findall(part)]


def _count_chunks(text, split_re, specials):
    """``({chunk: count})`` of the pre-tokenized text, as (list of byte-id lists, counts)."""
    chunk_counts = Counter(_pretokenize(text, split_re, specials))
    words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]
    return words, list(chunk_counts.values())


def _read_merges(path):
    try:
        with open(path, encoding="utf-8") as f:
            lines = list(f)
    except UnicodeDecodeError as e:
        raise FileFormatError(path, f"is not UTF-8 text (byte offset {e.start})") from None
    merges = []
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line or (lineno == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise FileFormatError(f"{path}:{lineno}", f"expected two tokens separated by one space, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _without_ordinary_tokens(specials, encoder, merges):
    """``specials`` without the ordinary tokens among them (a byte, or what a merge makes, at its
    own id): transformers marks a token special when it becomes the pad token, say."""
    if not specials:
        return specials
    merged = {a + b for a, b in merges}

    def ordinary(token, token_id):
        return encoder.get(token) == token_id and (token in merged or len(_str_to_token(token) or b"") == 1)

    return {token: i for token, i in specials.items() if not ordinary(token, i)}


def _hf_added_tokens(directory, encoder):
    """The added tokens of a Hugging Face directory -> ({special text: id}, {plain text: id}):
    ``"<|endoftext|>"`` if in the vocabulary, ``tokenizer_config.json``'s ``added_tokens_decoder``
    (by their ``"special"`` flag) and ``added_tokens.json`` (taken as special)."""
    specials, added = {}, {}
    if "<|endoftext|>" in encoder:
        specials["<|endoftext|>"] = encoder["<|endoftext|>"]
    config = _read_json_if_exists(directory / "tokenizer_config.json")
    for i, tok in config.get("added_tokens_decoder", {}).items():
        specials.pop(tok["content"], None)
        (specials if tok.get("special", True) else added)[tok["content"]] = int(i)
    for s, i in _read_json_if_exists(directory / "added_tokens.json").items():
        specials[s] = int(i)
    return specials, added


def _hf_eos_token(directory, specials):
    """``eos_token`` of a Hugging Face ``tokenizer_config.json`` if it is one of the added tokens ``specials``."""
    eos = _read_json_if_exists(directory / "tokenizer_config.json").get("eos_token")
    if isinstance(eos, dict):
        eos = eos.get("content")
    return eos if eos in specials else None


def _with_hf_padding(tokenizer, directory):
    """The settings of a Hugging Face directory's ``tokenizer_config.json`` (or
    ``special_tokens_map.json`` for the special tokens): ``pad_token``, ``padding_side``,
    ``truncation_side``, ``model_max_length`` (none, or transformers' 1e30: no limit), and
    ``bos_token`` / ``unk_token`` when they are tokens of the vocabulary (transformers would add
    a token otherwise; tinyllm keeps its default, the eos token). ``clean_up_tokenization_spaces``
    is not read: transformers 5 does not apply it to a BPE either."""
    directory = Path(directory)
    config = _read_json_if_exists(directory / "tokenizer_config.json")
    special_map = _read_json_if_exists(directory / "special_tokens_map.json")
    settings = {name: config.get(name) for name in ("pad_token", "padding_side", "truncation_side", "model_max_length")}
    for name in ("pad_token", "bos_token", "unk_token"):
        token = config.get(name) if config.get(name) is not None else special_map.get(name)
        if isinstance(token, dict):  # an AddedToken written out
            token = token.get("content")
        if name == "pad_token":
            settings[name] = token  # one that is not in the vocabulary is an error
        elif token not in (None, getattr(tokenizer, name)) and tokenizer._token_to_id(token) is not None:
            settings[name] = token
    with _names_file(directory):
        return tokenizer._set_padding_fields(settings)


def _read_json_if_exists(path):
    if not path.is_file():
        return {}
    return _read_json(path, dict)


def _read_json(path, kind=None):
    """A JSON file's content; malformed JSON (or, with ``kind``, JSON of another type) is a
    :class:`FileFormatError` naming the file."""
    from .models.io import read_json_file

    d = read_json_file(path, "tokenizer")
    if kind is not None and not isinstance(d, kind):
        raise FileFormatError(path, f"holds a JSON {type(d).__name__}, not an object")
    return d


class _names_file:
    """Turn the KeyError / TypeError / ValueError a hand-edited Hugging Face tokenizer file causes
    deep inside the loader into one :class:`FileFormatError` naming the directory or file."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if kind in (KeyError, TypeError, ValueError, AttributeError, IndexError):
            what = f"lacks the field {value}" if kind is KeyError else f"{kind.__name__}: {value}"
            raise FileFormatError(self.path, f"is not a valid tokenizer: {what}") from None
        return False


def _write_json(path, obj, indent=2):
    try:
        text = json.dumps(obj, ensure_ascii=False, indent=indent)
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: only JSON's \uXXXX escapes can hold it
        text = json.dumps(obj, ensure_ascii=True, indent=indent)
    _write_text(path, text + "\n")


def _write_text(path, text):
    """Write via a temp file and rename, so a crash never leaves half a tokenizer behind."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------
# Chat templates
# ------------------------------------------------------------------------------------------
def shakespeare_chat_template(user="ROMEO", assistant="JULIET"):
    """A chat template in the form of the play, for a model trained on tiny-shakespeare::

        ROMEO:
        Good morrow, fair maid.

        JULIET:

    Each message is a speech: the speaker's name in capitals, a colon, a newline, the words, a
    blank line. A message's ``name`` (as in OpenAI's API) is its speaker; otherwise the user
    speaks as ``user`` and the assistant as ``assistant``. A system message is a paragraph of its
    own (a stage direction). The generation prompt cues the assistant's speaker: the template
    variable ``assistant_name`` if given (``apply_chat_template(..., assistant_name="Hamlet")``, or
    ``chat_template_kwargs`` through the server), else the name of the last named assistant
    message, else ``assistant``; so the model answers in that part. A turn ends at a blank line: attach with ``tokenizer.set_chat_template(shakespeare_chat_template(),
    stop_strings=["\\n\\n"])``.
    """
    for who, name in (("user", user), ("assistant", assistant)):
        if not (isinstance(name, str) and name.strip() and "'" not in name and "\n" not in name):
            raise ValueError(f"shakespeare_chat_template: {who} must be a one-line name without quotes, got {name!r}")
    return (
        "{%- set ns = namespace(assistant='" + assistant.upper() + "') -%}\n"
        "{%- for message in messages -%}\n"
        "{%- if message['role'] == 'system' -%}\n"
        "{{- message['content'] + '\\n\\n' -}}\n"
        "{%- else -%}\n"
        "{%- set default = '" + assistant.upper() + "' if message['role'] == 'assistant' else '"
        + user.upper() + "' -%}\n"
        "{%- set speaker = (message['name'] or default) | upper -%}\n"
        "{%- if message['role'] == 'assistant' -%}{%- set ns.assistant = speaker -%}{%- endif -%}\n"
        "{{- speaker + ':\\n' + message['content'] + '\\n\\n' -}}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}{{- (assistant_name or ns.assistant) | upper + ':\\n' -}}{%- endif -%}"
    )


def _check_messages(conversation):
    """Plain ``{"role", "content", ...}`` dicts (copies), with a clear error for anything else."""
    if isinstance(conversation, (str, dict)) or not hasattr(conversation, "__iter__"):
        raise TypeError("apply_chat_template: conversation must be a list of {'role', 'content'} dicts, "
                        f"got {type(conversation).__name__}")
    messages = []
    for i, message in enumerate(conversation):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise TypeError(f"apply_chat_template: message {i} must be a dict with a str 'role', got {message!r}")
        messages.append(dict(message))
    return messages


_CHAT_TEMPLATES = {}  # source -> compiled template (a server renders the same one for every request)


def _compile_chat_template(source):
    """Compile a chat template the way transformers does: a sandboxed, immutable Jinja environment
    (a template from a stranger's model directory cannot reach Python objects or change the
    messages), ``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, and the
    helpers that templates on the Hub call (``raise_exception``, ``tojson``, ``strftime_now``)."""
    template = _CHAT_TEMPLATES.get(source)
    if template is not None:
        return template
    try:
        import jinja2
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError('chat templates need jinja2: pip install "tinyllm[serve]" (or pip install jinja2)') from None
    if tuple(int(p) for p in jinja2.__version__.split(".")[:3] if p.isdigit()) < (3, 1, 6):
        raise ImportError(f"chat templates need jinja2 >= 3.1.6 (older ones have known sandbox escapes), found "
                          f'{jinja2.__version__}: pip install -U "jinja2>=3.1.6"')

    class GenerationTag(jinja2.ext.Extension):
        """transformers' ``{% generation %}`` marks the assistant's tokens for training masks; rendering ignores it."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        from datetime import datetime

        return datetime.now().strftime(fmt)

    class Namespace(jinja2.utils.Namespace):
        """``namespace()`` that refuses underscore names, as transformers' (no way towards dunders)."""

        def __init__(*args, **kwargs):  # Jinja's signature trick: namespace(self=...) still works
            self, attrs = args[0], dict(*args[1:], **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat template: namespace attribute {name!r} starts with '_'")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, namespace=Namespace)
    try:
        template = env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise ValueError(f"chat template, line {e.lineno}: {e.message}") from None
    if len(_CHAT_TEMPLATES) >= 32:  # bounded: a caller passing many templates must not grow memory
        _CHAT_TEMPLATES.clear()
    _CHAT_TEMPLATES[source] = template
    return template


def _hf_chat_template(directory):
    """The chat template of a Hugging Face tokenizer directory: ``chat_template.jinja`` (what
    transformers >= 4.47 writes) or ``tokenizer_config.json``'s ``chat_template`` (a string, or a
    list of named templates of which "default" is the one used)."""
    path = Path(directory) / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    template = _read_json_if_exists(Path(directory) / "tokenizer_config.json").get("chat_template")
    if isinstance(template, list):
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def _with_hf_chat_template(tokenizer, directory):
    template = _hf_chat_template(directory)
    if template is not None:
        tokenizer.set_chat_template(template, check=False)
    return tokenizer


# ------------------------------------------------------------------------------------------
# Source and target of an encoder-decoder
# ------------------------------------------------------------------------------------------
class Seq2SeqTokenizer(Tokenizer):
    """One tokenizer for both sides of an encoder-decoder (as Marian's translation tokenizers):
    a base tokenizer for the text -- a byte-level BPE trained on both languages by
    :meth:`train` -- plus three special tokens with the ids after the base's:
    ``<pad>`` (padding), ``<s>`` (BOS, the decoder's first input) and ``</s>`` (EOS).

    ``encode(text)`` is the base's ids followed by EOS, exactly what the model reads as a
    source and learns to produce as a target; ``decode(ids, skip_special_tokens=True)`` drops
    the special tokens and gives back the text. A special token's text written inside ``text``
    (e.g. "</s>") is encoded as ordinary text: only ``encode`` itself adds special ids. A byte-level
    base covers every string, so no ``<unk>`` is needed.
    """

    def __init__(self, base, pad_token="<pad>", bos_token="<s>", eos_token="</s>"):
        if not isinstance(base, Tokenizer) or isinstance(base, Seq2SeqTokenizer):
            raise TypeError(f"Seq2SeqTokenizer: base must be a CharTokenizer or BPETokenizer, got "
                            f"{type(base).__name__}")
        names = [pad_token, bos_token, eos_token]
        if len(set(names)) != 3 or not all(isinstance(s, str) and s for s in names):
            raise ValueError(f"Seq2SeqTokenizer: pad, bos and eos tokens must be 3 distinct non-empty str, got {names}")
        self.base = base
        first = base.vocab_size
        self._special = {first: pad_token, first + 1: bos_token, first + 2: eos_token}
        self.bos_token, self.eos_token = bos_token, eos_token
        self.eos_token_id = first + 2  # bos_token_id (first + 1) follows from bos_token

    @classmethod
    def train(cls, texts, vocab_size=1024, pattern=GPT2_SPLIT_PATTERN, **special_tokens):
        """A byte-level BPE of ``vocab_size`` ids in all (3 of them special) learned on
        ``texts`` (a list of str: the sources and targets together)."""
        if isinstance(texts, str):
            texts = [texts]
        for i, t in enumerate(texts):
            _check_text(t, f"Seq2SeqTokenizer.train: texts[{i}]")
        base = BPETokenizer.train("\n".join(texts), vocab_size - 3, pattern=pattern)
        return cls(base, **special_tokens)

    @property
    def vocab_size(self):
        return self.base.vocab_size + 3

    def __len__(self):
        return len(self.base) + 3

    unk_token = None  # the byte-level base covers every string

    def get_added_vocab(self):
        return {token: i for i, token in self._special.items()}

    def convert_tokens_to_string(self, tokens):
        return self.base.convert_tokens_to_string(tokens)  # "<pad>", "<s>", "</s>" spell themselves in both

    @property
    def _byte_level_bpe(self):
        return self.base._byte_level_bpe

    @property
    def pad_token(self):
        """The ``<pad>`` special token, the one the model ignores; fixed (setting another is an error)."""
        return self._special[self.base.vocab_size]

    @pad_token.setter
    def pad_token(self, value):
        if value != self.pad_token:
            raise ValueError(f"Seq2SeqTokenizer: the pad token is the special token {self.pad_token!r} (id "
                             f"{self.pad_token_id}), the one the model learned to ignore; it cannot become {value!r}")

    @property
    def pad_token_id(self):
        return self.base.vocab_size

    @pad_token_id.setter
    def pad_token_id(self, value):
        if value != self.pad_token_id:
            raise ValueError(f"Seq2SeqTokenizer: pad_token_id is {self.pad_token_id}, the id of the special token "
                             f"{self.pad_token!r} the model learned to ignore; it cannot become {value!r}")

    def _token_to_id(self, token):
        special = next((i for i, s in self._special.items() if s == token), None)
        return special if special is not None else self.base._token_to_id(token)

    def _id_to_token(self, token_id):
        return self._special.get(token_id) or self.base._id_to_token(token_id)

    def _encode_plain(self, text):
        return self.encode(text, add_special_tokens=False)

    def _special_tokens_around(self):
        return [], [self.eos_token_id]  # as encode: the text, then EOS

    def _encode_with_offsets(self, text):
        if isinstance(self.base, BPETokenizer):
            return self.base._encode_with_offsets(text, allowed_special="none")  # as encode
        return self.base._encode_with_offsets(text)

    def encode(self, text, return_tensors=None, add_special_tokens=True, **call_kwargs):
        """``text`` -> its ids followed by EOS (without it if ``add_special_tokens=False``);
        ``call_kwargs`` (``truncation``, ``max_length``, ...) as in :meth:`Tokenizer.encode`."""
        if call_kwargs:
            return self._encode_by_call(text, return_tensors, add_special_tokens, call_kwargs)
        _check_text(text, "Seq2SeqTokenizer.encode")
        ids = self.base.encode(text, allowed_special="none") if isinstance(self.base, BPETokenizer) \
            else self.base.encode(text)
        if add_special_tokens:
            ids.append(self.eos_token_id)
        return _to_tensors(ids, return_tensors)

    def _encode(self, text):
        return self.encode(text)

    def batch_encode(self, texts):
        """Several texts -> an int64 array (B, S) of their ids (EOS included), padded with
        ``pad_token_id``: a batch of sources for ``model.generate``."""
        if isinstance(texts, str):
            texts = [texts]
        return self(list(texts), padding=True, padding_side="right", return_tensors="np")["input_ids"]

    def _has_id(self, token_id):
        return token_id in self._special or self.base._has_id(token_id)

    def _decode(self, ids, skip_special_tokens):
        parts, run = [], []
        for i in ids:
            if i in self._special:
                if run:
                    parts.append(self.base.decode(run))
                    run = []
                if not skip_special_tokens:
                    parts.append(self._special[i])
            else:
                run.append(i)
        if run:
            parts.append(self.base.decode(run))
        return "".join(parts)

    def _to_dict(self):
        return {"base": self.base.to_dict(), "pad_token": self.pad_token, "bos_token": self.bos_token,
                "eos_token": self.eos_token}

    @classmethod
    def _from_dict(cls, d):
        base = Tokenizer.from_dict(d["base"], source="the base of a Seq2SeqTokenizer")
        return cls(base, pad_token=d["pad_token"], bos_token=d["bos_token"], eos_token=d["eos_token"])

    def __repr__(self):
        return f"Seq2SeqTokenizer(vocab_size={self.vocab_size}, base={self.base!r})"
