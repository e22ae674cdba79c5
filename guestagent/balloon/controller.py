"""One balloon job's state: start (remember the target, learn the offset), tick (read ->
:func:`~guestagent.balloon.step.step` -> apply), stop (reset).

A tick reads (:meth:`BalloonController.read`: plain figures, made into the snapshot by a pure
function), decides with the step ``balloon simulate`` replays traces through, and applies
(:meth:`BalloonController.apply`: the guard armed, then exactly the plan's target written).

The daemon's balloon job (:mod:`guestagent.balloon.job`) drives it from the event loop: on the PSI
trigger's ``POLLPRI`` (a pressure spike is answered at once), on a xenstore watch event on
``memory/target`` (a toolstack override is followed at once) and on the policy's interval; it
stops it (the target back to the ceiling) on SIGTERM, SIGINT, ``--duration`` and when it gives up.
``guestagent run`` and ``guestagent balloon run`` both run that job.
"""

from __future__ import annotations

import time
from typing import Callable

from guestagent.balloon.actuator import ApplyResult, BalloonActuator
from guestagent.balloon.common import with_offset
from guestagent.balloon.guard import Guard, GuardCommands, read_commit, reset_all
from guestagent.balloon.policy import (
    Decision,
    PolicyConfig,
    PolicyState,
    PressureConfig,
)
from guestagent.balloon.signals import (
    PSI_MEMORY,
    MemorySignals,
    PsiTrigger,
    XenstoreReader,
    build_signals,
    read_raw,
)
from guestagent.balloon.step import Observation, Plan, step
from guestagent.balloon.xsnodes import WatchedNodes
from guestagent.errors import InputError
from guestagent.host import Host
from guestagent.hostfs import HostFS
from guestagent.log import get_logger

#: A decision that changes nothing goes to the status file at most this often (s).
HOLD_RECORD_EVERY_S = 30.0


class BalloonController:
    """One balloon job's state: start (remember, learn the offset), tick, stop (reset).

    ``tick`` is everything that happens when the loop wakes: :meth:`read`, the pure
    :func:`~guestagent.balloon.step.step`, :meth:`apply`, and the decision recorded. The
    daemon's balloon job drives it from the event loop.
    """

    def __init__(
        self,
        hostfs: HostFS,
        xenstore: XenstoreReader | None,
        config: PolicyConfig,
        clock: Callable[[], float] = time.monotonic,
        guard_commands: GuardCommands | None = None,
    ) -> None:
        config.validate()
        self.hostfs = hostfs
        self.config = config
        self.clock = clock
        self.actuator = BalloonActuator(hostfs, xenstore)
        #: What a decision reads the toolstack's nodes through: kept while they are watched.
        self.nodes = None if xenstore is None else WatchedNodes(xenstore, clock)
        self.guard_commands = guard_commands
        self.guard = Guard(hostfs, self.actuator, guard_commands)
        self.state = PolicyState()
        self.log = get_logger("balloon")
        self.started_at = clock()
        #: The toolstack offset learned at start (the record's), kept across reloads.
        self.offset_kb = 0
        #: Consecutive ticks that failed on bad input.
        self.errors = 0
        self.ticks = 0
        self.last_decision: Decision | None = None
        #: When a decision was last written to the status file.
        self._recorded_t: float | None = None

    def configure(self, config: PolicyConfig) -> None:
        """A reloaded configuration (validated), with the toolstack offset learned at start."""
        config.validate()
        self.config = with_offset(config, self.offset_kb)

    @property
    def interval_s(self) -> float:
        return float(getattr(self.config, "interval_s", self.config.own_interval_s))

    def start(self) -> None:
        """Raise BalloonUnavailable without a driver; remember the original target (undo)."""
        record = self.actuator.start()
        self.offset_kb = int(record.get("toolstack_offset_kb") or 0)
        self.config = with_offset(self.config, self.offset_kb)
        self.started_at = self.clock()
        if isinstance(self.config, PressureConfig) and not self.hostfs.exists(PSI_MEMORY):
            self.log.warning(
                "balloon_no_psi",
                note="policy pressure never shrinks without PSI (Linux >= 4.20, psi=1); "
                "it only grows on refaults, swap-ins and MemAvailable; consider --policy classic",
            )

    def arm_trigger(self, host: Host) -> PsiTrigger | None:
        """The policy's PSI trigger from the host handle, or None (logged) where it cannot or
        must not be armed."""
        stall = getattr(self.config, "trigger_stall_us", PressureConfig.trigger_stall_us)
        window = getattr(self.config, "trigger_window_us", PressureConfig.trigger_window_us)
        try:
            trigger = host.psi_trigger("some", int(stall), int(window))
        except InputError as e:
            self.log.warning("psi_trigger_unavailable", error=str(e), fallback="interval only")
            return None
        if trigger is None:
            # On a fixture tree the PSI "file" is a plain file: arming would overwrite it.
            self.log.info("psi_trigger_skipped", reason="not the real host root")
            return None
        if trigger.widened:
            self.log.info("psi_trigger_widened", spec=trigger.spec,
                          reason="no CAP_SYS_RESOURCE: window must be a multiple of 2 s")
        return trigger  # type: ignore[no-any-return]

    def read(self, psi_trigger_fired: bool = False) -> Observation:
        """Read: the snapshot (raw figures made into the model by the pure build_signals) and,
        under overcommit mode 2, the commit figures. A broken source raises InputError."""
        raw = read_raw(self.hostfs, self.nodes, with_zoneinfo=self.config.reads_zoneinfo)
        commit = read_commit(self.hostfs)
        return Observation(build_signals(raw, self.clock(), psi_trigger_fired), commit)

    def apply(self, plan: Plan, seen: MemorySignals | None = None) -> ApplyResult:
        """Apply: arm the guard if the plan goes below the ceiling, then write exactly the plan's
        target (nothing when it has none). Returns what the driver holds afterwards: with nothing
        written, what ``seen`` (this tick's snapshot) read of the driver, when it did."""
        decision = plan.decision
        if plan.arm_guard:
            self.guard.arm(decision.ceiling_kb, decision.floor_kb)
        if plan.floored_from_kb is not None:
            self.log.info("guard_commit_floor", policy_target_kb=plan.floored_from_kb,
                          target_kb=decision.target_kb, note="overcommit 2: CommitLimit kept "
                          "above Committed_AS + 128 MiB")
        if plan.write_kb is None:
            if seen is not None and seen.balloon_target_kb is not None \
                    and seen.balloon_current_kb is not None:
                target_kb, current_kb = seen.balloon_target_kb, seen.balloon_current_kb
            else:
                driver = self.actuator.read()
                target_kb, current_kb = driver.target_kb, driver.current_kb
            return ApplyResult(False, target_kb, current_kb, target_kb)
        return self.actuator.apply(plan.write_kb, decision.reason)

    def _records(self, decision: Decision, written: bool, now: float) -> bool:
        """Whether ``balloon status`` gets this decision: every change, and a hold at most every
        ``HOLD_RECORD_EVERY_S`` (the status file is rewritten whole; at a decision a second it
        was half of a tick's CPU)."""
        if decision.action != "hold" or written or self._recorded_t is None:
            return True
        return now - self._recorded_t >= HOLD_RECORD_EVERY_S

    def tick(self, psi_trigger_fired: bool = False) -> Decision | None:
        """One read -> step -> apply; None when the input was bad (logged, counted in
        ``errors``)."""
        self.ticks += 1
        try:
            observation = self.read(psi_trigger_fired)
            now = observation.signals.timestamp
            self.actuator.observe_toolstack(observation.signals.xs_target_kb)
            plan, state = step(self.state, observation, self.config)
            decision = plan.decision
            applied = self.apply(plan, observation.signals)
            self.state = state
            if decision.action != "hold" or applied.written:
                self.log.info("balloon_decision", policy=self.config.name,
                              action=decision.action, target_kb=decision.target_kb,
                              written=applied.written, current_kb=applied.current_kb,
                              reason=decision.reason)
            if self._records(decision, applied.written, now):
                self._recorded_t = now
                self.actuator.record_decision({
                    "policy": self.config.name,
                    "t": round(now - self.started_at, 3),
                    "wall": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "action": decision.action,
                    "target_kb": applied.target_kb,
                    "current_kb": applied.current_kb,
                    "written": applied.written,
                    "reason": decision.reason,
                })
        except InputError as e:
            self.errors += 1
            self.log.error("balloon_tick_failed", error=str(e), consecutive=self.errors)
            return None
        self.errors = 0
        self.last_decision = decision
        return decision

    def stop(self, reset: bool = True) -> None:
        """Reset: the target back to the ceiling, then the guard's changes undone."""
        if reset:
            reset_all(self.actuator, self.guard_commands)
