"""Which node's cold pages go where, and how fast: pure functions, no I/O, no clock.

:func:`decide` turns a :class:`~guestagent.tiering.model.MemorySnapshot`, the configuration, the
previous :class:`~guestagent.tiering.model.PolicyState` and what was observed since into a
:class:`~guestagent.tiering.model.Plan`:

1. **Sources**: nodes under pressure (free below ``source_low_pct`` of their own MemTotal, or
   still below ``source_high_pct`` after having been pressured: hysteresis) that have at least
   ``min_inactive_bytes`` of memory that may be cold (:func:`cold_candidates`: the inactive lists;
   with the multi-generational LRU, every LRU page, because there Active/Inactive are generations,
   not coldness, and DAMON's own access sampling decides what is cold). The most pressured source
   is served first.
2. **Target** (:func:`choose_target`): the nearest other node by the distance matrix; ties go to
   the node with more free memory, then the lower id. Only nodes with free memory above their own
   ``target_min_pct`` watermark qualify, never a source and never a node that is itself short. The
   room a target offers (free memory above its watermark) is shared by the sources that pick it:
   each move reserves its rate over :func:`least_wait_s` of it.
3. **Rate** (:func:`next_rate`): additive increase, multiplicative decrease on a promotion-rate
   target, in the spirit of Google's software-defined far memory (Lagar-Cavilla et al., ASPLOS
   2019): the fraction of the bytes a source has out on remote nodes that comes back per minute
   must stay under ``promotion_target_per_min`` (e.g. 2 %/min; counted once ``min_inactive_bytes``
   are out: the counter is guest-wide). Above it the rate is multiplied by
   ``backoff``; otherwise it grows by ``rate_step_per_s`` for each second the interval covered
   (so the ramp takes as long in seconds at the default 10 s interval as at 2 s), unless the
   backend moved at least
   ``min_rate``'s worth but less than half of what the rate allowed over the interval
   (:data:`GROW_WHEN_USED`): then the rate is not what limits the move (DAMON finds no more pages
   old enough), a higher quota would move nothing more, and the rate is held, so the plan stays
   the same (nothing to commit, and the ticks are spaced out, see 4). An interval in which less
   than ``min_rate``'s worth moved (DAMON still ageing its regions after a start) grows the rate
   as before, so the ramp is as fast as it was. Always within ``[min_rate, max_rate]``, and
   never more than the target's room over :func:`least_wait_s` (the next tick comes before
   the room is used up at that rate, see 4; the capped rate is what the state remembers);
   when even ``min_rate`` does not fit, the source pauses (no move, the rate is held) and the
   target counts as full until its room is back at ``target_resume_pct`` of its MemTotal
   (hysteresis: a target at its watermark does not flap the source on and off).
4. **Pace** (:func:`next_interval`): while decisions find nothing to move (:func:`is_idle`: no
   node short, or every short one paused for want of a target's room; nothing running), the
   ticks are spaced out, doubling up to :data:`IDLE_MAX_FACTOR` times ``interval_s``; the first
   decision that moves brings back ``interval_s``.
   The same while a move's plan stays unchanged (:attr:`Runner.steady_ticks
   <guestagent.tiering.runner.Runner>`), but never past :func:`plan_horizon_s`: the time the plan
   can run before a target's room is used up at the rates into it, or a source is back at
   ``source_high_pct``, at the rate each source really moved over the last interval where it
   moved less than its quota (so a longer wait neither overfills a target nor moves more than
   needed). A horizon shorter than ``interval_s`` brings the next tick forward to it, to no
   less than :func:`least_wait_s` (a quarter of ``interval_s``, at least 2 s): at the default
   10 s interval the move stops near the watermark instead of up to 10 s of its rate past it.
   The rate and room arithmetic always uses the time the observation really covered.
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import math
from dataclasses import replace

from guestagent.tiering.model import (
    Decision,
    MemorySnapshot,
    Move,
    NodeMemory,
    Observation,
    Plan,
    PolicyState,
    SourceState,
    TieringConfig,
)
from guestagent.units import MIB


def watermark_bytes(node: NodeMemory, pct: float) -> int:
    return int(node.total * pct / 100.0)


def is_pressured(node: NodeMemory, config: TieringConfig, was_pressured: bool) -> bool:
    """Free memory below the low watermark, or below the high one while still recovering."""
    limit = config.source_high_pct if was_pressured else config.source_low_pct
    return node.free < watermark_bytes(node, limit)


def resume_room(node: NodeMemory, config: TieringConfig) -> int:
    """Room a full target needs again before it takes pages (``target_resume_pct``)."""
    return int(node.total * config.target_resume_pct / 100.0)


def cold_candidates(node: NodeMemory, lru_gen: bool) -> int:
    """Bytes on the node that may be cold: Inactive on the classic LRU; Active + Inactive under
    the multi-generational LRU, where a page stays in the youngest generation (Active) until
    reclaim ages the lists, however long nobody touches it (see ``MemorySnapshot.lru_gen``)."""
    return node.active + node.inactive if lru_gen else node.inactive


def source_lacking(node: NodeMemory, config: TieringConfig) -> int:
    """Bytes a source lacks to its ``source_high_pct`` watermark (0 when it has them)."""
    return max(0, watermark_bytes(node, config.source_high_pct) - node.free)


def target_room(node: NodeMemory, config: TieringConfig) -> int:
    """Bytes a node can receive before its free memory reaches its own target watermark."""
    return max(0, node.free - watermark_bytes(node, config.target_min_pct))


def choose_target(
    source: int,
    snapshot: MemorySnapshot,
    config: TieringConfig,
    room: dict[int, int],
    excluded: frozenset[int] = frozenset(),
) -> int | None:
    """The nearest node other than ``source`` with room left; ties: more free memory, lower id.

    ``room`` is each node's remaining room this round (bytes); nodes in ``excluded`` (the sources,
    which are short by definition) never qualify.
    """
    candidates = [
        n
        for n, mem in snapshot.nodes.items()
        if n != source and n not in excluded and room.get(n, 0) > 0 and mem.total > 0
    ]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda n: (snapshot.distance(source, n), -snapshot.nodes[n].free, n),
    )


def promotion_fraction_per_min(returned: int, out_bytes: int, interval_s: float) -> float:
    """Bytes that came back per minute as a fraction of the bytes out on remote nodes."""
    if returned <= 0 or interval_s <= 0:
        return 0.0
    return (returned / max(out_bytes, 1)) * (60.0 / interval_s)


#: The rate grows only when the backend moved at least this fraction of ``rate * interval`` (or
#: less than ``min_rate * interval``: still starting); between the two the rate is held (the
#: rate is not what limits the move).
GROW_WHEN_USED = 0.5


def next_rate(
    previous: SourceState,
    returned: int,
    out_bytes: int,
    interval_s: float,
    config: TieringConfig,
    moved: int = 0,
) -> tuple[int, bool]:
    """(new rate, backed off?) for a source that stays pressured; ``moved``: bytes the backend
    moved away from it over the interval (0: nothing yet, or not known; see
    :data:`GROW_WHEN_USED`).

    A source that just became pressured starts at ``initial_rate`` (or lower, if an earlier episode
    had backed off below it: the memory of a backoff is kept while the state is).
    """
    if previous.rate <= 0:
        return config.initial_rate, False
    if not previous.pressured:
        return max(config.min_rate, min(previous.rate, config.initial_rate)), False
    # numa_pages_migrated counts every NUMA-balancing migration in the guest: against the few
    # MiB out in a move's first interval, a handful of unrelated pages reads as most of them
    # (testbed, 10 s interval: two backoffs, 4 -> 1 MiB/s, before DAMON had moved 16 MiB).
    fraction = (promotion_fraction_per_min(returned, out_bytes, interval_s)
                if out_bytes >= config.min_inactive_bytes else 0.0)
    if fraction > config.promotion_target_per_min:
        return max(config.min_rate, int(previous.rate * config.backoff)), True
    if config.min_rate * interval_s <= moved < GROW_WHEN_USED * previous.rate * interval_s:
        return max(config.min_rate, min(config.max_rate, previous.rate)), False
    return min(config.max_rate, previous.rate + int(config.rate_step_per_s * interval_s)), False


def _apportion(returned: int, out: dict[int, int]) -> dict[int, int]:
    """Split the bytes that came back over the sources by the bytes each has out."""
    total = sum(out.values())
    if returned <= 0 or total <= 0:
        return {n: 0 for n in out}
    return {n: returned * b // total for n, b in out.items()}


def _out_bytes(
    state: PolicyState, observed: Observation
) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """(bytes each node had out before this interval's returns, the returns apportioned to
    each node, bytes out now), after this interval's moves."""
    before = {
        n: state.of(n).out_bytes + max(0, observed.moved.get(n, 0))
        for n in set(state.sources) | set(observed.moved)
    }
    returned_by = _apportion(observed.returned, before)
    now = {n: max(0, b - returned_by.get(n, 0)) for n, b in before.items()}
    return before, returned_by, now


def _targets_room(
    snapshot: MemorySnapshot, config: TieringConfig, state: PolicyState, short: frozenset[int]
) -> tuple[dict[int, int], set[int]]:
    """Room each non-source node offers this round, and the targets still full (room 0 until
    they are back at ``target_resume_pct``)."""
    room = {n: target_room(mem, config) for n, mem in snapshot.nodes.items() if n not in short}
    still_full = {
        n for n in state.full_targets
        if n in room and room[n] < resume_room(snapshot.nodes[n], config)
    }
    for n in still_full:
        room[n] = 0
    return room, still_full


def _no_target_reason(
    n: int, free_pct: float, snapshot: MemorySnapshot, config: TieringConfig, still_full: set[int]
) -> str:
    held = "".join(
        f"; node {t} is full until it has {resume_room(snapshot.nodes[t], config) // MIB} "
        f"MiB above it"
        for t in sorted(still_full)
    )
    return (
        f"node {n}: under pressure (free {free_pct:.1f}%), paused: no other node has free "
        f"memory above its {config.target_min_pct:g}% watermark{held}"
    )


def _plan_source(
    n: int,
    snapshot: MemorySnapshot,
    config: TieringConfig,
    prev: SourceState,
    flows: tuple[int, int, int, float, int],
    room: dict[int, int],
    short: frozenset[int],
    still_full: set[int],
) -> tuple[Move | None, SourceState, str]:
    """One pressured source: its move (or None when it pauses), its next state and the reason.
    ``flows`` is (bytes out now, bytes returned to it, bytes out before the returns, interval,
    bytes moved away from it over the interval).
    Reserves the move's bytes in ``room``; marks a target too full for ``min_rate`` in
    ``still_full``."""
    out, returned, out_before, interval, moved = flows
    free_pct = 100.0 * snapshot.nodes[n].free_fraction
    paused = replace(prev, pressured=True, target=None, out_bytes=out)
    candidates = cold_candidates(snapshot.nodes[n], snapshot.lru_gen)
    if candidates < config.min_inactive_bytes:
        what = "on the LRU lists (MGLRU)" if snapshot.lru_gen else "inactive"
        return None, paused, (
            f"node {n}: under pressure (free {free_pct:.1f}%) but only "
            f"{candidates // MIB} MiB {what}: nothing cold to move"
        )
    rate, backed_off = next_rate(prev, returned, out_before, interval, config, moved)
    target = choose_target(n, snapshot, config, room, short)
    if target is None:
        return None, paused, _no_target_reason(n, free_pct, snapshot, config, still_full)
    # The next tick comes before the room is used up at this rate (plan_horizon_s), at the
    # latest least_wait_s after it: the room is shared over that, not over a whole interval.
    window = min(interval, least_wait_s(config))
    budget = room[target] / window
    if budget < config.min_rate:
        still_full.add(target)
        return None, paused, (
            f"node {n}: under pressure, paused: node {target} has only "
            f"{room[target] // MIB} MiB above its watermark"
        )
    capped = min(rate, int(budget))
    room[target] -= int(capped * window)
    reason = (
        f"node {n}: under pressure (free {free_pct:.1f}%) -> node {target} "
        f"(distance {snapshot.distance(n, target)}) at {capped / MIB:.1f} MiB/s"
        + (" (backed off: pages came back)" if backed_off else "")
        + (" (capped by the target's room)" if capped < rate else "")
    )
    new_state = SourceState(
        pressured=True,
        target=target,
        rate=capped,
        out_bytes=out,
        backoffs=prev.backoffs + (1 if backed_off else 0),
    )
    return Move(n, target, capped), new_state, reason


def decide(
    snapshot: MemorySnapshot,
    config: TieringConfig,
    state: PolicyState,
    observed: Observation | None = None,
) -> Decision:
    """The plan for the next interval, the state to pass to the next call, and the reasons."""
    if observed is None:
        observed = Observation()
    interval = observed.interval_s if observed.interval_s > 0 else config.interval_s
    out_before, returned_by, out_now = _out_bytes(state, observed)

    pressured = {
        n: mem.total > 0 and is_pressured(mem, config, state.of(n).pressured)
        for n, mem in sorted(snapshot.nodes.items())
    }
    sources = sorted(
        (n for n, p in pressured.items() if p), key=lambda n: (snapshot.nodes[n].free_fraction, n)
    )
    short = frozenset(sources)
    room, still_full = _targets_room(snapshot, config, state, short)

    reasons: list[str] = []
    new_states: dict[int, SourceState] = {}
    for n in sorted(snapshot.nodes):
        if pressured[n]:
            continue
        prev = state.of(n)
        if prev.pressured:
            free_pct = 100.0 * snapshot.nodes[n].free_fraction
            reasons.append(f"node {n}: pressure over (free {free_pct:.1f}%)")
        new_states[n] = replace(
            prev, pressured=False, target=None, out_bytes=out_now.get(n, prev.out_bytes)
        )
    moves: list[Move] = []
    for n in sources:
        prev = state.of(n)
        flows = (out_now.get(n, prev.out_bytes), returned_by.get(n, 0), out_before.get(n, 0),
                 interval, max(0, observed.moved.get(n, 0)))
        move, new_states[n], reason = _plan_source(
            n, snapshot, config, prev, flows, room, short, still_full
        )
        reasons.append(reason)
        if move is not None:
            moves.append(move)
    return Decision(
        Plan(tuple(moves)), PolicyState(new_states, frozenset(still_full)), tuple(reasons)
    )


#: While idle, ticks are at most this many ``interval_s`` apart (a short node is found that much
#: later at worst: 8 s at the testbed's 2 s interval, 40 s at the default 10 s).
IDLE_MAX_FACTOR = 4
#: While a move's plan stays unchanged, ticks are at most this many ``interval_s`` apart (and
#: never past :func:`plan_horizon_s`).
STEADY_MAX_FACTOR = 4
#: A move's horizon never brings the next tick sooner than this (seconds; the e2e's interval,
#: so at 2 s nothing changes).
LEAST_WAIT_S = 2.0


def is_idle(decision: Decision) -> bool:
    """Nothing to move, so nothing runs: no node short, or every short node paused (no target
    with room above its watermark, or nothing cold to move). What would end it (a node short, a
    target's room back) is a change of the nodes the spaced-out ticks still read."""
    return not decision.plan.moves


def plan_horizon_s(
    snapshot: MemorySnapshot,
    config: TieringConfig,
    plan: Plan,
    observed: Observation | None = None,
) -> float:
    """Seconds ``plan`` can run unchanged at its rates: until a target's room above its
    ``target_min_pct`` watermark is used up by the moves into it, or a source has moved what it
    lacks to ``source_high_pct``, whichever is first (``inf`` for the empty plan). A source that
    moved over the ``observed`` interval, but less than its new rate, counts at what it moved:
    the quota is an upper bound, what DAMON finds cold is the pace. A target's room counts the
    full quotas into it (overfilling a target is what must not happen)."""
    horizon = math.inf
    into: dict[int, int] = {}
    for move in plan.moves:
        into[move.target] = into.get(move.target, 0) + move.rate  # a target: at full quota
        rate = float(move.rate)
        if observed is not None and observed.interval_s > 0:
            seen = max(0, observed.moved.get(move.source, 0)) / observed.interval_s
            rate = min(rate, seen) if seen > 0 else rate
        source = snapshot.nodes.get(move.source)
        if source is not None:
            horizon = min(horizon, source_lacking(source, config) / rate)
    for target, rate in into.items():
        node = snapshot.nodes.get(target)
        room = 0 if node is None else target_room(node, config)
        horizon = min(horizon, room / rate)
    return horizon


def _spaced(ticks: int, max_factor: int) -> int:
    """1 for the first tick of a run, then doubled per tick, at most ``max_factor``."""
    return 1 if ticks <= 1 else min(max_factor, 1 << min(ticks - 1, 8))


def least_wait_s(config: TieringConfig) -> float:
    """The soonest a move's horizon brings the next tick: a quarter of ``interval_s``, at least
    :data:`LEAST_WAIT_S` (never more than ``interval_s``)."""
    return min(config.interval_s, max(LEAST_WAIT_S, config.interval_s / 4))


def next_interval(
    config: TieringConfig, idle_ticks: int, steady_ticks: int = 0, horizon_s: float = math.inf
) -> float:
    """Seconds until the next decision after ``idle_ticks`` idle decisions in a row (or
    ``steady_ticks`` moving decisions in a row that kept the same plan): ``interval_s``, doubled
    per such decision after the first, at most ``IDLE_MAX_FACTOR`` (``STEADY_MAX_FACTOR``) times;
    a moving plan's wait never goes past ``horizon_s`` (:func:`plan_horizon_s`), nor under
    :func:`least_wait_s`."""
    if idle_ticks > 1:
        return config.interval_s * _spaced(idle_ticks, IDLE_MAX_FACTOR)
    steady = config.interval_s * _spaced(steady_ticks, STEADY_MAX_FACTOR)
    return max(least_wait_s(config), min(steady, horizon_s))
