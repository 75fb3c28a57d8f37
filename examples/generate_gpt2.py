"""Generate text with a GPT-2-format model directory (Hugging Face's config.json +
model.safetensors + vocab.json + merges.txt), or any directory tinyllm's save_pretrained wrote.

    python examples/generate_gpt2.py --model-dir ./gpt2 --prompt "The quick brown fox" --max-length 50
    python examples/generate_gpt2.py --model-dir ./gpt2 --prompt "Hello, my dog" --prompt "The"   # a batch
    python examples/generate_gpt2.py --model-dir ./gpt2 --prompt "Once upon a time" --stream     # as it comes

tinyllm never downloads: get a GPT-2 directory once on a machine with internet, e.g.
    huggingface-cli download gpt2 --local-dir gpt2
"""
import argparse
import sys
import time

from tinyllm import AutoModelForCausalLM, AutoTokenizer, cli
from tinyllm.generation import TextStreamer
from tinyllm.models import resolve_pretrained


@cli.stops_on_ctrl_c
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", required=True, help="a GPT-2 format directory (or a model name in the HF cache)")
    p.add_argument("--prompt", action="append", help="the text to continue; repeat for a batch (padded on the left)")
    p.add_argument("--max-length", type=int, default=50, help="total length, prompt included (as Hugging Face)")
    p.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (greedy otherwise)")
    p.add_argument("--num-return-sequences", type=int, default=1, help="texts to print (the best beams, or samples)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="Hugging Face's: > 1 discourages repeats")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0, help="forbid repeating an n-gram of this size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stream", action="store_true", help="print the text as it is generated (one prompt, one text)")
    args = p.parse_args(argv)

    try:
        model_dir = resolve_pretrained(args.model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    prompts = args.prompt or ["The quick brown fox jumps over the lazy dog."]
    if len(prompts) > 1:  # a batch, as Hugging Face users make it: EOS pads, on the left (see docs/generate.md)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
    try:
        inputs = tokenizer(prompts, return_tensors="np", padding=len(prompts) > 1)
    except ValueError as e:  # e.g. a batch with a tokenizer that has no token to pad with
        sys.exit(f"error: {e}")
    t0 = time.perf_counter()
    try:
        output = model.generate(**inputs, max_length=args.max_length, do_sample=args.do_sample,
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                num_beams=args.num_beams, num_return_sequences=args.num_return_sequences,
                                repetition_penalty=args.repetition_penalty,
                                no_repeat_ngram_size=args.no_repeat_ngram_size,
                                eos_token_id=getattr(tokenizer, "eos_token_id", None), seed=args.seed,
                                streamer=TextStreamer(tokenizer, skip_special_tokens=True) if args.stream else None)
    except ValueError as e:  # a bad knob (e.g. --num-beams 0): generate's message names it
        sys.exit(f"error: {e}")
    dt = time.perf_counter() - t0
    for i, row in enumerate([] if args.stream else output):  # (streamed: already printed)
        print(("" if i == 0 else "\n---\n") + tokenizer.decode(row, skip_special_tokens=True))
    new = output.shape[1] - inputs["input_ids"].shape[1]
    print(f"\n[{len(output)} x {new} new tokens in {dt:.2f} s]", file=sys.stderr)


if __name__ == "__main__":
    main()
