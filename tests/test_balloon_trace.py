"""Trace format, recording through the real readers, and replay (simulate) of the traces kept in
tests/traces."""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path

import pytest

from guestagent.balloon.policy import MIB_KB, PressureConfig, reserve_kb
from guestagent.balloon.signals import DirectoryXenstore
from guestagent.balloon.synthetic import TRACES, phases_trace
from guestagent.balloon.trace import (
    RecordJob,
    load_trace,
    parse_trace,
    simulate,
    trace_header,
    write_trace,
)
from guestagent.errors import InputError
from guestagent.hostfs import HostFS

HERE = Path(__file__).resolve().parent
TRACE_DIR = HERE / "traces"
PHASES = TRACE_DIR / "synthetic-phases-1g.jsonl"
OVERRIDE = TRACE_DIR / "synthetic-override-1g.jsonl"
RECORDED = TRACE_DIR / "recorded-devhost-noxen.jsonl"
PV = HERE / "fixtures" / "balloon-pv-1g"
#: Recorded by ``guestagent balloon record`` in a 1 GiB PV guest on the Xen 4.17 testbed during the
#: ``none`` run of ``python -m benchmarks.balloon_testbed`` (benchmarks/README.md).
TESTBED = HERE.parent / "benchmarks" / "traces" / "testbed-xen417-pv1g-none.jsonl"


def test_kept_synthetic_traces_are_what_the_generator_writes() -> None:
    for name, make in TRACES.items():
        out = io.StringIO()
        trace = make()
        write_trace(out, trace.header, trace.snapshots)
        assert (TRACE_DIR / name).read_text() == out.getvalue(), name


def test_every_kept_trace_loads() -> None:
    for path in sorted(TRACE_DIR.glob("*.jsonl")):
        trace = load_trace(str(path))
        assert trace.header["format"] == "guestagent-balloon-trace"
        assert len(trace.snapshots) > 10


# --- format errors -------------------------------------------------------------------------------


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda ls: ["{}", *ls[1:]], "line 1: not a guestagent-balloon-trace header"),
        (lambda ls: [ls[0].replace('"version": 1', '"version": 9'), *ls[1:]], "unsupported"),
        (lambda ls: [*ls[:3], "{oops", *ls[3:]], "line 4: not JSON"),
        (lambda ls: [ls[0], ls[2], ls[1], *ls[3:]], "line 3: timestamp goes backwards"),
        (lambda ls: [*ls[:2], ls[2].replace('"pswpin":0', '"pswpin":-7'), *ls[3:]], "pswpin"),
        (lambda ls: [ls[0]], "no snapshots"),
        (lambda ls: [], "empty trace"),
    ],
)
def test_bad_traces_are_one_clear_line(mutate, needle: str) -> None:  # type: ignore[no-untyped-def]
    lines = mutate(lines_of(PHASES)[:10])
    with pytest.raises(InputError) as e:
        parse_trace(lines, "t.jsonl")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("t.jsonl") and needle in msg


def test_missing_trace_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such trace file"):
        load_trace(str(tmp_path / "nope.jsonl"))


# --- recording -----------------------------------------------------------------------------------


def test_record_through_the_readers(tmp_path: Path) -> None:
    """The RecordJob under the observer daemon (as ``balloon record`` runs it), on the
    command's Host over a fixture tree."""
    from guestagent.cli import Context
    from guestagent.config import defaults
    from guestagent.daemon.commands import run_observer

    root = tmp_path / "root"
    shutil.copytree(PV, root)
    fs = HostFS(str(root))
    out = io.StringIO()
    job = RecordJob(out, 0.05, 0.1, DirectoryXenstore(fs, "/xenstore"))
    ctx = Context(hostfs=fs, config_files=(str(tmp_path / "none.toml"), str(tmp_path / "none.d")))
    daemon = run_observer(argparse.Namespace(), ctx, defaults(), job)
    assert daemon.failure is None and job.count == 3
    trace = parse_trace(out.getvalue().splitlines(), "recorded")
    times = [s.timestamp for s in trace.snapshots]
    assert times[0] == 0.0 and times == sorted(times)
    first = trace.snapshots[0]
    assert first.mem_total_kb == 998576 and first.xs_target_kb == 1048576
    assert trace.header["psi_trigger"] is None  # never armed on a fixture tree


def test_record_rejects_bad_interval() -> None:
    with pytest.raises(InputError, match="--interval"):
        RecordJob(io.StringIO(), 0, 1, None)


# --- replay --------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["none", "classic", "pressure"])
@pytest.mark.parametrize("path", [PHASES, OVERRIDE, RECORDED])
def test_replay_never_crosses_floor_or_ceiling(policy: str, path: Path) -> None:
    result = simulate(load_trace(str(path)), policy)
    s = result.summary
    assert s is not None
    assert s.floor_violations == 0 and s.ceiling_violations == 0
    assert s.steps == len(result.steps)


def test_none_holds_exactly_static_max() -> None:
    s = simulate(load_trace(str(PHASES)), "none").summary
    assert s is not None
    assert s.memory_held_gib_s == pytest.approx(600.0)
    assert s.grows == s.shrinks == 0


def test_pressure_holds_less_than_classic_on_the_phases_trace() -> None:
    trace = load_trace(str(PHASES))
    classic = simulate(trace, "classic").summary
    pressure = simulate(trace, "pressure").summary
    assert classic is not None and pressure is not None
    assert pressure.memory_held_gib_s < classic.memory_held_gib_s
    # One: the burst at 420 s, faster than the default reserve covers (test_balloon_pressure_replay)
    assert pressure.underprovisioned_steps == 1


def test_pressure_answers_every_spike_within_one_step() -> None:
    """Whenever the trigger fired or the (simulated) MemAvailable fell under the reserve, the very
    decision taking that snapshot grows, unless already at the ceiling or right after a grow."""
    trace = load_trace(str(PHASES))
    result = simulate(trace, "pressure")
    reserve = reserve_kb(PressureConfig(), 1024 * MIB_KB)
    answered = 0
    for i in range(1, len(result.steps)):
        snap, step, prev = trace.snapshots[i], result.steps[i], result.steps[i - 1]
        recorded = snap.balloon_current_kb or snap.mem_total_kb
        avail = snap.mem_available_kb + prev.target_kb - recorded
        if snap.psi_trigger_fired or avail < reserve:
            assert (
                step.action == "grow"
                or prev.target_kb == step.ceiling_kb
                or ("rate-limited" in step.reason and prev.action == "grow")
            ), (snap.timestamp, step.reason)
            answered += 1
    # The trace's spike (t=420) at least: the slow anon ramps before it are answered in the band
    # under 2x reserve, before MemAvailable reaches the reserve.
    assert answered >= 1


def test_replay_follows_the_toolstack() -> None:
    result = simulate(load_trace(str(OVERRIDE)), "pressure")
    by_t = {int(s.timestamp): s for s in result.steps}
    assert by_t[100].action == "follow" and "toolstack override" in by_t[100].reason
    assert all(by_t[t].target_kb <= 768 * MIB_KB for t in range(100, 200))
    assert by_t[200].action == "follow"
    assert all(by_t[t].ceiling_kb == 1024 * MIB_KB for t in range(200, 301))


def test_replay_of_a_trace_without_balloon_or_xenstore() -> None:
    trace = load_trace(str(RECORDED))
    assert trace.snapshots[0].balloon_target_kb is None
    s = simulate(trace, "pressure").summary
    assert s is not None and s.max_target_kb <= trace.snapshots[0].mem_total_kb


def test_simulate_refuses_a_mismatched_config() -> None:
    with pytest.raises(InputError, match="config is for policy"):
        simulate(phases_trace().snapshots[:5], "classic", PressureConfig())


def test_trace_round_trip(tmp_path: Path) -> None:
    trace = phases_trace()
    path = tmp_path / "t.jsonl"
    with open(path, "w", encoding="ascii") as f:
        write_trace(f, trace_header(source="test"), trace.snapshots[:20])
    again = load_trace(str(path))
    assert again.snapshots == trace.snapshots[:20]
    assert json.loads(path.read_text().splitlines()[0])["source"] == "test"


def test_the_trace_recorded_on_xen_replays_within_the_limits() -> None:
    trace = load_trace(str(TESTBED))
    snaps = trace.snapshots
    assert len(snaps) > 100
    # Real Xen: the balloon driver and the toolstack's keys were read at every snapshot.
    assert all(s.balloon_current_kb == 1048576 and s.xs_static_max_kb == 1048576 for s in snaps)
    assert all(s.psi_available and s.totalreserve_kb for s in snaps)
    held = {}
    for policy in ("none", "classic", "pressure"):
        summary = simulate(trace, policy).summary
        assert summary is not None
        assert summary.floor_violations == 0 and summary.ceiling_violations == 0, policy
        held[policy] = summary.memory_held_gib_s
    pressure = simulate(trace, "pressure").summary
    assert pressure is not None and pressure.underprovisioned_steps == 0
    assert held["pressure"] < held["none"] and held["classic"] < held["none"]
