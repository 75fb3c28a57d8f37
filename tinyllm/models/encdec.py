"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

    src_ids (B, S) --wte * sqrt(d)--> + positions --> [EncoderBlock] x n_encoder_layers --> memory (B, S, C)
    tgt_in_ids (B, T) --wte * sqrt(d)--> + positions --> [DecoderBlock] x n_decoder_layers --> lm_head --> logits (B, T, V)
                                                           ^ cross-attention to memory

The encoder reads the whole source at once (padded positions, ``src_ids == pad_token_id``, are
masked out of every attention over the source); the decoder reads the target shifted right,
``tgt_in_ids = [BOS, y_1, ..., y_{T-1}]``, and predicts ``targets = [y_1, ..., y_T]`` (padding in
the targets counts for nothing in the loss). ``generate`` translates: it runs the encoder once,
then the decoder token by token, with a KV cache for its self-attention and the cross-attention
keys and values of the source computed once.

Parameter names follow GPT-2's (``wte``, ``wpe``, ``h.{i}.attn.c_attn``, ``crossattention.q_attn``
...) under ``encoder.`` and ``decoder.``, so the pieces read like the GPT in :mod:`.gpt`.
"""
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .. import functional as F
from .. import nn
from ..tensor import Tensor, no_grad
from .outputs import LMOutput, PretrainedModelMixin, one_of
from .resize import resize_rows, resized_vocab_size

__all__ = ["EncoderDecoderConfig", "EncoderDecoderTransformer"]

MODEL_TYPE = "tinyllm-encoder-decoder"


@dataclass
class EncoderDecoderConfig:
    """Sizes and choices of an encoder-decoder Transformer, checked when made.

    The defaults are a small model (the paper's base model is d_model 512, d_ff 2048, 8 heads,
    6 + 6 layers, dropout 0.1, label smoothing 0.1, post-LN). ``tie_word_embeddings`` ties the
    output projection to the decoder's token embedding (section 3.4); ``share_embeddings`` also
    makes the encoder use that same table (one vocabulary for both languages, as the paper's
    shared BPE vocabulary; needs src_vocab_size == tgt_vocab_size). ``scale_embedding``
    multiplies token embeddings by sqrt(d_model) (section 3.4). ``max_tgt_len`` counts the
    decoder's input including its BOS (so a target of max_tgt_len - 1 tokens and EOS fits).
    """

    src_vocab_size: int
    tgt_vocab_size: int
    max_src_len: int = 128
    max_tgt_len: int = 128
    n_encoder_layers: int = 3
    n_decoder_layers: int = 3
    n_head: int = 4
    d_model: int = 128
    d_ff: int = 512
    dropout: float = 0.1
    label_smoothing: float = 0.0
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    tie_word_embeddings: bool = True
    norm_first: bool = True
    pos_encoding: str = "sinusoidal"  # "sinusoidal" (the paper's) or "learned"
    share_embeddings: bool = False
    scale_embedding: bool = True
    activation: str = "relu"  # "relu" (the paper's), "gelu" or "gelu_tanh"
    bias: bool = True
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        for name in ("src_vocab_size", "tgt_vocab_size", "max_src_len", "max_tgt_len", "n_encoder_layers",
                     "n_decoder_layers", "n_head", "d_model", "d_ff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"EncoderDecoderConfig: {name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_head != 0:
            raise ValueError(f"EncoderDecoderConfig: d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.max_tgt_len < 2:
            raise ValueError(f"EncoderDecoderConfig: max_tgt_len must be >= 2 (BOS and one token), "
                             f"got {self.max_tgt_len}")
        for name, low, high in (("dropout", 0.0, 1.0), ("label_smoothing", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
                raise ValueError(f"EncoderDecoderConfig: {name} must be a number in [{low}, {high}), got {value!r}")
        self._check_token_ids()
        for name in ("tie_word_embeddings", "norm_first", "share_embeddings", "scale_embedding", "bias"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"EncoderDecoderConfig: {name} must be True or False, got {getattr(self, name)!r}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            raise ValueError(f"EncoderDecoderConfig: share_embeddings needs one vocabulary, but src_vocab_size="
                             f"{self.src_vocab_size} != tgt_vocab_size={self.tgt_vocab_size}")
        if self.pos_encoding not in ("sinusoidal", "learned"):
            raise ValueError(f"EncoderDecoderConfig: pos_encoding must be 'sinusoidal' or 'learned', "
                             f"got {self.pos_encoding!r}")
        if self.activation not in ("relu", "gelu", "gelu_tanh"):
            raise ValueError(f"EncoderDecoderConfig: activation must be 'relu', 'gelu' or 'gelu_tanh', "
                             f"got {self.activation!r}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(f"EncoderDecoderConfig: layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon}")

    def _check_token_ids(self):
        ids = {}
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"EncoderDecoderConfig: {name} must be an integer, got {value!r}")
            # pad is used in sources and targets, bos and eos in targets
            vocab = min(self.src_vocab_size, self.tgt_vocab_size) if name == "pad_token_id" else self.tgt_vocab_size
            if not 0 <= value < vocab:
                raise ValueError(f"EncoderDecoderConfig: {name}={value} is outside the vocabulary (0..{vocab - 1})")
            ids[name] = value
        if len(set(ids.values())) != 3:
            raise ValueError(f"EncoderDecoderConfig: pad, bos and eos must be three different tokens, got {ids}")

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known - {"model_type", "architectures", "tinyllm_version"})
        if unknown:
            raise ValueError(f"EncoderDecoderConfig: unknown keys {unknown} in the config")
        return cls(**{k: v for k, v in d.items() if k in known})


def _stack(c, vocab_size, max_len, n_layers, block, rng, wte=None):
    """The embedding, positions and layers of one side (encoder or decoder)."""
    wte = wte if wte is not None else nn.Embedding(vocab_size, c.d_model, rng=rng)
    wpe = (nn.LearnedPositionalEmbedding(max_len, c.d_model, rng=rng) if c.pos_encoding == "learned"
           else nn.PositionalEncoding(max_len, c.d_model))
    modules = dict(
        wte=wte,
        wpe=wpe,
        drop=nn.Dropout(c.dropout),
        h=nn.ModuleList([
            block(c.d_model, c.n_head, c.d_ff, c.bias, c.dropout, c.activation, c.norm_first,
                  eps=c.layer_norm_epsilon, layer_idx=i, rng=rng)
            for i in range(n_layers)
        ]),
    )
    if c.norm_first:  # pre-LN leaves the residual stream un-normalised: one LayerNorm at the end
        modules["ln_f"] = nn.LayerNorm(c.d_model, eps=c.layer_norm_epsilon, bias=c.bias)
    return nn.ModuleDict(modules)


class EncoderDecoderTransformer(PretrainedModelMixin, nn.Module):
    """``logits, loss = model(src_ids, tgt_in_ids, targets=tgt_out_ids)``; ``model.generate(src_ids)``."""

    config_class = EncoderDecoderConfig
    model_type = MODEL_TYPE  # the "model_type" of its config.json

    def __init__(self, config, seed=0):
        super().__init__()
        if not isinstance(config, EncoderDecoderConfig):
            raise TypeError(f"EncoderDecoderTransformer: config must be an EncoderDecoderConfig, "
                            f"got {type(config).__name__}")
        self.config = c = config
        rng = np.random.default_rng(seed)
        self.encoder = _stack(c, c.src_vocab_size, c.max_src_len, c.n_encoder_layers, nn.EncoderBlock, rng)
        shared = self.encoder.wte if c.share_embeddings else None
        self.decoder = _stack(c, c.tgt_vocab_size, c.max_tgt_len, c.n_decoder_layers, nn.DecoderBlock, rng, shared)
        self.lm_head = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False, rng=rng)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.decoder.wte.weight
        self._init_weights(rng)
        self.set_dropout_rng(np.random.default_rng([seed, 1]))

    def _init_weights(self, rng):
        """Token embeddings (and learned positions) ~ N(0, 1/d_model), so that after the
        sqrt(d_model) scaling a token vector has unit-size entries like the sinusoids; every other
        weight matrix Xavier-uniform, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), as PyTorch's
        nn.Transformer; biases 0 (LayerNorms stay 1 and 0)."""
        d = self.config.d_model
        seen = set()
        for name, module in self.named_modules():
            if isinstance(module, nn.Embedding) and id(module.weight) not in seen:
                module.weight.data = (rng.standard_normal(module.weight.shape) / math.sqrt(d)).astype(np.float32)
            elif isinstance(module, nn.Linear) and id(module.weight) not in seen:
                fan_out, fan_in = module.weight.shape
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                if module is self.lm_head:
                    bound = math.sqrt(3.0 / d)  # the same spread as the embeddings, N(0, 1/d)'s
                module.weight.data = rng.uniform(-bound, bound, module.weight.shape).astype(np.float32)
                if module.bias is not None:
                    module.bias.data = np.zeros_like(module.bias.data)
            if hasattr(module, "weight"):
                seen.add(id(module.weight))

    def set_dropout_rng(self, rng):
        """Give every dropout in the model the one explicit Generator ``rng``."""
        self.dropout_rng = rng
        for m in self.modules():
            if isinstance(m, nn.Dropout):
                m.rng = rng
            if isinstance(m, (nn.MultiHeadAttention, nn.CrossAttention)):
                m.attn_rng = rng

    # --- input checks ----------------------------------------------------------------------------
    def _check_ids(self, ids, what, vocab_size, max_len, past=0):
        ids = ids.data if isinstance(ids, Tensor) else np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise TypeError(f"EncoderDecoderTransformer: {what} must be integer token ids, got dtype {ids.dtype}")
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(f"EncoderDecoderTransformer: {what} must have shape (batch, length) with length >= 1, "
                             f"got shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            bad = ids.min() if ids.min() < 0 else ids.max()
            where = tuple(int(i) for i in np.argwhere(ids == bad)[0])
            raise ValueError(f"EncoderDecoderTransformer: {what}{list(where)} = {int(bad)} is outside the "
                             f"vocabulary of {vocab_size} (valid ids 0..{vocab_size - 1})")
        if past + ids.shape[1] > max_len:
            limit = "max_src_len" if what == "src_ids" else "max_tgt_len"
            raise ValueError(f"EncoderDecoderTransformer: {what} has length {past + ids.shape[1]}, longer than "
                             f"{limit}={max_len}; shorten it or build the model with a larger {limit}")
        return ids.astype(np.int64, copy=False)

    def _check_src(self, src_ids):
        c = self.config
        return self._check_ids(src_ids, "src_ids", c.src_vocab_size, c.max_src_len)

    def _check_tgt(self, tgt_ids, past=0):
        c = self.config
        tgt_ids = self._check_ids(tgt_ids, "tgt_in_ids", c.tgt_vocab_size, c.max_tgt_len, past)
        if past == 0 and (tgt_ids[:, 0] != c.bos_token_id).any():
            row = int(np.flatnonzero(tgt_ids[:, 0] != c.bos_token_id)[0])
            raise ValueError(f"EncoderDecoderTransformer: tgt_in_ids[{row}] starts with {int(tgt_ids[row, 0])}, "
                             f"not bos_token_id={c.bos_token_id}: the decoder input is the target shifted right, "
                             f"[BOS, y_1, ..., y_(T-1)]")
        return tgt_ids

    def source_mask(self, src_ids):
        """(B, S) bool, True at the real source tokens, False at padding (``pad_token_id``)."""
        return np.asarray(src_ids) != self.config.pad_token_id

    # --- forward ---------------------------------------------------------------------------------
    def _embed(self, side, ids, past=0):
        x = side.wte(ids)  # (B, T, C)
        if self.config.scale_embedding:
            x = x * math.sqrt(self.config.d_model)
        return side.drop(x + side.wpe(np.arange(past, past + ids.shape[1])))  # + (T, C)

    def encode(self, src_ids):
        """The encoder's output ``memory`` (B, S, d_model) for source ids (B, S); padded
        positions take no part in attention (their rows of memory are never looked at)."""
        src_ids = self._check_src(src_ids)
        mask = self.source_mask(src_ids)[:, None, None, :]  # (B, 1, 1, S): keys that take part
        x = self._embed(self.encoder, src_ids)
        for block in self.encoder.h:
            x = block(x, attn_mask=mask)
        return self.encoder.ln_f(x) if self.config.norm_first else x

    def decode(self, tgt_in_ids, memory, memory_mask=None, kv_cache=None, last_only=False):
        """Logits (B, T, tgt_vocab_size) of the next target token at every position of
        ``tgt_in_ids`` (B, T), given the encoder's ``memory`` (B, S, C) and ``memory_mask`` (B, S)
        bool (True at real source tokens; None: all). With ``kv_cache`` (from
        :meth:`new_kv_cache`) the ids continue the ``kv_cache.length`` positions already decoded.
        ``last_only`` projects the last position only (what generation needs).
        """
        past = kv_cache.length if kv_cache is not None else 0
        tgt_in_ids = self._check_tgt(tgt_in_ids, past)
        if memory.shape[0] != tgt_in_ids.shape[0]:
            raise ValueError(f"EncoderDecoderTransformer: memory has batch {memory.shape[0]} but tgt_in_ids has "
                             f"{tgt_in_ids.shape[0]}")
        mask = None if memory_mask is None else np.asarray(memory_mask, dtype=bool)[:, None, None, :]  # (B, 1, 1, S)
        x = self._embed(self.decoder, tgt_in_ids, past)
        for block in self.decoder.h:
            x = block(x, memory, mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(tgt_in_ids.shape[1])
        if self.config.norm_first:
            x = self.decoder.ln_f(x)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        return self.lm_head(x)

    def forward(self, src_ids=None, tgt_in_ids=None, targets=None, *, input_ids=None, attention_mask=None,
                decoder_input_ids=None, labels=None):
        """src_ids (B, S), tgt_in_ids (B, T) starting with BOS -> (logits (B, T, V), loss or None),
        an :class:`LMOutput`.

        ``targets`` (B, T): the next token at each position; positions whose target is
        ``pad_token_id`` (or -100) count for nothing. The loss is the mean cross-entropy per
        counted token, with the config's label smoothing.

        Hugging Face's names work too: ``input_ids`` (the source, with an optional
        ``attention_mask`` that must mark the pad ids), ``decoder_input_ids`` and ``labels`` (the
        targets). Given ``labels`` and no decoder input, the decoder reads the labels shifted right
        behind BOS (-100 read as padding), as Hugging Face's seq2seq models do.
        """
        src_ids = one_of("src_ids", src_ids, "input_ids", input_ids, required=True)
        targets = one_of("targets", targets, "labels", labels)
        tgt_in_ids = one_of("tgt_in_ids", tgt_in_ids, "decoder_input_ids", decoder_input_ids,
                             required=targets is None)
        if tgt_in_ids is None:
            tgt_in_ids = self.shift_right(targets)
        if attention_mask is not None:
            self._check_source_mask(np.asarray(src_ids.data if isinstance(src_ids, Tensor) else src_ids),
                                    attention_mask, "forward")
        src_ids = self._check_src(src_ids)
        memory = self.encode(src_ids)
        logits = self.decode(tgt_in_ids, memory, self.source_mask(src_ids))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits, self._loss_targets(targets, logits.shape[:2]), ignore_index=-100,
                                   label_smoothing=self.config.label_smoothing)
        return LMOutput(logits, loss)

    def shift_right(self, labels):
        """The decoder's input for ``labels`` (B, T): BOS, then the labels but the last, with -100
        read as ``pad_token_id`` (Hugging Face's ``shift_tokens_right``)."""
        labels = np.asarray(labels.data if isinstance(labels, Tensor) else labels)
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be integer ids (B, T), got {labels.dtype} {labels.shape}")
        shifted = np.empty_like(labels, dtype=np.int64)
        shifted[:, 0] = self.config.bos_token_id
        shifted[:, 1:] = labels[:, :-1]
        return np.where(shifted == -100, self.config.pad_token_id, shifted)

    def _loss_targets(self, targets, shape):
        """targets with pad_token_id replaced by -100 (ignored); checked against ``shape`` (B, T)."""
        c = self.config
        targets = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
        if targets.dtype.kind not in "iu":
            raise TypeError(f"EncoderDecoderTransformer: targets must be integer token ids, got dtype {targets.dtype}")
        if targets.shape != tuple(shape):
            raise ValueError(f"EncoderDecoderTransformer: targets have shape {targets.shape}, but tgt_in_ids "
                             f"{tuple(shape)}: one target per decoder input position")
        targets = np.where(targets == c.pad_token_id, -100, targets).astype(np.int64)
        bad = (targets != -100) & ((targets < 0) | (targets >= c.tgt_vocab_size))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"EncoderDecoderTransformer: targets{list(where)} = {int(targets[where])} is outside "
                             f"the vocabulary of {c.tgt_vocab_size} (and is not pad_token_id or -100)")
        return targets

    def new_kv_cache(self, batch_size, max_len=None, dtype=None):
        """An empty cache for the decoder's self-attention (and the cross-attention keys/values)."""
        c = self.config
        dtype = dtype or self.lm_head.weight.dtype
        return nn.KVCache(c.n_decoder_layers, batch_size, c.n_head, max_len or c.max_tgt_len, c.d_model // c.n_head,
                          dtype)

    # --- evaluation --------------------------------------------------------------------------------
    @no_grad()
    def evaluate(self, src_ids, tgt_in_ids, targets, batch_size=64):
        """Mean negative log-likelihood per target token over a dataset, and its perplexity.

        Arrays (N, S), (N, T), (N, T) (padded with pad_token_id), evaluated ``batch_size`` rows at
        a time in eval mode (no dropout) and without label smoothing: the loss of the model's own
        distribution, ``loss = sum of -log p(target) / number of target tokens``, and
        ``perplexity = exp(loss)``. Returns ``{"loss", "perplexity", "n_tokens"}``.
        """
        src_ids, tgt_in_ids, targets = (np.asarray(a) for a in (src_ids, tgt_in_ids, targets))
        if not len(src_ids) == len(tgt_in_ids) == len(targets):
            raise ValueError(f"evaluate: src_ids, tgt_in_ids and targets need one row each per example, got "
                             f"{len(src_ids)}, {len(tgt_in_ids)} and {len(targets)} rows")
        was_training = self.training
        self.eval()
        total, count = 0.0, 0
        try:
            for i in range(0, len(src_ids), batch_size):
                logits, _ = self(src_ids[i:i + batch_size], tgt_in_ids[i:i + batch_size])
                batch_targets = self._loss_targets(targets[i:i + batch_size], logits.shape[:2])
                n = int(np.count_nonzero(batch_targets != -100))
                if n:
                    total += float(F.cross_entropy(logits, batch_targets).item()) * n
                    count += n
        finally:
            self.train(was_training)
        if count == 0:
            raise ValueError("evaluate: no target token to score (every target is padding)")
        loss = total / count
        with np.errstate(over="ignore"):  # a diverged model's loss (past ~709.8 nats): inf, as torch.exp
            perplexity = float(np.exp(loss))
        return {"loss": loss, "perplexity": perplexity, "n_tokens": count}

    def perplexity(self, src_ids, tgt_in_ids, targets, batch_size=64):
        """exp(mean negative log-likelihood per target token) over a dataset, see :meth:`evaluate`."""
        return self.evaluate(src_ids, tgt_in_ids, targets, batch_size)["perplexity"]

    # --- generation --------------------------------------------------------------------------------
    @no_grad()
    def generate(self, src_ids=None, max_new_tokens=None, num_beams=1, length_penalty=1.0, early_stopping=False,
                 do_sample=False, temperature=1.0, top_k=None, top_p=None, seed=None, num_return_sequences=1,
                 max_length=None, use_cache=True, input_ids=None, attention_mask=None, return_dict_in_generate=False,
                 output_scores=False, output_logits=False, streamer=None, eos_token_id=None, pad_token_id=None,
                 repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0, min_new_tokens=0,
                 encoder_repetition_penalty=1.0, tokenizer=None, **knobs):
        """Translate: target ids (B * num_return_sequences, L) for source ids (B, S) (rows padded
        with pad_token_id), as Hugging Face's ``generate`` for an encoder-decoder model.

        Each output row starts with the decoder start token (BOS) and ends at EOS (``eos_token_id``:
        an id or a list of ids, default the config's); rows that finished early are padded with
        ``pad_token_id`` (default the config's). ``max_new_tokens`` (default and largest:
        max_tgt_len, as the decoder reads BOS and all new tokens but the last) counts the tokens
        after BOS, ``max_length`` the whole row with BOS (if both are given, ``max_new_tokens``
        wins). The encoder runs once; the decoder uses a KV
        cache and the cross-attention keys and values of the source projected once
        (``use_cache=False`` recomputes everything each step and gives the same tokens).

        * ``num_beams=1, do_sample=False``: greedy.
        * ``do_sample=True``: sampling from softmax(logits / temperature), filtered by
          ``top_k`` then ``top_p``, with a Generator seeded by ``seed``; ``num_return_sequences``
          samples per source.
        * ``num_beams > 1``: beam search, scoring a finished hypothesis by
          sum log p / (generated length) ** length_penalty, with ``early_stopping`` True, False
          or "never" as in Hugging Face (see :mod:`tinyllm.beam_search`); returns the
          ``num_return_sequences`` best per source, best first.

        Logits processors, transformers' for an encoder-decoder, in its order, each off at its
        default: ``encoder_repetition_penalty`` p (a token of the source, padding included, gets
        logit / p if its logit < 0, else logit * p: p > 1 favours copying the source; its ids are
        read as target ids, which makes sense when both sides share one vocabulary),
        ``repetition_penalty`` p (a token already in the decoder ids, BOS included, gets logit * p
        if its logit < 0, else logit / p), ``no_repeat_ngram_size`` n (a token that would repeat an
        n-gram of the decoder ids gets -inf), ``min_length`` (EOS gets -inf while the decoder ids,
        BOS counted, are shorter) and ``min_new_tokens`` (the same, counting the tokens after
        BOS; given, it replaces ``min_length``). They act in greedy, sampling (before temperature,
        top-k and top-p) and beam search (on each step's log-probabilities), as transformers'.

        A 1-D ``src_ids`` (one source) gives a 1-D result when ``num_return_sequences`` is 1.
        ``input_ids`` is another name for ``src_ids`` and ``attention_mask`` may come along, so
        ``model.generate(**tokenizer(sources, padding=True, return_tensors="np"))`` works; the mask
        must mark the same padding as the ids (this model reads padding from ``pad_token_id``).

        As the GPT's generate (transformers' encoder-decoder fields): ``return_dict_in_generate=True``
        returns a :class:`~tinyllm.models.outputs.GenerateOutput` (``.sequences``, always 2-D; with
        ``output_scores`` the scores each new token was chosen from, with ``output_logits`` the raw
        logits, one (N, V) array per new token; with beams, ``output_scores`` gives
        ``.sequences_scores``). ``streamer`` (e.g. :class:`tinyllm.generation.TextStreamer`) is
        given BOS (1, 1), each new token and the end (one source, greedy or sampled).

        The GPT's further knobs (:mod:`tinyllm.logits_process`) work here too, on the decoder ids:
        ``min_p``, ``typical_p``, ``epsilon_cutoff``, ``eta_cutoff`` (sampling), ``sequence_bias``,
        ``bad_words_ids``, ``forced_bos_token_id`` (the first token after BOS),
        ``forced_eos_token_id`` (the last), ``exponential_decay_length_penalty``,
        ``suppress_tokens``, ``begin_suppress_tokens``, and ``stop_strings`` with ``tokenizer``
        (greedy, sampling and beam search).
        """
        from ..beam_search import beam_search
        from ..generation import (_eos_ids, chain, generate_output, greedy_or_sample, output_record, sampling_warpers,
                                  stopping_criterion)
        from ..logits_process import KNOB_DEFAULTS, check_knobs

        c = self.config
        unknown = sorted(set(knobs) - set(KNOB_DEFAULTS))
        if unknown:
            raise TypeError(f"generate: unknown argument(s) {unknown}")
        knobs = check_knobs(knobs, c.tgt_vocab_size)
        src_ids = one_of("src_ids", src_ids, "input_ids", input_ids, required=True, method="generate")
        src_ids = np.asarray(src_ids.data if isinstance(src_ids, Tensor) else src_ids)
        if attention_mask is not None:
            self._check_source_mask(src_ids, attention_mask)
        one_d = src_ids.ndim == 1
        src_ids = self._check_src(src_ids[None, :] if one_d else src_ids)
        max_new_tokens = self._check_generate_args(
            max_new_tokens, max_length, do_sample, temperature, top_k, top_p,
            dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                 num_return_sequences=num_return_sequences, repetition_penalty=repetition_penalty,
                 no_repeat_ngram_size=no_repeat_ngram_size, min_length=min_length, min_new_tokens=min_new_tokens,
                 encoder_repetition_penalty=encoder_repetition_penalty))
        eos = _eos_ids(c.eos_token_id if eos_token_id is None else eos_token_id)
        pad = c.pad_token_id if pad_token_id is None else pad_token_id
        copies = num_beams if num_beams > 1 else num_return_sequences
        stopping = stopping_criterion(knobs, tokenizer, c.tgt_vocab_size)
        record = output_record(src_ids.shape[0] * copies, num_beams, output_scores, output_logits, streamer)
        was_training = self.training
        self.eval()
        try:
            src_ids = np.repeat(src_ids, copies, axis=0)  # each source's beams / samples next to each other
            processors = self._logits_processors(src_ids, eos, repetition_penalty, no_repeat_ngram_size, min_length,
                                                 min_new_tokens, encoder_repetition_penalty, knobs, 1 + max_new_tokens)
            memory = self.encode(src_ids)
            step = self._decoder_step(memory, self.source_mask(src_ids), use_cache)
            bos = np.full((src_ids.shape[0] // copies, 1), c.bos_token_id, dtype=np.int64)
            if num_beams > 1:
                out, beam_scores = beam_search(step, bos, num_beams, max_length=1 + max_new_tokens, eos_token_id=eos,
                                               pad_token_id=pad, length_penalty=length_penalty,
                                               early_stopping=early_stopping,
                                               num_return_sequences=num_return_sequences,
                                               logits_processor=chain(processors), stopping=stopping)
            else:
                out, beam_scores = greedy_or_sample(
                    step, np.repeat(bos, copies, axis=0), max_new_tokens, np.random.default_rng(seed), do_sample,
                    temperature, top_k or None, top_p, eos, pad, processors, record, streamer, sampling_warpers(knobs),
                    stopping), None
        finally:
            self.train(was_training)
        if return_dict_in_generate:
            return generate_output(out, record, beam_scores if output_scores else None)
        return out[0] if one_d and out.shape[0] == 1 else out

    @staticmethod
    def _logits_processors(src_ids, eos, repetition_penalty, no_repeat_ngram_size, min_length, min_new_tokens,
                           encoder_repetition_penalty, knobs=None, max_length=None):
        """generate's logits processors, in transformers' order: they see the decoder ids (BOS and
        the new tokens; BOS is the "prompt" that ``min_new_tokens`` does not count), and
        ``encoder_repetition_penalty`` sees ``src_ids`` (N, S), one row per decoded sequence.
        ``max_length``: the decoder ids' final length, BOS counted (``forced_eos_token_id``)."""
        from ..generation import _logits_processors, encoder_repetition_penalty_processor

        encoder = (None if encoder_repetition_penalty == 1.0
                   else encoder_repetition_penalty_processor(float(encoder_repetition_penalty), src_ids))
        return _logits_processors(1, None, eos, repetition_penalty, no_repeat_ngram_size, min_length, min_new_tokens,
                                  knobs, max_length, encoder)

    def _check_source_mask(self, src_ids, attention_mask, method="generate"):
        """An attention_mask given with the sources must say what pad_token_id says."""
        mask = np.asarray(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask)
        if mask.shape != src_ids.shape:
            raise ValueError(f"{method}: attention_mask has shape {mask.shape}, the source ids {src_ids.shape}")
        if not np.array_equal(mask.astype(bool), self.source_mask(src_ids)):
            row = int(np.argwhere((mask.astype(bool) != self.source_mask(src_ids)).any(axis=-1).reshape(-1))[0, 0])
            raise ValueError(f"{method}: attention_mask row {row} marks other positions as padding than the ids do; "
                             f"this model reads padding from pad_token_id={self.config.pad_token_id} (pad the "
                             "sources with it, e.g. with the Seq2SeqTokenizer's call)")

    def _check_generate_args(self, max_new_tokens, max_length, do_sample, temperature, top_k, top_p, hf_args):
        """Validate generate's arguments (``hf_args``: the knobs the GPT's generate checks alike,
        ``generation._check_hf_args``); return max_new_tokens."""
        from ..generation import _check_hf_args, check_sampling_args

        c = self.config

        def positive_int(name, value, low=1):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"generate: {name} must be an integer >= {low}, got {value!r}")

        if max_new_tokens is None:
            max_new_tokens = (max_length - 1) if max_length is not None else c.max_tgt_len
            if max_length is not None:
                positive_int("max_length", max_length, 2)
        positive_int("max_new_tokens", max_new_tokens)
        if max_new_tokens > c.max_tgt_len:  # the last new token is never fed back: max_tgt_len inputs
            raise ValueError(f"generate: max_new_tokens={max_new_tokens} exceeds max_tgt_len={c.max_tgt_len}: the "
                             f"decoder reads at most {c.max_tgt_len} positions (BOS and the tokens before the last)")
        check_sampling_args(temperature, top_k, top_p)
        _check_hf_args(sampling=bool(do_sample) and temperature != 0, per="source", **hf_args)
        return int(max_new_tokens)

    def _decoder_step(self, memory, memory_mask, use_cache):
        """step(sequences (N, t), parents (N,) or None) -> next-token logits (N, V), in the model's dtype.

        ``parents[i]`` is the row of the previous step that row i continues (beam search
        reorders the rows); with the cache, that reorders the cached keys and values, and only
        the newest token is fed. Without it the whole sequences are decoded again.
        """
        cache = self.new_kv_cache(memory.shape[0]) if use_cache else None

        def step(sequences, parents=None):
            if cache is None:
                logits = self.decode(sequences, memory, memory_mask, last_only=True)
            else:
                if parents is not None:
                    cache.reorder(parents, cross=False)  # beams move within their source's rows
                logits = self.decode(sequences[:, cache.length:], memory, memory_mask, kv_cache=cache,
                                     last_only=True)
            return logits.data[:, -1, :]

        return step

    # --- the token embeddings, as Hugging Face's ------------------------------------------------------
    def get_input_embeddings(self):
        """The encoder's token embedding (the decoder's too when ``share_embeddings``)."""
        return self.encoder.wte

    def get_output_embeddings(self):
        """The output projection (``lm_head``; its weight is the decoder's embedding when tied)."""
        return self.lm_head

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True, rng=None):
        """:meth:`GPT.resize_token_embeddings <tinyllm.models.gpt.GPT.resize_token_embeddings>` for a
        model of one vocabulary (``src_vocab_size == tgt_vocab_size``, as a Seq2SeqTokenizer's):
        the encoder's and decoder's embeddings and an untied ``lm_head`` all get ``new_num_tokens``
        rows (one table when shared or tied), both vocabulary sizes follow. New rows: N(mu, 1e-9
        Sigma) of the old rows, or (``mean_resizing=False``) N(0, 1/d_model), the model's own init.
        Shrinking below pad/bos/eos_token_id is an error. Returns the encoder's embedding."""
        c = self.config
        if c.src_vocab_size != c.tgt_vocab_size:
            raise ValueError(f"resize_token_embeddings: the model has two vocabularies (src_vocab_size="
                             f"{c.src_vocab_size}, tgt_vocab_size={c.tgt_vocab_size}); only one can be resized")
        size = resized_vocab_size(c.src_vocab_size, new_num_tokens, pad_to_multiple_of)
        if size is None:
            return self.encoder.wte
        largest = max(c.pad_token_id, c.bos_token_id, c.eos_token_id)
        if size <= largest:
            raise ValueError(f"resize_token_embeddings: {size} tokens would drop the special token id {largest} "
                             "(pad, bos or eos)")
        rng = np.random.default_rng(0) if rng is None else rng
        tables = (self.encoder.wte.weight, self.decoder.wte.weight, self.lm_head.weight)
        for weight in {id(w): w for w in tables}.values():  # a shared or tied table once
            resize_rows(weight, size, mean_resizing, rng, std=1 / math.sqrt(c.d_model))
        self.encoder.wte.num_embeddings = self.decoder.wte.num_embeddings = self.lm_head.out_features = size
        c.src_vocab_size = c.tgt_vocab_size = size
        return self.encoder.wte

    # --- saving and loading --------------------------------------------------------------------------
    def save_pretrained(self, save_directory):
        """Write ``config.json`` (with ``"model_type": "tinyllm-encoder-decoder"``) and
        ``model.safetensors`` into ``save_directory``."""
        from .io import save_model

        save_model(self, save_directory)

    @classmethod
    def from_pretrained(cls, directory, **options):
        """Load a model saved by :meth:`save_pretrained` (``options``: as :meth:`GPT.from_pretrained`)."""
        from .io import load_model

        return load_model(cls, directory, **options)

