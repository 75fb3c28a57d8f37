"""Models built from :mod:`tinyllm.nn`."""
from .gpt import GPT, GPTConfig  # noqa: F401
