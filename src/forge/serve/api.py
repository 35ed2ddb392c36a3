"""The OpenAI-compatible HTTP API: `/v1/models`, `/v1/completions`, `/v1/chat/completions`, plus
`/health`, `/metrics` (Prometheus text) and the chat page at `/`.

Design choices:
- FastAPI for routing and request validation (pydantic models mirror OpenAI's request schemas), uvicorn
  to serve; generation itself runs in the `Scheduler`'s engine thread, and handlers only await its
  events, so the event loop stays free for other clients;
- every error, ours or pydantic's, leaves as OpenAI's `{"error": {"message", "type", "param", "code"}}`
  with the right status: 400 for a bad field (naming it, and for a prompt that does not fit, the token
  numbers), 401 for a missing or wrong API key, 404 for an unknown model or path, 413 for a body over
  the limit, 429 when the waiting line is full. An unexpected failure is a 500 with a generic message:
  no stack trace ever leaves the server;
- streaming is server-sent events exactly as the official client parses them: per choice a role delta
  first, then content deltas, then an empty delta with `finish_reason`; with
  `stream_options.include_usage` every chunk carries `"usage": null` and a last chunk has `choices: []`
  and the usage; then `data: [DONE]`;
- a client that goes away (stream closed, or a non-streaming request abandoned) cancels its request, so
  its slots are free within one decode step;
- forge's sampling extensions (`top_k`, `min_p`, `repetition_penalty`) are accepted as extra fields;
  fields OpenAI defines that forge does not implement (`echo`, `best_of` > n, `suffix`, tools) are
  refused with a 400 naming them rather than silently ignored; unknown fields are ignored, as OpenAI does;
- log-probabilities are those of the model's own distribution (log-softmax of the raw logits), before
  temperature and the other processors, for the sampled token and the `top_logprobs` most likely ones.
"""

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from forge.errors import ForgeError
from forge.infer.sampling import SamplingConfig
from forge.serve.protocol import (
    MAX_BODY_BYTES,
    APIError,
    ChatRequest,
    CompletionRequest,
    SamplingFields,
    Server,
    collect,
    error_body,
    metrics_text,
    stream,
)
from forge.serve.scheduler import Event, QueueFull
from forge.serve.scheduler import Request as EngineRequest
from forge.tokenizer.chat import render

# --------------------------------------------------------------------------------------------------------
# the app


class _BodyLimit:
    """ASGI middleware: answer 413 to a request body over `limit` bytes (declared or streamed)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            error_body(
                413,
                f"the request body is over the server's limit of {self.limit} bytes; send less "
                "(a shorter prompt or conversation)",
                param=None,
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


def create_app(server: Server, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The FastAPI application serving `server` (its scheduler must be started by the caller)."""
    app = FastAPI(title="forge", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, error: APIError) -> JSONResponse:
        body = error_body(error.status, error.message, param=error.param, type=error.type, code=error.code)
        return JSONResponse(body, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        location = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(location) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        return JSONResponse(error_body(400, message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if error.status_code == 404 else None
        return JSONResponse(
            error_body(error.status_code, str(error.detail), code=code), status_code=error.status_code
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, error: Exception) -> JSONResponse:
        return JSONResponse(error_body(500, "internal server error", type="server_error"), status_code=500)

    def _authorize(request: Request) -> None:
        if server.api_key is None:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(token.encode(), server.api_key.encode()):
            raise APIError(
                401,
                "missing or wrong API key: send `Authorization: Bearer KEY` with the key the "
                "server was started with (--api-key)",
                type="invalid_request_error",
            )

    def _check_model(name: str) -> None:
        if name != server.model_id:
            raise APIError(
                404,
                f"the model {name!r} does not exist; this server serves {server.model_id!r}",
                param="model",
            )

    @app.get("/health")
    async def health() -> dict[str, Any]:
        alive = server.scheduler.error is None
        return {"status": "ok" if alive else "error", "model": server.model_id}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics_text(server.scheduler))

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        html = resources.files("forge.serve").joinpath("web/chat.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{MODEL}}", server.model_id))

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _authorize(request)
        return {"object": "list", "data": [_model_card(server)]}

    @app.get("/v1/models/{name}")
    async def model(name: str, request: Request) -> dict[str, Any]:
        _authorize(request)
        _check_model(name)
        return _model_card(server)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request) -> Response:
        _authorize(request)
        _check_model(body.model)
        if body.tools:
            raise APIError(400, "tools (function calling) are not supported by this server", param="tools")
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        try:
            prompt_ids, _ = render(server.tokenizer, messages, add_generation_prompt=True)
        except ForgeError as e:
            raise APIError(400, str(e), param="messages") from e
        max_tokens = body.max_completion_tokens or body.max_tokens
        top = (body.top_logprobs or 0) if body.logprobs else None
        config = _sampling_config(server, body, len(prompt_ids), max_tokens, "messages")
        requests = [EngineRequest(prompt_ids, config, lambda e: None, top_logprobs=top)]
        return await _respond(server, request, body, requests, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        _authorize(request)
        _check_model(body.model)
        for name, refused in (
            ("echo", body.echo),
            ("suffix", body.suffix is not None),
            ("best_of", body.best_of not in (None, body.n)),
        ):
            if refused:
                raise APIError(400, f"{name} is not supported by this server; leave it out", param=name)
        prompts = _prompts(server, body.prompt)
        requests = []
        for ids in prompts:
            config = _sampling_config(server, body, len(ids), body.max_tokens or 16, "prompt")
            requests.append(EngineRequest(ids, config, lambda e: None, top_logprobs=body.logprobs))
        return await _respond(server, request, body, requests, chat=False)

    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    return app


def _model_card(server: Server) -> dict[str, Any]:
    return {
        "id": server.model_id,
        "object": "model",
        "created": server.created,
        "owned_by": "forge",
        "context_length": server.context,
    }


def _prompts(server: Server, prompt: str | list[str] | list[int]) -> list[list[int]]:
    """Token ids of each prompt: a text continues as a new document (after EOS), like `forge generate`."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if all(isinstance(p, int) for p in prompt):
        ids = [int(p) for p in prompt]
        bad = [i for i in ids if not 0 <= i < server.vocab]
        if bad:
            raise APIError(
                400,
                f"prompt token ids {bad[:5]} are outside the vocabulary (0 to {server.vocab - 1})",
                param="prompt",
            )
        return [ids]
    if len(prompt) > 16:
        raise APIError(400, f"{len(prompt)} prompts in one request; send at most 16", param="prompt")
    return [[server.tokenizer.eos_id, *server.tokenizer.encode(str(p))] for p in prompt]


def _sampling_config(
    server: Server, body: SamplingFields, prompt_tokens: int, max_tokens: int | None, prompt_param: str
) -> SamplingConfig:
    """The engine's settings for a request, or a 400 naming the field that is wrong."""
    room = server.context - prompt_tokens
    if room < 1:
        raise APIError(
            400,
            f"this model's maximum context length is {server.context} tokens, but the "
            f"{prompt_param} has {prompt_tokens} tokens; shorten it",
            param=prompt_param,
        )
    if max_tokens is None:
        max_tokens = room
    elif prompt_tokens + max_tokens > server.context:
        raise APIError(
            400,
            f"this model's maximum context length is {server.context} tokens, but "
            f"{prompt_tokens + max_tokens} were requested ({prompt_tokens} in the {prompt_param}, "
            f"{max_tokens} in max_tokens); lower max_tokens to at most {room} or shorten the "
            f"{prompt_param}",
            param="max_tokens",
        )
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise APIError(400, "stop takes at most 4 non-empty strings", param="stop")
    bias = []
    for key, value in (body.logit_bias or {}).items():
        if not key.isdigit() or not 0 <= int(key) < server.vocab or not -100 <= value <= 100:
            raise APIError(
                400,
                f"logit_bias entry {key!r}: {value} must map a token id (0 to {server.vocab - 1}) "
                "to a bias in [-100, 100]",
                param="logit_bias",
            )
        bias.append(f"{int(key)}:{value}")
    if body.n > server.scheduler.max_batch:
        raise APIError(
            400,
            f"n = {body.n} is more than this server runs at once ({server.scheduler.max_batch})",
            param="n",
        )
    try:
        return SamplingConfig(
            max_new_tokens=max_tokens,
            min_new_tokens=min(body.min_tokens, max_tokens),
            temperature=body.temperature,
            top_k=body.top_k,
            top_p=body.top_p,
            min_p=body.min_p,
            repetition_penalty=body.repetition_penalty,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            logit_bias=tuple(bias),
            stop=tuple(stop),
            n=body.n,
            seed=body.seed,
        )
    except ForgeError as e:
        raise APIError(400, str(e)) from e


# --------------------------------------------------------------------------------------------------------
# running requests and shaping the answers


async def _events(
    server: Server, http: Request, requests: list[EngineRequest]
) -> AsyncIterator[tuple[int, Event]]:
    """Submit `requests` and yield (choice index, event) until all have finished; cancel them if the
    consumer stops early (the client went away)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[int, Event | None]] = asyncio.Queue()
    n = requests[0].config.n

    def forward(base: int) -> Callable[[Event | None], None]:
        def on_event(event: Event | None) -> None:  # called in the engine thread
            loop.call_soon_threadsafe(queue.put_nowait, (base, event))

        return on_event

    for r, request in enumerate(requests):
        request.on_event = forward(r * n)
    submitted: list[EngineRequest] = []
    try:
        for request in requests:
            try:
                submitted.append(server.scheduler.submit(request))
            except QueueFull as e:
                raise APIError(429, f"the server is busy: {e}", type="rate_limit_error") from e
        running = len(submitted)
        while running:
            try:
                base, event = await asyncio.wait_for(queue.get(), timeout=1.0)
            except TimeoutError:
                if await http.is_disconnected():
                    return
                continue
            if event is None:
                running -= 1
                continue
            yield base + event.index, event
    finally:
        for request in submitted:
            if not request.finished:
                server.scheduler.cancel(request)


async def _respond(
    server: Server,
    http: Request,
    body: ChatRequest | CompletionRequest,
    requests: list[EngineRequest],
    *,
    chat: bool,
) -> Response:
    kind = "chatcmpl" if chat else "cmpl"
    ident = f"{kind}-{secrets.token_hex(12)}"
    created = int(time.time())
    events = _events(server, http, requests)
    if not body.stream:
        return JSONResponse(await collect(server, events, requests, ident, created, chat))
    first = await anext(events, None)  # a 429 is raised here, before the stream has started
    return StreamingResponse(
        stream(server, body, events, first, requests, ident, created, chat),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
