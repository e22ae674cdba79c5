"""Balloon policies on recorded traces: a TRACE REPLAY, not a measurement.

Replays every trace in ``tests/traces/`` and ``benchmarks/traces/`` (or the files given) through
``none``, ``classic`` and ``pressure`` with ``guestagent.balloon.trace.simulate`` and prints, per
trace and policy: memory held (GiB x s), its ratio to ``classic``, peak ``some`` avg10 (from the
trace: pressure is not re-simulated), OOM kills in the trace, grows/shrinks, and the steps where the
simulated size would not have held the recorded workload. See the ``trace`` module docstring for
the replay model. ``--populate-mib-s N`` makes the simulated driver lag (it reaches a target at N
MiB/s instead of at once).

The traces in ``tests/traces/`` are the tuning set of the ``pressure`` policy; those in
``benchmarks/traces/`` (the Xen 4.17 recording) are HELD OUT: never tune on them, report them
apart (they are printed under their own heading).

The issue's real benchmark (a scripted workload per policy on the Xen testbed, memory from Dom0,
run time) is a separate measurement; these numbers only compare policies on identical inputs.

    python benchmarks/balloon_replay.py [TRACE.jsonl ...] [--json] [--populate-mib-s N]
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from guestagent.balloon.trace import SimSummary, load_trace, simulate  # noqa: E402

POLICIES = ("none", "classic", "pressure")
HELD_OUT_DIR = ROOT / "benchmarks" / "traces"


def replay(path: Path, populate_kb_per_s: float | None = None) -> dict[str, SimSummary]:
    trace = load_trace(str(path))
    out: dict[str, SimSummary] = {}
    for policy in POLICIES:
        summary = simulate(trace, policy, populate_kb_per_s=populate_kb_per_s).summary
        assert summary is not None
        out[policy] = summary
    return out


def main(argv: list[str]) -> int:
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    populate: float | None = None
    if "--populate-mib-s" in argv:
        i = argv.index("--populate-mib-s")
        populate = float(argv[i + 1]) * 1024
        del argv[i : i + 2]
    paths = [Path(a) for a in argv]
    if not paths:
        paths = [
            *sorted((ROOT / "tests" / "traces").glob("*.jsonl")),
            *sorted(HELD_OUT_DIR.glob("*.jsonl")),
        ]
    results = {str(p): replay(p, populate) for p in paths}
    if as_json:
        print(json.dumps(
            {p: {k: asdict(v) for k, v in r.items()} for p, r in results.items()}, indent=1
        ))
        return 0
    print("TRACE REPLAY (simulated sizes on recorded signals; not a measurement on Xen)")
    driver = "at once" if populate is None else f"at {populate / 1024:.0f} MiB/s"
    print(f"the simulated driver reaches each target {driver}")
    held_out = False
    for path, per_policy in results.items():
        header = load_trace(path).header
        if Path(path).resolve().parent == HELD_OUT_DIR.resolve() and not held_out:
            held_out = True
            print()
            print("=== HELD OUT (never tuned on) ===")
        print()
        print(f"{Path(path).name}: {header.get('source', '?')}")
        if header.get("note"):
            print(f"  {header['note']}")
        classic = per_policy["classic"].memory_held_gib_s
        print(
            f"  {'policy':9} {'held GiB*s':>11} {'vs classic':>10} {'mean GiB':>9} "
            f"{'peak some10':>11} {'OOM':>4} {'grows':>6} {'shrinks':>8} {'underprov':>9}"
        )
        for policy, s in per_policy.items():
            ratio = s.memory_held_gib_s / classic if classic > 0 else float("nan")
            print(
                f"  {policy:9} {s.memory_held_gib_s:11.1f} {ratio:10.3f} {s.mean_gib:9.3f} "
                f"{s.peak_some_avg10:10.2f}% {s.oom_kills_in_trace:4d} {s.grows:6d} "
                f"{s.shrinks:8d} {s.underprovisioned_steps:9d}"
            )
    print()
    print("peak some avg10 and OOM kills are the trace's own (pressure is replayed, not")
    print("simulated); underprov = steps where the simulated size leaves negative MemAvailable.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
