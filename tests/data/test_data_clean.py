"""Cleaning rules and exact deduplication, each against hand-made examples."""

from forge.data.clean import corruption, decode, length_problem, normalize
from forge.data.dedup import ExactDedup


def test_decode_accepts_utf8_and_drops_the_bom() -> None:
    assert decode("already text") == ("already text", None)
    assert decode("héllo 中文 🎉".encode()) == ("héllo 中文 🎉", None)
    assert decode(b"\xef\xbb\xbfwith bom") == ("with bom", None)


def test_decode_rejects_bytes_that_are_not_utf8() -> None:
    assert decode("caf\xe9".encode("latin-1")) == (None, "undecodable")
    assert decode(b"\xff\xfe\x00\x00") == (None, "undecodable")


def test_corruption_flags_nul_and_control_heavy_text() -> None:
    assert corruption("a\x00b", max_control_fraction=0.5) == "binary"
    assert corruption("tabs\tnewlines\n\r\x0c are text", max_control_fraction=0.0) is None
    noisy = "x" * 90 + "\x1b" * 10  # 10% escape characters
    assert corruption(noisy, max_control_fraction=0.05) == "binary"
    assert corruption(noisy, max_control_fraction=0.2) is None
    assert corruption("", max_control_fraction=0.0) is None


def test_normalize() -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert normalize(decomposed) == composed  # NFC
    assert normalize("a\r\nb\rc\n") == "a\nb\nc"
    assert normalize("\n\n  def f():   \n\treturn 1\t\n\n\n") == "  def f():\n\treturn 1"
    assert normalize("keep\n\n\ninner blank lines") == "keep\n\n\ninner blank lines"


def test_length_problem() -> None:
    assert length_problem("abc", min_chars=4, max_chars=10) == "too_short"
    assert length_problem("a" * 11, min_chars=4, max_chars=10) == "too_long"
    assert length_problem("a" * 10, min_chars=4, max_chars=10) is None
    assert length_problem("a" * 10**6, min_chars=0, max_chars=0) is None


def test_exact_dedup_keeps_the_first_and_names_it() -> None:
    dedup = ExactDedup()
    assert dedup.duplicate_of("same text", "a") is None
    assert dedup.duplicate_of("other text", "b") is None
    assert dedup.duplicate_of("same text", "c") == "a"
    assert dedup.duplicate_of("same text", "a") == "a"  # a repeated id is still a duplicate
    assert len(dedup) == 2
