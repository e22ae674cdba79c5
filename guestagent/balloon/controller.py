"""A one-shot balloon controller loop: PSI trigger fd + interval timer, policy, actuator.

Wakes on whichever comes first: the PSI trigger's ``POLLPRI`` (a pressure spike is answered at
once), a xenstore watch event on ``memory/target`` (a toolstack override is followed at once, when
the client can watch), or the policy's interval. Then reads a snapshot, asks the policy, and hands
the target to the actuator. On SIGTERM or SIGINT, at ``--duration`` and on any way out, the target
goes back to the ceiling (``reset``). The long-running daemon will wire the same pieces into its
own event loop.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from dataclasses import replace
from types import FrameType
from typing import Any, Callable, Protocol

from guestagent.balloon.actuator import BalloonActuator
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
    XS_TARGET,
    PsiTrigger,
    XenstoreReader,
    read_signals,
)
from guestagent.errors import GuestAgentError, InputError
from guestagent.hostfs import HostFS
from guestagent.log import get_logger

#: Consecutive failed ticks (bad input) after which the loop resets and gives up.
MAX_CONSECUTIVE_ERRORS = 3

#: The token of the controller's xenstore watch on ``memory/target``.
WATCH_TOKEN = "guestagent-balloon"


class XenstoreWatcher(Protocol):
    """What the controller uses of a xenstore client that can watch (guestagent.xen.xenstore)."""

    def read(self, path: str) -> bytes: ...
    def watch(self, path: str, token: str) -> None: ...
    def fileno(self) -> int: ...
    def read_events(self, timeout: float = 0.0) -> list[Any]: ...
    def pending_events(self) -> list[Any]: ...


def _start_watch(xenstore: XenstoreReader | None, log: Any) -> XenstoreWatcher | None:
    """Watch memory/target when the client can, so a toolstack write wakes the loop at once."""
    needed = ("watch", "fileno", "read_events", "pending_events")
    if xenstore is None or not all(callable(getattr(xenstore, n, None)) for n in needed):
        return None
    watcher: XenstoreWatcher = xenstore  # type: ignore[assignment]
    try:
        watcher.watch(XS_TARGET, WATCH_TOKEN)
    except (OSError, GuestAgentError) as e:
        log.warning("xenstore_watch_failed", error=str(e), fallback="memory/target read per tick")
        return None
    return watcher


def _watch_fired(watcher: XenstoreWatcher, log: Any, pending_only: bool = False) -> bool:
    """True if a memory/target watch event is waiting (and drain them)."""
    try:
        events = watcher.pending_events() if pending_only else watcher.read_events(0.0)
    except (OSError, GuestAgentError) as e:
        log.warning("xenstore_watch_read_failed", error=str(e))
        return False
    return any(getattr(e, "token", None) == WATCH_TOKEN for e in events)


class BalloonController:
    """One balloon job's state: start (remember, learn the offset), tick, stop (reset).

    ``tick`` is everything that happens when the loop wakes: read a snapshot, ask the policy, hand
    the target to the actuator, record the decision. :func:`run_controller` drives it with
    ``poll``; the daemon can drive the same object from its own event loop.
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
        return float(getattr(self.config, "interval_s", 5.0))

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


def run_controller(
    hostfs: HostFS,
    xenstore: XenstoreReader | None,
    config: PolicyConfig,
    duration_s: float | None = None,
    max_ticks: int | None = None,
    reset_on_exit: bool = True,
    use_trigger: bool = True,
    install_signal_handlers: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """Run until a signal, ``duration_s`` or ``max_ticks``; returns an exit status.

    Raises :class:`~guestagent.balloon.actuator.BalloonUnavailable` before touching anything if
    there is no balloon driver.
    """
    log = get_logger("balloon")
    ctl = BalloonController(hostfs, xenstore, config, clock=clock)
    ctl.start()
    trigger = ctl.arm_trigger() if use_trigger else None

    stop: list[int] = []
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    old_handlers: dict[int, Any] = {}
    old_wakeup = -1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.append(signum)

    if install_signal_handlers:
        for sig in (signal.SIGTERM, signal.SIGINT):
            old_handlers[sig] = signal.signal(sig, on_signal)
        old_wakeup = signal.set_wakeup_fd(wake_w)

    poller = select.poll()
    poller.register(wake_r, select.POLLIN)
    if trigger is not None:
        poller.register(trigger.fileno(), select.POLLPRI)
    watcher = _start_watch(xenstore, log)
    if watcher is not None:
        poller.register(watcher.fileno(), select.POLLIN)

    interval = ctl.interval_s
    start = clock()
    next_tick = start
    status = 0
    end = start + duration_s if duration_s is not None else None
    log.info("balloon_controller_start", policy=ctl.config.name, interval_s=interval,
             psi_trigger=trigger.spec if trigger is not None else None,
             xenstore_watch=watcher is not None)
    try:
        while not stop:
            wake_at = next_tick if end is None else min(next_tick, end)
            # A watch event may already be queued by the client (read while it waited for a
            # reply): then do not sleep.
            toolstack = watcher is not None and _watch_fired(watcher, log, pending_only=True)
            timeout_ms = 0 if toolstack else max(0, int((wake_at - clock()) * 1000))
            fired = False
            for fd, event in poller.poll(timeout_ms):
                if fd == wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                elif trigger is not None and fd == trigger.fileno():
                    if event & (select.POLLERR | select.POLLNVAL | select.POLLHUP):
                        log.warning("psi_trigger_lost", fallback="interval timer only")
                        poller.unregister(fd)
                        trigger.close()
                        trigger = None
                    elif event & select.POLLPRI:
                        fired = True
                elif watcher is not None and fd == watcher.fileno():
                    if event & (select.POLLERR | select.POLLNVAL | select.POLLHUP):
                        log.warning("xenstore_watch_lost", fallback="memory/target read per tick")
                        poller.unregister(fd)
                        watcher = None
                    elif _watch_fired(watcher, log):
                        toolstack = True
            if stop:
                break
            now = clock()
            if end is not None and now >= end:
                break
            if not fired and not toolstack and now < next_tick:
                continue
            ctl.tick(psi_trigger_fired=fired)
            if ctl.errors >= MAX_CONSECUTIVE_ERRORS:
                status = 1
                break
            next_tick = now + interval
            if max_ticks is not None and ctl.ticks >= max_ticks:
                break
    finally:
        if install_signal_handlers:
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
        os.close(wake_r)
        os.close(wake_w)
        if trigger is not None:
            trigger.close()
        ctl.stop(reset=reset_on_exit)
        log.info("balloon_controller_stop", ticks=ctl.ticks,
                 signal=signal.Signals(stop[0]).name if stop else None)
    return status
