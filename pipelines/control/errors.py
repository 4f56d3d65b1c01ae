"""What the control plane refuses, one class per answer (the admin API maps each to its status code).

    ControlError (PermanentError)
    ├── NotFound        no such tenant, inbox, team, persona, key or job (404)
    ├── Forbidden       the key may not act on this tenant, or this needs an operator key (403)
    ├── Conflict        a name already taken, a state that forbids the change (409)
    └── Invalid         field-level validation errors: {"field.path": "message"} (422)
"""

from __future__ import annotations

from pipelines.errors import PermanentError


class ControlError(PermanentError):
    """A control-plane request refused as asked."""


class NotFound(ControlError):
    """No such object (or not one this key may see)."""


class Forbidden(ControlError):
    """The key may not do this."""


class Conflict(ControlError):
    """The change clashes with what is stored."""


class Invalid(ControlError):
    """Some fields are invalid; `fields` maps each dotted field path to what is wrong with it."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("; ".join(f"{name}: {message}" for name, message in fields.items()))
        self.fields = fields
