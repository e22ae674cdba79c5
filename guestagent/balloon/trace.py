"""Traces of memory signals: record them from a live system, replay them through a policy.

Format (JSON lines, ASCII): the first line is a header object
``{"format": "guestagent-balloon-trace", "version": 1, ...}`` (free-form extra keys such as
``source``, ``interval_s``, ``note``); every further line is one :class:`MemorySignals` snapshot
as an object (``timestamp`` in seconds from the start of the recording).

Replay model (:func:`simulate`), stated plainly because it decides what the numbers mean:

* the guest's **size** is closed-loop: the simulated driver reaches each decided target at once
  (or, with ``populate_kb_per_s``, moves toward it at that rate), and the snapshot the policy
  sees is shifted accordingly (MemTotal, MemAvailable and MemFree move by the difference between
  the simulated and the recorded size; the balloon fields are the simulated ones);
* **pressure** is open-loop: PSI, refaults, swap-ins and OOM kills are the recorded ones, so a
  policy that would have squeezed the guest harder than the recording did is not punished with
  extra pressure. ``underprovisioned_steps`` counts the snapshots where the simulated size would
  have left negative MemAvailable (the workload would not have fit): a policy with any of those
  is not credible, whatever memory it saves;
* memory held is the simulated target integrated over time (GiB x s), from each snapshot to the
  next.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import IO, Any, Callable

from guestagent.balloon.policy import (
    GIB_KB,
    Decision,
    PolicyConfig,
    PolicyState,
    decide,
    default_config,
)
from guestagent.balloon.signals import (
    MemorySignals,
    PsiTrigger,
    XenstoreReader,
    read_signals,
)
from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.log import get_logger

TRACE_FORMAT = "guestagent-balloon-trace"
TRACE_VERSION = 1
#: A trace longer than this is refused (a day at 1 s).
MAX_TRACE_LINES = 86_400 * 2


@dataclass
class Trace:
    header: dict[str, Any]
    snapshots: list[MemorySignals]


def trace_header(**extra: Any) -> dict[str, Any]:
    return {"format": TRACE_FORMAT, "version": TRACE_VERSION, **extra}


def parse_trace(lines: Iterable[str], source: str) -> Trace:
    """Validate a whole trace; the first bad line raises InputError naming file and line."""
    header: dict[str, Any] | None = None
    snapshots: list[MemorySignals] = []
    last_t = -math.inf
    for lineno, line in enumerate(lines, 1):
        if lineno > MAX_TRACE_LINES:
            raise InputError(source, f"more than {MAX_TRACE_LINES} lines")
        if not line.strip():
            continue
        where = f"{source} line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(where, f"not JSON ({e.msg})", line) from None
        if header is None:
            if not isinstance(obj, dict) or obj.get("format") != TRACE_FORMAT:
                raise InputError(where, f"not a {TRACE_FORMAT} header", line)
            if obj.get("version") != TRACE_VERSION:
                raise InputError(where, f"unsupported version (want {TRACE_VERSION})", line)
            header = obj
            continue
        snap = MemorySignals.from_dict(obj, where)
        if snap.timestamp < last_t:
            raise InputError(where, "timestamp goes backwards", snap.timestamp)
        last_t = snap.timestamp
        snapshots.append(snap)
    if header is None:
        raise InputError(source, "empty trace")
    if not snapshots:
        raise InputError(source, "trace has no snapshots")
    return Trace(header=header, snapshots=snapshots)


def load_trace(path: str) -> Trace:
    """A trace file (an operator's file, not a host path)."""
    try:
        with open(path, encoding="ascii") as f:
            return parse_trace(f, path)
    except FileNotFoundError:
        raise InputError(path, "no such trace file") from None
    except UnicodeDecodeError:
        raise InputError(path, "not ASCII text") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None


def dump_snapshot(snap: MemorySignals) -> str:
    return json.dumps(snap.to_dict(), sort_keys=True, separators=(",", ":"))


def write_trace(out: IO[str], header: dict[str, Any], snapshots: Iterable[MemorySignals]) -> None:
    out.write(json.dumps(header, sort_keys=True) + "\n")
    for snap in snapshots:
        out.write(dump_snapshot(snap) + "\n")


# --------------------------------------------------------------------------------------------
# Recording


def record(
    hostfs: HostFS,
    xenstore: XenstoreReader | None,
    out: IO[str],
    interval_s: float,
    duration_s: float,
    clock: Callable[[], float] = time.monotonic,
    use_trigger: bool = True,
    note: str = "",
) -> int:
    """Write a trace of live snapshots every ``interval_s`` for ``duration_s``; returns the count.

    Uses the same readers as the controller. With a PSI trigger (when the kernel allows it) a
    snapshot's ``psi_trigger_fired`` says whether the trigger fired during its interval.
    """
    if not 0 < interval_s <= 3600:
        raise InputError("--interval", "expected 0 < seconds <= 3600", interval_s)
    if not 0 <= duration_s <= 7 * 86_400:
        raise InputError("--duration", "expected 0 <= seconds <= 604800", duration_s)
    log = get_logger("balloon")
    trigger: PsiTrigger | None = None
    if use_trigger and hostfs.is_real_host:  # on a fixture tree arming would overwrite the file
        try:
            trigger = PsiTrigger(hostfs)
        except InputError as e:
            log.warning("psi_trigger_unavailable", error=str(e))
    header = trace_header(
        source="recorded by guestagent balloon record",
        recorded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        interval_s=interval_s,
        psi_trigger=trigger.spec if trigger is not None else None,
        note=note,
    )
    out.write(json.dumps(header, sort_keys=True) + "\n")
    start = clock()
    count = 0
    try:
        while True:
            now = clock()
            elapsed = now - start
            fired = False
            if count > 0:
                wait = max(0.0, count * interval_s - elapsed)
                fired = _wait(trigger, wait)
                now = clock()
                elapsed = now - start
            snap = read_signals(hostfs, xenstore, round(elapsed, 3), psi_trigger_fired=fired)
            out.write(dump_snapshot(snap) + "\n")
            out.flush()
            count += 1
            if count * interval_s > duration_s + 1e-9:  # the next snapshot is past the end
                break
    finally:
        if trigger is not None:
            trigger.close()
    return count


def _wait(trigger: PsiTrigger | None, seconds: float) -> bool:
    """Sleep ``seconds``; True if the PSI trigger fired meanwhile (the sleep still runs out)."""
    deadline = time.monotonic() + seconds
    fired = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return fired
        if trigger is None:
            time.sleep(left)
            continue
        if trigger.poll(math.ceil(left * 1000)):
            fired = True
            # One notification per window: sleep out the rest without busy polling.
            time.sleep(min(max(0.0, deadline - time.monotonic()), 0.1))


# --------------------------------------------------------------------------------------------
# Replay


@dataclass(frozen=True)
class SimStep:
    timestamp: float
    target_kb: int
    action: str
    reason: str
    floor_kb: int
    ceiling_kb: int
    some_avg10: float
    underprovisioned: bool


@dataclass(frozen=True)
class SimSummary:
    policy: str
    steps: int
    duration_s: float
    memory_held_gib_s: float
    mean_gib: float
    min_target_kb: int
    max_target_kb: int
    grows: int
    shrinks: int
    follows: int
    peak_some_avg10: float
    oom_kills_in_trace: int
    underprovisioned_steps: int
    floor_violations: int
    ceiling_violations: int


@dataclass
class SimResult:
    steps: list[SimStep] = field(default_factory=list)
    summary: SimSummary | None = None


def _recorded_current(snap: MemorySignals) -> int:
    return snap.balloon_current_kb if snap.balloon_current_kb is not None else snap.mem_total_kb


def _driver_moves(current: int, target: int, dt: float, populate_kb_per_s: float | None) -> int:
    """Where the simulated driver is ``dt`` seconds after ``current``: at the target at once, or
    at most ``populate_kb_per_s`` of the way (either direction)."""
    if populate_kb_per_s is None:
        return target
    step = int(populate_kb_per_s * max(0.0, dt))
    return max(target, current - step) if target < current else min(target, current + step)


def simulate(
    trace: Trace | list[MemorySignals],
    policy: str,
    config: PolicyConfig | None = None,
    populate_kb_per_s: float | None = None,
) -> SimResult:
    """Replay a trace through a policy (see the module docstring for the model).

    ``populate_kb_per_s`` makes the simulated driver lag: it moves toward each target by at most
    that many KiB per second of trace time (on the Xen 4.17 testbed under TCG a grow from 308 to
    1024 MiB took 15 s, about 48 MiB/s), instead of reaching it at once.
    """
    snapshots = trace.snapshots if isinstance(trace, Trace) else trace
    if not snapshots:
        raise InputError("simulate", "empty trace")
    cfg = config if config is not None else default_config(policy)
    if cfg.name != policy:
        raise InputError("simulate", f"config is for policy {cfg.name!r}", policy)
    cfg.validate()
    state = PolicyState()
    result = SimResult()
    sim_target: int | None = None
    sim_current = 0
    last_t = snapshots[0].timestamp
    last_xs: int | None = None
    decisions: list[Decision] = []
    for snap in snapshots:
        recorded = _recorded_current(snap)
        if sim_target is None:
            sim_target = snap.balloon_target_kb if snap.balloon_target_kb is not None else recorded
            sim_current = recorded
        else:
            sim_current = _driver_moves(
                sim_current, sim_target, snap.timestamp - last_t, populate_kb_per_s
            )
        last_t = snap.timestamp
        if last_xs is not None and snap.xs_target_kb is not None and snap.xs_target_kb != last_xs:
            # The kernel's watch applies a toolstack write to the driver's target at once.
            sim_target = snap.xs_target_kb - cfg.toolstack_offset_kb
            sim_current = sim_target
        last_xs = snap.xs_target_kb
        delta = sim_current - recorded
        seen = replace(
            snap,
            mem_total_kb=max(1, snap.mem_total_kb + delta),
            mem_available_kb=max(0, snap.mem_available_kb + delta),
            mem_free_kb=max(0, snap.mem_free_kb + delta),
            balloon_target_kb=sim_target,
            balloon_current_kb=sim_current,
        )
        decision = decide(seen, state, cfg)
        state = decision.new_state
        sim_target = decision.target_kb
        decisions.append(decision)
        result.steps.append(
            SimStep(
                timestamp=snap.timestamp,
                target_kb=decision.target_kb,
                action=decision.action,
                reason=decision.reason,
                floor_kb=decision.floor_kb,
                ceiling_kb=decision.ceiling_kb,
                some_avg10=snap.some_avg10,
                underprovisioned=snap.mem_available_kb + delta < 0,
            )
        )
    result.summary = _summarize(policy, snapshots, result.steps)
    return result


def _summarize(policy: str, snaps: list[MemorySignals], steps: list[SimStep]) -> SimSummary:
    held = 0.0
    for i in range(len(steps) - 1):
        dt = snaps[i + 1].timestamp - snaps[i].timestamp
        held += steps[i].target_kb / GIB_KB * dt
    duration = snaps[-1].timestamp - snaps[0].timestamp
    ooms = [s.oom_kill for s in snaps if s.oom_kill is not None]
    targets = [s.target_kb for s in steps]
    return SimSummary(
        policy=policy,
        steps=len(steps),
        duration_s=duration,
        memory_held_gib_s=held,
        mean_gib=held / duration if duration > 0 else targets[0] / GIB_KB,
        min_target_kb=min(targets),
        max_target_kb=max(targets),
        grows=sum(1 for s in steps if s.action == "grow"),
        shrinks=sum(1 for s in steps if s.action == "shrink"),
        follows=sum(1 for s in steps if s.action == "follow"),
        peak_some_avg10=max(s.some_avg10 for s in snaps),
        oom_kills_in_trace=(ooms[-1] - ooms[0]) if ooms else 0,
        underprovisioned_steps=sum(1 for s in steps if s.underprovisioned),
        floor_violations=sum(1 for s in steps if s.target_kb < s.floor_kb),
        ceiling_violations=sum(1 for s in steps if s.target_kb > s.ceiling_kb),
    )
