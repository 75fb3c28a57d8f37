"""The Transformer pieces: multi-head attention (with a KV cache), the feed-forward block, and
the pre-LayerNorm residual Block that a GPT stacks."""
import numpy as np

from .. import functional as F
from ..tensor import Tensor
from .layers import Dropout, LayerNorm, Linear
from .module import Module

__all__ = ["KVCache", "MultiHeadAttention", "FeedForward", "Block"]


class KVCache:
    """Keys and values of the positions seen so far, for every layer, so that generating one more
    token needs attention for that token only instead of the whole sequence again.

    ``k`` and ``v`` are preallocated (n_layer, B, n_head, max_len, head_dim); ``length`` counts the
    positions already stored. A model forward writes each layer's new keys with ``update`` and
    then calls ``advance``.
    """

    def __init__(self, n_layer, batch_size, n_head, max_len, head_dim, dtype=np.float32):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = np.zeros(shape, dtype=dtype)
        self.v = np.zeros(shape, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    def update(self, layer, k, v):
        """Store new (B, n_head, T, head_dim) keys/values; return all of them, (B, n_head, length+T, head_dim)."""
        start, stop = self.length, self.length + k.shape[2]
        if stop > self.max_len:
            raise ValueError(f"KVCache: {stop} positions exceed the cache's max_len {self.max_len}")
        self.k[layer, :, :, start:stop] = k
        self.v[layer, :, :, start:stop] = v
        return self.k[layer, :, :, :stop], self.v[layer, :, :, :stop]

    def advance(self, n):
        self.length += n


class MultiHeadAttention(Module):
    """Causal multi-head self-attention, GPT-2 layout.

    One fused projection ``c_attn`` makes queries, keys and values for every head at once
    (C -> 3C); each head attends with ``softmax(q k^T / sqrt(head_dim)) v``; ``c_proj`` mixes the
    heads' outputs back (C -> C).
    """

    def __init__(self, n_embd, n_head, bias=True, dropout=0.0, causal=True, layer_idx=0, rng=None):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"MultiHeadAttention: n_embd={n_embd} is not divisible by n_head={n_head}")
        self.n_embd, self.n_head, self.head_dim = n_embd, n_head, n_embd // n_head
        self.causal, self.layer_idx, self.dropout = causal, layer_idx, dropout
        self.c_attn = Linear(n_embd, 3 * n_embd, bias=bias, rng=rng)
        self.c_proj = Linear(n_embd, n_embd, bias=bias, rng=rng)
        self.resid_dropout = Dropout(dropout)
        self.attn_rng = None  # Generator for attention-probability dropout, set by the model

    def forward(self, x, kv_cache=None):
        B, T, C = x.shape
        H, D = self.n_head, self.head_dim
        qkv = self.c_attn(x)  # (B, T, 3C)
        p = self.dropout if self.training else 0.0
        if kv_cache is None and p == 0.0:  # the common case: split, attend, merge in one Function
            return self.resid_dropout(self.c_proj(F.self_attention(qkv, H, is_causal=self.causal)))
        qkv = qkv.reshape(B, T, 3, H, D).permute(2, 0, 3, 1, 4)  # -> (3, B, H, T, D)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, H, T, D)
        if kv_cache is not None:
            k_all, v_all = kv_cache.update(self.layer_idx, k.data, v.data)
            k, v = Tensor._wrap(k_all), Tensor._wrap(v_all)  # (B, H, past+T, D)
        if p > 0.0 and self.attn_rng is None:
            self.attn_rng = np.random.default_rng(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=p, rng=self.attn_rng)
        y = y.permute(0, 2, 1, 3).reshape(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def extra_repr(self):
        return f"n_embd={self.n_embd}, n_head={self.n_head}, causal={self.causal}"


class FeedForward(Module):
    """Position-wise MLP: C -> 4C, GELU, 4C -> C (GPT-2's ``mlp.c_fc`` and ``mlp.c_proj``)."""

    def __init__(self, n_embd, bias=True, dropout=0.0, activation="gelu_tanh", rng=None):
        super().__init__()
        approx = {"gelu_tanh": "tanh", "gelu_new": "tanh", "gelu": "none"}
        if activation not in approx:
            raise ValueError(f"FeedForward: activation must be one of {sorted(approx)}, got {activation!r}")
        self.approximate = approx[activation]
        self.c_fc = Linear(n_embd, 4 * n_embd, bias=bias, rng=rng)
        self.c_proj = Linear(4 * n_embd, n_embd, bias=bias, rng=rng)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), self.approximate)))


class Block(Module):
    """Pre-LayerNorm Transformer block:  x + attn(ln_1(x)),  then  x + mlp(ln_2(x))."""

    def __init__(self, n_embd, n_head, bias=True, dropout=0.0, activation="gelu_tanh", layer_idx=0,
                 eps=1e-5, rng=None):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, eps=eps, bias=bias)
        self.attn = MultiHeadAttention(n_embd, n_head, bias, dropout, causal=True, layer_idx=layer_idx, rng=rng)
        self.ln_2 = LayerNorm(n_embd, eps=eps, bias=bias)
        self.mlp = FeedForward(n_embd, bias, dropout, activation, rng=rng)

    def forward(self, x, kv_cache=None):
        x = x + self.attn(self.ln_1(x), kv_cache)
        return x + self.mlp(self.ln_2(x))
