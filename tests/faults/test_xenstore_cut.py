"""The testbed's way of breaking the Dom0 daemon's xenstore connection, rehearsed without Xen.

tests/e2e/test_dom0_devices.py cuts the Dom0 daemon's connection to the real xenstored with
``XS_CUT``: xenstored's socket path moved aside and replaced by a socket file nobody listens on
(connect() refused, as while xenstored restarts), then ``shutdown(SHUT_RDWR)`` on the daemon's own
socket, duplicated with pidfd_getfd(2). Here the same script runs against the daemon as a
subprocess and the in-process xenstored (tests/xenstore_server.py) at the socket path the daemon
finds below its root: the daemon reads end-of-file, says so in ``status``, does not spin while
every attempt is refused, and reconnects once the socket is back.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from guestagent.daemon.service import read_status
from tests.e2e.test_dom0_devices import XS_CUT, XS_SOCKET
from tests.faults.test_xenstore_loss import CPU_BOUND, cpu_used, new_server, published, wait_for

psutil = pytest.importorskip("psutil")
pytest.importorskip("guestagent.xen._xenc", reason="C extension not built")

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(120)
def test_the_testbeds_cut_breaks_the_connection_and_the_daemon_comes_back(
    tmp_path: Path,
) -> None:
    if not hasattr(os, "pidfd_open"):
        pytest.skip("no os.pidfd_open")
    root = tmp_path / "root"
    shutil.copytree(FIXTURES / "hvm-3vnode", root, symlinks=True)
    xs_path = root / XS_SOCKET.lstrip("/")
    xs_path.parent.mkdir(parents=True, exist_ok=True)
    script = tmp_path / "xs-cut.py"
    script.write_text(XS_CUT.replace(f'"{XS_SOCKET}"', repr(str(xs_path))))
    config = tmp_path / "guestagent.toml"
    config.write_text("[devices]\nenabled = false\n")
    server = new_server(str(xs_path))
    env = {k: v for k, v in os.environ.items() if k not in ("XENSTORED_PATH", "NOTIFY_SOCKET")}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "guestagent", "--root", str(root), "--log-level", "info", "run",
         "--config", str(config), "--conf-dir", str(tmp_path / "conf.d"), "--role", "guest"],
        cwd=REPO, env=env, stderr=subprocess.PIPE, text=True,
    )
    state_dir = str(root / "run/guestagent")

    def status() -> dict[str, object]:
        try:
            return read_status(state_dir)
        except Exception:  # not answering yet
            return {}

    try:
        wait_for("a connected daemon", lambda: status().get("xenstore") == "connected")
        assert published(server)
        cut = subprocess.run([sys.executable, str(script), str(daemon.pid)],
                             capture_output=True, text=True, check=False)
        if "pidfd_getfd" in cut.stderr and "not permitted" in cut.stderr:
            pytest.skip(f"pidfd_getfd refused here: {cut.stderr.strip()}")
        assert cut.returncode == 0 and "cut: fd" in cut.stdout, cut
        down = wait_for("a disconnected status", lambda: (
            s if str((s := status()).get("xenstore", "")).startswith("disconnected (") else None))
        assert "closed by the other end" in str(down["xenstore"]), down
        used = cpu_used(psutil.Process(daemon.pid))
        assert used < CPU_BOUND, f"{used:.2f} s of CPU in about 2 s while connect() is refused"

        server.set_node("/local/domain/5/data/guestagent/vnuma/nr-nodes", b"7")
        restored = subprocess.run([sys.executable, str(script), "restore"],
                                  capture_output=True, text=True, check=True)
        assert "restored" in restored.stdout, restored
        wait_for("a connected status again", lambda: status().get("xenstore") == "connected")
        wait_for("the topology republished", lambda: published(server))
        assert status()["xenstore_reconnects"] == 1
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        stderr = daemon.stderr.read() if daemon.stderr else ""
        server.stop()
    assert "event=xenstore_lost" in stderr, stderr
    assert "Connection refused" in stderr, stderr
    assert "event=xenstore_reconnected" in stderr, stderr
    assert "Traceback" not in stderr, stderr
