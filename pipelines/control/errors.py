"""What the control plane refuses, one class per answer; each carries its HTTP status and error code, so the
admin API, the console and the CLI answer it alike.

    ControlError (Refusal)
    ├── NotFound        no such tenant, inbox, team, persona, key or job (404)
    ├── Forbidden       the key may not act on this tenant, or this needs an operator key (403)
    ├── Conflict        a name already taken, a state that forbids the change (409)
    └── Invalid         field-level validation errors: {"field.path": "message"} (422)
"""

from __future__ import annotations

from typing import Any

from pipelines.errors import Refusal


class ControlError(Refusal):
    """A control-plane request refused as asked."""


class NotFound(ControlError):
    """No such object (or not one this key may see)."""

    status, code = 404, "not_found"


class Forbidden(ControlError):
    """The key may not do this."""

    status, code = 403, "forbidden"


class Conflict(ControlError):
    """The change clashes with what is stored."""

    status, code = 409, "conflict"


class Invalid(ControlError):
    """Some fields are invalid; `fields` maps each dotted field path to what is wrong with it."""

    status, code = 422, "invalid"

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in fields.items()))
        self.fields = fields

    def detail(self) -> str:
        return "some fields are invalid"

    def extra(self) -> dict[str, Any]:
        return {"fields": self.fields}
