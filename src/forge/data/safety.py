"""Safety: drop documents full of blocked terms, scrub personal data from the rest.

Two independent steps, each cheap enough for every document:

**Blocklist** (`Blocklist.problem`). A plain UTF-8 word list, one word or phrase per line, `#` comments
(forge ships `blocklist.txt`; `--safety.blocklist FILE` replaces it). Matching is case-insensitive and on
whole words (`\\w+` tokens, so `porn` does not match `pornography` or `porn_filter`); a phrase matches its
words separated by spaces or hyphens. A document is removed as `unsafe_content` when it holds

- at least `min_blocked_terms` (2) distinct blocked terms, or
- at least `min_blocked_terms` occurrences that are also more than `max_blocked_fraction` (1%) of its words.

C4 (Raffel et al. 2020) drops a page on a single word from its "bad words" list. Dodge et al. 2021
("Documenting Large Webtext Corpora") found that rule removes disproportionately much text by and about
minority groups, and medical and legal text, while most pages it drops are not harmful. Forge therefore
never drops on one mention: it wants either several different terms (how explicit or spam pages read) or
one term repeated densely (keyword spam). The default list also leaves out words with innocent meanings
in code and technical prose (kill, execute, abort, master, dump, hack, sex …): see its header.

**PII scrubbing** (`scrub_pii`). Personal data is replaced, never dropped, by a placeholder that no rule
matches, so scrubbing twice changes nothing. Rules apply in this order:

| kind    | placeholder | matches                                                                         |
|---------|-------------|---------------------------------------------------------------------------------|
| `email` | `<email>`   | `local@domain.tld`: a local part, a dotted domain, a letters-only TLD of 2+     |
| `card`  | `<card>`    | 13-19 digits, bare or in groups of 3-6 split by one kind of separator (space,   |
|         |             | dash), with a card network's prefix and length and a valid Luhn checksum        |
| `ip`    | `<ip>`      | IPv6 that `ipaddress` accepts; IPv4 with octets 0-255 (no leading zeros)        |
| `phone` | `<phone>`   | `+CC` numbers with separators (8-15 digits) or in a `tel:` URI; North American  |
|         |             | `(555) 123-4567`, `555-123-4567`, `1-800-555-0199`; European national numbers   |
|         |             | with trunk prefix 0: `01 23 45 67 89`, `020 7946 0958`, `089/1234567` (9-12)    |

Practice for the same job: datatrove's `PIIFormatter` (FineWeb: e-mails and IPs) and BigCode's StarPII
pipeline (regexes for e-mails and IPs, with version strings filtered out). The regexes here are our own;
the rules that keep code and prose intact:

- e-mail: a local part is required, so decorators (`@property`, `@functools.cache`) are not hit; the domain
  needs a dot and a letters-only TLD, so matrix products (`a@b`, `x @ y`, `A@B.T`, `x@np.linalg.inv(a)`,
  `x@self.weight`) and `user@host` are not.
- IPv4 is a version or section number, and kept, when it is part of a longer dotted number (OIDs
  `1.3.6.1.4.1`), glued to a word (`v2.0.0.1`), shortly after a version, release, build, section or OID
  word with no other word between (`version 1.2.3.4`, `Python 3.11.7.1`, `__version__ = "4.0.0.0"`,
  `section 6.2.1.3`), or opens a line followed by a capitalised word (a heading: `6.2.1.3 Errors`).
- loopback, unspecified and netmask addresses (`127.0.0.1`, `0.0.0.0`, `::1`, `255.255.255.0`) identify no
  one and are kept: code needs them. Private addresses (`192.168.10.25`) are scrubbed.
- IPv6 needs a digit and two groups, one of them of four hex digits, or three groups, so slices
  (`x[1::2]`, `a[::1000]`) and words (`a:b::c`) are not hit.
- phone and card numbers may not be glued to more digits or words, and each number format is strict
  about its separators, so dates (`01.02.2023`), times, decimals, timestamps and hex dumps are not hit.
- cards need the Luhn checksum, which a random 16-digit number passes one time in ten, and an issuer prefix.
"""

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from forge.errors import ConfigError

REASONS = {
    "unsafe_content": "holds several distinct blocked terms, or a blocked term densely repeated (--safety.*)",
}
PLACEHOLDERS = {"email": "<email>", "phone": "<phone>", "ip": "<ip>", "card": "<card>"}


@dataclass(frozen=True, kw_only=True)
class SafetyConfig:
    """Options of the safety filter."""

    blocklist: str = ""
    """file of blocked words/phrases, one per line, '#' comments (empty: forge's default list)"""
    min_blocked_terms: int = 2
    """drop a document holding this many distinct blocked terms (1 = any term, as C4 does)"""
    max_blocked_fraction: float = 0.01
    """also drop a document whose blocked-term occurrences (at least --safety.min-blocked-terms of them)
    are more than this fraction of its words"""
    scrub_pii: bool = True
    """replace e-mail addresses, phone numbers, IP addresses and card numbers with placeholders"""

    def __post_init__(self) -> None:
        if self.min_blocked_terms < 1:
            raise ConfigError(f"--safety.min-blocked-terms must be at least 1, got {self.min_blocked_terms}")
        if not 0 < self.max_blocked_fraction <= 1:
            raise ConfigError(
                f"--safety.max-blocked-fraction must be in (0, 1], got {self.max_blocked_fraction}"
            )


# ---- blocklist ---------------------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


class Blocklist:
    """Blocked single words (a set, looked up per token) and phrases (a regex each, tried only when all
    their words occur in the document)."""

    def __init__(self, terms: list[str]) -> None:
        self.words: set[str] = set()
        self.phrases: list[tuple[str, frozenset[str], re.Pattern[str]]] = []
        for term in terms:
            parts = _WORD.findall(term.lower())
            if len(parts) == 1:
                self.words.add(parts[0])
            elif parts:
                joined = r"[\s\-]+".join(map(re.escape, parts))
                pattern = re.compile(rf"(?<!\w){joined}(?!\w)", re.IGNORECASE)
                self.phrases.append((" ".join(parts), frozenset(parts), pattern))

    @classmethod
    def load(cls, path: str = "") -> "Blocklist":
        """Read a word list (one term per line, '#' comments); "" reads forge's packaged default."""
        try:
            if path:
                text = Path(path).read_text(encoding="utf-8")
            else:
                text = resources.files("forge.data").joinpath("blocklist.txt").read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(
                f"--safety.blocklist {path}: cannot read the word list ({e.__class__.__name__}: {e}); "
                "pass a UTF-8 file with one word or phrase per line, or leave it empty for forge's default"
            ) from None
        terms = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        return cls([t for t in terms if t])

    def __len__(self) -> int:
        return len(self.words) + len(self.phrases)

    def matches(self, text: str) -> tuple[Counter[str], int]:
        """(occurrences of each blocked term found, number of words in `text`)."""
        tokens = _WORD.findall(text.lower())
        present = set(tokens)
        found: Counter[str] = Counter()
        hit_words = present & self.words
        if hit_words:
            found.update(t for t in tokens if t in hit_words)
        for phrase, parts, pattern in self.phrases:
            if parts <= present:
                count = len(pattern.findall(text))
                if count:
                    found[phrase] = count
        return found, len(tokens)

    def problem(self, text: str, config: SafetyConfig) -> tuple[str, str] | None:
        """("unsafe_content", detail) when `text` crosses the thresholds of `config`, else None."""
        found, words = self.matches(text)
        occurrences = sum(found.values())
        shown = ", ".join(sorted(found)[:8]) + (", …" if len(found) > 8 else "")
        if len(found) >= config.min_blocked_terms:
            return "unsafe_content", f"{len(found)} blocked term{'s' * (len(found) > 1)}: {shown}"
        if occurrences >= config.min_blocked_terms and occurrences > config.max_blocked_fraction * words:
            share = occurrences / max(words, 1)
            return (
                "unsafe_content",
                f"{occurrences} blocked-term occurrences in {words} words ({share:.1%}): {shown}",
            )
        return None


# ---- PII -----------------------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+\-])[A-Za-z0-9][\w.%+\-]{0,63}"  # local part, starting at a word start
    r"@(?!self\.|cls\.)"  # x@self.weight is matrix multiplication
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"  # dotted domain, letters TLD
    r"(?![\w(\-]|\.\w)"  # not a longer name or a method call (x@np.linalg.inv(a))
)
_CARD = re.compile(r"(?=[2-6])(?<![\w.+\-])[2-6]\d(?:[ \-]?\d){11,17}(?!\w|[.,]\d)")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?:{_OCTET}\.){{3}}{_OCTET}(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4})?(?::[0-9A-Fa-f]{0,4}){2,7}"
    r"(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?(?![\w:]|\.\w)"
)
_PHONE = re.compile(
    r"(?<![\w+.\-/])(?<!\d[ .\-/])"  # not glued to a word or to a longer run of numbers
    r"(?:(?P<intl>\+[1-9]\d{0,2}(?:[ \-]?\(\d{1,4}\))?(?:[ \-]\d{1,8}){1,5}|(?<=tel:)\+[1-9]\d{7,14})"
    r"|(?P<nanp>(?:1[ .\-])?(?:\([2-9]\d\d\) ?|[2-9]\d\d(?P<sep>[.\-]))\d{3}(?(sep)(?P=sep)|[ .\-])\d{4})"
    r"|(?P<euro>0[1-9](?P<pair>[ .\-])\d\d(?:(?P=pair)\d\d){3}"  # 01 23 45 67 89
    r"|0[1-9]\d{0,3}(?P<group>[ /\-])\d{3,8}(?:(?P=group)\d{3,8}){0,2}))"  # 020 7946 0958, 089/1234567
    r"(?![\w:]|[ .\-/]\d)"
)
# a version, section or OID word shortly before a dotted quad, with no other word between:
# "version 1.2.3.4", "__version__ = '4.0.0.0'", "IronPython 2.0 (2.0.0.0)", "VERSION\n    1.2.3.4"
_VERSION_BEFORE = re.compile(
    r"(?:\w*(?:version|python)\w*|\bv|\bver|\brelease[sd]?|\brev|\brevision|\bbuild"
    r"|\bsections?|\bsect|\bchapter|\bclause|§|(?:\b|_)oids?)[^A-Za-z]{0,12}$",
    re.IGNORECASE,
)
_LINE_START = re.compile(r"[ \t#*>\-]*")
_HEADING_AFTER = re.compile(r"\.?[ \t]+[A-Z]")


def _keep_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if address.is_loopback or address.is_unspecified:
        return True
    bits = int(address)
    width = address.max_prefixlen
    inverted = ~bits & ((1 << width) - 1)
    return isinstance(address, ipaddress.IPv4Address) and bits >> 24 == 255 and inverted & (inverted + 1) == 0


def _is_version(text: str, start: int, end: int) -> bool:
    """Whether the dotted quad text[start:end] reads as a version or section number."""
    if _VERSION_BEFORE.search(text, max(0, start - 40), start):
        return True
    line_start = text.rfind("\n", 0, start) + 1
    heading = _LINE_START.fullmatch(text, line_start, start) is not None
    return heading and _HEADING_AFTER.match(text, end) is not None


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a string of digits (payment card numbers end in their check digit)."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _issuer_length_ok(digits: str) -> bool:
    """Whether a card network issues numbers with this prefix and length (IIN ranges)."""
    length, two = len(digits), digits[:2]
    if digits[0] == "4":  # Visa
        return length in (13, 16, 19)
    if "51" <= two <= "55" or "2221" <= digits[:4] <= "2720":  # Mastercard
        return length == 16
    if two in ("34", "37"):  # American Express
        return length == 15
    if two in ("30", "36", "38", "39"):  # Diners Club
        return 14 <= length <= 19
    if (
        two in ("35", "62", "65") or digits[:4] == "6011" or "644" <= digits[:3] <= "649"
    ):  # JCB, UnionPay, Discover
        return 16 <= length <= 19
    return False


def _is_card(candidate: str) -> bool:
    groups = re.split(r"[ \-]", candidate)
    digits = "".join(groups)
    if len(set(re.findall(r"[ \-]", candidate))) > 1:
        return False
    if len(groups) > 1 and (len(groups[0]) != 4 or not all(3 <= len(g) <= 6 for g in groups)):
        return False
    return _issuer_length_ok(digits) and luhn_valid(digits)


def _is_ipv6(candidate: str) -> bool:
    try:
        address = ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    groups = [g for g in re.split(r"[:.]", candidate) if g]
    if len(groups) < 2 or (len(groups) < 3 and all(len(g) < 4 for g in groups)):
        return False  # slices: x[1::2], a[::1000]
    if not any(c.isdigit() for c in candidate):
        return False  # words: a:b::c
    return not _keep_address(address)


def _is_phone(match: re.Match[str]) -> bool:
    digits = sum(c.isdigit() for c in match.group())
    if match.group("intl"):
        return 8 <= digits <= 15
    if match.group("euro"):
        return 9 <= digits <= 12
    return True


def _is_ipv4(match: re.Match[str]) -> bool:
    if _keep_address(ipaddress.IPv4Address(match.group())):
        return False
    return not _is_version(match.string, match.start(), match.end())


# (kind, hint, pattern, accept), in the order they are applied. The hint is a cheap regex that starts
# with a literal, found in every line a match can lie on; the full pattern runs only on those lines.
_RULES: list[tuple[str, re.Pattern[str] | None, re.Pattern[str], Callable[[re.Match[str]], bool]]] = [
    ("email", re.compile("@"), _EMAIL, lambda m: True),
    ("card", None, _CARD, lambda m: _is_card(m.group())),
    ("ip", re.compile(r":[0-9A-Fa-f]{0,4}:"), _IPV6, lambda m: _is_ipv6(m.group())),
    ("ip", re.compile(r"\.\d{1,3}\.\d{1,3}\.\d"), _IPV4, _is_ipv4),
    # every phone format has two neighbouring groups of 2+ digits, or is a tel: URI
    ("phone", re.compile(r"\d\d[ .\-/)]{1,2}\d\d|tel:"), _PHONE, _is_phone),
]


def _spans(text: str, hint: re.Pattern[str] | None) -> Iterator[tuple[int, int]]:
    """The (start, end) of each line of `text` holding a match of `hint` (the whole text without one)."""
    if hint is None:
        yield 0, len(text)
        return
    end = -1
    for found in hint.finditer(text):
        if found.start() <= end:
            continue  # on the line just scanned
        start = text.rfind("\n", 0, found.start()) + 1
        end = text.find("\n", found.end())
        end = len(text) if end < 0 else end
        yield start, end


def scrub_pii(text: str) -> tuple[str, Counter[str]]:
    """Replace e-mail addresses, card numbers, IP addresses and phone numbers by `PLACEHOLDERS`.

    Returns the scrubbed text and the number of replacements per kind. Documents are never dropped.
    """
    counts: Counter[str] = Counter()
    for kind, hint, pattern, accept in _RULES:
        pieces, done = [], 0
        for start, end in _spans(text, hint):
            for match in pattern.finditer(text, start, end):
                if accept(match):
                    pieces += [text[done : match.start()], PLACEHOLDERS[kind]]
                    done = match.end()
                    counts[kind] += 1
        if pieces:
            text = "".join([*pieces, text[done:]])
    return text, counts
