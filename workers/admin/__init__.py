"""The admin process: the control plane's API (and later its console), apart from the ingress."""

from workers.admin.app import create_app

__all__ = ["create_app"]
