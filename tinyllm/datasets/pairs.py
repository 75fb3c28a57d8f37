"""(source, target) text pairs for an encoder-decoder: read, split, batch.

* :func:`read_tsv_pairs` reads a parallel corpus in the Tatoeba / Anki format, one pair a
  line: ``source<TAB>target`` (further columns, such as Anki's attribution, are ignored).
* :func:`split_pairs` splits by *source*: all translations of one sentence land in the same
  split, so no test sentence was seen in training. :func:`group_by_source` and
  :func:`reference_streams` turn a split into BLEU's hypotheses-and-references layout, with
  every known translation of a sentence as one of its references.
* :func:`collate_pairs` pads encoded pairs into the three arrays a training step takes, and
  :class:`PairDataset` draws such batches.

Batches, for targets ``y`` that end with EOS (the tokenizer appends it)::

    src_ids  (B, S)   source ids, then pad_token_id
    tgt_in   (B, T)   BOS, y[:-1], then pad_token_id      (what the decoder reads)
    tgt_out  (B, T)   y, then IGNORE_INDEX (-100)          (what it must predict)

so ``tgt_out[:, t]`` is the token after ``tgt_in[:, t]`` ("teacher forcing"), and the padded
positions add nothing to the loss (``F.cross_entropy`` skips ``ignore_index``, as PyTorch's).
"""
import random
from pathlib import Path

import numpy as np

from ..metrics import perplexity

__all__ = ["IGNORE_INDEX", "PairDataset", "collate_pairs", "group_by_source", "pad_sequences", "pair_batches",
           "pair_evaluator", "read_tsv_pairs", "reference_streams", "split_pairs"]

IGNORE_INDEX = -100


# ---- reading -----------------------------------------------------------------------------
def read_tsv_pairs(path):
    """``[(source, target), ...]`` from a UTF-8 file of ``source<TAB>target[<TAB>...]`` lines.

    Blank lines are skipped and each side is stripped of surrounding whitespace. A line without
    a tab, with an empty side, or not in UTF-8 is an error naming the file and line number.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"read_tsv_pairs: {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"read_tsv_pairs: {path} is a directory, not a TSV file")
    pairs = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = _decode_line(raw, path, lineno).rstrip("\r\n")
            if lineno == 1:
                line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
            if not line.strip():
                continue
            pairs.append(_parse_line(line, path, lineno))
    if not pairs:
        raise ValueError(f"read_tsv_pairs: {path} holds no pairs (expected lines 'source<TAB>target')")
    return pairs


def _decode_line(raw, path, lineno):
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not UTF-8: invalid byte(s) {raw[e.start:e.end]!r} at "
                         f"column {e.start + 1} ({e.reason}); convert the file, e.g. "
                         "iconv -f latin1 -t utf-8") from None


def _parse_line(line, path, lineno):
    fields = line.split("\t")
    if len(fields) < 2:
        raise ValueError(f"{path}:{lineno}: no tab in {_clip(line)!r}; each line must be "
                         "source<TAB>target")
    source, target = fields[0].strip(), fields[1].strip()
    for side, text in (("source", source), ("target", target)):
        if not text:
            raise ValueError(f"{path}:{lineno}: the {side} is empty in {_clip(line)!r}; each line "
                             "must be source<TAB>target with both sides non-empty")
    return source, target


def _clip(text, n=80):
    return text if len(text) <= n else text[:n] + "..."


# ---- splitting ---------------------------------------------------------------------------
def split_pairs(pairs, val_fraction=0.05, test_fraction=0.05, seed=0):
    """Split ``pairs`` into (train, val, test) lists of pairs, by distinct source text.

    The distinct sources are shuffled with ``seed``; the first ``test_fraction`` of them (at
    least one when the fraction is positive) go to test with all their translations, the next
    ``val_fraction`` to validation, the rest to training. Order within a split follows
    ``pairs``.
    """
    for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"split_pairs: {name} must be in [0, 1), got {frac}")
    sources = list(dict.fromkeys(src for src, _ in pairs))
    n = len(sources)
    n_test = _share(n, test_fraction)
    n_val = _share(n, val_fraction)
    if n_test + n_val >= n:
        raise ValueError(f"split_pairs: {n} distinct sources leave none for training with "
                         f"val_fraction={val_fraction}, test_fraction={test_fraction}")
    order = random.Random(seed).sample(range(n), n)
    split_of = {}
    for rank, i in enumerate(order):
        split_of[sources[i]] = 2 if rank < n_test else 1 if rank < n_test + n_val else 0
    splits = ([], [], [])
    for pair in pairs:
        splits[split_of[pair[0]]].append(pair)
    return splits


def _share(n, fraction):
    return 0 if fraction == 0 else max(1, round(n * fraction))


def group_by_source(pairs):
    """``(sources, references)``: each distinct source once (in first-seen order) and the list
    of its targets, e.g. for BLEU with every known translation as a reference."""
    refs = {}
    for src, tgt in pairs:
        refs.setdefault(src, []).append(tgt)
    return list(refs), list(refs.values())


def reference_streams(references):
    """Per-segment reference lists -> BLEU's parallel streams: stream k holds each segment's
    k-th reference, or None where a segment has fewer (``[["a", "b"], ["c"]]`` ->
    ``[["a", "c"], ["b", None]]``)."""
    if not references:
        return [[]]
    k_max = max(len(r) for r in references)
    return [[r[k] if k < len(r) else None for r in references] for k in range(k_max)]


# ---- batching ----------------------------------------------------------------------------
def pad_sequences(sequences, pad_value, length=None):
    """Lists of ids -> an int64 array (B, length) with ``pad_value`` after each sequence
    (``length`` defaults to the longest)."""
    longest = max((len(s) for s in sequences), default=0)
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"pad_sequences: a sequence of {longest} ids does not fit length={length}")
    out = np.full((len(sequences), length), pad_value, dtype=np.int64)
    for i, seq in enumerate(sequences):
        out[i, :len(seq)] = seq
    return out


def collate_pairs(src_seqs, tgt_seqs, pad_token_id, bos_token_id):
    """Encoded pairs -> ``(src_ids (B, S), tgt_in (B, T), tgt_out (B, T))``, see the module
    docstring. Each target must end with EOS (the tokenizer's ``encode`` appends it)."""
    if len(src_seqs) != len(tgt_seqs):
        raise ValueError(f"collate_pairs: {len(src_seqs)} sources but {len(tgt_seqs)} targets")
    if not src_seqs:
        raise ValueError("collate_pairs: the batch is empty")
    for i, (s, t) in enumerate(zip(src_seqs, tgt_seqs)):
        if not len(s) or not len(t):
            raise ValueError(f"collate_pairs: pair {i} has an empty {'source' if not len(s) else 'target'} "
                             "(encode appends EOS, so even an empty text has one id)")
    src = pad_sequences(src_seqs, pad_token_id)
    tgt_in = pad_sequences([[bos_token_id] + list(t[:-1]) for t in tgt_seqs], pad_token_id)
    tgt_out = pad_sequences(tgt_seqs, IGNORE_INDEX)
    return src, tgt_in, tgt_out


class PairDataset:
    """Pairs encoded once, batched on demand.

    Args:
        pairs: ``[(source, target), ...]``.
        tokenizer: has ``encode(text)`` (ids ending with EOS), ``pad_token_id``, ``bos_token_id``
            (e.g. :class:`tinyllm.tokenizers.Seq2SeqTokenizer`).
        max_src_len, max_tgt_len: pairs whose encoded source / target is longer are left out
            (counted in ``n_skipped``); None: no limit.
    """

    def __init__(self, pairs, tokenizer, max_src_len=None, max_tgt_len=None):
        self.tokenizer = tokenizer
        self.pairs, self.src_ids, self.tgt_ids = [], [], []
        self.n_skipped = 0
        for src, tgt in pairs:
            s, t = tokenizer.encode(src), tokenizer.encode(tgt)
            if (max_src_len is not None and len(s) > max_src_len) or (
                    max_tgt_len is not None and len(t) > max_tgt_len):
                self.n_skipped += 1
                continue
            self.pairs.append((src, tgt))
            self.src_ids.append(s)
            self.tgt_ids.append(t)
        if not self.pairs:
            raise ValueError(f"PairDataset: no pair fits max_src_len={max_src_len}, "
                             f"max_tgt_len={max_tgt_len} ({self.n_skipped} pairs were too long)")

    def __len__(self):
        return len(self.pairs)

    @property
    def max_src_len(self):
        """Length of the longest encoded source (EOS included)."""
        return max(map(len, self.src_ids))

    @property
    def max_tgt_len(self):
        """Length of the longest encoded target (EOS included; the decoder input has as many)."""
        return max(map(len, self.tgt_ids))

    def num_target_tokens(self):
        """How many target tokens the whole set predicts (the denominator of its perplexity)."""
        return sum(map(len, self.tgt_ids))

    def batch(self, indices):
        """The pairs at ``indices``, collated."""
        tok = self.tokenizer
        return collate_pairs([self.src_ids[i] for i in indices], [self.tgt_ids[i] for i in indices],
                             tok.pad_token_id, tok.bos_token_id)

    def get_batch(self, batch_size, rng):
        """``batch_size`` pairs drawn uniformly with replacement by ``rng`` (a np.random.Generator)."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"PairDataset.get_batch: rng must be a np.random.Generator, got {type(rng).__name__}")
        return self.batch(rng.integers(0, len(self), size=batch_size))

    def iter_batches(self, batch_size):
        """Every pair once, in order, ``batch_size`` at a time (the last batch may be smaller)."""
        if batch_size < 1:
            raise ValueError(f"PairDataset.iter_batches: batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.batch(range(start, min(start + batch_size, len(self))))


# ---- what the shared training loop asks of a seq2seq task (tinyllm.training.Trainer) -----------
def pair_batches(length_buckets=1):
    """``get_batch(dataset, batch_size, rng) -> ((src_ids, tgt_in), tgt_out)`` for the shared
    training loop, drawing from a :class:`PairDataset`.

    ``length_buckets=1``: ``batch_size`` pairs uniformly with replacement
    (:meth:`PairDataset.get_batch`). ``length_buckets=k > 1``: ``k * batch_size`` pairs are drawn
    the same way, sorted by source length and cut into ``k`` batches, and one of them (chosen by
    ``rng``) is returned. Each pair is still drawn with the same probability (every pair of the
    pool lands in exactly one of the ``k`` batches, each as likely as the others), but a batch
    holds sources of similar length, so far less padding is computed when the lengths vary a
    lot (code: a few tokens to hundreds). Only ``rng`` decides, so a resumed run draws the same
    batches.
    """
    if isinstance(length_buckets, bool) or not isinstance(length_buckets, int) or length_buckets < 1:
        raise ValueError(f"pair_batches: length_buckets must be an integer >= 1, got {length_buckets!r}")

    def get_batch(dataset, batch_size, rng):
        if length_buckets == 1:
            src, tgt_in, tgt_out = dataset.get_batch(batch_size, rng)
        else:
            pool = rng.integers(0, len(dataset), size=length_buckets * batch_size)
            # stable sort by (source length, draw order): ties never depend on the sort algorithm
            pool = pool[np.argsort([len(dataset.src_ids[i]) for i in pool], kind="stable")]
            k = int(rng.integers(0, length_buckets))
            src, tgt_in, tgt_out = dataset.batch(pool[k * batch_size:(k + 1) * batch_size])
        return (src, tgt_in), tgt_out

    return get_batch


def pair_evaluator(batch_size=64):
    """``evaluate(model, dataset) -> {"loss", "perplexity", "n_tokens"}`` for the shared loop:
    the mean cross-entropy per target token over every pair of a :class:`PairDataset` (eval
    mode: no dropout, no label smoothing), in batches of similar source length."""

    def evaluate(model, dataset):
        order = sorted(range(len(dataset)), key=lambda i: len(dataset.src_ids[i]))
        total, count = 0.0, 0
        for start in range(0, len(order), batch_size):
            src, tgt_in, tgt_out = dataset.batch(order[start:start + batch_size])
            r = model.evaluate(src, tgt_in, tgt_out, batch_size=batch_size)
            total, count = total + r["loss"] * r["n_tokens"], count + r["n_tokens"]
        loss = total / count
        return {"loss": loss, "perplexity": perplexity(loss), "n_tokens": count}

    return evaluate
