"""Errors that reach the operator as one clear line.

Every error raised for bad input names where the input came from (a file, a hypercall, a xenstore
path, a config key) and the offending value, so that the CLI and the daemon can print a single
line instead of a traceback.
"""

from __future__ import annotations

_MAX_VALUE_CHARS = 80


def show_value(value: object) -> str:
    """A short, printable rendering of a bad value for a log line: quoted, with control
    characters and non-ASCII escaped exactly once (``ascii``)."""
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    if len(text) > _MAX_VALUE_CHARS:
        return ascii(text[:_MAX_VALUE_CHARS]) + f"...({len(text)} chars)"
    return ascii(text)


class GuestAgentError(Exception):
    """Base of every error guestagent reports to the operator."""


class InputError(GuestAgentError):
    """A value read from the host (sysfs, procfs, hypercall, xenstore, config) is unusable."""

    def __init__(self, source: str, reason: str, value: object | None = None) -> None:
        self.source = source
        self.reason = reason
        self.value = value
        shown = "" if value is None else f" (got {show_value(value)})"
        super().__init__(f"{source}: {reason}{shown}")


class ReadFailedError(InputError):
    """An existing file could not be read (EIO, EBUSY...); ``err`` is the errno, so a caller
    can tell a passing refusal from a lasting one."""

    def __init__(self, source: str, err: int, reason: str) -> None:
        super().__init__(source, f"read failed: {reason}")
        self.err = err


class MissingInputError(InputError):
    """The source does not exist (a missing sysfs file, an absent xenstore node)."""

    def __init__(self, source: str, reason: str = "does not exist") -> None:
        super().__init__(source, reason)
