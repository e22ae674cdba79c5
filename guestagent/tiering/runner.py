"""One round of tiering: read, decide, apply. The daemon's tiering job (:mod:`.job`) runs it on
its event loop's timer, for ``guestagent run`` and ``guestagent tiering run`` alike; the backend's
``stop()`` undoes everything on the way out.

Each tick reads the node snapshot and the counters, turns the counter deltas into an
:class:`~guestagent.tiering.model.Observation`, asks the pure policy for a plan and applies it
(``start`` the first time, ``update`` after). Safety:

* a tick whose inputs cannot be read applies the empty plan (everything paused) instead of acting
  on stale numbers;
* the policy itself pauses a source whose target falls under its watermark, and caps every rate by
  the target's room per interval;
* the daemon stops the job on SIGTERM, SIGINT or ``--duration``, and the job stops the backend.

Cost per tick (issue 18; the breakdown is in ``benchmarks/README.md``): a tick reads each node's
``meminfo`` and ``numa_pages_migrated``'s line of ``/proc/vmstat``; the online nodes, the
distances and the MGLRU switch are taken over from the last snapshot that read them
(:data:`LAYOUT_MAX_AGE_S`, sooner when a read had a problem or a snapshot failed: a node gone
offline costs one paused tick, a node come online is seen within the minute); the backend reads
what moved
(:meth:`~guestagent.tiering.model.Backend.moved_by_source`: for DAMON, ``sz_applied`` of the
kdamonds it runs, nothing of those it turned off). While ticks find nothing to do
(:attr:`Runner.idle_ticks`), or keep a move's plan as it was (:attr:`Runner.steady_ticks`: no
write but the counters' refresh), the job spaces them out
(:func:`~guestagent.tiering.policy.next_interval`; a steady plan never past
:attr:`Runner.horizon_s`).
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import math
import re
import time
from typing import Callable

from guestagent.errors import GuestAgentError
from guestagent.hostfs import HostFS
from guestagent.log import get_logger
from guestagent.tiering import readers
from guestagent.tiering.model import (
    Backend,
    Decision,
    MemorySnapshot,
    Observation,
    Plan,
    PolicyState,
    TieringConfig,
)
from guestagent.tiering.policy import decide, is_idle, plan_horizon_s
from guestagent.units import PAGE_SIZE

#: A snapshot's distances and MGLRU switch serve the snapshots of the next this many seconds.
LAYOUT_MAX_AGE_S = 60.0

_FIGURES = re.compile(r"\d+(?:\.\d+)?")


def reason_shape(line: str) -> str:
    """A reason with its figures taken out: what it says, not how much."""
    return _FIGURES.sub("#", line)


class Runner:
    def __init__(
        self,
        hostfs: HostFS,
        backend: Backend,
        config: TieringConfig,
        clock: Callable[[], float] = time.monotonic,
        layout_max_age_s: float = LAYOUT_MAX_AGE_S,
    ) -> None:
        self.hostfs = hostfs
        self.backend = backend
        self.config = config
        self.clock = clock
        self.state = PolicyState()
        self.started = False
        self._last_time: float | None = None
        self._last_returned: int | None = None
        self._last_moved: dict[int, int] = {}
        self._problems: list[str] = []
        #: The last decision's reasons (a line is logged when it was not among them).
        self._reasons: tuple[str, ...] = ()
        #: The last snapshot that read the distances and the MGLRU switch, and when (monotonic).
        self._layout: MemorySnapshot | None = None
        self.layout_max_age_s = layout_max_age_s
        self._layout_at = 0.0
        #: Ticks in a row that found nothing to move (no node short, or every short one paused
        #: for want of a target's room; 0 after any other).
        self.idle_ticks = 0
        #: Moving ticks in a row that kept the previous tick's plan (0 after any other).
        self.steady_ticks = 0
        #: Seconds the last plan can run unchanged (:func:`~.policy.plan_horizon_s`).
        self.horizon_s = math.inf
        self._plan = Plan()
        self._log = get_logger("tiering.run")

    def _snapshot(self) -> MemorySnapshot:
        now = time.monotonic()
        fresh = self._layout is not None and now - self._layout_at < self.layout_max_age_s
        known = self._layout if fresh else None
        try:
            snapshot = readers.read_snapshot(self.hostfs, known)
        except GuestAgentError:
            self._layout = None  # the next snapshot reads everything (a node may have gone)
            raise
        if known is None or snapshot.distances is not known.distances:  # read them this time
            self._layout, self._layout_at = snapshot, now
        return snapshot

    def _observe(self) -> Observation:
        now = self.clock()
        interval = 0.0 if self._last_time is None else max(0.0, now - self._last_time)
        self._last_time = now
        returned = 0
        try:
            pages = readers.returned_pages(self.hostfs)
        except GuestAgentError as e:
            self._log.warning("tiering_vmstat_unreadable", error=str(e))
            pages = None
        if pages is not None:
            if self._last_returned is not None:
                returned = max(0, pages - self._last_returned) * PAGE_SIZE
            self._last_returned = pages
        moved: dict[int, int] = {}
        if self.started:
            now_moved = self.backend.moved_by_source()
            moved = {n: max(0, b - self._last_moved.get(n, 0)) for n, b in now_moved.items()}
            self._last_moved = dict(now_moved)
        return Observation(interval_s=interval, moved=moved, returned=returned)

    @property
    def plan(self) -> Plan:
        """The plan of the last round (empty before the first, or while inputs are unreadable)."""
        return self._plan

    @property
    def reasons(self) -> tuple[str, ...]:
        """The last round's reasons, one line each."""
        return self._reasons

    def tick(self) -> Decision | None:
        """One round; returns the decision, or None when inputs were unreadable (paused)."""
        try:
            snapshot = self._snapshot()
            observed = self._observe()
        except GuestAgentError as e:
            self._log.warning("tiering_inputs_unreadable", error=str(e), action="pause")
            self.idle_ticks = self.steady_ticks = 0
            self._plan = Plan()
            self._apply(self._plan)
            return None
        decision = decide(snapshot, self.config, self.state, observed)
        self.state = decision.state
        self.horizon_s = plan_horizon_s(snapshot, self.config, decision.plan, observed)
        self._log_changes(snapshot, decision, plan_changed=decision.plan != self._plan)
        self._apply(decision.plan)
        self.idle_ticks = self.idle_ticks + 1 if is_idle(decision) else 0
        kept = bool(decision.plan.moves) and decision.plan == self._plan
        self.steady_ticks = self.steady_ticks + 1 if kept else 0
        self._plan = decision.plan
        return decision

    def _log_changes(self, snapshot: MemorySnapshot, decision: Decision,
                     plan_changed: bool) -> None:
        """A line for each new input problem and each new reason (each once until it changes:
        a steady state repeats them). While the plan stays as it was, a reason whose figures
        alone moved (a paused source's free memory, a target's room) is a debug line: a source
        paused for want of room would otherwise log a line every tick for as long as it waits.
        Every change of plan (what the backend is told) logs its reasons."""
        if snapshot.problems != self._problems:
            for line in snapshot.problems:
                self._log.warning("tiering_input_problem", problem=line)
            self._problems = snapshot.problems
        shapes = set() if plan_changed else {reason_shape(line) for line in self._reasons}
        for line in decision.reasons:
            if line in self._reasons:
                continue
            if plan_changed or reason_shape(line) not in shapes:
                self._log.info("tiering_reason", reason=line)
            else:
                self._log.debug("tiering_reason", reason=line)
        self._reasons = decision.reasons

    def _apply(self, plan: Plan) -> None:
        if not self.started:
            if not plan.moves:
                return  # nothing to do yet; start lazily so an idle guest creates nothing
            self.backend.start(plan)
            self.started = True
        else:
            self.backend.update(plan)
