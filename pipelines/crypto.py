"""Inbox secrets are encrypted at rest (Fernet: AES-128-CBC with HMAC-SHA256) under INTAKE_SECRET_KEY."""

from __future__ import annotations

import base64
import hashlib

import orjson
from cryptography.fernet import Fernet, InvalidToken

from pipelines.errors import PermanentError


class SecretKeyError(PermanentError):
    """Stored secrets cannot be decrypted with the configured INTAKE_SECRET_KEY."""

    explained = True


class SecretBox:
    """Seals and opens a small mapping of secrets with a key derived from any passphrase."""

    def __init__(self, secret_key: str) -> None:
        if len(secret_key) < 16:
            raise SecretKeyError("INTAKE_SECRET_KEY must be at least 16 characters")
        digest = hashlib.sha256(b"intake.inbox-secrets.v1:" + secret_key.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))

    def seal(self, values: dict[str, str]) -> str:
        return self._fernet.encrypt(orjson.dumps(values)).decode()

    def open(self, token: str) -> dict[str, str]:
        try:
            data = orjson.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise SecretKeyError(
                "inbox secrets cannot be decrypted: INTAKE_SECRET_KEY differs from the key they were sealed with"
            ) from None
        return {str(k): str(v) for k, v in data.items()}
