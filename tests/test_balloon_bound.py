"""benchmarks/balloon_bound.py: the least-memory bound integrated from a recorded none run."""

from __future__ import annotations

import pytest

from benchmarks.balloon_bound import bound_gib_s, phase_at, phase_starts

MIB = 1024  # KiB


def snap(t: float, used_mib: int, cached_mib: int) -> dict[str, float]:
    total = 900 * MIB
    return {
        "timestamp": t,
        "mem_total_kb": total,
        "mem_available_kb": total - used_mib * MIB,
        "cached_kb": cached_mib * MIB,
        "balloon_current_kb": 1024 * MIB,
    }


def test_phases_come_from_the_workload_log() -> None:
    log = '{"phase": "grow", "t": 0.0}\n{"phase": "cache", "t": 2.0}\n{"done": true, "t": 9}\n'
    starts = phase_starts(log)
    assert starts == [(0.0, "grow"), (2.0, "cache")]
    assert phase_at(1.0, starts) == "grow" and phase_at(2.5, starts) == "cache"


def test_the_bound_counts_the_cache_only_in_the_phases_that_read_it() -> None:
    # Gap 124 MiB (1024 - 900); 1 s of grow (used 100, boot cache 10), 1 s of cache (used 100,
    # cache 200), 1 s of idle (used 100, cache 200 but cold: the boot cache counts).
    trace = [snap(0, 100, 10), snap(1, 100, 200), snap(2, 100, 200)]
    starts = [(0.0, "grow"), (1.0, "cache"), (2.0, "idle")]
    mib_s = bound_gib_s(trace, starts, 3.0, band_kb=0) * 1024
    assert mib_s == pytest.approx((124 + 100 + 10) + (124 + 100 + 200) + (124 + 100 + 10))
    with_band = bound_gib_s(trace, starts, 3.0, band_kb=128 * MIB) * 1024
    assert with_band == pytest.approx(mib_s + 3 * 128)
    # The window ends with the workload: a snapshot past it adds nothing.
    assert bound_gib_s([*trace, snap(3, 900, 0)], starts, 3.0, 0) * 1024 == pytest.approx(mib_s)
