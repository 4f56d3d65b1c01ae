"""No single email pins a worker or the event loop: every path a stranger's input reaches runs in linear time.

Complexity is tested without timing one run: for each adversarial shape, the time for an input four times
as large stays under six times the time for the smaller one. A quadratic path would take sixteen times as
long. Time is the process's CPU time, which other processes on a shared machine do not inflate; the runs
alternate between the two sizes and each keeps its best of five; a comparison that fails is measured
again, twice at most (a quadratic path fails every time). Sizes are chosen so the smaller run takes
milliseconds, and a floor of one millisecond keeps timer noise from deciding a ratio of two tiny times. Each shape is one that was slow before: reply splitting rescanned the rest of the text for every
">" line, the standard library's HTMLParser rescans unfinished constructs, its address parser recurses,
the ledger's scrubber scanned to the end of the text from every "://", and Mailgun's verification parsed
the whole form before it checked the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar
from urllib.parse import urlencode

import pytest

from pipelines import normalize
from pipelines.ai.base import ClassifyRequest
from pipelines.ai.language import decide
from pipelines.ai.local import LocalProvider
from pipelines.ai.taxonomy import DEFAULT
from pipelines.channels import email, mailgun, sendgrid
from pipelines.channels.base import SignatureError, VerifyContext, WebhookRequest, form_fields
from pipelines.errors import scrub

T = TypeVar("T")
pytestmark = pytest.mark.timing  # timed alone, after the parallel part of `make test`

RUNS = 5
ATTEMPTS = 3
NOISE_FLOOR = 0.001  # seconds


def elapsed(function: Callable[[T], object], argument: T) -> float:
    start = time.process_time()
    function(argument)
    return time.process_time() - start


def assert_linear(function: Callable[[T], object], make: Callable[[int], T], n: int) -> None:
    small, large = make(n), make(4 * n)
    function(small)  # warm caches (compiled patterns, codec lookups) outside the measurement
    measured = []
    for _ in range(ATTEMPTS):
        t_small = t_large = float("inf")
        for _ in range(RUNS):
            t_small = min(t_small, elapsed(function, small))
            t_large = min(t_large, elapsed(function, large))
        if t_large < 6 * max(t_small, NOISE_FLOOR):
            return
        measured.append(f"{t_small:.4f}s -> {t_large:.4f}s")
    pytest.fail(f"time for 4n over 6x the time for n={n}: {', '.join(measured)}")


# -- quoted-reply splitting ------------------------------------------------------------------------------
REPLY_SHAPES: dict[str, Callable[[int], str]] = {
    # ">" lines followed by one that is not quoted: each ">" line used to rescan everything after it
    "quoted lines then a reply line": lambda kb: "Thanks!\n" + "> quoted text\n" * (kb * 1024 // 14) + "tail",
    "quoted and blank lines": lambda kb: "Thanks!\n" + "> a\n\n" * (kb * 1024 // 5),
    "indented quotes": lambda kb: "Thanks!\n" + "   > > nested\n" * (kb * 1024 // 14) + "x",
    # one line of kb kilobytes, no newline, against each marker alternative
    "dashes line": lambda kb: "-" * (kb * 1024),
    "underscores line": lambda kb: "_" * (kb * 1024) + "x",
    "On ... line": lambda kb: "On " + "x " * (kb * 512),
    "schrieb line": lambda kb: "Am " + " schrieb" * (kb * 128),
    "From: line": lambda kb: "From: " + "a" * (kb * 1024) + " ",
    # many short lines each close to a marker, so the marker patterns do their most work on every line
    "near-marker lines": lambda kb: "Hi\n" + ("Am x" + " schrieb" * 50 + "\n") * (kb * 1024 // 405),
}


@pytest.mark.parametrize("shape", REPLY_SHAPES)
def test_split_reply_is_linear(shape: str) -> None:
    n = 256 if "line" in shape and "lines" not in shape else 160  # 1 MB lines; 160 KB -> 640 KB of lines
    assert_linear(normalize.split_reply, REPLY_SHAPES[shape], n)


def test_reply_splitting_keeps_its_results() -> None:
    assert normalize.split_reply("Yes.\n\nOn Mon, 16 Nov 2026, Support <s@x.com> wrote:\n> Refund?") == (
        "Yes.", "On Mon, 16 Nov 2026, Support <s@x.com> wrote:\n> Refund?")
    assert normalize.split_reply("Yes.\n> a\n\n> b\n") == ("Yes.", "> a\n\n> b")
    assert normalize.split_reply("> a\nmy answer\n> b") == ("> a\nmy answer", "> b")
    assert normalize.split_reply("> only a quote") == ("> only a quote", None)
    assert normalize.split_reply("Body\n-- \nJane") == ("Body", "-- \nJane")


def test_reply_markers_are_looked_for_in_a_bounded_head() -> None:
    filler = "line\n" * normalize.MARKER_LINES
    text, quoted = normalize.split_reply(filler + "On Mon, Bob wrote:\nold")
    assert quoted is None and text.endswith("old")  # a marker past the first MARKER_LINES lines is not read
    text, quoted = normalize.split_reply(filler + "> old\n> older")
    assert quoted == "> old\n> older"  # the trailing quote is found at any length
    long_from = "From: " + "a" * normalize.MARKER_LINE_CHARS
    assert normalize.split_reply("Hi\n" + long_from) == ("Hi\n" + long_from, None)


# -- HTML to text ------------------------------------------------------------------------------------------
HTML_SHAPES: dict[str, Callable[[int], str]] = {
    "tiny tags": lambda n: "<b>" * n,
    "deep nesting": lambda n: "<div>" * n + "x" + "</div>" * n,
    "unfinished start tags": lambda n: "<a " * n,
    "runs of <": lambda n: "<" * (3 * n),
    "runs of </": lambda n: "</" * n,
    "runs of <![": lambda n: "<![" * n,
    "runs of <?": lambda n: "<?" * n,
    "runs of <!": lambda n: "<!" * n,
    "unclosed comment": lambda n: "<p>x</p><!--" + "a-" * n,
    "unclosed quote": lambda n: '<a title="' * n,
    "huge attribute list": lambda n: "<a " + "x=1 " * n + ">text</a>",
    "many entities": lambda n: "&amp;&#38;&lt;" * (n // 3),
    "unfinished entities": lambda n: "&#" * n,
    "script never closed": lambda n: "<script>" + "</scrip" * (n // 3),
    "skipped elements": lambda n: "<head>" * n + "x",
    "text and blocks": lambda n: "<p>word word</p>\n\n" * (n // 6),
}


@pytest.mark.parametrize("shape", HTML_SHAPES)
def test_html_to_text_is_linear(shape: str) -> None:
    assert_linear(normalize.html_to_text, HTML_SHAPES[shape], 40_000)  # 4n stays under HTML_LIMIT


def test_html_to_text_reads() -> None:
    html = ("<html><head><title>T</title><style>p{color:red}</style></head><body><p>Hello&nbsp;<b>world</b>"
            "</p><div>a &amp; b</div><script>if (a<b) x()</script><a href='x>y'>link</a> 1 < 2<br/>end"
            "<!-- hidden --></body></html>")
    assert normalize.html_to_text(html) == "Hello world\n\na & b\nlink 1 < 2\nend"
    assert normalize.html_to_text("<p>kept</p><a title='unclosed>text") == "kept\ntext"
    assert normalize.html_to_text("<img alt=Don't title=x>kept<p>more</p>") == "kept\nmore"
    assert normalize.html_to_text("<p>kept</p><!-- never closed <p>lost") == "kept"


def test_html_beyond_the_limit_is_not_read_and_marked() -> None:
    html = "<p>" + "word " * (normalize.HTML_LIMIT // 5) + "</p><p>past the limit</p>"
    text = normalize.html_to_text(html)
    assert text.endswith(normalize.TRUNCATED) and "past the limit" not in text
    start = time.process_time()
    normalize.html_to_text("<b>" * 5_000_000)  # 15 MB of tags: only the first HTML_LIMIT characters are read
    assert time.process_time() - start < 10  # CPU time, which other processes on the machine do not inflate


# -- headers -----------------------------------------------------------------------------------------------
HEADER_SHAPES: dict[str, Callable[[int], bytes]] = {
    "encoded words": lambda n: b"List-Id: " + b" ".join([b"=?utf-8?q?a=00b?="] * n) + b"\n",
    "encoded words in many charsets": lambda n: b"Subject: " + b" ".join(
        [b"=?utf-8?b?w6k=?=", b"=?iso-8859-1?q?=E9?=", b"=?x-unknown?q?a?="] * (n // 3)) + b"\n",
    "unfinished encoded words": lambda n: b"Subject: " + b"=?utf-8?q?" * n + b"\n",
    "long folded header": lambda n: b"References: " + b"\r\n ".join([b"<a@b>"] * n) + b"\r\n",
    "many headers": lambda n: b"".join(b"X-H%d: v\r\n" % i for i in range(n // 10)),
    "one long line": lambda n: b"X-Long: " + b"a" * (n * 10) + b"\n",
}


@pytest.mark.parametrize("shape", HEADER_SHAPES)
def test_header_decoding_is_linear(shape: str) -> None:
    assert_linear(email.header_pairs, HEADER_SHAPES[shape], 2_000)


ADDRESS_SHAPES: dict[str, Callable[[int], str]] = {
    "many addresses": lambda n: "a@b.example, " * (n // 14),
    "unbalanced quotes": lambda n: '"a' * (n // 2),
    "angle brackets": lambda n: "<" * n,
    "nested comments": lambda n: "(" * (n // 2) + "a@b.example" + ")" * (n // 2),
    "nested groups": lambda n: "g:" * (n // 2),
    "encoded display name": lambda n: "=?utf-8?q?J=C3=BCrgen?= " * (n // 24) + "<j@b.example>",
}


@pytest.mark.parametrize("shape", ADDRESS_SHAPES)
def test_address_parsing_is_bounded_and_never_crashes(shape: str) -> None:
    assert_linear(email.addresses, ADDRESS_SHAPES[shape], 1_000)
    assert_linear(email.address, ADDRESS_SHAPES[shape], 1_000)
    start = time.perf_counter()
    email.address(ADDRESS_SHAPES[shape](5_000_000))  # megabytes: only MAX_ADDRESS_CHARS are read
    assert time.perf_counter() - start < 1


def test_decoded_headers_with_nul_do_not_crash_and_are_stored_clean() -> None:
    pairs = email.header_pairs(b"List-Id: =?utf-8?q?a=00b?=\r\nMessage-ID: =?utf-8?q?<x=00y@z>?=\r\n")
    kept = email.kept_headers(pairs)
    assert kept["list-id"] == "a\x00b"  # decoding is faithful; the message model makes it storable
    assert email.first_id(kept["message-id"]) == "x\x00y@z"
    block = ("List-Id: =?utf-8?q?a=00b?=\r\nSubject: =?utf-8?b?AA==?=\r\n" * 250).encode()
    assert len(email.header_pairs(block)) == 500
    assert len(email.header_pairs(block * 100)) == email.MAX_HEADERS  # the first of 50,000 headers
    body = (b"--xYzZY\r\nContent-Disposition: form-data; name=\"headers\"\r\n\r\n"
            b"List-Id: =?utf-8?q?a=00b?=\r\n\r\n"
            b"--xYzZY\r\nContent-Disposition: form-data; name=\"from\"\r\n\r\nA <a@b.example>\r\n--xYzZY--\r\n")
    request = WebhookRequest(method="POST", url="https://x/", headers={"content-type": "multipart/form-data; "
                                                                       "boundary=xYzZY"}, body=body)
    (message,) = sendgrid.parse(request).messages
    assert message.headers["list-id"] == "a\ufffdb"


# -- the ledger's scrubber ---------------------------------------------------------------------------------
SCRUB_SHAPES: dict[str, Callable[[int], str]] = {
    "many :// without @": lambda n: "://a:" * (n // 5),
    "one :// and a long word": lambda n: "://" + "a" * n + ":",
    "user and password, @ at the end": lambda n: "x://a:b" * (n // 7) + "@",
    "URLs with credentials": lambda n: "postgresql://intake:s3cret@db/x " * (n // 32),
    "keyword and white space": lambda n: "password:" + " " * n,
    "keywords": lambda n: "token" * (n // 5),
    "keywords with separators": lambda n: "secret= " * (n // 8),
    "webhook secrets": lambda n: "whsec_" * (n // 6),
}


@pytest.mark.parametrize("shape", SCRUB_SHAPES)
def test_scrub_is_linear(shape: str) -> None:
    assert_linear(scrub, SCRUB_SHAPES[shape], 200_000)


def test_scrub_still_hides_credentials() -> None:
    text = scrub("postgresql://intake:s3cret@db/x redis://:pw@h:6379/0 token=abc whsec_AAAA== password: 'x'")
    assert text == "postgresql://intake:***@db/x redis://:***@h:6379/0 token=*** whsec_*** password: '***'"


# -- Mailgun: verify before anything else ------------------------------------------------------------------
KEY = "key-mailgun-signing"
NOW = datetime.now(UTC)
CTX = VerifyContext(now=NOW)


def signed(timestamp: str | None = None, token: str = "a" * 50, key: str = KEY) -> list[tuple[str, str]]:
    timestamp = timestamp or str(int(NOW.timestamp()))
    sig = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    return [("timestamp", timestamp), ("token", token), ("signature", sig)]


def multipart(fields: list[tuple[str, str]], boundary: str = "xYzZY") -> bytes:
    out = bytearray()
    for name, value in fields:
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    return bytes(out + f"--{boundary}--\r\n".encode())


def form_request(body: bytes, content_type: str = "multipart/form-data; boundary=xYzZY") -> WebhookRequest:
    return WebhookRequest(method="POST", url="https://x/", headers={"content-type": content_type}, body=body)


def verifies(request: WebhookRequest) -> bool:
    try:
        mailgun.verify(request, {"signing_key": KEY}, CTX)
    except SignatureError:
        return False
    return True


MAILGUN_SHAPES: dict[str, Callable[[int], WebhookRequest]] = {
    # the signed fields last, after parts that fill the body
    "multipart, parts of 1 KB": lambda n: form_request(multipart(
        [("attachment", "x" * 1024)] * (n // 1024) + signed(token="b" * 50)[:2] + [("signature", "0" * 64)])),
    "multipart, one huge part": lambda n: form_request(multipart([("body-mime", "y\r\n" * (n // 3)), *signed()])),
    "multipart, boundary-like lines": lambda n: form_request(multipart(
        [("body-plain", "--xYzZ\r\n" * (n // 8)), *signed()])),
    "urlencoded, many pairs": lambda n: form_request(
        b"a=1&" * (n // 4) + urlencode(signed()).encode(), "application/x-www-form-urlencoded"),
    "urlencoded, near-miss names": lambda n: form_request(
        b"&token&timestam=&signatur=" * (n // 26) + b"&" + urlencode(signed()).encode(),
        "application/x-www-form-urlencoded"),
}


@pytest.mark.parametrize("shape", MAILGUN_SHAPES)
def test_mailgun_verify_is_linear(shape: str) -> None:
    assert_linear(verifies, MAILGUN_SHAPES[shape], 5_000_000)  # 5 MB -> 20 MB, both beyond CPU caches


def test_mailgun_verify_reads_the_signed_fields_as_the_form_does() -> None:
    fields = [("from", "Bob <bob@x.example>"), ("body-plain", "--xYzZYnot a delimiter\r\n\r\n"),
              *signed(), ("token", "second-one"), ("attachment-1", "z" * 1000)]
    for body, ctype in ((multipart(fields), "multipart/form-data; boundary=\"xYzZY\""),
                        (b"preamble\r\n" + multipart(fields).replace(b"\r\n", b"\n"), "multipart/form-data; "
                                                                                    "boundary=xYzZY"),
                        (urlencode(fields).encode(), "application/x-www-form-urlencoded")):
        request = form_request(body, ctype)
        from_form = {k: v[0] for k, v in form_fields(request).items() if k in mailgun.SIGNED_FIELDS}
        assert mailgun.signed_fields(request) == from_form == dict(signed())
        assert verifies(request) and mailgun.replay_token(request) == "a" * 50


def test_mailgun_refuses_what_it_cannot_scan_cheaply() -> None:
    too_many = multipart([("f", "")] * mailgun.MAX_FORM_PARTS + signed())
    huge_header = b"--xYzZY\r\nX-Pad: " + b"p" * mailgun.MAX_PART_HEADER + b"\r\n\r\nv\r\n" + multipart(signed())
    huge_token = multipart(signed(token="t" * (mailgun.MAX_SIGNED_VALUE + 1)))
    for body in (too_many, huge_header, huge_token):
        assert not verifies(form_request(body))
        assert mailgun.replay_token(form_request(body)) is None
    assert verifies(form_request(multipart([("f", "")] * (mailgun.MAX_FORM_PARTS - 10) + signed())))
    for ctype in ("multipart/form-data", "multipart/form-data; boundary=", "text/plain",
                  "multipart/form-data; boundary=" + "b" * 300):
        assert not verifies(form_request(multipart(signed()), ctype))
    for timestamp in (" " + str(int(NOW.timestamp())), "+" + str(int(NOW.timestamp())), "1" * 400, "1" * 5000,
                      "\u0661\u0667"):
        assert not verifies(form_request(multipart(signed(timestamp=timestamp))))
    assert not verifies(form_request(multipart(signed(key="another key"))))
    assert not verifies(form_request(b"\x00\xff" * 1000 + multipart(signed())[:-5]))


def test_mailgun_rejects_a_20_mb_form_of_tiny_parts_at_once() -> None:
    tiny_parts = multipart([("f", "x")] * 400_000 + signed(key="forged"))
    assert len(tiny_parts) > 20_000_000
    few_big_parts = multipart([("f", "x" * 20_500)] * 990 + signed(key="forged"))
    genuine = multipart([("f", "x" * 20_500)] * 990 + signed())
    for body, expected in ((tiny_parts, False), (few_big_parts, False), (genuine, True)):
        start = time.perf_counter()
        assert verifies(form_request(body)) is expected
        assert time.perf_counter() - start < 1


# -- the local AI provider ------------------------------------------------------------------------------
AI_SHAPES: dict[str, Callable[[int], str]] = {
    # English that carries sentiment: VADER looks every word up again in the whole text (16 KB took 0.6 s)
    "English with sentiment": lambda n: "where is my order, this is terrible, please help " * (n // 50),
    "words of no language": lambda n: "zzkq " * (n // 5),
    "letters without spaces": lambda n: "ö" * n,
    "digits only": lambda n: "1" * n,
    "common words": lambda n: "danke merci kiitos " * (n // 19),
}


@pytest.mark.parametrize("shape", AI_SHAPES)
def test_local_classification_is_linear(shape: str) -> None:
    provider = LocalProvider()
    assert_linear(lambda text: provider.classify(ClassifyRequest(text, None, DEFAULT)), AI_SHAPES[shape], 16_000)


@pytest.mark.parametrize("shape", AI_SHAPES)
def test_language_decision_is_linear(shape: str) -> None:
    assert_linear(decide, AI_SHAPES[shape], 250_000)
