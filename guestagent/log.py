"""Structured logging: key-value lines (journal-friendly) or JSON, through structlog.

structlog is imported on first use only: a one-shot CLI command that logs nothing never pays for it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

_configured = False


def configure(level: str = "info", json: bool = False, stream: Any | None = None) -> None:
    """Set up structlog once for the process: key=value (default) or JSON lines on stderr."""
    global _configured
    import structlog

    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.processors.KeyValueRenderer(key_order=["timestamp", "level", "event"])
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper()) if isinstance(level, str) else level
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(name: str) -> Any:
    """A bound structlog logger tagged with the component name."""
    import structlog

    if not _configured:
        configure()
    return structlog.get_logger().bind(component=name)
