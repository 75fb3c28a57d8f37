"""Where the first training step's time goes when numba's cache is empty: every compilation, timed.

    python benchmarks/profile_cold_start.py                     # small config, one thread, 1 round
    python benchmarks/profile_cold_start.py --rounds 3 --passes # also compiler passes and LLVM stages
    python benchmarks/profile_cold_start.py --json cold.json

Each round runs three fresh subprocesses that import tinyllm, build the small GPT and run the
first training steps of ``bench_train.py`` (forward, backward, clip_grad_norm, AdamW):

1. cold, compile ahead off: an empty ``NUMBA_CACHE_DIR`` and ``TINYLLM_COMPILE_WORKERS=0``, so
   every kernel compiles in the process on its first call (numba's own way; the reference);
2. cold, compile ahead on: another empty cache, the default (the training step's kernels compile
   in one worker process per core, ``tinyllm/kernels/systems/precompile.py``);
3. warm: the same step again on the cache that run 2 filled.

Times are process start -> end of step 1, in wall seconds and in CPU seconds (the machine is
shared: wall time says how busy the neighbours were, CPU time what the compiler did, although a
loaded machine inflates CPU time too). With compile ahead on, the "critical path" is this
process's CPU plus the busiest worker's (what the wall time would be on an idle machine with a
core per worker).

For run 1 a listener on numba's ``numba:compile`` events records each compilation: the
dispatcher, the argument types and its *thread CPU time*. A kernel that calls another njit
function compiles that one inside its own compilation; "self" is the time without such nested
compilations, "total" with them. ``--passes`` adds the CPU time per numba compiler pass and per
LLVM stage (function passes, module passes, machine code) of each code library.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

if "--worker" in sys.argv:  # as tinyllm's import would, before _common loads NumPy (kernels/systems/runtime.py)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
from numba.core import event  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

SMALL = dict(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12)


# --- the worker -----------------------------------------------------------------------------------

class _CompileTimer(event.Listener):
    """A numba event listener: thread CPU and wall seconds of each ``numba:compile`` (nesting-aware)."""

    def __init__(self):
        self.stack, self.records = [], []

    def on_start(self, ev):
        self.stack.append(dict(start_cpu=time.thread_time(), start_wall=time.perf_counter(), child_cpu=0.0,
                               data=ev.data))

    def on_end(self, ev):
        frame = self.stack.pop()
        cpu = time.thread_time() - frame["start_cpu"]
        if self.stack:
            self.stack[-1]["child_cpu"] += cpu
        d = frame["data"]
        fn = d["dispatcher"].py_func
        self.records.append(dict(name=f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__qualname__}",
                                 args=", ".join(str(a) for a in d["args"]), total_cpu=cpu,
                                 self_cpu=cpu - frame["child_cpu"], wall=time.perf_counter() - frame["start_wall"],
                                 depth=len(self.stack)))


class _PassTimer(event.Listener):
    """Thread CPU seconds summed per compiler pass (``numba:run_pass``), nested passes excluded."""

    def __init__(self):
        self.stack, self.totals = [], {}

    def on_start(self, ev):
        self.stack.append([time.thread_time(), 0.0])

    def on_end(self, ev):
        start, child = self.stack.pop()
        cpu = time.thread_time() - start
        if self.stack:
            self.stack[-1][1] += cpu
        name = ev.data["name"].split(" [")[0]  # "native_lowering [kernel name]" -> the pass alone
        self.totals[name] = self.totals.get(name, 0.0) + cpu - child


class _LLVMTimer:
    """Thread CPU seconds in LLVM, per code library: function passes, module passes, machine code.

    numba compiles each library (a kernel, each njit helper it calls, each parallel loop body) in
    three LLVM stages; wrapping the three methods of numba's JITCodeLibrary shows which one costs.
    """

    STAGES = {"_optimize_functions": "function passes", "_optimize_final_module": "module passes",
              "_finalize_specific": "machine code"}

    def __init__(self):
        from numba.core import codegen
        self.totals = {}  # (library name, stage) -> seconds
        for method, stage in self.STAGES.items():
            self._wrap(codegen.JITCodeLibrary, method, stage)

    def _wrap(self, cls, method, stage):
        original = getattr(cls, method)

        def timed(library, *a, **k):
            t0 = time.thread_time()
            try:
                return original(library, *a, **k)
            finally:
                key = (library.name, stage)
                self.totals[key] = self.totals.get(key, 0.0) + time.thread_time() - t0

        setattr(cls, method, timed)


def worker(args):
    timer, passes = _CompileTimer(), _PassTimer()
    event.register("numba:compile", timer)
    if args.passes:
        event.register("numba:run_pass", passes)
    llvm = _LLVMTimer() if args.passes else None
    import numpy as np
    import tinyllm
    from tinyllm.data import get_batch
    from tinyllm.models import GPT, GPTConfig
    from tinyllm.optim import clip_grad_norm
    from tinyllm.training import TrainConfig, configure_optimizer

    marks = dict(import_cpu=time.process_time())  # process CPU since start: interpreter, numba, tinyllm
    t0 = time.process_time()
    tinyllm.set_num_threads(args.threads)
    cfg = SMALL
    sizes = {k: cfg[k] for k in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size")}
    model = GPT(GPTConfig(**sizes), seed=0)
    optimizer = configure_optimizer(model, TrainConfig(learning_rate=1e-3, beta1=0.9, beta2=0.99,
                                                       weight_decay=0.1, grad_clip=1.0))
    params = model.parameters()
    data, rng = C.random_tokens(cfg["vocab_size"], 100_000, 0), np.random.default_rng(1)
    marks["build_cpu"] = time.process_time() - t0
    losses, step_cpu, step_wall = [], [], []
    for _ in range(args.steps):
        x, y = get_batch(data, cfg["batch_size"], cfg["block_size"], rng)
        c0, w0 = time.process_time(), time.perf_counter()
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        clip_grad_norm(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
        step_cpu.append(time.process_time() - c0)
        step_wall.append(time.perf_counter() - w0)
        if len(losses) == 1:
            marks.update(first_step_end_at=time.monotonic(), cpu_to_first_step_end=time.process_time())
    marks.update(step_cpu=step_cpu, step_wall=step_wall, losses=losses)
    marks["compiles"] = timer.records
    marks["passes"] = passes.totals
    marks["llvm"] = [[name, stage, sec] for (name, stage), sec in llvm.totals.items()] if llvm else []
    marks["signatures"] = _all_signatures()
    from tinyllm.kernels.systems import precompile
    marks["compile_ahead"] = precompile._State.report
    C.emit_result(marks)


def _all_signatures():
    """Every numba dispatcher in tinyllm's kernel modules and the specialisations it holds now."""
    from numba.core.registry import CPUDispatcher
    out = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("tinyllm"):
            continue
        for attr, value in vars(module).items():
            if isinstance(value, CPUDispatcher) and value.signatures:
                key = f"{name.rsplit('.', 1)[-1]}.{attr}"
                out[key] = [", ".join(str(a) for a in sig) for sig in value.signatures]
    return out


# --- the parent -----------------------------------------------------------------------------------

def run(args, env):
    cmd = ["--worker", "--threads", args.threads, "--steps", args.steps] + (["--passes"] if args.passes else [])
    t0 = os.times()
    result, spawned = C.run_worker(__file__, cmd, env)
    t1 = os.times()
    # the child's whole CPU (user + system), interpreter start included
    result["child_cpu"] = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    result["wall_to_first_step_end"] = result["first_step_end_at"] - spawned
    return result


def critical_path_cpu(run):
    """CPU seconds from process start to the end of step 1 along the longest chain: this process,
    plus the busiest compile-ahead worker it waited for (on an idle machine with a core per
    worker, the wall time)."""
    ahead = run.get("compile_ahead") or {}
    return run["cpu_to_first_step_end"] + max(ahead.get("worker_cpu_s") or [0.0])


def summary_row(label, run):
    ahead = run.get("compile_ahead") or {}
    workers = ", ".join(f"{c:.2f}" for c in ahead.get("worker_cpu_s", [])) or "-"
    return [label, C.fmt(run["wall_to_first_step_end"], ".2f"), C.fmt(run["cpu_to_first_step_end"], ".2f"),
            workers, C.fmt(critical_path_cpu(run), ".2f"), C.fmt(run["child_cpu"], ".2f")]


def report_rounds(rounds):
    print("process start -> end of training step 1 (small config); CPU = user + system seconds")
    rows = []
    for i, r in enumerate(rounds, 1):
        rows += [summary_row(f"{i}: cold, compile ahead off", r["off"]), summary_row(f"{i}: cold, compile ahead on", r["on"]),
                 summary_row(f"{i}: warm", r["warm"])]
    C.print_table(["round: numba cache", "wall s", "main CPU s", "workers' CPU s", "critical path CPU s",
                   "all CPU s"], rows)
    crit = [critical_path_cpu(r["on"]) / critical_path_cpu(r["off"]) for r in rounds]
    wall = [r["on"]["wall_to_first_step_end"] / r["off"]["wall_to_first_step_end"] for r in rounds]
    total = [r["on"]["child_cpu"] / r["off"]["child_cpu"] for r in rounds]
    print(f"on / off, per round: critical path CPU {', '.join(f'{x:.2f}' for x in crit)}; wall "
          f"{', '.join(f'{x:.2f}' for x in wall)}; all CPU {', '.join(f'{x:.2f}' for x in total)}")
    losses = [run["losses"] for r in rounds for run in r.values()]
    print(f"losses of all {len(losses)} runs: {'identical' if all(x == losses[0] for x in losses) else 'DIFFERENT'} "
          f"{losses[0]}\n")


def report(cold, warm, passes):
    """The compilations of one cold start (compile ahead off: every kernel compiles in this process)."""
    print(f"the compilations of round 1's cold start with compile ahead off (process CPU to step 1 end "
          f"{cold['cpu_to_first_step_end']:.2f} s: import {cold['import_cpu']:.2f}, build {cold['build_cpu']:.2f}, "
          f"first step {cold['step_cpu'][0]:.2f}; warm first step {warm['step_cpu'][0]:.2f})")
    top = [r for r in cold["compiles"]]
    total_self = sum(r["self_cpu"] for r in top)
    print(f"\n{len(top)} compilations, {total_self:.2f} s CPU in numba:compile events "
          f"(warm run: {len(warm['compiles'])} compilations)")
    print(f"{'self CPU s':>10} {'total CPU s':>11}  dispatcher (argument types)")
    for r in sorted(top, key=lambda r: -r["self_cpu"]):
        print(f"{r['self_cpu']:10.2f} {r['total_cpu']:11.2f}  {'  ' * r['depth']}{r['name']}({r['args']})")
    multi = {k: v for k, v in cold["signatures"].items() if len(v) > 1}
    print(f"\ndispatchers with more than one specialisation: {len(multi) or 'none'}")
    for k, sigs in multi.items():
        print(f"  {k}:")
        for s in sigs:
            print(f"      ({s})")
    if passes:
        print("\ncompiler passes, self CPU s (summed over all compilations):")
        for name, s in sorted(cold["passes"].items(), key=lambda kv: -kv[1])[:25]:
            print(f"{s:8.2f}  {name}")
    if passes:
        stages = {}
        for _, stage, sec in cold["llvm"]:
            stages[stage] = stages.get(stage, 0.0) + sec
        print("\nLLVM, self CPU s by stage: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
        libs = {}
        for name, _, sec in cold["llvm"]:
            libs[name] = libs.get(name, 0.0) + sec
        print(f"{len(libs)} code libraries; the largest:")
        for name, sec in sorted(libs.items(), key=lambda kv: -kv[1])[:15]:
            parts = ", ".join(f"{st} {s:.2f}" for n, st, s in cold["llvm"] if n == name)
            print(f"{sec:8.2f}  {name[:90]}  ({parts})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="numba threads of the training step (default 1)")
    p.add_argument("--rounds", type=int, default=1, help="alternating rounds of cold off / cold on / warm")
    p.add_argument("--steps", type=int, default=2, help="steps per worker (the first is the one profiled)")
    p.add_argument("--passes", action="store_true", help="also sum CPU time per numba compiler pass")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    rounds = []
    for _ in range(args.rounds):
        result = {}
        for mode, workers in (("off", "0"), ("on", None)):  # None: the default, one worker per core
            cache_dir = tempfile.mkdtemp(prefix="tinyllm-numba-cache-")
            try:
                extra = dict(NUMBA_CACHE_DIR=cache_dir)
                env = C.worker_env(args.threads, **extra)
                env.pop("TINYLLM_COMPILE_WORKERS", None)
                if workers is not None:
                    env["TINYLLM_COMPILE_WORKERS"] = workers
                result[mode] = run(args, env)
                if mode == "on":
                    result["warm"] = run(args, env)
            finally:
                shutil.rmtree(cache_dir, ignore_errors=True)
        rounds.append(result)
    report_rounds(rounds)
    report(rounds[0]["off"], rounds[0]["warm"], args.passes)
    if args.json:
        C.write_json(args.json, rounds)


if __name__ == "__main__":
    main()
