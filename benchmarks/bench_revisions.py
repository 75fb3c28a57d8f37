"""Before and after: the training step of two git revisions of tinyllm, taking turns in one run.

    python benchmarks/bench_revisions.py HEAD~1 HEAD                  # did the last commit slow training?
    python benchmarks/bench_revisions.py f872c54^1 f872c54 --rounds 12 --config large
    python benchmarks/bench_revisions.py main my-branch --rounds 2 --steps 5   # smoke test

"Measure before and after every optimisation" (and every refactor that must not change speed).
Each revision is exported with ``git archive`` into a temporary directory (the working tree is
not touched) with its own numba cache; a worker process (this script, ``--worker``) imports that
copy's tinyllm and times bench_train.py's step (forward, backward, clipping, AdamW on random
tokens; configs small and large as there). One round runs one worker per revision, in
alternating order (A B, B A, ...), so a change in the machine's load hits both alike; an
untimed first worker per revision fills its numba cache.

Two clocks. Wall time per step, and, on one thread (``--threads 1``, the default), the CPU time
of the thread that does all the work (``time.thread_time``): on a machine shared with other jobs
the wall clock also counts the time the process waited for a core, the CPU clock does not, so
it compares two revisions' code steadily even under load (caches shared with the other jobs
still add some noise). Reported per round: each revision's median ms/step and the ratio (after /
before); then the median ratio over rounds, its range, and in how many rounds "after" was
faster. The two must compute the same model: their losses are printed side by side (a change
that promises "no behaviour change" shows identical losses).
"""
import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402


def export_revision(rev, into):
    """``git archive rev`` unpacked into the directory ``into``; returns the commit's short hash."""
    repo = Path(C.ROOT)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", f"{rev}^{{commit}}"],
                            capture_output=True, text=True)
    if commit.returncode != 0:
        raise SystemExit(f"error: {rev!r} is not a revision of {repo}: {commit.stderr.strip()}")
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", rev], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    if not (Path(into) / "benchmarks" / "bench_train.py").exists():
        raise SystemExit(f"error: revision {rev!r} has no benchmarks/bench_train.py to time it with")
    return commit.stdout.strip()


CONFIGS = {  # bench_train.py's
    "small": dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12),
    "large": dict(vocab_size=65, n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64),
}


def run_as_worker(args):
    """Time ``args.steps`` training steps (after ``args.warmup``) of the tinyllm on sys.path."""
    import time

    import tinyllm  # noqa: F401  (before NumPy, as every script: it sets the BLAS threads up)
    import numpy as np

    from tinyllm.data import get_batch
    from tinyllm.models import GPT, GPTConfig
    from tinyllm.optim import clip_grad_norm
    from tinyllm.training import TrainConfig, configure_optimizer

    cfg = dict(CONFIGS[args.config])
    batch_size = cfg.pop("batch_size")
    model = GPT(GPTConfig(**cfg), seed=0)
    opt = configure_optimizer(model, TrainConfig(learning_rate=1e-3, beta1=0.9, beta2=0.99, weight_decay=0.1,
                                                 grad_clip=1.0))
    params = model.parameters()
    data = np.random.default_rng(0).integers(0, cfg["vocab_size"], 100_000)
    rng = np.random.default_rng(1)
    wall, cpu, losses = [], [], []
    for i in range(args.warmup + args.steps):
        x, y = get_batch(data, batch_size, cfg["block_size"], rng)
        t0, c0 = time.perf_counter(), time.thread_time()
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        clip_grad_norm(params, 1.0)
        opt.step()
        if i >= args.warmup:
            wall.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        losses.append(loss.item())
    C.emit_result(dict(wall_ms=C.median(wall) * 1e3, cpu_ms=C.median(cpu) * 1e3, losses=losses,
                       tinyllm=os.path.dirname(os.path.dirname(tinyllm.__file__))))


def time_revision(tree, args, warm_only=False):
    """One worker on ``tree``'s tinyllm: its result dict (wall_ms, cpu_ms, losses)."""
    steps = 1 if warm_only else args.steps
    worker_args = ["--worker", "--config", args.config, "--steps", steps, "--warmup", 0 if warm_only else args.warmup,
                   "--threads", args.threads, "before", "after"]
    env = C.worker_env(args.threads, PYTHONPATH=str(tree), NUMBA_CACHE_DIR=str(Path(tree) / ".numba-cache"))
    result, _ = C.run_worker(os.path.abspath(__file__), worker_args, env)
    if Path(result["tinyllm"]) != Path(tree):  # an installed tinyllm shadowing the copy would compare nothing
        raise RuntimeError(f"the worker imported tinyllm from {result['tinyllm']}, not from {tree}")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="a git revision (commit, branch, tag, HEAD~1, ...)")
    p.add_argument("after", help="the revision to compare with it")
    p.add_argument("--config", choices=sorted(CONFIGS), default="small")
    p.add_argument("--rounds", type=int, default=8, help="rounds; each times both revisions once")
    p.add_argument("--steps", type=int, default=30, help="timed steps per worker")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for numba and BLAS (default 1: then the CPU-time clock is meaningful)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return run_as_worker(args)
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0 or args.threads < 1:
        p.error(f"need --rounds >= 1, --steps >= 1, --warmup >= 0, --threads >= 1; got {args.rounds}, "
                f"{args.steps}, {args.warmup}, {args.threads}")
    clock = "cpu_ms" if args.threads == 1 else "wall_ms"
    with tempfile.TemporaryDirectory(prefix="tinyllm-revisions-") as tmp:
        trees, names = {}, {}
        for side in ("before", "after"):
            trees[side] = Path(tmp) / side
            trees[side].mkdir()
            names[side] = f"{getattr(args, side)} ({export_revision(getattr(args, side), trees[side])})"
            time_revision(trees[side], args, warm_only=True)  # compiles into this copy's numba cache
        print(f"training step, config {args.config}, {args.threads} thread(s): before = {names['before']}, "
              f"after = {names['after']}; {args.rounds} rounds, order alternating; clock: "
              f"{'CPU time of the working thread' if clock == 'cpu_ms' else 'wall time'}")
        ratios, results = [], {}
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            load = os.getloadavg()[0]
            for side in order:
                results[side] = time_revision(trees[side], args)
            b, a = results["before"], results["after"]
            ratios.append(a[clock] / b[clock])
            print(f"round {r + 1}: before {b['cpu_ms']:.1f} ms CPU / {b['wall_ms']:.1f} ms wall, after "
                  f"{a['cpu_ms']:.1f} / {a['wall_ms']:.1f}; after/before {ratios[-1]:.3f}   (1-min load {load:.1f})",
                  flush=True)
    faster = sum(x < 1 for x in ratios)
    print(f"\nafter/before {clock[:-3]} time per step: median {C.median(ratios):.3f}, range "
          f"{min(ratios):.3f}..{max(ratios):.3f}; after faster in {faster} of {len(ratios)} rounds")
    same = results["before"]["losses"] == results["after"]["losses"]
    print(f"losses over {args.warmup + args.steps} steps: "
          f"{'identical' if same else 'DIFFERENT'} (last: before {results['before']['losses'][-1]:.6f}, "
          f"after {results['after']['losses'][-1]:.6f})")
    busy = C.busy_machine_note(args.threads)
    if busy and clock == "wall_ms":
        print(busy)


if __name__ == "__main__":
    main()
