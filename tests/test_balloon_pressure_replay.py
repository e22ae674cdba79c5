"""Replays of whole traces through the ``pressure`` policy, one per incident its control law
guards against (guestagent/balloon/pressure.py; the rule-by-rule frame replays are in
tests/test_balloon_policy.py).

The traces are those in tests/traces (tuned on) and benchmarks/traces (the Xen 4.17 recording,
held out: only safety is asserted on it, never a memory figure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guestagent.balloon.policy import MIB_KB, PressureConfig, reserve_kb
from guestagent.balloon.trace import Trace, load_trace, simulate

HERE = Path(__file__).resolve().parent
TRACES = sorted((HERE / "traces").glob("*.jsonl"))
HELD_OUT = sorted((HERE.parent / "benchmarks" / "traces").glob("*.jsonl"))
TWO_SPIKES = HERE / "traces" / "synthetic-two-spikes-1g.jsonl"
PHASES = HERE / "traces" / "synthetic-phases-1g.jsonl"
#: A balloon driver slower than the incident's spike (45 MiB/s): every MiB the policy gave back
#: before a spike has to be populated again while the spike runs.
SLOW_DRIVER_KB_PER_S = 24 * MIB_KB


def _shift(trace: Trace, i: int, target_kb: int) -> tuple[int, int]:
    """(MemAvailable, MemFree) of snapshot ``i`` at the simulated size ``target_kb``."""
    snap = trace.snapshots[i]
    recorded = snap.balloon_current_kb or snap.mem_total_kb
    delta = target_kb - recorded
    return snap.mem_available_kb + delta, snap.mem_free_kb + delta


def test_the_second_of_two_spikes_finds_its_memory_still_there() -> None:
    """Seen on Xen 4.17 (issue 12, vm.overcommit_memory=1): the old policy answered a spike (308 ->
    1024 MiB in 15 s), judged it over and gave back 660 MiB within 15 s; a second spike 20 s later
    grew too late and the OOM killer killed the workload. Replayed with a driver slower than the
    spike, the old policy left the second spike 14 snapshots short of memory. No shrink for the
    hold time after a grow: the second spike starts at the ceiling and is never short."""
    trace = load_trace(str(TWO_SPIKES))
    steps = simulate(trace, "pressure", populate_kb_per_s=SLOW_DRIVER_KB_PER_S).steps
    by_t = {int(s.timestamp): s for s in steps}
    assert all(by_t[t].action != "shrink" for t in range(85, 135)), [
        (t, by_t[t].reason) for t in range(85, 135) if by_t[t].action == "shrink"
    ]
    assert by_t[119].target_kb == by_t[119].ceiling_kb
    assert not [s.timestamp for s in steps if s.underprovisioned and s.timestamp >= 100]
    # The first spike after a long idle is short with any policy that gave the idle memory back
    # (what issue 12 item 1, overcommit or swap while ballooned down, is for): not asserted here.


def test_grows_only_on_a_shortage_never_on_stale_trigger_windows() -> None:
    """Seen on Xen 4.17 (d0d76e6): one spike grew a guest three times in 2 s (128 + 256 + 512 MiB)
    on trigger windows that still covered the time before the first grow, while MemFree was
    already 130 and 390 MiB. Every grow in every replay is either a MemAvailable shortage or
    rising demand, or comes while the (simulated) MemFree is under twice the reserve."""
    for path in TRACES:
        trace = load_trace(str(path))
        steps = simulate(trace, "pressure").steps
        for i in range(1, len(steps)):
            if steps[i].action != "grow" or "OOM" in steps[i].reason:
                continue
            reserve = reserve_kb(PressureConfig(), steps[i].ceiling_kb)
            _, free = _shift(trace, i, steps[i - 1].target_kb)
            demand = "MemAvailable" in steps[i].reason or "use grows" in steps[i].reason
            assert demand or free < 2 * reserve, (path.name, steps[i].timestamp, steps[i].reason)


def test_no_probe_while_the_page_cache_is_read() -> None:
    """Seen on Xen 4.17 (3ed0422, the first testbed run): the policy squeezed a page cache while
    it was being read; the cache fell to a third and was read from disk again. In the phases
    trace a 480 MiB cache is read at 4 MiB/s from t = 180 s to 300 s: no shrink then."""
    trace = load_trace(str(PHASES))
    steps = simulate(trace, "pressure").steps
    snaps = trace.snapshots
    for i in range(1, len(steps)):
        reading = snaps[i].cached_kb - snaps[i - 1].cached_kb >= MIB_KB
        assert not (reading and steps[i].action == "shrink"), (snaps[i].timestamp,
                                                                steps[i].reason)
    assert any(s.action == "shrink" for s in steps[300:420])  # and it probes once it stops


@pytest.mark.parametrize("path", [*TRACES, *HELD_OUT], ids=lambda p: p.name)
def test_every_trace_replays_without_a_shortage_and_within_the_floors(path: Path) -> None:
    """Floors and shortage on every trace, the held-out recording included: never under the floor
    or over the ceiling, and never a snapshot whose workload would not have fit."""
    trace = load_trace(str(path))
    for config in (PressureConfig(), PressureConfig(floor_kb=600 * MIB_KB)):
        summary = simulate(trace, "pressure", config).summary
        assert summary is not None
        assert summary.floor_violations == 0 and summary.ceiling_violations == 0
        assert summary.underprovisioned_steps == 0, path.name
        if config.floor_kb and trace.snapshots[0].xs_target_kb:
            assert summary.min_target_kb >= 600 * MIB_KB
