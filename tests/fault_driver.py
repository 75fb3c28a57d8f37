"""Run ``examples/train_shakespeare.py`` in this process with a fault injected (for tests/test_faults.py).

    python tests/fault_driver.py [--slow-write SECONDS] [--poison-after STEP --poison-value nan|inf] -- ARGS...

``--slow-write``: every safetensors file (checkpoint, model) is written as a slow disk would: the
first half of its bytes, flushed, a pause, then the rest, so that a test can SIGKILL the trainer
while a checkpoint is half written. The bytes are exactly those safetensors itself writes.
``--poison-after``: after the optimizer step that makes ``STEP`` steps in this process, one weight
becomes NaN (or inf), as a numerical blow-up would; the next forward pass meets it.
Everything else is the real script, run with ARGS.
"""
import argparse
import importlib.util
import sys
import time
from pathlib import Path

import tinyllm  # noqa: F401  (before NumPy, as the script does)

ROOT = Path(__file__).resolve().parents[1]


def slow_writes(pause):
    from safetensors.numpy import save

    from tinyllm.models import io

    def write_safetensors(path, tensors, metadata=None):
        data = save(tensors, metadata=metadata)
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(pause)
            f.write(data[len(data) // 2:])

    io.write_safetensors = write_safetensors


def poison_after(step, value):
    from tinyllm import optim

    original, count = optim.AdamW.step, [0]

    def step_then_poison(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        count[0] += 1
        if count[0] == step:
            p = self.param_groups[0]["params"][0]
            p.data.flat[0] = float(value)
        return out

    optim.AdamW.step = step_then_poison


def main():
    argv = sys.argv[1:]
    split = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("--slow-write", type=float, default=None)
    p.add_argument("--poison-after", type=int, default=None)
    p.add_argument("--poison-value", default="nan")
    faults = p.parse_args(argv[:split])
    if faults.slow_write:
        slow_writes(faults.slow_write)
    if faults.poison_after:
        poison_after(faults.poison_after, faults.poison_value)
    spec = importlib.util.spec_from_file_location("train_shakespeare", ROOT / "examples" / "train_shakespeare.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(argv[split + 1:])


if __name__ == "__main__":
    main()
