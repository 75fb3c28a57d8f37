"""``GPT.forward(output_hidden_states=True, output_attentions=True, return_dict=...)`` as
transformers' GPT-2: the same tuples, equal to its numbers with the same weights (without padding,
with left padding, and step by step with past_key_values), and the default path untouched."""
import numpy as np
import pytest

from kernel_helpers import SMALL_V, small_gpt2_pair
from tinyllm import no_grad
from tinyllm.models import GPT, GPTConfig

TINY = dict(vocab_size=13, block_size=16, n_layer=3, n_head=2, n_embd=8)
ATOL = 1e-5
pytestmark = pytest.mark.filterwarnings("ignore:.past_key_values. is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers' eager GPT-2, its sdpa twin, tinyllm's GPT) with one set of weights: only the
    eager attention returns its weights."""
    import transformers

    directory = tmp_path_factory.mktemp("gpt2-hidden")
    sdpa, ours = small_gpt2_pair(directory)
    eager = transformers.AutoModelForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    return eager, sdpa, ours


def _ids(batch, length, seed=0):
    return np.random.default_rng(seed).integers(4, SMALL_V, (batch, length))


def _hf(model, ids, **kwargs):
    import torch

    kwargs = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
    with torch.no_grad():
        return model(torch.tensor(ids), output_hidden_states=True, output_attentions=True, **kwargs)


def _close(mine, theirs, what, rows=slice(None)):
    assert len(mine) == len(theirs), what
    for i, (a, b) in enumerate(zip(mine, theirs)):
        a, b = a.data[rows], b.numpy()[rows]
        assert a.shape == b.shape and np.isfinite(a).all(), (what, i, a.shape, b.shape)
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0, err_msg=f"{what}[{i}]")


# without transformers ----------------------------------------------------------------------------
def test_shapes_rows_and_the_last_state_is_what_lm_head_reads():
    model = GPT(GPTConfig(**TINY), seed=1)
    ids = _ids(2, 7, seed=1) % TINY["vocab_size"]
    out = model(ids, output_hidden_states=True, output_attentions=True)
    C, H, L = TINY["n_embd"], TINY["n_head"], TINY["n_layer"]
    assert [h.shape for h in out.hidden_states] == [(2, 7, C)] * (L + 1)
    assert [a.shape for a in out.attentions] == [(2, H, 7, 7)] * L
    for a in out.attentions:
        np.testing.assert_allclose(a.data.sum(-1), 1.0, atol=1e-6)
        assert not np.triu(a.data, k=1).any()  # causal: no weight on a later key
    logits = out.hidden_states[-1].data @ model.transformer.wte.weight.data.T
    np.testing.assert_allclose(out.logits.data, logits, atol=1e-5)


def test_the_default_path_is_unchanged_and_the_flags_change_no_logits():
    model = GPT(GPTConfig(**TINY), seed=2)
    ids = _ids(3, 9, seed=2) % TINY["vocab_size"]
    plain = model(ids)
    assert plain.hidden_states is None and plain.attentions is None
    hidden = model(ids, output_hidden_states=True)  # the same kernels: the same bits
    np.testing.assert_array_equal(hidden.logits.data, plain.logits.data)
    attn = model(ids, output_attentions=True)  # the composed attention: equal to rounding
    np.testing.assert_allclose(attn.logits.data, plain.logits.data, atol=1e-5, rtol=1e-5)
    last = model(ids, last_only=True, output_hidden_states=True)
    assert last.logits.shape == (3, 1, TINY["vocab_size"]) and last.hidden_states[-1].shape == (3, 9, 8)


def test_output_attentions_trains_with_the_gradients_of_the_fused_path():
    model = GPT(GPTConfig(**TINY), seed=3)
    ids = _ids(2, 6, seed=3) % TINY["vocab_size"]
    targets = np.roll(ids, -1, axis=1)
    grads = []
    for flag in (False, True):
        model.zero_grad()
        model(ids, targets, output_attentions=flag).loss.backward()
        grads.append({n: p.grad.copy() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert np.isfinite(grads[1][name]).all()
        np.testing.assert_allclose(grads[1][name], g, atol=1e-5, rtol=1e-4, err_msg=name)


def test_return_dict_false_is_transformers_tuple_and_the_pair_still_unpacks():
    model = GPT(GPTConfig(**TINY), seed=4)
    ids = _ids(1, 5, seed=4) % TINY["vocab_size"]
    logits, loss = model(ids, output_hidden_states=True)  # nanoGPT's pair, whatever the flags
    assert loss is None
    plain = model(ids, return_dict=False)
    assert len(plain) == 1 and plain[0].shape == (1, 5, 13)
    out = model(ids, labels=ids, use_cache=True, output_hidden_states=True, output_attentions=True,
                return_dict=False)
    loss, logits, cache, hidden, attentions = out
    assert loss.shape == () and logits.shape == (1, 5, 13) and cache.length == 5
    assert len(hidden) == 4 and len(attentions) == 3
    assert model(ids, return_dict=True).hidden_states is None


# against transformers --------------------------------------------------------------------------
def test_hidden_states_and_attentions_equal_transformers(pair):
    eager, sdpa, ours = pair
    ids = _ids(2, 9, seed=5)
    theirs = _hf(eager, ids)
    mine = ours(ids, output_hidden_states=True, output_attentions=True)
    _close(mine.hidden_states, theirs.hidden_states, "hidden_states")
    _close(mine.attentions, theirs.attentions, "attentions")
    np.testing.assert_allclose(mine.logits.data, theirs.logits.numpy(), atol=ATOL)
    _close(ours(ids, output_hidden_states=True).hidden_states, _hf(sdpa, ids).hidden_states, "sdpa hidden_states")


def test_left_padding_as_transformers_and_where_the_padded_queries_differ(pair):
    """Real positions: equal. A padded query sees no real key: tinyllm gives it zero weights (and
    zeros from attention), as transformers' default sdpa path computes its state; transformers'
    eager path, the one that returns weights, spreads them evenly over every key."""
    eager, sdpa, ours = pair
    ids = _ids(3, 8, seed=6)
    mask = np.ones((3, 8), dtype=np.int64)
    mask[1, :3] = 0
    mask[2, :1] = 0
    theirs = _hf(eager, ids, attention_mask=mask)
    mine = ours(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    for b in range(3):
        real = mask[b] == 1
        _close(mine.hidden_states, theirs.hidden_states, f"hidden_states row {b}", rows=(b, real))
        _close(mine.attentions, theirs.attentions, f"attentions row {b}", rows=(b, slice(None), real))
        padded = ~real
        for a, t in zip(mine.attentions, theirs.attentions):
            assert not a.data[b][:, padded].any()  # a padded query: zeros
            assert not a.data[b][:, real][..., padded].any()  # a real query: nothing on padded keys
            np.testing.assert_allclose(t.numpy()[b][:, padded], 1.0 / 8, atol=1e-6)  # transformers': even
    _close(mine.hidden_states, _hf(sdpa, ids, attention_mask=mask).hidden_states, "sdpa hidden_states (all)")


@pytest.mark.parametrize("padded", [False, True])
def test_step_by_step_with_past_key_values_as_transformers(pair, padded):
    eager, _, ours = pair
    ids = _ids(2, 5, seed=7)
    mask = np.ones((2, 5), dtype=np.int64)
    if padded:
        mask[1, :2] = 0
    theirs = _hf(eager, ids, attention_mask=mask, use_cache=True)
    mine = ours(ids, attention_mask=mask, use_cache=True, output_hidden_states=True, output_attentions=True)
    for b in range(2):  # the prompt: its real positions
        real = mask[b] == 1
        _close(mine.hidden_states, theirs.hidden_states, f"prompt hidden_states row {b}", rows=(b, real))
        _close(mine.attentions, theirs.attentions, f"prompt attentions row {b}", rows=(b, slice(None), real))
    for step in range(3):  # one new token per row, over the cache
        nxt = mine.logits.data[:, -1].argmax(-1)[:, None]
        mask = np.concatenate([mask, np.ones((2, 1), dtype=np.int64)], axis=1)
        theirs = _hf(eager, nxt, attention_mask=mask, past_key_values=theirs.past_key_values, use_cache=True)
        with no_grad():
            mine = ours(nxt, attention_mask=mask, past_key_values=mine.past_key_values, use_cache=True,
                        output_hidden_states=True, output_attentions=True)
        assert mine.attentions[0].shape == (2, 4, 1, 6 + step) and mine.hidden_states[0].shape == (2, 1, 64)
        _close(mine.hidden_states, theirs.hidden_states, f"hidden_states step {step}")
        _close(mine.attentions, theirs.attentions, f"attentions step {step}")


def test_a_cached_step_with_the_flags_gives_the_logits_of_one_without(pair):
    _, _, ours = pair
    ids = _ids(2, 6, seed=8)
    with no_grad():
        first = ours(ids[:, :4], use_cache=True)
        plain = ours(ids[:, 4:], past_key_values=first.past_key_values, use_cache=True).logits.data
        first = ours(ids[:, :4], use_cache=True)
        flagged = ours(ids[:, 4:], past_key_values=first.past_key_values, output_attentions=True,
                       output_hidden_states=True)
    np.testing.assert_allclose(flagged.logits.data, plain, atol=ATOL, rtol=1e-5)
    assert flagged.past_key_values.length == 6
