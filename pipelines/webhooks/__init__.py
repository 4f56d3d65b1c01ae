"""Webhook endpoints: the change feed pushed, signed per Standard Webhooks, in order per conversation.

`endpoints` (the control plane's operations), `delivery` (a pass over an endpoint: plan, claim, record),
`sending` (one POST on the pass's kept-alive connections), `signing`, `targets` (which URLs may receive),
`models` (requests and answers).
"""
