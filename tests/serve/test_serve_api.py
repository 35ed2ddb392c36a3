"""The OpenAI-compatible server, driven by the official `openai` client against a real uvicorn process."""

import json
import threading
import time

import httpx
import openai
import pytest
from live_server import API_KEY, MODEL

from forge.serve.launch import ServerProcess


@pytest.fixture(scope="module")
def client(live_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def _chat(client: openai.OpenAI, model: str, **kwargs: object) -> object:
    messages = kwargs.pop("messages", [{"role": "user", "content": "hello there"}])
    return client.chat.completions.create(model=model, messages=messages, **kwargs)  # type: ignore[call-overload]


def test_models_lists_the_served_model(client: openai.OpenAI, live_server: ServerProcess) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completion_counts_tokens_and_stops_at_max_tokens(
    client: openai.OpenAI, live_server: ServerProcess
) -> None:
    out = client.completions.create(
        model=MODEL, prompt="the quick", max_tokens=5, temperature=0, extra_body={"min_tokens": 5}
    )
    assert out.object == "text_completion" and out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 5 and out.usage.prompt_tokens > 1
    assert isinstance(out.choices[0].text, str)


def test_chat_streaming_with_usage_matches_the_plain_answer(
    client: openai.OpenAI, live_server: ServerProcess
) -> None:
    settings = {"max_tokens": 12, "temperature": 0, "extra_body": {"min_tokens": 12}}
    plain = _chat(client, MODEL, **settings)
    chunks = list(_chat(client, MODEL, stream=True, stream_options={"include_usage": True}, **settings))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content  # type: ignore[attr-defined]
    assert plain.choices[0].message.role == "assistant"  # type: ignore[attr-defined]


def test_n_samples_and_seeds_reproduce(client: openai.OpenAI, live_server: ServerProcess) -> None:
    settings = {"max_tokens": 10, "temperature": 1.0, "n": 2, "extra_body": {"min_tokens": 10}}
    first = _chat(client, MODEL, seed=7, **settings)
    again = _chat(client, MODEL, seed=7, **settings)
    other = _chat(client, MODEL, seed=8, **settings)
    texts = [c.message.content for c in first.choices]  # type: ignore[attr-defined]
    assert [c.index for c in first.choices] == [0, 1]  # type: ignore[attr-defined]
    assert texts == [c.message.content for c in again.choices]  # type: ignore[attr-defined]
    assert texts != [c.message.content for c in other.choices]  # type: ignore[attr-defined]
    assert texts[0] != texts[1]
    streamed = _chat(client, MODEL, seed=7, stream=True, **settings)
    pieces = {0: "", 1: ""}
    for chunk in streamed:
        for choice in chunk.choices:
            pieces[choice.index] += choice.delta.content or ""
    assert [pieces[0], pieces[1]] == texts


def test_stop_strings_cut_the_text_before_the_stop(client: openai.OpenAI, live_server: ServerProcess) -> None:
    settings = {"model": MODEL, "prompt": "hello", "max_tokens": 20, "temperature": 0}
    free = client.completions.create(**settings, extra_body={"min_tokens": 20}).choices[0].text
    stop = free[6:8]
    assert len(stop) == 2
    cut = client.completions.create(**settings, stop=[stop, "never-there"], extra_body={"min_tokens": 20})
    assert cut.choices[0].text == free[: free.index(stop)] and cut.choices[0].finish_reason == "stop"
    stream = client.completions.create(**settings, stop=stop, stream=True, extra_body={"min_tokens": 20})
    assert "".join(c.choices[0].text for c in stream) == free[: free.index(stop)]


def test_logprobs_come_with_each_token(client: openai.OpenAI, live_server: ServerProcess) -> None:
    out = _chat(
        client,
        MODEL,
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
        extra_body={"min_tokens": 4},
    )
    content = out.choices[0].logprobs.content  # type: ignore[attr-defined]
    assert len(content) == 4
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)  # greedy: the top token


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_tokens": -1}, "max_tokens"),
        ({"temperature": 3}, "temperature"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role"),
        ({"messages": []}, "messages"),
        (
            {"max_tokens": 250, "messages": [{"role": "user", "content": "hello " * 40}]},
            "maximum context length",
        ),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logit_bias": {"99999": 5}}, "logit_bias"),
    ],
)
def test_bad_fields_are_400_naming_the_field(
    client: openai.OpenAI, live_server: ServerProcess, kwargs: dict, needle: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(client, MODEL, **kwargs)
    assert needle in str(caught.value)


def test_prompt_over_the_context_names_the_numbers(client: openai.OpenAI, live_server: ServerProcess) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="hello world " * 20, max_tokens=250)
    message = str(caught.value)
    assert "256" in message and "max_tokens" in message


def test_auth_model_size_and_json_errors(client: openai.OpenAI, live_server: ServerProcess) -> None:
    wrong = openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.NotFoundError):
        _chat(client, "no-such-model")
    with pytest.raises(openai.APIStatusError) as caught:
        _chat(client, MODEL, messages=[{"role": "user", "content": "x" * 30_000}])
    assert caught.value.status_code == 413
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    response = httpx.post(f"{live_server.url}/v1/chat/completions", content=b"{not json", headers=headers)
    assert response.status_code == 400 and set(response.json()["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


def test_a_full_queue_answers_429(client: openai.OpenAI, live_server: ServerProcess) -> None:
    outcomes: list[str] = []

    def one() -> None:
        try:
            client.completions.create(
                model=MODEL,
                prompt="hi",
                max_tokens=200,
                temperature=0,
                extra_body={"min_tokens": 200},
            )
            outcomes.append("ok")
        except openai.RateLimitError:
            outcomes.append("429")

    threads = [threading.Thread(target=one) for _ in range(12)]  # 4 slots + 2 in line, then refusals
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "429" in outcomes and "ok" in outcomes


def test_clients_that_disconnect_leave_no_running_slots(live_server: ServerProcess) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {
        "model": MODEL,
        "prompt": "hello",
        "max_tokens": 200,
        "min_tokens": 200,
        "stream": True,
    }
    before = live_server.metrics()["forge_requests_cancelled_total"]
    with httpx.Client(timeout=30) as http:
        for _ in range(8):
            with http.stream(
                "POST", f"{live_server.url}/v1/completions", json=body, headers=headers
            ) as response:
                lines = response.iter_lines()
                first = next(line for line in lines if line.startswith("data: "))
                assert "choices" in json.loads(first[6:])  # streaming had started; now the client leaves
    deadline = time.time() + 20
    while time.time() < deadline:
        values = live_server.metrics()
        if values["forge_slots_running"] == 0 and values["forge_requests_waiting"] == 0:
            break
        time.sleep(0.05)
    assert values["forge_slots_running"] == 0 and values["forge_requests_waiting"] == 0
    assert values["forge_requests_cancelled_total"] - before >= 7  # a very fast one may finish first


def test_health_and_metrics_are_open(live_server: ServerProcess) -> None:
    assert httpx.get(f"{live_server.url}/health").json()["status"] == "ok"
    values = live_server.metrics()
    assert values["forge_generated_tokens_total"] >= 0 and "forge_time_to_first_token_seconds_count" in values
