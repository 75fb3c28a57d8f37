"""A whole training run, step for step, against PyTorch + transformers from the same weights.

The tinyllm GPT is exported in Hugging Face format, loaded as ``transformers.GPT2LMHeadModel``, and
both are trained on the very same batches with the nanoGPT recipe (AdamW betas (0.9, 0.99), weight
decay 0.1 on 2-D weights only, clip 1.0, warmup + cosine). Any systematic difference -- a wrong
gradient, an optimizer detail, a schedule off by one -- shows up as diverging loss curves.
"""

import numpy as np
import pytest

from tinyllm.data import get_batch
from tinyllm.models import GPT, GPTConfig
from tinyllm.optim import clip_grad_norm, cosine_lr
from tinyllm.training import TrainConfig, configure_optimizer

STEPS, BATCH, LR, MIN_LR, WARMUP = 40, 4, 3e-3, 3e-4, 5


def _torch_optimizer(torch, model):
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=LR, betas=(0.9, 0.99), foreach=False)


def test_forty_training_steps_match_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = GPTConfig(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32)
    ours = GPT(config, seed=3)
    ours.save_pretrained(tmp_path, format="huggingface")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).train()

    our_opt = configure_optimizer(ours, TrainConfig(learning_rate=LR, weight_decay=0.1))
    their_opt = _torch_optimizer(torch, theirs)
    data = np.tile(np.random.default_rng(0).integers(0, config.vocab_size, 50), 100)  # periodic: learnable
    rng = np.random.default_rng(1)
    our_losses, their_losses = [], []
    for step in range(STEPS):
        lr = cosine_lr(step, LR, MIN_LR, WARMUP, STEPS)
        x, y = get_batch(data, BATCH, config.block_size, rng)

        for g in our_opt.param_groups:
            g["lr"] = lr
        _, loss = ours(x, y)
        our_opt.zero_grad()
        loss.backward()
        clip_grad_norm(ours.parameters(), 1.0)
        our_opt.step()
        our_losses.append(loss.item())

        for g in their_opt.param_groups:
            g["lr"] = lr
        logits = theirs(torch.from_numpy(x)).logits
        their_loss = torch.nn.functional.cross_entropy(logits.reshape(-1, config.vocab_size),
                                                       torch.from_numpy(y).reshape(-1))
        their_opt.zero_grad()
        their_loss.backward()
        torch.nn.utils.clip_grad_norm_(theirs.parameters(), 1.0)
        their_opt.step()
        their_losses.append(their_loss.item())

    our_losses, their_losses = np.array(our_losses), np.array(their_losses)
    assert np.isfinite(our_losses).all() and np.isfinite(their_losses).all()
    assert our_losses[-1] < our_losses[0] - 0.3  # it learned something, so the comparison means something
    np.testing.assert_allclose(our_losses, their_losses, rtol=0, atol=1e-4)
    wte = theirs.transformer.wte.weight.detach().numpy()
    np.testing.assert_allclose(ours.transformer.wte.weight.data, wte, rtol=0, atol=1e-4)
