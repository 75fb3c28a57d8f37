"""Layers and models' building blocks, with ``torch.nn``'s names and habits."""
from .layers import (  # noqa: F401
    Dropout, Embedding, LayerNorm, LearnedPositionalEmbedding, Linear, PositionalEncoding, sinusoidal_table,
)
from .module import Module, ModuleDict, ModuleList, Parameter  # noqa: F401
from .transformer import (  # noqa: F401
    Block, CrossAttention, DecoderBlock, EncoderBlock, FeedForward, KVCache, MultiHeadAttention,
)
