"""Continuous batching: requests that join and leave a running batch get exactly what they would alone."""

import shutil
import threading
import time

import pytest
import torch

from forge.infer.batch import generate_batch
from forge.infer.engine import generate_ids
from forge.infer.sampling import SamplingConfig
from forge.model.config import ModelConfig
from forge.model.transformer import Transformer
from forge.serve.scheduler import Event, QueueFull, Request, Scheduler

VOCAB = 64
TOKEN_BYTES = [bytes([97 + i % 26]) for i in range(VOCAB)]  # every token is one letter
EOS = 1


def _model() -> Transformer:
    config = ModelConfig(
        vocab_size=VOCAB, context_length=48, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, init_std=0.3
    )
    return Transformer(config).eval()


class _Collector:
    """A request's events, gathered; `done` is set when the request has finished."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()
        self.request: Request | None = None

    def __call__(self, event: Event | None) -> None:
        if event is None:
            self.done.set()
        else:
            self.events.append(event)

    def tokens(self, index: int = 0) -> list[int]:
        return [t for e in self.events if e.index == index for t in e.token_ids]

    def text(self, index: int = 0) -> str:
        return "".join(e.text for e in self.events if e.index == index)


def _submit(scheduler: Scheduler, prompt: list[int], config: SamplingConfig, **kwargs: object) -> _Collector:
    collector = _Collector()
    collector.request = scheduler.submit(Request(prompt, config, collector, **kwargs))  # type: ignore[arg-type]
    return collector


@pytest.fixture
def model() -> Transformer:
    return _model()


def _running(model: Transformer, **kwargs: object) -> Scheduler:
    scheduler = Scheduler(model, TOKEN_BYTES, (EOS,), **kwargs)  # type: ignore[arg-type]
    scheduler.start()
    return scheduler


def test_requests_joining_a_running_batch_get_their_solo_greedy_output(model: Transformer) -> None:
    prompts = [[5, 6, 7], [9, 10, 11, 12, 13, 14, 15], [3], [20, 21]]
    lengths = [20, 6, 12, 16]
    scheduler = _running(model, max_batch=3)
    try:
        collectors = []
        for prompt, length in zip(prompts, lengths, strict=True):  # staggered: each joins a running batch
            config = SamplingConfig(temperature=0, max_new_tokens=length, stop_on_eos=False)
            collectors.append(_submit(scheduler, prompt, config))
            time.sleep(0.01)
        for c in collectors:
            assert c.done.wait(30)
    finally:
        scheduler.stop()
    for prompt, length, c in zip(prompts, lengths, collectors, strict=True):
        config = SamplingConfig(temperature=0, max_new_tokens=length, stop_on_eos=False)
        assert c.tokens() == list(generate_ids(model, prompt, config))
        assert c.events[-1].finish_reason == "length" and all(e.finish_reason is None for e in c.events[:-1])
    assert scheduler.running == 0 and scheduler.metrics.tokens_generated == sum(lengths)


def test_n_samples_with_a_seed_match_the_batch_engine_and_text_follows_tokens(model: Transformer) -> None:
    config = SamplingConfig(temperature=1.0, max_new_tokens=10, n=3, seed=11, stop_on_eos=False)
    scheduler = _running(model, max_batch=4)
    try:
        collector = _submit(scheduler, [4, 5, 6], config)
        assert collector.done.wait(30)
    finally:
        scheduler.stop()
    reference = generate_batch(model, [[4, 5, 6]], config, token_bytes=TOKEN_BYTES)
    for j in range(3):
        assert collector.tokens(j) == reference[j].token_ids
        assert collector.text(j) == "".join(TOKEN_BYTES[t].decode() for t in reference[j].token_ids)
    assert len({tuple(collector.tokens(j)) for j in range(3)}) > 1  # different seeds, different samples


def test_stop_strings_end_a_sample_without_emitting_the_stop(model: Transformer) -> None:
    config = SamplingConfig(temperature=0, max_new_tokens=12, stop_on_eos=False)
    free = list(generate_ids(model, [7, 8], config))
    text = "".join(TOKEN_BYTES[t].decode() for t in free)
    stop = text[4:6]
    expected = text[: text.index(stop)]
    scheduler = _running(model)
    try:
        collector = _submit(scheduler, [7, 8], SamplingConfig(temperature=0, max_new_tokens=12, stop=(stop,)))
        assert collector.done.wait(30)
    finally:
        scheduler.stop()
    assert collector.text() == expected and collector.events[-1].finish_reason == "stop"


def test_logprobs_are_the_models_log_softmax(model: Transformer) -> None:
    config = SamplingConfig(temperature=0, max_new_tokens=3, stop_on_eos=False)
    scheduler = _running(model)
    try:
        collector = _submit(scheduler, [2, 3], config, top_logprobs=2)
        assert collector.done.wait(30)
    finally:
        scheduler.stop()
    first = collector.events[0].logprobs[0]
    with torch.inference_mode():
        expected = torch.log_softmax(model(torch.tensor([[2, 3]]))[0, -1], dim=-1)
    assert first.token_id == int(expected.argmax())
    assert first.logprob == pytest.approx(float(expected.max()), abs=1e-4)
    assert [t for t, _ in first.top] == expected.topk(2).indices.tolist()


def test_cancel_frees_the_slot_and_a_full_line_refuses(model: Transformer) -> None:
    scheduler = Scheduler(model, TOKEN_BYTES, (EOS,), max_batch=1, max_queue=1)  # not started yet
    long = SamplingConfig(temperature=0, max_new_tokens=40, stop_on_eos=False)
    first = _submit(scheduler, [5], long)  # will take the free slot
    second = _submit(scheduler, [6], long)  # may wait: the line holds one
    with pytest.raises(QueueFull):
        _submit(scheduler, [7], long)
    scheduler.start()
    try:
        deadline = time.time() + 30
        while not first.events and time.time() < deadline:
            time.sleep(0.001)
        assert first.request is not None
        scheduler.cancel(first.request)
        assert first.done.wait(30) and second.done.wait(30)  # the second needed the first one's slot
    finally:
        scheduler.stop()
    assert len(first.tokens()) < 40 and len(second.tokens()) == 40
    assert scheduler.metrics.requests_cancelled == 1 and scheduler.running == 0


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="no C++ compiler")
def test_warm_up_compiles_before_the_first_request(model: Transformer) -> None:
    from torch._dynamo.utils import counters

    from forge.infer.engine import compile_decode

    config = SamplingConfig(temperature=1.0, top_p=0.9, max_new_tokens=6, seed=3)
    prompts = [[5, 9, 2], [7, 7, 3, 8]]
    outputs = []
    for decode_fn in (None, compile_decode(model, autotune=False)):  # compiled: the step and the sampler
        scheduler = Scheduler(model, TOKEN_BYTES, (EOS,), max_batch=4, decode_fn=decode_fn)
        scheduler.warm_up()
        graphs = counters["stats"]["unique_graphs"]
        collectors = [_submit(scheduler, prompt, config) for prompt in prompts]  # one step samples both
        scheduler.start()
        try:
            assert all(c.done.wait(30) for c in collectors)
        finally:
            scheduler.stop()
        assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled while serving
        outputs.append([c.tokens() for c in collectors])
    assert outputs[0] == outputs[1] and all(outputs[0])
