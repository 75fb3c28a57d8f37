"""One pre-LayerNorm Transformer block (GPT-2's) for one new position per sequence, in one
compiled call: a step of text generation with a KV cache, where no gradient is taken.

x (B, C), one row per sequence; the weights of the six layers as ``torch.nn.Linear`` holds
them, W (N, K); the layer's KV cache k_cache, v_cache (B, H, L, D) holding ``start`` positions::

    h   = LayerNorm_1(x)
    qkv = h @ W_attn^T + b_attn                           (B, 3C): q | k | v, heads side by side
    k_cache[:, :, start], v_cache[:, :, start] = k, v     (written in place)
    a   = attention of q over keys 0 .. start             (B, C)
    x   = x + a @ W_proj^T + b_proj
    h   = LayerNorm_2(x)
    f   = GELU(h @ W_fc^T + b_fc)                         (B, 4C)
    out = x + f @ W_mlp_proj^T + b_mlp_proj               (B, C)

Why one call. Generating a token runs every block once for a single position: the four weight
products read each weight once and are bound by memory bandwidth, and the rest (two
LayerNorms, attention over the cache, GELU, two residual adds) is microseconds of arithmetic.
Run as ten autograd Functions behind their module calls, Python wrappers and kernel launches,
that rest costs more than the arithmetic (about 0.2 ms a block on GPT-2, a tenth of a token's
time). Here it is one call. Each step calls the compiled code the separate kernels run (gemv's
blocks, LayerNorm's row, the cached attention's heads, GELU's formula), on the same inputs in
the same order, so the result is bit-identical to ``nn.Block`` run Function by Function under
``no_grad`` (tests/test_kernels_decode.py holds it so).

:func:`block_step_ref` is the NumPy reference (the same composition of the kernels' references).
"""
import numba
import numpy as np

from . import attention as _attention
from . import gelu as _gelu
from . import gemv as _gemv
from . import layernorm as _layernorm
from .systems.jit import get_num_threads, njit

__all__ = ["block_step_ref", "block_step", "block_step_applies", "stored_layout", "LINEAR_NAMES"]

# The four products of a block, in the order they run; each a (weight, bias) pair.
LINEAR_NAMES = ("attn", "attn_proj", "fc", "mlp_proj")


def _check(x, k_cache, v_cache, start, n_head, norms, linears, approximate):
    fn = "block_step"
    if x.ndim != 2 or x.dtype not in (np.float32, np.float64) or x.shape[1] % n_head:
        raise ValueError(f"{fn}: x must be float32 or float64 (B, C) with C divisible by n_head={n_head}, "
                         f"got {x.dtype} {x.shape}")
    B, C = x.shape
    H, D = n_head, C // n_head
    dt = x.dtype
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.ndim != 4 or cache.shape[:2] != (B, H) or cache.shape[3] != D or cache.dtype != dt:
            raise ValueError(f"{fn}: {name} must be {x.dtype} (B, H, L, D) = ({B}, {H}, L, {D}), "
                             f"got {cache.dtype} {cache.shape}")
    if not 0 <= start < k_cache.shape[2]:
        raise ValueError(f"KVCache: {start + 1} positions exceed the cache's max_len {k_cache.shape[2]}")
    if approximate not in ("tanh", "none"):
        raise ValueError(f"{fn}: approximate={approximate!r} is not 'tanh' or 'none'")
    inner = linears["fc"][0].shape[0]
    for name, want in zip(LINEAR_NAMES, ((3 * C, C), (C, C), (inner, C), (C, inner))):
        w, b = linears[name]
        if w.shape != want or w.dtype != dt or (b is not None and (b.shape != want[:1] or b.dtype != dt)):
            raise ValueError(f"{fn}: {name} weight must be {dt} {want} (bias {want[0]},), got {w.dtype} {w.shape}"
                             + ("" if b is None else f" (bias {b.dtype} {b.shape})"))
    for name in ("ln_1", "ln_2"):
        w, b = norms[name]
        if w.shape != (C,) or w.dtype != dt or (b is not None and (b.shape != (C,) or b.dtype != dt)):
            raise ValueError(f"{fn}: {name} weight and bias must be {dt} ({C},)")


# ----------------------------------------------------------------------------------------------
# NumPy reference


def block_step_ref(x, k_cache, v_cache, start, n_head, norms, linears, eps=1e-5, approximate="tanh", scale=None):
    """The block for x (B, C), one new position per sequence, in NumPy; returns (B, C) and writes
    the new keys and values into k_cache, v_cache (B, H, L, D) at position ``start``.

    ``norms``: {"ln_1": (weight, bias), "ln_2": (weight, bias)}, bias may be None;
    ``linears``: {"attn", "attn_proj", "fc", "mlp_proj"} -> (W (N, K), bias or None);
    ``approximate``: GELU's "tanh" (GPT-2) or "none"; ``scale``: attention's, 1/sqrt(D) if None.
    """
    _check(x, k_cache, v_cache, start, n_head, norms, linears, approximate)
    B, C = x.shape

    def linear(h, name):
        return _gemv.gemv_ref(h, *linears[name])

    def norm(h, name):
        return _layernorm.layernorm_forward_ref(h, *norms[name], eps)[0]

    qkv = linear(norm(x, "ln_1"), "attn")  # (B, 3C)
    a, _ = _attention.cached_attention_forward_ref(qkv.reshape(B, 1, 3 * C), k_cache, v_cache, start, n_head,
                                                   scale=scale)
    x = x + linear(a.reshape(B, C), "attn_proj")
    f = _gelu.gelu_forward_ref(linear(norm(x, "ln_2"), "fc"), approximate)  # (B, 4C)
    return x + linear(f, "mlp_proj")


# ----------------------------------------------------------------------------------------------
# numba


@njit
def _norm_rows(x, weight, bias, eps, y, mean, rstd):
    for i in range(x.shape[0]):
        _layernorm._layernorm_row(x, i, weight, bias, eps, y, mean, rstd)


@njit
def _gelu_inplace_free(h, out, exact):
    """out = GELU(h) element by element, with the formulas :func:`.gelu.gelu_forward` uses for
    h's dtype (flat, C-contiguous arrays)."""
    if h.itemsize == 4:
        if exact:
            _gelu._gelu_erf_chunk_f32(h, out)
        else:
            _gelu._gelu_tanh_chunk_f32(h, out, out[:0])
    else:
        for k in range(h.shape[0]):
            v = np.float64(h[k])
            out[k] = _gelu._gelu_erf(v) if exact else _gelu._gelu_tanh(v)


@njit
def _add(a, b, out):
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[i, j] = a[i, j] + b[i, j]


@njit
def _block_step_kernel(x, ln1_w, ln1_b, ln2_w, ln2_b, w_attn, c_attn, b_attn, hb_attn, w_proj, c_proj, b_proj,
                       hb_proj, w_fc, c_fc, b_fc, hb_fc, w_mproj, c_mproj, b_mproj, hb_mproj, k_cache, v_cache,
                       start, n_head, scale, eps, exact_gelu, threads, serial_work, attn_serial):
    """The block's step (module docstring): each weight w_* as it lies (gemv_into's ``stored``,
    c_* its layout flag), its bias b_* (an empty array unless hb_*); the LayerNorms' biases
    are arrays (zeros for none, as :func:`.layernorm.layernorm_forward` does)."""
    B, C = x.shape
    dt = x.dtype
    H = n_head
    D = C // H
    mean, rstd = np.empty(B, dt), np.empty(B, dt)
    h = np.empty((B, C), dt)
    _norm_rows(x, ln1_w, ln1_b, eps, h, mean, rstd)
    qkv = np.empty((B, 3 * C), dt)
    _gemv.gemv_into(h, w_attn, c_attn, b_attn, hb_attn, qkv, threads, serial_work)
    heads = qkv.reshape(B, 1, 3, H, D)
    att = np.empty((B, 1, H, D), dt)
    lse = np.empty((B, H, 1), dt)
    key_starts = np.zeros(B, np.int64)  # no left padding: every sequence attends from key 0
    if attn_serial:
        _attention._cached_pairs(heads, k_cache, v_cache, start, scale, att, lse, 0, B * H, key_starts)
    else:
        _attention._cached_parallel(heads, k_cache, v_cache, start, scale, att, lse, key_starts)
    proj = np.empty((B, C), dt)
    _gemv.gemv_into(att.reshape(B, C), w_proj, c_proj, b_proj, hb_proj, proj, threads, serial_work)
    x1 = np.empty((B, C), dt)
    _add(x, proj, x1)
    _norm_rows(x1, ln2_w, ln2_b, eps, h, mean, rstd)
    n_inner = w_fc.shape[1] if c_fc else w_fc.shape[0]
    f = np.empty((B, n_inner), dt)
    _gemv.gemv_into(h, w_fc, c_fc, b_fc, hb_fc, f, threads, serial_work)
    g = np.empty((B, n_inner), dt)
    _gelu_inplace_free(f.reshape(-1), g.reshape(-1), exact_gelu)
    _gemv.gemv_into(g, w_mproj, c_mproj, b_mproj, hb_mproj, proj, threads, serial_work)
    out = np.empty((B, C), dt)
    _add(x1, proj, out)
    return out


def stored_layout(w):
    """(stored, columns) for a weight W (N, K): W itself if C-contiguous, or (W^T, True) if W is
    the transpose of a C-contiguous array (a memory-mapped GPT-2 Conv1D weight); None otherwise."""
    if w.flags.c_contiguous:
        return w, False
    if w.T.flags.c_contiguous:
        return w.T, True
    return None


def block_step_applies(x, k_cache, start, norms, linears):
    """Whether :func:`block_step` takes this step: x (B, C) float32/float64 with at most gemv's
    MAX_ROWS rows, a free position left in the cache, every array of x's dtype, every weight in
    rows or columns layout, and compiled kernels on (with the JIT disabled its loops would run
    in the interpreter: the separate layers run on NumPy instead, as ``blas.linear_forward`` does)."""
    dt = x.dtype
    if (numba.config.DISABLE_JIT or x.ndim != 2 or not 1 <= x.shape[0] <= _gemv.MAX_ROWS
            or dt not in (np.float32, np.float64) or k_cache.dtype != dt or not 0 <= start < k_cache.shape[2]):
        return False
    for w, b in norms.values():
        if w.dtype != dt or (b is not None and b.dtype != dt):
            return False
    for w, b in linears.values():
        if w.dtype != dt or w.ndim != 2 or (b is not None and b.dtype != dt) or not (
                w.flags.c_contiguous or w.T.flags.c_contiguous):
            return False
    return True


def block_step(x, k_cache, v_cache, start, n_head, norms, linears, eps=1e-5, approximate="tanh", scale=None):
    """Same contract as :func:`block_step_ref` (numba, one call). x is copied to C order and
    weights in neither layout to C order (the caller, ``nn.Block``, takes this path only when
    none needs it); the caches must be C-contiguous (they are written in place)."""
    _check(x, k_cache, v_cache, start, n_head, norms, linears, approximate)
    if not (k_cache.flags.c_contiguous and v_cache.flags.c_contiguous):
        raise ValueError("block_step: k_cache and v_cache must be C-contiguous (they are written in place)")
    B, C = x.shape
    dt = x.dtype
    args = []
    for name in ("ln_1", "ln_2"):
        w, b = norms[name]
        args += [np.ascontiguousarray(w), np.zeros(C, dt) if b is None else np.ascontiguousarray(b)]
    empty = np.empty(0, dt)
    for name in LINEAR_NAMES:
        w, b = linears[name]
        stored, columns = stored_layout(w) or (np.ascontiguousarray(w), False)
        args += [stored, columns, empty if b is None else np.ascontiguousarray(b), b is not None]
    D = C // n_head
    scale = _attention._checked_scale("block_step", scale, D, dt)
    threads = get_num_threads()
    attn_serial = B * n_head * (start + 1) * D < _attention.CACHED_SERIAL_WORK or threads == 1
    return _block_step_kernel(np.ascontiguousarray(x), *args, k_cache, v_cache, start, n_head, scale,
                              float(eps), approximate == "none", threads, _gemv.SERIAL_WORK, attn_serial)
