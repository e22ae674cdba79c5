"""The Dom0 job of the daemon (``guestagent run --role dom0``): keep every guest's device hints
true, from the xenstore watches and a periodic full pass (``[dom0] resync_seconds``).
``guestagent dom0 run`` is the daemon running this job alone.

Watches (through the daemon's shared xenstore connection): ``@introduceDomain``,
``@releaseDomain`` (full pass) and the PCI backend root (that domain only). Events are coalesced:
a burst of backend writes by libxl becomes one pass shortly after. The hints stay published when
the job stops: they describe the hardware and remain true until a device or domain changes, and
removing them would make every guest re-bind its devices across a restart of this agent.

Read -> decide -> apply: which pass a burst of events becomes is
:func:`guestagent.dom0.reconcile.plan_flush` (pure), which guests a full pass visits
:func:`~guestagent.dom0.reconcile.pass_targets`, and each guest's tree
:func:`~guestagent.dom0.reconcile.decide_domain`; the publisher reads and writes
(:mod:`guestagent.dom0.publisher`).

With ``[dom0] own_devices`` on (``auto`` or ``pin``), each full pass (start, resync, reload)
also pins the IRQs of the devices Dom0 drives itself onto the Dom0 vCPUs of their node, and
netback's and blkback's threads onto those of their guest's node
(:class:`~guestagent.dom0.owndevices_io.OwnDevicesRunner`, docs/IONUMA.md), and the stop undoes
them. Without Xen's domctls or with an unreadable journal that part stays off with one warning;
the hints go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from guestagent.config import Config
from guestagent.dom0.hints import on_remote_node
from guestagent.dom0.publisher import WATCHES, DomainResult, Publisher, domid_of_backend_path
from guestagent.dom0.reconcile import PassPlan, Pending, note_event, plan_flush
from guestagent.dom0.topology import HostTopology, read_host_topology
from guestagent.errors import GuestAgentError
from guestagent.log import get_logger
from guestagent.xen.sysctl import PciAddress

if TYPE_CHECKING:
    from guestagent.daemon.service import JobContext
    from guestagent.dom0.owndevices_io import OwnDevicesRunner

#: Events within this window are handled together.
COALESCE_SECONDS = 0.2


class Dom0Job:
    """Xen's sysctls and xenstore come from the daemon's one host handle (``ctx.host``,
    ``ctx.xenstore``); a test passes a fake :class:`~guestagent.host.Host`."""

    name = "dom0"

    def __init__(self) -> None:
        self._ctx: JobContext | None = None
        #: Closes the sysctl handle (its privcmd) at stop.
        self._handles: ExitStack | None = None
        self._publisher: Publisher | None = None
        self._pending = Pending()
        self._timers: list[Any] = []
        self._scheduled: Any = None
        self._last: list[DomainResult] = []
        self._own: OwnDevicesRunner | None = None
        self._log = get_logger("dom0")

    def start(self, ctx: JobContext) -> None:
        """Watch and publish; GuestAgentError (the daemon keeps the job off with the reason,
        ``dom0 run`` exits 1 with it) when xenstore or Xen's sysctls cannot be reached."""
        self._ctx = ctx
        client = ctx.xenstore.client()
        if client is None:
            raise GuestAgentError(f"no xenstore: {ctx.xenstore.unavailable}")
        handles = ExitStack()
        try:
            sysctl = handles.enter_context(ctx.host.sysctl())
        except (GuestAgentError, ImportError) as e:
            raise GuestAgentError(f"no sysctl: {e}") from None
        self._handles = handles

        def topology(extra: Sequence[PciAddress]) -> HostTopology:
            return read_host_topology(ctx.hostfs, sysctl, extra)

        self._publisher = Publisher(client, ctx.hostfs, topology)
        for path, _token in WATCHES:
            ctx.xenstore.watch(path, self._on_event)
        self._schedule_resync(ctx.config)
        self._own_devices(ctx.config)
        self._run("start", full=True)

    def _own_devices(self, config: Config) -> None:
        """Start, retune or stop (with its undo) the pass over Dom0's own devices, as
        ``[dom0] own_devices`` says now."""
        mode = str(config.get("dom0", "own_devices"))
        if mode == "off":
            self._own_undo()
            return
        if self._own is not None:
            self._own.mode = "pin" if mode == "pin" else "auto"
            return
        assert self._ctx is not None and self._handles is not None
        from guestagent.dom0.owndevices_io import OwnDevicesRunner, journal_in

        ctx = self._ctx
        try:
            journal = journal_in(ctx.hostfs, str(config.get("agent", "state_dir"))).load()
            sysctl, domctl = self._handles.enter_context(ctx.host.xen_controls())
        except (GuestAgentError, ImportError) as e:
            self._log.warning("dom0_own_devices_unavailable", error=str(e))
            return
        self._own = OwnDevicesRunner(ctx.hostfs, sysctl, domctl, journal,
                                     "pin" if mode == "pin" else "auto")

    def _own_pass(self, reason: str) -> None:
        if self._own is None:
            return
        try:
            outcome = self._own.run_pass()
        except (GuestAgentError, OSError) as e:
            self._log.warning("dom0_own_devices_failed", reason=reason, error=str(e))
            return
        failed = [f"{d.bdf}: {line}" for d in outcome.devices for line in d.failed]
        failed += [line for t in outcome.threads for line in t.failed]
        for line in failed:
            self._log.warning("dom0_own_device_failed", reason=reason, error=line)

    def _own_undo(self) -> None:
        if self._own is None:
            return
        try:
            self._own.undo()
        except (GuestAgentError, OSError) as e:
            self._log.error("dom0_own_devices_undo_failed", error=str(e))
        self._own = None

    def _schedule_resync(self, config: Config) -> None:
        assert self._ctx is not None
        for timer in self._timers:
            timer.cancel()
        every = float(config.get("dom0", "resync_seconds"))
        self._timers = [self._ctx.loop.call_every(every, self._resync)]

    def _on_event(self, path: str) -> None:
        self._pending = note_event(self._pending, domid_of_backend_path(path))
        if self._scheduled is None and self._ctx is not None:
            self._scheduled = self._ctx.loop.call_later(COALESCE_SECONDS, self._flush)

    def _flush(self) -> None:
        self._scheduled = None
        plan: PassPlan | None = plan_flush(self._pending)
        self._pending = Pending()
        if plan is not None:
            self._run("watch", full=plan.full, domids=plan.domids)

    def _resync(self) -> None:
        self._run("resync", full=True)

    def _run(self, reason: str, full: bool = False, domids: Sequence[int] = ()) -> None:
        publisher = self._publisher
        if publisher is None:
            return
        try:
            if full:
                self._last = publisher.publish_all()
            else:
                done = {r.domid: r for r in self._last}
                for domid in domids:
                    done[domid] = publisher.publish_domain(domid)
                self._last = [done[d] for d in sorted(done)]
        except (GuestAgentError, OSError) as e:
            self._log.warning("dom0_pass_failed", reason=reason, error=str(e))
        if full:
            self._own_pass(reason)

    def reload(self, config: Config) -> None:
        self._schedule_resync(config)
        self._own_devices(config)
        self._run("configuration reloaded", full=True)

    def republish(self, reason: str) -> None:
        self._run(reason, full=True)

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._timers = []
        self._publisher = None
        self._own_undo()
        if self._handles is not None:
            self._handles.close()
            self._handles = None

    def status(self) -> dict[str, Any]:
        own = self._own.status() if self._own is not None else {}
        return {
            **own,
            "guests": [
                {
                    "domid": r.domid,
                    "devices": len(r.hints),
                    "remote_devices": sum(on_remote_node(h) for h in r.hints),
                    "error": r.error,
                }
                for r in self._last
            ]
        }
