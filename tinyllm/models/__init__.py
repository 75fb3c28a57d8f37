"""Models built from :mod:`tinyllm.nn`."""
from .auto import AutoModelForCausalLM, resolve_pretrained  # noqa: F401
from .gpt import GPT, GPTConfig  # noqa: F401
