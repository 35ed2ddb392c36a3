"""Blocklist thresholds and PII scrubbing, against hand-made documents and the tricky cases of code."""

from collections import Counter
from pathlib import Path

import pytest

from forge.data.safety import PLACEHOLDERS, REASONS, Blocklist, SafetyConfig, luhn_valid, scrub_pii
from forge.errors import ConfigError

CONFIG = SafetyConfig()
PROSE = "The council met on Tuesday to discuss the new library, the bus timetable and the budget. " * 5


@pytest.fixture(scope="module")
def default() -> Blocklist:
    return Blocklist.load()


# ---- config -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "flag"),
    [
        ({"min_blocked_terms": 0}, "--safety.min-blocked-terms"),
        ({"max_blocked_fraction": 0.0}, "--safety.max-blocked-fraction"),
        ({"max_blocked_fraction": 1.5}, "--safety.max-blocked-fraction"),
    ],
)
def test_invalid_config_names_the_flag(kwargs: dict[str, float], flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        SafetyConfig(**kwargs)  # type: ignore[arg-type]


# ---- blocklist ----------------------------------------------------------------------------------------


def test_default_list_is_packaged_and_modest(default: Blocklist) -> None:
    assert 100 <= len(default) <= 250
    assert "unsafe_content" in REASONS


def test_one_blocked_term_keeps_the_document(default: Blocklist) -> None:
    text = PROSE + "A councillor warned residents about payday loans."
    assert default.matches(text)[0] == Counter({"payday loans": 1})
    assert default.problem(text, CONFIG) is None


def test_two_distinct_terms_drop_the_document(default: Blocklist) -> None:
    text = PROSE + "Play at our Online Casino today and get free-spins!"
    assert default.problem(text, CONFIG) == ("unsafe_content", "2 blocked terms: free spins, online casino")
    assert default.problem(text, SafetyConfig(min_blocked_terms=3)) is None


def test_a_densely_repeated_term_drops_the_document(default: Blocklist) -> None:
    spam = "Best payday loans here. Fast payday loans now. Cheap payday loans for you."  # 3 in 13 words
    assert default.problem(spam, CONFIG) == (
        "unsafe_content",
        "3 blocked-term occurrences in 13 words (23.1%): payday loans",
    )
    assert default.problem(PROSE * 10 + spam, CONFIG) is None  # 3 in 763 words: 0.4%


def test_min_blocked_terms_one_drops_on_any_term_like_c4(default: Blocklist) -> None:
    text = PROSE + "payday loans"
    assert default.problem(text, SafetyConfig(min_blocked_terms=1)) == (
        "unsafe_content",
        "1 blocked term: payday loans",
    )


def test_default_list_spares_technical_words(default: Blocklist) -> None:
    text = (
        "Kill the child process, execute the job, abort on error, then dump the master and slave "
        "registers. Strip whitespace, shoot a bang, hack and crack the virgin sex chromosomes: XXX."
    )
    assert default.matches(text)[0] == Counter()


def test_user_blocklist_replaces_the_default(tmp_path: Path) -> None:
    path = tmp_path / "words.txt"
    path.write_text("# my list\nwidget\nblue moon  # a phrase\n\n", encoding="utf-8")
    mine = Blocklist.load(str(path))
    assert len(mine) == 2
    assert mine.matches("Widgets and widget_factory, once in a Blue-Moon, a WIDGET.")[0] == Counter(
        {"widget": 1, "blue moon": 1}
    )  # whole words only, case-insensitive, phrases across hyphens
    assert mine.problem("online casino, free spins, payday loans", CONFIG) is None


def test_missing_blocklist_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(ConfigError, match=f"--safety.blocklist {missing}.*leave it empty"):
        Blocklist.load(str(missing))


# ---- PII ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ('ADMIN = "admin@example.com"', 'ADMIN = "<email>"', "email"),
        ("# mail bob.smith@corp.co.uk for access", "# mail <email> for access", "email"),
        ("Contact: <jane_doe+news@mail.example.org>.", "Contact: <<email>>.", "email"),
        ("connect to 192.168.10.25 port 22", "connect to <ip> port 22", "ip"),
        ("resolver 8.8.8.8.", "resolver <ip>.", "ip"),
        ("http://[2001:db8::1]:8080/", "http://[<ip>]:8080/", "ip"),
        ("link-local fe80::1 on eth0", "link-local <ip> on eth0", "ip"),
        ("card 4111 1111 1111 1111 exp 12/29", "card <card> exp 12/29", "card"),
        ("amex 378282246310005", "amex <card>", "card"),
        ("call +1 (555) 123-4567 today", "call <phone> today", "phone"),
        ("+44 20 7946 0958", "<phone>", "phone"),
        ("Tel. +33 1 23 45 67 89", "Tel. <phone>", "phone"),
        ("tel:+31641044153", "tel:<phone>", "phone"),
        ("office 555-123-4567 or (555) 987 6543", "office <phone> or <phone>", "phone"),
        ("free 1-800-555-0199", "free <phone>", "phone"),
        ("London 020 7946 0958", "London <phone>", "phone"),
        ("Paris 01 23 45 67 89", "Paris <phone>", "phone"),
        ("München 089/1234567", "München <phone>", "phone"),
    ],
)
def test_scrub_pii_replaces(text: str, expected: str, kind: str) -> None:
    scrubbed, counts = scrub_pii(text)
    assert scrubbed == expected
    assert sum(counts.values()) == counts[kind] >= 1
    assert scrub_pii(scrubbed) == (scrubbed, Counter())  # placeholders match nothing


@pytest.mark.parametrize(
    "text",
    [
        # decorators, matrix products, hosts without a dotted domain
        "@property\ndef name(self): ...",
        "@functools.cache\ndef f(): ...",
        "c = a@b",
        "y = x @ w",
        "y = A@B.T",
        "y = x@self.weight",
        "y = x@np.linalg.inv(a)",
        "ssh user@host",
        # version, section and OID numbers shaped like IPv4
        "version 1.2.3.4",
        "v2.0.0.1",
        "Python 3.11.7.1",
        '__version__ = "4.0.0.0"',
        "VERSION\n    1.2.3.4",
        "IronPython 2.0 (2.0.0.0) on .NET",
        "rfc7231#section-7.1.1.1",
        "see section 6.2.1.3 of the RFC",
        "6.2.1.3 Error handling",
        "oid 1.3.6.1.4.1",
        "NAMESPACE_OID, '1.3.6.1'",
        # addresses that identify no one
        'host = "127.0.0.1"',
        'bind("0.0.0.0", 80)',
        "netmask 255.255.255.0",
        "::1",
        # slices, times, MAC addresses
        "x[1::2], y[10::20], del a[::1000]",
        "split('a:b::c')",
        "at 12:30:45",
        "mac 00:1a:2b:3c:4d:5e",
        # numbers that are not cards or phones
        "4111 1111 1111 1112",
        "seed 1234567890123456",
        "2**52 == 4503599627370496",
        "pi = 3.14159265358979",
        "x = 0.123456789",
        "b = +4294967296",
        "on 01.02.2023 and 01-01-1980 00:00:00",
        "'2020-01-01T03:05:07.123457-05:00'",
        "hexdump 01 02 03 04 05 06 07 08",
        "strftime -> 01 02 03 000004",
    ],
)
def test_scrub_pii_keeps(text: str) -> None:
    assert scrub_pii(text) == (text, Counter())


def test_scrub_pii_counts_every_kind_and_is_idempotent() -> None:
    text = (
        "Mail ann@example.com or bob@example.org, call +49 30 1234567,\n"
        "servers 10.0.0.7 and 2001:db8::42, card 5555 5555 5555 4444.\n"
    )
    scrubbed, counts = scrub_pii(text)
    assert counts == Counter({"email": 2, "ip": 2, "phone": 1, "card": 1})
    assert scrubbed == ("Mail <email> or <email>, call <phone>,\nservers <ip> and <ip>, card <card>.\n")
    assert scrub_pii(scrubbed) == (scrubbed, Counter())
    assert set(PLACEHOLDERS) == {"email", "phone", "ip", "card"}


def test_luhn() -> None:
    assert luhn_valid("79927398713")
    assert luhn_valid("4111111111111111")
    assert not luhn_valid("4111111111111112")
