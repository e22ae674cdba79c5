"""Balloon policies: classic against hand-computed section 5.2 values; pressure behaviour;
floors and ceilings never crossed on generated signal sequences (hypothesis)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

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


def follow_size(s: MemorySignals, d: Decision) -> MemorySignals:
    """The next snapshot as the driver would show it after reaching ``d.target_kb``.

    Like the real driver, it keeps whole pages: a target in KiB reads back rounded down.
    """
    target = d.target_kb - d.target_kb % 4
    delta = target - (s.balloon_current_kb or s.mem_total_kb)
    return replace(
        s,
        mem_total_kb=s.mem_total_kb + delta,
        mem_available_kb=max(0, s.mem_available_kb + delta),
        mem_free_kb=max(0, s.mem_free_kb + delta),
        balloon_target_kb=target,
        balloon_current_kb=target,
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


def run_policy(
    config: PolicyConfig, frames: list[dict[str, Any]], start: MemorySignals | None = None
) -> list[Decision]:
    """Feed snapshots one second apart, letting the simulated driver follow each decision."""
    s = start or snap()
    state = PolicyState()
    out = []
    for i, kw in enumerate(frames):
        s = replace(s, **{"timestamp": float(i), "psi_trigger_fired": False, **kw})
        d = decide(s, state, config)
        out.append(d)
        state = d.new_state
        s = follow_size(s, d)
    return out


def test_pressure_shrinks_in_bounded_steps_when_quiet() -> None:
    cfg = PressureConfig()
    # Little free memory: what is given back is page cache, in feedback steps of at most 64 MiB.
    ds = run_policy(cfg, [{}] * 60, start=snap(mem_free_kb=100 * MIB_KB))
    shrinks = [d for d in ds if d.action == "shrink"]
    assert shrinks, "a quiet guest must shrink"
    for d in shrinks:
        assert 0 < d.previous_kb - d.target_kb <= 64 * MIB_KB
    times = [i for i, d in enumerate(ds) if d.action == "shrink"]
    assert all(b - a >= cfg.shrink_interval_s for a, b in zip(times, times[1:]))
    assert all(d.target_kb >= d.floor_kb for d in ds)


def test_targets_are_whole_pages_so_the_driver_read_back_is_not_an_override() -> None:
    # Seen on Xen 4.17: a shrink step of 58686 KiB was written as 662210 KiB, the driver read it
    # back as 662208 KiB, and the policy took that for a change behind its back (follow, then a
    # 30 s holdoff). An available size that is not a whole number of pages provokes such a step.
    for policy in ("pressure", "classic"):
        ds = run_policy(default_config(policy), [{"mem_available_kb": 901_234}] * 200)
        assert all(d.target_kb % 4 == 0 for d in ds), policy
        assert not [d for d in ds if d.action == "follow"], policy
    cfg = PressureConfig()
    d = decide(snap(0.0), PolicyState(), cfg)
    # A target of 662210 KiB that reads back as 662208 KiB is not followed.
    state = replace(d.new_state, last_target_kb=662_210)
    d2 = decide(snap(1.0, size_kb=662_208), state, cfg)
    assert d2.action != "follow", d2.reason


def test_free_memory_is_given_back_faster_but_not_past_twice_the_reserve() -> None:
    cfg = PressureConfig()
    # A fresh idle 1 GiB guest: about 860 MiB free, nothing to squeeze.
    start = snap(mem_free_kb=860 * MIB_KB, mem_available_kb=870 * MIB_KB)
    ds = run_policy(cfg, [{}] * 60, start=start)
    shrinks = [d.previous_kb - d.target_kb for d in ds if d.action == "shrink"]
    # Half of the free memory above 2 x 64 MiB, at most 1/4 of the ceiling per step ...
    assert shrinks[0] == 256 * MIB_KB
    assert all(step <= 256 * MIB_KB for step in shrinks)
    # ... and the guard holds: MemAvailable (870 MiB at full size) never under 2 x reserve.
    final = ds[-1].target_kb
    assert 870 * MIB_KB - (STATIC_MAX - final) >= 128 * MIB_KB
    assert final < STATIC_MAX - 600 * MIB_KB


def test_stall_with_plenty_free_is_not_a_shortage() -> None:
    # Seen on Xen 4.17: the PSI trigger kept firing for two windows after a grow had left 130 and
    # then 390 MiB free (pages evicted earlier being read back); each firing grew the guest again.
    cfg = PressureConfig()
    quiet: list[dict[str, Any]] = [{"mem_free_kb": 40 * MIB_KB}] * 40
    spike = {"psi_trigger_fired": True, "mem_free_kb": 10 * MIB_KB}
    after = {"psi_trigger_fired": True, "mem_free_kb": 390 * MIB_KB}
    ds = run_policy(cfg, [*quiet, spike, after, after])
    assert ds[40].action == "grow"
    assert [d.action for d in ds[41:]] == ["hold", "hold"]
    assert "more memory would not relieve it" in ds[41].reason
    # A shortage by MemAvailable is answered whatever is free.
    ds = run_policy(cfg, [*quiet, spike, {**after, "mem_available_kb": 10 * MIB_KB}])
    assert ds[-1].action == "grow" and "MemAvailable" in ds[-1].reason


def test_no_shrink_while_memory_use_grows() -> None:
    cfg = PressureConfig()
    base = snap(mem_free_kb=100 * MIB_KB)
    # Anonymous use rising 4 MiB/s (MemAvailable falls, MemTotal stays), then flat.
    frames: list[dict[str, Any]] = [
        {"mem_available_kb": base.mem_available_kb - i * 4 * MIB_KB} for i in range(30)
    ] + [{"mem_available_kb": base.mem_available_kb - 29 * 4 * MIB_KB}] * 30
    ds = run_policy(cfg, frames, start=base)
    assert all(d.action != "shrink" for d in ds[1:30]), [d.reason for d in ds[1:30]]
    assert any("memory use growing" in d.reason for d in ds[1:30])
    assert any(d.action == "shrink" for d in ds[30:])
    # The same for the page cache filling at 4 MiB/s.
    frames = [{"cached_kb": base.cached_kb + i * 4 * MIB_KB} for i in range(30)]
    ds = run_policy(cfg, frames, start=base)
    assert all(d.action != "shrink" for d in ds[1:])


def test_demand_growing_into_the_band_grows_before_the_reserve() -> None:
    # Seen on Xen 4.17: an allocation ate the page cache while MemAvailable stayed just above
    # the reserve (it counts the cache), so the policy never grew and the cache was read again.
    cfg = PressureConfig()
    start = snap(size_kb=600 * MIB_KB, mem_available_kb=200 * MIB_KB, mem_free_kb=50 * MIB_KB)
    frames: list[dict[str, Any]] = [{}, {"mem_available_kb": 100 * MIB_KB}]
    ds = run_policy(cfg, frames, start=start)
    assert ds[1].action == "grow" and "under 2x reserve while use grows" in ds[1].reason
    # Flat use inside the band is the hysteresis: hold.
    ds = run_policy(cfg, [{}, {}], start=replace(start, mem_available_kb=100 * MIB_KB))
    assert [d.action for d in ds] == ["hold", "hold"]


def test_pressure_stops_at_twice_the_reserve() -> None:
    ds = run_policy(PressureConfig(), [{}] * 600)
    final = ds[-1]
    # available = MemTotal - 200 MiB in these snapshots; the shrink stops before it nears 2 x 64.
    avail = final.target_kb - OFFSET - 200 * MIB_KB
    assert 128 * MIB_KB <= avail < 128 * MIB_KB + 16 * MIB_KB
    assert final.action == "hold"


def test_pressure_never_shrinks_without_psi_but_still_grows() -> None:
    ds = run_policy(PressureConfig(), [{"psi_available": False}] * 40)
    assert all(d.action == "hold" and "no PSI" in d.reason for d in ds)
    ds = run_policy(PressureConfig(), [{"psi_available": False, "mem_available_kb": 1024}])
    assert ds[0].action == "hold"  # already at the ceiling
    start = snap(size_kb=600 * MIB_KB, xs_target_kb=STATIC_MAX)
    ds = run_policy(
        PressureConfig(), [{"psi_available": False, "mem_available_kb": 1024}], start=start
    )
    assert ds[0].action == "grow"


def test_pressure_holds_while_stall_is_above_target() -> None:
    # A stall of 0.5 % in every interval (PSI totals) and in avg10.
    frames = [{"some_avg10": 0.5, "some_total_us": 1_000_000 + i * 5_000} for i in range(20)]
    ds = run_policy(PressureConfig(), frames)
    assert all(d.action == "hold" for d in ds), [d.reason for d in ds]
    # avg10 alone holds too, unless a surplus of free memory lies unused (test below).
    ds = run_policy(
        PressureConfig(), [{"some_avg10": 0.5}] * 20, start=snap(mem_free_kb=100 * MIB_KB)
    )
    assert all(d.action == "hold" for d in ds)


def test_a_spike_is_answered_within_one_step() -> None:
    cfg = PressureConfig()
    quiet: list[dict[str, Any]] = [{}] * 40
    ds = run_policy(cfg, [*quiet, {"psi_trigger_fired": True}])
    before, spike = ds[-2], ds[-1]
    assert before.target_kb < STATIC_MAX
    assert spike.action == "grow" and "PSI trigger fired" in spike.reason
    assert spike.target_kb - before.target_kb >= 128 * MIB_KB


def test_pressure_grows_on_stall_refaults_swapins_and_low_available() -> None:
    cfg = PressureConfig()
    quiet: list[dict[str, Any]] = [{}] * 40
    cases: list[tuple[dict[str, Any], str]] = [
        ({"some_total_us": 1_000_000 + 10 * 1_000_000}, "stall"),  # runs into the next frame
        ({"refaults": 1000 + 5000}, "refaults"),
        ({"pswpin": 5000}, "swap-ins"),
        ({"mem_available_kb": 10 * MIB_KB}, "MemAvailable"),
    ]
    for kw, word in cases:
        ds = run_policy(cfg, [*quiet, kw])
        assert ds[-1].action == "grow", (word, ds[-1].reason)
        assert word in ds[-1].reason


def test_pressure_goes_to_the_ceiling_on_oom() -> None:
    ds = run_policy(PressureConfig(), [*[{}] * 40, {"oom_kill": 1}])
    assert ds[-1].target_kb == STATIC_MAX and "OOM" in ds[-1].reason
    # ... and does not shrink again for oom_holdoff_s.
    ds = run_policy(PressureConfig(), [*[{}] * 40, *[{"oom_kill": 1}] * 100])
    assert all(d.action != "shrink" for d in ds[41:])


def test_grow_steps_double_within_a_streak_and_are_rate_limited() -> None:
    cfg = PressureConfig(grow_interval_s=2.0)
    spike = {"psi_trigger_fired": True, "mem_free_kb": 20 * MIB_KB}
    frames: list[dict[str, Any]] = [*[{}] * 60, *[spike] * 4]
    ds = run_policy(cfg, frames)
    grows = [d for d in ds[60:] if d.action == "grow"]
    holds = [d for d in ds[60:] if d.action == "hold"]
    assert len(grows) == 2 and len(holds) == 2
    assert "rate-limited" in holds[0].reason or "ceiling" in holds[0].reason
    first, second = (g.target_kb - g.previous_kb for g in grows)
    assert second == 2 * first or grows[1].target_kb == STATIC_MAX


def test_no_shrink_during_holdoff_after_a_grow() -> None:
    cfg = PressureConfig()
    ds = run_policy(cfg, [*[{}] * 40, {"psi_trigger_fired": True}, *[{}] * 40])
    after = ds[41:]
    first_shrink = next(i for i, d in enumerate(after) if d.action == "shrink")
    assert first_shrink + 1 >= cfg.shrink_holdoff_s


def test_free_memory_goes_back_during_the_holdoff_once_the_spike_is_over() -> None:
    # Seen on Xen 4.17: a workload freed its 192 MiB spike and the guest held its ceiling for
    # another 25 s (the holdoff after a grow), with 300 MiB lying free.
    cfg = PressureConfig()
    tight = {"mem_free_kb": 40 * MIB_KB}
    spike = {**tight, "psi_trigger_fired": True}
    frames: list[dict[str, Any]] = [*[tight] * 40, spike, *[tight] * 5]
    ds = run_policy(cfg, frames)
    assert ds[40].action == "grow"
    assert all(d.action == "hold" for d in ds[41:]), [d.reason for d in ds[41:]]
    grown = ds[-1].target_kb
    # The spike ends: 320 MiB free again, use falling (MemAvailable up by what was freed).
    start = replace(snap(size_kb=grown), mem_free_kb=40 * MIB_KB)
    freed = {"mem_free_kb": 320 * MIB_KB, "mem_available_kb": start.mem_available_kb + 280 * MIB_KB}
    ds = run_policy(cfg, [*frames, *[freed] * 10], start=start)
    after = ds[len(frames):]
    shrinks = [d for d in after if d.action == "shrink"]
    assert shrinks and all("of free memory" in d.reason for d in shrinks), [d.reason for d in after]
    # 3/4 of what is free above 2 x reserve, and nothing of the page cache.
    assert shrinks[0].previous_kb - shrinks[0].target_kb == int(
        (320 - 128) * MIB_KB * cfg.shrink_free_fraction
    )
    # Still holding when less than a grow step lies free, or use is still rising.
    some = {"mem_free_kb": 200 * MIB_KB}
    ds = run_policy(cfg, [*frames, *[some] * 10], start=start)
    assert all(d.action == "hold" for d in ds[len(frames):])


def test_surplus_free_memory_goes_back_while_avg10_still_decays() -> None:
    # Seen on Xen 4.17: after a spike avg10 fell from 16 % to under 0.2 % over 50 s while 660 MiB
    # lay free; the stall over each interval (PSI totals) was 0 the whole time.
    cfg = PressureConfig()
    start = snap(mem_free_kb=660 * MIB_KB, some_avg10=8.0)
    ds = run_policy(cfg, [{}] * 30, start=start)
    shrinks = [d for d in ds if d.action == "shrink"]
    assert shrinks and all("of free memory" in d.reason for d in shrinks), [d.reason for d in ds]
    assert shrinks[0].previous_kb - shrinks[0].target_kb == 256 * MIB_KB  # 1/4 of the ceiling
    # It stops once under the hysteresis step of free memory is left above 2x reserve; nothing of
    # the cache goes while avg10 is above its target.
    assert all(d.action == "hold" and "avg10" in d.reason for d in ds[-5:])
    given = ds[0].previous_kb - ds[-1].target_kb
    assert (660 - 128 - 8) * MIB_KB < given <= (660 - 128) * MIB_KB
    # Less free memory (72 MiB above 2x reserve, under a grow step): that goes too, nothing more ...
    ds = run_policy(cfg, [{}] * 30, start=replace(start, mem_free_kb=200 * MIB_KB))
    assert all(d.action in ("hold", "shrink") for d in ds)
    assert all("of free memory" in d.reason for d in ds if d.action == "shrink")
    assert (72 - 8) * MIB_KB < ds[0].previous_kb - ds[-1].target_kb <= 72 * MIB_KB
    # ... and with under the hysteresis step free above 2x reserve the lingering avg10 holds.
    ds = run_policy(cfg, [{}] * 30, start=replace(start, mem_free_kb=134 * MIB_KB))
    assert all(d.action == "hold" for d in ds)
    # ... and a stall in the last interval holds even the free memory.
    stalled = [{"some_total_us": 1_000_000 + i * 100_000} for i in range(30)]  # 10 %
    ds = run_policy(cfg, stalled, start=start)
    assert all(d.action != "shrink" for d in ds[1:])


def test_free_memory_after_a_toolstack_raise_waits_for_the_holdoff() -> None:
    cfg = PressureConfig()
    start = snap(size_kb=512 * MIB_KB, xs_target_kb=512 * MIB_KB, mem_free_kb=40 * MIB_KB)
    raised = {"xs_target_kb": STATIC_MAX, "balloon_target_kb": STATIC_MAX,
              "balloon_current_kb": STATIC_MAX, "mem_total_kb": STATIC_MAX - OFFSET,
              "mem_free_kb": 550 * MIB_KB}
    ds = run_policy(cfg, [{}, raised, *[raised] * 20], start=start)
    assert ds[1].action == "follow"
    assert all(d.action == "hold" and "holdoff" in d.reason for d in ds[2:]), [
        d.reason for d in ds[2:]
    ]


def test_hysteresis_suppresses_tiny_changes() -> None:
    cfg = PressureConfig(shrink_headroom_divisor=1000, shrink_step_pct=0.1)
    s = snap(some_avg10=0.15, mem_free_kb=100 * MIB_KB)  # scale 0.25: step ~ 0.25 MiB
    d = decide_pressure(s, PolicyState(), cfg)
    assert d.action == "hold" and "below min_change" in d.reason
    assert d.target_kb == d.previous_kb


def test_toolstack_override_is_followed() -> None:
    cfg = PressureConfig()
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
    cfg = PressureConfig()
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
        PressureConfig(psi_target_pct=5.0, psi_grow_pct=1.0).validate()
    with pytest.raises(InputError, match="downhysteresis"):
        ClassicConfig(downhysteresis=0).validate()
    with pytest.raises(InputError, match="floor_kb"):
        PressureConfig(floor_kb=-1).validate()


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


def _stall_after_a_shrink(extra: dict[str, Any], lag_kb: int) -> list[Decision]:
    """Quiet feedback shrinks, then a PSI trigger the frame after the last one, with the driver
    ``lag_kb`` short of it; ``extra`` adds to that frame."""
    cfg = PressureConfig()
    quiet: list[dict[str, Any]] = [{"mem_free_kb": 40 * MIB_KB}] * 40
    ds = run_policy(cfg, quiet)
    last = max(i for i, d in enumerate(ds) if d.action == "shrink")
    shrunk = ds[last].target_kb
    stall = {"mem_free_kb": 40 * MIB_KB, "psi_trigger_fired": True,
             "balloon_current_kb": shrunk + lag_kb, **extra}
    return run_policy(cfg, [*quiet[: last + 1], stall, *[{"mem_free_kb": 40 * MIB_KB}] * 35])


def test_a_stall_from_our_own_shrink_stops_the_shrink_instead_of_growing() -> None:
    # Seen on Xen 4.17: a 13 MiB shrink step in an idle phase, the driver still 8 MiB short of it,
    # a 35 % stall with no refault and flat use, and a 128 MiB grow that held for 30 s.
    ds = _stall_after_a_shrink({}, lag_kb=8 * MIB_KB)
    i = max(i for i, d in enumerate(ds[:-35]) if d.action == "shrink") + 1
    stop = ds[i]
    assert stop.action == "stop" and "own reclaim" in stop.reason, stop.reason
    assert stop.new_state.last_grow_t == ds[i - 1].new_state.last_grow_t  # not a grow
    assert stop.target_kb - stop.previous_kb == 8 * MIB_KB  # where the driver got to, no step
    # No further probing for the holdoff, then shrinking again.
    after = ds[i + 1:]
    assert all(d.action == "hold" for d in after[: int(PressureConfig().shrink_holdoff_s) - 1])
    assert any(d.action == "shrink" for d in after)


def test_own_reclaim_tolerates_a_few_refaults_and_a_wobble_in_use() -> None:
    # Seen on Xen 4.17: ~350 refaults/s (the system's own file pages) and MemAvailable 2-3 MiB
    # lower for the second after the step, while the driver reclaimed for it.
    ds = _stall_after_a_shrink(
        {"refaults": 1000 + 350, "mem_available_kb": snap().mem_available_kb - 3 * MIB_KB},
        lag_kb=6 * MIB_KB,
    )
    i = max(i for i, d in enumerate(ds[:-35]) if d.action == "shrink") + 1
    assert "own reclaim" in ds[i].reason, ds[i].reason


def test_a_stall_with_refaults_rising_use_or_a_driver_at_target_still_grows() -> None:
    step = 128 * MIB_KB
    for extra, lag in (
        ({"refaults": 1000 + 5000}, 8 * MIB_KB),  # evicted pages are wanted back
        ({"mem_available_kb": 150 * MIB_KB}, 8 * MIB_KB),  # use rising (MemAvailable falls)
        ({}, 0),  # the driver reached the target: it reclaims nothing more
    ):
        ds = _stall_after_a_shrink(extra, lag)
        i = max(i for i, d in enumerate(ds[:-35]) if d.action == "shrink") + 1
        assert ds[i].action == "grow" and "own reclaim" not in ds[i].reason, (extra, ds[i].reason)
        assert ds[i].target_kb - ds[i].previous_kb >= step, (extra, ds[i].reason)


def test_a_stall_that_outlasts_the_stop_is_answered_with_a_grow_step() -> None:
    cfg = PressureConfig()
    quiet: list[dict[str, Any]] = [{"mem_free_kb": 40 * MIB_KB}] * 40
    ds = run_policy(cfg, quiet)
    last = max(i for i, d in enumerate(ds) if d.action == "shrink")
    stall = {"mem_free_kb": 40 * MIB_KB, "psi_trigger_fired": True}
    lagging = {**stall, "balloon_current_kb": ds[last].target_kb + 8 * MIB_KB}
    ds = run_policy(cfg, [*quiet[: last + 1], lagging, stall, stall])
    assert ds[last + 1].action == "stop" and "own reclaim" in ds[last + 1].reason
    # The driver reached the stop; the stall goes on: one grow step, a new streak (not doubled).
    assert ds[last + 2].action == "grow"
    assert ds[last + 2].target_kb - ds[last + 2].previous_kb == 128 * MIB_KB


def test_use_growing_while_memfree_is_low_grows_before_the_cache_is_evicted() -> None:
    # Seen on Xen 4.17: a spike took MemFree from 142 to 10 MiB at 25 MiB/s while MemAvailable
    # (which counts the page cache) stayed above 180 MiB; the cache the spike read next was evicted.
    cfg = PressureConfig()
    # (avg10 above the target: no shrink in the first frame to blur the arithmetic)
    start = snap(size_kb=800 * MIB_KB, mem_available_kb=300 * MIB_KB, mem_free_kb=100 * MIB_KB,
                 some_avg10=1.0)
    spike = {"mem_available_kb": 275 * MIB_KB, "mem_free_kb": 75 * MIB_KB}
    ds = run_policy(cfg, [{}, spike], start=start)
    assert ds[1].action == "grow" and "MemFree" in ds[1].reason, ds[1].reason
    assert ds[1].target_kb - ds[1].previous_kb >= 128 * MIB_KB
    # A wobble of a few MiB (the kernel reclaiming) is not demand ...
    wobble = {"mem_available_kb": 297 * MIB_KB, "mem_free_kb": 97 * MIB_KB}
    ds = run_policy(cfg, [{}, wobble], start=start)
    assert ds[1].action != "grow", ds[1].reason
    # ... and with MemFree above twice the reserve the kernel is not evicting anything yet.
    roomy = replace(start, mem_free_kb=200 * MIB_KB)
    ds = run_policy(cfg, [{}, {**spike, "mem_free_kb": 175 * MIB_KB}], start=roomy)
    assert ds[1].action != "grow", ds[1].reason
