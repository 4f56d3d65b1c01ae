"""Field types every control-plane model uses, so that no value the database would refuse gets past
validation: text without NUL or lone surrogates (PostgreSQL stores neither), bounded lengths, finite numbers.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, StringConstraints, ValidationError


def clean_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


Text = Annotated[str, StringConstraints(max_length=10_000), AfterValidator(clean_text)]
Short = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True),
                  AfterValidator(clean_text)]
Name = Short
Secret = Annotated[str, StringConstraints(min_length=1, max_length=1000), AfterValidator(clean_text)]
Region = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2}$", to_upper=True)]
Slug = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_][a-z0-9_-]{0,63}$")]
Language = Annotated[str, StringConstraints(pattern=r"^[a-z]{2}$", to_lower=True)]

PhoneNumberId = Annotated[str, StringConstraints(pattern=r"^[0-9]{1,32}$")]
Domain = Annotated[str, StringConstraints(
    max_length=253, to_lower=True,
    pattern=r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")]
EmailAddress = Annotated[str, StringConstraints(
    max_length=254, pattern=r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63}$")]


def _reply_url(value: str) -> str:
    """An absolute http(s) URL with a host and no credentials: replies are POSTed to it, signed."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http or https URL")
    if parts.username or parts.password:
        raise ValueError("must not carry credentials (replies are signed instead)")
    return value


ReplyUrl = Annotated[str, StringConstraints(max_length=2048, pattern=r"^[\x21-\x7e]+$"), AfterValidator(_reply_url)]


class Model(BaseModel):
    """Strict about unknown fields and non-finite numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def field_errors(exc: ValidationError, *, prefix: str = "") -> dict[str, str]:
    """`{"settings.ai.monthly_budget_usd": "Input should be greater than or equal to 0"}`."""
    fields: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        loc = [str(part) for part in error["loc"]]
        name = ".".join(([prefix] if prefix else []) + loc) or prefix or "body"
        fields.setdefault(name, _message(error))
    return fields


def _message(error: Any) -> str:
    message = str(error["msg"])
    return message.removeprefix("Value error, ")
