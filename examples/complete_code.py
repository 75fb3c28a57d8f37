"""Complete a line of code with a model trained by examples/train_code.py (greedy, until newline).

    python examples/complete_code.py --model-dir out-code --file my.py --line 42    # complete line 42
    python examples/complete_code.py --model-dir out-code --file my.py --line 42 --compare
    printf 'def add(a, b):\\n' | python examples/complete_code.py --model-dir out-code --max-lines 3

With --file, the model sees the file's text before line N (1-based, as editors count) and
prints what it would write on line N; --compare also prints the line the file really has.
Without --file, the prompt is read from stdin: if it ends with a newline the next line is
completed, otherwise the unfinished last line is continued.
"""
import argparse
import sys
from pathlib import Path

import tinyllm  # noqa: F401  (before NumPy: it sets process options NumPy reads at import)

from tinyllm import cli
from tinyllm.code_data import split_lines
from tinyllm.code_eval import complete_code
from tinyllm.models import GPT
from tinyllm.tokenizers import AutoTokenizer


def read_prompt(args):
    """(text before the cursor, the real line or None)."""
    if args.file is None:
        if args.line is not None:
            sys.exit("error: --line needs --file")
        return sys.stdin.read(), None
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        sys.exit(f"error: cannot read {args.file}: {e}")
    lines = split_lines(text)
    line = len(lines) + 1 if args.line is None else args.line
    if not 1 <= line <= len(lines) + 1:
        sys.exit(f"error: --line {line} is outside {args.file}, which has {len(lines)} lines "
                 f"(1..{len(lines) + 1}, the last one being a new line at the end)")
    if lines and line == len(lines) + 1 and not lines[-1].endswith("\n"):
        lines[-1] += "\n"  # a file without a final newline: line N+1 starts after one
    real = lines[line - 1].rstrip("\r\n") if line <= len(lines) else None
    return "".join(lines[:line - 1]), real


@cli.stops_on_ctrl_c
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=Path("out-code"))
    p.add_argument("--file", type=Path, default=None, help="a source file (default: read the prompt from stdin)")
    p.add_argument("--line", type=int, default=None, help="the line to complete, 1-based (default: after the last)")
    p.add_argument("--max-lines", type=int, default=1, help="how many lines to write")
    p.add_argument("--max-line-tokens", type=int, default=64)
    p.add_argument("--compare", action="store_true", help="also print the line the file really has")
    args = p.parse_args(argv)

    if not (args.model_dir / "config.json").is_file():
        sys.exit(f"error: {args.model_dir} holds no saved model (config.json); train one with "
                 "`python examples/train_code.py --out-dir DIR`, or pass --model-dir")
    try:  # (a model of another kind, or a broken file: the message names it)
        model = GPT.from_pretrained(args.model_dir)
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    prefix, real = read_prompt(args)
    try:
        completion = complete_code(model, tokenizer, prefix, max_lines=args.max_lines,
                                   max_line_tokens=args.max_line_tokens)
    except ValueError as e:
        sys.exit(f"error: {e}")
    print(completion)
    if args.compare and real is not None:
        print(f"--- line {args.line} of {args.file} really is:\n{real}")


if __name__ == "__main__":
    main()
