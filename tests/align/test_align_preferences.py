"""The preference store (SQLite), its JSONL export and import, and the readable rule."""

import json
import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest
from preference_worker import label

from forge.align.formats import read_preferences, read_prompts
from forge.align.preferences import NewPair, PreferenceStore, UnknownPair
from forge.align.rule import compare, judge, prefer, task_of
from forge.errors import DataError

WRITE = [{"role": "user", "content": "Write a Python function `add(a, b)` that returns the sum of a and b."}]
EXPLAIN = [{"role": "user", "content": "What does `posixpath.join` do?"}]
GOOD_CODE = 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b'


def _pairs(n: int, model_id: str = "tiny") -> list[NewPair]:
    return [
        NewPair(
            prompt=[{"role": "user", "content": f"question {i}"}],
            answer_a=f"answer A{i}",
            answer_b=f"answer B{i}",
            sampling={"temperature": 1.0, "seed_a": 2 * i, "seed_b": 2 * i + 1},
            model_id=model_id,
        )
        for i in range(n)
    ]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- the store ----------------------------------------------------------------------------------------


def test_pairs_are_claimed_judged_once_per_labeller_and_counted(tmp_path: Path) -> None:
    store = PreferenceStore(tmp_path / "prefs.db")
    ids = store.add_pairs(_pairs(3))
    first = store.next_pair("ann")
    assert first is not None and first.id == ids[0] and first.answer_a == "answer A0"
    assert first.sampling["seed_b"] == 1 and first.model_id == "tiny"
    assert store.next_pair("ann") == first  # a reloaded page gets its claimed pair back
    second = store.next_pair("bob")
    assert second is not None and second.id == ids[1]  # ann's claim keeps it from bob

    judgement = store.record(first.id, "ann", "a")
    assert (
        store.record(first.id, "ann", "b", edited="better") == judgement
    )  # a second vote replaces the first
    store.record(second.id, "bob", "tie")
    rows = store.judgements()
    assert [(r["pair_id"], r["labeller"], r["choice"], r["edited"]) for r in rows] == [
        (ids[0], "ann", "b", "better"),
        (ids[1], "bob", "tie", None),
    ]
    assert rows[0]["prompt"] == [{"role": "user", "content": "question 0"}]
    assert rows[0]["sampling"]["seed_a"] == 0 and rows[0]["created_at"].endswith("+00:00")
    progress = store.progress("ann")
    assert progress["pairs"] == 3 and progress["done"] == 2 and progress["judgements"] == 2
    assert progress["choices"] == {"a": 0, "b": 1, "tie": 1, "both_bad": 0} and progress["mine"] == 1
    third = store.next_pair("ann")
    assert third is not None and third.id == ids[2]
    store.record(third.id, "ann", "both_bad")
    assert store.next_pair("ann") is None and store.next_pair("carl") is None


def test_an_expired_lease_offers_the_pair_again_and_skips_stick(tmp_path: Path) -> None:
    store = PreferenceStore(tmp_path / "prefs.db", lease_seconds=0.05)
    (only,) = store.add_pairs(_pairs(1))
    assert store.next_pair("ann") is not None
    assert store.next_pair("bob") is None  # claimed by ann
    time.sleep(0.1)
    taken = store.next_pair("bob")
    assert taken is not None and taken.id == only  # ann's tab was closed: bob gets it
    store.skip(only, "bob")
    assert store.next_pair("bob") is None  # bob passed on it
    assert store.next_pair("ann") is not None  # released for the others


def test_votes_per_pair_asks_several_people(tmp_path: Path) -> None:
    store = PreferenceStore(tmp_path / "prefs.db", votes_per_pair=2)
    (only,) = store.add_pairs(_pairs(1))
    store.record(only, "ann", "a")
    assert store.next_pair("ann") is None
    taken = store.next_pair("bob")
    assert taken is not None and taken.id == only
    store.record(only, "bob", "a")
    assert store.next_pair("carl") is None
    assert store.progress()["done"] == 1


def test_bad_votes_and_files_are_refused(tmp_path: Path) -> None:
    store = PreferenceStore(tmp_path / "prefs.db")
    (only,) = store.add_pairs(_pairs(1))
    with pytest.raises(UnknownPair, match="no pair 99"):
        store.record(99, "ann", "a")
    with pytest.raises(DataError, match="choice 'c' is not one of a, b, tie, both_bad"):
        store.record(only, "ann", "c")
    with pytest.raises(DataError, match="labeller"):
        store.record(only, "  ", "a")
    db = sqlite3.connect(tmp_path / "prefs.db")
    with pytest.raises(sqlite3.IntegrityError):  # the schema holds the rule too
        db.execute(
            "INSERT INTO judgements (prompt_json, answer_a, answer_b, choice, sampling_json, model_id, "
            "labeller, created_at) VALUES ('[]', 'x', 'y', 'maybe', '{}', '', 'ann', 'now')"
        )
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(DataError, match="junk.db: not a preference database"):
        PreferenceStore(junk)


def test_eight_labellers_at_once_lose_no_vote(tmp_path: Path) -> None:
    db = str(tmp_path / "prefs.db")
    store = PreferenceStore(db)
    pair_ids = store.add_pairs(_pairs(200))
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    workers = [
        context.Process(target=label, args=(db, f"labeller-{i}", 25, start, results)) for i in range(8)
    ]
    for worker in workers:
        worker.start()
    start.set()
    judged = dict(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0
    assert all(len(ids) == 25 for ids in judged.values())
    rows = store.judgements()
    assert len(rows) == 200
    assert sorted(r["pair_id"] for r in rows) == pair_ids  # every pair once: no duplicate, none lost
    assert {(r["labeller"], r["pair_id"]) for r in rows} == {
        (name, pair_id) for name, ids in judged.items() for pair_id in ids
    }
    assert store.progress()["done"] == 200


# ---- JSONL export and import --------------------------------------------------------------------------


def test_export_maps_votes_to_chosen_and_rejected_and_import_reads_it_back(tmp_path: Path) -> None:
    store = PreferenceStore(tmp_path / "prefs.db")
    ids = store.add_pairs(_pairs(5))
    for pair_id, choice in zip(ids, ["a", "b", "tie", "both_bad"], strict=False):
        store.record(pair_id, "ann", choice)
    store.record(ids[4], "ann", "a", edited="a better answer")
    counts = store.export_jsonl(tmp_path / "prefs.jsonl")
    assert counts == {"judgements": 5, "written": 5, "ties": 1, "both_bad": 1, "edits": 1}
    lines = _lines(tmp_path / "prefs.jsonl")
    assert [(line["chosen"], line["rejected"]) for line in lines] == [
        ("answer A0", "answer B0"),
        ("answer B1", "answer A1"),
        ("answer A4", "answer B4"),
        ("a better answer", "answer A4"),
        ("a better answer", "answer B4"),
    ]
    assert lines[0]["prompt"] == [{"role": "user", "content": "question 0"}]

    other = PreferenceStore(tmp_path / "other.db")
    assert other.import_jsonl(tmp_path / "prefs.jsonl") == {"records": 5, "added": 5, "already_present": 0}
    assert other.import_jsonl(tmp_path / "prefs.jsonl")["added"] == 0  # identical records are kept once
    other.export_jsonl(tmp_path / "again.jsonl")
    assert _lines(tmp_path / "again.jsonl") == lines
    assert other.judgements()[0]["labeller"] == "import:prefs.jsonl"
    assert other.progress()["imported"] == 5 and other.progress()["pairs"] == 0


def test_import_takes_string_prompts_and_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    good = {"prompt": "hi", "chosen": "hello", "rejected": "go away"}
    path.write_text(json.dumps(good) + "\n\n")
    assert read_preferences(path) == [
        {"prompt": [{"role": "user", "content": "hi"}], "chosen": "hello", "rejected": "go away"}
    ]
    bad_lines = {
        "{not json": r"data.jsonl:2: not valid JSON",
        json.dumps({"prompt": "hi", "chosen": "x"}): r"data.jsonl:2: no 'rejected' field",
        json.dumps({"prompt": [{"role": "bot", "content": "x"}], "chosen": "a", "rejected": "b"}): (
            r"data.jsonl:2: prompt\[0\]: each message must be"
        ),
        json.dumps({"prompt": [{"role": "assistant", "content": "x"}], "chosen": "a", "rejected": "b"}): (
            r"data.jsonl:2: prompt: the last message must be the user's turn"
        ),
        json.dumps(
            {"prompt": "hi", "chosen": 3, "rejected": "b"}
        ): r"data.jsonl:2: 'chosen' must be a string",
        json.dumps({"prompt": "hi", "chosen": "same", "rejected": "same"}): r"data.jsonl:2: .* the same text",
        "[1, 2]": r"data.jsonl:2: each line must be a JSON object",
    }
    store = PreferenceStore(tmp_path / "prefs.db")
    for line, message in bad_lines.items():
        path.write_text(json.dumps(good) + "\n" + line + "\n")
        with pytest.raises(DataError, match=message):
            store.import_jsonl(path)
    assert store.judgements() == []  # all or nothing
    with pytest.raises(DataError, match="missing.jsonl: file not found"):
        store.import_jsonl(tmp_path / "missing.jsonl")


def test_prompts_files_drop_the_reference_answer(tmp_path: Path) -> None:
    path = tmp_path / "prompts.jsonl"
    conversation = {"messages": [*WRITE, {"role": "assistant", "content": GOOD_CODE}]}
    path.write_text(json.dumps(conversation) + "\n" + json.dumps({"prompt": "What is 2 + 2?"}) + "\n")
    assert read_prompts(path) == [WRITE, [{"role": "user", "content": "What is 2 + 2?"}]]
    path.write_text(json.dumps({"text": "no prompt here"}) + "\n")
    with pytest.raises(DataError, match="prompts.jsonl:1: no 'messages' or 'prompt' field"):
        read_prompts(path)


# ---- the rule -----------------------------------------------------------------------------------------


def test_the_rule_reads_the_synth_sft_phrasings() -> None:
    assert task_of(WRITE) == ("write", "add")
    assert task_of("Define the method `get(key, default=None)` of class `Cache`, which returns x") == (
        "write",
        "get",
    )
    assert task_of("Implement the method `Formatter.formatTime(record, datefmt=None)`: Return") == (
        "write",
        "formatTime",
    )
    assert task_of("Describe the function `posixpath.join`.") == ("explain", "posixpath.join")
    assert task_of("Tell me a joke") == ("other", None)


def test_rule_verdicts_on_hand_written_answers() -> None:
    good = judge(WRITE, GOOD_CODE)
    assert good.passes and good.score == 1 and good.reasons == () and good.kind == "write"
    assert judge(WRITE, "```python\n" + GOOD_CODE + "\n```").passes  # a fenced answer is fine

    broken = judge(WRITE, "def add(a, b:\n    return a + b")
    assert not broken.passes and broken.reasons[0].startswith("not valid Python: ")
    assert broken.failed == ("parses",)
    assert broken.score == 0.8  # 4 of its 5 checks hold: it does define add (found by text)

    truncated = judge(WRITE, 'def add(a, b):\n    """Return the sum of', finished=False)
    assert truncated.reasons[0] == "unfinished: stopped at the token limit"
    assert truncated.failed == ("finished", "parses")

    looping = judge(WRITE, "def add(a, b):\n" + "    total = total + a + b\n" * 8 + "    return total")
    assert looping.reasons == ("repeats itself: the line 'total = total + a + b' appears 8 times",)
    babbling = judge(EXPLAIN, "`join` joins paths " + "and the the the path " * 30)
    assert len(babbling.reasons) == 1 and babbling.reasons[0].endswith("of its 6-grams are repeats")

    wrong_name = judge(WRITE, "def plus(a, b):\n    return a + b")
    assert wrong_name.reasons == ("defines no function named 'add'",) and wrong_name.failed == (
        "defines_name",
    )
    assert judge(WRITE, "").reasons == ("empty", "defines no function named 'add'")

    explained = judge(EXPLAIN, "`posixpath.join(a, *p)` joins two or more pathname components.")
    assert explained.passes and explained.kind == "explain"
    assert judge(EXPLAIN, "It joins paths.").reasons == ("does not mention 'join'",)  # the name, as a word
    assert judge("Tell me a joke", "Why did the chicken cross the road?").passes


def test_prefer_takes_the_passing_answer_or_the_higher_score() -> None:
    assert prefer(WRITE, GOOD_CODE, "def add(a, b:") == "a"
    assert prefer(WRITE, "def plus(a, b):\n    return 1", GOOD_CODE) == "b"
    assert prefer(WRITE, GOOD_CODE, GOOD_CODE + "\n") is None  # both pass: the rule cannot tell
    unfinished = judge(WRITE, GOOD_CODE, finished=False)  # one failed check
    unparsable = judge(WRITE, "def add(a, b:", finished=False)  # two
    assert compare(unfinished, unparsable) == "a" and compare(unparsable, unfinished) == "b"
    assert compare(unparsable, unparsable) is None
    assert prefer(WRITE, GOOD_CODE, GOOD_CODE, finished_a=False) == "b"
