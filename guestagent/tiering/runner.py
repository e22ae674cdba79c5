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
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import time
from typing import Callable

from guestagent.errors import GuestAgentError
from guestagent.hostfs import HostFS
from guestagent.log import get_logger
from guestagent.tiering import readers
from guestagent.tiering.model import (
    Backend,
    Decision,
    Observation,
    Plan,
    PolicyState,
    TieringConfig,
)
from guestagent.tiering.policy import decide
from guestagent.units import PAGE_SIZE


class Runner:
    def __init__(
        self,
        hostfs: HostFS,
        backend: Backend,
        config: TieringConfig,
        clock: Callable[[], float] = time.monotonic,
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
        self._log = get_logger("tiering.run")

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
            now_moved = self.backend.stats().moved_by_source
            moved = {n: max(0, b - self._last_moved.get(n, 0)) for n, b in now_moved.items()}
            self._last_moved = dict(now_moved)
        return Observation(interval_s=interval, moved=moved, returned=returned)

    def tick(self) -> Decision | None:
        """One round; returns the decision, or None when inputs were unreadable (paused)."""
        try:
            snapshot = readers.read_snapshot(self.hostfs)
            observed = self._observe()
        except GuestAgentError as e:
            self._log.warning("tiering_inputs_unreadable", error=str(e), action="pause")
            self._apply(Plan())
            return None
        if snapshot.problems != self._problems:
            for line in snapshot.problems:
                self._log.warning("tiering_input_problem", problem=line)
            self._problems = snapshot.problems
        decision = decide(snapshot, self.config, self.state, observed)
        self.state = decision.state
        for line in decision.reasons:
            self._log.info("tiering_reason", reason=line)
        self._apply(decision.plan)
        return decision

    def _apply(self, plan: Plan) -> None:
        if not self.started:
            if not plan.moves:
                return  # nothing to do yet; start lazily so an idle guest creates nothing
            self.backend.start(plan)
            self.started = True
        else:
            self.backend.update(plan)
