"""The scale bench's picture: cost per message and latency against tenants and stored messages (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(points: list[dict[str, Any]], size_tenants: int, path: Path) -> None:
    """Three panels: CPU per message against table size (with the ±20% band around the empty tables'
    cost), the same against tenants, and end-to-end p50/p99 at every point."""
    import logging

    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font cache notice is not output
    import matplotlib.pyplot as plt

    sizes = sorted((p for p in points if p["tenants"] == size_tenants), key=lambda p: p["stored"])
    tenants = sorted((p for p in points if p["stored"] == 0), key=lambda p: p["tenants"])
    figure, (by_size, by_tenants, latency) = plt.subplots(1, 3, figsize=(15, 4.8))

    def cost(axes: Any, curve: list[dict[str, Any]], x: list[float], xlabel: str) -> None:
        for key, label in (("worker", "ingest worker"), ("postgres", "PostgreSQL"), ("redis", "Redis")):
            axes.plot(x, [p["pipeline"]["cpu_ms_per_message"].get(key) or 0 for p in curve], marker="o", label=label)
        axes.plot(x, [p["pipeline_cpu_ms_per_message"] for p in curve], marker="s", color="black", label="total")
        axes.set_xlabel(xlabel)
        axes.set_ylabel("CPU ms per stored message")
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)

    size_x = [p["stored"] / 1e6 for p in sizes]
    cost(by_size, sizes, size_x, f"messages already stored (millions), {size_tenants:,} tenants sending")
    if sizes:
        base = sizes[0]["pipeline_cpu_ms_per_message"]
        by_size.axhspan(base * 0.8, base * 1.2, color="green", alpha=0.1, label="±20% of empty")
        by_size.legend(fontsize=8)
    by_size.set_title("cost per message against table size")
    cost(by_tenants, tenants, [p["tenants"] for p in tenants], "tenants sending (empty tables)")
    by_tenants.set_xscale("log")
    by_tenants.set_xticks([p["tenants"] for p in tenants], [f"{p['tenants']:,}" for p in tenants])
    by_tenants.set_title("cost per message against tenants")

    labels = [f"{p['tenants']:,} t\n{p['stored'] / 1e6:g} M" for p in points]
    x = list(range(len(points)))
    latency.bar([i - 0.2 for i in x], [p["e2e"]["p50_ms"] for p in points], width=0.4, label="p50")
    latency.bar([i + 0.2 for i in x], [p["e2e"]["p99_ms"] for p in points], width=0.4, label="p99")
    latency.set_xticks(x, labels, fontsize=8)
    latency.set_ylabel("ms, receipt to stored")
    latency.set_title("end to end at half each point's peak")
    latency.grid(axis="y", alpha=0.3)
    latency.legend(fontsize=8)

    figure.suptitle("intake bench --scale")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
