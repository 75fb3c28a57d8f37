"""Speed of greedy ``model.generate()`` with and without the KV cache, optionally against PyTorch.

    python benchmarks/bench_generate.py                          # lengths 64, 256, 1024
    python benchmarks/bench_generate.py --json generate.json
    python benchmarks/bench_generate.py --max-uncached 256       # skip the slow uncached 1024 run
    python benchmarks/bench_generate.py --lengths 32 64 --repeats 1 --max-uncached 64   # smoke test

Model: vocab 65, 4 layers, 4 heads, 128 wide, block_size 1024 (or the longest length), float32;
batch 1, a random prompt of 16 tokens, greedy (``do_sample=False``). A length is the total,
prompt + new tokens, and tokens/s counts the new tokens over the whole ``generate`` call
(prompt included). Cached and uncached outputs must be identical (OK / MISMATCH).

PyTorch (when importable; otherwise skipped with a note): the same model (``_common.torch_gpt``,
loaded with tinyllm's weights) and the same greedy loop, with a preallocated KV cache as tinyllm's,
under ``torch.inference_mode()``. Greedy tokens of the two libraries are compared as a sanity
check only: with random weights the top two logits can be close enough for float rounding to
pick differently, so a divergence late in a long run is not by itself a bug.

Method: tinyllm and PyTorch each run in a fresh subprocess, alternating ``--repeats`` times (A B
A B ...), with the same ``--threads``. A worker first generates a few tokens both ways (warm-up:
numba compiles or loads its kernels), then per length runs cached and uncached once; the report
takes medians over the rounds.
"""
import argparse
import os
import sys
import tempfile
import time

import tinyllm  # noqa: F401  (before NumPy: see tinyllm/kernels/systems/runtime.py)
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

MODEL = dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128)
PROMPT_SEED = 0


def model_sizes(args):
    return dict(MODEL, block_size=max(1024, *args.lengths))


def prompt_ids(args):
    return C.random_tokens(MODEL["vocab_size"], args.prompt_len, PROMPT_SEED)[None, :]  # (1, prompt_len)


# --- what a worker subprocess runs ----------------------------------------------------------------

def time_lengths(generate, args):
    """{length: {"cached_s", "cached_ids", "uncached_s", "uncached_ids"}}; ``generate(new, use_cache)``
    returns the ids (a list). Lengths above --max-uncached run cached only."""
    generate(4, True), generate(4, False)  # warm-up
    out = {}
    for length in args.lengths:
        new = length - args.prompt_len
        modes = [True] + ([False] if args.max_uncached is None or length <= args.max_uncached else [])
        out[length] = {}
        for use_cache in modes:
            t0 = time.perf_counter()
            ids = generate(new, use_cache)
            name = "cached" if use_cache else "uncached"
            out[length][f"{name}_s"], out[length][f"{name}_ids"] = time.perf_counter() - t0, ids
    return out


def tinyllm_worker(args):
    from tinyllm.models import GPT, GPTConfig

    tinyllm.set_num_threads(args.threads)
    model = GPT(GPTConfig(**model_sizes(args)), seed=0)
    if args.save_init:
        np.savez(args.save_init, **model.state_dict())
    prompt = prompt_ids(args)

    def generate(new, use_cache):
        return model.generate(prompt, max_new_tokens=new, do_sample=False, use_cache=use_cache)[0].tolist()

    return dict(library=f"tinyllm {tinyllm.__version__}", runs=time_lengths(generate, args),
                peak_rss_mb=C.peak_rss_mb())


def torch_worker(args):
    import torch

    torch.set_num_threads(args.threads)
    model = C.torch_gpt(**model_sizes(args), init_from=args.init_from).eval()
    prompt = torch.from_numpy(prompt_ids(args))

    @torch.inference_mode()
    def generate(new, use_cache):
        idx, cache, fed = prompt, (model.new_kv_cache(1) if use_cache else None), 0
        for _ in range(new):
            logits, _ = model(idx[:, fed:], cache=cache, last_only=True)
            fed = idx.shape[1] if use_cache else 0
            idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
        return idx[0].tolist()

    return dict(library=f"torch {torch.__version__}", runs=time_lengths(generate, args), peak_rss_mb=C.peak_rss_mb())


# --- the parent -----------------------------------------------------------------------------------

def worker_args(args, side, **extra):
    argv = ["--worker", side, "--threads", args.threads, "--prompt-len", args.prompt_len, "--lengths", *args.lengths]
    if args.max_uncached is not None:
        argv += ["--max-uncached", args.max_uncached]
    for name, value in extra.items():
        argv += [f"--{name.replace('_', '-')}", value]
    return argv


def run_rounds(args, env, sides, init_path):
    results = {side: [] for side in sides}
    for r in range(args.repeats):
        for side in sides:
            extra = dict(save_init=init_path) if side == "tinyllm" and r == 0 else {}
            if side == "torch":
                extra = dict(init_from=init_path)
            result, _ = C.run_worker(__file__, worker_args(args, side, **extra), env)
            results[side].append(result)
            print(f"  round {r + 1}/{args.repeats}: {side} done", file=sys.stderr, flush=True)
    return results


def first_difference(a, b):
    """Index of the first differing token, or None if equal."""
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return diff[0] if diff else (None if len(a) == len(b) else min(len(a), len(b)))


def summarize(rounds, args):
    """Per length: median seconds and tokens/s of both modes, the speedup and the output check."""
    out = {}
    for length in args.lengths:
        runs = [r["runs"][str(length)] for r in rounds]  # JSON turned the keys into strings
        new = length - args.prompt_len
        row = dict(new_tokens=new)
        for mode in ("cached", "uncached"):
            if f"{mode}_s" in runs[0]:
                row[f"{mode}_s"] = C.median([r[f"{mode}_s"] for r in runs])
                row[f"{mode}_tokens_per_s"] = new / row[f"{mode}_s"]
        if "uncached_s" in row:
            row["speedup"] = row["uncached_s"] / row["cached_s"]
            row["outputs_identical"] = all(r["cached_ids"] == r["uncached_ids"] for r in runs)
        row["ids"] = runs[0]["cached_ids"]
        out[length] = row
    return dict(library=rounds[0]["library"], peak_rss_mb=max(r["peak_rss_mb"] for r in rounds), lengths=out)


def check_cell(row):
    if "outputs_identical" not in row:
        return "skipped"
    return "OK" if row["outputs_identical"] else "MISMATCH"


def print_library_table(summary):
    print(f"\n{summary['library']} (peak RSS {summary['peak_rss_mb']:.0f} MiB)")
    rows = [[length, row["new_tokens"], C.fmt(row.get("cached_tokens_per_s")), C.fmt(row.get("uncached_tokens_per_s")),
             C.fmt(row.get("speedup"), ".1f") + ("x" if "speedup" in row else ""), check_cell(row)]
            for length, row in summary["lengths"].items()]
    C.print_table(["total length", "new", "cached tok/s", "uncached tok/s", "cached/uncached", "cached == uncached"],
                  rows)


def compare(ours, theirs, args):
    """tinyllm / torch tokens/s per length and mode, and where their greedy tokens first differ."""
    rows, out = [], {}
    for length in args.lengths:
        a, b = ours["lengths"][length], theirs["lengths"][length]
        ratios = {mode: a[f"{mode}_tokens_per_s"] / b[f"{mode}_tokens_per_s"]
                  for mode in ("cached", "uncached") if f"{mode}_tokens_per_s" in a}
        diff = first_difference(a["ids"], b["ids"])
        agree = "all" if diff is None else f"first {diff - args.prompt_len} of {a['new_tokens']}"
        rows.append([length, C.fmt(b.get("cached_tokens_per_s")), C.fmt(b.get("uncached_tokens_per_s")),
                     C.fmt(ratios.get("cached"), ".2f"), C.fmt(ratios.get("uncached"), ".2f"), agree])
        out[length] = dict(tokens_per_s_ratio=ratios, first_difference=diff)
    print(f"\nvs {theirs['library']} (peak RSS {theirs['peak_rss_mb']:.0f} MiB); ratio = tinyllm / torch tokens/s")
    C.print_table(["total length", "torch cached tok/s", "torch uncached tok/s", "ratio cached", "ratio uncached",
                   "greedy tokens agree"], rows)
    return out


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024], help="total lengths (prompt + new)")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--max-uncached", type=int, metavar="LEN",
                   help="run the uncached generation only for lengths <= LEN (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both libraries (default: all)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    p.add_argument("--worker", choices=["tinyllm", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--save-init", help=argparse.SUPPRESS)
    p.add_argument("--init-from", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.prompt_len < 1 or min(args.lengths) <= args.prompt_len:
        p.error(f"need --prompt-len >= 1 and every length > --prompt-len, got {args.prompt_len} and {args.lengths}")
    if args.repeats < 1 or args.threads < 1:
        p.error("need --repeats >= 1 and --threads >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return C.emit_result(tinyllm_worker(args) if args.worker == "tinyllm" else torch_worker(args))
    env = C.worker_env(args.threads)
    busy = C.busy_machine_note(args.threads)
    sides, torch_note = ["tinyllm"], "skipped (--no-torch)"
    if not args.no_torch:
        ok, info = C.torch_importable(env)
        sides, torch_note = (sides + ["torch"], info) if ok else (sides, f"skipped, torch is not importable: {info}")
    with tempfile.TemporaryDirectory() as tmp:
        results = run_rounds(args, env, sides, os.path.join(tmp, "init.npz"))
    summaries = {side: summarize(results[side], args) for side in sides}
    print(f"greedy generate(), batch 1, prompt {args.prompt_len} tokens, model {model_sizes(args)}, float32; "
          f"{args.threads} threads, median of {args.repeats} rounds")
    print_library_table(summaries["tinyllm"])
    comparison = compare(summaries["tinyllm"], summaries["torch"], args) if "torch" in sides else None
    if comparison is None:
        print(f"\nvs torch: {torch_note}")
    if "torch" in sides and any(check_cell(r) == "MISMATCH" for r in summaries["torch"]["lengths"].values()):
        print("note: the torch reference's own cached and uncached outputs differ")
    if busy:
        print(busy)
    if args.json:
        C.write_json(args.json, dict(settings=vars(args), model=model_sizes(args), busy_machine=busy,
                                     summaries=summaries, vs_torch=comparison or torch_note, rounds=results))


if __name__ == "__main__":
    main()
