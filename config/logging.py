"""structlog set-up: JSON lines by default, readable console output on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Literal

import structlog

from config.redaction import scrub_event


def configure_logging(fmt: Literal["json", "console"] | None = None, level: str = "info") -> None:
    """Route structlog and the standard library through one renderer.

    `fmt` None picks console on a TTY and JSON otherwise, so a developer's terminal is readable and a
    process manager's log collector gets one JSON object per line.
    """
    if fmt is None:
        fmt = "console" if sys.stderr.isatty() else "json"
    # Every event, ours and the standard library's (uvicorn's, a library's), is scrubbed of credentials once its
    # exception is text: a traceback that quotes a DSN with its password never reaches the log.
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        scrub_event,
    ]
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty(),
                                                 exception_formatter=structlog.dev.plain_traceback)
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer,
        ])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    for noisy in ("uvicorn.access", "alembic", "pgserver"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
