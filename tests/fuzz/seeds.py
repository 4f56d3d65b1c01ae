"""The seed corpus: nasty real-world shapes every fuzz run starts from.

Small hand-made seeds are files in `seeds/`, named `<channel>.<name>.<ext>` (`.json`, `.form`,
`.multipart`); `email.<name>.eml` files are raw MIME messages, posted as Mailgun's `body-mime` and as
SendGrid's raw `email` field. Seeds too large to keep as files (10,000-part forms, JSON 1,000 levels deep,
giant quoted replies, deep HTML, very long Message-IDs) are built here, the same bytes on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from tests.fuzz import shapes

SEEDS = Path(__file__).parent / "seeds"
CONTENT_TYPES = {".json": shapes.JSON, ".form": shapes.FORM, ".multipart": shapes.MULTIPART}


@dataclass(frozen=True)
class Seed:
    channel: str
    name: str
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:  # hypothesis prints failing examples: the name says which seed, not 1 MB
        return f"Seed({self.channel}.{self.name}, {len(self.body)} bytes)"


def _email_seeds(name: str, mime: bytes) -> list[Seed]:
    text = mime.decode("utf-8", errors="surrogateescape")
    return [
        Seed("mailgun", f"{name}-body-mime", shapes.form([("from", "m@customer.example"), ("body-mime", text)]),
             shapes.FORM),
        Seed("mailgun", f"{name}-body-mime-multipart", shapes.multipart([("from", "m@customer.example"),
                                                                         ("body-mime", mime)]), shapes.MULTIPART),
        Seed("sendgrid", f"{name}-raw", shapes.multipart([("email", mime), ("from", "s@customer.example"),
                                                          ("to", "inbox@help.example.com")]), shapes.MULTIPART),
    ]


def _file_seeds() -> list[Seed]:
    seeds: list[Seed] = []
    for path in sorted(SEEDS.iterdir()):
        channel, name = path.stem.split(".", 1)
        if path.suffix == ".eml":
            seeds += _email_seeds(name, path.read_bytes())
        else:
            seeds.append(Seed(channel, name, path.read_bytes(), CONTENT_TYPES[path.suffix]))
    return seeds


def _built_seeds() -> list[Seed]:
    deep = shapes.nested(1000)
    quoted = shapes.quoted_reply(2500)  # about 100 KB of '>' lines
    html = shapes.hostile_html(3000)
    long_id = "x" * 10_000 + "@mail.example"
    many = [(f"field{n}", "v") for n in range(10_000)]
    return [
        Seed("api", "json_1000_deep", shapes.dumps(deep), shapes.JSON),
        Seed("api", "metadata_300_deep", shapes.dumps(shapes.api_message("deep-1", "hi", metadata=shapes.nested(300))),
             shapes.JSON),
        Seed("api", "ten_thousand_items", shapes.dumps({"items": [shapes.api_message(f"i{n}", "x")
                                                                   for n in range(10_000)]}), shapes.JSON),
        Seed("api", "long_ids", shapes.dumps(shapes.api_message(long_id, "hi", in_reply_to=long_id,
                                                                contact={"external_id": long_id})), shapes.JSON),
        Seed("whatsapp", "json_1000_deep", shapes.dumps({"object": "whatsapp_business_account", "entry": deep}),
             shapes.JSON),
        Seed("telegram", "json_1000_deep", shapes.dumps({"update_id": 1, "message": deep}), shapes.JSON),
        Seed("postmark", "giant_quoted_reply", shapes.dumps(shapes.postmark_email("pm-q", "q@customer.example", quoted)),
             shapes.JSON),
        Seed("postmark", "deep_html", shapes.dumps(shapes.postmark_email("pm-h", "h@customer.example", "",
                                                                         HtmlBody=html)), shapes.JSON),
        Seed("postmark", "long_message_id", shapes.dumps(shapes.postmark_email(
            long_id, "l@customer.example", "hi", message_id=f"<{long_id}>", headers=[("References", f"<{long_id}> " * 50)])),
            shapes.JSON),
        Seed("postmark", "metadata_1000_deep", shapes.dumps(shapes.postmark_email("pm-d", "d@customer.example", "x",
                                                                                  Attachments=deep, ToFull=deep)),
             shapes.JSON),
        Seed("twilio", "ten_thousand_fields", shapes.form(shapes.twilio_sms("SMmany", "+14155550101", "x") + many),
             shapes.FORM),
        Seed("mailgun", "ten_thousand_parts", shapes.multipart(
            [(k, v) for k, v in shapes.mailgun_fields("m@customer.example", "x")] + many), shapes.MULTIPART),
        Seed("mailgun", "giant_quoted_reply", shapes.form(shapes.mailgun_fields("q@customer.example", quoted,
                                                                                message_id="q@mail.example")),
             shapes.FORM),
        Seed("mailgun", "deep_html", shapes.form(shapes.mailgun_fields("h@customer.example", "", extra=[("body-html", html)])),
             shapes.FORM),
        Seed("mailgun", "long_message_id", shapes.form(shapes.mailgun_fields("l@customer.example", "x",
                                                                             message_id=long_id)), shapes.FORM),
        Seed("sendgrid", "ten_thousand_parts", shapes.multipart(
            [*shapes.sendgrid_fields("s@customer.example", "x"), *many]), shapes.MULTIPART),
        Seed("sendgrid", "giant_quoted_reply", shapes.multipart(shapes.sendgrid_fields("q@customer.example", quoted)),
             shapes.MULTIPART),
        Seed("sendgrid", "long_message_id", shapes.multipart(shapes.sendgrid_fields("l@customer.example", "x",
                                                                                    message_id=long_id)),
             shapes.MULTIPART),
    ]


@cache
def all_seeds() -> tuple[Seed, ...]:
    return tuple(_file_seeds() + _built_seeds())


def for_channel(channel: str) -> list[Seed]:
    return [seed for seed in all_seeds() if seed.channel == channel]
