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
    """The monitor's command line (a fixture root and a shorter interval; the test's own empty
    configuration files, which it reads as ``run`` does, instead of /etc/guestagent's)."""
    main, conf_d = own_config(root)
    return subprocess.Popen(
        [sys.executable, "-m", "guestagent", "--root", str(root), "balloon", "record", "--out",
         "-", "--interval", interval, "--duration", duration, "--note", "bench run 1",
         "--config", main, "--conf-dir", conf_d],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        text=True)


def own_config(root: Path, text: str = "") -> tuple[str, str]:
    """A main configuration file holding ``text`` and an empty drop-in directory, beside the
    tree."""
    main, conf_d = root.parent / "guestagent.toml", root.parent / "conf.d"
    main.write_text(text)
    conf_d.mkdir(exist_ok=True)
    return str(main), str(conf_d)


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
    assert cli.main(argv, config_files=own_config(root)) == 1
    err = capsys.readouterr().err
    assert "/proc/meminfo line 1" in err and "Traceback" not in err, err
    assert json.loads(out.read_text().splitlines()[0])["source"].startswith("recorded by")


def test_the_recorder_reads_the_configuration_as_run_does(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14 item 2: ``balloon record`` reads /etc/guestagent (here the context's files) as
    the unit does: its log lines take ``[agent] log_level`` and ``log_format``; the trace is the
    same."""
    from guestagent import cli

    out = root.parent / "trace.jsonl"
    files = own_config(root, '[agent]\nlog_level = "info"\nlog_format = "json"\n')
    argv = ["--root", str(root), "balloon", "record", "--out", str(out), "--interval", "0.05",
            "--duration", "0.05"]
    assert cli.main(argv, config_files=files) == 0
    err = capsys.readouterr().err.splitlines()
    events = [json.loads(line)["event"] for line in err if line.startswith("{")]
    assert "started" in events and "stopping" in events, err
    assert err[-1] == f"recorded 2 snapshots to {out}"
    assert len(parse_trace(out.read_text().splitlines(), "recorded").snapshots) == 2


def test_a_refused_configuration_records_nothing(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file ``run`` would refuse is refused here too, one line naming it, exit status 1,
    before the trace file is opened."""
    from guestagent import cli

    out = root.parent / "trace.jsonl"
    main, conf_d = own_config(root, "[balloon]\ninterval_seconds = nan\n")
    argv = ["--root", str(root), "balloon", "record", "--out", str(out), "--interval", "0.05",
            "--duration", "0.05", "--config", main, "--conf-dir", conf_d]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"{main}: [balloon] interval_seconds" in err and "Traceback" not in err, err
    assert not out.exists()


class FakeTrigger:
    """A PSI trigger whose descriptor never fires (the read end of an empty pipe)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.widened = False
        self._read, self._write = os.pipe()
        self.closed = False

    def fileno(self) -> int:
        return self._read

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)
        self.closed = True


def test_the_recorder_arms_its_trigger_on_the_commands_host(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon that runs the recording gets the command's Host (``cli.main(...,
    make_host=...)``): the trigger is the one that Host gives, its spec in the header, and it
    is closed at the end."""
    from guestagent import cli
    from guestagent.host import Host
    from guestagent.hostfs import HostFS

    armed: list[tuple[str, int, int]] = []
    triggers: list[FakeTrigger] = []

    def open_trigger(fs: HostFS, kind: str, stall_us: int, window_us: int) -> FakeTrigger:
        armed.append((kind, stall_us, window_us))
        triggers.append(FakeTrigger(f"{kind} {stall_us} {window_us}"))
        return triggers[-1]

    out = root.parent / "trace.jsonl"
    argv = ["--root", str(root), "balloon", "record", "--out", str(out), "--interval", "0.05",
            "--duration", "0.05"]
    assert cli.main(argv, make_host=lambda fs: Host(fs, open_psi_trigger=open_trigger),
                    config_files=own_config(root)) == 0, capsys.readouterr().err
    assert armed == [("some", 150_000, 1_000_000)]
    assert triggers[0].closed
    header = json.loads(out.read_text().splitlines()[0])
    assert header["psi_trigger"] == "some 150000 1000000"
