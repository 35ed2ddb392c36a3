"""The preference store: pairs of answers waiting for a judgement, and the judgements, in one SQLite file.

Two tables. `pairs` holds what people are shown: a prompt (chat messages), answers A and B, the sampling
settings and model that produced them, and a lease. `judgements` holds one row per vote, self-contained
(prompt, both answers, choice, an edited better answer if one was written, sampling settings, model id,
labeller, time), so exports need no join and imported datasets fit in the same table.

Design choices:
- several labellers, threads or processes at once: WAL mode (readers never block the writer), a busy
  timeout instead of errors when another writer holds the lock, and every change in one short
  `BEGIN IMMEDIATE` transaction; votes are committed with `synchronous=FULL`, so a vote that got its
  answer is on disk (claims, which cost nothing to lose, skip the fsync);
- a connection per thread (and per process: a forked child opens its own), kept open: sqlite3
  connections must not be shared between threads, and closing the last connection to a WAL database
  checkpoints it, an fsync that would otherwise be paid on every call;
- `next_pair` claims the pair it hands out for `lease_seconds`, so two people are not shown the same pair;
  a pair whose lease ran out (a closed tab) is offered again. A labeller asking again gets their own
  claimed pair back first (a reloaded page);
- a pair is offered until it has `votes_per_pair` judgements, never twice to the same labeller;
- `record` is idempotent per (pair, labeller): voting again replaces that labeller's earlier vote;
- export: A better → chosen A, rejected B (and B better the other way round); ties and "both bad" say
  nothing about A against B and are left out. An edited answer is a person's better answer: it is
  exported as chosen against each of A and B (that differs from it), whatever the choice;
- import reads preference JSONL, checks every line first (errors name file:line) and stores all or
  nothing; identical records are stored once, so importing a file twice adds nothing.
"""

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from forge.align.formats import Messages, compact_json, parse_prompt, prompt_key, read_preferences
from forge.errors import DataError
from forge.io import atomic_path

CHOICES = ("a", "b", "tie", "both_bad")
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    id INTEGER PRIMARY KEY,
    prompt_json TEXT NOT NULL,
    answer_a TEXT NOT NULL,
    answer_b TEXT NOT NULL,
    sampling_json TEXT NOT NULL,
    model_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    votes INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT,
    claimed_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS pairs_open ON pairs (votes, claimed_until);
CREATE TABLE IF NOT EXISTS judgements (
    id INTEGER PRIMARY KEY,
    pair_id INTEGER REFERENCES pairs (id),
    prompt_json TEXT NOT NULL,
    answer_a TEXT NOT NULL,
    answer_b TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')),
    edited TEXT,
    sampling_json TEXT NOT NULL,
    model_id TEXT NOT NULL,
    labeller TEXT NOT NULL,
    created_at TEXT NOT NULL,
    import_key TEXT UNIQUE,
    UNIQUE (pair_id, labeller)
);
CREATE TABLE IF NOT EXISTS skips (
    pair_id INTEGER NOT NULL REFERENCES pairs (id),
    labeller TEXT NOT NULL,
    PRIMARY KEY (pair_id, labeller)
);
"""


class UnknownPair(DataError, LookupError):
    """A pair id that is not in the store."""


@dataclass(frozen=True, kw_only=True)
class NewPair:
    """Two answers to one prompt, to be judged."""

    prompt: Messages
    """the conversation so far (system and user turns, ending with a user turn)"""
    answer_a: str
    """the first answer"""
    answer_b: str
    """the second answer"""
    sampling: dict[str, Any] = field(default_factory=dict)
    """how the answers were sampled (temperature, seeds, finish reasons ...)"""
    model_id: str = ""
    """the model that wrote them"""


@dataclass(frozen=True, kw_only=True)
class Pair(NewPair):
    """A stored pair."""

    id: int
    """its id in the store"""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _check_labeller(labeller: str) -> str:
    labeller = labeller.strip()
    if not labeller or len(labeller) > 100:
        raise DataError("the labeller's name must be 1 to 100 characters")
    return labeller


# ---- the store ----------------------------------------------------------------------------------------


class PreferenceStore:
    """Pairs to judge and judgements, in the SQLite file `path` (created if missing).

    Safe to use from several threads and processes at once (each thread and process gets its own
    connection); `close` closes the calling thread's.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        votes_per_pair: int = 1,
        lease_seconds: float = 300.0,
        busy_timeout_seconds: float = 30.0,
    ) -> None:
        if votes_per_pair < 1 or lease_seconds <= 0 or busy_timeout_seconds <= 0:
            raise ValueError("votes_per_pair, lease_seconds and busy_timeout_seconds must be positive")
        self.path = Path(path)
        self.votes_per_pair, self.lease_seconds = votes_per_pair, lease_seconds
        self.busy_timeout_seconds = busy_timeout_seconds
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = self._connection()
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                self.close()
                raise DataError(f"{self.path}: written by a newer forge (schema {version}); upgrade forge")
            db.execute("PRAGMA journal_mode = WAL")  # persistent: stored in the file
            db.executescript(SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
        except sqlite3.DatabaseError as e:
            self.close()
            raise DataError(f"{self.path}: not a preference database ({e}); give another --db path") from None

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.busy_timeout_seconds, isolation_level=None)
        db.execute("PRAGMA foreign_keys = ON")
        return db

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (a new one in a forked child)."""
        if getattr(self._local, "pid", None) != os.getpid():
            self._local.db, self._local.pid = self._connect(), os.getpid()
        db: sqlite3.Connection = self._local.db
        return db

    def close(self) -> None:
        """Close this thread's connection (the next call opens another)."""
        if getattr(self._local, "pid", None) == os.getpid():
            self._local.db.close()
        self._local.pid = None

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding the write lock from its start (no lock upgrade to fail).
        `durable`: on disk when it returns (else it survives a crash of the process, not of the machine)."""
        db = self._connection()
        db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent view of the tables."""
        db = self._connection()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    # ---- pairs ----

    def add_pairs(self, pairs: Iterable[NewPair]) -> list[int]:
        """Store pairs to be judged; returns their ids."""
        rows = [
            (
                prompt_key(parse_prompt(p.prompt, "pair prompt")),
                p.answer_a,
                p.answer_b,
                compact_json(p.sampling),
                p.model_id,
                _now(),
            )
            for p in pairs
        ]
        with self._transaction() as db:
            return [
                db.execute(
                    "INSERT INTO pairs (prompt_json, answer_a, answer_b, sampling_json, model_id, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                    row,
                ).fetchone()[0]
                for row in rows
            ]

    def prompts_with_pairs(self, model_id: str) -> set[str]:
        """The prompts (as compact JSON) that already have pairs from `model_id`."""
        with self._snapshot() as db:
            rows = db.execute("SELECT DISTINCT prompt_json FROM pairs WHERE model_id = ?", (model_id,))
            return {row[0] for row in rows}

    def next_pair(self, labeller: str) -> Pair | None:
        """A pair for `labeller` to judge, claimed for `lease_seconds`; None when none is left for them."""
        labeller = _check_labeller(labeller)
        now = time.time()
        with self._transaction(durable=False) as db:  # a lost claim costs nothing: no fsync
            row = db.execute(
                """
                SELECT id, prompt_json, answer_a, answer_b, sampling_json, model_id FROM pairs p
                WHERE votes < :votes AND (claimed_until < :now OR claimed_by = :who)
                  AND NOT EXISTS (SELECT 1 FROM judgements j WHERE j.pair_id = p.id AND j.labeller = :who)
                  AND NOT EXISTS (SELECT 1 FROM skips s WHERE s.pair_id = p.id AND s.labeller = :who)
                ORDER BY (claimed_by IS :who AND claimed_until >= :now) DESC, votes, id
                LIMIT 1
                """,
                {"votes": self.votes_per_pair, "now": now, "who": labeller},
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE pairs SET claimed_by = ?, claimed_until = ? WHERE id = ?",
                (labeller, now + self.lease_seconds, row[0]),
            )
        pair_id, prompt_json, answer_a, answer_b, sampling_json, model_id = row
        return Pair(
            id=pair_id,
            prompt=json.loads(prompt_json),
            answer_a=answer_a,
            answer_b=answer_b,
            sampling=json.loads(sampling_json),
            model_id=model_id,
        )

    def record(self, pair_id: int, labeller: str, choice: str, edited: str | None = None) -> int:
        """Store `labeller`'s judgement of a pair (replacing their earlier one); returns its row id.

        `choice`: "a" (A is better), "b", "tie" or "both_bad"; `edited`: a better answer the labeller
        wrote, if any.
        """
        labeller = _check_labeller(labeller)
        if choice not in CHOICES:
            raise DataError(f"choice {choice!r} is not one of {', '.join(CHOICES)}")
        edited = edited if edited is not None and edited.strip() else None
        with self._transaction() as db:
            pair = db.execute(
                "SELECT prompt_json, answer_a, answer_b, sampling_json, model_id FROM pairs WHERE id = ?",
                (pair_id,),
            ).fetchone()
            if pair is None:
                raise UnknownPair(f"no pair {pair_id} in {self.path}")
            (judgement_id,) = db.execute(
                """
                INSERT INTO judgements (pair_id, prompt_json, answer_a, answer_b, sampling_json, model_id,
                                        choice, edited, labeller, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT (pair_id, labeller) DO UPDATE
                SET choice = excluded.choice, edited = excluded.edited, created_at = excluded.created_at
                RETURNING id
                """,
                (pair_id, *pair, choice, edited, labeller, _now()),
            ).fetchone()
            db.execute(
                """
                UPDATE pairs SET votes = (SELECT COUNT(*) FROM judgements WHERE pair_id = :id),
                    claimed_by = CASE WHEN claimed_by = :who THEN NULL ELSE claimed_by END,
                    claimed_until = CASE WHEN claimed_by = :who THEN 0 ELSE claimed_until END
                WHERE id = :id
                """,
                {"id": pair_id, "who": labeller},
            )
        return int(judgement_id)

    def skip(self, pair_id: int, labeller: str) -> None:
        """`labeller` passes on a pair: it is released for others and not offered to them again."""
        labeller = _check_labeller(labeller)
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM pairs WHERE id = ?", (pair_id,)).fetchone() is None:
                raise UnknownPair(f"no pair {pair_id} in {self.path}")
            db.execute("INSERT OR IGNORE INTO skips (pair_id, labeller) VALUES (?, ?)", (pair_id, labeller))
            db.execute(
                "UPDATE pairs SET claimed_by = NULL, claimed_until = 0 WHERE id = ? AND claimed_by = ?",
                (pair_id, labeller),
            )

    def progress(self, labeller: str | None = None) -> dict[str, Any]:
        """Counts: pairs, pairs done (with `votes_per_pair` votes), judgements of pairs, imported ones,
        votes by choice and by labeller, and `labeller`'s own votes."""
        with self._snapshot() as db:
            pairs, done = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(votes >= ?), 0) FROM pairs", (self.votes_per_pair,)
            ).fetchone()
            imported = db.execute("SELECT COUNT(*) FROM judgements WHERE pair_id IS NULL").fetchone()[0]
            choices = dict.fromkeys(CHOICES, 0) | dict(
                db.execute(
                    "SELECT choice, COUNT(*) FROM judgements WHERE pair_id IS NOT NULL GROUP BY choice"
                )
            )
            labellers = dict(
                db.execute(
                    "SELECT labeller, COUNT(*) FROM judgements WHERE pair_id IS NOT NULL "
                    "GROUP BY labeller ORDER BY labeller"
                )
            )
        return {
            "pairs": pairs,
            "done": done,
            "votes_per_pair": self.votes_per_pair,
            "judgements": sum(choices.values()),
            "imported": imported,
            "choices": choices,
            "labellers": labellers,
            "mine": labellers.get(labeller.strip(), 0) if labeller else 0,
        }

    def judgements(self) -> list[dict[str, Any]]:
        """Every judgement, oldest first, with its prompt and sampling settings decoded."""
        with self._snapshot() as db:
            cursor = db.execute("SELECT * FROM judgements ORDER BY id")
            names = [column[0] for column in cursor.description]
            rows = cursor.fetchall()
        out = []
        for row in rows:
            record = dict(zip(names, row, strict=True))
            record["prompt"] = json.loads(record.pop("prompt_json"))
            record["sampling"] = json.loads(record.pop("sampling_json"))
            out.append(record)
        return out

    # ---- preference JSONL ----

    def export_jsonl(self, path: str | Path) -> dict[str, int]:
        """Write the judgements as preference JSONL (see the module docstring for the mapping); returns
        counts of judgements read and of lines written, ties, both-bad votes and edits."""
        counts = {"judgements": 0, "written": 0, "ties": 0, "both_bad": 0, "edits": 0}
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
            for j in self.judgements():
                counts["judgements"] += 1
                a, b = j["answer_a"], j["answer_b"]
                lines = {"a": [(a, b)], "b": [(b, a)]}.get(j["choice"], [])
                if j["choice"] in ("tie", "both_bad"):
                    counts["ties" if j["choice"] == "tie" else "both_bad"] += 1
                if j["edited"] is not None:
                    counts["edits"] += 1
                    lines += [(j["edited"], other) for other in (a, b) if other != j["edited"]]
                for chosen, rejected in lines:
                    record = {"prompt": j["prompt"], "chosen": chosen, "rejected": rejected}
                    out.write(compact_json(record) + "\n")
                    counts["written"] += 1
        return counts

    def import_jsonl(self, path: str | Path, *, labeller: str | None = None) -> dict[str, int]:
        """Store the preference JSONL `path` as judgements (A = chosen, B = rejected, choice "a"), all or
        nothing; `labeller` defaults to "import:FILENAME". Returns counts of records, added, already
        present."""
        records = read_preferences(path)
        labeller = _check_labeller(labeller or f"import:{Path(path).name}")
        added, now = 0, _now()
        with self._transaction() as db:
            for r in records:
                prompt_json = prompt_key(r["prompt"])
                content = compact_json([r["prompt"], r["chosen"], r["rejected"]])
                key = hashlib.sha256(content.encode()).hexdigest()
                cursor = db.execute(
                    """
                    INSERT OR IGNORE INTO judgements (pair_id, prompt_json, answer_a, answer_b, choice,
                        sampling_json, model_id, labeller, created_at, import_key)
                    VALUES (NULL, ?, ?, ?, 'a', '{}', '', ?, ?, ?)
                    """,
                    (prompt_json, r["chosen"], r["rejected"], labeller, now, key),
                )
                added += cursor.rowcount
        return {"records": len(records), "added": added, "already_present": len(records) - added}
