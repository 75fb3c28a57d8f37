"""The docs run: every ```python block of docs/*.md and README.md, and every link they make.

* Each page's python blocks run in order, in one namespace, in a temporary working directory
  (a block may build on the ones before it, as a reader running them one by one would). A
  block whose info string is ``python no-run`` is shown but not run; it must start with a
  comment saying why (it needs a trained model, the corpus, the network or a server).
* Every relative link of a page must name a file or directory that exists. A link whose text
  is a code name, ``[`Trainer.train_step`](../tinyllm/training.py)``, must name a function,
  class or method defined in that Python file (so the walk-through's stops do not rot when
  the code moves), and a ``#L<n>`` anchor, if any, must lie inside the file.
* Images that a page shows exist and are small (under 200 KB each).

The blocks use tiny sizes: each page runs in seconds. A page that switches reference mode on
gets the mode it found back afterwards, whatever happens.
"""
import ast
import re
from pathlib import Path

import pytest

import tinyllm

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md")) + [ROOT / "README.md"]

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
_CODE_NAME = re.compile(r"^`([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)(?:\(\))?`$")


def _blocks(text):
    """(info words, code, line number) of every fenced block of a page, in order."""
    for m in _FENCE.finditer(text):
        yield m.group(1).split(), m.group(2), text[:m.start()].count("\n") + 1


def _python_blocks(page):
    """(code, line) of the blocks of ``page`` that run: ```python, not ```python no-run."""
    runnable, skipped = [], []
    for info, code, line in _blocks(page.read_text(encoding="utf-8")):
        if info[:1] != ["python"]:
            continue
        (skipped if "no-run" in info[1:] else runnable).append((code, line))
    return runnable, skipped


def _page_id(page):
    return str(page.relative_to(ROOT))


PAGES_WITH_CODE = [page for page in PAGES if _python_blocks(page)[0]]


def test_the_pages_that_teach_with_code_have_code_that_runs():
    """The walk-through and the idea pages teach with runnable blocks (an index page need not)."""
    names = {page.name for page in PAGES_WITH_CODE}
    assert "walkthrough.md" in names and "README.md" in names and len(names) >= 8, sorted(names)


@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=_page_id)
def test_the_python_blocks_of_a_page_run(page, tmp_path, monkeypatch):
    runnable, _ = _python_blocks(page)
    monkeypatch.chdir(tmp_path)  # a block that saves a model writes here
    namespace = {"__name__": f"docs_{page.stem}"}
    mode = tinyllm.is_reference()
    try:
        for code, line in runnable:
            try:
                exec(compile(code, f"{_page_id(page)}:{line}", "exec"), namespace)
            except Exception as e:
                raise AssertionError(f"the python block at {_page_id(page)} line {line} failed: "
                                     f"{type(e).__name__}: {e}") from e
    finally:
        tinyllm.use_reference(mode)


def _no_run_problems(page, name):
    problems = []
    for code, line in _python_blocks(page)[1]:
        first = code.lstrip().splitlines()[0] if code.strip() else ""
        if not first.startswith("#"):
            problems.append(f"{name} line {line}: a ```python no-run block must start with a comment saying why "
                            "it does not run (it needs a trained model, the corpus, ...)")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_a_block_that_does_not_run_says_why(page):
    problems = _no_run_problems(page, _page_id(page))
    assert not problems, "\n".join(problems)


def _defined_names(path):
    """Every function, class and method defined in a Python file, as "f", "C" and "C.m"."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    names.add(f"{node.name}.{item.name}")
    return names


def _links(page):
    """(is image, text, target, line) of every markdown link outside code blocks."""
    text = page.read_text(encoding="utf-8")
    prose = _FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keep line numbers
    for m in _LINK.finditer(prose):
        yield m.group(1) == "!", m.group(2), m.group(3), prose[:m.start()].count("\n") + 1


def _link_problems(page, name):
    problems = []
    for is_image, text, target, line in _links(page):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a web address or an anchor on the same page
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve()
        where = f"{name} line {line}: [{text}]({target})"
        if not path.exists():
            problems.append(f"{where}: no such file")
            continue
        if is_image and path.stat().st_size > 200_000:
            problems.append(f"{where}: the image is {path.stat().st_size:,} bytes (keep it under 200 KB)")
        line_anchor = re.fullmatch(r"L(\d+)(?:-L(\d+))?", anchor)
        if line_anchor and path.is_file():
            n_lines = len(path.read_text(encoding="utf-8").splitlines())
            if int(line_anchor.group(2) or line_anchor.group(1)) > n_lines:
                problems.append(f"{where}: the file has only {n_lines} lines")
        code_name = _CODE_NAME.match(text)
        if code_name and path.suffix == ".py" and not code_name.group(1).endswith(".py"):
            if code_name.group(1) not in _defined_names(path):
                problems.append(f"{where}: {path_part} defines no {code_name.group(1)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=_page_id)
def test_the_links_of_a_page_lead_somewhere(page):
    problems = _link_problems(page, _page_id(page))
    assert not problems, "\n".join(problems)


def test_every_page_of_docs_is_in_the_reading_order():
    linked = {target.partition("#")[0] for _, _, target, _ in _links(DOCS / "README.md")}
    missing = [p.name for p in DOCS.glob("*.md") if p.name != "README.md" and p.name not in linked]
    assert "walkthrough.md" in linked
    assert not missing, f"docs/README.md does not link {missing}"


def test_the_checks_above_can_fail(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "m.py").write_text("class A:\n    def f(self):\n        pass\n")
    page.write_text("[`A.f`](m.py), [`A.g`](m.py), [x](missing.md), [y](m.py#L9)\n\n```python no-run\nprint(1)\n```\n")
    problems = _link_problems(page, "page.md")
    assert len(problems) == 3, problems
    assert "defines no A.g" in problems[0] and "no such file" in problems[1] and "only 3 lines" in problems[2]
    assert "must start with a comment" in _no_run_problems(page, "page.md")[0]
    page.write_text("```python\nassert 1 + 1 == 3, 'arithmetic'\n```\n")
    runnable, _ = _python_blocks(page)
    assert len(runnable) == 1
    with pytest.raises(AssertionError, match="arithmetic"):
        exec(compile(runnable[0][0], "page", "exec"), {})
