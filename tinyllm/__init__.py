"""tinyllm: a pure-NumPy Transformer and GPT library you can read end to end."""
__version__ = "0.1.0"

from . import _runtime  # noqa: F401  (first: OpenBLAS threads and malloc, see _runtime.py)

from .kernels import get_num_threads, set_num_threads  # noqa: F401
from .tensor import Function, Tensor, enable_grad, is_grad_enabled, no_grad, tensor  # noqa: F401
from .gradcheck import GradcheckError, gradcheck  # noqa: F401
from . import functional, nn, optim  # noqa: F401,E402
from .models import (  # noqa: F401,E402
    GPT, AutoModelForCausalLM, AutoModelForSeq2SeqLM, EncoderDecoderConfig, EncoderDecoderTransformer, GPTConfig,
)
from .tokenizers import AutoTokenizer, BPETokenizer, CharTokenizer  # noqa: F401,E402
