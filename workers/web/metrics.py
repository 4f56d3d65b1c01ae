"""The ingress's Prometheus metrics, in a registry of its own (served at /metrics)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass
class Metrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    enqueue_failures: Counter
    batch_rows: Histogram
    _children: dict[tuple[str, int], tuple[Any, Any]] = field(default_factory=dict)

    def observe(self, channel: str, status: int, seconds: float) -> None:
        """One answered delivery: its channel, its status code (the `outcome` label) and its latency."""
        key = (channel, status)
        children = self._children.get(key)
        if children is None:  # prometheus_client's label look-up is slow on a hot path: look up once
            children = self._children[key] = (self.requests.labels(channel, str(status)),
                                              self.latency.labels(channel))
        children[0].inc()
        children[1].observe(seconds)

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            requests=Counter("intake_webhook_requests", "Webhook deliveries by channel and outcome",
                             ["channel", "outcome"], registry=registry),
            latency=Histogram("intake_webhook_latency_seconds", "Time from request to acknowledgement",
                              ["channel"], registry=registry,
                              buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)),
            enqueue_failures=Counter("intake_enqueue_failures", "Stored events whose enqueue failed",
                                     registry=registry),
            batch_rows=Histogram("intake_commit_batch_rows", "Events per group commit", registry=registry,
                                 buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512)),
        )
