"""``guestagent run`` with stderr on the journal, as systemd runs the unit (StandardError=journal).

Two ways, both on a fixture tree without xenstore (the daemon warns ``xenstore_unavailable``,
then logs its start at info):

- the stream format: stderr is a Unix stream socket named by ``$JOURNAL_STREAM`` (what systemd
  hands a service), read back here: every line starts with its sd-daemon(3) priority and carries
  no timestamp;
- a real systemd-journald (tests/journald_harness.py, in a private mount namespace): journalctl
  stores the warning at priority 4, ``journalctl -p warning`` shows exactly the warnings.

``systemd-run`` needs systemd as PID 1, which CI's machine does not run: where it does, the unit
is the same as under journald's stdout stream here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^<(\d)>(.*)$")
PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}


def daemon_argv(tmp_path: Path) -> list[str]:
    """``guestagent run`` on a copy of the 3-vnode HVM fixture, devices off, log level info."""
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "hvm-3vnode", root, symlinks=True)
    config = tmp_path / "guestagent.toml"
    config.write_text('[agent]\nlog_level = "info"\n\n[devices]\nenabled = false\n')
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    return [sys.executable, "-m", "guestagent", "--root", str(root), "run",
            "--config", str(config), "--conf-dir", str(conf_dir), "--role", "guest"]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET", "XENSTORED_PATH")}
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.mark.timeout(120)
def test_lines_on_the_journal_stream_carry_priority_and_no_timestamp(tmp_path: Path) -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    st = os.fstat(theirs.fileno())
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    env = dict(clean_env(), JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", NOTIFY_SOCKET=notify_path)
    daemon = subprocess.Popen(daemon_argv(tmp_path), cwd=REPO, env=env, stderr=theirs.fileno(),
                              stdin=subprocess.DEVNULL)
    theirs.close()
    try:
        while "READY=1" not in notify.recv(4096).decode():
            pass
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        notify.close()
    chunks = []
    while chunk := ours.recv(65536):
        chunks.append(chunk)
    ours.close()
    lines = b"".join(chunks).decode().splitlines()
    levels: dict[str, int] = {}
    for line in lines:
        match = LINE.match(line)
        assert match, f"no <N> priority prefix: {line!r}"
        assert "timestamp=" not in line, f"the journal stamps entries itself: {line!r}"
        level = re.search(r"\blevel=(\w+)", match.group(2))
        event = re.search(r"\bevent=(\S+)", match.group(2))
        assert level and event, line
        assert int(match.group(1)) == PRIORITY[level.group(1)], line
        levels[event.group(1)] = int(match.group(1))
    assert levels.get("xenstore_unavailable") == 4, lines
    assert levels.get("started") == 6, lines


def test_a_redirected_stderr_is_not_the_journal(tmp_path: Path) -> None:
    """A child that inherits $JOURNAL_STREAM with stderr sent elsewhere writes plain logfmt."""
    other = tmp_path / "other"
    other.write_text("")
    st = os.stat(other)
    script = ("from guestagent import log; log.configure(level='info'); "
              "log.get_logger('t').warning('w', jobs=['a', 'b'], x=None)")
    env = dict(clean_env(), JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=60)
    line = result.stderr.strip()
    assert re.fullmatch(r"timestamp=\S+ level=warning event=w component=t jobs=a,b x=", line), line


def _journald_usable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a private mount namespace and journald)"
    for tool in ("unshare", "journalctl", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} not installed"
    if not os.access("/lib/systemd/systemd-journald", os.X_OK):
        return "systemd-journald not installed (Debian: systemd)"
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "true"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"no private mount namespace here: {probe.stderr.strip()}"
    return None


@pytest.mark.timeout(180)
def test_journalctl_priority_warning_shows_exactly_the_warnings(tmp_path: Path) -> None:
    reason = _journald_usable()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "journal"
    out.mkdir()
    harness = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-m",
         "tests.journald_harness", str(out), "--", *daemon_argv(tmp_path)],
        cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=150)
    assert harness.returncode == 0, harness.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["status"] == 0, result
    entries = [json.loads(line) for line in (out / "all.json").read_text().splitlines()]
    warnings = [json.loads(line) for line in (out / "warning.json").read_text().splitlines()]
    by_event = {}
    for entry in entries:
        message = entry["MESSAGE"]
        assert not message.startswith("<"), f"journald strips the prefix: {message!r}"
        assert "timestamp=" not in message, message
        level = re.search(r"\blevel=(\w+)", message)
        assert level, message
        assert int(entry["PRIORITY"]) == PRIORITY[level.group(1)], entry
        by_event[re.search(r"\bevent=(\S+)", message).group(1)] = int(entry["PRIORITY"])  # type: ignore[union-attr]
    assert by_event.get("xenstore_unavailable") == 4
    assert by_event.get("started") == 6 and by_event.get("stopping") == 6
    expected = [e["MESSAGE"] for e in entries if int(e["PRIORITY"]) <= 4]
    assert [e["MESSAGE"] for e in warnings] == expected
    assert any("event=xenstore_unavailable" in m for m in expected)
