"""The Transformer pieces: multi-head attention (with a KV cache), cross-attention, the
feed-forward block, the pre-LayerNorm residual Block that a GPT stacks, and the encoder and
decoder layers of the original encoder-decoder Transformer (pre- or post-LayerNorm)."""
import numpy as np

from .. import functional as F
from ..tensor import Tensor, is_grad_enabled
from .layers import Dropout, LayerNorm, Linear
from .module import Module

__all__ = ["KVCache", "MultiHeadAttention", "CrossAttention", "FeedForward", "Block", "EncoderBlock", "DecoderBlock"]


class KVCache:
    """Keys and values of the positions seen so far, for every layer, so that generating one more
    token needs attention for that token only instead of the whole sequence again.

    ``k`` and ``v`` are preallocated (n_layer, B, n_head, max_len, head_dim); ``length`` counts the
    positions already stored. A model forward writes each layer's new keys with ``update`` and
    then calls ``advance``.

    An encoder-decoder also keeps here, per decoder layer, the cross-attention keys and values
    of the encoder output (``cross[layer] = (k, v)``, each (B, n_head, S, head_dim)): they depend
    on the source only, so they are projected once and reused at every decoding step.
    """

    def __init__(self, n_layer, batch_size, n_head, max_len, head_dim, dtype=np.float32):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = np.zeros(shape, dtype=dtype)
        self.v = np.zeros(shape, dtype=dtype)
        self.max_len = max_len
        self.length = 0
        self.cross = {}

    def reorder(self, indices, cross=True):
        """Keep batch rows ``indices`` (B,) in that order: in beam search each surviving beam
        continues the cache of the beam it extends. ``cross=False`` leaves the cross-attention
        entries alone, right when every row moves within a group of rows that share one source
        (a source's beams), as their cross keys and values are then identical."""
        stored = self.length
        self.k[:, :, :, :stored] = self.k[:, indices, :, :stored]
        self.v[:, :, :, :stored] = self.v[:, indices, :, :stored]
        if cross:
            self.cross = {layer: (k[indices], v[indices]) for layer, (k, v) in self.cross.items()}

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
    """Multi-head self-attention (causal for a decoder, not for an encoder), GPT-2 layout.

    One fused projection ``c_attn`` makes queries, keys and values for every head at once
    (C -> 3C); each head attends with ``softmax(q k^T / sqrt(head_dim) + mask) v``; ``c_proj``
    mixes the heads' outputs back (C -> C). ``attn_mask`` in ``forward`` has PyTorch's meaning
    (see :func:`tinyllm.functional.scaled_dot_product_attention`), e.g. (B, 1, 1, T) bool with
    False at padded keys.
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

    def forward(self, x, kv_cache=None, attn_mask=None):
        B, T, C = x.shape
        H = self.n_head
        qkv = self.c_attn(x)  # (B, T, 3C)
        p = self.dropout if self.training else 0.0
        if kv_cache is None and p == 0.0:  # the common case: split, attend, merge in one Function
            y = F.self_attention(qkv, H, is_causal=self.causal, attn_mask=attn_mask)
            return self.resid_dropout(self.c_proj(y))
        key_starts = None  # a left-padded batch's first real key per sequence, if attn_mask is just that
        if kv_cache is not None and attn_mask is not None and not is_grad_enabled():  # (no backward with key_starts)
            key_starts = F.key_starts_from_mask(attn_mask, B, kv_cache.length + T)
        if kv_cache is not None and p == 0.0 and (attn_mask is None or key_starts is not None) and self.causal:
            # decoding: store the new keys and values in the cache and attend over it, in one Function
            y = F.cached_self_attention(qkv, kv_cache.k[self.layer_idx], kv_cache.v[self.layer_idx],
                                        kv_cache.length, H, key_starts=key_starts)
            return self.resid_dropout(self.c_proj(y))
        q, k, v = self._heads(qkv, kv_cache)
        if p > 0.0 and self.attn_rng is None:
            self.attn_rng = np.random.default_rng(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=self.causal, dropout_p=p,
                                           rng=self.attn_rng)
        y = y.permute(0, 2, 1, 3).reshape(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def forward_with_probs(self, x, kv_cache=None, attn_mask=None):
        """``forward``'s output (B, T, C) and the attention weights it used, (B, n_head, T, past + T)
        (after attention dropout, as transformers' ``output_attentions``), by the composed path
        (:func:`tinyllm.functional.attention_probs`): slower, and equal to ``forward`` to float
        rounding. A query that sees no key (a left-padded position) has a row of zeros."""
        B, T, C = x.shape
        q, k, v = self._heads(self.c_attn(x), kv_cache)
        probs = F.attention_probs(q, k, attn_mask, is_causal=self.causal)  # (B, H, T, past + T)
        p = self.dropout if self.training else 0.0
        if p > 0.0:
            if self.attn_rng is None:
                self.attn_rng = np.random.default_rng(0)
            probs = F.dropout(probs, p, training=True, rng=self.attn_rng)
        y = (probs @ v).permute(0, 2, 1, 3).reshape(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y)), probs

    def _heads(self, qkv, kv_cache):
        """qkv (B, T, 3C) -> q (B, H, T, D) and k, v (B, H, past + T, D): with a cache, the new keys and
        values are stored in it and all of its keys and values returned."""
        B, T, _ = qkv.shape
        qkv = qkv.reshape(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # -> (3, B, H, T, D)
        q, k, v = qkv[0], qkv[1], qkv[2]  # each (B, H, T, D)
        if kv_cache is not None:
            k_all, v_all = kv_cache.update(self.layer_idx, k.data, v.data)
            k, v = Tensor._wrap(k_all), Tensor._wrap(v_all)  # (B, H, past+T, D)
        return q, k, v

    def extra_repr(self):
        return f"n_embd={self.n_embd}, n_head={self.n_head}, causal={self.causal}"


class FeedForward(Module):
    """Position-wise MLP: C -> n_inner (default 4C), activation, n_inner -> C (GPT-2's
    ``mlp.c_fc`` and ``mlp.c_proj``). The activation is GELU (GPT-2) or ReLU (the original
    Transformer, section 3.3: FFN(x) = max(0, x W1 + b1) W2 + b2)."""

    def __init__(self, n_embd, bias=True, dropout=0.0, activation="gelu_tanh", rng=None, n_inner=None):
        super().__init__()
        approx = {"gelu_tanh": "tanh", "gelu_new": "tanh", "gelu": "none", "relu": None}
        if activation not in approx:
            raise ValueError(f"FeedForward: activation must be one of {sorted(approx)}, got {activation!r}")
        n_inner = 4 * n_embd if n_inner is None else n_inner
        self.activation, self.approximate = activation, approx[activation]
        self.c_fc = Linear(n_embd, n_inner, bias=bias, rng=rng)
        self.c_proj = Linear(n_inner, n_embd, bias=bias, rng=rng)
        self.dropout = Dropout(dropout)

    def forward(self, x):
        h = self.c_fc(x)
        h = F.relu(h) if self.activation == "relu" else F.gelu(h, self.approximate)
        return self.dropout(self.c_proj(h))


class Block(Module):
    """Pre-LayerNorm Transformer block:  x + attn(ln_1(x)),  then  x + mlp(ln_2(x))."""

    def __init__(self, n_embd, n_head, bias=True, dropout=0.0, activation="gelu_tanh", layer_idx=0,
                 eps=1e-5, rng=None):
        super().__init__()
        self.ln_1 = LayerNorm(n_embd, eps=eps, bias=bias)
        self.attn = MultiHeadAttention(n_embd, n_head, bias, dropout, causal=True, layer_idx=layer_idx, rng=rng)
        self.ln_2 = LayerNorm(n_embd, eps=eps, bias=bias)
        self.mlp = FeedForward(n_embd, bias, dropout, activation, rng=rng)

    def forward(self, x, kv_cache=None, attn_mask=None, output_attentions=False):
        """x (B, T, C); ``attn_mask`` (e.g. (B, 1, 1, past + T) bool, False at padded keys) is
        applied on top of the causal mask (None: causal only, the fast path).
        ``output_attentions=True`` returns ``(x, attn_probs)``, the attention weights
        (B, n_head, T, past + T) computed on the composed path (see
        :meth:`MultiHeadAttention.forward_with_probs`)."""
        if output_attentions:
            a, attn_probs = self.attn.forward_with_probs(self.ln_1(x), kv_cache, attn_mask)
            x = x + a
            return x + self.mlp(self.ln_2(x)), attn_probs
        if kv_cache is not None and attn_mask is None and x.shape[1] == 1 and not self._dropout_active():
            # generating: one new position per sequence, usually under no_grad: one kernel call
            # for the whole block (None where it does not apply; then the lines below)
            y = self._decode_step(x, kv_cache)
            if y is not None:
                return y
        x = x + self.attn(self.ln_1(x), kv_cache, attn_mask)
        return x + self.mlp(self.ln_2(x))

    def _dropout_active(self):
        return self.training and (self.attn.dropout > 0 or self.attn.resid_dropout.p > 0 or self.mlp.dropout.p > 0)

    def _decode_step(self, x, kv_cache):
        """forward's two lines for x (B, 1, C) with a KV cache, by F.transformer_block_step, or None."""
        attn, mlp, ln_1, ln_2 = self.attn, self.mlp, self.ln_1, self.ln_2
        if mlp.approximate is None or ln_1.eps != ln_2.eps:
            return None
        layer = attn.layer_idx
        return F.transformer_block_step(
            x, kv_cache.k[layer], kv_cache.v[layer], kv_cache.length, attn.n_head,
            norms={"ln_1": (ln_1.weight, ln_1.bias), "ln_2": (ln_2.weight, ln_2.bias)},
            linears={"attn": (attn.c_attn.weight, attn.c_attn.bias), "attn_proj": (attn.c_proj.weight, attn.c_proj.bias),
                     "fc": (mlp.c_fc.weight, mlp.c_fc.bias), "mlp_proj": (mlp.c_proj.weight, mlp.c_proj.bias)},
            eps=ln_1.eps, approximate=mlp.approximate)


class CrossAttention(Module):
    """Multi-head attention from one sequence to another: queries from the decoder's states x
    (B, T, C), keys and values from the encoder's output ``memory`` (B, S, C). GPT-2's layout
    for it (``crossattention``): ``q_attn`` (C -> C) makes the queries, one fused ``c_attn``
    (C -> 2C) the keys and values, ``c_proj`` (C -> C) mixes the heads.

    The keys and values depend on the source only: with a ``kv_cache`` they are projected at the
    first decoding step, kept in ``kv_cache.cross[layer_idx]`` and reused at every later step.
    """

    def __init__(self, n_embd, n_head, bias=True, dropout=0.0, layer_idx=0, rng=None):
        super().__init__()
        if n_embd % n_head != 0:
            raise ValueError(f"CrossAttention: n_embd={n_embd} is not divisible by n_head={n_head}")
        self.n_embd, self.n_head, self.head_dim = n_embd, n_head, n_embd // n_head
        self.layer_idx, self.dropout = layer_idx, dropout
        self.q_attn = Linear(n_embd, n_embd, bias=bias, rng=rng)
        self.c_attn = Linear(n_embd, 2 * n_embd, bias=bias, rng=rng)
        self.c_proj = Linear(n_embd, n_embd, bias=bias, rng=rng)
        self.resid_dropout = Dropout(dropout)
        self.attn_rng = None  # Generator for attention-probability dropout, set by the model

    def memory_kv(self, memory):
        """The keys and values of the encoder output: memory (B, S, C) -> k, v (B, n_head, S, head_dim)."""
        B, S, _ = memory.shape
        kv = self.c_attn(memory).reshape(B, S, 2, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]  # (2, B, H, S, D) -> each (B, H, S, D)

    def forward(self, x, memory, attn_mask=None, kv_cache=None):
        """x (B, T, C), memory (B, S, C), attn_mask e.g. (B, 1, 1, S) bool (False at padded
        source positions) -> (B, T, C)."""
        B, T, C = x.shape
        H, D = self.n_head, self.head_dim
        q = self.q_attn(x).reshape(B, T, H, D).permute(0, 2, 1, 3)  # (B, H, T, D)
        if kv_cache is not None and self.layer_idx in kv_cache.cross:
            k, v = (Tensor._wrap(a) for a in kv_cache.cross[self.layer_idx])
        else:
            k, v = self.memory_kv(memory)
            if kv_cache is not None:
                kv_cache.cross[self.layer_idx] = (np.ascontiguousarray(k.data), np.ascontiguousarray(v.data))
        p = self.dropout if self.training else 0.0
        if p > 0.0 and self.attn_rng is None:
            self.attn_rng = np.random.default_rng(0)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p, rng=self.attn_rng)
        y = y.permute(0, 2, 1, 3).reshape(B, T, C)  # (B, H, T, D) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def extra_repr(self):
        return f"n_embd={self.n_embd}, n_head={self.n_head}"


class EncoderBlock(Module):
    """One encoder layer of "Attention Is All You Need": self-attention over the whole source
    (no causal mask; padded keys masked), then the feed-forward network, each in a residual.

    ``norm_first=False`` is the paper's post-LN, ``x = LayerNorm(x + sublayer(x))``;
    ``norm_first=True`` is pre-LN, ``x = x + sublayer(LayerNorm(x))`` (as a GPT; trains more
    stably without a warm-up). The same names either way: ``ln_1``, ``attn``, ``ln_2``, ``mlp``.
    """

    def __init__(self, n_embd, n_head, n_inner, bias=True, dropout=0.0, activation="relu", norm_first=True,
                 eps=1e-5, layer_idx=0, rng=None):
        super().__init__()
        self.norm_first = norm_first
        self.ln_1 = LayerNorm(n_embd, eps=eps, bias=bias)
        self.attn = MultiHeadAttention(n_embd, n_head, bias, dropout, causal=False, layer_idx=layer_idx, rng=rng)
        self.ln_2 = LayerNorm(n_embd, eps=eps, bias=bias)
        self.mlp = FeedForward(n_embd, bias, dropout, activation, rng=rng, n_inner=n_inner)

    def forward(self, x, attn_mask=None):
        if self.norm_first:
            x = x + self.attn(self.ln_1(x), attn_mask=attn_mask)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, attn_mask=attn_mask))
        return self.ln_2(x + self.mlp(x))


class DecoderBlock(Module):
    """One decoder layer: causal self-attention over the target so far, cross-attention to the
    encoder's output, the feed-forward network; each in a residual, pre- or post-LN as
    :class:`EncoderBlock`. Names: ``ln_1``, ``attn``, ``ln_cross_attn``, ``crossattention``,
    ``ln_2``, ``mlp`` (GPT-2's, for its cross-attention variant).
    """

    def __init__(self, n_embd, n_head, n_inner, bias=True, dropout=0.0, activation="relu", norm_first=True,
                 eps=1e-5, layer_idx=0, rng=None):
        super().__init__()
        self.norm_first = norm_first
        self.ln_1 = LayerNorm(n_embd, eps=eps, bias=bias)
        self.attn = MultiHeadAttention(n_embd, n_head, bias, dropout, causal=True, layer_idx=layer_idx, rng=rng)
        self.ln_cross_attn = LayerNorm(n_embd, eps=eps, bias=bias)
        self.crossattention = CrossAttention(n_embd, n_head, bias, dropout, layer_idx=layer_idx, rng=rng)
        self.ln_2 = LayerNorm(n_embd, eps=eps, bias=bias)
        self.mlp = FeedForward(n_embd, bias, dropout, activation, rng=rng, n_inner=n_inner)

    def forward(self, x, memory, memory_mask=None, kv_cache=None):
        """x (B, T, C) the target so far, memory (B, S, C) the encoder's output, memory_mask
        broadcastable to (B, n_head, T, S) (e.g. (B, 1, 1, S), False at padded source positions)."""
        if self.norm_first:
            x = x + self.attn(self.ln_1(x), kv_cache)
            x = x + self.crossattention(self.ln_cross_attn(x), memory, memory_mask, kv_cache)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, kv_cache))
        x = self.ln_cross_attn(x + self.crossattention(x, memory, memory_mask, kv_cache))
        return self.ln_2(x + self.mlp(x))
