"""Deliveries from fixture files, signed the way each provider signs them."""

from __future__ import annotations

from pathlib import Path

from pipelines.channels.signing import basic, sign

FIXTURES = Path(__file__).parent / "fixtures"
CONTENT_TYPES = {
    ".json": "application/json",
    ".form": "application/x-www-form-urlencoded",
    ".multipart": "multipart/form-data; boundary=xYzZY",
}

__all__ = ["FIXTURES", "basic", "fixture", "sign"]


def fixture(name: str) -> tuple[bytes, str]:
    path = FIXTURES / name
    return path.read_bytes(), CONTENT_TYPES[path.suffix]
