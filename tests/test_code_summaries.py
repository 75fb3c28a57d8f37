"""function_summaries: (code without docstring, first sentence of the docstring) pairs."""
import ast
import textwrap

import pytest

from tinyllm.code_data import docstring_summary, extract_functions, function_summaries

SOURCE = textwrap.dedent('''\
    """Module docstring: not a function."""
    import functools


    def plain(a, b):
        """Add two numbers.

        Longer explanation that is not part of the summary.
        """
        return a + b


    def no_doc(x):
        return x


    def one_line(x):
        "Return x unchanged."
        return x


    class Shape:
        """A class docstring: not a function."""

        def area(self):
            """Compute the area
            of the shape, over two lines. More text here.
            """
            return 0

        @property
        @functools.lru_cache(maxsize=None)
        def name(self):
            """The shape's name."""
            return "shape"

        class Inner:
            def deep(self):
                """Deep method"""
                return 1


    async def fetch(url):
        """Fetch a URL asynchronously."""
        await something(url)


    def outer():
        """Make a closure."""
        def inner(y):
            """Inner helper."""
            return y
        return inner


    def empty_doc():
        """   """
        return None


    def only_doc():
        """Nothing but a docstring."""


    def wordy():
        """one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen
        sixteen seventeen eighteen nineteen twenty twentyone twentytwo twentythree twentyfour
        twentyfive twentysix twentyseven twentyeight twentynine thirty thirtyone thirtytwo
        thirtythree thirtyfour thirtyfive thirtysix thirtyseven thirtyeight thirtynine forty fortyone"""
        return 1


    def same_line(): "Doc on the def line."; return 2


    def not_first(x):
        x = 1
        """Not a docstring: it is not the first statement."""
        return x
    ''')


@pytest.fixture()
def source_file(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text(SOURCE, encoding="utf-8")
    return path


def test_every_documented_function_and_method(source_file):
    functions, report = extract_functions([source_file])
    names = [f.qualname for f in functions]
    assert names == ["plain", "one_line", "Shape.area", "Shape.name", "Shape.Inner.deep", "fetch", "outer",
                     "outer.<locals>.inner", "only_doc", "same_line"]
    summaries = {f.qualname: f.summary for f in functions}
    assert summaries == {
        "plain": "Add two numbers",
        "one_line": "Return x unchanged",
        "Shape.area": "Compute the area of the shape, over two lines",
        "Shape.name": "The shape's name",
        "Shape.Inner.deep": "Deep method",
        "fetch": "Fetch a URL asynchronously",
        "outer": "Make a closure",
        "outer.<locals>.inner": "Inner helper",
        "only_doc": "Nothing but a docstring",
        "same_line": "Doc on the def line",
    }
    assert report["documented"] == 12 and report["kept"] == 10
    assert report["skipped_empty"] == 1 and report["skipped_long"] == 1
    assert report["syntax_errors"] == [] and report["files"] == 1
    assert all(f.path == str(source_file) for f in functions)
    assert {f.qualname: f.lineno for f in functions}["plain"] == 5


def test_code_is_dedented_without_the_docstring_and_still_parses(source_file):
    functions, _ = extract_functions(source_file)
    code = {f.qualname: f.code for f in functions}
    assert code["plain"] == "def plain(a, b):\n    return a + b\n"
    assert code["one_line"] == "def one_line(x):\n    return x\n"
    assert code["Shape.area"] == "def area(self):\n    return 0\n"
    assert code["Shape.name"] == ("@property\n@functools.lru_cache(maxsize=None)\n"
                                  "def name(self):\n    return \"shape\"\n")
    assert code["fetch"] == "async def fetch(url):\n    await something(url)\n"
    assert code["outer"] == ('def outer():\n    def inner(y):\n        """Inner helper."""\n'
                             "        return y\n    return inner\n")  # a nested docstring stays
    assert code["outer.<locals>.inner"] == "def inner(y):\n    return y\n"
    assert code["only_doc"] == "def only_doc():\n"
    assert code["same_line"] == "def same_line(): return 2\n"
    for name, c in code.items():
        if name != "only_doc":  # a body that was only a docstring is left empty
            ast.parse(c)
        assert '"""' not in c.split("\n")[1] if name != "outer" else True


def test_function_summaries_gives_pairs_and_the_counts(source_file):
    pairs, report = function_summaries([source_file])
    assert pairs[0] == ("def plain(a, b):\n    return a + b\n", "Add two numbers")
    assert len(pairs) == report["kept"] == 10
    assert all(isinstance(code, str) and isinstance(summary, str) for code, summary in pairs)


def test_syntax_errors_are_reported_with_the_file_and_skipped(tmp_path):
    good = tmp_path / "good.py"
    good.write_text('def f():\n    """Good."""\n    return 1\n')
    bad = tmp_path / "bad.py"
    bad.write_text('def f(:\n    """Broken."""\n')
    unreadable = tmp_path / "latin.py"
    unreadable.write_bytes(b"x = '\xff'\n")
    missing = tmp_path / "missing.py"
    pairs, report = function_summaries([bad, good, unreadable, missing])
    assert pairs == [("def f():\n    return 1\n", "Good")]
    assert len(report["syntax_errors"]) == 1
    path, message = report["syntax_errors"][0]
    assert path == str(bad) and "line 1" in message
    assert [p for p, _ in report["unreadable"]] == [str(unreadable), str(missing)]


def test_pep263_coding_cookie_is_honoured(tmp_path):
    path = tmp_path / "latin.py"
    path.write_bytes('# -*- coding: latin-1 -*-\ndef f():\n    """Café au lait."""\n    return "é"\n'.encode("latin-1"))
    pairs, report = function_summaries(path)
    assert pairs == [('def f():\n    return "é"\n', "Café au lait")]


def test_non_ascii_before_a_same_line_docstring(tmp_path):
    """ast's column offsets count UTF-8 bytes: the cut must not land mid-character."""
    path = tmp_path / "u.py"
    path.write_text('def café(): "Doc é."; return "ü"\n', encoding="utf-8")
    pairs, _ = function_summaries(path)
    assert pairs == [('def café(): return "ü"\n', "Doc é")]


@pytest.mark.parametrize("doc, summary", [
    ("Return the sum.", "Return the sum"),
    ("Return the sum. Then more.", "Return the sum"),
    ("First line\nsecond line.\n\nNew paragraph.", "First line second line"),
    ("Spaces   and\ttabs  collapse.", "Spaces and tabs collapse"),
    ("No period", "No period"),
    ("Ends with a question?", "Ends with a question?"),
    ("Version 3.11 is here.", "Version 3.11 is here"),  # ". " not "." splits
    ("e.g. this is cut early", "e.g"),  # the rule as specified: the first ". "
    ("", ""),
    ("   \n\n  ", ""),
    (".", ""),
    ("\n\nAfter blank lines.", "After blank lines"),
])
def test_docstring_summary(doc, summary):
    assert docstring_summary(doc) == summary


def test_form_feeds_and_crlf_do_not_shift_lines(tmp_path):
    """ast counts lines at \\n, \\r\\n and \\r only; str.splitlines would also cut at a form feed."""
    path = tmp_path / "ff.py"
    path.write_bytes(b'x = 1\r\n\x0c\r\n# \x1c\x1d\xe2\x80\xa8 separators\r\ndef f():\r\n    """Doc."""\r\n    return 1\r\n')
    pairs, report = function_summaries(path)
    assert pairs == [("def f():\r\n    return 1\r\n", "Doc")]


def test_functions_in_blocks_local_classes_and_methods_nested_in_methods(tmp_path):
    path = tmp_path / "blocks.py"
    path.write_text(textwrap.dedent('''\
        import sys
        if sys.platform:
            def in_if():
                """Defined under an if."""
        try:
            import os
        except ImportError:
            def in_except():
                """Defined in an except clause."""
        def factory():
            """Build a class."""
            class Local:
                def method(self):
                    """A method of a local class."""
                    def helper():
                        """Nested in a method."""
                    return helper
            return Local
        '''), encoding="utf-8")
    functions, report = extract_functions(path)
    assert [f.qualname for f in functions] == [
        "in_if", "in_except", "factory", "factory.<locals>.Local.method",
        "factory.<locals>.Local.method.<locals>.helper"]
    assert [f.summary for f in functions][-2:] == ["A method of a local class", "Nested in a method"]
    code = {f.qualname: f.code for f in functions}
    assert code["in_if"] == "def in_if():\n"
    assert code["factory.<locals>.Local.method"] == "def method(self):\n    def helper():\n" \
        '        """Nested in a method."""\n    return helper\n'
    assert report["documented"] == report["kept"] == 5


def test_the_word_limit_keeps_40_words_and_skips_41(tmp_path):
    words = [f"w{i}" for i in range(41)]
    path = tmp_path / "limit.py"
    path.write_text(f'def forty():\n    """{" ".join(words[:40])}."""\n\n\n'
                    f'def forty_one():\n    """{" ".join(words)}."""\n', encoding="utf-8")
    pairs, report = function_summaries(path)
    assert pairs == [("def forty():\n", " ".join(words[:40]))]
    assert report["skipped_long"] == 1 and report["skipped_empty"] == 0
    pairs, report = function_summaries(path, max_words=41)
    assert len(pairs) == 2 and report["skipped_long"] == 0
