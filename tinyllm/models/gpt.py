"""A GPT-style causal language model, with nanoGPT's / GPT-2's layout and parameter names.

    idx (B, T) --wte--> + wpe --> [Block] x n_layer --> ln_f --> lm_head (tied to wte) --> logits (B, T, V)
"""
import math
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Optional

import numpy as np

from .. import functional as F
from .. import nn
from ..tensor import Tensor, no_grad
from ..logits_process import KNOB_DEFAULTS
from .outputs import LMOutput, PretrainedModelMixin, one_of
from .resize import resize_rows, resized_vocab_size

__all__ = ["GPTConfig", "GPT", "check_attention_mask"]


def check_attention_mask(attention_mask, shape, fn):
    """An attention mask of 0/1 (or bool) values and shape ``shape`` as a bool array; a clear
    ValueError naming what is wrong otherwise."""
    mask = np.asarray(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask)
    if mask.shape != tuple(shape):
        raise ValueError(f"{fn}: attention_mask must have shape {tuple(shape)} (batch, past + new tokens), got "
                         f"{mask.shape}")
    if mask.dtype != bool:
        if mask.dtype.kind not in "iuf" or not ((mask == 0) | (mask == 1)).all():
            bad = mask.dtype if mask.dtype.kind not in "iuf" else mask[(mask != 0) & (mask != 1)].flat[0].item()
            raise ValueError(f"{fn}: attention_mask must hold 0 (padding) and 1 (token) only, got {bad!r}")
        mask = mask == 1
    return mask


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
    # the special token ids, as a transformers config has them (GPT-2's are read from its config.json)
    bos_token_id: Optional[int] = None
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None

    # transformers' names for the sizes (GPT2Config's and the generic ones), read-only
    n_positions = max_position_embeddings = property(lambda self: self.block_size)
    hidden_size = property(lambda self: self.n_embd)
    num_hidden_layers = property(lambda self: self.n_layer)
    num_attention_heads = property(lambda self: self.n_head)

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


# generate()'s defaults for a tinyllm model (a GPT-2 directory's come from Hugging Face's, in io.py)
GENERATION_DEFAULTS = dict(max_length=None, do_sample=True, temperature=1.0, top_k=None, top_p=None, eos_token_id=None,
                           pad_token_id=None, num_beams=1, length_penalty=1.0, early_stopping=False,
                           num_return_sequences=1, repetition_penalty=1.0, no_repeat_ngram_size=0, min_length=0,
                           min_new_tokens=0, max_new_tokens=None, **KNOB_DEFAULTS)
# fields of a transformers GenerationConfig that generate reads elsewhere or that mean nothing here
_IGNORED_CONFIG_FIELDS = {"bos_token_id", "decoder_start_token_id", "transformers_version", "_from_model_config"}
# generate's switches that a generation_config may set too (their defaults; not written to generation_config.json)
_SWITCH_DEFAULTS = dict(use_cache=True, return_dict_in_generate=False, output_scores=False, output_logits=False)
# transformers' words, so that a user searching for them finds the same fix
RIGHT_PADDING_WARNING = ("A decoder-only architecture is being used, but right-padding was detected! For correct "
                         "generation results, please set `padding_side='left'` when initializing the tokenizer.")
_GENERATE_ARGS = ("idx (or input_ids), max_new_tokens, max_length, min_length, min_new_tokens, do_sample, temperature, top_k, "
                  "top_p, num_beams, length_penalty, early_stopping, num_return_sequences, repetition_penalty, "
                  "no_repeat_ngram_size, eos_token_id, pad_token_id, attention_mask, seed, use_cache, "
                  "return_dict_in_generate, output_scores, output_logits, streamer, generation_config, tokenizer, "
                  + ", ".join(KNOB_DEFAULTS))


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


class GPT(PretrainedModelMixin, nn.Module):
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
        self.generation_config = dict(GENERATION_DEFAULTS)

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

    def forward(self, idx=None, targets=None, kv_cache=None, last_only=False, attention_mask=None, position_ids=None,
                input_ids=None, labels=None, past_key_values=None, use_cache=None, output_hidden_states=False,
                output_attentions=False, return_dict=None):
        """idx (B, T) int -> (logits (B, T, V), loss or None), nanoGPT's pair, as an :class:`LMOutput`
        (also ``.logits``, ``.loss``). ``input_ids`` is another name for ``idx``, so
        ``model(**tokenizer(texts, return_tensors="np", padding=True)).logits`` works.

        ``targets`` (B, T) int gives the mean cross-entropy (positions equal to -100 ignored).
        ``labels`` (B, T) is Hugging Face's: the labels are the inputs, shifted inside, so the loss
        is that of ``logits[:, :-1]`` against ``labels[:, 1:]`` (-100 ignored), transformers' loss.
        ``kv_cache`` (a :class:`~tinyllm.nn.KVCache`) continues a sequence whose first
        ``kv_cache.length`` positions were already processed. ``last_only`` computes logits for
        the last position only (what generation needs). Hugging Face's names work too:
        ``past_key_values`` is ``kv_cache``, and ``use_cache=True`` without one starts a cache (of
        ``block_size`` positions); either way the cache comes back as ``.past_key_values``, so
        ``out = model(ids, use_cache=True)`` then ``model(next_ids, past_key_values=out.past_key_values)``
        decodes one token at a time.

        ``attention_mask`` (B, past + T) of 0/1, as Hugging Face's: 1 at real tokens, 0 at padding
        (past + T: it covers the cached positions too). Padded keys take part in no attention. The
        positions are ``past .. past + T - 1`` unless ``position_ids`` (B, T) or (T,) are given,
        as in transformers' GPT-2 forward; for a left-padded prompt to get the logits of the
        unpadded one, pass GPT-2's ``position_ids = cumsum(attention_mask) - 1`` (0 at padding), as
        ``generate`` does. A query that sees no real key (a padded position of a left-padded row)
        gets zeros from attention, never NaN; its logits mean nothing. Without a mask (or with one
        of all ones) nothing of this is built.

        transformers' GPT-2 flags: ``output_hidden_states=True`` gives ``.hidden_states``, n_layer + 1
        Tensors (B, T, C): the input of each block (the first: the embeddings, after dropout), and
        last the output of the last block after ``ln_f`` (the states ``lm_head`` reads), over all T
        positions even with ``last_only``. ``output_attentions=True`` gives ``.attentions``, one
        Tensor (B, n_head, T, past + T) per layer of softmax weights; the fused kernels never form
        them, so the blocks then attend on the composed path (slower; logits equal to float
        rounding). A query that sees no real key (a padded position of a left-padded row) has
        weights of zeros, where transformers spreads them evenly over every key (its additive mask
        is a finite minimum); a real query's weights on padded keys are 0 in both. With a KV
        cache both cover the new positions only, as transformers'. ``return_dict=False`` returns
        transformers' plain tuple, ``(loss, logits, past_key_values, hidden_states, attentions)``
        without the entries that are None; otherwise (True or None) the :class:`LMOutput`.
        """
        idx = one_of("idx", idx, "input_ids", input_ids, required=True, method="GPT.forward")
        kv_cache = one_of("kv_cache", kv_cache, "past_key_values", past_key_values, method="GPT.forward")
        past = kv_cache.length if kv_cache is not None else 0
        idx = self._check_ids(idx, past)
        if use_cache and kv_cache is None:
            kv_cache = self.new_kv_cache(idx.shape[0])
        T = idx.shape[1]
        tr = self.transformer
        pos, attn_mask = self._positions_and_mask(idx.shape, past, attention_mask, position_ids)
        x = tr.drop(tr.wte(idx) + tr.wpe(pos))  # (B, T, C) + (T, C) or (B, T, C)
        x, hidden_states, attentions = self._blocks(x, kv_cache, attn_mask, output_hidden_states, output_attentions)
        if kv_cache is not None:
            kv_cache.advance(T)
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None and labels is not None:
            raise ValueError("GPT.forward: pass targets (already shifted) or labels (Hugging Face's, shifted "
                             "here), not both")
        if targets is not None:
            loss = F.cross_entropy(logits, targets)
        elif labels is not None:
            labels = np.asarray(labels.data if isinstance(labels, Tensor) else labels)
            if labels.shape != idx.shape or last_only:
                raise ValueError(f"GPT.forward: labels must have the shape of the input ids {idx.shape} (and "
                                 f"last_only=False), got {labels.shape}")
            loss = F.cross_entropy(logits[:, :-1, :], labels[:, 1:])  # token t predicts token t + 1
        out = LMOutput(logits, loss, past_key_values=kv_cache if use_cache is not False else None,
                       hidden_states=hidden_states, attentions=attentions)
        return out if return_dict is not False else out.to_tuple()

    def _blocks(self, x, kv_cache, attn_mask, output_hidden_states, output_attentions):
        """x (B, T, C) through every block and ``ln_f`` -> (x (B, T, C), hidden_states or None,
        attentions or None), the last two as transformers' GPT-2 forward collects them."""
        hidden_states = [] if output_hidden_states else None
        attentions = [] if output_attentions else None
        for block in self.transformer.h:
            if hidden_states is not None:
                hidden_states.append(x)  # the input of each block
            if output_attentions:
                x, attn_probs = block(x, kv_cache, attn_mask, output_attentions=True)
                attentions.append(attn_probs)
            else:
                x = block(x, kv_cache, attn_mask)
        x = self.transformer.ln_f(x)
        if hidden_states is not None:
            hidden_states.append(x)  # the last after ln_f, as transformers'
        return x, (None if hidden_states is None else tuple(hidden_states)), (
            None if attentions is None else tuple(attentions))

    def _positions_and_mask(self, shape, past, attention_mask, position_ids):
        """Positions (T,) or (B, T) and the attention mask (B, 1, 1, past + T) bool or None."""
        B, T = shape
        keys = None
        if attention_mask is not None:
            keys = check_attention_mask(attention_mask, (B, past + T), "GPT")
            if keys.all():
                keys = None  # no padding: the unmasked (fast) path gives the same logits
        if position_ids is not None:
            pos = np.asarray(position_ids.data if isinstance(position_ids, Tensor) else position_ids)
            if pos.dtype.kind not in "iu" or pos.shape not in ((T,), (B, T)):
                raise ValueError(f"GPT: position_ids must be integers of shape ({B}, {T}) or ({T},), got "
                                 f"{pos.dtype} {pos.shape}")
            if pos.size and (pos.min() < 0 or pos.max() >= self.config.block_size):
                bad = pos.min() if pos.min() < 0 else pos.max()
                raise ValueError(f"GPT: position id {int(bad)} is outside 0..{self.config.block_size - 1} "
                                 f"(block_size {self.config.block_size})")
        else:
            pos = np.arange(past, past + T)
        return pos, (None if keys is None else keys[:, None, None, :])

    def get_input_embeddings(self):
        """The token embedding (``transformer.wte``), as Hugging Face's."""
        return self.transformer.wte

    def get_output_embeddings(self):
        """The output projection (``lm_head``, its weight tied to the token embedding's)."""
        return self.lm_head

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True, rng=None):
        """Give the token embedding ``new_num_tokens`` rows, as transformers' ``resize_token_embeddings``
        after ``tokenizer.add_tokens(...)``: ``model.resize_token_embeddings(len(tokenizer))``.

        wte.weight (V, C) -> (V', C), V' = ``new_num_tokens`` rounded up to a multiple of
        ``pad_to_multiple_of`` (if given; ``new_num_tokens=None`` then pads the current size). The first
        min(V, V') rows stay bit for bit; shrinking drops the last ones. New rows, with
        ``mean_resizing`` (transformers' default): drawn from N(mu, 1e-9 Sigma), mu and Sigma the mean
        and covariance of the old rows -- so close to mu that a new token starts with the average
        logit and the model's predictions barely move (every new row is exactly mu when 1e-9 Sigma is
        not positive definite, e.g. V <= C); without it: N(0, 0.02), the model's own init. ``rng``:
        the ``np.random.Generator`` they are drawn from (default ``np.random.default_rng(0)``).

        The weight stays the same Parameter with new data, so ``lm_head`` (tied) follows;
        ``config.vocab_size`` is updated. Returns the embedding; with both sizes None, it is
        returned unchanged. An optimizer built before holds moments of the old shape: build a new one.
        """
        wte = self.transformer.wte
        new_num_tokens = resized_vocab_size(wte.weight.shape[0], new_num_tokens, pad_to_multiple_of)
        if new_num_tokens is None:
            return wte
        rng = np.random.default_rng(0) if rng is None else rng
        resize_rows(wte.weight, new_num_tokens, mean_resizing, rng)
        wte.num_embeddings = new_num_tokens
        if wte.padding_idx is not None and wte.padding_idx >= new_num_tokens:
            wte.padding_idx = None  # the padding row was cut off, as transformers
        if self.lm_head.weight is not wte.weight:  # an untied head gets its own new rows
            resize_rows(self.lm_head.weight, new_num_tokens, mean_resizing, rng)
        self.lm_head.out_features = new_num_tokens
        self.config.vocab_size = new_num_tokens
        return wte

    def new_kv_cache(self, batch_size, max_len=None, dtype=None):
        c = self.config
        dtype = dtype or self.transformer.wte.weight.dtype
        return nn.KVCache(c.n_layer, batch_size, c.n_head, max_len or c.block_size, c.n_embd // c.n_head, dtype)

    @no_grad()
    def generate(self, idx=None, max_new_tokens=None, max_length=None, do_sample=None, temperature=None, top_k=None,
                 top_p=None, eos_token_id=None, seed=None, use_cache=None, pad_token_id=None, attention_mask=None,
                 num_beams=None, length_penalty=None, early_stopping=None, num_return_sequences=None,
                 repetition_penalty=None, no_repeat_ngram_size=None, min_length=None, min_new_tokens=None,
                 input_ids=None, return_dict_in_generate=None, output_scores=None, output_logits=None, streamer=None,
                 generation_config=None, tokenizer=None, **knobs):
        """Continue ``idx`` (B, T) token by token; returns prompt + new tokens, as Hugging Face's.

        Length: ``max_length`` counts the prompt, ``max_new_tokens`` does not (it wins when both
        are given). ``min_length`` (prompt counted) / ``min_new_tokens`` (not counted): EOS is
        forbidden (logit -inf) until the sequence is that long (given both, ``min_new_tokens``
        wins, as in transformers).

        Decoding: ``do_sample=False`` or ``temperature=0`` picks the most likely token (greedy);
        otherwise logits / temperature are filtered by ``top_k`` then ``top_p`` and sampled with a
        Generator seeded by ``seed``. ``num_beams > 1`` (with ``do_sample=False``, which is then the
        default) runs beam search: the hypotheses are ranked by sum of log-probabilities /
        (new tokens) ** ``length_penalty`` (> 0 favours longer ones), and ``early_stopping``
        (True, False or "never", Hugging Face's meanings) says when a prompt's search ends.
        ``num_return_sequences``: rows per prompt (the best beams, best first; or independent
        samples), prompt b's rows next to each other.

        Logits processors, in Hugging Face's order: ``repetition_penalty`` (a token already in the
        sequence, prompt included, gets logit * penalty if its logit < 0, else logit / penalty;
        1.0: none), ``no_repeat_ngram_size`` n (a token that would repeat an n-gram of the
        sequence gets -inf), then the minimum lengths above.

        Batches of prompts of different lengths: pad them on the LEFT and pass ``attention_mask``
        (B, T), 1 at tokens and 0 at padding (``tokenizer.padding_side = "left"``); each row then
        generates what it would alone. (Unlike Hugging Face, padding is never guessed from
        ``pad_token_id`` occurring in a prompt without a mask.) ``input_ids`` is another name for
        ``idx``, so ``model.generate(**tokenizer(prompts, return_tensors="np", padding=True))`` works;
        a mask with padding in its last column (right padding: generation would continue after
        the padding) gives transformers' warning.

        A sequence that produced ``eos_token_id`` is padded with it (or with ``pad_token_id``)
        until all are done. ``use_cache`` changes speed only, never the output. Arguments left as
        None take their value from ``self.generation_config`` (for a tinyllm model: sampling at
        temperature 1, 20 new tokens; for a GPT-2 directory: Hugging Face's defaults, greedy, with
        GPT-2's end-of-text token). An argument generate does not know is an error.

        ``return_dict_in_generate=True`` returns a :class:`~tinyllm.models.outputs.GenerateOutput`
        (``.sequences``; with ``output_scores`` the scores each token was chosen from, with
        ``output_logits`` the raw logits, one (N, V) array per new token; with beams,
        ``output_scores`` gives ``.sequences_scores``, not transformers' per-step beam scores).
        ``streamer`` (e.g. :class:`tinyllm.generation.TextStreamer`) is shown each token as it
        comes (one sequence, greedy or sampled).

        transformers' further knobs (:mod:`tinyllm.logits_process`, its meanings): the sampling
        warpers ``min_p``, ``typical_p``, ``epsilon_cutoff``, ``eta_cutoff`` (after top-p); the
        processors ``sequence_bias``, ``bad_words_ids``, ``forced_bos_token_id``,
        ``forced_eos_token_id``, ``exponential_decay_length_penalty``, ``suppress_tokens``,
        ``begin_suppress_tokens``; ``stop_strings`` with ``tokenizer`` (a row that makes one ends as at EOS).
        ``generation_config`` (a dict, or a transformers ``GenerationConfig``: the fields it sets)
        gives defaults over ``self.generation_config`` (``use_cache``, ``return_dict_in_generate``,
        ``output_scores`` and ``output_logits`` too); the arguments given explicitly win.
        """
        from ..generation import generate

        unknown = sorted(set(knobs) - set(KNOB_DEFAULTS))
        if unknown:
            raise TypeError(f"GPT.generate: unknown argument(s) {unknown}; it takes {_GENERATE_ARGS}")
        idx = one_of("idx", idx, "input_ids", input_ids, required=True, method="GPT.generate")
        if attention_mask is not None:
            _warn_if_right_padded(attention_mask)
        given = dict(max_length=max_length, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                     eos_token_id=eos_token_id, pad_token_id=pad_token_id, num_beams=num_beams,
                     length_penalty=length_penalty, early_stopping=early_stopping,
                     num_return_sequences=num_return_sequences, repetition_penalty=repetition_penalty,
                     no_repeat_ngram_size=no_repeat_ngram_size, min_length=min_length, min_new_tokens=min_new_tokens,
                     **{k: knobs.get(k) for k in KNOB_DEFAULTS})
        config = {**GENERATION_DEFAULTS, **_SWITCH_DEFAULTS, **self.generation_config, **_config_fields(generation_config)}
        switches = {k: (config[k] if v is None else v) for k, v in dict(
            use_cache=use_cache, return_dict_in_generate=return_dict_in_generate, output_scores=output_scores,
            output_logits=output_logits).items()}
        args = {k: (config.get(k) if v is None else v) for k, v in given.items()}
        if max_new_tokens is None:
            max_new_tokens = config.get("max_new_tokens")
        if max_new_tokens is not None and max_length is None:
            args["max_length"] = None  # max_new_tokens wins over a default max_length
        if do_sample is None and isinstance(args["num_beams"], (int, np.integer)) and args["num_beams"] > 1:
            args["do_sample"] = False  # asking for beams means beam search, whatever the default
        if args["min_new_tokens"] is None:
            args["min_new_tokens"] = 0
        return generate(self, idx, max_new_tokens=max_new_tokens, seed=seed, attention_mask=attention_mask,
                        streamer=streamer, tokenizer=tokenizer, **switches, **args)

    # --- saving and loading --------------------------------------------------------------------------
    def save_pretrained(self, save_directory, format=None):
        """Write ``config.json`` and ``model.safetensors`` into ``save_directory``.

        ``format="huggingface"`` writes a GPT-2 directory that ``transformers`` loads (with a
        ``generation_config.json``); it is the default for a model read from one, "tinyllm" otherwise.
        """
        from .io import save_model

        save_model(self, save_directory, format=format)

    @classmethod
    def from_pretrained(cls, directory, **options):
        """Load a model saved by :meth:`save_pretrained` (tinyllm or Hugging Face GPT-2 format).
        ``options``: transformers' ``local_files_only``, ``use_safetensors``, ``trust_remote_code``,
        ``dtype`` / ``torch_dtype``, where they mean what tinyllm does anyway (``models.io.check_load_options``)."""
        from .io import load_model

        return load_model(cls, directory, **options)


def _config_fields(generation_config):
    """generate's ``generation_config=`` as {field: value}: a dict (every key a field of
    GENERATION_DEFAULTS), or a transformers ``GenerationConfig`` (the fields it sets, i.e. those
    that differ from its defaults, as transformers reads it over the model's own)."""
    if generation_config is None:
        return {}
    if isinstance(generation_config, dict):
        fields_ = dict(generation_config)
    elif hasattr(generation_config, "to_diff_dict"):
        fields_ = {k: v for k, v in generation_config.to_diff_dict().items() if k not in _IGNORED_CONFIG_FIELDS}
    else:
        raise TypeError(f"GPT.generate: generation_config must be a dict or a transformers GenerationConfig, got "
                        f"{type(generation_config).__name__}")
    unknown = sorted(set(fields_) - set(GENERATION_DEFAULTS) - set(_SWITCH_DEFAULTS))
    if unknown:
        raise ValueError(f"GPT.generate: generation_config sets {unknown}, which generate does not take (it takes "
                         f"{sorted({**GENERATION_DEFAULTS, **_SWITCH_DEFAULTS})})")
    return fields_


def _warn_if_right_padded(attention_mask):
    """transformers' warning when a prompt's last position is padding: a decoder-only model would
    continue each row after its padding instead of after its text."""
    mask = np.asarray(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask)
    if mask.ndim == 2 and mask.shape[1] and (mask[:, -1] == 0).any():
        warnings.warn(RIGHT_PADDING_WARNING, UserWarning, stacklevel=4)  # user -> no_grad -> generate -> here
