"""tinyllm: a pure-NumPy Transformer and GPT library you can read end to end."""
__version__ = "0.1.0"

# Importing the kernels applies a few process settings for speed (malloc; OpenBLAS's threads if
# NumPy is not loaded yet): tinyllm/kernels/systems/runtime.py, nothing a learner needs to read.
from .kernels import get_num_threads, set_num_threads  # noqa: F401
from .kernels.dispatch import is_reference, reference_mode, use_reference  # noqa: F401
from .tensor import Function, Tensor, enable_grad, is_grad_enabled, no_grad, tensor  # noqa: F401
from .gradcheck import GradcheckError, gradcheck  # noqa: F401
from . import functional, nn, optim  # noqa: F401,E402
from .factories import (  # noqa: F401,E402  (torch.zeros, torch.arange, torch.cat, ... : PyTorch's top-level names)
    arange, cat, empty, eye, full, full_like, multinomial, ones, ones_like, rand, randint, randn, stack, topk, tril, triu,
    where, zeros, zeros_like,
)
from .models import (  # noqa: F401,E402
    GPT, AutoModelForCausalLM, AutoModelForSeq2SeqLM, EncoderDecoderConfig, EncoderDecoderTransformer, GPTConfig,
)
from .tokenizers import AutoTokenizer, BPETokenizer, CharTokenizer  # noqa: F401,E402
from .serialization import load, save  # noqa: F401,E402  (torch.save / torch.load, without pickle)
from .pipelines import pipeline  # noqa: F401,E402  (transformers.pipeline)
