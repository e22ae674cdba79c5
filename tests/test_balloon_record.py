"""``guestagent balloon record`` is the daemon running one observer job (balloon.trace.RecordJob):
what it writes is still what the balloon benchmark reads, line for line.

The monitor in the guest (benchmarks/balloon_monitor.py) runs it as
``guestagent balloon record --out - --interval 1 --duration 7200 --note TEXT`` beside
``guestagent run``, stamps each line as it arrives (``trace_offset``) and stops it with SIGINT; the
testbed (benchmarks/balloon_testbed.py) reads the trace with ``trace_stats`` and, for the bound,
``load_trace``; benchmarks/balloon_replay.py replays traces with ``load_trace`` and ``simulate``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.balloon_monitor import Monitor
from benchmarks.balloon_testbed import json_lines, trace_stats
from guestagent import statelock
from guestagent.balloon.trace import load_trace, parse_trace, simulate

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RECORDED = HERE / "traces" / "recorded-devhost-noxen.jsonl"
HEADER_KEYS = {"format", "version", "source", "recorded_at", "interval_s", "psi_trigger", "note"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    dest = tmp_path / "balloon-pv-1g"
    shutil.copytree(HERE / "fixtures" / "balloon-pv-1g", dest)
    return dest


def recorder(root: Path, interval: str, duration: str) -> subprocess.Popen[str]:
    """The monitor's command line (a fixture root and a shorter interval)."""
    return subprocess.Popen(
        [sys.executable, "-m", "guestagent", "--root", str(root), "balloon", "record", "--out",
         "-", "--interval", interval, "--duration", duration, "--note", "bench run 1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True)


def monitor_reads(lines: list[str]) -> Monitor:
    trace = io.StringIO()
    mon = Monitor(argparse.Namespace(), io.StringIO())
    mon.trace = trace
    for n, line in enumerate(lines):
        mon.on_trace_line(line, 500.0 + n)
    assert trace.getvalue().splitlines() == lines, "the monitor copies every line"
    return mon


def test_the_benchmark_parsers_read_what_the_recorder_writes(root: Path, tmp_path: Path) -> None:
    proc = recorder(root, "0.05", "0.2")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == 1 + 5, out  # the header, then a snapshot at 0, 0.05, ... 0.2
    header = json.loads(lines[0])
    assert set(header) == HEADER_KEYS
    assert header["source"] == "recorded by guestagent balloon record"
    assert header["note"] == "bench run 1" and header["interval_s"] == 0.05
    # Every snapshot has the keys of a trace recorded before the recorder became a job (and
    # psi_available, added since), in the same compact, sorted form.
    old = RECORDED.read_text().splitlines()[1]
    for line in lines[1:]:
        snap = json.loads(line)
        assert set(snap) == set(json.loads(old)) | {"psi_available"}
        assert list(snap) == sorted(snap) and ", " not in line
        assert snap["psi_trigger_fired"] is False and snap["xs_target_kb"] == 1048576
    times = [json.loads(line)["timestamp"] for line in lines[1:]]
    assert times[0] == 0.0 and times == sorted(times)

    mon = monitor_reads(lines)
    assert mon.trace_offset is not None  # stamped from the snapshots' timestamps
    stats = trace_stats(lines)
    assert stats["snapshots"] == 5 and stats["refaults"] == 0
    assert len(json_lines(out)) == 6
    path = tmp_path / "trace.jsonl"
    path.write_text(out)
    trace = load_trace(str(path))
    assert trace.header == header and len(trace.snapshots) == 5
    summary = simulate(trace, "pressure").summary
    assert summary is not None and summary.steps == 5


def test_sigint_ends_the_recording_cleanly_beside_a_running_daemon(root: Path) -> None:
    """As at the end of a benchmark run: SIGINT, exit status 0, no cut line. The recorder takes
    no state directory lock: the daemon of the unit holds it meanwhile."""
    state_dir = root / "run/guestagent"
    state_dir.mkdir(parents=True, mode=0o700)
    fd = statelock.acquire(str(state_dir), "run")  # as guestagent run does
    try:
        proc = recorder(root, "0.05", "7200")
        assert proc.stdout is not None
        got = [proc.stdout.readline() for _ in range(3)]  # the header and two snapshots
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        statelock.release(fd)
    assert proc.returncode == 0, err
    lines = "".join([*got, rest]).splitlines()
    assert len(lines) >= 3 and all(json.loads(line) for line in lines)
    assert not os.path.exists(state_dir / "status.sock")
    parse_trace(lines, "recorded")


def test_the_reader_going_away_ends_the_recording(root: Path) -> None:
    """``--out -`` into a pipe whose reader is gone (the monitor killed): the recorder stops at
    its next snapshot instead of recording for nobody until --duration."""
    proc = recorder(root, "0.05", "7200")
    assert proc.stdout is not None
    proc.stdout.readline()  # the header: it runs
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read()


def test_an_unreadable_input_ends_the_recording_with_exit_1(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As before the recorder became a job: ``1 when an input cannot be read``, the line naming
    the file; the trace so far (its header) is kept."""
    from guestagent import cli

    (root / "proc/meminfo").write_text("garbage\n")
    out = root.parent / "trace.jsonl"
    argv = ["--root", str(root), "balloon", "record", "--out", str(out), "--interval", "0.05",
            "--duration", "1"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "/proc/meminfo line 1" in err and "Traceback" not in err, err
    assert json.loads(out.read_text().splitlines()[0])["source"].startswith("recorded by")
