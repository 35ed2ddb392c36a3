"""Continuous batching: requests join and leave the running batch at token boundaries.

Design choices (after Orca and vLLM, without paging):
- one engine thread owns the model and a KV cache of `max_batch` rows (slots) × the context; the HTTP
  side only submits requests and reads their events, so model calls never block the event loop and
  never run concurrently;
- a loop iteration: drop cancelled requests, admit waiting ones into free slots (each prompt prefilled
  alone into its slot, its `n` samples copying the prompt's cache row), then one decode step for every
  running sample together, sampling each with its own settings and generator
  (`forge.infer.batch.pick_tokens`), then events out and finished slots freed. A request therefore
  waits at most one decode step to join, and a cancelled one frees its slot within one step;
- the decode step runs over a view of the cache (`KVCache.view`): the rows up to the highest slot in use
  and the slots up to the longest sequence, rounded up to 64, so a step costs what the running requests
  need, not the whole preallocated cache; new requests take the lowest free slot, keeping rows compact.
  With a compiled decode step the view is the whole cache instead (one shape, compiled once);
- the waiting line is bounded: `submit` raises `QueueFull` (the server's 429) rather than letting
  latency grow without limit;
- events go to each request through a thread-safe callback (the server wraps an asyncio queue), one
  event per decode step with the new text of each sample, so streaming is token by token;
- text is made by the same `StreamDecoder` / `StopStrings` pair as `forge generate`, so the server never
  emits half a character or any part of a stop string.
"""

import itertools
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from forge.infer.batch import Completion, Row, forbid_early_eos, pick_tokens
from forge.infer.engine import DecodeFn, FinishReason, decode_one_token, model_device, prefill
from forge.infer.fused_sample import compiled_sample
from forge.infer.kv_cache import KVCache
from forge.infer.sampling import SamplingConfig, TokenStats

if TYPE_CHECKING:
    from forge.model.transformer import Transformer

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds, for /metrics


class QueueFull(Exception):
    """The waiting line is full; the client should retry later."""


@dataclass
class TokenLogprob:
    """The log-probability of a generated token under the model, and the most likely alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Event:
    """What one decode step produced for one sample of a request."""

    index: int
    """the sample (0..n-1)"""
    text: str
    """new text (may be empty: a partial character or a possible stop string is held back)"""
    token_ids: list[int]
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    """set on the sample's last event"""


@dataclass
class Request:
    """A submitted request: `config.n` samples of one prompt; events arrive through `on_event`."""

    prompt_ids: list[int]
    config: SamplingConfig
    on_event: Callable[[Event | None], None]
    """called from the engine thread with each event, and with None once every sample has finished"""
    top_logprobs: int | None = None
    """None: no log-probabilities; k >= 0: the chosen token's and the k most likely tokens' at each step"""
    id: int = field(default_factory=itertools.count().__next__)
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    completions: list[Completion] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False

    @property
    def completion_tokens(self) -> int:
        return sum(len(c.token_ids) for c in self.completions)


class _Slot:
    """One running sample in a cache row."""

    def __init__(self, request: Request, row: Row, position: int) -> None:
        self.request, self.row = request, row
        self.position = position  # where `token` is fed by the next decode step
        self.token = 0


@dataclass
class Metrics:
    """Counters for /metrics (read from any thread; written by the engine thread)."""

    requests_total: int = 0
    requests_cancelled: int = 0
    tokens_generated: int = 0
    prompt_tokens: int = 0
    ttft_sum: float = 0.0
    ttft_count: int = 0
    ttft_buckets: list[int] = field(default_factory=lambda: [0] * len(TTFT_BUCKETS))

    def observe_ttft(self, seconds: float) -> None:
        self.ttft_sum += seconds
        self.ttft_count += 1
        for i, bound in enumerate(TTFT_BUCKETS):
            if seconds <= bound:
                self.ttft_buckets[i] += 1


class Scheduler:
    """Runs requests with continuous batching on one model; `start()` it, `submit()` to it, `stop()` it."""

    def __init__(
        self,
        model: "Transformer",
        token_bytes: list[bytes],
        eos_ids: tuple[int, ...],
        *,
        max_batch: int = 16,
        max_queue: int = 64,
        decode_fn: DecodeFn | None = None,
    ) -> None:
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.model, self.token_bytes, self.eos_ids = model, token_bytes, eos_ids
        self.max_batch, self.max_queue = max_batch, max_queue
        self.decode_fn = decode_fn
        self.device = model_device(model, None)
        self.context = model.config.context_length
        self.cache = KVCache.for_model(model, batch_size=max_batch)
        self.stats = TokenStats(max_batch, model.config.vocab_size, self.device)
        self.slots: list[_Slot | None] = [None] * max_batch
        self.waiting: deque[Request] = deque()
        self.metrics = Metrics()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None  # what stopped the engine thread, if anything did

    # ----------------------------------------------------------------------------------------------------
    # the caller's side (any thread)

    @property
    def running(self) -> int:
        return sum(slot is not None for slot in self.slots)

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compile, before the first request, what a compiled decode step needs: the step at this
        scheduler's batch and cache shape, and the sampler for one row and for several. Otherwise the
        first request, and later the first decode step that samples several rows with one setting, each
        stall every stream for as long as a compile takes (10-60 s on a laptop CPU). Nothing to do
        without a `decode_fn`."""
        if self.decode_fn is None:
            return
        # two tensors: dynamo would guard on the token and position being one (and compile again)
        tokens = torch.zeros(self.max_batch, dtype=torch.long, device=self.device)
        positions = torch.zeros(self.max_batch, dtype=torch.long, device=self.device)
        # the step writes slot 0 of each row, which a request's prefill overwrites
        logits = self.decode_fn(self.model, tokens, positions, self.cache)  # (max_batch, V)
        config = SamplingConfig(temperature=1.0)  # any setting `compiled_sample` covers
        for rows in sorted({1, min(2, self.max_batch)}):  # as `pick_tokens` selects them: copies by index
            picked = logits[torch.arange(rows, device=self.device)]
            compiled_sample(picked, config, [torch.Generator(self.device).manual_seed(0)] * rows)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="forge-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()

    def submit(self, request: Request) -> Request:
        """Queue `request`; raise `QueueFull` when it can neither take a free slot nor wait in line
        (`max_queue` requests already waiting beyond those the free slots will take)."""
        if request.config.n > self.max_batch:
            raise ValueError(f"n = {request.config.n} is more than the server's batch of {self.max_batch}")
        with self._wake:
            free = self.max_batch - self.running
            if len(self.waiting) >= self.max_queue + free:  # it could neither start now nor wait in line
                raise QueueFull(f"{len(self.waiting)} requests are already waiting; retry later")
            self.waiting.append(request)
            self.metrics.requests_total += 1
            self._wake.notify()
        return request

    def cancel(self, request: Request) -> None:
        """Stop `request` (its client went away): its slots are freed before the next decode step."""
        with self._wake:
            request.cancelled = True
            self._wake.notify()

    # ----------------------------------------------------------------------------------------------------
    # the engine thread

    def _loop(self) -> None:
        admitted: list[Request] = []
        try:
            while True:
                with self._wake:
                    while not self._stopping and not self.waiting and self.running == 0:
                        self._wake.wait()
                    if self._stopping:
                        return
                    admitted = self._take_admissible()
                self._drop_cancelled()
                for request in admitted:
                    self._admit(request)
                admitted = []
                if self.running:
                    self._step()
        except BaseException as error:  # every request ends (the server answers 500) and /health says so
            self.error = error
            for request in [*admitted, *self.waiting, *(s.request for s in self.slots if s is not None)]:
                self._finish_request(request)
            raise

    def _take_admissible(self) -> list[Request]:
        """Waiting requests that fit in the free slots now (called with the lock held), in arrival order."""
        free = self.max_batch - self.running
        taken = []
        while self.waiting and (self.waiting[0].cancelled or self.waiting[0].config.n <= free):
            request = self.waiting.popleft()
            if request.cancelled:
                self.metrics.requests_cancelled += 1
                self._finish_request(request)
                continue
            free -= request.config.n
            taken.append(request)
        return taken

    def _drop_cancelled(self) -> None:
        for i, slot in enumerate(self.slots):
            if slot is not None and slot.request.cancelled:
                if not slot.request.finished:
                    self.metrics.requests_cancelled += 1
                    self._finish_request(slot.request)
                self.slots[i] = None

    @torch.inference_mode()
    def _admit(self, request: Request) -> None:
        """Prefill the prompt into the lowest free slot, copy it to the request's other samples, and
        sample every sample's first token."""
        config = request.config
        free = [i for i, slot in enumerate(self.slots) if slot is None][: config.n]
        prompt = request.prompt_ids
        length = len(prompt)
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        row_view = self.cache.view(slice(free[0], free[0] + 1), length)
        logits = prefill(self.model, ids, row_view)  # (1, V)
        if len(free) > 1:
            self.cache.copy_row(free[0], free[1:], length)
        base_seed = secrets.randbits(62) if config.seed is None else config.seed
        for j, slot_index in enumerate(free):
            completion = Completion(request=request.id, sample=j, seed=base_seed + j)
            request.completions.append(completion)
            row = Row(completion, config, self.token_bytes)
            row.generator = torch.Generator(device=self.device).manual_seed(base_seed + j)
            self.slots[slot_index] = _Slot(request, row, position=length)
            self.stats.start(slot_index, prompt)
        self.metrics.prompt_tokens += length
        self._advance(free, logits.expand(len(free), -1).clone())

    @torch.inference_mode()
    def _step(self) -> None:
        """One decode step for every running sample."""
        active = [i for i, slot in enumerate(self.slots) if slot is not None]
        rows = active[-1] + 1
        tokens = torch.zeros(rows, dtype=torch.long)
        positions = torch.zeros(rows, dtype=torch.long)  # free rows inside the view write slot 0: harmless
        for i in active:
            slot = self.slots[i]
            assert slot is not None
            tokens[i], positions[i] = slot.token, slot.position
        if self.decode_fn is not None:  # compiled: always the same shapes
            view, rows = self.cache, self.max_batch
            tokens = torch.cat((tokens, torch.zeros(rows - len(tokens), dtype=torch.long)))
            positions = torch.cat((positions, torch.zeros(rows - len(positions), dtype=torch.long)))
        else:
            longest = max(int(positions.max()) + 1, 1)
            view = self.cache.view(slice(0, rows), min(64 * math.ceil(longest / 64), self.context))
        step = self.decode_fn or decode_one_token
        logits = step(self.model, tokens.to(self.device), positions.to(self.device), view)  # (rows, V)
        for i in active:
            slot = self.slots[i]
            assert slot is not None
            slot.position += 1  # its token is in the cache now
        self._advance(active, logits[active])

    def _advance(self, slot_indices: list[int], logits: torch.Tensor) -> None:
        """Sample the next token of each slot from its logits (len(slot_indices), V), emit events."""
        slots = [self.slots[i] for i in slot_indices]
        assert all(slot is not None for slot in slots)
        rows = [slot.row for slot in slots if slot is not None]
        forbid_early_eos(logits, rows, self.eos_ids)
        index = torch.tensor(slot_indices, device=self.device)
        picked = pick_tokens(logits, rows, self.stats, index, compiled=self.decode_fn is not None)
        logprobs = self._logprobs(logits, slots, picked)
        now = time.perf_counter()
        for k, (slot_index, slot, token_id) in enumerate(zip(slot_indices, slots, picked, strict=True)):
            assert slot is not None
            request, row = slot.request, slot.row
            if request.first_token is None:
                request.first_token = now
                self.metrics.observe_ttft(now - request.submitted)
            # the token is fed at slot.position by the next step: none when the context is full
            kept, text = row.accept(token_id, self.eos_ids, can_continue=slot.position < self.context)
            event = Event(row.completion.sample, text, [])
            if kept:
                self.metrics.tokens_generated += 1
                self.stats.add(slot_index, token_id)
                event.token_ids, event.logprobs = [token_id], logprobs[k : k + 1] if logprobs else []
            event.finish_reason = row.completion.finish_reason
            slot.token = token_id
            request.on_event(event)
            if row.done:
                self.slots[slot_index] = None
                if all(c.finish_reason is not None for c in request.completions):
                    self._finish_request(request)

    def _logprobs(
        self, logits: torch.Tensor, slots: list[_Slot | None], picked: list[int]
    ) -> list[TokenLogprob]:
        """Log-probabilities of the picked tokens (under the model's raw distribution) for requests that
        asked; an empty list when none did, else one entry per slot (zeros for those that did not ask)."""
        wanted = [slot is not None and slot.request.top_logprobs is not None for slot in slots]
        if not any(wanted):
            return []
        logp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
        chosen = logp.gather(1, torch.tensor(picked, device=logp.device)[:, None])[:, 0].tolist()
        k_max = max(slot.request.top_logprobs or 0 for slot in slots if slot is not None)
        top_values, top_ids = logp.topk(k_max, dim=-1) if k_max else (logp[:, :0], logp[:, :0].long())
        out = []
        for k, slot in enumerate(slots):
            assert slot is not None
            k_top = slot.request.top_logprobs or 0
            pairs = list(zip(top_ids[k, :k_top].tolist(), top_values[k, :k_top].tolist(), strict=True))
            out.append(TokenLogprob(picked[k], chosen[k], pairs))
        return out

    def _finish_request(self, request: Request) -> None:
        if not request.finished:
            request.finished = True
            request.on_event(None)
