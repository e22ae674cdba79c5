"""The numa job's decide steps on plain data: a tick's figures, reports and tree; the switch."""

from __future__ import annotations

import pytest

from guestagent.numa.figures import NumaState, balancing_to_write, decide, leaves_auto
from guestagent.numa.model import NodeSample, Sample


def _numastat(hit: int, local: int, other: int) -> dict[str, int]:
    return {"numa_hit": hit, "numa_miss": 0, "numa_foreign": 0, "local_node": local,
            "other_node": other}


def _sample(at: float, hit: int, local: int = 0, other: int = 0, balancing: int | None = 1,
            vnodes: int = 2, problems: tuple[str, ...] = ()) -> Sample:
    nodes = {n: NodeSample(n, (n,), _numastat(hit, local, other), 1 << 30, 1 << 29)
             for n in range(vnodes)}
    return Sample(at, nodes, vmstat={"numa_hint_faults": hit, "numa_pages_migrated": 0},
                  balancing=balancing, problems=problems)


def test_a_first_sample_publishes_nothing_and_becomes_the_previous() -> None:
    first = _sample(100.0, 1000)
    plan, state = decide(first, NumaState(), 60.0, 1_764_870_000.0)
    assert plan.tree is None
    assert plan.figures.elapsed_s is None
    assert state.previous is first


def test_the_second_sample_publishes_its_interval() -> None:
    _plan, state = decide(_sample(100.0, 1000), NumaState(), 60.0, 1_764_870_000.0)
    plan, state = decide(_sample(160.0, 7000, local=900, other=100, problems=("x: garbage",)),
                         state, 60.0, 1_764_870_060.4)
    assert plan.tree is not None
    assert plan.tree["numa/interval-seconds"] == "60"
    assert plan.tree["numa/sampled-seconds"] == "60.0"
    assert plan.tree["numa/updated"] == "1764870060"
    assert plan.tree["numa/nr-vnodes"] == "2"
    assert plan.tree["numa/problems"] == "1"
    assert plan.tree["numa/vnodes/1/numa-hit-per-s"] == "100"  # (7000 - 1000) / 60
    assert plan.tree["numa/hint-faults-per-s"] == "100"
    assert plan.new_resets == ()
    assert state.previous is not None and state.previous.at == 160.0


def test_a_counter_reset_is_reported_once() -> None:
    _plan, state = decide(_sample(0.0, 5000), NumaState(), 60.0, 0.0)
    plan, state = decide(_sample(60.0, 10), state, 60.0, 60.0)  # went backwards: a reset
    assert "node0/numastat numa_hit" in plan.new_resets
    assert "/proc/vmstat numa_hint_faults" in plan.new_resets
    assert plan.tree is not None and plan.tree["numa/vnodes/0/numa-hit-per-s"] == ""
    _plan, state = decide(_sample(120.0, 20), state, 60.0, 120.0)
    plan, state = decide(_sample(180.0, 5), state, 60.0, 180.0)  # the same counters again
    assert plan.new_resets == ()
    assert "node0/numastat numa_hit" in state.resets_seen


def test_the_balancing_warning_is_logged_when_it_appears_not_on_every_tick() -> None:
    plan, state = decide(_sample(0.0, 0, balancing=0), NumaState(), 60.0, 0.0)
    assert plan.warn is not None and "numa_balancing = 0" in plan.warn
    assert state.warning == plan.warn
    plan, state = decide(_sample(60.0, 0, balancing=0), state, 60.0, 60.0)
    assert plan.warn is None and state.warning is not None
    plan, state = decide(_sample(120.0, 0, balancing=1), state, 60.0, 120.0)
    assert plan.warn is None and state.warning is None
    plan, state = decide(_sample(180.0, 0, balancing=0), state, 60.0, 180.0)
    assert plan.warn is not None  # off again: a new warning


def test_one_vnode_never_warns() -> None:
    plan, state = decide(_sample(0.0, 0, balancing=0, vnodes=1), NumaState(), 60.0, 0.0)
    assert plan.warn is None and state.warning is None


@pytest.mark.parametrize(("mode", "vnodes", "balancing", "expected"), [
    ("auto", 2, 0, 1),
    ("auto", 2, 1, None),     # already on
    ("auto", 2, 2, None),     # the operator's tiering mode is kept
    ("auto", 1, 0, None),     # one vnode: nothing to gain
    ("auto", 2, None, None),  # no CONFIG_NUMA_BALANCING
    ("leave", 2, 0, None),
])
def test_balancing_to_write(mode: str, vnodes: int, balancing: int | None,
                            expected: int | None) -> None:
    assert balancing_to_write(mode, vnodes, balancing) == expected


@pytest.mark.parametrize(("mode", "new_mode", "undo"), [
    ("auto", "leave", True), ("auto", "auto", False), ("leave", "auto", False),
    ("leave", "leave", False),
])
def test_leaves_auto(mode: str, new_mode: str, undo: bool) -> None:
    assert leaves_auto(mode, new_mode) is undo
