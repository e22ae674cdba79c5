"""The pure target and rate choice (guestagent.tiering.policy)."""

from __future__ import annotations

import pytest

from guestagent.errors import InputError
from guestagent.tiering.model import (
    MIB,
    MemorySnapshot,
    Move,
    NodeMemory,
    Observation,
    Plan,
    PolicyState,
    SourceState,
    TieringConfig,
)
from guestagent.tiering.policy import (
    STEADY_MAX_FACTOR,
    choose_target,
    decide,
    least_wait_s,
    next_interval,
    next_rate,
    plan_horizon_s,
    source_lacking,
    target_room,
    watermark_bytes,
)

GIB = 1 << 30
CFG = TieringConfig()


def node(n: int, total_gib: float, free_pct: float, inactive_mib: int = 512) -> NodeMemory:
    total = int(total_gib * GIB)
    return NodeMemory(n, total, int(total * free_pct / 100), 0, inactive_mib * MIB)


def snap(nodes: list[NodeMemory], dist: list[list[int]]) -> MemorySnapshot:
    ids = [m.node for m in nodes]
    return MemorySnapshot(
        {m.node: m for m in nodes},
        {(a, b): dist[i][j] for i, a in enumerate(ids) for j, b in enumerate(ids)},
    )


THREE = [[10, 21, 31], [21, 10, 17], [31, 17, 10]]


def test_pressured_node_goes_to_the_nearest_node_with_room() -> None:
    s = snap([node(0, 1, 5), node(1, 1, 60), node(2, 1, 90)], THREE)
    d = decide(s, CFG, PolicyState())
    assert d.plan == Plan((Move(0, 1, CFG.initial_rate),))
    assert d.state.of(0) == SourceState(True, 1, CFG.initial_rate, 0, 0)
    assert "node 0: under pressure" in d.reasons[0]


def test_nearest_node_without_room_is_skipped_for_the_next_nearest() -> None:
    # node 1 is nearer but at 20 % free: under its 25 % target watermark, though not itself short.
    s = snap([node(0, 1, 5), node(1, 1, 20), node(2, 1, 90)], THREE)
    assert decide(s, CFG, PolicyState()).plan.moves == (Move(0, 2, CFG.initial_rate),)


def test_ties_go_to_more_free_memory_then_lower_id() -> None:
    equal = [[10, 20, 20], [20, 10, 20], [20, 20, 10]]
    s = snap([node(0, 1, 5), node(1, 1, 50), node(2, 1, 70)], equal)
    assert decide(s, CFG, PolicyState()).plan.moves[0].target == 2
    s = snap([node(0, 1, 5), node(1, 1, 70), node(2, 1, 70)], equal)
    assert decide(s, CFG, PolicyState()).plan.moves[0].target == 1


def test_a_short_node_is_never_a_target() -> None:
    # Both nodes under pressure: neither may receive the other's pages.
    s = snap([node(0, 1, 5), node(1, 1, 8)], [[10, 20], [20, 10]])
    d = decide(s, CFG, PolicyState())
    assert d.plan.moves == ()
    assert all("paused" in r for r in d.reasons)


def test_choose_target_excludes_sources_and_nodes_without_room() -> None:
    s = snap([node(0, 1, 5), node(1, 1, 90), node(2, 1, 90)], THREE)
    assert choose_target(0, s, CFG, {1: 0, 2: 5}) == 2
    assert choose_target(0, s, CFG, {1: 5, 2: 5}, frozenset({1})) == 2
    assert choose_target(0, s, CFG, {1: 0, 2: 0}) is None


def test_no_pressure_no_plan_and_hysteresis_keeps_a_recovering_source() -> None:
    s = snap([node(0, 16, 12), node(1, 1, 90)], [[10, 20], [20, 10]])
    assert decide(s, CFG, PolicyState()).plan.moves == ()  # 12 % > 10 % low watermark
    was = PolicyState({0: SourceState(True, 1, 8 * MIB)})
    d = decide(s, CFG, was)  # but still below the 15 % release watermark
    assert d.plan.moves == (Move(0, 1, 18 * MIB),)  # 8 MiB/s + 1 MiB/s per second of 10 s
    s2 = snap([node(0, 16, 16), node(1, 1, 90)], [[10, 20], [20, 10]])
    d2 = decide(s2, CFG, d.state)
    assert d2.plan.moves == ()
    assert not d2.state.of(0).pressured
    assert "pressure over" in d2.reasons[0]


def test_nothing_cold_nothing_moves() -> None:
    s = snap([node(0, 1, 5, inactive_mib=4), node(1, 1, 90)], [[10, 20], [20, 10]])
    d = decide(s, CFG, PolicyState())
    assert d.plan.moves == ()
    assert "nothing cold" in d.reasons[0]


# Node meminfo of the 2-vnode HVM guest on Debian's 6.12 kernel (MGLRU on) after a 399 MiB buffer
# was written once on node 0 and left alone (tests/e2e/tiering_scenario.py, 2026-11-28; kB).
KB = 1024
OBSERVED_612 = [
    NodeMemory(0, 514624 * KB, 51460 * KB, active=424904 * KB, inactive=6708 * KB,
               active_file=12384 * KB, inactive_file=6708 * KB),
    NodeMemory(1, 477372 * KB, 451512 * KB, active=2532 * KB, inactive=852 * KB,
               active_file=2332 * KB, inactive_file=852 * KB),
]


def test_under_mglru_the_whole_lru_may_be_cold() -> None:
    """The multi-generational LRU keeps a page faulted in once in the youngest generation (Active)
    until reclaim ages the lists: the inactive lists say nothing about coldness there."""
    dist = [[10, 20], [20, 10]]
    classic = decide(snap(OBSERVED_612, dist), CFG, PolicyState())
    assert classic.plan.moves == ()
    assert classic.reasons == (
        "node 0: under pressure (free 10.0%) but only 6 MiB inactive: nothing cold to move",
    )
    mglru = MemorySnapshot(snap(OBSERVED_612, dist).nodes, snap(OBSERVED_612, dist).distances,
                           lru_gen=True)
    d = decide(mglru, CFG, PolicyState())
    assert d.plan == Plan((Move(0, 1, CFG.initial_rate),))
    # ...but a node with (almost) nothing on its LRU lists still has nothing to move.
    empty = NodeMemory(0, 514624 * KB, 51460 * KB, active=4 * MIB, inactive=2 * MIB)
    d = decide(MemorySnapshot({0: empty, 1: OBSERVED_612[1]}, mglru.distances, lru_gen=True),
               CFG, PolicyState())
    assert d.plan.moves == ()
    assert d.reasons == (
        "node 0: under pressure (free 10.0%) but only 6 MiB on the LRU lists (MGLRU): nothing "
        "cold to move",
    )


@pytest.mark.parametrize("interval_s", [2.0, 10.0])
def test_rate_grows_additively_without_returns_up_to_the_maximum(interval_s: float) -> None:
    """By ``rate_step_per_s`` for each second an interval covered: the ramp takes as many
    seconds at the default 10 s interval as at 2 s (it once grew by 2 MiB/s per interval, so at
    10 s the move took 2-3.5x as long on the testbed)."""
    cfg = TieringConfig(interval_s=interval_s)
    s = snap([node(0, 64, 5), node(1, 64, 90)], [[10, 20], [20, 10]])
    state = PolicyState()
    rates, seconds = [], 0.0
    for _ in range(400):
        moved = {0: int(state.of(0).rate * interval_s)} if state.of(0).rate else {}
        d = decide(s, cfg, state, Observation(interval_s, moved, 0))
        rates.append(d.plan.moves[0].rate)
        state = d.state
        seconds += interval_s if rates[-1] < cfg.max_rate else 0.0
    step = int(interval_s) * MIB
    assert rates[:3] == [4 * MIB, 4 * MIB + step, 4 * MIB + 2 * step]
    assert rates[-1] == CFG.max_rate
    assert max(rates) == CFG.max_rate
    assert seconds == 60.0  # 4 -> 64 MiB/s at 1 MiB/s per second, whatever the interval


def test_rate_backs_off_multiplicatively_when_pages_come_back() -> None:
    s = snap([node(0, 4, 5), node(1, 64, 90)], [[10, 20], [20, 10]])
    state = PolicyState({0: SourceState(True, 1, 32 * MIB, out_bytes=1 * GIB)})
    # 100 MiB of 1 GiB came back in 10 s: ~59 %/min, far above the 2 %/min target.
    d = decide(s, CFG, state, Observation(10.0, {0: 320 * MIB}, 100 * MIB))
    assert d.plan.moves[0].rate == 16 * MIB
    assert d.state.of(0).backoffs == 1
    assert "backed off" in d.reasons[0]
    # A trickle under the target: grows again.
    d2 = decide(s, CFG, d.state, Observation(10.0, {0: 160 * MIB}, 64 * 1024))
    assert d2.plan.moves[0].rate == 26 * MIB


def test_backoff_never_goes_below_the_minimum() -> None:
    prev = SourceState(True, 1, CFG.min_rate)
    assert next_rate(prev, 10 * GIB, GIB, 10.0, CFG) == (CFG.min_rate, True)


def test_the_rate_is_held_while_the_backend_moves_under_half_of_it() -> None:
    """A quota DAMON does not use up is not what limits the move: a higher one moves nothing
    more, and an unchanged plan needs no commit."""
    prev = SourceState(True, 1, 8 * MIB, out_bytes=GIB)
    # 8 MiB/s over 2 s allows 16 MiB: 7 MiB moved is under half, 8 MiB is not.
    assert next_rate(prev, 0, GIB, 2.0, CFG, moved=7 * MIB) == (8 * MIB, False)
    assert next_rate(prev, 0, GIB, 2.0, CFG, moved=8 * MIB) == (10 * MIB, False)
    # Less than min_rate's worth (1 MiB/s: 2 MiB over 2 s), DAMON still ageing its regions
    # after a start: grows as before, so the ramp is not slowed.
    assert next_rate(prev, 0, GIB, 2.0, CFG, moved=0) == (10 * MIB, False)
    assert next_rate(prev, 0, GIB, 2.0, CFG, moved=2 * MIB - 1) == (10 * MIB, False)
    assert next_rate(prev, 0, GIB, 2.0, CFG, moved=2 * MIB) == (8 * MIB, False)
    # Pages coming back still back off.
    assert next_rate(prev, 100 * MIB, GIB, 2.0, CFG, moved=3 * MIB) == (4 * MIB, True)
    s = snap([node(0, 1, 5), node(1, 1, 90)], [[10, 20], [20, 10]])
    d = decide(s, CFG, PolicyState({0: prev}), Observation(2.0, {0: 7 * MIB}, 0))
    assert d.plan.moves == (Move(0, 1, 8 * MIB),)


def test_a_plan_runs_until_a_target_is_full_or_its_source_has_recovered() -> None:
    s = snap([node(0, 1, 5), node(1, 1, 90)], [[10, 20], [20, 10]])
    lacking = watermark_bytes(s.nodes[0], CFG.source_high_pct) - s.nodes[0].free
    assert plan_horizon_s(s, CFG, Plan((Move(0, 1, MIB),))) == lacking / MIB
    small_room = snap([node(0, 1, 5), node(1, 1, 26)], [[10, 20], [20, 10]])
    room = target_room(small_room.nodes[1], CFG)
    assert plan_horizon_s(small_room, CFG, Plan((Move(0, 1, MIB),))) == room / MIB
    assert plan_horizon_s(s, CFG, Plan()) == float("inf")


def test_a_kept_plan_spaces_the_ticks_out_up_to_its_horizon() -> None:
    cfg = TieringConfig(interval_s=2.0)
    assert [next_interval(cfg, 0, n) for n in range(6)] == [2.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert STEADY_MAX_FACTOR == 4
    assert next_interval(cfg, 0, 5, horizon_s=5.0) == 5.0
    assert next_interval(cfg, 0, 5, horizon_s=0.5) == 2.0  # never under 2 s


def test_a_move_that_ends_within_the_interval_brings_the_next_tick_forward() -> None:
    """At the default 10 s interval a source 30 MiB short, moving 16 MiB/s, is back at its
    watermark in 1.9 s: the next tick comes at 2.5 s (testbed, 502c0ba: capping the rate at what the
    source lacks instead dragged the move's tail out from 45 s to 211 s), never sooner than a
    quarter of the interval or 2 s."""
    assert least_wait_s(CFG) == 2.5
    assert least_wait_s(TieringConfig(interval_s=2.0)) == 2.0
    assert least_wait_s(TieringConfig(interval_s=60.0)) == 15.0
    s = snap([node(0, 1, 12), node(1, 1, 90)], [[10, 20], [20, 10]])
    lacking = source_lacking(s.nodes[0], CFG)
    assert 30 * MIB < lacking < 31 * MIB
    plan = Plan((Move(0, 1, 16 * MIB),))
    assert plan_horizon_s(s, CFG, plan) == lacking / (16 * MIB)
    assert next_interval(CFG, 0, 0, plan_horizon_s(s, CFG, plan)) == 2.5
    # A source that moved less than its quota counts at what it moved: 4 MiB/s, 7.7 s.
    seen = Observation(10.0, {0: 40 * MIB}, 0)
    assert plan_horizon_s(s, CFG, plan, seen) == lacking / (4 * MIB)
    assert next_interval(CFG, 0, 0, plan_horizon_s(s, CFG, plan, seen)) == lacking / (4 * MIB)
    # ... and one that moved nothing yet (DAMON ageing its regions) at its quota.
    assert plan_horizon_s(s, CFG, plan, Observation(10.0, {}, 0)) == lacking / (16 * MIB)
    # Far from its watermark: the interval.
    far = snap([node(0, 16, 5), node(1, 16, 90)], [[10, 20], [20, 10]])
    assert next_interval(CFG, 0, 0, plan_horizon_s(far, CFG, plan)) == 10.0


def test_returns_are_apportioned_by_bytes_out() -> None:
    dist = [[10, 20, 20], [20, 10, 20], [20, 20, 10]]
    s = snap([node(0, 4, 5), node(1, 4, 5), node(2, 64, 95)], dist)
    state = PolicyState(
        {0: SourceState(True, 2, 8 * MIB, out_bytes=GIB), 1: SourceState(True, 2, 8 * MIB, 0)}
    )
    # Everything out is node 0's: node 0 backs off, node 1 keeps growing.
    d = decide(s, CFG, state, Observation(10.0, {}, 200 * MIB))
    by = {m.source: m.rate for m in d.plan.moves}
    assert by == {0: 4 * MIB, 1: 18 * MIB}


def test_rate_is_capped_by_the_target_room_and_pauses_when_none_fits() -> None:
    """The room is shared over least_wait_s (2.5 s at the default 10 s interval), not the whole
    interval: the next tick comes before it is used up (plan_horizon_s counts the target at the
    full quota), so a filling target no longer slows the move's tail geometrically (testbed,
    35cec1b: 3.3-5 MiB/s for the last 40 s of the move)."""
    window = least_wait_s(CFG)
    assert window == 2.5
    # Target: 1 GiB, 25.8 % free -> ~8 MiB above its 25 % watermark: 3.3 MiB/s over 2.5 s.
    s = snap([node(0, 4, 5), node(1, 1, 25.8)], [[10, 20], [20, 10]])
    room = target_room(s.nodes[1], CFG)
    capped = int(room / window)
    assert capped < CFG.initial_rate
    d = decide(s, CFG, PolicyState())
    assert d.plan.moves == (Move(0, 1, capped),)
    assert "capped" in d.reasons[0]
    # The next tick comes when it is full, and no sooner than least_wait_s.
    assert plan_horizon_s(s, CFG, d.plan) == pytest.approx(window)
    assert next_interval(CFG, 0, 0, plan_horizon_s(s, CFG, d.plan)) == pytest.approx(window)
    assert capped * window <= room
    # 2 MiB of room: under min_rate over 2.5 s.
    s2 = snap([node(0, 4, 5), node(1, 1, 25.2)], [[10, 20], [20, 10]])
    d2 = decide(s2, CFG, d.state)
    assert d2.plan.moves == ()
    assert "paused" in d2.reasons[0]
    # The rate is held through the pause, then grows from there.
    assert d2.state.of(0).rate == capped
    d3 = decide(snap([node(0, 4, 5), node(1, 4, 90)], [[10, 20], [20, 10]]), CFG, d2.state)
    assert d3.plan.moves == (Move(0, 1, capped + 10 * CFG.rate_step_per_s),)


def test_pages_back_count_only_once_a_move_has_some_out() -> None:
    """numa_pages_migrated is guest-wide: 1 MiB of unrelated migrations against the 4 MiB a
    move's first interval put out is not 150 %/min of returns (testbed at 10 s: two backoffs,
    4 -> 1 MiB/s, before DAMON had moved 16 MiB)."""
    prev = SourceState(True, 1, 4 * MIB)
    assert next_rate(prev, MIB, 4 * MIB, 10.0, CFG) == (14 * MIB, False)
    assert next_rate(prev, MIB, CFG.min_inactive_bytes, 10.0, CFG) == (2 * MIB, True)


def test_a_full_target_takes_pages_again_only_with_room_to_spare() -> None:
    """No on/off flapping at the target's watermark (seen on the testbed, 2-second interval)."""
    cfg = TieringConfig(interval_s=2.0)
    dist = [[10, 20], [20, 10]]
    # Node 1 (1 GiB) sits 1 MiB above its 25 % watermark: less than min_rate for 2 s.
    at_mark = snap([node(0, 1, 5), node(1, 1, 25 + 100 / 1024)], dist)
    d = decide(at_mark, cfg, PolicyState())
    assert d.plan.moves == ()
    assert d.state.full_targets == frozenset({1})
    # 20 MiB above the watermark: enough for min_rate, not yet the 5 % (51 MiB) to resume.
    some_room = snap([node(0, 1, 5), node(1, 1, 25 + 2000 / 1024)], dist)
    d2 = decide(some_room, cfg, d.state)
    assert d2.plan.moves == ()
    assert d2.reasons == (
        "node 0: under pressure (free 5.0%), paused: no other node has free memory above its 25% "
        "watermark; node 1 is full until it has 51 MiB above it",
    )
    assert decide(some_room, cfg, PolicyState()).plan.moves != ()  # without the memory: a move
    # 6 % above the watermark: back in business, and no longer full.
    room = snap([node(0, 1, 5), node(1, 1, 31)], dist)
    d3 = decide(room, cfg, d2.state)
    assert [(m.source, m.target) for m in d3.plan.moves] == [(0, 1)]
    assert d3.state.full_targets == frozenset()


def test_two_sources_share_one_target_room() -> None:
    dist = [[10, 20, 20], [20, 10, 20], [20, 20, 10]]
    # Node 2 offers 8 GiB * 1 % = ~82 MiB of room: 8.2 MiB/s for 10 s, shared.
    s = snap([node(0, 4, 5), node(1, 4, 6), node(2, 8, 26)], dist)
    moves = decide(s, CFG, PolicyState()).plan.moves
    assert [m.source for m in moves] == [0, 1]  # most pressured first
    total = sum(m.rate for m in moves) * CFG.interval_s
    assert total <= target_room(s.nodes[2], CFG)


def test_unknown_distances_rank_last() -> None:
    nodes = [node(0, 1, 5), node(1, 1, 90), node(2, 1, 50)]
    s = MemorySnapshot({m.node: m for m in nodes}, {(0, 2): 30})
    assert decide(s, CFG, PolicyState()).plan.moves[0].target == 2


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"source_low_pct": 120.0}, "percentage"),
        ({"source_high_pct": 5.0}, "below source_low_pct"),
        ({"target_min_pct": 12.0}, "never be a short node"),
        ({"min_rate": 0}, "min_rate"),
        ({"initial_rate": 128 * MIB}, "initial_rate <= max_rate"),
        ({"backoff": 1.0}, "backoff"),
        ({"promotion_target_per_min": 0.0}, "promotion_target"),
        ({"interval_s": 0.0}, "interval_s"),
        ({"target_resume_pct": 80.0}, "target_resume_pct"),
    ],
)
def test_bad_config_is_one_line(kwargs: dict[str, float], text: str) -> None:
    with pytest.raises(InputError, match=text) as caught:
        TieringConfig(**kwargs)  # type: ignore[arg-type]
    assert str(caught.value).startswith("tiering config")


def test_plan_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="one move per source"):
        Plan((Move(0, 1, 1), Move(0, 2, 1)))
    with pytest.raises(ValueError, match="to itself"):
        Plan((Move(0, 0, 1),))
    with pytest.raises(ValueError, match="rate 0"):
        Plan((Move(0, 1, 0),))
