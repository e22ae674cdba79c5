"""The hostnuma job of the Dom0 daemon (``[hostnuma] enabled``): sample every guest's vCPUs every
``[hostnuma] sample_seconds`` into a window of ``window_seconds`` and make the figures of the
window right after each sample; the status (hence the metrics) shows the last ones.

Read (:meth:`guestagent.hostnuma.collect.Monitor.tick`, the sample into the window, and
:meth:`~guestagent.hostnuma.collect.Monitor.read`, the rest: a ``HostModel``) -> decide
(:func:`guestagent.hostnuma.figures.decide`, pure) -> present
(:func:`guestagent.hostnuma.present.status`). The job changes nothing on the host: there is no
apply, nothing to journal or undo.
"""

from __future__ import annotations

from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from guestagent.config import Config
from guestagent.errors import GuestAgentError
from guestagent.hostnuma.config import BAD_LOCALITY_PCT
from guestagent.hostnuma.figures import decide
from guestagent.log import get_logger

if TYPE_CHECKING:
    from guestagent.daemon.loop import Timer
    from guestagent.daemon.service import JobContext
    from guestagent.hostnuma.collect import Monitor
    from guestagent.hostnuma.model import HostFigures


class HostNumaJob:
    """Xen's sysctls and domctls (one privcmd) come from the daemon's one host handle
    (``ctx.host.xen_controls()``); a test passes a fake :class:`~guestagent.host.Host`."""

    name = "hostnuma"

    def __init__(self) -> None:
        self._ctx: JobContext | None = None
        #: Closes the privcmd at stop.
        self._closer: ExitStack | None = None
        self._monitor: Monitor | None = None
        self._timer: Timer | None = None
        self._threshold = BAD_LOCALITY_PCT.default
        self._report: HostFigures | None = None
        self._error: str | None = None
        self._log = get_logger("hostnuma")

    def start(self, ctx: JobContext) -> None:
        from guestagent.hostnuma.collect import Collector, Monitor

        self._ctx = ctx
        client = ctx.xenstore.client()
        if client is None:
            raise GuestAgentError(f"no xenstore: {ctx.xenstore.unavailable}")
        closer = ExitStack()
        try:
            sysctl, domctl = closer.enter_context(ctx.host.xen_controls())
        except (GuestAgentError, ImportError) as e:
            raise GuestAgentError(f"no privcmd: {e}") from None
        self._closer = closer
        window = float(ctx.config.get("hostnuma", "window_seconds"))
        self._monitor = Monitor(Collector(client, ctx.hostfs, sysctl, domctl), window)
        self._configure(ctx.config)
        self._tick()

    def _configure(self, config: Config) -> None:
        assert self._ctx is not None and self._monitor is not None
        self._threshold = float(config.get("hostnuma", "bad_locality_pct"))
        self._monitor.window.seconds = float(config.get("hostnuma", "window_seconds"))
        if self._timer is not None:
            self._timer.cancel()
        every = float(config.get("hostnuma", "sample_seconds"))
        self._timer = self._ctx.loop.call_every(every, self._tick)

    def _tick(self) -> None:
        if self._monitor is None or self._ctx is None:
            return
        try:
            self._monitor.tick(self._ctx.loop.now())
            model = self._monitor.read()
            self._report = decide(model, self._threshold)
            self._error = None
        except (GuestAgentError, OSError) as e:
            if str(e) != self._error:
                self._log.warning("hostnuma_sample_failed", error=str(e))
            self._error = str(e)

    def reload(self, config: Config) -> None:
        self._configure(config)

    def republish(self, reason: str) -> None:
        """Xenstore came back (or Dom0 resumed): the counters before and after do not make one
        interval; start the window again."""
        if self._monitor is not None:
            self._monitor.window.restart()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._monitor = None
        if self._closer is not None:
            self._closer.close()
            self._closer = None

    def report(self) -> HostFigures | None:
        """The figures made at the last sample (None before the first one worked)."""
        return self._report

    def status(self) -> dict[str, Any]:
        from guestagent.hostnuma.present import status

        report = self.report()
        out: dict[str, Any] = {"samples": 0 if self._monitor is None else self._monitor.samples}
        if self._error is not None:
            out["sample_error"] = self._error
        if report is not None:
            out.update(status(report))
        return out
