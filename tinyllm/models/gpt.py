"""A GPT-style causal language model, with nanoGPT's / GPT-2's layout and parameter names.

    idx (B, T) --wte--> + wpe --> [Block] x n_layer --> ln_f --> lm_head (tied to wte) --> logits (B, T, V)
"""
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .. import functional as F
from .. import nn
from ..tensor import Tensor, no_grad

__all__ = ["GPTConfig", "GPT"]

@dataclass
class GPTConfig:
    """Sizes and choices of a GPT; checked when made, so a bad value fails here and not in a matmul."""

    vocab_size: int
    block_size: int
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    activation: str = "gelu_tanh"  # "gelu_tanh" (GPT-2) or "gelu" (exact erf)
    pos_encoding: str = "learned"  # "learned" (GPT-2's wpe) or "sinusoidal" (the original Transformer)
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"GPTConfig: {name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ("gelu_tanh", "gelu"):
            raise ValueError(f"GPTConfig: activation must be 'gelu_tanh' or 'gelu', got {self.activation!r}")
        if self.pos_encoding not in ("learned", "sinusoidal"):
            raise ValueError(f"GPTConfig: pos_encoding must be 'learned' or 'sinusoidal', got {self.pos_encoding!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"GPTConfig: layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"model_type", "architectures", "tinyllm_version"})
        if unknown:
            raise ValueError(f"GPTConfig: unknown keys {unknown} in the config")
        return cls(**{k: v for k, v in d.items() if k in known})


class _Placeholders:
    """Stands in for the ``np.random.Generator`` while a model is built only to have every weight
    replaced by a file's (``from_pretrained``): drawing GPT-2's 124M initial values would take
    seconds, so instead every "draw" is a zero-stride view of one float32 zero, which takes no
    memory. The layers keep it as it is (``astype(..., copy=False)``) until the loader assigns
    the real arrays."""

    @staticmethod
    def _zeros(size):
        return np.broadcast_to(np.float32(0), () if size is None else size)

    def uniform(self, low=0.0, high=1.0, size=None):
        return self._zeros(size)

    def standard_normal(self, size=None, dtype=np.float64):
        return self._zeros(size)


class GPT(nn.Module):
    """GPT causal LM. ``logits, loss = model(idx, targets)``; ``model.generate(idx, ...)``.

    ``init_weights=False`` leaves the weights as read-only placeholders, for a loader that
    assigns every one of them (``from_pretrained``); such a model cannot run before that.
    """

    def __init__(self, config, seed=0, init_weights=True):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT: config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        c = config
        rng = np.random.default_rng(seed) if init_weights else _Placeholders()
        wpe = (nn.LearnedPositionalEmbedding(c.block_size, c.n_embd, rng=rng) if c.pos_encoding == "learned"
               else nn.PositionalEncoding(c.block_size, c.n_embd))
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd, rng=rng),
            wpe=wpe,
            drop=nn.Dropout(c.dropout),
            h=nn.ModuleList([
                nn.Block(c.n_embd, c.n_head, c.bias, c.dropout, c.activation, layer_idx=i,
                         eps=c.layer_norm_epsilon, rng=rng)
                for i in range(c.n_layer)
            ]),
            ln_f=nn.LayerNorm(c.n_embd, eps=c.layer_norm_epsilon, bias=c.bias),
        ))
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False, rng=rng)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying (as GPT-2 and nanoGPT)
        if init_weights:
            self._init_weights(rng)
        self.set_dropout_rng(np.random.default_rng([seed, 1]))
        # generate()'s defaults, as a Hugging Face model's generation_config: an argument left as
        # None takes its value from here (a GPT-2 directory's generation_config.json fills it in).
        self.generation_config = dict(max_length=20, do_sample=True, temperature=1.0, top_k=None, top_p=None,
                                      eos_token_id=None, pad_token_id=None)

    def _init_weights(self, rng):
        """GPT-2 init: every Linear and Embedding weight ~ N(0, 0.02), biases 0, and the projections
        that write into the residual stream (``c_proj``) ~ N(0, 0.02 / sqrt(2 n_layer)), so the
        residual's variance does not grow with depth."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Embedding) or (isinstance(module, nn.Linear) and module is not self.lm_head):
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if name.endswith("c_proj") else 0.02
                w = module.weight
                w.data = (rng.standard_normal(w.shape) * std).astype(w.dtype)
                if getattr(module, "bias", None) is not None:
                    module.bias.data = np.zeros_like(module.bias.data)

    def set_dropout_rng(self, rng):
        """Give every dropout in the model the one explicit Generator ``rng``."""
        self.dropout_rng = rng
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.rng = rng
            if isinstance(m, nn.MultiHeadAttention):
                m.attn_rng = rng

    def num_parameters(self, non_embedding=False):
        n = super().num_parameters()
        if non_embedding and self.config.pos_encoding == "learned":
            n -= self.transformer.wpe.weight.size
        return n

    # --- forward ----------------------------------------------------------------------------------
    def _check_ids(self, idx, past=0):
        idx = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"GPT: token ids must be integers, got dtype {idx.dtype}")
        if idx.ndim != 2:
            raise ValueError(f"GPT: idx must have shape (batch, time), got shape {idx.shape}")
        V, T = self.config.vocab_size, idx.shape[1]
        if idx.size and (idx.min() < 0 or idx.max() >= V):
            bad = idx.min() if idx.min() < 0 else idx.max()
            raise ValueError(f"GPT: token id {int(bad)} is out of range for vocab_size {V} (valid: 0..{V - 1})")
        if past + T > self.config.block_size:
            raise ValueError(
                f"GPT: sequence length {past + T} exceeds block_size {self.config.block_size}; "
                "crop the input to the last block_size tokens"
            )
        return idx

    def forward(self, idx, targets=None, kv_cache=None, last_only=False):
        """idx (B, T) int -> (logits (B, T, V), loss or None).

        ``targets`` (B, T) int gives the mean cross-entropy (positions equal to -100 ignored).
        ``kv_cache`` (a :class:`~tinyllm.nn.KVCache`) continues a sequence whose first
        ``kv_cache.length`` positions were already processed. ``last_only`` computes logits for
        the last position only (what generation needs).
        """
        past = kv_cache.length if kv_cache is not None else 0
        idx = self._check_ids(idx, past)
        T = idx.shape[1]
        tr = self.transformer
        pos = np.arange(past, past + T)
        x = tr.drop(tr.wte(idx) + tr.wpe(pos))  # (B, T, C) + (T, C)
        for block in tr.h:
            x = block(x, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = tr.ln_f(x)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits, targets)
        return logits, loss

    def new_kv_cache(self, batch_size, max_len=None, dtype=None):
        c = self.config
        dtype = dtype or self.transformer.wte.weight.dtype
        return nn.KVCache(c.n_layer, batch_size, c.n_head, max_len or c.block_size, c.n_embd // c.n_head, dtype)

    @no_grad()
    def generate(self, idx, max_new_tokens=None, max_length=None, do_sample=None, temperature=None, top_k=None,
                 top_p=None, eos_token_id=None, seed=None, use_cache=True, pad_token_id=None):
        """Continue ``idx`` (B, T) token by token; returns prompt + new tokens, as Hugging Face's.

        ``max_length`` counts the prompt, ``max_new_tokens`` does not (it wins when both are given).
        ``do_sample=False`` or ``temperature=0`` picks the most likely token (greedy); otherwise
        logits / temperature are filtered by ``top_k`` then ``top_p`` and sampled with a Generator
        seeded by ``seed``. A sequence that produced ``eos_token_id`` is padded with it (or with
        ``pad_token_id``) until all are done. ``use_cache`` changes speed only, never the output.

        Arguments left as None take their value from ``self.generation_config`` (for a tinyllm model:
        sampling at temperature 1, max_length 20; for a GPT-2 directory: Hugging Face's defaults,
        greedy, with GPT-2's end-of-text token).
        """
        from ..generation import generate

        given = dict(max_length=max_length, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                     eos_token_id=eos_token_id, pad_token_id=pad_token_id)
        args = {k: (self.generation_config.get(k) if v is None else v) for k, v in given.items()}
        if max_new_tokens is not None and max_length is None:
            args["max_length"] = None  # max_new_tokens wins over a default max_length
        return generate(self, idx, max_new_tokens=max_new_tokens, seed=seed, use_cache=use_cache, **args)

    # --- saving and loading --------------------------------------------------------------------------
    def save_pretrained(self, save_directory, format="tinyllm"):
        """Write ``config.json`` and ``model.safetensors`` into ``save_directory``.

        ``format="huggingface"`` writes a GPT-2 directory that ``transformers`` loads.
        """
        from .io import save_model

        save_model(self, save_directory, format=format)

    @classmethod
    def from_pretrained(cls, directory):
        """Load a model saved by :meth:`save_pretrained` (tinyllm or Hugging Face GPT-2 format)."""
        from .io import load_model

        return load_model(cls, directory)

