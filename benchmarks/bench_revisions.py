"""Before and after: the training step of two git revisions of tinyllm, taking turns in one run.

    python benchmarks/bench_revisions.py HEAD~1 HEAD                  # did the last commit slow training?
    python benchmarks/bench_revisions.py f872c54^1 f872c54 --rounds 12 --config large
    python benchmarks/bench_revisions.py main my-branch --rounds 2 --steps 5   # smoke test

"Measure before and after every optimisation" (and every refactor that must not change speed).
Each revision is exported with ``git archive`` into a temporary directory (the working tree is
not touched), and its own ``benchmarks/bench_train.py`` times its own tinyllm: one round is one
``bench_train.py --repeats 1`` per revision, in alternating order (A B, B A, A B, ...), so a
change in the machine's load hits both alike. The first round of each revision also fills that
copy's numba cache (bench_train.py runs an untimed warm-up first).

Reported per round: each revision's median ms/step and the ratio (later revision / first); then
the median ratio over rounds, its range, and in how many rounds the later revision was faster.
The two revisions must compute the same model: their first losses are printed side by side
(a refactor that promises "no behaviour change" should show identical losses).
"""
import argparse
import json
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


def time_revision(tree, args, json_path):
    """One round of ``tree``'s bench_train.py on ``tree``'s tinyllm: (ms/step, first loss)."""
    cmd = [sys.executable, str(Path(tree) / "benchmarks" / "bench_train.py"), "--config", args.config,
           "--repeats", "1", "--json", str(json_path), "--threads", str(args.threads)]
    if args.steps:
        cmd += ["--steps", str(args.steps)]
    env = dict(os.environ, PYTHONPATH=str(tree), NUMBA_CACHE_DIR=str(Path(tree) / ".numba-cache"))
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench_train.py of {tree} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    summary = json.loads(Path(json_path).read_text())["summaries"][0]
    return summary["ms_per_step"], summary["first_loss"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="a git revision (commit, branch, tag, HEAD~1, ...)")
    p.add_argument("after", help="the revision to compare with it")
    p.add_argument("--config", choices=["small", "large"], default="small")
    p.add_argument("--rounds", type=int, default=8, help="rounds; each times both revisions once")
    p.add_argument("--steps", type=int, help="timed steps per round (bench_train.py's default if omitted)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    with tempfile.TemporaryDirectory(prefix="tinyllm-revisions-") as tmp:
        trees, names = {}, {}
        for side in ("before", "after"):
            trees[side] = Path(tmp) / side
            trees[side].mkdir()
            names[side] = f"{getattr(args, side)} ({export_revision(getattr(args, side), trees[side])})"
        print(f"training step, config {args.config}, {args.threads} threads: before = {names['before']}, "
              f"after = {names['after']}; {args.rounds} rounds, order alternating")
        ratios, losses = [], {}
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            load = os.getloadavg()[0]
            ms = {}
            for side in order:
                ms[side], losses[side] = time_revision(trees[side], args, Path(tmp) / f"{side}.json")
            ratios.append(ms["after"] / ms["before"])
            print(f"round {r + 1}: before {ms['before']:.1f} ms/step, after {ms['after']:.1f} ms/step, "
                  f"after/before {ratios[-1]:.3f}   (1-min load {load:.1f})", flush=True)
    faster = sum(x < 1 for x in ratios)
    print(f"\nafter/before time per step: median {C.median(ratios):.3f}, range {min(ratios):.3f}..{max(ratios):.3f}; "
          f"after faster in {faster} of {len(ratios)} rounds")
    print(f"first loss: before {losses['before']:.6f}, after {losses['after']:.6f}"
          f"{' (identical)' if losses['before'] == losses['after'] else ''}")
    busy = C.busy_machine_note(args.threads)
    if busy:
        print(busy)


if __name__ == "__main__":
    main()
