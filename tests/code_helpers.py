"""A generated folder of code and a seconds-long run of examples/train_code.py on it, for
tests/test_code_*.py (no corpus, no network)."""
import importlib.util
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# A model, tokenizer and evaluation small enough to train and score in a few seconds.
TINY = ["--vocab-size", "300", "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "32",
        "--batch-size", "4", "--max-iters", "6", "--eval-interval", "3", "--eval-iters", "2", "--warmup-iters", "2",
        "--sample-tokens", "8", "--eval-lines", "12", "--max-line-tokens", "8", "--prompt-reserve", "8",
        "--ngram-order", "3", "--no-progress"]


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def module_source(i):
    body = "".join(f"    total = total + x * {j}\n" for j in range(i % 4 + 2))
    return (f'"""Module {i}."""\n\n\ndef f{i}(x):\n    """Scale x."""\n    total = 0\n{body}'
            f"    return total\n\n\nclass C{i}:\n    def get(self):\n        return {i}\n")


def make_repo(root, n_files=12):
    """``n_files`` small modules in three packages, plus what the corpus must leave out: a test
    directory, a binary file and a Latin-1 file (skipped and counted)."""
    for i in range(n_files):
        path = root / f"pkg{i % 3}" / f"mod{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(module_source(i), encoding="utf-8")
    (root / "tests").mkdir()
    (root / "tests" / "test_all.py").write_text("def test():\n    assert True\n")
    (root / "blob.py").write_bytes(b"\x00\x01binary")
    (root / "latin.py").write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    return root


def with_option(args, flag, value):
    """``args`` with ``flag``'s value replaced."""
    args = list(args)
    args[args.index(flag) + 1] = str(value)
    return args
