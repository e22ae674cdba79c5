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

``--bound RUN_DIR ...`` speaks the issue's unit instead: each ``RUN_DIR`` is one ``none`` run of
``balloon_testbed`` (``<workload>.none.<repeat>/`` with ``trace.jsonl``, ``workload.out`` and
``events.jsonl``). The replayed ``pressure`` size is integrated over the workload's window and
set against the no-headroom bound of that run (``balloon_bound``'s, from the same phase marks
and page cache), and the gap is split into the law's parts (:func:`gap_parts`). ``--every N``
feeds every Nth snapshot (the recording is at 1 s, the daemon decides every 5 s).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.balloon_bound import cache_in_use, cache_phases, workload_marks  # noqa: E402
from guestagent.balloon.common import PolicyState  # noqa: E402
from guestagent.balloon.pressure import (  # noqa: E402
    PressureConfig,
    burst_allowance,
    burst_so_far_kb,
    demand_kb,
    headroom_line_kb,
    observe_demand,
    reserve_kb,
    rising_room_kb,
)
from guestagent.balloon.signals import MemorySignals  # noqa: E402
from guestagent.balloon.trace import (  # noqa: E402
    SimStep,
    SimSummary,
    load_trace,
    parse_trace,
    simulate,
)

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


# --------------------------------------------------------------------------------------------
# The gap to the bound, in the law's parts


#: The parts of the gap, in the order they are printed (mean MiB over the workload's window).
GAP_PARTS = ("reserve", "second_reserve", "burst", "rising", "floor", "rest_above",
             "rest_below", "cache")


@dataclass
class GapParts:
    """Mean MiB over a window: the replayed size, the bound, and the gap between them split so
    that ``held - bound`` is the sum of the parts. The law aims MemAvailable at the probe line
    P = R + max(R, B - g) + the rise of use kept above it, never under the floor; so, per
    snapshot, with D the driver's offset plus MemTotal - MemAvailable (what the law's demand and
    the bound share) and c the page cache the bound counts as in use:

    * ``reserve`` R and ``second_reserve`` R (the max(R, ...) part of the line);
    * ``burst`` max(0, B - g - R): the burst allowance beyond the second R;
    * ``rising`` P - H: the rise of use a probe keeps above the line;
    * ``floor`` max(0, floor - (D + P)): the floor above the line;
    * ``rest_above``: the size above max(floor, D + P) (probes still converging, holds, a
      grow's overshoot); ``rest_below``: the size under D (a grow not yet there);
    * the parts are filled in that order (R, R, B, rising, floor), each at most what is left of
      the size above D, so a guest under its line shows less of the later parts;
    * ``cache``: minus c (the bound keeps that page cache; the law counts it as available).
    """

    held: float = 0.0
    bound: float = 0.0
    seconds: float = 0.0
    floor_bound_s: float = 0.0  # seconds the floor is above D + P
    parts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(GAP_PARTS, 0.0))

    def ratio(self) -> float:
        return self.held / self.bound if self.bound > 0 else float("nan")


def line_parts(snap: MemorySignals, state: PolicyState, config: PressureConfig, ceiling_kb: int,
               used_rate: float) -> tuple[int, int, int, int]:
    """(R, the second R, B beyond it, the rising room) of the probe line at one snapshot."""
    reserve = reserve_kb(config, ceiling_kb)
    second = int(reserve * config.line_min_reserves)
    burst = burst_allowance(state, config, snap.timestamp)
    line = headroom_line_kb(reserve, burst, burst_so_far_kb(state), config.line_min_reserves)
    return reserve, second, line - reserve - second, rising_room_kb(used_rate, config)


def gap_parts(snaps: list[MemorySignals], steps: list[SimStep], window: tuple[float, float],
              cached_at: list[int], config: PressureConfig | None = None) -> GapParts:
    """The gap of one replay (``steps`` of ``simulate(snaps, "pressure")``) to the bound over
    ``window`` (trace time), ``cached_at[i]`` the page cache the bound counts at snapshot i.
    B and g depend on demand only (ballooning does not move it), so they are recomputed here
    from the recording with the law's own functions."""
    cfg = config if config is not None else PressureConfig()
    start, end = window
    out = GapParts()
    state = PolicyState()
    prev: tuple[float, int] | None = None
    for i, (snap, sim) in enumerate(zip(snaps, steps)):
        state = observe_demand(snap, state, cfg)
        demand = demand_kb(snap)
        rate = 0.0
        if prev is not None and snap.timestamp - prev[0] >= 0.5:
            rate = (demand - prev[1]) / (snap.timestamp - prev[0])
        prev = (snap.timestamp, demand)
        t_next = snaps[i + 1].timestamp if i + 1 < len(snaps) else end
        dt = min(t_next, end) - max(snap.timestamp, start)
        if dt <= 0:
            continue
        offset = (snap.balloon_current_kb or snap.mem_total_kb) - snap.mem_total_kb
        base = offset + snap.mem_total_kb - snap.mem_available_kb
        r1, r2, burst, rising = line_parts(snap, state, cfg, sim.ceiling_kb, rate)
        floor = max(0, sim.floor_kb - (base + r1 + r2 + burst + rising))
        kb = attribute(sim.target_kb - base, (("reserve", r1), ("second_reserve", r2),
                                              ("burst", burst), ("rising", rising),
                                              ("floor", floor)))
        kb["cache"] = -cached_at[i]
        for name, value in kb.items():
            out.parts[name] += value * dt
        out.held += sim.target_kb * dt
        out.bound += (base + cached_at[i]) * dt
        out.seconds += dt
        out.floor_bound_s += dt if floor > 0 else 0.0
    if out.seconds > 0:
        out.held /= out.seconds * 1024
        out.bound /= out.seconds * 1024
        out.parts = {k: v / (out.seconds * 1024) for k, v in out.parts.items()}
    return out


def attribute(above_kb: int, parts: tuple[tuple[str, int], ...]) -> dict[str, int]:
    """Split the size above demand among the law's parts in order, each at most what is left
    (a grow not yet there gets the first parts: the guest is under its line); what lies above
    them all is ``rest_above``, what the size lies under demand ``rest_below``."""
    left = max(0, above_kb)
    out = {}
    for name, kb in parts:
        out[name] = min(left, max(0, kb))
        left -= out[name]
    out["rest_above"] = left
    out["rest_below"] = min(0, above_kb)
    return out


def run_window(run_dir: Path) -> tuple[list[MemorySignals], tuple[float, float], list[int]]:
    """The trace of one ``none`` run, the workload's window on the trace's clock, and the page
    cache ``balloon_bound`` counts at each snapshot (Cached in a phase marked ``cache``, else the
    boot-time Cached). A plain trace file (no workload log) gives an approximate bound: the
    whole trace, the boot-time Cached throughout."""
    if run_dir.is_file():
        snaps = load_trace(str(run_dir)).snapshots
        boot_cache = snaps[0].cached_kb
        return snaps, (snaps[0].timestamp, snaps[-1].timestamp), [boot_cache] * len(snaps)
    trace_lines = [line for line in (run_dir / "trace.jsonl").read_text().splitlines()
                   if _parses(line)]
    snaps = parse_trace(trace_lines, str(run_dir / "trace.jsonl")).snapshots
    workload = (run_dir / "workload.out").read_text()
    offset = None
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        if '"trace_offset"' in line:
            offset = float(json.loads(line)["trace_offset"])
    if offset is None:
        raise SystemExit(f"{run_dir}/events.jsonl: no trace_offset")
    marks = workload_marks(workload, offset)
    if len(marks) < 2 or not snaps:
        raise SystemExit(f"{run_dir}/workload.out: no phase lines")
    return snaps, (marks[0][0], marks[-1][0]), cache_in_use(snaps, marks, cache_phases(workload))


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return bool(line.strip())


def bound_replay(run_dir: Path, every: int, populate_kb_per_s: float | None,
                 config: PressureConfig | None = None) -> tuple[GapParts, int]:
    """The gap of ``pressure`` replayed on one ``none`` run, and its snapshots short of memory."""
    snaps, window, cache_at = run_window(run_dir)
    snaps, cache_at = snaps[::every], cache_at[::every]
    steps = simulate(snaps, "pressure", config=config, populate_kb_per_s=populate_kb_per_s).steps
    short = sum(1 for s in steps if s.underprovisioned and window[0] <= s.timestamp <= window[1])
    return gap_parts(snaps, steps, window, cache_at, config), short


#: What each part of the law costs, counterfactually: the law with that part taken out (or
#: halved), replayed on the same recording. Not candidates for the law (some leave snapshots
#: short): the difference to the law is the memory that part holds, the system's answer
#: included (a lower line means more grows, which ``gap_parts`` cannot see).
LEVERS: dict[str, dict[str, float | int]] = {
    "no second R": {"line_min_reserves": 0.0},
    "R halved": {"reserve_min_kb": 16 * 1024},
    "no B": {"burst_window_s": 1e-3},
    "B not held": {"holdoff_min_s": 1e-3, "holdoff_max_s": 1e-3},
    "no rising room": {"rising_room_s": 0.0},
    "instant probe": {"shrink_headroom_divisor": 1, "shrink_free_fraction": 1.0,
                      "shrink_max_step_pct": 100.0, "shrink_free_max_step_pct": 100.0,
                      "shrink_interval_s": 0.0, "grow_holdoff_s": 0.0},
}


def lever_table(run_dir: Path, every: int, populate_kb_per_s: float | None
                ) -> dict[str, tuple[float, int]]:
    """(mean MiB held, snapshots short) of the law and of each :data:`LEVERS` variant."""
    out = {"law": _held_short(run_dir, every, populate_kb_per_s, PressureConfig())}
    for name, change in LEVERS.items():
        cfg = replace(PressureConfig(), **change)  # type: ignore[arg-type]
        out[name] = _held_short(run_dir, every, populate_kb_per_s, cfg)
    return out


def _held_short(run_dir: Path, every: int, populate_kb_per_s: float | None,
                config: PressureConfig) -> tuple[float, int]:
    gap, short = bound_replay(run_dir, every, populate_kb_per_s, config)
    return gap.held, short


def print_levers(run_dirs: list[Path], every: int, populate_kb_per_s: float | None) -> None:
    print("LEVERS: mean MiB held by the law, then what each part's removal saves (MiB, and the")
    print("snapshots short with it): a replay, open-loop")
    print(f"{'run':44} {'law':>9}" + "".join(f" {n:>15}" for n in LEVERS))
    for run_dir in run_dirs:
        table = lever_table(run_dir, every, populate_kb_per_s)
        law, law_short = table["law"]
        cells = "".join(f" {law - held:9.0f} ({short:2d}u)" for name, (held, short)
                        in table.items() if name != "law")
        print(f"{_label(run_dir)[-44:]:44} {law:5.0f} ({law_short}u){cells}")


def _label(run_dir: Path) -> str:
    if run_dir.is_file():
        return f"{run_dir.name} (whole trace)"
    return f"{run_dir.parent.parent.name[:15]}/{run_dir.name}"


def print_bound(run_dirs: list[Path], every: int, populate_kb_per_s: float | None) -> None:
    print("TRACE REPLAY against the no-headroom bound (mean MiB over the workload's window)")
    driver = "at once" if populate_kb_per_s is None else f"at {populate_kb_per_s / 1024:.0f} MiB/s"
    print(f"a decision every {every} snapshot(s); the driver {driver}")
    names = "  ".join(f"{n[:9]:>9}" for n in GAP_PARTS)
    print(f"{'run':44} {'held':>6} {'bound':>6} {'ratio':>6} {'short':>5} {'floor s':>7}  {names}")
    for run_dir in run_dirs:
        gap, short = bound_replay(run_dir, every, populate_kb_per_s)
        label = _label(run_dir)
        parts = "  ".join(f"{gap.parts[n]:9.0f}" for n in GAP_PARTS)
        print(f"{label[-44:]:44} {gap.held:6.0f} {gap.bound:6.0f} {gap.ratio():6.2f} {short:5d} "
              f"{gap.floor_bound_s:7.0f}  {parts}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="balloon_replay",
        description="Balloon policies replayed on recorded traces (not a measurement on Xen).")
    p.add_argument("paths", nargs="*", type=Path,
                   help="traces (.jsonl); with --bound or --levers, none-run directories of "
                        "balloon_testbed. Default: tests/traces and benchmarks/traces")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--bound", action="store_true",
                      help="the replayed pressure size against the no-headroom bound, by part")
    mode.add_argument("--levers", action="store_true",
                      help="what each part of the law holds, taken out or halved")
    p.add_argument("--json", action="store_true", help="the default table as JSON")
    p.add_argument("--populate-mib-s", type=float, default=None, metavar="N",
                   help="the simulated driver reaches a target at N MiB/s (default: at once)")
    p.add_argument("--every", type=int, default=1, metavar="N",
                   help="feed every Nth snapshot (--bound, --levers)")
    args = p.parse_args(argv)
    if args.every < 1:
        p.error(f"--every: expected 1 or more, got {args.every}")
    if args.populate_mib_s is not None and args.populate_mib_s <= 0:
        p.error(f"--populate-mib-s: expected more than 0, got {args.populate_mib_s:g}")
    if (args.bound or args.levers) and not args.paths:
        p.error("--bound and --levers need one or more none-run directories")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    populate = args.populate_mib_s * 1024 if args.populate_mib_s is not None else None
    if args.levers:
        print_levers(args.paths, args.every, populate)
        return 0
    if args.bound:
        print_bound(args.paths, args.every, populate)
        return 0
    paths = args.paths or [
        *sorted((ROOT / "tests" / "traces").glob("*.jsonl")),
        *sorted(HELD_OUT_DIR.glob("*.jsonl")),
    ]
    results = {str(p): replay(p, populate) for p in paths}
    if args.json:
        print(json.dumps(
            {p: {k: asdict(v) for k, v in r.items()} for p, r in results.items()}, indent=1
        ))
        return 0
    print_classic(results, populate)
    return 0


def print_classic(results: dict[str, dict[str, SimSummary]], populate: float | None) -> None:
    """The default table: every policy against ``classic`` per trace, held-out traces apart."""
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
