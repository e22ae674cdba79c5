"""The balloon job of the daemon: the controller driven by the PSI trigger, an interval timer and
a xenstore watch on ``memory/target``; on stop the target goes back to the ceiling."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guestagent.balloon.actuator import BalloonUnavailable
from guestagent.balloon.config import policy_config
from guestagent.balloon.controller import BalloonController
from guestagent.config import Config
from guestagent.errors import GuestAgentError

if TYPE_CHECKING:
    from guestagent.balloon.signals import PsiTrigger
    from guestagent.daemon.loop import Timer
    from guestagent.daemon.service import JobContext


class BalloonJob:
    name = "balloon"

    def __init__(self) -> None:
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
        self._trigger = ctl.arm_trigger()
        if self._trigger is not None:
            ctx.loop.add_reader(
                self._trigger.fileno(), lambda: self._tick(psi_fired=True), priority=True
            )
        if client is not None:
            ctx.xenstore.watch("memory/target", lambda path: self._tick())
        self._schedule()
        self._tick()

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
            "target_kb": None if last is None else last.target_kb,
            "floor_kb": None if last is None else last.floor_kb,
            "ceiling_kb": None if last is None else last.ceiling_kb,
            "last_action": None if last is None else last.action,
            "last_reason": None if last is None else last.reason,
        }
