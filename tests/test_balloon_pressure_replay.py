"""Replays of whole traces through the ``pressure`` policy, one per incident its control law
guards against (guestagent/balloon/pressure.py; the rule-by-rule frame replays are in
tests/test_balloon_policy.py).

The traces are those in tests/traces (tuned on) and benchmarks/traces (the Xen 4.17 recording,
held out: only safety is asserted on it, never a memory figure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guestagent.balloon.policy import MIB_KB, PressureConfig, reserve_kb
from guestagent.balloon.pressure import demand_kb
from guestagent.balloon.signals import MemorySignals
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
    spike, the old policy left the second spike 14 snapshots short of memory. The burst
    allowance (the first spike's growth within 10 s) is held for the hold time, and every probe
    stops at the line R + B, B the part of such a burst that arrives before a grow lands (its
    fastest rise times one decision interval and ``populate_s``, at most the whole burst): the
    second spike starts with that room and is never short (no shrink for 5 s after a grow, then
    probes down to that line)."""
    cfg = PressureConfig()
    trace = load_trace(str(TWO_SPIKES))
    steps = simulate(trace, "pressure", populate_kb_per_s=SLOW_DRIVER_KB_PER_S).steps
    snaps = trace.snapshots
    demand = [s.mem_total_kb - s.mem_available_kb for s in snaps]
    first = [i for i in range(len(snaps)) if snaps[i].timestamp < 100]
    whole = max(demand[i] - min(demand[j] for j in range(max(0, i - 10), i + 1)) for i in first)
    rate = max((demand[i] - demand[i - 1]) / (snaps[i].timestamp - snaps[i - 1].timestamp)
               for i in first[1:])
    burst = min(whole, int(rate * (cfg.interval_s + cfg.populate_s)))
    assert 0 < burst < whole  # the spike takes longer than one interval to arrive
    reserve = reserve_kb(cfg, steps[0].ceiling_kb)
    assert not [s.timestamp for s in steps if s.underprovisioned and s.timestamp >= 100]
    # The line between the spikes, with a driver that follows at once (the slow driver leaves the
    # first spike short, and the replay's MemAvailable, clamped at 0, then understates B).
    at_once = simulate(trace, "pressure").steps
    between = [i for i, s in enumerate(at_once) if 85 <= s.timestamp < 120]
    assert any(at_once[i].action == "shrink" for i in between)
    for i in between:
        avail, _ = _shift(trace, i, at_once[i].target_kb)
        assert avail >= reserve + burst, (at_once[i].timestamp, avail, reserve + burst)
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


#: The phases trace's one burst the default reserve does not cover (next test).
UNSEEN_BURST = {PHASES.name: 1}


@pytest.mark.parametrize("path", [*TRACES, *HELD_OUT], ids=lambda p: p.name)
def test_every_trace_replays_without_a_shortage_and_within_the_floors(path: Path) -> None:
    """Floors and shortage on every trace, the held-out recording included: never under the floor
    or over the ceiling, and never a snapshot whose workload would not have fit, but for the
    synthetic burst :func:`test_a_first_burst_faster_than_the_reserve_waits_one_decision` is
    about (none on a recording made on Xen)."""
    trace = load_trace(str(path))
    unseen = UNSEEN_BURST.get(path.name, 0)
    for config, short in ((PressureConfig(), unseen), (PressureConfig(floor_kb=600 * MIB_KB), 0)):
        summary = simulate(trace, "pressure", config).summary
        assert summary is not None
        assert summary.floor_violations == 0 and summary.ceiling_violations == 0
        assert summary.underprovisioned_steps == short, path.name
        if config.floor_kb and trace.snapshots[0].xs_target_kb:
            assert summary.min_target_kb >= 600 * MIB_KB


def test_a_first_burst_faster_than_the_reserve_waits_one_decision() -> None:
    """What the default reserve (32 MiB since 2026-12-07; 64 before) gives up. The phases trace
    is idle for 420 s, then demand jumps by 90 MiB in one second, and again: a burst never seen
    before and faster than 2R per decision. The law had shrunk the guest to its line, 2R above
    demand; for that one second the burst is short (open loop: on Xen the allocation guard's
    zram takes it and the next decision grows by the shortage; the whole suite ran without a
    failure at 32 MiB, benchmarks/README.md, 2026-12-07). With ``reserve_mb = 64`` no snapshot
    is short, and the snapshot after the jump is covered either way."""
    trace = load_trace(str(PHASES))
    steps = simulate(trace, "pressure").steps
    short = [i for i, s in enumerate(steps) if s.underprovisioned]
    assert [trace.snapshots[i].timestamp for i in short] == [420.0]
    jump = demand_kb(trace.snapshots[420]) - demand_kb(trace.snapshots[419])
    assert jump > 2 * reserve_kb(PressureConfig(), steps[0].ceiling_kb)
    wider = simulate(trace, "pressure", PressureConfig(reserve_min_kb=64 * MIB_KB)).summary
    assert wider is not None and wider.underprovisioned_steps == 0


#: The tuned half of the suite recorded on Xen 4.17 without ballooning (``none``: the workload's
#: own demand, undisturbed), runs 20261204-212118-29859 and 20261204-221850-5993
#: (benchmarks/README.md). Tuned on; the held-out workloads' traces are not in this directory.
BENCH = HERE / "traces" / "balloon-bench-20261204"
BENCH_TRACES = sorted(BENCH.glob("*.none.*.jsonl"))


def _every(trace: Trace, n: int) -> list[MemorySignals]:
    """One snapshot in ``n``: the recording is at 1 s, an agent deciding every ``n`` seconds
    (``interval_seconds``; 1 by default) sees these (replayed with :func:`_at`)."""
    return trace.snapshots[::n]


def _at(n: int, **changes: Any) -> PressureConfig:
    """The default law at a decision every ``n`` seconds (its reserve scales with it)."""
    return PressureConfig(interval_s=float(n), **changes)


@pytest.mark.parametrize("path", BENCH_TRACES, ids=lambda p: p.name)
def test_the_tuned_bench_traces_replay_without_a_shortage(path: Path) -> None:
    """Every rule together on the tuned half of the suite: no snapshot short of memory with a
    driver that follows at once, at a decision every second (the default) or every 5 s (with
    the reserve that interval scales to)."""
    trace = load_trace(str(path))
    for n in (1, 5):
        snaps = _every(trace, n)
        summary = simulate(snaps, "pressure", _at(n)).summary
        assert summary is not None
        assert summary.underprovisioned_steps == 0, (path.name, n)
        assert summary.floor_violations == summary.ceiling_violations == 0


def test_sharp_spikes_keep_room_for_a_spike_not_the_ceiling() -> None:
    """sharp-spikes on Xen 4.17 (runs 20261204-212118-29859 and 20261204-221850-5993): the law
    then grew the guest to its ceiling in the first 256 MiB spike (the line R + B restored on top
    of the spike in progress) and a 60 s holdoff kept it there: 941-944 MiB mean, 1.37-1.39x
    `classic`. Replayed at a decision every second (the default) and every 5 s, the line
    R + max(R, B - g) and the 5 s holdoff after a grow hold less than with a 60 s holdoff and
    less than with the 15 s one of run 20261205-051645-12226 (which kept a spike's grow for 10 s
    after the spike had ended), and no snapshot is short. (At a 5 s decision with R = 64 MiB: the
    law of 2026-12-04 held 1.17-1.31x `classic` on this replay, that of 051645 1.07-1.08x, the
    law of 2026-12-05 1.00-1.02x. Since 2026-12-07, R = 32 MiB at a decision a second: 0.73x;
    96 MiB at 5 s: 1.06-1.07x.)"""
    for path in sorted(BENCH.glob("sharp-spikes.none.*.jsonl")):
        for n in (1, 5):
            snaps = _every(load_trace(str(path)), n)
            new = simulate(snaps, "pressure", _at(n)).summary
            held = {s: simulate(snaps, "pressure", config=_at(n, grow_holdoff_s=s)).summary
                    for s in (15.0, 60.0)}
            classic = simulate(snaps, "classic").summary
            assert new is not None and classic is not None
            assert new.underprovisioned_steps == 0
            for holdoff, summary in held.items():
                assert summary is not None
                assert new.memory_held_gib_s < summary.memory_held_gib_s, (path.name, n, holdoff)
            # At the default decision a second (0.73x `classic` on these two recordings); at 5 s
            # the reserve is 3x (96 MiB) and the replay holds 1.06-1.07x `classic`.
            if n == 1:
                assert new.memory_held_gib_s < 1.05 * classic.memory_held_gib_s, (path.name, n)


def test_a_probe_while_use_rises_keeps_the_rise_above_the_line() -> None:
    """2026-12-05: with every probe held while use rose by 1 MiB/s or more, the tuned half
    replayed at 5 s kept each workload's start near 3/4 of the ceiling while use crept up
    (anon-grow-shrink 0.93-0.95x `classic`). Now a probe while use rises stops at the headroom
    line plus 30 s of the rise (``rising_room_s``); every such shrink leaves at least 2R plus that
    above demand, no snapshot is short, and the workloads that start with a slow rise hold less
    than with the hold (a probe line of 10^6 s of the rise is the old hold)."""
    cfg = _at(5)
    hold = _at(5, rising_room_s=1e6)
    probes_while_rising = 0
    for path in BENCH_TRACES:
        snaps = _every(load_trace(str(path)), 5)
        steps = simulate(snaps, "pressure", cfg).steps
        reserve = reserve_kb(cfg, steps[0].ceiling_kb)
        for i in range(1, len(steps)):
            rate = ((demand_kb(snaps[i]) - demand_kb(snaps[i - 1]))
                    / (snaps[i].timestamp - snaps[i - 1].timestamp))
            if steps[i].action != "shrink" or rate < cfg.demand_growth_kb_per_s:
                continue
            probes_while_rising += 1
            recorded = snaps[i].balloon_current_kb or snaps[i].mem_total_kb
            after = snaps[i].mem_available_kb + steps[i].target_kb - recorded
            assert after >= 2 * reserve + int(rate * cfg.rising_room_s), (path.name, i)
        new = simulate(snaps, "pressure", cfg).summary
        old = simulate(snaps, "pressure", hold).summary
        assert new is not None and old is not None and new.underprovisioned_steps == 0
        if path.name.startswith("anon-grow-shrink"):
            assert new.memory_held_gib_s < 0.95 * old.memory_held_gib_s, path.name
    assert probes_while_rising > 0


@pytest.mark.parametrize("path", [*BENCH_TRACES, TWO_SPIKES], ids=lambda p: p.name)
def test_no_grow_sends_a_slow_driver_further_down(path: Path) -> None:
    """2026-12-05 afternoon: replayed with a 24 MiB/s driver at a decision every second, the ramp
    of `anon-grow-shrink` met a "grow" to 516 MiB while the driver, still giving back memory for
    an earlier shrink, held 543 MiB (212118: 510 against 519 MiB). A grow is counted from the
    driver's size: no grow target is under the size the simulated driver has reached."""
    for n in (1, 5):
        snaps = _every(load_trace(str(path)), n)
        steps = simulate(snaps, "pressure", populate_kb_per_s=SLOW_DRIVER_KB_PER_S).steps
        current = snaps[0].balloon_current_kb or snaps[0].mem_total_kb
        target: int | None = None
        for i, (snap, st) in enumerate(zip(snaps, steps)):
            if target is not None:
                dt = snap.timestamp - snaps[i - 1].timestamp
                move = int(SLOW_DRIVER_KB_PER_S * dt)
                current = max(target, current - move) if target < current else min(
                    target, current + move)
            if st.action == "grow":
                assert st.target_kb >= min(current, st.ceiling_kb), (path.name, n, snap.timestamp)
            target = st.target_kb
