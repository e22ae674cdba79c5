"""Plain data for remote-node cold memory: what the readers produce, what the policy decides, and
the :class:`Backend` protocol every mechanism (DAMON, tmem) implements.

Units: bytes, bytes per second, seconds. Node ids are Linux node ids (vnodes in a Xen guest).
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from guestagent.errors import GuestAgentError, InputError
from guestagent.tiering.config import INTERVAL, MAX_RATE, SOURCE_HIGH, SOURCE_LOW, TARGET_MIN
from guestagent.units import MIB

#: Distance used for a node pair whose distance is unknown: worse than any SLIT entry (u8).
UNKNOWN_DISTANCE = 256


@dataclass(frozen=True)
class NodeMemory:
    """One node's memory from ``/sys/devices/system/node/nodeN/meminfo`` (bytes)."""

    node: int
    total: int
    free: int
    active: int = 0
    inactive: int = 0
    active_file: int = 0
    inactive_file: int = 0

    @property
    def free_fraction(self) -> float:
        return self.free / self.total if self.total > 0 else 0.0


@dataclass(frozen=True)
class MemorySnapshot:
    """Every node with memory, and the distance between each ordered pair (from sysfs).

    ``lru_gen``: the multi-generational LRU is on (``/sys/kernel/mm/lru_gen/enabled`` bit 0;
    Debian's 6.12 kernel turns it on by default). Then meminfo's Active/Inactive split only says
    which *generation* a page is in, not whether it is cold: a page faulted in goes to the youngest
    generation (counted Active) and stays there until reclaim ages the lists, so a buffer nobody
    touched for minutes still shows as Active (seen on the testbed: 403 MiB Active(anon), 0
    Inactive(anon) on a node holding only a cold buffer).
    """

    nodes: dict[int, NodeMemory]
    distances: dict[tuple[int, int], int] = field(default_factory=dict)
    lru_gen: bool = False
    #: What could not be read and was worked around (one line each, naming file and value).
    problems: list[str] = field(default_factory=list)

    def distance(self, a: int, b: int) -> int:
        return self.distances.get((a, b), UNKNOWN_DISTANCE)


@dataclass(frozen=True)
class Observation:
    """What happened since the previous decision.

    ``moved`` is per source node (bytes the backend moved away from it); ``returned`` is bytes that
    came back to any source (e.g. NUMA-balancing migrations from ``/proc/vmstat``), which the policy
    apportions to the sources by the bytes each has out on remote nodes. ``interval_s`` is the
    time the counts cover; 0 means no observation (the first decision).
    """

    interval_s: float = 0.0
    moved: dict[int, int] = field(default_factory=dict)
    returned: int = 0


def _pct(name: str, value: float) -> None:
    if not 0.0 <= value <= 100.0:
        raise InputError(f"tiering config {name}", "must be a percentage 0..100", value)


@dataclass(frozen=True)
class TieringConfig:
    """Watermarks (percent of each node's own MemTotal) and rate bounds.

    * A node is **under pressure** when its free memory falls below ``source_low_pct``; it stays so
      (hysteresis) until free memory is back at ``source_high_pct``.
    * A node can be a **target** only when its free memory is above ``target_min_pct`` (its own
      watermark); the room it offers is the part above that watermark, and a move's rate is capped
      so one interval never eats more than that room. ``target_min_pct`` must be at least
      ``source_high_pct``, so a target is never a node that is itself short.
    * The rate (bytes/s) starts at ``initial_rate``, grows by ``rate_step_per_s`` for each second
      an interval covered while the pages that come back stay under ``promotion_target_per_min``
      (a fraction of the bytes out on remote nodes, per minute), and is multiplied by ``backoff``
      when they do not; always within ``[min_rate, max_rate]``.
    """

    source_low_pct: float = SOURCE_LOW.field()
    source_high_pct: float = SOURCE_HIGH.field()
    target_min_pct: float = TARGET_MIN.field()
    min_inactive_bytes: int = 16 * MIB
    min_rate: int = 1 * MIB
    max_rate: int = MAX_RATE.field()
    initial_rate: int = 4 * MIB
    #: The ramp: bytes/s the rate gains per second of the interval (2 MiB/s a tick at a 2 s
    #: interval, 10 MiB/s at the default 10 s: the ramp takes as long whatever the interval).
    rate_step_per_s: int = 1 * MIB
    backoff: float = 0.5
    promotion_target_per_min: float = 0.02
    interval_s: float = INTERVAL.field()
    #: A target that ran out of room takes pages again only once it has this much (percent of its
    #: own MemTotal) above its watermark: without it, a target hovering at its watermark turns the
    #: source on and off every interval (seen on the testbed: each "on" restarts DAMON's monitoring,
    #: so nothing is old enough to move before the next "off").
    target_resume_pct: float = 5.0

    def __post_init__(self) -> None:
        for name in ("source_low_pct", "source_high_pct", "target_min_pct"):
            _pct(name, getattr(self, name))
        if self.source_high_pct < self.source_low_pct:
            raise InputError(
                "tiering config source_high_pct",
                "must not be below source_low_pct",
                self.source_high_pct,
            )
        if self.target_min_pct < self.source_high_pct:
            raise InputError(
                "tiering config target_min_pct",
                "must not be below source_high_pct (a target must never be a short node)",
                self.target_min_pct,
            )
        if not 0 < self.min_rate <= self.initial_rate <= self.max_rate:
            raise InputError(
                "tiering config rates",
                "need 0 < min_rate <= initial_rate <= max_rate",
                (self.min_rate, self.initial_rate, self.max_rate),
            )
        if self.rate_step_per_s < 0:
            raise InputError(
                "tiering config rate_step_per_s", "must not be negative", self.rate_step_per_s
            )
        if not 0.0 < self.backoff < 1.0:
            raise InputError("tiering config backoff", "must be in (0, 1)", self.backoff)
        if not 0.0 < self.promotion_target_per_min <= 1.0:
            raise InputError(
                "tiering config promotion_target_per_min",
                "must be in (0, 1]",
                self.promotion_target_per_min,
            )
        if not 0.0 < self.interval_s <= 3600.0:
            raise InputError("tiering config interval_s", "must be in (0, 3600]", self.interval_s)
        if not 0.0 <= self.target_resume_pct <= 100.0 - self.target_min_pct:
            raise InputError(
                "tiering config target_resume_pct",
                "must be in 0..(100 - target_min_pct)",
                self.target_resume_pct,
            )
        if self.min_inactive_bytes < 0:
            raise InputError(
                "tiering config min_inactive_bytes",
                "must not be negative",
                self.min_inactive_bytes,
            )


@dataclass(frozen=True)
class SourceState:
    """The policy's memory of one source node between decisions."""

    pressured: bool = False
    target: int | None = None
    rate: int = 0
    #: Bytes moved away from this node and not seen coming back (the promotion-rate denominator).
    out_bytes: int = 0
    backoffs: int = 0


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between decisions: each node's :class:`SourceState`, and the
    targets held full."""

    sources: dict[int, SourceState] = field(default_factory=dict)
    #: Targets that ran out of room and have not yet regained ``target_resume_pct`` above their
    #: watermark.
    full_targets: frozenset[int] = frozenset()

    def of(self, node: int) -> SourceState:
        return self.sources.get(node, SourceState())


@dataclass(frozen=True)
class Move:
    """Move cold pages from ``source`` to ``target`` at up to ``rate`` bytes per second."""

    source: int
    target: int
    rate: int


@dataclass(frozen=True)
class Plan:
    """At most one move per source node; an empty plan means "move nothing" (pause)."""

    moves: tuple[Move, ...] = ()

    def __post_init__(self) -> None:
        sources = [m.source for m in self.moves]
        if len(set(sources)) != len(sources):
            raise ValueError(f"a plan has one move per source, got sources {sources}")
        for m in self.moves:
            if m.source == m.target:
                raise ValueError(f"move from node {m.source} to itself")
            if m.rate <= 0:
                raise ValueError(f"move {m.source}->{m.target} has rate {m.rate}")

    def for_source(self, node: int) -> Move | None:
        for m in self.moves:
            if m.source == node:
                return m
        return None


@dataclass(frozen=True)
class Decision:
    """One decision: the plan to apply, the state for the next decision, and why."""

    plan: Plan
    state: PolicyState
    #: One line per node saying why it is (not) a source and which target it got.
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Availability:
    """Whether a backend can serve here, and one line saying why (not)."""

    ok: bool
    reason: str
    #: What the mechanism cannot do even when it works (shown by ``tiering status``).
    limits: tuple[str, ...] = ()


@dataclass(frozen=True)
class TieringStats:
    """Counters since the backend started (pages are 4 KiB)."""

    pages_moved_or_put: int = 0
    pages_returned: int = 0
    failures: int = 0
    bytes_tried: int = 0
    quota_exceeds: int = 0
    #: Bytes moved away, per source node.
    moved_by_source: dict[int, int] = field(default_factory=dict)


class BackendUnavailable(GuestAgentError):
    """A backend cannot run here; ``reason`` is one operator-readable line."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"{backend}: {reason}")
        self.backend = backend
        self.reason = reason


class Backend(Protocol):
    """A mechanism that moves (or stores) cold pages.

    ``start`` creates whatever the backend needs and applies the plan; ``update`` applies a new plan
    (an empty plan pauses everything); ``stop`` undoes everything ``start`` created and is safe to
    call more than once, or after a failed ``start``.
    """

    name: str
    #: True when the backend places pages on a chosen node (the point of this feature).
    targets_node: bool

    def probe(self) -> Availability: ...

    def start(self, plan: Plan) -> None: ...

    def update(self, plan: Plan) -> None: ...

    def stats(self) -> TieringStats: ...

    def moved_by_source(self) -> dict[int, int]:
        """``stats().moved_by_source`` as cheaply as the mechanism allows (read every tick)."""
        ...

    def stop(self) -> None: ...
