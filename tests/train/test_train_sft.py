"""Supervised fine-tuning: packing keeps conversations apart, the loss is on assistant tokens, a tiny model
learns a handful of conversations by heart, LoRA fine-tuning, and exact resume."""

import json
from pathlib import Path

import pytest
import torch

from forge.infer.engine import generate_ids
from forge.infer.sampling import SamplingConfig
from forge.model.config import ModelConfig
from forge.model.io import load_model, save_model
from forge.model.lora import LoraConfig
from forge.model.transformer import Transformer, segment_positions_and_mask
from forge.tokenizer.bpe import Tokenizer, TokenizerConfig, train_tokenizer
from forge.tokenizer.chat import render
from forge.tokenizer.special import SPECIAL_TOKENS
from forge.train.sft import SftConfig, sft
from forge.train.sft_data import encode, pack

CONVERSATIONS = [
    ("what is two plus two?", "four."),
    ("name a colour of the sky.", "blue, on a clear day."),
    ("what do cats say?", "meow, mostly at night."),
    ("say hello.", "hello there, friend!"),
]
CONFIG = ModelConfig(vocab_size=320, context_length=64, dim=48, num_layers=2, num_heads=4, num_kv_heads=2)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    texts = [f"{q} {a}" for q, a in CONVERSATIONS] * 30
    return train_tokenizer(texts, TokenizerConfig(vocab_size=300))


def _messages(question: str, answer: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": question}]
    return messages + ([{"role": "assistant", "content": answer}] if answer is not None else [])


@pytest.fixture()
def base_run(tmp_path: Path, tokenizer: Tokenizer) -> Path:
    torch.manual_seed(0)
    run = tmp_path / "base"
    save_model(Transformer(CONFIG), run)
    tokenizer.save(run / "tokenizer")
    return run


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    path = tmp_path / "sft" / "train.jsonl"
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"messages": _messages(q, a)}) + "\n" for q, a in CONVERSATIONS))
    (path.parent / "val.jsonl").write_text(path.read_text())  # held out = seen here: we test memorising
    return path


def test_segments_restart_positions_and_block_attention() -> None:
    segments = torch.tensor([[0, 0, 0, 1, 1, -1]])
    positions, mask = segment_positions_and_mask(segments)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0]]
    assert mask[0, 0, 4].tolist() == [False, False, False, True, True, False]  # 2nd segment sees itself
    assert mask[0, 0, 2].tolist() == [True, True, True, False, False, False]  # causal within the first


def test_packed_conversations_do_not_see_each_other(tokenizer: Tokenizer) -> None:
    torch.manual_seed(0)
    model = Transformer(CONFIG).eval()
    examples, _ = encode(
        tokenizer, [_messages(q, a) for q, a in CONVERSATIONS], seq_len=63, train_on="assistant"
    )
    rows = pack(examples, seq_len=63, pad_id=tokenizer.pad_id, packing=True, seed=0)
    assert len(rows) < len(examples)  # several conversations share a row
    with torch.no_grad():
        packed = model(rows.inputs, segments=rows.segments)
        for example in examples:  # each one alone gives the same logits as inside its packed row
            alone = model(torch.from_numpy(example.inputs)[None])[0]
            row, start = next(
                (r, s)
                for r in range(len(rows))
                for s in range(63 - len(example.inputs) + 1)
                if torch.equal(rows.inputs[r, s : s + len(example.inputs)], torch.from_numpy(example.inputs))
                and (s == 0 or rows.segments[r, s - 1] != rows.segments[r, s])
            )
            torch.testing.assert_close(
                packed[row, start : start + len(example.inputs)], alone, atol=1e-5, rtol=1e-5
            )


def test_targets_count_only_assistant_tokens(tokenizer: Tokenizer) -> None:
    messages = _messages(*CONVERSATIONS[0])
    (example,), _ = encode(tokenizer, [messages], seq_len=63, train_on="assistant")
    ids, mask = render(tokenizer, messages)
    counted = [int(t) for t in example.targets if t != -100]
    assert counted == [i for i, m in zip(ids[1:], mask[1:], strict=True) if m]
    assert counted[-1] == tokenizer.end_of_turn_id  # the model learns to stop
    (everything,), _ = encode(tokenizer, [messages], seq_len=63, train_on="all")
    assert everything.targets.tolist() == ids[1:]


def _answer(model: Transformer, tokenizer: Tokenizer, question: str) -> str:
    ids, _ = render(tokenizer, _messages(question), add_generation_prompt=True)
    config = SamplingConfig(temperature=0, max_new_tokens=24)
    new = list(generate_ids(model, ids, config, eos_ids=(tokenizer.end_of_turn_id, tokenizer.eos_id)))
    return tokenizer.decode(new)


def _config(base: Path, data: Path, out: Path, **options: object) -> SftConfig:
    values: dict = {"max_steps": 120, "lr": 3e-3, "batch_size": 2, "eval_every": 0, "log_every": 20,
                    "checkpoint_every": 0, "progress": False, "threads": 1, **options}  # fmt: skip
    return SftConfig(base=str(base), data=str(data), out=str(out), **values)


def test_sft_learns_the_answers_by_heart(
    base_run: Path, data: Path, tmp_path: Path, tokenizer: Tokenizer
) -> None:
    summary = sft(_config(base_run, data, tmp_path / "sft"))
    assert summary["val_loss_after"] < 0.25 * summary["val_loss_before"]
    model = load_model(tmp_path / "sft")  # the run directory loads like a pretrained one
    for question, answer in CONVERSATIONS:
        assert _answer(model, tokenizer, question) == answer
    assert (tmp_path / "sft" / "loss.png").is_file() and "forgetting" in (
        tmp_path / "sft" / "report.md"
    ).read_text()


def test_lora_sft_trains_adapters_and_saves_a_merged_model(
    base_run: Path, data: Path, tmp_path: Path
) -> None:
    adapter = LoraConfig(rank=8, alpha=16, targets=("all-linear",))
    summary = sft(_config(base_run, data, tmp_path / "lora", lora=True, adapter=adapter, max_steps=60))
    assert summary["trainable_fraction"] < 0.5 and summary["val_loss_after"] < summary["val_loss_before"]
    assert (tmp_path / "lora" / "adapter" / "adapter_config.json").is_file()
    merged = load_model(tmp_path / "lora")
    base = load_model(base_run)
    assert not torch.equal(
        merged.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight
    )
    moved = (merged.model.embed_tokens.weight != base.model.embed_tokens.weight).any(dim=1)
    assert moved.nonzero().flatten().tolist() == list(range(len(SPECIAL_TOKENS)))  # special rows only


def test_a_resumed_sft_run_ends_with_the_same_weights(base_run: Path, data: Path, tmp_path: Path) -> None:
    sft(_config(base_run, data, tmp_path / "straight", max_steps=8))
    sft(_config(base_run, data, tmp_path / "split", max_steps=4, checkpoint_every=4))
    sft(_config(base_run, data, tmp_path / "split", max_steps=8, checkpoint_every=4, resume=True))
    straight, split = load_model(tmp_path / "straight"), load_model(tmp_path / "split")
    for (name, a), (_, b) in zip(straight.state_dict().items(), split.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_bad_conversations_name_the_line(base_run: Path, tmp_path: Path) -> None:
    from forge.errors import DataError

    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"messages": _messages("q", "a")})
        + "\n"
        + json.dumps({"messages": [{"role": "bot"}]})
        + "\n"
    )
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        sft(_config(base_run, path, tmp_path / "x"))


def test_without_validation_data_the_summary_says_null_not_nan(
    base_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "alone" / "train.jsonl"  # no val.jsonl beside it
    path.parent.mkdir()
    path.write_text("".join(json.dumps({"messages": _messages(q, a)}) + "\n" for q, a in CONVERSATIONS))
    summary = sft(_config(base_run, path, tmp_path / "run", max_steps=4))
    assert summary["val_loss_before"] is None and summary["val_loss_reduction"] is None
    text = (tmp_path / "run" / "summary.json").read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"summary.json holds {name}"))
    assert "nan" not in capsys.readouterr().out.lower()
    assert "| n/a |" in (tmp_path / "run" / "report.md").read_text()
