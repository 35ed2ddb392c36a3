"""`forge chat`: a terminal conversation driven through its prompt."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge.cli.main import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serve"))
from live_server import make_run  # noqa: E402


def _feed(monkeypatch: pytest.MonkeyPatch, lines: list[str | type[BaseException]]) -> None:
    """Answer `input()` with `lines` in turn; an exception class is raised instead (Ctrl-C, Ctrl-D)."""
    answers: Iterator[str | type[BaseException]] = iter(lines)

    def fake_input(prompt: str = "") -> str:
        print(prompt, end="")
        answer = next(answers, EOFError)
        if isinstance(answer, type):
            raise answer
        print(answer)
        return answer

    monkeypatch.setattr("builtins.input", fake_input)


def test_chat_answers_keeps_settings_and_survives_ctrl_c(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = make_run(tmp_path)
    _feed(monkeypatch, ["/temp 0", "/max 5", "/settings", "hello there", KeyboardInterrupt, "/temp 9",
                        "/reset", "/nope", "again", "/quit"])  # fmt: skip
    assert main(["chat", str(run), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "(temperature 0.0)" in out and "(max_new_tokens 5)" in out
    assert out.count("model> ") == 2 and "tokens," in out  # two answers, each with its statistics
    assert "(Ctrl-D or /quit leaves)" in out  # Ctrl-C at the prompt does not end the program
    assert "temperature" in out.split("/temp 9")[1].split("\n")[1]  # refused, naming the setting
    assert "(new conversation)" in out and "unknown command /nope" in out


def test_chat_answers_one_prompt_and_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = make_run(tmp_path)
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("--prompt must not read the terminal"))
    args = ["chat", str(run), "--threads", "1", "--temperature", "0", "--max-new-tokens", "6"]
    assert main([*args, "--prompt", "hello there"]) == 0
    first = capsys.readouterr().out
    assert main([*args, "--prompt", "hello there"]) == 0
    assert capsys.readouterr().out == first  # greedy: the same answer twice
    assert first.endswith("\n") and "forge chat with" not in first and "you>" not in first  # the answer alone
