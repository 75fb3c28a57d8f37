"""Layers and models' building blocks, with ``torch.nn``'s names and habits."""
from .layers import (  # noqa: F401
    CrossEntropyLoss, Dropout, Embedding, GELU, Identity, LayerNorm, LearnedPositionalEmbedding, Linear, LogSoftmax,
    MSELoss, PositionalEncoding, ReLU, Sigmoid, SiLU, Softmax, Tanh, sinusoidal_table,
)
from .module import IncompatibleKeys, Module, ModuleDict, ModuleList, Parameter, Sequential  # noqa: F401
from .transformer import (  # noqa: F401
    Block, CrossAttention, DecoderBlock, EncoderBlock, FeedForward, KVCache, MultiHeadAttention,
)
from . import functional, init, utils  # noqa: F401,E402  (nn.functional, nn.init, nn.utils: torch.nn's places)
