"""nanoGPT's model.py, ported to tinyllm by its imports (tests/nanogpt_port.py), against the same
source on PyTorch: CPU time per training step, side by side, as a ratio.

    python benchmarks/bench_nanogpt_port.py                      # small config, 1 thread, 3 rounds
    python benchmarks/bench_nanogpt_port.py --rounds 5 --threads 2 --attention both

Each measurement is a fresh process (tinyllm and torch never share one), the two alternating
round by round. A worker builds the port on one framework (``flash=True``: nanoGPT's
``F.scaled_dot_product_attention`` path; ``False``: its explicit softmax(q k^T) path), runs
``configure_optimizers``' AdamW steps on random batches and reports the median CPU time of the
working thread over the steps after the warm-up (so the compile of a cold numba cache and torch's
first-call costs do not count). This measures the API a ported script uses (Tensor methods,
F.*, nn.*, optim), not tinyllm's own GPT (bench_train.py does that).
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

SMALL = dict(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, batch_size=12)


def worker(framework, flash, steps, warmup):
    import numpy as np

    sys.path.insert(0, os.path.join(C.ROOT, "tests"))
    from nanogpt_port import GPTConfig, define

    if framework == "torch":
        import torch as fw

        fw.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        gen = {}
    else:
        import tinyllm as fw

        gen = dict(generator=np.random.default_rng(0))
    config = {k: v for k, v in SMALL.items() if k != "batch_size"}
    model = define(fw, gen)(GPTConfig(**config, flash=flash == "on"))
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    data = C.random_tokens(SMALL["vocab_size"], 100_000)
    rng = np.random.default_rng(1)
    times = []
    for _ in range(warmup + steps):
        x, y = C.random_batch(data, SMALL["batch_size"], SMALL["block_size"], rng)
        start = time.thread_time()
        _, loss = model(fw.tensor(x), fw.tensor(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.thread_time() - start)
    C.emit_result(dict(ms=1000 * C.median(times[warmup:]), loss=float(loss.item())))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--attention", choices=["flash", "explicit", "both"], default="both")
    args = p.parse_args()
    env = C.worker_env(args.threads)
    ok, version = C.torch_importable(env)
    if not ok:
        sys.exit(f"this benchmark compares with PyTorch, which does not import here: {version}")
    flashes = {"flash": ["on"], "explicit": ["off"], "both": ["on", "off"]}[args.attention]
    print(f"nanoGPT's model.py on tinyllm and on torch {version}: small config {SMALL}, {args.threads} thread(s), "
          f"median CPU ms per training step over {args.steps} steps after {args.warmup}")
    print(C.busy_machine_note(args.threads))
    rows = []
    for flash in flashes:
        ratios = []
        for r in range(args.rounds):
            order = ["tinyllm", "torch"] if r % 2 == 0 else ["torch", "tinyllm"]
            ms = {fw: C.run_worker(__file__, ["--worker", fw, flash, args.steps, args.warmup], env)[0]["ms"]
                  for fw in order}
            ratios.append(ms["tinyllm"] / ms["torch"])
            print(f"  attention {'sdpa' if flash == 'on' else 'explicit'}, round {r + 1}: tinyllm {ms['tinyllm']:.1f} "
                  f"ms, torch {ms['torch']:.1f} ms, tinyllm / torch {ratios[-1]:.2f}")
        rows.append(["F.scaled_dot_product_attention" if flash == "on" else "softmax(q k^T) by hand",
                     C.fmt(C.median(ratios), ".2f"), f"{min(ratios):.2f}..{max(ratios):.2f}"])
    C.print_table(["nanoGPT attention path", "tinyllm / torch CPU time (median)", "range"], rows)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
