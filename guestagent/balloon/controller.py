"""One balloon job's state: start (remember the target, learn the offset), tick (read a snapshot,
ask the policy, hand the target to the actuator), stop (reset).

The daemon's balloon job (:mod:`guestagent.balloon.job`) drives it from the event loop: on the PSI
trigger's ``POLLPRI`` (a pressure spike is answered at once), on a xenstore watch event on
``memory/target`` (a toolstack override is followed at once) and on the policy's interval; it
stops it (the target back to the ceiling) on SIGTERM, SIGINT, ``--duration`` and when it gives up.
``guestagent run`` and ``guestagent balloon run`` both run that job.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

from guestagent.balloon.actuator import BalloonActuator
from guestagent.balloon.config import INTERVAL
from guestagent.balloon.guard import Guard, GuardCommands, reset_all
from guestagent.balloon.policy import (
    Decision,
    PolicyConfig,
    PolicyState,
    PressureConfig,
    decide,
)
from guestagent.balloon.signals import (
    PSI_MEMORY,
    PsiTrigger,
    XenstoreReader,
    read_signals,
)
from guestagent.errors import InputError
from guestagent.hostfs import HostFS
from guestagent.log import get_logger


class BalloonController:
    """One balloon job's state: start (remember, learn the offset), tick, stop (reset).

    ``tick`` is everything that happens when the loop wakes: read a snapshot, ask the policy, hand
    the target to the actuator, record the decision. The daemon's balloon job drives it from
    the event loop.
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
        self.xenstore = xenstore
        self.config = config
        self.clock = clock
        self.actuator = BalloonActuator(hostfs, xenstore)
        self.guard_commands = guard_commands
        self.guard = Guard(hostfs, self.actuator, guard_commands)
        self.state = PolicyState()
        self.log = get_logger("balloon")
        self.started_at = clock()
        #: Consecutive ticks that failed on bad input.
        self.errors = 0
        self.ticks = 0
        self.last_decision: Decision | None = None

    @property
    def interval_s(self) -> float:
        return float(getattr(self.config, "interval_s", INTERVAL.policy_default()))

    def start(self) -> None:
        """Raise BalloonUnavailable without a driver; remember the original target (undo)."""
        record = self.actuator.start()
        offset = int(record.get("toolstack_offset_kb") or 0)
        if self.config.toolstack_offset_kb == 0 and offset:
            self.config = replace(self.config, toolstack_offset_kb=offset)
        self.started_at = self.clock()
        if isinstance(self.config, PressureConfig) and not self.hostfs.exists(PSI_MEMORY):
            self.log.warning(
                "balloon_no_psi",
                note="policy pressure never shrinks without PSI (Linux >= 4.20, psi=1); "
                "it only grows on refaults, swap-ins and MemAvailable; consider --policy classic",
            )

    def arm_trigger(self) -> PsiTrigger | None:
        """The policy's PSI trigger, or None (logged) where it cannot be armed."""
        if not self.hostfs.is_real_host:
            # On a fixture tree the PSI "file" is a plain file: arming would overwrite it.
            self.log.info("psi_trigger_skipped", reason="not the real host root")
            return None
        stall = getattr(self.config, "trigger_stall_us", PressureConfig.trigger_stall_us)
        window = getattr(self.config, "trigger_window_us", PressureConfig.trigger_window_us)
        try:
            trigger = PsiTrigger(self.hostfs, "some", int(stall), int(window))
        except InputError as e:
            self.log.warning("psi_trigger_unavailable", error=str(e), fallback="interval only")
            return None
        if trigger.widened:
            self.log.info("psi_trigger_widened", spec=trigger.spec,
                          reason="no CAP_SYS_RESOURCE: window must be a multiple of 2 s")
        return trigger

    def tick(self, psi_trigger_fired: bool = False) -> Decision | None:
        """One decision; None when the input was bad (logged, counted in ``errors``)."""
        now = self.clock()
        self.ticks += 1
        try:
            snap = read_signals(self.hostfs, self.xenstore, now, psi_trigger_fired)
            self.actuator.observe_toolstack(snap.xs_target_kb)
            decision = self.guarded(decide(snap, self.state, self.config), snap)
            force = decision.action == "follow" or not (
                decision.floor_kb <= (snap.balloon_target_kb or 0) <= decision.ceiling_kb
            )
            applied = self.actuator.apply(decision.target_kb, decision.reason, force=force)
            self.state = replace(decision.new_state, last_target_kb=applied.target_kb)
            if decision.action != "hold" or applied.written:
                self.log.info("balloon_decision", policy=self.config.name,
                              action=decision.action, target_kb=decision.target_kb,
                              written=applied.written, current_kb=applied.current_kb,
                              reason=decision.reason)
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

    def guarded(self, decision: Decision, snap: Any) -> Decision:
        """The policy's decision with the allocation guard (guestagent.balloon.guard) applied:
        armed before the first target below the ceiling, and under overcommit mode 2 the target
        floored so CommitLimit stays above Committed_AS plus a margin."""
        if decision.target_kb >= decision.ceiling_kb:
            return decision
        self.guard.arm(decision.ceiling_kb, decision.floor_kb)
        current = snap.balloon_current_kb or snap.balloon_target_kb
        floor = None if current is None else self.guard.floor_kb(int(current))
        if floor is None or decision.target_kb >= floor:
            return decision
        target = min(floor, decision.ceiling_kb)
        self.log.info("guard_commit_floor", policy_target_kb=decision.target_kb,
                      target_kb=target, note="overcommit 2: CommitLimit kept above "
                      "Committed_AS + 128 MiB")
        return replace(decision, target_kb=target,
                       reason=f"{decision.reason}; floored at {target} KiB (strict commit)")

    def stop(self, reset: bool = True) -> None:
        """Reset: the target back to the ceiling, then the guard's changes undone."""
        if reset:
            reset_all(self.actuator, self.guard_commands)
