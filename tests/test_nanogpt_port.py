"""A PyTorch model ported by changing its imports: nanoGPT's model.py (tests/nanogpt_port.py) on
tinyllm trains with torch's numbers, through both of its attention paths, and samples."""
import numpy as np
import pytest

import tinyllm
from nanogpt_port import GPTConfig, define

CONFIG = dict(block_size=16, vocab_size=23, n_layer=2, n_head=2, n_embd=16)


def _batches(steps, batch=4, seed=0):
    rng = np.random.default_rng(seed)
    data = (np.arange(400) * 5) % CONFIG["vocab_size"]  # a pattern to learn
    for _ in range(steps):
        ix = rng.integers(0, len(data) - CONFIG["block_size"] - 1, batch)
        x = np.stack([data[i:i + CONFIG["block_size"]] for i in ix])
        y = np.stack([data[i + 1:i + 1 + CONFIG["block_size"]] for i in ix])
        y[0, :3] = -1  # nanoGPT's ignore_index
        yield x, y


def _train(torch, model, steps, flash):
    opt = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95), "cpu")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses = []
    for x, y in _batches(steps):
        _, loss = model(torch.tensor(x), torch.tensor(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("flash", [True, False])
def test_nanogpt_model_py_trains_on_tinyllm_as_on_torch(flash):
    torch = pytest.importorskip("torch")
    ours = define(tinyllm, dict(generator=np.random.default_rng(0)))(GPTConfig(**CONFIG, flash=flash))
    theirs = define(torch)(GPTConfig(**CONFIG, flash=flash))
    state = {k: torch.tensor(np.array(v)) for k, v in ours.state_dict().items()}
    theirs.load_state_dict(state)  # the same weights (torch's own init is not what is compared)
    got, want = _train(tinyllm, ours, 8, flash), _train(torch, theirs, 8, flash)
    np.testing.assert_allclose(got, want, rtol=2e-5)
    assert got[-1] < got[0] - 0.05  # it learned something: the comparison is not of two constants
    # atol 1e-4: the key bias's gradient is 0 in exact arithmetic (softmax ignores a shift shared by
    # all keys), so both sides hold rounding noise there, which Adam scales up into lr-sized steps
    for name, p in theirs.named_parameters():
        np.testing.assert_allclose(ours.state_dict()[name], p.detach().numpy(), rtol=1e-3, atol=1e-4, err_msg=name)


def test_nanogpt_generate_samples_repeatably_with_top_k():
    def sample():
        model = define(tinyllm, dict(generator=np.random.default_rng(3)))(GPTConfig(**CONFIG, flash=False))
        model.eval()
        return model.generate(tinyllm.zeros((2, 1), dtype=np.int64), 20, top_k=5)

    a, b = sample(), sample()
    assert a.shape == (2, 21) and a.dtype == np.int64
    np.testing.assert_array_equal(a.data, b.data)
    assert len(set(a.data[:, 1:].ravel().tolist())) > 1
