"""GPT.resize_token_embeddings, as transformers' PreTrainedModel.resize_token_embeddings: old rows
kept bit for bit, new rows near the old mean (mean_resizing) or N(0, 0.02), the tied lm_head, the
config, save / load, a training step after, and (optional) parity with GPT2LMHeadModel.
"""
import numpy as np
import pytest

from tinyllm import optim
from tinyllm.models import GPT, GPTConfig
from tinyllm.models.resize import new_embedding_rows

TINY = dict(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=8)


def tiny_gpt(seed=0, **overrides):
    return GPT(GPTConfig(**{**TINY, **overrides}), seed=seed)


def ids(shape, vocab, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, shape)


def test_grow_keeps_old_rows_ties_head_and_updates_config():
    model = tiny_gpt()
    old = model.transformer.wte.weight.data.copy()
    weight = model.transformer.wte.weight
    emb = model.resize_token_embeddings(43)
    assert emb is model.transformer.wte and emb.weight is weight  # the same Parameter, new data
    assert weight.shape == (43, 8) and emb.num_embeddings == 43 and model.config.vocab_size == 43
    assert model.lm_head.weight is weight and model.lm_head.out_features == 43
    np.testing.assert_array_equal(weight.data[:40], old)  # bit for bit
    assert model(ids((2, 5), 43)).logits.shape == (2, 5, 43)


def test_shrink_drops_the_last_rows():
    model = tiny_gpt()
    old = model.transformer.wte.weight.data.copy()
    model.resize_token_embeddings(30)
    np.testing.assert_array_equal(model.transformer.wte.weight.data, old[:30])
    assert model.config.vocab_size == 30 and model.lm_head.weight.shape == (30, 8)
    with pytest.raises(ValueError, match="token id 35 is out of range for vocab_size 30"):
        model(np.array([[35]]))


def test_none_returns_the_embedding_unchanged_and_padding_rounds_up():
    model = tiny_gpt()
    before = model.transformer.wte.weight.data
    assert model.resize_token_embeddings() is model.transformer.wte
    assert model.transformer.wte.weight.data is before and model.config.vocab_size == 40
    model.resize_token_embeddings(41, pad_to_multiple_of=8)
    assert model.config.vocab_size == 48
    model.resize_token_embeddings(pad_to_multiple_of=64)  # None pads the current size
    assert model.config.vocab_size == 64 and model.transformer.wte.weight.shape == (64, 8)


@pytest.mark.parametrize("kwargs, bad", [(dict(new_num_tokens=0), "0"), (dict(new_num_tokens=-3), "-3"),
                                         (dict(new_num_tokens=4.0), "4.0"), (dict(new_num_tokens=True), "True"),
                                         (dict(new_num_tokens=50, pad_to_multiple_of=0), "0"),
                                         (dict(new_num_tokens=50, pad_to_multiple_of="8"), "'8'")])
def test_bad_sizes_name_the_value(kwargs, bad):
    model = tiny_gpt()
    with pytest.raises(ValueError, match=f"got {bad}$"):
        model.resize_token_embeddings(**kwargs)
    assert model.config.vocab_size == 40  # nothing changed


def test_mean_resizing_rows_sit_at_the_old_mean_and_are_reproducible():
    """transformers draws N(mu, 1e-9 Sigma): each new row is within a few sqrt(1e-9 var) of mu."""
    model = tiny_gpt(vocab_size=200)  # V > C: the covariance is positive definite
    old = model.transformer.wte.weight.data.astype(np.float64)
    model.resize_token_embeddings(2200)
    new = model.transformer.wte.weight.data[200:].astype(np.float64)
    mu, sd = old.mean(0), old.std(0)
    assert np.abs(new - mu).max() < 6 * np.sqrt(1e-9) * sd.max() + 1e-7  # float32 rounding of mu
    assert not np.all(new == new[0])  # drawn, not all mu
    again = tiny_gpt(vocab_size=200)
    again.resize_token_embeddings(2200)
    np.testing.assert_array_equal(again.transformer.wte.weight.data, model.transformer.wte.weight.data)


def test_mean_resizing_gives_mu_when_the_covariance_is_singular():
    old = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)  # V <= C: rank 4 < 8
    rows = new_embedding_rows(old, 3, True, np.random.default_rng(0))
    np.testing.assert_allclose(rows, np.broadcast_to(old.astype(np.float64).mean(0), (3, 8)), rtol=0, atol=1e-7)


def test_without_mean_resizing_new_rows_are_the_models_init():
    model = tiny_gpt(vocab_size=50)
    model.resize_token_embeddings(4050, mean_resizing=False)
    new = model.transformer.wte.weight.data[50:]
    assert abs(new.mean()) < 0.002 and abs(new.std() - 0.02) < 0.001  # 32000 draws of N(0, 0.02)


def test_save_load_round_trip_after_resize(tmp_path):
    model = tiny_gpt()
    model.resize_token_embeddings(45)
    model.save_pretrained(tmp_path)
    back = GPT.from_pretrained(tmp_path)
    assert back.config.vocab_size == 45 and back.lm_head.weight is back.transformer.wte.weight
    x = ids((2, 6), 45)
    np.testing.assert_array_equal(back(x).logits.data, model(x).logits.data)


def test_training_and_generation_after_resize_need_a_new_optimizer():
    model = tiny_gpt()
    stale = optim.AdamW(model.parameters(), lr=1e-2)
    x = ids((2, 6), 40)
    model(x, targets=x).loss.backward()
    stale.step()
    model.resize_token_embeddings(42)
    x = ids((2, 6), 42, seed=1)
    model.zero_grad()
    loss = model(x, targets=x).loss
    loss.backward()
    assert model.transformer.wte.weight.grad.shape == (42, 8)
    with pytest.raises(ValueError, match="build a new optimizer"):
        stale.step()
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    before = model.transformer.wte.weight.data.copy()
    opt.step()
    assert np.isfinite(model.transformer.wte.weight.data).all()
    assert not np.array_equal(before[40:], model.transformer.wte.weight.data[40:])  # the new rows learn
    out = model.generate(np.array([[41, 3]]), max_new_tokens=4, do_sample=False)
    assert out.shape == (1, 6) and out.max() < 42


def test_parity_with_transformers_gpt2(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    model = GPT(GPTConfig(vocab_size=100, block_size=32, n_layer=2, n_head=2, n_embd=16), seed=3)
    model.save_pretrained(tmp_path, format="huggingface")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    torch.manual_seed(0)
    assert theirs.resize_token_embeddings(2100).weight.shape == (2100, 16)
    model.resize_token_embeddings(2100)
    mine_w = model.transformer.wte.weight.data
    their_w = theirs.transformer.wte.weight.detach().numpy()
    assert theirs.config.vocab_size == model.config.vocab_size == 2100
    np.testing.assert_array_equal(mine_w[:100], their_w[:100])
    # both new blocks sit at the old mean, within the 1e-9 covariance's spread
    old_mean = mine_w[:100].astype(np.float64).mean(0)
    spread = 6 * np.sqrt(1e-9) * mine_w[:100].std(0).max() + 1e-6
    assert np.abs(mine_w[100:] - old_mean).max() < spread and np.abs(their_w[100:] - old_mean).max() < spread
    x = ids((2, 10), 100)
    with torch.no_grad():
        their_logits = theirs(torch.tensor(x)).logits.numpy()
    ours = model(x).logits.data
    assert np.isfinite(ours).all() and ours.shape == their_logits.shape == (2, 10, 2100)
    np.testing.assert_allclose(ours[..., :100], their_logits[..., :100], atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours[..., 100:], their_logits[..., 100:], atol=1e-3, rtol=0)  # rows agree to ~1e-5
    theirs.save_pretrained(tmp_path / "theirs")
    back = GPT.from_pretrained(tmp_path / "theirs")
    np.testing.assert_array_equal(back.transformer.wte.weight.data, their_w)
    model.save_pretrained(tmp_path / "mine", format="huggingface")  # and the other way
    mine_in_theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "mine").eval()
    x = ids((1, 6), 2100)
    with torch.no_grad():
        their_logits = mine_in_theirs(torch.tensor(x)).logits.numpy()
    np.testing.assert_allclose(their_logits, model(x).logits.data, atol=1e-4, rtol=0)


# ---- the encoder-decoder: one vocabulary, its tables resized together --------------------------
@pytest.mark.parametrize("share, tie", [(True, True), (False, True), (False, False)])
def test_encoder_decoder_resizes_every_table_of_its_vocabulary(share, tie, tmp_path):
    from tinyllm.models import EncoderDecoderConfig, EncoderDecoderTransformer

    config = EncoderDecoderConfig(src_vocab_size=30, tgt_vocab_size=30, max_src_len=8, max_tgt_len=8,
                                  n_encoder_layers=1, n_decoder_layers=1, n_head=2, d_model=8, d_ff=16, dropout=0.0,
                                  share_embeddings=share, tie_word_embeddings=tie)
    model = EncoderDecoderTransformer(config, seed=0)
    tables = (model.encoder.wte.weight, model.decoder.wte.weight, model.lm_head.weight)
    old = [t.data.copy() for t in tables]
    assert model.resize_token_embeddings(35) is model.get_input_embeddings()
    for table, before in zip(tables, old):
        assert table.shape == (35, 8)
        np.testing.assert_array_equal(table.data[:30], before)
    assert (model.decoder.wte.weight is model.encoder.wte.weight) == share
    assert (model.lm_head.weight is model.decoder.wte.weight) == tie
    assert model.config.src_vocab_size == model.config.tgt_vocab_size == 35
    src, targets = ids((2, 5), 35), ids((2, 4), 35, seed=1)
    targets[:, -1] = 34  # a new token, learned as a target
    tgt = model.shift_right(targets)  # [BOS, y_1, ..]
    out = model(src, tgt, targets=targets)
    out.loss.backward()
    assert out.logits.shape == (2, 4, 35) and np.isfinite(out.loss.data)
    model.save_pretrained(tmp_path)
    back = EncoderDecoderTransformer.from_pretrained(tmp_path)
    np.testing.assert_array_equal(back(src, tgt).logits.data, model(src, tgt).logits.data)
    with pytest.raises(ValueError, match="would drop the special token id 2"):
        model.resize_token_embeddings(2)


def test_encoder_decoder_with_two_vocabularies_refuses():
    from tinyllm.models import EncoderDecoderConfig, EncoderDecoderTransformer

    model = EncoderDecoderTransformer(EncoderDecoderConfig(src_vocab_size=30, tgt_vocab_size=20, n_encoder_layers=1,
                                                           n_decoder_layers=1, d_model=8, d_ff=16, n_head=2))
    with pytest.raises(ValueError, match="src_vocab_size=30, tgt_vocab_size=20"):
        model.resize_token_embeddings(40)
