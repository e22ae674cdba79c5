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
from typing import IO, Any

from guestagent.balloon.common import toolstack_offset, with_offset
from guestagent.balloon.policy import (
    GIB_KB,
    PolicyConfig,
    PolicyState,
    default_config,
)
from guestagent.balloon.signals import (
    MemorySignals,
    PsiTrigger,
    XenstoreReader,
    read_signals,
)
from guestagent.balloon.step import Observation, step
from guestagent.errors import InputError
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


class RecordJob:
    """``guestagent balloon record`` as a job of the daemon: a live snapshot at start and then every
    ``interval_s`` (on the loop's clock, never early), until the next one would be past
    ``duration_s``; then the job says it is finished and the one-job daemon stops.

    Uses the same readers as the controller. With a PSI trigger (when the kernel allows it) a
    snapshot's ``psi_trigger_fired`` says whether the trigger fired during its interval; a trigger
    whose descriptor errors or hangs up is dropped (one warning) and the recording goes on. A
    snapshot that cannot be read, or written, ends the recording with that error (the command
    exits 1); a reader of ``--out -`` gone (a broken pipe) ends it quietly.
    It only reads: the daemon runs it as an observer (``daemon.commands.run_observer``: the
    configuration ``run`` reads, the command's Host, but no lock and no status socket), beside
    the unit's daemon, as the balloon benchmark's monitor does in the guest. Its own options
    (interval, duration, trigger, note) are its arguments, not configuration keys.
    """

    name = "record"

    def __init__(
        self,
        out: IO[str],
        interval_s: float,
        duration_s: float,
        xenstore: XenstoreReader | None,
        use_trigger: bool = True,
        note: str = "",
    ) -> None:
        if not 0 < interval_s <= 3600:
            raise InputError("--interval", "expected 0 < seconds <= 3600", interval_s)
        if not 0 <= duration_s <= 7 * 86_400:
            raise InputError("--duration", "expected 0 <= seconds <= 604800", duration_s)
        self.out = out
        self.interval_s = interval_s
        self.duration_s = duration_s
        self.xenstore = xenstore
        self.use_trigger = use_trigger
        self.note = note
        #: Snapshots written.
        self.count = 0
        self._ctx: Any = None
        self._trigger: PsiTrigger | None = None
        self._fired = False
        self._timer: Any = None
        self._start = 0.0
        self._done = False

    def start(self, ctx: Any) -> None:
        self._ctx = ctx
        log = get_logger("balloon")
        if self.use_trigger:  # the host gives none on a fixture tree (arming would overwrite it)
            try:
                self._trigger = ctx.host.psi_trigger()
            except InputError as e:
                log.warning("psi_trigger_unavailable", error=str(e))
        header = trace_header(
            source="recorded by guestagent balloon record",
            recorded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            interval_s=self.interval_s,
            psi_trigger=self._trigger.spec if self._trigger is not None else None,
            note=self.note,
        )
        try:
            self.out.write(json.dumps(header, sort_keys=True) + "\n")
            if self._trigger is not None:
                ctx.loop.add_reader(self._trigger.fileno(), self._on_trigger, priority=True,
                                    on_error=self._trigger_lost)
            self._start = ctx.loop.now()
            self._timer = ctx.loop.call_every(self.interval_s, self._snapshot)
            self._timer.slack = 0.0  # the trace's cadence is the interval, never a shared wakeup
        except BaseException:
            self.stop()
            raise
        self._snapshot()  # the first, at 0

    def _on_trigger(self) -> None:
        self._fired = True

    def _trigger_lost(self) -> None:
        get_logger("balloon").warning("psi_trigger_lost", fallback="snapshots without it")
        if self._trigger is not None:
            self._trigger.close()
            self._trigger = None

    def _snapshot(self) -> None:
        if self._done:
            return
        try:
            self._write_snapshot()
        except InputError as e:
            self._finish(str(e))
        except BrokenPipeError:  # the reader of --out - went away: nobody to record for
            self._finish(None)
        except OSError as e:
            self._finish(f"cannot write the trace: {e.strerror or e}")

    def _write_snapshot(self) -> None:
        # the first snapshot is the recording's start, at 0 by definition
        elapsed = self._ctx.loop.now() - self._start if self.count else 0.0
        fired, self._fired = self._fired, False
        snap = read_signals(self._ctx.hostfs, self.xenstore, round(elapsed, 3),
                            psi_trigger_fired=fired)
        self.out.write(dump_snapshot(snap) + "\n")
        self.out.flush()
        self.count += 1
        if self.count * self.interval_s > self.duration_s + 1e-9:  # the next is past the end
            self._finish(None)

    def _finish(self, error: str | None) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
        self._ctx.end_job(self.name, error)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._trigger is not None:
            if self._ctx is not None:
                self._ctx.loop.remove_reader(self._trigger.fileno())
            self._trigger.close()
            self._trigger = None

    def reload(self, config: Any) -> None:
        """The recording takes no configuration."""

    def republish(self, reason: str) -> None:
        """Nothing published: a resume shows in the snapshots themselves."""

    def status(self) -> dict[str, Any]:
        return {"snapshots": self.count, "psi_trigger": self._trigger is not None}


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
    """Replay a trace through a policy (see the module docstring for the model), one
    :func:`~guestagent.balloon.step.step` per snapshot: the step the live balloon job takes, so
    the simulated driver gets exactly what the job would write (nothing when the step writes
    nothing). No overcommit mode 2 in a replay: the strict-commit floor never applies.

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
    for snap in snapshots:
        recorded = _recorded_current(snap)
        if sim_target is None:
            sim_target = snap.balloon_target_kb if snap.balloon_target_kb is not None else recorded
            sim_current = recorded
            # the job's start: learn the toolstack offset (HVM video RAM) as the actuator does
            cfg = with_offset(cfg, toolstack_offset(snap.xs_target_kb, sim_target) or 0)
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
        plan, state = step(state, Observation(seen), cfg)
        decision = plan.decision
        sim_target = plan.target_after_kb
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
