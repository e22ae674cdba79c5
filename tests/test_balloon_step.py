"""The balloon job's one step (guestagent.balloon.step), shared by the live job and ``balloon
simulate`` (issue 14 item 3): what it writes, the strict-commit floor, and the proof that the
live job on a fake host and the replay decide the same on one trace.

How the live job is fed a trace: a fixture tree is the fake host. Before each tick the test writes
the snapshot into /proc and the driver's sysfs files the way :func:`simulate`'s model sees the
guest (the driver at the target the job wrote, MemTotal, MemAvailable and MemFree shifted by the
difference from the recorded size, a toolstack write applied to the driver at once), sets the
loop's clock to the snapshot's time and ticks the job as its timer or PSI trigger would."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from guestagent.balloon.common import Decision, PolicyState
from guestagent.balloon.config import policy_config
from guestagent.balloon.guard import COMMIT_MARGIN_KB, CommitFigures
from guestagent.balloon.job import BalloonJob
from guestagent.balloon.policy import ClassicConfig, PressureConfig
from guestagent.balloon.signals import (
    BALLOON_CURRENT,
    BALLOON_TARGET,
    DirectoryXenstore,
    MemorySignals,
)
from guestagent.balloon.step import WRITE_MIN_KB, Observation, step, write_kb
from guestagent.balloon.trace import load_trace, simulate
from guestagent.hostfs import HostFS
from tests.test_balloon_job import Bench, balloon_config

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures"
TRACES = HERE / "traces"
CEILING = 1048576


def decision(target: int, action: str = "shrink", floor: int = 262144,
             ceiling: int = CEILING) -> Decision:
    return Decision(target, CEILING, action, "test", floor, ceiling, PolicyState())


def test_write_only_what_is_worth_writing() -> None:
    """The threshold the actuator used to apply on its own: a change under WRITE_MIN_KB is not
    written unless the decision follows the toolstack or the driver is outside the limits."""
    small = CEILING - (WRITE_MIN_KB - 4)
    assert write_kb(decision(CEILING), CEILING) is None
    assert write_kb(decision(small), CEILING) is None
    assert write_kb(decision(small, action="follow"), CEILING) == small
    assert write_kb(decision(small, ceiling=small), CEILING) == small  # the driver above it
    assert write_kb(decision(CEILING - WRITE_MIN_KB), CEILING) == CEILING - WRITE_MIN_KB
    assert write_kb(decision(900_000), None) == 900_000  # driver unknown: write it


def quiet_snapshot(**kw: Any) -> MemorySignals:
    trace = load_trace(str(TRACES / "synthetic-two-spikes-1g.jsonl"))
    return replace(trace.snapshots[0], **kw)


def test_the_state_remembers_what_the_driver_holds_not_what_was_skipped() -> None:
    snap = quiet_snapshot()
    plan, state = step(PolicyState(), Observation(snap), ClassicConfig())
    assert plan.decision.target_kb < CEILING and plan.write_kb == plan.decision.target_kb
    assert state.last_target_kb == plan.target_after_kb == plan.write_kb and plan.arm_guard
    held = replace(snap, timestamp=1.0, balloon_target_kb=plan.write_kb)
    plan2, state2 = step(state, Observation(held), ClassicConfig())
    assert plan2.write_kb is None and state2.last_target_kb == plan.write_kb


def test_the_commit_floor_under_overcommit_2() -> None:
    """10 MiB of spare commit over the margin at ratio 50: at most 20 MiB may go (the guard's
    strict-commit floor, applied by the step, never by the actuator)."""
    snap = quiet_snapshot()
    commit = CommitFigures(412656 + COMMIT_MARGIN_KB + 10 * 1024, 412656, 50, 0)
    plain, _ = step(PolicyState(), Observation(snap), ClassicConfig())
    floored, _ = step(PolicyState(), Observation(snap, commit), ClassicConfig())
    assert plain.decision.target_kb < CEILING - 20 * 1024
    assert floored.decision.target_kb == CEILING - 20 * 1024 == floored.write_kb
    assert floored.floored_from_kb == plain.decision.target_kb and floored.arm_guard
    assert floored.decision.reason.endswith("(strict commit)")
    assert plain.floored_from_kb is None


# --- the live job and simulate take the same step -------------------------------------------


def render(root: Path, snap: MemorySignals) -> None:
    """The snapshot as the files the readers parse (/proc, xenstore; not the driver's)."""
    proc = root / "proc"
    (proc / "meminfo").write_text("".join(f"{k}: {v} kB\n" for k, v in (
        ("MemTotal", snap.mem_total_kb), ("MemFree", snap.mem_free_kb),
        ("MemAvailable", snap.mem_available_kb), ("Cached", snap.cached_kb),
        ("SwapTotal", snap.swap_total_kb), ("SwapFree", snap.swap_free_kb),
        ("Committed_AS", snap.committed_as_kb))))
    psi = proc / "pressure" / "memory"
    if snap.psi_available:
        psi.write_text("".join(
            f"{kind} avg10={getattr(snap, kind + '_avg10'):.2f} "
            f"avg60={getattr(snap, kind + '_avg60'):.2f} "
            f"avg300={getattr(snap, kind + '_avg300'):.2f} "
            f"total={getattr(snap, kind + '_total_us')}\n" for kind in ("some", "full")))
    elif psi.exists():
        psi.unlink()
    counters = ({"workingset_refault_anon": snap.refault_anon,
                 "workingset_refault_file": snap.refault_file}
                if snap.refault_anon is not None else {"workingset_refault": snap.refaults})
    counters["pswpin"] = snap.pswpin
    if snap.oom_kill is not None:
        counters["oom_kill"] = snap.oom_kill
    (proc / "vmstat").write_text("".join(f"{k} {v}\n" for k, v in counters.items()))
    assert snap.totalreserve_kb is not None and snap.totalreserve_kb % 4 == 0
    (proc / "zoneinfo").write_text(
        f"Node 0, zone   Normal\n  pages free     1\n        high     "
        f"{snap.totalreserve_kb // 4}\n        managed  {1 << 30}\n"
        f"        protection: (0, 0)\n")
    for name, value in (("target", snap.xs_target_kb), ("static-max", snap.xs_static_max_kb)):
        node = root / "xenstore" / "memory" / name
        if value is None:
            node.unlink(missing_ok=True)
        else:
            node.write_text(f"{value}\n")


def run_live(root: Path, snaps: list[MemorySignals], policy: str, offset: int = 0
             ) -> list[tuple[Any, ...]]:
    """The live balloon job on the fixture tree, one tick per snapshot (simulate's model).
    ``offset``: the HVM video RAM between the toolstack's memory/target and the driver's."""
    target_file, current_file = (root / p.lstrip("/") for p in (BALLOON_TARGET, BALLOON_CURRENT))
    # the job reads the fixture's xenstore itself (a reader that cannot watch): every tick
    xenstore = DirectoryXenstore(HostFS(str(root)), "/xenstore")
    bench = Bench(root, policy=policy, job=BalloonJob(lambda flags: None, lambda: None,
                                                      use_trigger=False, xenstore=xenstore))
    out = []
    last_xs: int | None = None
    try:
        for i, snap in enumerate(snaps):
            recorded = snap.balloon_current_kb or snap.mem_total_kb
            if i == 0:
                target = snap.balloon_target_kb if snap.balloon_target_kb is not None else recorded
                current = recorded
            else:
                target = current = int(target_file.read_text())  # the driver got there at once
            xs = snap.xs_target_kb
            if last_xs is not None and xs is not None and xs != last_xs:
                target = current = xs - offset  # the kernel's watch: a toolstack write
            last_xs = xs
            delta = current - recorded
            render(root, replace(snap, mem_total_kb=max(1, snap.mem_total_kb + delta),
                                 mem_available_kb=max(0, snap.mem_available_kb + delta),
                                 mem_free_kb=max(0, snap.mem_free_kb + delta)))
            target_file.write_text(f"{target}\n")
            current_file.write_text(f"{current}\n")
            bench.clock.now = snap.timestamp
            if i == 0:
                bench.job.start(bench.ctx)  # the first tick is at start
            else:
                bench.job._tick(psi_fired=snap.psi_trigger_fired)  # the timer or the trigger
            st = bench.job.status()
            out.append((snap.timestamp, st["last_action"], st["target_kb"], st["floor_kb"],
                        st["ceiling_kb"], st["last_reason"]))
        assert bench.ended == []
    finally:
        bench.job.stop()
        bench.close()
    return out


@pytest.mark.parametrize(("trace", "policy", "length", "offset"), [
    ("synthetic-two-spikes-1g.jsonl", "pressure", None, 0),
    ("synthetic-override-1g.jsonl", "pressure", None, 0),
    ("synthetic-override-1g.jsonl", "pressure", 150, 8 * 1024),  # an HVM guest's video RAM
    ("synthetic-phases-1g.jsonl", "classic", 200, 0),
])
def test_the_live_job_and_simulate_decide_the_same(tmp_path: Path, trace: str, policy: str,
                                                   length: int | None, offset: int) -> None:
    """One recorded trace through the live balloon job (a fake host: a fixture tree) and through
    ``balloon simulate``: every decision identical, action, target, limits and reason. The
    phases trace under classic is one where the two differed before they shared the step (the
    actuator skipped changes under 4 MiB that simulate made: from t = 76 s on)."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "balloon-pv-1g", root)
    snaps = load_trace(str(TRACES / trace)).snapshots[:length]
    if offset:  # the toolstack's figures include the video RAM; the job learns it at start
        snaps = [replace(s, xs_target_kb=s.xs_target_kb + offset,
                         xs_static_max_kb=s.xs_static_max_kb + offset) for s in snaps
                 if s.xs_target_kb is not None and s.xs_static_max_kb is not None]
    config = policy_config(balloon_config(policy).section("balloon"))
    assert isinstance(config, PressureConfig if policy == "pressure" else ClassicConfig)
    replayed = [(s.timestamp, s.action, s.target_kb, s.floor_kb, s.ceiling_kb, s.reason)
                for s in simulate(snaps, policy, config).steps]
    live = run_live(root, snaps, policy, offset)
    assert len(live) == len(replayed) == len(snaps)
    for got, want in zip(live, replayed):
        assert got == want
    assert live[0][4] == snaps[0].xs_target_kb - offset  # the ceiling in the driver's units
    assert len({a for _, a, *_ in live} - {"hold"}) >= 2  # the trace exercises the policy
