"""Webhook endpoints: the change feed pushed, signed per Standard Webhooks, in order per conversation.

`endpoints` (the control plane's operations), `delivery` (plan, claim, send, record), `signing`, `targets`
(which URLs may receive), `models` (requests and answers).
"""
