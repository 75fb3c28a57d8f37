"""``torch.nn.utils``'s place for gradient clipping: ``nn.utils.clip_grad_norm_(model.parameters(), 1.0)``.

The function lives with the optimizers (:func:`tinyllm.optim.clip_grad_norm_`); this is where a
PyTorch training loop looks for it.
"""
from ..optim import clip_grad_norm, clip_grad_norm_  # noqa: F401

__all__ = ["clip_grad_norm_", "clip_grad_norm"]
