"""The ``pressure`` policy (the default): find the working set by probing against a pressure target.

Pure functions of a :class:`~guestagent.balloon.signals.MemorySignals` snapshot and the last
:class:`~guestagent.balloon.common.PolicyState`; no I/O, no clock. The shared limits, page
alignment, hysteresis and toolstack override are :func:`~guestagent.balloon.common.decide_with`'s.

**The control law.** Keep MemAvailable above a *headroom line* H = R + max(R, B - g). R, the
reserve, is max(``reserve_mb`` (32 MiB by default) times the answer time (the decision interval
plus ``populate_s``) over 2 s, 3 % of the ceiling). B, the room for a burst, is the part of the
largest burst seen that arrives before a grow lands: the burst allowance (the largest growth
of demand, MemTotal - MemAvailable, which ballooning does not move, plus swap in use, seen
within any 10 s), held for the *hold time* and then halved every 30 s, at most the
fastest rise of demand seen while it is held (over 1 s or more) times one decision interval (1 s
by default) plus ``populate_s`` (1 s), plus (1 - populate / rise) of the allowance when the driver
has been seen populating a grow slower than that rise, or not yet at all; the hold time is the
spacing between the starts of the last two bursts, within [60 s, 180 s] (bursts further apart are
unrelated: 60 s).
g is the growth of demand within the last 10 s, the part of a burst that has already arrived:
between bursts H = R + max(R, B), room for a whole burst; at a burst's peak H = 2R.
**Grow at once** when the guest is short: an OOM kill (to the ceiling); MemAvailable under R; a
swap-out of 8 MiB or more since the last decision (the allocation guard's zram absorbed what the
RAM could not hold); demand rising (by 8 MiB and faster than 1 MiB/s since the last decision) while
MemAvailable is under H or MemFree under 2R; or, while the kernel reclaims (MemFree under 2R), a
PSI trigger, a "some" stall of 2 % over the last interval, refaults over 2000 pages/s or swap-ins
over 1000 pages/s. The step is the shortage, max(H - MemAvailable, 2R - MemFree) plus the demand
that arrived since the last decision and, during a ramp (demand rising at this decision and the one
before, or rising now after a burst's worth, 32 MiB, had already arrived within the burst window:
a workload allocating in steps with pauses between them), the demand expected until the next
decision (its rate times ``grow_lookahead_s``, 5 s, at most as much again as arrived), at least R
and at least what was refaulted, swapped in or
swapped out since then, counted from the driver's size when the driver is still above our
target (giving back memory for an earlier shrink: a grow never sends it further down); the
ceiling caps it. A stall while the balloon driver is still short of our own last shrink,
with few refaults and demand flat, is that shrink's own reclaim: **stop** where the driver got to,
do not grow. **Shrink** (probe, as Senpai does for cgroups) only when quiet: "some" stall over the
last interval and avg10 under the target ``psi_target_pct`` (0.2 %), refaults under 500 pages/s, no
swap-out, the page cache not rising (pages that merely stay in swap hold nothing: only an access
brings them back), no grow within ``grow_holdoff_s`` (5 s: the line, B still held, keeps the
room a burst needs), no stop within the hold time, no toolstack change within 30 s
and no OOM kill within 5 min, at most once per 5 s, the driver caught up; down to the *probe line*
P = H + (the rise of use in ``rising_room_s``, 30 s, at its rate since the last decision, when use
rises by 1 MiB/s or more; else 0), by (1 - pressure / target) x the larger of a cache step (1 % of
the size or 1/4 of MemAvailable above P, at most 1/16 of the ceiling) and a free-memory step (3/4
of MemFree above P, at most 1/4 of the ceiling), never taking MemAvailable under P and never
under the floor, max(``floor_kb``, :func:`~guestagent.balloon.common.hard_minimum_kb`).
**Pace a slow driver**: once it has been seen giving memory back slower than
``slow_release_kb_s`` (32 MiB/s; measured while it was still above the target written a
decision earlier), the target is never more than ``release_pace_s`` (2 s) of that speed, at
least ``min_change_kb``, below its size: a shrink is cut to it, and an earlier shrink the
driver is still far from is cut back up to it (``pace``, not a grow); one probe per 5 s still,
so such a driver comes down by 2 s of its release per 5 s (:func:`paced`).

Each rule has a replay test with the incident it guards against (``tests/test_balloon_policy.py``,
``tests/test_balloon_pressure_replay.py``); ``docs/balloon-pressure.md`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from guestagent.balloon.common import (
    Decision,
    Limits,
    PolicyConfig,
    PolicyState,
    decide_with,
    driver_current,
    swapped_kb,
    used_kb,
)
from guestagent.balloon.config import INTERVAL, PROBE_INTERVAL, PSI_GROW, PSI_TARGET, RESERVE
from guestagent.balloon.signals import PAGE_KB, MemorySignals
from guestagent.errors import InputError
from guestagent.units import MIB_KB

#: The decision interval ``reserve_min_kb`` is stated for (:func:`reserve_kb` scales it).
RESERVE_INTERVAL_S = 1.0
#: At most this many ``(t, used)`` samples are kept for the burst window.
DEMAND_WINDOW_MAX = 64


@dataclass(frozen=True)
class PressureConfig(PolicyConfig):
    """Tunables of the pressure policy (the module docstring states how they combine)."""

    name: ClassVar[str] = "pressure"
    #: A decision every second: a rise of use is answered within a second, so the room kept for
    #: a burst is about two seconds of its rise (closed loop on Xen, 2026-12-06).
    own_interval_s: ClassVar[float] = 1.0
    interval_s: float = INTERVAL.field()
    #: Shrink only while memory stall ("some") is below this percentage.
    psi_target_pct: float = PSI_TARGET.field()
    #: A stall over the last interval of this percentage is pressure (a grow while reclaiming).
    psi_grow_pct: float = PSI_GROW.field()
    #: The PSI trigger the controller arms: 150 ms of "some" stall in a 1 s window (15 %).
    trigger_stall_us: int = 150_000
    trigger_window_us: int = 1_000_000
    #: Refaults and swap-ins per second (pages) that are pressure while reclaiming.
    refault_grow_per_s: float = 2000.0
    swapin_grow_per_s: float = 1000.0
    #: Refaults per second under which the guest is quiet (a shrink may probe, and a stall after
    #: our own shrink is its own reclaim).
    quiet_refaults_per_s: float = 500.0
    #: The kernel reclaims while MemFree is under this many reserves.
    stall_grow_free_reserves: float = 2.0
    #: The reserve R: max(reserve_min_kb scaled by the answer time, reserve_pct % of the ceiling)
    #: (:func:`reserve_kb`).
    reserve_min_kb: int = RESERVE.field()
    reserve_pct: float = 3.0
    #: A grow during a ramp (demand rising at this decision and the one before, or a rise that
    #: continues a burst: :func:`continues_burst`) also covers the
    #: demand expected until the next decision: the rate since the last decision times this many
    #: seconds (5, the decision interval it was written for; 0: none), at most the demand that
    #: arrived since the last decision (so at a decision a second, as much again as arrived).
    grow_lookahead_s: float = 5.0
    #: A probe: the larger of this percentage of the target ...
    shrink_step_pct: float = 1.0
    #: ... and this fraction (1/N) of MemAvailable above the headroom line ...
    shrink_headroom_divisor: int = 4
    #: ... at most max(shrink_max_step_kb, shrink_max_step_pct % of the ceiling); free memory
    #: (MemFree above the line) goes by this fraction of it, at most this % of the ceiling.
    shrink_max_step_kb: int = 64 * MIB_KB
    shrink_max_step_pct: float = 6.25
    shrink_free_fraction: float = 0.75
    shrink_free_max_step_pct: float = 25.0
    #: At most one shrink per this many seconds (reclaim shows in PSI before the next probe;
    #: ``probe_interval_seconds``).
    shrink_interval_s: float = PROBE_INTERVAL.field()
    #: Bursts: demand growth within this window; a growth of burst_min_kb starts a burst.
    burst_window_s: float = 10.0
    burst_min_kb: int = 32 * MIB_KB
    #: The hold time (the burst allowance held; no shrink after a stop): the spacing
    #: of the last two bursts, within these bounds (bursts further apart are unrelated).
    holdoff_min_s: float = 60.0
    holdoff_max_s: float = 180.0
    #: No shrink for this long after a grow: 5 s (2026-12-05; was 15 s; then the interval). The
    #: burst allowance, still held, keeps every probe above the line R + B, so the memory a
    #: burst needs stays there; what lies above the line is given back.
    grow_holdoff_s: float = 5.0
    #: The headroom line's second term is at least this many reserves (the law: 1; the
    #: replay's lever table sets it to 0 to show what the second R costs).
    line_min_reserves: float = 1.0
    #: After the hold time the burst allowance halves every this many seconds.
    burst_half_life_s: float = 30.0
    #: The room a burst needs is what arrives before a grow lands: its fastest rise times one
    #: decision interval plus this many seconds (the driver populating the grow).
    populate_s: float = 1.0
    #: A rise of demand is measured over at least this many seconds (a decision woken by the
    #: PSI trigger may come a fraction of a second after the last).
    rate_span_s: float = 1.0
    #: No shrink for this long after a toolstack change (follow it, do not fight it).
    follow_holdoff_s: float = 30.0
    #: A stall at most this long after our shrink, the driver still short of it, may be its own.
    own_reclaim_window_s: float = 10.0
    #: No shrink for this long after an OOM kill.
    oom_holdoff_s: float = 300.0
    #: No further shrink while the driver is this far behind the target (current - target).
    max_driver_lag_kb: int = 128 * MIB_KB
    #: Demand (use or page cache) rising faster than this (KiB/s) since the last decision.
    demand_growth_kb_per_s: int = 1024
    #: A probe while use rises keeps this many seconds of the rise above the headroom line
    #: (the probe line); a rising page cache still holds every probe.
    rising_room_s: float = 30.0
    #: A driver seen giving memory back slower than this (KiB/s, while it was the limit) is
    #: paced: the testbed's HVM guest released 10-14 MiB/s and a CPU-bound loop beside it ran at
    #: half its speed meanwhile (``balloon_move_cost.py --type hvm``, 2026-12-06); its PV guest
    #: releases hundreds of MiB/s at no measurable cost.
    slow_release_kb_s: int = 32 * MIB_KB
    #: A paced driver is never asked for more than this many seconds of its release below its
    #: size: its work stops within about this long of the guest getting busy.
    release_pace_s: float = 2.0

    def validate(self) -> None:
        super().validate()
        if not 0 < self.psi_target_pct < self.psi_grow_pct <= 100:
            raise InputError(
                "balloon config psi_target_pct/psi_grow_pct",
                "need 0 < target < grow <= 100",
                (self.psi_target_pct, self.psi_grow_pct),
            )
        for key in ("shrink_headroom_divisor",):
            if getattr(self, key) < 1:
                raise InputError(f"balloon config {key}", "must be >= 1", getattr(self, key))
        for key in ("stall_grow_free_reserves", "burst_window_s", "holdoff_min_s",
                    "follow_holdoff_s", "burst_half_life_s"):
            if getattr(self, key) <= 0:
                raise InputError(f"balloon config {key}", "must be > 0", getattr(self, key))
        if self.holdoff_max_s < self.holdoff_min_s:
            raise InputError("balloon config holdoff_max_s", "must be >= holdoff_min_s",
                             self.holdoff_max_s)
        if not 0 <= self.shrink_free_fraction <= 1:
            raise InputError(
                "balloon config shrink_free_fraction", "expected 0..1", self.shrink_free_fraction
            )
        for key in ("shrink_step_pct", "shrink_max_step_pct", "reserve_pct",
                    "shrink_free_max_step_pct"):
            value = getattr(self, key)
            if not 0 <= value <= 100:
                raise InputError(f"balloon config {key}", "expected a percentage", value)
        for key in ("shrink_max_step_kb", "reserve_min_kb", "demand_growth_kb_per_s",
                    "own_reclaim_window_s", "quiet_refaults_per_s", "burst_min_kb",
                    "grow_lookahead_s", "grow_holdoff_s", "rising_room_s", "line_min_reserves",
                    "populate_s", "rate_span_s", "slow_release_kb_s", "release_pace_s"):
            if getattr(self, key) < 0:
                raise InputError(f"balloon config {key}", "must be >= 0", getattr(self, key))


# --------------------------------------------------------------------------------------------
# Bursts: the headroom follows what demand actually did


def hold_s(state: PolicyState, config: PressureConfig) -> float:
    """The hold time: the spacing between the starts of the last two bursts, within
    [``holdoff_min_s``, ``holdoff_max_s``]. Bursts that recur every few minutes keep their
    allowance (and the holdoff after a grow) until the next one is due."""
    spacing = state.burst_spacing_s if state.burst_spacing_s is not None else 0.0
    return max(config.holdoff_min_s, spacing)


def burst_allowance(state: PolicyState, config: PressureConfig, now: float) -> int:
    """B: the largest burst seen, held for the hold time after it was seen, then halved every
    ``burst_half_life_s`` (a burst that does not come back stops costing memory)."""
    if state.burst_t is None:
        return 0
    hold = hold_s(state, config)
    age = now - state.burst_t
    if age <= hold:
        return state.burst_kb
    return int(state.burst_kb * 0.5 ** ((age - hold) / config.burst_half_life_s))


def peak_rate_kb_s(window: tuple[tuple[float, int], ...], span_s: float) -> float:
    """The fastest rise of demand in the window (KiB/s): each sample against the latest one at
    least ``span_s`` before it (0 when no two samples are that far apart)."""
    best = 0.0
    for j, (t, used) in enumerate(window):
        base = next(((t0, u0) for t0, u0 in reversed(window[:j]) if t - t0 >= span_s), None)
        if base is not None:
            best = max(best, (used - base[1]) / (t - base[0]))
    return best


def answer_time_s(config: PressureConfig) -> float:
    """How long a grow takes to land: one decision interval plus ``populate_s``."""
    return config.interval_s + config.populate_s


def burst_room_kb(state: PolicyState, config: PressureConfig, now: float) -> int:
    """B, the room a burst needs: what arrives before a grow lands. The fastest rise seen while
    the burst allowance is held times one decision interval plus ``populate_s``; and, when the
    driver populates slower than that rise (or has not been seen populating), the part of the
    burst it falls behind by, (1 - populate / rise) of it. At most the allowance itself (a burst
    that arrives within one interval needs room for all of it)."""
    allowance = burst_allowance(state, config, now)
    rise = state.burst_rate_kb_s
    if rise <= 0:
        return allowance
    answer_s = answer_time_s(config)
    behind = max(0.0, 1.0 - state.populate_kb_s / rise)
    return min(allowance, int(rise * answer_s + allowance * behind))


def driver_move(signals: MemorySignals, state: PolicyState
                ) -> tuple[int, int, int, float] | None:
    """(size at the last decision, size now, the target written then, seconds since): how the
    driver moved toward our last target; None without the history or the driver's size."""
    current, before = signals.balloon_current_kb, state.prev_current_kb
    target = state.last_target_kb
    if current is None or before is None or target is None or state.prev_t is None:
        return None
    return before, current, target, signals.timestamp - state.prev_t


def observe_populate(signals: MemorySignals, state: PolicyState, config: PressureConfig
                     ) -> PolicyState:
    """How fast the driver populates a grow, from its size since the last decision while it was
    below the target then written: still below it, the driver was the limit and the rate is its
    speed; there already, it was at least that fast (the fastest such rate is kept)."""
    move = driver_move(signals, state)
    if move is None:
        return state
    before, current, target, dt = move
    if dt <= 0 or target <= before or current - before < config.min_change_kb:
        return state
    rate = (current - before) / dt
    if current < target - config.min_change_kb:
        return replace(state, populate_kb_s=rate)
    return replace(state, populate_kb_s=max(state.populate_kb_s, rate))


def observe_release(signals: MemorySignals, state: PolicyState, config: PressureConfig
                    ) -> PolicyState:
    """How fast the driver gives memory back, from its size since the last decision while it was
    more than ``min_change_kb`` above the target then written: still above it, the driver was the
    limit and the rate is its speed; there already, at least that fast (raises a speed once
    measured; a driver never seen limiting stays unmeasured, 0, and is never paced). Not over
    less than half a second (a decision the PSI trigger woke just after a write may find a fast
    driver not started yet)."""
    move = driver_move(signals, state)
    if move is None:
        return state
    before, current, target, dt = move
    if dt < 0.5 or before - target < config.min_change_kb or current > before:
        return state
    rate = (before - current) / dt
    if current > target + config.min_change_kb:
        return replace(state, release_kb_s=rate)
    if 0 < state.release_kb_s < rate:
        return replace(state, release_kb_s=rate)
    return state


def releasing_slowly(state: PolicyState, config: PressureConfig) -> bool:
    """The driver was seen giving memory back slower than ``slow_release_kb_s``."""
    return 0 < state.release_kb_s < config.slow_release_kb_s


def paced(signals: MemorySignals, state: PolicyState, config: PressureConfig, prev: int,
          result: tuple[int, str, str, PolicyState]) -> tuple[int, str, str, PolicyState]:
    """A hold or a shrink, with a slow driver kept at most ``release_pace_s`` of its release
    (at least ``min_change_kb``) above the target: a shrink is cut to that, and an earlier
    shrink the driver is still far from is cut back to it (``pace``), so the driver's work,
    which takes the guest's CPU, stops within that long when the guest gets busy."""
    target, action, reason, new = result
    current = signals.balloon_current_kb
    if current is None or not releasing_slowly(state, config):
        return result
    pace = max(config.min_change_kb, int(state.release_kb_s * config.release_pace_s))
    lowest = current - pace
    if target >= lowest:
        return result
    note = (f"; the driver gives memory back at {state.release_kb_s:.0f} KiB/s: at most "
            f"{config.release_pace_s:g} s of it below its size {current} KiB")
    if lowest > prev:
        return lowest, "pace", reason + note + f", the target back up to {lowest} KiB", new
    return lowest, action, reason + note + f", {lowest} KiB", new


def _with_burst(state: PolicyState, config: PressureConfig, now: float, growth: int,
                bursting: bool) -> PolicyState:
    """``state`` (its demand window already updated) with the burst allowance raised to a larger
    growth (with the fastest rise seen while the last one was held, or this one's), or with the
    rise of a burst within the allowance, when faster."""
    rate = peak_rate_kb_s(state.demand_window, config.rate_span_s) if growth > 0 else 0.0
    if growth > burst_allowance(state, config, now):
        held = state.burst_t is not None and now - state.burst_t <= hold_s(state, config)
        kept_rate = state.burst_rate_kb_s if held else 0.0
        return replace(state, burst_kb=growth, burst_t=now,
                       burst_rate_kb_s=max(kept_rate, rate))
    if bursting and rate > state.burst_rate_kb_s:
        return replace(state, burst_rate_kb_s=rate)
    return state


def observe_demand(signals: MemorySignals, state: PolicyState, config: PressureConfig
                   ) -> PolicyState:
    """Record demand (MemTotal - MemAvailable, which ballooning does not move) and update the
    burst allowance, the current burst and the spacing between burst starts.

    A burst is demand growth over the window (now minus the window's minimum) of at least
    ``burst_min_kb``; the spacing is measured between the starts of consecutive bursts. A burst
    more than ``holdoff_max_s`` after the last is unrelated to it: the spacing is forgotten.
    """
    now = signals.timestamp
    used = demand_kb(signals)
    kept = [(t, u) for t, u in state.demand_window if 0 <= now - t <= config.burst_window_s]
    window = (*kept[-(DEMAND_WINDOW_MAX - 1):], (now, used))
    growth = used - min(u for _, u in window)
    bursting = growth >= config.burst_min_kb
    # One replace for what changes at every decision (a dataclass replace of this 26-field
    # state was a tenth of a decision's CPU); the burst's fields only when they change.
    new = _with_burst(replace(state, demand_window=window, in_burst=bursting), config, now,
                      growth, bursting)
    if bursting and not state.in_burst:
        spacing = None
        if state.burst_start_t is not None and now - state.burst_start_t <= config.holdoff_max_s:
            spacing = now - state.burst_start_t
        new = replace(new, burst_start_t=now, burst_spacing_s=spacing)
    return new


def burst_so_far_kb(state: PolicyState) -> int:
    """The growth of demand within the burst window up to now (the last sample minus the
    window's minimum): how much of a burst has already arrived, and so needs no headroom."""
    if not state.demand_window:
        return 0
    return max(0, state.demand_window[-1][1] - min(u for _, u in state.demand_window))


def rising_room_kb(used_rate: float, config: PressureConfig) -> int:
    """What a probe keeps above the headroom line while use rises (by ``demand_growth_kb_per_s``
    or faster): the rise of ``rising_room_s`` at the rate since the last decision. A slow rise far
    below the line no longer holds every probe (at a workload's start the guest sat at 3/4 of
    its ceiling while use rose by 2 MiB/s); a fast one keeps the guest where it is."""
    if used_rate < config.demand_growth_kb_per_s:
        return 0
    return int(used_rate * config.rising_room_s)


def headroom_line_kb(reserve: int, burst: int, arrived: int, min_reserves: float = 1.0) -> int:
    """H = R + max(R, B - g): room for the rest of a burst as large as the largest seen, g of
    it having arrived within the burst window (between bursts g is 0 and H = R + max(R, B)).
    ``min_reserves`` scales the second R (``line_min_reserves``, 1 in the law)."""
    return reserve + max(int(reserve * min_reserves), burst - arrived)


# --------------------------------------------------------------------------------------------
# What one snapshot says


@dataclass(frozen=True)
class Reading:
    """One snapshot against the last decision, in the quantities the control law uses."""

    stall_pct: float  # "some" stall over the last interval (PSI totals), else avg10
    pressure_pct: float  # max(stall, avg10): how far from the target a probe is
    refault_rate: float  # pages/s since the last decision (0 without history)
    swapin_rate: float
    wanted_back_kb: int  # refaulted, swapped in and swapped out since the last decision
    swapped_out_kb: int  # net growth of swap in use since the last decision (0 without history)
    used_delta_kb: int | None  # demand since the last decision (None without history)
    cached_delta_kb: int | None
    used_rate: float  # KiB/s (0 without a usable interval)
    cached_rate: float
    oom: bool
    reserve_kb: int  # R
    line_kb: int  # the headroom line H = R + max(R, B - g)
    burst_kb: int  # B
    probe_line_kb: int  # H plus the rise of use expected within rising_room_s: a probe's floor


def _rate(now: float, prev_t: float | None, value: int | None, prev: int | None) -> float | None:
    """Per-second rate of a monotonic counter; None without history or after a reset."""
    if prev_t is None or value is None or prev is None or now <= prev_t or value < prev:
        return None
    return (value - prev) / (now - prev_t)


def stall_pct(signals: MemorySignals, state: PolicyState) -> float:
    """Memory "some" stall over the last interval in percent (from PSI totals), else avg10."""
    rate = _rate(signals.timestamp, state.prev_t, signals.some_total_us, state.prev_some_total_us)
    if rate is None:
        return signals.some_avg10
    return min(100.0, rate / 1e6 * 100.0)


def reserve_kb(config: PressureConfig, ceiling_kb: int) -> int:
    """R = max(reserve_min_kb scaled by the answer time, reserve_pct % of the ceiling).

    ``reserve_min_kb`` is the room for a burst never seen before at a decision a second: what
    arrives before a grow lands, like B's room (:func:`burst_room_kb`). A slower decision waits
    longer, so the least reserve scales with ``interval_s + populate_s`` against the 1 s + 1 s
    (``RESERVE_INTERVAL_S`` + ``populate_s``)
    it was measured at (2026-12-07: 32 MiB at 1 s, 96 MiB at 5 s)."""
    measured_at_s = RESERVE_INTERVAL_S + config.populate_s
    base = int(config.reserve_min_kb * max(1.0, answer_time_s(config) / measured_at_s))
    return max(base, int(ceiling_kb * config.reserve_pct / 100))


def demand_kb(signals: MemorySignals) -> int:
    """Demand for bursts: MemTotal - MemAvailable plus swap in use. With the allocation guard's
    zram, a burst that outruns the balloon is partly swapped out; without the swap it would be
    measured short by what the kernel pushed out (the zram's own compressed pages count in
    MemTotal - MemAvailable, so demand errs high, on the safe side)."""
    return used_kb(signals) + swapped_kb(signals)


def swapped_out_kb(signals: MemorySignals, state: PolicyState) -> int | None:
    """Swap in use grown since the last decision (net swap-out); None without history."""
    if state.prev_swapped_kb is None:
        return None
    return swapped_kb(signals) - state.prev_swapped_kb


def demand_delta(signals: MemorySignals, state: PolicyState) -> tuple[int, int] | None:
    """(demand, cached) growth in KiB since the last decision, demand counting swap in use
    (:func:`demand_kb`); None without history."""
    if state.prev_used_kb is None or state.prev_cached_kb is None:
        return None
    swapped = swapped_out_kb(signals, state) or 0
    used = used_kb(signals) - state.prev_used_kb + swapped
    return used, signals.cached_kb - state.prev_cached_kb


def _per_s(delta: int | None, dt: float) -> float:
    """A delta as a rate; 0 when the last decision is under half a second old (too short for a
    rate to mean anything)."""
    return delta / dt if delta is not None and dt >= 0.5 else 0.0


def read(signals: MemorySignals, state: PolicyState, config: PressureConfig, lim: Limits
         ) -> Reading:
    now = signals.timestamp
    refault_rate = _rate(now, state.prev_t, signals.refaults, state.prev_refaults)
    swapin_rate = _rate(now, state.prev_t, signals.pswpin, state.prev_pswpin)
    dt = now - state.prev_t if state.prev_t is not None else 0.0
    wanted = (refault_rate or 0.0) * dt + (swapin_rate or 0.0) * dt
    swapped_out = max(0, swapped_out_kb(signals, state) or 0)
    delta = demand_delta(signals, state)
    used_delta, cached_delta = delta if delta is not None else (None, None)
    stall = stall_pct(signals, state)
    reserve = reserve_kb(config, lim.ceiling_kb)
    burst = burst_room_kb(state, config, now)
    line = headroom_line_kb(reserve, burst, burst_so_far_kb(state), config.line_min_reserves)
    used_rate = _per_s(used_delta, dt)
    return Reading(
        stall_pct=stall,
        pressure_pct=max(stall, signals.some_avg10),
        refault_rate=refault_rate or 0.0,
        swapin_rate=swapin_rate or 0.0,
        wanted_back_kb=int(wanted) * PAGE_KB + swapped_out,
        swapped_out_kb=swapped_out,
        used_delta_kb=used_delta,
        cached_delta_kb=cached_delta,
        used_rate=used_rate,
        cached_rate=_per_s(cached_delta, dt),
        oom=(signals.oom_kill is not None and state.prev_oom_kill is not None
             and signals.oom_kill > state.prev_oom_kill),
        reserve_kb=reserve,
        line_kb=line,
        burst_kb=burst,
        probe_line_kb=line + rising_room_kb(used_rate, config),
    )


# --------------------------------------------------------------------------------------------
# Grow


def reclaiming(signals: MemorySignals, r: Reading, config: PressureConfig) -> bool:
    """MemFree under ``stall_grow_free_reserves`` (2) reserves: the kernel is reclaiming, so a
    stall or refaults mean memory is short. With more free, what still stalls is pages evicted
    earlier being read back, or a trigger window that still covers the time before the last grow;
    more memory relieves neither."""
    return signals.mem_free_kb < int(r.reserve_kb * config.stall_grow_free_reserves)


def demand_rising(r: Reading, config: PressureConfig) -> bool:
    """Demand grew by ``min_change_kb`` or more and faster than ``demand_growth_kb_per_s`` since
    the last decision (MemAvailable wobbles by a few MiB while the kernel reclaims, which over a
    second is already a rate above the threshold)."""
    return (
        r.used_delta_kb is not None
        and r.used_delta_kb >= config.min_change_kb
        and r.used_rate >= config.demand_growth_kb_per_s
    )


def shortage_reasons(signals: MemorySignals, r: Reading, config: PressureConfig) -> list[str]:
    """Memory is short now, or about to be: MemAvailable under the reserve; demand rising into the
    headroom line, or while MemFree is under 2 reserves (with a large page cache MemFree reaches
    the watermarks long before MemAvailable nears the line, and from then on every new page is
    one evicted from the cache)."""
    avail = signals.mem_available_kb
    out = []
    if avail < r.reserve_kb:
        out.append(f"MemAvailable {avail} KiB < reserve {r.reserve_kb} KiB")
    if r.swapped_out_kb >= config.min_change_kb:
        out.append(f"{r.swapped_out_kb} KiB swapped out since the last decision")
    if demand_rising(r, config):
        if avail < r.line_kb:
            out.append(f"use grows {r.used_rate:.0f} KiB/s with MemAvailable {avail} KiB under "
                       f"the headroom line {r.line_kb} KiB")
        elif reclaiming(signals, r, config):
            out.append(f"use grows {r.used_rate:.0f} KiB/s with MemFree {signals.mem_free_kb} "
                       "KiB under 2x reserve: grow before the page cache is evicted for it")
    return out


def pressure_reasons(signals: MemorySignals, r: Reading, config: PressureConfig) -> list[str]:
    """PSI and refault signals of a shortage (counted only while the kernel is reclaiming)."""
    out = []
    if signals.psi_trigger_fired:
        out.append("PSI trigger fired")
    if r.stall_pct >= config.psi_grow_pct:
        out.append(f"stall {r.stall_pct:.2f} % >= {config.psi_grow_pct} %")
    if r.refault_rate >= config.refault_grow_per_s:
        out.append(f"refaults {r.refault_rate:.0f}/s >= {config.refault_grow_per_s:.0f}/s")
    if r.swapin_rate >= config.swapin_grow_per_s:
        out.append(f"swap-ins {r.swapin_rate:.0f}/s >= {config.swapin_grow_per_s:.0f}/s")
    return out


def grow_step_kb(signals: MemorySignals, r: Reading, config: PressureConfig, ramp: bool = False
                 ) -> int:
    """The shortage: what brings MemAvailable back to the headroom line and MemFree back to two
    reserves, plus the demand that arrived since the last decision, plus, during a ``ramp``
    (demand rising at this decision and the one before, or :func:`continues_burst`), the
    demand expected before the next
    decision: its rate times ``grow_lookahead_s``, at most what arrived (a ramp of 8-13 MiB/s met
    grows of 64-128 MiB every 5-15 s on Xen 4.17 and ran against a guest 60-130 MiB short, run
    20261204-180448-18010). A one-off spike gets no lookahead: one rise says nothing of the next.
    At least one reserve and at least what was refaulted or swapped in since then."""
    free_line = int(r.reserve_kb * config.stall_grow_free_reserves)
    deficit = max(0, r.line_kb - signals.mem_available_kb, free_line - signals.mem_free_kb)
    arriving = max(0, r.used_delta_kb or 0)
    expected = 0
    if ramp and demand_rising(r, config):
        expected = min(arriving, int(r.used_rate * config.grow_lookahead_s))
    return max(r.reserve_kb, deficit + arriving + expected, r.wanted_back_kb)


def own_reclaim(
    signals: MemorySignals, state: PolicyState, config: PressureConfig, prev: int, r: Reading
) -> bool:
    """Whether a stall is most likely the reclaim the balloon driver does for our own shrink.

    All of: our last change was a shrink, at most ``own_reclaim_window_s`` ago, and the driver has
    not reached it yet (``current_kb`` above the target: it is still allocating the pages to hand
    back); refaults under ``quiet_refaults_per_s`` and no swap-in; use and page cache each grown by
    less than ``min_change_kb`` since the last decision. A driver that has reached its target
    reclaims nothing more, so any stall after that is answered as usual.
    """
    last_shrink = state.last_shrink_t
    if last_shrink is None or signals.timestamp - last_shrink > config.own_reclaim_window_s:
        return False
    if state.last_grow_t is not None and state.last_grow_t >= last_shrink:
        return False
    if signals.balloon_current_kb is None or signals.balloon_current_kb <= prev:
        return False
    if r.refault_rate >= config.quiet_refaults_per_s or r.swapin_rate > 0 or r.swapped_out_kb > 0:
        return False
    if r.used_delta_kb is None or r.cached_delta_kb is None:
        return False
    return max(r.used_delta_kb, r.cached_delta_kb) < config.min_change_kb


# --------------------------------------------------------------------------------------------
# Shrink


def quiet_holds(signals: MemorySignals, r: Reading, config: PressureConfig) -> list[str]:
    """What the signals say against a probe: pressure at or above the target, refaults, the page
    cache rising (probing while a cache is read evicts what was just read), or no PSI at all
    (never shrink blind). Rising use does not hold a probe: it raises the probe's line
    (:func:`rising_room_kb`)."""
    out = []
    if not signals.psi_available:
        out.append("no PSI on this kernel: never shrinking blind")
    if r.stall_pct >= config.psi_target_pct:
        out.append(f"stall {r.stall_pct:.2f} % not below target {config.psi_target_pct} %")
    elif signals.some_avg10 >= config.psi_target_pct:
        out.append(f"avg10 {signals.some_avg10:.2f} % not below target {config.psi_target_pct} %")
    if r.refault_rate >= config.quiet_refaults_per_s:
        out.append(f"refaults {r.refault_rate:.0f}/s")
    if r.swapped_out_kb > 0:
        out.append(f"{r.swapped_out_kb} KiB swapped out since the last decision")
    if r.cached_rate >= config.demand_growth_kb_per_s:
        out.append(f"page cache growing ({r.cached_rate:.0f} KiB/s)")
    return out


def time_holds(signals: MemorySignals, state: PolicyState, config: PressureConfig) -> list[str]:
    """The holdoffs: ``grow_holdoff_s`` after a grow; the hold time after a stop of our shrink;
    ``follow_holdoff_s`` after a toolstack change; 5 min after an OOM kill; one shrink per
    ``shrink_interval_s``."""
    now = signals.timestamp
    out = []
    hold = hold_s(state, config)
    if state.last_own_reclaim_t is not None and now - state.last_own_reclaim_t < hold:
        out.append(f"holdoff {hold:.0f} s after a stop of our shrink")
    if state.last_grow_t is not None and now - state.last_grow_t < config.grow_holdoff_s:
        out.append(f"holdoff {config.grow_holdoff_s:.0f} s after a grow")
    if state.last_follow_t is not None and now - state.last_follow_t < config.follow_holdoff_s:
        out.append(f"holdoff {config.follow_holdoff_s:.0f} s after a toolstack change")
    if state.last_oom_t is not None and now - state.last_oom_t < config.oom_holdoff_s:
        out.append(f"holdoff {config.oom_holdoff_s:.0f} s after an OOM kill")
    if state.last_shrink_t is not None and now - state.last_shrink_t < config.shrink_interval_s:
        out.append("shrink rate-limited")
    return out


def size_holds(signals: MemorySignals, config: PressureConfig, lim: Limits, prev: int
               ) -> list[str]:
    """The driver far behind its target, or the target at the floor."""
    out = []
    lag = driver_current(signals) - prev
    if signals.balloon_current_kb is not None and lag > config.max_driver_lag_kb:
        out.append(f"driver {lag} KiB behind its target")
    if prev <= lim.floor_kb:
        out.append("at the floor")
    return out


def shrink_step_kb(signals: MemorySignals, r: Reading, config: PressureConfig, lim: Limits,
                   prev: int) -> int:
    """A probe, proportional to the distance from the pressure target (Senpai's law): the
    larger of a page-cache step (1 % of the target or 1/4 of MemAvailable above the line, at most
    1/16 of the ceiling) and a free-memory step (3/4 of MemFree above the line, at most 1/4 of the
    ceiling: free memory holds no working set and its return causes no reclaim), times
    (1 - pressure / target); at least the hysteresis step while well under the target; never
    taking MemAvailable under the probe line (the headroom line plus the rise of use expected
    within ``rising_room_s``)."""
    room = signals.mem_available_kb - r.probe_line_kb
    free_room = min(signals.mem_free_kb, signals.mem_available_kb) - r.probe_line_kb
    max_cache = max(config.shrink_max_step_kb, int(lim.ceiling_kb * config.shrink_max_step_pct
                                                   / 100))
    cache_step = min(max(prev * config.shrink_step_pct / 100,
                         room / config.shrink_headroom_divisor), max_cache)
    free_step = min(max(0, free_room) * config.shrink_free_fraction,
                    lim.ceiling_kb * config.shrink_free_max_step_pct / 100)
    scale = max(0.0, 1.0 - r.pressure_pct / config.psi_target_pct)
    step = int(max(cache_step, free_step) * scale)
    if scale > 0.5:
        step = max(step, config.min_change_kb)
    return max(0, min(step, room))


# --------------------------------------------------------------------------------------------
# The step


def continues_burst(state: PolicyState, r: Reading, config: PressureConfig) -> bool:
    """A burst's worth (``burst_min_kb``) of demand had already arrived within the burst window
    before this decision, so a rise now (:func:`grow_step_kb` adds a lookahead only to a rise)
    continues it: a workload allocating in steps with pauses between them (96 MiB every 2-5 s,
    seen on Xen 4.17 in a guest the agent had already sized: run 20261206-211801-5898,
    `anon-grow-shrink`, its grow phase 16.5 s against 12.9 s without ballooning) is a ramp,
    though no two decisions in a row saw it rise."""
    arrived_now = max(0, r.used_delta_kb or 0)
    return burst_so_far_kb(state) - arrived_now >= config.burst_min_kb


def _grow(signals: MemorySignals, state: PolicyState, config: PressureConfig, r: Reading,
          prev: int, why: list[str]) -> tuple[int, str, str, PolicyState]:
    ramp = state.rising_decisions >= 2 or continues_burst(state, r, config)
    step = grow_step_kb(signals, r, config, ramp=ramp)
    # The time of the last need for memory, even when the ceiling leaves nothing to grow: the
    # holdoff counts from it.
    state = replace(state, last_grow_t=signals.timestamp)
    # Counted from the driver's size when it is still above our target (giving back memory for
    # an earlier shrink): a grow never sends it further down.
    base = max(prev, driver_current(signals))
    return base + step, "grow", "; ".join(why) + f"; grow by the shortage, {step} KiB", state


def _stop(signals: MemorySignals, state: PolicyState, prev: int, why: list[str]
          ) -> tuple[int, str, str, PolicyState]:
    current = driver_current(signals)
    state = replace(state, last_own_reclaim_t=signals.timestamp)
    return current, "stop", "; ".join(why) + (
        f" while the driver is {current - prev} KiB short of our shrink to {prev} KiB, with "
        f"few refaults and use flat: the balloon's own reclaim; the shrink stops at {current} KiB"
    ), state


def step_pressure(
    signals: MemorySignals, state: PolicyState, config: PolicyConfig, lim: Limits, prev: int
) -> tuple[int, str, str, PolicyState]:
    """Grow on a shortage, stop at our own reclaim, else probe when quiet (module docstring)."""
    assert isinstance(config, PressureConfig)
    r = read(signals, state, config, lim)
    rising = demand_rising(r, config)
    rising_decisions = state.rising_decisions + 1 if rising else 0
    if rising_decisions != state.rising_decisions:
        state = replace(state, rising_decisions=rising_decisions)
    if r.oom:
        state = replace(state, last_oom_t=signals.timestamp, last_grow_t=signals.timestamp)
        return lim.ceiling_kb, "grow", f"OOM kill seen (oom_kill {signals.oom_kill})", state
    shortage = shortage_reasons(signals, r, config)
    pressure = pressure_reasons(signals, r, config) if reclaiming(signals, r, config) else []
    if pressure and not shortage and own_reclaim(signals, state, config, prev, r):
        return _stop(signals, state, prev, pressure)
    if shortage or pressure:
        return _grow(signals, state, config, r, prev, shortage + pressure)
    return paced(signals, state, config, prev, _hold_or_probe(signals, state, config, lim, prev, r))


def _hold_or_probe(signals: MemorySignals, state: PolicyState, config: PressureConfig,
                   lim: Limits, prev: int, r: Reading) -> tuple[int, str, str, PolicyState]:
    holds = (quiet_holds(signals, r, config) + time_holds(signals, state, config)
             + size_holds(signals, config, lim, prev))
    if holds:
        return prev, "hold", "; ".join(holds), state
    step = shrink_step_kb(signals, r, config, lim, prev)
    line = (f"the probe line {r.probe_line_kb} KiB (headroom line {r.line_kb} KiB, burst "
            f"allowance {r.burst_kb} KiB, use rising {max(0.0, r.used_rate):.0f} KiB/s)")
    if signals.mem_available_kb - r.probe_line_kb < config.min_change_kb:
        return prev, "hold", f"MemAvailable {signals.mem_available_kb} KiB near {line}", state
    return prev - step, "shrink", (
        f"quiet (stall {r.stall_pct:.2f} %, avg10 {signals.some_avg10:.2f} %); shrink by {step} "
        f"KiB toward {line}"
    ), state


def decide_pressure(
    signals: MemorySignals, state: PolicyState, config: PressureConfig
) -> Decision:
    """The default policy; its control law is the module docstring's."""
    state = observe_demand(signals, state, config)
    state = observe_release(signals, observe_populate(signals, state, config), config)
    return decide_with(signals, state, config, step_pressure)
