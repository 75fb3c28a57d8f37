"""Load test of `tinyllm serve`: N concurrent openai clients for a fixed time, beside 1 client.

    python benchmarks/bench_serve.py                           # 1 client, then 16, 30 s each
    python benchmarks/bench_serve.py --duration 10 --rounds 2  # alternate 1 / 16 twice, 10 s each
    python benchmarks/bench_serve.py --stream                  # also time to first token
    python benchmarks/bench_serve.py --model-dir out-shakespeare --json serve.json

Model: the Shakespeare recipe's size (char vocabulary of 65, 4 layers, 4 heads, 128 wide, context
64), random weights, unless --model-dir names a trained one. The server runs as `python -m
tinyllm.serve` in a subprocess bound to 127.0.0.1 (loopback only; nothing leaves the machine), with
the defaults (--max-active 16). Each client is a thread with its own `openai.OpenAI` client that
sends completions back to back until the time is up (requests in flight then finish: the run is
bounded by --duration plus one request): a prompt of 8 characters, --max-tokens new ones (32 by
default, so prompt + completion fit the context), temperature 1 and a fresh seed per request.

Reported per run: requests, failed requests (any exception or a completion shorter than asked
counts), latency p50/p99 (request sent -> whole answer), and tokens/s (completion tokens of all
clients / wall time); with --stream also time to first token p50/p99. The ratios put the N-client
run beside the 1-client run of the same round (rounds alternate 1, N, 1, N ...): the engine has
one worker thread, so N clients share its tokens/s, and latency grows with N while total
throughput stays about level. Timings on a shared machine are noisy: compare the ratios.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAKESPEARE_CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny-shakespeare's 65
PROMPTS = ["ROMEO:\nI", "JULIET:\n", "KING:\nMy", "First Ci", "MENENIUS", "What, ho", "O, speak", "Nay, but"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--duration", type=float, default=30.0, help="seconds per run")
    p.add_argument("--rounds", type=int, default=1, help="alternating (1 client, N clients) pairs")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--stream", action="store_true", help="stream the answers (and time the first token)")
    p.add_argument("--model-dir", default=None, help="serve this model instead of a random Shakespeare-sized one")
    p.add_argument("--num-threads", type=int, default=None, help="the server's --num-threads")
    p.add_argument("--json", default=None, help="also write the results here")
    return p.parse_args(argv)


def make_model(directory):
    import tinyllm  # noqa: F401
    from tinyllm import GPT, GPTConfig
    from tinyllm.tokenizers import CharTokenizer, shakespeare_chat_template

    tok = CharTokenizer(sorted(SHAKESPEARE_CHARS))
    tok.set_chat_template(shakespeare_chat_template(), stop_strings=["\n\n"])
    GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128), seed=0).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def start_server(model_dir, num_threads):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    env.pop("TINYLLM_API_KEY", None)
    cmd = [sys.executable, "-m", "tinyllm.serve", "--model-dir", str(model_dir), "--host", "127.0.0.1",
           "--port", str(port), "--model-name", "bench", "--log-level", "warning"]
    if num_threads:
        cmd += ["--num-threads", str(num_threads)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=5):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start in 180 s")


def client_loop(url, args, deadline, seed0, out):
    from openai import OpenAI

    client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    k = 0
    while time.monotonic() < deadline:
        prompt = PROMPTS[(seed0 + k) % len(PROMPTS)]
        t0 = time.monotonic()
        try:
            tokens, ttft = request(client, prompt, args, seed=seed0 * 100_000 + k)
            ok = tokens == args.max_tokens
        except Exception as e:  # noqa: BLE001  (every failure counts, whatever it is)
            tokens, ttft, ok = 0, None, False
            out.setdefault("errors", []).append(repr(e)[:200])
        out["latency"].append(time.monotonic() - t0)
        out["ttft"].append(ttft)
        out["tokens"] += tokens
        out["failed"] += not ok
        k += 1


def request(client, prompt, args, seed):
    """(completion tokens, seconds to the first token or None)."""
    common = dict(model="bench", prompt=prompt, max_tokens=args.max_tokens, temperature=1.0, seed=seed)
    if not args.stream:
        r = client.completions.create(**common)
        return r.usage.completion_tokens, None
    t0, ttft, tokens = time.monotonic(), None, 0
    for chunk in client.completions.create(stream=True, stream_options={"include_usage": True}, **common):
        if ttft is None and chunk.choices and chunk.choices[0].text:
            ttft = time.monotonic() - t0
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return tokens, ttft


def run(url, n_clients, args):
    start = time.monotonic()
    deadline = start + args.duration
    outs = [{"latency": [], "ttft": [], "tokens": 0, "failed": 0} for _ in range(n_clients)]
    threads = [threading.Thread(target=client_loop, args=(url, args, deadline, i, outs[i])) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    latency = sorted(x for o in outs for x in o["latency"])
    ttft = sorted(x for o in outs for x in o["ttft"] if x is not None)
    tokens = sum(o["tokens"] for o in outs)
    return {"clients": n_clients, "requests": len(latency), "failed": sum(o["failed"] for o in outs),
            "p50_s": _pct(latency, 50), "p99_s": _pct(latency, 99), "tokens_per_s": tokens / wall, "wall_s": wall,
            "ttft_p50_s": _pct(ttft, 50), "ttft_p99_s": _pct(ttft, 99),
            "errors": sorted({e for o in outs for e in o.get("errors", [])})[:5]}


def _pct(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))  # nearest rank
    return sorted_values[i]


def _fmt(r):
    line = (f"{r['clients']:>2} client(s): {r['requests']:>4} requests, {r['failed']} failed, "
            f"latency p50 {r['p50_s']:.3f} s p99 {r['p99_s']:.3f} s, {r['tokens_per_s']:.0f} tokens/s")
    if r["ttft_p50_s"] is not None:
        line += f", first token p50 {r['ttft_p50_s']:.3f} s p99 {r['ttft_p99_s']:.3f} s"
    return line


def main(argv=None):
    args = parse_args(argv)
    try:
        import openai  # noqa: F401
    except ImportError:
        sys.exit('error: the load test drives the server with the openai client: pip install "tinyllm[serve,oracle]"')
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or make_model(tmp)
        proc, url = start_server(model_dir, args.num_threads)
        try:
            run(url, 1, argparse.Namespace(**{**vars(args), "duration": 2.0}))  # warm-up: kernels loaded
            rounds = []
            for k in range(args.rounds):
                one = run(url, 1, args)
                print(f"round {k + 1}: " + _fmt(one), flush=True)
                many = run(url, args.clients, args)
                print(f"round {k + 1}: " + _fmt(many), flush=True)
                rounds.append((one, many))
        finally:
            proc.terminate()
            proc.wait(30)
    tps = [m["tokens_per_s"] / o["tokens_per_s"] for o, m in rounds]
    p50 = [m["p50_s"] / o["p50_s"] for o, m in rounds]
    failed = sum(o["failed"] + m["failed"] for o, m in rounds)
    print(f"\n{args.clients} clients vs 1: total tokens/s x{statistics.median(tps):.2f} "
          f"(rounds {', '.join(f'{x:.2f}' for x in tps)}), latency p50 x{statistics.median(p50):.1f}; "
          f"failed requests: {failed}")
    for o, m in rounds:
        for e in o["errors"] + m["errors"]:
            print("  error:", e)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rounds": [{"one": o, "many": m} for o, m in rounds],
                       "tokens_per_s_ratio": tps, "p50_ratio": p50, "failed": failed}, f, indent=2)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
