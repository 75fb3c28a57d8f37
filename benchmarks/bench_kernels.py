"""NumPy reference vs numba kernel, at the shapes of one GPT training step on a CPU.

    python benchmarks/bench_kernels.py                 # table on stdout
    python benchmarks/bench_kernels.py --json out.json # and every number as JSON
    python benchmarks/bench_kernels.py --quick         # fewer repeats, no compile-time runs
    python benchmarks/bench_kernels.py --masked-only --cpu-time   # one thread, CPU clock (busy machine)
    python benchmarks/bench_kernels.py --masked-only --settle 0   # no pause between blocks (pool awake)

Two configurations (float32):

* nanoGPT-CPU: B=12, heads=4, T=64, head_dim=32, C=128  ->  N = B*T = 768 rows, vocab V=65
* larger:      B=8,  heads=6, T=256, head_dim=64, C=384 ->  N = 2048 rows,     vocab V=65

A third block times what the encoder-decoder adds: key-padding masked attention at
B=16, heads=4, T=48, head_dim=32 with random key lengths (NumPy composition vs the fused
kernel), and cross-entropy with label smoothing (``--masked-only`` runs this block alone).

Rows: causal attention forward+backward (plain NumPy composition vs the fused kernel), the
matmuls of a GPT step (forward x @ W^T, backward g @ W and x^T @ g, lm_head, the unfused
attention scores), layernorm, cross-entropy and GELU (both forms) forward+backward, and one
AdamW step over all parameters of the model (~0.8M and ~10.7M).

Method: after one warm-up call each (which compiles), the reference and the numba version are
timed in alternating blocks, so a load spike from another process hits both, and the medians
are reported (see ``time_pair``). GFLOP/s uses the nominal arithmetic of the operation, the
same count for both columns: 2*M*N*K for a matmul; for attention 2*pairs*(D + Dv) forward and
2*pairs*(3D + 2Dv) backward, pairs = the causally visible (query, key) pairs (the NumPy
composition does more work than that: it computes the masked half too). Element-wise kernels are memory-bound; their
GFLOP/s column is left empty.

Compile time: a subprocess with NUMBA_CACHE_DIR pointing to a fresh directory times the first
float32 call of every kernel in turn (cold: compile and write the cache; matmul_numba comes
after attention, whose tile kernel it shares), a second one with the same directory times it
again (warm: load from the cache). This script decided the dispatch in
``tinyllm.kernels.matmul.matmul``; with ``--tiles`` it also times the fused attention at other
tile sizes, which is how ``attention.BLOCK_Q`` / ``BLOCK_K`` were chosen.
"""
import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

# The NumPy references here call np.matmul (OpenBLAS's own threads) right after numba kernels;
# numba's threads spinning between kernels (tinyllm's default, right for training, where every
# matmul runs on numba's threads) would make them wait for a core. PASSIVE keeps the comparison
# fair to NumPy; a value you export wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import tinyllm  # noqa: E402,F401  (before NumPy: sets OPENBLAS_THREAD_TIMEOUT, see tinyllm/kernels/systems/runtime.py)
import numba  # noqa: E402
import numpy as np  # noqa: E402

CONFIGS = {
    "nanoGPT-CPU": dict(B=12, H=4, T=64, hd=32, C=128, V=65, n_layer=4),
    "larger": dict(B=8, H=6, T=256, hd=64, C=384, V=65, n_layer=6),
}
DTYPE = np.float32


def load(module):
    """tinyllm.kernels.<module>, or None (with a note) if it is not there yet."""
    try:
        return importlib.import_module(f"tinyllm.kernels.{module}")
    except ImportError as err:
        print(f"note: tinyllm.kernels.{module} not importable ({err}); its rows are skipped")
        return None


# --------------------------------------------------------------------------------------------
# timing
# --------------------------------------------------------------------------------------------

# Idle OpenBLAS threads spin for ~0.1 s after each BLAS call (OPENBLAS_THREAD_TIMEOUT, 2**28
# cycles by default) and meanwhile slow any parallel numba kernel by 30-70% on 2 cores.
SETTLE_SECONDS = 0.2
# The clock of time_pair. --cpu-time switches to the CPU time of this thread, with one thread for
# numba and OpenBLAS: on a machine shared with other jobs, wall time also counts the waits for a
# core, which land on either column at random; the CPU time of the one working thread does not.
CLOCK = time.perf_counter


def time_pair(ref, fast, repeats, max_seconds, block=5):
    """Median seconds of ref() and fast().

    After one warm-up call each (which compiles), the two run in alternating blocks of
    ``block`` timed calls until each has ``repeats`` timings or ``max_seconds`` have passed
    (at least one block), so a load spike from another process hits both. Before each block
    the script sleeps SETTLE_SECONDS so that OpenBLAS threads left spinning by the other
    variant's matmuls do not bill their CPU time to this one.
    """
    ref()
    fast()
    times = ([], [])
    start = time.perf_counter()
    while not times[0] or (len(times[0]) < repeats
                           and time.perf_counter() - start < max_seconds):
        for fn, bucket in zip((ref, fast), times):
            time.sleep(SETTLE_SECONDS)
            for _ in range(block):
                t0 = CLOCK()
                fn()
                bucket.append(CLOCK() - t0)
    return float(np.median(times[0])), float(np.median(times[1]))


def result_row(kernel, shape, ref_s, fast_s, flops=None):
    return dict(kernel=kernel, shape=shape, ref_ms=ref_s * 1e3, numba_ms=fast_s * 1e3,
                speedup=ref_s / fast_s,
                ref_gflops=None if flops is None else flops / ref_s / 1e9,
                numba_gflops=None if flops is None else flops / fast_s / 1e9)


# --------------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------------

def attention_rows(cfg, rng, timing):
    attn = load("attention")
    if attn is None:
        return []
    n, t, d = cfg["B"] * cfg["H"], cfg["T"], cfg["hd"]
    q, k, v, dout = (rng.standard_normal((n, t, d)).astype(DTYPE) for _ in range(4))

    def ref():
        out, lse = attn.attention_forward_ref(q, k, v, causal=True)
        attn.attention_backward_ref(q, k, v, out, lse, dout, causal=True)

    def fused():
        out, lse = attn.attention_forward(q, k, v, causal=True)
        attn.attention_backward(q, k, v, out, lse, dout, causal=True)

    pairs = n * t * (t + 1) // 2
    flops = 2 * pairs * (d + d) + 2 * pairs * (3 * d + 2 * d)
    shape = f"B={cfg['B']} H={cfg['H']} T={t} hd={d} causal"
    return [result_row("attention fwd+bwd", shape, *time_pair(ref, fused, **timing), flops)]


MASKED = dict(B=16, H=4, T=48, hd=32, V=1000)  # an encoder-decoder batch of padded sentences


def masked_attention_rows(rng, timing):
    """Key-padding masked attention (an encoder's self-attention over padded sources, or the
    decoder's cross-attention to them): each sequence a random length 1..T, the same for its
    heads. NumPy composition (``attention_*_ref``: scores, mask, softmax, products over the full
    (T, T) matrices) vs the fused kernel (which skips the padded keys), forward + backward."""
    attn = load("attention")
    if attn is None:
        return []
    b, h, t, d = MASKED["B"], MASKED["H"], MASKED["T"], MASKED["hd"]
    q, k, v, dout = (rng.standard_normal((b * h, t, d)).astype(DTYPE) for _ in range(4))
    lengths = np.repeat(rng.integers(1, t + 1, b), h)

    def ref():
        out, lse = attn.attention_forward_ref(q, k, v, key_lengths=lengths)
        attn.attention_backward_ref(q, k, v, out, lse, dout, key_lengths=lengths)

    def fused():
        out, lse = attn.attention_forward(q, k, v, key_lengths=lengths)
        attn.attention_backward(q, k, v, out, lse, dout, key_lengths=lengths)

    pairs = int(t * lengths.sum())  # the (query, key) pairs that take part
    flops = 2 * pairs * (d + d) + 2 * pairs * (3 * d + 2 * d)
    shape = f"B={b} H={h} T={t} hd={d} key padding"
    return [result_row("masked attention fwd+bwd", shape, *time_pair(ref, fused, **timing), flops)]


def smoothed_cross_entropy_rows(rng, timing):
    """Cross-entropy with label smoothing 0.1 (the translation model's loss) over B*T rows."""
    ce = load("cross_entropy")
    if ce is None:
        return []
    n, vocab = MASKED["B"] * MASKED["T"], MASKED["V"]
    logits = rng.standard_normal((n, vocab)).astype(DTYPE)
    targets = rng.integers(0, vocab, n)
    targets[rng.random(n) < 0.3] = -100  # padding

    def run(forward, backward):
        def step():
            loss, lse = forward(logits, targets, label_smoothing=0.1)
            backward(logits, targets, lse, 1.0, label_smoothing=0.1)
        return step

    pair = time_pair(run(ce.cross_entropy_forward_ref, ce.cross_entropy_backward_ref),
                     run(ce.cross_entropy_forward, ce.cross_entropy_backward), **timing)
    return [result_row("cross_entropy smoothed", f"N={n} V={vocab} eps=0.1", *pair)]


def attention_tile_rows(cfg, rng, timing, sizes=(32, 64, 128)):
    """The fused attention at other (BLOCK_Q, BLOCK_K) tile sizes (--tiles)."""
    attn = load("attention")
    if attn is None:
        return []
    n, t, d = cfg["B"] * cfg["H"], cfg["T"], cfg["hd"]
    q, k, v, dout = (rng.standard_normal((n, t, d)).astype(DTYPE) for _ in range(4))

    def fused():
        out, lse = attn.attention_forward(q, k, v, causal=True)
        attn.attention_backward(q, k, v, out, lse, dout, causal=True)

    def at_tiles(block_q, block_k):
        def run():
            saved = attn.BLOCK_Q, attn.BLOCK_K
            attn.BLOCK_Q, attn.BLOCK_K = block_q, block_k
            try:
                fused()
            finally:
                attn.BLOCK_Q, attn.BLOCK_K = saved
        return run

    rows = []
    for block_q in sizes:
        for block_k in sizes:
            if block_q > t or block_k > t:
                continue
            default_s, tiles_s = time_pair(fused, at_tiles(block_q, block_k), **timing)
            rows.append(result_row(f"attention tiles {block_q}x{block_k}",
                                   f"vs {attn.BLOCK_Q}x{attn.BLOCK_K} T={t} hd={d}",
                                   default_s, tiles_s))
    return rows


def matmul_cases(cfg, rng):
    """(name, a, b) for the matmuls of one training step; weights stored (out, in) as in
    torch.nn.Linear, so the forward multiplies by the transposed view W.T."""
    n, c, v = cfg["B"] * cfg["T"], cfg["C"], cfg["V"]

    def w(out_f, in_f):
        return rng.standard_normal((out_f, in_f)).astype(DTYPE)

    def x(rows, cols):
        return rng.standard_normal((rows, cols)).astype(DTYPE)

    heads, t, hd = cfg["B"] * cfg["H"], cfg["T"], cfg["hd"]
    return [
        ("x @ W_attn.T", x(n, c), w(3 * c, c).T),
        ("x @ W_fc.T", x(n, c), w(4 * c, c).T),
        ("h @ W_proj.T", x(n, 4 * c), w(c, 4 * c).T),
        ("x @ W_lm_head.T", x(n, c), w(v, c).T),
        ("bwd g @ W_attn", x(n, 3 * c), w(3 * c, c)),
        ("bwd g @ W_proj", x(n, c), w(c, 4 * c)),
        ("bwd dW = g.T @ x", x(n, 3 * c).T, x(n, c)),
        ("bwd dW = g.T @ h", x(n, c).T, x(n, 4 * c)),
        ("q @ k^T (batched)", x(heads * t, hd).reshape(heads, t, hd),
         x(heads * hd, t).reshape(heads, hd, t)),
    ]


def matmul_rows(cfg, rng, timing):
    mm = load("matmul")
    if mm is None:
        return []
    rows = []
    for name, a, b in matmul_cases(cfg, rng):
        flops = 2 * a.shape[-2] * a.shape[-1] * b.shape[-1] * (a.shape[0] if a.ndim == 3 else 1)
        shape = f"{tuple(a.shape)} @ {tuple(b.shape)}"
        ref_s, fast_s = time_pair(lambda: np.matmul(a, b), lambda: mm.matmul_numba(a, b),  # BLAS: the rival
                                  **timing)
        rows.append(result_row(f"matmul {name}", shape, ref_s, fast_s, flops))
    return rows


def layernorm_rows(cfg, rng, timing):
    ln = load("layernorm")
    if ln is None:
        return []
    n, c = cfg["B"] * cfg["T"], cfg["C"]
    x, dy = (rng.standard_normal((n, c)).astype(DTYPE) for _ in range(2))
    weight, bias = np.ones(c, DTYPE), np.zeros(c, DTYPE)

    def run(forward, backward):
        def step():
            _, mean, rstd = forward(x, weight, bias, 1e-5)
            backward(dy, x, weight, mean, rstd)
        return step

    ref_s, fast_s = time_pair(run(ln.layernorm_forward_ref, ln.layernorm_backward_ref),
                              run(ln.layernorm_forward, ln.layernorm_backward), **timing)
    return [result_row("layernorm fwd+bwd", f"({n}, {c})", ref_s, fast_s)]


def cross_entropy_rows(cfg, rng, timing):
    ce = load("cross_entropy")
    if ce is None:
        return []
    n, vocab = cfg["B"] * cfg["T"], cfg["V"]
    logits = rng.standard_normal((n, vocab)).astype(DTYPE)
    targets = rng.integers(0, vocab, n)

    def run(forward, backward):
        def step():
            _, lse = forward(logits, targets)
            backward(logits, targets, lse, 1.0)
        return step

    ref_s, fast_s = time_pair(run(ce.cross_entropy_forward_ref, ce.cross_entropy_backward_ref),
                              run(ce.cross_entropy_forward, ce.cross_entropy_backward),
                              **timing)
    return [result_row("cross-entropy fwd+bwd", f"({n}, {vocab})", ref_s, fast_s)]


def gelu_rows(cfg, rng, timing):
    gelu = load("gelu")
    if gelu is None:
        return []
    n, hidden = cfg["B"] * cfg["T"], 4 * cfg["C"]
    x, dy = (rng.standard_normal((n, hidden)).astype(DTYPE) for _ in range(2))
    rows = []
    for approximate in ("tanh", "none"):
        def run(forward, backward):
            def step():
                forward(x, approximate)
                backward(x, dy, approximate)
            return step

        ref_s, fast_s = time_pair(run(gelu.gelu_forward_ref, gelu.gelu_backward_ref),
                                  run(gelu.gelu_forward, gelu.gelu_backward), **timing)
        rows.append(result_row(f"gelu({approximate}) fwd+bwd", f"({n}, {hidden})", ref_s,
                               fast_s))
    return rows


def gpt_param_count(cfg):
    """Parameters of the nanoGPT model of this config (wte tied to lm_head, block_size T)."""
    c = cfg["C"]
    per_layer = 12 * c * c + 13 * c  # c_attn, c_proj, c_fc, mlp c_proj with biases, 2 layernorms
    return cfg["V"] * c + cfg["T"] * c + cfg["n_layer"] * per_layer + 2 * c


def adamw_rows(cfg, rng, timing):
    adamw = load("adamw")
    if adamw is None:
        return []
    size = gpt_param_count(cfg)
    grad = rng.standard_normal(size).astype(DTYPE)
    states = [[rng.standard_normal(size).astype(DTYPE), np.zeros(size, DTYPE),
               np.zeros(size, DTYPE)] for _ in range(2)]
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, step=10)

    def run(step_fn, state):
        return lambda: step_fn(state[0], grad, state[1], state[2], **hyper)

    ref_s, fast_s = time_pair(run(adamw.adamw_step_ref, states[0]),
                              run(adamw.adamw_step, states[1]), **timing)
    return [result_row("adamw step", f"{size / 1e6:.2f}M params", ref_s, fast_s)]


# --------------------------------------------------------------------------------------------
# compile time
# --------------------------------------------------------------------------------------------

_COMPILE_PROBE = r"""
import json, time
import numpy as np
rng = np.random.default_rng(0)
f32 = np.float32
x = rng.standard_normal((8, 16)).astype(f32)
q = rng.standard_normal((2, 8, 4)).astype(f32)
calls = {}
def first_call(name, fn):
    t0 = time.perf_counter()
    try:
        fn()
    except ImportError:
        return
    calls[name] = time.perf_counter() - t0
def attention():
    from tinyllm.kernels import attention as A
    out, lse = A.attention_forward(q, q, q, causal=True)
    A.attention_backward(q, q, q, out, lse, q, causal=True)
def matmul():
    from tinyllm.kernels import matmul as M
    M.matmul_numba(x, x.T)
def layernorm():
    from tinyllm.kernels import layernorm as L
    y, mean, rstd = L.layernorm_forward(x, np.ones(16, f32), np.zeros(16, f32), 1e-5)
    L.layernorm_backward(x, x, np.ones(16, f32), mean, rstd)
def cross_entropy():
    from tinyllm.kernels import cross_entropy as C
    targets = np.arange(8) % 16
    loss, lse = C.cross_entropy_forward(x, targets)
    C.cross_entropy_backward(x, targets, lse, 1.0)
def gelu():
    from tinyllm.kernels import gelu as G
    for approximate in ("tanh", "none"):
        G.gelu_forward(x, approximate)
        G.gelu_backward(x, x, approximate)
def adamw():
    from tinyllm.kernels import adamw as W
    p, m, v = x.copy(), np.zeros_like(x), np.zeros_like(x)
    W.adamw_step(p, x, m, v, lr=1e-3, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, step=1)
import tinyllm.kernels  # imports numba (not part of any kernel's time)
labels = {attention: "attention fwd+bwd", matmul: "matmul_numba", layernorm: "layernorm fwd+bwd",
          cross_entropy: "cross_entropy fwd+bwd", gelu: "gelu fwd+bwd (tanh, none)",
          adamw: "adamw step"}
for fn, label in labels.items():
    first_call(label, fn)
print(json.dumps(calls))
"""


def compile_times():
    """{kernel: (cold seconds, warm seconds)} of the first float32 call, in subprocesses."""
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, PYTHONPATH=ROOT)
        runs = []
        for _ in ("cold", "warm"):
            proc = subprocess.run([sys.executable, "-c", _COMPILE_PROBE], env=env, cwd=ROOT,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"note: compile-time probe failed:\n{proc.stderr[-2000:]}")
                return {}
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {name: (runs[0][name], runs[1].get(name)) for name in runs[0]}


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def print_table(rows):
    header = (f"{'kernel':<26} {'shape':<34} {'NumPy ms':>9} {'numba ms':>9} {'speedup':>8} "
              f"{'GFLOP/s ref':>11} {'GFLOP/s numba':>13}")
    print(header)
    print("-" * len(header))
    for row in rows:
        gflops = [f"{row[key]:.1f}" if row[key] is not None else "" for key in
                  ("ref_gflops", "numba_gflops")]
        print(f"{row['kernel']:<26} {row['shape']:<34} {row['ref_ms']:>9.3f} "
              f"{row['numba_ms']:>9.3f} {row['speedup']:>7.2f}x {gflops[0]:>11} "
              f"{gflops[1]:>13}")


def use_one_thread_cpu_clock():
    global CLOCK
    from tinyllm.kernels.systems.openblas import OPENBLAS

    numba.set_num_threads(1)
    if OPENBLAS is not None:
        OPENBLAS.set_num_threads(1)
    CLOCK = time.thread_time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write all results as JSON here")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats and no compile-time subprocesses")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per variant")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile timing")
    parser.add_argument("--masked-only", action="store_true",
                        help="only the encoder-decoder rows (key-padding attention, smoothed loss)")
    parser.add_argument("--tiles", action="store_true",
                        help="also time the fused attention at other tile sizes (the 'NumPy' "
                             "column is then the default tile size)")
    parser.add_argument("--settle", type=float, default=SETTLE_SECONDS, metavar="SECONDS",
                        help="sleep before each block of timed calls (default %(default)s: OpenBLAS's "
                             "spinning threads settle; 0 keeps numba's pool awake, as in a training loop)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread for numba and OpenBLAS, timed by this thread's CPU time "
                             "(steady on a busy machine; compares the kernels' work, not parallelism)")
    args = parser.parse_args(argv)
    if args.settle < 0:
        parser.error(f"--settle must be >= 0 seconds, got {args.settle}")
    globals()["SETTLE_SECONDS"] = args.settle
    if args.cpu_time:
        use_one_thread_cpu_clock()
    timing = dict(repeats=args.repeats or (5 if args.quick else 20),
                  max_seconds=0.5 if args.quick else 3.0)

    clock = "CPU time of the working thread" if CLOCK is time.thread_time else "wall time"
    print(f"numpy {np.__version__}, numba {numba.__version__}, {os.cpu_count()} CPUs, "
          f"{numba.get_num_threads()} numba threads, float32, medians of alternating timings ({clock})")
    print("OPENBLAS_NUM_THREADS=" + os.environ.get("OPENBLAS_NUM_THREADS", "(unset)") +
          ", OPENBLAS_THREAD_TIMEOUT=" + os.environ.get("OPENBLAS_THREAD_TIMEOUT", "(unset)"))
    rng = np.random.default_rng(0)
    results = {"meta": dict(numpy=np.__version__, numba=numba.__version__,
                            python=platform.python_version(), cpus=os.cpu_count(),
                            machine=platform.machine(), dtype="float32", configs=CONFIGS,
                            repeats=timing["repeats"]),
               "rows": [], "compile_seconds": {}}
    for name, cfg in ({} if args.masked_only else CONFIGS).items():
        print(f"\n== {name}: B={cfg['B']} heads={cfg['H']} T={cfg['T']} head_dim={cfg['hd']} "
              f"C={cfg['C']} N={cfg['B'] * cfg['T']} V={cfg['V']}")
        rows = []
        makers = [attention_rows, matmul_rows, layernorm_rows, cross_entropy_rows, gelu_rows,
                  adamw_rows] + ([attention_tile_rows] if args.tiles else [])
        for make in makers:
            rows += make(cfg, rng, timing)
        print_table(rows)
        for row in rows:
            row["config"] = name
        results["rows"] += rows

    print(f"\n== encoder-decoder: B={MASKED['B']} heads={MASKED['H']} T={MASKED['T']} head_dim={MASKED['hd']}, "
          f"random key lengths 1..T; V={MASKED['V']}")
    rows = masked_attention_rows(rng, timing) + smoothed_cross_entropy_rows(rng, timing)
    print_table(rows)
    for row in rows:
        row["config"] = "encoder-decoder"
    results["rows"] += rows

    results["meta"]["threading_layer"] = numba.threading_layer()
    if not (args.quick or args.no_compile or args.masked_only):
        print("\n== numba compile time of the first float32 call (fresh cache dir, then reuse)")
        times = compile_times()
        for kernel, (cold, warm) in times.items():
            warm_text = f"{warm:7.2f} s" if warm is not None else "      -"
            print(f"{kernel:<36} cold {cold:7.2f} s   warm {warm_text}")
        results["compile_seconds"] = {k: dict(cold=c, warm=w) for k, (c, w) in times.items()}

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
