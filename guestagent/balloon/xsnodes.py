"""The toolstack's balloon nodes read once per change, not once per decision.

At a decision a second the balloon job read ``memory/target`` and ``memory/static-max`` on every
tick: two round trips to xenstored a second from every ballooning guest, for values a toolstack
changes a few times in a guest's life. :class:`WatchedNodes` keeps the value of each node the job
watches, read again after its watch fires (the daemon's hub registers the watch; xenstored fires
it once at registration, again at every write, and after a reconnection when the hub registers
it again) and at least every :data:`MAX_AGE_S` seconds (so a lost event costs at most that long).
A node that is not watched, and a read that failed or found no node, is read again at the next
decision, as before.
"""

from __future__ import annotations

from typing import Callable

from guestagent.balloon.signals import XenstoreReader

#: A watched value is read again after this long even without an event (s).
MAX_AGE_S = 60.0


class WatchedNodes:
    """A :class:`~guestagent.balloon.signals.XenstoreReader` that keeps watched nodes' values
    until :meth:`changed` (their watch fired) or :data:`MAX_AGE_S` seconds have passed."""

    def __init__(self, client: XenstoreReader, clock: Callable[[], float],
                 max_age_s: float = MAX_AGE_S) -> None:
        self._client = client
        self._clock = clock
        self._max_age_s = max_age_s
        self._watched: set[str] = set()
        self._values: dict[str, tuple[float, bytes]] = {}
        #: Reads that went to xenstore (for the job's status).
        self.reads = 0

    def watching(self, path: str) -> None:
        """``path``'s watch is registered: its value may be kept from now on."""
        self._watched.add(path)

    def changed(self) -> None:
        """A watch fired (or the guest resumed): read every kept value again."""
        self._values.clear()

    def read(self, path: str) -> bytes:
        if path not in self._watched:
            self.reads += 1
            return self._client.read(path)
        now = self._clock()
        kept = self._values.get(path)
        if kept is not None and 0.0 <= now - kept[0] < self._max_age_s:
            return kept[1]
        self.reads += 1
        data = self._client.read(path)  # an error or a missing node is not kept
        self._values[path] = (now, data)
        return data
