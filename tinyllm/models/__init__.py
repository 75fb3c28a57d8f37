"""Models built from :mod:`tinyllm.nn`."""
from .auto import AutoModelForCausalLM, AutoModelForSeq2SeqLM, resolve_pretrained  # noqa: F401
from .encdec import EncoderDecoderConfig, EncoderDecoderTransformer  # noqa: F401
from .gpt import GPT, GPTConfig  # noqa: F401
from .outputs import LMOutput  # noqa: F401
