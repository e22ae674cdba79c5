"""The numa job of the daemon: sample every ``[numa] interval_seconds``, turn two samples into
the figures, publish them (xenstore ``data/guestagent/numa``, the status, hence the metrics).

Read (:func:`guestagent.numa.readers.read_sample`) -> decide
(:func:`guestagent.numa.figures.decide`, pure: the figures, the resets and the warning to
report, the tree to publish) -> apply (:meth:`NumaJob._apply_tick`: log, publish). Publishing
happens on the timer only, so at most once per interval: a republish
(resume, migration, xenstore reconnected) takes a new first sample and starts the interval
again (rates over a suspension or a migration mean nothing), and the next tick publishes. The
first publish (and the first after a republish or a failure) reads the tree back and makes it
whole (``sync_tree``); the others write only the keys whose value changed (``update_tree``):
the guest owns ``data/`` and nothing else writes this section.

``[numa] balancing = "auto"`` turns automatic NUMA balancing on at start (and at a reload that
asks for it) in a guest with more than one vnode, journalled (:mod:`guestagent.numa.balancing`);
stop (and a reload back to ``leave``) puts the previous value back. Leftovers of a predecessor
that was killed are undone first at start.
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from guestagent.config import Config
from guestagent.errors import GuestAgentError, InputError
from guestagent.log import get_logger
from guestagent.numa import balancing as balancing_mod
from guestagent.numa.config import INTERVAL
from guestagent.numa.figures import (
    BALANCING_SYSCTL,
    NumaState,
    TickPlan,
    balancing_to_write,
    decide,
    leaves_auto,
    warning_change,
)
from guestagent.numa.model import Figures, Sample
from guestagent.numa.readers import read_balancing, read_sample
from guestagent.schema import BASE, NUMA_SECTION, others

if TYPE_CHECKING:
    from guestagent.daemon.loop import Timer
    from guestagent.daemon.service import JobContext


def vnode_status(figures: Figures) -> dict[str, dict[str, float]]:
    """Per vnode, its known figures (for the status and the labelled metrics)."""
    out: dict[str, dict[str, float]] = {}
    for v in figures.vnodes:
        row: dict[str, Any] = {f"{k}_per_s": r for k, r in v.rates.items()}
        row.update(local_pct=v.local_pct, mem_used_kb=v.mem_used_kb,
                   mem_free_kb=v.mem_free_kb, cpu_busy_pct=v.cpu_busy_pct)
        out[str(v.node)] = {k: round(x, 2) for k, x in row.items() if x is not None}
    return out


class NumaJob:
    name = "numa"

    def __init__(self) -> None:
        self._ctx: JobContext | None = None
        self._timer: Timer | None = None
        self._journal: balancing_mod.NumaJournal | None = None
        self._mode = "leave"
        self._interval = float(INTERVAL.default)
        #: The last sample, the resets reported, the warning in force (the decide step's state).
        self._state = NumaState()
        self._figures: Figures | None = None
        self._problems: tuple[str, ...] = ()
        self._samples = 0
        self._publishes = 0
        self._published_at: float | None = None
        self._publish_error: str | None = None
        #: The tree last written whole or in part, successfully; None: the next publish reads
        #: the tree back (sync_tree): at start, after a republish and after a failure.
        self._published: dict[str, str] | None = None
        self._log = get_logger("numa")

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, ctx: JobContext) -> None:
        self._ctx = ctx
        state_dir = str(ctx.config.get("agent", "state_dir"))
        journal = balancing_mod.NumaJournal(ctx.hostfs, balancing_mod.journal_path(state_dir))
        self._journal = journal.load()
        if journal.changes or journal.problems:
            self._log.warning("numa_leftover_found", journal=journal.path,
                              entries=len(journal.changes), malformed=len(journal.problems),
                              action="undo before start")
            balancing_mod.undo_balancing(ctx.hostfs, journal)
        try:
            self._state = replace(self._state, previous=self._sample())
        except InputError as e:
            raise GuestAgentError(f"nothing to measure: {e}") from None
        self._configure(ctx.config)

    def _configure(self, config: Config) -> None:
        """Take ``[numa]``: apply or undo the balancing mode, (re)start the timer."""
        self._interval = float(config.get("numa", "interval_seconds"))
        mode = str(config.get("numa", "balancing"))
        if leaves_auto(self._mode, mode):
            self._undo()
        self._mode = mode
        self._apply_balancing()
        self._schedule()

    def _schedule(self) -> None:
        assert self._ctx is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._ctx.loop.call_every(self._interval, self._tick)

    def reload(self, config: Config) -> None:
        self._configure(config)

    def republish(self, reason: str) -> None:
        """A new first sample now and a full interval to the next publish (module docstring)."""
        previous: Sample | None = None
        try:
            previous = self._sample()
        except InputError as e:
            self._log.error("numa_sample_failed", error=str(e), reason=reason)
        self._state = replace(self._state, previous=previous)
        self._published = None
        self._schedule()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._undo()

    # --- balancing -------------------------------------------------------------------------------

    def _apply_balancing(self) -> None:
        """Decide on the sysctl as it is now (not as the last sample saw it: a reload or an
        undo may come up to an interval later), write if ``auto`` says so, warn if needed."""
        assert self._ctx is not None and self._journal is not None
        if self._state.previous is None:
            return
        sample = replace(self._state.previous, balancing=read_balancing(self._ctx.hostfs, []))
        value = balancing_to_write(self._mode, len(sample.nodes), sample.balancing)
        if value is not None and sample.balancing is not None:
            try:
                balancing_mod.turn_on(self._ctx.hostfs, self._journal, sample.balancing, value)
            except (GuestAgentError, OSError) as e:
                self._log.error("numa_balancing_write_failed", error=str(e),
                                path=BALANCING_SYSCTL, value=value)
            else:
                self._log.info("numa_balancing_on", previous=sample.balancing, value=value,
                               vnodes=len(sample.nodes), reason='[numa] balancing = "auto"')
                sample = replace(sample, balancing=value)
        self._state = replace(self._state, previous=sample)
        warn, warning = warning_change(sample, self._state.warning)
        self._state = replace(self._state, warning=warning)
        self._log_warning(sample, warn)

    def _undo(self) -> None:
        if self._ctx is None or self._journal is None or not self._journal.changes:
            return
        balancing_mod.undo_balancing(self._ctx.hostfs, self._journal)

    def _log_warning(self, sample: Sample, warning: str | None) -> None:
        """The one warning line when balancing goes off (or is absent) on a multi-vnode guest
        (``warning``: what :func:`~guestagent.numa.figures.warning_change` says to log)."""
        if warning is not None:
            self._log.warning("numa_balancing_off", vnodes=len(sample.nodes),
                              balancing=sample.balancing, message=warning)

    # --- sampling and publishing -----------------------------------------------------------------

    def _sample(self) -> Sample:
        assert self._ctx is not None
        sample = read_sample(self._ctx.hostfs, self._ctx.loop.now())
        self._samples += 1
        if sample.problems != self._problems:
            for line in sample.problems:
                self._log.warning("numa_input_problem", problem=line)
            self._problems = sample.problems
        return sample

    def _tick(self) -> None:
        try:
            sample = self._sample()
        except InputError as e:
            self._log.error("numa_sample_failed", error=str(e), reason="tick")
            return
        now = time.time()
        plan, self._state = decide(sample, self._state, self._interval, now)
        self._apply_tick(plan, sample, now)

    def _apply_tick(self, plan: TickPlan, sample: Sample, now: float) -> None:
        """Report what the plan says and publish its tree (the job's apply: only xenstore)."""
        self._figures = plan.figures
        for reset in plan.new_resets:
            self._log.info("numa_counter_reset", counter=reset,
                           action="that interval's rate skipped")
        self._log_warning(sample, plan.warn)
        if plan.tree is not None:
            self._publish(plan.tree, now)

    def _publish(self, tree: dict[str, str], now: float) -> None:
        assert self._ctx is not None
        client = self._ctx.xenstore.client()
        if client is None:
            return
        from guestagent.xen.xs_sync import sync_tree, update_tree

        last, self._published = self._published, None
        try:
            changes = None if last is None else update_tree(client, BASE, last, tree)
            if changes is None:
                sync_tree(client, BASE, tree, leave=others(NUMA_SECTION))
        except (GuestAgentError, OSError) as e:
            if str(e) != self._publish_error:
                self._log.error("publish_failed", error=str(e), section=NUMA_SECTION)
            self._publish_error = str(e)
            return
        self._published = tree
        self._publish_error = None
        self._publishes += 1
        self._published_at = now

    # --- status ----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        figures = self._figures
        sample = self._state.previous
        result: dict[str, Any] = {
            "interval_seconds": self._interval,
            "samples": self._samples,
            "publishes": self._publishes,
            "published_at": self._published_at,
            "publish_error": self._publish_error,
            "balancing_mode": self._mode,
            "balancing": None if sample is None else sample.balancing,
            "vnodes": None if sample is None else len(sample.nodes),
            "problems": len(self._problems),
        }
        if self._state.warning is not None:
            result["balancing_warning"] = self._state.warning
        if figures is not None:
            pressure = figures.pressure
            result.update(
                hint_faults_per_s=figures.balancing_rates.get("numa_hint_faults"),
                pages_migrated_per_s=figures.balancing_rates.get("numa_pages_migrated"),
                psi_some_avg10=None if pressure is None else pressure.some_avg10,
                psi_full_avg10=None if pressure is None else pressure.full_avg10,
                by_vnode=vnode_status(figures),
            )
        return result
