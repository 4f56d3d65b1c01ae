"""Standard Webhooks signatures: what a receiver checks with the `standardwebhooks` library.

    webhook-id: <the event's id>   webhook-timestamp: <unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256(key, id + "." + timestamp + "." + body)> [v1,<...> ...]

The key is the base64 part of the endpoint's `whsec_` secret. During a rotation's overlap a delivery carries
one signature per secret (the new one first), so a receiver configured with either verifies it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets as random

PREFIX = "whsec_"
KEY_BYTES = 24


def new_secret() -> str:
    """A fresh endpoint secret, `whsec_` and 24 random bytes in base64."""
    return PREFIX + base64.b64encode(random.token_bytes(KEY_BYTES)).decode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of a delivery signed with each of `secrets`."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(signature(s, msg_id, timestamp, body) for s in secrets),
    }
