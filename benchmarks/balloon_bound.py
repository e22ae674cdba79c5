"""The least memory any controller could hold on the testbed's workload: a bound, not a policy.

Reads the ``none`` run of one ``balloon_testbed`` invocation (the guest's trace, one snapshot a
second, and the workload's phase log) and integrates over the workload's run the smallest driver
size that still holds what each phase uses:

    need(t) = (driver size - MemTotal) + (MemTotal - MemAvailable) + cache(t) + band

where ``cache(t)`` is Cached in the phases whose page cache is in use (the phase lines that say
``"cache": true``; in old logs without that flag, ``cache`` and ``spike``, which re-reads the
files) and the boot-time Cached elsewhere, and ``band`` is headroom kept on top (0, or
the pressure policy's twice the reserve, 128 MiB in a 1 GiB guest). Such a controller knows the
future, has no lag and pays nothing for reclaim; the ratio of this bound to the ``classic`` run of
the same invocation is what the issue's target (0.75) can be compared with.

    python -m benchmarks.balloon_bound tests/e2e/runs/<run>/balloon-bench

(that command reads the session-4 layout, one workload; ``balloon_testbed`` computes the bound of
every workload itself with :func:`bound_for_run`.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from guestagent.balloon.policy import used_kb
from guestagent.balloon.signals import MemorySignals
from guestagent.balloon.trace import load_trace

MIB_KB = 1024
#: The phases whose page cache is in use (read in the phase, or read again by the next one).
CACHE_PHASES = ("cache", "spike")


def phase_starts(workload_log: str) -> list[tuple[float, str]]:
    """``(t, phase)`` from the workload's JSON lines (``{"phase": ..., "t": ...}``)."""
    out = []
    for line in workload_log.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "phase" in rec and "t" in rec:
            out.append((float(rec["t"]), str(rec["phase"])))
    return out


def cache_phases(workload_log: str) -> tuple[str, ...]:
    """The phases whose lines say ``"cache": true``; the old workload's two when none do."""
    names = []
    for line in workload_log.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("cache") and "phase" in rec:
            names.append(str(rec["phase"]))
    return tuple(names) or CACHE_PHASES


def phase_at(t: float, starts: list[tuple[float, str]]) -> str:
    current = starts[0][1] if starts else ""
    for start, name in starts:
        if t >= start:
            current = name
    return current


def bound_gib_s(trace: list[MemorySignals], starts: list[tuple[float, str]], end_s: float,
                band_kb: int, start_s: float = 0.0,
                cached: tuple[str, ...] = CACHE_PHASES) -> float:
    """The integral of ``need(t)`` over ``[start_s, end_s]`` in GiB x s (rectangles, one per
    snapshot; ``starts``, ``start_s`` and ``end_s`` on the trace's time scale)."""
    if not trace:
        raise ValueError("empty trace")
    total = 0.0
    caches = cache_in_use(trace, starts, cached)
    for snap, nxt, cache in zip(trace, [*trace[1:], None], caches):
        t = snap.timestamp
        if t >= end_s:
            break
        t_next = nxt.timestamp if nxt is not None else end_s
        if t_next <= start_s:
            continue
        dt = min(t_next, end_s) - max(t, start_s)
        gap = (snap.balloon_current_kb or snap.mem_total_kb) - snap.mem_total_kb
        total += (gap + used_kb(snap) + cache + band_kb) * dt
    return total / (1024 * 1024)


def cache_in_use(trace: list[MemorySignals], starts: list[tuple[float, str]],
                 cached: tuple[str, ...] = CACHE_PHASES) -> list[int]:
    """The page cache the bound counts at each snapshot: Cached in a phase of ``cached``, else
    the boot-time Cached (``starts`` on the trace's time scale)."""
    boot_cache = trace[0].cached_kb
    return [snap.cached_kb if phase_at(snap.timestamp, starts) in cached else boot_cache
            for snap in trace]


def workload_marks(workload_log: str, trace_offset: float) -> list[tuple[float, str]]:
    """``(t, phase)`` of the workload's phase lines on the trace's time scale: their
    CLOCK_MONOTONIC ``mono`` less ``trace_offset`` (the trace's 0 on that clock)."""
    marks = []
    for line in workload_log.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "phase" in rec and "mono" in rec:
            marks.append((float(rec["mono"]) - trace_offset, str(rec["phase"])))
    return marks


def bound_for_run(trace: list[MemorySignals], workload_log: str, trace_offset: float,
                  band_kb: int) -> tuple[float, float] | None:
    """(GiB x s, seconds) of the bound over one workload run of ``balloon_testbed``.

    The workload's phase lines carry CLOCK_MONOTONIC (``mono``); the trace's ``timestamp`` 0 is
    at ``trace_offset`` on that clock (the guest's monitor measured it). The window runs from the
    first phase line to the last (``end``, or ``failed``). None without phase lines.
    """
    marks = workload_marks(workload_log, trace_offset)
    if len(marks) < 2 or not trace:
        return None
    start_s, end_s = marks[0][0], marks[-1][0]
    gib_s = bound_gib_s(trace, marks, end_s, band_kb, start_s=start_s,
                        cached=cache_phases(workload_log))
    return gib_s, end_s - start_s


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m benchmarks.balloon_bound tests/e2e/runs/<run>/balloon-bench",
              file=sys.stderr)
        return 2
    run = Path(argv[0])
    trace = load_trace(str(run / "none-0.trace.jsonl")).snapshots
    workload = (run / "none-0.workload").read_text()
    done = [json.loads(line) for line in workload.splitlines() if '"done"' in line]
    end_s = float(done[-1]["run_time_s"])
    starts = phase_starts(workload)
    results = json.loads((run / "results.json").read_text())["results"]
    first = [r for r in results if r.get("repeat", 0) == 0]
    held = {r["policy"]: r["held_gib_s"] for r in first}
    mean = {r["policy"]: r["mean_mib"] for r in first}
    if "classic" not in held:
        print(f"{run}: no classic run to compare with", file=sys.stderr)
        return 1
    classic, classic_mean = held["classic"], mean["classic"]
    print(f"bound from {run} (none's run, {end_s:.0f} s); classic held {classic:.1f} GiB x s, "
          f"mean {classic_mean:.0f} MiB")
    print("  (GiB x s depends on each run's length, which spreads by 20 % under TCG; the mean")
    print("  MiB ratio does not)")
    for band_mib in (0, 128):
        b = bound_gib_s(trace, starts, end_s, band_mib * MIB_KB)
        b_mean = b * 1024 / end_s
        print(f"  bound, band {band_mib:3d} MiB: {b:6.1f} GiB x s ({b / classic:.3f} of classic), "
              f"mean {b_mean:4.0f} MiB ({b_mean / classic_mean:.3f} of classic)")
    for policy in ("none", "classic", "pressure"):
        if policy in held:
            h, m = held[policy], mean[policy]
            print(f"  measured {policy:8}: {h:6.1f} GiB x s ({h / classic:.3f}), "
                  f"mean {m:4.0f} MiB ({m / classic_mean:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
