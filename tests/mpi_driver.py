"""Run ``examples/train_shakespeare.py`` on one rank of an ``mpiexec`` job with a fault injected on
one rank (for tests/test_mpi.py).

    mpiexec -n 2 python tests/mpi_driver.py [--rank R --at-step K --fault raise|exit|hang|poison] -- ARGS...

On rank R (PMI_RANK / OMPI_COMM_WORLD_RANK), just before its optimizer step number K of this
process: ``raise`` raises a RuntimeError nobody catches, ``exit`` calls ``sys.exit(3)``, ``hang``
sleeps for an hour (a rank stuck in a loop or on a dead file system), ``poison`` fills a weight
with NaN on that rank alone (a blow-up only its share of the batch meets). ``--slow-steps S`` makes every
step of every rank sleep S seconds first, so a test can act while the job is mid-run.
Everything else is the real script, run with ARGS.
"""
import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import tinyllm  # noqa: F401  (before NumPy, as the script does)

ROOT = Path(__file__).resolve().parents[1]


def this_rank():
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return 0


def inject(rank, at_step, fault, slow):
    from tinyllm.training import Trainer

    original, count = Trainer.train_step, [0]

    def train_step(self):
        count[0] += 1
        if slow:
            time.sleep(slow)
        if fault and this_rank() == rank and count[0] == at_step:
            if fault == "raise":
                raise RuntimeError(f"injected fault on rank {rank} at step {at_step}")
            if fault == "exit":
                sys.exit(3)
            if fault == "poison":
                self.params[0].data.fill(float("nan"))
            else:
                time.sleep(3600)
        return original(self)

    Trainer.train_step = train_step


def main():
    argv = sys.argv[1:]
    split = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, default=1)
    p.add_argument("--at-step", type=int, default=1)
    p.add_argument("--fault", choices=["raise", "exit", "hang", "poison"], default=None)
    p.add_argument("--slow-steps", type=float, default=0.0)
    opts = p.parse_args(argv[:split])
    inject(opts.rank, opts.at_step, opts.fault, opts.slow_steps)
    spec = importlib.util.spec_from_file_location("train_shakespeare", ROOT / "examples" / "train_shakespeare.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(argv[split + 1:])


if __name__ == "__main__":
    main()
