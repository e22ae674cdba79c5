"""One event loop that waits on file descriptors: xenstore watches, PSI triggers, udev, signals,
timers. No busy polling: between events the process sleeps in poll(2).

Timers are coalesced: each may run early by its slack (a tenth of its interval, at most
:data:`MAX_SLACK` seconds), so whatever wakes the loop also runs every timer that is nearly due,
and periodic timers of commensurate intervals (the watchdog's, the resume check's, a refresh)
share one wakeup instead of each costing its own.

Built on ``select.poll`` because PSI trigger descriptors signal with POLLPRI only, which
``selectors`` cannot ask for. Signals arrive through ``signal.set_wakeup_fd`` and are dispatched
from the loop, never from a signal handler, so a job never runs re-entrantly.
"""

from __future__ import annotations

import heapq
import itertools
import math
import os
import select
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from guestagent.log import get_logger

Callback = Callable[[], None]

#: Longest time a timer may run before it is due, to share a wakeup with another one.
MAX_SLACK = 5.0
#: A timer's slack as a share of its interval (or delay): never enough to run it twice in a row.
SLACK_SHARE = 0.1


#: Rounds in a row a descriptor may report an error or hang-up (POLLERR, POLLHUP) before the
#: loop drops it: its owner had that many chances to read the failure and remove it. Without this
#: a descriptor whose peer is gone makes every poll(2) return at once, and the loop spins.
ERROR_ROUNDS_LIMIT = 32
_FAILED = select.POLLERR | select.POLLHUP | select.POLLNVAL


def slack_for(period: float) -> float:
    return min(MAX_SLACK, SLACK_SHARE * period)


@dataclass(order=True)
class Timer:
    """One timer of the event loop, ordered by when it is due."""

    when: float
    seq: int
    callback: Callback = field(compare=False)
    interval: float | None = field(default=None, compare=False)
    cancelled: bool = field(default=False, compare=False)
    #: How much earlier than ``when`` the timer may run (to share a wakeup).
    slack: float = field(default=0.0, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class EventLoop:
    """Readers on file descriptors, one-shot and periodic timers, signal handlers."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._poll = select.poll()
        self._readers: dict[int, Callback] = {}
        #: The owners' own handling of an error or hang-up, by descriptor (add_reader's on_error).
        self._on_error: dict[int, Callback] = {}
        #: Rounds in a row each descriptor reported an error or hang-up.
        self._error_rounds: dict[int, int] = {}
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._clock = clock
        self._signal_handlers: dict[int, Callback] = {}
        #: The handlers replaced by :meth:`add_signal_handler`, put back by :meth:`close`.
        self._previous_handlers: dict[int, Any] = {}
        self._signal_r, self._signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.add_reader(self._signal_r, self._drain_signals)
        self._stopping = False
        self._after_dispatch: list[Callback] = []
        self._log = get_logger("loop")
        self.errors = 0

    # --- file descriptors ------------------------------------------------------------------

    def add_reader(
        self,
        fd: Any,
        callback: Callback,
        priority: bool = False,
        on_error: Callback | None = None,
    ) -> None:
        """Call ``callback`` whenever ``fd`` is readable, or, with ``priority``, when it has
        priority data (POLLPRI: PSI triggers). Errors and hang-ups also call it, so the owner
        reads and sees the failure; or, given ``on_error``, the descriptor is removed at the first
        error or hang-up and ``on_error`` is called instead, once (a PSI trigger reports its end
        as POLLERR together with POLLPRI: that is no pressure, and nothing more to read)."""
        number = fd if isinstance(fd, int) else fd.fileno()
        mask = select.POLLPRI if priority else select.POLLIN
        self._poll.register(number, mask | select.POLLERR | select.POLLHUP)
        self._readers[number] = callback
        self._error_rounds.pop(number, None)
        if on_error is not None:
            self._on_error[number] = on_error

    def remove_reader(self, fd: Any) -> None:
        number = fd if isinstance(fd, int) else fd.fileno()
        self._error_rounds.pop(number, None)
        self._on_error.pop(number, None)
        if self._readers.pop(number, None) is not None:
            self._poll.unregister(number)

    @property
    def readers(self) -> list[int]:
        """The descriptors polled for reading (for tests and the status)."""
        return sorted(self._readers)

    def now(self) -> float:
        """The loop's clock (monotonic seconds; a fake one in tests)."""
        return self._clock()

    def _drop_failed(self, fd: int, events: int) -> bool:
        """Drop a descriptor that is closed (POLLNVAL) or kept failing (POLLERR, POLLHUP)
        for :data:`ERROR_ROUNDS_LIMIT` rounds; True when it was dropped."""
        if not events & _FAILED:
            self._error_rounds.pop(fd, None)
            return False
        rounds = self._error_rounds.get(fd, 0) + 1
        self._error_rounds[fd] = rounds
        if not events & select.POLLNVAL and rounds < ERROR_ROUNDS_LIMIT:
            return False
        self.errors += 1
        self._log.error("fd_dropped", fd=fd, rounds=rounds,
                        reason="not open" if events & select.POLLNVAL else "error or hang-up")
        self.remove_reader(fd)
        return True

    def add_after_dispatch(self, callback: Callback) -> None:
        """Run ``callback`` after every round of dispatching (e.g. to handle events a callback
        read off a descriptor while waiting for something else)."""
        if callback not in self._after_dispatch:
            self._after_dispatch.append(callback)

    # --- timers ----------------------------------------------------------------------------

    def call_later(self, delay: float, callback: Callback) -> Timer:
        if not math.isfinite(delay):
            raise ValueError(f"timer delay must be a finite number, got {delay}")
        delay = max(0.0, delay)
        timer = Timer(self._clock() + delay, next(self._seq), callback, slack=slack_for(delay))
        heapq.heappush(self._timers, timer)
        return timer

    def call_every(self, interval: float, callback: Callback, first: float | None = None) -> Timer:
        if not math.isfinite(interval) or interval <= 0:
            raise ValueError(f"timer interval must be a positive finite number, got {interval}")
        if first is not None and not math.isfinite(first):
            raise ValueError(f"timer delay must be a finite number, got {first}")
        delay = interval if first is None else first
        timer = Timer(
            self._clock() + delay, next(self._seq), callback, interval, slack=slack_for(interval)
        )
        heapq.heappush(self._timers, timer)
        return timer

    # --- signals ---------------------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callback) -> None:
        self._signal_handlers[signum] = callback
        previous = signal.signal(signum, lambda s, f: None)
        self._previous_handlers.setdefault(signum, previous)
        signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        signal.siginterrupt(signum, False)

    def _drain_signals(self) -> None:
        try:
            data = os.read(self._signal_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                self._run(handler, f"signal {signal.Signals(signum).name}")

    # --- running ---------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping = True

    def run(self) -> None:
        """Dispatch until :meth:`stop`; a callback's exception is logged and the loop goes on."""
        while not self._stopping:
            self.run_once()

    def run_once(self, max_wait: float | None = None) -> None:
        timeout = self._next_timeout()
        if max_wait is not None:
            timeout = max_wait if timeout is None else min(timeout, max_wait)
        wait_ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        for fd, events in self._poll.poll(wait_ms):
            on_error = self._on_error.get(fd)
            if on_error is not None and events & _FAILED:
                self.remove_reader(fd)
                self._run(on_error, f"fd {fd} failed")
                if self._stopping:
                    return
                continue
            callback = self._readers.get(fd)
            if callback is not None and not (events & select.POLLNVAL):
                self._run(callback, f"fd {fd}")
            if fd in self._readers:
                self._drop_failed(fd, events)
            if self._stopping:
                return
        self._run_due_timers()
        for callback in self._after_dispatch:
            self._run(callback, "after-dispatch")

    def _run_due_timers(self) -> None:
        """Every timer due now or within its slack, in due order, each at most once per round."""
        now = self._clock()
        due = sorted(t for t in self._timers if not t.cancelled and t.when - t.slack <= now)
        if not due:
            return
        fired = {id(t) for t in due}
        kept = []
        for timer in self._timers:
            if timer.cancelled:
                continue
            if id(timer) in fired:
                if timer.interval is None:
                    continue
                # Next run a whole interval after this one was due, never in a burst to catch up.
                timer.when = max(timer.when + timer.interval, now)
            kept.append(timer)
        heapq.heapify(kept)
        self._timers = kept
        for timer in due:
            if self._stopping:
                return
            if not timer.cancelled:  # an earlier callback of this round may have cancelled it
                self._run(timer.callback, "timer")

    def _next_timeout(self) -> float | None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0].when - self._clock())

    def _run(self, callback: Callback, what: str) -> None:
        try:
            callback()
        except Exception as e:  # a job's failure must not stop the other jobs
            self.errors += 1
            self._log.error("callback_failed", source=what, error=str(e), kind=type(e).__name__)

    def close(self) -> None:
        """Release the loop: the signal handlers it replaced are put back (a command run in a
        process that goes on, as in the tests, gets its SIGTERM and SIGINT back)."""
        for signum, previous in self._previous_handlers.items():
            # None: a handler not set from Python; the default is the closest there is.
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous_handlers.clear()
        signal.set_wakeup_fd(-1)
        os.close(self._signal_r)
        os.close(self._signal_w)
