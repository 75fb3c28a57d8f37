"""The HTTP side: Starlette routes that speak OpenAI's API and hand the work to the engine.

    GET  /health                 {"status": "ok", "model", "active", "waiting", "tokens_generated"}
    GET  /v1/models              the one model served (and /v1/models/{id})
    POST /v1/completions         text in, text out (prompt: a string, strings, or token ids)
    POST /v1/chat/completions    messages through the model's chat template
    POST /v1/embeddings          a unit vector per input: mean-pooled final hidden states (backend.pool_embedding)
    POST /tokenize, /detokenize  text (or chat messages) <-> token ids, as vLLM's (no model runs)

Handlers run on the asyncio event loop and never touch the model: they validate the request
(protocol.py), put its sequences on the engine's queue, and wait for deltas, which the engine's
worker thread posts back to the loop. ``stream: true`` sends them as Server-Sent Events as they
come (``data: {...}`` lines, then ``data: [DONE]``). A client that disconnects cancels its
sequences, so the worker stops spending tokens on them. An embeddings request is one Call on the
same worker (a forward pass per input, no tokens), awaited as a future.
"""
import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager

try:
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route
except ImportError:  # pragma: no cover  (the message is the point)
    raise ImportError('tinyllm\'s server needs the serve extra: pip install "tinyllm[serve]"') from None

from .engine import Engine, EngineBusy, Sequence
from .protocol import (SYSTEM_FINGERPRINT, APIError, ServedModel, chat_logprobs, detokenize_response,
                       embeddings_response, legacy_logprobs, new_id, parse_chat, parse_completion, parse_embeddings,
                       parse_json, tokenize_response, usage)

__all__ = ["create_app"]

log = logging.getLogger("tinyllm.serve")
MAX_BODY_BYTES = 1 << 20  # a request is text for a small model: 1 MiB is plenty, and bounds memory
DISCONNECT_POLL_S = 0.25  # how often a waiting request checks that its client is still there


def create_app(backend, tokenizer, model_name, api_key=None, max_active=16, max_waiting=256, num_threads=None):
    """The ASGI app serving one model. ``api_key``: every request must send ``Authorization: Bearer <key>``.
    The other arguments go to the :class:`~tinyllm.serve.engine.Engine`."""
    served = ServedModel(model_name, backend, tokenizer)
    engine = Engine(backend, max_active=max_active, max_waiting=max_waiting, num_threads=num_threads)
    api = _API(served, engine)

    @asynccontextmanager
    async def lifespan(app):
        yield
        engine.close()

    routes = [
        Route("/health", api.health, methods=["GET"]),
        Route("/v1/models", api.list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", api.get_model, methods=["GET"]),
        Route("/v1/completions", api.completions, methods=["POST"]),
        Route("/v1/chat/completions", api.chat_completions, methods=["POST"]),
        Route("/v1/embeddings", api.embeddings, methods=["POST"]),
        Route("/tokenize", api.tokenize, methods=["POST"]),
        Route("/detokenize", api.detokenize, methods=["POST"]),
    ]
    middleware = [Middleware(BearerAuth, api_key=api_key)] if api_key else []
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers={
        APIError: _api_error, HTTPException: _http_error, Exception: _internal_error})
    app.state.served, app.state.engine = served, engine
    return app


# ----------------------------------------------------------------------------------------------
# errors and authentication


def _error_response(error, headers=None):
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _api_error(request, exc):
    return _error_response(exc)


async def _http_error(request, exc):
    """Starlette's own errors (no such route, wrong method) in OpenAI's shape."""
    message = (f"Unknown request URL: {request.method} {request.url.path}." if exc.status_code == 404
               else f"{request.method} is not allowed for {request.url.path}." if exc.status_code == 405
               else str(exc.detail))
    code = {404: "unknown_url", 405: "method_not_allowed"}.get(exc.status_code)
    return _error_response(APIError(exc.status_code, message, code=code), headers=getattr(exc, "headers", None))


async def _internal_error(request, exc):
    """A bug, not the client's fault: logged here with its traceback, never sent to the client."""
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(APIError(500, "The server had an internal error; its log says more.",
                                    type="server_error", code="internal_error"))


class BearerAuth:
    """Pure ASGI middleware: ``Authorization: Bearer <key>`` on every request, else 401.

    The header is compared with ``hmac.compare_digest``, whose time does not depend on where the
    bytes differ, so timing the server's answers does not reveal the key a byte at a time.
    """

    def __init__(self, app, api_key):
        self.app = app
        self.expected = f"Bearer {api_key}".encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    given = value
            if not hmac.compare_digest(given, self.expected):
                error = APIError(401, "Incorrect or missing API key: send the header 'Authorization: Bearer <key>' "
                                      "with the key this server was started with.", code="invalid_api_key")
                await _error_response(error, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_json(request):
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise APIError(413, f"The request body is larger than {MAX_BODY_BYTES} bytes.", code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise APIError(413, f"The request body is larger than {MAX_BODY_BYTES} bytes.", code="request_too_large")
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


def _sse(obj):
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


# ----------------------------------------------------------------------------------------------
# the endpoints


class _API:
    def __init__(self, served, engine):
        self.served, self.engine = served, engine

    async def health(self, request):
        return JSONResponse({"status": "ok", "model": self.served.name, **self.engine.stats()})

    async def list_models(self, request):
        return JSONResponse({"object": "list", "data": [self.served.card()]})

    async def get_model(self, request):
        model_id = request.path_params["model_id"]
        if model_id != self.served.name:
            raise APIError(404, f"The model `{model_id}` does not exist. This server serves `{self.served.name}`.",
                           param="model", code="model_not_found")
        return JSONResponse(self.served.card())

    async def completions(self, request):
        job = parse_completion(await _read_json(request), self.served)
        run = _Run(self, request, job, new_id("cmpl"), "text_completion")
        run.start()
        if job.stream:
            return _event_stream(run.completion_events())
        return JSONResponse(await run.completion_response())

    async def chat_completions(self, request):
        job = parse_chat(await _read_json(request), self.served)
        run = _Run(self, request, job, new_id("chatcmpl"), "chat.completion")
        run.start()
        if job.stream:
            return _event_stream(run.chat_events())
        return JSONResponse(await run.chat_response())


    async def tokenize(self, request):
        return JSONResponse(tokenize_response(await _read_json(request), self.served))

    async def detokenize(self, request):
        return JSONResponse(detokenize_response(await _read_json(request), self.served))

    async def embeddings(self, request):
        job = parse_embeddings(await _read_json(request), self.served)
        vectors = await self._on_worker(lambda backend: [backend.embed(ids) for ids in job.inputs])
        return JSONResponse(embeddings_response(job, vectors, self.served.name))

    async def _on_worker(self, fn):
        """``fn(backend)`` run by the engine's worker thread (which owns the model), awaited."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(result, error):  # on the event loop
            if not future.done():
                future.set_exception(error) if error is not None else future.set_result(result)

        try:
            self.engine.call(fn, lambda result, error: loop.call_soon_threadsafe(settle, result, error))
        except EngineBusy as e:
            raise APIError(503, f"The server is busy ({e}); retry in a moment.", type="server_error",
                           code="server_overloaded") from None
        try:
            return await future
        except Exception as e:  # noqa: BLE001  (the model failed: say so, as a failed generation does)
            raise APIError(500, f"the model failed: {type(e).__name__}: {e}", type="server_error",
                           code="embedding_failed") from None


def _event_stream(events):
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _Run:
    """One request in flight: its sequences on the engine, and the deltas coming back."""

    def __init__(self, api, request, job, id, object):
        self.api, self.request, self.job = api, request, job
        self.id, self.object, self.created, self.model = id, object, int(time.time()), api.served.name
        tokenizer = api.served.tokenizer
        self.sequences = [Sequence(p * job.n + c, ids, sampling, tokenizer, choice=c)
                          for p, ((_, ids), sampling) in enumerate(zip(job.prompts, job.sampling))
                          for c in range(job.n)]
        self.prompt_tokens = sum(len(ids) for _, ids in job.prompts)  # once per prompt, as OpenAI counts

    def start(self):
        loop, inbox = asyncio.get_running_loop(), asyncio.Queue()

        def sink(delta):  # called in the worker thread
            loop.call_soon_threadsafe(inbox.put_nowait, delta)

        for seq in self.sequences:
            seq.sink = sink
        self.inbox = inbox
        try:
            self.api.engine.submit(self.sequences)
        except EngineBusy as e:
            raise APIError(503, f"The server is busy ({e}); retry in a moment.", type="server_error",
                           code="server_overloaded") from None

    async def deltas(self):
        """Deltas until every sequence has finished; cancels them all if the client goes away."""
        remaining, loop = len(self.sequences), asyncio.get_running_loop()
        next_check = loop.time() + DISCONNECT_POLL_S
        try:
            while remaining:
                if loop.time() >= next_check:  # on a clock: deltas may come faster than any timeout
                    if await self.request.is_disconnected():
                        return
                    next_check = loop.time() + DISCONNECT_POLL_S
                try:
                    delta = await asyncio.wait_for(self.inbox.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    continue
                if delta.error is not None:
                    raise APIError(500, delta.error, type="server_error", code="generation_failed")
                remaining -= delta.finish_reason is not None
                yield delta
        finally:
            for seq in self.sequences:
                seq.cancelled = True  # a no-op for finished ones; frees the worker from the rest

    def _prompt_text(self, index):
        return self.job.prompts[index // self.job.n][0]

    def _base(self, **fields):
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT, **fields}

    def _usage(self, completion_tokens):
        return usage(self.prompt_tokens, completion_tokens)

    async def _collect(self):
        """Every sequence's text, logprob entries, finish reason and token count."""
        n = len(self.sequences)
        texts, entries, prompt_entries = [""] * n, [[] for _ in range(n)], [[] for _ in range(n)]
        finish, tokens = [None] * n, [0] * n
        async for d in self.deltas():
            i = d.index
            texts[i] += d.text
            entries[i] += d.logprobs
            prompt_entries[i] += d.prompt_logprobs or []
            if d.finish_reason is not None:
                finish[i], tokens[i] = d.finish_reason, d.completion_tokens
        return texts, entries, prompt_entries, finish, tokens

    # ---- /v1/completions ----
    def _legacy_logprobs(self, index, prompt_entries, entries):
        if self.job.sampling[index // self.job.n].logprobs is None:
            return None
        prompt = legacy_logprobs(prompt_entries)
        completion = legacy_logprobs(entries, base_offset=len(self._prompt_text(index)))
        return {k: prompt[k] + completion[k] for k in prompt}

    async def completion_response(self):
        texts, entries, prompt_entries, finish, tokens = await self._collect()
        echo = self.job.echo
        choices = [{"index": i, "text": (self._prompt_text(i) if echo else "") + texts[i],
                    "logprobs": self._legacy_logprobs(i, prompt_entries[i], entries[i]), "finish_reason": finish[i]}
                   for i in range(len(self.sequences))]
        return self._base(choices=choices, usage=self._usage(sum(tokens)))

    async def completion_events(self):
        echoed, completion_tokens = set(), 0
        try:
            async for d in self.deltas():
                text, prompt_entries = d.text, d.prompt_logprobs or []
                if self.job.echo and d.index not in echoed:
                    echoed.add(d.index)
                    text = self._prompt_text(d.index) + text
                completion_tokens += d.completion_tokens if d.finish_reason else 0
                choice = {"index": d.index, "text": text,
                          "logprobs": self._legacy_logprobs(d.index, prompt_entries, d.logprobs),
                          "finish_reason": d.finish_reason}
                yield _sse(self._base(choices=[choice], **self._usage_field()))
            if self.job.include_usage:
                yield _sse(self._base(choices=[], usage=self._usage(completion_tokens)))
        except APIError as e:
            yield _sse(e.body())
        yield "data: [DONE]\n\n"

    def _usage_field(self):
        return {"usage": None} if self.job.include_usage else {}

    # ---- /v1/chat/completions ----
    def _chat_logprobs(self, index, entries):
        return chat_logprobs(entries) if self.job.sampling[0].logprobs is not None else None

    async def chat_response(self):
        texts, entries, _, finish, tokens = await self._collect()
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i], "refusal": None},
                    "logprobs": self._chat_logprobs(i, entries[i]), "finish_reason": finish[i]}
                   for i in range(len(self.sequences))]
        return self._base(choices=choices, usage=self._usage(sum(tokens)))

    async def chat_events(self):
        self.object = "chat.completion.chunk"
        completion_tokens = 0
        try:
            for seq in self.sequences:  # OpenAI's first chunk of each choice names the speaker
                choice = {"index": seq.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}
                yield _sse(self._base(choices=[choice], **self._usage_field()))
            async for d in self.deltas():
                if d.text or d.logprobs:
                    choice = {"index": d.index, "delta": {"content": d.text},
                              "logprobs": self._chat_logprobs(d.index, d.logprobs), "finish_reason": None}
                    yield _sse(self._base(choices=[choice], **self._usage_field()))
                if d.finish_reason is not None:
                    completion_tokens += d.completion_tokens
                    choice = {"index": d.index, "delta": {}, "logprobs": None, "finish_reason": d.finish_reason}
                    yield _sse(self._base(choices=[choice], **self._usage_field()))
            if self.job.include_usage:
                yield _sse(self._base(choices=[], usage=self._usage(completion_tokens)))
        except APIError as e:
            yield _sse(e.body())
        yield "data: [DONE]\n\n"
