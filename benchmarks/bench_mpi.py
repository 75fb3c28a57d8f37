"""Data parallelism on one machine: 1 process x N threads against N MPI ranks x 1 thread each.

    python benchmarks/bench_mpi.py                                  # small and large configs, 2 ranks
    python benchmarks/bench_mpi.py --config small --repeats 5 --json mpi-small.json
    python benchmarks/bench_mpi.py --steps 3 --warmup 1 --repeats 1 # smoke test

Both sides run the same training step of tinyllm.training.Trainer (forward, backward, the
all-reduce when there are ranks, clipping, AdamW) on the same global batch of random token ids,
from the same weights (so their first losses must agree): the configs and the batch are
bench_train.py's (small: nanoGPT's shakespeare-char recipe, batch 12 x block 64; large: 6 layers,
384 wide, batch 64 x block 256).

* ``1 proc x N thr``: ``python`` with N threads for numba and OpenBLAS.
* ``N ranks x 1 thr``: ``mpiexec -n N``, each rank one thread, each computing its share of the
  rows; the step time is rank 0's (it includes waiting for the other ranks).

Reported: tokens/s (global batch tokens / median step time), the all-reduce's share of the step
(packing, MPI_Allreduce over the flat gradient buffer in buckets, unpacking: ``World.comm_seconds``)
and the time a rank waits at the all-reduce for the slowest one (``World.wait_seconds``: load
imbalance). Rounds alternate the two sides (A B A B ...) so a change in the machine's load hits
both; each round's ratio compares neighbours, and the 1-minute load average is printed before
each round: on a machine shared with other jobs, read the ratios, not the absolute numbers.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tinyllm  # noqa: F401  (first: it sets OPENBLAS_THREAD_TIMEOUT before NumPy loads OpenBLAS)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

CONFIGS = {
    "small": dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
    "large": dict(vocab_size=65, n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64),
}
DEFAULT_STEPS = {"small": 30, "large": 4}
DATA_TOKENS, DATA_SEED = 100_000, 0


# --- what a worker (or each rank of one) runs ------------------------------------------------------

def worker(args):
    from tinyllm.models import GPT, GPTConfig
    from tinyllm.training import TrainConfig, Trainer

    cfg = CONFIGS[args.config]
    model = GPT(GPTConfig(**{k: cfg[k] for k in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size")}), seed=0)
    data = C.random_tokens(cfg["vocab_size"], DATA_TOKENS, DATA_SEED)
    with tempfile.TemporaryDirectory() as out_dir:  # (nothing is written: no evaluation, no checkpoint)
        train_cfg = TrainConfig(out_dir=out_dir, max_iters=10**6, batch_size=cfg["batch_size"], learning_rate=1e-3,
                                warmup_iters=0, sample_tokens=0, progress=False, seed=1)
        trainer = Trainer(model, data, data[:10_000], train_cfg)
        world = trainer.world
        step_s, comm_s, wait_s, losses = [], [], [], []
        for i in range(args.warmup + args.steps[args.config]):
            comm0, wait0, t0 = world.comm_seconds, world.wait_seconds, time.perf_counter()
            loss, *_ = trainer.train_step()
            if i >= args.warmup:
                step_s.append(time.perf_counter() - t0)
                comm_s.append(world.comm_seconds - comm0)
                wait_s.append(world.wait_seconds - wait0)
            losses.append(loss)
    if world.is_main:
        C.emit_result(dict(step_s=step_s, comm_s=comm_s, wait_s=wait_s, losses=losses, ranks=world.size,
                           threads=world.threads or tinyllm.get_num_threads(), n_params=model.num_parameters()))


# --- the parent ------------------------------------------------------------------------------------

def find_mpiexec():
    beside = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, matching mpi4py's MPI
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def run_side(args, config, ranks, threads, mpiexec):
    argv = [sys.executable, __file__, "--worker", "--config", config, "--steps", str(args.steps[config]),
            "--warmup", str(args.warmup)]
    if ranks > 1:
        argv = [mpiexec, "-n", str(ranks)] + argv
    env = C.worker_env(threads)
    proc = subprocess.run(argv, env=env, cwd=C.ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(C.RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed (exit {proc.returncode}): {' '.join(argv)}\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-2000:]}")
    import json

    return json.loads(lines[-1][len(C.RESULT_PREFIX):])


def summarize(rounds, cfg):
    steps = [t for r in rounds for t in r["step_s"]]
    step = C.median(steps)
    share = lambda key: C.median([c / s for r in rounds for c, s in zip(r[key], r["step_s"])])  # noqa: E731
    return dict(ms_per_step=step * 1e3, tokens_per_s=cfg["batch_size"] * cfg["block_size"] / step,
                allreduce_share=share("comm_s"), wait_share=share("wait_s"),
                round_tokens_per_s=[cfg["batch_size"] * cfg["block_size"] / C.median(r["step_s"]) for r in rounds],
                first_loss=rounds[0]["losses"][0], threads=rounds[0]["threads"], ranks=rounds[0]["ranks"])


def bench_config(args, config, mpiexec):
    cfg = CONFIGS[config]
    n = args.ranks
    sides = {f"1 proc x {n} thr": (1, n), f"{n} ranks x 1 thr": (n, 1)}
    if args.also_one_thread:
        sides["1 proc x 1 thr"] = (1, 1)
    print(f"\nconfig {config}: {cfg['n_layer']} layers, {cfg['n_embd']} wide, batch {cfg['batch_size']} x block "
          f"{cfg['block_size']} ({cfg['batch_size'] * cfg['block_size']} tokens/step); {args.warmup} warm-up + "
          f"{args.steps[config]} timed steps per round", flush=True)
    run_side(args, config, 1, n, mpiexec)  # untimed: numba's cache is warm for every round
    results, loads = {name: [] for name in sides}, []
    for r in range(args.repeats):
        for name, (ranks, threads) in sides.items():
            loads.append(os.getloadavg()[0])
            results[name].append(run_side(args, config, ranks, threads, mpiexec))
            print(f"  round {r + 1}/{args.repeats}: {name} done (load average before it {loads[-1]:.1f})",
                  file=sys.stderr, flush=True)
    summaries = {name: summarize(rounds, cfg) for name, rounds in results.items()}
    rows = [[name, C.fmt(s["ms_per_step"]), C.fmt(s["tokens_per_s"], ".0f"),
             f"{100 * s['allreduce_share']:.1f}%" if s["ranks"] > 1 else "-",
             f"{100 * s['wait_share']:.1f}%" if s["ranks"] > 1 else "-",
             " ".join(f"{t:.0f}" for t in s["round_tokens_per_s"]), C.fmt(s["first_loss"], ".5f")]
            for name, s in summaries.items()]
    C.print_table(["", "ms/step", "tokens/s", "all-reduce", "waiting", "tokens/s by round", "first loss"], rows)
    (single, single_s), (multi, multi_s) = list(summaries.items())[:2]
    pairs = [m / s for s, m in zip(single_s["round_tokens_per_s"], multi_s["round_tokens_per_s"])]
    same = all(abs(s["first_loss"] - single_s["first_loss"]) < 1e-5 for s in summaries.values())
    print(f"{multi} / {single} tokens/s: {multi_s['tokens_per_s'] / single_s['tokens_per_s']:.2f}x; round by round "
          f"{min(pairs):.2f}x..{max(pairs):.2f}x (median {C.median(pairs):.2f}x); load average "
          f"{min(loads):.1f}..{max(loads):.1f} on {os.cpu_count()} cores; same first loss: {'OK' if same else 'NO'}",
          flush=True)
    return dict(config=config, model=cfg, summaries=summaries, round_ratios=pairs, load_averages=loads,
                same_first_loss=same, rounds=results)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), nargs="+", default=["small", "large"])
    p.add_argument("--ranks", type=int, default=2, help="N: ranks of one thread, against one process of N threads")
    p.add_argument("--steps", type=int, help="timed steps per round (default 30 small, 4 large)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds per side")
    p.add_argument("--also-one-thread", action="store_true", help="a third side: 1 process x 1 thread")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    steps = args.steps
    args.steps = {c: steps or DEFAULT_STEPS[c] for c in CONFIGS}
    if args.ranks < 2 or args.warmup < 0 or args.repeats < 1 or min(args.steps.values()) < 1:
        p.error("need --ranks >= 2, --warmup >= 0, --repeats >= 1, --steps >= 1")
    if args.worker:
        args.config = args.config[0]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    mpiexec = find_mpiexec()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpiexec = None
    if mpiexec is None:
        sys.exit('bench_mpi: needs mpi4py and an mpiexec: pip install "tinyllm[mpi]"')
    busy = C.busy_machine_note(args.ranks)
    if busy:
        print(busy)
    results = [bench_config(args, config, mpiexec) for config in args.config]
    if args.json:
        C.write_json(args.json, dict(settings={k: v for k, v in vars(args).items()}, busy_machine=busy,
                                     results=results))


if __name__ == "__main__":
    main()
