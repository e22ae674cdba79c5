"""What every balloon policy shares: state, configuration, decision, limits and the wrapper that
turns a policy's raw step into a :class:`Decision` within ``[floor_kb, ceiling_kb]``.

Pure: no I/O and no clock (time comes from ``signals.timestamp``). Targets are in the balloon
driver's units (what is written to ``target_kb``, comparable with ``info/current_kb`` and the
toolstack's ``memory/target``).

Shared safety rules (applied to every policy, after the policy's own arithmetic):

* **Ceiling** = min(``memory/target``, ``memory/static-max``) from xenstore, minus
  ``toolstack_offset_kb`` (the HVM video-RAM fudge between the toolstack's numbers and the driver's
  target). Without xenstore: ``config.ceiling_kb``, else the driver's target at the first decision.
* **Floor** = max(``config.floor_kb``, :func:`hard_minimum_kb`), never above the ceiling.
* **Toolstack override**: when ``memory/target`` changes, or the driver's target changes behind the
  policy's back, the policy follows the new driver target (within the new limits) and the pressure
  policy holds off shrinking, instead of fighting the toolstack.
* **Hysteresis**: a grow or shrink smaller than ``min_change_kb`` is not made (unless a limit
  forces it); targets are whole pages, as the driver stores them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, ClassVar

from guestagent.balloon.config import FLOOR, INTERVAL
from guestagent.balloon.signals import PAGE_KB, MemorySignals
from guestagent.errors import InputError
from guestagent.units import MIB_KB

#: The absolute part of the hard minimum, see :func:`hard_minimum_kb`.
HARD_MINIMUM_ABS_KB = 256 * MIB_KB
#: The relative part: 1/16 of static-max.
HARD_MINIMUM_STATIC_MAX_DIVISOR = 16
#: A policy's shortest decision interval (``interval_seconds``, whose declaration allows 0: the
#: policy's own).
MIN_INTERVAL_S = 1.0


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


#: Largest target a reset writes when static-max is unknown (64 TiB, as signals.MAX_KB).
MAX_RESET_KB = 1 << 36

#: Largest offset accepted between the toolstack's memory/target and the driver's target when the
#: agent first starts (the HVM video RAM fudge is a few MiB); anything larger means someone moved
#: the driver's target already, so the offset is taken as 0.
MAX_TOOLSTACK_OFFSET_KB = 64 * MIB_KB


def toolstack_offset(xs_target_kb: int | None, driver_target_kb: int) -> int | None:
    """memory/target minus the driver's target at the first start (the HVM video-RAM fudge): 0
    without xenstore; None when it is out of 0..MAX_TOOLSTACK_OFFSET_KB (the driver's target
    already moved: unknown, the caller says so and takes 0)."""
    if xs_target_kb is None:
        return 0
    offset = xs_target_kb - driver_target_kb
    return offset if 0 <= offset <= MAX_TOOLSTACK_OFFSET_KB else None


def with_offset(config: PolicyConfig, offset_kb: int) -> PolicyConfig:
    """The configuration with the learned toolstack offset, unless it sets one itself."""
    if config.toolstack_offset_kb == 0 and offset_kb:
        return replace(config, toolstack_offset_kb=offset_kb)
    return config


@dataclass(frozen=True)
class ResetTarget:
    """Where a reset puts the driver's target, where that came from, and what it was before the
    bounds moved it (None: within them)."""

    target_kb: int
    source: str
    clamped_from_kb: int | None = None


def decide_reset(xs_target_kb: int | None, static_max_kb: int | None, offset_kb: int,
                 original_kb: int | None, last_reset_kb: int | None = None
                 ) -> ResetTarget | None:
    """The target a reset goes back to (pure; None: nothing to go back to).

    In order: the toolstack's ceiling (min(memory/target, static-max) minus the bounds-checked
    ``offset_kb``), static-max alone, the saved original target, the last reset's target (a reset
    after the daemon's own stop, without xenstore: the first reset forgot the original). Whatever
    the source, the result
    is kept within max(256 MiB, static-max / 16) below and static-max above: a damaged record or
    a toolstack value out of range never sends the guest under the hard floor.
    """
    known = [v for v in (xs_target_kb, static_max_kb) if v is not None]
    if known:
        target = max(1, min(known) - offset_kb)
        source = "toolstack memory/target" if xs_target_kb is not None else "toolstack static-max"
    elif original_kb is not None:
        target, source = int(original_kb), "saved original target"
    elif last_reset_kb is not None and last_reset_kb > 0:
        target, source = last_reset_kb, "the last reset's target"
    else:
        return None
    floor = hard_minimum_kb(static_max_kb if static_max_kb is not None else target)
    upper = static_max_kb if static_max_kb is not None else MAX_RESET_KB
    if floor <= target <= upper:
        return ResetTarget(target, source)
    return ResetTarget(min(max(target, floor), max(upper, floor)), source, clamped_from_kb=target)


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
    prev_t: float | None = None
    prev_some_total_us: int | None = None
    prev_refaults: int | None = None
    prev_pswpin: int | None = None
    #: Swap in use (SwapTotal - SwapFree) at the last decision.
    prev_swapped_kb: int | None = None
    prev_oom_kill: int | None = None
    #: MemTotal - MemAvailable (what reclaim cannot free) and Cached at the last decision.
    prev_used_kb: int | None = None
    prev_cached_kb: int | None = None
    #: classic: ``selfballoon_reserved_mb`` in KiB, fixed at the first tick like the kernel did.
    reserved_kb: int | None = None
    #: pressure: ``(t, used_kb)`` over the last burst window, oldest first.
    demand_window: tuple[tuple[float, int], ...] = ()
    #: pressure: the largest burst seen (KiB) and when it was last raised.
    burst_kb: int = 0
    burst_t: float | None = None
    #: pressure: the fastest rise of demand (KiB/s, over at least ``rate_span_s``) seen while
    #: that burst is held.
    burst_rate_kb_s: float = 0.0
    #: pressure: how fast the driver populates a grow (KiB/s; 0: not seen yet).
    populate_kb_s: float = 0.0
    #: pressure: how fast the driver gives memory back, measured while it was the limit (still
    #: above the target written the decision before; KiB/s; 0: never seen limiting).
    release_kb_s: float = 0.0
    #: The driver's size (``info/current_kb``) at the last decision.
    prev_current_kb: int | None = None
    #: pressure: whether demand is in a burst now, when the last burst started, and the spacing
    #: (s) between the last two burst starts.
    in_burst: bool = False
    burst_start_t: float | None = None
    burst_spacing_s: float | None = None
    #: pressure: consecutive decisions that saw demand rising (a ramp, not a one-off spike).
    rising_decisions: int = 0


@dataclass(frozen=True)
class PolicyConfig:
    """Settings every policy shares."""

    name: ClassVar[str] = ""
    #: The decision interval of a policy that has one, when ``interval_seconds`` is 0.
    own_interval_s: ClassVar[float] = 5.0
    #: Whether the policy uses ``totalreserve_kb`` (``/proc/zoneinfo``, the largest file a tick
    #: would read): only ``classic``.
    reads_zoneinfo: ClassVar[bool] = False
    #: Configured floor (balloon units); raised to :func:`hard_minimum_kb` when below it.
    floor_kb: int = FLOOR.field()
    #: The ceiling when xenstore cannot be read (else the toolstack's values rule).
    ceiling_kb: int | None = None
    #: memory/target minus the driver's target when the toolstack set it (HVM video RAM).
    toolstack_offset_kb: int = 0
    #: Hysteresis: a change smaller than this is not made (unless a limit forces it).
    min_change_kb: int = 8 * MIB_KB

    def __post_init__(self) -> None:
        # ``interval_seconds = 0`` (the default): the policy's own interval.
        if getattr(self, "interval_s", None) == 0:
            object.__setattr__(self, "interval_s", self.own_interval_s)

    def validate(self) -> None:
        interval = getattr(self, "interval_s", None)
        if interval is not None and not MIN_INTERVAL_S <= interval <= INTERVAL.maximum:
            raise InputError("balloon config interval_seconds",
                             f"expected 0 (the policy's own) or {MIN_INTERVAL_S:g}-"
                             f"{INTERVAL.maximum:g} seconds", interval)
        for key in ("floor_kb", "toolstack_offset_kb", "min_change_kb"):
            value = getattr(self, key)
            if not isinstance(value, int) or value < 0:
                raise InputError(f"balloon config {key}", "expected an integer >= 0", value)
        if self.ceiling_kb is not None and self.ceiling_kb <= 0:
            raise InputError("balloon config ceiling_kb", "expected > 0", self.ceiling_kb)


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
    action: str  # "grow", "shrink", "hold", "follow", "stop" (our own shrink stopped) or "pace"
    reason: str
    floor_kb: int
    ceiling_kb: int
    new_state: PolicyState

    @property
    def changed(self) -> bool:
        return self.target_kb != self.previous_kb


# --------------------------------------------------------------------------------------------
# Limits and the driver's numbers


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
        ceiling, source = driver_target(signals), "driver target"
    ceiling = max(ceiling, 1)
    static_max = signals.xs_static_max_kb if signals.xs_static_max_kb is not None else ceiling
    hard = min(hard_minimum_kb(static_max), ceiling)
    floor = min(max(config.floor_kb, hard), ceiling)
    return Limits(floor_kb=floor, ceiling_kb=ceiling, hard_minimum_kb=hard, ceiling_source=source)


def page_floor(kb: int) -> int:
    """``kb`` rounded down to a whole page: what the driver reads back after ``kb`` is written."""
    return kb - kb % PAGE_KB


def driver_target(signals: MemorySignals) -> int:
    if signals.balloon_target_kb is not None:
        return signals.balloon_target_kb
    if signals.balloon_current_kb is not None:
        return signals.balloon_current_kb
    return signals.mem_total_kb


def driver_current(signals: MemorySignals) -> int:
    return signals.balloon_current_kb if signals.balloon_current_kb is not None else (
        signals.mem_total_kb
    )


def swapped_kb(signals: MemorySignals) -> int:
    """Swap in use (SwapTotal - SwapFree): anonymous memory the kernel pushed out of RAM, into the
    allocation guard's zram or a disk swap."""
    return max(0, signals.swap_total_kb - signals.swap_free_kb)


def used_kb(signals: MemorySignals) -> int:
    """MemTotal - MemAvailable: what reclaim cannot free. Ballooning does not move it (MemTotal
    and MemAvailable change together), so a change is the guest's own demand."""
    return max(0, signals.mem_total_kb - signals.mem_available_kb)


# --------------------------------------------------------------------------------------------
# The wrapper around a policy's own step

# A policy's own step: (signals, state, config, limits, previous target) ->
# (raw target, action, reason, state). The shared wrapper clamps, applies hysteresis, and
# records counters and timestamps.
Step = Callable[
    [MemorySignals, PolicyState, PolicyConfig, Limits, int], tuple[int, str, str, PolicyState]
]


def toolstack_override(signals: MemorySignals, state: PolicyState) -> str | None:
    """Why the driver's target is no longer the policy's (a reason), or None.

    ``memory/target`` changed, or the driver's target moved behind the policy's back. The driver
    keeps its target in pages: a target written in KiB reads back rounded down to a whole page,
    which is not a change behind the policy's back (seen on Xen 4.17: a 58686 KiB step read back
    2 KiB lower, was followed and held off shrinking for 30 s).
    """
    raw = driver_target(signals)
    if (
        state.last_xs_target_kb is not None
        and signals.xs_target_kb is not None
        and signals.xs_target_kb != state.last_xs_target_kb
    ):
        return (
            f"toolstack override: memory/target {state.last_xs_target_kb} -> "
            f"{signals.xs_target_kb} KiB; following the driver target {raw} KiB"
        )
    if (
        state.last_target_kb is not None
        and signals.balloon_target_kb is not None
        and signals.balloon_target_kb != page_floor(state.last_target_kb)
    ):
        return (
            f"driver target changed behind the policy ({state.last_target_kb} -> {raw} KiB);"
            " following"
        )
    return None


def clamp_target(raw: int, prev: int, lim: Limits, reason: str) -> tuple[int, str]:
    """``raw`` within ``[floor, ceiling]`` and, when it moves, in whole pages as the driver stores
    it (so what is written is what reads back); the reason says when a limit bit."""
    target = raw
    if target > lim.ceiling_kb:
        target = lim.ceiling_kb
        reason += f"; capped at the ceiling {lim.ceiling_kb} KiB ({lim.ceiling_source})"
    if target < lim.floor_kb:
        target = lim.floor_kb
        reason += f"; raised to the floor {lim.floor_kb} KiB"
    if target != prev and target % PAGE_KB:
        for aligned in (page_floor(target), page_floor(target) + PAGE_KB):
            if lim.floor_kb <= aligned <= lim.ceiling_kb:
                target = aligned
                break
    return target, reason


def hysteresis(
    target: int, prev: int, action: str, reason: str, lim: Limits, config: PolicyConfig
) -> tuple[int, str, str]:
    """A grow, shrink or pace under ``min_change_kb`` from a target within the limits is not
    made."""
    inside = lim.floor_kb <= prev <= lim.ceiling_kb
    if (action in ("grow", "shrink", "pace") and inside
            and 0 < abs(target - prev) < config.min_change_kb):
        reason += f"; change of {target - prev:+d} KiB below min_change {config.min_change_kb}"
        return prev, "hold", reason
    return target, action, reason


def settle_action(
    target: int, prev: int, action: str, state: PolicyState, now: float
) -> tuple[str, PolicyState]:
    """The action named by where the target went, and the grow/shrink time recorded.

    A stop of our own shrink where the driver got to is not a grow (the pressure policy keeps its
    own time for it), nor is a pace (a shrink cut back to what a slow driver gives back within
    a few seconds); a follow stays a follow.
    """
    if target > prev:
        if action in ("stop", "pace"):
            return action, state
        return ("follow" if action == "follow" else "grow"), replace(state, last_grow_t=now)
    if target < prev:
        return ("follow" if action == "follow" else "shrink"), replace(state, last_shrink_t=now)
    if action in ("grow", "shrink", "pace"):
        return "hold", state
    return action, state


def remember(signals: MemorySignals, state: PolicyState, target: int) -> PolicyState:
    """The counters the next decision computes its rates from, and the target written."""
    return replace(
        state,
        last_target_kb=target,
        last_xs_target_kb=signals.xs_target_kb,
        prev_t=signals.timestamp,
        prev_some_total_us=signals.some_total_us,
        prev_refaults=signals.refaults,
        prev_pswpin=signals.pswpin,
        prev_swapped_kb=swapped_kb(signals),
        prev_oom_kill=signals.oom_kill,
        prev_used_kb=used_kb(signals),
        prev_cached_kb=signals.cached_kb,
        prev_current_kb=signals.balloon_current_kb,
    )


def decide_with(
    signals: MemorySignals, state: PolicyState, config: PolicyConfig, step: Step
) -> Decision:
    """One decision: follow a toolstack override, else the policy's ``step``; then the shared
    limits, page alignment and hysteresis (see the module docstring)."""
    now = signals.timestamp
    if state.initial_target_kb is None:
        state = replace(state, initial_target_kb=driver_target(signals))
    lim = limits(signals, state, config)
    prev = state.last_target_kb if state.last_target_kb is not None else driver_target(signals)
    override = toolstack_override(signals, state)
    if override is not None:
        # Following is not a change by us: the driver already holds the new target.
        prev = raw = driver_target(signals)
        action, reason = "follow", override
        new_state = replace(state, last_follow_t=now)
    else:
        raw, action, reason, new_state = step(signals, state, config, lim, prev)
    target, reason = clamp_target(raw, prev, lim, reason)
    target, action, reason = hysteresis(target, prev, action, reason, lim, config)
    action, new_state = settle_action(target, prev, action, new_state, now)
    return Decision(
        target_kb=target,
        previous_kb=prev,
        action=action,
        reason=reason,
        floor_kb=lim.floor_kb,
        ceiling_kb=lim.ceiling_kb,
        new_state=remember(signals, new_state, target),
    )
