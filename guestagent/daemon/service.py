"""``guestagent run``: the jobs on one event loop, under systemd.

Each job (topology, balloon, tiering, devices, dom0) is an object with ``start``/``stop``/
``reload``/``republish``/``status``; the daemon only wires descriptors and timers to them, turns
them on and off from the configuration, and undoes what they changed on the way out.
SIGHUP reloads the configuration (a bad one is refused and the running one kept); SIGTERM and
SIGINT stop every job, which puts back what it changed, and exit.

The long-running commands (``balloon run``, ``tiering run``, ``dom0 run``) are this daemon with
one job (:func:`guestagent.daemon.commands.run_one_job`): ``one_job`` makes a job that cannot start
an error (the command exits 1 with the reason) instead of a job left off, and a job that gives up
(``JobContext.end_job``) ends the command with exit status 1; ``stop_after`` (``--duration``) ends
the run with the same clean shutdown as SIGTERM. ``balloon record`` is this daemon with one
``observer`` job: it only reads, so it takes no lock and opens no socket, and runs beside the
unit's daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from guestagent import __version__
from guestagent.config import Config, ConfigError, state_dir_problem
from guestagent.daemon import systemd
from guestagent.daemon.loop import EventLoop, Timer
from guestagent.daemon.resume import ResumeState, detect_resume, sample_clocks
from guestagent.daemon.watchdog import watchdog_timeout
from guestagent.errors import GuestAgentError
from guestagent.host import Host
from guestagent.hostfs import HostFS
from guestagent.log import get_logger

#: How often the clocks are compared to notice a suspend/resume or a migration. A Xen resume or
#: migration is seen at once anyway: the guest kernel registers every xenstore watch again after
#: it, and xenstored fires a watch when it is registered, so the ``unique-domain-id`` watch fires.
#: The clocks alone catch what xenstore does not (no xenstore, an ACPI sleep of an HVM guest).
#: A multiple of the watchdog's feed period (90 s with the unit's WatchdogSec=3min, also of 30
#: and 60 s) and equal to the idle one (360 s, half of ``[agent] idle_watchdog_seconds``' 12
#: min), so the two share a wakeup (timers are coalesced).
RESUME_CHECK_SECONDS = 360.0
STATUS_SOCKET = "status.sock"


class Job(Protocol):
    name: str

    def start(self, ctx: JobContext) -> None: ...
    def stop(self) -> None: ...
    def reload(self, config: Config) -> None: ...
    def republish(self, reason: str) -> None: ...
    def status(self) -> dict[str, Any]: ...


#: Waits between attempts to reconnect to xenstore: doubling from the first, then the last again.
RECONNECT_FIRST_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 30.0
#: xenstore unreachable for this long: the daemon stops feeding systemd's watchdog, so systemd
#: kills and restarts it (within WatchdogSec= more; 3 min in the shipped units).
XENSTORE_GIVE_UP_SECONDS = 300.0


class XenstoreHub:
    """One xenstore connection shared by the jobs, its watch events dispatched by token.

    The jobs keep the client they got from :meth:`client` for their whole life. When the
    connection breaks (xenstored restarted or live-updated, the xenbus device broken after a
    resume, a frame that breaks the stream) the hub drops its descriptor from the loop, says so in
    :meth:`describe`, and reconnects with backoff over the same client object
    (:meth:`XenstoreClient.take_over`); then it registers every watch again and calls
    ``on_reconnect`` (the daemon republishes every job). While it is down, the jobs' requests fail
    with ConnectionError, as any xenstore error."""

    def __init__(
        self,
        loop: EventLoop,
        connect: Callable[[], Any],
        on_reconnect: Callable[[], None] | None = None,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._loop = loop
        self._connect = connect
        self._on_reconnect = on_reconnect
        self._on_lost = on_lost
        self._client: Any = None
        self._callbacks: dict[str, Callable[[str], None]] = {}
        self._watches: list[tuple[str, str]] = []
        self.unavailable: str | None = None
        #: Why the connection broke, while it is down.
        self.lost: str | None = None
        self._lost_at = 0.0
        self._lost_wall = 0.0
        self._retry: Any = None
        #: Failed attempts since the connection broke.
        self.attempts = 0
        #: Connections made again after one broke.
        self.reconnects = 0
        self._log = get_logger("xenstore")

    def client(self) -> Any:
        """The client, connected on first use; None (and ``unavailable`` says why) off Xen."""
        if self._client is None and self.unavailable is None:
            try:
                self._client = self._connect()
            except GuestAgentError as e:
                self.unavailable = str(e)
                self._log.warning("xenstore_unavailable", reason=self.unavailable)
                return None
            self._attach()
        return self._client

    def _attach(self) -> None:
        self._loop.add_reader(self._client.fileno(), self._on_readable)
        self._loop.add_after_dispatch(self.flush)

    def watch(self, path: str, callback: Callable[[str], None]) -> bool:
        client = self.client()
        if client is None:
            return False
        token = f"guestagent-{len(self._callbacks)}"
        if self.lost is None:
            client.watch(path, token)  # a refused watch raises and is not registered again
        self._callbacks[token] = callback
        self._watches.append((path, token))
        return True

    @property
    def connected(self) -> bool:
        return self._client is not None and self.lost is None

    def down_since(self) -> float | None:
        """Unix time the connection broke, while it is down; None while it is up."""
        return None if self.lost is None else self._lost_wall

    def lost_for(self) -> float:
        """Seconds the connection has been down (0 while it is up)."""
        return 0.0 if self.lost is None else self._loop.now() - self._lost_at

    def describe(self) -> str:
        """One line for the status: connected, why it is unavailable, or since when it is down."""
        if self.unavailable is not None:
            return self.unavailable
        if self.lost is not None:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._lost_wall))
            return (
                f"disconnected ({self.lost}); reconnecting since {since}, "
                f"attempt {self.attempts + 1}"
            )
        return "connected" if self._client is not None else "not connected"

    def _on_readable(self) -> None:
        try:
            events = self._client.read_events(0.0)
        except (OSError, GuestAgentError) as e:
            self._lose(str(e))
            return
        self._dispatch(events)

    def flush(self) -> None:
        """Events that arrived while a job was waiting for a reply (already read off the fd);
        and a connection a job's request found broken is dropped here."""
        if self._client is None or self.lost is not None:
            return
        broken = self._client.broken
        if broken is not None:
            self._lose(broken)
            return
        self._dispatch(self._client.pending_events())

    def _dispatch(self, events: Sequence[Any]) -> None:
        for event in events:
            callback = self._callbacks.get(event.token)
            if callback is None:
                continue
            try:
                callback(event.path)
            except Exception as e:  # one job's failure must not lose the other jobs' events
                self._log.error("watch_callback_failed", path=event.path, error=str(e),
                                kind=type(e).__name__)

    # --- losing and regaining the connection -----------------------------------------------------

    def _lose(self, reason: str) -> None:
        if self.lost is not None:
            return
        # Out of the poll set before the descriptor is closed (its number may be reused).
        self._loop.remove_reader(self._client.fileno())
        self._client.close()
        self.lost = reason
        self._lost_at = self._loop.now()
        self._lost_wall = time.time()
        self.attempts = 0
        self._log.error("xenstore_lost", reason=reason)
        self._schedule_retry()
        if self._on_lost is not None:
            self._on_lost()

    def _schedule_retry(self) -> None:
        delay = min(RECONNECT_FIRST_SECONDS * 2 ** min(self.attempts, 16), RECONNECT_MAX_SECONDS)
        self._retry = self._loop.call_later(delay, self._reconnect)

    def _reconnect(self) -> None:
        self._retry = None
        try:
            fresh = self._connect()
        except (GuestAgentError, OSError) as e:
            self._failed_attempt(str(e))
            return
        self._client.take_over(fresh)
        try:
            self._watch_again()
        except (GuestAgentError, OSError) as e:
            self._client.close()
            self._failed_attempt(f"registering the watches again: {e}")
            return
        down = self.lost_for()
        self.lost = None
        self.reconnects += 1
        self._attach()
        self._log.info("xenstore_reconnected", down_s=round(down, 1), attempts=self.attempts + 1,
                       watches=len(self._watches))
        if self._on_reconnect is not None:
            self._on_reconnect()

    def _watch_again(self) -> None:
        """Register every watch on the new connection. One that xenstored refuses now (an
        error reply: the connection is fine) is logged and left out; a broken connection
        raises."""
        from guestagent.xen.xenstore import XenstoreError

        for path, token in self._watches:
            try:
                self._client.watch(path, token)
            except XenstoreError as e:
                self._log.warning("xenstore_watch_refused", path=path, error=str(e))

    def _failed_attempt(self, error: str) -> None:
        self.attempts += 1
        self._log.warning("xenstore_reconnect_failed", attempt=self.attempts, error=error)
        self._schedule_retry()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._client is not None:
            if self.lost is None:
                self._loop.remove_reader(self._client.fileno())
            self._client.close()
            self._client = None


def _unmanaged_end(name: str, error: str | None) -> None:
    """``end_job`` of a context no daemon made (a test's): said, not acted on."""
    get_logger("daemon").warning("job_end_unhandled", job=name, error=error,
                                 note="no daemon runs this context")


@dataclass
class JobContext:
    """What a job is given at start: the loop, the host, the configuration, xenstore, the role."""

    loop: EventLoop
    hostfs: HostFS
    config: Config
    xenstore: XenstoreHub
    role: str
    #: ``end_job(name, error)``: the job is done (error None: its work is finished, as a
    #: recording's last snapshot) or gives up (error: why). The daemon stops it (its undo runs)
    #: from the loop, after the current callback; a one-job command then exits, 1 on an error.
    end_job: Callable[[str, str | None], None] = _unmanaged_end
    #: The host handle (hypercalls, sysctls, xenstore, backends); by default (None given) the
    #: real one over ``hostfs``, made in __post_init__. A test passes its own.
    host: Host = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.host is None:
            self.host = Host(self.hostfs)


def release_free_memory() -> bool:
    """Give the C heap's free pages back to the kernel (glibc's ``malloc_trim(0)`` through the C
    doorway, ``ga_release_free_memory``); True when some were.

    Start-up frees about 1 MiB of the heap in pieces (module sources read and unmarshalled,
    parsers, the first reads) that the idle daemon never reuses and glibc keeps: malloc gives
    back only the top of the heap by itself. Without the extension, or on another C library,
    nothing happens.
    """
    try:
        from guestagent.xen import _xenc
    except ImportError:
        return False
    release = getattr(_xenc.lib, "ga_release_free_memory", None)
    return bool(release()) if release is not None else False


@dataclass
class JobRecord:
    """A job the daemon made, whether it runs, and why not."""

    job: Job
    running: bool = False
    error: str | None = None


@dataclass
class Daemon:
    """The runtime: the event loop, the jobs, the xenstore hub, the status socket, sd_notify."""

    hostfs: HostFS
    config: Config
    load_config: Callable[[], Config]
    make_jobs: Callable[[Config, str], list[Job]]
    role: str
    loop: EventLoop = field(default_factory=EventLoop)
    xenstore_connect: Callable[[], Any] | None = None
    records: list[JobRecord] = field(default_factory=list)
    resumes: int = 0
    #: Seconds after start to shut down as SIGTERM would (``--duration``); None: until a signal.
    stop_after: float | None = None
    #: A job that cannot start is an error (raised from :meth:`start`), not a job left off: the
    #: one-job commands exit 1 with its reason.
    one_job: bool = False
    #: The command, as the state directory's lock names it to another one refused meanwhile.
    command: str = "run"
    #: Jobs that only read (``balloon record``): they change nothing, so there is nothing to undo
    #: and nothing to guard: no state directory lock, no status socket, no resume watch, no
    #: metrics; they run beside a daemon that holds those.
    observer: bool = False
    #: Why a job gave up (:meth:`end_job` with an error); a one-job command exits 1.
    failure: str | None = None
    #: The host handle the jobs get (``JobContext.host``); by default (None given) the real one
    #: over hostfs, made in __post_init__.
    host: Host = None  # type: ignore[assignment]
    #: Called once the jobs have started: gives start-up's freed heap back to the kernel.
    release_memory: Callable[[], object] = release_free_memory
    #: Makes the metrics HTTP server (``[metrics] enabled``) from the listen address, the text
    #: every GET gets and the loop; None: :class:`guestagent.daemon.metrics.MetricsServer`,
    #: imported then (a test passes one that refuses, as a bad port once did).
    metrics_server: Callable[[str, Callable[[], str], EventLoop], Any] | None = None

    def __post_init__(self) -> None:
        self._log = get_logger("daemon")
        if self.host is None:
            self.host = Host(self.hostfs)
        connect = self.xenstore_connect or self._default_connect
        self.hub = XenstoreHub(self.loop, connect, on_reconnect=self._xenstore_reconnected,
                               on_lost=self._arm_watchdog)
        self._starving = False
        #: The watchdog timeout asked of systemd (None: no watchdog, or not armed yet) and the
        #: timer that feeds it every half of that.
        self._watchdog_s: float | None = None
        self._watchdog_timer: Timer | None = None
        self._resume = ResumeState()
        self._status_sock: socket.socket | None = None
        #: Answers on the status socket, and the daemon's CPU time building them (thread time:
        #: every job's status, which may read the system): what asking the daemon costs it,
        #: apart from its jobs' own work (issue 18's tiering figures subtract it).
        self.status_answers = 0
        self.status_cpu_s = 0.0
        self._lock_fd: int | None = None
        self._metrics: Any = None

    def _default_connect(self) -> Any:
        return self.host.xenstore()

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.loop.add_signal_handler(signal.SIGTERM, lambda: self.shutdown("SIGTERM"))
        self.loop.add_signal_handler(signal.SIGINT, lambda: self.shutdown("SIGINT"))
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        if not self.observer:
            self._open_status_socket()
        ctx = self._context()
        for job in self.make_jobs(self.config, self.role):
            record = JobRecord(job)
            self.records.append(record)
            self._start_job(record, ctx)
        # Watch events read off the connection while the jobs started (each waited for replies:
        # the first firing of every watch among them) are already out of the descriptor, so poll
        # would not wake for them: deliver them now, not at the first timer (up to 6 min later).
        self.hub.flush()
        failed = [r for r in self.records if self.one_job and not r.running]
        if failed:
            raise GuestAgentError(failed[0].error or f"the {failed[0].job.name} job did not start")
        if not self.observer:
            self._watch_resume()
            self._start_metrics()
        if self.stop_after is not None:
            after = self.stop_after
            timer = self.loop.call_later(
                after, lambda: self.shutdown(f"--duration {after:g} s elapsed"))
            timer.slack = 0.0  # never early: a duration is a promise, not a period
        running = [r.job.name for r in self.records if r.running]
        if not self.observer:  # a recorder beside the unit's daemon is not the unit's main PID
            systemd.notify(f"READY=1\nSTATUS=jobs: {', '.join(running) or 'none'}")
            self._arm_watchdog()
        self._log.info("started", version=__version__, role=self.role, jobs=running)
        self.release_memory()

    def _watch_resume(self) -> None:
        """Notice a resume or migration: the ``unique-domain-id`` watch, and the clocks."""
        if self.hub.client() is not None:
            try:
                self.hub.watch("unique-domain-id", lambda path: self._check_resume(read_id=True))
            except (GuestAgentError, OSError) as e:  # refused (EACCES) or no answer: clocks only
                self._log.warning("resume_watch_off", error=str(e))
        self._resume = detect_resume(self._resume, sample_clocks(), self._unique_domain_id())[1]
        self.loop.call_every(RESUME_CHECK_SECONDS, lambda: self._check_resume(read_id=False))

    def _xenstore_reconnected(self) -> None:
        self._arm_watchdog()
        self._republish("xenstore reconnected")

    def _arm_watchdog(self) -> None:
        """Ask systemd for the watchdog timeout the running jobs call for (the unit's, or the
        longer idle one: :mod:`guestagent.daemon.watchdog`) and feed it every half of that. Run
        at start, after a reload or a job's end, and when xenstore is lost or back; a change is
        sent with a feed in one datagram (systemd counts the new timeout from that feed) and
        logged."""
        period = None if self.observer else systemd.watchdog_period()
        if period is None:
            return
        unit_s = 2 * period
        idle_s = float(self.config.get("agent", "idle_watchdog_seconds"))
        running = [r.job.name for r in self.records if r.running]
        timeout, why = watchdog_timeout(unit_s, idle_s, running, self.hub.lost is not None)
        if timeout == self._watchdog_s:
            return
        first = self._watchdog_s is None
        if self._watchdog_timer is not None:
            self._watchdog_timer.cancel()
        self._watchdog_s = timeout
        if first and timeout == unit_s:  # the unit's from the start: nothing to override
            self._watchdog_timer = self.loop.call_every(period, self._feed_watchdog, first=0)
        else:
            systemd.notify(f"WATCHDOG=1\nWATCHDOG_USEC={round(timeout * 1e6)}")
            self._watchdog_timer = self.loop.call_every(timeout / 2, self._feed_watchdog)
        self._log.info("watchdog", timeout_s=timeout, feed_every_s=timeout / 2,
                       unit_s=unit_s, reason=why)

    def _feed_watchdog(self) -> None:
        """Feed systemd's watchdog, unless xenstore has been unreachable for longer than
        XENSTORE_GIVE_UP_SECONDS: then systemd restarts the daemon."""
        down = self.hub.lost_for()
        if down > XENSTORE_GIVE_UP_SECONDS:
            if not self._starving:
                self._starving = True
                self._log.error("xenstore_given_up", down_s=round(down, 1),
                                limit_s=XENSTORE_GIVE_UP_SECONDS, reason=self.hub.lost,
                                action="watchdog no longer fed; systemd restarts the daemon")
                systemd.notify(f"STATUS=xenstore unreachable for {down:.0f} s: "
                               "waiting for the watchdog restart")
            return
        self._starving = False
        systemd.notify("WATCHDOG=1")

    def run(self) -> None:
        """Start and run until stopped. Start-up is inside the undo: whatever fails after a job
        changed something, the jobs started so far are stopped (and undo) and the status socket
        goes."""
        try:
            self.start()
            self.loop.run()
        finally:
            self.shutdown("loop ended")
            self.loop.close()

    def shutdown(self, why: str) -> None:
        """Stop every job, newest first; each undoes what it changed."""
        if not self.records and self._status_sock is None and self._lock_fd is None:
            return
        if not self.observer:
            systemd.notify("STOPPING=1")
        self._log.info("stopping", reason=why)
        for record in reversed(self.records):
            if record.running:
                self._stop_job(record)
        self.records.clear()
        self.hub.close()
        self._close_status_socket()
        if self._metrics is not None:
            self.loop.remove_reader(self._metrics.fileno())
            self._metrics.close()
            self._metrics = None
        self.loop.stop()

    def reload(self) -> None:
        """SIGHUP: load the configuration again; a bad one is refused and the old one kept.
        Whatever happens, READY=1 follows RELOADING=1 (systemd waits for it)."""
        systemd.notify("RELOADING=1")
        try:
            new = self.load_config()
        except ConfigError as e:
            for line in e.problems:
                self._log.error("config_refused", problem=line)
            systemd.notify("READY=1\nSTATUS=reload refused: configuration has errors")
            return
        except Exception as e:  # unreadable files, a bug: refused the same way, old one kept
            self._log.error("reload_failed", error=str(e), kind=type(e).__name__)
            systemd.notify(f"READY=1\nSTATUS=reload refused: {type(e).__name__}: {e}")
            return
        try:
            self._apply_config(new)
        finally:
            systemd.notify("READY=1")
        self._log.info("reloaded", files=new.files, jobs=[r.job.name for r in self.records])

    def _apply_config(self, new: Config) -> None:
        """Stop the jobs turned off, reload the running ones, start the ones turned on."""
        self.config = new
        wanted = {job.name: job for job in self.make_jobs(new, self.role)}
        ctx = self._context()
        for record in list(self.records):
            if record.job.name not in wanted:
                if record.running:
                    self._stop_job(record)
                self.records.remove(record)
            elif record.running:
                try:
                    record.job.reload(new)
                except GuestAgentError as e:
                    record.error = str(e)
                    self._log.error("job_reload_failed", job=record.job.name, error=str(e))
        present = {r.job.name for r in self.records}
        for name, job in wanted.items():
            if name not in present:
                record = JobRecord(job)
                self.records.append(record)
                self._start_job(record, ctx)
        self._arm_watchdog()

    # --- jobs ----------------------------------------------------------------------------------

    def _context(self) -> JobContext:
        return JobContext(self.loop, self.hostfs, self.config, self.hub, self.role, self.end_job,
                          self.host)

    def end_job(self, name: str, error: str | None) -> None:
        """A job is done or gives up (JobContext.end_job): stopped, with its undo, from the loop
        once the current callback has returned; the others go on. A one-job command stops."""
        self.loop.call_later(0.0, lambda: self._end_job(name, error))

    def _end_job(self, name: str, error: str | None) -> None:
        record = next((r for r in self.records if r.job.name == name and r.running), None)
        if record is None:
            return
        self._stop_job(record)
        self._arm_watchdog()
        record.error = error or "finished"
        if error is not None:
            self._log.error("job_gave_up", job=name, reason=error)
        else:
            self._log.info("job_finished", job=name)
        if self.one_job:
            if error is not None:
                self.failure = error
            self.shutdown(f"the {name} job {'gave up' if error else 'finished'}")

    def _start_job(self, record: JobRecord, ctx: JobContext) -> None:
        try:
            record.job.start(ctx)
        except GuestAgentError as e:
            # A job that cannot run here says why and stays off; the others go on.
            record.error = str(e)
            self._log.warning("job_off", job=record.job.name, reason=str(e))
            return
        except Exception as e:  # a bug in one job: undo what it did so far, keep the others
            record.error = f"{type(e).__name__}: {e}"
            self._log.error("job_start_failed", job=record.job.name, error=str(e),
                            kind=type(e).__name__)
            self._stop_job(record)
            return
        record.running = True
        self._log.info("job_started", job=record.job.name)

    def _stop_job(self, record: JobRecord) -> None:
        try:
            record.job.stop()
        except Exception as e:  # undo must reach every job even if one fails
            self._log.error("job_stop_failed", job=record.job.name, error=str(e))
        record.running = False

    # --- resume / migration ---------------------------------------------------------------------

    def _unique_domain_id(self) -> str | None:
        client = self.hub.client()
        if client is None:
            return None
        try:
            value: bytes = client.read("unique-domain-id")
        except (GuestAgentError, OSError):
            return None
        return value.decode("ascii", "replace")[:64]

    def _check_resume(self, read_id: bool) -> None:
        """Compare the clocks (and, when its watch fired, the domain id) with the last look.

        The periodic check does not read xenstore: every read is a round trip that wakes
        xenstored in Dom0 too, and a changed id fires the watch anyway."""
        domain_id = self._unique_domain_id() if read_id else None
        reason, self._resume = detect_resume(self._resume, sample_clocks(), domain_id)
        if reason is None:
            return
        self.resumes += 1
        self._log.info("resumed", reason=reason)
        self._republish(reason)

    def _republish(self, reason: str) -> None:
        for record in self.records:
            if not record.running:
                continue
            try:
                record.job.republish(reason)
            except Exception as e:  # every job gets its turn
                self._log.error("job_republish_failed", job=record.job.name, error=str(e),
                                kind=type(e).__name__)

    # --- metrics -------------------------------------------------------------------------------

    METRICS_TEXTFILE_SECONDS = 60.0

    def _start_metrics(self) -> None:
        textfile = str(self.config.get("metrics", "textfile"))
        if textfile:
            self.loop.call_every(self.METRICS_TEXTFILE_SECONDS, self._write_textfile, first=0)
        if self.config.get("metrics", "enabled"):
            from guestagent.daemon import metrics

            listen = str(self.config.get("metrics", "listen"))
            make_server = self.metrics_server or metrics.MetricsServer
            try:
                server = make_server(listen, lambda: metrics.render(self.status()), self.loop)
            except OSError as e:
                self._log.error("metrics_off", listen=listen, error=str(e))
                return
            self._metrics = server
            self.loop.add_reader(server.fileno(), server.on_readable)
            self._log.info("metrics_serving", listen=listen)

    def _write_textfile(self) -> None:
        from guestagent.daemon import metrics

        path = str(self.config.get("metrics", "textfile"))
        try:
            metrics.write_textfile(path, metrics.render(self.status()))
        except OSError as e:
            self._log.error("metrics_textfile_failed", path=path, error=str(e))

    # --- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        jobs: dict[str, Any] = {}
        for record in self.records:
            entry: dict[str, Any] = {"running": record.running}
            if record.error:
                entry["error"] = record.error
            if record.running:
                entry.update(record.job.status())
            jobs[record.job.name] = entry
        return {
            "version": __version__,
            "pid": os.getpid(),
            "role": self.role,
            "config_files": self.config.files,
            "xenstore": self.hub.describe(),
            "xenstore_connected": self.hub.connected,
            "xenstore_reconnects": self.hub.reconnects,
            "xenstore_down_since": self.hub.down_since(),
            "xenstore_attempt": 0 if self.hub.lost is None else self.hub.attempts + 1,
            "resumes": self.resumes,
            "loop_errors": self.loop.errors,
            # The watchdog timeout asked of systemd (seconds), None without a watchdog.
            "watchdog_timeout_s": self._watchdog_s,
            "jobs": jobs,
        }

    def _status_path(self) -> str:
        state_dir = self.hostfs.path(str(self.config.get("agent", "state_dir")))
        return os.path.join(str(state_dir), STATUS_SOCKET)

    def _open_status_socket(self) -> None:
        path = self._status_path()
        state_dir = os.path.dirname(path)
        # Never chmod a directory the agent did not create: a shared one is refused instead.
        why = state_dir_problem(state_dir)
        if why is not None:
            raise GuestAgentError(
                f"[agent] state_dir = {self.config.get('agent', 'state_dir')!r}: {why}"
            )
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self._lock_state_dir(state_dir)
        if os.path.exists(path) and stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError as e:  # e.g. a path longer than AF_UNIX's 108 bytes (a deep --root)
            sock.close()
            raise GuestAgentError(f"{path}: the status socket cannot be made: "
                                  f"{e.strerror or e}") from None
        finally:
            os.umask(old_umask)
        sock.listen(4)
        sock.setblocking(False)
        self._status_sock = sock
        self.loop.add_reader(sock.fileno(), self._serve_status)

    def _lock_state_dir(self, state_dir: str) -> None:
        """One daemon per state directory (:mod:`guestagent.statelock`), held for its life: a
        second one refuses before it touches the socket or anything the first changed."""
        from guestagent import statelock

        self._lock_fd = statelock.acquire(state_dir, self.command)

    def _serve_status(self) -> None:
        assert self._status_sock is not None
        try:
            conn, _ = self._status_sock.accept()
        except BlockingIOError:
            return
        with conn:
            conn.settimeout(1.0)
            cpu0 = time.thread_time()
            answer = self.status()
            this = time.thread_time() - cpu0
            self.status_answers += 1
            self.status_cpu_s += this
            # Counted with this answer: the CPU of every answer up to this one, and this one's.
            answer.update(status_answers=self.status_answers,
                          status_cpu_s=round(self.status_cpu_s, 6),
                          status_cpu_this_s=round(this, 6))
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(answer, sort_keys=True).encode() + b"\n")

    def _close_status_socket(self) -> None:
        if self._status_sock is not None:
            self.loop.remove_reader(self._status_sock.fileno())
            self._status_sock.close()
            self._status_sock = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._status_path())
        if self._lock_fd is not None:  # last: the socket is gone before another may start
            os.close(self._lock_fd)
            self._lock_fd = None


class DaemonNotRunning(GuestAgentError):
    """Nothing answers on the status socket: it is missing, or nobody listens on it (a daemon
    that was killed leaves it behind). ``guestagent status`` exits 3 (LSB: not running)."""


def read_status(state_dir: str, timeout: float = 5.0) -> dict[str, Any]:
    """What the running daemon says about itself (for ``guestagent status``). Raises
    :class:`DaemonNotRunning` when no daemon runs, GuestAgentError for any other failure."""
    path = os.path.join(state_dir, STATUS_SOCKET)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        chunks = []
        try:
            sock.connect(path)
            while data := sock.recv(65536):
                chunks.append(data)
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonNotRunning(
                f"no running guestagent daemon ({path} does not answer)"
            ) from None
        except PermissionError:
            raise GuestAgentError(
                f"{path}: permission denied (the status socket is root-only)"
            ) from None
        except TimeoutError:
            raise GuestAgentError(
                f"{path}: the daemon did not answer within {timeout:g} s (busy or hung?)"
            ) from None
        except OSError as e:
            raise GuestAgentError(f"{path}: {e.strerror or e}") from None
    try:
        result: dict[str, Any] = json.loads(b"".join(chunks))
    except ValueError:
        raise GuestAgentError(f"{path}: the daemon's answer is not JSON") from None
    return result
