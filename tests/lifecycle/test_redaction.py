"""The matcher an erasure runs over other people's words: what it writes over, what it leaves, and that its
time grows with the text, not faster, on the inputs built to slow it down."""

from __future__ import annotations

import pytest

from pipelines.lifecycle.redaction import MAX_NEEDLES, REDACTED, Person, Redactor
from tests.channels.test_email_decoding import growth

ERIK = Person(identities=(("email", "erik.svensson@example.se"), ("phone", "+46701234567"),
                          ("telegram", "123456789"), ("external", "crm-4471")),
              names=("Erik Svensson",), handles=("erik_sv",))
REDACT = Redactor(ERIK)


@pytest.mark.parametrize("written", [
    "erik.svensson@example.se", "ERIK.SVENSSON@EXAMPLE.SE", "+46701234567", "46701234567", "+46 70 123 45 67",
    "+46 70-123 45 67", "0046 70 123 45 67", "070-123 45 67", "070 123 4567", "070.123.45.67", "0701234567",
    "+46 (0)70 123 45 67", "(070) 1234567", "Erik Svensson", "erik   SVENSSON", "Erik\nSvensson", "crm-4471",
    "@erik_sv", "123456789",
])
def test_every_common_spelling_is_written_over(written: str) -> None:
    assert REDACT.text(f"ask {written}, please") == f"ask {REDACTED}, please"


@pytest.mark.parametrize("text", [
    "order 467012345678 shipped",  # a longer number that contains the phone's digits
    "ticket 1234567890 and 91234567",  # a longer number that contains the Telegram id
    "+46 70 123 45 68",  # someone else's phone
    "Erik wrote, and so did Svensson",  # the words apart: another Erik, another Svensson
    "ErikSvensson and Erik Svenssonsson",  # inside longer words
    "crm-447",
])
def test_what_is_not_the_person_is_left_alone(text: str) -> None:
    assert REDACT.text(text) == text


def test_a_one_word_name_and_short_ids_are_not_searched() -> None:
    """Another "Erik" is not this one, and a four-digit Telegram id would match every order number."""
    short = Redactor(Person(identities=(("telegram", "4242"), ("external", "x1")), names=("Erik",)))
    assert short.empty
    assert short.text("Erik paid order 4242 with x1") == "Erik paid order 4242 with x1"


def test_json_is_copied_with_strings_keys_and_whole_numbers_written_over() -> None:
    value = {"cc": "Erik Svensson <erik.svensson@example.se>", "erik.svensson@example.se": [46701234567, 7, True],
             "n": None, "f": 1.5}
    assert REDACT.json(value) == {"cc": "[erased] <[erased]>", "[erased]": ["[erased]", 7, True], "n": None, "f": 1.5}
    assert value["cc"] == "Erik Svensson <erik.svensson@example.se>"  # the original is not changed


def test_json_nested_deeper_than_the_stack_is_walked() -> None:
    deep: object = "erik.svensson@example.se"
    for _ in range(20_000):
        deep = {"a": [deep]}
    walked = REDACT.json(deep)
    for _ in range(20_000):
        assert isinstance(walked, dict)
        walked = walked["a"][0]
    assert walked == REDACTED


def test_raw_bodies_are_matched_as_forms_and_utf8_bytes_write_them() -> None:
    body = b"sender=erik.svensson%40example.se&from=Erik+Svensson&to=J%C3%BCrgen&phone=%2B46701234567"
    assert REDACT.raw(body) == b"sender=[erased]&from=[erased]&to=J%C3%BCrgen&phone=%2B[erased]"
    jurgen = Redactor(Person(identities=(), names=("Jürgen Müller",)))
    assert jurgen.raw('{"name": "Jürgen Müller"}'.encode()) == b'{"name": "[erased]"}'
    assert jurgen.raw("Jürgen Müller".encode("latin-1")) == "Jürgen Müller".encode("latin-1")  # not UTF-8: others'


@pytest.mark.parametrize("text", ["\x00erik.svensson@example.se\x00", "İİİ erik.svensson@example.se İİİ",
                                  "\u202eErik Svensson\u202c", "\ud800 070-123 45 67 \udfff"])
def test_nul_and_odd_unicode_neither_fail_nor_shift_what_is_written_over(text: str) -> None:
    redacted = REDACT.text(text)
    assert REDACTED in redacted and "erik" not in redacted.lower() and "123 45" not in redacted


def test_needles_are_capped() -> None:
    many = Redactor(Person(identities=tuple(("external", f"customer-{n:06d}") for n in range(1000))))
    assert len(many.likes) <= MAX_NEEDLES


@pytest.mark.timing
@pytest.mark.parametrize(("unit", "chars"), [
    ("erik.svensson@example.s", 200_000),  # a needle's prefix, again and again
    ("Erik Svensso ", 200_000), ("Erik " * 3, 200_000),
    ("1-2-3-", 200_000),  # digit groups that join into one long run, without the number
    ("070-123 45 67 ", 60_000),  # ... and with it, written over each time: every group walked
    ("0 070-123 45 6 ", 60_000),  # near misses, skipped by the digits check
])
def test_matching_is_linear_in_the_text(unit: str, chars: int) -> None:
    n = chars // len(unit)
    assert growth(REDACT.text, unit * n, unit * (4 * n), repeat=3) < 6
    assert growth(REDACT.raw, (unit * n).encode(), (unit * (4 * n)).encode(), repeat=3) < 6
