"""``tinyllm.nn.functional`` is :mod:`tinyllm.functional`, where PyTorch keeps it
(``import torch.nn.functional as F``): this file only makes the second name lead to the same module."""
import sys

from .. import functional as _functional

sys.modules[__name__] = _functional
