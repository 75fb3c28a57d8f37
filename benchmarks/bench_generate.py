"""Speed of greedy ``model.generate()`` with and without the KV cache, optionally against PyTorch;
and (``--gpt2``) the seed's GPT-2 example against Hugging Face transformers.

    python benchmarks/bench_generate.py                          # lengths 64, 256, 1024
    python benchmarks/bench_generate.py --json generate.json
    python benchmarks/bench_generate.py --max-uncached 256       # skip the slow uncached 1024 run
    python benchmarks/bench_generate.py --lengths 272 --batch-sizes 1 8 --max-uncached 0   # 256 new tokens
    python benchmarks/bench_generate.py --lengths 32 64 --repeats 1 --max-uncached 64   # smoke test
    python benchmarks/bench_generate.py --gpt2 [--gpt2-dir DIR] [--repeats 5]            # GPT-2 124M

``--gpt2``: see :func:`gpt2_main` (GPT-2 124M with random weights, tinyllm against transformers).

Model: vocab 65, 4 layers, 4 heads, 128 wide, block_size 1024 (or the longest length), float32;
batch 1 (or each of ``--batch-sizes``: one random prompt per row), a random prompt of 16 tokens,
greedy (``do_sample=False``). A length is the total, prompt + new tokens, and tokens/s counts the
new tokens of all rows over the whole ``generate`` call (prompt included). Cached and uncached
outputs must be identical (OK / MISMATCH).

PyTorch (when importable; otherwise skipped with a note): the same model (``_common.torch_gpt``,
loaded with tinyllm's weights) and the same greedy loop, with a preallocated KV cache as tinyllm's,
under ``torch.inference_mode()``. Greedy tokens of the two libraries are compared as a sanity
check only: with random weights the top two logits can be close enough for float rounding to
pick differently, so a divergence late in a long run is not by itself a bug.

Method: tinyllm and PyTorch each run in a fresh subprocess, alternating ``--repeats`` times (A B
A B ...), with the same ``--threads``. A worker first generates a few tokens both ways (warm-up:
numba compiles or loads its kernels), then per batch size and length runs cached and uncached
once; the report takes medians over the rounds. The PyTorch (and transformers) workers do not
import tinyllm, so they run without its process settings (kernels/systems/runtime.py).
"""
import argparse
import os
import sys
import tempfile
import time

# A tinyllm worker (and the parent) imports tinyllm first, before NumPy (see
# tinyllm/kernels/systems/runtime.py); the PyTorch and transformers workers do not import it at all.
_SIDE = sys.argv[sys.argv.index("--worker") + 1] if "--worker" in sys.argv[:-1] else None
if _SIDE not in ("torch", "hf"):
    import tinyllm  # noqa: F401
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

MODEL = dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128)
PROMPT_SEED = 0


def model_sizes(args):
    return dict(MODEL, block_size=max(1024, *args.lengths))


def prompt_ids(args, batch):
    """(batch, prompt_len) random ids, one prompt per row (row 0 is the batch-1 prompt)."""
    ids = C.random_tokens(MODEL["vocab_size"], args.prompt_len * batch, PROMPT_SEED)
    return ids.reshape(args.prompt_len, batch).T.copy()


def run_key(batch, length):
    return f"{batch}x{length}"


# --- what a worker subprocess runs ----------------------------------------------------------------

def time_lengths(generate, args):
    """{"BxL": {"cached_s", "cached_ids", "uncached_s", "uncached_ids"}} per batch size B and length
    L; ``generate(batch, new, use_cache)`` returns the ids (a list of lists). Lengths above
    --max-uncached run cached only."""
    for batch in args.batch_sizes:  # warm-up
        generate(batch, 4, True), generate(batch, 4, False)
    out = {}
    for batch in args.batch_sizes:
        for length in args.lengths:
            new = length - args.prompt_len
            modes = [True] + ([False] if args.max_uncached is None or length <= args.max_uncached else [])
            run = out[run_key(batch, length)] = {}
            for use_cache in modes:
                t0 = time.perf_counter()
                ids = generate(batch, new, use_cache)
                name = "cached" if use_cache else "uncached"
                run[f"{name}_s"], run[f"{name}_ids"] = time.perf_counter() - t0, ids
    return out


def tinyllm_worker(args):
    from tinyllm.models import GPT, GPTConfig

    tinyllm.set_num_threads(args.threads)
    model = GPT(GPTConfig(**model_sizes(args)), seed=0)
    if args.save_init:
        np.savez(args.save_init, **model.state_dict())

    def generate(batch, new, use_cache):
        return model.generate(prompt_ids(args, batch), max_new_tokens=new, do_sample=False,
                              use_cache=use_cache).tolist()

    return dict(library=f"tinyllm {tinyllm.__version__}", runs=time_lengths(generate, args),
                peak_rss_mb=C.peak_rss_mb())


def torch_worker(args):
    import torch

    torch.set_num_threads(args.threads)
    model = C.torch_gpt(**model_sizes(args), init_from=args.init_from).eval()

    @torch.inference_mode()
    def generate(batch, new, use_cache):
        prompt = torch.from_numpy(prompt_ids(args, batch))
        idx, cache, fed = prompt, (model.new_kv_cache(batch) if use_cache else None), 0
        for _ in range(new):
            logits, _ = model(idx[:, fed:], cache=cache, last_only=True)
            fed = idx.shape[1] if use_cache else 0
            idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
        return idx.tolist()

    return dict(library=f"torch {torch.__version__}", runs=time_lengths(generate, args), peak_rss_mb=C.peak_rss_mb())


# --- the parent -----------------------------------------------------------------------------------

def worker_args(args, side, **extra):
    argv = ["--worker", side, "--threads", args.threads, "--prompt-len", args.prompt_len, "--lengths", *args.lengths,
            "--batch-sizes", *args.batch_sizes]
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
            print(f"  round {r + 1}/{args.repeats}: {side} done (load average {os.getloadavg()[0]:.1f})",
                  file=sys.stderr, flush=True)
    return results


def first_difference(a, b):
    """Index of the first differing token, or None if equal."""
    diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return diff[0] if diff else (None if len(a) == len(b) else min(len(a), len(b)))


def summarize(rounds, args):
    """Per batch size and length: median seconds and tokens/s of both modes, the speedup and the
    output check."""
    out = {}
    for batch in args.batch_sizes:
        for length in args.lengths:
            key = run_key(batch, length)
            runs = [r["runs"][key] for r in rounds]
            new = length - args.prompt_len
            row = dict(batch=batch, length=length, new_tokens=new)
            for mode in ("cached", "uncached"):
                if f"{mode}_s" in runs[0]:
                    row[f"{mode}_s"] = C.median([r[f"{mode}_s"] for r in runs])
                    row[f"{mode}_tokens_per_s"] = batch * new / row[f"{mode}_s"]
            if "uncached_s" in row:
                row["speedup"] = row["uncached_s"] / row["cached_s"]
                row["outputs_identical"] = all(r["cached_ids"] == r["uncached_ids"] for r in runs)
            row["ids"] = runs[0]["cached_ids"]
            out[key] = row
    return dict(library=rounds[0]["library"], peak_rss_mb=max(r["peak_rss_mb"] for r in rounds), runs=out)


def check_cell(row):
    if "outputs_identical" not in row:
        return "skipped"
    return "OK" if row["outputs_identical"] else "MISMATCH"


def print_library_table(summary):
    print(f"\n{summary['library']} (peak RSS {summary['peak_rss_mb']:.0f} MiB)")
    rows = [[row["batch"], row["length"], row["new_tokens"], C.fmt(row.get("cached_tokens_per_s")),
             C.fmt(row.get("uncached_tokens_per_s")),
             C.fmt(row.get("speedup"), ".1f") + ("x" if "speedup" in row else ""), check_cell(row)]
            for row in summary["runs"].values()]
    C.print_table(["batch", "total length", "new", "cached tok/s", "uncached tok/s", "cached/uncached",
                   "cached == uncached"], rows)


def compare(ours, theirs, args):
    """tinyllm / torch tokens/s per batch size, length and mode, and where their greedy tokens first
    differ (in any row)."""
    rows, out = [], {}
    for key, a in ours["runs"].items():
        b = theirs["runs"][key]
        ratios = {mode: a[f"{mode}_tokens_per_s"] / b[f"{mode}_tokens_per_s"]
                  for mode in ("cached", "uncached") if f"{mode}_tokens_per_s" in a}
        diffs = [d for d in (first_difference(x, y) for x, y in zip(a["ids"], b["ids"])) if d is not None]
        diff = min(diffs) if diffs else None
        agree = "all" if diff is None else f"first {diff - args.prompt_len} of {a['new_tokens']}"
        rows.append([a["batch"], a["length"], C.fmt(b.get("cached_tokens_per_s")),
                     C.fmt(b.get("uncached_tokens_per_s")), C.fmt(ratios.get("cached"), ".2f"),
                     C.fmt(ratios.get("uncached"), ".2f"), agree])
        out[key] = dict(tokens_per_s_ratio=ratios, first_difference=diff)
    print(f"\nvs {theirs['library']} (peak RSS {theirs['peak_rss_mb']:.0f} MiB); ratio = tinyllm / torch tokens/s")
    C.print_table(["batch", "total length", "torch cached tok/s", "torch uncached tok/s", "ratio cached",
                   "ratio uncached", "greedy tokens agree"], rows)
    return out


# --- --gpt2: the seed's example, GPT-2 124M, against transformers ----------------------------------

GPT2_PROMPT_LEN, GPT2_MAX_LENGTH, GPT2_SAMPLE_BATCH, GPT2_TOP_P = 10, 50, 8, 0.9
GPT2_INNER = 3  # timed repeats of each measurement inside one worker (the median is kept)


def gpt2_prompt(batch, vocab_size=50257):
    return C.random_tokens(vocab_size, GPT2_PROMPT_LEN * batch, PROMPT_SEED).reshape(batch, GPT2_PROMPT_LEN)


def build_gpt2_dir(directory):
    """GPT-2 124M's shape with random weights (torch seed 0), saved by transformers itself."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval().save_pretrained(directory)


def streamed_bytes_per_token(config):
    """Bytes of weights one decoding step reads: the lm_head (= wte, V x C), every block
    (12 C^2 + 13 C: c_attn, c_proj, c_fc, mlp.c_proj with biases, two LayerNorms) and ln_f;
    not wpe, of which one row is read. float32."""
    c, layers, vocab = config["n_embd"], config["n_layer"], config["vocab_size"]
    return 4 * (vocab * c + layers * (12 * c * c + 13 * c) + 2 * c)


def bandwidth_worker(args):
    """GB/s of a float32 GEMV streaming GPT-2's embedding table (154 MB, far larger than the
    caches) in both layouts, x (1, 768) @ W (768, 50257) and W (50257, 768) @ x, by NumPy's
    OpenBLAS and by tinyllm's gemv: the best of them, each at its fastest pass, is the memory
    bandwidth a decoding step can use on this machine, now."""
    from tinyllm.kernels.gemv import gemv

    rng = np.random.default_rng(0)
    w = rng.standard_normal((768, 50257), dtype=np.float32)
    w_rows = np.ascontiguousarray(w.T)
    x = rng.standard_normal((1, 768), dtype=np.float32)
    best, best_cpu = {}, {}
    probes = (("OpenBLAS x @ W (768, 50257)", lambda: x @ w), ("OpenBLAS W (50257, 768) @ x", lambda: w_rows @ x[0]),
              ("tinyllm gemv, W (50257, 768)", lambda: gemv(x, w_rows)))
    for name, f in probes:
        f()
        times = [_timed(f)[1:] for _ in range(15)]  # (wall, cpu) per pass
        # the fastest pass: the least disturbed by other processes
        best[name] = w.nbytes / min(t[0] for t in times) / 1e9
        best_cpu[name] = w.nbytes / max(min(t[1] for t in times), 1e-9) / 1e9
    # The same rows-layout GEMV over a matrix of the model's size (4 x 154 MB). A token's decode
    # cycles through ~495 MB, of which the 32 MB L3 cache keeps next to nothing; passes over one
    # 154 MB matrix find part of it still cached from the pass before. Reported beside the
    # limit above, which stays the definition.
    del w, w_rows
    big = rng.standard_normal((4 * 50257, 768), dtype=np.float32)
    gemv(x, big)
    times = [_timed(gemv, x, big)[1:] for _ in range(5)]
    return dict(gbytes_per_s=max(best.values()), by_layout=best,
                cpu_gbytes_per_s=max(best_cpu.values()), cpu_by_layout=best_cpu,
                model_size_gbytes_per_s=big.nbytes / min(t[0] for t in times) / 1e9,
                model_size_cpu_gbytes_per_s=big.nbytes / max(min(t[1] for t in times), 1e-9) / 1e9)


def _timed(f, *args):
    """(result, wall seconds, CPU seconds of this process) of f(*args). On a loaded machine the
    wall time includes the time other processes held the core; the CPU time does not (with one
    thread it is the time the call really ran)."""
    t0, c0 = time.perf_counter(), time.process_time()
    result = f(*args)
    return result, time.perf_counter() - t0, time.process_time() - c0


def _gpt2_timings(load, greedy, sampled):
    """The figures one worker reports: from_pretrained seconds, generate(max_length=50) seconds and
    tokens, per-token decode seconds (the difference of max_length 50 and 11 over 39 tokens, which
    cancels the prompt's forward), batch-8 sampled seconds; medians of GPT2_INNER runs each, as
    wall time and as process CPU time (``*_cpu_s``)."""
    model, load_s, load_cpu_s = _timed(load)
    greedy(model, GPT2_PROMPT_LEN + 2), sampled(model, GPT2_PROMPT_LEN + 2)  # warm-up
    runs = {key: [] for key in ("full", "short", "batch")}
    for _ in range(GPT2_INNER):
        ids, *full = _timed(greedy, model, GPT2_MAX_LENGTH)
        _, *short = _timed(greedy, model, GPT2_PROMPT_LEN + 1)
        out, *batch = _timed(sampled, model, GPT2_MAX_LENGTH)
        for key, times in (("full", full), ("short", short), ("batch", batch)):
            runs[key].append(times)
    med = {key: [C.median([t[i] for t in runs[key]]) for i in (0, 1)] for key in runs}  # [wall, cpu]
    new = GPT2_MAX_LENGTH - GPT2_PROMPT_LEN
    return dict(load_s=load_s, load_cpu_s=load_cpu_s, ids=np.asarray(ids).tolist(),
                generate_s=med["full"][0], generate_cpu_s=med["full"][1],
                decode_s_per_token=(med["full"][0] - med["short"][0]) / (new - 1),
                decode_cpu_s_per_token=(med["full"][1] - med["short"][1]) / (new - 1),
                sampled_s=med["batch"][0], sampled_cpu_s=med["batch"][1],
                sampled_new_tokens=int(np.asarray(out).shape[1] - GPT2_PROMPT_LEN),
                peak_rss_mb=C.peak_rss_mb())


def hf_worker(args):
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()

    def load():
        model = transformers.AutoModelForCausalLM.from_pretrained(args.gpt2_dir).eval()
        model.generation_config.pad_token_id = model.generation_config.eos_token_id
        return model

    @torch.inference_mode()
    def greedy(model, max_length):  # the seed's call
        return model.generate(torch.from_numpy(gpt2_prompt(1)), max_length=max_length).numpy()

    @torch.inference_mode()
    def sampled(model, max_length):  # eos off (as in tinyllm's run) so every row runs to max_length
        torch.manual_seed(0)
        return model.generate(torch.from_numpy(gpt2_prompt(GPT2_SAMPLE_BATCH)), max_length=max_length,
                              do_sample=True, top_p=GPT2_TOP_P, top_k=0, eos_token_id=None).numpy()

    return dict(library=f"transformers {transformers.__version__} (torch {torch.__version__})",
                **_gpt2_timings(load, greedy, sampled))


def tinyllm_gpt2_worker(args):
    tinyllm.set_num_threads(args.threads)

    def greedy(model, max_length):  # the seed's call
        return model.generate(gpt2_prompt(1), max_length=max_length)

    def sampled(model, max_length):
        return model.generate(gpt2_prompt(GPT2_SAMPLE_BATCH), max_length=max_length, do_sample=True,
                              top_p=GPT2_TOP_P, top_k=None, eos_token_id=-1, seed=0)  # -1: no eos

    result = _gpt2_timings(lambda: tinyllm.AutoModelForCausalLM.from_pretrained(args.gpt2_dir), greedy, sampled)
    return dict(library=f"tinyllm {tinyllm.__version__}", **result)


def gpt2_rounds(args, env):
    """An untimed tinyllm run (numba's cache, the page cache), then --repeats rounds of
    bandwidth probe, transformers, tinyllm."""
    base = ["--gpt2", "--gpt2-dir", args.gpt2_dir, "--threads", args.threads]
    C.run_worker(__file__, base + ["--worker", "tinyllm"], env)
    results = {side: [] for side in ("bandwidth", "hf", "tinyllm")}
    for r in range(args.repeats):
        for side in results:
            result, _ = C.run_worker(__file__, base + ["--worker", side], env)
            result["load_average"] = os.getloadavg()[0]
            results[side].append(result)
            print(f"  round {r + 1}/{args.repeats}: {side} done (load average {result['load_average']:.1f})",
                  file=sys.stderr, flush=True)
    return results


def gpt2_summary(results):
    med = lambda side, key: C.median([r[key] for r in results[side]])  # noqa: E731
    config = C.read_json_config(os.path.join(results["config_dir"], "config.json"))
    bandwidth = med("bandwidth", "gbytes_per_s")
    limit_s = streamed_bytes_per_token(config) / (bandwidth * 1e9)
    cpu_bandwidth = med("bandwidth", "cpu_gbytes_per_s")
    cpu_limit_s = streamed_bytes_per_token(config) / (cpu_bandwidth * 1e9)
    out = dict(bandwidth_gbytes_per_s=bandwidth, streamed_mbytes_per_token=streamed_bytes_per_token(config) / 1e6,
               limit_ms_per_token=limit_s * 1e3, cpu_bandwidth_gbytes_per_s=cpu_bandwidth,
               cpu_limit_ms_per_token=cpu_limit_s * 1e3)
    if all("model_size_gbytes_per_s" in r for r in results["bandwidth"]):
        for key in ("model_size_gbytes_per_s", "model_size_cpu_gbytes_per_s"):
            out[key] = med("bandwidth", key)
        out["model_size_limit_ms_per_token"] = streamed_bytes_per_token(config) / out["model_size_gbytes_per_s"] / 1e6
        out["model_size_cpu_limit_ms_per_token"] = (streamed_bytes_per_token(config)
                                                    / out["model_size_cpu_gbytes_per_s"] / 1e6)
    for side in ("hf", "tinyllm"):
        out[side] = {k: med(side, k) for k in ("load_s", "generate_s", "decode_s_per_token", "sampled_s",
                                               "sampled_new_tokens", "peak_rss_mb", "load_cpu_s", "generate_cpu_s",
                                               "decode_cpu_s_per_token", "sampled_cpu_s")}
        out[side]["library"] = results[side][0]["library"]
        out[side]["sampled_tokens_per_s"] = GPT2_SAMPLE_BATCH * out[side]["sampled_new_tokens"] / out[side]["sampled_s"]
    hf, ours = out["hf"], out["tinyllm"]
    out["tokens_identical"] = all(a["ids"] == b["ids"] for a in results["hf"] for b in results["tinyllm"])
    out["generate_speedup"] = hf["generate_s"] / ours["generate_s"]
    out["decode_over_limit"] = ours["decode_s_per_token"] / limit_s
    out["sampled_ratio"] = ours["sampled_tokens_per_s"] / hf["sampled_tokens_per_s"]
    out["round_generate_speedups"] = [a["generate_s"] / b["generate_s"] for a, b in zip(results["hf"], results["tinyllm"])]
    if "model_size_limit_ms_per_token" in out:
        out["decode_over_model_size_limit"] = ours["decode_s_per_token"] * 1e3 / out["model_size_limit_ms_per_token"]
        out["cpu_decode_over_model_size_limit"] = (ours["decode_cpu_s_per_token"] * 1e3
                                                   / out["model_size_cpu_limit_ms_per_token"])
    out["cpu"] = dict(generate_speedup=hf["generate_cpu_s"] / ours["generate_cpu_s"],
                      decode_speedup=hf["decode_cpu_s_per_token"] / ours["decode_cpu_s_per_token"],
                      sampled_ratio=hf["sampled_cpu_s"] / ours["sampled_cpu_s"],
                      decode_over_limit=ours["decode_cpu_s_per_token"] / cpu_limit_s,
                      round_generate_speedups=[a["generate_cpu_s"] / b["generate_cpu_s"]
                                               for a, b in zip(results["hf"], results["tinyllm"])])
    return out


def print_gpt2(summary, args):
    s, hf, ours = summary, summary["hf"], summary["tinyllm"]
    print(f"GPT-2 124M shape, random weights (torch seed 0), {args.gpt2_dir}; prompt {GPT2_PROMPT_LEN} random ids; "
          f"{args.threads} threads; medians of {args.repeats} rounds x {GPT2_INNER} runs")
    print(f"{hf['library']}  vs  {ours['library']}\n")
    rows = [
        ["from_pretrained (s)", C.fmt(hf["load_s"], ".3f"), C.fmt(ours["load_s"], ".3f"),
         f"{hf['load_s'] / ours['load_s']:.1f}x", "tinyllm < 1 s"],
        [f"generate(max_length={GPT2_MAX_LENGTH}), greedy, batch 1 (s)", C.fmt(hf["generate_s"], ".3f"),
         C.fmt(ours["generate_s"], ".3f"), f"{s['generate_speedup']:.2f}x", ">= 1.5x"],
        ["per-token decode (ms)", C.fmt(hf["decode_s_per_token"] * 1e3), C.fmt(ours["decode_s_per_token"] * 1e3),
         f"{hf['decode_s_per_token'] / ours['decode_s_per_token']:.2f}x", ""],
        [f"batch {GPT2_SAMPLE_BATCH} sampled top-p {GPT2_TOP_P} (tokens/s)", C.fmt(hf["sampled_tokens_per_s"]),
         C.fmt(ours["sampled_tokens_per_s"]), f"{s['sampled_ratio']:.2f}x", ">= 1.0x"],
        ["peak RSS (MiB)", C.fmt(hf["peak_rss_mb"], ".0f"), C.fmt(ours["peak_rss_mb"], ".0f"), "", ""],
    ]
    C.print_table(["", "transformers", "tinyllm", "speed ratio", "target"], rows)
    cpu = s["cpu"]
    print(f"\nthe same as process CPU time (what each run really computed, whatever else held the cores; "
          f"comparable when --threads 1):")
    rows = [
        ["generate greedy (CPU s)", C.fmt(hf["generate_cpu_s"], ".3f"), C.fmt(ours["generate_cpu_s"], ".3f"),
         f"{cpu['generate_speedup']:.2f}x", ">= 1.5x"],
        ["per-token decode (CPU ms)", C.fmt(hf["decode_cpu_s_per_token"] * 1e3),
         C.fmt(ours["decode_cpu_s_per_token"] * 1e3), f"{cpu['decode_speedup']:.2f}x", ""],
        ["batch 8 sampled (CPU s)", C.fmt(hf["sampled_cpu_s"], ".3f"), C.fmt(ours["sampled_cpu_s"], ".3f"),
         f"{cpu['sampled_ratio']:.2f}x", ">= 1.0x"],
    ]
    C.print_table(["", "transformers", "tinyllm", "speed ratio", "target"], rows)
    print(f"\ngreedy tokens identical: {'yes' if s['tokens_identical'] else 'NO'}")
    print(f"bandwidth limit: {s['streamed_mbytes_per_token']:.0f} MB of weights per token at "
          f"{s['bandwidth_gbytes_per_s']:.1f} GB/s (best float32 GEMV over a 768 x 50257 matrix, OpenBLAS's or "
          f"tinyllm's, this run) = {s['limit_ms_per_token']:.1f} ms per token; tinyllm's decode is "
          f"{s['decode_over_limit']:.2f}x that in wall time (target <= 1.3)")
    print(f"  in CPU time: {s['cpu_bandwidth_gbytes_per_s']:.1f} GB/s = {s['cpu_limit_ms_per_token']:.1f} ms per token; "
          f"tinyllm's decode is {cpu['decode_over_limit']:.2f}x that, transformers' "
          f"{hf['decode_cpu_s_per_token'] * 1e3 / s['cpu_limit_ms_per_token']:.2f}x")
    if "model_size_limit_ms_per_token" in s:
        print(f"  over a working set of the model's size (one 618 MB matrix, which the L3 cache cannot hold): "
              f"{s['model_size_gbytes_per_s']:.1f} GB/s = {s['model_size_limit_ms_per_token']:.1f} ms per token "
              f"(decode {s['decode_over_model_size_limit']:.2f}x); CPU time {s['model_size_cpu_gbytes_per_s']:.1f} "
              f"GB/s = {s['model_size_cpu_limit_ms_per_token']:.1f} ms (decode {s['cpu_decode_over_model_size_limit']:.2f}x)")
    print("round by round, transformers / tinyllm generate time: "
          + " ".join(f"{r:.2f}" for r in s["round_generate_speedups"])
          + "  (CPU time: " + " ".join(f"{r:.2f}" for r in cpu["round_generate_speedups"]) + ")")


def gpt2_main(args):
    """``--gpt2``: the seed's example on GPT-2 124M (random weights of GPT-2's shape, built by
    transformers with torch seed 0 unless ``--gpt2-dir`` names a directory), tinyllm against
    transformers. Each round runs, in fresh processes: a bandwidth probe, transformers, tinyllm.
    A worker loads the model (timed: ``from_pretrained``, the file in the page cache), runs
    ``generate(input_ids, max_length=50)`` greedy on 10 prompt ids (tokens must be identical),
    the same with max_length 11 (the per-token decode time is the difference over 39 tokens),
    and batch 8 sampled with top-p 0.9, no top-k, no end-of-text stop (tokens/s)."""
    env = C.worker_env(args.threads)
    busy = C.busy_machine_note(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.gpt2_dir is None:
            args.gpt2_dir = os.path.join(tmp, "gpt2")
            print("building a random GPT-2 124M directory with transformers ...", file=sys.stderr, flush=True)
            C.run_worker(__file__, ["--gpt2", "--gpt2-dir", args.gpt2_dir, "--worker", "build"], env)
        results = gpt2_rounds(args, env)
        results["config_dir"] = args.gpt2_dir
        summary = gpt2_summary(results)
    print_gpt2(summary, args)
    loads = [r["load_average"] for side in ("hf", "tinyllm") for r in results[side]]
    print(f"load average (1 min) after each worker: {min(loads):.1f}..{max(loads):.1f}")
    if busy:
        print(busy)
    if args.json:
        C.write_json(args.json, dict(settings=vars(args), busy_machine=busy, summary=summary, rounds=results))


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
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1], help="batch sizes (default: 1)")
    p.add_argument("--gpt2", action="store_true", help="GPT-2 124M against transformers instead (see gpt2_main)")
    p.add_argument("--gpt2-dir", help="with --gpt2: a GPT-2 directory to use (default: build a random one)")
    p.add_argument("--worker", choices=["tinyllm", "torch", "hf", "bandwidth", "build"], help=argparse.SUPPRESS)
    p.add_argument("--save-init", help=argparse.SUPPRESS)
    p.add_argument("--init-from", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.prompt_len < 1 or min(args.lengths) <= args.prompt_len:
        p.error(f"need --prompt-len >= 1 and every length > --prompt-len, got {args.prompt_len} and {args.lengths}")
    if args.repeats < 1 or args.threads < 1 or min(args.batch_sizes) < 1:
        p.error("need --repeats >= 1, --threads >= 1 and batch sizes >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.gpt2 and args.worker:
        if args.worker == "build":
            return C.emit_result(dict(built=build_gpt2_dir(args.gpt2_dir) or args.gpt2_dir))
        workers = dict(bandwidth=bandwidth_worker, hf=hf_worker, tinyllm=tinyllm_gpt2_worker)
        return C.emit_result(workers[args.worker](args))
    if args.gpt2:
        return gpt2_main(args)
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
    print(f"greedy generate(), batch sizes {args.batch_sizes}, prompt {args.prompt_len} tokens, model "
          f"{model_sizes(args)}, float32; {args.threads} threads, median of {args.repeats} rounds")
    print_library_table(summaries["tinyllm"])
    comparison = compare(summaries["tinyllm"], summaries["torch"], args) if "torch" in sides else None
    if comparison is None:
        print(f"\nvs torch: {torch_note}")
    if "torch" in sides and any(check_cell(r) == "MISMATCH" for r in summaries["torch"]["runs"].values()):
        print("note: the torch reference's own cached and uncached outputs differ")
    if busy:
        print(busy)
    if args.json:
        C.write_json(args.json, dict(settings=vars(args), model=model_sizes(args), busy_machine=busy,
                                     summaries=summaries, vs_torch=comparison or torch_note, rounds=results))


if __name__ == "__main__":
    main()
