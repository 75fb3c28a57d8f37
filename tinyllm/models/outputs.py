"""What a model's ``forward`` returns, and the Hugging Face names its arguments also take."""
from typing import NamedTuple, Optional, Tuple

import numpy as np

from ..tensor import Tensor


class PretrainedModelMixin:
    """What Hugging Face's ``PreTrainedModel`` has beside torch's Module: ``.device`` and ``.dtype``."""

    @property
    def device(self):
        """Always "cpu": tinyllm runs on the CPU."""
        return "cpu"

    @property
    def dtype(self):
        """The dtype of the first floating parameter, as Hugging Face's ``model.dtype``."""
        return next(p.dtype for p in self.parameters() if p.dtype.kind == "f")


class _LogitsAndLoss(NamedTuple):
    logits: Tensor
    loss: Optional[Tensor] = None


class LMOutput(_LogitsAndLoss):
    """``(logits, loss)``, nanoGPT's pair (``logits, loss = model(x, y)``), with the names Hugging
    Face's outputs carry as attributes (``model(**inputs).logits``). ``loss`` is None without
    targets. (Hugging Face's own outputs, as tuples, put the loss first; this keeps nanoGPT's order.)

    ``past_key_values``: the KV cache that holds this call's keys and values (``use_cache=True``,
    or a cache passed in), to pass to the next call, as Hugging Face's; None otherwise. It is an
    attribute beside the pair, so the pair still unpacks as two.

    ``hidden_states`` and ``attentions``: tuples of Tensors with ``output_hidden_states=True`` /
    ``output_attentions=True`` (see ``GPT.forward``), None otherwise; attributes too."""

    def __new__(cls, logits, loss=None, past_key_values=None, hidden_states=None, attentions=None):
        out = super().__new__(cls, logits, loss)
        out.past_key_values = past_key_values
        out.hidden_states, out.attentions = hidden_states, attentions
        return out

    def to_tuple(self):
        """transformers' ``return_dict=False`` tuple: (loss, logits, past_key_values, hidden_states,
        attentions) without the entries that are None (its order: the loss first)."""
        return tuple(v for v in (self.loss, self.logits, self.past_key_values, self.hidden_states, self.attentions)
                     if v is not None)


class GenerateOutput(NamedTuple):
    """``generate(..., return_dict_in_generate=True)``: Hugging Face's ``GenerateOutput`` fields
    (the GPT's and the encoder-decoder's).

    ``sequences`` (N, L) the ids, prompts (an encoder-decoder's: BOS) included; ``scores`` (with
    ``output_scores``) one (N, V) float32 array per new token: the logits after the processors
    and, when sampling, the temperature / top-k / top-p filters (-inf where filtered), i.e. what
    the token was chosen from; ``logits`` (with ``output_logits``) the model's raw logits per new token;
    ``sequences_scores`` (beam search with ``output_scores``) each returned hypothesis's score, sum
    of log-probabilities / new tokens ** length_penalty (beam search gives no per-step ``scores``)."""

    sequences: np.ndarray
    scores: Optional[Tuple[np.ndarray, ...]] = None
    logits: Optional[Tuple[np.ndarray, ...]] = None
    sequences_scores: Optional[np.ndarray] = None


def one_of(name, value, hf_name, hf_value, required=False, method="forward"):
    """An argument given under tinyllm's name or Hugging Face's, not both (and, if ``required``,
    one of them)."""
    if value is not None and hf_value is not None:
        raise TypeError(f"{method}: pass {name} or {hf_name}, not both")
    if required and value is None and hf_value is None:
        raise TypeError(f"{method}: {name} (or {hf_name}) is required, got neither")
    return hf_value if value is None else value
