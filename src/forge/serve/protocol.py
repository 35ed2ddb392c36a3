"""OpenAI's wire format for forge's server: request schemas, the error shape, and the answers (whole
or streamed as server-sent events), built from the scheduler's events.

See `forge.serve.api` for the design; this module holds what is OpenAI's protocol rather than forge's.
"""

import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from forge.serve.scheduler import TTFT_BUCKETS, Event, Scheduler, TokenLogprob
from forge.serve.scheduler import Request as EngineRequest

if TYPE_CHECKING:
    from forge.tokenizer.bpe import Tokenizer

MAX_BODY_BYTES = 1 << 20


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, type: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type = status, message, param, type
        self.code: str | None = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded"}.get(
            status
        )


def error_body(
    status: int,
    message: str,
    *,
    param: str | None = None,
    type: str = "invalid_request_error",
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code or str(status)}}


# --------------------------------------------------------------------------------------------------------
# request schemas (OpenAI's, plus forge's extensions)


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, float] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # forge's extensions
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    min_tokens: int = Field(0, ge=0)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str | list[dict[str, Any]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")


class ChatRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] = Field(min_length=1)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


class Server:
    """The objects a running API needs: the scheduler, the tokenizer, the model's name and context."""

    def __init__(
        self, scheduler: Scheduler, tokenizer: "Tokenizer", model_id: str, *, api_key: str | None = None
    ) -> None:
        self.scheduler, self.tokenizer, self.model_id, self.api_key = scheduler, tokenizer, model_id, api_key
        self.context = scheduler.context
        self.vocab = scheduler.model.config.vocab_size
        self.token_bytes = tokenizer.token_bytes()
        self.created = int(time.time())


def _usage(requests: list[EngineRequest]) -> dict[str, int]:
    prompt = sum(len(r.prompt_ids) for r in requests)
    completion = sum(r.completion_tokens for r in requests)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _token_text(server: Server, token_id: int) -> str:
    return server.token_bytes[token_id].decode("utf-8", errors="replace")


def _chat_logprobs(server: Server, entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    def one(token_id: int, logprob: float) -> dict[str, Any]:
        return {
            "token": _token_text(server, token_id),
            "logprob": logprob,
            "bytes": list(server.token_bytes[token_id]),
        }

    return [one(e.token_id, e.logprob) | {"top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries]


def _completion_logprobs(server: Server, entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    tokens = [_token_text(server, e.token_id) for e in entries]
    offsets, position = [], offset
    for token in tokens:
        offsets.append(position)
        position += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{_token_text(server, t): lp for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


async def collect(
    server: Server,
    events: AsyncIterator[tuple[int, Event]],
    requests: list[EngineRequest],
    ident: str,
    created: int,
    chat: bool,
) -> dict[str, Any]:
    choices = len(requests) * requests[0].config.n
    texts = [""] * choices
    finish: list[str | None] = [None] * choices
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(choices)]
    async for index, event in events:
        texts[index] += event.text
        logprobs[index] += event.logprobs
        finish[index] = event.finish_reason or finish[index]
    wants_logprobs = requests[0].top_logprobs is not None
    out = []
    for i in range(choices):
        if chat:
            lp = {"content": _chat_logprobs(server, logprobs[i])} if wants_logprobs else None
            out.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": texts[i]},
                    "logprobs": lp,
                    "finish_reason": finish[i],
                }
            )
        else:
            lp = _completion_logprobs(server, logprobs[i], 0) if wants_logprobs else None
            out.append({"index": i, "text": texts[i], "logprobs": lp, "finish_reason": finish[i]})
    return {
        "id": ident,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": server.model_id,
        "choices": out,
        "usage": _usage(requests),
    }


async def stream(
    server: Server,
    body: ChatRequest | CompletionRequest,
    events: AsyncIterator[tuple[int, Event]],
    first: tuple[int, Event] | None,
    requests: list[EngineRequest],
    ident: str,
    created: int,
    chat: bool,
) -> AsyncIterator[str]:
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    wants_logprobs = requests[0].top_logprobs is not None
    offsets: dict[int, int] = {}

    def chunk(choices: list[dict[str, Any]]) -> str:
        data: dict[str, Any] = {
            "id": ident,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": server.model_id,
            "choices": choices,
        }
        if include_usage:
            data["usage"] = None
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    started: set[int] = set()
    try:
        pending = [first] if first is not None else []

        async def all_events() -> AsyncIterator[tuple[int, Event]]:
            for item in pending:
                yield item
            async for item in events:
                yield item

        async for index, event in all_events():
            if chat and index not in started:
                started.add(index)
                yield chunk(
                    [
                        {
                            "index": index,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            if event.text or event.logprobs:
                if chat:
                    lp = {"content": _chat_logprobs(server, event.logprobs)} if wants_logprobs else None
                    yield chunk(
                        [
                            {
                                "index": index,
                                "delta": {"content": event.text},
                                "logprobs": lp,
                                "finish_reason": None,
                            }
                        ]
                    )
                else:
                    offset = offsets.get(index, 0)
                    lp = _completion_logprobs(server, event.logprobs, offset) if wants_logprobs else None
                    offsets[index] = offset + len(event.text)
                    yield chunk([{"index": index, "text": event.text, "logprobs": lp, "finish_reason": None}])
            if event.finish_reason is not None:
                if chat:
                    yield chunk(
                        [
                            {
                                "index": index,
                                "delta": {},
                                "logprobs": None,
                                "finish_reason": event.finish_reason,
                            }
                        ]
                    )
                else:
                    yield chunk(
                        [{"index": index, "text": "", "logprobs": None, "finish_reason": event.finish_reason}]
                    )
        if include_usage:
            usage: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": server.model_id,
                "choices": [],
                "usage": _usage(requests),
            }
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def metrics_text(scheduler: Scheduler) -> str:
    m = scheduler.metrics
    lines = [
        "# HELP forge_requests_running Requests with at least one sample in the running batch.",
        "# TYPE forge_requests_running gauge",
        f"forge_requests_running {len({id(s.request) for s in scheduler.slots if s is not None})}",
        "# HELP forge_requests_waiting Requests waiting for a slot.",
        "# TYPE forge_requests_waiting gauge",
        f"forge_requests_waiting {len(scheduler.waiting)}",
        "# HELP forge_slots_running Batch rows (samples) in use.",
        "# TYPE forge_slots_running gauge",
        f"forge_slots_running {scheduler.running}",
        "# HELP forge_requests_total Requests accepted.",
        "# TYPE forge_requests_total counter",
        f"forge_requests_total {m.requests_total}",
        "# HELP forge_requests_cancelled_total Requests cancelled because their client went away.",
        "# TYPE forge_requests_cancelled_total counter",
        f"forge_requests_cancelled_total {m.requests_cancelled}",
        "# HELP forge_generated_tokens_total Tokens generated.",
        "# TYPE forge_generated_tokens_total counter",
        f"forge_generated_tokens_total {m.tokens_generated}",
        "# HELP forge_prompt_tokens_total Prompt tokens prefilled.",
        "# TYPE forge_prompt_tokens_total counter",
        f"forge_prompt_tokens_total {m.prompt_tokens}",
        "# HELP forge_time_to_first_token_seconds From arrival to the first generated token.",
        "# TYPE forge_time_to_first_token_seconds histogram",
    ]
    for bound, count in zip(TTFT_BUCKETS, m.ttft_buckets, strict=True):
        lines.append(f'forge_time_to_first_token_seconds_bucket{{le="{bound}"}} {count}')
    lines += [
        f'forge_time_to_first_token_seconds_bucket{{le="+Inf"}} {m.ttft_count}',
        f"forge_time_to_first_token_seconds_sum {m.ttft_sum:.6f}",
        f"forge_time_to_first_token_seconds_count {m.ttft_count}",
    ]
    return "\n".join(lines) + "\n"
