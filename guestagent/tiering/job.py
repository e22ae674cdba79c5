"""The tiering job of the daemon: the serving backend driven by the policy on a timer; every
kdamond or pool it created is undone on stop.

The DAMON backend records its kdamonds in the undo journal (``tiering.json`` in ``[agent]
state_dir``, :mod:`guestagent.tiering.journal`) before it adds them. At start, entries left by a
predecessor that was killed (``kill -9``, OOM or watchdog kill) are undone first: its kdamonds are
removed, so they are not taken for another DAMON user's and the job serves again."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from guestagent.config import Config
from guestagent.errors import GuestAgentError
from guestagent.log import get_logger
from guestagent.tiering.commands import (
    backend_counters,
    plan_rows,
    probe_all,
    process_cpu_seconds,
    serving,
    why_not,
)
from guestagent.tiering.config import tiering_config
from guestagent.tiering.journal import TieringJournal, journal_path
from guestagent.tiering.model import TieringStats
from guestagent.tiering.policy import next_interval
from guestagent.tiering.runner import Runner

if TYPE_CHECKING:
    from guestagent.daemon.loop import Timer
    from guestagent.daemon.service import JobContext
    from guestagent.tiering.model import Backend


class TieringJob:
    """``runner``: what runs each round over the serving backend (:class:`Runner`; a test's
    subclass sees every round: the daemon makes the job with none)."""

    name = "tiering"

    def __init__(self, runner: type[Runner] = Runner) -> None:
        self._make_runner = runner
        self._ctx: JobContext | None = None
        self._runner: Runner | None = None
        self._backend_name = ""
        self._timer: Timer | None = None
        #: The backend that served, kept after stop for its counters (``tiering run``'s summary).
        self.backend: Backend | None = None
        #: Ticks run, and this process's CPU time (user + system since exec: interpreter start,
        #: imports, probe and the first tick's kdamonds) when the first one ended.
        self.ticks = 0
        self.cpu_at_first_tick_s: float | None = None
        #: CPU time (user + system) of the daemon's thread inside the ticks: the job's own cost in
        #: a daemon that runs other jobs beside it (``status``; issue 18).
        self.tick_cpu_s = 0.0
        self._log = get_logger("tiering")

    def start(self, ctx: JobContext) -> None:
        self._ctx = ctx
        section = ctx.config.section("tiering")
        state_dir = str(ctx.config.get("agent", "state_dir"))
        journal = TieringJournal(ctx.hostfs, journal_path(state_dir)).load()
        if journal.changes or journal.problems:
            self._log.warning("tiering_leftover_found", journal=journal.path,
                              entries=len(journal.changes), malformed=len(journal.problems),
                              action="undo before start")
        wanted = str(section["backend"])
        # With auto, the backends after the first that serves are not made nor probed (DAMON,
        # which undoes a killed predecessor's kdamonds, is first); a named one: all, as status.
        probed = probe_all(ctx.host, journal, first_serving=wanted == "auto")
        if wanted != "auto":
            probed = [p for p in probed if p[0] == wanted]
        backend = serving(probed)
        if backend is None:
            reasons = "; ".join(f"{name}: {why_not(b, a)}" for name, b, a in probed)
            raise GuestAgentError(f"no tiering backend can serve: {reasons}")
        self._backend_name = backend.name
        self.backend = backend
        # The loop's clock: the rate's ramp and room arithmetic use the time a tick's observation
        # covered, as the loop's timers measure it (a fake clock in tests).
        self._runner = self._make_runner(ctx.hostfs, backend, tiering_config(section),
                                         clock=ctx.loop.now)
        self._schedule()

    def _schedule(self, first: float = 0.0) -> None:
        assert self._ctx is not None and self._runner is not None
        if self._timer is not None:
            self._timer.cancel()
        every = self._pace(self._runner)
        self._timer = self._ctx.loop.call_every(every, self._tick, first=first)

    def _tick(self) -> None:
        runner = self._runner
        if runner is None:
            return
        cpu0 = time.thread_time()
        try:
            runner.tick()
        finally:
            self.tick_cpu_s += time.thread_time() - cpu0
            self.ticks += 1
            if self.cpu_at_first_tick_s is None:
                self.cpu_at_first_tick_s = process_cpu_seconds()
        # Spaced out while idle or the plan is kept, back to interval_s at the first short node or
        # change of plan (policy.next_interval).
        every = self._pace(runner)
        if self._timer is not None and self._timer.interval != every:
            self._schedule(first=every)

    @staticmethod
    def _pace(runner: Runner) -> float:
        return next_interval(runner.config, runner.idle_ticks, runner.steady_ticks,
                             runner.horizon_s)

    def reload(self, config: Config) -> None:
        assert self._runner is not None
        self._runner.config = tiering_config(config.section("tiering"))
        self._schedule()

    def republish(self, reason: str) -> None:
        """After a resume the node sizes may differ: plan again now."""
        self._tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._runner is not None:
            self._runner.backend.stop()
            self._runner = None

    def status(self) -> dict[str, Any]:
        """The backend, whether it has been started, its counters since (zeros before: an idle
        guest creates nothing), the job's ticks and their CPU time, and the last round's plan
        and reasons (``tiering status`` shows them while this daemon serves)."""
        runner = self._runner
        if runner is None:
            return {}
        stats = runner.backend.stats() if runner.started else TieringStats()
        return {
            "backend": self._backend_name,
            "active": runner.started,
            "pages_moved": stats.pages_moved_or_put,
            "pages_returned": stats.pages_returned,
            "failures": stats.failures,
            **backend_counters(stats),
            "ticks": self.ticks,
            "tick_cpu_s": round(self.tick_cpu_s, 3),
            "plan": plan_rows(runner.plan),
            "reasons": list(runner.reasons),
        }
