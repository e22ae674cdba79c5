"""One daemon per root (issue 15, item 4).

Seen before the fix: two daemons on one root both ran; the second took over the status socket,
and stopping the second undid the first's device bindings while the first kept running.

Now the daemon holds an exclusive lock (flock) on ``daemon.lock`` in its state directory for its
whole life; a second one refuses before it touches anything, with one line naming the first's PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from guestagent.daemon.service import read_status
from guestagent.errors import GuestAgentError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REPO = Path(__file__).resolve().parents[2]


def answers(state_dir: str, pid: int) -> bool:
    try:
        return bool(read_status(state_dir)["pid"] == pid)
    except GuestAgentError:
        return False


@pytest.mark.timeout(120)
def test_a_second_daemon_on_the_same_root_refuses(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "hvm-3vnode", root, symlinks=True)
    config = tmp_path / "guestagent.toml"
    config.write_text("[devices]\nenabled = false\n")
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    argv = [sys.executable, "-m", "guestagent", "--root", str(root), "run", "--config",
            str(config), "--conf-dir", str(tmp_path / "conf.d"), "--role", "guest"]
    env = dict(os.environ, NOTIFY_SOCKET=notify_path,
               XENSTORED_PATH=str(tmp_path / "no-xenstored.sock"))
    first = subprocess.Popen(argv, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    state_dir = str(root / "run/guestagent")
    try:
        while "READY=1" not in notify.recv(4096).decode():
            pass
        env.pop("NOTIFY_SOCKET")
        second = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 1, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"pid {first.pid}" in lines[0] and state_dir in lines[0], lines
        assert read_status(state_dir)["pid"] == first.pid, "the first daemon still answers"
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0
        # Once the first is gone, a new one starts.
        third = subprocess.Popen(argv, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not answers(state_dir, third.pid):
                assert third.poll() is None, third.communicate()[1]
                assert time.monotonic() < deadline, "the third daemon never answered"
                time.sleep(0.05)
            third.send_signal(signal.SIGTERM)
            assert third.wait(timeout=30) == 0
        finally:
            if third.poll() is None:
                third.kill()
    finally:
        if first.poll() is None:
            first.kill()
        notify.close()
