"""The code corpus: file discovery, exclusions, bad input, the by-file split and manifests."""
import json
import sys
from pathlib import Path

import pytest
import regex
from hypothesis import given
from hypothesis import strategies as st

from tinyllm.code_data import (CODE_SPLIT_PATTERN, SPLITS, code_corpus, compare_manifests, describe_manifest_diff,
                               file_split, is_generated, load_manifest, split_digest, split_lines,
                               stdlib_corpus)
from tinyllm.tokenizers import GPT2_SPLIT_PATTERN

PINNED = Path(__file__).parent / "pinned"


def write_tree(root, files):
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="")
    return root


def many_files(n):
    return {f"pkg/mod_{i}.py": f"def f{i}(x):\n    return x + {i}\n" for i in range(n)}


# ---- split_lines ------------------------------------------------------------------------------
@given(st.text(alphabet="ab \n\r\t\x0c", max_size=40))
def test_split_lines_joins_back_and_cuts_only_after_newlines(text):
    lines = split_lines(text)
    assert "".join(lines) == text
    assert all(line.endswith("\n") for line in lines[:-1])
    assert all("\n" not in line[:-1] for line in lines)


def test_split_lines_cases():
    assert split_lines("") == []
    assert split_lines("a") == ["a"]
    assert split_lines("a\n\nb") == ["a\n", "\n", "b"]
    assert split_lines("a\x0cb\r\n") == ["a\x0cb\r\n"]  # a form feed does not end a line


# ---- discovery and bad input ------------------------------------------------------------------
def test_code_corpus_reads_sorted_files_with_sizes_and_hashes(tmp_path):
    files = many_files(12)
    files["z.py"] = "x = 'é'\n"
    corpus = code_corpus(write_tree(tmp_path, files))
    paths = [f.path for f in corpus.files]
    assert paths == sorted(files)
    z = next(f for f in corpus.files if f.path == "z.py")
    assert z.size == len("x = 'é'\n".encode("utf-8")) and z.text == "x = 'é'\n"
    import hashlib

    assert z.sha256 == hashlib.sha256("x = 'é'\n".encode("utf-8")).hexdigest()
    assert set(f.split for f in corpus.files) == set(SPLITS)  # small folders still get each split


def test_exclusions_tests_hidden_caches_third_party_and_extensions(tmp_path):
    files = many_files(5)
    files.update({
        "tests/helper.py": "x = 1\n", "pkg/test/a.py": "x = 1\n", "pkg/test_mod.py": "x = 1\n",
        "pkg/mod_test.py": "x = 1\n", "conftest.py": "x = 1\n", ".git/hook.py": "x = 1\n",
        ".venv/lib/x.py": "x = 1\n", "__pycache__/m.py": "x = 1\n", "lib/site-packages/dep.py": "x = 1\n",
        "notes.txt": "text\n", "pkg/testing_utils.py": "x = 2\n",
    })
    corpus = code_corpus(write_tree(tmp_path, files))
    paths = {f.path for f in corpus.files}
    assert paths == set(many_files(5)) | {"pkg/testing_utils.py"}
    with_tests = {f.path for f in code_corpus(tmp_path, exclude_tests=False).files}
    assert {"tests/helper.py", "pkg/test/a.py", "pkg/test_mod.py", "pkg/mod_test.py", "conftest.py"} <= with_tests
    assert ".git/hook.py" not in with_tests and "lib/site-packages/dep.py" not in with_tests
    txt = {f.path for f in code_corpus(tmp_path, extensions=["txt", ".py"]).files}
    assert "notes.txt" in txt
    excluded = {f.path for f in code_corpus(tmp_path, exclude=["pkg/mod_1*"]).files}
    assert "pkg/mod_1.py" not in excluded and "pkg/mod_2.py" in excluded


def test_binary_non_utf8_and_empty_files_are_skipped_counted_and_listed(tmp_path):
    files = many_files(4)
    files.update({"bin.py": b"\x00\x01\x02abc", "latin.py": "x = 'caf\xe9'\n".encode("latin-1"),
                  "empty.py": b""})
    corpus = code_corpus(write_tree(tmp_path, files))
    assert corpus.skipped == {"binary": ["bin.py"], "non_utf8": ["latin.py"], "empty": ["empty.py"]}
    assert len(corpus.files) == 4
    assert corpus.manifest()["skipped"]["non_utf8"] == ["latin.py"]


def test_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"no usable \.py files under .*skipped: 0 binary"):
        code_corpus(tmp_path)


def test_only_unusable_files_is_a_clear_error(tmp_path):
    write_tree(tmp_path, {"a.py": b"\xff\xfe", "b.py": b"\x00"})
    with pytest.raises(ValueError, match="no usable .*1 binary, 1 non_utf8"):
        code_corpus(tmp_path)


def test_single_file_is_a_clear_error(tmp_path):
    write_tree(tmp_path, {"only.py": "x = 1\n"})
    with pytest.raises(ValueError, match=r"only 1 usable file.*only\.py.*nothing to hold out"):
        code_corpus(tmp_path)
    with pytest.raises(ValueError, match="single file.*nothing to hold out"):
        code_corpus(tmp_path / "only.py")
    write_tree(tmp_path, {"two.py": "y = 2\n"})
    with pytest.raises(ValueError, match="only 2 usable"):
        code_corpus(tmp_path)


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        code_corpus(tmp_path / "nope")


# ---- the split --------------------------------------------------------------------------------
def test_file_split_is_a_pure_function_of_the_path_pinned():
    """Pinned values: the rule (sha256 of the posix path) must not change, or every run's
    held-out files would change. Python's hash() would differ per process."""
    paths = [f"dir{i}/file{j}.py" for i in range(20) for j in range(20)]
    assignment = "".join(file_split(p)[0] for p in paths)
    import hashlib

    assert hashlib.sha256(assignment.encode()).hexdigest()[:16] == PINNED_SYNTHETIC
    assert file_split("json/decoder.py") == file_split("json/decoder.py")
    counts = {s: sum(file_split(p) == s for p in paths) for s in SPLITS}
    assert 330 < counts["train"] < 390 and 8 < counts["val"] < 35 and 8 < counts["test"] < 35


PINNED_SYNTHETIC = "f261e89df4441317"


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=30, unique=True))
def test_raising_test_fraction_only_moves_files_into_test(paths):
    small = {p: file_split(p, 0.05, 0.05) for p in paths}
    large = {p: file_split(p, 0.05, 0.2) for p in paths}
    assert all(large[p] == "test" for p in paths if small[p] == "test")


def test_bad_fractions():
    with pytest.raises(ValueError, match="test_fraction must be in"):
        file_split("a.py", 0.1, 0.0)
    with pytest.raises(ValueError, match="leaves no training files"):
        file_split("a.py", 0.5, 0.5)


def test_same_split_in_every_directory_and_run(tmp_path):
    files = many_files(40)
    a = code_corpus(write_tree(tmp_path / "a", files))
    b = code_corpus(write_tree(tmp_path / "elsewhere" / "b", files))
    assert [(f.path, f.split) for f in a.files] == [(f.path, f.split) for f in b.files]
    assert split_digest(a.files) == split_digest(b.files)
    for f in a.files:  # the small-folder fallback did not act on 40 files with every split present
        assert f.split == file_split(f.path)


# ---- manifests --------------------------------------------------------------------------------
def test_manifest_round_trip_and_diff(tmp_path):
    files = many_files(30)
    corpus = code_corpus(write_tree(tmp_path / "src", files))
    path = corpus.save_manifest(tmp_path / "manifest.json")
    m = load_manifest(path)
    assert m["split_digest"] == split_digest(m["files"]) == split_digest(corpus.files)
    assert m["counts"]["train"]["files"] + m["counts"]["val"]["files"] + m["counts"]["test"]["files"] == 30
    assert compare_manifests(m, corpus) == {"added": [], "removed": [], "edited": [], "moved": []}
    assert describe_manifest_diff(compare_manifests(m, corpus)) == ""

    (tmp_path / "src/pkg/mod_0.py").write_text("changed = True\n")
    (tmp_path / "src/pkg/mod_1.py").unlink()
    (tmp_path / "src/pkg/new.py").write_text("x = 1\n")
    diff = compare_manifests(m, code_corpus(tmp_path / "src"))
    assert diff["added"] == ["pkg/new.py"] and diff["removed"] == ["pkg/mod_1.py"]
    assert diff["edited"] == ["pkg/mod_0.py"] and diff["moved"] == []
    text = describe_manifest_diff(diff)
    assert "1 added: pkg/new.py" in text and "1 removed: pkg/mod_1.py" in text and "1 edited: pkg/mod_0.py" in text

    moved = json.loads(json.dumps(m))
    moved["files"][0]["split"] = "test" if moved["files"][0]["split"] != "test" else "train"
    diff = compare_manifests(m, moved)
    assert len(diff["moved"]) == 1 and "1 moved: " + m["files"][0]["path"] in describe_manifest_diff(diff)


def test_load_manifest_refuses_other_json(tmp_path):
    (tmp_path / "x.json").write_text('{"format": "something"}')
    with pytest.raises(ValueError, match="not a tinyllm code manifest"):
        load_manifest(tmp_path / "x.json")


# ---- the standard library ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def stdlib():
    return stdlib_corpus()


def test_stdlib_corpus_leaves_out_tests_tools_and_generated_files(stdlib):
    paths = [f.path for f in stdlib.files]
    assert paths == sorted(paths) and len(paths) > 300
    assert "json/decoder.py" in paths and "collections/__init__.py" in paths
    for p in paths:
        parts = p.split("/")
        assert not ({"test", "tests", "idle_test", "__pycache__", "site-packages"} & set(parts)), p
        assert parts[0] not in ("idlelib", "lib2to3", "ensurepip", "turtledemo", "pydoc_data"), p
        assert not parts[-1].startswith("test_") and not parts[0].startswith("_sysconfigdata"), p
    assert "encodings/cp037.py" not in paths  # generated by gencodec.py
    assert "encodings/cp858.py" not in paths  # gencodec's table, edited by hand, without its header
    assert "encodings/cp932.py" in paths and "encodings/charmap.py" in paths  # codecs, not tables
    assert all(stdlib.split(s) for s in SPLITS)


def test_is_generated_recognizes_character_tables_not_code_about_them():
    entry = "    '\\u2502'   #  0x00b3 -> BOX DRAWINGS LIGHT VERTICAL\n"
    table = '""" Python Character Mapping Codec for CP999, edited by hand.\n"""\n' + entry * 128
    assert is_generated(table)
    assert not is_generated(table[: -len(entry)])  # 127 lines: not a table by this rule
    assert is_generated('""" Python Character Mapping Codec generated from X with gencodec.py.\n"""')
    assert not is_generated("x = 0x00b3  # map 0x00b3 -> a box drawing character\n" * 200)


def test_stdlib_split_is_pinned_for_this_python_version(stdlib):
    """The same (path, split) list on every machine with this Python minor version. The pinned
    list lives in tests/pinned; when it differs, the message says which files changed."""
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pinned_path = PINNED / f"stdlib_split_{minor}.txt"
    if not pinned_path.exists():
        pytest.skip(f"no pinned standard-library split for Python {minor} ({pinned_path.name})")
    pinned = [line.split("\t") for line in pinned_path.read_text().splitlines()]
    pinned_files = [{"path": p, "split": s, "sha256": ""} for s, p in pinned]
    for f in pinned_files:  # the rule itself, independent of which files this machine has
        assert file_split(f["path"]) == f["split"], f["path"]
    here = [{"path": f.path, "split": f.split, "sha256": ""} for f in stdlib.files]
    diff = compare_manifests({"files": pinned_files}, {"files": here})
    assert not any(diff.values()), f"this Python {minor} differs from the pinned list:\n{describe_manifest_diff(diff)}"
    assert split_digest(stdlib.files) == PINNED_DIGEST.get(minor)


PINNED_DIGEST = {"3.11": "285ea08c7013412473dc1baae3d155ab9713bed42b01a00bd05d463f4e57892d"}


# ---- the pre-tokenizer pattern ----------------------------------------------------------------
CODEY = st.lists(st.sampled_from(list("ab1 \t\n\r\x0c'#:(é\u2028") + ["    ", "\r\n", "s", "ll"]),
                 max_size=30).map("".join)


@given(CODEY)
def test_code_pattern_covers_every_character_and_cuts_after_each_newline(text):
    chunks = regex.findall(CODE_SPLIT_PATTERN, text)
    assert "".join(chunks) == text
    assert all("\n" not in c or c in ("\n", "\r\n") for c in chunks)
    # so encoding a text chunk by chunk equals encoding its lines one by one
    per_line = [c for line in split_lines(text) for c in regex.findall(CODE_SPLIT_PATTERN, line)]
    assert per_line == chunks


@given(CODEY)
def test_gpt2_pattern_also_covers_every_character(text):
    assert "".join(regex.findall(GPT2_SPLIT_PATTERN, text)) == text


def test_gpt2_pattern_glues_newline_to_indentation_which_the_code_pattern_does_not():
    text = "if x:\n        return y\n"
    assert "\n       " in regex.findall(GPT2_SPLIT_PATTERN, text)
    assert regex.findall(CODE_SPLIT_PATTERN, text) == ["if", " x", ":", "\n", "       ", " return", " y", "\n"]


def test_both_patterns_chunk_every_stdlib_file_exactly(stdlib):
    """The whole standard library: chunks join back to each file (indentation, tabs, form
    feeds, trailing spaces, a missing final newline all kept)."""
    code_re, gpt2_re = regex.compile(CODE_SPLIT_PATTERN), regex.compile(GPT2_SPLIT_PATTERN)
    for f in stdlib.files:
        assert "".join(code_re.findall(f.text)) == f.text, f.path
        assert "".join(gpt2_re.findall(f.text)) == f.text, f.path
