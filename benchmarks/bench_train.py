"""Speed of a full GPT training step through tinyllm's public API, optionally side by side with PyTorch.

    python benchmarks/bench_train.py                              # small config, tinyllm alone
    python benchmarks/bench_train.py --vs-torch                   # and the same model in PyTorch
    python benchmarks/bench_train.py --config large --vs-torch --json train-large.json
    python benchmarks/bench_train.py --cold-start                 # also: start -> first step, empty/warm numba cache
    python benchmarks/bench_train.py --steps 3 --warmup 1 --repeats 1 --vs-torch --cold-start   # smoke test

A step is forward, backward, ``clip_grad_norm(params, 1.0)`` and AdamW (lr 1e-3, betas (0.9, 0.99),
weight decay 0.1 on the 2-D parameters only, as ``tinyllm.training.configure_optimizer``), on
batches of random token ids (``tinyllm.data.get_batch``), float32.

Configs: small = nanoGPT's shakespeare-char CPU recipe (vocab 65, 4 layers, 4 heads, 128 wide,
block 64, batch 12); large = 6 layers, 6 heads, 384 wide, block 256, batch 64.

Method. Each measurement is a fresh subprocess: a matmul-peak probe, then tinyllm, then (with
``--vs-torch``) PyTorch, and this round repeats ``--repeats`` times (A B A B ...), so a load spike
from another process hits both libraries and neither warms the other's caches or threads. (An
untimed tinyllm run before the rounds fills numba's on-disk cache.) A worker runs ``--warmup``
steps, then ``--steps`` timed steps. Reported: the median over all timed steps of all rounds, the
range of the per-round medians, and each tinyllm round's speed against the PyTorch round right
after it (their spread is the noise in the headline ratio). Both sides use ``--threads`` threads (default: all cores) and start
from the same weights and batches, so their first losses must agree (a check that the PyTorch
model really is the same model).

* tokens/s = batch * block / median step time.
* model FLOPs per token = 6 N + 12 n_layer n_head head_dim T (nanoGPT's / PaLM's estimate for
  forward + backward; N = parameters without the position embedding; the attention term counts
  the full T x T scores, not the causal half). MFU = achieved model FLOP/s / matmul peak, where the
  peak is the median GFLOP/s of a float32 1024 x 1024 @ 1024 x 1024 ``np.matmul`` measured in this
  run, on this machine, with the same threads.
* peak RSS = ``ru_maxrss`` of the worker process: it includes the Python runtime, NumPy and
  numba/LLVM (tinyllm) or libtorch (PyTorch), not just the model.

``--cold-start`` times process start -> end of the first training step in a subprocess whose
NUMBA_CACHE_DIR is a fresh empty directory (every kernel compiles): once with compiling ahead
off (``TINYLLM_COMPILE_WORKERS=0``: each kernel compiles in the process on its first call) and
once on (the default: the step's kernels compile in parallel worker processes), then again with
the now filled directory (warm: kernels load from disk; the target is under 3 s). Python's own
.pyc files are warm in all.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

import tinyllm  # noqa: F401  (first: it sets OPENBLAS_THREAD_TIMEOUT before NumPy loads OpenBLAS)
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

CONFIGS = {
    "small": dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
    "large": dict(vocab_size=65, n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64),
}
DEFAULT_STEPS = {"small": 30, "large": 10}
LR, BETAS, WEIGHT_DECAY, CLIP = 1e-3, (0.9, 0.99), 0.1, 1.0
DATA_TOKENS, DATA_SEED, BATCH_SEED = 100_000, 0, 1
WARM_START_TARGET_S = 3.0


def model_sizes(cfg):
    return {k: cfg[k] for k in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size")}


# --- what a worker subprocess runs ----------------------------------------------------------------

def time_steps(step, next_batch, warmup, steps):
    """Run ``warmup`` + ``steps`` training steps; per-step seconds of the timed ones, all losses,
    and the monotonic time at which the very first step ended."""
    times, losses, first_step_end = [], [], None
    for i in range(warmup + steps):
        x, y = next_batch()
        t0 = time.perf_counter()
        losses.append(step(x, y))
        elapsed = time.perf_counter() - t0
        if first_step_end is None:
            first_step_end = time.monotonic()
        if i >= warmup:
            times.append(elapsed)
    return times, losses, first_step_end


def tinyllm_worker(args, cfg):
    from tinyllm.data import get_batch
    from tinyllm.models import GPT, GPTConfig
    from tinyllm.optim import clip_grad_norm
    from tinyllm.training import TrainConfig, configure_optimizer

    imported = time.monotonic()
    tinyllm.set_num_threads(args.threads)
    model = GPT(GPTConfig(**model_sizes(cfg)), seed=0)
    optimizer = configure_optimizer(model, TrainConfig(learning_rate=LR, beta1=BETAS[0], beta2=BETAS[1],
                                                       weight_decay=WEIGHT_DECAY, grad_clip=CLIP))
    params = model.parameters()
    if args.save_init:
        np.savez(args.save_init, **model.state_dict())
    data, rng = C.random_tokens(cfg["vocab_size"], DATA_TOKENS, DATA_SEED), np.random.default_rng(BATCH_SEED)
    built = time.monotonic()

    def step(x, y):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm(params, CLIP)
        optimizer.step()
        return loss.item()

    times, losses, first_step_end = time_steps(
        step, lambda: get_batch(data, cfg["batch_size"], cfg["block_size"], rng), args.warmup, args.steps)
    return dict(library=f"tinyllm {tinyllm.__version__}", step_s=times, losses=losses,
                n_params=model.num_parameters(), n_params_non_embedding=model.num_parameters(non_embedding=True),
                imported_at=imported, built_at=built, first_step_end_at=first_step_end, peak_rss_mb=C.peak_rss_mb())


def torch_worker(args, cfg):
    import torch

    torch.set_num_threads(args.threads)
    model = C.torch_gpt(**model_sizes(cfg), init_from=args.init_from)
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": WEIGHT_DECAY},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LR, betas=BETAS)  # PyTorch's default implementation
    data, rng = C.random_tokens(cfg["vocab_size"], DATA_TOKENS, DATA_SEED), np.random.default_rng(BATCH_SEED)

    def next_batch():
        x, y = C.random_batch(data, cfg["batch_size"], cfg["block_size"], rng)
        return torch.from_numpy(x), torch.from_numpy(y)

    def step(x, y):
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        optimizer.step()
        return loss.item()

    times, losses, _ = time_steps(step, next_batch, args.warmup, args.steps)
    return dict(library=f"torch {torch.__version__}", step_s=times, losses=losses,
                n_params=sum(p.numel() for p in params), peak_rss_mb=C.peak_rss_mb())


def run_as_worker(args):
    cfg = CONFIGS[args.config]
    if args.worker == "peak":
        result = dict(matmul_gflops=C.matmul_peak_gflops())
    elif args.worker == "tinyllm":
        result = tinyllm_worker(args, cfg)
    else:
        result = torch_worker(args, cfg)
    C.emit_result(result)


# --- the parent: rounds, summary, report ----------------------------------------------------------

def worker_args(args, side, steps, warmup, **extra):
    argv = ["--worker", side, "--config", args.config, "--steps", steps, "--warmup", warmup, "--threads", args.threads]
    for name, value in extra.items():
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", value]
    return argv


def run_rounds(args, env, sides, init_path):
    """Alternate peak probe / tinyllm / torch workers ``args.repeats`` times; their results per side.

    An untimed tinyllm run first fills numba's on-disk cache (so no round pays for compiling, nor
    counts the compiler in its peak RSS) and saves the initial weights the torch side loads.
    """
    C.run_worker(__file__, worker_args(args, "tinyllm", 1, 0, save_init=init_path), env)
    results = {side: [] for side in ("peak", *sides)}
    for r in range(args.repeats):
        for side in results:
            extra = dict(init_from=init_path) if side == "torch" else {}
            result, _ = C.run_worker(__file__, worker_args(args, side, args.steps, args.warmup, **extra), env)
            results[side].append(result)
            print(f"  round {r + 1}/{args.repeats}: {side} done", file=sys.stderr, flush=True)
    return results


def flops_per_step(cfg, n_params_non_embedding):
    """6 N + 12 n_layer n_head head_dim T per token (n_head head_dim = n_embd), times B T tokens."""
    per_token = 6 * n_params_non_embedding + 12 * cfg["n_layer"] * cfg["n_embd"] * cfg["block_size"]
    return per_token * cfg["batch_size"] * cfg["block_size"]


def summarize(rounds, cfg, step_flops, peak_gflops):
    """Medians and derived figures of one library's rounds."""
    all_steps = [t for r in rounds for t in r["step_s"]]
    step_s = C.median(all_steps)
    flops_per_s = step_flops / step_s
    round_ms = [C.median(r["step_s"]) * 1e3 for r in rounds]
    return dict(library=rounds[0]["library"], ms_per_step=step_s * 1e3,
                tokens_per_s=cfg["batch_size"] * cfg["block_size"] / step_s,
                gflops_per_s=flops_per_s / 1e9, mfu=flops_per_s / (peak_gflops * 1e9),
                round_median_ms=round_ms, peak_rss_mb=max(r["peak_rss_mb"] for r in rounds),
                first_loss=rounds[0]["losses"][0], n_params=rounds[0]["n_params"], timed_steps=len(all_steps))


def print_speed_table(summaries):
    rows = []
    for s in summaries:
        spread = f"{min(s['round_median_ms']):.1f}..{max(s['round_median_ms']):.1f}"
        rows.append([s["library"], C.fmt(s["ms_per_step"]), C.fmt(s["tokens_per_s"], ".0f"), C.fmt(s["gflops_per_s"]),
                     f"{100 * s['mfu']:.1f}%", C.fmt(s["peak_rss_mb"], ".0f"), spread, C.fmt(s["first_loss"], ".5f")])
    C.print_table(["library", "ms/step", "tokens/s", "GFLOP/s", "MFU", "peak RSS MiB", "round medians ms",
                   "first loss"], rows)


def print_header(args, cfg, worker, step_flops, peak_gflops):
    c = cfg
    print(f"training step, config {args.config}: vocab {c['vocab_size']}, {c['n_layer']} layers, {c['n_head']} heads, "
          f"{c['n_embd']} wide, block {c['block_size']}, batch {c['batch_size']} "
          f"({c['batch_size'] * c['block_size']} tokens/step), float32")
    n_all, n_flops = worker["n_params"] / 1e6, worker["n_params_non_embedding"] / 1e6
    print(f"{n_all:.3f}M parameters (N = {n_flops:.3f}M without wpe); "
          f"model FLOPs/step {step_flops / 1e9:.2f} G (6N + 12 L H hd T per token)")
    print(f"{args.threads} threads; {args.warmup} warm-up + {args.steps} timed steps per round, {args.repeats} rounds; "
          f"matmul peak {peak_gflops:.1f} GFLOP/s (float32 1024^3 np.matmul, median of rounds)\n")


def compare(summaries, torch_note):
    """The ratio line and the loss check; returns the JSON-able comparison."""
    if len(summaries) < 2:
        print(f"\nvs torch: {torch_note}")
        return dict(skipped=torch_note)
    ours, theirs = summaries
    ratio = ours["tokens_per_s"] / theirs["tokens_per_s"]
    loss_diff = abs(ours["first_loss"] - theirs["first_loss"])
    same_model = ours["n_params"] == theirs["n_params"] and loss_diff < 1e-4
    # each tinyllm round against the torch round that ran right after it: a machine whose speed
    # drifts between rounds moves both members of a pair, so these show the noise the headline
    # ratio (of the medians over all rounds) carries
    pairs = [theirs_ms / ours_ms for ours_ms, theirs_ms in zip(ours["round_median_ms"], theirs["round_median_ms"])]
    wins = sum(p > 1 for p in pairs)
    print(f"\ntinyllm / torch tokens/s: {ratio:.2f}x   (torch is {1 / ratio:.2f}x the speed of tinyllm)")
    print(f"round by round (each tinyllm round against the torch round after it): {min(pairs):.2f}x..{max(pairs):.2f}x, "
          f"median {C.median(pairs):.2f}x; tinyllm faster in {wins} of {len(pairs)}")
    print(f"same model check: parameters {ours['n_params']} vs {theirs['n_params']}, first-loss difference "
          f"{loss_diff:.1e} -> {'OK' if same_model else 'MISMATCH'}")
    return dict(tokens_per_s_ratio=ratio, round_ratios=pairs, median_round_ratio=C.median(pairs),
                rounds_tinyllm_faster=wins, first_loss_abs_diff=loss_diff, same_model=same_model)


# --- cold start -----------------------------------------------------------------------------------

def time_first_step(args, env):
    """Seconds from spawn to: imports done, model built, first training step done."""
    result, spawned = C.run_worker(__file__, worker_args(args, "tinyllm", 1, 0), env)
    return dict(import_s=result["imported_at"] - spawned, build_s=result["built_at"] - result["imported_at"],
                first_step_s=result["first_step_end_at"] - result["built_at"],
                total_s=result["first_step_end_at"] - spawned)


def cold_start(args):
    """Process start -> end of first step: with an empty numba cache, compiling ahead off (every
    kernel compiles on first call, in the process; the reference) and on (the default: the step's
    kernels compile in one worker process per core, kernels/systems/precompile.py), each in its
    own empty cache; then warm, from the filled one."""
    cold = {}
    for mode, workers in (("off", "0"), ("on", None)):
        cache_dir = tempfile.mkdtemp(prefix="tinyllm-numba-cache-")
        try:
            env = C.worker_env(args.threads, NUMBA_CACHE_DIR=cache_dir)
            env.pop("TINYLLM_COMPILE_WORKERS", None)
            if workers is not None:
                env["TINYLLM_COMPILE_WORKERS"] = workers
            cold[mode] = time_first_step(args, env)
            if mode == "on":
                warm_runs = [time_first_step(args, env) for _ in range(args.repeats)]
        finally:
            shutil.rmtree(cache_dir, ignore_errors=True)
    warm = {k: C.median([w[k] for w in warm_runs]) for k in warm_runs[0]}
    ok = warm["total_s"] < WARM_START_TARGET_S
    print(f"\ncold start, config {args.config}: seconds from process start (median of {args.repeats} warm runs)")
    C.print_table(["numba cache", "start+import", "build model", "first step", "total"],
                  [[name, *(C.fmt(d[k], ".2f") for k in ("import_s", "build_s", "first_step_s", "total_s"))]
                   for name, d in (("empty, compile ahead off", cold["off"]), ("empty, compile ahead on", cold["on"]),
                                   ("warm (from disk)", warm))])
    print(f"cold start on / off: {cold['on']['total_s'] / cold['off']['total_s']:.2f} (wall time; "
          "benchmarks/profile_cold_start.py gives CPU times and the compilations)")
    verdict = "OK, under" if ok else "OVER"
    print(f"warm start to first step {warm['total_s']:.2f} s: {verdict} the {WARM_START_TARGET_S:.0f} s target")
    return dict(cold=cold["on"], cold_compile_ahead_off=cold["off"], warm=warm, warm_runs=warm_runs,
                warm_target_s=WARM_START_TARGET_S, warm_ok=ok)


# --- main -----------------------------------------------------------------------------------------

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="small")
    p.add_argument("--steps", type=int, help="timed steps per round (default 30 small, 10 large)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--repeats", type=int, default=9,
                   help="alternating rounds (default 9: on a machine whose speed drifts, fewer rounds "
                        "make the ratio a matter of which library drew the quiet minutes)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for both libraries (default: all cores)")
    p.add_argument("--vs-torch", action="store_true", help="also time the same model in PyTorch")
    p.add_argument("--cold-start", action="store_true",
                   help="also time start -> first step, empty and warm numba cache")
    p.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    p.add_argument("--worker", choices=["tinyllm", "torch", "peak"], help=argparse.SUPPRESS)
    p.add_argument("--save-init", help=argparse.SUPPRESS)
    p.add_argument("--init-from", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = DEFAULT_STEPS[args.config]
    if args.steps < 1 or args.warmup < 0 or args.repeats < 1 or args.threads < 1:
        p.error("need --steps >= 1, --warmup >= 0, --repeats >= 1, --threads >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return run_as_worker(args)
    cfg = CONFIGS[args.config]
    env = C.worker_env(args.threads)
    busy = C.busy_machine_note(args.threads)
    sides, torch_note = ["tinyllm"], "not requested (--vs-torch)"
    if args.vs_torch:
        ok, info = C.torch_importable(env)
        sides, torch_note = (sides + ["torch"], info) if ok else (sides, f"skipped, torch is not importable: {info}")
    with tempfile.TemporaryDirectory() as tmp:
        results = run_rounds(args, env, sides, os.path.join(tmp, "init.npz"))
    peak = C.median([r["matmul_gflops"] for r in results["peak"]])
    step_flops = flops_per_step(cfg, results["tinyllm"][0]["n_params_non_embedding"])
    summaries = [summarize(results[side], cfg, step_flops, peak) for side in sides]
    print_header(args, cfg, results["tinyllm"][0], step_flops, peak)
    print_speed_table(summaries)
    comparison = compare(summaries, torch_note)
    if busy:
        print(busy)
    cold = cold_start(args) if args.cold_start else None
    if args.json:
        C.write_json(args.json, dict(config=args.config, model=cfg, settings=vars(args), busy_machine=busy,
                                     matmul_peak_gflops=peak, model_flops_per_step=step_flops,
                                     summaries=summaries, vs_torch=comparison,
                                     cold_start=cold, rounds=results))


if __name__ == "__main__":
    main()
