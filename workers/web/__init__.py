"""The internet-facing ingress: verify, store durably, acknowledge, enqueue."""
