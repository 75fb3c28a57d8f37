"""tinyllm.data with temp directories and a fake download (never the network, never the corpus)."""
import hashlib
import urllib.error
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm import data
from tinyllm.data import (
    TINYSHAKESPEARE_URL,
    find_corpus,
    get_batch,
    iter_eval_windows,
    load_text,
    train_val_split,
)

FAKE_TEXT = b"First Citizen:\nSpeak, speak.\n"


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """Empty data dir and cache dir; the known checksum/size made to match FAKE_TEXT."""
    data_dir, cache_home = tmp_path / "data", tmp_path / "cache"
    data_dir.mkdir()
    monkeypatch.setenv("TINYLLM_DATA_DIR", str(data_dir))
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    corpus = data._Corpus("tinyshakespeare.txt", TINYSHAKESPEARE_URL,
                          hashlib.sha256(FAKE_TEXT).hexdigest(), len(FAKE_TEXT))
    monkeypatch.setitem(data._CORPORA, "tinyshakespeare", corpus)
    downloads = []

    def fake_download(url, dest, timeout):
        downloads.append(url)
        dest.write_bytes(FAKE_TEXT)

    monkeypatch.setattr(data, "_download", fake_download)
    return data_dir, cache_home / "tinyllm", downloads


def test_cache_dir_follows_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / "tinyllm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "tinyllm"


def test_find_corpus_order(dirs):
    data_dir, cache, downloads = dirs
    # 1. nothing anywhere: downloaded into the cache
    path = find_corpus()
    assert path == cache / "tinyshakespeare.txt" and path.read_bytes() == FAKE_TEXT
    assert downloads == [TINYSHAKESPEARE_URL]
    assert list(cache.iterdir()) == [path]  # no temp file left behind
    # 2. in the cache: no second download
    assert find_corpus() == path and len(downloads) == 1
    # 3. in TINYLLM_DATA_DIR: preferred over the cache
    (data_dir / "tinyshakespeare.txt").write_bytes(FAKE_TEXT)
    assert find_corpus() == data_dir / "tinyshakespeare.txt"
    assert load_text() == FAKE_TEXT.decode()


def test_find_corpus_without_data_dir_env(dirs, monkeypatch):
    monkeypatch.delenv("TINYLLM_DATA_DIR")
    assert find_corpus() == dirs[1] / "tinyshakespeare.txt"


def test_offline_error_names_url_and_data_flag(dirs, monkeypatch):
    def offline(url, dest, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(RuntimeError) as info:
        find_corpus()
    message = str(info.value)
    assert TINYSHAKESPEARE_URL in message and "--data PATH" in message
    assert "TINYLLM_DATA_DIR" in message
    assert not dirs[1].exists() or list(dirs[1].iterdir()) == []


def test_offline_first_run_of_an_example_is_an_error_message_not_a_traceback(dirs, monkeypatch):
    """The README's first command, offline, with no corpus anywhere: `error: ...` and the way out."""
    from tinyllm import cli

    def offline(url, dest, timeout):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(data, "_download", offline)
    monkeypatch.delenv("TINYLLM_TRACEBACK", raising=False)
    with pytest.raises(SystemExit) as err, cli.exit_on_error():  # what every example runs in
        load_text()
    message = str(err.value.code)
    assert message.startswith(f"error: could not download {TINYSHAKESPEARE_URL}") and "--data PATH" in message


def test_download_checksum_mismatch_is_not_kept(dirs, monkeypatch):
    monkeypatch.setattr(data, "_download", lambda url, dest, timeout: dest.write_bytes(b"evil"))
    with pytest.raises(RuntimeError) as info:
        find_corpus()
    message = str(info.value)
    assert hashlib.sha256(b"evil").hexdigest() in message
    assert hashlib.sha256(FAKE_TEXT).hexdigest() in message
    assert list(dirs[1].iterdir()) == []


def test_corrupt_cache_is_reported_and_downloaded_again(dirs):
    _, cache, downloads = dirs
    cache.mkdir(parents=True)
    (cache / "tinyshakespeare.txt").write_bytes(b"truncated")
    with pytest.warns(UserWarning, match="corrupt"):
        path = find_corpus()
    assert path.read_bytes() == FAKE_TEXT and len(downloads) == 1


def test_data_dir_file_is_trusted_but_mismatch_warns(dirs):
    data_dir, _, downloads = dirs
    edited = data_dir / "tinyshakespeare.txt"
    edited.write_bytes(b"my own edit")
    with pytest.warns(UserWarning, match="bytes"):
        assert find_corpus() == edited
    edited.write_bytes(FAKE_TEXT.upper())  # same size, other content
    with pytest.warns(UserWarning, match="sha256"):
        assert find_corpus() == edited
    edited.write_bytes(FAKE_TEXT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert find_corpus() == edited
    assert downloads == []


def test_find_corpus_unknown_name():
    with pytest.raises(ValueError, match="tinyshakespeare"):
        find_corpus("wikitext")


def test_load_text_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_text(tmp_path / "missing.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("abc é".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt.*byte offset 4"):
        load_text(bad)
    good = tmp_path / "good.txt"
    good.write_bytes("line\r\nnaïve\n".encode())
    assert load_text(str(good)) == "line\r\nnaïve\n"  # exactly as stored


# ------------------------------------------------------------------------------------------
# splits and batches
# ------------------------------------------------------------------------------------------
def test_train_val_split_like_nanogpt():
    ids = np.arange(1000)
    train, val = train_val_split(ids)
    np.testing.assert_array_equal(train, ids[:900])
    np.testing.assert_array_equal(val, ids[900:])
    train, val = train_val_split(list(range(10)), val_fraction=0.25)
    assert train.tolist() == list(range(7)) and val.tolist() == [7, 8, 9]


def test_train_val_split_validates():
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="val_fraction"):
            train_val_split(np.arange(100), bad)
    with pytest.raises(ValueError, match=r"10 ids .* 9 train and 1 val"):
        train_val_split(np.arange(10), 0.1)


def test_get_batch_shapes_shift_and_determinism():
    data_ids = np.arange(100, 200, dtype=np.uint16)
    x, y = get_batch(data_ids, 4, 8, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 8) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])
    np.testing.assert_array_equal(y[:, -1], x[:, -1] + 1)
    assert (x[:, 1:] - x[:, :-1] == 1).all()  # contiguous slices of the data
    x2, y2 = get_batch(data_ids, 4, 8, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = get_batch(data_ids, 4, 8, np.random.default_rng(1))
    assert not np.array_equal(x, x3)


def test_get_batch_draws_offsets_from_the_generator():
    data_ids = np.arange(50)
    x, _ = get_batch(data_ids, 6, 5, np.random.default_rng(7))
    expected = np.random.default_rng(7).integers(0, 50 - 5, size=6)
    np.testing.assert_array_equal(x[:, 0], expected)


@settings(deadline=None, max_examples=50)
@given(st.integers(2, 40), st.integers(1, 10), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_get_batch_stays_in_bounds(n, block_size, batch_size, seed):
    data_ids = np.arange(n)
    if n < block_size + 1:
        with pytest.raises(ValueError, match=rf"{n} ids.*block_size={block_size}"):
            get_batch(data_ids, batch_size, block_size, np.random.default_rng(seed))
        return
    x, y = get_batch(data_ids, batch_size, block_size, np.random.default_rng(seed))
    assert y.max() <= n - 1 and x.min() >= 0
    np.testing.assert_array_equal(y, x + 1)


def test_get_batch_validates():
    with pytest.raises(TypeError, match="Generator"):
        get_batch(np.arange(10), 2, 3, 0)
    with pytest.raises(TypeError, match="Generator"):
        get_batch(np.arange(10), 2, 3, np.random)
    with pytest.raises(ValueError, match="batch_size"):
        get_batch(np.arange(10), 0, 3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"5 ids, but block_size=5 needs at least 6"):
        get_batch(np.arange(5), 1, 5, np.random.default_rng(0))


@settings(deadline=None, max_examples=100)
@given(st.integers(2, 60), st.integers(1, 9), st.integers(1, 4))
def test_eval_windows_cover_the_split_exactly(n, block_size, batch_size):
    data_ids = np.arange(1000, 1000 + n)
    batches = list(iter_eval_windows(data_ids, block_size, batch_size))
    xs = np.concatenate([x.ravel() for x, _ in batches])
    ys = np.concatenate([y.ravel() for _, y in batches])
    np.testing.assert_array_equal(xs, data_ids[:-1])
    np.testing.assert_array_equal(ys, data_ids[1:])  # every target exactly once
    for k, (x, y) in enumerate(batches):
        assert x.shape == y.shape and x.dtype == np.int64
        assert 1 <= x.shape[0] <= batch_size and x.shape[1] <= block_size
        if x.shape[1] < block_size:  # the shorter leftover window comes last, alone
            assert k == len(batches) - 1 and x.shape[0] == 1


def test_eval_windows_layout():
    batches = list(iter_eval_windows(np.arange(12), 3, 2))
    shapes = [x.shape for x, _ in batches]
    assert shapes == [(2, 3), (1, 3), (1, 2)]
    assert batches[0][0].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert batches[2][1].tolist() == [[10, 11]]
    with pytest.raises(ValueError, match="at least 2"):
        list(iter_eval_windows(np.arange(1), 3, 2))
