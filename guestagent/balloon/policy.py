"""Balloon policies: pure functions of a :class:`MemorySignals` snapshot and the last state.

No I/O and no clock: time comes from ``signals.timestamp``. Every policy returns a
:class:`Decision` whose ``target_kb`` is in the balloon driver's units (what is written to
``target_kb``, comparable with ``info/current_kb`` and the toolstack's ``memory/target``), and
which always lies within ``[floor_kb, ceiling_kb]``.

* ``none``: hold the ceiling (a baseline for benchmarks).
* ``classic``: the Linux xen-selfballoon algorithm (removed in 5.3), exactly as reference
  ``xen-abi.md`` section 5.2 describes it.
* ``pressure`` (the default): feedback on pressure in the spirit of Meta's Senpai.

Shared safety rules (applied to every policy, after the policy's own arithmetic):

* **Ceiling** = min(``memory/target``, ``memory/static-max``) from xenstore, minus
  ``toolstack_offset_kb`` (the HVM video-RAM fudge between the toolstack's numbers and the driver's
  target). Without xenstore: ``config.ceiling_kb``, else the driver's target at the first decision.
* **Floor** = max(``config.floor_kb``, :func:`hard_minimum_kb`), never above the ceiling.
* **Toolstack override**: when ``memory/target`` changes, or the driver's target changes behind the
  policy's back, the policy follows the new driver target (within the new limits) and holds off
  shrinking, instead of fighting the toolstack.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, ClassVar

from guestagent.balloon.signals import PAGE_KB, MemorySignals
from guestagent.errors import InputError

MIB_KB = 1024
GIB_KB = 1024 * 1024

#: The absolute part of the hard minimum, see :func:`hard_minimum_kb`.
HARD_MINIMUM_ABS_KB = 256 * MIB_KB
#: The relative part: 1/16 of static-max.
HARD_MINIMUM_STATIC_MAX_DIVISOR = 16


def hard_minimum_kb(static_max_kb: int) -> int:
    """The smallest target any policy may ever set: max(256 MiB, static-max / 16).

    No configuration goes below this. Why these two numbers:

    * 256 MiB: a Debian guest's kernel, systemd, sshd and this agent need roughly 150-200 MiB of
      resident memory, and a Xen guest already loses about 45 MiB of its allocation to kernel
      reservations (a 512 MiB PV guest showed MemTotal 466720 kB, reference section 12). Below
      256 MiB any policy mistake (a late grow, a driver that lags) is an OOM kill, not a slowdown.
    * static-max / 16: the kernel keeps ``struct page`` (64 bytes per 4 KiB page, 1/64) for the
      whole static-max range even when it is ballooned out; at 1/16 of static-max that metadata is
      already a quarter of the memory left, so going lower buys nothing and starves the guest.

    The kernel's classic floor for a 1 GiB guest is about totalreserve + 128 MiB, so this minimum is
    more conservative than the classic one on purpose: the pressure policy goes lower than classic
    in the common case through feedback, not by a lower floor.
    """
    return max(HARD_MINIMUM_ABS_KB, static_max_kb // HARD_MINIMUM_STATIC_MAX_DIVISOR)


# --------------------------------------------------------------------------------------------
# State, configuration, decision


@dataclass(frozen=True)
class PolicyState:
    """What a policy remembers between decisions (plain data; the controller persists it)."""

    #: The driver's target at the first decision (ceiling of last resort, and what reset restores).
    initial_target_kb: int | None = None
    #: The target the driver holds as far as the policy knows (updated with what was written).
    last_target_kb: int | None = None
    last_xs_target_kb: int | None = None
    last_tick_t: float | None = None
    last_grow_t: float | None = None
    last_shrink_t: float | None = None
    last_follow_t: float | None = None
    last_oom_t: float | None = None
    #: When a stall was taken for the balloon driver's own reclaim and our shrink stopped.
    last_own_reclaim_t: float | None = None
    grow_streak: int = 0
    prev_t: float | None = None
    prev_some_total_us: int | None = None
    prev_refaults: int | None = None
    prev_pswpin: int | None = None
    prev_oom_kill: int | None = None
    #: MemTotal - MemAvailable (what reclaim cannot free) and Cached at the last decision.
    prev_used_kb: int | None = None
    prev_cached_kb: int | None = None
    #: classic: ``selfballoon_reserved_mb`` in KiB, fixed at the first tick like the kernel did.
    reserved_kb: int | None = None


@dataclass(frozen=True)
class PolicyConfig:
    """Settings every policy shares."""

    name: ClassVar[str] = ""
    #: Configured floor (balloon units); raised to :func:`hard_minimum_kb` when below it.
    floor_kb: int = 0
    #: The ceiling when xenstore cannot be read (else the toolstack's values rule).
    ceiling_kb: int | None = None
    #: memory/target minus the driver's target when the toolstack set it (HVM video RAM).
    toolstack_offset_kb: int = 0
    #: Hysteresis: a change smaller than this is not made (unless a limit forces it).
    min_change_kb: int = 8 * MIB_KB

    def validate(self) -> None:
        for key in ("floor_kb", "toolstack_offset_kb", "min_change_kb"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 0:
                raise InputError(f"balloon config {key}", "expected an integer >= 0", value)
        if self.ceiling_kb is not None and self.ceiling_kb <= 0:
            raise InputError("balloon config ceiling_kb", "expected > 0", self.ceiling_kb)


@dataclass(frozen=True)
class NoneConfig(PolicyConfig):
    name: ClassVar[str] = "none"
    min_change_kb: int = 0


@dataclass(frozen=True)
class ClassicConfig(PolicyConfig):
    """xen-selfballoon tunables with the kernel's defaults (reference section 5.1)."""

    name: ClassVar[str] = "classic"
    interval_s: float = 5.0
    downhysteresis: int = 8
    uphysteresis: int = 1
    #: None = 10 % of MemTotal, computed once at the first tick (the kernel's init rule).
    reserved_mb: int | None = None
    #: 0 = the piecewise floor.
    min_usable_mb: int = 0
    #: The kernel set its target on every tick; no hysteresis.
    min_change_kb: int = 0

    def validate(self) -> None:
        super().validate()
        for key in ("downhysteresis", "uphysteresis"):
            if getattr(self, key) < 1:
                raise InputError(f"balloon config {key}", "must be >= 1", getattr(self, key))
        if self.interval_s <= 0:
            raise InputError("balloon config interval_s", "must be > 0", self.interval_s)


@dataclass(frozen=True)
class PressureConfig(PolicyConfig):
    """Tunables of the pressure policy; see :func:`decide_pressure` for why these defaults."""

    name: ClassVar[str] = "pressure"
    interval_s: float = 5.0
    #: Shrink only while memory stall ("some") is below this percentage.
    psi_target_pct: float = 0.2
    #: Grow when the stall over the last interval reaches this percentage.
    psi_grow_pct: float = 2.0
    #: The PSI trigger the controller arms: 150 ms of "some" stall in a 1 s window (15 %).
    trigger_stall_us: int = 150_000
    trigger_window_us: int = 1_000_000
    #: Grow when workingset refaults exceed this many pages per second (2000 = 7.8 MiB/s).
    refault_grow_per_s: float = 2000.0
    #: Grow when swap-ins exceed this many pages per second.
    swapin_grow_per_s: float = 1000.0
    #: Stall, refaults and swap-ins mean a shortage only while MemFree is under this many
    #: reserves: with more free, the kernel is not reclaiming and more memory relieves nothing.
    stall_grow_free_reserves: float = 2.0
    #: Keep at least max(reserve_min_kb, reserve_pct % of the ceiling) of MemAvailable.
    reserve_min_kb: int = 64 * MIB_KB
    reserve_pct: float = 3.0
    #: Shrink by the larger of this percentage of the current target ...
    shrink_step_pct: float = 1.0
    #: ... and this fraction of the headroom (MemAvailable above twice the reserve) per step ...
    shrink_headroom_divisor: int = 4
    #: ... but never more than max(shrink_max_step_kb, shrink_max_step_pct % of the ceiling) ...
    shrink_max_step_kb: int = 64 * MIB_KB
    shrink_max_step_pct: float = 6.25
    #: ... and at most one shrink per this many seconds. Free memory (MemFree above twice the
    #: reserve) goes faster: this fraction of it per step, at most this percentage of the ceiling.
    shrink_interval_s: float = 5.0
    shrink_free_fraction: float = 0.75
    shrink_free_max_step_pct: float = 25.0
    #: No shrink for this long after a grow (or a stop of our own shrink) or a toolstack override.
    shrink_holdoff_s: float = 30.0
    #: A stall (trigger or interval stall, nothing else) while the driver is still short of our
    #: last shrink, at most this long after it, with refaults under own_reclaim_max_refaults_per_s
    #: and use and page cache grown by less than min_change_kb since the last decision, is the
    #: balloon driver's own reclaim: the shrink stops where the driver got to (target = current)
    #: instead of a grow step.
    own_reclaim_window_s: float = 10.0
    own_reclaim_max_refaults_per_s: float = 500.0
    #: No shrink for this long after an OOM kill.
    oom_holdoff_s: float = 300.0
    #: Grow by max(grow_step_min_kb, grow_step_pct % of the ceiling) ...
    grow_step_min_kb: int = 128 * MIB_KB
    grow_step_pct: float = 12.5
    #: ... doubled for each further grow within grow_streak_window_s (up to 2**grow_max_doublings).
    grow_streak_window_s: float = 15.0
    grow_max_doublings: int = 3
    #: At most one grow per this many seconds (the PSI trigger window: one event per window).
    grow_interval_s: float = 1.0
    #: No further shrink while the driver is this far behind the target (current - target).
    max_driver_lag_kb: int = 128 * MIB_KB
    #: Memory use (MemTotal - MemAvailable, or Cached) rising faster than this (KiB/s) since the
    #: last decision means the working set is growing: no shrink, and a grow once it reaches the
    #: band under twice the reserve.
    demand_growth_kb_per_s: int = 1024

    def validate(self) -> None:
        super().validate()
        if not 0 < self.psi_target_pct < self.psi_grow_pct <= 100:
            raise InputError(
                "balloon config psi_target_pct/psi_grow_pct",
                "need 0 < target < grow <= 100",
                (self.psi_target_pct, self.psi_grow_pct),
            )
        if self.shrink_headroom_divisor < 1:
            raise InputError(
                "balloon config shrink_headroom_divisor", "must be >= 1",
                self.shrink_headroom_divisor,
            )
        if self.stall_grow_free_reserves <= 0:
            raise InputError(
                "balloon config stall_grow_free_reserves", "must be > 0",
                self.stall_grow_free_reserves,
            )
        if not 0 <= self.shrink_free_fraction <= 1:
            raise InputError(
                "balloon config shrink_free_fraction", "expected 0..1", self.shrink_free_fraction
            )
        for key in ("shrink_step_pct", "shrink_max_step_pct", "grow_step_pct", "reserve_pct",
                    "shrink_free_max_step_pct"):
            value = getattr(self, key)
            if not 0 <= value <= 100:
                raise InputError(f"balloon config {key}", "expected a percentage", value)
        for key in ("shrink_max_step_kb", "grow_step_min_kb", "reserve_min_kb",
                    "demand_growth_kb_per_s", "own_reclaim_window_s",
                    "own_reclaim_max_refaults_per_s"):
            if getattr(self, key) < 0:
                raise InputError(f"balloon config {key}", "must be >= 0", getattr(self, key))


@dataclass(frozen=True)
class Limits:
    floor_kb: int
    ceiling_kb: int
    hard_minimum_kb: int
    ceiling_source: str


@dataclass(frozen=True)
class Decision:
    """The next balloon target (driver units), why, and the state to pass to the next call."""

    target_kb: int
    previous_kb: int
    action: str  # "grow", "shrink", "hold", "follow" or "stop" (our own shrink stopped)
    reason: str
    floor_kb: int
    ceiling_kb: int
    new_state: PolicyState

    @property
    def changed(self) -> bool:
        return self.target_kb != self.previous_kb


# --------------------------------------------------------------------------------------------
# Shared machinery


def limits(signals: MemorySignals, state: PolicyState, config: PolicyConfig) -> Limits:
    """Floor and ceiling for this snapshot (see the module docstring)."""
    offset = config.toolstack_offset_kb
    known = [
        (v - offset, name)
        for v, name in (
            (signals.xs_target_kb, "memory/target"),
            (signals.xs_static_max_kb, "memory/static-max"),
        )
        if v is not None
    ]
    if known:
        ceiling, source = min(known)
    elif config.ceiling_kb is not None:
        ceiling, source = config.ceiling_kb, "config ceiling_kb"
    elif state.initial_target_kb is not None:
        ceiling, source = state.initial_target_kb, "initial driver target"
    else:
        ceiling, source = _driver_target(signals), "driver target"
    ceiling = max(ceiling, 1)
    static_max = signals.xs_static_max_kb if signals.xs_static_max_kb is not None else ceiling
    hard = min(hard_minimum_kb(static_max), ceiling)
    floor = min(max(config.floor_kb, hard), ceiling)
    return Limits(floor_kb=floor, ceiling_kb=ceiling, hard_minimum_kb=hard, ceiling_source=source)


def page_floor(kb: int) -> int:
    """``kb`` rounded down to a whole page: what the driver reads back after ``kb`` is written."""
    return kb - kb % PAGE_KB


def _driver_target(signals: MemorySignals) -> int:
    if signals.balloon_target_kb is not None:
        return signals.balloon_target_kb
    if signals.balloon_current_kb is not None:
        return signals.balloon_current_kb
    return signals.mem_total_kb


def _driver_current(signals: MemorySignals) -> int:
    return signals.balloon_current_kb if signals.balloon_current_kb is not None else (
        signals.mem_total_kb
    )


# A policy's own step: (signals, state, config, limits, previous target) ->
# (raw target, action, reason, state). The shared wrapper clamps, applies hysteresis, and
# records counters and timestamps.
_Step = Callable[
    [MemorySignals, PolicyState, PolicyConfig, Limits, int], tuple[int, str, str, PolicyState]
]


def _decide(
    signals: MemorySignals, state: PolicyState, config: PolicyConfig, step: _Step
) -> Decision:
    now = signals.timestamp
    if state.initial_target_kb is None:
        state = replace(state, initial_target_kb=_driver_target(signals))
    lim = limits(signals, state, config)
    prev = state.last_target_kb if state.last_target_kb is not None else _driver_target(signals)

    xs_changed = (
        state.last_xs_target_kb is not None
        and signals.xs_target_kb is not None
        and signals.xs_target_kb != state.last_xs_target_kb
    )
    # The driver keeps its target in pages: a target written in KiB reads back rounded down to a
    # whole page, which is not a change behind the policy's back.
    driver_moved = (
        state.last_target_kb is not None
        and signals.balloon_target_kb is not None
        and signals.balloon_target_kb != page_floor(state.last_target_kb)
    )
    if xs_changed or driver_moved:
        raw = _driver_target(signals)
        action = "follow"
        if xs_changed:
            reason = (
                f"toolstack override: memory/target {state.last_xs_target_kb} -> "
                f"{signals.xs_target_kb} KiB; following the driver target {raw} KiB"
            )
        else:
            reason = (
                f"driver target changed behind the policy ({state.last_target_kb} -> {raw} KiB);"
                " following"
            )
        # Following is not a change by us: the driver already holds the new target.
        prev = raw
        new_state = replace(state, last_follow_t=now, grow_streak=0)
    else:
        raw, action, reason, new_state = step(signals, state, config, lim, prev)

    target = raw
    if target > lim.ceiling_kb:
        target = lim.ceiling_kb
        reason += f"; capped at the ceiling {lim.ceiling_kb} KiB ({lim.ceiling_source})"
    if target < lim.floor_kb:
        target = lim.floor_kb
        reason += f"; raised to the floor {lim.floor_kb} KiB"
    # Whole pages, as the driver stores it (so what is written is what reads back).
    if target != prev and target % PAGE_KB:
        for aligned in (page_floor(target), page_floor(target) + PAGE_KB):
            if lim.floor_kb <= aligned <= lim.ceiling_kb:
                target = aligned
                break
    prev_inside = lim.floor_kb <= prev <= lim.ceiling_kb
    if (
        action in ("grow", "shrink")
        and prev_inside
        and target != prev
        and abs(target - prev) < config.min_change_kb
    ):
        reason += f"; change of {target - prev:+d} KiB below min_change {config.min_change_kb}"
        target = prev
        action = "hold"
    if target > prev:
        # A stop of our own shrink where the driver got to is not a grow: no grow streak follows
        # from it (the pressure policy keeps its own time for the holdoff after it).
        if action != "stop":
            action = "grow" if action != "follow" else action
            new_state = replace(new_state, last_grow_t=now)
    elif target < prev:
        action = "shrink" if action != "follow" else action
        new_state = replace(new_state, last_shrink_t=now)
    elif action in ("grow", "shrink"):
        action = "hold"

    new_state = replace(
        new_state,
        last_target_kb=target,
        last_xs_target_kb=signals.xs_target_kb,
        prev_t=now,
        prev_some_total_us=signals.some_total_us,
        prev_refaults=signals.refaults,
        prev_pswpin=signals.pswpin,
        prev_oom_kill=signals.oom_kill,
        prev_used_kb=used_kb(signals),
        prev_cached_kb=signals.cached_kb,
    )
    return Decision(
        target_kb=target,
        previous_kb=prev,
        action=action,
        reason=reason,
        floor_kb=lim.floor_kb,
        ceiling_kb=lim.ceiling_kb,
        new_state=new_state,
    )


# --------------------------------------------------------------------------------------------
# none


def _step_none(
    signals: MemorySignals, state: PolicyState, config: PolicyConfig, lim: Limits, prev: int
) -> tuple[int, str, str, PolicyState]:
    return lim.ceiling_kb, "grow", f"policy none holds the ceiling ({lim.ceiling_source})", state


def decide_none(signals: MemorySignals, state: PolicyState, config: NoneConfig) -> Decision:
    """Hold the ceiling: what a guest without self-ballooning keeps."""
    return _decide(signals, state, config, _step_none)


# --------------------------------------------------------------------------------------------
# classic


def mb2pages(mb: int) -> int:
    """``MB2PAGES``: MiB to 4 KiB pages."""
    return mb << 8


def classic_reserved_mb(mem_total_kb: int) -> int:
    """``PAGES2MB(totalram_pages / 10)``: the kernel's default ``selfballoon_reserved_mb``."""
    return ((mem_total_kb // PAGE_KB) // 10) >> 8


def classic_floor_pages(max_pfn: int, totalreserve_pages: int, min_usable_mb: int) -> int:
    """The piecewise-linear floor of xen-selfballoon (reference section 5.2 step 3), in pages."""
    useful = max_pfn - totalreserve_pages
    if min_usable_mb != 0:
        return totalreserve_pages + mb2pages(min_usable_mb)
    if useful < mb2pages(16):
        return max_pfn
    if useful < mb2pages(64):
        return totalreserve_pages + mb2pages(16) + ((useful - mb2pages(16)) >> 1)
    if useful < mb2pages(512):
        return totalreserve_pages + mb2pages(40) + ((useful - mb2pages(40)) >> 3)
    return totalreserve_pages + mb2pages(99) + ((useful - mb2pages(99)) >> 5)


def classic_target_pages(
    cur_pages: int,
    committed_pages: int,
    totalreserve_pages: int,
    reserved_mb: int,
    max_pfn: int,
    downhysteresis: int = 8,
    uphysteresis: int = 1,
    min_usable_mb: int = 0,
) -> tuple[int, int, int]:
    """One xen-selfballoon step in pages, integer arithmetic as in the kernel.

    Returns ``(tgt_pages, goal_pages, floor_pages)``; ``tgt_pages`` is in MemTotal units (the
    caller converts to the driver's units with ``tgt + current - MemTotal``).
    """
    goal = committed_pages + totalreserve_pages + mb2pages(reserved_mb)
    tgt = cur_pages
    if cur_pages > goal:
        tgt = cur_pages - (cur_pages - goal) // downhysteresis
    elif cur_pages < goal:
        tgt = cur_pages + (goal - cur_pages) // uphysteresis
    floor = classic_floor_pages(max_pfn, totalreserve_pages, min_usable_mb)
    tgt = max(tgt, floor)
    return tgt, goal, floor


def _step_classic(
    signals: MemorySignals, state: PolicyState, config: PolicyConfig, lim: Limits, prev: int
) -> tuple[int, str, str, PolicyState]:
    assert isinstance(config, ClassicConfig)
    now = signals.timestamp
    if state.last_tick_t is not None and now - state.last_tick_t < config.interval_s:
        return prev, "hold", f"classic: next tick in {config.interval_s} s", state
    reserved_kb = state.reserved_kb
    if reserved_kb is None:
        mb = (
            config.reserved_mb
            if config.reserved_mb is not None
            else classic_reserved_mb(signals.mem_total_kb)
        )
        reserved_kb = mb * MIB_KB
    totalreserve_kb = signals.totalreserve_kb if signals.totalreserve_kb is not None else 0
    max_pfn_kb = (
        signals.xs_static_max_kb if signals.xs_static_max_kb is not None else lim.ceiling_kb
    )
    tgt, goal, floor = classic_target_pages(
        cur_pages=signals.mem_total_kb // PAGE_KB,
        committed_pages=signals.committed_as_kb // PAGE_KB,
        totalreserve_pages=totalreserve_kb // PAGE_KB,
        reserved_mb=reserved_kb // MIB_KB,
        max_pfn=max_pfn_kb // PAGE_KB,
        downhysteresis=config.downhysteresis,
        uphysteresis=config.uphysteresis,
        min_usable_mb=config.min_usable_mb,
    )
    target = tgt * PAGE_KB + _driver_current(signals) - signals.mem_total_kb
    reason = (
        f"classic: MemTotal {signals.mem_total_kb} KiB, goal {goal * PAGE_KB} KiB "
        f"(Committed_AS {signals.committed_as_kb} + totalreserve {totalreserve_kb}"
        f"{'' if signals.totalreserve_kb is not None else ' (zoneinfo unread, 0)'}"
        f" + reserved {reserved_kb}), floor {floor * PAGE_KB} KiB -> MemTotal {tgt * PAGE_KB} KiB"
    )
    action = "grow" if target > prev else "shrink"
    return target, action, reason, replace(state, last_tick_t=now, reserved_kb=reserved_kb)


def decide_classic(signals: MemorySignals, state: PolicyState, config: ClassicConfig) -> Decision:
    """The kernel's xen-selfballoon step (reference section 5.2), every ``interval_s`` seconds.

    goal = Committed_AS + totalreserve + reserved (10 % of RAM by default); above the goal, close
    1/downhysteresis (8) of the gap per tick; below it, 1/uphysteresis (1, i.e. at once); never
    below the piecewise floor; ``max_pfn`` is approximated by ``memory/static-max``. The result is
    converted to driver units (``tgt + current_kb - MemTotal``), then the shared ceiling and hard
    minimum apply (the kernel had neither; the reason says when they bit).
    """
    return _decide(signals, state, config, _step_classic)


# --------------------------------------------------------------------------------------------
# pressure


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


def used_kb(signals: MemorySignals) -> int:
    """MemTotal - MemAvailable: what reclaim cannot free. Ballooning does not move it (MemTotal
    and MemAvailable change together), so a change is the guest's own demand."""
    return max(0, signals.mem_total_kb - signals.mem_available_kb)


def demand_delta(signals: MemorySignals, state: PolicyState) -> tuple[int, int] | None:
    """(used, cached) growth in KiB since the last decision; None without history."""
    if state.prev_used_kb is None or state.prev_cached_kb is None:
        return None
    return used_kb(signals) - state.prev_used_kb, signals.cached_kb - state.prev_cached_kb


def demand_growth(
    signals: MemorySignals, state: PolicyState
) -> tuple[float, float] | None:
    """(used, cached) growth in KiB/s since the last decision; None without history or when the
    last decision is too recent (under half a second) for a rate to mean anything."""
    delta = demand_delta(signals, state)
    if state.prev_t is None or delta is None:
        return None
    dt = signals.timestamp - state.prev_t
    if dt < 0.5:
        return None
    return delta[0] / dt, delta[1] / dt


def reserve_kb(config: PressureConfig, ceiling_kb: int) -> int:
    return max(config.reserve_min_kb, int(ceiling_kb * config.reserve_pct / 100))


def _use_grew(
    signals: MemorySignals, state: PolicyState, config: PressureConfig, used_rate: float
) -> bool:
    """Memory use rose faster than ``demand_growth_kb_per_s`` and by at least ``min_change_kb``
    since the last decision (MemAvailable wobbles by a few MiB while the kernel reclaims, which
    over a second is already a rate above the threshold)."""
    delta = demand_delta(signals, state)
    if delta is None or used_rate < config.demand_growth_kb_per_s:
        return False
    return delta[0] >= config.min_change_kb


def _own_reclaim(
    signals: MemorySignals,
    state: PolicyState,
    config: PressureConfig,
    prev: int,
    refault_rate: float | None,
    swapin_rate: float | None,
) -> bool:
    """Whether a stall is most likely the reclaim the balloon driver does for our own shrink.

    All of: our last change was a shrink, at most ``own_reclaim_window_s`` ago, and the driver has
    not reached it yet (``current_kb`` above the target: it is still allocating the pages to hand
    back); refaults under ``own_reclaim_max_refaults_per_s`` and no swap-in (little of what was
    evicted is wanted back: a quarter of the grow threshold; on Xen 4.17 the squeeze that reached
    the cold cache refaulted about 350 pages/s of the system's own file pages for a second); memory
    use and the page cache each grown by less than ``min_change_kb`` since the last decision (the
    workload is not allocating or reading; a per-second rate is too noisy over the second or two
    since the shrink: MemAvailable moved by 2 MiB while the driver reclaimed). A driver that has
    reached its target reclaims nothing more, so any stall after that is answered as usual.
    """
    last_shrink = state.last_shrink_t
    if last_shrink is None or signals.timestamp - last_shrink > config.own_reclaim_window_s:
        return False
    if signals.balloon_current_kb is None or signals.balloon_current_kb <= prev:
        return False
    if state.last_grow_t is not None and state.last_grow_t >= last_shrink:
        return False
    if refault_rate is not None and refault_rate >= config.own_reclaim_max_refaults_per_s:
        return False
    if swapin_rate is not None and swapin_rate > 0:
        return False
    delta = demand_delta(signals, state)
    return delta is not None and max(delta) < config.min_change_kb


def _step_pressure(
    signals: MemorySignals, state: PolicyState, config: PolicyConfig, lim: Limits, prev: int
) -> tuple[int, str, str, PolicyState]:
    assert isinstance(config, PressureConfig)
    now = signals.timestamp
    stall = stall_pct(signals, state)
    refault_rate = _rate(now, state.prev_t, signals.refaults, state.prev_refaults)
    swapin_rate = _rate(now, state.prev_t, signals.pswpin, state.prev_pswpin)
    oom = (
        signals.oom_kill is not None
        and state.prev_oom_kill is not None
        and signals.oom_kill > state.prev_oom_kill
    )
    reserve = reserve_kb(config, lim.ceiling_kb)
    avail = signals.mem_available_kb

    if oom:
        state = replace(state, last_oom_t=now, grow_streak=0)
        return lim.ceiling_kb, "grow", f"OOM kill seen (oom_kill {signals.oom_kill})", state

    soft = []
    if signals.psi_trigger_fired:
        soft.append("PSI trigger fired")
    if stall >= config.psi_grow_pct:
        soft.append(f"stall {stall:.2f} % >= {config.psi_grow_pct} %")
    if refault_rate is not None and refault_rate >= config.refault_grow_per_s:
        soft.append(f"refaults {refault_rate:.0f}/s >= {config.refault_grow_per_s:.0f}/s")
    if swapin_rate is not None and swapin_rate >= config.swapin_grow_per_s:
        soft.append(f"swap-ins {swapin_rate:.0f}/s >= {config.swapin_grow_per_s:.0f}/s")
    # Stall, refaults and swap-ins are a shortage only while little is free. With plenty free the
    # kernel is not reclaiming: what still stalls is the reading back of pages evicted before the
    # last grow, or a trigger window that still covers the time before it. More memory relieves
    # neither (seen on Xen 4.17: three grows within 2 s on one spike, 128 + 256 + 512 MiB, while
    # MemFree was already 130 and 390 MiB).
    free_limit = int(reserve * config.stall_grow_free_reserves)
    plenty_free = signals.mem_free_kb >= free_limit
    shortage = []
    if avail < reserve:
        shortage.append(f"MemAvailable {avail} KiB < reserve {reserve} KiB")
    # Demand growing into the band under twice the reserve: grow now, before the kernel has to
    # evict the page cache to make room (MemAvailable counts that cache, so it only falls under the
    # reserve once the cache is gone; seen on Xen 4.17: a 192 MiB allocation evicted 130 MiB of a
    # cache that was read again right after, while MemAvailable stayed at 68-70 MiB).
    growth = demand_growth(signals, state)
    used_rate, cached_rate = growth if growth is not None else (0.0, 0.0)
    rising = max(used_rate, cached_rate)
    if reserve <= avail < 2 * reserve and used_rate >= config.demand_growth_kb_per_s:
        shortage.append(
            f"MemAvailable {avail} KiB under 2x reserve while use grows {used_rate:.0f} KiB/s"
        )
    elif avail >= 2 * reserve and not plenty_free and _use_grew(signals, state, config, used_rate):
        # With a large page cache MemFree reaches the watermarks long before MemAvailable nears the
        # reserve, and from then on every new page is one evicted from the cache. Seen on Xen 4.17:
        # a spike allocating 25 MiB/s took MemFree from 142 to 10 MiB while MemAvailable stayed
        # above 180 MiB; the grow came with the PSI trigger 8 s later, after 30 MiB of a cache the
        # spike read next had gone (10000 refaults, the spike phase 1.7x as long as without
        # ballooning).
        shortage.append(
            f"MemFree {signals.mem_free_kb} KiB under {free_limit} KiB while use grows "
            f"{used_rate:.0f} KiB/s: grow before the page cache is evicted for it"
        )
    why = ([] if plenty_free else soft) + shortage

    if (
        why
        and not shortage
        and _own_reclaim(signals, state, config, prev, refault_rate, swapin_rate)
    ):
        # Seen on Xen 4.17, twice in idle phases: a 13 or 30 MiB shrink step that reached the cold
        # page cache was followed 1-2 s later by a 35 % stall (the PSI trigger) while the driver
        # was still 6-8 MiB short of the target, with use flat and at most ~350 refaults/s (the
        # system's own file pages); the 128 MiB grow that answered held for the next 30-40 s. The
        # driver allocates the pages it hands back, and the reclaim those allocations do counts as
        # memory stall. Stopping the shrink ends that reclaim; a stall that goes on is answered
        # with a grow step a second later (the grow rate limit).
        current = _driver_current(signals)
        state = replace(state, last_own_reclaim_t=now)
        return current, "stop", "; ".join(why) + (
            f" while the driver is {current - prev} KiB short of our shrink to {prev} KiB, with "
            "few refaults and use flat: the balloon's own reclaim; the shrink stops at "
            f"{current} KiB"
        ), state

    if why:
        if prev >= lim.ceiling_kb:
            return prev, "hold", "; ".join(why) + "; already at the ceiling", state
        if state.last_grow_t is not None and now - state.last_grow_t < config.grow_interval_s:
            return prev, "hold", "; ".join(why) + "; grow rate-limited", state
        streak = state.grow_streak
        in_streak = (
            state.last_grow_t is not None and now - state.last_grow_t <= config.grow_streak_window_s
        )
        streak = streak + 1 if in_streak else 0
        base = max(config.grow_step_min_kb, int(lim.ceiling_kb * config.grow_step_pct / 100))
        step = base * (2 ** min(streak, config.grow_max_doublings)) + max(0, reserve - avail)
        state = replace(state, grow_streak=streak)
        return prev + step, "grow", "; ".join(why) + f"; grow by {step} KiB", state

    # No reason to grow: shrink if every condition allows it.
    avg10 = signals.some_avg10
    holds = []
    if soft and plenty_free:
        holds.append(
            "; ".join(soft) + f" with MemFree {signals.mem_free_kb} KiB >= {free_limit} KiB: "
            "more memory would not relieve it"
        )
    if rising >= config.demand_growth_kb_per_s:
        # Probing for the working set while it grows would evict what was just allocated or read.
        holds.append(f"memory use growing ({rising:.0f} KiB/s)")
    # Free memory (MemFree above 2x reserve) holds no working set. A surplus of it (at least a grow
    # step) with use not rising is memory a past spike needed and gave back: it may go back to Xen
    # even while avg10 and the holdoff still remember that spike (free memory only, below).
    free_room = min(signals.mem_free_kb, avail) - 2 * reserve
    grow_step = max(config.grow_step_min_kb, int(lim.ceiling_kb * config.grow_step_pct / 100))
    surplus_free = free_room >= grow_step and rising < config.demand_growth_kb_per_s
    free_excess = free_room >= config.min_change_kb and rising < config.demand_growth_kb_per_s
    free_only = False
    if stall >= config.psi_target_pct:
        holds.append(f"stall {stall:.2f} % not below target {config.psi_target_pct} %")
    elif avg10 >= config.psi_target_pct:
        if free_excess:
            # avg10 decays over about a minute after a spike; the stall over the last interval
            # is the present (seen on Xen 4.17: 660 MiB free for 50 s while avg10 fell from 16 %,
            # then 197 MiB free for 12 s while it fell from 0.6 %).
            free_only = True
        else:
            holds.append(f"avg10 {avg10:.2f} % not below target {config.psi_target_pct} %")
    # The holdoff after a grow, a stop of our shrink at its own reclaim, or a toolstack override.
    last_up = max(
        [
            t
            for t in (state.last_grow_t, state.last_own_reclaim_t, state.last_follow_t)
            if t is not None
        ],
        default=None,
    )
    if last_up is not None and now - last_up < config.shrink_holdoff_s:
        ours = last_up != state.last_follow_t  # a toolstack override is followed, not undone
        if ours and surplus_free:
            # What our grow added lies free again and use no longer rises: the spike it answered
            # is over (seen on Xen 4.17: a guest held its ceiling for 25 s after a workload freed
            # its 192 MiB).
            free_only = True
        elif last_up == state.last_own_reclaim_t:
            holds.append(
                f"holdoff {config.shrink_holdoff_s:.0f} s after our shrink met its own reclaim"
            )
        else:
            holds.append(f"holdoff {config.shrink_holdoff_s:.0f} s after a grow")
    if state.last_oom_t is not None and now - state.last_oom_t < config.oom_holdoff_s:
        holds.append(f"holdoff {config.oom_holdoff_s:.0f} s after an OOM kill")
    if state.last_shrink_t is not None and now - state.last_shrink_t < config.shrink_interval_s:
        holds.append("shrink rate-limited")
    lag = _driver_current(signals) - prev
    if signals.balloon_current_kb is not None and lag > config.max_driver_lag_kb:
        holds.append(f"driver {lag} KiB behind its target")
    if prev <= lim.floor_kb:
        holds.append("at the floor")
    if not signals.psi_available:
        holds.append("no PSI on this kernel: never shrinking blind")
    if holds:
        return prev, "hold", "; ".join(holds), state

    # Never shrink MemAvailable into twice the reserve: the band between reserve and 2 * reserve
    # separates the shrink zone from the grow zone (hysteresis).
    room = avail - 2 * reserve
    scale = max(0.0, 1.0 - (stall if free_only else max(stall, avg10)) / config.psi_target_pct)
    max_step = max(
        config.shrink_max_step_kb, int(lim.ceiling_kb * config.shrink_max_step_pct / 100)
    )
    step = int(
        max(prev * config.shrink_step_pct / 100, room / config.shrink_headroom_divisor) * scale
    )
    # At least the hysteresis step while quiet, so the last bit of headroom is not left unused.
    if scale > 0.5:
        step = max(step, config.min_change_kb)
    step = min(step, max_step)
    # Free memory holds no working set: giving it back causes no reclaim whose effect would have
    # to be waited for, so it goes faster than the feedback steps (still above 2x reserve).
    free_step = min(
        int(max(0, free_room) * config.shrink_free_fraction * scale),
        int(lim.ceiling_kb * config.shrink_free_max_step_pct / 100),
    )
    step = free_step if free_only else max(step, free_step)
    if room < step:
        step = max(0, room)
        if step < config.min_change_kb:
            return prev, "hold", f"MemAvailable {avail} KiB near 2x reserve {reserve} KiB", state
    reason = f"quiet (stall {stall:.2f} %, avg10 {avg10:.2f} %); shrink by {step} KiB"
    if free_only:
        reason += " of free memory (the spike the last grow answered is over)"
    return prev - step, "shrink", reason, state


def decide_pressure(
    signals: MemorySignals, state: PolicyState, config: PressureConfig
) -> Decision:
    """Find the working set by feedback on pressure (the default policy).

    **Grow at once, by a large step**, when any of these holds: the PSI trigger fired (150 ms of
    "some" stall in 1 s); the "some" stall over the last interval, from the PSI totals, reached
    ``psi_grow_pct`` (2 %); refaults or swap-ins per second climbed over their thresholds (2000 and
    1000 pages/s); MemAvailable fell under the reserve, max(64 MiB, 3 % of the ceiling); or an OOM
    kill happened (then straight to the ceiling, and no shrink for 5 minutes); or MemAvailable is in
    the band under twice the reserve while memory use (MemTotal - MemAvailable) rises faster than 1
    MiB/s (demand is eating into the band: grow before the kernel evicts the page cache, which
    MemAvailable counts, to make room). Likewise when MemFree is under twice the reserve while use
    rose by at least 8 MiB, and faster than 1 MiB/s, since the last decision: with a large page
    cache MemFree reaches the watermarks long before MemAvailable nears the reserve, and from then
    on the new use is paid for with evicted cache. Stall, refaults and swap-ins count only while
    MemFree is under twice the reserve: with more free the kernel is not reclaiming, and the stall
    is pages evicted earlier being read back (or a trigger window that still covers the time before
    the last grow), which more memory does not relieve. The step is max(128 MiB, 12.5 % of the
    ceiling) plus the reserve deficit, doubled for each further grow within 15 s (at most 8x): a
    spike is answered in the very decision that sees it, and a sustained climb reaches the ceiling
    of a 1 GiB guest within three grows. At most one grow per second, the PSI trigger's window and
    hence its notification rate.

    **Our own reclaim is not a spike.** The balloon driver allocates the pages it hands back, and
    when those allocations have to reclaim page cache, PSI counts that as stall. A stall (trigger or
    interval stall, nothing else) within 10 s of our last shrink while the driver is still short of
    it (``current_kb`` above the target), with refaults under 500 pages/s, no swap-in, and use and
    page cache grown by under 8 MiB since the last decision, stops the shrink where the driver got
    to (target = ``current_kb``) instead of growing by a step (action ``stop``), and no shrink
    follows for 30 s. The stop is not a grow: a stall that goes on once the driver has reached its
    target is answered with a grow step that starts a new streak (on Xen 4.17 a trigger 1.1 s after
    a stop, counted as a grow, doubled the next step to 256 MiB).

    **Shrink in small steps, only while it is quiet**: stall and avg10 under ``psi_target_pct`` (0.2
    %, Senpai's order of magnitude), memory use and page cache not rising faster than 1 MiB/s
    (probing for the working set while it grows evicts what was just allocated or read: on Xen 4.17
    a cache read at that moment was squeezed to a third and read again from disk), no grow or
    toolstack override in the last 30 s, at most one shrink per 5 s, the driver not more than 128
    MiB behind its target, and MemAvailable kept above twice the reserve (the band between reserve
    and 2x reserve separates the shrink zone from the grow zone). The step is the larger of 1 % of
    the target and 1/4 of the headroom (MemAvailable above 2x reserve; the classic policy closes 1/8
    of its gap per tick, to a goal from Committed_AS rather than from what is really free), scaled
    down as the stall nears the target, at least the 8 MiB hysteresis step while well below it, and
    at most max(64 MiB, 1/16 of the ceiling): a 1 GiB guest gives back at most 64 MiB of page cache
    per 5 s, so reclaim has time to show in PSI and refaults before the next step. Free memory
    (MemFree above 2x reserve) holds no working set and causes no reclaim when given back, so it
    goes faster: 3/4 of it per step, at most 1/4 of the ceiling. Free memory above twice the
    reserve, with use not rising, goes back in those free-memory steps even while avg10 (which
    decays over about a minute after a spike) is above the target, as long as the stall over the
    last interval is under it; during the holdoff after our own grow only a surplus of it (at least
    a grow step: more than that grow added) goes, and a toolstack raise still waits the holdoff.
    Changes under 8 MiB are not made.

    Unlike ``classic``, the goal is not derived from Committed_AS (which counts memory that was
    reserved but never touched) but found by squeezing until the guest shows pressure, bounded by
    the MemAvailable guard so that the page cache, not the working set, is what gets squeezed.
    """
    return _decide(signals, state, config, _step_pressure)


# --------------------------------------------------------------------------------------------
# Registry

POLICY_NAMES = ("none", "classic", "pressure")
DEFAULT_POLICY = "pressure"

_CONFIGS: dict[str, type[PolicyConfig]] = {
    "none": NoneConfig,
    "classic": ClassicConfig,
    "pressure": PressureConfig,
}


def default_config(name: str) -> PolicyConfig:
    """The default configuration of a policy by name; an unknown name raises InputError."""
    cls = _CONFIGS.get(name)
    if cls is None:
        choices = ", ".join(POLICY_NAMES)
        raise InputError("balloon policy", f"unknown policy (choose {choices})", name)
    return cls()


def decide(signals: MemorySignals, state: PolicyState, config: PolicyConfig) -> Decision:
    """Dispatch on the configuration's type: the config names the policy."""
    if isinstance(config, PressureConfig):
        return decide_pressure(signals, state, config)
    if isinstance(config, ClassicConfig):
        return decide_classic(signals, state, config)
    if isinstance(config, NoneConfig):
        return decide_none(signals, state, config)
    raise InputError("balloon policy", "unknown configuration type", type(config).__name__)
