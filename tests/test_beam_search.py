"""tinyllm.beam_search: against Hugging Face's beam search on the same next-token model (every
combination of num_beams, length_penalty, early_stopping, max_length, num_return_sequences),
and against exhaustive search where the beam is wide enough to hold every hypothesis."""
import itertools

import numpy as np
import pytest

from tinyllm.beam_search import beam_search, log_softmax

V, BOS, EOS, PAD = 9, 1, 2, 8


def toy_model(seed=0):
    """Next-token logits from the last two tokens, with EOS getting likelier as the sequence
    grows: step(sequences (N, t), parents) -> (N, V). No cache, so parents are not needed."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((V, V, V))
    table[np.arange(V), :, np.arange(V)] -= 3.0  # discourage endless repeats
    eos_bias = np.linspace(-1.0, 1.5, 16)

    def logits(sequences):
        last, prev = sequences[:, -1], sequences[:, max(sequences.shape[1] - 2, 0)]
        out = table[last, prev].copy()
        out[:, EOS] += eos_bias[sequences.shape[1]]
        return out

    return logits


PROMPTS = np.array([[1], [4], [7], [5], [6], [3]])
SETTINGS = list(itertools.product([2, 4], [1.0, 0.0, -0.5, 2.0], [False, True, "never"], [6, 12], [1, 2]))


def test_matches_hugging_face():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_outputs import CausalLMOutput

    logits_np = toy_model()

    class Config(transformers.PretrainedConfig):
        model_type = "tinyllm-beam-search-toy"

    class Toy(transformers.PreTrainedModel, transformers.GenerationMixin):
        config_class = Config

        def __init__(self, config):
            super().__init__(config)
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None, **kwargs):
            logits = torch.tensor(logits_np(input_ids.numpy()), dtype=torch.float32)
            return CausalLMOutput(logits=logits[:, None, :].expand(-1, input_ids.shape[1], -1).contiguous())

    model = Toy(Config(vocab_size=V, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS))
    ids = torch.tensor(PROMPTS)
    outputs, padded = set(), False
    for num_beams, length_penalty, early_stopping, max_length, num_return in SETTINGS:
        theirs = model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=num_beams,
                                max_length=max_length, use_cache=False, do_sample=False,
                                early_stopping=early_stopping, length_penalty=length_penalty, eos_token_id=EOS,
                                pad_token_id=PAD, num_return_sequences=num_return).numpy()
        ours, scores = beam_search(lambda s, p: logits_np(s), PROMPTS, num_beams, max_length, EOS, PAD,
                                   length_penalty, early_stopping, num_return)
        setting = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                       max_length=max_length, num_return_sequences=num_return)
        assert ours.shape == theirs.shape and (ours == theirs).all(), f"{setting}\nours\n{ours}\ntheirs\n{theirs}"
        assert np.isfinite(scores).all()
        outputs.add((ours.shape, ours.tobytes()))
        ended = [list(row).index(EOS) for row in ours if EOS in row]
        padded |= any(e + 1 < ours.shape[1] for e in ended)  # a row ended early and was padded
    # the settings matter (the comparison is not between constant outputs), and rows end at
    # different lengths
    assert len(outputs) >= len(SETTINGS) // 5
    assert padded


def all_continuations(prompt, max_length):
    """Every sequence beam search could return: prompt + tokens up to EOS or max_length."""
    done, frontier = [], [list(prompt)]
    while frontier:
        seq = frontier.pop()
        for t in range(V):
            new = seq + [t]
            (done if t == EOS or len(new) == max_length else frontier).append(new)
    return done


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_a_beam_that_holds_everything_finds_the_best_sequence(length_penalty):
    """With as many beams as hypotheses and early_stopping="never", beam search is exhaustive:
    it returns the hypothesis of highest sum log p / generated_len ** length_penalty."""
    logits_np = toy_model(seed=1)
    max_length = 4  # 3 new tokens: at most 9 + 8 * 9 + 8 * 8 * 9 hypotheses
    for prompt in ([1], [4]):
        ours, scores = beam_search(lambda s, p: logits_np(s), np.array([prompt]), 9 ** 3, max_length, EOS, PAD,
                                   length_penalty, "never")

        def score(seq):
            logp = sum(log_softmax(logits_np(np.array([seq[:t]])))[0, seq[t]] for t in range(1, len(seq)))
            return logp / (len(seq) - len(prompt)) ** length_penalty

        best = max(all_continuations(prompt, max_length), key=score)
        row = [int(t) for t in ours[0]]
        assert (row[:row.index(EOS) + 1] if EOS in row else row) == best
        assert scores[0] == pytest.approx(score(best), rel=1e-9)


def test_parents_point_at_the_rows_continued():
    """A cached model reorders its cache by ``parents``: each row's prefix must be its parent's."""
    logits_np = toy_model(seed=2)
    previous = {}

    def step(sequences, parents):
        if parents is not None:
            np.testing.assert_array_equal(sequences[:, :-1], previous["seqs"][parents])
        previous["seqs"] = sequences.copy()
        return logits_np(sequences)

    beam_search(step, PROMPTS, 3, 10, EOS, PAD, 1.0, False, 1)
    assert previous["seqs"].shape[1] > 3


def test_errors():
    with pytest.raises(ValueError, match="max_length=1 leaves no room after a prompt of 1"):
        beam_search(lambda s, p: np.zeros((len(s), V)), PROMPTS, 2, 1, EOS)
    with pytest.raises(ValueError, match="num_return_sequences=3 must be in 1..num_beams=2"):
        beam_search(lambda s, p: np.zeros((len(s), V)), PROMPTS, 2, 5, EOS, num_return_sequences=3)
