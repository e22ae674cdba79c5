"""``guestagent run`` as systemd runs it: READY over $NOTIFY_SOCKET, status over the root-only
socket, a refused reload keeping the old configuration, and SIGTERM undoing the balloon.

The daemon runs in a subprocess (signals need a main thread) on a fixture tree (an HVM guest
with 3 vnodes and a balloon driver), talking to the wire-protocol xenstore server as domid 5.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from guestagent.daemon.service import read_status
from tests.xenstore_server import XenstoreServer

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]
TARGET = "sys/devices/system/xen_memory/xen_memory0/target_kb"


def guest_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "hvm-3vnode", root, symlinks=True)
    balloon = FIXTURES / "balloon-pv-1g"
    shutil.copytree(balloon / "proc", root / "proc", dirs_exist_ok=True)
    shutil.copytree(
        balloon / "sys/devices/system/xen_memory", root / "sys/devices/system/xen_memory"
    )
    return root


def notifications(sock: socket.socket, until: str, limit: int = 20) -> list[str]:
    got: list[str] = []
    for _ in range(limit):
        message = sock.recv(4096).decode()
        got.append(message)
        if until in message:
            return got
    raise AssertionError(f"never saw {until!r}: {got}")


@pytest.mark.timeout(120)
def test_run_ready_status_reload_and_undo_on_sigterm(
    tmp_path: Path, xs_server: XenstoreServer
) -> None:
    root = guest_root(tmp_path)
    (root / TARGET).write_text("1048576\n")
    conf_dir = tmp_path / "conf.d"
    conf_dir.mkdir()
    config = tmp_path / "guestagent.toml"
    prom = tmp_path / "guestagent.prom"
    # The fixture is an HVM guest (hvm-3vnode), where the job holds the ceiling unless allowed.
    config.write_text(
        '[balloon]\nenabled = true\npolicy = "classic"\nallow_hvm = true\n\n'
        f'[devices]\nenabled = false\n\n[metrics]\ntextfile = "{prom}"\n'
    )
    notify_path = str(tmp_path / "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(60)
    xs_server.next_domids.append(5)
    env = dict(os.environ, NOTIFY_SOCKET=notify_path, XENSTORED_PATH=xs_server.path)
    daemon = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "guestagent",
            "--root",
            str(root),
            "run",
            "--config",
            str(config),
            "--conf-dir",
            str(conf_dir),
            "--role",
            "guest",
        ],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = notifications(notify, "READY=1")
        assert "STATUS=jobs: topology, balloon" in ready[-1]

        state_dir = root / "run/guestagent"
        assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(state_dir / "status.sock").st_mode) == 0o600
        status = read_status(str(state_dir))
        assert status["role"] == "guest" and status["xenstore"] == "connected"
        # What answering costs the daemon, counted with each answer (issue 18's figures).
        again = read_status(str(state_dir))
        assert again["status_answers"] == status["status_answers"] + 1
        assert again["status_cpu_s"] == pytest.approx(
            status["status_cpu_s"] + again["status_cpu_this_s"], abs=1e-5)
        assert 0 <= again["status_cpu_this_s"] <= again["status_cpu_s"]
        assert status["jobs"]["topology"]["nodes"] == 3
        assert status["jobs"]["balloon"]["policy"] == "classic"
        assert status["jobs"]["balloon"]["ticks"] >= 1
        published = xs_server.get_node("/local/domain/5/data/guestagent/vnuma/nr-nodes")
        assert published is not None and published.value == b"3"
        assert int((root / TARGET).read_text()) < 1048576, "classic shrinks an idle guest"
        read_status(str(state_dir))  # one more loop round: the due textfile timer has run
        assert 'guestagent_job_running{name="balloon"} 1' in prom.read_text().splitlines()

        config.write_text("[balloon]\npolicy = 7\n")
        daemon.send_signal(signal.SIGHUP)
        assert "reload refused" in notifications(notify, "STATUS=reload refused")[-1]
        assert read_status(str(state_dir))["jobs"]["balloon"]["policy"] == "classic"

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        notifications(notify, "STOPPING=1")
    finally:
        if daemon.poll() is None:
            daemon.kill()
        stderr = daemon.stderr.read() if daemon.stderr else ""
        notify.close()
    assert "config_refused" in stderr and "expected a string" in stderr
    assert int((root / TARGET).read_text()) == 524288, "SIGTERM put the balloon at the ceiling"
    assert not (root / "run/guestagent/status.sock").exists()
