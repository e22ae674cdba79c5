"""Replay synthetic node pressure through the tiering policy; compare with fixed-rate movers.

    python benchmarks/tiering_policy.py [--minutes 180]

A 2-vnode guest: node 0 (4 GiB) starts at 5 % free and its workload keeps allocating 256 KiB/s;
node 1 (8 GiB) has room. Node 0's inactive memory is 1.5 GiB truly cold (0.5 %/min of what was
moved comes back) and then warm pages (50 %/min come back): a mover that keeps going after the
cold pages are gone starts shuffling warm pages back and forth. Each policy runs the same
scenario; the report gives bytes moved, bytes that came back (wasted migrations, each costing a
second copy), memory regained on node 0, new allocations that spilled to node 1 because node 0
was full, and ratios against a fixed 16 MiB/s mover.

What it shows (180 min): while cold pages last, the policy regains about as much as a fixed mover.
Once they are gone, fixed movers keep shuffling warm pages (over 90 % of what they move comes back:
~35 GiB of wasted copies); the promotion-rate target backs off to the minimum rate and cuts moves
and returns to about a fifth, at the price of less memory regained and more allocations that
spill to node 1. Which side of that trade is right depends on the cost of a remote access versus
a migration; the target (``promotion_target_per_min``) is the knob.

This is the pure policy only: no kernel, no DAMON. The real benchmark (bytes moved per second on
the testbed, the agent's CPU time, free memory regained per node) needs the e2e testbed.
"""

# House rule (docs/DEVELOPING.md): Optional[...] rather than X | None, for Python 3.9.

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Optional

from guestagent.tiering.model import (
    MemorySnapshot,
    NodeMemory,
    Observation,
    PolicyState,
    TieringConfig,
)
from guestagent.tiering.policy import decide
from guestagent.units import MIB

GIB = 1 << 30
INTERVAL = 10.0
#: The workload on node 0 keeps allocating this many bytes per second.
ALLOC = MIB // 4
#: Below this much free memory on node 0, new allocations spill to node 1 (the kernel's fallback).
SPILL_FLOOR = 0.01 * 4 * GIB


@dataclass
class World:
    free0: float = 0.05 * 4 * GIB
    free1: float = 0.60 * 8 * GIB
    cold_left: float = 1.5 * GIB
    warm_left: float = 1.0 * GIB
    cold_out: float = 0.0
    warm_out: float = 0.0
    #: Workload allocations that found node 0 full and landed on node 1 (remote, hot data).
    spilled: float = 0.0

    def snapshot(self) -> MemorySnapshot:
        inactive = int(self.cold_left + self.warm_left)
        n0 = NodeMemory(0, 4 * GIB, int(max(0.0, self.free0)), 0, inactive)
        n1 = NodeMemory(1, 8 * GIB, int(max(0.0, self.free1)), 0, GIB)
        return MemorySnapshot({0: n0, 1: n1}, {(0, 0): 10, (0, 1): 20, (1, 0): 20, (1, 1): 10})

    def step(self, rate: int) -> tuple[float, float]:
        """Move at ``rate`` for one interval; returns (moved, returned) bytes."""
        want = rate * INTERVAL
        cold = min(want, self.cold_left)
        warm = min(want - cold, self.warm_left)
        self.cold_left -= cold
        self.warm_left -= warm
        self.cold_out += cold
        self.warm_out += warm
        back_cold = self.cold_out * 0.005 * INTERVAL / 60
        back_warm = self.warm_out * 0.5 * INTERVAL / 60
        self.cold_out -= back_cold
        self.warm_out -= back_warm
        self.cold_left += back_cold
        self.warm_left += back_warm
        moved, returned = cold + warm, back_cold + back_warm
        self.free0 += moved - returned
        self.free1 -= moved - returned
        alloc = ALLOC * INTERVAL
        local = min(alloc, max(0.0, self.free0 - SPILL_FLOOR))
        self.free0 -= local
        self.spilled += alloc - local
        self.free1 -= alloc - local
        return moved, returned


@dataclass
class Result:
    name: str
    moved: float
    returned: float
    regained: float
    spilled: float
    min_free_pct: float
    final_rate: int
    backoffs: int | None


Mover = Callable[[World, PolicyState, Optional[Observation]], tuple[int, PolicyState]]


def policy_mover(config: TieringConfig) -> Mover:
    def move(world: World, state: PolicyState, obs: Observation | None) -> tuple[int, PolicyState]:
        d = decide(world.snapshot(), config, state, obs)
        m = d.plan.for_source(0)
        return (m.rate if m else 0), d.state

    return move


def fixed_mover(rate: int, config: TieringConfig) -> Mover:
    """Moves at a fixed rate whenever node 0 is pressured and node 1 has room (same safety)."""

    def move(world: World, state: PolicyState, obs: Observation | None) -> tuple[int, PolicyState]:
        d = decide(world.snapshot(), config, state, obs)
        return (rate if d.plan.for_source(0) else 0), d.state

    return move


def simulate(name: str, mover: Mover, minutes: int) -> Result:
    world = World()
    state = PolicyState()
    obs: Observation | None = None
    moved_total = returned_total = 0.0
    start_free = world.free0
    min_free = world.free0
    rate = 0
    for _ in range(int(minutes * 60 / INTERVAL)):
        rate, state = mover(world, state, obs)
        moved, returned = world.step(rate)
        moved_total += moved
        returned_total += returned
        min_free = min(min_free, world.free0)
        obs = Observation(INTERVAL, {0: int(moved)}, int(returned))
    # Regained = node 0 free memory at the end, plus what the workload allocated there, minus the
    # free memory it started with: the memory the mover made available on node 0.
    regained = world.free0 + (minutes * 60 * ALLOC - world.spilled) - start_free
    backoffs = state.of(0).backoffs if name.startswith("policy") else None
    return Result(
        name,
        moved_total,
        returned_total,
        regained,
        world.spilled,
        100 * min_free / (4 * GIB),
        rate,
        backoffs,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=180)
    args = parser.parse_args(argv)
    config = TieringConfig()
    runs = [
        simulate("fixed 16 MiB/s", fixed_mover(16 * MIB, config), args.minutes),
        simulate("fixed 64 MiB/s", fixed_mover(64 * MIB, config), args.minutes),
        simulate("policy (AIMD)", policy_mover(config), args.minutes),
    ]
    base = runs[0]
    print(f"{args.minutes} min, decisions every {INTERVAL:g} s; ratios vs '{base.name}'")
    header = (
        f"{'mover':<16} {'moved GiB':>9} {'back GiB':>8} {'back %':>6} {'regained GiB':>12} "
        f"{'spilled GiB':>11} {'min free %':>10} {'moved x':>7} {'back x':>6} "
        f"{'regained x':>10} {'final MiB/s':>11} {'backoffs':>8}"
    )
    print(header)
    for r in runs:
        print(
            f"{r.name:<16} {r.moved / GIB:>9.2f} {r.returned / GIB:>8.2f} "
            f"{100 * r.returned / max(r.moved, 1):>6.1f} {r.regained / GIB:>12.2f} "
            f"{r.spilled / GIB:>11.2f} {r.min_free_pct:>10.1f} "
            f"{r.moved / max(base.moved, 1):>7.2f} "
            f"{r.returned / max(base.returned, 1):>6.2f} "
            f"{r.regained / base.regained if base.regained else float('nan'):>10.2f} "
            f"{r.final_rate / MIB:>11.1f} {'-' if r.backoffs is None else r.backoffs:>8}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
