"""Helpers shared by bench_train.py and bench_generate.py.

* Workers: every measurement runs in a fresh subprocess (``run_worker``), tinyllm and PyTorch
  never in the same process, so neither warms the other's caches or thread pools. A worker
  prints one ``BENCH-RESULT {json}`` line; the parent collects it.
* ``worker_env`` gives both sides the same thread counts; ``peak_rss_mb`` reads the worker's
  own peak resident set size; ``matmul_peak_gflops`` is the float32 BLAS peak MFU is taken
  against.
* ``torch_gpt`` builds the PyTorch reference: nanoGPT's model.py (GPT-2 pre-LN blocks, tied
  embeddings, tanh GELU, fused qkv ``c_attn``, ``F.scaled_dot_product_attention``) with the same
  parameter names as tinyllm, so a tinyllm ``state_dict()`` saved as ``.npz`` loads into it.

This module imports neither tinyllm nor torch at the top, so the parent process stays clean.
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_PREFIX = "BENCH-RESULT "


# --- subprocess workers ---------------------------------------------------------------------------

def worker_env(threads, **extra):
    """The environment of a worker: ``threads`` for OpenBLAS, OpenMP, MKL and numba alike."""
    pythonpath = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath, HF_HUB_OFFLINE="1")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[name] = str(threads)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_worker(script, args, env):
    """Run ``python script *args`` and return (its result dict, monotonic time at its spawn).

    time.monotonic is one system-wide clock on Linux, so the worker's own monotonic stamps can
    be compared with the spawn time (the cold-start figures rely on this).
    """
    cmd = [sys.executable, script, *map(str, args)]
    spawned = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                           f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):]), spawned


def emit_result(result):
    """Called by a worker, last: hand ``result`` (JSON-able) to the parent."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def torch_importable(env):
    """(True, version) or (False, reason), asked of a subprocess so this process stays torch-free."""
    proc = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                          env=env, capture_output=True, text=True)
    if proc.returncode == 0:
        return True, proc.stdout.strip()
    return False, (proc.stderr.strip().splitlines() or ["import failed"])[-1]


# --- measurements -------------------------------------------------------------------------------

def peak_rss_mb():
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20  # macOS reports bytes


def matmul_peak_gflops(n=1024, repeats=15):
    """GFLOP/s of a float32 (n, n) @ (n, n) np.matmul: median of ``repeats`` calls after warm-up."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def busy_machine_note(threads):
    """A warning if other processes already load the machine, else None.

    Multi-threaded code then waits for cores that are not free, far beyond the lost share of CPU:
    on 2 cores busy with another job, a PyTorch training step took 2.6 s instead of 0.06 s (its
    OpenMP threads spin), and a (32, 128) @ (128, 384) float32 np.matmul 16 ms instead of 0.05 ms
    (two OpenBLAS threads).
    """
    load = os.getloadavg()[0]
    if load < 0.5:
        return None
    return (f"WARNING: the machine is busy before the benchmark starts (1-min load average {load:.1f}, "
            f"{os.cpu_count()} cores, {threads} threads used): timings are unreliable")


def read_json_config(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def median(values):
    return float(statistics.median(values)) if values else float("nan")


def random_tokens(vocab_size, n, seed=0):
    """``n`` random token ids, the same on both sides of a comparison."""
    return np.random.default_rng(seed).integers(0, vocab_size, size=n).astype(np.int64)


def random_batch(data, batch_size, block_size, rng):
    """The same draw as ``tinyllm.data.get_batch``, for the torch worker (which must not import tinyllm)."""
    starts = rng.integers(0, len(data) - block_size, size=batch_size)
    offsets = starts[:, None] + np.arange(block_size)  # (B, T)
    return data[offsets].astype(np.int64), data[offsets + 1].astype(np.int64)


# --- output -------------------------------------------------------------------------------------

def fmt(value, spec=".1f"):
    """A table cell: numbers formatted, None / NaN as '-'."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def print_table(headers, rows):
    """A plain text table, first column left-aligned, the others right-aligned."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def write_json(path, payload):
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {path}")


# --- the PyTorch reference ----------------------------------------------------------------------

def torch_gpt(vocab_size, block_size, n_layer, n_head, n_embd, init_from=None, seed=0):
    """nanoGPT's GPT in PyTorch, float32, with tinyllm's parameter names.

    ``model(idx, targets, cache=None, last_only=False) -> (logits, loss)``; ``cache`` is a
    :class:`KVCache` made by ``model.new_kv_cache(B)``; with a cache, a call either fills an empty
    cache (a causal prompt) or adds one token (T = 1). ``init_from``: a ``.npz`` of a tinyllm
    ``state_dict()``, so both libraries start from the very same weights.
    """
    import torch
    from torch import nn
    from torch.nn import functional as F

    head_dim = n_embd // n_head

    class KVCache:
        """Preallocated keys/values (n_layer, B, n_head, block_size, head_dim), as tinyllm's KVCache."""

        def __init__(self, batch_size):
            shape = (n_layer, batch_size, n_head, block_size, head_dim)
            self.k, self.v, self.length = torch.zeros(shape), torch.zeros(shape), 0

        def update(self, layer, k, v):
            stop = self.length + k.shape[2]
            self.k[layer, :, :, self.length:stop] = k
            self.v[layer, :, :, self.length:stop] = v
            return self.k[layer, :, :, :stop], self.v[layer, :, :, :stop]

    class CausalSelfAttention(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)
            self.c_proj = nn.Linear(n_embd, n_embd)

        def forward(self, x, cache=None):
            B, T, C = x.shape
            q, k, v = (t.view(B, T, n_head, head_dim).transpose(1, 2)  # (B, n_head, T, head_dim)
                       for t in self.c_attn(x).split(n_embd, dim=2))
            is_causal = True
            if cache is not None and cache.length > 0:
                assert T == 1, "the torch reference continues a cached sequence one token at a time"
                is_causal = False  # the new token sees every cached position
            if cache is not None:
                k, v = cache.update(self.layer, k, v)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(n_embd, 4 * n_embd)
            self.c_proj = nn.Linear(4 * n_embd, n_embd)

        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.ln_1, self.attn = nn.LayerNorm(n_embd), CausalSelfAttention(layer)
            self.ln_2, self.mlp = nn.LayerNorm(n_embd), MLP()

        def forward(self, x, cache=None):
            x = x + self.attn(self.ln_1(x), cache)
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.transformer = nn.ModuleDict(dict(
                wte=nn.Embedding(vocab_size, n_embd), wpe=nn.Embedding(block_size, n_embd),
                h=nn.ModuleList([Block(i) for i in range(n_layer)]), ln_f=nn.LayerNorm(n_embd)))
            self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
            self.lm_head.weight = self.transformer.wte.weight  # tied, as GPT-2

        def new_kv_cache(self, batch_size):
            return KVCache(batch_size)

        def forward(self, idx, targets=None, cache=None, last_only=False):
            past = cache.length if cache is not None else 0
            pos = torch.arange(past, past + idx.shape[1])
            x = self.transformer.wte(idx) + self.transformer.wpe(pos)
            for block in self.transformer.h:
                x = block(x, cache)
            if cache is not None:
                cache.length += idx.shape[1]
            x = self.transformer.ln_f(x)
            logits = self.lm_head(x[:, -1:] if last_only else x)
            loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            return logits, loss

    torch.manual_seed(seed)
    model = GPT()
    if init_from is not None:
        with np.load(init_from, allow_pickle=False) as saved:
            model.load_state_dict({k: torch.from_numpy(saved[k]) for k in saved.files})
    return model
