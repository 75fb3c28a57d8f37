"""The engine: one worker thread owns the model and advances every request a token at a time.

Why one thread: nothing in tinyllm promises that two forward passes may run at once in one
process (the modules, numba's thread pool and the BLAS calls were written for one caller, and
this was not audited), and on a CPU two passes at once would only share the same cores. So the
HTTP side never touches the model: it puts
:class:`Sequence` objects on a queue, and the worker takes up to ``max_active`` of them and steps
them in turn, one token each (round robin), so a short request is not stuck behind a long one
and every stream makes progress. Each sequence keeps its own KV cache and its own random
Generator, so requests never mix and a seed reproduces ``model.generate`` exactly.

Why not batching: a batch of sequences must share one position per step (tinyllm's forward has
no padding mask and its KV cache one length), and a batch of one gives the same bits as
``model.generate``, which the tests hold it to.

A request that needs one forward pass and no tokens (``/v1/embeddings``) is a :class:`Call`:
the worker runs it whole when it takes it from the queue, between two tokens of the others.

Text leaves the worker through ``sequence.sink(delta)`` (the server hands each sequence a sink
that forwards to its asyncio loop); a client that goes away sets ``sequence.cancelled`` and the
worker drops the sequence before its next token, freeing its place.
"""
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass, field

import numba
import numpy as np

from ..kernels import set_num_threads
from ..tensor import no_grad

__all__ = ["Delta", "TokenLogprob", "Sequence", "Call", "Engine", "EngineBusy", "token_bytes"]

log = logging.getLogger("tinyllm.serve")


@dataclass
class TokenLogprob:
    """One token's log-probability under the model (log_softmax of its logits, before temperature
    and top-p) and the ``top`` most likely alternatives, as ``[(token_text, logprob), ...]``."""

    token_id: int
    text: str
    logprob: float  # None for the first prompt token (nothing predicts it)
    top: list
    offset: int  # where the token's text starts (in the completion; prompt tokens: in the prompt)
    bytes: bytes = b""  # the token's own bytes (token_bytes), which ``text`` may not spell
    top_bytes: list = field(default_factory=list)  # the same for each of ``top``


@dataclass
class Delta:
    """What one sequence produced since the last delta. The last one has ``finish_reason``."""

    index: int
    text: str = ""
    logprobs: list = field(default_factory=list)
    finish_reason: str = None  # "stop" (a stop string or eos) or "length" (max_tokens)
    completion_tokens: int = 0  # tokens generated so far (stop tokens included, as OpenAI bills them)
    prompt_logprobs: list = None  # echo + logprobs: the prompt's tokens, in the first delta
    error: str = None


class EngineBusy(RuntimeError):
    """The queue of waiting sequences is full."""


def token_bytes(tokenizer, token_id):
    """The bytes one token stands for. A byte-level BPE token may hold part of a UTF-8 character:
    its text alone is U+FFFD, and OpenAI's logprobs carry these bytes so that a client can join a
    character's tokens back into it. Tokenizers without bytes of their own: their text's UTF-8."""
    id_to_token = getattr(tokenizer, "id_to_token", None)
    token = id_to_token(token_id) if id_to_token is not None else None
    if isinstance(token, bytes):
        return token
    return tokenizer.decode([token_id]).encode("utf-8")


def _log_softmax(logits):
    """log p = z - log sum exp z, over the last axis, in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class Sequence:
    """One completion being generated: the text so far, stop strings, and log-probabilities.

    Text is decoded incrementally: a token that ends inside a UTF-8 character (byte-level BPE)
    waits for the rest. Text that could be the beginning of a stop string is held back until it
    is clear, so a stream never shows text that the final answer does not contain. Special tokens
    (an encoder-decoder's ``<pad>``, ``<s>``) add no text, as ``decode(ids, skip_special_tokens=True)``
    and vLLM's default; their logprob entries still name them.
    """

    def __init__(self, index, prompt_ids, sampling, tokenizer, choice=0, sink=None):
        self.index = index  # the choice's place in the response (prompt p, choice c: p * n + c)
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.tokenizer = tokenizer
        self.sink = sink
        self.cancelled = False
        # choice c of a prompt with seed s samples with seed s + c (choice 0 = model.generate(seed=s))
        self.rng = np.random.default_rng(None if sampling.seed is None else sampling.seed + choice)
        self.text = ""  # decoded completion
        self.sent = 0  # characters of self.text handed to the sink
        self.pending = []  # ids whose text is not complete yet (a cut UTF-8 character)
        self.n_generated = 0
        self.entries = []  # TokenLogprob of each token, in order
        self.entries_sent = 0
        self.finish_reason = None
        self._longest_stop = max((len(s) for s in sampling.stop), default=0)

    # ---- called by the engine, in the worker thread ----------------------------------------------
    def first_delta(self, backend):
        """The delta sent before any token: the prompt's log-probabilities, if asked for. Offsets
        count as the completion's do: the tokens of a character cut across tokens all start where
        it starts (adding up each token's own text, U+FFFD for a piece, would drift past it)."""
        if not self.sampling.echo_logprobs:
            return None
        logp = _log_softmax(backend.prompt_logits(self.prompt_ids))  # (T, V): row t scores token t + 1
        entries, offset, pending = [], 0, []
        for t, token_id in enumerate(self.prompt_ids):
            entries.append(self._entry(token_id, logp[t - 1] if t else None, offset))
            pending.append(token_id)
            piece = self.tokenizer.decode(pending)
            if not piece.endswith("\ufffd"):
                offset, pending = offset + len(piece), []
        return Delta(self.index, prompt_logprobs=entries)

    def add_token(self, token_id, logits):
        """Take one generated token; returns the delta to send (or None)."""
        sampling = self.sampling
        self.n_generated += 1
        if token_id in sampling.stop_token_ids:
            return self._finish("stop")
        if sampling.logprobs is not None:
            self.entries.append(self._entry(token_id, None if logits is None else _log_softmax(logits),
                                            len(self.text)))
        self.pending.append(token_id)
        piece = self._decode_pending()
        if not piece.endswith("\ufffd"):
            self._commit(piece)
        if self._cut_at_stop():
            return self._finish("stop", flush=False)  # whatever is pending lies past the cut
        if self.n_generated >= sampling.max_tokens:
            return self._finish("length")
        return self._delta(self._safe_length())

    def finish_without_tokens(self):
        """The last delta of a request for no tokens at all (echo with max_tokens 0: the prompt, and
        its log-probabilities, are the answer)."""
        return self._finish("length")

    def _entry(self, token_id, logp, offset):
        decode = self.tokenizer.decode
        raw = token_bytes(self.tokenizer, token_id)
        if logp is None:
            return TokenLogprob(token_id, decode([token_id]), None, [], offset, raw)
        k = self.sampling.logprobs
        top_ids = np.argpartition(-logp, k)[:k] if 0 < k < logp.size else np.arange(logp.size if k else 0)
        top_ids = [int(i) for i in top_ids[np.argsort(-logp[top_ids], kind="stable")]]
        top = [(decode([i]), float(logp[i])) for i in top_ids]
        return TokenLogprob(token_id, decode([token_id]), float(logp[token_id]), top, offset, raw,
                            [token_bytes(self.tokenizer, i) for i in top_ids])

    def _decode_pending(self):
        return self.tokenizer.decode(self.pending, skip_special_tokens=True)

    def _commit(self, piece):
        self.text += piece
        self.pending = []

    def _cut_at_stop(self):
        """Cut the text at the first stop string; True if one was found."""
        if not self._longest_stop:
            return False
        hits = [i for i in (self.text.find(s) for s in self.sampling.stop) if i >= 0]
        if not hits:
            return False
        self.text = self.text[:min(hits)]
        return True

    def _safe_length(self):
        """Characters that can be shown: all but a tail that may still grow into a stop string."""
        text = self.text
        for n in range(min(self._longest_stop - 1, len(text)), 0, -1):
            if any(s.startswith(text[-n:]) for s in self.sampling.stop):
                return len(text) - n
        return len(text)

    def _finish(self, reason, flush=True):
        if self.pending and flush:  # the end: a character cut short shows as U+FFFD, as decode() does
            self._commit(self._decode_pending())
            if self._cut_at_stop():
                reason = "stop"
        self.finish_reason = reason
        return self._delta(len(self.text))

    def _delta(self, upto):
        """The text in [sent, upto) and the entries of the tokens that start there."""
        text = self.text[self.sent:upto]
        entries = [e for e in self.entries[self.entries_sent:] if e.offset < upto]
        self.sent = max(self.sent, upto)
        self.entries_sent += len(entries)
        if not text and not entries and self.finish_reason is None:
            return None
        return Delta(self.index, text, entries, self.finish_reason, self.n_generated)


class Call:
    """One piece of work run whole by the worker: ``fn(backend)``, whose result (or the exception it
    raised) goes to ``done(result, error)``, called from the worker thread."""

    def __init__(self, fn, done):
        self.fn, self.done = fn, done
        self.cancelled = False

    def run(self, backend):
        try:
            result, error = self.fn(backend), None
        except Exception as e:  # noqa: BLE001  (reported to the client, logged here)
            log.exception("a call on the worker failed", exc_info=e)
            result, error = None, e
        try:
            self.done(result, error)
        except Exception:  # noqa: BLE001  (e.g. the server's event loop is gone): nobody is listening
            pass


class Engine:
    """The worker thread and its queue. ``submit(sequences)`` from any thread; deltas come back
    through each sequence's ``sink``."""

    def __init__(self, backend, max_active=16, max_waiting=256, num_threads=None):
        """``num_threads``: threads for the worker's kernels (numba's count is per calling thread);
        None keeps the default, under which the tokens equal ``model.generate`` in a default process
        bit for bit (some kernels round differently with another thread count)."""
        if max_active < 1 or max_waiting < 1:
            raise ValueError(f"Engine: max_active and max_waiting must be >= 1, got {max_active}, {max_waiting}")
        if num_threads is not None and not 1 <= num_threads <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(f"Engine: num_threads={num_threads} is outside 1..{numba.config.NUMBA_NUM_THREADS}")
        self.backend = backend
        self.num_threads = num_threads
        self.max_active, self.max_waiting = max_active, max_waiting
        self._inbox = queue.Queue()
        self._lock = threading.Lock()  # guards the counters read by stats()
        self._waiting = 0
        self._active = 0
        self.tokens_generated = 0
        self._thread = threading.Thread(target=self._run, name="tinyllm-engine", daemon=True)
        self._thread.start()

    def submit(self, sequences):
        """Queue sequences (all or none). Raises EngineBusy if the queue is full."""
        with self._lock:
            if self._waiting + len(sequences) > self.max_waiting:
                raise EngineBusy(f"{self._waiting} sequences are already waiting (limit {self.max_waiting})")
            self._waiting += len(sequences)
        for seq in sequences:
            self._inbox.put(seq)

    def call(self, fn, done):
        """Queue ``fn(backend)`` to run on the worker (see :class:`Call`). Raises EngineBusy if the
        queue is full."""
        with self._lock:
            if self._waiting + 1 > self.max_waiting:
                raise EngineBusy(f"{self._waiting} sequences are already waiting (limit {self.max_waiting})")
            self._waiting += 1
        self._inbox.put(Call(fn, done))

    def stats(self):
        with self._lock:
            return {"active": self._active, "waiting": self._waiting, "tokens_generated": self.tokens_generated}

    def close(self, timeout=5.0):
        self._inbox.put(None)
        self._thread.join(timeout)

    # ---- the worker thread -------------------------------------------------------------------------
    def _run(self):
        active = deque()  # (sequence, its token iterator)
        if self.num_threads is not None:
            set_num_threads(self.num_threads)
        with no_grad():  # per thread once grad mode is thread-local: set it here, in the worker itself
            while True:
                if not self._admit(active):
                    break
                if active:
                    self._step(active)
        for seq, steps in active:
            steps.close()
            self._send(seq, Delta(seq.index, error="the server is shutting down"))

    def _admit(self, active):
        """Move waiting sequences into ``active`` (blocking while there is nothing to do); False on close."""
        while len(active) < self.max_active:
            try:
                seq = self._inbox.get(block=not active)
            except queue.Empty:
                return True
            if seq is None:
                return False
            with self._lock:
                self._waiting -= 1
            if seq.cancelled:
                continue
            if isinstance(seq, Call):
                seq.run(self.backend)
                continue
            try:
                first = seq.first_delta(self.backend)
                steps = self.backend.steps(seq.prompt_ids, seq.sampling, seq.rng)
            except Exception as e:  # noqa: BLE001  (reported to the client, logged here)
                self._fail(seq, e)
                continue
            if first is not None:
                self._send(seq, first)
            if seq.sampling.max_tokens == 0:  # nothing to generate: done before the first step
                steps.close()
                self._send(seq, seq.finish_without_tokens())
                continue
            active.append((seq, steps))
            with self._lock:
                self._active = len(active)
        return True

    def _step(self, active):
        """One token for the sequence at the front of the line, then it goes to the back."""
        seq, steps = active.popleft()
        done = seq.cancelled
        if not done:
            try:
                token_id, logits = next(steps)
                delta = seq.add_token(token_id, logits)
            except Exception as e:  # noqa: BLE001
                self._fail(seq, e)
                done = True
            else:
                with self._lock:
                    self.tokens_generated += 1
                done = seq.finish_reason is not None
                if delta is not None:
                    self._send(seq, delta)
        if done:
            steps.close()
        else:
            active.append((seq, steps))
        with self._lock:
            self._active = len(active)

    def _send(self, seq, delta):
        try:
            seq.sink(delta)
        except Exception:  # noqa: BLE001  (e.g. the server's event loop is gone): nobody is listening
            seq.cancelled = True

    def _fail(self, seq, error):
        log.exception("generation failed for a sequence", exc_info=error)
        self._send(seq, Delta(seq.index, error=f"generation failed: {type(error).__name__}: {error}"))
