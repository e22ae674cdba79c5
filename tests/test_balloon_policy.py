"""Balloon policies: classic against hand-computed section 5.2 values; pressure behaviour;
floors and ceilings never crossed on generated signal sequences (hypothesis)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guestagent.balloon.policy import (
    GIB_KB,
    MIB_KB,
    ClassicConfig,
    Decision,
    NoneConfig,
    PolicyConfig,
    PolicyState,
    PressureConfig,
    classic_floor_pages,
    classic_reserved_mb,
    classic_target_pages,
    decide,
    decide_classic,
    decide_pressure,
    default_config,
    hard_minimum_kb,
    limits,
)
from guestagent.balloon.pressure import (
    burst_allowance,
    burst_room_kb,
    headroom_line_kb,
    hold_s,
    observe_demand,
    observe_populate,
    observe_release,
    peak_rate_kb_s,
    reserve_kb,
)
from guestagent.balloon.signals import MemorySignals
from guestagent.errors import InputError

STATIC_MAX = GIB_KB
OFFSET = 50_000  # driver current_kb - MemTotal in a 1 GiB PV guest


def snap(t: float = 0.0, size_kb: int = STATIC_MAX, **kw: Any) -> MemorySignals:
    """A 1 GiB PV guest's snapshot at driver size ``size_kb``; keywords override fields."""
    mem_total = size_kb - OFFSET
    base: dict[str, Any] = dict(
        timestamp=t,
        mem_total_kb=mem_total,
        mem_free_kb=mem_total // 2,
        mem_available_kb=mem_total - 200 * MIB_KB,
        cached_kb=100 * MIB_KB,
        committed_as_kb=400 * MIB_KB,
        swap_total_kb=0,
        swap_free_kb=0,
        some_avg10=0.0,
        some_avg60=0.0,
        some_avg300=0.0,
        some_total_us=1_000_000,
        full_avg10=0.0,
        full_avg60=0.0,
        full_avg300=0.0,
        full_total_us=500_000,
        refaults=1000,
        refault_anon=0,
        refault_file=1000,
        pswpin=0,
        oom_kill=0,
        balloon_target_kb=size_kb,
        balloon_current_kb=size_kb,
        totalreserve_kb=9820,
        xs_target_kb=STATIC_MAX,
        xs_static_max_kb=STATIC_MAX,
        psi_trigger_fired=False,
    )
    base.update(kw)
    return MemorySignals(**base)


def follow_size(s: MemorySignals, d: Decision, kb_per_s: int | None = None) -> MemorySignals:
    """The next snapshot as the driver would show it after reaching ``d.target_kb`` (or, with
    ``kb_per_s``, one second later: moved toward it by at most that much, either way).

    Like the real driver, it keeps whole pages: a target in KiB reads back rounded down.
    """
    target = d.target_kb - d.target_kb % 4
    current = s.balloon_current_kb or s.mem_total_kb
    moved = target
    if kb_per_s is not None:
        moved = max(target, current - kb_per_s) if target < current else min(target,
                                                                              current + kb_per_s)
    delta = moved - current
    return replace(
        s,
        mem_total_kb=s.mem_total_kb + delta,
        mem_available_kb=max(0, s.mem_available_kb + delta),
        mem_free_kb=max(0, s.mem_free_kb + delta),
        balloon_target_kb=target,
        balloon_current_kb=moved,
    )


# --- limits --------------------------------------------------------------------------------------


def test_hard_minimum() -> None:
    assert hard_minimum_kb(GIB_KB) == 256 * MIB_KB
    assert hard_minimum_kb(8 * GIB_KB) == 512 * MIB_KB  # static-max / 16
    assert hard_minimum_kb(0) == 256 * MIB_KB


def test_configured_floor_cannot_go_under_the_hard_minimum() -> None:
    low = limits(snap(), PolicyState(), PressureConfig(floor_kb=64 * MIB_KB))
    assert low.floor_kb == 256 * MIB_KB
    high = limits(snap(), PolicyState(), PressureConfig(floor_kb=600 * MIB_KB))
    assert high.floor_kb == 600 * MIB_KB


def test_ceiling_is_the_smaller_toolstack_value_minus_offset() -> None:
    lim = limits(snap(xs_target_kb=768 * MIB_KB), PolicyState(), PressureConfig())
    assert (lim.ceiling_kb, lim.ceiling_source) == (768 * MIB_KB, "memory/target")
    lim = limits(snap(), PolicyState(), PressureConfig(toolstack_offset_kb=8 * MIB_KB))
    assert lim.ceiling_kb == STATIC_MAX - 8 * MIB_KB


def test_ceiling_without_xenstore() -> None:
    s = snap(xs_target_kb=None, xs_static_max_kb=None, balloon_target_kb=900 * MIB_KB)
    assert limits(s, PolicyState(), PressureConfig()).ceiling_kb == 900 * MIB_KB
    lim = limits(s, PolicyState(), PressureConfig(ceiling_kb=700 * MIB_KB))
    assert lim.ceiling_kb == 700 * MIB_KB
    lim = limits(s, PolicyState(initial_target_kb=1000 * MIB_KB), PressureConfig())
    assert lim.ceiling_kb == 1000 * MIB_KB


def test_floor_never_above_a_small_ceiling() -> None:
    lim = limits(snap(xs_target_kb=200 * MIB_KB), PolicyState(), PressureConfig())
    assert lim.floor_kb == lim.ceiling_kb == 200 * MIB_KB


# --- classic: the kernel's arithmetic (reference section 5.2) -------------------------------------


def test_classic_shrinks_an_eighth_of_the_gap() -> None:
    # 1 GiB PV guest: MemTotal 998576 kB = 249644 pages, Committed_AS 412656 kB = 103164 pages,
    # totalreserve 2455 pages, reserved_mb = PAGES2MB(249644 / 10) = 24964 >> 8 = 97.
    assert classic_reserved_mb(998576) == 97
    # goal = 103164 + 2455 + 97 * 256 = 130451; gap = 249644 - 130451 = 119193; / 8 = 14899
    # floor: useful = 262144 - 2455 = 259689 >= 512 MiB ->
    #        2455 + 99 * 256 + ((259689 - 25344) >> 5) = 2455 + 25344 + 7323 = 35122
    assert classic_target_pages(249644, 103164, 2455, 97, 262144) == (234745, 130451, 35122)


def test_classic_grows_to_the_goal_at_once() -> None:
    # goal = 150000 + 2455 + 24832 = 177287 > cur: uphysteresis 1 jumps straight to it.
    assert classic_target_pages(100000, 150000, 2455, 97, 262144)[0] == 177287
    # uphysteresis 2 closes half the gap: 100000 + 77287 // 2
    assert classic_target_pages(100000, 150000, 2455, 97, 262144, uphysteresis=2)[0] == 138643


def test_classic_no_change_at_the_goal() -> None:
    assert classic_target_pages(130451, 103164, 2455, 97, 262144)[0] == 130451


@pytest.mark.parametrize(
    "max_pfn, min_usable_mb, floor",
    [
        (2455 + 3000, 0, 2455 + 3000),  # useful < 16 MiB: floor = max_pfn, don't balloon
        (2455 + 10000, 0, 2455 + 4096 + (10000 - 4096) // 2),  # < 64 MiB
        (2455 + 100000, 0, 2455 + 10240 + (100000 - 10240) // 8),  # < 512 MiB
        (262144, 0, 35122),  # >= 512 MiB
        (262144, 200, 2455 + 200 * 256),  # selfballoon_min_usable_mb
    ],
)
def test_classic_piecewise_floor(max_pfn: int, min_usable_mb: int, floor: int) -> None:
    assert classic_floor_pages(max_pfn, 2455, min_usable_mb) == floor


def test_classic_floor_applies() -> None:
    # Committed tiny: the goal is far below the floor, so tgt = floor.
    tgt, goal, floor = classic_target_pages(40000, 100, 2455, 97, 262144, downhysteresis=1)
    assert goal < floor and tgt == floor == 35122


def test_classic_decision_in_driver_units() -> None:
    d = decide_classic(snap(committed_as_kb=412656), PolicyState(), ClassicConfig())
    # tgt 234745 pages = 938980 kB of MemTotal, + current 1048576 - MemTotal 998576
    assert d.target_kb == 234745 * 4 + OFFSET == 988980
    assert d.action == "shrink" and "goal 521804 KiB" in d.reason


def test_classic_ticks_every_interval_and_fixes_reserved_at_init() -> None:
    cfg = ClassicConfig()
    s0 = snap(0.0)
    d0 = decide_classic(s0, PolicyState(), cfg)
    assert d0.new_state.reserved_kb == 97 * MIB_KB
    d1 = decide_classic(follow_size(replace(s0, timestamp=3.0), d0), d0.new_state, cfg)
    assert d1.action == "hold" and d1.target_kb == d0.target_kb
    s2 = follow_size(replace(s0, timestamp=5.0), d0)
    d2 = decide_classic(s2, d1.new_state, cfg)
    assert d2.action == "shrink" and d2.target_kb < d0.target_kb
    assert d2.new_state.reserved_kb == 97 * MIB_KB  # not recomputed from the smaller MemTotal


def test_classic_never_exceeds_the_ceiling() -> None:
    # A huge Committed_AS wants more than the toolstack gives: capped, and the reason says so.
    s = snap(committed_as_kb=4 * GIB_KB, xs_target_kb=768 * MIB_KB, size_kb=768 * MIB_KB)
    d = decide_classic(s, PolicyState(), ClassicConfig())
    assert d.target_kb == 768 * MIB_KB and "capped at the ceiling" in d.reason


# --- pressure -----------------------------------------------------------------------------------
#
# One test per rule of the control law (guestagent/balloon/pressure.py), fed as a replay of
# snapshot frames one second apart, with the incident the rule guards against in its docstring.
# The replays of whole traces are in tests/test_balloon_pressure_replay.py.

#: The reserve the frames below are written for: each frame tests a rule of the law, with
#: values placed against R = 64 MiB (``reserve_mb = 64``; the default is 32 MiB since 2026-12-07,
#: whose own replays are tests/test_balloon_pressure_replay.py's).
R = 64 * MIB_KB


def law(**changes: Any) -> PressureConfig:
    """The pressure policy's configuration with the frames' reserve R."""
    return PressureConfig(**{"reserve_min_kb": R, **changes})


def test_the_default_reserve_scales_with_the_answer_time_and_the_ceiling() -> None:
    """R by default: 32 MiB at a decision a second (a grow lands after the interval plus
    ``populate_s``, 2 s); a slower decision waits longer, so 96 MiB at 5 s (6 s); 3 % of the
    ceiling once that is larger; ``reserve_mb`` sets the least at a decision a second."""
    gib = GIB_KB
    assert reserve_kb(PressureConfig(), gib) == 32 * MIB_KB
    assert reserve_kb(PressureConfig(interval_s=5.0), gib) == 96 * MIB_KB
    assert reserve_kb(PressureConfig(interval_s=0.5), gib) == 32 * MIB_KB
    assert reserve_kb(PressureConfig(), 4 * gib) == int(4 * gib * 0.03)
    assert reserve_kb(PressureConfig(reserve_min_kb=64 * MIB_KB), gib) == 64 * MIB_KB
    assert reserve_kb(PressureConfig(reserve_min_kb=64 * MIB_KB, interval_s=5.0), gib) == \
        192 * MIB_KB


def run_policy(
    config: PolicyConfig, frames: list[dict[str, Any]], start: MemorySignals | None = None
) -> list[Decision]:
    """Feed snapshots one second apart, letting the simulated driver follow each decision."""
    def frame(i: int, kw: dict[str, Any]) -> Callable[[MemorySignals], MemorySignals]:
        return lambda s: replace(s, **{"timestamp": float(i), "psi_trigger_fired": False, **kw})

    return drive(config, start or snap(), [frame(i, kw) for i, kw in enumerate(frames)])


def drive(config: PolicyConfig, start: MemorySignals,
          frames: list[Callable[[MemorySignals], MemorySignals]]) -> list[Decision]:
    """Each frame makes the next snapshot from the last (after the driver followed)."""
    s, state, out = start, PolicyState(), []
    for frame in frames:
        s = frame(s)
        d = decide(s, state, config)
        out.append(d)
        state = d.new_state
        s = follow_size(s, d)
    return out


def test_pressure_shrinks_in_bounded_steps_when_quiet() -> None:
    """Probe: small steps while quiet, at most 1/16 of the ceiling of page cache per step and one
    step per 5 s, so reclaim shows in PSI and refaults before the next one."""
    cfg = law()
    ds = run_policy(cfg, [{}] * 60, start=snap(mem_free_kb=100 * MIB_KB))
    shrinks = [d for d in ds if d.action == "shrink"]
    assert shrinks, "a quiet guest must shrink"
    for d in shrinks:
        assert 0 < d.previous_kb - d.target_kb <= 64 * MIB_KB
    times = [i for i, d in enumerate(ds) if d.action == "shrink"]
    assert all(b - a >= cfg.shrink_interval_s for a, b in zip(times, times[1:]))
    assert all(d.target_kb >= d.floor_kb for d in ds)


def test_a_probe_may_follow_at_every_decision_when_the_probe_interval_is_0() -> None:
    """``probe_interval_seconds = 0``: the same quiet guest is probed at consecutive decisions,
    and comes down further in the same time than at one probe per 5 s."""
    quiet = [{}] * 30
    start = snap(mem_free_kb=100 * MIB_KB)
    every = run_policy(law(shrink_interval_s=0.0), quiet, start=start)
    paced = run_policy(law(), quiet, start=start)
    times = [i for i, d in enumerate(every) if d.action == "shrink"]
    assert any(b - a == 1 for a, b in zip(times, times[1:])), times
    assert every[-1].target_kb < paced[-1].target_kb
    assert all(d.target_kb >= d.floor_kb for d in every)


def test_probe_step_is_proportional_to_the_distance_from_the_target() -> None:
    """Senpai's law: the step shrinks as the pressure nears the target, and stops at it."""
    cfg = law()
    steps = []
    for avg10 in (0.0, 0.05, 0.1, 0.15):
        d = decide_pressure(snap(some_avg10=avg10, mem_free_kb=100 * MIB_KB), PolicyState(), cfg)
        steps.append(d.previous_kb - d.target_kb)
    assert steps[0] > steps[1] > steps[2] >= 0, steps
    assert steps[0] == 64 * MIB_KB  # 1/4 of the room, capped at 1/16 of the ceiling
    assert steps[1] == 48 * MIB_KB  # x (1 - 0.05 / 0.2)
    d = decide_pressure(snap(some_avg10=0.2, mem_free_kb=100 * MIB_KB), PolicyState(), cfg)
    assert d.action == "hold" and "0.20 % not below target" in d.reason


def test_targets_are_whole_pages_so_the_driver_read_back_is_not_an_override() -> None:
    """Seen on Xen 4.17: a shrink step of 58686 KiB was written as 662210 KiB, the driver read it
    back as 662208 KiB, and the policy took that for a change behind its back (follow, then a
    30 s holdoff). An available size that is not a whole number of pages provokes such a step."""
    for policy in ("pressure", "classic"):
        ds = run_policy(default_config(policy), [{"mem_available_kb": 901_234}] * 200)
        assert all(d.target_kb % 4 == 0 for d in ds), policy
        assert not [d for d in ds if d.action == "follow"], policy
    cfg = law()
    d = decide(snap(0.0), PolicyState(), cfg)
    state = replace(d.new_state, last_target_kb=662_210)
    d2 = decide(snap(1.0, size_kb=662_208), state, cfg)
    assert d2.action != "follow", d2.reason


def test_free_memory_is_given_back_faster_but_not_past_the_headroom_line() -> None:
    """Free memory holds no working set and its return causes no reclaim: 3/4 of what lies free
    above the headroom line per step, at most 1/4 of the ceiling (a fresh idle 1 GiB guest gives
    its 860 MiB back in a minute, not in 15 minutes of 1 % probes)."""
    cfg = law()
    start = snap(mem_free_kb=860 * MIB_KB, mem_available_kb=870 * MIB_KB)
    ds = run_policy(cfg, [{}] * 60, start=start)
    shrinks = [d.previous_kb - d.target_kb for d in ds if d.action == "shrink"]
    assert shrinks[0] == 256 * MIB_KB
    assert all(step <= 256 * MIB_KB for step in shrinks)
    final = ds[-1].target_kb
    # No burst seen: the line is 2 reserves. MemAvailable (870 MiB at full size) never under it.
    assert 870 * MIB_KB - (STATIC_MAX - final) >= 2 * R
    assert final < STATIC_MAX - 600 * MIB_KB


def test_a_grow_starts_from_where_the_driver_is() -> None:
    """A shortage while the driver is still giving back memory for an earlier shrink (its size
    above our target): the grow is counted from the driver's size, not from the lower target,
    so it never sends the driver further down. Replayed with a 24 MiB/s driver on the tuned
    `anon-grow-shrink` (221850, a decision every second), a ramp met a "grow" to 516 MiB while
    the driver still held 543 MiB and went on ballooning out."""
    cfg = law()
    target = 400 * MIB_KB
    current = 700 * MIB_KB
    short = snap(size_kb=current, balloon_target_kb=target, mem_free_kb=20 * MIB_KB,
                 mem_available_kb=30 * MIB_KB)
    d = decide(short, PolicyState(), cfg)
    assert d.action == "grow", d.reason
    assert d.target_kb >= current + R
    # The driver at its target: the grow is counted from it, as before.
    at_target = snap(size_kb=target, mem_free_kb=20 * MIB_KB, mem_available_kb=30 * MIB_KB)
    d = decide(at_target, PolicyState(), cfg)
    assert d.action == "grow" and target + R <= d.target_kb < current


def test_pressure_stops_at_the_headroom_line() -> None:
    """Never probe MemAvailable under the line R + max(R, B - g): the band between the reserve and
    the line separates the shrink zone from the grow zone (hysteresis)."""
    ds = run_policy(law(), [{}] * 600)
    final = ds[-1]
    avail = final.target_kb - OFFSET - 200 * MIB_KB  # available = MemTotal - 200 MiB here
    assert 2 * R <= avail < 2 * R + 16 * MIB_KB
    assert final.action == "hold"


def test_pressure_holds_while_stall_is_above_target() -> None:
    """Stop at the first sign of pressure: a stall over the last interval (PSI totals) or in
    avg10 at the target holds every probe, free memory included."""
    frames = [{"some_avg10": 0.5, "some_total_us": 1_000_000 + i * 5_000} for i in range(20)]
    ds = run_policy(law(), frames)
    assert all(d.action == "hold" for d in ds), [d.reason for d in ds]
    ds = run_policy(
        law(), [{"some_avg10": 0.5}] * 20, start=snap(mem_free_kb=660 * MIB_KB)
    )
    assert all(d.action == "hold" for d in ds)


def test_refaults_hold_a_probe() -> None:
    """A probe that evicts what is still wanted shows as refaults before it shows as a stall:
    600 refaults/s (over the quiet 500, under the 2000 that mean a shortage) hold the probe."""
    frames = [{"refaults": 1000 + i * 600, "mem_free_kb": 100 * MIB_KB} for i in range(20)]
    ds = run_policy(law(), frames)
    assert all(d.action == "hold" for d in ds[1:]), [d.reason for d in ds]
    assert "refaults 600/s" in ds[5].reason


def test_no_shrink_while_the_page_cache_grows() -> None:
    """Seen on Xen 4.17 (the first testbed run, 3ed0422): the policy squeezed a cache while it was
    being read; the cache shrank to a third and was read from disk again. No probe while the page
    cache rises faster than 1 MiB/s. (Until 2026-12-05 rising use held every probe too: now it
    raises the probe's line, ``test_a_probe_while_use_rises_keeps_the_rise_above_the_line``.)"""
    cfg = law()
    base = snap(mem_free_kb=100 * MIB_KB)
    frames = [{"cached_kb": base.cached_kb + i * 4 * MIB_KB} for i in range(30)]
    ds = run_policy(cfg, frames, start=base)
    assert all(d.action != "shrink" for d in ds[1:])



def test_a_probe_while_use_rises_keeps_the_rise_above_the_line() -> None:
    """2026-12-05, the tuned half replayed (runs 20261204-212118-29859, 20261204-221850-5993):
    with every probe held while use rose by 1 MiB/s or more, a workload's start kept the guest at
    3/4 of its ceiling while use crept up by 2 MiB/s, hundreds of MiB above the line. Now a probe
    while use rises stops at the probe line: the headroom line plus the rise of 30 s
    (``rising_room_s``) at the rate since the last decision; a fast rise leaves no room to probe."""
    cfg = law()
    base = snap(mem_free_kb=700 * MIB_KB)
    reserve = reserve_kb(cfg, STATIC_MAX)
    rate = 4 * MIB_KB
    frames: list[dict[str, Any]] = [
        {"mem_available_kb": base.mem_available_kb - i * rate,
         "mem_free_kb": base.mem_free_kb - i * rate} for i in range(30)
    ]
    ds = run_policy(cfg, frames, start=base)
    shrinks = [(i, d) for i, d in enumerate(ds) if i > 0 and d.action == "shrink"]
    assert shrinks, [d.reason for d in ds]
    for i, d in shrinks:
        after = frames[i]["mem_available_kb"] - (d.previous_kb - d.target_kb)
        # B - g <= R during a steady ramp: the line is 2R, the probe line 2R + 30 s of the rise
        assert after >= 2 * reserve + int(rate * cfg.rising_room_s), (i, after, d.reason)
    fast = [{"mem_available_kb": base.mem_available_kb - i * 30 * MIB_KB} for i in range(15)]
    ds = run_policy(cfg, fast, start=base)
    assert all(d.action != "shrink" for d in ds[2:]), [d.reason for d in ds[2:]]
    assert any("near the probe line" in d.reason for d in ds[2:])

def test_pressure_never_shrinks_without_psi_but_still_grows() -> None:
    """A kernel without PSI gives no pressure feedback: never probe blind, still grow."""
    ds = run_policy(law(), [{"psi_available": False}] * 40)
    assert all(d.action == "hold" and "no PSI" in d.reason for d in ds)
    ds = run_policy(law(), [{"psi_available": False, "mem_available_kb": 1024}])
    assert ds[0].action == "hold"  # already at the ceiling
    start = snap(size_kb=600 * MIB_KB, xs_target_kb=STATIC_MAX)
    ds = run_policy(
        law(), [{"psi_available": False, "mem_available_kb": 1024}], start=start
    )
    assert ds[0].action == "grow"


def test_a_spike_is_answered_in_the_decision_that_sees_it() -> None:
    """Grow at once: the PSI trigger (while the kernel reclaims) is answered by the very decision
    that sees it, by at least a reserve."""
    cfg = law()
    quiet: list[dict[str, Any]] = [{}] * 40
    ds = run_policy(cfg, [*quiet, {"psi_trigger_fired": True, "mem_free_kb": 20 * MIB_KB}])
    before, spike = ds[-2], ds[-1]
    assert before.target_kb < STATIC_MAX
    assert spike.action == "grow" and "PSI trigger fired" in spike.reason
    assert spike.target_kb - before.target_kb >= R


def test_pressure_grows_on_stall_refaults_swapins_and_low_available() -> None:
    """Each signal of a shortage grows on its own: an interval stall of 2 %, 2000 refaults/s or
    1000 swap-ins/s while MemFree is under 2 reserves, or MemAvailable under the reserve."""
    cfg = law()
    tight = {"mem_free_kb": 40 * MIB_KB}
    quiet: list[dict[str, Any]] = [tight] * 40
    cases: list[tuple[dict[str, Any], str]] = [
        ({**tight, "some_total_us": 1_000_000 + 10 * 1_000_000}, "stall"),
        ({**tight, "refaults": 1000 + 5000}, "refaults"),
        ({**tight, "pswpin": 5000}, "swap-ins"),
        ({"mem_available_kb": 10 * MIB_KB}, "MemAvailable"),
    ]
    for kw, word in cases:
        ds = run_policy(cfg, [*quiet, kw])
        assert ds[-1].action == "grow", (word, ds[-1].reason)
        assert word in ds[-1].reason


def test_grow_is_sized_by_the_shortage() -> None:
    """The old policy grew by a constant 128 MiB doubled within a streak (128 + 256 + 512 MiB in
    2 s on one spike on Xen 4.17). The step is now the shortage: what brings MemAvailable back to
    the headroom line and MemFree back to 2 reserves, plus the demand that arrived since the last
    decision, at least a reserve and at least what was refaulted."""
    cfg = law()
    start = snap(size_kb=600 * MIB_KB, mem_available_kb=300 * MIB_KB, mem_free_kb=100 * MIB_KB,
                 some_avg10=1.0)
    # MemAvailable falls from 300 to 150 MiB (150 MiB of demand arrived in a second), MemFree to 10.
    ds = run_policy(cfg, [{}, {"mem_available_kb": 150 * MIB_KB, "mem_free_kb": 10 * MIB_KB}],
                    start=start)
    d = ds[1]
    assert d.action == "grow" and "MemFree 10240 KiB under 2x reserve" in d.reason, d.reason
    # The line is R + max(R, B - g): the 150 MiB burst has arrived (g = B), so 2R = 128 MiB,
    # under MemAvailable; MemFree is 118 MiB under 2R; that, plus the 150 MiB that arrived (a
    # first rise: no lookahead).
    assert d.target_kb - d.previous_kb == (2 * R - 10 * MIB_KB) + 150 * MIB_KB
    # A trigger with plenty available and 40 MiB free: 2R - 40 MiB, no demand arrived.
    ds = run_policy(cfg, [{"mem_free_kb": 40 * MIB_KB},
                          {"mem_free_kb": 40 * MIB_KB, "psi_trigger_fired": True}], start=start)
    assert ds[1].target_kb - ds[1].previous_kb == 2 * R - 40 * MIB_KB
    # 30000 refaults in a second (117 MiB) want more than that back.
    ds = run_policy(cfg, [{"mem_free_kb": 40 * MIB_KB},
                          {"mem_free_kb": 40 * MIB_KB, "refaults": 1000 + 30000}], start=start)
    assert ds[1].target_kb - ds[1].previous_kb == 30000 * 4


def test_stale_trigger_windows_with_plenty_free_do_not_grow_again() -> None:
    """Seen on Xen 4.17 (d0d76e6): the PSI trigger kept firing for two windows after a grow had
    left 130 and then 390 MiB free (pages evicted earlier being read back, a window still
    covering the time before the grow); each firing grew the guest again, three times in 2 s.
    Stall, refaults and swap-ins count only while MemFree is under 2 reserves."""
    cfg = law()
    quiet: list[dict[str, Any]] = [{"mem_free_kb": 40 * MIB_KB}] * 40
    spike = {"psi_trigger_fired": True, "mem_free_kb": 10 * MIB_KB, "refaults": 1000 + 3000}
    after = {"psi_trigger_fired": True, "mem_free_kb": 390 * MIB_KB, "refaults": 1000 + 6000}
    ds = run_policy(cfg, [*quiet, spike, after, after])
    assert ds[40].action == "grow"
    assert [d.action for d in ds[41:]] == ["hold", "hold"], [d.reason for d in ds[41:]]
    # A shortage by MemAvailable is answered whatever is free.
    ds = run_policy(cfg, [*quiet, spike, {**after, "mem_available_kb": 10 * MIB_KB}])
    assert ds[-1].action == "grow" and "MemAvailable" in ds[-1].reason


def test_demand_rising_into_the_headroom_grows_before_the_reserve() -> None:
    """Seen on Xen 4.17 (3ed0422): an allocation ate the page cache while MemAvailable stayed just
    above the reserve (it counts the cache), so the policy never grew and the cache was read
    again. Demand rising into the headroom line grows; flat demand inside it is the band."""
    cfg = law()
    start = snap(size_kb=600 * MIB_KB, mem_available_kb=200 * MIB_KB, mem_free_kb=50 * MIB_KB)
    ds = run_policy(cfg, [{}, {"mem_available_kb": 100 * MIB_KB}], start=start)
    assert ds[1].action == "grow" and "under the headroom line" in ds[1].reason, ds[1].reason
    ds = run_policy(cfg, [{}, {}], start=replace(start, mem_available_kb=100 * MIB_KB))
    assert [d.action for d in ds] == ["hold", "hold"]


def test_a_grow_during_a_ramp_covers_the_demand_until_the_next_decision() -> None:
    """Seen on Xen 4.17 (run 20261204-180448-18010, jvm-heap): a heap touched at 8-13 MiB/s met
    grows of 64-128 MiB every 5-15 s and ran against a guest 60-130 MiB short, paging to the
    guard's zram (ramp 65 s against 29 s without ballooning). During a ramp (demand rising at
    this decision and the one before), a grow adds the rate times one interval, at most as much
    again as arrived since the last decision. A one-off spike adds nothing: one rise says nothing
    of the next (a spike's grow is the shortage and what arrived, as before)."""
    cfg = law()
    no_lookahead = replace(cfg, grow_lookahead_s=0.0)
    start = snap(size_kb=500 * MIB_KB, mem_available_kb=200 * MIB_KB, mem_free_kb=190 * MIB_KB,
                 some_avg10=1.0)

    def ramp(dt: float) -> list[dict[str, Any]]:
        """Demand rising 30 MiB then 90 MiB over two decisions ``dt`` apart; the second takes
        MemAvailable under the line (2R while the burst has arrived)."""
        return [{},
                {"timestamp": dt, "mem_available_kb": 170 * MIB_KB, "mem_free_kb": 160 * MIB_KB},
                {"timestamp": 2 * dt, "mem_available_kb": 80 * MIB_KB,
                 "mem_free_kb": 70 * MIB_KB}]

    with_la = run_policy(cfg, ramp(5.0), start=start)
    without = run_policy(no_lookahead, ramp(5.0), start=start)
    assert with_la[2].action == without[2].action == "grow", with_la[2].reason
    # 90 MiB in 5 s (18 MiB/s x 5 s = 90 MiB, which is what arrived).
    assert with_la[2].target_kb - without[2].target_kb == 90 * MIB_KB
    # A short interval's rate is not extrapolated past what arrived: 90 MiB in 1 s adds 90 MiB.
    short, short0 = run_policy(cfg, ramp(1.0), start=start), run_policy(no_lookahead, ramp(1.0),
                                                                         start=start)
    assert short[2].target_kb - short0[2].target_kb == 90 * MIB_KB
    # A slower ramp adds its rate times one interval, less than what arrived: 90 MiB over 10 s.
    slow, slow0 = run_policy(cfg, ramp(10.0), start=start), run_policy(no_lookahead, ramp(10.0),
                                                                        start=start)
    assert slow[2].target_kb - slow0[2].target_kb == 45 * MIB_KB
    # A one-off spike (the first decision that sees demand rise) gets no lookahead.
    spike = [{}, {"timestamp": 5.0, "mem_available_kb": 80 * MIB_KB, "mem_free_kb": 70 * MIB_KB}]
    one, one0 = run_policy(cfg, spike, start=start), run_policy(no_lookahead, spike, start=start)
    assert one[1].action == "grow" and one[1].target_kb == one0[1].target_kb
    # Nor does a grow that is not for rising demand (a PSI trigger while reclaiming).
    trig = {"mem_free_kb": 40 * MIB_KB}
    ds = run_policy(cfg, [trig, {**trig, "psi_trigger_fired": True}], start=start)
    ds0 = run_policy(no_lookahead, [trig, {**trig, "psi_trigger_fired": True}], start=start)
    assert ds[1].action == "grow" and ds[1].target_kb == ds0[1].target_kb


def run_steps(config: PressureConfig, steps_mib: list[int], start: MemorySignals
              ) -> list[Decision]:
    """Decisions a second apart while demand grows by ``steps_mib[i]`` MiB before decision i
    (MemAvailable and MemFree fall by it), the simulated driver following each decision."""
    def frame(i: int, step: int) -> Callable[[MemorySignals], MemorySignals]:
        return lambda s: replace(s, timestamp=float(i), psi_trigger_fired=False,
                                 mem_available_kb=max(0, s.mem_available_kb - step * MIB_KB),
                                 mem_free_kb=max(0, s.mem_free_kb - step * MIB_KB))

    return drive(config, start, [frame(i, step) for i, step in enumerate(steps_mib)])


def test_a_rise_that_continues_a_burst_is_a_ramp() -> None:
    """Seen on Xen 4.17 in a guest the agent had already sized (run 20261206-211801-5898,
    `anon-grow-shrink` after 90 s of idle): 96 MiB steps a few seconds apart each met a grow
    of the shortage and the step alone, never two rising decisions in a row, so no lookahead;
    the grow phase took 16.5 s against 12.9 s without ballooning. A rise after a burst's worth
    (32 MiB) had already arrived within the burst window (10 s) is a ramp: its grow adds the
    lookahead. The first step, and a step after the window has forgotten the last, add none."""
    cfg = law()
    no_lookahead = replace(cfg, grow_lookahead_s=0.0)
    start = snap(size_kb=400 * MIB_KB, mem_available_kb=150 * MIB_KB, mem_free_kb=140 * MIB_KB,
                 some_avg10=1.0)
    # Three steps 3 s apart: the first grow leaves room for the second step; the third grows.
    steps = [0, 96, 0, 0, 96, 0, 0, 96, 0]
    with_la, without = run_steps(cfg, steps, start), run_steps(no_lookahead, steps, start)
    assert [i for i, d in enumerate(with_la) if d.action == "grow"] == [1, 7], [
        (d.action, d.reason) for d in with_la]
    assert [d.action for d in without] == [d.action for d in with_la]
    # The first step: no lookahead (one rise says nothing of the next).
    assert with_la[1].target_kb == without[1].target_kb
    # The third, 3 s after the second: a ramp, though decisions 5 and 6 saw demand flat; as
    # much again as arrived (96 MiB in a second: the rate times 5 s, at most what arrived).
    extra = with_la[7].target_kb - without[7].target_kb
    assert extra == 96 * MIB_KB, with_la[7].reason
    # Steps further apart than the burst window: each is a first rise again.
    apart = [0, 96, *[0] * 11, 150, 0]
    la, la0 = run_steps(cfg, apart, start), run_steps(no_lookahead, apart, start)
    assert la[13].action == "grow" and la[13].target_kb == la0[13].target_kb, la[13].reason


def test_use_growing_while_memfree_is_low_grows_before_the_cache_is_evicted() -> None:
    """Seen on Xen 4.17 (c83f314, run 20261128-180705-643): a spike took MemFree from 142 to 10 MiB
    at 25 MiB/s while MemAvailable (which counts the page cache) stayed above 180 MiB; the cache
    the spike read next was evicted (spike phase 32 s against 19 s without ballooning). Use rising
    while MemFree is under 2 reserves grows by the shortage in MemFree plus the arriving demand."""
    cfg = law()
    start = snap(size_kb=800 * MIB_KB, mem_available_kb=300 * MIB_KB, mem_free_kb=100 * MIB_KB,
                 some_avg10=1.0)
    spike = {"mem_available_kb": 275 * MIB_KB, "mem_free_kb": 75 * MIB_KB}
    ds = run_policy(cfg, [{}, spike], start=start)
    assert ds[1].action == "grow" and "MemFree" in ds[1].reason, ds[1].reason
    assert ds[1].target_kb - ds[1].previous_kb == (2 * R - 75 * MIB_KB) + 25 * MIB_KB
    # A wobble of a few MiB (the kernel reclaiming) is not demand ...
    wobble = {"mem_available_kb": 297 * MIB_KB, "mem_free_kb": 97 * MIB_KB}
    ds = run_policy(cfg, [{}, wobble], start=start)
    assert ds[1].action != "grow", ds[1].reason
    # ... and with MemFree above twice the reserve the kernel is not evicting anything yet.
    roomy = replace(start, mem_free_kb=200 * MIB_KB)
    ds = run_policy(cfg, [{}, {**spike, "mem_free_kb": 175 * MIB_KB}], start=roomy)
    assert ds[1].action != "grow", ds[1].reason


def test_pressure_goes_to_the_ceiling_on_oom() -> None:
    """An OOM kill is the failure the balloon must never cause: the ceiling at once, and no
    shrink for 5 minutes."""
    ds = run_policy(law(), [*[{}] * 40, {"oom_kill": 1}])
    assert ds[-1].target_kb == STATIC_MAX and "OOM" in ds[-1].reason
    ds = run_policy(law(), [*[{}] * 40, *[{"oom_kill": 1}] * 100])
    assert all(d.action != "shrink" for d in ds[41:])


def test_the_headroom_line_follows_the_bursts_seen() -> None:
    """Headroom is not a constant 128 MiB: between bursts the line is R + max(R, B), B the largest
    demand growth within 10 s, held for the hold time (60 s) and then halved every 30 s (at a
    decision every 5 s, where this 48 MiB/s burst arrives within one interval and a second: room
    for all of it; the cap is the next test's)."""
    cfg = law(interval_s=5.0, reserve_min_kb=R // 3)  # R at 5 s (3x reserve_mb): about 64 MiB
    state = PolicyState()
    used0 = 300 * MIB_KB
    for t in range(6):  # 240 MiB of demand in 5 s
        s = snap(float(t), mem_available_kb=snap().mem_total_kb - used0 - t * 48 * MIB_KB)
        state = observe_demand(s, state, cfg)
    assert burst_allowance(state, cfg, 5.0) == 240 * MIB_KB
    assert burst_allowance(state, cfg, 65.0) == 240 * MIB_KB
    assert burst_allowance(state, cfg, 95.0) == 120 * MIB_KB
    assert burst_allowance(state, cfg, 125.0) == 60 * MIB_KB
    # A quiet guest that saw that burst keeps MemAvailable above R + 240 MiB while it is held.
    probes_settle_at(state, cfg, 6, 60, reserve_kb(cfg, STATIC_MAX) + 240 * MIB_KB)


def probes_settle_at(state: PolicyState, cfg: PressureConfig, start: int, end: int,
                     line_kb: int) -> None:
    """A quiet guest with 700 MiB available that saw the burst in ``state``, decided every second
    from ``start`` to ``end``: probes never take MemAvailable under ``line_kb`` and end within
    16 MiB of it."""
    seen = replace(state, prev_t=None, prev_used_kb=None, prev_cached_kb=None)
    s = snap(float(start), mem_free_kb=600 * MIB_KB, mem_available_kb=700 * MIB_KB)
    for t in range(start, end):
        d = decide(replace(s, timestamp=float(t)), seen, cfg)
        seen = d.new_state
        s = follow_size(s, d)
        assert s.mem_available_kb >= line_kb, (t, d.reason)
    assert s.mem_available_kb < line_kb + 16 * MIB_KB, s.mem_available_kb // MIB_KB


def test_the_room_for_a_burst_is_what_arrives_before_a_grow_lands() -> None:
    """Seen on Xen 4.17 (runs 20261206-042415-28926 and -050355-6091): after `anon-grow-shrink`
    freed its 384 MiB, grown in 96 MiB steps over 12 s, the line R + B kept 384 MiB of room for
    60 s more, while a grow answers a rise within one decision interval and the driver populated
    it within about a second. B is the burst allowance capped by the fastest rise seen while it
    is held times (interval + ``populate_s``), plus the part the driver falls behind by when it
    populates slower than that rise (all of it while it has not been seen populating): a burst
    that arrives within one interval keeps room for all of it, a slower one for what arrives
    before a grow lands. At the default decision every second, 2 s of the fastest rise."""
    cfg = law(interval_s=5.0, reserve_min_kb=R // 3)  # R at 5 s (3x reserve_mb): about 64 MiB
    answer_s = cfg.interval_s + cfg.populate_s
    assert peak_rate_kb_s(((0.0, 0), (1.0, 10), (2.0, 40)), 1.0) == 30.0
    # A decision woken early (0.2 s after the last) is measured over at least rate_span_s.
    assert peak_rate_kb_s(((0.0, 0), (1.0, 10), (1.2, 40)), 1.0) == 40 / 1.2
    assert peak_rate_kb_s(((0.0, 0), (0.5, 100)), 1.0) == 0.0
    used0 = 300 * MIB_KB
    driver = 256 * MIB_KB  # KiB/s: a grow of 256 MiB populated within a second

    def burst(step_mib: int, steps: int) -> PolicyState:
        state = PolicyState()
        for t in range(steps + 1):  # one sample a second
            s = snap(float(t), mem_available_kb=snap().mem_total_kb - used0
                     - t * step_mib * MIB_KB)
            state = observe_demand(s, state, cfg)
        return replace(state, populate_kb_s=driver)

    # 240 MiB in 5 s (48 MiB/s): it arrives within one interval and a second, so all of it.
    quick = burst(48, 5)
    assert quick.burst_rate_kb_s == 48 * MIB_KB
    assert burst_room_kb(quick, cfg, 5.0) == burst_allowance(quick, cfg, 5.0) == 240 * MIB_KB
    # 96 MiB in 8 s (12 MiB/s, the 10 s window holds it all): room for 6 s of it.
    slow = burst(12, 8)
    assert burst_allowance(slow, cfg, 8.0) == 96 * MIB_KB
    assert burst_room_kb(slow, cfg, 8.0) == int(12 * MIB_KB * answer_s) == 72 * MIB_KB
    # Held and halved with the allowance, never above it.
    assert burst_room_kb(slow, cfg, 60.0) == 72 * MIB_KB
    assert burst_room_kb(slow, cfg, 98.0) == burst_allowance(slow, cfg, 98.0) == 48 * MIB_KB
    # A driver not yet seen populating: the whole burst; one at half the rise: half of it more.
    assert burst_room_kb(replace(slow, populate_kb_s=0.0), cfg, 8.0) == 96 * MIB_KB
    assert burst_room_kb(replace(slow, populate_kb_s=6 * MIB_KB), cfg, 8.0) == 96 * MIB_KB
    assert burst_room_kb(replace(slow, populate_kb_s=9 * MIB_KB), cfg, 8.0) == 96 * MIB_KB
    assert burst_room_kb(replace(slow, populate_kb_s=10 * MIB_KB), cfg, 8.0) == 88 * MIB_KB
    # At a decision every second (the default) the same slow burst needs room for 2 s of it,
    # the quick one for 96 MiB.
    fast = law()
    assert fast.interval_s == 1.0
    assert burst_room_kb(slow, fast, 8.0) == 24 * MIB_KB
    assert burst_room_kb(quick, fast, 5.0) == 96 * MIB_KB
    # A quiet guest that saw the slow burst probes down to R + max(R, room), not R + burst.
    probes_settle_at(slow, cfg, 9, 80, reserve_kb(cfg, STATIC_MAX) + 72 * MIB_KB)


def test_the_driver_is_seen_populating_a_grow() -> None:
    """The driver's populate speed, from its size between two decisions while it was below the
    target written at the first: still below it at the second, the driver was the limit (its
    speed, which replaces the last); there already, at least that fast (the fastest kept).
    Not while it shrinks or holds still."""
    cfg = law()
    grown = PolicyState(prev_t=10.0, last_target_kb=600 * MIB_KB, prev_current_kb=400 * MIB_KB)
    reached = observe_populate(snap(11.0, size_kb=600 * MIB_KB), grown, cfg)
    assert reached.populate_kb_s == 200 * MIB_KB
    # Already seen faster: a grow done within the interval says only "at least this fast".
    quicker = replace(grown, populate_kb_s=500 * MIB_KB)
    assert observe_populate(snap(11.0, size_kb=600 * MIB_KB), quicker, cfg).populate_kb_s == (
        500 * MIB_KB)
    # Still short of the target after 2 s: 24 MiB/s is the driver's speed now.
    short = observe_populate(snap(12.0, size_kb=448 * MIB_KB), quicker, cfg)
    assert short.populate_kb_s == 24 * MIB_KB
    shrinking = replace(grown, last_target_kb=300 * MIB_KB)
    assert observe_populate(snap(11.0, size_kb=350 * MIB_KB), shrinking, cfg) == shrinking
    assert observe_populate(snap(11.0, size_kb=404 * MIB_KB), grown, cfg) == grown
    assert observe_populate(snap(11.0), PolicyState(), cfg) == PolicyState()


def test_the_driver_is_seen_giving_memory_back() -> None:
    """The driver's release speed, from its size between two decisions while it was above the
    target written at the first: still above it at the second, the driver was the limit (its
    speed, which replaces the last); there already, at least that fast, which raises a speed
    once measured but never makes one (a driver that keeps up is never judged slow). Not while
    it grows or holds still."""
    cfg = law()
    shrunk = PolicyState(prev_t=10.0, last_target_kb=400 * MIB_KB, prev_current_kb=600 * MIB_KB)
    assert observe_release(snap(11.0, size_kb=590 * MIB_KB), shrunk, cfg).release_kb_s == (
        10 * MIB_KB)
    # A decision 0.2 s after the write (woken by the PSI trigger) measures nothing.
    seen = replace(shrunk, release_kb_s=300 * MIB_KB)
    assert observe_release(snap(10.2, size_kb=600 * MIB_KB), seen, cfg) == seen
    # There within the interval: a driver never seen limiting stays unmeasured.
    assert observe_release(snap(11.0, size_kb=400 * MIB_KB), shrunk, cfg) == shrunk
    # Measured once: a quicker arrival raises it (200 MiB in 2 s), a slower one does not.
    slow = replace(shrunk, release_kb_s=10 * MIB_KB)
    assert observe_release(snap(12.0, size_kb=400 * MIB_KB), slow, cfg).release_kb_s == (
        100 * MIB_KB)
    quick = replace(shrunk, release_kb_s=300 * MIB_KB)
    assert observe_release(snap(12.0, size_kb=400 * MIB_KB), quick, cfg) == quick
    # Still short after 2 s: 20 MiB/s is its speed now.
    assert observe_release(snap(12.0, size_kb=560 * MIB_KB), quick, cfg).release_kb_s == (
        20 * MIB_KB)
    grown = replace(shrunk, last_target_kb=800 * MIB_KB)
    assert observe_release(snap(11.0, size_kb=700 * MIB_KB), grown, cfg) == grown
    held = replace(shrunk, last_target_kb=600 * MIB_KB)
    assert observe_release(snap(11.0, size_kb=600 * MIB_KB), held, cfg) == held
    assert observe_release(snap(11.0), PolicyState(), cfg) == PolicyState()


def test_a_driver_that_gives_memory_back_slowly_is_paced() -> None:
    """Seen on Xen 4.17 (runs 20261206-151122-24280 and -152628-25149, an HVM guest): the driver
    gave memory back at about 10 MiB/s, so the first probes from the ceiling (256 MiB each) kept
    it working for about a minute, and that work took the guest's CPU (a CPU-bound loop beside it
    ran at x0.50, run 20261206-172138-10430): `long-idle`'s first phase, a page-cache read the
    law would never probe during, took 12.8 s against 5.0 s. Once the driver is seen limiting
    at under ``slow_release_kb_s``, the target is never more than ``release_pace_s`` of its
    release below its size: an earlier shrink is cut back to that (``pace``, not a grow), each
    probe (one per 5 s, as before) is cut to it, and when the page cache starts rising the driver
    stops within that time. A driver that keeps up is never paced."""
    cfg = law()
    driver = 10 * MIB_KB
    pace = int(driver * cfg.release_pace_s)
    s = snap(mem_free_kb=600 * MIB_KB, mem_available_kb=700 * MIB_KB)
    state = PolicyState()
    ds: list[Decision] = []
    sizes: list[int] = []
    for t in range(70):
        reading = 30 <= t < 40  # a page-cache read: 10 MiB/s more Cached, less MemFree
        if reading:
            s = replace(s, cached_kb=s.cached_kb + driver, mem_free_kb=s.mem_free_kb - driver)
        s = replace(s, timestamp=float(t))
        sizes.append(s.balloon_current_kb or 0)
        d = decide(s, state, cfg)
        ds.append(d)
        state = d.new_state
        s = follow_size(s, d, driver)
    assert ds[0].action == "shrink" and ds[0].previous_kb - ds[0].target_kb > pace
    assert ds[1].action == "pace" and ds[1].target_kb > ds[1].previous_kb
    assert ds[1].new_state.release_kb_s == driver
    assert ds[1].new_state.last_grow_t is None
    for t in range(1, 70):
        assert sizes[t] - ds[t].target_kb <= pace + 4, (t, ds[t].reason)
    shrinks = [t for t, d in enumerate(ds) if d.action == "shrink"]
    assert all(b - a >= cfg.shrink_interval_s for a, b in zip(shrinks, shrinks[1:]))
    # Quiet: the probe goes on, a cut step every 5 s.
    assert len([t for t in shrinks if 1 < t < 30]) >= 4
    assert sizes[30] < sizes[2] - 3 * pace
    # Reading: the driver stops within release_pace_s of the first decision that saw it.
    stopped = 31 + int(cfg.release_pace_s)
    assert len({sizes[t] for t in range(stopped, 41)}) == 1, sizes[30:41]
    assert all(d.action == "hold" for d in ds[31:40])
    # Quiet again: the probe resumes.
    assert sizes[69] < sizes[40]
    # A driver that reaches each target within the interval is never paced.
    fast = run_policy(cfg, [{}] * 70, start=snap(mem_free_kb=600 * MIB_KB,
                                                  mem_available_kb=700 * MIB_KB))
    assert "pace" not in {d.action for d in fast}
    assert all(d.new_state.release_kb_s == 0 for d in fast)


def test_the_headroom_line_counts_only_the_rest_of_a_burst() -> None:
    """Seen on Xen 4.17 (sharp-spikes, runs 20261204-212118-29859 and 20261204-221850-5993): the
    first 256 MiB spike grew the guest to its ceiling, because the line R + B already counted
    the spike (B = 256 MiB) and the grow restored it on top of the spike in progress: room for a
    second whole spike while the first was still there. The line is R + max(R, B - g), g the
    growth of demand within the burst window (the part of a burst that has arrived): between
    bursts R + B, room for a whole burst; at a burst's peak 2R."""
    assert headroom_line_kb(R, 256 * MIB_KB, 0) == R + 256 * MIB_KB
    assert headroom_line_kb(R, 256 * MIB_KB, 100 * MIB_KB) == R + 156 * MIB_KB
    assert headroom_line_kb(R, 256 * MIB_KB, 256 * MIB_KB) == 2 * R
    cfg = law()
    state = PolicyState()
    s = snap(0.0, mem_free_kb=690 * MIB_KB, mem_available_kb=700 * MIB_KB, cached_kb=10 * MIB_KB)

    def demand(s: MemorySignals, kb: int) -> MemorySignals:
        return replace(s, mem_available_kb=s.mem_available_kb - kb,
                       mem_free_kb=s.mem_free_kb - kb)

    spike = 256 * MIB_KB
    ds: list[Decision] = []
    for t in range(60):
        s = replace(s, timestamp=float(t))
        if t in (1, 40):
            s = demand(s, spike)
        elif t == 4:
            s = demand(s, -spike)
        d = decide(s, state, cfg)
        ds.append(d)
        state = d.new_state
        s = follow_size(s, d)
        if t == 39:  # between the bursts the line is R + B: room for a whole burst
            assert R + spike <= s.mem_available_kb < R + spike + 32 * MIB_KB, s.mem_available_kb
            free_at_peak = s.mem_free_kb - spike
    assert not [d.reason for d in ds[:4] if d.action == "grow"]  # the first fitted
    d = ds[40]
    assert d.action == "grow" and "under the headroom line" in d.reason, d.reason
    # The shortage to the line at the peak (2R; MemFree is the further under it) plus what
    # arrived: under the old line R + B the grow was R + B - MemAvailable + 256 MiB, another
    # whole burst more.
    assert d.target_kb - d.previous_kb == (2 * R - free_at_peak) + spike
    assert d.target_kb - d.previous_kb < 2 * spike


def test_the_hold_time_follows_the_burst_spacing_and_a_grow_holds_off_shrinks() -> None:
    """Seen on Xen 4.17 (issue 12): after a spike the old policy gave back 660 MiB within 15 s,
    and the second spike 20 s later was OOM-killed. The burst allowance is held for the hold
    time: at least 60 s, and the spacing of the last two bursts when they recur further apart
    (up to 180 s; bursts further apart than that are unrelated); it keeps every probe above the
    line (``test_the_headroom_line_follows_the_bursts_seen``). After a grow, no shrink at all for
    ``grow_holdoff_s`` (5 s, one decision interval), then probes down to that line (sharp-spikes
    on Xen 4.17, runs 20261204-212118-29859 and 20261204-221850-5993: a 60 s holdoff after every
    grow kept the guest at its ceiling through the whole train of spikes, 941-944 MiB mean; 15 s
    until 2026-12-05, when the tuned half replayed showed it holding a spike's grow for 10 s
    after the spike had ended, while the line R + B already kept the room for the next one)."""
    cfg = law()
    state = PolicyState()
    assert hold_s(state, cfg) == 60.0
    base = snap().mem_total_kb - 300 * MIB_KB
    for t in range(350):  # bursts of 100 MiB for 9 s, every 120 s
        up = 100 * MIB_KB if any(b < t < b + 10 for b in (0, 120, 240)) else 0
        state = observe_demand(snap(float(t), mem_available_kb=base - up), state, cfg)
    assert state.burst_spacing_s == 120.0 and hold_s(state, cfg) == 120.0
    state = observe_demand(snap(599.0, mem_available_kb=base), state, cfg)
    state = observe_demand(snap(600.0, mem_available_kb=base - 100 * MIB_KB), state, cfg)
    assert hold_s(state, cfg) == 60.0  # 359 s after the last: unrelated
    # No shrink for 5 s after a grow even with 600 MiB lying free, then a probe.
    tight = {"mem_free_kb": 40 * MIB_KB}
    freed = {"mem_free_kb": 600 * MIB_KB, "mem_available_kb": snap().mem_available_kb}
    ds = run_policy(cfg, [*[tight] * 40, {**tight, "psi_trigger_fired": True}, *[freed] * 70])
    grow = 40
    assert ds[grow].action == "grow"
    first = next(i for i, d in enumerate(ds) if i > grow and d.action == "shrink")
    assert first - grow == 5, [d.reason for d in ds[grow:first]]
    assert "holdoff 5 s after a grow" in ds[grow + 3].reason
    longer = run_policy(replace(cfg, grow_holdoff_s=40.0),
                        [*[tight] * 40, {**tight, "psi_trigger_fired": True}, *[freed] * 70])
    assert next(i for i, d in enumerate(longer) if i > grow and d.action == "shrink") == grow + 40


def test_hysteresis_suppresses_tiny_changes() -> None:
    """A change under min_change_kb (8 MiB) is not made: a tiny probe is noise, not information."""
    cfg = law(shrink_headroom_divisor=1000, shrink_step_pct=0.1)
    s = snap(some_avg10=0.15, mem_free_kb=100 * MIB_KB)  # scale 0.25: step ~ 0.25 MiB
    d = decide_pressure(s, PolicyState(), cfg)
    assert d.action == "hold" and "below min_change" in d.reason
    assert d.target_kb == d.previous_kb


def test_never_under_the_configured_floor() -> None:
    """Floors: never under max(floor_kb, the hard minimum), however quiet the guest."""
    ds = run_policy(law(floor_kb=700 * MIB_KB), [{}] * 120,
                    start=snap(mem_free_kb=800 * MIB_KB, mem_available_kb=850 * MIB_KB))
    assert min(d.target_kb for d in ds) == 700 * MIB_KB
    assert ds[-1].action == "hold" and "at the floor" in ds[-1].reason


def test_free_memory_after_a_toolstack_raise_waits_for_the_holdoff() -> None:
    """A toolstack raise is followed, not undone: no shrink for 30 s after it."""
    cfg = law()
    start = snap(size_kb=512 * MIB_KB, xs_target_kb=512 * MIB_KB, mem_free_kb=40 * MIB_KB)
    raised = {"xs_target_kb": STATIC_MAX, "balloon_target_kb": STATIC_MAX,
              "balloon_current_kb": STATIC_MAX, "mem_total_kb": STATIC_MAX - OFFSET,
              "mem_available_kb": start.mem_available_kb + 512 * MIB_KB,
              "mem_free_kb": 550 * MIB_KB}
    ds = run_policy(cfg, [{}, raised, *[raised] * 20], start=start)
    assert ds[1].action == "follow"
    assert all(d.action == "hold" and "toolstack change" in d.reason for d in ds[2:]), [
        d.reason for d in ds[2:]
    ]
    # Then free memory goes back (frames after it keep the raised driver target: followed again).
    ds = run_policy(cfg, [{}, raised, *[raised] * 40], start=start)
    assert any(d.action == "shrink" for d in ds[30:]), [d.reason for d in ds[30:]]


def test_toolstack_override_is_followed() -> None:
    cfg = law()
    ds = run_policy(cfg, [{}] * 30)
    state = ds[-1].new_state
    # xl mem-set 512 MiB: memory/target changes and the kernel moved the driver's target.
    s = snap(31.0, size_kb=ds[-1].target_kb)
    s = replace(s, xs_target_kb=512 * MIB_KB, balloon_target_kb=512 * MIB_KB)
    d = decide(s, state, cfg)
    assert d.action == "follow" and "toolstack override" in d.reason
    assert d.target_kb == 512 * MIB_KB == d.ceiling_kb
    # ... and no shrink right after following.
    d2 = decide(follow_size(replace(s, timestamp=40.0), d), d.new_state, cfg)
    assert d2.action == "hold" and "holdoff" in d2.reason


def test_driver_target_moved_behind_the_policy_is_followed() -> None:
    cfg = law()
    d = decide(snap(0.0), PolicyState(), cfg)
    s = snap(1.0, balloon_target_kb=700 * MIB_KB, size_kb=d.target_kb)
    d2 = decide(s, d.new_state, cfg)
    assert d2.action == "follow" and d2.target_kb == 700 * MIB_KB


def test_none_holds_the_ceiling() -> None:
    ds = run_policy(NoneConfig(), [{}] * 5 + [{"xs_target_kb": 800 * MIB_KB}] * 3)
    assert [d.target_kb for d in ds[:5]] == [STATIC_MAX] * 5
    assert all(d.target_kb == 800 * MIB_KB for d in ds[5:])


def test_registry_and_config_validation() -> None:
    assert isinstance(default_config("pressure"), PressureConfig)
    assert isinstance(default_config("classic"), ClassicConfig)
    with pytest.raises(InputError, match="unknown policy"):
        default_config("senpai")
    with pytest.raises(InputError, match="psi_target_pct"):
        law(psi_target_pct=5.0, psi_grow_pct=1.0).validate()
    with pytest.raises(InputError, match="downhysteresis"):
        ClassicConfig(downhysteresis=0).validate()
    with pytest.raises(InputError, match="floor_kb"):
        law(floor_kb=-1).validate()


# --- invariants on generated sequences ------------------------------------------------------------

frame = st.fixed_dictionaries(
    {
        "dt": st.sampled_from([0.2, 1.0, 1.0, 5.0, 30.0]),
        "stall_us": st.integers(0, 2_000_000),
        "avg10": st.floats(0.0, 100.0),
        "avail_mib": st.integers(-100, 1200),
        "committed_mib": st.integers(0, 4096),
        "refaults": st.integers(0, 50_000),
        "pswpin": st.integers(0, 10_000),
        "oom": st.integers(0, 1),
        "fired": st.booleans(),
        "xs_target_mib": st.sampled_from([None, 128, 300, 512, 768, 1024, 1024, 1024]),
        "lag_mib": st.integers(0, 300),
        "no_zoneinfo": st.booleans(),
    }
)


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(["none", "classic", "pressure"]),
    floor_mib=st.integers(0, 2048),
    frames=st.lists(frame, min_size=1, max_size=60),
)
def test_floor_and_ceiling_are_never_crossed(
    policy: str, floor_mib: int, frames: list[dict[str, Any]]
) -> None:
    cfg = replace(default_config(policy), floor_kb=floor_mib * MIB_KB)
    state = PolicyState()
    s = snap()
    t = 0.0
    counters = {"some": 0, "refaults": 0, "pswpin": 0, "oom": 0}
    target = STATIC_MAX
    xs_prev = STATIC_MAX
    for f in frames:
        t += f["dt"]
        counters["some"] += f["stall_us"]
        counters["refaults"] += f["refaults"]
        counters["pswpin"] += f["pswpin"]
        counters["oom"] += f["oom"]
        xs: int = f["xs_target_mib"] * MIB_KB if f["xs_target_mib"] is not None else xs_prev
        driver_target = target
        if xs != xs_prev:
            driver_target = xs  # the kernel's watch applies the toolstack's write
        xs_prev = xs
        current = driver_target + f["lag_mib"] * MIB_KB
        mem_total = max(1, current - OFFSET)
        s = replace(
            s,
            timestamp=t,
            mem_total_kb=mem_total,
            mem_available_kb=max(0, min(mem_total, f["avail_mib"] * MIB_KB)),
            committed_as_kb=f["committed_mib"] * MIB_KB,
            some_total_us=counters["some"],
            some_avg10=f["avg10"],
            refaults=counters["refaults"],
            pswpin=counters["pswpin"],
            oom_kill=counters["oom"],
            psi_trigger_fired=f["fired"],
            xs_target_kb=xs,
            balloon_target_kb=driver_target,
            balloon_current_kb=current,
            totalreserve_kb=None if f["no_zoneinfo"] else 9820,
        )
        d = decide(s, state, cfg)
        ceiling = min(xs, STATIC_MAX)
        assert d.ceiling_kb == ceiling
        assert d.target_kb <= ceiling
        assert d.target_kb >= min(ceiling, max(floor_mib * MIB_KB, hard_minimum_kb(STATIC_MAX)))
        assert d.floor_kb <= d.target_kb
        state = d.new_state
        target = d.target_kb


# --- pressure: our own reclaim -------------------------------------------------------------------


def _stall_after_a_shrink(extra: dict[str, Any], lag_kb: int) -> list[Decision]:
    """Quiet feedback shrinks, then a PSI trigger the frame after the last one, with the driver
    ``lag_kb`` short of it; ``extra`` adds to that frame."""
    cfg = law()
    quiet: list[dict[str, Any]] = [{"mem_free_kb": 40 * MIB_KB}] * 40
    ds = run_policy(cfg, quiet)
    last = max(i for i, d in enumerate(ds) if d.action == "shrink")
    shrunk = ds[last].target_kb
    stall = {"mem_free_kb": 40 * MIB_KB, "psi_trigger_fired": True,
             "balloon_current_kb": shrunk + lag_kb, **extra}
    return run_policy(cfg, [*quiet[: last + 1], stall, *[{"mem_free_kb": 40 * MIB_KB}] * 70])


def test_a_stall_from_our_own_shrink_stops_the_shrink_instead_of_growing() -> None:
    """Seen on Xen 4.17 (3aa1f27), twice in idle phases: a 13 MiB shrink step in an idle phase,
    the driver still 8 MiB short of it, a 35 % stall with no refault and flat use, and a 128 MiB
    grow that held for 30 s. The driver allocates the pages it hands back and that reclaim counts
    as stall: stop where the driver got to, do not grow."""
    ds = _stall_after_a_shrink({}, lag_kb=8 * MIB_KB)
    i = max(i for i, d in enumerate(ds[:-70]) if d.action == "shrink") + 1
    stop = ds[i]
    assert stop.action == "stop" and "own reclaim" in stop.reason, stop.reason
    assert stop.new_state.last_grow_t == ds[i - 1].new_state.last_grow_t  # not a grow
    assert stop.target_kb - stop.previous_kb == 8 * MIB_KB  # where the driver got to, no step
    # No further probing for the hold time, then shrinking again.
    after = ds[i + 1:]
    assert all(d.action == "hold" for d in after[: int(law().holdoff_min_s) - 1])
    assert any(d.action == "shrink" for d in after)


def test_own_reclaim_tolerates_a_few_refaults_and_a_wobble_in_use() -> None:
    """Seen on Xen 4.17 (f4b2c9d): ~350 refaults/s (the system's own file pages) and MemAvailable
    2-3 MiB lower for the second after the step, while the driver reclaimed for it."""
    ds = _stall_after_a_shrink(
        {"refaults": 1000 + 350, "mem_available_kb": snap().mem_available_kb - 3 * MIB_KB},
        lag_kb=6 * MIB_KB,
    )
    i = max(i for i, d in enumerate(ds[:-70]) if d.action == "shrink") + 1
    assert "own reclaim" in ds[i].reason, ds[i].reason


def test_a_stall_with_refaults_rising_use_or_a_driver_at_target_still_grows() -> None:
    """Only our own reclaim stops: evicted pages wanted back, demand rising, or a driver that has
    reached its target (it reclaims nothing more) are a shortage, answered with a grow."""
    for extra, lag in (
        ({"refaults": 1000 + 5000}, 8 * MIB_KB),
        ({"mem_available_kb": 150 * MIB_KB}, 8 * MIB_KB),
        ({}, 0),
    ):
        ds = _stall_after_a_shrink(extra, lag)
        i = max(i for i, d in enumerate(ds[:-70]) if d.action == "shrink") + 1
        assert ds[i].action == "grow" and "own reclaim" not in ds[i].reason, (extra, ds[i].reason)
        assert ds[i].target_kb - ds[i].previous_kb >= R, (extra, ds[i].reason)


def test_a_stall_that_outlasts_the_stop_is_answered_with_a_grow() -> None:
    """Seen on Xen 4.17 (23e0212): a trigger 1.1 s after a stop, counted as a grow, doubled the
    next step. A stall that goes on once the driver reached the stop is a shortage, sized by it
    (here MemFree 40 MiB under 2 reserves), not by a streak."""
    cfg = law()
    quiet: list[dict[str, Any]] = [{"mem_free_kb": 40 * MIB_KB}] * 40
    ds = run_policy(cfg, quiet)
    last = max(i for i, d in enumerate(ds) if d.action == "shrink")
    stall = {"mem_free_kb": 40 * MIB_KB, "psi_trigger_fired": True}
    lagging = {**stall, "balloon_current_kb": ds[last].target_kb + 8 * MIB_KB}
    ds = run_policy(cfg, [*quiet[: last + 1], lagging, stall, stall])
    assert ds[last + 1].action == "stop" and "own reclaim" in ds[last + 1].reason
    assert ds[last + 2].action == "grow"
    assert ds[last + 2].target_kb - ds[last + 2].previous_kb == 2 * R - 40 * MIB_KB


# --------------------------------------------------------------------------------------------
# Swap: the allocation guard's zram absorbs a burst; the balloon must still give it RAM


SWAP = 768 * MIB_KB  # the guard's zram of a 1 GiB guest: ceiling - floor


def test_swap_out_is_a_shortage_and_the_grow_brings_it_back() -> None:
    """Seen on Xen 4.17 (run 20261204-144815-32683-balloon-bench, anon-grow-shrink): with the
    guard's zram, a 384 MiB anonymous ramp into a guest shrunk to 319 MiB was partly swapped out
    while MemAvailable stayed near the line; the policy saw little shortage, grew by 64-116 MiB a
    step, and the ramp took 2.1x as long as without ballooning. A swap-out since the last
    decision is a shortage, and the grow is at least what was swapped out."""
    cfg = law()
    start = snap(size_kb=600 * MIB_KB, mem_free_kb=150 * MIB_KB, swap_total_kb=SWAP,
                 swap_free_kb=SWAP)
    out = 100 * MIB_KB
    ds = run_policy(cfg, [{}, {"swap_free_kb": SWAP - out}], start=start)
    d = ds[1]
    assert d.action == "grow" and f"{out} KiB swapped out" in d.reason, d.reason
    assert d.target_kb - d.previous_kb >= out


def test_a_small_swap_out_holds_a_probe() -> None:
    """Under the hysteresis step a swap-out is no shortage, but a probe that pushes pages out to
    swap went too deep: no shrink while anything is being swapped out."""
    start = snap(mem_free_kb=100 * MIB_KB, swap_total_kb=SWAP, swap_free_kb=SWAP)
    frames = [{"swap_free_kb": SWAP - i * 256} for i in range(30)]
    ds = run_policy(law(), frames, start=start)
    assert all(d.action == "hold" for d in ds[1:]), [d.reason for d in ds]
    assert "256 KiB swapped out" in ds[10].reason


def test_pages_that_stay_in_swap_neither_grow_nor_stop_the_probe() -> None:
    """Cold pages left in the zram do not come back by growing the balloon (only an access brings
    them back, and that shows as swap-ins): swap in use that does not change is no shortage, and
    a quiet guest still shrinks."""
    start = snap(mem_free_kb=100 * MIB_KB, swap_total_kb=SWAP, swap_free_kb=SWAP - 200 * MIB_KB)
    ds = run_policy(law(), [{}] * 30, start=start)
    assert not any(d.action == "grow" for d in ds), [d.reason for d in ds]
    assert any(d.action == "shrink" for d in ds)


def test_a_burst_counts_what_was_swapped_out() -> None:
    """Demand for the burst allowance is MemTotal - MemAvailable plus swap in use: a burst the
    kernel half swapped out is measured whole."""
    cfg = law()
    s0 = snap(swap_total_kb=SWAP, swap_free_kb=SWAP)
    state = observe_demand(s0, PolicyState(), cfg)
    s1 = replace(s0, timestamp=2.0, mem_available_kb=s0.mem_available_kb - 60 * MIB_KB,
                 swap_free_kb=SWAP - 60 * MIB_KB)
    state = observe_demand(s1, state, cfg)
    assert state.burst_kb == 120 * MIB_KB


def test_each_policy_has_its_own_interval_unless_one_is_set() -> None:
    """``interval_seconds = 0`` (the default) is the policy's own: a decision every second for
    ``pressure`` (2026-12-06; a rise is answered within a second, so a burst needs room for
    about two seconds of it), the kernel's 5 s for ``classic``. A set value is every policy's;
    under a second (other than 0) is refused by both."""
    from guestagent.balloon.config import policy_config

    assert law().interval_s == 1.0
    assert ClassicConfig().interval_s == 5.0
    assert law(interval_s=0).interval_s == 1.0
    assert replace(law(), interval_s=7.0).interval_s == 7.0
    for name, own in (("pressure", 1.0), ("classic", 5.0)):
        section = {"policy": name, "interval_seconds": 0.0}
        assert policy_config(section).interval_s == own  # type: ignore[attr-defined]
        section["interval_seconds"] = 3.0
        assert policy_config(section).interval_s == 3.0  # type: ignore[attr-defined]
        with pytest.raises(InputError, match="interval_seconds"):
            policy_config({"policy": name, "interval_seconds": 0.5}).validate()
