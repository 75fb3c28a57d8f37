"""tinyllm: a pure-NumPy Transformer and GPT library you can read end to end."""
__version__ = "0.1.0"

import os as _os
import sys as _sys

# NumPy's matmul runs on OpenBLAS, whose worker threads keep spinning for ~0.1 s after every
# matmul, on the very cores that tinyllm's numba kernels need next: on 2 cores a training step
# ran anywhere from 1.0x to 1.6x slower, at random. With OPENBLAS_THREAD_TIMEOUT=4 they go to
# sleep at once (waking them costs a few microseconds per matmul). OpenBLAS reads the variable
# when it is loaded, at NumPy's import, so this works when tinyllm is imported before NumPy;
# otherwise export it yourself. A value you set wins.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from .kernels import get_num_threads, set_num_threads  # noqa: F401
from .tensor import Function, Tensor, enable_grad, is_grad_enabled, no_grad, tensor  # noqa: F401
from .gradcheck import GradcheckError, gradcheck  # noqa: F401
from . import functional, nn, optim  # noqa: F401,E402
from .models import GPT, AutoModelForCausalLM, GPTConfig  # noqa: F401,E402
from .tokenizers import AutoTokenizer, BPETokenizer, CharTokenizer  # noqa: F401,E402
