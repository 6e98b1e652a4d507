"""Structured JSON logs for the node. Never log content, tokens or keys: ids, codes, sizes and hashes only."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import orjson
import structlog


def configure_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(stream=sys.stderr, level=level, format="%(message)s")
    # httpx logs every request line (with the peer's URL) at INFO; the worker logs deliveries itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(serializer=log_line),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def log_line(event: dict[str, Any], default: Callable[[Any], Any]) -> str:
    """One event as a line of compact JSON: orjson's (a node logs a line per message; the standard
    library took about a quarter of the logging's interpreter samples), the standard library's when
    orjson refuses the event (a key not a string, an integer beyond 64 bits). ``default`` writes what
    JSON has no type for (structlog's ``repr``)."""
    try:
        return orjson.dumps(event, default=default).decode("utf-8")
    except TypeError:  # (orjson.JSONEncodeError is one)
        return json.dumps(event, default=default, ensure_ascii=False, separators=(",", ":"))
