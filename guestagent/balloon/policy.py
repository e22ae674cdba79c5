"""Balloon policies: pure functions of a :class:`MemorySignals` snapshot and the last state.

No I/O and no clock: time comes from ``signals.timestamp``. Every policy returns a
:class:`Decision` whose ``target_kb`` is in the balloon driver's units (what is written to
``target_kb``, comparable with ``info/current_kb`` and the toolstack's ``memory/target``), and
which always lies within ``[floor_kb, ceiling_kb]``.

* ``none``: hold the ceiling (a baseline for benchmarks).
* ``classic``: the Linux xen-selfballoon algorithm (removed in 5.3), exactly as reference
  ``xen-abi.md`` section 5.2 describes it.
* ``pressure`` (the default, :mod:`guestagent.balloon.pressure`): probe against a PSI pressure
  target in the spirit of Meta's Senpai, grow at once by the shortage, keep a headroom that follows
  the bursts observed. Its control law is that module's docstring.

The limits, hysteresis and toolstack override every policy shares are in
:mod:`guestagent.balloon.common` (re-exported here, as are the pressure policy's names).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from guestagent.balloon.common import (
    HARD_MINIMUM_ABS_KB,
    HARD_MINIMUM_STATIC_MAX_DIVISOR,
    Decision,
    Limits,
    PolicyConfig,
    PolicyState,
    decide_with,
    driver_current,
    hard_minimum_kb,
    limits,
    page_floor,
    used_kb,
)
from guestagent.balloon.config import INTERVAL, POLICY, RESERVED
from guestagent.balloon.pressure import (
    PressureConfig,
    decide_pressure,
    reserve_kb,
    stall_pct,
)
from guestagent.balloon.signals import PAGE_KB, MemorySignals
from guestagent.errors import InputError
from guestagent.units import GIB_KB, MIB_KB

__all__ = [
    "DEFAULT_POLICY",
    "GIB_KB",
    "HARD_MINIMUM_ABS_KB",
    "HARD_MINIMUM_STATIC_MAX_DIVISOR",
    "MIB_KB",
    "POLICY_NAMES",
    "ClassicConfig",
    "Decision",
    "Limits",
    "NoneConfig",
    "PolicyConfig",
    "PolicyState",
    "PressureConfig",
    "classic_floor_pages",
    "classic_reserved_mb",
    "classic_target_pages",
    "decide",
    "decide_classic",
    "decide_none",
    "decide_pressure",
    "default_config",
    "hard_minimum_kb",
    "limits",
    "mb2pages",
    "page_floor",
    "reserve_kb",
    "stall_pct",
    "used_kb",
]


@dataclass(frozen=True)
class NoneConfig(PolicyConfig):
    name: ClassVar[str] = "none"
    min_change_kb: int = 0


@dataclass(frozen=True)
class ClassicConfig(PolicyConfig):
    """xen-selfballoon tunables with the kernel's defaults (reference section 5.1)."""

    name: ClassVar[str] = "classic"
    #: The kernel's ``selfballoon_interval`` default.
    own_interval_s: ClassVar[float] = 5.0
    reads_zoneinfo: ClassVar[bool] = True
    interval_s: float = INTERVAL.field()
    downhysteresis: int = 8
    uphysteresis: int = 1
    #: None = 10 % of MemTotal, computed once at the first tick (the kernel's init rule).
    reserved_mb: int | None = RESERVED.field()
    #: 0 = the piecewise floor.
    min_usable_mb: int = 0
    #: The kernel set its target on every tick; no hysteresis.
    min_change_kb: int = 0

    def validate(self) -> None:
        super().validate()
        for key in ("downhysteresis", "uphysteresis"):
            if getattr(self, key) < 1:
                raise InputError(f"balloon config {key}", "must be >= 1", getattr(self, key))

# --------------------------------------------------------------------------------------------
# none


def _step_none(
    signals: MemorySignals, state: PolicyState, config: PolicyConfig, lim: Limits, prev: int
) -> tuple[int, str, str, PolicyState]:
    return lim.ceiling_kb, "grow", f"policy none holds the ceiling ({lim.ceiling_source})", state


def decide_none(signals: MemorySignals, state: PolicyState, config: NoneConfig) -> Decision:
    """Hold the ceiling: what a guest without self-ballooning keeps."""
    return decide_with(signals, state, config, _step_none)


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
    target = tgt * PAGE_KB + driver_current(signals) - signals.mem_total_kb
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
    return decide_with(signals, state, config, _step_classic)



# --------------------------------------------------------------------------------------------
# Registry

POLICY_NAMES: tuple[str, ...] = POLICY.choices
DEFAULT_POLICY: str = POLICY.default

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

