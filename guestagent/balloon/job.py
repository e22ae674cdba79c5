"""The balloon job of the daemon: the controller driven by the PSI trigger, an interval timer and
a xenstore watch on ``memory/target``; on stop the target goes back to the ceiling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from guestagent.balloon.actuator import BalloonUnavailable
from guestagent.balloon.config import policy_config
from guestagent.balloon.controller import BalloonController
from guestagent.balloon.memlock import Locker, lock_agent_memory, mlockall, munlockall
from guestagent.config import Config
from guestagent.errors import GuestAgentError
from guestagent.log import get_logger

if TYPE_CHECKING:
    from guestagent.balloon.signals import PsiTrigger
    from guestagent.daemon.loop import Timer
    from guestagent.daemon.service import JobContext


class BalloonJob:
    name = "balloon"

    def __init__(
        self, locker: Locker = mlockall, unlocker: Callable[[], None] = munlockall
    ) -> None:
        self._locker = locker
        self._unlocker = unlocker
        self._memory_locked = False
        self._ctx: JobContext | None = None
        self._ctl: BalloonController | None = None
        self._trigger: PsiTrigger | None = None
        self._timer: Timer | None = None

    def start(self, ctx: JobContext) -> None:
        self._ctx = ctx
        client = ctx.xenstore.client()
        ctl = BalloonController(ctx.hostfs, client, policy_config(ctx.config.section("balloon")))
        try:
            ctl.start()
        except BalloonUnavailable as e:
            raise GuestAgentError(str(e)) from None
        self._ctl = ctl
        self._lock_memory(ctx)
        self._trigger = ctl.arm_trigger()
        if self._trigger is not None:
            ctx.loop.add_reader(
                self._trigger.fileno(), lambda: self._tick(psi_fired=True), priority=True
            )
        if client is not None:
            ctx.xenstore.watch("memory/target", lambda path: self._tick())
        self._schedule()
        self._tick()

    def _lock_memory(self, ctx: JobContext, config: Config | None = None) -> None:
        """Keep the agent resident while it balloons (guestagent.balloon.memlock)."""
        log = get_logger("balloon")
        section = (config or ctx.config).section("balloon")
        if not section.get("lock_memory", True):
            log.info("memory_not_locked", reason="[balloon] lock_memory = false")
            return
        if not ctx.hostfs.is_real_host:
            log.debug("memory_not_locked", reason="not the real host (a --root fixture tree)")
            return
        why = lock_agent_memory(self._locker)
        if why is None:
            self._memory_locked = True
            log.info("memory_locked", how="mlockall MCL_CURRENT|MCL_FUTURE|MCL_ONFAULT")
        else:
            log.warning("memory_not_locked", reason=why)

    def _unlock_memory(self) -> None:
        if not self._memory_locked:
            return
        self._memory_locked = False
        try:
            self._unlocker()
        except OSError as e:
            get_logger("balloon").warning("memory_unlock_failed", error=str(e))
        else:
            get_logger("balloon").info("memory_unlocked")

    def _schedule(self) -> None:
        assert self._ctx is not None and self._ctl is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._ctx.loop.call_every(self._ctl.interval_s, self._tick)

    def _tick(self, psi_fired: bool = False) -> None:
        if self._ctl is not None:
            self._ctl.tick(psi_trigger_fired=psi_fired)

    def reload(self, config: Config) -> None:
        assert self._ctl is not None
        self._ctl.config = policy_config(config.section("balloon"))
        if self._ctx is not None:
            wanted = bool(config.section("balloon").get("lock_memory", True))
            if wanted and not self._memory_locked:
                self._lock_memory(self._ctx, config)
            elif not wanted:
                self._unlock_memory()
        self._schedule()

    def republish(self, reason: str) -> None:
        """After a resume or migration the toolstack's limits may differ: decide again now."""
        self._tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._trigger is not None and self._ctx is not None:
            self._ctx.loop.remove_reader(self._trigger.fileno())
            self._trigger.close()
            self._trigger = None
        if self._ctl is not None:
            self._ctl.stop(reset=True)
            self._ctl = None
        self._unlock_memory()

    def status(self) -> dict[str, Any]:
        ctl = self._ctl
        if ctl is None:
            return {}
        last = ctl.last_decision
        return {
            "policy": ctl.config.name,
            "ticks": ctl.ticks,
            "psi_trigger": self._trigger is not None,
            # the allocation guard (guestagent.balloon.guard) armed: overcommit and zram set
            "guard_armed": ctl.guard.armed,
            # the agent's pages locked in RAM (guestagent.balloon.memlock)
            "memory_locked": self._memory_locked,
            "target_kb": None if last is None else last.target_kb,
            "floor_kb": None if last is None else last.floor_kb,
            "ceiling_kb": None if last is None else last.ceiling_kb,
            "last_action": None if last is None else last.action,
            "last_reason": None if last is None else last.reason,
        }
