"""Corpora on disk and batches of token ids for training.

* :func:`find_corpus` / :func:`load_text`: locate tiny-shakespeare (a directory you point at,
  the user cache, or a one-time download checked against its sha256) and read it as text.
* :func:`train_val_split`, :func:`get_batch`, :func:`iter_eval_windows`: nanoGPT's way of
  turning one long array of ids into (input, target) blocks.

All randomness comes from the ``np.random.Generator`` passed in; nothing here keeps global
random state, so the same seed gives the same batches.
"""
import hashlib
import os
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, DownloadError

__all__ = [
    "TINYSHAKESPEARE_SHA256",
    "TINYSHAKESPEARE_SIZE",
    "TINYSHAKESPEARE_URL",
    "cache_dir",
    "find_corpus",
    "get_batch",
    "iter_eval_windows",
    "lm_train_val_split",
    "load_text",
    "train_val_split",
]

TINYSHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINYSHAKESPEARE_SIZE = 1_115_394
DOWNLOAD_TIMEOUT = 30.0  # seconds without data before urllib gives up


@dataclass(frozen=True)
class _Corpus:
    filename: str
    url: str
    sha256: str
    size: int


_CORPORA = {
    "tinyshakespeare": _Corpus(
        "tinyshakespeare.txt", TINYSHAKESPEARE_URL, TINYSHAKESPEARE_SHA256, TINYSHAKESPEARE_SIZE
    ),
}


def cache_dir():
    """``$XDG_CACHE_HOME/tinyllm``, else ``~/.cache/tinyllm``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tinyllm"


def find_corpus(name="tinyshakespeare"):
    """Return the path of a corpus, downloading it into the user cache the first time.

    Looks in order at
      1. ``$TINYLLM_DATA_DIR/<name>.txt`` -- trusted as is (a size or checksum that differs
         from the known file only warns: you may have edited it on purpose);
      2. the user cache (:func:`cache_dir`) -- its checksum is verified; a corrupt file is
         reported and downloaded again;
      3. the URL, into the cache (written to a temp file, checked, then renamed, so an
         interrupted download never leaves a partial file under the final name).
    A failed download raises :class:`~tinyllm.errors.DownloadError` naming the URL and the
    ``--data PATH`` way out.
    """
    corpus = _CORPORA.get(name)
    if corpus is None:
        raise ValueError(f"find_corpus: unknown corpus {name!r}; known: {sorted(_CORPORA)}")

    data_dir = os.environ.get("TINYLLM_DATA_DIR")
    if data_dir:
        path = Path(data_dir) / corpus.filename
        if path.is_file():
            _warn_if_different(path, corpus)
            return path

    cached = cache_dir() / corpus.filename
    if cached.is_file():
        digest = _sha256(cached)
        if digest == corpus.sha256:
            return cached
        warnings.warn(
            f"find_corpus: cached {cached} is corrupt (sha256 {digest}, expected "
            f"{corpus.sha256}); downloading it again",
            stacklevel=2,
        )
        cached.unlink()
    return _download_verified(corpus, cached)


def _warn_if_different(path, corpus):
    size = path.stat().st_size
    if size != corpus.size:
        warnings.warn(
            f"{path}: {size} bytes, but the known {corpus.filename} has {corpus.size}; using it anyway",
            stacklevel=3,
        )
        return
    digest = _sha256(path)
    if digest != corpus.sha256:
        warnings.warn(
            f"{path}: sha256 {digest} differs from the known {corpus.filename} ({corpus.sha256}); "
            "using it anyway",
            stacklevel=3,
        )


def _download_verified(corpus, dest):
    hint = (
        f"If this machine is offline, fetch {corpus.url} elsewhere and pass --data PATH "
        f"(or put it at $TINYLLM_DATA_DIR/{corpus.filename})."
    )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=corpus.filename + ".", suffix=".part",
                                        dir=dest.parent)
        os.close(fd)
    except OSError as e:
        raise DownloadError(f"cannot write to the cache directory {dest.parent}: {e}. {hint}") from e
    tmp = Path(tmp_name)
    try:
        try:
            _download(corpus.url, tmp, DOWNLOAD_TIMEOUT)
        except Exception as e:  # URLError, timeout, HTTP error, reset connection, ...
            raise DownloadError(f"could not download {corpus.url}: {e}. {hint}") from e
        digest = _sha256(tmp)
        if digest != corpus.sha256:
            raise DownloadError(
                f"the file downloaded from {corpus.url} has sha256 {digest}, expected "
                f"{corpus.sha256}; it was not kept. {hint}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _download(url, dest, timeout):
    """Stream ``url`` into the file ``dest`` (tests replace this function)."""
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as f:
        while block := response.read(1 << 16):
            f.write(block)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def load_text(path=None):
    """Read a UTF-8 text file (``None``: tiny-shakespeare via :func:`find_corpus`).

    The text is returned exactly as stored (no newline translation), so ids map back to the
    file's bytes. A path that is missing or a directory, an empty file, or bytes that are not
    UTF-8 (the message gives the byte offset) are clear errors naming the file.
    """
    path = find_corpus() if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"load_text: {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"load_text: {path} is a directory, not a text file; pass the file inside it")
    data = path.read_bytes()
    if not data:
        raise DataError(f"load_text: {path} is empty; there is nothing to train on")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"load_text: {path} is not UTF-8: invalid byte(s) {data[e.start:e.end]!r} at byte "
            f"offset {e.start} ({e.reason}); convert it, e.g. iconv -f latin1 -t utf-8"
        ) from None


def train_val_split(ids, val_fraction=0.1):
    """First ``1 - val_fraction`` of ``ids`` for training, the rest for validation (nanoGPT).

    Returns two ndarrays (views when ``ids`` is already an ndarray). Each split must hold at
    least 2 ids, one input and its target.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"train_val_split: val_fraction must be in (0, 1), got {val_fraction}")
    data = np.asarray(ids)
    if data.ndim != 1:
        raise ValueError(f"train_val_split: expected a 1-D sequence of ids, got shape {data.shape}")
    n_train = int(len(data) * (1.0 - val_fraction))
    train, val = data[:n_train], data[n_train:]
    if len(train) < 2 or len(val) < 2:
        raise ValueError(
            f"train_val_split: {len(data)} ids split at val_fraction={val_fraction} give "
            f"{len(train)} train and {len(val)} val ids; each split needs at least 2"
        )
    return train, val


def lm_train_val_split(ids, block_size, source="the data", val_fraction=0.1):
    """:func:`train_val_split` for training a causal LM on blocks of ``block_size`` tokens: each
    split must hold at least one block and its shifted target (``block_size + 1`` ids), else a
    :class:`DataError` that names ``source`` and what to change."""
    need = block_size + 1
    n_val = len(ids) - int(len(ids) * (1.0 - val_fraction))
    n_train = len(ids) - n_val
    if min(n_train, n_val) < need:
        raise DataError(
            f"{source} is too short to train on: {len(ids):,} tokens split into {n_train:,} for training and "
            f"{n_val:,} for validation, but each split needs at least block_size + 1 = {need} (one block and "
            f"its targets, so about {int(need / val_fraction):,} tokens in all); use a longer text or a smaller "
            "--block-size"
        )
    return train_val_split(ids, val_fraction)


def get_batch(data, batch_size, block_size, rng):
    """A random batch of blocks: ``x[b] = data[i:i+T]``, ``y[b] = data[i+1:i+1+T]``.

    ``i`` is drawn by ``rng.integers(0, len(data) - block_size, size=batch_size)``, so a block
    and its shifted target always fit. Returns two int64 arrays of shape (batch_size, block_size).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"get_batch: rng must be a np.random.Generator (np.random.default_rng(seed)), "
            f"got {type(rng).__name__}"
        )
    _check_positive(batch_size=batch_size, block_size=block_size)
    data = np.asarray(data)
    if len(data) < block_size + 1:
        raise ValueError(
            f"get_batch: data has {len(data)} ids, but block_size={block_size} needs at least "
            f"{block_size + 1} (a block plus its shifted target)"
        )
    starts = rng.integers(0, len(data) - block_size, size=batch_size)
    offsets = starts[:, None] + np.arange(block_size)  # (B, T)
    x = data[offsets].astype(np.int64)
    y = data[offsets + 1].astype(np.int64)
    return x, y


def iter_eval_windows(data, block_size, batch_size):
    """Yield ``(x, y)`` batches of consecutive, non-overlapping windows over all of ``data``.

    Window ``k`` is ``x = data[kT:kT+T]``, ``y = data[kT+1:kT+T+1]``, so every id after the
    first is a target exactly once: the targets of all batches together are ``data[1:]``.
    Full windows come in batches of up to ``batch_size`` rows (the last batch may have fewer
    rows); if ``len(data) - 1`` is not a multiple of ``block_size``, the leftover targets come
    last as one shorter batch of shape (1, r). For the mean loss over the whole split, weight
    each batch's mean loss by ``y.size``.
    """
    _check_positive(batch_size=batch_size, block_size=block_size)
    data = np.asarray(data)
    if len(data) < 2:
        raise ValueError(f"iter_eval_windows: data has {len(data)} ids; at least 2 are needed")
    n_targets = len(data) - 1
    n_full = n_targets // block_size
    for first in range(0, n_full, batch_size):
        rows = np.arange(first, min(first + batch_size, n_full))
        offsets = rows[:, None] * block_size + np.arange(block_size)  # (B, T)
        yield data[offsets].astype(np.int64), data[offsets + 1].astype(np.int64)
    start = n_full * block_size
    if start < n_targets:
        yield (data[None, start:n_targets].astype(np.int64),
               data[None, start + 1:].astype(np.int64))


def _check_positive(**values):
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
