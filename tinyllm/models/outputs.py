"""What a model's ``forward`` returns."""
from typing import NamedTuple, Optional

from ..tensor import Tensor


class LMOutput(NamedTuple):
    """``(logits, loss)``, nanoGPT's pair (``logits, loss = model(x, y)``), with the names Hugging
    Face's outputs carry as attributes (``model(**inputs).logits``). ``loss`` is None without
    targets. (Hugging Face's own outputs, as tuples, put the loss first; this keeps nanoGPT's order.)"""

    logits: Tensor
    loss: Optional[Tensor] = None
