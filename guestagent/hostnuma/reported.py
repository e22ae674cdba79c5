"""The guest's own NUMA figures (its numa job's ``data/guestagent/numa``), read as hostile input.

The guest owns ``data/``: anything can be there. Only known keys are read (a flood of other keys
costs nothing), at most :data:`MAX_VNODES` vnodes, each value at most :data:`MAX_VALUE_BYTES`
bytes of printable ASCII that must parse as a finite number in its range; the empty string is
the schema's "unknown". One bad value discards the guest's whole report (one log line says
which key and value), so a half-forged report is never mixed with true figures. Pure: the
collector hands in the raw bytes it read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from guestagent.errors import InputError
from guestagent.hostnuma.model import GuestReported

SECTION = "data/guestagent/numa"
MAX_VNODES = 32  # the guest side's own bound (docs/NUMA-HEALTH.md)
MAX_VALUE_BYTES = 24
MAX_UPDATED = 1 << 40  # Unix seconds: year 36812


def keys_for(nr_vnodes: int) -> list[str]:
    """The per-vnode keys to read once ``nr-vnodes`` is known, relative to :data:`SECTION`."""
    return [f"vnodes/{v}/{name}" for v in range(nr_vnodes) for name in ("local-pct",
                                                                         "cpu-busy-pct")]


def _text(raw: bytes | None, source: str) -> str | None:
    """The value as text; None for a missing key or the empty string (unknown)."""
    if raw is None:
        return None
    if len(raw) > MAX_VALUE_BYTES:
        raise InputError(source, f"longer than {MAX_VALUE_BYTES} bytes", raw[:40])
    if not all(0x20 < b < 0x7F for b in raw):
        raise InputError(source, "not printable ASCII", raw[:40])
    return raw.decode("ascii") or None


def number(raw: bytes | None, source: str, low: float, high: float) -> float | None:
    """A finite number in ``[low, high]``, or None (unknown)."""
    text = _text(raw, source)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(source, "not a number", text) from None
    if not math.isfinite(value) or not low <= value <= high:
        raise InputError(source, f"expected {low:g}..{high:g}", text)
    return value


def integer(raw: bytes | None, source: str, low: int, high: int) -> int | None:
    text = _text(raw, source)
    if text is None:
        return None
    if not text.isdigit():
        raise InputError(source, "not a whole number", text)
    value = int(text)
    if not low <= value <= high:
        raise InputError(source, f"expected {low}..{high}", text)
    return value


def parse_nr_vnodes(raw: bytes | None, base: str, expected: int) -> int | None:
    """``nr-vnodes``: None when the guest publishes nothing; the toolstack's count otherwise
    (a guest claiming another count is refused: its figures would not match its vnodes)."""
    nr = integer(raw, f"{base}/nr-vnodes", 1, MAX_VNODES)
    if nr is not None and nr != expected:
        raise InputError(f"{base}/nr-vnodes", f"the toolstack configured {expected} vnodes", nr)
    return nr


def parse_reported(values: Mapping[str, bytes | None], nr_vnodes: int, base: str) -> GuestReported:
    """The validated report from the raw values of ``updated`` and :func:`keys_for`'s keys."""
    updated = integer(values.get("updated"), f"{base}/updated", 0, MAX_UPDATED)
    local: dict[int, float | None] = {}
    busy: dict[int, float | None] = {}
    for v in range(nr_vnodes):
        key = f"vnodes/{v}"
        local[v] = number(values.get(f"{key}/local-pct"), f"{base}/{key}/local-pct", 0, 100)
        busy[v] = number(values.get(f"{key}/cpu-busy-pct"), f"{base}/{key}/cpu-busy-pct", 0, 100)
    return GuestReported(local_pct=local, cpu_busy_pct=busy, updated=updated)
