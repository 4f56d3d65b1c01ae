"""One person found in other people's words, and written over with `[erased]`.

An erasure removes a person's own rows whole; what other people wrote about them (a colleague's message
naming their address, a cc in its metadata, an AI reasoning that quotes it, a ledger or audit text) is
redacted in place by a `Redactor`. What it looks for:

- every identity as written: email addresses (any case, and `%40`-escaped as form bodies hold them),
  Telegram ids and handles (`@name`), external ids; a needle made only of digits counts only as a whole number;
- every phone number in any common format: the digit groups of `+46 70-123 45 67`, `0046 70 123 45 67`,
  `070-123 45 67`, `(070) 1234567` or `+46 (0)70 123 45 67`, separated by spaces, dots, dashes, slashes or
  brackets, whole groups only (a longer number that contains the digits is someone else's);
- their name: its words in order with any white space between, not inside a longer word. A name of one
  word is not searched: another Erik is not this one.

Needles shorter than MIN_NEEDLE characters are not searched (a Telegram id of four digits would match
every order number), nor more than MAX_NEEDLES of at most MAX_NEEDLE characters each. Matching is linear
in the text: one compiled alternation of escaped literals (its only quantifier, the white space between a
name's words, is followed by a literal word, so nothing backtracks further than one run of spaces), and one
pass over the text's digit groups for the phones, made only when the text's digits hold the national number.
`likes` and `digits` give the SQL side a cheap filter for the rows the redactor could change (and some it
then leaves alone).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import phonenumbers

REDACTED = "[erased]"
MIN_NEEDLE = 6
MAX_NEEDLE = 256
MAX_NEEDLES = 64
_DIGIT_GROUPS = re.compile(r"[0-9]+")
_NOT_DIGITS = re.compile(r"[^0-9]+")
_SEPARATORS = frozenset(" \t\u00a0.-/()")
MAX_GAP = 3  # characters between two digit groups of one number: "-", " ", ") ", " - "


@dataclass(frozen=True)
class Person:
    """What identifies one person: identities as stored (kind, value), display names, Telegram handles."""

    identities: tuple[tuple[str, str], ...]
    names: tuple[str, ...] = ()
    handles: tuple[str, ...] = ()


class Redactor:
    """Writes `[erased]` over a person in text, JSON values and raw bytes."""

    def __init__(self, person: Person) -> None:
        literals: set[str] = set()
        phones: set[str] = set()
        for kind, value in person.identities:
            if kind == "phone":
                phones.update(_phone_forms(value))
            else:
                literals.update((value, quote(value, safe="")))
        for handle in person.handles:
            literals.update((f"@{handle.lstrip('@')}", handle.lstrip("@")))
        literals = {v for v in literals if MIN_NEEDLE <= len(v) <= MAX_NEEDLE}
        names = {" ".join(n.split()) for n in person.names}
        names = {n for n in names if len(n.split()) >= 2 and MIN_NEEDLE <= len(n) <= MAX_NEEDLE}
        ordered = sorted(literals, key=lambda v: (-len(v), v))[:MAX_NEEDLES]
        words = [n.split() for n in sorted(names)[:MAX_NEEDLES]]
        self._pattern = _compile(ordered, words, r"\s+")
        # Raw bytes, read as Latin-1: a UTF-8 needle is its bytes, and a form body writes a space as + or %20.
        self._raw = _compile([_as_bytes(v) for v in ordered], [[_as_bytes(w) for w in n] for n in words],
                             r"(?:\s|\+|%20)+")
        self._phones = sorted(phones, key=len, reverse=True)[:MAX_NEEDLES]
        # Every written form of a phone holds its national number: a text whose digits do not is skipped.
        self._cores = {_national(v) or v.lstrip("+") for k, v in person.identities if k == "phone"}
        # The SQL filter: lower-case LIKE patterns, and the national digits every written form contains.
        self.likes = tuple(sorted({_like(v.lower()) for v in ordered}
                                  | {"%" + "%".join(_like(w.lower())[1:-1] for w in n) + "%" for n in words}))
        self.digits = tuple(sorted({_like(d) for d in (_national(v) for k, v in person.identities if k == "phone")
                                    if d and len(d) >= MIN_NEEDLE}))

    @property
    def empty(self) -> bool:
        return self._pattern is None and not self._phones

    def text(self, value: str) -> str:
        """`value` with every mention of the person written over."""
        if self._pattern is not None:
            value = self._pattern.sub(REDACTED, value)
        if self._phones:
            value = self._without_phones(value)
        return value

    def json(self, value: Any) -> Any:
        """A copy of a JSON value with every string (keys too), and every whole number, that names the person
        written over. A loop, not recursion: metadata may nest deeply."""
        root: list[Any] = [None]
        stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
        while stack:
            item, target, key = stack.pop()
            if isinstance(item, str):
                target[key] = self.text(item)
            elif isinstance(item, int) and not isinstance(item, bool) and abs(item) < 10**20:
                target[key] = REDACTED if self.text(str(item)) != str(item) else item
            elif isinstance(item, list):
                target[key] = copied = [None] * len(item)
                stack.extend((v, copied, i) for i, v in enumerate(item))
            elif isinstance(item, dict):
                renamed: dict[Any, Any] = {}
                target[key] = renamed
                for k, v in item.items():
                    name = self.text(k) if isinstance(k, str) else k
                    renamed[name] = None
                    stack.append((v, renamed, name))
            else:
                target[key] = item
        return root[0]

    def raw(self, value: bytes) -> bytes:
        """Raw bytes (a stored delivery) read byte for byte as Latin-1, so UTF-8 needles match their bytes too."""
        text = value.decode("latin-1")
        if self._raw is not None:
            text = self._raw.sub(REDACTED, text)
        if self._phones:
            text = self._without_phones(text)
        return text.encode("latin-1")

    def _without_phones(self, value: str) -> str:
        digits = _NOT_DIGITS.sub("", value)  # in C: most texts do not hold the number, and cost no more
        if not any(core in digits for core in self._cores):
            return value
        spans = sorted(_phone_spans(value, self._phones))
        if not spans:
            return value
        out, position = [], 0
        for start, end in spans:
            if start < position:
                continue
            while start > 0 and (value[start - 1] == "+" or (value[start - 1] == "(" and ")" in value[start:end])):
                start -= 1  # "+46 ..." and "(070) ..." go whole
            out += [value[position:start], REDACTED]
            position = end
        out.append(value[position:])
        return "".join(out)


def _compile(literals: list[str], names: list[list[str]], space: str) -> re.Pattern[str] | None:
    """One case-insensitive alternation: the literals (longest first, so the longer of two overlapping ones
    wins; digits only as a whole number), then the names' words with `space` between, not inside a word."""
    alternatives = [rf"(?<![0-9]){re.escape(v)}(?![0-9])" if v.isdigit() else re.escape(v) for v in literals]
    alternatives += [r"(?<!\w)" + space.join(re.escape(w) for w in n) + r"(?!\w)" for n in names]
    return re.compile("|".join(alternatives), re.IGNORECASE) if alternatives else None


def _as_bytes(value: str) -> str:
    return value.encode("utf-8").decode("latin-1")


def _like(value: str) -> str:
    """A LIKE pattern that finds `value` anywhere (backslash is LIKE's escape character)."""
    return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _national(e164: str) -> str | None:
    try:
        return phonenumbers.national_significant_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return None


def _phone_forms(e164: str) -> set[str]:
    """The digit strings a phone is written as: international (+, 00, 011), national with and without its
    trunk 0, and the '+46 (0)70' mix."""
    digits = e164.lstrip("+")
    national = _national(e164)
    forms = {digits, "00" + digits, "011" + digits}
    if national and digits.endswith(national):
        code = digits[: len(digits) - len(national)]
        forms |= {"0" + national, code + "0" + national}
        if len(national) >= 7:
            forms.add(national)
    return {f for f in forms if len(f) >= MIN_NEEDLE}


def _phone_spans(value: str, forms: Iterable[str]) -> list[tuple[int, int]]:
    """Spans of `value` where one of the digit strings `forms` is written as whole digit groups."""
    groups = [(m.start(), m.end()) for m in _DIGIT_GROUPS.finditer(value)]
    spans: list[tuple[int, int]] = []
    run: list[tuple[int, int]] = []
    for group in [*groups, None]:
        if group is not None and run and _joins(value, run[-1][1], group[0]):
            run.append(group)
            continue
        if run:
            spans += _spans_in_run(value, run, forms)
        run = [group] if group is not None else []
    return spans


def _joins(value: str, end: int, start: int) -> bool:
    return 0 < start - end <= MAX_GAP and all(c in _SEPARATORS for c in value[end:start])


def _spans_in_run(value: str, run: list[tuple[int, int]], forms: Iterable[str]) -> list[tuple[int, int]]:
    digits = "".join(value[s:e] for s, e in run)
    starts: dict[int, int] = {}  # offset in `digits` where a group starts -> its start in `value`
    ends: dict[int, int] = {}  # offset in `digits` just past a group -> its end in `value`
    offset = 0
    for s, e in run:
        starts[offset] = s
        offset += e - s
        ends[offset] = e
    found = []
    for form in forms:
        at = digits.find(form)
        while at >= 0:
            if at in starts and at + len(form) in ends:
                found.append((starts[at], ends[at + len(form)]))
            at = digits.find(form, at + 1)
    return found
