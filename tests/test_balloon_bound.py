"""benchmarks/balloon_bound.py: the least-memory bound integrated from a recorded none run."""

from __future__ import annotations

import pytest

from benchmarks.balloon_bound import bound_for_run, bound_gib_s, phase_at, phase_starts
from guestagent.balloon.signals import MemorySignals

MIB = 1024  # KiB


def snap(t: float, used_mib: int, cached_mib: int) -> MemorySignals:
    total = 900 * MIB
    return MemorySignals(
        timestamp=t, mem_total_kb=total, mem_free_kb=0, mem_available_kb=total - used_mib * MIB,
        cached_kb=cached_mib * MIB, committed_as_kb=0, swap_total_kb=0, swap_free_kb=0,
        some_avg10=0.0, some_avg60=0.0, some_avg300=0.0, some_total_us=0, full_avg10=0.0,
        full_avg60=0.0, full_avg300=0.0, full_total_us=0, refaults=0, refault_anon=None,
        refault_file=None, pswpin=0, oom_kill=None, balloon_target_kb=None,
        balloon_current_kb=1024 * MIB, totalreserve_kb=None, xs_target_kb=None,
        xs_static_max_kb=None,
    )


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


def test_bound_for_run_uses_the_workloads_clock_and_its_cache_flags() -> None:
    # The trace's timestamp 0 is at monotonic 500.0; the workload ran from 501.0 to 504.0 with
    # its page cache in use during "scan" only.
    trace = [snap(t, 100, 10 if t < 2 else 200) for t in range(6)]
    log = ('{"mono": 501.0, "phase": "anon", "t": 0.0}\n'
           '{"cache": true, "mono": 502.0, "phase": "scan", "t": 1.0}\n'
           '{"mono": 503.0, "phase": "tail", "t": 2.0}\n'
           '{"mono": 504.0, "phase": "end", "t": 3.0}\n'
           '{"summary": true, "done": true}\n')
    got = bound_for_run(trace, log, 500.0, 0)
    assert got is not None
    gib_s, seconds = got
    assert seconds == pytest.approx(3.0)
    # t 1..2 anon (boot cache 10), 2..3 scan (cache 200), 3..4 tail (boot cache again).
    assert gib_s * 1024 == pytest.approx((124 + 100 + 10) + (124 + 100 + 200) + (124 + 100 + 10))
    assert bound_for_run(trace, "", 500.0, 0) is None
