"""Structured logging: logfmt lines or JSON lines on stderr, through structlog.

- Elsewhere (a terminal, a file, a pipe): each line is valid logfmt: ``timestamp=... level=warning
  event=... key=value``; a string with a space, ``=``, a quote, a backslash or a control character
  is double-quoted with JSON's escapes; None is an empty value (``key=``); a list of plain values
  is comma-joined (``jobs=topology,devices``), anything else nested is JSON (:func:`logfmt`).
- When stderr is the journal (``$JOURNAL_STREAM`` names stderr's device and inode, as systemd sets
  it for a service): each line starts with its syslog priority, the ``<N>`` prefix of
  sd-daemon(3) (``<4>`` for a warning), so ``journalctl -p warning`` shows exactly the warnings,
  and carries no timestamp of its own (the journal stamps every entry).

structlog is imported on first use only, and without OpenSSL (:func:`import_structlog`).
"""

from __future__ import annotations

import json as jsonlib
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, Callable, TextIO, cast

from guestagent.lazyimport import deferring

#: What structlog imports at module level for code guestagent never runs: asyncio for its async
#: logging methods (with subprocess, concurrent.futures, selectors: about 1.5 MiB resident),
#: uuid for its deprecated thread-local dicts (with platform, libuuid), inspect for its call-site
#: processor, and its standard-library integration: ``structlog.stdlib`` and ``logging`` (about
#: 0.5 MiB; the rest of structlog names ``logging`` only in annotations and in processors for
#: stdlib records, which guestagent does not configure). Each gets a stand-in
#: (:mod:`guestagent.lazyimport`) that imports the real module on first use.
STRUCTLOG_DEFERS = ("asyncio", "uuid", "inspect", "logging", "structlog.stdlib")

#: The numeric levels of the names ``--log-level`` and ``[agent] log_level`` take (the standard
#: library's values, which structlog's filtering loggers compare against; ``logging`` itself is
#: not imported for them).
LEVELS = {"debug": 10, "info": 20, "warning": 30, "warn": 30, "error": 40, "critical": 50}


def level_number(level: str | int) -> int:
    """``"warning"`` -> 30 (a number is returned as it is); an unknown name is a ValueError that
    names it."""
    if isinstance(level, int):
        return level
    number = LEVELS.get(level.lower())
    if number is None:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    return number


#: What structlog imports when it can and guestagent hides while it does (the import fails, as
#: where the module is not installed): ``ssl``, which asyncio imports when it can (about 6 MiB of
#: OpenSSL), and colorama, which structlog.dev takes for colours on Windows (on Linux it writes
#: the same ANSI codes without it) and which imports ctypes where it is installed, as in a pip
#: environment.
STRUCTLOG_HIDES = ("ssl", "colorama")


def import_structlog() -> Any:
    """structlog, imported without loading asyncio, uuid, inspect, ``logging``, OpenSSL or
    colorama.

    The modules of :data:`STRUCTLOG_DEFERS` are stand-ins while structlog is imported (every use
    of one, which structlog makes only inside functions guestagent does not call, imports the
    real one); those of :data:`STRUCTLOG_HIDES` are hidden. Neither stays in ``sys.modules``, so
    a later ``import asyncio`` or ``import ssl`` works as usual (benchmarks/README.md, "What each
    MiB is").
    """
    loaded = sys.modules.get("structlog")
    if loaded is not None:
        return loaded
    hidden = [name for name in STRUCTLOG_HIDES if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # import NAME raises ImportError
    try:
        with deferring(*STRUCTLOG_DEFERS):
            import structlog
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
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


#: syslog priorities (sd-daemon(3): the ``<N>`` prefix journald reads from a stream).
SYSLOG_PRIORITY = {
    "debug": 7,
    "info": 6,
    "warning": 4,
    "warn": 4,
    "error": 3,
    "exception": 3,
    "critical": 2,
}


def stderr_is_journal(environ: Mapping[str, str] | None = None, fd: int = 2) -> bool:
    """True when ``fd`` is the journal's stream: ``$JOURNAL_STREAM`` is ``DEVICE:INODE`` of it.

    systemd sets the variable for a service whose stdout or stderr is connected to the journal;
    a child whose stderr was redirected elsewhere inherits the variable but not the stream, hence
    the comparison (systemd.exec(5), "$JOURNAL_STREAM").
    """
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(fd)
        return (int(device), int(inode)) == (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        return False


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _logfmt_text(value: Any) -> str:
    """A value as logfmt's unquoted text (quoting is left to :func:`_logfmt_quote`)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
        if all(_plain(v) and "," not in _logfmt_text(v) for v in items):
            return ",".join(_logfmt_text(v) for v in items)
    return jsonlib.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def _logfmt_quote(text: str) -> str:
    """Bare when it cannot be misread; else double-quoted with JSON's escapes (one line)."""
    if any(c in ' ="\\' or c < " " or c == "\x7f" for c in text):
        return jsonlib.dumps(text, ensure_ascii=False)
    return text


def logfmt(event: Mapping[str, Any], key_order: tuple[str, ...] = ()) -> str:
    """One logfmt line: the keys of ``key_order`` first (when present), then the rest in order.

    structlog's own LogfmtRenderer is not used: the versions guestagent supports (22.1 on)
    differ in how they escape, and none joins lists or escapes a newline the same way.
    """
    keys = [k for k in key_order if k in event] + [k for k in event if k not in key_order]
    return " ".join(f"{k}={_logfmt_quote(_logfmt_text(event[k]))}" for k in keys)


class LogfmtRenderer:
    """structlog's last processor: the event as one logfmt line."""

    def __init__(self, key_order: tuple[str, ...] = ("timestamp", "level", "event")) -> None:
        self.key_order = key_order

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> str:
        return logfmt(event, self.key_order)


class JournalPriority:
    """Wraps the renderer: the line starts with its syslog priority (``<4>level=warning ...``)."""

    def __init__(self, renderer: Callable[[Any, str, dict[str, Any]], str]) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method: str, event: dict[str, Any]) -> str:
        level = str(event.get("level", method))
        return f"<{SYSLOG_PRIORITY.get(level, 6)}>{self.renderer(logger, method, event)}"


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is at the time of the write (tests swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(
    level: str | int = "info",
    json: bool = False,
    stream: Any | None = None,
    journal: bool | None = None,
) -> None:
    """Set up structlog once for the process: logfmt (default) or JSON lines on stderr.

    ``journal``: lines carry their syslog priority and no timestamp; by default, when stderr is
    the journal's stream (:func:`stderr_is_journal`) and no other ``stream`` is given.
    """
    structlog = import_structlog()
    if journal is None:
        journal = stream is None and stderr_is_journal()

    processors: list[Any] = [
        RepeatFilter(),
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
    ]
    if not journal:
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else LogfmtRenderer()
    )
    if journal:
        renderer = JournalPriority(renderer)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_number(level)),
        logger_factory=structlog.PrintLoggerFactory(file=stream or cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    """A bound structlog logger tagged with the component name; the first one sets up the
    default logging (:func:`configure`) unless structlog was configured already (by
    :func:`configure`, or a test's capture)."""
    structlog = import_structlog()
    if not structlog.is_configured():
        configure()
    return structlog.get_logger().bind(component=name)
