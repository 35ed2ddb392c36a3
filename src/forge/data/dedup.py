"""Exact deduplication: the first document with a given normalised text is kept, later copies removed.

Documents are compared by the BLAKE2b-128 digest of their normalised UTF-8 text (16 bytes a document in
memory, collisions negligible), so two files that differ only in line endings, trailing spaces or
Unicode composition count as one. The first one in input order wins, which makes the result
deterministic for a given input order.
"""

import hashlib


class ExactDedup:
    """Remembers the digest of every kept text and which document it came from."""

    def __init__(self) -> None:
        self._first: dict[bytes, str] = {}

    def duplicate_of(self, text: str, doc_id: str) -> str | None:
        """The id of an earlier document with the same text, or None (and `doc_id` is remembered)."""
        digest = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if digest in self._first:
            return self._first[digest]
        self._first[digest] = doc_id
        return None

    def __len__(self) -> int:
        return len(self._first)
