"""Structured logging: key-value lines (journal-friendly) or JSON, through structlog.

structlog is imported on first use only, and without OpenSSL (:func:`import_structlog`).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, TextIO, cast

_configured = False


def import_structlog() -> Any:
    """structlog, imported without loading OpenSSL.

    structlog imports asyncio (for its async logging methods, which guestagent never calls), and
    asyncio imports ``ssl`` when it can: about 6 MiB of OpenSSL resident in an agent that never
    speaks TLS (measured in benchmarks/README.md). asyncio treats ``ssl`` as optional, so it is
    hidden while structlog (and with it asyncio) is imported and put back right after: a later
    ``import ssl`` works as usual; only asyncio's own TLS support stays off in this process.
    """
    loaded = sys.modules.get("structlog")
    if loaded is not None:
        return loaded
    hide = "ssl" not in sys.modules and "asyncio" not in sys.modules
    if hide:
        sys.modules["ssl"] = None  # type: ignore[assignment]  # import ssl raises ImportError
    try:
        import structlog
    finally:
        if hide and "ssl" in sys.modules and sys.modules["ssl"] is None:
            del sys.modules["ssl"]
    return structlog

#: The same warning or error (same event, same error text) is logged at most once per window.
REPEAT_WINDOW = 60.0


class RepeatFilter:
    """A structlog processor that drops repeats of a warning or error within a window and says,
    on the next one let through, how many were dropped."""

    def __init__(
        self, window: float = REPEAT_WINDOW, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self.clock = clock
        self._last: dict[tuple[str, str, str], tuple[float, int]] = {}

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
        if method not in ("warning", "error", "critical", "exception"):
            return event
        structlog = import_structlog()
        key = (method, str(event.get("event")), str(event.get("error", "")))
        now = self.clock()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.window:
            self._last[key] = (seen[0], seen[1] + 1)
            raise structlog.DropEvent
        if seen is not None and seen[1]:
            event["repeated"] = seen[1]
        self._last[key] = (now, 0)
        if len(self._last) > 1024:  # bounded: forget the oldest
            oldest = min(self._last, key=lambda k: self._last[k][0])
            del self._last[oldest]
        return event


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of the write (tests swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", json: bool = False, stream: Any | None = None) -> None:
    """Set up structlog once for the process: key=value (default) or JSON lines on stderr."""
    global _configured
    structlog = import_structlog()

    processors: list[Any] = [
        RepeatFilter(),
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
        logger_factory=structlog.PrintLoggerFactory(file=stream or cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(name: str) -> Any:
    """A bound structlog logger tagged with the component name."""
    structlog = import_structlog()
    if not _configured:
        configure()
    return structlog.get_logger().bind(component=name)
