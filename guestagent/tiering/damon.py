"""Backend ``damon``: DAMOS ``migrate_cold`` with ``target_nid`` through DAMON sysfs.

Layout used (``/sys/kernel/mm/damon/admin``, Linux ``Documentation/admin-guide/mm/damon/usage.rst``
and ``mm/damon/sysfs.c`` / ``sysfs-schemes.c``)::

    kdamonds/nr_kdamonds
    kdamonds/<K>/state                      on | off | commit | update_schemes_stats | ...
    kdamonds/<K>/contexts/nr_contexts       0 or 1
    kdamonds/<K>/contexts/0/avail_operations, operations (vaddr | fvaddr | paddr)
    .../0/monitoring_attrs/intervals/{sample_us,aggr_us,update_us}
    .../0/monitoring_attrs/nr_regions/{min,max}
    .../0/targets/nr_targets, targets/0/regions/nr_regions, regions/<R>/{start,end}
    .../0/schemes/nr_schemes, schemes/0/{action,target_nid}
    .../schemes/0/access_pattern/{sz,nr_accesses,age}/{min,max}   (age in aggregation intervals)
    .../schemes/0/quotas/{ms,bytes,reset_interval_ms}, quotas/weights/{sz,nr_accesses,age}_permil
    .../schemes/0/watermarks/{metric,interval_us,high,mid,low}
    .../schemes/0/stats/{nr_tried,sz_tried,nr_applied,sz_applied,qt_exceeds}

``sz_applied`` can exceed ``sz_tried``: ``paddr`` counts whole folios, and a large folio whose
head lies in a region counts in full even where it runs past the region's end (``mm/damon/paddr.c``,
``damon_pa_migrate``; seen on the testbed's 6.12: 234 MiB moved of 225 MiB tried). So failures
(tried minus moved) are never below 0, and moved is never checked against tried.

One kdamond per node with memory, all added at once (``nr_kdamonds`` cannot grow while one of
them runs), each configured when its node is first a source: a ``paddr`` context whose single
target's regions are the node's physical ranges (its memory blocks), and one scheme: regions with
no access (``nr_accesses`` 0..0) for at least ``min_age_s`` go to ``target_nid``, at most ``rate``
bytes per second (size quota ``bytes`` per ``reset_interval_ms`` = 1000) and at most ``quota_ms``
of kernel time per second. A source without a move in the plan is paused by turning its kdamond
``off`` (never by a zero size quota: both quotas at zero means *unlimited*). A kernel-side
backstop independent of the agent: the watermarks (metric ``free_mem_rate``, guest-wide free
memory per thousand) deactivate the scheme when the whole guest falls under
``wmark_low_permil``. What a fresh context or scheme already holds (:data:`FRESH_MONITORING_ATTRS`,
the zeros of a scheme) is not written.

Other DAMON users: writing ``nr_kdamonds`` makes the kernel remove **every** kdamond directory and
create N fresh ones, and it refuses (-EBUSY) while any kdamond runs. So the agent adds its kdamonds
only when every existing one is off and has no context (nothing of anybody else's to lose); a
running or configured kdamond makes the backend unavailable instead of clobbering it. On stop the
agent turns its kdamonds off and empties them (``nr_contexts`` 0); it shrinks ``nr_kdamonds`` back
only when its kdamonds are the last ones and every other one is still off and empty, else it leaves
its own off and emptied.

Crash undo: with a journal (:mod:`guestagent.tiering.journal`, given by the daemon's tiering job
through :meth:`DamonBackend.take_journal`), the kdamonds the backend adds and ``nr_kdamonds``
before are recorded before the ``nr_kdamonds`` write, and removed from the journal after a clean
stop. After a ``kill -9`` the next start (or ``guestagent tiering --reset``) removes exactly those
kdamonds, never another DAMON user's.

Statistics: the kernel rebuilds its context (and zeroes the scheme counters) on every ``on``; the
backend reads the counters (``update_schemes_stats``) before each ``off`` and ``commit``, folds them
into a running total at each ``on``, and also treats any counter that goes down as a restart.
A tick of the runner (:meth:`DamonBackend.moved_by_source`) asks for fresh statistics of the
kdamonds it turned on and reads ``sz_applied`` alone (a kdamond's ``state`` only when the kernel
refused the request: it refuses it from a kdamond not running); :meth:`DamonBackend.stats`
(``tiering status``, the daemon's status, ``tiering run``'s summary) reads all five. A kdamond
the backend turned off (or never turned on) is not read at all until it turns it on again: its
counters were read just before the ``off``. The :meth:`DamonBackend.update` right after a tick's
``moved_by_source`` takes the states it read, and commits without reading the counters again (a
``commit`` keeps them since Linux 6.11, ``damon_commit_ctx``; any that went down would still
count as a restart).
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from guestagent.errors import GuestAgentError, InputError, MissingInputError
from guestagent.hostfs import HostFS, parse_int
from guestagent.log import get_logger
from guestagent.tiering import readers
from guestagent.tiering.journal import (
    ADMIN,
    KDAMONDS,
    NR_KDAMONDS,
    added_entries,
    undo_kdamonds,
)
from guestagent.tiering.model import (
    Availability,
    BackendUnavailable,
    Move,
    Plan,
    TieringStats,
)
from guestagent.tiering.sysfs import (
    Reader,
    SysfsWriteError,
    Writer,
    sysfs_reader,
    sysfs_writer,
)
from guestagent.units import PAGE_SIZE

if TYPE_CHECKING:
    from guestagent.undo import Change, Journal, UndoReport

__all__ = ["ADMIN", "KDAMONDS", "NR_KDAMONDS", "DamonBackend", "DamonConfig", "SysfsWriteError"]

ULONG_MAX = (1 << 64) - 1
UINT_MAX = (1 << 32) - 1
#: What a context the kernel just made has in ``monitoring_attrs`` (``mm/damon/sysfs.c``:
#: ``damon_sysfs_intervals_alloc(5000, 100000, 60000000)``, ``nr_regions`` 10..1000, unchanged
#: since DAMON sysfs came in 5.18): a value equal to it is not written (issue 18).
FRESH_MONITORING_ATTRS = {
    "intervals/sample_us": 5000,
    "intervals/aggr_us": 100_000,
    "intervals/update_us": 60_000_000,
    "nr_regions/min": 10,
    "nr_regions/max": 1000,
}
MIGRATE_COLD_SINCE = (6, 11)
STAT_FILES = ("nr_tried", "sz_tried", "nr_applied", "sz_applied", "qt_exceeds")

LIMITS = (
    "needs Linux 6.11+ with CONFIG_DAMON_SYSFS and CONFIG_DAMON_PADDR",
    "migration may fall back to another node when the target is full (no __GFP_THISNODE before "
    "the 2026 fix); check per-node meminfo",
    "the kernel watermark is guest-wide (free_mem_rate); per-node safety is the agent's policy",
)


@dataclass(frozen=True)
class DamonConfig:
    """Monitoring and scheme parameters (DAMON's own defaults for the intervals)."""

    sample_us: int = 5000
    aggr_us: int = 100_000
    #: What a fresh context has; ``paddr`` has no update operation, so it changes nothing.
    update_us: int = 60_000_000
    min_nr_regions: int = 10
    max_nr_regions: int = 1000
    #: A region counts as cold after this long without any access.
    min_age_s: float = 5.0
    quota_reset_ms: int = 1000
    #: Kernel time the scheme may spend per reset interval (bounds the migration CPU cost).
    quota_ms: int = 100
    wmark_interval_us: int = 1_000_000
    #: The kernel stops the scheme by itself when guest-wide free memory is below this (per mille).
    wmark_low_permil: int = 50

    def __post_init__(self) -> None:
        if not 0 < self.sample_us <= self.aggr_us:
            raise InputError(
                "damon config sample_us/aggr_us",
                "need 0 < sample <= aggr",
                (self.sample_us, self.aggr_us),
            )
        if not 0 < self.min_nr_regions <= self.max_nr_regions:
            raise InputError(
                "damon config nr_regions",
                "need 0 < min <= max",
                (self.min_nr_regions, self.max_nr_regions),
            )
        if self.min_age_s <= 0 or self.quota_reset_ms <= 0 or self.quota_ms <= 0:
            raise InputError(
                "damon config",
                "min_age_s, quota_reset_ms and quota_ms must be > 0",
                (self.min_age_s, self.quota_reset_ms, self.quota_ms),
            )
        if not 0 <= self.wmark_low_permil < 1000:
            raise InputError(
                "damon config wmark_low_permil", "must be in 0..999", self.wmark_low_permil
            )

    @property
    def min_age_aggregations(self) -> int:
        return max(1, math.ceil(self.min_age_s * 1_000_000 / self.aggr_us))

    def quota_bytes(self, rate: int) -> int:
        """The size quota for ``rate`` bytes/s; never 0 (0 would mean unlimited)."""
        return max(PAGE_SIZE, rate * self.quota_reset_ms // 1000)


@dataclass
class _Counters:
    """One kdamond's scheme counters: those of its earlier contexts (``base``) and the
    current one's as last read (``last``)."""

    base: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAT_FILES, 0))
    last: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAT_FILES, 0))

    def observe(self, now: dict[str, int]) -> None:
        """Fresh counters: all of :data:`STAT_FILES`, or some (a tick reads ``sz_applied``
        alone); any one that went down means the kernel started a new context."""
        if any(v < self.last[k] for k, v in now.items()):
            for k in STAT_FILES:
                self.base[k] += self.last[k]
            self.last = dict.fromkeys(STAT_FILES, 0)
        self.last.update(now)

    def restart(self) -> None:
        """The kernel is building a new context (``on``): its counters start again at 0."""
        for k in STAT_FILES:
            self.base[k] += self.last[k]
        self.last = dict.fromkeys(STAT_FILES, 0)

    def total(self, key: str) -> int:
        return self.base[key] + self.last[key]


class DamonBackend:
    """The :class:`~guestagent.tiering.model.Backend` over DAMON sysfs (module docstring)."""

    name = "damon"
    targets_node = True

    def __init__(
        self,
        hostfs: HostFS,
        config: DamonConfig | None = None,
        writer: Writer | None = None,
        journal: Journal | None = None,
        reader: Reader | None = None,
    ) -> None:
        self.hostfs = hostfs
        self.config = config or DamonConfig()
        self.write = writer or sysfs_writer(hostfs)
        self.read = reader or sysfs_reader(hostfs)
        #: Where the kdamonds it adds are recorded before it adds them (None: memory only).
        self.journal = journal
        #: node -> kdamond index, for the kdamonds this backend created.
        self.kdamonds: dict[int, int] = {}
        self.base = 0
        self._counters: dict[int, _Counters] = {}
        #: node -> (target node, quota bytes) the running kdamond was last given.
        self._running: dict[int, tuple[int, int]] = {}
        #: node -> state, as :meth:`moved_by_source` just read it (for the next :meth:`update`).
        self._seen: dict[int, str] = {}
        #: node -> its physical ranges, for the kdamonds added but not configured yet.
        self._unconfigured: dict[int, list[tuple[int, int]]] = {}
        self._log = get_logger("tiering.damon")

    # ---- reading ----
    def _kd(self, index: int) -> str:
        return f"{KDAMONDS}/{index}"

    def _ctx(self, node: int) -> str:
        return f"{self._kd(self.kdamonds[node])}/contexts/0"

    def _scheme(self, node: int) -> str:
        return f"{self._ctx(node)}/schemes/0"

    def _read_word(self, path: str) -> str:
        return self.read(path).strip()

    def _read_count(self) -> int:
        return parse_int(self.read(NR_KDAMONDS), NR_KDAMONDS, 0, 4096)

    def _busy_reason(self, nr: int) -> str | None:
        """Why adding kdamonds would harm another DAMON user, or None."""
        for i in range(nr):
            state = self._read_word(f"{self._kd(i)}/state")
            if state != "off":
                return (
                    f"kdamond {i} is {state} (another DAMON user): the kernel recreates every "
                    "kdamond on an nr_kdamonds write and refuses it while one runs"
                )
            contexts = parse_int(
                self.read(f"{self._kd(i)}/contexts/nr_contexts"),
                f"{self._kd(i)}/contexts/nr_contexts",
                0,
            )
            if contexts:
                return (
                    f"kdamond {i} is off but configured (another DAMON user's setup): adding a "
                    "kdamond rewrites nr_kdamonds, which would wipe it"
                )
        return None

    def _memory_nodes(self) -> dict[int, list[tuple[int, int]]]:
        nodes = {}
        for n in readers.node_ids(self.hostfs):
            try:
                nodes[n] = readers.node_ranges(self.hostfs, n)
            except InputError as e:
                if "no online memory" in e.reason:
                    continue
                raise
        return nodes

    def probe(self) -> Availability:
        """Read-only: DAMON sysfs, kernel version hint, other DAMON users, nodes."""
        if not self.hostfs.exists(ADMIN):
            return Availability(
                False,
                f"{ADMIN} missing (CONFIG_DAMON_SYSFS=n, or no DAMON in this kernel)",
                LIMITS,
            )
        version = readers.kernel_version(self.hostfs)
        if version is not None and version < MIGRATE_COLD_SINCE:
            return Availability(
                False,
                f"kernel {version[0]}.{version[1]} lacks DAMOS migrate_cold (needs Linux 6.11)",
                LIMITS,
            )
        try:
            nr = self._read_count()
            busy = self._busy_reason(nr)
        except GuestAgentError as e:
            return Availability(False, str(e), LIMITS)
        if busy:
            return Availability(False, busy, LIMITS)
        if not os.access(self.hostfs.path(NR_KDAMONDS), os.W_OK):
            return Availability(False, f"{NR_KDAMONDS} is not writable (run as root)", LIMITS)
        try:
            nodes = self._memory_nodes()
        except GuestAgentError as e:
            return Availability(False, f"node memory ranges unreadable: {e}", LIMITS)
        if len(nodes) < 2:
            return Availability(
                False, f"needs two NUMA nodes with memory, this guest has {len(nodes)}", LIMITS
            )
        where = f"Linux {version[0]}.{version[1]}" if version else "kernel version unknown"
        return Availability(
            True,
            f"DAMON sysfs present, {where}, {len(nodes)} memory nodes (migrate_cold is confirmed "
            "when start writes the action)",
            LIMITS,
        )

    # ---- lifecycle ----
    def undo_journal(self, journal: Journal) -> UndoReport:
        """Remove the kdamonds ``journal`` says an agent added (``tiering --reset``)."""
        return undo_kdamonds(self.hostfs, self.write, journal, self.read)

    def take_journal(self, journal: Journal) -> UndoReport:
        """First undo what ``journal`` holds from a predecessor that was killed (its kdamonds
        still running would make :meth:`probe` call them another DAMON user's), then record
        this backend's own kdamonds there."""
        report = self.undo_journal(journal)
        self.journal = journal
        return report

    def start(self, plan: Plan) -> None:
        """Add one kdamond per memory node, configure it, apply the plan. Undoes itself on error."""
        if self.kdamonds:
            self.update(plan)
            return
        if not self.hostfs.exists(ADMIN):
            raise BackendUnavailable(self.name, f"{ADMIN} missing (CONFIG_DAMON_SYSFS=n)")
        nodes = self._memory_nodes()
        nr = self._read_count()
        busy = self._busy_reason(nr)
        if busy:
            raise BackendUnavailable(self.name, busy)
        entries = added_entries(nr, list(range(nr, nr + len(nodes))))
        if self.journal is not None:
            try:
                self.journal.record_all(entries)
            except OSError as e:
                for c in entries:
                    self.journal.changes.pop(c.path, None)
                raise BackendUnavailable(
                    self.name, f"cannot record the undo in {self.journal.path}: {e}"
                ) from None
        try:
            self.write(NR_KDAMONDS, str(nr + len(nodes)))
        except SysfsWriteError as e:
            self._forget(entries)
            raise BackendUnavailable(self.name, str(e)) from None
        self.base = nr
        self.kdamonds = {n: nr + i for i, n in enumerate(sorted(nodes))}
        self._unconfigured = dict(nodes)
        self._counters = {n: _Counters() for n in nodes}
        self._log.info("damon_kdamonds_added", first=nr, nodes=sorted(nodes))
        try:
            self.update(plan)  # configures the kdamonds of the plan's sources
        except BaseException:
            self.stop()
            raise

    def _configure(self, node: int) -> None:
        """Give ``node``'s kdamond (added, off, without a context) its context and scheme over
        the node's ranges read at start. Run again from the start (``nr_contexts`` makes a fresh
        context) after a failure: the node stays unconfigured until the last write."""
        ranges = self._unconfigured[node]
        c = self.config
        kd = self._kd(self.kdamonds[node])
        ctx = f"{kd}/contexts/0"
        self.write(f"{kd}/contexts/nr_contexts", "1")
        avail = self.read(f"{ctx}/avail_operations").split()
        if "paddr" not in avail:
            raise BackendUnavailable(
                self.name, f"{ctx}/avail_operations lacks paddr (CONFIG_DAMON_PADDR=n): {avail}"
            )
        self.write(f"{ctx}/operations", "paddr")
        wanted = {
            "intervals/sample_us": c.sample_us,
            "intervals/aggr_us": c.aggr_us,
            "intervals/update_us": c.update_us,
            "nr_regions/min": c.min_nr_regions,
            "nr_regions/max": c.max_nr_regions,
        }
        for name, value in wanted.items():
            if value != FRESH_MONITORING_ATTRS[name]:
                self.write(f"{ctx}/monitoring_attrs/{name}", str(value))
        self.write(f"{ctx}/targets/nr_targets", "1")
        regions = f"{ctx}/targets/0/regions"
        self.write(f"{regions}/nr_regions", str(len(ranges)))
        for i, (start, end) in enumerate(ranges):
            self.write(f"{regions}/{i}/start", str(start))
            self.write(f"{regions}/{i}/end", str(end))
        self.write(f"{ctx}/schemes/nr_schemes", "1")
        scheme = f"{ctx}/schemes/0"
        try:
            self.write(f"{scheme}/action", "migrate_cold")
        except SysfsWriteError as e:
            if e.err == errno.EINVAL:
                raise BackendUnavailable(
                    self.name, "the kernel rejects action migrate_cold (needs Linux 6.11)"
                ) from None
            raise
        if not self.hostfs.exists(f"{scheme}/target_nid"):
            raise BackendUnavailable(self.name, f"{scheme}/target_nid missing (needs Linux 6.11)")
        # A scheme the kernel just made has every range and weight at 0 (mm/damon/sysfs-schemes.c
        # allocates them so; tests/fixtures/damon-6.12/template): the zeros wanted are not
        # written again (issue 18), nor is sz/min, whose 0 admits what a page would (no region
        # is smaller than a page). nr_accesses 0..0, never accessed, is that fresh scheme's.
        pattern = f"{scheme}/access_pattern"
        self.write(f"{pattern}/sz/max", str(ULONG_MAX))
        self.write(f"{pattern}/age/min", str(c.min_age_aggregations))
        self.write(f"{pattern}/age/max", str(UINT_MAX))
        quotas = f"{scheme}/quotas"
        self.write(f"{quotas}/ms", str(c.quota_ms))
        self.write(f"{quotas}/reset_interval_ms", str(c.quota_reset_ms))
        self.write(f"{quotas}/weights/nr_accesses_permil", "1000")
        self.write(f"{quotas}/weights/age_permil", "1000")
        wm = f"{scheme}/watermarks"
        self.write(f"{wm}/metric", "free_mem_rate")
        self.write(f"{wm}/interval_us", str(c.wmark_interval_us))
        self.write(f"{wm}/high", "1000")
        self.write(f"{wm}/mid", "1000")
        self.write(f"{wm}/low", str(c.wmark_low_permil))
        del self._unconfigured[node]

    def update(self, plan: Plan) -> None:
        """Per node: pause (off) without a move; else set target and quota, then on or commit.
        A running kdamond that already has this target and quota is left alone: no writes, no
        commit (each commit makes the kernel rebuild the scheme's parameters, and a tick every
        few seconds would otherwise pay for it every time)."""
        if not self.kdamonds:
            raise BackendUnavailable(self.name, "not started")
        for m in plan.moves:
            if m.source not in self.kdamonds:
                raise InputError("tiering plan", f"node {m.source} has no memory kdamond", m)
        # States read (and running kdamonds' sz_applied refreshed) by this tick's
        # moved_by_source, just before: not read again.
        seen, self._seen = self._seen, {}
        for node in sorted(self.kdamonds):
            move = plan.for_source(node)
            if move is None and node not in self._running:
                continue  # off since this backend's own "off" (or never on): nothing to read
            kd_state = f"{self._kd(self.kdamonds[node])}/state"
            if node in self._unconfigured:  # a source for the first time (so, off)
                self._configure(node)
                state = "off"
            else:
                state = seen[node] if node in seen else self._read_word(kd_state)
            if move is None:
                if state == "on":
                    self._refresh(node)
                    self.write(kd_state, "off")
                    self._log.info("damon_paused", node=node)
                self._running.pop(node, None)
            else:
                self._move(node, move, state, refreshed=node in seen)

    def _move(self, node: int, move: Move, state: str, refreshed: bool) -> None:
        """Give ``node``'s kdamond (in ``state``) the move's target and quota, unless it runs
        with them already; ``refreshed``: its counters were just read (else read before a
        commit, which keeps them since Linux 6.11 anyway)."""
        kd_state = f"{self._kd(self.kdamonds[node])}/state"
        params = (move.target, self.config.quota_bytes(move.rate))
        if state == "on" and self._running.get(node) == params:
            return
        self.write(f"{self._scheme(node)}/target_nid", str(move.target))
        self.write(f"{self._scheme(node)}/quotas/bytes", str(params[1]))
        if state == "on":
            if not refreshed:
                self._refresh(node)
            self.write(kd_state, "commit")
        else:
            self.write(kd_state, "on")
            self._counters[node].restart()
        # A new rate alone is in the runner's tiering_reason line already: debug.
        quota_only = state == "on" and self._running.get(node, (None, 0))[0] == move.target
        self._running[node] = params
        log = self._log.debug if quota_only else self._log.info
        log("damon_move", node=node, target=move.target, rate=move.rate)

    def _refresh(self, node: int, files: tuple[str, ...] = STAT_FILES) -> None:
        """Ask the kernel for fresh scheme stats (running kdamonds only) and fold ``files`` of
        them in."""
        refused = self._ask_stats(node, files)
        if refused is not None:
            self._log.info("damon_stats_not_updated", node=node, error=str(refused))

    def _ask_stats(self, node: int, files: tuple[str, ...]) -> SysfsWriteError | None:
        """``update_schemes_stats``, then ``files`` of the fresh stats folded in; the kernel's
        refusal, if it refused (nothing folded then)."""
        try:
            self.write(f"{self._kd(self.kdamonds[node])}/state", "update_schemes_stats")
        except SysfsWriteError as e:
            return e
        self._counters[node].observe(self._read_stats(node, files))
        return None

    def _read_stats(self, node: int, files: tuple[str, ...] = STAT_FILES) -> dict[str, int]:
        base = f"{self._scheme(node)}/stats"
        return {
            k: parse_int(self.read(f"{base}/{k}"), f"{base}/{k}", 0, ULONG_MAX)
            for k in files
        }

    def _refresh_running(self, files: tuple[str, ...] = STAT_FILES) -> dict[int, str]:
        """Fresh counters of the kdamonds this backend turned on and still finds on; returns the
        state each was found in. One it turned off had its counters read just before the
        ``off`` (:meth:`update`), so it is not read."""
        return {
            node: self._refresh_if_on(node, files)
            for node in sorted(self._running)
            if node in self.kdamonds and node in self._counters
        }

    def _refresh_if_on(self, node: int, files: tuple[str, ...]) -> str:
        """Ask a kdamond this backend turned on for fresh stats and fold ``files`` of them in;
        returns its state. The kernel refuses ``update_schemes_stats`` (EINVAL) from a kdamond
        that is not running (``damon_sysfs_handle_cmd``), so a write it takes says ``on`` and
        the ``state`` file is read only after a refusal: the kdamond stopped (another DAMON user
        turned it off), or another command was in flight (EBUSY, the kdamond still on)."""
        refused = self._ask_stats(node, files)
        if refused is None:
            return "on"
        state = self._read_word(f"{self._kd(self.kdamonds[node])}/state")
        if state == "on":
            self._log.info("damon_stats_not_updated", node=node, error=str(refused))
        return state

    def moved_by_source(self) -> dict[int, int]:
        """Bytes moved away from each node since start: what the runner reads every tick, just
        before :meth:`update`. ``update_schemes_stats`` and ``sz_applied`` alone per running
        kdamond (the other four counters are read by :meth:`stats` and before every ``off``);
        the states read here serve the next :meth:`update`, which reads them only when not."""
        self._seen = self._refresh_running(("sz_applied",))
        return {n: c.total("sz_applied") for n, c in sorted(self._counters.items())}

    def stats(self) -> TieringStats:
        moved: dict[int, int] = {}
        tried = applied = exceeds = 0
        self._refresh_running()
        for node in sorted(self._counters):
            c = self._counters[node]
            moved[node] = c.total("sz_applied")
            tried += c.total("sz_tried")
            applied += c.total("sz_applied")
            exceeds += c.total("qt_exceeds")
        return TieringStats(
            pages_moved_or_put=applied // PAGE_SIZE,
            pages_returned=0,
            failures=max(0, tried - applied) // PAGE_SIZE,
            bytes_tried=tried,
            quota_exceeds=exceeds,
            moved_by_source=moved,
        )

    def stop(self) -> None:
        """Turn off and empty every kdamond this backend added; shrink nr_kdamonds if safe."""
        if not self.kdamonds:
            return
        problems: list[str] = []
        failed = False
        for node, index in sorted(self.kdamonds.items(), key=lambda kv: -kv[1]):
            kd = self._kd(index)
            try:
                if self._read_word(f"{kd}/state") == "on":
                    if node in self._counters:
                        self._refresh(node)
                    self.write(f"{kd}/state", "off")
                self.write(f"{kd}/contexts/nr_contexts", "0")
            except (GuestAgentError, OSError) as e:
                problems.append(f"kdamond {index}: {e}")
                failed = True
        try:
            nr = self._read_count()
            ours_last = nr == self.base + len(self.kdamonds)
            others_idle = self._busy_reason(self.base) is None
            if ours_last and others_idle:
                self.write(NR_KDAMONDS, str(self.base))
            else:
                problems.append(
                    f"left kdamonds {sorted(self.kdamonds.values())} off and empty: nr_kdamonds is "
                    f"{nr} or another kdamond is in use"
                )
        except (GuestAgentError, MissingInputError, OSError) as e:
            problems.append(str(e))
            failed = True
        if not failed:  # else the entries stay for `tiering --reset` (or the next start)
            self._forget(added_entries(self.base, sorted(self.kdamonds.values())))
        for p in problems:
            self._log.warning("damon_stop_incomplete", detail=p)
        self._log.info("damon_stopped", kdamonds=sorted(self.kdamonds.values()))
        self.kdamonds = {}
        self._running = {}
        self._seen = {}
        self._unconfigured = {}

    def _forget(self, entries: list[Change]) -> None:
        if self.journal is None:
            return
        try:
            self.journal.forget_all(c.path for c in entries)
        except OSError as e:
            self._log.warning("damon_journal_not_updated", journal=self.journal.path, error=str(e))
