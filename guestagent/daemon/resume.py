"""Noticing that the guest was suspended, resumed or migrated, so everything is republished.

Two signs, either suffices: the toolstack's ``unique-domain-id`` changed (XAPI writes a fresh UUID
for every new domain, also after a cross-host migration that kept the domid; libxl does not write
it), or the clocks jumped against each other (CLOCK_BOOTTIME counts suspended time and
CLOCK_MONOTONIC does not; CLOCK_REALTIME jumps when the clock is set after a restore).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Differences below these are clock noise and NTP slewing, not a resume.
BOOTTIME_JUMP = 2.0
REALTIME_JUMP = 30.0


@dataclass(frozen=True)
class ClockSample:
    """The three clocks read at one moment (seconds)."""

    monotonic: float
    boottime: float
    realtime: float


@dataclass(frozen=True)
class ResumeState:
    """What the last resume check saw: the clocks and the domain's ``unique-domain-id``."""

    clocks: ClockSample | None = None
    unique_domain_id: str | None = None


def detect_resume(
    state: ResumeState, clocks: ClockSample, unique_domain_id: str | None
) -> tuple[str | None, ResumeState]:
    """(why we think the domain resumed or None, the state to keep). Pure."""
    reason: str | None = None
    previous = state.clocks
    if previous is not None:
        slept = (clocks.boottime - clocks.monotonic) - (previous.boottime - previous.monotonic)
        shifted = (clocks.realtime - clocks.monotonic) - (previous.realtime - previous.monotonic)
        if slept > BOOTTIME_JUMP:
            reason = f"suspended for {slept:.0f} s (boot clock ran ahead of the monotonic clock)"
        elif abs(shifted) > REALTIME_JUMP:
            reason = f"wall clock jumped by {shifted:+.0f} s"
    if (
        state.unique_domain_id is not None
        and unique_domain_id is not None
        and unique_domain_id != state.unique_domain_id
    ):
        reason = f"unique-domain-id changed from {state.unique_domain_id} to {unique_domain_id}"
    kept_id = unique_domain_id if unique_domain_id is not None else state.unique_domain_id
    return reason, ResumeState(clocks, kept_id)


def sample_clocks() -> ClockSample:
    import time

    return ClockSample(
        time.clock_gettime(time.CLOCK_MONOTONIC),
        time.clock_gettime(time.CLOCK_BOOTTIME),
        time.clock_gettime(time.CLOCK_REALTIME),
    )
